//! The driver of the consumer-group coordinator (`meridian_core::group`): it feeds
//! requests and the clock to the state machine, holds heartbeats open until an
//! assignment changes, and keeps committed offsets in the internal
//! `__consumer_offsets` topic so they survive restarts.
//!
//! Offsets topic records (RecordBatch v2, uncompressed; the topic is compacted):
//! key `u16 version=0 | string group | string topic | u32 partition`,
//! value `u16 version=0 | i64 offset | string metadata | i64 commit_timestamp_ms`, or
//! no value (a tombstone) when a group is deleted. Last record per key wins.
//!
//! A group's records live in partition `java_hash(group) % offsets_topic_num_partitions`
//! (Kafka's placement), so one group's commits stay in order in one log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meridian_core::assignor::Assignor;
use meridian_core::group::{CommittedOffset, Coordinator, GroupError, JoinRequest};
use meridian_core::TopicPartition;
use meridian_wire::batch::{
    decode_records, encode_batch, split_batches, Compression, NewRecord, ProducerIdentity,
};
use meridian_wire::codec::{Reader, Writer};
use meridian_wire::messages::*;
use meridian_wire::ErrorCode;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::config::FlushPolicy;
use crate::handlers::now_ms;
use crate::topics::{Failure, Registry, Topic};
use crate::Shared;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
const RECORD_VERSION: u16 = 0;
/// How often session and revocation deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

pub(crate) struct Groups {
    coordinator: Mutex<Coordinator>,
    /// Woken whenever a group's membership or assignment changes (heartbeats wait on it).
    changed: Mutex<HashMap<String, Arc<Notify>>>,
    offsets_topic: Arc<Topic>,
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
        GroupError::OffsetMetadataTooLarge(_) => ErrorCode::OffsetMetadataTooLarge,
        GroupError::InvalidCommitOffset(_) => ErrorCode::InvalidCommitOffset,
    };
    (code, e.message().to_string())
}

/// Java's `String.hashCode`, so a group lands on the same offsets partition as in Kafka.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

fn to_wire(tps: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    TopicPartitions::group(tps.iter().map(|tp| (tp.topic.as_str(), tp.partition)))
}

fn from_wire(tps: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    TopicPartitions::pairs(tps)
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
        .collect()
}

fn encode_key(group: &str, tp: &TopicPartition) -> Bytes {
    let mut buf = BytesMut::new();
    let mut w = Writer::new(&mut buf);
    w.u16(RECORD_VERSION);
    w.string(group);
    w.string(&tp.topic);
    w.u32(tp.partition);
    buf.freeze()
}

fn encode_value(committed: &CommittedOffset) -> Bytes {
    let mut buf = BytesMut::new();
    let mut w = Writer::new(&mut buf);
    w.u16(RECORD_VERSION);
    w.i64(committed.offset);
    w.string(&committed.metadata);
    w.i64(committed.commit_timestamp_ms);
    buf.freeze()
}

type LoadedRecord = (String, TopicPartition, Option<CommittedOffset>);

fn decode_record(key: Bytes, value: Option<Bytes>) -> Result<LoadedRecord, String> {
    let mut r = Reader::new(key);
    let version = r.u16().map_err(|e| e.to_string())?;
    if version != RECORD_VERSION {
        return Err(format!("unknown offsets key version {version}"));
    }
    let group = r.string().map_err(|e| e.to_string())?;
    let tp = TopicPartition::new(
        r.string().map_err(|e| e.to_string())?,
        r.u32().map_err(|e| e.to_string())?,
    );
    let Some(value) = value else {
        return Ok((group, tp, None));
    };
    let mut r = Reader::new(value);
    let version = r.u16().map_err(|e| e.to_string())?;
    if version != RECORD_VERSION {
        return Err(format!("unknown offsets value version {version}"));
    }
    let committed = CommittedOffset {
        offset: r.i64().map_err(|e| e.to_string())?,
        metadata: r.string().map_err(|e| e.to_string())?,
        commit_timestamp_ms: r.i64().map_err(|e| e.to_string())?,
    };
    Ok((group, tp, Some(committed)))
}

impl Groups {
    /// Creates the offsets topic when missing and loads every committed offset.
    pub(crate) fn open(
        config: &crate::config::BrokerConfig,
        registry: &Registry,
    ) -> anyhow::Result<Groups> {
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
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut coordinator = Coordinator::new(config.coordinator_config(), incarnation);
        let now = now_ms();
        for topic in registry.all() {
            coordinator.topic_changed(&topic.name, Some(topic.partitions.len() as u32), now);
        }
        let mut n_records = 0u64;
        for partition in &offsets_topic.partitions {
            let log = partition.log().map_err(|f| {
                anyhow::anyhow!("{OFFSETS_TOPIC}/{}: {}", partition.index, f.message)
            })?;
            let mut offset = log.log_start_offset();
            loop {
                let slice = log.read(offset, 1024 * 1024).map_err(|e| {
                    anyhow::anyhow!("reading {OFFSETS_TOPIC}/{}: {e}", partition.index)
                })?;
                let Some(slice) = slice else { break };
                let bytes = slice.read()?;
                for batch in split_batches(bytes) {
                    let (header, batch) = batch
                        .map_err(|e| anyhow::anyhow!("{OFFSETS_TOPIC}/{}: {e}", partition.index))?;
                    offset = header.last_offset() + 1;
                    for record in
                        decode_records(&header, &batch).map_err(|e| anyhow::anyhow!("{e}"))?
                    {
                        let Some(key) = record.key else { continue };
                        match decode_record(key, record.value) {
                            Ok((group, tp, Some(committed))) => {
                                coordinator.apply_commit(&group, tp, committed)
                            }
                            Ok((group, tp, None)) => coordinator.remove_commit(&group, &tp),
                            Err(e) => {
                                tracing::warn!(offset = record.offset, error = %e, "skipping unreadable offsets record")
                            }
                        }
                        n_records += 1;
                    }
                }
            }
        }
        tracing::info!(
            records = n_records,
            groups = coordinator.list().len(),
            "loaded committed offsets"
        );
        Ok(Groups {
            coordinator: Mutex::new(coordinator),
            changed: Mutex::new(HashMap::new()),
            offsets_topic,
        })
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

    fn offsets_partition(&self, group_id: &str) -> u32 {
        (java_hash(group_id) & 0x7fff_ffff) as u32 % self.offsets_topic.partitions.len() as u32
    }
}

/// Expires sessions and stuck revocations.
pub(crate) async fn tick_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let events = shared.groups.coordinator.lock().tick(now_ms());
        for event in events {
            tracing::info!(?event, "group member removed");
            shared.groups.wake(event.group_id());
        }
    }
}

impl Shared {
    pub(crate) fn find_coordinator(&self, r: FindCoordinatorRequest) -> FindCoordinatorResponse {
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

    pub(crate) fn join_group(&self, r: JoinGroupRequest, client_host: String) -> JoinGroupResponse {
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
        let outcome = self.groups.coordinator.lock().join(request, now_ms());
        match outcome {
            Ok(joined) => {
                self.groups.wake(&group_id);
                JoinGroupResponse {
                    error: ErrorCode::None,
                    message: String::new(),
                    member_id: joined.member_id,
                    member_epoch: joined.member_epoch,
                    heartbeat_interval_ms: joined.heartbeat_interval_ms,
                }
            }
            Err(e) => {
                let (error, message) = group_error(e);
                refuse(error, message)
            }
        }
    }

    pub(crate) fn sync_group(&self, r: SyncGroupRequest) -> SyncGroupResponse {
        let outcome = self.groups.coordinator.lock().sync(
            &r.group_id,
            &r.member_id,
            from_wire(&r.owned),
            now_ms(),
        );
        match outcome {
            Ok(synced) => {
                // What this member gave up may be someone else's now.
                self.groups.wake(&r.group_id);
                SyncGroupResponse {
                    error: ErrorCode::None,
                    message: String::new(),
                    member_epoch: synced.member_epoch,
                    assignment: to_wire(&synced.assignment),
                    pending: synced.pending,
                }
            }
            Err(e) => {
                let (error, message) = group_error(e);
                SyncGroupResponse {
                    error,
                    message,
                    member_epoch: -1,
                    assignment: Vec::new(),
                    pending: false,
                }
            }
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
        let notify = self.groups.notify(&r.group_id);
        let mut first = true;
        let outcome = loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let outcome = {
                let mut coordinator = self.groups.coordinator.lock();
                if first {
                    coordinator.heartbeat(&r.group_id, &r.member_id, now_ms())
                } else {
                    coordinator.sync_needed(&r.group_id, &r.member_id)
                }
            };
            first = false;
            if !matches!(outcome, Ok(false)) {
                break outcome;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => break outcome,
            }
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

    pub(crate) fn leave_group(&self, r: LeaveGroupRequest) -> LeaveGroupResponse {
        let outcome = self.groups.coordinator.lock().leave(
            &r.group_id,
            &r.member_id,
            r.instance_id.as_deref(),
            now_ms(),
        );
        let (error, message) = match outcome {
            Ok(()) => {
                self.groups.wake(&r.group_id);
                (ErrorCode::None, String::new())
            }
            Err(e) => group_error(e),
        };
        LeaveGroupResponse { error, message }
    }

    /// Writes records to the group's offsets partition and waits for the flush policy.
    /// Runs under the coordinator lock so the log's order is the order applied.
    fn append_offsets(
        &self,
        group_id: &str,
        records: Vec<NewRecord>,
    ) -> Result<meridian_log::SyncHandle, Failure> {
        let topic = &self.groups.offsets_topic;
        let partition = topic.partition(self.groups.offsets_partition(group_id))?;
        let batch = encode_batch(&records, Compression::None, ProducerIdentity::NONE)
            .map_err(|e| Failure::new(ErrorCode::Unknown, format!("encoding offsets: {e}")))?;
        let (_, _, sync) = self.append(topic, partition, &batch)?;
        Ok(sync)
    }

    async fn wait_durable(&self, sync: meridian_log::SyncHandle) -> Result<(), Failure> {
        if self.config.flush != FlushPolicy::Always {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.group_commit.sync(
            sync,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::new(
                ErrorCode::StorageError,
                format!("fsync failed: {e}"),
            )),
            Err(_) => Err(Failure::new(
                ErrorCode::StorageError,
                "fsync thread stopped",
            )),
        }
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
        let mut offsets = Vec::new();
        for topic in &r.topics {
            let t = self.registry.get(&topic.topic).ok_or_else(|| {
                Failure::new(
                    ErrorCode::UnknownTopic,
                    format!("topic `{}` does not exist", topic.topic),
                )
            })?;
            for p in &topic.partitions {
                t.partition(p.partition)?;
                offsets.push((
                    TopicPartition::new(topic.topic.clone(), p.partition),
                    p.offset,
                    p.metadata.clone(),
                ));
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let sync = {
            let mut coordinator = self.groups.coordinator.lock();
            coordinator
                .validate_commit(&r.group_id, &r.member_id, r.member_epoch, &offsets)
                .map_err(|e| {
                    let (code, message) = group_error(e);
                    Failure::new(code, message)
                })?;
            let committed: Vec<(TopicPartition, CommittedOffset)> = offsets
                .into_iter()
                .map(|(tp, offset, metadata)| {
                    (
                        tp,
                        CommittedOffset {
                            offset,
                            metadata,
                            commit_timestamp_ms: now,
                        },
                    )
                })
                .collect();
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
            sync
        };
        self.wait_durable(sync).await
    }

    pub(crate) fn offset_fetch(&self, r: OffsetFetchRequest) -> OffsetFetchResponse {
        let committed = self.groups.coordinator.lock().committed(&r.group_id);
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
        let coordinator = self.groups.coordinator.lock();
        let groups = r
            .group_ids
            .into_iter()
            .map(|group_id| match coordinator.describe(&group_id) {
                Some(d) => GroupDescription {
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
                None => GroupDescription {
                    message: format!("group `{group_id}` does not exist"),
                    group_id,
                    error: ErrorCode::GroupIdNotFound,
                    state: String::new(),
                    assignor: String::new(),
                    epoch: -1,
                    members: Vec::new(),
                },
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
            let mut coordinator = self.groups.coordinator.lock();
            let committed = coordinator.prepare_delete(group_id).map_err(|e| {
                let (code, message) = group_error(e);
                Failure::new(code, message)
            })?;
            let now = now_ms();
            let records: Vec<NewRecord> = committed
                .iter()
                .map(|tp| NewRecord {
                    timestamp: now,
                    key: Some(encode_key(group_id, tp)),
                    value: None,
                    headers: Vec::new(),
                })
                .collect();
            let sync = if records.is_empty() {
                None
            } else {
                Some(self.append_offsets(group_id, records)?)
            };
            coordinator.forget(group_id);
            sync
        };
        match sync {
            Some(sync) => self.wait_durable(sync).await,
            None => Ok(()),
        }
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

    #[test]
    fn offsets_records_round_trip() {
        let tp = TopicPartition::new("orders", 7);
        let committed = CommittedOffset {
            offset: 42,
            metadata: "m".into(),
            commit_timestamp_ms: 1_700_000_000_000,
        };
        let decoded = decode_record(encode_key("g", &tp), Some(encode_value(&committed))).unwrap();
        assert_eq!(decoded, ("g".to_string(), tp.clone(), Some(committed)));
        assert_eq!(
            decode_record(encode_key("g", &tp), None).unwrap(),
            ("g".to_string(), tp, None)
        );
        assert!(decode_record(Bytes::from_static(b"\x00\x09junk"), None).is_err());
    }
}
