//! The cluster control plane of a broker in a multi-broker cluster (`[cluster]` in
//! the config): its Raft node of the metadata quorum, the controller (active on the
//! Raft leader), the heartbeat loop that keeps this broker registered and unfenced,
//! and the latest metadata image every request handler reads.
//!
//! Who talks to whom:
//! - Raft RPCs between voters: `ApiKey::Raft`, served by [`Cluster::serve_raft`].
//! - Every broker heartbeats to the controller (`BrokerHeartbeat`), partition leaders
//!   send ISR changes (`AlterPartition`), a stopping broker asks for a controlled
//!   shutdown. These go through [`ControllerClient`], which sends to the local
//!   controller when this broker leads the quorum and to the leader's broker otherwise.
//! - Topic creates and deletes from clients are forwarded the same way, so a client
//!   may send them to any broker.

pub(crate) mod controller;
mod peers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meridian_client::Trust;
use meridian_metadata::openraft::BasicNode;
use meridian_metadata::{AppliedImage, LogStore, MetadataImage, StateMachine};
use meridian_wire::messages::*;
use meridian_wire::plugin_messages::PluginResult;
use meridian_wire::ErrorCode;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{BrokerConfig, ClusterConfig};
use controller::Command;
use peers::Peers;

/// How long a request for the controller keeps retrying while leadership settles.
const CONTROLLER_RETRY_MS: u64 = 5_000;

/// This broker's part of the cluster.
pub(crate) struct Cluster {
    pub(crate) broker_id: u32,
    /// Unique per process start, so the controller tells a restart from a pause.
    pub(crate) incarnation: u64,
    pub(crate) raft: meridian_metadata::Raft,
    /// The latest image the Raft state machine applied (and its Raft index); the
    /// broker's local state follows it (`replicas::follow_images`).
    pub(crate) image: watch::Receiver<AppliedImage>,
    /// The latest image the local state has caught up with: its topics exist in the
    /// registry and its leaders lead here. What this broker tells clients.
    published: watch::Sender<Arc<MetadataImage>>,
    /// Whether `published` holds an image yet (until then it is an empty one, which
    /// says nothing about the cluster).
    caught_up: AtomicBool,
    pub(crate) controller: ControllerClient,
    config: ClusterConfig,
    /// Whether the controller last said this broker is fenced.
    fenced: AtomicBool,
    /// Set once controlled shutdown begins: heartbeats then ask to leave.
    shutting_down: AtomicBool,
    /// Set once this broker stops taking part in the quorum's decisions (see
    /// [`Cluster::retire`]); the controller task watches it.
    retired: watch::Sender<bool>,
    /// Calls into the Raft node on behalf of others (peers' RPCs, the controller's
    /// membership changes); [`Cluster::shutdown`] closes it before stopping the node.
    raft_calls: Arc<RaftCalls>,
    /// The controller task: [`Cluster::shutdown`] ends it before stopping the Raft
    /// node, so no write or leadership check of its is left waiting on a node that
    /// stopped (openraft logs each such call as an error).
    controller_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A gate for calls into the Raft node that nobody cancels when the broker stops: a
/// call the node accepted but never answered (it stopped) is logged by openraft as
/// an error, so the node stops only after the calls in flight have ended, and none
/// starts afterwards.
#[derive(Default)]
pub(crate) struct RaftCalls {
    closed: tokio::sync::RwLock<bool>,
}

impl RaftCalls {
    /// Runs `call` unless the gate is closed (then `None`).
    pub(crate) async fn run<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        let closed = self.closed.read().await;
        if *closed {
            return None;
        }
        Some(call.await)
    }

    /// Waits (at most `timeout`) for the calls in flight, then refuses new ones.
    async fn close(&self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.closed.write()).await {
            Ok(mut closed) => *closed = true,
            Err(_) => tracing::warn!(
                ?timeout,
                "calls into the metadata quorum's Raft node still running at shutdown"
            ),
        }
    }
}

/// Sends requests to the controller, wherever it is. Cheap to clone.
///
/// The replica manager sends ISR changes with [`ControllerClient::alter_partition`].
#[derive(Clone)]
pub struct ControllerClient {
    broker_id: u32,
    /// Asked in turn while this broker knows no Raft leader (a broker that has just
    /// joined has not heard from the leader yet): the controller answers, the others
    /// refuse with `NotController`.
    voters: Vec<u32>,
    raft: meridian_metadata::Raft,
    local: mpsc::Sender<Command>,
    peers: Arc<Peers>,
}

/// How a broker trusts its peers' certificates: `cluster.peer_trust` (a pin or a PEM
/// file), else its own certificate (`own_fingerprint`: the cluster shares one
/// identity).
pub(crate) fn peer_trust(
    cluster: Option<&ClusterConfig>,
    own_fingerprint: &str,
) -> anyhow::Result<Trust> {
    Ok(match cluster.and_then(|c| c.peer_trust.as_ref()) {
        Some(t) if t.to_ascii_lowercase().starts_with("sha256:") => {
            Trust::parse_fingerprint(t).map_err(|e| anyhow::anyhow!("cluster.peer_trust: {e}"))?
        }
        Some(path) => Trust::CaFile(path.into()),
        None => Trust::parse_fingerprint(own_fingerprint)
            .map_err(|e| anyhow::anyhow!("this broker's certificate fingerprint: {e}"))?,
    })
}

impl Cluster {
    /// Opens the quorum's storage under `<data_dir>/metadata`, starts this broker's
    /// Raft node and the controller task, connecting to peers with `tls`.
    pub(crate) async fn start(
        config: &BrokerConfig,
        cluster: &ClusterConfig,
        tls: crate::tls::PeerTls,
    ) -> anyhow::Result<Arc<Cluster>> {
        let voters = cluster.parsed_voters()?;
        let dir = config.data_dir.join("metadata");
        let log_store = LogStore::open(&dir)
            .with_context(|| format!("opening the metadata log in {}", dir.display()))?;
        let state_machine = StateMachine::open(&dir)
            .with_context(|| format!("opening the metadata snapshot in {}", dir.display()))?;
        let image = state_machine.subscribe();
        let addresses: BTreeMap<u32, String> =
            voters.iter().map(|v| (v.id, v.address.clone())).collect();
        let peers = Arc::new(Peers::new(config.broker_id, addresses, tls));
        let raft_config = Arc::new(
            meridian_metadata::raft_config(&config.cluster_id, cluster.raft_timing())
                .validate()
                .context("Raft settings")?,
        );
        let raft = meridian_metadata::Raft::new(
            config.broker_id as u64,
            raft_config,
            peers::Network {
                peers: peers.clone(),
            },
            log_store,
            state_machine.clone(),
        )
        .await
        .context("starting the metadata quorum's Raft node")?;
        let is_voter = voters.iter().any(|v| v.id == config.broker_id);
        if !is_voter {
            // A broker added to a running cluster: it heartbeats to the controller
            // (found through the voters), which adds it to the quorum as a learner;
            // from then on the leader replicates the metadata log to it.
            tracing::info!(
                broker = config.broker_id,
                "not among cluster.voters: joining the cluster as a broker (a learner of the metadata quorum)"
            );
        }
        // Every voter proposes the same initial membership; only a pristine node
        // accepts it, so this is safe on every start (openraft's recommendation).
        if is_voter && !raft.is_initialized().await? {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|v| (v.id as u64, BasicNode::new(&v.address)))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "metadata quorum already initialized");
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let (retired, retired_rx) = watch::channel(false);
        let raft_calls = Arc::new(RaftCalls::default());
        let context = Arc::new(controller::Context {
            retired: retired_rx,
            raft_calls: raft_calls.clone(),
            broker_id: config.broker_id,
            raft: raft.clone(),
            state_machine,
            session_timeout_ms: cluster.broker_session_timeout_ms,
            session_on_takeover_ms: cluster.broker_session_on_takeover_ms(),
            default_replication_factor: cluster.default_replication_factor(),
            max_partitions_per_topic: config.max_partitions_per_topic,
            topic_defaults: config.topic_defaults.clone(),
            offsets_topic_partitions: config.offsets_topic_num_partitions,
            offsets_topic_replication_factor: cluster.offsets_topic_replication_factor(),
            offsets_topic_create_wait: Duration::from_millis(cluster.offsets_topic_create_wait_ms),
            leader_rebalance: cluster.auto_leader_rebalance_enable.then_some(
                controller::LeaderRebalance {
                    interval: Duration::from_millis(cluster.leader_imbalance_check_interval_ms),
                    imbalance_percent: cluster.leader_imbalance_per_broker_percentage,
                },
            ),
        });
        let controller_task = tokio::spawn(controller::run(context, rx));
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Arc::new(Cluster {
            broker_id: config.broker_id,
            incarnation,
            raft: raft.clone(),
            image,
            published: watch::Sender::new(Arc::new(MetadataImage::default())),
            caught_up: AtomicBool::new(false),
            controller: ControllerClient {
                broker_id: config.broker_id,
                voters: voters.iter().map(|v| v.id).collect(),
                raft,
                local: tx,
                peers,
            },
            config: cluster.clone(),
            fenced: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            retired,
            raft_calls,
            controller_task: parking_lot::Mutex::new(Some(controller_task)),
        }))
    }

    /// The latest metadata image this broker's local state has caught up with: a
    /// client told a partition's leader from it finds that leader ready (the Raft
    /// image runs ahead by the moments it takes to open logs and change roles).
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.published.borrow().clone()
    }

    /// Records that the local state now follows `image`.
    pub(crate) fn published(&self, image: Arc<MetadataImage>) {
        self.published.send_replace(image);
        self.caught_up.store(true, Ordering::Release);
    }

    /// Whether this broker's local state follows an image yet. Until it does (just
    /// after a start, while the metadata log is replayed and the start-up gate
    /// waits for this process's registration), it knows nothing it could tell a
    /// client about topics, leaders or coordinators.
    pub(crate) fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Resolves once [`caught_up`](Cluster::caught_up). Polled: `published` says so
    /// only after it has sent the image, so a wake on the send could find it not
    /// yet said. Waited on once, at start.
    pub(crate) async fn until_caught_up(&self) {
        while !self.caught_up() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Resolves once this broker's local state follows an image that `ready` likes.
    pub(crate) async fn published_where(&self, ready: impl Fn(&MetadataImage) -> bool) {
        let mut images = self.published.subscribe();
        // The sender lives as long as `self`: `wait_for` ends only by `ready`.
        let _ = images.wait_for(|image| ready(image)).await;
    }

    /// The brokers and the quorum as this broker sees them (`DescribeCluster`); on
    /// the controller with each member's progress through the metadata log.
    pub(crate) fn describe(&self, cluster_id: &str) -> DescribeClusterResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let members: Vec<Member> = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id as u32,
                addr: node.addr.clone(),
                voter: membership.voter_ids().any(|v| v == *id),
            })
            .collect();
        let leader = metrics.state == meridian_metadata::openraft::ServerState::Leader;
        let last_log_index = metrics.last_log_index.map_or(-1, |i| i as i64);
        let matched: BTreeMap<u32, i64> = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, log)| (*id as u32, log.map_or(-1, |l| l.index as i64)))
            // The leader's own log is all its own.
            .chain(leader.then_some((self.broker_id, last_log_index)))
            .collect();
        DescribeClusterResponse {
            error: ErrorCode::None,
            message: String::new(),
            cluster_id: cluster_id.to_string(),
            broker_id: self.broker_id,
            controller_id: metrics.current_leader.map_or(NO_BROKER, |l| l as u32),
            quorum: Some(QuorumStatus {
                term: metrics.current_term,
                last_log_index,
                applied_index: metrics.last_applied.map_or(-1, |l| l.index as i64),
                from_controller: leader,
                millis_since_quorum_ack: metrics.millis_since_quorum_ack.map_or(-1, |ms| ms as i64),
            }),
            brokers: broker_statuses(&self.image(), &members, &matched),
        }
    }

    /// The controller's broker id (the Raft leader), or [`NO_BROKER`].
    pub(crate) fn controller_id(&self) -> u32 {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map_or(NO_BROKER, |l| l as u32)
    }

    pub(crate) fn session_timeout_ms(&self) -> u64 {
        self.config.broker_session_timeout_ms
    }

    /// Answers a Raft RPC from a peer.
    pub(crate) async fn serve_raft(&self, request: RaftRequest) -> Result<RaftResponse, String> {
        let from = request.from;
        self.raft_calls
            .run(peers::serve_raft(&self.raft, request))
            .await
            .ok_or_else(|| format!("Raft RPC from broker {from} while stopping: not served"))?
            .map(|payload| RaftResponse {
                payload: payload.into(),
            })
            .map_err(|e| format!("malformed Raft RPC from broker {from}: {e}"))
    }

    /// Heartbeats to the controller every `broker_heartbeat_interval_ms`, for the
    /// broker's lifetime.
    pub(crate) async fn heartbeat_loop(
        self: Arc<Self>,
        host: String,
        port: u16,
        rack: Option<String>,
        kafka: Option<(String, u16)>,
    ) {
        let interval = Duration::from_millis(self.config.broker_heartbeat_interval_ms);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let request = BrokerHeartbeatRequest {
                broker_id: self.broker_id,
                incarnation: self.incarnation,
                host: host.clone(),
                port,
                rack: rack.clone(),
                wants_shutdown: self.shutting_down.load(Ordering::Relaxed),
                kafka: kafka.clone(),
            };
            match self.controller.heartbeat(request, interval * 2).await {
                Ok(r) if r.error.is_ok() => {
                    let was = self.fenced.swap(r.fenced, Ordering::Relaxed);
                    if was != r.fenced {
                        tracing::info!(
                            broker = self.broker_id,
                            fenced = r.fenced,
                            controller = r.controller_id,
                            "controller changed this broker's state"
                        );
                    }
                }
                Ok(r) => {
                    tracing::debug!(error = %r.error, message = %r.message, "heartbeat refused")
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
            }
        }
    }

    /// Controlled shutdown: asks the controller to move this broker's leaderships away
    /// and waits until it leads nothing, or `timeout` passes.
    pub(crate) async fn controlled_shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let request = ControlledShutdownRequest {
                broker_id: self.broker_id,
                incarnation: self.incarnation,
            };
            match self
                .controller
                .controlled_shutdown(request, Duration::from_secs(1))
                .await
            {
                Ok(r) if r.error.is_ok() && r.remaining.is_empty() => {
                    tracing::info!("controlled shutdown: this broker leads no partition any more");
                    return;
                }
                Ok(r) => {
                    tracing::info!(error = %r.error, remaining = ?r.remaining, "controlled shutdown: waiting")
                }
                Err(e) => {
                    tracing::info!(error = %e, "controlled shutdown: controller not reachable")
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!("controlled shutdown timed out; stopping with leaderships still here");
    }

    /// The last step before a stopping broker stops serving its peers: from here on it
    /// neither campaigns for Raft leadership nor acts as the controller. Its inbound
    /// connections close next, while its outbound ones still work; without this it
    /// would still win elections (its vote requests go out, its leader's heartbeats no
    /// longer come in) and, as the controller, fence every broker whose heartbeats it
    /// can no longer receive. As a Raft leader it also stops sending heartbeats, so the
    /// other voters elect a new leader after their election timeout.
    pub(crate) fn retire(&self) {
        self.raft.runtime_config().tick(false);
        self.retired.send_replace(true);
    }

    pub(crate) async fn shutdown(&self) {
        self.raft_calls.close(Duration::from_secs(2)).await;
        // Retired, the controller decides nothing more; a call of its still in
        // the node is dropped with it.
        let controller = self.controller_task.lock().take();
        if let Some(task) = controller {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the Raft node");
        }
    }
}

/// Why a request did not reach the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("no controller answered within {0:?} (is a majority of the voters up?)")]
    Unavailable(Duration),
    #[error("the controller gave an unexpected answer: {0}")]
    Protocol(String),
}

impl ControllerClient {
    /// Sends `request` to the controller: to the local controller task when this
    /// broker leads the quorum, else to the leader over QUIC. Retries while there is
    /// no leader or the answer is `NotController`, for at most `timeout`.
    async fn call<T>(
        &self,
        timeout: Duration,
        local: impl Fn(oneshot::Sender<T>) -> Command,
        remote: impl Fn() -> Request,
        from_response: impl Fn(Response) -> Option<T>,
        not_controller: impl Fn(&T) -> bool,
    ) -> Result<T, ControllerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let others: Vec<u32> = self
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.broker_id)
            .collect();
        let mut attempt = 0usize;
        loop {
            let leader = self
                .raft
                .metrics()
                .borrow()
                .current_leader
                .map(|l| l as u32)
                .or_else(|| {
                    attempt += 1;
                    (!others.is_empty()).then(|| others[attempt % others.len()])
                });
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = match leader {
                Some(id) if id == self.broker_id => {
                    let (tx, rx) = oneshot::channel();
                    if self.local.send(local(tx)).await.is_err() {
                        return Err(ControllerError::Unavailable(timeout));
                    }
                    tokio::time::timeout(left, rx)
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Some(id) => match self.peers.request(id, remote(), left).await {
                    Ok(response) => {
                        let kind = response.api_key();
                        Some(from_response(response).ok_or_else(|| {
                            ControllerError::Protocol(format!("a {kind:?} response"))
                        })?)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "controller request failed");
                        None
                    }
                },
                None => None,
            };
            match answer {
                Some(answer) if !not_controller(&answer) => return Ok(answer),
                _ => {}
            }
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(ControllerError::Unavailable(timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn heartbeat(
        &self,
        request: BrokerHeartbeatRequest,
        timeout: Duration,
    ) -> Result<BrokerHeartbeatResponse, ControllerError> {
        self.call(
            timeout,
            |tx| Command::Heartbeat(request.clone(), tx),
            || Request::BrokerHeartbeat(request.clone()),
            |r| match r {
                Response::BrokerHeartbeat(r) => Some(r),
                _ => None,
            },
            |r| r.error == ErrorCode::NotController,
        )
        .await
    }

    /// Asks the controller to change a partition's ISR (from the partition's leader).
    /// The answer carries the partition's state after the request, accepted or not.
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<AlterPartitionResponse, ControllerError> {
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| Command::AlterPartition(request.clone(), tx),
            || Request::AlterPartition(request.clone()),
            |r| match r {
                Response::AlterPartition(r) => Some(r),
                _ => None,
            },
            |r| r.error == ErrorCode::NotController,
        )
        .await
    }

    pub(crate) async fn controlled_shutdown(
        &self,
        request: ControlledShutdownRequest,
        timeout: Duration,
    ) -> Result<ControlledShutdownResponse, ControllerError> {
        self.call(
            timeout,
            |tx| Command::ControlledShutdown(request.clone(), tx),
            || Request::ControlledShutdown(request.clone()),
            |r| match r {
                Response::ControlledShutdown(r) => Some(r),
                _ => None,
            },
            |r| r.error == ErrorCode::NotController,
        )
        .await
    }

    /// A topic request for the controller, answered per topic: retried while any
    /// topic's answer is `NotController`.
    async fn topic_request<Q: Clone, A>(
        &self,
        request: Q,
        local: fn(Q, oneshot::Sender<A>) -> Command,
        remote: fn(Q) -> Request,
        answer: fn(Response) -> Option<A>,
        results: fn(&A) -> &[TopicResult],
    ) -> Result<A, ControllerError> {
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| local(request.clone(), tx),
            || remote(request.clone()),
            answer,
            |a| {
                results(a)
                    .iter()
                    .any(|t| t.error == ErrorCode::NotController)
            },
        )
        .await
    }

    pub(crate) async fn create_topics(
        &self,
        request: CreateTopicsRequest,
    ) -> Result<CreateTopicsResponse, ControllerError> {
        self.topic_request(
            request,
            Command::CreateTopics,
            Request::CreateTopics,
            |r| match r {
                Response::CreateTopics(r) => Some(r),
                _ => None,
            },
            |r| &r.results,
        )
        .await
    }

    pub(crate) async fn delete_topics(
        &self,
        request: DeleteTopicsRequest,
    ) -> Result<DeleteTopicsResponse, ControllerError> {
        // As `topic_request`, with the topics named by ID too.
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| Command::DeleteTopics(request.clone(), tx),
            || Request::DeleteTopics(request.clone()),
            |r| match r {
                Response::DeleteTopics(r) => Some(r),
                _ => None,
            },
            |a| {
                let errors = a.results.iter().map(|t| t.error);
                errors
                    .chain(a.by_id.iter().map(|d| d.error))
                    .any(|e| e == ErrorCode::NotController)
            },
        )
        .await
    }

    pub(crate) async fn alter_topic_configs(
        &self,
        request: AlterTopicConfigsRequest,
    ) -> Result<AlterTopicConfigsResponse, ControllerError> {
        self.topic_request(
            request,
            Command::AlterTopicConfigs,
            Request::AlterTopicConfigs,
            |r| match r {
                Response::AlterTopicConfigs(r) => Some(r),
                _ => None,
            },
            |r| &r.results,
        )
        .await
    }

    pub(crate) async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> Result<CreatePartitionsResponse, ControllerError> {
        self.topic_request(
            request,
            Command::CreatePartitions,
            Request::CreatePartitions,
            |r| match r {
                Response::CreatePartitions(r) => Some(r),
                _ => None,
            },
            |r| &r.results,
        )
        .await
    }

    /// A plugin change for the controller. A controller on another broker is sent
    /// the client's request again; that broker checks it as this one did.
    pub(crate) async fn plugin_change(
        &self,
        change: controller::PluginChange,
    ) -> Result<PluginResult, ControllerError> {
        use controller::PluginChange;
        use meridian_wire::plugin_messages::{
            PluginDeployRequest, PluginNameRequest, TopicAttachRequest, TopicDetachRequest,
        };
        let remote = || match change.clone() {
            PluginChange::Deploy { name, plugin } => Request::PluginDeploy(PluginDeployRequest {
                name,
                version: plugin.version,
                module: bytes::Bytes::copy_from_slice(&plugin.module),
            }),
            PluginChange::Remove { name } => Request::PluginRemove(PluginNameRequest { name }),
            PluginChange::Attach { topic, attachment } => {
                Request::TopicAttach(TopicAttachRequest {
                    topic,
                    attachment: crate::plugins::wire_attachment(attachment),
                })
            }
            PluginChange::Detach { topic, plugin } => {
                Request::TopicDetach(TopicDetachRequest { topic, plugin })
            }
        };
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| Command::Plugins(change.clone(), tx),
            remote,
            |r| match r {
                Response::PluginDeploy(r) => Some(PluginResult {
                    error: r.error,
                    message: r.message,
                }),
                Response::PluginRemove(r) | Response::TopicAttach(r) | Response::TopicDetach(r) => {
                    Some(r)
                }
                _ => None,
            },
            |r| r.error == ErrorCode::NotController,
        )
        .await
    }

    /// Unregisters a broker at the controller.
    pub(crate) async fn unregister_broker(
        &self,
        request: UnregisterBrokerRequest,
    ) -> Result<UnregisterBrokerResponse, ControllerError> {
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| Command::UnregisterBroker(request.clone(), tx),
            || Request::UnregisterBroker(request.clone()),
            |r| match r {
                Response::UnregisterBroker(r) => Some(r),
                _ => None,
            },
            |r| r.error == ErrorCode::NotController,
        )
        .await
    }

    /// Preferred leader elections at the controller.
    pub(crate) async fn elect_leaders(
        &self,
        request: ElectLeadersRequest,
    ) -> Result<ElectLeadersResponse, ControllerError> {
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| Command::ElectLeaders(request.clone(), tx),
            || Request::ElectLeaders(request.clone()),
            |r| match r {
                Response::ElectLeaders(r) => Some(r),
                _ => None,
            },
            |r| r.error == ErrorCode::NotController,
        )
        .await
    }

    /// Starts or cancels partition reassignments at the controller.
    pub(crate) async fn reassign_partitions(
        &self,
        request: AlterPartitionReassignmentsRequest,
    ) -> Result<AlterPartitionReassignmentsResponse, ControllerError> {
        self.call(
            Duration::from_millis(CONTROLLER_RETRY_MS),
            |tx| Command::ReassignPartitions(request.clone(), tx),
            || Request::AlterPartitionReassignments(request.clone()),
            |r| match r {
                Response::AlterPartitionReassignments(r) => Some(r),
                _ => None,
            },
            |r| {
                r.results
                    .iter()
                    .any(|t| t.error == ErrorCode::NotController)
            },
        )
        .await
    }

    /// Hands a controller request that arrived over the wire to the local controller
    /// task (which refuses with `NotController` when this broker does not lead the
    /// quorum; the sender then retries with the leader). Never forwarded, so two
    /// brokers with different views of the leader cannot bounce a request between them.
    pub(crate) async fn local<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.local.send(command(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// A member of the metadata quorum, for [`broker_statuses`].
struct Member {
    id: u32,
    /// `host:port` as the membership has it.
    addr: String,
    voter: bool,
}

/// Every broker the image has registered or the quorum names, with its state, its
/// part in the quorum, how many partitions it leads and holds, and `matched` (the
/// leader's view of each member's metadata log; empty elsewhere).
fn broker_statuses(
    image: &MetadataImage,
    members: &[Member],
    matched: &BTreeMap<u32, i64>,
) -> Vec<BrokerStatus> {
    let mut leaders: BTreeMap<u32, u32> = BTreeMap::new();
    let mut replicas: BTreeMap<u32, u32> = BTreeMap::new();
    for p in image.topics.values().flat_map(|t| &t.partitions) {
        if let Some(leader) = p.leader {
            *leaders.entry(leader).or_default() += 1;
        }
        for r in &p.replicas {
            *replicas.entry(*r).or_default() += 1;
        }
    }
    let ids: std::collections::BTreeSet<u32> = image
        .brokers
        .keys()
        .copied()
        .chain(members.iter().map(|m| m.id))
        .collect();
    ids.into_iter()
        .map(|id| {
            let member = members.iter().find(|m| m.id == id);
            let role = match member {
                Some(m) if m.voter => QuorumRole::Voter,
                Some(_) => QuorumRole::Observer,
                None => QuorumRole::None,
            };
            let (host, port, rack, state) = match image.brokers.get(&id) {
                Some(b) => (
                    b.host.clone(),
                    b.port,
                    b.rack.clone(),
                    if b.shutting_down {
                        BrokerState::ShuttingDown
                    } else if b.fenced {
                        BrokerState::Fenced
                    } else {
                        BrokerState::Running
                    },
                ),
                None => {
                    let (host, port) = member
                        .and_then(|m| m.addr.rsplit_once(':'))
                        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(0)))
                        .unwrap_or_default();
                    (host, port, None, BrokerState::Unregistered)
                }
            };
            BrokerStatus {
                broker_id: id,
                host,
                port,
                rack,
                state,
                role,
                leaders: leaders.get(&id).copied().unwrap_or(0),
                replicas: replicas.get(&id).copied().unwrap_or(0),
                matched_index: matched.get(&id).copied().unwrap_or(-1),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_are_described_with_their_state_role_partitions_and_progress() {
        use meridian_metadata::{BrokerRegistration, PartitionState, TopicImage};
        let mut image = MetadataImage::default();
        let registration = |id: u32, fenced: bool, shutting_down: bool| BrokerRegistration {
            id,
            incarnation: 1,
            host: "127.0.0.1".into(),
            port: 9000 + id as u16,
            rack: (id == 1).then(|| "eu-1a".to_string()),
            fenced,
            shutting_down,
            kafka: None,
        };
        image.brokers.insert(1, registration(1, false, false));
        image.brokers.insert(2, registration(2, true, false));
        image.brokers.insert(3, registration(3, true, true));
        image.brokers.insert(5, registration(5, false, false));
        let partition = |leader: Option<u32>, replicas: Vec<u32>| PartitionState {
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: replicas.clone(),
            replicas,
            reassigning_to: None,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        };
        image.topics.insert(
            "t".into(),
            TopicImage {
                name: "t".into(),
                configs: BTreeMap::new(),
                replication_factor: 2,
                partitions: vec![
                    partition(Some(1), vec![1, 2]),
                    partition(Some(1), vec![1, 5]),
                    partition(None, vec![2, 3]),
                ],
                created_at: 1,
                id: meridian_wire::TopicId::NONE,
            },
        );
        let member = |id: u32, voter: bool| Member {
            id,
            addr: format!("127.0.0.1:{}", 9400 + id),
            voter,
        };
        let members = [
            member(1, true),
            member(2, true),
            member(4, true),
            member(5, false),
        ];
        let matched = BTreeMap::from([(1, 40), (2, 31), (5, 40)]);
        let described = broker_statuses(&image, &members, &matched);
        let summary: Vec<_> = described
            .iter()
            .map(|b| {
                (
                    b.broker_id,
                    b.state,
                    b.role,
                    b.leaders,
                    b.replicas,
                    b.matched_index,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, BrokerState::Running, QuorumRole::Voter, 2, 2, 40),
                (2, BrokerState::Fenced, QuorumRole::Voter, 0, 2, 31),
                (3, BrokerState::ShuttingDown, QuorumRole::None, 0, 1, -1),
                (4, BrokerState::Unregistered, QuorumRole::Voter, 0, 0, -1),
                (5, BrokerState::Running, QuorumRole::Observer, 0, 1, 40),
            ]
        );
        // Registered brokers keep their own address; a voter that never registered
        // shows the quorum's.
        assert_eq!(
            (described[0].host.as_str(), described[0].port),
            ("127.0.0.1", 9001)
        );
        assert_eq!(described[0].rack.as_deref(), Some("eu-1a"));
        assert_eq!(
            (described[3].host.as_str(), described[3].port),
            ("127.0.0.1", 9404)
        );
    }

    #[tokio::test]
    async fn closing_the_raft_gate_waits_for_calls_in_flight_and_refuses_later_ones() {
        let calls = Arc::new(RaftCalls::default());
        let (release, released) = oneshot::channel::<()>();
        let (started, has_started) = oneshot::channel::<()>();
        let in_flight = tokio::spawn({
            let calls = calls.clone();
            async move {
                calls
                    .run(async {
                        started.send(()).unwrap();
                        released.await.unwrap();
                        7
                    })
                    .await
            }
        });
        has_started.await.unwrap();
        let closing = tokio::spawn({
            let calls = calls.clone();
            async move { calls.close(Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!closing.is_finished(), "closed with a call in flight");
        release.send(()).unwrap();
        assert_eq!(in_flight.await.unwrap(), Some(7));
        closing.await.unwrap();
        assert_eq!(calls.run(async { 8 }).await, None);
    }

    #[tokio::test]
    async fn a_call_that_never_ends_does_not_hold_up_shutdown() {
        let calls = Arc::new(RaftCalls::default());
        let (started, has_started) = oneshot::channel::<()>();
        let stuck = tokio::spawn({
            let calls = calls.clone();
            async move {
                calls
                    .run(async {
                        started.send(()).unwrap();
                        std::future::pending::<()>().await
                    })
                    .await
            }
        });
        has_started.await.unwrap();
        let closed = tokio::time::timeout(
            Duration::from_secs(10),
            calls.close(Duration::from_millis(50)),
        )
        .await;
        assert!(closed.is_ok(), "shutdown waited for a call that never ends");
        assert!(!stuck.is_finished());
        stuck.abort();
    }
}
