//! The driver of the consumer-group coordinator (`meridian_core::group`): it feeds
//! requests and the clock to the state machine, holds heartbeats open until an
//! assignment changes, and keeps committed offsets in the internal
//! `__consumer_offsets` topic so they survive restarts.
//!
//! Offsets topic records (RecordBatch v2, uncompressed; the topic is compacted):
//! key `u16 version=0 | string group | string topic | u32 partition`,
//! value `u16 version=1 | i64 offset | i32 leader_epoch | string metadata |
//! i64 commit_timestamp_ms | u64 topic_incarnation` (version 0 has no leader epoch;
//! values written before incarnations were kept end before it, and brokers of then
//! ignore it, so going back to such a build keeps the commits), or no value (a
//! tombstone) when the commit is deleted (with its group, by OffsetDelete, or with
//! its topic). Last record per key wins.
//!
//! Membership (Kafka keeps it in the same topic): key version 1 `string group` holds
//! the group's own record (epoch, assignor, eager revocation under way), key version 2
//! `string group | string member` one member's record (ids, subscription, timeouts,
//! epoch, what it owns, was told and should own). After every join, sync, leave and
//! expiry the driver writes the records that changed (tombstones for members gone,
//! and for the group record once the group is empty), and answers only once they are
//! as durable as a commit; so a coordinator that loads the partition (after a
//! restart, or as the new leader) knows everything any member was told, and members
//! carry on with their ids and partitions instead of rejoining.
//!
//! A group's records live in partition `java_hash(group) % offsets_topic_num_partitions`
//! (Kafka's placement), so one group's commits stay in order in one log.
//!
//! In a cluster the offsets topic is replicated (the controller creates it) and, as in
//! Kafka, a group's coordinator is the leader of the group's offsets partition: when
//! this broker becomes the leader it loads that partition's commits and memberships,
//! when it stops being the leader it drops those groups (their members carry on at
//! the new leader). Commits and membership records are written like an acks=all
//! produce and acknowledged once every in-sync replica has them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meridian_core::assignor::Assignor;
use meridian_core::group::{
    CommittedOffset, Coordinator, GroupError, GroupRecord, JoinRequest, MemberRecord, Membership,
};
use meridian_core::TopicPartition;
use meridian_metadata::MetadataImage;
use meridian_wire::batch::{
    decode_records, encode_batch, split_batches, Compression, NewRecord, ProducerIdentity,
};
use meridian_wire::codec::{Reader, Writer};
use meridian_wire::messages::*;
use meridian_wire::ErrorCode;
use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::{oneshot, Notify};

use crate::config::FlushPolicy;
use crate::handlers::now_ms;
use crate::topics::{Failure, Partition, Registry, Topic};
use crate::Shared;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Offsets records appended, not yet known to be durable.
struct Written {
    sync: meridian_log::SyncHandle,
    /// A replicated partition, and the offset its high watermark must reach.
    replicated: Option<(Arc<Partition>, i64)>,
}
/// A membership change's records appended (`None`: nothing changed), or why not.
type Write = Result<Option<Written>, Failure>;

/// Version of the offsets records' keys: a commit's.
const RECORD_VERSION: u16 = 0;
/// Key version of a group's own membership record.
const GROUP_KEY_VERSION: u16 = 1;
/// Key version of a member's record.
const MEMBER_KEY_VERSION: u16 = 2;
/// Version of the membership records' values.
const MEMBERSHIP_VALUE_VERSION: u16 = 0;
/// Version of the offsets records' values written now: 1 added the leader epoch
/// after the offset. Version 0 values (no epoch) are still read. The topic's
/// incarnation, added later, ends a version 1 value when it is there (an older
/// broker reads the value without it): it is 0, not known, when it is not.
const VALUE_VERSION: u16 = 1;
/// How often session and revocation deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

pub(crate) struct Groups {
    pub(crate) coordinator: Mutex<Coordinator>,
    /// Woken whenever a group's membership or assignment changes (heartbeats wait on it).
    changed: Mutex<HashMap<String, Arc<Notify>>>,
    /// Standalone: the local offsets topic, from the start. Cluster: this broker's
    /// replica of the replicated one, once it leads one of its partitions.
    offsets_topic: RwLock<Option<Arc<Topic>>>,
    /// Cluster mode: the offsets partitions this broker leads and has loaded, with the
    /// leader epoch it loaded them in. Changed only under the coordinator lock, so a
    /// request checked under that lock cannot race a load or unload. `None`:
    /// standalone, every group is this broker's.
    owned: Option<Mutex<BTreeMap<u32, i32>>>,
    /// Each group's membership records as last written (or loaded), to write only what
    /// changed. Taken under the coordinator lock.
    persisted: Mutex<HashMap<String, Persisted>>,
}

/// A group's membership records as encoded: the group's own and each member's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Persisted {
    group: Option<Bytes>,
    members: BTreeMap<String, Bytes>,
}

impl Persisted {
    fn of(membership: &Membership) -> Persisted {
        Persisted {
            group: membership.0.as_ref().map(encode_group_value),
            members: membership
                .1
                .iter()
                .map(|(id, m)| (id.clone(), encode_member_value(m)))
                .collect(),
        }
    }

    /// The records that turn `self` (what the log has) into `now`.
    fn changes(&self, group_id: &str, now: &Persisted, timestamp: i64) -> Vec<NewRecord> {
        let record = |key: Bytes, value: Option<&Bytes>| NewRecord {
            timestamp,
            key: Some(key),
            value: value.cloned(),
            headers: Vec::new(),
        };
        let mut records = Vec::new();
        for (id, value) in &now.members {
            if self.members.get(id) != Some(value) {
                records.push(record(encode_member_key(group_id, id), Some(value)));
            }
        }
        for id in self.members.keys() {
            if !now.members.contains_key(id) {
                records.push(record(encode_member_key(group_id, id), None));
            }
        }
        if self.group != now.group {
            records.push(record(encode_group_key(group_id), now.group.as_ref()));
        }
        records
    }
}

fn group_error(e: GroupError) -> (ErrorCode, String) {
    let code = match &e {
        GroupError::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
        GroupError::UnknownMemberId(_) => ErrorCode::UnknownMemberId,
        GroupError::FencedInstanceId(_) => ErrorCode::FencedInstanceId,
        GroupError::IllegalGeneration(_) => ErrorCode::IllegalGeneration,
        GroupError::InvalidSessionTimeout(_) => ErrorCode::InvalidSessionTimeout,
        GroupError::GroupMaxSizeReached(_) => ErrorCode::GroupMaxSizeReached,
        GroupError::InconsistentProtocol(_) => ErrorCode::InconsistentGroupProtocol,
        GroupError::GroupIdNotFound(_) => ErrorCode::GroupIdNotFound,
        GroupError::NonEmptyGroup(_) => ErrorCode::NonEmptyGroup,
        GroupError::GroupSubscribedToTopic(_) => ErrorCode::GroupSubscribedToTopic,
        GroupError::OffsetMetadataTooLarge(_) => ErrorCode::OffsetMetadataTooLarge,
        GroupError::InvalidCommitOffset(_) => ErrorCode::InvalidCommitOffset,
        GroupError::NotCoordinator(_) => ErrorCode::NotCoordinator,
        GroupError::CoordinatorNotAvailable(_) => ErrorCode::CoordinatorNotAvailable,
    };
    (code, e.message().to_string())
}

fn group_failure(e: GroupError) -> Failure {
    let (code, message) = group_error(e);
    Failure::new(code, message)
}

/// A failure writing to a group's offsets partition, as the group's clients must
/// read it (as Kafka maps them): that partition's leadership moving means the group
/// has another coordinator; too few in-sync replicas, that it has none for now.
/// Both send the client to find the coordinator and retry, where the partition's
/// own errors would read as a producer's. (A full disk stays `StorageError`.)
fn coordinator_failure(f: Failure) -> Failure {
    let code = match f.code {
        ErrorCode::NotLeaderOrFollower => ErrorCode::NotCoordinator,
        ErrorCode::NotEnoughReplicas | ErrorCode::NotEnoughReplicasAfterAppend => {
            ErrorCode::CoordinatorNotAvailable
        }
        _ => return f,
    };
    Failure::new(
        code,
        format!(
            "writing to the group's {OFFSETS_TOPIC} partition: {}",
            f.message
        ),
    )
}

/// Java's `String.hashCode`, so a group lands on the same offsets partition as in Kafka.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// A SyncGroup answered with an error.
fn sync_refused(Failure { code, message }: Failure) -> SyncGroupResponse {
    SyncGroupResponse {
        error: code,
        message,
        member_epoch: -1,
        assignment: Vec::new(),
        pending: false,
    }
}

fn to_wire(tps: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    TopicPartitions::group(tps.iter().map(|tp| (tp.topic.as_str(), tp.partition)))
}

fn from_wire(tps: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    TopicPartitions::pairs(tps)
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
        .collect()
}

/// One record's key or value, written by `write`.
fn encode(write: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    let mut buf = BytesMut::new();
    write(&mut Writer::new(&mut buf));
    buf.freeze()
}

fn encode_key(group: &str, tp: &TopicPartition) -> Bytes {
    encode(|w| {
        w.u16(RECORD_VERSION);
        w.string(group);
        w.string(&tp.topic);
        w.u32(tp.partition);
    })
}

fn encode_value(committed: &CommittedOffset) -> Bytes {
    encode(|w| {
        w.u16(VALUE_VERSION);
        w.i64(committed.offset);
        w.i32(committed.leader_epoch);
        w.string(&committed.metadata);
        w.i64(committed.commit_timestamp_ms);
        w.u64(committed.topic_incarnation);
    })
}

fn encode_group_key(group: &str) -> Bytes {
    encode(|w| {
        w.u16(GROUP_KEY_VERSION);
        w.string(group);
    })
}

fn encode_member_key(group: &str, member: &str) -> Bytes {
    encode(|w| {
        w.u16(MEMBER_KEY_VERSION);
        w.string(group);
        w.string(member);
    })
}

fn encode_group_value(group: &GroupRecord) -> Bytes {
    encode(|w| {
        w.u16(MEMBERSHIP_VALUE_VERSION);
        w.i32(group.epoch);
        w.string(group.assignor.name());
        w.bool(group.revoking_all);
    })
}

fn encode_member_value(m: &MemberRecord) -> Bytes {
    encode(|w| {
        w.u16(MEMBERSHIP_VALUE_VERSION);
        put_opt_string(w, &m.instance_id);
        w.string(&m.client_id);
        w.string(&m.client_host);
        put_strings(w, &m.topics.iter().cloned().collect::<Vec<_>>());
        w.u32(m.session_timeout_ms);
        w.u32(m.rebalance_timeout_ms);
        w.i32(m.epoch);
        put_tps(w, &to_wire(&m.owned));
        put_tps(w, &to_wire(&m.sent));
        put_tps(w, &to_wire(&m.target));
        w.bool(m.revoking);
    })
}

/// One record of the offsets topic, decoded.
#[derive(Debug, PartialEq)]
enum LoadedRecord {
    /// A commit, or its tombstone.
    Commit(String, TopicPartition, Option<CommittedOffset>),
    /// A group's own membership record, or its tombstone (the group has no members).
    Group(String, Option<GroupRecord>),
    /// A member's record, or its tombstone (it left or expired).
    Member(String, String, Option<MemberRecord>),
}

/// Decodes one record of the offsets topic (an unknown version is an error: the
/// loader skips the record with a warning).
fn decode_record(key: Bytes, value: Option<Bytes>) -> anyhow::Result<LoadedRecord> {
    let mut r = Reader::new(key);
    let version = r.u16()?;
    match version {
        RECORD_VERSION => {}
        GROUP_KEY_VERSION => {
            let group = r.string()?;
            let Some(value) = value else {
                return Ok(LoadedRecord::Group(group, None));
            };
            let mut r = membership_value(value)?;
            let epoch = r.i32()?;
            let name = r.string()?;
            let assignor = Assignor::parse(&name)
                .ok_or_else(|| anyhow::anyhow!("unknown assignor `{name}`"))?;
            let revoking_all = r.bool()?;
            let record = GroupRecord {
                epoch,
                assignor,
                revoking_all,
            };
            return Ok(LoadedRecord::Group(group, Some(record)));
        }
        MEMBER_KEY_VERSION => {
            let group = r.string()?;
            let member = r.string()?;
            let Some(value) = value else {
                return Ok(LoadedRecord::Member(group, member, None));
            };
            let mut r = membership_value(value)?;
            let record = MemberRecord {
                instance_id: get_opt_string(&mut r)?,
                client_id: r.string()?,
                client_host: r.string()?,
                topics: get_strings(&mut r)?.into_iter().collect(),
                session_timeout_ms: r.u32()?,
                rebalance_timeout_ms: r.u32()?,
                epoch: r.i32()?,
                owned: from_wire(&get_tps(&mut r)?),
                sent: from_wire(&get_tps(&mut r)?),
                target: from_wire(&get_tps(&mut r)?),
                revoking: r.bool()?,
            };
            return Ok(LoadedRecord::Member(group, member, Some(record)));
        }
        v => anyhow::bail!("unknown offsets key version {v}"),
    }
    let group = r.string()?;
    let tp = TopicPartition::new(r.string()?, r.u32()?);
    let Some(value) = value else {
        return Ok(LoadedRecord::Commit(group, tp, None));
    };
    let mut r = Reader::new(value);
    let version = r.u16()?;
    if version > VALUE_VERSION {
        anyhow::bail!("unknown offsets value version {version}");
    }
    let offset = r.i64()?;
    let leader_epoch = if version >= 1 {
        r.i32()?
    } else {
        NO_LEADER_EPOCH
    };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    let topic_incarnation = if r.remaining() >= 8 { r.u64()? } else { 0 };
    let committed = CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        topic_incarnation,
    };
    Ok(LoadedRecord::Commit(group, tp, Some(committed)))
}

/// A membership record's value, past its version.
fn membership_value(value: Bytes) -> anyhow::Result<Reader> {
    let mut r = Reader::new(value);
    let version = r.u16()?;
    if version > MEMBERSHIP_VALUE_VERSION {
        anyhow::bail!("unknown membership value version {version}");
    }
    Ok(r)
}

impl Groups {
    /// Standalone: creates the offsets topic when missing and loads every committed
    /// offset. Cluster: starts empty; partitions are loaded as this broker becomes
    /// their leader ([`Shared::offsets_leadership`]).
    pub(crate) fn open(
        config: &crate::config::BrokerConfig,
        registry: &Registry,
    ) -> anyhow::Result<Groups> {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut coordinator = Coordinator::new(config.coordinator_config(), incarnation);
        if config.cluster.is_some() {
            return Ok(Groups {
                coordinator: Mutex::new(coordinator),
                changed: Mutex::new(HashMap::new()),
                offsets_topic: RwLock::new(None),
                owned: Some(Mutex::new(BTreeMap::new())),
                persisted: Mutex::new(HashMap::new()),
            });
        }
        let offsets_topic = match registry.get(OFFSETS_TOPIC) {
            Some(topic) => topic,
            None => registry
                .create(
                    OFFSETS_TOPIC,
                    config.offsets_topic_num_partitions,
                    1,
                    // Like Kafka's: compacted, so it keeps the latest commit per
                    // group/topic/partition and deleted groups' tombstones go.
                    vec![("cleanup.policy".into(), "compact".into())],
                )
                .map_err(|f| anyhow::anyhow!("creating {OFFSETS_TOPIC}: {}", f.message))?,
        };
        let now = now_ms();
        for topic in registry.all() {
            coordinator.topic_changed(&topic.name, Some(topic.partitions.len() as u32), now);
        }
        let mut n_records = 0u64;
        let mut persisted = HashMap::new();
        for partition in &offsets_topic.partitions {
            n_records += load_offsets(partition, &mut coordinator, &mut persisted, now)?;
        }
        coordinator.recompute_all(now);
        tracing::info!(
            records = n_records,
            groups = coordinator.list().len(),
            "loaded committed offsets and group memberships"
        );
        Ok(Groups {
            coordinator: Mutex::new(coordinator),
            changed: Mutex::new(HashMap::new()),
            offsets_topic: RwLock::new(Some(offsets_topic)),
            owned: None,
            persisted: Mutex::new(persisted),
        })
    }

    /// The coordinator, locked, if this broker coordinates `group_id`.
    fn coordinator_for(&self, group_id: &str) -> Result<MutexGuard<'_, Coordinator>, GroupError> {
        let coordinator = self.coordinator.lock();
        let Some(owned) = &self.owned else {
            return Ok(coordinator);
        };
        match self.offsets_partition(group_id) {
            Some(p) if owned.lock().contains_key(&p) => Ok(coordinator),
            _ => Err(GroupError::NotCoordinator(format!(
                "this broker is not the coordinator of group `{group_id}` (the leader of its {OFFSETS_TOPIC} partition is)"
            ))),
        }
    }

    fn notify(&self, group_id: &str) -> Arc<Notify> {
        self.changed
            .lock()
            .entry(group_id.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake(&self, group_id: &str) {
        let notify = self.changed.lock().get(group_id).cloned();
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// A topic was created or deleted: groups subscribed to it rebalance.
    pub(crate) fn topic_changed(&self, topic: &str, partitions: Option<u32>) {
        let changed = self
            .coordinator
            .lock()
            .topic_changed(topic, partitions, now_ms());
        for group in changed {
            self.wake(&group);
        }
    }

    /// The group's offsets partition; `None` before this broker has the offsets topic.
    fn offsets_partition(&self, group_id: &str) -> Option<u32> {
        let n = self.offsets_topic.read().as_ref()?.partitions.len() as u32;
        Some(offsets_partition(group_id, n))
    }
}

fn offsets_partition(group_id: &str, partitions: u32) -> u32 {
    (java_hash(group_id) & 0x7fff_ffff) as u32 % partitions
}

/// Applies every record of one offsets partition to `coordinator`: commits and their
/// tombstones, then each group's membership as the log has it last (sessions start
/// at `now_ms`). Notes in `persisted` what the log holds. Returns how many records
/// it read.
fn load_offsets(
    partition: &Partition,
    coordinator: &mut Coordinator,
    persisted: &mut HashMap<String, Persisted>,
    now_ms: i64,
) -> anyhow::Result<u64> {
    let mut memberships: BTreeMap<String, Membership> = BTreeMap::new();
    let log = partition
        .log()
        .map_err(|f| anyhow::anyhow!("{OFFSETS_TOPIC}/{}: {}", partition.index, f.message))?;
    let mut n_records = 0u64;
    let mut offset = log.log_start_offset();
    loop {
        let slice = log
            .read(offset, 1024 * 1024)
            .map_err(|e| anyhow::anyhow!("reading {OFFSETS_TOPIC}/{}: {e}", partition.index))?;
        let Some(slice) = slice else { break };
        let bytes = slice.read()?;
        for batch in split_batches(bytes) {
            let (header, batch) =
                batch.map_err(|e| anyhow::anyhow!("{OFFSETS_TOPIC}/{}: {e}", partition.index))?;
            offset = header.last_offset() + 1;
            for record in decode_records(&header, &batch).map_err(|e| anyhow::anyhow!("{e}"))? {
                let Some(key) = record.key else { continue };
                match decode_record(key, record.value) {
                    Ok(LoadedRecord::Commit(group, tp, Some(committed))) => {
                        coordinator.apply_commit(&group, tp, committed)
                    }
                    Ok(LoadedRecord::Commit(group, tp, None)) => {
                        coordinator.remove_commit(&group, &tp)
                    }
                    Ok(LoadedRecord::Group(group, record)) => {
                        memberships.entry(group).or_default().0 = record;
                    }
                    Ok(LoadedRecord::Member(group, member, Some(m))) => {
                        memberships.entry(group).or_default().1.insert(member, m);
                    }
                    Ok(LoadedRecord::Member(group, member, None)) => {
                        memberships.entry(group).or_default().1.remove(&member);
                    }
                    Err(e) => {
                        tracing::warn!(offset = record.offset, error = %e, "skipping unreadable offsets record")
                    }
                }
                n_records += 1;
            }
        }
    }
    for (group, membership) in memberships {
        persisted.insert(group.clone(), Persisted::of(&membership));
        coordinator.restore_membership(&group, membership, now_ms);
    }
    Ok(n_records)
}

/// The coordinator of `group_id` in a cluster: the leader of its offsets partition.
fn cluster_coordinator(image: &MetadataImage, group_id: &str) -> FindCoordinatorResponse {
    let unavailable = |message: String| FindCoordinatorResponse {
        error: ErrorCode::CoordinatorNotAvailable,
        message,
        broker_id: 0,
        host: String::new(),
        port: 0,
    };
    let Some(topic) = image.topics.get(OFFSETS_TOPIC) else {
        return unavailable(format!(
            "{OFFSETS_TOPIC} does not exist yet: the controller creates it once every broker of the region is live, or cluster.offsets_topic_replication_factor of them have been for cluster.offsets_topic_create_wait_ms"
        ));
    };
    let partition = offsets_partition(group_id, topic.partitions.len() as u32);
    let leader = topic.partitions[partition as usize]
        .leader
        .and_then(|id| image.brokers.get(&id));
    match leader {
        Some(b) => FindCoordinatorResponse {
            error: ErrorCode::None,
            message: String::new(),
            broker_id: b.id,
            host: b.host.clone(),
            port: u32::from(b.port),
        },
        None => unavailable(format!(
            "{OFFSETS_TOPIC} partition {partition} has no leader right now"
        )),
    }
}

/// Expires sessions and stuck revocations.
pub(crate) async fn tick_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let events = {
            let mut coordinator = shared.groups.coordinator.lock();
            let events = coordinator.tick(now_ms());
            let groups: BTreeSet<&str> = events.iter().map(|e| e.group_id()).collect();
            for group in groups {
                // Nobody waits for these: a coordinator that loads the group without
                // them removes the same members again one session later.
                if let Err(f) = shared.write_membership(&coordinator, group) {
                    tracing::warn!(group, error = %f.message, "could not write a group's membership");
                }
            }
            events
        };
        for event in events {
            tracing::info!(?event, "group member removed");
            shared.groups.wake(event.group_id());
        }
    }
}

impl Shared {
    /// The partition count and incarnation of `topic`, from the metadata image in a
    /// cluster (the coordinator need not host the topic), from the local registry
    /// otherwise; `None` if there is no such topic.
    ///
    /// In a cluster this is the image Raft last applied, not the published one: a
    /// deletion reaches it before `topic_deleted` runs (which publishing calls), so
    /// a commit checked against it under the coordinator lock either lands before
    /// `topic_deleted` removes the topic's commits or is refused.
    fn topic_now(&self, topic: &str) -> Option<(u32, u64)> {
        match &self.cluster {
            Some(cluster) => cluster
                .image
                .borrow()
                .image
                .topics
                .get(topic)
                .map(|t| (t.partitions.len() as u32, t.created_at)),
            None => self
                .registry
                .get(topic)
                .map(|t| (t.partitions.len() as u32, t.created_at)),
        }
    }

    /// Cluster mode: offsets partition `partition` now has `leader` in `leader_epoch`
    /// (called from the image follower, in image order, after the replica manager
    /// applied the change). Becoming its leader loads its commits; losing it drops
    /// its groups.
    pub(crate) fn offsets_leadership(
        &self,
        partition: u32,
        leader: Option<u32>,
        leader_epoch: i32,
    ) {
        let Some(owned) = &self.groups.owned else {
            return;
        };
        let leading = leader == Some(self.config.broker_id);
        let mut coordinator = self.groups.coordinator.lock();
        let loaded_epoch = owned.lock().get(&partition).copied();
        if loaded_epoch.is_some() && loaded_epoch != Some(leader_epoch).filter(|_| leading) {
            owned.lock().remove(&partition);
            let n = self
                .groups
                .offsets_topic
                .read()
                .as_ref()
                .map_or(1, |t| t.partitions.len() as u32);
            let still = owned.lock().clone();
            let gone = coordinator.unload(|g| still.contains_key(&offsets_partition(g, n)));
            let mut persisted = self.groups.persisted.lock();
            for group in &gone {
                persisted.remove(group);
            }
            drop(persisted);
            tracing::info!(
                partition,
                groups = gone.len(),
                "no longer the coordinator of an offsets partition's groups"
            );
            for group in gone {
                self.groups.wake(&group);
            }
        }
        if !leading || owned.lock().contains_key(&partition) {
            return;
        }
        let Some(topic) = self.registry.get(OFFSETS_TOPIC) else {
            tracing::error!("leading an offsets partition without a local {OFFSETS_TOPIC}");
            return;
        };
        let Ok(local) = topic.partition(partition) else {
            return;
        };
        let now = now_ms();
        let loaded = load_offsets(
            local,
            &mut coordinator,
            &mut self.groups.persisted.lock(),
            now,
        );
        match loaded {
            Ok(records) => {
                coordinator.recompute_all(now);
                self.groups
                    .offsets_topic
                    .write()
                    .get_or_insert(topic.clone());
                owned.lock().insert(partition, leader_epoch);
                tracing::info!(
                    partition,
                    leader_epoch,
                    records,
                    "now the coordinator of an offsets partition's groups"
                );
                // Commits of topics deleted since (and perhaps created again): the
                // coordinator then may not have written their tombstones (it
                // failed, or lost the partition first), and they would be read as
                // the commits of a new topic of the name.
                self.remove_deleted_commits(&mut coordinator, |topic, committed| {
                    match self.topic_now(topic) {
                        None => true,
                        Some((_, incarnation)) => {
                            committed.topic_incarnation != 0
                                && incarnation != 0
                                && committed.topic_incarnation != incarnation
                        }
                    }
                });
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "could not load an offsets partition; its groups stay unavailable here")
            }
        }
    }

    pub(crate) fn find_coordinator(&self, r: FindCoordinatorRequest) -> FindCoordinatorResponse {
        if let (Some(cluster), false) = (&self.cluster, r.group_id.is_empty()) {
            return cluster_coordinator(&cluster.image(), &r.group_id);
        }
        let (error, message) = if r.group_id.is_empty() {
            (
                ErrorCode::InvalidGroupId,
                "group id must not be empty".to_string(),
            )
        } else {
            (ErrorCode::None, String::new())
        };
        FindCoordinatorResponse {
            error,
            message,
            broker_id: self.config.broker_id,
            host: self.config.advertised_host(),
            port: u32::from(self.local_addr.port()),
        }
    }

    pub(crate) async fn join_group(
        &self,
        r: JoinGroupRequest,
        client_host: String,
    ) -> JoinGroupResponse {
        let refuse = |error: ErrorCode, message: String| JoinGroupResponse {
            error,
            message,
            member_id: String::new(),
            member_epoch: -1,
            heartbeat_interval_ms: 0,
        };
        let Some(assignor) = Assignor::parse(&r.assignor) else {
            let known: Vec<&str> = Assignor::ALL.iter().map(|a| a.name()).collect();
            return refuse(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "unknown assignor `{}`; known: {}",
                    r.assignor,
                    known.join(", ")
                ),
            );
        };
        let group_id = r.group_id.clone();
        let request = JoinRequest {
            group_id: r.group_id,
            member_id: r.member_id,
            instance_id: r.instance_id,
            client_id: r.client_id,
            client_host,
            topics: r.topics.into_iter().collect(),
            assignor,
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: r.rebalance_timeout_ms,
        };
        let outcome = self.change_membership(&group_id, |c| c.join(request, now_ms()));
        let (joined, written) = match outcome {
            Ok(changed) => changed,
            Err(f) => return refuse(f.code, f.message),
        };
        self.groups.wake(&group_id);
        if let Err(f) = self.wait_written(written).await {
            // The member will not know its id: it leaves again rather than hold a
            // share of the partitions until its session ends. (Its records may be
            // in the log, or may come with the next change: their tombstones too.)
            let _ = self.change_membership(&group_id, |c| {
                c.leave(&group_id, &joined.member_id, None, now_ms())
            });
            self.groups.wake(&group_id);
            return refuse(f.code, f.message);
        }
        JoinGroupResponse {
            error: ErrorCode::None,
            message: String::new(),
            member_id: joined.member_id,
            member_epoch: joined.member_epoch,
            heartbeat_interval_ms: joined.heartbeat_interval_ms,
        }
    }

    /// A membership change answered once its records are durable: runs it (see
    /// [`Shared::change_membership`]), wakes the group's held heartbeats (what one
    /// member gave up may be another's now), and waits for the write.
    async fn membership_change<T>(
        &self,
        group_id: &str,
        change: impl FnOnce(&mut Coordinator) -> Result<T, GroupError>,
    ) -> Result<T, Failure> {
        let (outcome, written) = self.change_membership(group_id, change)?;
        self.groups.wake(group_id);
        self.wait_written(written).await?;
        Ok(outcome)
    }

    /// Runs `change` on the group's coordinator and writes what it changed in the
    /// group's membership, under the coordinator lock (so the log has changes in the
    /// order they were made). Returns the core's answer and the write, which the
    /// caller waits for with [`Shared::wait_written`] before it answers. A change
    /// whose records could not be written stays in memory (the next change writes
    /// it) but is answered with the error.
    fn change_membership<T>(
        &self,
        group_id: &str,
        change: impl FnOnce(&mut Coordinator) -> Result<T, GroupError>,
    ) -> Result<(T, Write), Failure> {
        let mut coordinator = self
            .groups
            .coordinator_for(group_id)
            .map_err(group_failure)?;
        let outcome = change(&mut coordinator).map_err(group_failure)?;
        let written = self.write_membership(&coordinator, group_id);
        Ok((outcome, written))
    }

    /// Under the coordinator lock, after a change to `group_id`: appends the group's
    /// membership records that differ from what the log has (`None`: nothing did).
    fn write_membership(&self, coordinator: &Coordinator, group_id: &str) -> Write {
        let now = Persisted::of(&coordinator.membership(group_id));
        let mut persisted = self.groups.persisted.lock();
        let records = persisted
            .get(group_id)
            .unwrap_or(&Persisted::default())
            .changes(group_id, &now, now_ms());
        if records.is_empty() {
            return Ok(None);
        }
        let written = self.append_offsets(group_id, records)?;
        if now == Persisted::default() {
            persisted.remove(group_id);
        } else {
            persisted.insert(group_id.to_string(), now);
        }
        Ok(Some(written))
    }

    async fn wait_written(&self, written: Write) -> Result<(), Failure> {
        match written? {
            Some(written) => self.wait_durable(written).await,
            None => Ok(()),
        }
    }

    pub(crate) async fn sync_group(&self, r: SyncGroupRequest) -> SyncGroupResponse {
        let outcome = self
            .membership_change(&r.group_id, |c| {
                c.sync(&r.group_id, &r.member_id, from_wire(&r.owned), now_ms())
            })
            .await;
        match outcome {
            Ok(synced) => SyncGroupResponse {
                error: ErrorCode::None,
                message: String::new(),
                member_epoch: synced.member_epoch,
                assignment: to_wire(&synced.assignment),
                pending: synced.pending,
            },
            Err(failure) => sync_refused(failure),
        }
    }

    /// Answers at once when the member should sync (or is unknown); otherwise holds
    /// the heartbeat until its assignment changes or the wait ends. The member counts
    /// as alive when the heartbeat arrives, not while it is held: a client that dies
    /// mid-hold is expired one session after its last heartbeat.
    pub(crate) async fn heartbeat(&self, r: HeartbeatRequest) -> HeartbeatResponse {
        let wait = Duration::from_millis(u64::from(
            r.max_wait_ms.min(self.config.group_heartbeat_interval_ms),
        ));
        let deadline = tokio::time::Instant::now() + wait;
        let outcome = self
            .groups
            .coordinator_for(&r.group_id)
            .and_then(|mut c| c.heartbeat(&r.group_id, &r.member_id, now_ms()));
        let outcome = match outcome {
            Ok(false) => {
                self.sync_needed_by(&r.group_id, &r.member_id, deadline)
                    .await
            }
            other => other,
        };
        let (error, message, sync_needed) = match outcome {
            Ok(sync_needed) => (ErrorCode::None, String::new(), sync_needed),
            Err(e) => {
                let (error, message) = group_error(e);
                (error, message, false)
            }
        };
        HeartbeatResponse {
            error,
            message,
            sync_needed,
        }
    }

    /// Waits until the member should sync (what it may own changed since it was
    /// last told), or until `deadline`: `Ok(true)` when it should, `Ok(false)` when
    /// the wait ran out first, an error when the member or its group is gone (or
    /// this broker no longer coordinates it).
    async fn sync_needed_by(
        &self,
        group_id: &str,
        member_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<bool, GroupError> {
        let notify = self.groups.notify(group_id);
        loop {
            // Enabled before the check, so a change between the two still wakes it.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let outcome = self
                .groups
                .coordinator_for(group_id)
                .and_then(|c| c.sync_needed(group_id, member_id));
            if !matches!(outcome, Ok(false)) {
                return outcome;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return outcome,
            }
        }
    }

    /// A Kafka member's SyncGroup that left it partitions short (`pending`: other
    /// members must give them up first) is held, as a Kafka coordinator's
    /// rebalance barrier holds JoinGroup until every member has joined again: until
    /// what the member may own changes, then synced again, for at most
    /// `kafka_sync_hold_ms`, half the member's session timeout (it does not
    /// heartbeat while it waits) and half `idle_timeout_ms`. So it starts with its
    /// share, where answered at once it would get it only after its next heartbeat
    /// and another join. Returns the last answer.
    pub(crate) async fn hold_kafka_sync(
        &self,
        request: &SyncGroupRequest,
        mut given: SyncGroupResponse,
    ) -> SyncGroupResponse {
        if !(given.error.is_ok() && given.pending) {
            return given;
        }
        let session_ms = self
            .groups
            .coordinator_for(&request.group_id)
            .ok()
            .and_then(|c| c.session_timeout_ms(&request.group_id, &request.member_id))
            .unwrap_or(0);
        // And not so long that the listener closes the connection as idle meanwhile
        // (it reads nothing from a client waiting for its answer).
        let hold_ms = u64::from(self.config.kafka_sync_hold_ms.min(session_ms / 2))
            .min(self.config.idle_timeout_ms / 2);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(hold_ms);
        while given.error.is_ok() && given.pending {
            let changed = self
                .sync_needed_by(&request.group_id, &request.member_id, deadline)
                .await;
            if !matches!(changed, Ok(true)) {
                break;
            }
            // The member has not had the first answer: it still owns what it said.
            given = self.sync_group(request.clone()).await;
        }
        given
    }

    /// Tells the coordinator that a Kafka member owns what its SyncGroup answer
    /// `given` gives it (Meridian's own members say so at their next sync; Kafka's
    /// never sync again until the next rebalance), and answers with `given`, or
    /// with the error if the member is gone. If the group changed since the answer
    /// was made, the member's next heartbeat calls a rebalance. Without this the
    /// coordinator would count the member's partitions as given but never taken,
    /// and the group as never settled. A cooperative member also still holds what
    /// it owned when it synced, those partitions it was not given included: it
    /// gives them up (its revocation callback, a commit) and then joins again
    /// saying so, and only then may another member have them.
    pub(crate) async fn confirm_kafka_sync(
        &self,
        request: &SyncGroupRequest,
        given: SyncGroupResponse,
    ) -> SyncGroupResponse {
        let mut held = from_wire(&given.assignment);
        held.extend(from_wire(&request.owned));
        let outcome = self
            .membership_change(&request.group_id, |c| {
                c.confirm(&request.group_id, &request.member_id, held, now_ms())
            })
            .await;
        match outcome {
            Ok(()) => given,
            Err(failure) => sync_refused(failure),
        }
    }

    pub(crate) async fn leave_group(&self, r: LeaveGroupRequest) -> LeaveGroupResponse {
        let outcome = self
            .membership_change(&r.group_id, |c| {
                c.leave(
                    &r.group_id,
                    &r.member_id,
                    r.instance_id.as_deref(),
                    now_ms(),
                )
            })
            .await;
        let (error, message) = match outcome {
            Ok(()) => (ErrorCode::None, String::new()),
            Err(f) => (f.code, f.message),
        };
        LeaveGroupResponse { error, message }
    }

    /// Writes records to the group's offsets partition (as its leader, in a cluster).
    /// Runs under the coordinator lock so the log's order is the order applied; the
    /// caller then waits with [`Shared::wait_durable`] outside the lock.
    fn append_offsets(&self, group_id: &str, records: Vec<NewRecord>) -> Result<Written, Failure> {
        let topic = self.groups.offsets_topic.read().clone().ok_or_else(|| {
            Failure::new(
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} is not open on this broker"),
            )
        })?;
        let index = offsets_partition(group_id, topic.partitions.len() as u32);
        let partition = topic.partition(index)?.clone();
        let batch = encode_batch(&records, Compression::None, ProducerIdentity::NONE)
            .map_err(|e| Failure::new(ErrorCode::Unknown, format!("encoding offsets: {e}")))?;
        let sync = self
            .append(&topic, &partition, &batch)
            .map_err(coordinator_failure)?
            .sync;
        let replicated = if partition.replication.lock().is_some() {
            let required = partition.log()?.log_end_offset();
            Some((partition, required))
        } else {
            None
        };
        Ok(Written { sync, replicated })
    }

    /// Waits for what [`Shared::append_offsets`] wrote to be as safe as an acks=all
    /// produce: fsynced under `flush=always`, and on every in-sync replica of a
    /// replicated offsets partition (within `cluster.offsets_commit_timeout_ms`).
    async fn wait_durable(&self, written: Written) -> Result<(), Failure> {
        if self.config.flush == FlushPolicy::Always {
            let (tx, rx) = oneshot::channel();
            self.group_commit.sync(
                written.sync,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(Failure::new(
                        ErrorCode::StorageError,
                        format!("fsync failed: {e}"),
                    ))
                }
                Err(_) => {
                    return Err(Failure::new(
                        ErrorCode::StorageError,
                        "fsync thread stopped",
                    ))
                }
            }
        }
        if let Some((partition, required)) = written.replicated {
            let timeout = self
                .config
                .cluster
                .as_ref()
                .map_or(5_000, |c| c.offsets_commit_timeout_ms);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
            self.wait_for_commit(&partition, required, deadline)
                .await
                .map_err(coordinator_failure)?;
        }
        Ok(())
    }

    pub(crate) async fn offset_commit(&self, r: OffsetCommitRequest) -> OffsetCommitResponse {
        let outcome = self.offset_commit_inner(r).await;
        let (error, message) = match outcome {
            Ok(()) => (ErrorCode::None, String::new()),
            Err(f) => (f.code, f.message),
        };
        OffsetCommitResponse { error, message }
    }

    async fn offset_commit_inner(&self, r: OffsetCommitRequest) -> Result<(), Failure> {
        if r.topics.iter().all(|t| t.partitions.is_empty()) {
            return Ok(());
        }
        let now = now_ms();
        let (clearing, committing) = {
            let mut coordinator = self
                .groups
                .coordinator_for(&r.group_id)
                .map_err(group_failure)?;
            // The topics are checked under the coordinator lock, which
            // `topic_deleted` takes to remove a deleted topic's commits: a commit
            // racing a deletion is refused or removed with the rest, never left
            // behind for a topic created again under the name.
            let committed = self.requested_commits(&r, now)?;
            // A negative offset clears the partition's commit: Kafka clients read any
            // negative committed offset as none (and start where their reset policy
            // says), and some commit -1 or -2 to mean just that (KafkaJS's
            // resetOffsets); Kafka's brokers store it as given.
            let (committed, cleared): (Vec<_>, Vec<_>) =
                committed.into_iter().partition(|(_, c)| c.offset >= 0);
            // The member and its epoch are checked for the cleared partitions too.
            let zero = |(tp, c): &(TopicPartition, CommittedOffset)| {
                let c = CommittedOffset {
                    offset: 0,
                    ..c.clone()
                };
                (tp.clone(), c)
            };
            let checked: Vec<_> = (committed.iter().cloned())
                .chain(cleared.iter().map(zero))
                .collect();
            coordinator
                .validate_commit(&r.group_id, &r.member_id, r.member_epoch, &checked)
                .map_err(group_failure)?;
            let cleared: Vec<TopicPartition> = cleared.into_iter().map(|(tp, _)| tp).collect();
            let clearing = self.remove_commits(&mut coordinator, &r.group_id, &cleared)?;
            let committing = if committed.is_empty() {
                None
            } else {
                let records = committed
                    .iter()
                    .map(|(tp, c)| NewRecord {
                        timestamp: now,
                        key: Some(encode_key(&r.group_id, tp)),
                        value: Some(encode_value(c)),
                        headers: Vec::new(),
                    })
                    .collect();
                let sync = self.append_offsets(&r.group_id, records)?;
                for (tp, c) in committed {
                    coordinator.apply_commit(&r.group_id, tp, c);
                }
                Some(sync)
            };
            (clearing, committing)
        };
        for written in clearing.into_iter().chain(committing) {
            self.wait_durable(written).await?;
        }
        Ok(())
    }

    /// The commits `r` asks for, each of a partition that exists.
    fn requested_commits(
        &self,
        r: &OffsetCommitRequest,
        now: i64,
    ) -> Result<Vec<(TopicPartition, CommittedOffset)>, Failure> {
        let mut committed = Vec::new();
        for topic in &r.topics {
            let (count, incarnation) = self.topic_now(&topic.topic).ok_or_else(|| {
                Failure::new(
                    ErrorCode::UnknownTopic,
                    format!("topic `{}` does not exist", topic.topic),
                )
            })?;
            for p in &topic.partitions {
                if p.partition >= count {
                    return Err(Failure::new(
                        ErrorCode::InvalidPartition,
                        format!(
                            "topic `{}` has {count} partitions; partition {} does not exist",
                            topic.topic, p.partition
                        ),
                    ));
                }
                committed.push((
                    TopicPartition::new(topic.topic.clone(), p.partition),
                    CommittedOffset {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata: p.metadata.clone(),
                        commit_timestamp_ms: now,
                        topic_incarnation: incarnation,
                    },
                ));
            }
        }
        Ok(committed)
    }

    pub(crate) fn offset_fetch(&self, r: OffsetFetchRequest) -> OffsetFetchResponse {
        let committed = match self.groups.coordinator_for(&r.group_id) {
            Ok(coordinator) => coordinator.committed(&r.group_id),
            Err(e) => {
                let (error, message) = group_error(e);
                return OffsetFetchResponse {
                    error,
                    message,
                    topics: Vec::new(),
                };
            }
        };
        let wanted: Vec<(String, Vec<u32>)> = match r.topics {
            Some(topics) => topics
                .into_iter()
                .map(|t| (t.topic, t.partitions))
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                for tp in committed.keys() {
                    by_topic
                        .entry(tp.topic.clone())
                        .or_default()
                        .push(tp.partition);
                }
                by_topic.into_iter().collect()
            }
        };
        let topics = wanted
            .into_iter()
            .map(|(topic, partitions)| TopicOffsets {
                partitions: partitions
                    .into_iter()
                    .map(|partition| {
                        let c = committed.get(&TopicPartition::new(topic.clone(), partition));
                        PartitionOffset {
                            partition,
                            offset: c.map_or(-1, |c| c.offset),
                            leader_epoch: c.map_or(NO_LEADER_EPOCH, |c| c.leader_epoch),
                            metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                            commit_timestamp_ms: c.map_or(-1, |c| c.commit_timestamp_ms),
                        }
                    })
                    .collect(),
                topic,
            })
            .collect();
        OffsetFetchResponse {
            error: ErrorCode::None,
            message: String::new(),
            topics,
        }
    }

    pub(crate) fn list_groups(&self) -> ListGroupsResponse {
        ListGroupsResponse {
            groups: self
                .groups
                .coordinator
                .lock()
                .list()
                .into_iter()
                .map(|(group_id, state)| GroupListing {
                    group_id,
                    state: state.name().to_string(),
                })
                .collect(),
        }
    }

    pub(crate) fn describe_groups(&self, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let groups = r
            .group_ids
            .into_iter()
            .map(|group_id| {
                match self
                    .groups
                    .coordinator_for(&group_id)
                    .map(|c| c.describe(&group_id))
                {
                    Ok(Some(d)) => GroupDescription {
                        group_id,
                        error: ErrorCode::None,
                        message: String::new(),
                        state: d.state.name().to_string(),
                        assignor: d.assignor.map(|a| a.name().to_string()).unwrap_or_default(),
                        epoch: d.epoch,
                        members: d
                            .members
                            .into_iter()
                            .map(|m| GroupMember {
                                member_id: m.member_id,
                                instance_id: m.instance_id,
                                client_id: m.client_id,
                                client_host: m.client_host,
                                member_epoch: m.member_epoch,
                                topics: m.topics.into_iter().collect(),
                                owned: to_wire(&m.owned),
                                target: to_wire(&m.target),
                            })
                            .collect(),
                    },
                    Err(e) => {
                        let (error, message) = group_error(e);
                        GroupDescription {
                            message,
                            group_id,
                            error,
                            state: String::new(),
                            assignor: String::new(),
                            epoch: -1,
                            members: Vec::new(),
                        }
                    }
                    Ok(None) => GroupDescription {
                        message: format!("group `{group_id}` does not exist"),
                        group_id,
                        error: ErrorCode::GroupIdNotFound,
                        state: String::new(),
                        assignor: String::new(),
                        epoch: -1,
                        members: Vec::new(),
                    },
                }
            })
            .collect();
        DescribeGroupsResponse { groups }
    }

    pub(crate) async fn delete_groups(&self, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(r.group_ids.len());
        for group_id in r.group_ids {
            let outcome = self.delete_group(&group_id).await;
            let (error, message) = match outcome {
                Ok(()) => (ErrorCode::None, String::new()),
                Err(f) => (f.code, f.message),
            };
            results.push(GroupResult {
                group_id,
                error,
                message,
            });
        }
        DeleteGroupsResponse { results }
    }

    async fn delete_group(&self, group_id: &str) -> Result<(), Failure> {
        let sync = {
            let mut coordinator = self
                .groups
                .coordinator_for(group_id)
                .map_err(group_failure)?;
            let committed = coordinator
                .prepare_delete(group_id)
                .map_err(group_failure)?;
            let sync = self.remove_commits(&mut coordinator, group_id, &committed)?;
            coordinator.forget(group_id);
            self.groups.persisted.lock().remove(group_id);
            sync
        };
        self.wait_written(Ok(sync)).await
    }

    /// A topic deleted (here, or in the metadata image): groups subscribed to it
    /// rebalance, and as in Kafka every commit of it is deleted (tombstones written,
    /// not waited for), so consumers of a topic created again under the name start
    /// where their reset policy says rather than at the old topic's offsets.
    ///
    /// In a region the topic may exist again by now in the image Raft applied:
    /// commits of that incarnation (made since) stay.
    pub(crate) fn topic_deleted(&self, topic: &str) {
        self.groups.topic_changed(topic, None);
        let mut coordinator = self.groups.coordinator.lock();
        // Read under the lock, as commits read it.
        let now = self.topic_now(topic);
        self.remove_deleted_commits(&mut coordinator, |t, committed| {
            t == topic
                && match now {
                    None | Some((_, 0)) => true,
                    Some((_, incarnation)) => committed.topic_incarnation != incarnation,
                }
        });
    }

    /// Under the coordinator lock: tombstones and removes every commit of the
    /// topics `deleted` picks.
    fn remove_deleted_commits(
        &self,
        coordinator: &mut Coordinator,
        deleted: impl Fn(&str, &CommittedOffset) -> bool,
    ) {
        for (group_id, partitions) in coordinator.commits_of(deleted) {
            if let Err(f) = self.remove_commits(coordinator, &group_id, &partitions) {
                // Not the coordinator's log to write to (any more): forgotten here
                // all the same; the broker that leads it now writes them.
                tracing::debug!(group = %group_id, error = %f.message, "deleting a deleted topic's commits");
                for tp in &partitions {
                    coordinator.remove_commit(&group_id, tp);
                }
            }
        }
    }

    /// Under the coordinator lock: writes tombstones for the group's commits of
    /// `partitions` and removes them (`None`: there were none).
    fn remove_commits(
        &self,
        coordinator: &mut Coordinator,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<Option<Written>, Failure> {
        if partitions.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let records = partitions
            .iter()
            .map(|tp| NewRecord {
                timestamp: now,
                key: Some(encode_key(group_id, tp)),
                value: None,
                headers: Vec::new(),
            })
            .collect();
        let written = self.append_offsets(group_id, records)?;
        for tp in partitions {
            coordinator.remove_commit(group_id, tp);
        }
        Ok(Some(written))
    }

    pub(crate) async fn offset_delete(&self, r: OffsetDeleteRequest) -> OffsetDeleteResponse {
        let mut response = OffsetDeleteResponse {
            error: ErrorCode::None,
            message: String::new(),
            deleted: Vec::new(),
            refused: Vec::new(),
        };
        match self.offset_delete_inner(&r).await {
            Ok((deleted, refused)) => {
                response.deleted = to_wire(&deleted);
                for (topic, why) in refused {
                    let (code, message) = group_error(why);
                    response.refuse(topic, code, message);
                }
            }
            Err(f) => (response.error, response.message) = (f.code, f.message),
        }
        response
    }

    /// The commits deleted, and the topics refused with why.
    async fn offset_delete_inner(
        &self,
        r: &OffsetDeleteRequest,
    ) -> Result<(BTreeSet<TopicPartition>, Vec<(String, GroupError)>), Failure> {
        let mut topics: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for t in &r.topics {
            topics
                .entry(t.topic.clone())
                .or_default()
                .extend(&t.partitions);
        }
        let (deleted, written) = {
            let mut coordinator = self
                .groups
                .coordinator_for(&r.group_id)
                .map_err(group_failure)?;
            let deletion = coordinator
                .prepare_delete_offsets(&r.group_id, &topics)
                .map_err(group_failure)?;
            let written =
                self.remove_commits(&mut coordinator, &r.group_id, &deletion.partitions)?;
            (deletion, written)
        };
        self.wait_written(Ok(written)).await?;
        Ok((deleted.partitions.into_iter().collect(), deleted.refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // Values from java.lang.String#hashCode.
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert_eq!(java_hash("consumer-group-with-a-long-name"), -1_157_546_098);
    }

    /// A group's clients read a failed write to its offsets partition as Kafka's
    /// do: find the coordinator again and retry.
    #[test]
    fn offsets_partition_failures_read_as_the_coordinators() {
        let cases = [
            (ErrorCode::NotLeaderOrFollower, ErrorCode::NotCoordinator),
            (
                ErrorCode::NotEnoughReplicas,
                ErrorCode::CoordinatorNotAvailable,
            ),
            (
                ErrorCode::NotEnoughReplicasAfterAppend,
                ErrorCode::CoordinatorNotAvailable,
            ),
            (ErrorCode::StorageError, ErrorCode::StorageError),
            (ErrorCode::RequestTimedOut, ErrorCode::RequestTimedOut),
        ];
        for (from, to) in cases {
            let mapped = coordinator_failure(Failure::new(from, "why"));
            assert_eq!(mapped.code, to, "{from:?}");
            assert!(mapped.message.contains("why"), "{}", mapped.message);
        }
    }

    #[test]
    fn offsets_records_round_trip() {
        let tp = TopicPartition::new("orders", 7);
        let committed = CommittedOffset {
            offset: 42,
            leader_epoch: 5,
            metadata: "m".into(),
            commit_timestamp_ms: 1_700_000_000_000,
            topic_incarnation: 31,
        };
        let decoded = decode_record(encode_key("g", &tp), Some(encode_value(&committed))).unwrap();
        assert_eq!(
            decoded,
            LoadedRecord::Commit("g".to_string(), tp.clone(), Some(committed.clone()))
        );
        // A version 1 value as brokers wrote it before incarnations were kept.
        let v1 = encode(|w| {
            w.u16(1);
            w.i64(42);
            w.i32(5);
            w.string("m");
            w.i64(1_700_000_000_000);
        });
        let decoded = decode_record(encode_key("g", &tp), Some(v1)).unwrap();
        let expected = CommittedOffset {
            topic_incarnation: 0,
            ..committed
        };
        assert_eq!(
            decoded,
            LoadedRecord::Commit("g".to_string(), tp.clone(), Some(expected))
        );
        // A version 0 value, as brokers wrote before epochs were kept: no epoch.
        let old = encode(|w| {
            w.u16(0);
            w.i64(42);
            w.string("m");
            w.i64(1_700_000_000_000);
        });
        let decoded = decode_record(encode_key("g", &tp), Some(old)).unwrap();
        let expected = CommittedOffset {
            offset: 42,
            leader_epoch: NO_LEADER_EPOCH,
            metadata: "m".into(),
            commit_timestamp_ms: 1_700_000_000_000,
            topic_incarnation: 0,
        };
        assert_eq!(
            decoded,
            LoadedRecord::Commit("g".to_string(), tp.clone(), Some(expected))
        );
        assert_eq!(
            decode_record(encode_key("g", &tp), None).unwrap(),
            LoadedRecord::Commit("g".to_string(), tp, None)
        );
        assert!(decode_record(Bytes::from_static(b"\x00\x09junk"), None).is_err());
    }

    fn member(owned: &[u32], revoking: bool) -> MemberRecord {
        let tps = |ps: &[u32]| ps.iter().map(|p| TopicPartition::new("t", *p)).collect();
        MemberRecord {
            instance_id: Some("i-1".into()),
            client_id: "c".into(),
            client_host: "127.0.0.1:5000".into(),
            topics: BTreeSet::from(["t".to_string(), "u".to_string()]),
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            epoch: 3,
            owned: tps(owned),
            sent: tps(&[0]),
            target: tps(&[0, 2]),
            revoking,
        }
    }

    #[test]
    fn membership_records_round_trip() {
        let group = GroupRecord {
            epoch: 7,
            assignor: Assignor::Range,
            revoking_all: true,
        };
        assert_eq!(
            decode_record(encode_group_key("g"), Some(encode_group_value(&group))).unwrap(),
            LoadedRecord::Group("g".into(), Some(group))
        );
        assert_eq!(
            decode_record(encode_group_key("g"), None).unwrap(),
            LoadedRecord::Group("g".into(), None)
        );
        let m = member(&[0, 1], true);
        assert_eq!(
            decode_record(encode_member_key("g", "m-1"), Some(encode_member_value(&m))).unwrap(),
            LoadedRecord::Member("g".into(), "m-1".into(), Some(m))
        );
        assert_eq!(
            decode_record(encode_member_key("g", "m-1"), None).unwrap(),
            LoadedRecord::Member("g".into(), "m-1".into(), None)
        );
        // A later version, or a cut record, is refused (and skipped by the loader).
        let newer = encode(|w| w.u16(MEMBERSHIP_VALUE_VERSION + 1));
        assert!(decode_record(encode_group_key("g"), Some(newer)).is_err());
        let cut = encode_member_value(&member(&[0], false)).slice(..10);
        assert!(decode_record(encode_member_key("g", "m"), Some(cut)).is_err());
    }

    /// Only what changed is written: a member's record when it changed, a tombstone
    /// for a member gone, the group's record when it changed or the group emptied.
    #[test]
    fn membership_changes_are_written_as_differences() {
        let group = GroupRecord {
            epoch: 1,
            assignor: Assignor::CooperativeSticky,
            revoking_all: false,
        };
        let before = Persisted::of(&(
            Some(group.clone()),
            BTreeMap::from([
                ("a".to_string(), member(&[0], false)),
                ("b".to_string(), member(&[1], false)),
            ]),
        ));
        let keys = |records: Vec<NewRecord>| -> Vec<(LoadedRecord, bool)> {
            records
                .into_iter()
                .map(|r| {
                    let tombstone = r.value.is_none();
                    (decode_record(r.key.unwrap(), r.value).unwrap(), tombstone)
                })
                .collect()
        };
        assert!(before.changes("g", &before, 0).is_empty());
        // b changes, c joins.
        let now = Persisted::of(&(
            Some(group.clone()),
            BTreeMap::from([
                ("a".to_string(), member(&[0], false)),
                ("b".to_string(), member(&[1], true)),
                ("c".to_string(), member(&[], false)),
            ]),
        ));
        let written = keys(before.changes("g", &now, 0));
        assert_eq!(written.len(), 2);
        assert!(matches!(&written[0].0, LoadedRecord::Member(_, id, Some(_)) if id == "b"));
        assert!(matches!(&written[1].0, LoadedRecord::Member(_, id, Some(_)) if id == "c"));
        // Everyone leaves: a tombstone each, and one for the group.
        let written = keys(now.changes("g", &Persisted::default(), 0));
        assert_eq!(written.len(), 4);
        assert!(written.iter().all(|(_, tombstone)| *tombstone));
        assert!(matches!(&written[3].0, LoadedRecord::Group(g, None) if g == "g"));
        // A new epoch rewrites the group's record only.
        let bumped = Persisted::of(&(
            Some(GroupRecord { epoch: 2, ..group }),
            BTreeMap::from([
                ("a".to_string(), member(&[0], false)),
                ("b".to_string(), member(&[1], false)),
            ]),
        ));
        let written = keys(before.changes("g", &bumped, 0));
        assert_eq!(written.len(), 1);
        assert!(matches!(&written[0].0, LoadedRecord::Group(_, Some(r)) if r.epoch == 2));
    }
}
