//! Request handlers: one function per API, each turning a decoded request into a
//! response. Per-topic and per-partition problems become error codes in the
//! response; nothing here panics on client input.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use meridian_core::replication::epoch_at;
use meridian_log::{require_keys, validate_batches, LogError, ValidatedBatches};
use meridian_wire::messages::*;
use meridian_wire::{ErrorCode, TopicId};
use tokio::sync::oneshot;

use crate::acl;
use crate::cluster::controller::Command;
use crate::cluster::Cluster;
use crate::config::FlushPolicy;
use crate::topics::{Failure, Partition, Topic};
use crate::Shared;

/// How long a `Metadata` request that auto-created topics in a cluster waits for this
/// broker to apply them before answering (usually a few milliseconds).
const AUTO_CREATE_WAIT: Duration = Duration::from_secs(5);

/// One topic of a fetch: its name, the ID it was asked by ([`TopicId::NONE`] when
/// asked by name), the topic (or why not), and the partitions asked.
type FetchTarget = (
    String,
    TopicId,
    Result<Arc<Topic>, Failure>,
    Vec<FetchPartition>,
);

/// What an append did: where its records start, the log start after it, the handle
/// to fsync it by, and the time a LogAppendTime topic stamped it with (-1 in a
/// CreateTime topic).
pub(crate) struct Appended {
    pub(crate) base_offset: i64,
    pub(crate) log_start: i64,
    pub(crate) sync: meridian_log::SyncHandle,
    pub(crate) log_append_time: i64,
}

/// A warning any client can cause at will (a Raft RPC sent to a broker outside a
/// cluster, a malformed one): logged at most once per [`Throttled::INTERVAL_MS`],
/// the next one saying how many were held back, so a client cannot fill the log.
pub(crate) struct Throttled {
    last_ms: AtomicI64,
    held: AtomicU64,
}

impl Throttled {
    const INTERVAL_MS: i64 = 10_000;

    pub(crate) const fn new() -> Throttled {
        Throttled {
            last_ms: AtomicI64::new(i64::MIN),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when this one is to be logged.
    pub(crate) fn allow(&self, now_ms: i64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == i64::MIN || now_ms.saturating_sub(last) >= Self::INTERVAL_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    /// Whether `request` is answered from the cluster's metadata image and this
    /// broker has none yet: it is then refused with the retriable `MetadataNotReady`
    /// rather than answered from an empty image, which would tell a client that
    /// every topic is unknown and no broker is alive.
    pub(crate) fn not_ready_for(&self, request: &Request) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        !cluster.caught_up()
            && matches!(
                request,
                Request::Metadata(_)
                    | Request::DescribeTopics(_)
                    | Request::FindCoordinator(_)
                    | Request::ListPartitionReassignments(_)
                    | Request::DescribeCluster
                    | Request::DescribeLogs(_)
            )
    }

    /// Checks `request` from `client` against `acl_file`: the request to serve (which
    /// may have lost topics the client may not touch) and what finishes its answer,
    /// or why it is refused whole (with the request, handed back; boxed, as refusals
    /// are rare and the pair is large). Without `acl_file` every request passes as
    /// it is.
    pub(crate) fn authorize(
        &self,
        client: Option<&acl::Principal>,
        request: Request,
        span: &tracing::Span,
    ) -> Result<(Request, acl::Finish), Box<(acl::Denied, Request)>> {
        let Some(rules) = &self.acl else {
            return Ok((request, acl::Finish::default()));
        };
        let acl = rules.read().clone();
        // Under `tls_client_ca` every client has a certificate, and under
        // `kafka_sasl_users_file` every Kafka client a SASL user; without
        // `tls_client_ca`, QUIC clients are this name, which only rules for every
        // client (`*`) match (SASL user names have no spaces).
        let principal = client.cloned().unwrap_or_else(|| acl::Principal {
            name: Arc::from("(no certificate)"),
            broker: false,
        });
        match acl::check(&acl, &principal, request, self) {
            acl::Checked::Refuse(denied, request) => {
                self.metrics.authorization_denied(1);
                tracing::debug!(parent: span, reason = %denied.message, "refused by acl_file");
                Err(Box::new((denied, request)))
            }
            acl::Checked::Serve { request, after } => {
                let denied = after.denied_topics();
                if denied > 0 {
                    self.metrics.authorization_denied(denied);
                    tracing::debug!(parent: span, topics = denied, "topics refused by acl_file");
                }
                Ok((request, acl::Finish::new(acl, principal, after)))
            }
        }
    }

    /// Dispatches one request. `None` means "send no response" (acks=0 produce).
    /// `appends_done` is told when a produce request's appends are done ([`Caller`]).
    ///
    /// [`Caller`]: crate::Caller
    pub(crate) async fn handle(
        self: &Arc<Self>,
        request: Request,
        peer: std::net::SocketAddr,
        appends_done: Option<oneshot::Sender<()>>,
    ) -> Option<Response> {
        Some(match request {
            Request::ApiVersions(_) => Response::ApiVersions(self.api_versions()),
            Request::Metadata(r) => Response::Metadata(match &self.cluster {
                Some(cluster) => {
                    if self.config.auto_create_topics {
                        self.auto_create_in_cluster(cluster, &r).await;
                    }
                    self.cluster_metadata(cluster, r)
                }
                None => self.metadata(r),
            }),
            Request::CreateTopics(mut r) => {
                for t in &mut r.topics {
                    if t.partitions == 0 {
                        t.partitions = self.config.default_partitions;
                    }
                }
                Response::CreateTopics(match &self.cluster {
                    // The controller resolves a replication factor of 0.
                    Some(cluster) => cluster_create_topics(cluster, r).await,
                    None => self.create_topics(r),
                })
            }
            Request::DeleteTopics(r) => Response::DeleteTopics(match &self.cluster {
                Some(cluster) => cluster_delete_topics(cluster, r).await,
                None => self.delete_topics(r),
            }),
            Request::AlterTopicConfigs(r) => Response::AlterTopicConfigs(match &self.cluster {
                Some(cluster) => cluster_alter_topic_configs(cluster, r).await,
                None => self.alter_topic_configs(r),
            }),
            Request::CreatePartitions(r) => Response::CreatePartitions(match &self.cluster {
                Some(cluster) => cluster_create_partitions(cluster, r).await,
                None => self.create_partitions(r),
            }),
            Request::DescribeTopics(r) => Response::DescribeTopics(match &self.cluster {
                Some(cluster) => self.cluster_describe_topics(cluster, r),
                None => self.describe_topics(r),
            }),
            // The cluster control plane (cluster/).
            Request::Raft(r) => Response::Raft(self.raft_rpc(r).await),
            Request::BrokerHeartbeat(r) => Response::BrokerHeartbeat(
                match self.controller_local(|tx| Command::Heartbeat(r, tx)).await {
                    Ok(response) => response,
                    Err((error, message)) => BrokerHeartbeatResponse {
                        error,
                        message,
                        controller_id: NO_BROKER,
                        fenced: true,
                        shutdown_ready: false,
                    },
                },
            ),
            Request::AlterPartition(r) => Response::AlterPartition(
                match self
                    .controller_local(|tx| Command::AlterPartition(r, tx))
                    .await
                {
                    Ok(response) => response,
                    Err((error, message)) => AlterPartitionResponse {
                        error,
                        message,
                        leader: NO_BROKER,
                        leader_epoch: -1,
                        partition_epoch: -1,
                        isr: Vec::new(),
                        replicas: Vec::new(),
                    },
                },
            ),
            Request::ControlledShutdown(r) => Response::ControlledShutdown(
                match self
                    .controller_local(|tx| Command::ControlledShutdown(r, tx))
                    .await
                {
                    Ok(response) => response,
                    Err((error, message)) => ControlledShutdownResponse {
                        error,
                        message,
                        remaining: Vec::new(),
                    },
                },
            ),
            Request::Produce(r) => {
                return self.produce(r, appends_done).await.map(Response::Produce)
            }
            Request::Fetch(r) => Response::Fetch(self.fetch(r).await),
            Request::ListOffsets(r) => Response::ListOffsets(self.list_offsets(r)),
            Request::FindCoordinator(r) => Response::FindCoordinator(self.find_coordinator(r)),
            Request::JoinGroup(r) => {
                Response::JoinGroup(self.join_group(r, peer.to_string()).await)
            }
            Request::SyncGroup(r) => Response::SyncGroup(self.sync_group(r).await),
            Request::Heartbeat(r) => Response::Heartbeat(self.heartbeat(r).await),
            Request::LeaveGroup(r) => Response::LeaveGroup(self.leave_group(r).await),
            Request::OffsetCommit(r) => Response::OffsetCommit(self.offset_commit(r).await),
            Request::OffsetFetch(r) => Response::OffsetFetch(self.offset_fetch(r)),
            Request::ListGroups(_) => Response::ListGroups(self.list_groups()),
            Request::DescribeGroups(r) => Response::DescribeGroups(self.describe_groups(r)),
            Request::DeleteGroups(r) => Response::DeleteGroups(self.delete_groups(r).await),
            Request::OffsetDelete(r) => Response::OffsetDelete(self.offset_delete(r).await),
            Request::InitProducerId(r) => Response::InitProducerId(self.init_producer_id(r)),
            Request::DeleteRecords(r) => Response::DeleteRecords(self.delete_records(r)),
            Request::OffsetForLeaderEpoch(r) => {
                Response::OffsetForLeaderEpoch(self.offset_for_leader_epoch(r))
            }
            // Plugin administration (plugins.rs).
            Request::PluginDeploy(r) => Response::PluginDeploy(match &self.cluster {
                Some(cluster) => self.cluster_plugin_deploy(cluster, r).await,
                None => self.plugin_deploy(r),
            }),
            Request::PluginList => Response::PluginList(self.plugin_list()),
            Request::PluginDescribe(r) => Response::PluginDescribe(self.plugin_describe(r)),
            Request::PluginRemove(r) => Response::PluginRemove(match &self.cluster {
                Some(cluster) => self.cluster_plugin_remove(cluster, r).await,
                None => self.plugin_remove(r),
            }),
            Request::TopicAttach(r) => Response::TopicAttach(match &self.cluster {
                Some(cluster) => self.cluster_topic_attach(cluster, r).await,
                None => self.topic_attach(r),
            }),
            Request::TopicDetach(r) => Response::TopicDetach(match &self.cluster {
                Some(cluster) => self.cluster_topic_detach(cluster, r).await,
                None => self.topic_detach(r),
            }),
            Request::AlterPartitionReassignments(r) => {
                Response::AlterPartitionReassignments(match &self.cluster {
                    Some(cluster) => cluster_reassign_partitions(cluster, r).await,
                    None => self.reassign_partitions(r),
                })
            }
            Request::ListPartitionReassignments(r) => {
                Response::ListPartitionReassignments(self.list_reassignments(r))
            }
            Request::DescribeLogs(r) => Response::DescribeLogs(self.describe_logs(r)),
            Request::ElectLeaders(r) => Response::ElectLeaders(match &self.cluster {
                Some(cluster) => match cluster.controller.elect_leaders(r).await {
                    Ok(response) => response,
                    Err(e) => ElectLeadersResponse {
                        error: ErrorCode::NotController,
                        message: e.to_string(),
                        results: Vec::new(),
                    },
                },
                None => self.elect_leaders_single_broker(r),
            }),
            Request::DescribeCluster => Response::DescribeCluster(match &self.cluster {
                Some(cluster) => cluster.describe(&self.config.cluster_id),
                None => self.describe_single_broker(),
            }),
            Request::UnregisterBroker(r) => Response::UnregisterBroker(match &self.cluster {
                Some(cluster) => match cluster.controller.unregister_broker(r).await {
                    Ok(response) => response,
                    Err(e) => UnregisterBrokerResponse {
                        error: ErrorCode::NotController,
                        message: e.to_string(),
                    },
                },
                None => UnregisterBrokerResponse {
                    error: ErrorCode::BrokerIdNotRegistered,
                    message: format!(
                        "this broker is not in a cluster; it is the only broker there is (broker {})",
                        self.config.broker_id
                    ),
                },
            }),
        })
    }

    /// Whether this broker holds `topic`'s `partition`, for administrative requests
    /// (unlike [`Shared::topic`], never creates the topic).
    fn existing_partition(&self, topic: &str, partition: u32) -> Result<(), Failure> {
        let t = self.registry.get(topic).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownTopic,
                format!("topic `{topic}` does not exist"),
            )
        })?;
        t.partition(partition).map(|_| ())
    }

    /// A single broker is every partition's only replica, so its preferred leader,
    /// and leads every partition: there is nothing to elect, clean or unclean.
    fn elect_leaders_single_broker(&self, r: ElectLeadersRequest) -> ElectLeadersResponse {
        let me = self.config.broker_id;
        let asked: Vec<(String, u32)> = match &r.partitions {
            Some(list) => TopicPartitions::pairs(list)
                .map(|(topic, partition)| (topic.to_string(), partition))
                .collect(),
            None => self
                .registry
                .all()
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.index)))
                .collect(),
        };
        let results = asked
            .into_iter()
            .map(|(topic, partition)| {
                let (error, message, leader) = match self.existing_partition(&topic, partition) {
                    Err(f) => (f.code, f.message, NO_BROKER),
                    Ok(()) => (
                        ErrorCode::ElectionNotNeeded,
                        format!("a single broker (broker {me}) leads every partition"),
                        me,
                    ),
                };
                ElectionResult {
                    topic,
                    partition,
                    error,
                    message,
                    leader,
                }
            })
            .collect();
        ElectLeadersResponse {
            error: ErrorCode::None,
            message: String::new(),
            results,
        }
    }

    /// A single broker is the whole cluster and its own controller; it has no
    /// quorum. It leads every partition it holds, except where a control plane made
    /// another broker the leader (in-process replication, `replica_manager.rs`).
    fn describe_single_broker(&self) -> DescribeClusterResponse {
        let me = self.config.broker_id;
        let (mut leaders, mut replicas) = (0, 0);
        for topic in self.registry.all() {
            for p in &topic.partitions {
                replicas += 1;
                let led_elsewhere = p
                    .replication
                    .lock()
                    .as_ref()
                    .and_then(|r| r.record.as_ref())
                    .is_some_and(|record| record.leader != Some(me));
                if !led_elsewhere {
                    leaders += 1;
                }
            }
        }
        DescribeClusterResponse {
            error: ErrorCode::None,
            message: String::new(),
            cluster_id: self.config.cluster_id.clone(),
            broker_id: me,
            controller_id: me,
            quorum: None,
            brokers: vec![BrokerStatus {
                broker_id: me,
                host: self.config.advertised_host(),
                port: self.local_addr.port(),
                rack: self.config.rack.clone(),
                state: BrokerState::Running,
                role: QuorumRole::None,
                leaders,
                replicas,
                matched_index: -1,
            }],
        }
    }

    /// The reassignments under way, from this broker's metadata image (a single
    /// broker has none).
    fn list_reassignments(
        &self,
        r: ListPartitionReassignmentsRequest,
    ) -> ListPartitionReassignmentsResponse {
        let mut reassignments = Vec::new();
        if let Some(cluster) = &self.cluster {
            let image = cluster.image();
            for topic in image.topics.values() {
                if r.topics
                    .as_ref()
                    .is_some_and(|ts| !ts.contains(&topic.name))
                {
                    continue;
                }
                for (index, p) in topic.partitions.iter().enumerate() {
                    let Some(target) = &p.reassigning_to else {
                        continue;
                    };
                    reassignments.push(OngoingReassignment {
                        topic: topic.name.clone(),
                        partition: index as u32,
                        replicas: p.replicas.clone(),
                        target: target.clone(),
                        adding: p.adding_replicas.clone(),
                        removing: p.removing_replicas.clone(),
                        isr: p.isr.clone(),
                        leader: p.leader.unwrap_or(NO_BROKER),
                    });
                }
            }
        }
        ListPartitionReassignmentsResponse {
            error: ErrorCode::None,
            message: String::new(),
            reassignments,
        }
    }

    /// The partition logs this broker holds, read from the logs themselves: every
    /// partition its metadata makes it a replica of (a single broker: every one), or
    /// those named, replica or not.
    fn describe_logs(&self, r: DescribeLogsRequest) -> DescribeLogsResponse {
        let me = self.config.broker_id;
        let image = self.cluster.as_ref().map(|c| c.image());
        let is_replica = |topic: &str, partition: u32| match &image {
            None => true,
            Some(image) => image
                .topics
                .get(topic)
                .and_then(|t| t.partitions.get(partition as usize))
                .is_some_and(|p| p.replicas.contains(&me)),
        };
        let describe = |topic: &str, partition: u32| {
            let mut log = LocalLog {
                topic: topic.to_owned(),
                partition,
                error: ErrorCode::None,
                replica: is_replica(topic, partition),
                log_start_offset: 0,
                log_end_offset: 0,
                size_bytes: 0,
            };
            let partitions = match &image {
                Some(image) => image.topics.get(topic).map(|t| t.partitions.len()),
                None => self.registry.get(topic).map(|t| t.partitions.len()),
            };
            match partitions {
                None => log.error = ErrorCode::UnknownTopic,
                Some(n) if partition as usize >= n => log.error = ErrorCode::InvalidPartition,
                // A broker that holds no copy of the partition has nothing on disk.
                Some(_) => {
                    let local = self
                        .registry
                        .get(topic)
                        .and_then(|t| t.partitions.get(partition as usize).cloned());
                    if let Some(local) = local {
                        match local.log() {
                            Ok(l) => {
                                log.log_start_offset = l.log_start_offset();
                                log.log_end_offset = l.log_end_offset();
                                log.size_bytes = l.size_bytes();
                            }
                            Err(e) => log.error = e.code,
                        }
                    }
                }
            }
            log
        };
        let logs = match r.partitions {
            Some(wanted) => wanted
                .iter()
                .flat_map(|tp| tp.partitions.iter().map(|p| describe(&tp.topic, *p)))
                .collect(),
            None => self
                .registry
                .all()
                .iter()
                .flat_map(|t| (0..t.partitions.len() as u32).map(|p| (t.name.clone(), p)))
                .filter(|(t, p)| is_replica(t, *p))
                .map(|(t, p)| describe(&t, p))
                .collect(),
        };
        let log_dir = self.config.data_dir.join("topics");
        let space = meridian_log::DiskSpace::of(&log_dir)
            .map_err(|e| tracing::debug!(error = %e, dir = %log_dir.display(), "statvfs failed"))
            .ok();
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        DescribeLogsResponse {
            error: ErrorCode::None,
            message: String::new(),
            broker_id: me,
            log_dir: log_dir.display().to_string(),
            total_bytes: space.map_or(-1, |s| bytes(s.total_bytes)),
            usable_bytes: space.map_or(-1, |s| bytes(s.usable_bytes)),
            logs,
        }
    }

    /// A single broker holds every replica, so the only valid target is itself.
    fn reassign_partitions(
        &self,
        r: AlterPartitionReassignmentsRequest,
    ) -> AlterPartitionReassignmentsResponse {
        let me = self.config.broker_id;
        let results = r
            .reassignments
            .into_iter()
            .map(|re| {
                let (error, message) = match self.existing_partition(&re.topic, re.partition) {
                    Err(f) => (f.code, f.message),
                    Ok(()) => match &re.replicas {
                        None => (
                            ErrorCode::NoReassignmentInProgress,
                            format!("{}/{} is not being reassigned", re.topic, re.partition),
                        ),
                        Some(replicas) if replicas.as_slice() == [me] => (ErrorCode::None, String::new()),
                        Some(replicas) => (
                            ErrorCode::InvalidReplicaAssignment,
                            format!("replicas {replicas:?}: this is a single-broker cluster (broker {me})"),
                        ),
                    },
                };
                ReassignmentResult {
                    topic: re.topic,
                    partition: re.partition,
                    error,
                    message,
                }
            })
            .collect();
        AlterPartitionReassignmentsResponse { results }
    }

    /// A request only the controller answers, handed to this broker's controller task.
    async fn controller_local<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, (ErrorCode, String)> {
        let Some(cluster) = &self.cluster else {
            return Err((
                ErrorCode::NotController,
                "this broker runs alone (no [cluster] in its config): there is no controller"
                    .into(),
            ));
        };
        cluster.controller.local(command).await.ok_or_else(|| {
            (
                ErrorCode::BrokerShuttingDown,
                "the controller task stopped".into(),
            )
        })
    }

    async fn raft_rpc(&self, request: RaftRequest) -> RaftResponse {
        static OUTSIDE: Throttled = Throttled::new();
        static MALFORMED: Throttled = Throttled::new();
        let Some(cluster) = &self.cluster else {
            if let Some(held_back) = OUTSIDE.allow(now_ms()) {
                tracing::warn!(
                    from = request.from,
                    held_back,
                    "Raft RPC received, but this broker is not in a cluster"
                );
            }
            return RaftResponse {
                payload: Bytes::new(),
            };
        };
        match cluster.serve_raft(request).await {
            Ok(response) => response,
            Err(message) => {
                // The sender fails to parse an empty answer and retries.
                if let Some(held_back) = MALFORMED.allow(now_ms()) {
                    tracing::warn!(held_back, "{message}");
                }
                RaftResponse {
                    payload: Bytes::new(),
                }
            }
        }
    }

    /// `auto_create_topics` in a cluster, as Kafka does it: a `Metadata` request naming
    /// topics that do not exist has the controller create them (`default_partitions`,
    /// `cluster.default_replication_factor`, the topic defaults), then waits until
    /// this broker serves them, so the answer already names their leaders. A refusal
    /// (say, too few live brokers for the replication factor) is logged, and the
    /// answer says `UnknownTopic`.
    async fn auto_create_in_cluster(&self, cluster: &Cluster, request: &MetadataRequest) {
        let Some(names) = &request.topics else {
            return;
        };
        let image = cluster.image();
        let missing: Vec<CreateTopic> = names
            .iter()
            .filter(|name| {
                !image.topics.contains_key(*name)
                    && !name.starts_with("__")
                    && meridian_wire::validate_topic_name(name).is_ok()
            })
            .map(|name| CreateTopic {
                name: name.clone(),
                partitions: self.config.default_partitions,
                replication_factor: 0,
                configs: Vec::new(),
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let wanted: Vec<String> = missing.iter().map(|t| t.name.clone()).collect();
        let request = CreateTopicsRequest {
            topics: missing,
            validate_only: false,
        };
        let mut created = Vec::new();
        match cluster.controller.create_topics(request).await {
            Ok(response) => {
                for r in response.results {
                    if r.error.is_ok() || r.error == ErrorCode::TopicAlreadyExists {
                        if r.error.is_ok() {
                            tracing::info!(topic = %r.name, "auto-created topic");
                        }
                        created.push(r.name);
                    } else {
                        tracing::warn!(topic = %r.name, error = %r.error, message = %r.message, "auto-creating a topic was refused");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(topics = ?wanted, error = %e, "auto-creating topics failed: no controller");
            }
        }
        if !created.is_empty() {
            let waited = tokio::time::timeout(
                AUTO_CREATE_WAIT,
                cluster.published_where(|image| {
                    created.iter().all(|name| image.topics.contains_key(name))
                }),
            )
            .await;
            if waited.is_err() {
                tracing::debug!(topics = ?created, "auto-created topics not applied here yet; the client will retry");
            }
        }
    }

    /// Metadata from the cluster's image: brokers, the controller, and every
    /// partition's leader, epoch, replicas and ISR.
    fn cluster_metadata(&self, cluster: &Cluster, request: MetadataRequest) -> MetadataResponse {
        let image = cluster.image();
        let names: Vec<String> = match request.topics {
            None => image.topics.keys().cloned().collect(),
            Some(names) => names,
        };
        MetadataResponse {
            brokers: image
                .live_brokers()
                .map(|b| BrokerInfo {
                    broker_id: b.id,
                    host: b.host.clone(),
                    port: b.port,
                })
                .collect(),
            controller_id: cluster.controller_id(),
            topics: names
                .into_iter()
                .map(|name| match image.topics.get(&name) {
                    Some(topic) => TopicMetadata {
                        name,
                        id: topic.id(),
                        error: ErrorCode::None,
                        message: String::new(),
                        partitions: topic
                            .partitions
                            .iter()
                            .enumerate()
                            .map(|(index, p)| PartitionMetadata {
                                partition: index as u32,
                                error: if p.leader.is_some() {
                                    ErrorCode::None
                                } else {
                                    ErrorCode::LeaderNotAvailable
                                },
                                leader: p.leader.unwrap_or(NO_BROKER),
                                leader_epoch: p.leader_epoch,
                                replicas: p.replicas.clone(),
                                isr: p.isr.clone(),
                            })
                            .collect(),
                    },
                    None => {
                        let (error, message) = match meridian_wire::validate_topic_name(&name) {
                            Err(invalid) => (ErrorCode::InvalidTopic, invalid),
                            Ok(()) => (
                                ErrorCode::UnknownTopic,
                                format!("topic `{name}` does not exist"),
                            ),
                        };
                        TopicMetadata {
                            name,
                            id: TopicId::NONE,
                            error,
                            message,
                            partitions: Vec::new(),
                        }
                    }
                })
                .collect(),
        }
    }

    /// Topics as the cluster's image has them; log figures from this broker's replica
    /// where it has one (-1 where it does not).
    fn cluster_describe_topics(
        &self,
        cluster: &Cluster,
        request: DescribeTopicsRequest,
    ) -> DescribeTopicsResponse {
        let image = cluster.image();
        let names: Vec<String> = if request.names.is_empty() {
            image.topics.keys().cloned().collect()
        } else {
            request.names
        };
        let topics = names
            .into_iter()
            .map(|name| {
                let Some(topic) = image.topics.get(&name) else {
                    return TopicDescription {
                        message: format!("topic `{name}` does not exist"),
                        name,
                        id: TopicId::NONE,
                        error: ErrorCode::UnknownTopic,
                        replication_factor: 0,
                        configs: Vec::new(),
                        partitions: Vec::new(),
                        plugins: Vec::new(),
                    };
                };
                let local = self.registry.get(&name);
                TopicDescription {
                    plugins: self.plugins.described_chain(&name),
                    name: name.clone(),
                    id: topic.id(),
                    error: ErrorCode::None,
                    message: String::new(),
                    replication_factor: topic.replication_factor,
                    configs: crate::topic_config::TopicOverrides(topic.configs.clone())
                        .describe(&self.registry.defaults),
                    partitions: (0..topic.partitions.len() as u32)
                        .map(|index| {
                            let log = local.as_ref().and_then(|t| t.partition(index).ok());
                            match log.map(|p| p.log()) {
                                Some(Ok(log)) => PartitionDescription {
                                    partition: index,
                                    error: ErrorCode::None,
                                    log_start_offset: log.log_start_offset(),
                                    high_watermark: log.log_end_offset(),
                                    size_bytes: log.size_bytes(),
                                    segments: log.segment_count() as u32,
                                },
                                Some(Err(f)) => PartitionDescription {
                                    partition: index,
                                    error: f.code,
                                    log_start_offset: -1,
                                    high_watermark: -1,
                                    size_bytes: 0,
                                    segments: 0,
                                },
                                None => PartitionDescription {
                                    partition: index,
                                    error: ErrorCode::None,
                                    log_start_offset: -1,
                                    high_watermark: -1,
                                    size_bytes: 0,
                                    segments: 0,
                                },
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        DescribeTopicsResponse { topics }
    }

    fn init_producer_id(&self, r: InitProducerIdRequest) -> InitProducerIdResponse {
        let refuse = |error, message: String| InitProducerIdResponse {
            error,
            message,
            producer_id: -1,
            producer_epoch: -1,
        };
        if r.transactional_id.is_some() {
            return refuse(
                ErrorCode::UnsupportedVersion,
                "transactions are not supported; omit the transactional id".into(),
            );
        }
        match self.producer_ids.next() {
            Ok(producer_id) => InitProducerIdResponse {
                error: ErrorCode::None,
                message: String::new(),
                producer_id,
                producer_epoch: 0,
            },
            Err(e) => refuse(
                ErrorCode::StorageError,
                format!("allocating a producer id: {e}"),
            ),
        }
    }

    fn api_versions(&self) -> ApiVersionsResponse {
        ApiVersionsResponse {
            apis: ApiKey::ALL
                .iter()
                .map(|k| ApiVersionRange {
                    api_key: *k as u16,
                    min_version: k.min_version(),
                    max_version: k.max_version(),
                })
                .collect(),
            broker_id: self.config.broker_id,
            cluster_id: self.config.cluster_id.clone(),
            max_frame_bytes: self.config.max_frame_bytes,
        }
    }

    /// Finds a topic, creating it when `auto_create_topics` is on (a single broker;
    /// in a cluster only `Metadata` creates topics, through the controller, see
    /// [`Shared::auto_create_in_cluster`]).
    pub(crate) fn topic(&self, name: &str) -> Result<Arc<Topic>, Failure> {
        if let Some(topic) = self.registry.get(name) {
            return Ok(topic);
        }
        meridian_wire::validate_topic_name(name)
            .map_err(|m| Failure::new(ErrorCode::InvalidTopic, m))?;
        if self.cluster.is_some() {
            return Err(Failure::new(
                ErrorCode::UnknownTopic,
                format!(
                    "topic `{name}` does not exist on this broker (create it{})",
                    if self.config.auto_create_topics {
                        "; with auto_create_topics a Metadata request for it creates it"
                    } else {
                        ", or enable auto_create_topics"
                    }
                ),
            ));
        }
        if !self.config.auto_create_topics {
            return Err(Failure::new(
                ErrorCode::UnknownTopic,
                format!("topic `{name}` does not exist (create it, or enable auto_create_topics)"),
            ));
        }
        match self
            .registry
            .create(name, self.config.default_partitions, 1, Vec::new())
        {
            Ok(topic) => {
                self.groups
                    .topic_changed(name, Some(topic.partitions.len() as u32));
                Ok(topic)
            }
            // Another request created it first.
            Err(f) if f.code == ErrorCode::TopicAlreadyExists => self
                .registry
                .get(name)
                .ok_or_else(|| Failure::new(ErrorCode::UnknownTopic, "topic vanished")),
            Err(f) => Err(f),
        }
    }

    /// The topic, or the request-wide refusal when there is one.
    fn topic_unless(
        &self,
        refuse_all: &Option<Failure>,
        name: &str,
    ) -> Result<Arc<Topic>, Failure> {
        match refuse_all {
            Some(f) => Err(f.clone()),
            None => self.topic(name),
        }
    }

    fn metadata(&self, request: MetadataRequest) -> MetadataResponse {
        let topics = match request.topics {
            None => self.registry.all().into_iter().map(Ok).collect::<Vec<_>>(),
            Some(names) => names
                .iter()
                .map(|n| self.topic(n).map_err(|f| (n.clone(), f)))
                .collect(),
        };
        let broker_id = self.config.broker_id;
        let mut brokers = vec![BrokerInfo {
            broker_id,
            host: self.config.advertised_host(),
            port: self.local_addr.port(),
        }];
        // Peers the control plane told us about (replication).
        for (id, addr) in self.replication.brokers() {
            if id != broker_id {
                brokers.push(BrokerInfo {
                    broker_id: id,
                    host: addr.ip().to_string(),
                    port: addr.port(),
                });
            }
        }
        MetadataResponse {
            brokers,
            controller_id: broker_id,
            topics: topics
                .into_iter()
                .map(|t| match t {
                    Ok(topic) => TopicMetadata {
                        name: topic.name.clone(),
                        id: topic.id,
                        error: ErrorCode::None,
                        message: String::new(),
                        partitions: topic
                            .partitions
                            .iter()
                            .map(|p| {
                                let error = p.log().err().map_or(ErrorCode::None, |f| f.code);
                                match p.replication.lock().as_ref().and_then(|r| r.record.clone()) {
                                    // No leader: reported as leader u32::MAX with
                                    // NotLeaderOrFollower.
                                    Some(record) => PartitionMetadata {
                                        partition: p.index,
                                        error: if record.leader.is_none() && error.is_ok() {
                                            ErrorCode::NotLeaderOrFollower
                                        } else {
                                            error
                                        },
                                        leader: record.leader.unwrap_or(u32::MAX),
                                        leader_epoch: record.leader_epoch,
                                        replicas: record.replicas.clone(),
                                        isr: record.isr.iter().copied().collect(),
                                    },
                                    None => PartitionMetadata {
                                        partition: p.index,
                                        error,
                                        leader: broker_id,
                                        leader_epoch: 0,
                                        replicas: vec![broker_id],
                                        isr: vec![broker_id],
                                    },
                                }
                            })
                            .collect(),
                    },
                    Err((name, failure)) => TopicMetadata {
                        name,
                        id: TopicId::NONE,
                        error: failure.code,
                        message: failure.message,
                        partitions: Vec::new(),
                    },
                })
                .collect(),
        }
    }

    fn create_topics(&self, request: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut created = Vec::new();
        let results = request
            .topics
            .into_iter()
            .map(|t| {
                let configs: Vec<(String, String)> =
                    t.configs.into_iter().map(|c| (c.key, c.value)).collect();
                // 0 is the cluster's default, which on one broker is 1.
                let replication_factor = t.replication_factor.max(1);
                let outcome = if request.validate_only {
                    self.registry
                        .validate_create(&t.name, t.partitions, replication_factor, configs)
                        .map(|overrides| (overrides, TopicId::NONE))
                } else {
                    self.registry
                        .create(&t.name, t.partitions, replication_factor, configs)
                        .map(|topic| {
                            self.groups
                                .topic_changed(&topic.name, Some(topic.partitions.len() as u32));
                            (topic.overrides.clone(), topic.id)
                        })
                };
                let outcome = outcome.map(|(overrides, id)| {
                    created.push(CreatedTopic {
                        name: t.name.clone(),
                        id,
                        partitions: t.partitions,
                        replication_factor,
                        configs: overrides.describe(&self.registry.defaults),
                    })
                });
                topic_result(t.name, outcome)
            })
            .collect();
        CreateTopicsResponse { results, created }
    }

    fn alter_topic_configs(&self, request: AlterTopicConfigsRequest) -> AlterTopicConfigsResponse {
        let results = request.topics.into_iter().map(|t| {
            let outcome = refuse_internal(&t.name, "altered").and_then(|()| {
                let changes = t.changes.into_iter().map(|c| (c.key, c.value)).collect();
                if request.validate_only {
                    self.registry
                        .validate_alter_configs(&t.name, changes, t.replace)
                } else {
                    self.registry
                        .alter_configs(&t.name, changes, t.replace)
                        .map(drop)
                }
            });
            topic_result(t.name, outcome)
        });
        AlterTopicConfigsResponse {
            results: results.collect(),
        }
    }

    fn create_partitions(&self, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
        let results = request.topics.into_iter().map(|t| {
            let outcome = refuse_internal(&t.name, "altered").and_then(|()| {
                if request.validate_only {
                    return self.registry.validate_add_partitions(&t.name, t.count);
                }
                let topic = self.registry.add_partitions(&t.name, t.count)?;
                // Groups subscribed to the topic rebalance over the new partitions.
                self.groups
                    .topic_changed(&topic.name, Some(topic.partitions.len() as u32));
                Ok(())
            });
            topic_result(t.name, outcome)
        });
        CreatePartitionsResponse {
            results: results.collect(),
        }
    }

    fn delete_topics(&self, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
        let results = request.names.into_iter().map(|name| {
            let outcome = refuse_internal(&name, "deleted").and_then(|()| {
                self.registry.delete(&name)?;
                self.forget_deleted_topic(&name);
                Ok(())
            });
            topic_result(name, outcome)
        });
        let by_id = request.ids.into_iter().map(|id| {
            let name = self.registry.name_of(id);
            let outcome = match &name {
                None => Err(crate::topics::unknown_topic_id(id)),
                Some(name) => refuse_internal(name, "deleted").and_then(|()| {
                    // Fails if the topic went meanwhile: its name is not the ID's.
                    let name = self.registry.delete_id(id)?;
                    self.forget_deleted_topic(&name);
                    Ok(())
                }),
            };
            deleted_by_id(id, name, outcome)
        });
        DeleteTopicsResponse {
            results: results.collect(),
            by_id: by_id.collect(),
        }
    }

    /// What goes with a topic this broker deleted (single broker).
    fn forget_deleted_topic(&self, name: &str) {
        self.replication.forget_topic(name);
        self.topic_deleted(name);
        // A topic recreated under this name starts without plugins.
        self.plugins.forget_topic(name);
    }

    fn describe_topics(&self, request: DescribeTopicsRequest) -> DescribeTopicsResponse {
        let topics: Vec<Result<Arc<Topic>, (String, Failure)>> = if request.names.is_empty() {
            self.registry.all().into_iter().map(Ok).collect()
        } else {
            request
                .names
                .into_iter()
                .map(|name| match self.registry.get(&name) {
                    Some(topic) => Ok(topic),
                    None => Err((
                        name.clone(),
                        Failure::new(
                            ErrorCode::UnknownTopic,
                            format!("topic `{name}` does not exist"),
                        ),
                    )),
                })
                .collect()
        };
        let topics = topics
            .into_iter()
            .map(|t| match t {
                Ok(topic) => TopicDescription {
                    plugins: self.plugins.described_chain(&topic.name),
                    name: topic.name.clone(),
                    id: topic.id,
                    error: ErrorCode::None,
                    message: String::new(),
                    replication_factor: topic.replication_factor,
                    configs: topic.overrides.describe(&self.registry.defaults),
                    partitions: topic
                        .partitions
                        .iter()
                        .map(|p| match p.log() {
                            Ok(log) => PartitionDescription {
                                partition: p.index,
                                error: ErrorCode::None,
                                log_start_offset: log.log_start_offset(),
                                high_watermark: Self::high_watermark_of(p, log.log_end_offset()),
                                size_bytes: log.size_bytes(),
                                segments: log.segment_count() as u32,
                            },
                            Err(f) => PartitionDescription {
                                partition: p.index,
                                error: f.code,
                                log_start_offset: -1,
                                high_watermark: -1,
                                size_bytes: 0,
                                segments: 0,
                            },
                        })
                        .collect(),
                },
                Err((name, f)) => TopicDescription {
                    name,
                    id: TopicId::NONE,
                    error: f.code,
                    message: f.message,
                    replication_factor: 0,
                    configs: Vec::new(),
                    partitions: Vec::new(),
                    plugins: Vec::new(),
                },
            })
            .collect();
        DescribeTopicsResponse { topics }
    }

    /// Each partition of each topic a request names, answered on its own:
    /// `answer` gets the topic and partition, or the failure refusing them (the
    /// request names more than `max_partitions_per_request`, an unknown topic or
    /// partition), with what was asked of the partition. Returns each topic's name
    /// and answers, in the request's order.
    fn each_partition<T, P, A>(
        &self,
        topics: &[T],
        named: impl Fn(&T) -> (&String, &Vec<P>),
        index: impl Fn(&P) -> u32,
        mut answer: impl FnMut(Result<(&Topic, &Partition), Failure>, &P) -> A,
    ) -> Vec<(String, Vec<A>)> {
        let refuse_all = self.count_partitions(topics, |t| named(t).1.len()).err();
        topics
            .iter()
            .map(|t| {
                let (name, partitions) = named(t);
                let topic = self.topic_unless(&refuse_all, name);
                let answers = partitions
                    .iter()
                    .map(|p| {
                        let asked = match &topic {
                            Ok(topic) => topic
                                .partition(index(p))
                                .map(|partition| (&**topic, &**partition)),
                            Err(f) => Err(f.clone()),
                        };
                        answer(asked, p)
                    })
                    .collect();
                (name.clone(), answers)
            })
            .collect()
    }

    fn count_partitions<T>(
        &self,
        topics: &[T],
        partitions_of: impl Fn(&T) -> usize,
    ) -> Result<(), Failure> {
        let n: usize = topics.iter().map(partitions_of).sum();
        let limit = self.config.max_partitions_per_request as usize;
        if n > limit {
            return Err(Failure::new(
                ErrorCode::PolicyViolation,
                format!("request names {n} partitions; the limit is {limit} (max_partitions_per_request)"),
            ));
        }
        Ok(())
    }

    async fn produce(
        self: &Arc<Self>,
        request: ProduceRequest,
        appends_done: Option<oneshot::Sender<()>>,
    ) -> Option<ProduceResponse> {
        let acks = request.acks;
        let refuse_all = if !(-1..=1).contains(&acks) {
            Some(Failure::new(
                ErrorCode::InvalidRequiredAcks,
                format!("acks must be 0, 1 or all (-1), got {acks}"),
            ))
        } else {
            self.count_partitions(&request.topics, |t| t.partitions.len())
                .err()
        };
        let wait_for_fsync = acks != 0 && self.config.flush == FlushPolicy::Always;
        let timeout = Duration::from_millis(u64::from(request.timeout_ms));
        let plugin_wait = timeout * crate::plugins::PLUGIN_WAIT_PERCENT / 100;
        // acks=all: (topic index, partition index, partition, offset the high
        // watermark must reach).
        let mut commits: Vec<(usize, usize, Arc<Partition>, i64)> = Vec::new();
        let mut syncs = Vec::new();
        let mut topics = Vec::with_capacity(request.topics.len());
        for produce_topic in request.topics {
            let topic = refuse_internal(&produce_topic.name, "produced to")
                .and_then(|()| self.topic_unless(&refuse_all, &produce_topic.name));
            let mut partitions = Vec::with_capacity(produce_topic.partitions.len());
            for p in produce_topic.partitions {
                let outcome = topic.as_ref().map_err(Clone::clone).and_then(|t| {
                    let (appended, touched) = if p.partition == UNASSIGNED_PARTITION {
                        // Routed by the topic's partitioner plugin (plugins.rs).
                        let routed = self.append_routed(t, &p.records, acks == -1, plugin_wait)?;
                        ((-1, routed.log_start, routed.syncs, -1), routed.appended)
                    } else {
                        let partition = t.partition(p.partition)?;
                        self.check_produce(t, partition, acks == -1)?;
                        let a = self.append_produced(t, partition, &p.records, plugin_wait)?;
                        (
                            (a.base_offset, a.log_start, vec![a.sync], a.log_append_time),
                            vec![partition.clone()],
                        )
                    };
                    if acks == -1 {
                        for partition in touched {
                            if partition.replication.lock().is_some() {
                                let required = partition.log()?.log_end_offset();
                                commits.push((
                                    topics.len(),
                                    partitions.len(),
                                    partition.clone(),
                                    required,
                                ));
                            }
                        }
                    }
                    Ok(appended)
                });
                let (error, message, base_offset, log_start_offset, log_append_time) = match outcome
                {
                    Ok((base_offset, log_start, sync, log_append_time)) => {
                        if wait_for_fsync {
                            for sync in sync {
                                syncs.push((topics.len(), partitions.len(), sync));
                            }
                        }
                        let none = ErrorCode::None;
                        (none, String::new(), base_offset, log_start, log_append_time)
                    }
                    Err(f) => {
                        tracing::debug!(topic = %produce_topic.name, partition = p.partition, code = ?f.code, message = %f.message, "produce refused");
                        (f.code, f.message, -1, -1, -1)
                    }
                };
                partitions.push(ProducePartitionResponse {
                    partition: p.partition,
                    error,
                    message,
                    base_offset,
                    log_append_time,
                    log_start_offset,
                });
            }
            topics.push(ProduceTopicResponse {
                name: produce_topic.name,
                partitions,
            });
        }
        if let Some(appends_done) = appends_done {
            // Nothing above awaited: the appends are in the log, in request order.
            let _ = appends_done.send(());
        }
        // Group commit: every partition appended above waits for one shared fsync round.
        let mut waiters = Vec::with_capacity(syncs.len());
        for (topic_idx, partition_idx, handle) in syncs {
            let (tx, rx) = oneshot::channel();
            self.group_commit.sync(
                handle,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            waiters.push((topic_idx, partition_idx, rx));
        }
        for (topic_idx, partition_idx, rx) in waiters {
            let failure = match rx.await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("fsync failed: {e}"),
                Err(_) => "fsync thread stopped".to_string(),
            };
            let slot = &mut topics[topic_idx].partitions[partition_idx];
            slot.error = ErrorCode::StorageError;
            slot.message = failure;
        }
        // acks=all: wait until every in-sync replica has the records (the high
        // watermark covers them), all partitions against one deadline.
        let deadline = tokio::time::Instant::now() + timeout;
        for (topic_idx, partition_idx, partition, required) in commits {
            if topics[topic_idx].partitions[partition_idx].error != ErrorCode::None {
                continue;
            }
            if let Err(f) = self.wait_for_commit(&partition, required, deadline).await {
                tracing::debug!(topic = %topics[topic_idx].name, partition = partition.index, code = ?f.code, message = %f.message, "acks=all produce not committed");
                let slot = &mut topics[topic_idx].partitions[partition_idx];
                slot.error = f.code;
                slot.message = f.message;
            }
        }
        for slot in topics.iter().flat_map(|t| &t.partitions) {
            if slot.error != ErrorCode::None {
                self.metrics.produce_refused(slot.error);
            }
        }
        (acks != 0).then_some(ProduceResponse { topics })
    }

    /// Validates (outside the partition lock) and appends one partition's batches.
    pub(crate) fn append(
        &self,
        topic: &Topic,
        partition: &Partition,
        records: &Bytes,
    ) -> Result<Appended, Failure> {
        self.append_checked(topic, partition, records, validate_batches)
    }

    /// [`Self::append`] with the validation given: a produce chain's rewritten
    /// batches pass `validate_rewritten_batches`.
    pub(crate) fn append_checked(
        &self,
        topic: &Topic,
        partition: &Partition,
        records: &Bytes,
        validate: fn(&Bytes, u32) -> Result<ValidatedBatches, LogError>,
    ) -> Result<Appended, Failure> {
        let batches = Self::validated(topic, records, validate)?;
        Self::require_keys_if_compacted(topic, &batches)?;
        Self::require_timestamps_in_range(topic, &batches)?;
        self.append_validated(topic, partition, batches)
    }

    /// `validate` over `records`, its refusal said for `topic`.
    pub(crate) fn validated(
        topic: &Topic,
        records: &Bytes,
        validate: fn(&Bytes, u32) -> Result<ValidatedBatches, LogError>,
    ) -> Result<ValidatedBatches, Failure> {
        validate(records, topic.log_config.max_message_bytes).map_err(|e| match e {
            LogError::MessageTooLarge { size, limit } => Failure::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "record batch of {size} bytes exceeds max.message.bytes={limit} of topic `{}`",
                    topic.name
                ),
            ),
            other => Failure::from(other),
        })
    }

    /// A compacted topic takes only records with a key.
    pub(crate) fn require_keys_if_compacted(
        topic: &Topic,
        batches: &ValidatedBatches,
    ) -> Result<(), Failure> {
        if !topic.log_config.cleanup_policy.compact {
            return Ok(());
        }
        require_keys(batches).map_err(|e| {
            Failure::new(
                e.code(),
                format!(
                    "topic `{}` is compacted (cleanup.policy={}): {e}",
                    topic.name,
                    topic.log_config.cleanup_policy.name()
                ),
            )
        })
    }

    /// Batches dated within the topic's `message.timestamp.*.max.ms` of now (any
    /// date, under LogAppendTime: the broker's clock replaces it).
    pub(crate) fn require_timestamps_in_range(
        topic: &Topic,
        batches: &ValidatedBatches,
    ) -> Result<(), Failure> {
        let config = &topic.log_config;
        if config.log_append_time {
            return Ok(());
        }
        meridian_log::check_timestamps(
            batches,
            now_ms(),
            config.message_timestamp_before_max_ms,
            config.message_timestamp_after_max_ms,
        )
        .map_err(|e| Failure::new(e.code(), format!("topic `{}`: {e}", topic.name)))
    }

    /// Appends batches that passed validation (and the key check of a compacted topic),
    /// stamped with the clock under the partition's lock in a LogAppendTime topic (so
    /// a partition's append times never go back).
    pub(crate) fn append_validated(
        &self,
        topic: &Topic,
        partition: &Partition,
        batches: ValidatedBatches,
    ) -> Result<Appended, Failure> {
        let mut log = partition.log()?;
        let epoch = self.append_epoch(topic, partition, &log)?;
        let now = now_ms();
        let (batches, log_append_time) = if topic.log_config.log_append_time {
            (batches.with_log_append_time(now), now)
        } else {
            (batches, -1)
        };
        let info = log.append(batches, epoch, now).map_err(|e| {
            if matches!(e, LogError::Io(_) | LogError::Corrupt { .. }) {
                tracing::error!(topic = %topic.name, partition = partition.index, error = %e, "append failed");
            } else {
                // The client's batch (its sequence, keys, timestamps, size): its
                // answer says why; the broker is fine.
                tracing::debug!(topic = %topic.name, partition = partition.index, error = %e, "append refused");
            }
            Failure::from(e)
        })?;
        Self::appended_as_leader(partition, &log);
        let result = Appended {
            base_offset: info.base_offset,
            log_start: log.log_start_offset(),
            sync: log.sync_handle(),
            log_append_time,
        };
        drop(log);
        partition.mark_dirty();
        partition.appended.notify_waiters();
        Ok(result)
    }

    async fn fetch(self: &Arc<Self>, request: FetchRequest) -> FetchResponse {
        let max_wait =
            Duration::from_millis(request.max_wait_ms.min(self.config.max_fetch_wait_ms) as u64);
        let max_bytes = request.max_bytes.min(self.config.max_fetch_bytes).max(1);
        let deadline = tokio::time::Instant::now() + max_wait;
        // Followers replicate the batches as they are: no filter runs for them.
        let filter = if request.replica_id == CONSUMER_REPLICA_ID {
            request.filter.as_ref()
        } else {
            None
        };
        let refuse_all = if request.replica_id < CONSUMER_REPLICA_ID {
            Some(Failure::new(
                ErrorCode::InvalidRequest,
                format!(
                    "replica_id {} is neither a broker id nor -1 (consumer)",
                    request.replica_id
                ),
            ))
        } else {
            None
        };
        let refuse_all = refuse_all.or(self
            .count_partitions(&request.topics, |t| t.partitions.len())
            .err());
        // Resolve topics once; a topic deleted meanwhile keeps its open files until we finish.
        let targets: Vec<FetchTarget> = request
            .topics
            .into_iter()
            .map(|t| {
                // Asked by ID: the topic with that ID, whatever the name says.
                let (name, topic) = match (&refuse_all, t.id.is_none()) {
                    (None, false) => match acl::Topics::name_of(self.as_ref(), t.id) {
                        Some(name) => {
                            let topic = self.topic(&name);
                            (name, topic)
                        }
                        None => (String::new(), Err(crate::topics::unknown_topic_id(t.id))),
                    },
                    _ => {
                        let topic = self.topic_unless(&refuse_all, &t.name);
                        (t.name, topic)
                    }
                };
                (name, t.id, topic, t.partitions)
            })
            .collect();
        loop {
            // Register for wake-ups before reading, so an append between the read and
            // the wait is not missed.
            let mut wakeups: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = Vec::new();
            for (_, _, topic, partitions) in &targets {
                if let Ok(topic) = topic {
                    for p in partitions {
                        if let Ok(partition) = topic.partition(p.partition) {
                            let mut notified = Box::pin(partition.appended.notified());
                            notified.as_mut().enable();
                            wakeups.push(notified);
                        }
                    }
                }
            }
            let (response, n_bytes, any_error) = self
                .read_partitions(&targets, max_bytes, request.replica_id)
                .await;
            let done = n_bytes >= request.min_bytes as usize
                || any_error
                || wakeups.is_empty()
                || tokio::time::Instant::now() >= deadline;
            if done {
                return self.filter_fetch(filter, response);
            }
            let any_wakeup = std::future::poll_fn(|cx| {
                for w in wakeups.iter_mut() {
                    if w.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            });
            if tokio::time::timeout_at(deadline, any_wakeup).await.is_err() {
                // Deadline passed: one last read below returns whatever is there.
                drop(wakeups);
                let response = self
                    .read_partitions(&targets, max_bytes, request.replica_id)
                    .await
                    .0;
                return self.filter_fetch(filter, response);
            }
        }
    }

    async fn read_partitions(
        &self,
        targets: &[FetchTarget],
        max_bytes: u32,
        replica_id: i32,
    ) -> (FetchResponse, usize, bool) {
        let mut n_bytes = 0usize;
        let mut any_error = false;
        let mut topics = Vec::with_capacity(targets.len());
        for (name, id, topic, partitions) in targets {
            let mut out = Vec::with_capacity(partitions.len());
            for p in partitions {
                let budget = (max_bytes as usize).saturating_sub(n_bytes);
                let read = topic.as_ref().map_err(Clone::clone).and_then(|t| {
                    let partition = t.partition(p.partition)?;
                    self.read_partition(
                        t,
                        partition,
                        p,
                        budget.min(p.partition_max_bytes as usize) as u32,
                        n_bytes == 0,
                        replica_id,
                    )
                });
                out.push(match read {
                    Ok(read) => {
                        n_bytes += read.records.len();
                        // A follower told to truncate is answered at once.
                        any_error |= read.diverging_epoch.is_some();
                        FetchPartitionResponse {
                            partition: p.partition,
                            error: ErrorCode::None,
                            message: String::new(),
                            high_watermark: read.high_watermark,
                            log_start_offset: read.log_start_offset,
                            records: read.records,
                            diverging_epoch: read.diverging_epoch,
                        }
                    }
                    Err(f) => {
                        any_error = true;
                        // Out of range: where the log starts now (a follower that fell
                        // below it restarts there).
                        let log_start_offset = match (&topic, f.code) {
                            (Ok(t), ErrorCode::OffsetOutOfRange) => t
                                .partition(p.partition)
                                .ok()
                                .and_then(|partition| partition.log().ok())
                                .map_or(-1, |log| log.log_start_offset()),
                            _ => -1,
                        };
                        FetchPartitionResponse {
                            partition: p.partition,
                            error: f.code,
                            message: f.message,
                            high_watermark: -1,
                            log_start_offset,
                            records: Bytes::new(),
                            diverging_epoch: None,
                        }
                    }
                });
            }
            topics.push(FetchTopicResponse {
                name: name.clone(),
                id: *id,
                partitions: out,
            });
        }
        (FetchResponse { topics }, n_bytes, any_error)
    }

    fn list_offsets(&self, request: ListOffsetsRequest) -> ListOffsetsResponse {
        let topics = self
            .each_partition(
                &request.topics,
                |t| (&t.name, &t.partitions),
                |p| p.partition,
                |asked, p| {
                    let found = asked.and_then(|(topic, partition)| {
                        let log = partition.log()?;
                        // Consumers see offsets up to the high watermark, at the leader.
                        let bound = self.consumer_read_bound(topic, partition, NO_LEADER_EPOCH, None, log.log_end_offset())?;
                        let (offset, timestamp) = match p.timestamp {
                            EARLIEST_TIMESTAMP => (log.log_start_offset(), -1),
                            LATEST_TIMESTAMP => (bound.high_watermark, -1),
                            MAX_TIMESTAMP => log
                                .offset_of_max_timestamp()?
                                .filter(|&(offset, _)| offset < bound.high_watermark)
                                .unwrap_or((-1, -1)),
                            ts if ts >= 0 => log.offset_for_timestamp(ts)?.unwrap_or((log.log_end_offset(), -1)),
                            ts => {
                                return Err(Failure::new(
                                    ErrorCode::InvalidRequest,
                                    format!("timestamp {ts} is neither a time nor earliest (-2), latest (-1) or max timestamp (-3)"),
                                ))
                            }
                        };
                        let leader_epoch = match offset {
                            -1 => None,
                            offset => self.leader_epochs(topic, partition, &log, NO_LEADER_EPOCH, |epochs, _| epoch_at(epochs, offset))?,
                        };
                        Ok((offset, timestamp, leader_epoch.unwrap_or(NO_LEADER_EPOCH)))
                    });
                    match found {
                        Ok((offset, timestamp, leader_epoch)) => {
                            ListOffsetsPartitionResponse { partition: p.partition, error: ErrorCode::None, offset, timestamp, leader_epoch }
                        }
                        Err(f) => ListOffsetsPartitionResponse { partition: p.partition, error: f.code, offset: -1, timestamp: -1, leader_epoch: NO_LEADER_EPOCH },
                    }
                },
            )
            .into_iter()
            .map(|(name, partitions)| ListOffsetsTopicResponse { name, partitions })
            .collect();
        ListOffsetsResponse { topics }
    }

    /// Moves log start offsets forward (Kafka's DeleteRecords). Each partition's new
    /// start is persisted before the answer; whole segments below it are deleted.
    fn delete_records(&self, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
        let topics = self
            .each_partition(
                &request.topics,
                |t| (&t.name, &t.partitions),
                |p| p.partition,
                |asked, p| {
                    let outcome = asked.and_then(|(topic, partition)| {
                        let mut log = partition.log()?;
                        // Only the leader deletes (followers follow its log start),
                        // and only committed records, as in Kafka.
                        let high_watermark = self
                            .consumer_read_bound(topic, partition, NO_LEADER_EPOCH, None, log.log_end_offset())?
                            .high_watermark;
                        let offset = match p.offset {
                            DELETE_TO_END => high_watermark,
                            offset if offset > high_watermark => {
                                return Err(Failure::new(
                                    ErrorCode::OffsetOutOfRange,
                                    format!(
                                        "offset {offset} is above the high watermark {high_watermark}: only committed records can be deleted"
                                    ),
                                ))
                            }
                            offset => offset,
                        };
                        log.delete_before(offset).map_err(|e| {
                            if !matches!(e, LogError::OffsetOutOfRange { .. }) {
                                tracing::error!(topic = %topic.name, partition = p.partition, error = %e, "delete records failed");
                            }
                            Failure::from(e)
                        })
                    });
                    match outcome {
                        Ok(low_watermark) => DeleteRecordsPartitionResponse {
                            partition: p.partition,
                            error: ErrorCode::None,
                            message: String::new(),
                            low_watermark,
                        },
                        Err(f) => DeleteRecordsPartitionResponse {
                            partition: p.partition,
                            error: f.code,
                            message: f.message,
                            low_watermark: -1,
                        },
                    }
                },
            )
            .into_iter()
            .map(|(name, partitions)| DeleteRecordsTopicResponse { name, partitions })
            .collect();
        DeleteRecordsResponse { topics }
    }

    /// Where leader epochs end in partitions this broker leads (Kafka's
    /// OffsetForLeaderEpoch), each partition answered on its own.
    fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let topics = self
            .each_partition(
                &request.topics,
                |t| (&t.name, &t.partitions),
                |p| p.partition,
                |asked, p| {
                    let end = asked.and_then(|(topic, partition)| {
                        self.epoch_end_offset(
                            topic,
                            partition,
                            p.current_leader_epoch,
                            p.leader_epoch,
                        )
                    });
                    let (error, message, (leader_epoch, end_offset)) = match end {
                        Ok(end) => (
                            ErrorCode::None,
                            String::new(),
                            end.unwrap_or((UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)),
                        ),
                        Err(f) => (f.code, f.message, (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)),
                    };
                    EpochEnd {
                        partition: p.partition,
                        error,
                        message,
                        leader_epoch,
                        end_offset,
                    }
                },
            )
            .into_iter()
            .map(|(name, partitions)| EpochEndTopic { name, partitions })
            .collect();
        OffsetForLeaderEpochResponse { topics }
    }
}

/// Creates topics through the controller (forwarded to it when another broker is the
/// controller), answering once the records are committed.
/// Internal topics are created by the controller itself, never on request.
async fn cluster_create_topics(
    cluster: &Cluster,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let validate_only = request.validate_only;
    let mut created = Vec::new();
    let results = through_controller(
        request.topics,
        |t| &t.name,
        "created",
        async |topics| {
            let request = CreateTopicsRequest {
                topics,
                validate_only,
            };
            let response = cluster.controller.create_topics(request).await?;
            created = response.created;
            Ok::<_, crate::cluster::ControllerError>(response.results)
        },
    )
    .await;
    CreateTopicsResponse { results, created }
}

/// Refuses, per topic, what `refuse_internal` refuses; answers the rest with `ask`
/// (the controller), or `NotController` for every topic when it cannot be reached.
/// The refusals come after the controller's answers.
async fn through_controller<T, E: std::fmt::Display>(
    topics: Vec<T>,
    name_of: impl Fn(&T) -> &str,
    action: &str,
    ask: impl AsyncFnOnce(Vec<T>) -> Result<Vec<TopicResult>, E>,
) -> Vec<TopicResult> {
    let mut refused = Vec::new();
    let mut asked = Vec::new();
    for t in topics {
        match refuse_internal(name_of(&t), action) {
            Ok(()) => asked.push(t),
            Err(f) => refused.push(topic_result(name_of(&t).to_string(), Err(f))),
        }
    }
    let mut results = Vec::new();
    if !asked.is_empty() {
        let names: Vec<String> = asked.iter().map(|t| name_of(t).to_string()).collect();
        match ask(asked).await {
            Ok(answers) => results = answers,
            Err(e) => {
                results = names
                    .into_iter()
                    .map(|name| TopicResult {
                        name,
                        error: ErrorCode::NotController,
                        message: e.to_string(),
                    })
                    .collect()
            }
        }
    }
    results.extend(refused);
    results
}

/// Changes topic settings through the controller, answering once committed.
async fn cluster_alter_topic_configs(
    cluster: &Cluster,
    request: AlterTopicConfigsRequest,
) -> AlterTopicConfigsResponse {
    let validate_only = request.validate_only;
    let results = through_controller(
        request.topics,
        |t| &t.name,
        "altered",
        async |topics| {
            let request = AlterTopicConfigsRequest {
                topics,
                validate_only,
            };
            let response = cluster.controller.alter_topic_configs(request).await?;
            Ok::<_, crate::cluster::ControllerError>(response.results)
        },
    )
    .await;
    AlterTopicConfigsResponse { results }
}

/// Adds partitions through the controller, answering once committed.
async fn cluster_create_partitions(
    cluster: &Cluster,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let validate_only = request.validate_only;
    let results = through_controller(
        request.topics,
        |t| &t.name,
        "altered",
        async |topics| {
            let request = CreatePartitionsRequest {
                topics,
                validate_only,
            };
            let response = cluster.controller.create_partitions(request).await?;
            Ok::<_, crate::cluster::ControllerError>(response.results)
        },
    )
    .await;
    CreatePartitionsResponse { results }
}

/// Reassigns partitions through the controller (forwarded to it when another broker
/// is the controller), answering once the decision is committed.
async fn cluster_reassign_partitions(
    cluster: &Cluster,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let asked: Vec<(String, u32)> = request
        .reassignments
        .iter()
        .map(|r| (r.topic.clone(), r.partition))
        .collect();
    match cluster.controller.reassign_partitions(request).await {
        Ok(response) => response,
        Err(e) => AlterPartitionReassignmentsResponse {
            results: asked
                .into_iter()
                .map(|(topic, partition)| ReassignmentResult {
                    topic,
                    partition,
                    error: ErrorCode::NotController,
                    message: e.to_string(),
                })
                .collect(),
        },
    }
}

/// Deletes topics through the controller, answering once committed.
async fn cluster_delete_topics(
    cluster: &Cluster,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let results = through_controller(
        request.names,
        |name| name,
        "deleted",
        async |names| {
            let response = cluster
                .controller
                .delete_topics(DeleteTopicsRequest {
                    names,
                    ids: Vec::new(),
                })
                .await?;
            Ok::<_, crate::cluster::ControllerError>(response.results)
        },
    )
    .await;
    // By ID: the controller finds the topics (and refuses internal ones).
    let ids = request.ids;
    let by_id = if ids.is_empty() {
        Vec::new()
    } else {
        let asked = DeleteTopicsRequest {
            names: Vec::new(),
            ids: ids.clone(),
        };
        match cluster.controller.delete_topics(asked).await {
            Ok(response) => response.by_id,
            Err(e) => (ids.into_iter())
                .map(|id| DeletedById {
                    id,
                    name: String::new(),
                    error: ErrorCode::NotController,
                    message: e.to_string(),
                })
                .collect(),
        }
    };
    DeleteTopicsResponse { results, by_id }
}

/// Internal topics (`__consumer_offsets`) are written only by the broker itself.
pub(crate) fn refuse_internal(name: &str, action: &str) -> Result<(), Failure> {
    if name == crate::groups::OFFSETS_TOPIC {
        return Err(Failure::new(
            ErrorCode::PolicyViolation,
            format!("`{name}` is an internal topic and cannot be {action} by clients"),
        ));
    }
    Ok(())
}

/// The answer for a topic a DeleteTopics request named by ID (`name`: the topic's,
/// if one has the ID).
pub(crate) fn deleted_by_id(
    id: TopicId,
    name: Option<String>,
    outcome: Result<(), Failure>,
) -> DeletedById {
    let (error, message) = match outcome {
        Ok(()) => (ErrorCode::None, String::new()),
        Err(f) => (f.code, f.message),
    };
    DeletedById {
        id,
        name: name.unwrap_or_default(),
        error,
        message,
    }
}

pub(crate) fn topic_result(name: String, outcome: Result<(), Failure>) -> TopicResult {
    match outcome {
        Ok(()) => TopicResult {
            name,
            error: ErrorCode::None,
            message: String::new(),
        },
        Err(f) => TopicResult {
            name,
            error: f.code,
            message: f.message,
        },
    }
}

/// One partition's part of a fetch answer.
struct PartitionRead {
    records: Bytes,
    high_watermark: i64,
    log_start_offset: i64,
    diverging_epoch: Option<DivergingEpoch>,
}

impl Shared {
    /// Reads whole batches from `fetch_offset`: for a consumer up to the high
    /// watermark (or, when its log diverged from what the consumer read, nothing but
    /// where: [`DivergingEpoch`]), for a follower (`replica_id >= 0`) up to the log end after the
    /// leader checked its epochs and recorded its progress. Plans under the partition
    /// lock, reads outside it. `budget == 0` reads nothing unless this is the first
    /// partition with data (a fetch always returns at least one batch if any exists,
    /// so it progresses).
    fn read_partition(
        &self,
        topic: &Topic,
        partition: &Partition,
        request: &FetchPartition,
        budget: u32,
        first: bool,
        replica_id: i32,
    ) -> Result<PartitionRead, Failure> {
        let follower_hw = if replica_id >= 0 {
            match self.follower_fetch(partition, replica_id, request)? {
                Ok(high_watermark) => Some(high_watermark),
                Err(diverging) => {
                    let log = partition.log()?;
                    return Ok(PartitionRead {
                        records: Bytes::new(),
                        high_watermark: Self::high_watermark_of(partition, log.log_end_offset()),
                        log_start_offset: log.log_start_offset(),
                        diverging_epoch: Some(diverging),
                    });
                }
            }
        } else {
            None
        };
        let (slice, high_watermark, log_start) = {
            let log = partition.log()?;
            let log_start = log.log_start_offset();
            let (end_offset, high_watermark) = match follower_hw {
                Some(high_watermark) => (i64::MAX, high_watermark),
                None => {
                    let last_read = (request.last_fetched_epoch >= 0)
                        .then_some((request.last_fetched_epoch, request.fetch_offset));
                    let bound = self.consumer_read_bound(
                        topic,
                        partition,
                        request.current_leader_epoch,
                        last_read,
                        log.log_end_offset(),
                    )?;
                    if let Some(diverging) = bound.diverging {
                        return Ok(PartitionRead {
                            records: Bytes::new(),
                            high_watermark: bound.high_watermark,
                            log_start_offset: log_start,
                            diverging_epoch: Some(diverging),
                        });
                    }
                    (bound.end_offset, bound.high_watermark)
                }
            };
            if budget == 0 && !first {
                return Ok(PartitionRead {
                    records: Bytes::new(),
                    high_watermark,
                    log_start_offset: log_start,
                    diverging_epoch: None,
                });
            }
            (
                log.read_up_to(request.fetch_offset, budget.max(1), end_offset)?,
                high_watermark,
                log_start,
            )
        };
        let records = match slice {
            Some(slice) => slice.read_with(&self.read_buffers).map_err(|e| {
                Failure::new(
                    ErrorCode::StorageError,
                    format!("reading partition {}: {e}", partition.index),
                )
            })?,
            None => Bytes::new(),
        };
        Ok(PartitionRead {
            records,
            high_watermark,
            log_start_offset: log_start,
            diverging_epoch: None,
        })
    }
}

impl acl::Topics for Shared {
    fn would_create(&self, topic: &str) -> bool {
        if !self.config.auto_create_topics || self.registry.get(topic).is_some() {
            return false;
        }
        match &self.cluster {
            Some(cluster) => !cluster.image().topics.contains_key(topic),
            None => true,
        }
    }

    fn name_of(&self, id: TopicId) -> Option<String> {
        match &self.cluster {
            Some(cluster) => cluster.image().topic_name_of(id),
            None => self.registry.name_of(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Throttled;

    #[test]
    fn a_warning_any_client_can_cause_is_logged_once_per_interval() {
        let warning = Throttled::new();
        assert_eq!(warning.allow(1_000), Some(0));
        assert_eq!(warning.allow(1_001), None);
        assert_eq!(warning.allow(10_999), None);
        // The next interval's first says how many were held back.
        assert_eq!(warning.allow(11_000), Some(2));
        assert_eq!(warning.allow(11_001), None);
        assert_eq!(warning.allow(30_000), Some(1));
    }
}
