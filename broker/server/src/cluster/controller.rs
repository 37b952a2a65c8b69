//! The controller: runs on the Raft leader only. It registers brokers, tracks their
//! liveness by heartbeat, fences the silent ones, elects partition leaders (from the
//! ISR; unclean only where the topic allows it), creates and deletes topics, and takes
//! ISR changes and controlled shutdowns. The decisions are `meridian_core`'s
//! [`Controller`]; this driver writes them as records through Raft and answers only
//! once they are committed.
//!
//! One task handles everything in order, so the core's state and the committed image
//! never disagree: after each decision the driver diffs the core against the image
//! and writes the difference. When Raft leadership moves, the new leader rebuilds the
//! core from its image and gives every broker a fresh session before fencing anyone
//! (it never saw their earlier heartbeats).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_core::replication::{
    AlterIsr, BrokerState, Controller, ControllerEvent, ElectError, LeaderAndIsr, PartitionRecord,
    ReassignError, Reassignment, UnregisterRefused,
};
use meridian_metadata::openraft::{BasicNode, ChangeMembers, ServerState};
use meridian_metadata::{
    BrokerRegistration, Endpoint, MetadataBatch, MetadataImage, MetadataRecord, PartitionState,
    TopicImage,
};
use meridian_wire::messages::*;
use meridian_wire::plugin_messages::PluginResult;
use meridian_wire::{ErrorCode, TopicId};
use tokio::sync::{mpsc, oneshot};

use super::RaftCalls;
use crate::handlers::now_ms;
use crate::topic_config::{TopicDefaults, TopicOverrides};
use crate::topics::Failure;

/// (topic, partition)
pub(crate) type PartitionKey = (String, u32);

/// A request for the controller, with where to send the answer.
pub(crate) enum Command {
    Heartbeat(
        BrokerHeartbeatRequest,
        oneshot::Sender<BrokerHeartbeatResponse>,
    ),
    CreateTopics(CreateTopicsRequest, oneshot::Sender<CreateTopicsResponse>),
    DeleteTopics(DeleteTopicsRequest, oneshot::Sender<DeleteTopicsResponse>),
    AlterTopicConfigs(
        AlterTopicConfigsRequest,
        oneshot::Sender<AlterTopicConfigsResponse>,
    ),
    CreatePartitions(
        CreatePartitionsRequest,
        oneshot::Sender<CreatePartitionsResponse>,
    ),
    AlterPartition(
        AlterPartitionRequest,
        oneshot::Sender<AlterPartitionResponse>,
    ),
    ControlledShutdown(
        ControlledShutdownRequest,
        oneshot::Sender<ControlledShutdownResponse>,
    ),
    ReassignPartitions(
        AlterPartitionReassignmentsRequest,
        oneshot::Sender<AlterPartitionReassignmentsResponse>,
    ),
    Plugins(PluginChange, oneshot::Sender<PluginResult>),
    ElectLeaders(ElectLeadersRequest, oneshot::Sender<ElectLeadersResponse>),
    UnregisterBroker(
        UnregisterBrokerRequest,
        oneshot::Sender<UnregisterBrokerResponse>,
    ),
}

/// A change to the cluster's plugins. The broker that took it from the client has
/// checked what only a wasm host can (the module compiles, the parameters are
/// accepted); the controller checks it against the image.
#[derive(Clone, Debug)]
pub(crate) enum PluginChange {
    Deploy {
        name: String,
        plugin: meridian_metadata::PluginImage,
    },
    Remove {
        name: String,
    },
    Attach {
        topic: String,
        attachment: meridian_metadata::AttachmentImage,
    },
    Detach {
        topic: String,
        plugin: String,
    },
}

impl Command {
    /// Answers "not the controller" (this broker does not lead the quorum).
    fn refuse(self, controller_id: u32) {
        let message = format!(
            "this broker is not the controller; the controller is {}",
            if controller_id == NO_BROKER {
                "not known yet".to_string()
            } else {
                format!("broker {controller_id}")
            }
        );
        let code = ErrorCode::NotController;
        match self {
            Command::Heartbeat(_, tx) => drop(tx.send(BrokerHeartbeatResponse {
                error: code,
                message,
                controller_id,
                fenced: true,
                shutdown_ready: false,
            })),
            Command::CreateTopics(r, tx) => drop(tx.send(CreateTopicsResponse {
                results: refusals(r.topics.into_iter().map(|t| t.name), code, &message),
                created: Vec::new(),
            })),
            Command::DeleteTopics(r, tx) => drop(
                tx.send(DeleteTopicsResponse {
                    results: refusals(r.names, code, &message),
                    by_id: (r.ids.into_iter())
                        .map(|id| DeletedById {
                            id,
                            name: String::new(),
                            error: code,
                            message: message.clone(),
                        })
                        .collect(),
                }),
            ),
            Command::AlterTopicConfigs(r, tx) => drop(tx.send(AlterTopicConfigsResponse {
                results: refusals(r.topics.into_iter().map(|t| t.name), code, &message),
            })),
            Command::CreatePartitions(r, tx) => drop(tx.send(CreatePartitionsResponse {
                results: refusals(r.topics.into_iter().map(|t| t.name), code, &message),
            })),
            Command::AlterPartition(_, tx) => drop(tx.send(AlterPartitionResponse {
                error: code,
                message,
                leader: NO_BROKER,
                leader_epoch: -1,
                partition_epoch: -1,
                isr: Vec::new(),
                replicas: Vec::new(),
            })),
            Command::ControlledShutdown(_, tx) => drop(tx.send(ControlledShutdownResponse {
                error: code,
                message,
                remaining: Vec::new(),
            })),
            Command::Plugins(_, tx) => drop(tx.send(PluginResult {
                error: code,
                message,
            })),
            Command::ElectLeaders(_, tx) => drop(tx.send(ElectLeadersResponse {
                error: code,
                message,
                results: Vec::new(),
            })),
            Command::UnregisterBroker(_, tx) => drop(tx.send(UnregisterBrokerResponse {
                error: code,
                message,
            })),
            Command::ReassignPartitions(r, tx) => drop(
                tx.send(AlterPartitionReassignmentsResponse {
                    results: r
                        .reassignments
                        .into_iter()
                        .map(|re| ReassignmentResult {
                            topic: re.topic,
                            partition: re.partition,
                            error: code,
                            message: message.clone(),
                        })
                        .collect(),
                }),
            ),
        }
    }
}

/// The same refusal for each of these topics.
fn refusals(
    names: impl IntoIterator<Item = String>,
    error: ErrorCode,
    message: &str,
) -> Vec<TopicResult> {
    names
        .into_iter()
        .map(|name| TopicResult {
            name,
            error,
            message: message.to_string(),
        })
        .collect()
}

/// What the controller needs from the broker.
pub(crate) struct Context {
    /// Becomes true when the broker retires from the quorum's decisions on its way
    /// out ([`Cluster::retire`](super::Cluster::retire)): the controller stops, and
    /// commands are refused from then on.
    pub(crate) retired: tokio::sync::watch::Receiver<bool>,
    /// Membership changes run through it (see [`RaftCalls`]).
    pub(crate) raft_calls: Arc<RaftCalls>,
    pub(crate) broker_id: u32,
    pub(crate) raft: meridian_metadata::Raft,
    pub(crate) state_machine: meridian_metadata::StateMachine,
    pub(crate) session_timeout_ms: u64,
    /// How long a broker has to heartbeat to a controller that just took over.
    pub(crate) session_on_takeover_ms: u64,
    pub(crate) default_replication_factor: u16,
    pub(crate) max_partitions_per_topic: u32,
    pub(crate) topic_defaults: TopicDefaults,
    /// Partitions and replication factor of `__consumer_offsets`, created by the
    /// controller once enough brokers are live.
    pub(crate) offsets_topic_partitions: u32,
    pub(crate) offsets_topic_replication_factor: u16,
    /// How long the controller waits for brokers still down before it creates
    /// `__consumer_offsets` without them (see [`offsets_topic_due`]).
    pub(crate) offsets_topic_create_wait: Duration,
    /// Automatic preferred leader elections (`cluster.auto_leader_rebalance_enable`).
    pub(crate) leader_rebalance: Option<LeaderRebalance>,
}

/// When the controller gives brokers their leaderships back on its own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaderRebalance {
    pub(crate) interval: Duration,
    pub(crate) imbalance_percent: u32,
}

/// Runs for the broker's lifetime: idle (refusing commands) while another broker
/// leads the quorum, the controller while this one does.
pub(crate) async fn run(context: Arc<Context>, mut commands: mpsc::Receiver<Command>) {
    let mut metrics = context.raft.metrics();
    // Said once per streak of failed attempts: openraft's own line per voter that
    // did not answer is not logged (see the CLI's `QuietVotes`).
    let mut unconfirmed_said = false;
    let mut retired = context.retired.clone();
    loop {
        let (leading, leader) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && !*retired.borrow_and_update(),
                m.current_leader.map_or(NO_BROKER, |l| l as u32),
            )
        };
        if leading {
            // Everything committed before this term must be in our image before we
            // decide anything: wait until our first entry of the term is applied.
            let confirmed =
                tokio::time::timeout(Duration::from_secs(5), context.raft.ensure_linearizable());
            // A retiring broker stops waiting: its Raft node no longer heartbeats, so
            // the confirmation may never come before the node stops.
            let ready = tokio::select! {
                ready = confirmed => ready,
                _ = retired.wait_for(|r| *r) => continue,
            };
            if !matches!(ready, Ok(Ok(_))) && !unconfirmed_said {
                let error = match &ready {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no majority answered within 5 s".to_string(),
                };
                tracing::warn!(
                    broker = context.broker_id,
                    %error,
                    "this broker leads the metadata quorum but a majority of the voters has not confirmed it yet; no controller until one does"
                );
                unconfirmed_said = true;
            }
            if matches!(ready, Ok(Ok(_))) {
                unconfirmed_said = false;
                tracing::info!(
                    broker = context.broker_id,
                    "this broker is now the controller"
                );
                let mut active = Active::new(&context);
                active
                    .serve(&mut commands, &mut metrics, &mut retired)
                    .await;
                tracing::info!(
                    broker = context.broker_id,
                    "this broker is no longer the controller"
                );
                continue;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            changed = retired.changed() => if changed.is_err() { return },
            command = commands.recv() => match command {
                Some(command) => command.refuse(leader),
                None => return,
            },
        }
    }
}

fn to_state(s: &LeaderAndIsr, reassignment: Option<&Reassignment>) -> PartitionState {
    PartitionState {
        leader: s.leader,
        leader_epoch: s.leader_epoch,
        partition_epoch: s.partition_epoch,
        isr: s.isr.iter().copied().collect(),
        replicas: s.replicas.clone(),
        reassigning_to: reassignment.map(|r| r.target.clone()),
        adding_replicas: reassignment.map(|r| r.adding.clone()).unwrap_or_default(),
        removing_replicas: reassignment.map(|r| r.removing.clone()).unwrap_or_default(),
    }
}

fn to_reassignment(s: &PartitionState) -> Option<Reassignment> {
    s.reassigning_to.as_ref().map(|target| Reassignment {
        target: target.clone(),
        adding: s.adding_replicas.clone(),
        removing: s.removing_replicas.clone(),
    })
}

fn to_leader_and_isr(s: &PartitionState) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: s.leader,
        leader_epoch: s.leader_epoch,
        isr: s.isr.iter().copied().collect(),
        replicas: s.replicas.clone(),
        partition_epoch: s.partition_epoch,
    }
}

/// The controller while this broker leads the quorum.
struct Active<'a> {
    context: &'a Context,
    core: Controller<PartitionKey>,
    /// Brokers outside the quorum's membership being added as learners, with when
    /// that was asked (asked again if it has not happened a few seconds later).
    learners_asked: BTreeMap<u32, tokio::time::Instant>,
    /// When the leader imbalance is next checked (with `leader_rebalance`).
    next_rebalance: tokio::time::Instant,
    /// Since when enough brokers for `__consumer_offsets` have been live (see
    /// [`offsets_topic_due`]).
    offsets_topic_enough_since: Option<std::time::Instant>,
}

/// Raft refused the write: we are not the leader any more.
struct LostLeadership;

impl<'a> Active<'a> {
    fn new(context: &'a Context) -> Active<'a> {
        let image = context.state_machine.image();
        let now = now_ms();
        let mut core = Controller::new(context.session_timeout_ms as i64);
        // Every broker's session is taken as started `session_on_takeover_ms` short of
        // a full one: a live broker heartbeats to the new controller within a few
        // heartbeat intervals, and a dead one (often the previous controller) is
        // fenced that much sooner.
        let session_started = now
            - (context.session_timeout_ms as i64)
                .saturating_sub(context.session_on_takeover_ms as i64);
        for (id, b) in &image.brokers {
            core.restore_broker(
                *id,
                BrokerState {
                    incarnation: b.incarnation,
                    fenced: b.fenced,
                    shutting_down: b.shutting_down,
                },
                session_started,
            );
        }
        for topic in image.topics.values() {
            let unclean = TopicOverrides(topic.configs.clone())
                .unclean_leader_election(&context.topic_defaults);
            for (index, p) in topic.partitions.iter().enumerate() {
                core.restore_partition(
                    (topic.name.clone(), index as u32),
                    PartitionRecord {
                        state: to_leader_and_isr(p),
                        unclean_leader_election: unclean,
                        reassignment: to_reassignment(p),
                    },
                );
            }
        }
        let first_check = context
            .leader_rebalance
            .map_or(Duration::ZERO, |r| r.interval);
        Active {
            context,
            core,
            learners_asked: BTreeMap::new(),
            next_rebalance: tokio::time::Instant::now() + first_check,
            offsets_topic_enough_since: None,
        }
    }

    async fn serve(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        metrics: &mut tokio::sync::watch::Receiver<
            meridian_metadata::openraft::RaftMetrics<u64, meridian_metadata::openraft::BasicNode>,
        >,
        retired: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                _ = tick.tick() => self.tick().await,
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return,
                },
                changed = metrics.changed() => {
                    if changed.is_err() || metrics.borrow_and_update().state != ServerState::Leader {
                        return;
                    }
                    Ok(())
                }
                _ = retired.changed() => return,
            };
            if outcome.is_err() {
                return;
            }
        }
    }

    /// Writes `records` (then the core's differences from the image) through Raft.
    async fn commit(&self, mut records: Vec<MetadataRecord>) -> Result<(), LostLeadership> {
        let mut image = (*self.context.state_machine.image()).clone();
        for r in &records {
            image.apply(r);
        }
        records.extend(self.diff(&image));
        if records.is_empty() {
            return Ok(());
        }
        tracing::debug!(?records, "controller writes");
        let write = self.context.raft.client_write(MetadataBatch { records });
        let mut retired = self.context.retired.clone();
        let written = tokio::select! {
            written = write => written,
            // The broker is stopping: the write may or may not commit; nobody waits.
            _ = retired.wait_for(|r| *r) => return Err(LostLeadership),
        };
        match written {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "controller write failed; stepping down");
                Err(LostLeadership)
            }
        }
    }

    /// Records that bring `image` to the core's state.
    fn diff(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for (id, state) in self.core.brokers() {
            let Some(b) = image.brokers.get(&id) else {
                continue;
            };
            if state.shutting_down && !b.shutting_down {
                records.push(MetadataRecord::BrokerShuttingDown { id });
            } else if state.fenced && !b.fenced {
                records.push(MetadataRecord::BrokerFenced { id });
            } else if !state.fenced && b.fenced {
                records.push(MetadataRecord::BrokerUnfenced { id });
            }
        }
        for ((topic, partition), state) in self.core.partitions() {
            let record = self.core.partition_record(&(topic.clone(), *partition));
            let state = to_state(state, record.and_then(|r| r.reassignment.as_ref()));
            if image.partition(topic, *partition) != Some(&state) {
                records.push(MetadataRecord::PartitionChanged {
                    topic: topic.clone(),
                    partition: *partition,
                    state,
                });
            }
        }
        records
    }

    async fn tick(&mut self) -> Result<(), LostLeadership> {
        let (events, _) = self.core.tick(now_ms());
        let unclean: BTreeSet<PartitionKey> =
            self.core.take_unclean_elections().into_iter().collect();
        for event in &events {
            match event {
                ControllerEvent::BrokerFenced(id) => {
                    tracing::warn!(
                        broker = id,
                        "fenced broker: no heartbeat within the session timeout"
                    )
                }
                ControllerEvent::LeaderElected {
                    partition: (topic, partition),
                    leader,
                    epoch,
                    unclean: was_unclean,
                } => {
                    if *was_unclean || unclean.contains(&(topic.clone(), *partition)) {
                        tracing::warn!(topic, partition, leader, epoch, "UNCLEAN leader election: the new leader was not in sync; acknowledged records may be lost (unclean.leader.election.enable=true)");
                    } else {
                        tracing::info!(topic, partition, leader, epoch, "elected leader");
                    }
                }
                ControllerEvent::PartitionOffline {
                    partition: (topic, partition),
                } => tracing::warn!(
                    topic,
                    partition,
                    "partition offline: no in-sync replica is alive"
                ),
            }
        }
        self.rebalance_leaders();
        self.commit(Vec::new()).await?;
        self.ensure_offsets_topic().await
    }

    /// Every `leader_imbalance_check_interval_ms`: leaderships back to preferred
    /// replicas where a broker has lost more than its allowed share (Kafka's automatic
    /// preferred leader election). The caller commits.
    fn rebalance_leaders(&mut self) {
        let Some(rebalance) = self.context.leader_rebalance else {
            return;
        };
        let now = tokio::time::Instant::now();
        if now < self.next_rebalance {
            return;
        }
        self.next_rebalance = now + rebalance.interval;
        for key in self.core.imbalanced_partitions(rebalance.imbalance_percent) {
            if self.core.elect_preferred_leader(&key).is_ok() {
                let state = self.core.partition(&key).expect("just elected");
                tracing::info!(
                    topic = %key.0,
                    partition = key.1,
                    leader = ?state.leader,
                    epoch = state.leader_epoch,
                    "leadership back to the preferred replica (automatic leader rebalance)"
                );
            }
        }
    }

    /// Creates `__consumer_offsets` (compacted, like Kafka's) once the region's brokers
    /// are live (see [`offsets_topic_due`]); group coordinators are the leaders of its
    /// partitions.
    async fn ensure_offsets_topic(&mut self) -> Result<(), LostLeadership> {
        let image = self.context.state_machine.image();
        if image.topics.contains_key(crate::groups::OFFSETS_TOPIC) {
            return Ok(());
        }
        let rf = self.context.offsets_topic_replication_factor;
        let live: BTreeSet<u32> = self
            .live_brokers(&image)
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let mut known: BTreeSet<u32> = image.brokers.keys().copied().collect();
        {
            let metrics = self.context.raft.metrics();
            let metrics = metrics.borrow();
            known.extend(
                metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .map(|v| v as u32),
            );
        }
        if !offsets_topic_due(
            &live,
            &known,
            rf,
            self.context.offsets_topic_create_wait,
            std::time::Instant::now(),
            &mut self.offsets_topic_enough_since,
        ) {
            return Ok(());
        }
        let missing: Vec<u32> = known.difference(&live).copied().collect();
        if !missing.is_empty() {
            tracing::info!(
                ?missing,
                wait_ms = self.context.offsets_topic_create_wait.as_millis() as u64,
                "creating {} without brokers still down (cluster.offsets_topic_create_wait_ms): no group coordinator on them until its partitions are moved",
                crate::groups::OFFSETS_TOPIC
            );
        }
        let request = CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: crate::groups::OFFSETS_TOPIC.to_string(),
                partitions: self.context.offsets_topic_partitions,
                replication_factor: rf,
                configs: vec![
                    ConfigEntry {
                        key: "cleanup.policy".into(),
                        value: "compact".into(),
                    },
                    // Commits need every in-sync replica, at least this many of them:
                    // never more than the topic has replicas.
                    ConfigEntry {
                        key: "min.insync.replicas".into(),
                        value: self
                            .context
                            .topic_defaults
                            .min_insync_replicas
                            .min(i64::from(rf))
                            .to_string(),
                    },
                ],
            }],
            validate_only: false,
        };
        let (response, outcome) = self.create_topics(request).await;
        for r in response
            .results
            .iter()
            .filter(|r| r.error != ErrorCode::None)
        {
            tracing::warn!(topic = %r.name, error = ?r.error, message = %r.message, "could not create the offsets topic");
        }
        outcome
    }

    async fn handle(&mut self, command: Command) -> Result<(), LostLeadership> {
        match command {
            Command::Heartbeat(r, tx) => {
                let (response, outcome) = self.heartbeat(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::CreateTopics(r, tx) => {
                let (response, outcome) = self.create_topics(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::DeleteTopics(r, tx) => {
                let (response, outcome) = self.delete_topics(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::AlterTopicConfigs(r, tx) => {
                let (results, outcome) = self.alter_topic_configs(r).await;
                let _ = tx.send(AlterTopicConfigsResponse { results });
                outcome
            }
            Command::CreatePartitions(r, tx) => {
                let (results, outcome) = self.create_partitions(r).await;
                let _ = tx.send(CreatePartitionsResponse { results });
                outcome
            }
            Command::AlterPartition(r, tx) => {
                let (response, outcome) = self.alter_partition(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::ControlledShutdown(r, tx) => {
                let (response, outcome) = self.controlled_shutdown(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::Plugins(change, tx) => {
                let (response, outcome) = self.plugin_change(change).await;
                let _ = tx.send(response);
                outcome
            }
            Command::ReassignPartitions(r, tx) => {
                let (response, outcome) = self.reassign_partitions(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::ElectLeaders(r, tx) => {
                let (response, outcome) = self.elect_leaders(r).await;
                let _ = tx.send(response);
                outcome
            }
            Command::UnregisterBroker(r, tx) => {
                let (response, outcome) = self.unregister_broker(r.broker_id).await;
                let _ = tx.send(response);
                outcome
            }
        }
    }

    /// Forgets a broker gone for good: the core checks it is fenced and holds no
    /// replicas, this checks it is not a voter, and a learner of the metadata quorum
    /// leaves the quorum too (in the background, like its joining).
    async fn unregister_broker(
        &mut self,
        id: u32,
    ) -> (UnregisterBrokerResponse, Result<(), LostLeadership>) {
        let refused = |error, message| (UnregisterBrokerResponse { error, message }, Ok(()));
        let (voter, learner) = {
            let metrics = self.context.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == u64::from(id));
            (
                voter,
                !voter && membership.get_node(&u64::from(id)).is_some(),
            )
        };
        if voter {
            return refused(
                ErrorCode::InvalidRequest,
                format!("broker {id} is a voter of the metadata quorum (cluster.voters); voters stay registered"),
            );
        }
        match self.core.unregister_broker(id) {
            Ok(()) => {}
            Err(UnregisterRefused::NotRegistered) => {
                return refused(
                    ErrorCode::BrokerIdNotRegistered,
                    format!("broker {id} is not registered"),
                )
            }
            Err(UnregisterRefused::Running) => {
                return refused(
                    ErrorCode::InvalidRequest,
                    format!(
                        "broker {id} is running; stop it first (a running broker registers again)"
                    ),
                )
            }
            Err(UnregisterRefused::HoldsReplicas(partitions)) => {
                let (topic, partition) = &partitions[0];
                return refused(
                    ErrorCode::InvalidRequest,
                    format!(
                        "broker {id} holds replicas of {} partition(s), {topic}/{partition} first; \
                         move them to other brokers first (`meridian partition reassign`)",
                        partitions.len()
                    ),
                );
            }
        }
        let outcome = self
            .commit(vec![MetadataRecord::BrokerUnregistered { id }])
            .await;
        if outcome.is_err() {
            return (
                UnregisterBrokerResponse {
                    error: ErrorCode::NotController,
                    message: "the controller lost its leadership; retry".into(),
                },
                outcome,
            );
        }
        tracing::info!(broker = id, "unregistered broker");
        self.learners_asked.remove(&id);
        if learner {
            let raft = self.context.raft.clone();
            let calls = self.context.raft_calls.clone();
            tokio::spawn(async move {
                let change = raft.change_membership(
                    ChangeMembers::RemoveNodes([u64::from(id)].into_iter().collect()),
                    true,
                );
                match calls.run(change).await {
                    Some(Ok(_)) => {
                        tracing::info!(
                            broker = id,
                            "removed an unregistered broker from the metadata quorum"
                        )
                    }
                    Some(Err(e)) => {
                        tracing::warn!(broker = id, error = %e, "could not remove an unregistered broker from the metadata quorum")
                    }
                    None => {}
                }
            });
        }
        (
            UnregisterBrokerResponse {
                error: ErrorCode::None,
                message: String::new(),
            },
            outcome,
        )
    }

    /// Commits what the core decided for a request answered per partition; when the
    /// write fails (leadership lost), the results that said done say `NotController`.
    async fn commit_results<R>(
        &self,
        results: &mut [R],
        status: fn(&mut R) -> (&mut ErrorCode, &mut String),
    ) -> Result<(), LostLeadership> {
        let outcome = self.commit(Vec::new()).await;
        if outcome.is_err() {
            for r in results.iter_mut() {
                let (error, message) = status(r);
                if *error == ErrorCode::None {
                    *error = ErrorCode::NotController;
                    *message = "the controller lost its leadership; retry".into();
                }
            }
        }
        outcome
    }

    /// Leader elections asked by an administrator (`ElectLeaders`): each asked
    /// partition, or every partition, gets its preferred replica as leader where
    /// that can happen now, or, asked for an unclean election, a live replica
    /// where it has no leader; one result per partition.
    async fn elect_leaders(
        &mut self,
        r: ElectLeadersRequest,
    ) -> (ElectLeadersResponse, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let asked: Vec<PartitionKey> = match &r.partitions {
            Some(list) => TopicPartitions::pairs(list)
                .map(|(topic, partition)| (topic.to_string(), partition))
                .collect(),
            None => image
                .topics
                .values()
                .flat_map(|t| (0..t.partitions.len() as u32).map(|p| (t.name.clone(), p)))
                .collect(),
        };
        let mut results = Vec::with_capacity(asked.len());
        for key in asked {
            let decided = match image.topics.get(&key.0) {
                None => Err((
                    ErrorCode::UnknownTopic,
                    format!("topic `{}` does not exist", key.0),
                )),
                Some(topic) => if r.unclean {
                    self.core
                        .elect_unclean_leader(&key)
                        .map(|(_, out_of_sync)| out_of_sync)
                } else {
                    self.core.elect_preferred_leader(&key).map(|()| false)
                }
                .map_err(|e| match e {
                    ElectError::UnknownPartition => (
                        ErrorCode::InvalidPartition,
                        format!(
                            "topic `{}` has no partition {} ({} partitions)",
                            key.0,
                            key.1,
                            topic.partitions.len()
                        ),
                    ),
                    ElectError::NotNeeded if r.unclean => (
                        ErrorCode::ElectionNotNeeded,
                        format!(
                            "it has a leader, broker {}: an unclean election is for a partition without one",
                            self.core.partition(&key).and_then(|s| s.leader).unwrap_or(NO_BROKER)
                        ),
                    ),
                    ElectError::NotNeeded => (
                        ErrorCode::ElectionNotNeeded,
                        "its preferred replica leads it already".to_string(),
                    ),
                    ElectError::PreferredNotAvailable(why) => {
                        (ErrorCode::PreferredLeaderNotAvailable, why)
                    }
                    ElectError::NoLiveReplica => (
                        ErrorCode::EligibleLeadersNotAvailable,
                        "no replica of it is alive and unfenced: start one of its brokers"
                            .to_string(),
                    ),
                }),
            };
            let leader = self
                .core
                .partition(&key)
                .and_then(|s| s.leader)
                .unwrap_or(NO_BROKER);
            let (error, message) = match decided {
                Ok(true) => {
                    tracing::warn!(topic = %key.0, partition = key.1, leader, "UNCLEAN leader election (asked): no in-sync replica was left; acknowledged records may be lost");
                    (ErrorCode::None, String::new())
                }
                Ok(false) if r.unclean => {
                    tracing::info!(topic = %key.0, partition = key.1, leader, "leader elected for a partition without one (asked); an in-sync replica leads it");
                    (ErrorCode::None, String::new())
                }
                Ok(false) => {
                    tracing::info!(topic = %key.0, partition = key.1, leader, "leadership back to the preferred replica (asked)");
                    (ErrorCode::None, String::new())
                }
                Err(refusal) => refusal,
            };
            results.push(ElectionResult {
                topic: key.0,
                partition: key.1,
                error,
                message,
                leader,
            });
        }
        let outcome = self
            .commit_results(&mut results, |r| (&mut r.error, &mut r.message))
            .await;
        let response = ElectLeadersResponse {
            error: ErrorCode::None,
            message: String::new(),
            results,
        };
        (response, outcome)
    }

    fn broker_state(&self, id: u32) -> Option<BrokerState> {
        self.core.brokers().find(|(b, _)| *b == id).map(|(_, s)| s)
    }

    async fn heartbeat(
        &mut self,
        r: BrokerHeartbeatRequest,
    ) -> (BrokerHeartbeatResponse, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let known = image.brokers.get(&r.broker_id);
        if let Some(b) = known {
            if r.incarnation < b.incarnation {
                // A heartbeat from an earlier life of the broker, delayed.
                return (
                    BrokerHeartbeatResponse {
                        error: ErrorCode::StaleBrokerEpoch,
                        message: format!(
                            "incarnation {} is older than the registered {}",
                            r.incarnation, b.incarnation
                        ),
                        controller_id: self.context.broker_id,
                        fenced: true,
                        shutdown_ready: false,
                    },
                    Ok(()),
                );
            }
        }
        let now = now_ms();
        self.core.heartbeat(r.broker_id, r.incarnation, now);
        if r.wants_shutdown {
            let already = self
                .broker_state(r.broker_id)
                .is_some_and(|s| s.shutting_down);
            if !already {
                self.core.controlled_shutdown(r.broker_id, r.incarnation);
            }
        }
        let state = self
            .broker_state(r.broker_id)
            .expect("the core registers every broker that heartbeats");
        let mut records = Vec::new();
        let registration = BrokerRegistration {
            id: r.broker_id,
            incarnation: r.incarnation,
            host: r.host.clone(),
            port: r.port,
            rack: r.rack.clone(),
            fenced: state.fenced,
            shutting_down: state.shutting_down,
            kafka: r.kafka.as_ref().map(|(host, port)| Endpoint {
                host: host.clone(),
                port: *port,
            }),
        };
        let changed = known.is_none_or(|b| {
            (b.incarnation, &b.host, b.port, &b.rack, &b.kafka)
                != (
                    registration.incarnation,
                    &registration.host,
                    registration.port,
                    &registration.rack,
                    &registration.kafka,
                )
        });
        if changed {
            tracing::info!(broker = r.broker_id, incarnation = r.incarnation, host = %r.host, port = r.port, rack = ?r.rack, kafka = ?r.kafka, "registered broker");
            records.push(MetadataRecord::BrokerRegistered(registration));
        }
        let outcome = self.commit(records).await;
        if outcome.is_ok() {
            self.ensure_quorum_member(r.broker_id, &r.host, r.port);
        }
        let leads_nothing = self.core.led_by(r.broker_id).next().is_none();
        (
            BrokerHeartbeatResponse {
                error: if outcome.is_ok() {
                    ErrorCode::None
                } else {
                    ErrorCode::NotController
                },
                message: String::new(),
                controller_id: self.context.broker_id,
                fenced: state.fenced,
                shutdown_ready: state.shutting_down && leads_nothing,
            },
            outcome,
        )
    }

    /// A broker that is not a member of the metadata quorum (not among the voters it
    /// was started with) becomes a learner: the Raft leader then replicates the
    /// metadata log to it, so it applies the same images as the voters. A learner
    /// whose address changed gets its new address. In the background: the membership change
    /// commits through Raft like any entry.
    fn ensure_quorum_member(&mut self, id: u32, host: &str, port: u16) {
        let address = format!("{host}:{port}");
        let (member, same_address) = {
            let metrics = self.context.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            // Voters keep the addresses of `cluster.voters`.
            let voter = membership.voter_ids().any(|v| v == u64::from(id));
            match membership.get_node(&u64::from(id)) {
                Some(node) => (true, voter || node.addr == address),
                None => (false, false),
            }
        };
        if member && same_address {
            self.learners_asked.remove(&id);
            return;
        }
        let now = tokio::time::Instant::now();
        if self
            .learners_asked
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(5))
        {
            return;
        }
        self.learners_asked.insert(id, now);
        let raft = self.context.raft.clone();
        let calls = self.context.raft_calls.clone();
        tokio::spawn(async move {
            let node = BasicNode::new(&address);
            let change = async {
                if member {
                    raft.change_membership(
                        ChangeMembers::SetNodes([(u64::from(id), node)].into_iter().collect()),
                        true,
                    )
                    .await
                } else {
                    raft.add_learner(u64::from(id), node, false).await
                }
            };
            // The broker is stopping: the change is asked again by the next controller.
            let Some(outcome) = calls.run(change).await else {
                return;
            };
            match outcome {
                Ok(_) if member => {
                    tracing::info!(broker = id, %address, "updated a quorum member's address")
                }
                Ok(_) => tracing::info!(
                    broker = id,
                    %address,
                    "added broker to the metadata quorum as a learner (it is not a voter)"
                ),
                Err(e) => {
                    tracing::warn!(broker = id, error = %e, "could not add broker to the metadata quorum")
                }
            }
        });
    }

    /// Unfenced brokers with their racks, from the core and the registrations.
    fn live_brokers(&self, image: &MetadataImage) -> Vec<(u32, Option<String>)> {
        self.core
            .brokers()
            .filter(|(_, s)| !s.fenced)
            .map(|(id, _)| (id, image.brokers.get(&id).and_then(|b| b.rack.clone())))
            .collect()
    }

    async fn create_topics(
        &mut self,
        request: CreateTopicsRequest,
    ) -> (CreateTopicsResponse, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let live = self.live_brokers(&image);
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut created = Vec::new();
        let mut described = Vec::new();
        for t in request.topics {
            let outcome = self.plan_topic(&image, &live, &t, &created);
            match outcome {
                Ok(topic) => {
                    results.push(TopicResult {
                        name: t.name.clone(),
                        error: ErrorCode::None,
                        message: String::new(),
                    });
                    created.push(t.name.clone());
                    described.push(CreatedTopic {
                        name: t.name.clone(),
                        // Validating only, no ID is given.
                        id: if request.validate_only {
                            TopicId::NONE
                        } else {
                            topic.id
                        },
                        partitions: topic.partitions.len() as u32,
                        replication_factor: topic.replication_factor,
                        configs: TopicOverrides(topic.configs.clone())
                            .describe(&self.context.topic_defaults),
                    });
                    if !request.validate_only {
                        records.push(MetadataRecord::TopicCreated(topic));
                    }
                }
                Err((error, message)) => results.push(TopicResult {
                    name: t.name.clone(),
                    error,
                    message,
                }),
            }
        }
        for record in &records {
            let MetadataRecord::TopicCreated(topic) = record else {
                continue;
            };
            let unclean = TopicOverrides(topic.configs.clone())
                .unclean_leader_election(&self.context.topic_defaults);
            for (index, p) in topic.partitions.iter().enumerate() {
                self.core.restore_partition(
                    (topic.name.clone(), index as u32),
                    PartitionRecord {
                        state: to_leader_and_isr(p),
                        unclean_leader_election: unclean,
                        reassignment: None,
                    },
                );
            }
            tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), replication_factor = topic.replication_factor, "created topic");
        }
        let outcome = self.commit(records).await;
        let results = lost_unless_committed(results, &outcome);
        if outcome.is_err() {
            described.clear();
        }
        let response = CreateTopicsResponse {
            results,
            created: described,
        };
        (response, outcome)
    }

    fn plan_topic(
        &self,
        image: &MetadataImage,
        live: &[(u32, Option<String>)],
        t: &CreateTopic,
        earlier_in_request: &[String],
    ) -> Result<TopicImage, (ErrorCode, String)> {
        meridian_wire::validate_topic_name(&t.name).map_err(|m| (ErrorCode::InvalidTopic, m))?;
        let max = self.context.max_partitions_per_topic;
        if t.partitions == 0 || t.partitions > max {
            return Err((
                ErrorCode::InvalidPartitions,
                format!(
                    "partitions must be between 1 and {max} (max_partitions_per_topic), got {}",
                    t.partitions
                ),
            ));
        }
        let overrides =
            TopicOverrides::parse(t.configs.iter().map(|c| (c.key.clone(), c.value.clone())))
                .map_err(|m| (ErrorCode::InvalidConfig, m))?;
        if image.topics.contains_key(&t.name) || earlier_in_request.contains(&t.name) {
            return Err((
                ErrorCode::TopicAlreadyExists,
                format!("topic `{}` already exists", t.name),
            ));
        }
        let rf = if t.replication_factor == 0 {
            self.context.default_replication_factor
        } else {
            t.replication_factor
        };
        if rf as usize > live.len() {
            let ids: Vec<String> = live.iter().map(|(id, _)| id.to_string()).collect();
            return Err((
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} needs {rf} live brokers; {} live: [{}]",
                    live.len(),
                    ids.join(", ")
                ),
            ));
        }
        // Fewer replicas than acks=all needs in sync: such writes could never be
        // acknowledged, and producers would retry them until their delivery timeout.
        let min_insync = overrides.min_insync_replicas(&self.context.topic_defaults);
        if min_insync > rf as usize {
            let source = if overrides.0.contains_key("min.insync.replicas") {
                "the topic's min.insync.replicas"
            } else {
                "min.insync.replicas (from the brokers' topic_defaults.min_insync_replicas)"
            };
            return Err((
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} is below {source} = {min_insync}: acks=all writes could never be acknowledged; raise the replication factor or create the topic with min.insync.replicas at most {rf}"
                ),
            ));
        }
        let assignment = assign_replicas(&t.name, t.partitions, rf, live);
        Ok(TopicImage {
            name: t.name.clone(),
            configs: overrides.0,
            replication_factor: rf,
            partitions: assignment.into_iter().map(new_partition_state).collect(),
            // Set by the state machine when the record is applied.
            created_at: 0,
            id: crate::topics::new_topic_id(),
        })
    }

    /// Deletes topics named, and those with the IDs named: the topic that has an ID
    /// in the image now, never one created since under its name.
    async fn delete_topics(
        &mut self,
        request: DeleteTopicsRequest,
    ) -> (DeleteTopicsResponse, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let mut records = Vec::new();
        let core = &mut self.core;
        let mut delete = |name: &str| -> Result<(), Failure> {
            crate::handlers::refuse_internal(name, "deleted")?;
            let Some(topic) = image.topics.get(name) else {
                return Err(Failure::new(
                    ErrorCode::UnknownTopic,
                    format!("topic `{name}` does not exist"),
                ));
            };
            for p in 0..topic.partitions.len() as u32 {
                core.remove_partition(&(name.to_string(), p));
            }
            tracing::info!(topic = %name, id = %topic.id(), "deleting topic");
            records.push(MetadataRecord::TopicDeleted {
                name: name.to_string(),
            });
            Ok(())
        };
        let results = (request.names.into_iter())
            .map(|name| {
                let outcome = delete(&name);
                crate::handlers::topic_result(name, outcome)
            })
            .collect();
        let by_id = (request.ids.into_iter())
            .map(|id| {
                let name = image.topic_name_of(id);
                let outcome = match &name {
                    Some(name) => delete(name),
                    None => Err(crate::topics::unknown_topic_id(id)),
                };
                crate::handlers::deleted_by_id(id, name, outcome)
            })
            .collect();
        let outcome = self.commit(records).await;
        (DeleteTopicsResponse { results, by_id }, outcome)
    }

    /// Changes topics' settings: each topic's changes are checked together, against
    /// its settings in the image (and earlier changes in the same request), or
    /// against none when they replace them, then written as the topic's whole new
    /// settings. A changed
    /// `unclean.leader.election.enable` reaches the core at once. A request that
    /// validates only is checked the same way and changes nothing.
    async fn alter_topic_configs(
        &mut self,
        request: AlterTopicConfigsRequest,
    ) -> (Vec<TopicResult>, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let defaults = &self.context.topic_defaults;
        let mut decided: BTreeMap<String, TopicOverrides> = BTreeMap::new();
        let mut results = Vec::new();
        for t in request.topics {
            let planned = (|| {
                let topic = existing_topic(&image, &t.name)?;
                let current = match decided.get(&t.name) {
                    _ if t.replace => TopicOverrides::default(),
                    Some(decided) => decided.clone(),
                    None => TopicOverrides(topic.configs.clone()),
                };
                let changes = t.changes.iter().map(|c| (c.key.clone(), c.value.clone()));
                let overrides = current
                    .with_changes(changes)
                    .map_err(|m| (ErrorCode::InvalidConfig, m))?;
                let min_insync = overrides.min_insync_replicas(defaults);
                if min_insync > usize::from(topic.replication_factor) {
                    return Err((
                        ErrorCode::InvalidConfig,
                        format!(
                            "min.insync.replicas {min_insync} is above the topic's replication factor {}: acks=all writes could never be acknowledged",
                            topic.replication_factor
                        ),
                    ));
                }
                Ok((topic.partitions.len() as u32, overrides))
            })();
            match planned {
                Ok((partitions, overrides)) => {
                    if !request.validate_only {
                        let unclean = overrides.unclean_leader_election(defaults);
                        for p in 0..partitions {
                            let key = (t.name.clone(), p);
                            if self.core.set_unclean_leader_election(&key, unclean) {
                                tracing::warn!(topic = %t.name, partition = p, "UNCLEAN leader election: unclean.leader.election.enable was turned on for an offline partition; acknowledged records may be lost");
                            }
                        }
                        self.core.take_unclean_elections();
                        tracing::info!(topic = %t.name, configs = ?overrides.0, "changing topic settings");
                    }
                    decided.insert(t.name.clone(), overrides);
                    results.push(topic_ok(t.name));
                }
                Err((error, message)) => results.push(TopicResult {
                    name: t.name,
                    error,
                    message,
                }),
            }
        }
        let records = decided
            .into_iter()
            .filter(|_| !request.validate_only)
            .filter(|(name, o)| image.topics.get(name).is_some_and(|t| t.configs != o.0))
            .map(|(name, o)| MetadataRecord::TopicConfigsChanged { name, configs: o.0 })
            .collect();
        let outcome = self.commit(records).await;
        (lost_unless_committed(results, &outcome), outcome)
    }

    /// Checks a plugin change against the image and writes it: a deploy (a new
    /// module may not change the kind of an attached plugin), a removal (refused
    /// while attached), or a topic's new produce chain (the topic and plugins exist,
    /// at most one partitioner; attaching a plugin again replaces it in place).
    async fn plugin_change(
        &mut self,
        change: PluginChange,
    ) -> (PluginResult, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let attached_to = |name: &str| -> Vec<String> {
            image
                .attachments
                .iter()
                .filter(|(_, chain)| chain.iter().any(|a| a.plugin == name))
                .map(|(topic, _)| topic.clone())
                .collect()
        };
        let known = |name: &str| {
            image.plugins.get(name).ok_or_else(|| {
                (
                    ErrorCode::PluginNotFound,
                    format!("no plugin named `{name}` is deployed"),
                )
            })
        };
        let planned: Result<MetadataRecord, (ErrorCode, String)> = match change {
            PluginChange::Deploy { name, plugin } => match image.plugins.get(&name) {
                Some(old) if old.kind != plugin.kind && !attached_to(&name).is_empty() => Err((
                    ErrorCode::InvalidPlugin,
                    format!(
                        "`{name}` is attached as a {}; a {} cannot replace it",
                        old.kind, plugin.kind
                    ),
                )),
                _ => Ok(MetadataRecord::PluginDeployed { name, plugin }),
            },
            PluginChange::Remove { name } => known(&name).and_then(|_| {
                let topics = attached_to(&name);
                if topics.is_empty() {
                    Ok(MetadataRecord::PluginRemoved { name })
                } else {
                    Err((
                        ErrorCode::PluginInUse,
                        format!(
                            "plugin `{name}` is attached to {}; detach it first",
                            topics.join(", ")
                        ),
                    ))
                }
            }),
            PluginChange::Attach { topic, attachment } => {
                existing_topic(&image, &topic).and_then(|_| {
                    let kind = &known(&attachment.plugin)?.kind;
                    let mut chain = image.attachments.get(&topic).cloned().unwrap_or_default();
                    crate::plugins::one_partitioner(
                        &topic,
                        &attachment.plugin,
                        kind == "partitioner",
                        chain.iter().map(|a| a.plugin.as_str()),
                        |name| {
                            image
                                .plugins
                                .get(name)
                                .is_some_and(|p| p.kind == "partitioner")
                        },
                    )
                    .map_err(|message| (ErrorCode::InvalidConfig, message))?;
                    match chain.iter_mut().find(|a| a.plugin == attachment.plugin) {
                        Some(existing) => *existing = attachment,
                        None => chain.push(attachment),
                    }
                    Ok(MetadataRecord::AttachmentsChanged {
                        topic,
                        attachments: chain,
                    })
                })
            }
            PluginChange::Detach { topic, plugin } => {
                let mut chain = image.attachments.get(&topic).cloned().unwrap_or_default();
                let before = chain.len();
                chain.retain(|a| a.plugin != plugin);
                if chain.len() == before {
                    Err((
                        ErrorCode::PluginNotFound,
                        format!("plugin `{plugin}` is not attached to topic `{topic}`"),
                    ))
                } else {
                    Ok(MetadataRecord::AttachmentsChanged {
                        topic,
                        attachments: chain,
                    })
                }
            }
        };
        match planned {
            Ok(record) => {
                let outcome = self.commit(vec![record]).await;
                let response = match outcome {
                    Ok(()) => PluginResult {
                        error: ErrorCode::None,
                        message: String::new(),
                    },
                    Err(LostLeadership) => PluginResult {
                        error: ErrorCode::NotController,
                        message: "the controller lost its leadership while writing the change"
                            .into(),
                    },
                };
                (response, outcome)
            }
            Err((error, message)) => (PluginResult { error, message }, Ok(())),
        }
    }

    /// Adds partitions to topics, placed on the live brokers as a new topic's would
    /// be (continuing its round of brokers), each led by its first replica. A
    /// request that validates only is checked the same way and adds nothing.
    async fn create_partitions(
        &mut self,
        request: CreatePartitionsRequest,
    ) -> (Vec<TopicResult>, Result<(), LostLeadership>) {
        let image = self.context.state_machine.image();
        let live = self.live_brokers(&image);
        let max = self.context.max_partitions_per_topic;
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut decided: BTreeMap<String, u32> = BTreeMap::new();
        for t in request.topics {
            let planned = (|| {
                let topic = existing_topic(&image, &t.name)?;
                let current = decided
                    .get(&t.name)
                    .copied()
                    .unwrap_or(topic.partitions.len() as u32);
                crate::topics::check_new_partition_count(&t.name, current, t.count, max)
                    .map_err(|f| (f.code, f.message))?;
                let rf = topic.replication_factor;
                if usize::from(rf) > live.len() {
                    return Err((
                        ErrorCode::InvalidReplicationFactor,
                        format!(
                            "the new partitions need {rf} live brokers (the topic's replication factor); {} live",
                            live.len()
                        ),
                    ));
                }
                let unclean = TopicOverrides(topic.configs.clone())
                    .unclean_leader_election(&self.context.topic_defaults);
                Ok((current, rf, unclean))
            })();
            match planned {
                Ok(_) if request.validate_only => {
                    decided.insert(t.name.clone(), t.count);
                    results.push(topic_ok(t.name));
                }
                Ok((current, rf, unclean)) => {
                    let placed = assign_replicas(&t.name, t.count, rf, &live);
                    let partitions: Vec<PartitionState> = placed[current as usize..]
                        .iter()
                        .map(|replicas| new_partition_state(replicas.clone()))
                        .collect();
                    for (i, p) in partitions.iter().enumerate() {
                        self.core.restore_partition(
                            (t.name.clone(), current + i as u32),
                            PartitionRecord {
                                state: to_leader_and_isr(p),
                                unclean_leader_election: unclean,
                                reassignment: None,
                            },
                        );
                    }
                    tracing::info!(topic = %t.name, from = current, to = t.count, "adding partitions");
                    records.push(MetadataRecord::PartitionsCreated {
                        name: t.name.clone(),
                        first: current,
                        partitions,
                    });
                    decided.insert(t.name.clone(), t.count);
                    results.push(topic_ok(t.name));
                }
                Err((error, message)) => results.push(TopicResult {
                    name: t.name,
                    error,
                    message,
                }),
            }
        }
        let outcome = self.commit(records).await;
        (lost_unless_committed(results, &outcome), outcome)
    }

    fn partition_answer(
        &self,
        key: &PartitionKey,
        error: ErrorCode,
        message: String,
    ) -> AlterPartitionResponse {
        match self.core.partition(key) {
            Some(s) => AlterPartitionResponse {
                error,
                message,
                leader: s.leader.unwrap_or(NO_BROKER),
                leader_epoch: s.leader_epoch,
                partition_epoch: s.partition_epoch,
                isr: s.isr.iter().copied().collect(),
                replicas: s.replicas.clone(),
            },
            None => AlterPartitionResponse {
                error: ErrorCode::UnknownTopic,
                message: format!("partition {}/{} does not exist", key.0, key.1),
                leader: NO_BROKER,
                leader_epoch: -1,
                partition_epoch: -1,
                isr: Vec::new(),
                replicas: Vec::new(),
            },
        }
    }

    async fn alter_partition(
        &mut self,
        r: AlterPartitionRequest,
    ) -> (AlterPartitionResponse, Result<(), LostLeadership>) {
        let key = (r.topic.clone(), r.partition);
        let Some(current) = self.core.partition(&key).cloned() else {
            return (
                self.partition_answer(&key, ErrorCode::None, String::new()),
                Ok(()),
            );
        };
        if current.leader != Some(r.broker_id) || current.leader_epoch != r.leader_epoch {
            let message = format!(
                "broker {} at leader epoch {} does not lead {}/{} (leader {:?}, epoch {})",
                r.broker_id,
                r.leader_epoch,
                r.topic,
                r.partition,
                current.leader,
                current.leader_epoch
            );
            return (
                self.partition_answer(&key, ErrorCode::FencedLeaderEpoch, message),
                Ok(()),
            );
        }
        if current.partition_epoch != r.partition_epoch {
            let message = format!(
                "partition epoch {} is stale; the partition is at {}",
                r.partition_epoch, current.partition_epoch
            );
            return (
                self.partition_answer(&key, ErrorCode::InvalidUpdateVersion, message),
                Ok(()),
            );
        }
        let request = AlterIsr {
            leader: r.broker_id,
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
            isr: r.isr.iter().copied().collect(),
        };
        if let Err(e) = self.core.alter_isr(&key, &request) {
            let message = format!(
                "ISR {:?} refused ({e:?}): it must contain the leader and only live replicas of the partition",
                r.isr
            );
            return (
                self.partition_answer(&key, ErrorCode::InvalidRequest, message),
                Ok(()),
            );
        }
        tracing::info!(topic = %r.topic, partition = r.partition, isr = ?r.isr, "ISR changed");
        let outcome = self.commit(Vec::new()).await;
        let error = if outcome.is_ok() {
            ErrorCode::None
        } else {
            ErrorCode::NotController
        };
        (self.partition_answer(&key, error, String::new()), outcome)
    }

    /// Starts (or cancels) partition reassignments: validated and decided by the core,
    /// written through Raft, answered once committed. Completion happens later, when
    /// the leader's ISR expansion brings every target replica in sync.
    async fn reassign_partitions(
        &mut self,
        r: AlterPartitionReassignmentsRequest,
    ) -> (
        AlterPartitionReassignmentsResponse,
        Result<(), LostLeadership>,
    ) {
        let image = self.context.state_machine.image();
        let mut results = Vec::new();
        for re in r.reassignments {
            let key = (re.topic.clone(), re.partition);
            let outcome = if !image.topics.contains_key(&re.topic) {
                Err((
                    ErrorCode::UnknownTopic,
                    format!("topic `{}` does not exist", re.topic),
                ))
            } else {
                let decided = match &re.replicas {
                    Some(target) => self.core.reassign(&key, target.clone()).map(drop),
                    None => self.core.cancel_reassignment(&key),
                };
                decided.map_err(|e| match e {
                    ReassignError::UnknownPartition => (
                        ErrorCode::UnknownTopic,
                        format!(
                            "topic `{}` has no partition {} ({} partitions)",
                            re.topic,
                            re.partition,
                            image.topics[&re.topic].partitions.len()
                        ),
                    ),
                    ReassignError::InvalidAssignment(m) => (ErrorCode::InvalidReplicaAssignment, m),
                    ReassignError::NoReassignmentInProgress => (
                        ErrorCode::NoReassignmentInProgress,
                        format!("{}/{} is not being reassigned", re.topic, re.partition),
                    ),
                    ReassignError::CannotCancel(m) => (ErrorCode::InvalidReplicaAssignment, m),
                })
            };
            let (error, message) = match outcome {
                Ok(()) => {
                    match &re.replicas {
                        Some(target) => {
                            tracing::info!(topic = %re.topic, partition = re.partition, ?target, "reassigning partition")
                        }
                        None => {
                            tracing::info!(topic = %re.topic, partition = re.partition, "reassignment cancelled")
                        }
                    }
                    (ErrorCode::None, String::new())
                }
                Err(refusal) => refusal,
            };
            results.push(ReassignmentResult {
                topic: re.topic,
                partition: re.partition,
                error,
                message,
            });
        }
        let outcome = self
            .commit_results(&mut results, |r| (&mut r.error, &mut r.message))
            .await;
        (AlterPartitionReassignmentsResponse { results }, outcome)
    }

    async fn controlled_shutdown(
        &mut self,
        r: ControlledShutdownRequest,
    ) -> (ControlledShutdownResponse, Result<(), LostLeadership>) {
        let Some(state) = self.broker_state(r.broker_id) else {
            return (
                ControlledShutdownResponse {
                    error: ErrorCode::None,
                    message: format!("broker {} is not registered", r.broker_id),
                    remaining: Vec::new(),
                },
                Ok(()),
            );
        };
        if state.incarnation != r.incarnation {
            return (
                ControlledShutdownResponse {
                    error: ErrorCode::StaleBrokerEpoch,
                    message: format!(
                        "incarnation {} is not the registered {}",
                        r.incarnation, state.incarnation
                    ),
                    remaining: Vec::new(),
                },
                Ok(()),
            );
        }
        if !state.shutting_down {
            let moved = self.core.controlled_shutdown(r.broker_id, r.incarnation);
            tracing::info!(
                broker = r.broker_id,
                partitions = moved.len(),
                "controlled shutdown: moving leadership away"
            );
        }
        let outcome = self.commit(Vec::new()).await;
        let remaining = TopicPartitions::group(
            self.core
                .led_by(r.broker_id)
                .map(|(t, p)| (t.as_str(), *p))
                .collect::<Vec<_>>(),
        );
        (
            ControlledShutdownResponse {
                error: if outcome.is_ok() {
                    ErrorCode::None
                } else {
                    ErrorCode::NotController
                },
                message: String::new(),
                remaining,
            },
            outcome,
        )
    }
}

/// A new partition on `replicas`, led by the first, all of them in sync (its log is
/// empty everywhere).
fn new_partition_state(replicas: Vec<u32>) -> PartitionState {
    let mut isr = replicas.clone();
    isr.sort_unstable();
    PartitionState {
        leader: replicas.first().copied(),
        leader_epoch: 0,
        partition_epoch: 0,
        isr,
        replicas,
        reassigning_to: None,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    }
}

/// The topic named in a request to change it.
fn existing_topic<'a>(
    image: &'a MetadataImage,
    name: &str,
) -> Result<&'a TopicImage, (ErrorCode, String)> {
    image.topics.get(name).ok_or_else(|| {
        (
            ErrorCode::UnknownTopic,
            format!("topic `{name}` does not exist"),
        )
    })
}

fn topic_ok(name: String) -> TopicResult {
    TopicResult {
        name,
        error: ErrorCode::None,
        message: String::new(),
    }
}

/// Results as answered, unless the write of what they promise failed: then each
/// success becomes `NotController` (the client retries with the next controller).
fn lost_unless_committed(
    mut results: Vec<TopicResult>,
    outcome: &Result<(), LostLeadership>,
) -> Vec<TopicResult> {
    if outcome.is_err() {
        for r in &mut results {
            if r.error == ErrorCode::None {
                r.error = ErrorCode::NotController;
                r.message = "the controller lost its leadership; retry".into();
            }
        }
    }
    results
}

/// Whether the controller creates `__consumer_offsets` now. Its partitions' leaders
/// are the group coordinators, and it is placed on the brokers live when it is
/// created, for good: so it waits until every broker the region knows of (`known`:
/// the quorum's voters and the registered brokers) is live, which spreads the
/// coordinators over all of them when a region starts; or, when some stay down, until
/// `rf` brokers have been live for `wait` (Kafka creates the topic at the first
/// group request, with whatever brokers are up). `enough_since` keeps when `rf`
/// brokers were first live, and is cleared while fewer are.
fn offsets_topic_due(
    live: &BTreeSet<u32>,
    known: &BTreeSet<u32>,
    rf: u16,
    wait: Duration,
    now: std::time::Instant,
    enough_since: &mut Option<std::time::Instant>,
) -> bool {
    if live.len() < usize::from(rf) {
        *enough_since = None;
        return false;
    }
    if known.is_subset(live) {
        return true;
    }
    let since = *enough_since.get_or_insert(now);
    now.duration_since(since) >= wait
}

/// Kafka-style replica placement: brokers ordered by interleaving racks (a1, b1, c1,
/// a2, …), partition `p`'s replicas are consecutive brokers of that order starting at
/// `start + p`, so leaders rotate over brokers and each partition's replicas span as
/// many racks as there are. `start` comes from the topic name, so topics do not all
/// put partition 0 on the same broker.
pub(crate) fn assign_replicas(
    topic: &str,
    partitions: u32,
    replication_factor: u16,
    brokers: &[(u32, Option<String>)],
) -> Vec<Vec<u32>> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<u32>> = BTreeMap::new();
    for (id, rack) in brokers {
        by_rack.entry(rack.as_deref()).or_default().push(*id);
    }
    for ids in by_rack.values_mut() {
        ids.sort_unstable();
    }
    let mut order = Vec::with_capacity(brokers.len());
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for ids in by_rack.values() {
            if let Some(id) = ids.get(i) {
                order.push(*id);
            }
        }
    }
    let n = order.len();
    assert!(n >= replication_factor as usize, "checked by the caller");
    let start = topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % n.max(1);
    (0..partitions as usize)
        .map(|p| {
            (0..replication_factor as usize)
                .map(|j| order[(start + p + j) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offsets_topic_waits_for_known_brokers_then_for_at_most_the_wait() {
        let set = |ids: &[u32]| ids.iter().copied().collect::<BTreeSet<u32>>();
        let wait = Duration::from_secs(10);
        let t0 = std::time::Instant::now();
        // Brokers 1–3 known, replication factor 2.
        let due = |live: &[u32], at: std::time::Instant, since: &mut _| {
            offsets_topic_due(&set(live), &set(&[1, 2, 3]), 2, wait, at, since)
        };
        let mut since = None;
        // Fewer live than the replication factor: never, however long.
        assert!(!due(&[1], t0, &mut since));
        assert_eq!(since, None);
        // Enough, but broker 3 is down: the wait starts now.
        assert!(!due(&[1, 2], t0, &mut since));
        let later = t0 + Duration::from_secs(9);
        assert!(!due(&[1, 2], later, &mut since));
        // Every known broker live: at once.
        assert!(due(&[1, 2, 3], later, &mut since));
        // Broker 3 stays down: created once the wait has run out.
        let end = t0 + wait;
        assert!(due(&[1, 2], end, &mut since));
        // Dropping below the replication factor starts the wait over.
        assert!(!due(&[1], end, &mut since));
        assert_eq!(since, None);
        assert!(!due(&[1, 2], end, &mut since));
        assert!(due(&[1, 2], end + wait, &mut since));
        // A live broker the controller did not know of yet changes nothing.
        assert!(due(&[1, 2, 3, 4], t0, &mut None));
        // The one broker of a single-voter region: at once.
        let mut none = None;
        assert!(offsets_topic_due(
            &set(&[1]),
            &set(&[1]),
            1,
            wait,
            t0,
            &mut none
        ));
    }

    #[test]
    fn replicas_spread_over_racks_and_leaders_rotate() {
        let brokers = vec![
            (1, Some("a".to_string())),
            (2, Some("a".to_string())),
            (3, Some("b".to_string())),
            (4, Some("b".to_string())),
            (5, Some("c".to_string())),
            (6, Some("c".to_string())),
        ];
        let racks: BTreeMap<u32, &str> = brokers
            .iter()
            .map(|(id, r)| (*id, r.as_deref().unwrap()))
            .collect();
        let assignment = assign_replicas("orders", 12, 3, &brokers);
        let mut leaders = BTreeMap::<u32, usize>::new();
        for replicas in &assignment {
            let distinct: BTreeSet<&str> = replicas.iter().map(|r| racks[r]).collect();
            assert_eq!(distinct.len(), 3, "{replicas:?} spans every rack");
            *leaders.entry(replicas[0]).or_default() += 1;
        }
        assert_eq!(
            leaders.len(),
            6,
            "every broker leads some partition: {leaders:?}"
        );
        assert!(leaders.values().all(|n| *n == 2));
        // Without racks: distinct replicas, leaders spread.
        let plain: Vec<(u32, Option<String>)> = (1..=3).map(|i| (i, None)).collect();
        for replicas in assign_replicas("t", 3, 3, &plain) {
            let distinct: BTreeSet<u32> = replicas.iter().copied().collect();
            assert_eq!(distinct.len(), 3);
        }
        let leaders: BTreeSet<u32> = assign_replicas("t", 3, 1, &plain)
            .into_iter()
            .map(|r| r[0])
            .collect();
        assert_eq!(leaders.len(), 3);
    }
}
