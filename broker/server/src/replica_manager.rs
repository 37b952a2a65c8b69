//! The replication driver: one `meridian_core::replication::Replica` per local
//! partition, next to its log, fed by the control plane's `LeaderAndIsr` records,
//! the followers' fetches (leader side) and the fetched batches (follower side).
//!
//! - The control plane calls [`ReplicaManager::apply`] whenever a partition's leader,
//!   epoch, ISR or replicas change, and receives the leader's ISR proposals through
//!   the [`AlterIsrSink`] it installed. It answers a proposal by applying the
//!   partition's next `LeaderAndIsr` (accepted) or by calling
//!   [`ReplicaManager::alter_isr_refused`].
//! - A follower runs one fetcher task per leader broker: one long-polling Fetch
//!   (`replica_id` = this broker) for every partition it follows there. Batches are
//!   appended byte for byte (`PartitionLog::append_as_follower`); a diverging answer
//!   truncates the log by leader epoch (`Replica::divergence_truncation`).
//! - The leader serves those fetches (`handlers.rs`), which advance the high
//!   watermark; consumers read below it; acks=all produces wait for it.
//! - A 100 ms tick runs ISR maintenance (`Replica::poll_isr_change`) and, every
//!   `replica_high_watermark_checkpoint_interval_ms`, writes the high watermarks to
//!   `replication-offset-checkpoint`.
//!
//! A partition the control plane never configured is *standalone*: the single-node
//! behaviour (its own leader, high watermark = log end). In `cluster_mode` only
//! internal topics stay standalone; others answer `NotLeaderOrFollower` until applied.
//!
//! Lock order everywhere: the partition's log, then its `replication` slot. Every
//! change of the replica's log end happens with both held, so the replica's view of
//! the log end always equals the log's.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_core::replication::{
    epoch_end_offset, AlterIsr, EpochCache, FetchAnswer, FollowerFetch, LeaderAndIsr, Replica,
    ReplicaConfig, ReplicationError,
};
use meridian_core::throttle::ByteRate;
use meridian_log::checkpoint::{read_offset_checkpoint, write_offset_checkpoint};
use meridian_wire::batch::split_batches;
use meridian_wire::messages::*;
use meridian_wire::ErrorCode;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::handlers::now_ms;
use crate::topics::{Failure, Partition, Topic};
use crate::Shared;

/// An ISR change the leader of `topic`/`partition` asks the controller for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    pub topic: String,
    pub partition: u32,
    pub request: AlterIsr,
}

/// Where a leader's ISR proposals go: the control plane. Called from the broker's
/// tick task; must not block. A proposal stays pending (and is sent again every
/// second) until the control plane applies a newer `LeaderAndIsr` for the partition
/// or calls [`ReplicaManager::alter_isr_refused`].
pub trait AlterIsrSink: Send + Sync + 'static {
    fn alter_isr(&self, change: IsrChange);
}

/// A channel is a sink: the control plane (or a test) receives the proposals.
impl AlterIsrSink for tokio::sync::mpsc::UnboundedSender<IsrChange> {
    fn alter_isr(&self, change: IsrChange) {
        let _ = self.send(change);
    }
}

/// The replication state of one partition (inside `Partition::replication`).
pub(crate) struct PartitionReplica {
    pub(crate) replica: Replica,
    /// The high watermark checkpointed before a restart: data below it was committed,
    /// so it is exposed until the replica's own high watermark passes it. Lowered by
    /// truncation.
    hw_floor: i64,
    min_insync_replicas: usize,
    /// The newest record applied (for metadata answers).
    pub(crate) record: Option<LeaderAndIsr>,
}

impl PartitionReplica {
    /// The high watermark consumers see.
    pub(crate) fn high_watermark(&self) -> i64 {
        self.replica
            .high_watermark()
            .max(self.hw_floor)
            .min(self.replica.log_end())
    }

    /// Checks that this replica leads at `current_leader_epoch` (`NO_LEADER_EPOCH`:
    /// any epoch).
    fn check_leader(&self, current_leader_epoch: i32) -> Result<i32, Failure> {
        if !self.replica.is_leader() {
            return Err(not_leader(self.replica.leader()));
        }
        let epoch = self.replica.leader_epoch().unwrap_or(0);
        check_epoch(current_leader_epoch, epoch)?;
        Ok(epoch)
    }
}

fn not_leader(leader: Option<u32>) -> Failure {
    Failure::new(
        ErrorCode::NotLeaderOrFollower,
        match leader {
            Some(id) => format!("this broker is not the partition's leader; broker {id} is"),
            None => "this broker is not the partition's leader; it has none right now".into(),
        },
    )
}

fn check_epoch(requested: i32, current: i32) -> Result<(), Failure> {
    if requested == NO_LEADER_EPOCH || requested == current {
        Ok(())
    } else if requested < current {
        Err(Failure::new(
            ErrorCode::FencedLeaderEpoch,
            format!("leader epoch {requested} is fenced: the partition is at epoch {current}"),
        ))
    } else {
        Err(Failure::new(
            ErrorCode::UnknownLeaderEpoch,
            format!("leader epoch {requested} is newer than this broker's {current}"),
        ))
    }
}

pub(crate) fn replication_failure(e: ReplicationError, leader: Option<u32>) -> Failure {
    match e {
        ReplicationError::NotLeader => not_leader(leader),
        ReplicationError::NotEnoughReplicas { isr, min } => Failure::new(
            ErrorCode::NotEnoughReplicas,
            format!("acks=all needs {min} in-sync replicas (min.insync.replicas) but the partition has {isr}; nothing was written"),
        ),
        ReplicationError::FencedLeaderEpoch => Failure::new(
            ErrorCode::FencedLeaderEpoch,
            "the fetcher's leader epoch is older than the leader's",
        ),
        ReplicationError::UnknownLeaderEpoch => Failure::new(
            ErrorCode::UnknownLeaderEpoch,
            "the fetcher's leader epoch is newer than the leader's",
        ),
    }
}

/// How a read of a partition is bounded, decided by its replication role.
pub(crate) struct ReadBound {
    /// Read only batches below this offset.
    pub end_offset: i64,
    /// The high watermark to report.
    pub high_watermark: i64,
    /// The leader's log diverged from what the consumer read: answer this instead
    /// of records.
    pub diverging: Option<DivergingEpoch>,
}

/// A running fetcher task (one per leader this broker follows).
struct Fetcher {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Replication state shared by the broker's tasks.
pub(crate) struct ReplicationState {
    sink: parking_lot::RwLock<Option<Arc<dyn AlterIsrSink>>>,
    brokers: Mutex<BTreeMap<u32, SocketAddr>>,
    /// Partitions with a replica, by (topic, partition).
    managed: Mutex<BTreeMap<(String, u32), Arc<Partition>>>,
    fetchers: Mutex<HashMap<u32, Fetcher>>,
    /// High watermarks from `replication-offset-checkpoint` at start.
    checkpointed: BTreeMap<(String, u32), i64>,
    /// How this broker trusts its peers (`cluster.peer_trust`, else they share its
    /// TLS identity), and the certificate it shows them.
    peer_tls: crate::tls::PeerTls,
    /// `replica_catch_up_bytes_per_sec`, shared by every fetcher; `None`: no limit.
    catch_up: Option<Mutex<ByteRate>>,
}

impl ReplicationState {
    pub(crate) fn open(
        data_dir: &std::path::Path,
        peer_tls: crate::tls::PeerTls,
        catch_up_bytes_per_sec: u64,
    ) -> anyhow::Result<ReplicationState> {
        let checkpointed = read_offset_checkpoint(data_dir)?;
        Ok(ReplicationState {
            sink: parking_lot::RwLock::new(None),
            brokers: Mutex::new(BTreeMap::new()),
            managed: Mutex::new(BTreeMap::new()),
            fetchers: Mutex::new(HashMap::new()),
            checkpointed,
            peer_tls,
            catch_up: (catch_up_bytes_per_sec > 0).then(|| {
                // One second's worth may go at once.
                let burst = catch_up_bytes_per_sec;
                Mutex::new(ByteRate::new(catch_up_bytes_per_sec, burst, Instant::now()))
            }),
        })
    }

    pub(crate) fn stop(&self) {
        for (_, fetcher) in self.fetchers.lock().drain() {
            fetcher.task.abort();
        }
    }

    /// A deleted topic's partitions stop replicating.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.managed.lock().retain(|(t, _), _| t != topic);
    }

    pub(crate) fn brokers(&self) -> BTreeMap<u32, SocketAddr> {
        self.brokers.lock().clone()
    }
}

/// The control plane's handle on a broker's replicas. Cheap to clone.
#[derive(Clone)]
pub struct ReplicaManager {
    shared: Arc<Shared>,
}

/// A partition's replication state, for tools and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub is_leader: bool,
    pub leader: Option<u32>,
    pub leader_epoch: Option<i32>,
    pub isr: Vec<u32>,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    /// `(epoch, start offset)` of every leader epoch in the log.
    pub leader_epochs: Vec<(i32, i64)>,
}

impl ReplicaManager {
    pub(crate) fn new(shared: Arc<Shared>) -> ReplicaManager {
        ReplicaManager { shared }
    }

    pub fn broker_id(&self) -> u32 {
        self.shared.config.broker_id
    }

    /// Installs where leaders send their ISR proposals (replacing any earlier sink).
    pub fn set_alter_isr_sink(&self, sink: Arc<dyn AlterIsrSink>) {
        *self.shared.replication.sink.write() = Some(sink);
    }

    /// The topic's settings changed: its replicas take its `min.insync.replicas`
    /// (the logs took theirs from the registry).
    pub(crate) fn topic_settings_changed(&self, topic: &Topic) {
        for partition in &topic.partitions {
            if let Some(entry) = partition.replication.lock().as_mut() {
                entry.min_insync_replicas = topic.min_insync_replicas;
                entry
                    .replica
                    .set_min_insync_replicas(topic.min_insync_replicas);
            }
        }
    }

    /// Creates this broker's replica of a topic (its partition logs) as placed by the
    /// control plane. Idempotent: an existing topic is returned as it is.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<(), Failure> {
        if self.shared.registry.get(name).is_some() {
            return Ok(());
        }
        match self
            .shared
            .registry
            .create_replicated(name, partitions, replication_factor, configs)
        {
            Ok(topic) => {
                self.shared
                    .groups
                    .topic_changed(name, Some(topic.partitions.len() as u32));
                Ok(())
            }
            Err(f) if f.code == ErrorCode::TopicAlreadyExists => Ok(()),
            Err(f) => Err(f),
        }
    }

    /// The control plane's record of one partition changed: leader, leader epoch,
    /// ISR or replicas. `brokers` gives the addresses of (at least) the brokers it
    /// names. Records older than what the replica has are ignored (so they may be
    /// delivered more than once and out of order). The topic must exist here
    /// ([`ReplicaManager::create_topic`]).
    ///
    /// On a new leader epoch this broker becomes leader (the epoch starts at its log
    /// end) or follower (its fetcher for the leader starts fetching this partition);
    /// an ISR change moves the high watermark and completes waiting acks=all
    /// produces.
    pub fn apply(
        &self,
        topic: &str,
        partition: u32,
        state: LeaderAndIsr,
        brokers: &BTreeMap<u32, SocketAddr>,
    ) -> Result<(), Failure> {
        let replication = &self.shared.replication;
        replication
            .brokers
            .lock()
            .extend(brokers.iter().map(|(id, addr)| (*id, *addr)));
        let topic_ref = self.shared.registry.get(topic).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownTopic,
                format!(
                    "topic `{topic}` does not exist on broker {}",
                    self.broker_id()
                ),
            )
        })?;
        let partition_ref = topic_ref.partition(partition)?.clone();
        let now = now_ms();
        let (old_leader, new_leader, changed) = {
            let mut log = partition_ref.log()?;
            let mut slot = partition_ref.replication.lock();
            let created = slot.is_none();
            let entry = slot.get_or_insert_with(|| {
                let mut epochs = EpochCache::default();
                for (epoch, start) in log.leader_epochs().entries() {
                    epochs.assign(*epoch, *start);
                }
                let config = ReplicaConfig {
                    replica_lag_time_max_ms: self.shared.config.replica_lag_time_max_ms as i64,
                    min_insync_replicas: topic_ref.min_insync_replicas,
                    ..ReplicaConfig::default()
                };
                let log_end = log.log_end_offset();
                let hw_floor = replication
                    .checkpointed
                    .get(&(topic.to_owned(), partition))
                    .copied()
                    .unwrap_or(0)
                    .min(log_end);
                PartitionReplica {
                    replica: Replica::new(self.broker_id(), config, log_end, epochs),
                    hw_floor,
                    min_insync_replicas: topic_ref.min_insync_replicas,
                    record: None,
                }
            });
            let newer = entry.record.as_ref().is_none_or(|r| {
                (state.leader_epoch, state.partition_epoch) > (r.leader_epoch, r.partition_epoch)
            });
            if newer {
                entry.record = Some(state.clone());
            }
            let old_leader = entry.replica.leader();
            let was_leader = entry.replica.is_leader();
            let epoch_changed = entry.replica.apply(state.clone(), now);
            if entry.replica.is_leader() && (epoch_changed || !was_leader) {
                if let Some(epoch) = entry.replica.leader_epoch() {
                    log.assign_leader_epoch(epoch).map_err(Failure::from)?;
                }
                tracing::info!(topic, partition, epoch = ?entry.replica.leader_epoch(), log_end_offset = entry.replica.log_end(), "became leader");
            } else if epoch_changed && !entry.replica.is_leader() {
                tracing::info!(topic, partition, leader = ?entry.replica.leader(), epoch = ?entry.replica.leader_epoch(), "following");
            }
            // Whom this broker fetches from now, if it follows.
            let new_leader = entry.replica.next_fetch().map(|(leader, _)| leader);
            let changed = created || epoch_changed || old_leader != entry.replica.leader();
            (old_leader, new_leader, changed)
        };
        replication
            .managed
            .lock()
            .insert((topic.to_owned(), partition), partition_ref.clone());
        if let Some(leader) = new_leader {
            // An ISR-only change does not disturb the fetcher's long poll.
            self.ensure_fetcher(leader, changed);
        }
        if let Some(old) = old_leader.filter(|old| Some(*old) != new_leader) {
            if let Some(fetcher) = replication.fetchers.lock().get(&old) {
                fetcher.wake.notify_one();
            }
        }
        partition_ref.appended.notify_waiters();
        Ok(())
    }

    /// This broker is no longer a replica of the partition (a reassignment moved it
    /// away; `state` is the partition's record without it): it stops leading and
    /// fetching, and its copy of the log is deleted (truncated to the log start, so
    /// the partition is empty here). Produces still waiting for acks=all on it fail
    /// with `NotLeaderOrFollower` (the producer retries at the new leader).
    pub fn remove_replica(
        &self,
        topic: &str,
        partition: u32,
        state: LeaderAndIsr,
    ) -> Result<(), Failure> {
        assert!(!state.replicas.contains(&self.broker_id()));
        let Some(topic_ref) = self.shared.registry.get(topic) else {
            return Ok(());
        };
        let partition_ref = topic_ref.partition(partition)?.clone();
        let replication = &self.shared.replication;
        replication
            .managed
            .lock()
            .remove(&(topic.to_owned(), partition));
        let old_leader = {
            let mut log = partition_ref.log()?;
            let mut slot = partition_ref.replication.lock();
            if slot.is_none() && log.log_end_offset() == log.log_start_offset() {
                return Ok(());
            }
            let now = now_ms();
            let old_leader = match slot.as_mut() {
                Some(entry) => {
                    let old_leader = entry.replica.leader();
                    entry.replica.apply(state.clone(), now);
                    if entry.replica.is_leader() {
                        // Only a record older than the one that made it leader could
                        // say so; records arrive in order, so this is a bug upstream.
                        tracing::error!(
                            topic,
                            partition,
                            "asked to drop a replica that still leads; keeping it"
                        );
                        return Ok(());
                    }
                    entry.record = Some(state);
                    old_leader
                }
                None => None,
            };
            let start = log.log_start_offset();
            let end = log.truncate_to(start, now).map_err(Failure::from)?;
            if let Some(entry) = slot.as_mut() {
                entry.replica.truncated(end);
                entry.hw_floor = entry.hw_floor.min(end);
            }
            tracing::info!(
                topic,
                partition,
                log_start_offset = start,
                "not a replica any more: stopped replicating and deleted the local log"
            );
            old_leader
        };
        if let Some(old) = old_leader {
            if let Some(fetcher) = replication.fetchers.lock().get(&old) {
                fetcher.wake.notify_one();
            }
        }
        partition_ref.appended.notify_waiters();
        Ok(())
    }

    /// The control plane refused the partition's last ISR proposal (a stale epoch): it
    /// is dropped; a newer `LeaderAndIsr` follows.
    pub fn alter_isr_refused(&self, topic: &str, partition: u32) {
        if let Some(p) = self.managed(topic, partition) {
            if let Some(entry) = p.replication.lock().as_mut() {
                entry.replica.alter_isr_refused();
            }
        }
    }

    /// The partition's replication state; `None` for a standalone partition.
    pub fn status(&self, topic: &str, partition: u32) -> Option<ReplicaStatus> {
        let p = self.managed(topic, partition)?;
        let slot = p.replication.lock();
        let entry = slot.as_ref()?;
        Some(ReplicaStatus {
            is_leader: entry.replica.is_leader(),
            leader: entry.replica.leader(),
            leader_epoch: entry.replica.leader_epoch(),
            isr: entry.replica.isr().into_iter().collect(),
            log_end_offset: entry.replica.log_end(),
            high_watermark: entry.high_watermark(),
            leader_epochs: entry.replica.epochs().entries().to_vec(),
        })
    }

    fn managed(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        self.shared
            .replication
            .managed
            .lock()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// Starts the fetcher for `leader` if it is not running; `wake` makes a running
    /// one plan its request again (a partition joined it or changed epoch).
    fn ensure_fetcher(&self, leader: u32, wake: bool) {
        let mut fetchers = self.shared.replication.fetchers.lock();
        if let Some(fetcher) = fetchers.get(&leader) {
            if !fetcher.task.is_finished() {
                if wake {
                    fetcher.wake.notify_one();
                }
                return;
            }
        }
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(fetcher_loop(self.shared.clone(), leader, wake.clone()));
        fetchers.insert(leader, Fetcher { wake, task });
    }
}

impl Shared {
    /// How a consumer's read of `partition` is bounded: by the high watermark at the
    /// leader; not at all on a standalone partition. Refuses on a non-leader.
    ///
    /// `last_read` is a fetch's `(last_fetched_epoch, fetch_offset)` when it names
    /// the epoch of the last batch read: the leader then also says whether its log
    /// diverged from what was read ([`Replica::consumer_divergence`]), checked under
    /// the same lock as its leadership. A standalone partition has no elections, so
    /// nothing to check.
    pub(crate) fn consumer_read_bound(
        &self,
        topic: &Topic,
        partition: &Partition,
        current_leader_epoch: i32,
        last_read: Option<(i32, i64)>,
        log_end: i64,
    ) -> Result<ReadBound, Failure> {
        match partition.replication.lock().as_ref() {
            Some(entry) => {
                entry.check_leader(current_leader_epoch)?;
                let high_watermark = entry.high_watermark();
                let diverging = last_read
                    .and_then(|(epoch, offset)| entry.replica.consumer_divergence(epoch, offset))
                    .map(|(epoch, end_offset)| DivergingEpoch { epoch, end_offset });
                Ok(ReadBound {
                    end_offset: high_watermark,
                    high_watermark,
                    diverging,
                })
            }
            None => {
                self.check_standalone(topic)?;
                Ok(ReadBound {
                    end_offset: i64::MAX,
                    high_watermark: log_end,
                    diverging: None,
                })
            }
        }
    }

    /// Where `leader_epoch` ends in `partition`'s log, at its leader (Kafka's
    /// OffsetForLeaderEpoch; [`meridian_core::replication::epoch_end_offset`]); `None`
    /// when the log cannot place it. Refuses on a non-leader, and on a
    /// `current_leader_epoch` other than the leader's, as a fetch does.
    pub(crate) fn epoch_end_offset(
        &self,
        topic: &Topic,
        partition: &Partition,
        current_leader_epoch: i32,
        leader_epoch: i32,
    ) -> Result<Option<(i32, i64)>, Failure> {
        let log = partition.log()?;
        self.leader_epochs(
            topic,
            partition,
            &log,
            current_leader_epoch,
            |epochs, log_end| epoch_end_offset(epochs, leader_epoch, log_end),
        )
    }

    /// `f` of the leader epochs the leader of `partition` answers clients from, and
    /// its log end: its replica's (a new leader's epoch starts at its log end before
    /// it appends anything), or a standalone log's (epoch 0 from its start while it
    /// has none, as Metadata says). Refuses on a non-leader, and on a
    /// `current_leader_epoch` other than the leader's, as a fetch does.
    pub(crate) fn leader_epochs<R>(
        &self,
        topic: &Topic,
        partition: &Partition,
        log: &meridian_log::PartitionLog,
        current_leader_epoch: i32,
        f: impl FnOnce(&[(i32, i64)], i64) -> R,
    ) -> Result<R, Failure> {
        if let Some(entry) = partition.replication.lock().as_ref() {
            entry.check_leader(current_leader_epoch)?;
            let replica = &entry.replica;
            return Ok(f(replica.epochs().entries(), replica.log_end()));
        }
        self.check_standalone(topic)?;
        let epochs = log.leader_epochs().entries();
        let log_end = log.log_end_offset();
        Ok(match epochs {
            [] => f(&[(0, log.log_start_offset())], log_end),
            epochs => f(epochs, log_end),
        })
    }

    /// A standalone partition serves unless this broker is in cluster mode (then only
    /// internal topics do).
    pub(crate) fn check_standalone(&self, topic: &Topic) -> Result<(), Failure> {
        if (self.config.cluster_mode || self.config.cluster.is_some())
            && !topic.name.starts_with("__")
        {
            return Err(Failure::new(
                ErrorCode::NotLeaderOrFollower,
                format!(
                    "partition of `{}` has no leader on this broker yet (waiting for the controller)",
                    topic.name
                ),
            ));
        }
        Ok(())
    }

    /// Before appending a produce: refuses on a non-leader, and for acks=all when the
    /// ISR is below `min.insync.replicas`.
    pub(crate) fn check_produce(
        &self,
        topic: &Topic,
        partition: &Partition,
        acks_all: bool,
    ) -> Result<(), Failure> {
        match partition.replication.lock().as_ref() {
            Some(entry) => entry
                .replica
                .check_append(acks_all)
                .map(drop)
                .map_err(|e| replication_failure(e, entry.replica.leader())),
            None => self.check_standalone(topic),
        }
    }

    /// The leader epoch to stamp on an append, checking leadership; for a managed
    /// partition the caller reports the append with [`Shared::appended_as_leader`]
    /// while still holding the log lock.
    pub(crate) fn append_epoch(
        &self,
        topic: &Topic,
        partition: &Partition,
        log: &meridian_log::PartitionLog,
    ) -> Result<i32, Failure> {
        match partition.replication.lock().as_ref() {
            Some(entry) => {
                let epoch = entry.check_leader(NO_LEADER_EPOCH)?;
                assert_eq!(entry.replica.log_end(), log.log_end_offset());
                Ok(epoch)
            }
            None => {
                self.check_standalone(topic)?;
                Ok(log.leader_epochs().latest_epoch().unwrap_or(0))
            }
        }
    }

    pub(crate) fn appended_as_leader(partition: &Partition, log: &meridian_log::PartitionLog) {
        if let Some(entry) = partition.replication.lock().as_mut() {
            let n = log.log_end_offset() - entry.replica.log_end();
            assert!(n >= 0 && n <= u32::MAX as i64);
            if n > 0 {
                entry.replica.appended_as_leader(n as u32);
            }
            assert_eq!(entry.replica.log_end(), log.log_end_offset());
        }
    }

    /// Waits until the high watermark reaches `required` (everything the produce
    /// appended is on every in-sync replica) or `deadline`. Then the ISR must still
    /// meet `min.insync.replicas`.
    pub(crate) async fn wait_for_commit(
        &self,
        partition: &Partition,
        required: i64,
        deadline: tokio::time::Instant,
    ) -> Result<(), Failure> {
        loop {
            let notified = partition.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let slot = partition.replication.lock();
                let Some(entry) = slot.as_ref() else {
                    return Ok(());
                };
                if !entry.replica.is_leader() {
                    return Err(Failure::new(
                        ErrorCode::NotLeaderOrFollower,
                        "leadership moved before the records were committed; they may or may not survive (retry: an idempotent producer does not duplicate)",
                    ));
                }
                if entry.replica.high_watermark() >= required {
                    let isr = entry.replica.isr().len();
                    if isr < entry.min_insync_replicas {
                        return Err(Failure::new(
                            ErrorCode::NotEnoughReplicasAfterAppend,
                            format!("the records were written, but the ISR shrank to {isr}, below min.insync.replicas={}", entry.min_insync_replicas),
                        ));
                    }
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Failure::new(
                    ErrorCode::RequestTimedOut,
                    format!("acks=all: the records were written at the leader but not replicated to every in-sync replica within the request timeout (high watermark short of offset {required})"),
                ));
            }
        }
    }

    /// A follower's fetch of one partition at the leader: checks epochs and
    /// divergence, records the follower's progress (which may move the high
    /// watermark). `Ok(Err(diverging))` tells the follower to truncate.
    pub(crate) fn follower_fetch(
        &self,
        partition: &Partition,
        replica_id: i32,
        request: &FetchPartition,
    ) -> Result<Result<i64, DivergingEpoch>, Failure> {
        let log_start = partition.log()?.log_start_offset();
        let mut slot = partition.replication.lock();
        let Some(entry) = slot.as_mut() else {
            return Err(Failure::new(
                ErrorCode::NotLeaderOrFollower,
                "partition has no replication state on this broker",
            ));
        };
        let before = entry.replica.high_watermark();
        let fetch = FollowerFetch {
            replica: replica_id as u32,
            leader_epoch: request.current_leader_epoch,
            fetch_offset: request.fetch_offset,
            last_fetched_epoch: (request.last_fetched_epoch >= 0)
                .then_some(request.last_fetched_epoch),
        };
        let answer = entry
            .replica
            .handle_fetch(fetch, log_start, now_ms())
            .map_err(|e| replication_failure(e, entry.replica.leader()))?;
        let moved = entry.replica.high_watermark() != before;
        let hw = entry.high_watermark();
        drop(slot);
        if moved {
            partition.appended.notify_waiters();
        }
        Ok(match answer {
            FetchAnswer::Records { .. } => Ok(hw),
            FetchAnswer::Diverging { epoch, end_offset } => {
                Err(DivergingEpoch { epoch, end_offset })
            }
        })
    }

    /// The high watermark to report for a partition (describe, list offsets).
    pub(crate) fn high_watermark_of(partition: &Partition, log_end: i64) -> i64 {
        partition
            .replication
            .lock()
            .as_ref()
            .map_or(log_end, |e| e.high_watermark())
    }

    fn managed_partitions(&self) -> Vec<((String, u32), Arc<Partition>)> {
        self.replication
            .managed
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// ISR maintenance every 100 ms and the periodic high-watermark checkpoint.
pub(crate) async fn tick_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let checkpoint_every =
        Duration::from_millis(shared.config.replica_high_watermark_checkpoint_interval_ms);
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut written = BTreeMap::new();
    loop {
        tick.tick().await;
        let now = now_ms();
        let sink = shared.replication.sink.read().clone();
        for ((topic, index), partition) in shared.managed_partitions() {
            let proposal = {
                let mut slot = partition.replication.lock();
                let Some(entry) = slot.as_mut() else { continue };
                let before = entry.replica.high_watermark();
                let proposal = entry.replica.poll_isr_change(now);
                if entry.replica.high_watermark() != before {
                    partition.appended.notify_waiters();
                }
                proposal
            };
            if let Some(request) = proposal {
                tracing::info!(topic, partition = index, isr = ?request.isr, "proposing ISR change");
                match &sink {
                    Some(sink) => sink.alter_isr(IsrChange {
                        topic,
                        partition: index,
                        request,
                    }),
                    None => tracing::warn!("no AlterIsr sink installed: the ISR change waits"),
                }
            }
        }
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = tokio::time::Instant::now();
            let shared = shared.clone();
            let previous = std::mem::take(&mut written);
            written =
                tokio::task::spawn_blocking(move || checkpoint_high_watermarks(&shared, previous))
                    .await
                    .unwrap_or_default();
        }
    }
}

/// Writes every managed partition's high watermark to `replication-offset-checkpoint`
/// if any changed since `previous` (what was written last). Returns what is on disk.
pub(crate) fn checkpoint_high_watermarks(
    shared: &Shared,
    previous: BTreeMap<(String, u32), i64>,
) -> BTreeMap<(String, u32), i64> {
    // Partitions not configured since the start keep their checkpointed value (the
    // control plane may not have reached them yet), unless their topic is gone.
    let mut offsets: BTreeMap<(String, u32), i64> = shared
        .replication
        .checkpointed
        .iter()
        .filter(|((topic, _), _)| shared.registry.get(topic).is_some())
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (key, partition) in shared.managed_partitions() {
        if let Some(entry) = partition.replication.lock().as_ref() {
            offsets.insert(key, entry.high_watermark());
        }
    }
    if offsets == previous {
        return previous;
    }
    match write_offset_checkpoint(&shared.config.data_dir, &offsets) {
        Ok(()) => offsets,
        Err(e) => {
            tracing::error!(error = %e, "writing the high-watermark checkpoint failed");
            previous
        }
    }
}

/// What a fetcher asks for one partition, and the state it asked in.
struct FetchTarget {
    topic: String,
    partition: Arc<Partition>,
    fetch: FetchPartition,
    /// Outside the ISR: counts against `replica_catch_up_bytes_per_sec`.
    catching_up: bool,
}

/// The shortest a fetcher waits for the catch-up limit to allow more.
const CATCH_UP_MIN_WAIT: Duration = Duration::from_millis(1);

/// How soon a follower asks again for a partition whose leader answered as if it had
/// not applied the latest metadata yet (`UnknownTopic`, `UnknownLeaderEpoch`,
/// `NotLeaderOrFollower`). With the full `replica_fetch_backoff_ms` (1 s), every new
/// topic's first acks=all writes waited a second for followers refused in the few
/// milliseconds before the leader applied the topic.
const LEADER_METADATA_LAG_RETRY: Duration = Duration::from_millis(20);

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Fetches every partition this broker follows on `leader`, in one long-polling
/// request at a time, until the task is aborted (broker shutdown).
async fn fetcher_loop(shared: Arc<Shared>, leader: u32, wake: Arc<Notify>) {
    let config = &shared.config;
    let backoff = Duration::from_millis(config.replica_fetch_backoff_ms);
    let mut client: Option<(SocketAddr, meridian_client::Client)> = None;
    // Partitions that failed, with the leader epoch they failed at: skipped until
    // the backoff passes or a new epoch arrives.
    let mut paused: HashMap<(String, u32), (i32, tokio::time::Instant)> = HashMap::new();
    // A request names at most `max_partitions_per_request` partitions (the leader's
    // limit too); with more, successive requests take turns from a rotating start.
    let limit = config.max_partitions_per_request as usize;
    let mut rotation = 0usize;
    tracing::debug!(leader, "fetcher started");
    loop {
        let now = tokio::time::Instant::now();
        paused.retain(|_, (_, until)| *until > now);
        // The next paused partition to be retried: the fetcher re-plans then rather
        // than wait out a long poll of the others.
        let next_retry = paused.values().map(|(_, until)| *until).min();
        let mut targets = Vec::new();
        for ((topic, index), partition) in shared.managed_partitions() {
            let slot = partition.replication.lock();
            let Some(entry) = slot.as_ref() else { continue };
            let Some((to, fetch)) = entry.replica.next_fetch() else {
                continue;
            };
            if to != leader {
                continue;
            }
            if let Some((epoch, until)) = paused.get(&(topic.clone(), index)) {
                if *epoch == fetch.leader_epoch && now < *until {
                    continue;
                }
            }
            let mut request =
                FetchPartition::new(index, fetch.fetch_offset, config.replica_fetch_max_bytes);
            request.current_leader_epoch = fetch.leader_epoch;
            request.last_fetched_epoch = fetch.last_fetched_epoch.unwrap_or(NO_LEADER_EPOCH);
            let catching_up = !entry.replica.in_sync();
            drop(slot);
            targets.push(FetchTarget {
                topic,
                partition,
                fetch: request,
                catching_up,
            });
        }
        // Catching-up replicas share what the limit allows now; while it is spent
        // they sit out, and the fetcher re-plans when it is not.
        let throttled_until = match &shared.replication.catch_up {
            Some(rate) if targets.iter().any(|t| t.catching_up) => {
                let mut rate = rate.lock();
                let allowance = rate.allowance(now.into_std());
                if allowance == 0 {
                    targets.retain(|t| !t.catching_up);
                    // At least a millisecond: an allowance of 0 with no debt is
                    // a byte or so away.
                    let wait = rate.paid_off(now.into_std()).max(CATCH_UP_MIN_WAIT);
                    Some(now + wait)
                } else {
                    let n = targets.iter().filter(|t| t.catching_up).count() as u64;
                    let share = (allowance / n).clamp(1, u64::from(config.replica_fetch_max_bytes));
                    for t in targets.iter_mut().filter(|t| t.catching_up) {
                        t.fetch.partition_max_bytes = share as u32;
                    }
                    None
                }
            }
            _ => None,
        };
        let replan_at = match (next_retry, throttled_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if targets.is_empty() {
            let until = replan_at.map_or(now + backoff, |at| at.min(now + backoff));
            let _ = tokio::time::timeout_at(until, wake.notified()).await;
            continue;
        }
        if targets.len() > limit {
            rotation = (rotation + limit) % targets.len();
            targets.rotate_left(rotation);
            targets.truncate(limit);
            targets
                .sort_by(|a, b| (&a.topic, a.fetch.partition).cmp(&(&b.topic, b.fetch.partition)));
        }
        let Some(addr) = shared.replication.brokers.lock().get(&leader).copied() else {
            tracing::warn!(leader, "no address known for the leader");
            let _ = tokio::time::timeout(backoff, wake.notified()).await;
            continue;
        };
        if client
            .as_ref()
            .is_none_or(|(a, c)| *a != addr || c.is_closed())
        {
            let mut client_config = shared.replication.peer_tls.client_config(addr.to_string());
            client_config.client_software = format!("meridian-broker-{}/fetcher", config.broker_id);
            client_config.request_timeout =
                Duration::from_millis(u64::from(config.replica_fetch_wait_max_ms) + 10_000);
            match meridian_client::Client::connect(client_config).await {
                Ok(c) => client = Some((addr, c)),
                Err(e) => {
                    tracing::warn!(leader, %addr, error = %e, "cannot connect to the leader");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let Some((_, connection)) = &client else {
            continue;
        };
        let mut topics: Vec<FetchTopic> = Vec::new();
        for t in &targets {
            match topics.last_mut() {
                Some(last) if last.name == t.topic => last.partitions.push(t.fetch.clone()),
                _ => topics.push(FetchTopic {
                    name: t.topic.clone(),
                    id: meridian_wire::TopicId::NONE,
                    partitions: vec![t.fetch.clone()],
                }),
            }
        }
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: config.replica_fetch_wait_max_ms,
            min_bytes: 1,
            max_bytes: config.replica_fetch_max_bytes,
            topics,
            filter: None,
            replica_id: config.broker_id as i32,
        });
        let response = tokio::select! {
            response = connection.request(request) => response,
            // New partitions or a leader change: plan the request again.
            _ = wake.notified() => continue,
            // A paused partition is due, or the catch-up limit allows more: ask
            // for it too.
            _ = sleep_until_some(replan_at) => continue,
        };
        let response = match response {
            Ok(Response::Fetch(response)) => response,
            Ok(other) => {
                tracing::warn!(leader, response = ?other.api_key(), "unexpected answer to a fetch");
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(leader, error = %e, "fetch from the leader failed");
                client = None;
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let mut answers: HashMap<(String, u32), FetchPartitionResponse> = HashMap::new();
        for t in response.topics {
            for p in t.partitions {
                answers.insert((t.name.clone(), p.partition), p);
            }
        }
        // Bytes fetched for catching-up replicas, charged to the catch-up limit as of
        // their arrival.
        let arrived_at = Instant::now();
        let mut caught_up_bytes = 0u64;
        for target in targets {
            let key = (target.topic.clone(), target.fetch.partition);
            let Some(answer) = answers.remove(&key) else {
                continue;
            };
            if target.catching_up {
                caught_up_bytes += answer.records.len() as u64;
            }
            // The leader has not applied the metadata this follower acts on (the new
            // topic, its leadership, the epoch): it will within a Raft heartbeat or
            // two, so ask again soon rather than after the full backoff.
            let leader_lags = matches!(
                answer.error,
                ErrorCode::UnknownTopic
                    | ErrorCode::UnknownLeaderEpoch
                    | ErrorCode::NotLeaderOrFollower
            );
            if let Err(why) = apply_fetched(&target, answer) {
                let pause = if leader_lags {
                    backoff.min(LEADER_METADATA_LAG_RETRY)
                } else {
                    backoff
                };
                tracing::debug!(leader, topic = %key.0, partition = key.1, reason = %why, ?pause, "pausing the partition's fetch");
                paused.insert(
                    key,
                    (
                        target.fetch.current_leader_epoch,
                        tokio::time::Instant::now() + pause,
                    ),
                );
            } else {
                paused.remove(&key);
            }
        }
        if let Some(rate) = &shared.replication.catch_up {
            if caught_up_bytes > 0 {
                rate.lock().charge(caught_up_bytes, arrived_at);
            }
        }
    }
}

/// Applies one partition's fetch answer on the follower: append the batches as they
/// are, or truncate where the log diverges. `Err` pauses the partition's fetching.
fn apply_fetched(target: &FetchTarget, answer: FetchPartitionResponse) -> Result<(), String> {
    let partition = &target.partition;
    // The follower's log ends below the leader's log start (it was away while the
    // leader deleted records or segments).
    let below_log_start = answer.error == ErrorCode::OffsetOutOfRange
        && answer.log_start_offset > target.fetch.fetch_offset;
    if answer.error != ErrorCode::None && !below_log_start {
        if !matches!(
            answer.error,
            ErrorCode::NotLeaderOrFollower
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::UnknownLeaderEpoch
                // The leader has not applied the new topic, or its new partitions
                // (`CreatePartitions`), yet.
                | ErrorCode::UnknownTopic
                | ErrorCode::InvalidPartition
        ) {
            tracing::warn!(topic = %target.topic, partition = partition.index, code = ?answer.error, message = %answer.message, "fetch from the leader refused");
        }
        return Err(format!("{}: {}", answer.error, answer.message));
    }
    let mut log = partition.log().map_err(|f| f.message)?;
    let mut slot = partition.replication.lock();
    let Some(entry) = slot.as_mut() else {
        return Ok(());
    };
    // Drop answers to a request made in a state that has changed since.
    match entry.replica.next_fetch() {
        Some((_, now))
            if now.leader_epoch == target.fetch.current_leader_epoch
                && now.fetch_offset == target.fetch.fetch_offset => {}
        _ => return Ok(()),
    }
    let now = now_ms();
    if below_log_start {
        // Nothing it has is wanted: empty the log and continue at the leader's
        // start, as Kafka's followers do.
        let previous_end = log.log_end_offset();
        let start = log
            .truncate_fully_and_start_at(answer.log_start_offset, now)
            .map_err(|e| {
                tracing::error!(topic = %target.topic, partition = partition.index, error = %e, "emptying the log failed");
                e.to_string()
            })?;
        entry.replica.restarted_at(start);
        entry.hw_floor = entry.hw_floor.min(start);
        tracing::warn!(topic = %target.topic, partition = partition.index, previous_log_end_offset = previous_end, leader_log_start_offset = start, "fell below the leader's log start: emptied the local log and continue from there");
        return Ok(());
    }
    if let Some(diverging) = answer.diverging_epoch {
        let to = entry
            .replica
            .divergence_truncation(diverging.epoch, diverging.end_offset);
        let new_end = log.truncate_to(to, now).map_err(|e| e.to_string())?;
        entry.replica.truncated(new_end);
        entry.hw_floor = entry.hw_floor.min(new_end);
        tracing::info!(topic = %target.topic, partition = partition.index, epoch = diverging.epoch, leader_end_offset = diverging.end_offset, log_end_offset = new_end, "truncated a diverging tail");
        return Ok(());
    }
    // An empty log (just restarted at the leader's log start) is sent the whole batch
    // holding that offset, which may begin below it: the log restarts at the batch.
    if log.log_start_offset() == log.log_end_offset() {
        if let Some(Ok((first, _))) = split_batches(answer.records.clone()).next() {
            if first.base_offset < log.log_end_offset() {
                let start = log
                    .truncate_fully_and_start_at(first.base_offset, now)
                    .map_err(|e| e.to_string())?;
                entry.replica.restarted_at(start);
                entry.hw_floor = entry.hw_floor.min(start);
            }
        }
    }
    let batches = append_records(&mut log, &answer.records, now).map_err(|e| {
        tracing::error!(topic = %target.topic, partition = partition.index, error = %e, "appending fetched records failed");
        e.to_string()
    })?;
    entry
        .replica
        .appended_as_follower(&batches, answer.high_watermark);
    assert_eq!(entry.replica.log_end(), log.log_end_offset());
    if !batches.is_empty() {
        partition.mark_dirty();
    }
    // The leader's log start moved (DeleteRecords, retention): follow it, as far as
    // this replica knows the records to be committed.
    let start = answer.log_start_offset.min(entry.replica.high_watermark());
    if start > log.log_start_offset() {
        log.delete_before(start).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn append_records(
    log: &mut meridian_log::PartitionLog,
    records: &Bytes,
    now: i64,
) -> Result<Vec<meridian_log::FollowerBatch>, meridian_log::LogError> {
    log.append_as_follower(records, now)
}
