//! Consumer-group requests and responses (API keys 8..=17): finding the coordinator,
//! membership (join, sync, heartbeat, leave), committed offsets, and group admin.
//!
//! Every response carries its own `error` and `message` (group requests name one
//! group, so one error says it all); `ErrorCode::None` means success.

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::ErrorCode;
use crate::messages::NO_LEADER_EPOCH;

/// Partitions of one topic.
///
/// ```
/// use meridian_wire::group::TopicPartitions;
/// let grouped = TopicPartitions::group([("orders", 2), ("audit", 0), ("orders", 0)]);
/// assert_eq!(grouped[0].topic, "audit");
/// assert_eq!((grouped[1].topic.as_str(), &grouped[1].partitions[..]), ("orders", &[2, 0][..]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<u32>,
}

impl TopicPartitions {
    /// Groups `(topic, partition)` pairs by topic (topics sorted, partitions in the
    /// order given).
    pub fn group<'a>(pairs: impl IntoIterator<Item = (&'a str, u32)>) -> Vec<TopicPartitions> {
        let mut by_topic: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        for (topic, partition) in pairs {
            by_topic.entry(topic).or_default().push(partition);
        }
        by_topic
            .into_iter()
            .map(|(topic, partitions)| TopicPartitions {
                topic: topic.to_string(),
                partitions,
            })
            .collect()
    }

    /// The `(topic, partition)` pairs of a list, in order.
    pub fn pairs(list: &[TopicPartitions]) -> impl Iterator<Item = (&str, u32)> {
        list.iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.as_str(), *p)))
    }
}

/// Writes partitions grouped by topic (as in the group messages; also used by the
/// broker's persisted group records).
pub fn put_tps(w: &mut Writer<'_>, tps: &[TopicPartitions]) {
    w.array(tps, |w, t| {
        w.string(&t.topic);
        w.array(&t.partitions, |w, p| w.u32(*p));
    });
}

/// Reads what [`put_tps`] wrote.
pub fn get_tps(r: &mut Reader) -> Result<Vec<TopicPartitions>, DecodeError> {
    r.array(6, |r| {
        Ok(TopicPartitions {
            topic: r.string()?,
            partitions: r.array(4, |r| r.u32())?,
        })
    })
}

/// Writes an optional string.
pub fn put_opt_string(w: &mut Writer<'_>, s: &Option<String>) {
    w.option(s.as_ref(), |w, s| w.string(s));
}

/// Reads what [`put_opt_string`] wrote.
pub fn get_opt_string(r: &mut Reader) -> Result<Option<String>, DecodeError> {
    r.option(|r| r.string())
}

/// Writes a list of strings.
pub fn put_strings(w: &mut Writer<'_>, values: &[String]) {
    w.array(values, |w, v| w.string(v));
}

/// Reads what [`put_strings`] wrote.
pub fn get_strings(r: &mut Reader) -> Result<Vec<String>, DecodeError> {
    r.array(2, |r| r.string())
}

fn put_status(w: &mut Writer<'_>, error: ErrorCode, message: &str) {
    w.u16(error as u16);
    w.string(message);
}

fn get_status(r: &mut Reader) -> Result<(ErrorCode, String), DecodeError> {
    Ok((ErrorCode::from_u16(r.u16()?), r.string()?))
}

/// Declares a message struct with `encode`/`decode` from a field list. Field kinds:
/// `string`, `u32`, `i32`, `i64`, `bool`, `opt_string`, `strings`, `tps`, `error`.
macro_rules! message {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $( $(#[$fmeta:meta])* $field:ident : $kind:ident ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name { $( $(#[$fmeta])* pub $field: message!(@type $kind) ),* }

        impl $name {
            #[allow(unused_variables)]
            pub fn encode(&self, w: &mut Writer<'_>) {
                $( message!(@put w, self.$field, $kind); )*
            }
            #[allow(unused_variables)]
            pub fn decode(r: &mut Reader) -> Result<$name, DecodeError> {
                Ok($name { $( $field: message!(@get r, $kind) ),* })
            }
        }
    };
    (@type string) => { String };
    (@type u32) => { u32 };
    (@type i32) => { i32 };
    (@type i64) => { i64 };
    (@type bool) => { bool };
    (@type opt_string) => { Option<String> };
    (@type strings) => { Vec<String> };
    (@type tps) => { Vec<TopicPartitions> };
    (@type error) => { ErrorCode };
    (@put $w:ident, $v:expr, string) => { $w.string(&$v) };
    (@put $w:ident, $v:expr, u32) => { $w.u32($v) };
    (@put $w:ident, $v:expr, i32) => { $w.i32($v) };
    (@put $w:ident, $v:expr, i64) => { $w.i64($v) };
    (@put $w:ident, $v:expr, bool) => { $w.bool($v) };
    (@put $w:ident, $v:expr, opt_string) => { put_opt_string($w, &$v) };
    (@put $w:ident, $v:expr, strings) => { put_strings($w, &$v) };
    (@put $w:ident, $v:expr, tps) => { put_tps($w, &$v) };
    (@put $w:ident, $v:expr, error) => { $w.u16($v as u16) };
    (@get $r:ident, string) => { $r.string()? };
    (@get $r:ident, u32) => { $r.u32()? };
    (@get $r:ident, i32) => { $r.i32()? };
    (@get $r:ident, i64) => { $r.i64()? };
    (@get $r:ident, bool) => { $r.bool()? };
    (@get $r:ident, opt_string) => { get_opt_string($r)? };
    (@get $r:ident, strings) => { get_strings($r)? };
    (@get $r:ident, tps) => { get_tps($r)? };
    (@get $r:ident, error) => { ErrorCode::from_u16($r.u16()?) };
}

message! {
    pub struct FindCoordinatorRequest { group_id: string }
}

message! {
    pub struct FindCoordinatorResponse {
        error: error,
        message: string,
        broker_id: u32,
        host: string,
        port: u32,
    }
}

message! {
    pub struct JoinGroupRequest {
        group_id: string,
        /// Empty for a new member.
        member_id: string,
        /// Static membership: stable across restarts.
        instance_id: opt_string,
        client_id: string,
        topics: strings,
        /// `range`, `roundrobin` or `cooperative-sticky`.
        assignor: string,
        session_timeout_ms: u32,
        rebalance_timeout_ms: u32,
    }
}

message! {
    pub struct JoinGroupResponse {
        error: error,
        message: string,
        member_id: string,
        member_epoch: i32,
        heartbeat_interval_ms: u32,
    }
}

message! {
    /// Reports the partitions the member owns; the answer is what it may own now.
    pub struct SyncGroupRequest {
        group_id: string,
        member_id: string,
        owned: tps,
    }
}

message! {
    pub struct SyncGroupResponse {
        error: error,
        message: string,
        member_epoch: i32,
        assignment: tps,
        /// More partitions will come once their old owners give them up.
        pending: bool,
    }
}

message! {
    /// Keeps the member alive. The broker holds it up to `max_wait_ms` and answers
    /// early when the member's assignment changes.
    pub struct HeartbeatRequest {
        group_id: string,
        member_id: string,
        member_epoch: i32,
        max_wait_ms: u32,
    }
}

message! {
    pub struct HeartbeatResponse {
        error: error,
        message: string,
        /// The member should sync: its assignment changed.
        sync_needed: bool,
    }
}

message! {
    /// Leaves by member id, or removes a static member by instance id (member id empty).
    pub struct LeaveGroupRequest {
        group_id: string,
        member_id: string,
        instance_id: opt_string,
    }
}

message! {
    pub struct LeaveGroupResponse { error: error, message: string }
}

/// One committed (or to-be-committed) offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffset {
    pub partition: u32,
    /// The next offset to consume; -1 in a fetch response when nothing is committed.
    pub offset: i64,
    /// Leader epoch of the batch holding the last consumed record (the one before
    /// `offset`), or [`NO_LEADER_EPOCH`]. A
    /// consumer resuming here fetches with it, so a log cut by a leader change since
    /// the commit is noticed (KIP-320).
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOffsets {
    pub topic: String,
    pub partitions: Vec<PartitionOffset>,
}

/// Version 1 carries each offset's leader epoch; version 0 has none
/// ([`NO_LEADER_EPOCH`] when read).
fn put_offsets(w: &mut Writer<'_>, topics: &[TopicOffsets], version: u16) {
    w.array(topics, |w, t| {
        w.string(&t.topic);
        w.array(&t.partitions, |w, p| {
            w.u32(p.partition);
            w.i64(p.offset);
            if version >= 1 {
                w.i32(p.leader_epoch);
            }
            w.string(&p.metadata);
            w.i64(p.commit_timestamp_ms);
        });
    });
}

fn get_offsets(r: &mut Reader, version: u16) -> Result<Vec<TopicOffsets>, DecodeError> {
    r.array(6, |r| {
        Ok(TopicOffsets {
            topic: r.string()?,
            partitions: r.array(22, |r| {
                Ok(PartitionOffset {
                    partition: r.u32()?,
                    offset: r.i64()?,
                    leader_epoch: if version >= 1 {
                        r.i32()?
                    } else {
                        NO_LEADER_EPOCH
                    },
                    metadata: r.string()?,
                    commit_timestamp_ms: r.i64()?,
                })
            })?,
        })
    })
}

/// Commits offsets. Members pass their id and epoch; an empty member id commits for
/// a group with no active members (a standalone consumer, or an offset reset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub topics: Vec<TopicOffsets>,
}

impl OffsetCommitRequest {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.string(&self.group_id);
        w.string(&self.member_id);
        w.i32(self.member_epoch);
        put_offsets(w, &self.topics, version);
    }
    pub fn decode(r: &mut Reader, version: u16) -> Result<OffsetCommitRequest, DecodeError> {
        Ok(OffsetCommitRequest {
            group_id: r.string()?,
            member_id: r.string()?,
            member_epoch: r.i32()?,
            topics: get_offsets(r, version)?,
        })
    }
}

message! {
    /// All or nothing: either every offset of the request is committed or none.
    pub struct OffsetCommitResponse { error: error, message: string }
}

/// Committed offsets of a group: of the listed topics' partitions, or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    pub topics: Option<Vec<TopicPartitions>>,
}

impl OffsetFetchRequest {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.string(&self.group_id);
        w.option(self.topics.as_ref(), |w, t| put_tps(w, t));
    }
    pub fn decode(r: &mut Reader) -> Result<OffsetFetchRequest, DecodeError> {
        Ok(OffsetFetchRequest {
            group_id: r.string()?,
            topics: r.option(get_tps)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetFetchResponse {
    pub error: ErrorCode,
    pub message: String,
    pub topics: Vec<TopicOffsets>,
}

impl OffsetFetchResponse {
    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        put_status(w, self.error, &self.message);
        put_offsets(w, &self.topics, version);
    }
    pub fn decode(r: &mut Reader, version: u16) -> Result<OffsetFetchResponse, DecodeError> {
        let (error, message) = get_status(r)?;
        Ok(OffsetFetchResponse {
            error,
            message,
            topics: get_offsets(r, version)?,
        })
    }
}

message! {
    pub struct ListGroupsRequest {}
}

message! {
    pub struct GroupListing { group_id: string, state: string }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListGroupsResponse {
    pub groups: Vec<GroupListing>,
}

impl ListGroupsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.groups, |w, g| g.encode(w));
    }
    pub fn decode(r: &mut Reader) -> Result<ListGroupsResponse, DecodeError> {
        Ok(ListGroupsResponse {
            groups: r.array(4, GroupListing::decode)?,
        })
    }
}

message! {
    pub struct DescribeGroupsRequest { group_ids: strings }
}

message! {
    /// One member of a group, as [`GroupDescription`] lists it.
    ///
    /// ```
    /// # fn example(group: meridian_wire::group::GroupDescription) {
    /// for member in &group.members {
    ///     let owned: Vec<String> = member
    ///         .owned
    ///         .iter()
    ///         .map(|tp| format!("{}{:?}", tp.topic, tp.partitions))
    ///         .collect();
    ///     println!(
    ///         "{} ({}) epoch {} owns {}",
    ///         member.member_id, member.client_host, member.member_epoch, owned.join(" ")
    ///     );
    /// }
    /// # }
    /// ```
    pub struct GroupMember {
        member_id: string,
        instance_id: opt_string,
        client_id: string,
        client_host: string,
        member_epoch: i32,
        topics: strings,
        /// What the member reported owning at its last sync.
        owned: tps,
        /// What the assignor wants it to own.
        target: tps,
    }
}

/// A group's state, assignor and members, as the group coordinator describes it
/// (`Admin::describe_group` in the SDK).
///
/// ```
/// # fn example(group: meridian_wire::group::GroupDescription) {
/// println!(
///     "{}: {} with {} members (assignor {}, epoch {})",
///     group.group_id, group.state, group.members.len(), group.assignor, group.epoch
/// );
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub error: ErrorCode,
    pub message: String,
    /// `Empty`, `Reconciling` or `Stable`.
    pub state: String,
    /// Empty when the group has no members.
    pub assignor: String,
    pub epoch: i32,
    pub members: Vec<GroupMember>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeGroupsResponse {
    pub groups: Vec<GroupDescription>,
}

impl DescribeGroupsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.groups, |w, g| {
            w.string(&g.group_id);
            put_status(w, g.error, &g.message);
            w.string(&g.state);
            w.string(&g.assignor);
            w.i32(g.epoch);
            w.array(&g.members, |w, m| m.encode(w));
        });
    }
    pub fn decode(r: &mut Reader) -> Result<DescribeGroupsResponse, DecodeError> {
        Ok(DescribeGroupsResponse {
            groups: r.array(16, |r| {
                let group_id = r.string()?;
                let (error, message) = get_status(r)?;
                Ok(GroupDescription {
                    group_id,
                    error,
                    message,
                    state: r.string()?,
                    assignor: r.string()?,
                    epoch: r.i32()?,
                    members: r.array(24, GroupMember::decode)?,
                })
            })?,
        })
    }
}

message! {
    pub struct DeleteGroupsRequest { group_ids: strings }
}

message! {
    /// Deletes some of a group's committed offsets (Kafka's OffsetDelete), refused
    /// for a topic while a member subscribes to it. A topic listed without partitions
    /// means every partition the group has committed for it (a deleted topic too).
    pub struct OffsetDeleteRequest { group_id: string, topics: tps }
}

message! {
    /// A topic an `OffsetDelete` left alone, and why (a member of the group
    /// subscribes to it, or the client may not read it).
    pub struct RefusedTopic { topic: string, error: error, message: string }
}

/// `deleted`: the partitions whose commits went (those without one are left out).
/// `refused` (version 1): the topics whose commits stay, with why; the others' go
/// all the same. `error` and `message` are a group's failure (nothing deleted) or,
/// when topics were refused, the first one's error and every one's message, so a
/// version 0 client, which sends one topic, learns why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetDeleteResponse {
    pub error: ErrorCode,
    pub message: String,
    pub deleted: Vec<TopicPartitions>,
    pub refused: Vec<RefusedTopic>,
}

impl OffsetDeleteResponse {
    /// Adds a refused topic: the first of them sets `error` (unless the group
    /// failed), and `message` says why for each.
    pub fn refuse(&mut self, topic: String, error: ErrorCode, message: String) {
        if self.error.is_ok() {
            self.error = error;
            self.message = message.clone();
        } else {
            self.message.push_str("; ");
            self.message.push_str(&message);
        }
        self.refused.push(RefusedTopic {
            topic,
            error,
            message,
        });
    }

    pub fn encode(&self, w: &mut Writer<'_>, version: u16) {
        w.u16(self.error as u16);
        w.string(&self.message);
        put_tps(w, &self.deleted);
        if version >= 1 {
            w.array(&self.refused, |w, t| t.encode(w));
        }
    }

    pub fn decode(r: &mut Reader, version: u16) -> Result<OffsetDeleteResponse, DecodeError> {
        Ok(OffsetDeleteResponse {
            error: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
            deleted: get_tps(r)?,
            refused: if version >= 1 {
                r.array(6, RefusedTopic::decode)?
            } else {
                Vec::new()
            },
        })
    }
}

message! {
    pub struct GroupResult { group_id: string, error: error, message: string }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteGroupsResponse {
    pub results: Vec<GroupResult>,
}

impl DeleteGroupsResponse {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.array(&self.results, |w, g| g.encode(w));
    }
    pub fn decode(r: &mut Reader) -> Result<DeleteGroupsResponse, DecodeError> {
        Ok(DeleteGroupsResponse {
            results: r.array(6, GroupResult::decode)?,
        })
    }
}
