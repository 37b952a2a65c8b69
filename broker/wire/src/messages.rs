//! Requests and responses. Each API has a key and a version range; version 0 of each
//! is what this file encodes. A new field means a new version, decoded by branching
//! on the version, so old clients keep working.

use bytes::Bytes;

pub use crate::cluster::*;
use crate::codec::{DecodeError, Reader, Writer};
pub use crate::describe_cluster::*;
use crate::error::ErrorCode;
pub use crate::group::*;
pub use crate::idempotence::*;
pub use crate::leader_epochs::*;
use crate::plugin_messages::{self as pm, *};
pub use crate::reassign::*;
pub use crate::topic_changes::*;
use crate::TopicId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopics = 2,
    DeleteTopics = 3,
    DescribeTopics = 4,
    Produce = 5,
    Fetch = 6,
    ListOffsets = 7,
    FindCoordinator = 8,
    JoinGroup = 9,
    SyncGroup = 10,
    Heartbeat = 11,
    LeaveGroup = 12,
    OffsetCommit = 13,
    OffsetFetch = 14,
    ListGroups = 15,
    DescribeGroups = 16,
    DeleteGroups = 17,
    InitProducerId = 18,
    /// Delete some of a group's committed offsets (group.rs).
    OffsetDelete = 19,
    /// Delete records below an offset (log start moves up).
    DeleteRecords = 20,
    /// Change topics' settings (topic_changes.rs).
    AlterTopicConfigs = 21,
    /// Add partitions to topics (topic_changes.rs).
    CreatePartitions = 22,
    /// Where a leader epoch ends in a partition's log (leader_epochs.rs).
    OffsetForLeaderEpoch = 23,
    // 24..=29: WebAssembly plugins (plugin_messages.rs).
    PluginDeploy = 24,
    PluginList = 25,
    PluginDescribe = 26,
    PluginRemove = 27,
    TopicAttach = 28,
    TopicDetach = 29,
    /// Move partitions' replicas to other brokers (reassign.rs).
    AlterPartitionReassignments = 44,
    /// The reassignments under way and their progress (reassign.rs).
    ListPartitionReassignments = 45,
    /// Brokers and the metadata quorum's state (describe_cluster.rs).
    DescribeCluster = 46,
    /// Move leadership back to preferred replicas (reassign.rs).
    ElectLeaders = 47,
    /// The partition logs a broker holds, their offsets and size (reassign.rs).
    DescribeLogs = 48,
    /// Forget a broker that is gone for good (describe_cluster.rs).
    UnregisterBroker = 49,
    // 40..=43: the cluster control plane, broker to broker (cluster.rs).
    /// A Raft RPC of the metadata quorum.
    Raft = 40,
    BrokerHeartbeat = 41,
    AlterPartition = 42,
    ControlledShutdown = 43,
}

impl ApiKey {
    pub const ALL: [ApiKey; 40] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DescribeTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::DeleteGroups,
        ApiKey::InitProducerId,
        ApiKey::OffsetDelete,
        ApiKey::DeleteRecords,
        ApiKey::AlterTopicConfigs,
        ApiKey::CreatePartitions,
        ApiKey::OffsetForLeaderEpoch,
        ApiKey::PluginDeploy,
        ApiKey::PluginList,
        ApiKey::PluginDescribe,
        ApiKey::PluginRemove,
        ApiKey::TopicAttach,
        ApiKey::TopicDetach,
        ApiKey::AlterPartitionReassignments,
        ApiKey::ListPartitionReassignments,
        ApiKey::DescribeCluster,
        ApiKey::ElectLeaders,
        ApiKey::DescribeLogs,
        ApiKey::UnregisterBroker,
        ApiKey::Raft,
        ApiKey::BrokerHeartbeat,
        ApiKey::AlterPartition,
        ApiKey::ControlledShutdown,
    ];

    pub fn from_u16(v: u16) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| *k as u16 == v)
    }
    /// The oldest version served. Versions differ only where a body changed; a peer
    /// outside the range gets
    /// [`FrameError::UnsupportedVersion`](crate::frame::FrameError::UnsupportedVersion),
    /// and clients use the highest version both sides have (the ApiVersions handshake).
    pub fn min_version(self) -> u16 {
        0
    }
    /// Version 1 of `OffsetCommit` (request) and `OffsetFetch` (response) carries
    /// each offset's leader epoch; version 1 of `AlterTopicConfigs` and
    /// `CreatePartitions` (requests) can ask to validate only, and version 2 of
    /// `AlterTopicConfigs` to replace a topic's settings. Version 1 of
    /// `ApiVersions` has version 0's bodies: a broker listing it reads a trace
    /// context in request frames ([`crate::frame::TRACE_CONTEXT_FLAG`]). Version 1
    /// of `BrokerHeartbeat` (request) carries the broker's Kafka listener. Version 1
    /// of `DescribeTopics` (response) carries each topic's plugin chain. Version 1
    /// of `Metadata` (response) carries a message with each topic's error. Version
    /// 1 of `DescribeLogs` (response) carries the log directory's total and usable
    /// bytes. Version 1 of `OffsetDelete` (response) names the topics refused.
    /// Version 1 of `ListOffsets` (response) carries each offset's leader epoch.
    /// Version 1 of `CreateTopics` (response) describes each topic created.
    /// Version 1 of `ElectLeaders` (request) can ask for an unclean election.
    /// Version 2 of `Metadata`, `DescribeTopics` and `CreateTopics` (responses)
    /// carries each topic's [`TopicId`]. Version 1 of `DeleteTopics` deletes
    /// topics by ID, and version 1 of `Fetch` fetches them by ID.
    pub fn max_version(self) -> u16 {
        match self {
            ApiKey::ApiVersions
            | ApiKey::Fetch
            | ApiKey::OffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::CreatePartitions
            | ApiKey::BrokerHeartbeat
            | ApiKey::DescribeLogs
            | ApiKey::OffsetDelete
            | ApiKey::ListOffsets
            | ApiKey::ElectLeaders
            | ApiKey::DeleteTopics => 1,
            ApiKey::AlterTopicConfigs
            | ApiKey::Metadata
            | ApiKey::DescribeTopics
            | ApiKey::CreateTopics => 2,
            _ => 0,
        }
    }
}

/// Produce partition meaning "no partition chosen": the broker routes each record with
/// the partitioner plugin attached to the topic (`InvalidPartition` when there is none).
pub const UNASSIGNED_PARTITION: u32 = u32::MAX;

/// `ListOffsets` timestamp asking for the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// `ListOffsets` timestamp asking for the log end offset (next offset to be written).
pub const LATEST_TIMESTAMP: i64 = -1;
/// `ListOffsets` timestamp asking for the first record with the partition's largest
/// timestamp, with that timestamp (offset and timestamp `-1` when there is none below
/// the high watermark). A broker from before it refuses it with `InvalidRequest`.
pub const MAX_TIMESTAMP: i64 = -3;

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DescribeTopics(DescribeTopicsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    InitProducerId(InitProducerIdRequest),
    OffsetDelete(OffsetDeleteRequest),
    DeleteRecords(DeleteRecordsRequest),
    AlterTopicConfigs(AlterTopicConfigsRequest),
    CreatePartitions(CreatePartitionsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    PluginDeploy(PluginDeployRequest),
    PluginList,
    PluginDescribe(PluginNameRequest),
    PluginRemove(PluginNameRequest),
    TopicAttach(TopicAttachRequest),
    TopicDetach(TopicDetachRequest),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest),
    ListPartitionReassignments(ListPartitionReassignmentsRequest),
    DescribeCluster,
    ElectLeaders(ElectLeadersRequest),
    DescribeLogs(DescribeLogsRequest),
    UnregisterBroker(UnregisterBrokerRequest),
    Raft(RaftRequest),
    BrokerHeartbeat(BrokerHeartbeatRequest),
    AlterPartition(AlterPartitionRequest),
    ControlledShutdown(ControlledShutdownRequest),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    ApiVersions(ApiVersionsResponse),
    Metadata(MetadataResponse),
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    DescribeTopics(DescribeTopicsResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    FindCoordinator(FindCoordinatorResponse),
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ListGroups(ListGroupsResponse),
    DescribeGroups(DescribeGroupsResponse),
    DeleteGroups(DeleteGroupsResponse),
    InitProducerId(InitProducerIdResponse),
    OffsetDelete(OffsetDeleteResponse),
    DeleteRecords(DeleteRecordsResponse),
    AlterTopicConfigs(AlterTopicConfigsResponse),
    CreatePartitions(CreatePartitionsResponse),
    OffsetForLeaderEpoch(OffsetForLeaderEpochResponse),
    PluginDeploy(PluginInfoResponse),
    PluginList(PluginListResponse),
    PluginDescribe(PluginInfoResponse),
    PluginRemove(PluginResult),
    TopicAttach(PluginResult),
    TopicDetach(PluginResult),
    AlterPartitionReassignments(AlterPartitionReassignmentsResponse),
    ListPartitionReassignments(ListPartitionReassignmentsResponse),
    DescribeCluster(DescribeClusterResponse),
    ElectLeaders(ElectLeadersResponse),
    DescribeLogs(DescribeLogsResponse),
    UnregisterBroker(UnregisterBrokerResponse),
    Raft(RaftResponse),
    BrokerHeartbeat(BrokerHeartbeatResponse),
    AlterPartition(AlterPartitionResponse),
    ControlledShutdown(ControlledShutdownResponse),
}

// ---- ApiVersions -------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersionsRequest {
    pub client_software: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api_key: u16,
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersionsResponse {
    pub apis: Vec<ApiVersionRange>,
    pub broker_id: u32,
    pub cluster_id: String,
    pub max_frame_bytes: u32,
}

// ---- Metadata ----------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataRequest {
    /// `None` asks for every topic.
    pub topics: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    pub broker_id: u32,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: u32,
    pub error: ErrorCode,
    pub leader: u32,
    pub leader_epoch: i32,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    /// Version 2; [`TopicId::NONE`] in an older answer, and for a topic that does
    /// not exist.
    pub id: TopicId,
    pub error: ErrorCode,
    /// Why `error` (e.g. which rule refused the client); version 1, empty in a
    /// version 0 answer.
    pub message: String,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataResponse {
    pub brokers: Vec<BrokerInfo>,
    pub controller_id: u32,
    pub topics: Vec<TopicMetadata>,
}

// ---- CreateTopics / DeleteTopics / DescribeTopics ------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    /// 0: the receiving broker's `default_partitions`.
    pub partitions: u32,
    /// 0: the cluster's `cluster.default_replication_factor` (1 on a single broker).
    pub replication_factor: u16,
    pub configs: Vec<ConfigEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<CreateTopic>,
    pub validate_only: bool,
}

/// Per-topic outcome of a create or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicResult {
    pub name: String,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopicsResponse {
    pub results: Vec<TopicResult>,
    /// The topics created (validating only: that would be), as created. Version 1;
    /// a version 0 answer has none.
    pub created: Vec<CreatedTopic>,
}

/// A topic as its creation made it: the partitions and replication factor with the
/// defaults the request left to the broker filled in, and every setting with its
/// effective value (Kafka's CreateTopics answers with the same from version 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedTopic {
    pub name: String,
    /// The ID it was given (validating only: [`TopicId::NONE`], none is given).
    /// Version 2; none in an older answer.
    pub id: TopicId,
    pub partitions: u32,
    pub replication_factor: u16,
    pub configs: Vec<DescribedConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
    /// Topics named by ID (version 1): the topic that has the ID is deleted, never
    /// one created since under its name.
    pub ids: Vec<TopicId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTopicsResponse {
    /// One per name asked.
    pub results: Vec<TopicResult>,
    /// One per ID asked, in order (version 1).
    pub by_id: Vec<DeletedById>,
}

/// What became of a topic a [`DeleteTopicsRequest`] named by ID: `UnknownTopicId`
/// when no topic has it (deleted already, perhaps created again under its name
/// with a new ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedById {
    pub id: TopicId,
    /// The topic's name; empty when no topic has the ID.
    pub name: String,
    pub error: ErrorCode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeTopicsRequest {
    /// Empty asks for every topic.
    pub names: Vec<String>,
}

/// One setting of a topic as [`TopicDescription::configs`] lists it: its value in
/// effect, and whether that is the broker's default (no value of the topic's own).
///
/// ```
/// # fn example(topic: meridian_wire::messages::TopicDescription) {
/// for config in topic.configs.iter().filter(|c| !c.is_default) {
///     println!("{} = {} (set on the topic)", config.key, config.value);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedConfig {
    pub key: String,
    pub value: String,
    pub is_default: bool,
}

/// One partition of [`TopicDescription::partitions`]: where its log starts, its
/// high watermark (the end consumers read to) and its size on disk.
///
/// ```
/// # fn example(topic: meridian_wire::messages::TopicDescription) {
/// for p in &topic.partitions {
///     let records = p.high_watermark - p.log_start_offset;
///     println!("{}: {records} records, {} bytes in {} segments", p.partition, p.size_bytes, p.segments);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: u32,
    pub error: ErrorCode,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
    pub segments: u32,
}

/// A topic as the broker describes it (`Admin::describe_topic` in the SDK,
/// `meridian topic describe` on the command line): replication factor, every
/// setting with its value in effect, partitions and plugin chain.
///
/// ```
/// # fn example(topic: meridian_wire::messages::TopicDescription) {
/// let retention = topic.configs.iter().find(|c| c.key == "retention.ms");
/// println!(
///     "{}: {} partitions, replication factor {}, retention.ms {:?}",
///     topic.name,
///     topic.partitions.len(),
///     topic.replication_factor,
///     retention.map(|c| &c.value)
/// );
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    /// Version 2; [`TopicId::NONE`] in an older answer, and for a topic that does
    /// not exist.
    pub id: TopicId,
    pub error: ErrorCode,
    pub message: String,
    pub replication_factor: u16,
    pub configs: Vec<DescribedConfig>,
    pub partitions: Vec<PartitionDescription>,
    /// The topic's produce chain of plugins, in the order they run, with the limits
    /// in effect (broker defaults filled in) and the failure policy spelled out.
    /// Version 1; a version 0 answer has none.
    pub plugins: Vec<crate::plugin_messages::Attachment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeTopicsResponse {
    pub topics: Vec<TopicDescription>,
}

// ---- Produce -----------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducePartition {
    /// The partition, or [`UNASSIGNED_PARTITION`] to let the topic's partitioner plugin
    /// route each record.
    pub partition: u32,
    /// One or more v2 record batches, back to back.
    pub records: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRequest {
    /// 0 (no response), 1 (leader wrote it) or -1 (all in-sync replicas have it).
    pub acks: i8,
    pub timeout_ms: u32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducePartitionResponse {
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    /// Offset of the first record of the first batch; -1 on error.
    pub base_offset: i64,
    pub log_append_time: i64,
    pub log_start_offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceTopicResponse {
    pub name: String,
    pub partitions: Vec<ProducePartitionResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceResponse {
    pub topics: Vec<ProduceTopicResponse>,
}

// ---- Fetch -------------------------------------------------------------------------

/// `FetchRequest::replica_id` of a consumer (any fetch not from a follower broker).
pub const CONSUMER_REPLICA_ID: i32 = -1;
/// `current_leader_epoch` / `last_fetched_epoch` meaning "not known / not checked".
pub const NO_LEADER_EPOCH: i32 = -1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartition {
    pub partition: u32,
    pub fetch_offset: i64,
    pub partition_max_bytes: u32,
    /// The leader epoch the fetcher believes current: the leader answers
    /// `FencedLeaderEpoch` when it is older than its own and `UnknownLeaderEpoch` when
    /// newer. [`NO_LEADER_EPOCH`] skips the check (consumers that do not track epochs).
    pub current_leader_epoch: i32,
    /// A follower's epoch of its last record ([`NO_LEADER_EPOCH`] when its log holds
    /// none), so the leader can tell where the follower's log diverges from its own.
    pub last_fetched_epoch: i32,
}

impl FetchPartition {
    /// A consumer's fetch of one partition, without epoch checks.
    pub fn new(partition: u32, fetch_offset: i64, partition_max_bytes: u32) -> FetchPartition {
        FetchPartition {
            partition,
            fetch_offset,
            partition_max_bytes,
            current_leader_epoch: NO_LEADER_EPOCH,
            last_fetched_epoch: NO_LEADER_EPOCH,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchTopic {
    pub name: String,
    /// Version 1: the topic by its ID. When set, the broker fetches the topic with
    /// this ID whatever `name` says (`UnknownTopicId` when none has it: a topic
    /// deleted and created again under its name is another topic); [`TopicId::NONE`]
    /// fetches by `name`.
    pub id: TopicId,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub topics: Vec<FetchTopic>,
    /// A filter plugin run by the broker over the fetched records (appended to v0
    /// before any release: nothing had shipped). `min_bytes` counts bytes before it.
    pub filter: Option<FetchFilter>,
    /// The fetching follower's broker id, or [`CONSUMER_REPLICA_ID`]. A follower
    /// reads up to the log end and its fetch offset tells the leader how far it has
    /// replicated; a consumer reads only up to the high watermark. (Like the filter,
    /// added to v0 before any release.)
    pub replica_id: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartitionResponse {
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Whole batches; a batch containing `fetch_offset` is returned from its start.
    pub records: Bytes,
    /// To a follower whose log diverges from the leader's: the largest epoch at or
    /// below its last fetched epoch that the leader has, and where that epoch ends on
    /// the leader. The follower truncates there (no records come with it).
    pub diverging_epoch: Option<DivergingEpoch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DivergingEpoch {
    pub epoch: i32,
    pub end_offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchTopicResponse {
    pub name: String,
    /// Version 1: the ID the request asked by ([`TopicId::NONE`] when it asked by
    /// name), so a client fetching by ID can match the answer to its topic.
    pub id: TopicId,
    pub partitions: Vec<FetchPartitionResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchResponse {
    pub topics: Vec<FetchTopicResponse>,
}

// ---- ListOffsets -------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsPartition {
    pub partition: u32,
    /// [`EARLIEST_TIMESTAMP`], [`LATEST_TIMESTAMP`] or a timestamp in ms.
    pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    pub topics: Vec<ListOffsetsTopic>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsPartitionResponse {
    pub partition: u32,
    pub error: ErrorCode,
    /// The offset found; for a timestamp past every record, the log end offset.
    pub offset: i64,
    pub timestamp: i64,
    /// The leader epoch of `offset` in the leader's log (of the batch holding it,
    /// or the latest epoch at the log end); [`NO_LEADER_EPOCH`] when unknown, and
    /// from a broker answering at version 0.
    pub leader_epoch: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsTopicResponse {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsResponse {
    pub topics: Vec<ListOffsetsTopicResponse>,
}

// ---- DeleteRecords -----------------------------------------------------------------

/// `DeleteRecordsPartition::offset` asking to delete everything (up to the log end).
pub const DELETE_TO_END: i64 = -1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsPartition {
    pub partition: u32,
    /// The new log start offset: every record below it is deleted. [`DELETE_TO_END`]
    /// means the log end offset.
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsTopic {
    pub name: String,
    pub partitions: Vec<DeleteRecordsPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsRequest {
    pub topics: Vec<DeleteRecordsTopic>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsPartitionResponse {
    pub partition: u32,
    pub error: ErrorCode,
    pub message: String,
    /// The log start offset after the request (Kafka's low watermark); -1 on error.
    pub low_watermark: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsTopicResponse {
    pub name: String,
    pub partitions: Vec<DeleteRecordsPartitionResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRecordsResponse {
    pub topics: Vec<DeleteRecordsTopicResponse>,
}

// ---- encoding ----------------------------------------------------------------------

fn error_code(r: &mut Reader) -> Result<ErrorCode, DecodeError> {
    Ok(ErrorCode::from_u16(r.u16()?))
}

pub(crate) fn put_topic_result(w: &mut Writer<'_>, t: &TopicResult) {
    w.string(&t.name);
    w.u16(t.error as u16);
    w.string(&t.message);
}

/// A topic's ID in a message of version `since` and later; none before.
fn topic_id_from(r: &mut Reader, version: u16, since: u16) -> Result<TopicId, DecodeError> {
    Ok(if version >= since {
        TopicId(r.array_of()?)
    } else {
        TopicId::NONE
    })
}

fn put_described_config(w: &mut Writer<'_>, c: &DescribedConfig) {
    w.string(&c.key);
    w.string(&c.value);
    w.bool(c.is_default);
}

fn get_described_config(r: &mut Reader) -> Result<DescribedConfig, DecodeError> {
    Ok(DescribedConfig {
        key: r.string()?,
        value: r.string()?,
        is_default: r.bool()?,
    })
}

pub(crate) fn get_topic_result(r: &mut Reader) -> Result<TopicResult, DecodeError> {
    Ok(TopicResult {
        name: r.string()?,
        error: error_code(r)?,
        message: r.string()?,
    })
}

fn put_u32s(w: &mut Writer<'_>, values: &[u32]) {
    w.array(values, |w, v| w.u32(*v));
}

fn get_u32s(r: &mut Reader) -> Result<Vec<u32>, DecodeError> {
    r.array(4, |r| r.u32())
}

impl Request {
    /// The oldest version of its API that can carry everything this request says.
    /// A request that validates only needs the version with that flag: sent at an
    /// older one, it would be applied.
    pub fn lowest_version(&self) -> u16 {
        match self {
            Request::AlterTopicConfigs(r) if r.topics.iter().any(|t| t.replace) => 2,
            Request::AlterTopicConfigs(r) if r.validate_only => 1,
            Request::CreatePartitions(r) if r.validate_only => 1,
            Request::ElectLeaders(r) if r.unclean => 1,
            Request::DeleteTopics(r) if !r.ids.is_empty() => 1,
            Request::Fetch(r) if r.topics.iter().any(|t| !t.id.is_none()) => 1,
            _ => self.api_key().min_version(),
        }
    }

    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::ApiVersions(_) => ApiKey::ApiVersions,
            Request::Metadata(_) => ApiKey::Metadata,
            Request::CreateTopics(_) => ApiKey::CreateTopics,
            Request::DeleteTopics(_) => ApiKey::DeleteTopics,
            Request::DescribeTopics(_) => ApiKey::DescribeTopics,
            Request::Produce(_) => ApiKey::Produce,
            Request::Fetch(_) => ApiKey::Fetch,
            Request::ListOffsets(_) => ApiKey::ListOffsets,
            Request::FindCoordinator(_) => ApiKey::FindCoordinator,
            Request::JoinGroup(_) => ApiKey::JoinGroup,
            Request::SyncGroup(_) => ApiKey::SyncGroup,
            Request::Heartbeat(_) => ApiKey::Heartbeat,
            Request::LeaveGroup(_) => ApiKey::LeaveGroup,
            Request::OffsetCommit(_) => ApiKey::OffsetCommit,
            Request::OffsetFetch(_) => ApiKey::OffsetFetch,
            Request::ListGroups(_) => ApiKey::ListGroups,
            Request::DescribeGroups(_) => ApiKey::DescribeGroups,
            Request::DeleteGroups(_) => ApiKey::DeleteGroups,
            Request::OffsetDelete(_) => ApiKey::OffsetDelete,
            Request::InitProducerId(_) => ApiKey::InitProducerId,
            Request::DeleteRecords(_) => ApiKey::DeleteRecords,
            Request::AlterTopicConfigs(_) => ApiKey::AlterTopicConfigs,
            Request::CreatePartitions(_) => ApiKey::CreatePartitions,
            Request::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
            Request::PluginDeploy(_) => ApiKey::PluginDeploy,
            Request::PluginList => ApiKey::PluginList,
            Request::PluginDescribe(_) => ApiKey::PluginDescribe,
            Request::PluginRemove(_) => ApiKey::PluginRemove,
            Request::TopicAttach(_) => ApiKey::TopicAttach,
            Request::TopicDetach(_) => ApiKey::TopicDetach,
            Request::AlterPartitionReassignments(_) => ApiKey::AlterPartitionReassignments,
            Request::ListPartitionReassignments(_) => ApiKey::ListPartitionReassignments,
            Request::DescribeCluster => ApiKey::DescribeCluster,
            Request::ElectLeaders(_) => ApiKey::ElectLeaders,
            Request::DescribeLogs(_) => ApiKey::DescribeLogs,
            Request::UnregisterBroker(_) => ApiKey::UnregisterBroker,
            Request::Raft(_) => ApiKey::Raft,
            Request::BrokerHeartbeat(_) => ApiKey::BrokerHeartbeat,
            Request::AlterPartition(_) => ApiKey::AlterPartition,
            Request::ControlledShutdown(_) => ApiKey::ControlledShutdown,
        }
    }

    /// The body at `version` (of this request's API; the caller checks the range).
    pub fn encode_body(&self, w: &mut Writer<'_>, version: u16) {
        match self {
            Request::ApiVersions(r) => w.string(&r.client_software),
            Request::Metadata(r) => w.option(r.topics.as_ref(), |w, t| put_strings(w, t)),
            Request::CreateTopics(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.u32(t.partitions);
                    w.u16(t.replication_factor);
                    w.array(&t.configs, |w, c| {
                        w.string(&c.key);
                        w.string(&c.value);
                    });
                });
                w.bool(r.validate_only);
            }
            Request::DeleteTopics(r) => {
                put_strings(w, &r.names);
                if version >= 1 {
                    w.array(&r.ids, |w, id| w.fixed(&id.0));
                }
            }
            Request::DescribeTopics(r) => put_strings(w, &r.names),
            Request::Produce(r) => {
                w.i8(r.acks);
                w.u32(r.timeout_ms);
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.shared_bytes(&p.records);
                    });
                });
            }
            Request::Fetch(r) => {
                w.u32(r.max_wait_ms);
                w.u32(r.min_bytes);
                w.u32(r.max_bytes);
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    if version >= 1 {
                        w.fixed(&t.id.0);
                    }
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.i64(p.fetch_offset);
                        w.u32(p.partition_max_bytes);
                        w.i32(p.current_leader_epoch);
                        w.i32(p.last_fetched_epoch);
                    });
                });
                w.option(r.filter.as_ref(), pm::put_fetch_filter);
                w.i32(r.replica_id);
            }
            Request::ListOffsets(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.i64(p.timestamp);
                    });
                });
            }
            Request::FindCoordinator(m) => m.encode(w),
            Request::JoinGroup(m) => m.encode(w),
            Request::SyncGroup(m) => m.encode(w),
            Request::Heartbeat(m) => m.encode(w),
            Request::LeaveGroup(m) => m.encode(w),
            Request::OffsetCommit(m) => m.encode(w, version),
            Request::OffsetFetch(m) => m.encode(w),
            Request::ListGroups(m) => m.encode(w),
            Request::DescribeGroups(m) => m.encode(w),
            Request::DeleteGroups(m) => m.encode(w),
            Request::OffsetDelete(m) => m.encode(w),
            Request::InitProducerId(m) => m.encode(w),
            Request::DeleteRecords(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.i64(p.offset);
                    });
                });
            }
            Request::PluginDeploy(r) => pm::put_deploy(w, r),
            Request::PluginList => {}
            Request::PluginDescribe(r) | Request::PluginRemove(r) => pm::put_name(w, r),
            Request::TopicAttach(r) => pm::put_attach(w, r),
            Request::TopicDetach(r) => pm::put_detach(w, r),
            Request::AlterPartitionReassignments(m) => m.encode(w),
            Request::AlterTopicConfigs(m) => m.encode(w, version),
            Request::CreatePartitions(m) => m.encode(w, version),
            Request::OffsetForLeaderEpoch(m) => m.encode(w),
            Request::ListPartitionReassignments(m) => m.encode(w),
            Request::DescribeCluster => {}
            Request::ElectLeaders(m) => m.encode(w, version),
            Request::DescribeLogs(m) => m.encode(w),
            Request::UnregisterBroker(m) => m.encode(w),
            Request::Raft(m) => m.encode(w),
            Request::BrokerHeartbeat(m) => m.encode(w, version),
            Request::AlterPartition(m) => m.encode(w),
            Request::ControlledShutdown(m) => m.encode(w),
        }
    }

    pub fn decode_body(api: ApiKey, version: u16, r: &mut Reader) -> Result<Request, DecodeError> {
        Ok(match api {
            ApiKey::ApiVersions => Request::ApiVersions(ApiVersionsRequest {
                client_software: r.string()?,
            }),
            ApiKey::Metadata => Request::Metadata(MetadataRequest {
                topics: r.option(get_strings)?,
            }),
            ApiKey::CreateTopics => Request::CreateTopics(CreateTopicsRequest {
                topics: r.array(12, |r| {
                    Ok(CreateTopic {
                        name: r.string()?,
                        partitions: r.u32()?,
                        replication_factor: r.u16()?,
                        configs: r.array(4, |r| {
                            Ok(ConfigEntry {
                                key: r.string()?,
                                value: r.string()?,
                            })
                        })?,
                    })
                })?,
                validate_only: r.bool()?,
            }),
            ApiKey::DeleteTopics => Request::DeleteTopics(DeleteTopicsRequest {
                names: get_strings(r)?,
                ids: if version >= 1 {
                    r.array(16, |r| Ok(TopicId(r.array_of()?)))?
                } else {
                    Vec::new()
                },
            }),
            ApiKey::DescribeTopics => Request::DescribeTopics(DescribeTopicsRequest {
                names: get_strings(r)?,
            }),
            ApiKey::Produce => Request::Produce(ProduceRequest {
                acks: r.i8()?,
                timeout_ms: r.u32()?,
                topics: r.array(6, |r| {
                    Ok(ProduceTopic {
                        name: r.string()?,
                        partitions: r.array(8, |r| {
                            Ok(ProducePartition {
                                partition: r.u32()?,
                                records: r.bytes()?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::Fetch => Request::Fetch(FetchRequest {
                max_wait_ms: r.u32()?,
                min_bytes: r.u32()?,
                max_bytes: r.u32()?,
                topics: r.array(6, |r| {
                    Ok(FetchTopic {
                        name: r.string()?,
                        id: topic_id_from(r, version, 1)?,
                        partitions: r.array(24, |r| {
                            Ok(FetchPartition {
                                partition: r.u32()?,
                                fetch_offset: r.i64()?,
                                partition_max_bytes: r.u32()?,
                                current_leader_epoch: r.i32()?,
                                last_fetched_epoch: r.i32()?,
                            })
                        })?,
                    })
                })?,
                filter: r.option(pm::get_fetch_filter)?,
                replica_id: r.i32()?,
            }),
            ApiKey::ListOffsets => Request::ListOffsets(ListOffsetsRequest {
                topics: r.array(6, |r| {
                    Ok(ListOffsetsTopic {
                        name: r.string()?,
                        partitions: r.array(12, |r| {
                            Ok(ListOffsetsPartition {
                                partition: r.u32()?,
                                timestamp: r.i64()?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::FindCoordinator => Request::FindCoordinator(FindCoordinatorRequest::decode(r)?),
            ApiKey::JoinGroup => Request::JoinGroup(JoinGroupRequest::decode(r)?),
            ApiKey::SyncGroup => Request::SyncGroup(SyncGroupRequest::decode(r)?),
            ApiKey::Heartbeat => Request::Heartbeat(HeartbeatRequest::decode(r)?),
            ApiKey::LeaveGroup => Request::LeaveGroup(LeaveGroupRequest::decode(r)?),
            ApiKey::OffsetCommit => Request::OffsetCommit(OffsetCommitRequest::decode(r, version)?),
            ApiKey::OffsetFetch => Request::OffsetFetch(OffsetFetchRequest::decode(r)?),
            ApiKey::ListGroups => Request::ListGroups(ListGroupsRequest::decode(r)?),
            ApiKey::DescribeGroups => Request::DescribeGroups(DescribeGroupsRequest::decode(r)?),
            ApiKey::DeleteGroups => Request::DeleteGroups(DeleteGroupsRequest::decode(r)?),
            ApiKey::OffsetDelete => Request::OffsetDelete(OffsetDeleteRequest::decode(r)?),
            ApiKey::InitProducerId => Request::InitProducerId(InitProducerIdRequest::decode(r)?),
            ApiKey::DeleteRecords => Request::DeleteRecords(DeleteRecordsRequest {
                topics: r.array(6, |r| {
                    Ok(DeleteRecordsTopic {
                        name: r.string()?,
                        partitions: r.array(12, |r| {
                            Ok(DeleteRecordsPartition {
                                partition: r.u32()?,
                                offset: r.i64()?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::PluginDeploy => Request::PluginDeploy(pm::get_deploy(r)?),
            ApiKey::PluginList => Request::PluginList,
            ApiKey::PluginDescribe => Request::PluginDescribe(pm::get_name(r)?),
            ApiKey::PluginRemove => Request::PluginRemove(pm::get_name(r)?),
            ApiKey::TopicAttach => Request::TopicAttach(pm::get_attach(r)?),
            ApiKey::TopicDetach => Request::TopicDetach(pm::get_detach(r)?),
            ApiKey::AlterPartitionReassignments => {
                Request::AlterPartitionReassignments(AlterPartitionReassignmentsRequest::decode(r)?)
            }
            ApiKey::ListPartitionReassignments => {
                Request::ListPartitionReassignments(ListPartitionReassignmentsRequest::decode(r)?)
            }
            ApiKey::DescribeCluster => Request::DescribeCluster,
            ApiKey::ElectLeaders => Request::ElectLeaders(ElectLeadersRequest::decode(r, version)?),
            ApiKey::DescribeLogs => Request::DescribeLogs(DescribeLogsRequest::decode(r)?),
            ApiKey::UnregisterBroker => {
                Request::UnregisterBroker(UnregisterBrokerRequest::decode(r)?)
            }
            ApiKey::AlterTopicConfigs => {
                Request::AlterTopicConfigs(AlterTopicConfigsRequest::decode(r, version)?)
            }
            ApiKey::CreatePartitions => {
                Request::CreatePartitions(CreatePartitionsRequest::decode(r, version)?)
            }
            ApiKey::OffsetForLeaderEpoch => {
                Request::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::decode(r)?)
            }
            ApiKey::Raft => Request::Raft(RaftRequest::decode(r)?),
            ApiKey::BrokerHeartbeat => {
                Request::BrokerHeartbeat(BrokerHeartbeatRequest::decode(r, version)?)
            }
            ApiKey::AlterPartition => Request::AlterPartition(AlterPartitionRequest::decode(r)?),
            ApiKey::ControlledShutdown => {
                Request::ControlledShutdown(ControlledShutdownRequest::decode(r)?)
            }
        })
    }
}

impl Response {
    pub fn api_key(&self) -> ApiKey {
        match self {
            Response::ApiVersions(_) => ApiKey::ApiVersions,
            Response::Metadata(_) => ApiKey::Metadata,
            Response::CreateTopics(_) => ApiKey::CreateTopics,
            Response::DeleteTopics(_) => ApiKey::DeleteTopics,
            Response::DescribeTopics(_) => ApiKey::DescribeTopics,
            Response::Produce(_) => ApiKey::Produce,
            Response::Fetch(_) => ApiKey::Fetch,
            Response::ListOffsets(_) => ApiKey::ListOffsets,
            Response::FindCoordinator(_) => ApiKey::FindCoordinator,
            Response::JoinGroup(_) => ApiKey::JoinGroup,
            Response::SyncGroup(_) => ApiKey::SyncGroup,
            Response::Heartbeat(_) => ApiKey::Heartbeat,
            Response::LeaveGroup(_) => ApiKey::LeaveGroup,
            Response::OffsetCommit(_) => ApiKey::OffsetCommit,
            Response::OffsetFetch(_) => ApiKey::OffsetFetch,
            Response::ListGroups(_) => ApiKey::ListGroups,
            Response::DescribeGroups(_) => ApiKey::DescribeGroups,
            Response::DeleteGroups(_) => ApiKey::DeleteGroups,
            Response::OffsetDelete(_) => ApiKey::OffsetDelete,
            Response::InitProducerId(_) => ApiKey::InitProducerId,
            Response::DeleteRecords(_) => ApiKey::DeleteRecords,
            Response::AlterTopicConfigs(_) => ApiKey::AlterTopicConfigs,
            Response::CreatePartitions(_) => ApiKey::CreatePartitions,
            Response::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
            Response::PluginDeploy(_) => ApiKey::PluginDeploy,
            Response::PluginList(_) => ApiKey::PluginList,
            Response::PluginDescribe(_) => ApiKey::PluginDescribe,
            Response::PluginRemove(_) => ApiKey::PluginRemove,
            Response::TopicAttach(_) => ApiKey::TopicAttach,
            Response::TopicDetach(_) => ApiKey::TopicDetach,
            Response::AlterPartitionReassignments(_) => ApiKey::AlterPartitionReassignments,
            Response::ListPartitionReassignments(_) => ApiKey::ListPartitionReassignments,
            Response::DescribeCluster(_) => ApiKey::DescribeCluster,
            Response::ElectLeaders(_) => ApiKey::ElectLeaders,
            Response::DescribeLogs(_) => ApiKey::DescribeLogs,
            Response::UnregisterBroker(_) => ApiKey::UnregisterBroker,
            Response::Raft(_) => ApiKey::Raft,
            Response::BrokerHeartbeat(_) => ApiKey::BrokerHeartbeat,
            Response::AlterPartition(_) => ApiKey::AlterPartition,
            Response::ControlledShutdown(_) => ApiKey::ControlledShutdown,
        }
    }

    /// The body at `version`, the version of the request answered.
    pub fn encode_body(&self, w: &mut Writer<'_>, version: u16) {
        match self {
            Response::ApiVersions(r) => {
                w.array(&r.apis, |w, a| {
                    w.u16(a.api_key);
                    w.u16(a.min_version);
                    w.u16(a.max_version);
                });
                w.u32(r.broker_id);
                w.string(&r.cluster_id);
                w.u32(r.max_frame_bytes);
            }
            Response::Metadata(r) => {
                w.array(&r.brokers, |w, b| {
                    w.u32(b.broker_id);
                    w.string(&b.host);
                    w.u16(b.port);
                });
                w.u32(r.controller_id);
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.u16(t.error as u16);
                    if version >= 1 {
                        w.string(&t.message);
                    }
                    if version >= 2 {
                        w.fixed(&t.id.0);
                    }
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.u16(p.error as u16);
                        w.u32(p.leader);
                        w.i32(p.leader_epoch);
                        put_u32s(w, &p.replicas);
                        put_u32s(w, &p.isr);
                    });
                });
            }
            Response::CreateTopics(r) => {
                w.array(&r.results, put_topic_result);
                if version >= 1 {
                    w.array(&r.created, |w, t| {
                        w.string(&t.name);
                        if version >= 2 {
                            w.fixed(&t.id.0);
                        }
                        w.u32(t.partitions);
                        w.u16(t.replication_factor);
                        w.array(&t.configs, put_described_config);
                    });
                }
            }
            Response::DeleteTopics(r) => {
                w.array(&r.results, put_topic_result);
                if version >= 1 {
                    w.array(&r.by_id, |w, d| {
                        w.fixed(&d.id.0);
                        w.string(&d.name);
                        w.u16(d.error as u16);
                        w.string(&d.message);
                    });
                }
            }
            Response::DescribeTopics(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.u16(t.error as u16);
                    w.string(&t.message);
                    w.u16(t.replication_factor);
                    w.array(&t.configs, put_described_config);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.u16(p.error as u16);
                        w.i64(p.log_start_offset);
                        w.i64(p.high_watermark);
                        w.u64(p.size_bytes);
                        w.u32(p.segments);
                    });
                    if version >= 1 {
                        w.array(&t.plugins, crate::plugin_messages::put_attachment);
                    }
                    if version >= 2 {
                        w.fixed(&t.id.0);
                    }
                });
            }
            Response::Produce(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.u16(p.error as u16);
                        w.string(&p.message);
                        w.i64(p.base_offset);
                        w.i64(p.log_append_time);
                        w.i64(p.log_start_offset);
                    });
                });
            }
            Response::Fetch(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    if version >= 1 {
                        w.fixed(&t.id.0);
                    }
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.u16(p.error as u16);
                        w.string(&p.message);
                        w.i64(p.high_watermark);
                        w.i64(p.log_start_offset);
                        w.shared_bytes(&p.records);
                        w.option(p.diverging_epoch.as_ref(), |w, d| {
                            w.i32(d.epoch);
                            w.i64(d.end_offset);
                        });
                    });
                });
            }
            Response::ListOffsets(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.u16(p.error as u16);
                        w.i64(p.offset);
                        w.i64(p.timestamp);
                        if version >= 1 {
                            w.i32(p.leader_epoch);
                        }
                    });
                });
            }
            Response::FindCoordinator(m) => m.encode(w),
            Response::JoinGroup(m) => m.encode(w),
            Response::SyncGroup(m) => m.encode(w),
            Response::Heartbeat(m) => m.encode(w),
            Response::LeaveGroup(m) => m.encode(w),
            Response::OffsetCommit(m) => m.encode(w),
            Response::OffsetFetch(m) => m.encode(w, version),
            Response::ListGroups(m) => m.encode(w),
            Response::DescribeGroups(m) => m.encode(w),
            Response::DeleteGroups(m) => m.encode(w),
            Response::OffsetDelete(m) => m.encode(w, version),
            Response::InitProducerId(m) => m.encode(w),
            Response::AlterPartitionReassignments(m) => m.encode(w),
            Response::AlterTopicConfigs(m) => m.encode(w),
            Response::CreatePartitions(m) => m.encode(w),
            Response::OffsetForLeaderEpoch(m) => m.encode(w),
            Response::ListPartitionReassignments(m) => m.encode(w),
            Response::DescribeCluster(m) => m.encode(w),
            Response::ElectLeaders(m) => m.encode(w),
            Response::DescribeLogs(m) => m.encode(w, version),
            Response::UnregisterBroker(m) => m.encode(w),
            Response::DeleteRecords(r) => {
                w.array(&r.topics, |w, t| {
                    w.string(&t.name);
                    w.array(&t.partitions, |w, p| {
                        w.u32(p.partition);
                        w.u16(p.error as u16);
                        w.string(&p.message);
                        w.i64(p.low_watermark);
                    });
                });
            }
            Response::PluginDeploy(r) | Response::PluginDescribe(r) => pm::put_info_response(w, r),
            Response::PluginList(r) => pm::put_list_response(w, r),
            Response::PluginRemove(r) | Response::TopicAttach(r) | Response::TopicDetach(r) => {
                pm::put_result(w, r)
            }
            Response::Raft(m) => m.encode(w),
            Response::BrokerHeartbeat(m) => m.encode(w),
            Response::AlterPartition(m) => m.encode(w),
            Response::ControlledShutdown(m) => m.encode(w),
        }
    }

    pub fn decode_body(api: ApiKey, version: u16, r: &mut Reader) -> Result<Response, DecodeError> {
        Ok(match api {
            ApiKey::ApiVersions => Response::ApiVersions(ApiVersionsResponse {
                apis: r.array(6, |r| {
                    Ok(ApiVersionRange {
                        api_key: r.u16()?,
                        min_version: r.u16()?,
                        max_version: r.u16()?,
                    })
                })?,
                broker_id: r.u32()?,
                cluster_id: r.string()?,
                max_frame_bytes: r.u32()?,
            }),
            ApiKey::Metadata => Response::Metadata(MetadataResponse {
                brokers: r.array(8, |r| {
                    Ok(BrokerInfo {
                        broker_id: r.u32()?,
                        host: r.string()?,
                        port: r.u16()?,
                    })
                })?,
                controller_id: r.u32()?,
                topics: r.array(8, |r| {
                    Ok(TopicMetadata {
                        name: r.string()?,
                        error: error_code(r)?,
                        message: if version >= 1 {
                            r.string()?
                        } else {
                            String::new()
                        },
                        id: topic_id_from(r, version, 2)?,
                        partitions: r.array(22, |r| {
                            Ok(PartitionMetadata {
                                partition: r.u32()?,
                                error: error_code(r)?,
                                leader: r.u32()?,
                                leader_epoch: r.i32()?,
                                replicas: get_u32s(r)?,
                                isr: get_u32s(r)?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::CreateTopics => Response::CreateTopics(CreateTopicsResponse {
                results: r.array(6, get_topic_result)?,
                created: if version >= 1 {
                    r.array(12, |r| {
                        Ok(CreatedTopic {
                            name: r.string()?,
                            id: topic_id_from(r, version, 2)?,
                            partitions: r.u32()?,
                            replication_factor: r.u16()?,
                            configs: r.array(5, get_described_config)?,
                        })
                    })?
                } else {
                    Vec::new()
                },
            }),
            ApiKey::DeleteTopics => Response::DeleteTopics(DeleteTopicsResponse {
                results: r.array(6, get_topic_result)?,
                by_id: if version >= 1 {
                    r.array(22, |r| {
                        Ok(DeletedById {
                            id: TopicId(r.array_of()?),
                            name: r.string()?,
                            error: error_code(r)?,
                            message: r.string()?,
                        })
                    })?
                } else {
                    Vec::new()
                },
            }),
            ApiKey::DescribeTopics => Response::DescribeTopics(DescribeTopicsResponse {
                topics: r.array(14, |r| {
                    Ok(TopicDescription {
                        name: r.string()?,
                        error: error_code(r)?,
                        message: r.string()?,
                        replication_factor: r.u16()?,
                        configs: r.array(5, get_described_config)?,
                        partitions: r.array(34, |r| {
                            Ok(PartitionDescription {
                                partition: r.u32()?,
                                error: error_code(r)?,
                                log_start_offset: r.i64()?,
                                high_watermark: r.i64()?,
                                size_bytes: r.u64()?,
                                segments: r.u32()?,
                            })
                        })?,
                        plugins: if version >= 1 {
                            r.array(20, crate::plugin_messages::get_attachment)?
                        } else {
                            Vec::new()
                        },
                        id: topic_id_from(r, version, 2)?,
                    })
                })?,
            }),
            ApiKey::Produce => Response::Produce(ProduceResponse {
                topics: r.array(6, |r| {
                    Ok(ProduceTopicResponse {
                        name: r.string()?,
                        partitions: r.array(32, |r| {
                            Ok(ProducePartitionResponse {
                                partition: r.u32()?,
                                error: error_code(r)?,
                                message: r.string()?,
                                base_offset: r.i64()?,
                                log_append_time: r.i64()?,
                                log_start_offset: r.i64()?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::Fetch => Response::Fetch(FetchResponse {
                topics: r.array(6, |r| {
                    Ok(FetchTopicResponse {
                        name: r.string()?,
                        id: topic_id_from(r, version, 1)?,
                        partitions: r.array(29, |r| {
                            Ok(FetchPartitionResponse {
                                partition: r.u32()?,
                                error: error_code(r)?,
                                message: r.string()?,
                                high_watermark: r.i64()?,
                                log_start_offset: r.i64()?,
                                records: r.bytes()?,
                                diverging_epoch: r.option(|r| {
                                    Ok(DivergingEpoch {
                                        epoch: r.i32()?,
                                        end_offset: r.i64()?,
                                    })
                                })?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::ListOffsets => Response::ListOffsets(ListOffsetsResponse {
                topics: r.array(6, |r| {
                    Ok(ListOffsetsTopicResponse {
                        name: r.string()?,
                        partitions: r.array(22, |r| {
                            Ok(ListOffsetsPartitionResponse {
                                partition: r.u32()?,
                                error: error_code(r)?,
                                offset: r.i64()?,
                                timestamp: r.i64()?,
                                leader_epoch: if version >= 1 {
                                    r.i32()?
                                } else {
                                    NO_LEADER_EPOCH
                                },
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::FindCoordinator => {
                Response::FindCoordinator(FindCoordinatorResponse::decode(r)?)
            }
            ApiKey::JoinGroup => Response::JoinGroup(JoinGroupResponse::decode(r)?),
            ApiKey::SyncGroup => Response::SyncGroup(SyncGroupResponse::decode(r)?),
            ApiKey::Heartbeat => Response::Heartbeat(HeartbeatResponse::decode(r)?),
            ApiKey::LeaveGroup => Response::LeaveGroup(LeaveGroupResponse::decode(r)?),
            ApiKey::OffsetCommit => Response::OffsetCommit(OffsetCommitResponse::decode(r)?),
            ApiKey::OffsetFetch => Response::OffsetFetch(OffsetFetchResponse::decode(r, version)?),
            ApiKey::ListGroups => Response::ListGroups(ListGroupsResponse::decode(r)?),
            ApiKey::DescribeGroups => Response::DescribeGroups(DescribeGroupsResponse::decode(r)?),
            ApiKey::DeleteGroups => Response::DeleteGroups(DeleteGroupsResponse::decode(r)?),
            ApiKey::OffsetDelete => {
                Response::OffsetDelete(OffsetDeleteResponse::decode(r, version)?)
            }
            ApiKey::InitProducerId => Response::InitProducerId(InitProducerIdResponse::decode(r)?),
            ApiKey::DeleteRecords => Response::DeleteRecords(DeleteRecordsResponse {
                topics: r.array(6, |r| {
                    Ok(DeleteRecordsTopicResponse {
                        name: r.string()?,
                        partitions: r.array(16, |r| {
                            Ok(DeleteRecordsPartitionResponse {
                                partition: r.u32()?,
                                error: error_code(r)?,
                                message: r.string()?,
                                low_watermark: r.i64()?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::PluginDeploy => Response::PluginDeploy(pm::get_info_response(r)?),
            ApiKey::PluginList => Response::PluginList(pm::get_list_response(r)?),
            ApiKey::PluginDescribe => Response::PluginDescribe(pm::get_info_response(r)?),
            ApiKey::PluginRemove => Response::PluginRemove(pm::get_result(r)?),
            ApiKey::TopicAttach => Response::TopicAttach(pm::get_result(r)?),
            ApiKey::TopicDetach => Response::TopicDetach(pm::get_result(r)?),
            ApiKey::AlterPartitionReassignments => Response::AlterPartitionReassignments(
                AlterPartitionReassignmentsResponse::decode(r)?,
            ),
            ApiKey::ListPartitionReassignments => {
                Response::ListPartitionReassignments(ListPartitionReassignmentsResponse::decode(r)?)
            }
            ApiKey::DescribeCluster => {
                Response::DescribeCluster(DescribeClusterResponse::decode(r)?)
            }
            ApiKey::ElectLeaders => Response::ElectLeaders(ElectLeadersResponse::decode(r)?),
            ApiKey::UnregisterBroker => {
                Response::UnregisterBroker(UnregisterBrokerResponse::decode(r)?)
            }
            ApiKey::DescribeLogs => {
                Response::DescribeLogs(DescribeLogsResponse::decode(r, version)?)
            }
            ApiKey::AlterTopicConfigs => {
                Response::AlterTopicConfigs(AlterTopicConfigsResponse::decode(r)?)
            }
            ApiKey::CreatePartitions => {
                Response::CreatePartitions(CreatePartitionsResponse::decode(r)?)
            }
            ApiKey::OffsetForLeaderEpoch => {
                Response::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::decode(r)?)
            }
            ApiKey::Raft => Response::Raft(RaftResponse::decode(r)?),
            ApiKey::BrokerHeartbeat => {
                Response::BrokerHeartbeat(BrokerHeartbeatResponse::decode(r)?)
            }
            ApiKey::AlterPartition => Response::AlterPartition(AlterPartitionResponse::decode(r)?),
            ApiKey::ControlledShutdown => {
                Response::ControlledShutdown(ControlledShutdownResponse::decode(r)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{
        decode_request, decode_response, encode_request, encode_response, ResponseFrame,
    };

    fn check_request(request: Request) {
        let frame = encode_request(&request);
        assert_eq!(decode_request(frame.slice(4..)).unwrap(), request);
        // Every strict prefix of the body must fail cleanly, never panic.
        for cut in 4..frame.len() {
            let _ = decode_request(frame.slice(4..cut));
        }
        // So must every frame with one byte changed (a count made huge, a
        // length made negative, a tag made unknown).
        for at in 4..frame.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut changed = frame[4..].to_vec();
                changed[at - 4] = byte;
                let _ = decode_request(Bytes::from(changed));
            }
        }
    }

    fn check_response(response: Response) {
        let frame = encode_response(&response);
        let decoded = decode_response(response.api_key(), frame.slice(4..)).unwrap();
        assert_eq!(decoded, ResponseFrame::Ok(response.clone()));
        for cut in 4..frame.len() {
            let _ = decode_response(response.api_key(), frame.slice(4..cut));
        }
        for at in 4..frame.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut changed = frame[4..].to_vec();
                changed[at - 4] = byte;
                let _ = decode_response(response.api_key(), Bytes::from(changed));
            }
        }
    }

    /// `response` encoded at `version` and decoded back at it.
    fn at_version(response: &Response, version: u16) -> ResponseFrame {
        let chunks = crate::frame::encode_response_chunks_at(response, version);
        let frame: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let body = Bytes::from(frame).slice(4..);
        crate::frame::decode_response_at(response.api_key(), version, body).unwrap()
    }

    const ORDERS_ID: TopicId = TopicId([
        0x62, 0x33, 0x6f, 0x0e, 0x3d, 0xd3, 0x46, 0x25, 0x86, 0x6d, 0x70, 0xdb, 0xe9, 0x0a, 0x83,
        0x6c,
    ]);

    /// Answers of version 1 (to a client from before topic IDs) leave each topic's
    /// ID out, and decode as having none; version 2 carries it.
    #[test]
    fn topic_ids_from_version_2() {
        let metadata = |id| {
            Response::Metadata(MetadataResponse {
                brokers: vec![],
                controller_id: 1,
                topics: vec![TopicMetadata {
                    name: "orders".into(),
                    id,
                    error: ErrorCode::None,
                    message: String::new(),
                    partitions: vec![],
                }],
            })
        };
        let described = |id| {
            Response::DescribeTopics(DescribeTopicsResponse {
                topics: vec![TopicDescription {
                    name: "orders".into(),
                    id,
                    error: ErrorCode::None,
                    message: String::new(),
                    replication_factor: 1,
                    configs: vec![],
                    partitions: vec![],
                    plugins: vec![],
                }],
            })
        };
        let created = |id| {
            Response::CreateTopics(CreateTopicsResponse {
                results: vec![],
                created: vec![CreatedTopic {
                    name: "orders".into(),
                    id,
                    partitions: 1,
                    replication_factor: 1,
                    configs: vec![],
                }],
            })
        };
        for answer in [metadata, described, created] {
            let with_id = answer(ORDERS_ID);
            assert_eq!(
                at_version(&with_id, 1),
                ResponseFrame::Ok(answer(TopicId::NONE))
            );
            assert_eq!(at_version(&with_id, 2), ResponseFrame::Ok(with_id.clone()));
        }
    }

    /// Deleting by ID needs version 1: a request naming IDs is never sent at 0, and
    /// a version 0 answer has no results by ID.
    #[test]
    fn delete_topics_by_id_from_version_1() {
        let by_name = Request::DeleteTopics(DeleteTopicsRequest {
            names: vec!["orders".into()],
            ids: vec![],
        });
        let by_id = Request::DeleteTopics(DeleteTopicsRequest {
            names: vec![],
            ids: vec![ORDERS_ID],
        });
        assert_eq!((by_name.lowest_version(), by_id.lowest_version()), (0, 1));
        let answer = |by_id| {
            Response::DeleteTopics(DeleteTopicsResponse {
                results: vec![],
                by_id,
            })
        };
        let deleted = answer(vec![DeletedById {
            id: ORDERS_ID,
            name: "orders".into(),
            error: ErrorCode::None,
            message: String::new(),
        }]);
        assert_eq!(at_version(&deleted, 0), ResponseFrame::Ok(answer(vec![])));
        assert_eq!(at_version(&deleted, 1), ResponseFrame::Ok(deleted.clone()));
    }

    /// An answer to a fetch of `name` (asked by `id`) partition 0: three bytes.
    fn fetched(name: &str, id: TopicId) -> Response {
        Response::Fetch(FetchResponse {
            topics: vec![FetchTopicResponse {
                name: name.into(),
                id,
                partitions: vec![FetchPartitionResponse {
                    partition: 0,
                    error: ErrorCode::None,
                    message: String::new(),
                    high_watermark: 9,
                    log_start_offset: 0,
                    records: Bytes::from_static(b"xyz"),
                    diverging_epoch: None,
                }],
            }],
        })
    }

    /// Fetching by ID needs version 1: such a request is never sent at 0, and a
    /// version 0 answer (to a client from before IDs) leaves the IDs out.
    #[test]
    fn fetch_by_id_from_version_1() {
        let fetch = |id| {
            Request::Fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 1 << 20,
                topics: vec![FetchTopic {
                    name: String::new(),
                    id,
                    partitions: vec![FetchPartition::new(0, 5, 1024)],
                }],
                filter: None,
                replica_id: CONSUMER_REPLICA_ID,
            })
        };
        let (by_name, by_id) = (fetch(TopicId::NONE), fetch(ORDERS_ID));
        assert_eq!((by_name.lowest_version(), by_id.lowest_version()), (0, 1));
        let frame = crate::frame::encode_request(&by_id);
        assert_eq!(
            crate::frame::decode_request_versioned(frame.slice(4..)).unwrap(),
            (by_id, 1)
        );
        let answer = |id| fetched("orders", id);
        let with_id = answer(ORDERS_ID);
        assert_eq!(
            at_version(&with_id, 0),
            ResponseFrame::Ok(answer(TopicId::NONE))
        );
        assert_eq!(at_version(&with_id, 1), ResponseFrame::Ok(with_id.clone()));
    }

    /// A version 0 answer to DescribeTopics (to a client from before plugin chains
    /// were described) leaves the chain out, and decodes as one without plugins.
    #[test]
    fn describe_topics_at_version_0_has_no_plugin_chain() {
        let topic = |plugins| TopicDescription {
            name: "t".into(),
            id: TopicId::NONE,
            error: ErrorCode::None,
            message: String::new(),
            replication_factor: 1,
            configs: vec![],
            partitions: vec![],
            plugins,
        };
        let chain = vec![crate::plugin_messages::Attachment {
            plugin: "sampler".into(),
            params: vec![("every".into(), "10".into())],
            batch_time_max_ms: 100,
            memory_max_bytes: 1 << 20,
            on_failure: "skip".into(),
        }];
        let response = Response::DescribeTopics(DescribeTopicsResponse {
            topics: vec![topic(chain.clone())],
        });
        let at = |version| at_version(&response, version);
        let without = Response::DescribeTopics(DescribeTopicsResponse {
            topics: vec![topic(vec![])],
        });
        assert_eq!(at(0), ResponseFrame::Ok(without));
        assert_eq!(at(1), ResponseFrame::Ok(response.clone()));
    }

    /// A version 0 answer to CreateTopics (to a client from before created topics
    /// were described) leaves them out, and decodes as one without them.
    #[test]
    fn create_topics_at_version_0_describes_no_topic() {
        let answer = |created| {
            Response::CreateTopics(CreateTopicsResponse {
                results: vec![TopicResult {
                    name: "orders".into(),
                    error: ErrorCode::None,
                    message: String::new(),
                }],
                created,
            })
        };
        let created = vec![CreatedTopic {
            name: "orders".into(),
            id: TopicId::NONE,
            partitions: 6,
            replication_factor: 3,
            configs: vec![DescribedConfig {
                key: "cleanup.policy".into(),
                value: "delete".into(),
                is_default: true,
            }],
        }];
        let response = answer(created);
        assert_eq!(at_version(&response, 0), ResponseFrame::Ok(answer(vec![])));
        assert_eq!(
            at_version(&response, 1),
            ResponseFrame::Ok(response.clone())
        );
    }

    /// A version 0 DescribeLogs answer (to a client from before the directory's
    /// space was reported) leaves the figures out, and decodes as unknown (-1).
    #[test]
    fn describe_logs_at_version_0_has_no_disk_space() {
        let answer = |total_bytes, usable_bytes| {
            Response::DescribeLogs(DescribeLogsResponse {
                error: ErrorCode::None,
                message: String::new(),
                broker_id: 2,
                log_dir: "/d/topics".into(),
                total_bytes,
                usable_bytes,
                logs: vec![],
            })
        };
        let at = |version| at_version(&answer(1 << 40, 1 << 30), version);
        assert_eq!(at(0), ResponseFrame::Ok(answer(-1, -1)));
        assert_eq!(at(1), ResponseFrame::Ok(answer(1 << 40, 1 << 30)));
    }

    /// A version 0 OffsetDelete answer (to a client from before refusals were per
    /// topic) has the first refusal's error and no list of refused topics.
    #[test]
    fn offset_delete_at_version_0_names_no_refused_topics() {
        let answer = |refused| {
            Response::OffsetDelete(OffsetDeleteResponse {
                error: ErrorCode::GroupSubscribedToTopic,
                message: "members of group `g` subscribe to `busy`".into(),
                deleted: vec![TopicPartitions {
                    topic: "idle".into(),
                    partitions: vec![0],
                }],
                refused,
            })
        };
        let busy = vec![crate::group::RefusedTopic {
            topic: "busy".into(),
            error: ErrorCode::GroupSubscribedToTopic,
            message: "members of group `g` subscribe to `busy`".into(),
        }];
        let at = |version| at_version(&answer(busy.clone()), version);
        assert_eq!(at(0), ResponseFrame::Ok(answer(vec![])));
        assert_eq!(at(1), ResponseFrame::Ok(answer(busy.clone())));
    }

    /// A version 0 Metadata answer (to a client from before topic errors carried a
    /// message) leaves the message out.
    #[test]
    fn metadata_at_version_0_has_no_topic_message() {
        let response = |message: &str| {
            Response::Metadata(MetadataResponse {
                brokers: vec![],
                controller_id: 1,
                topics: vec![TopicMetadata {
                    name: "audit".into(),
                    id: TopicId::NONE,
                    error: ErrorCode::TopicAuthorizationFailed,
                    message: message.into(),
                    partitions: vec![],
                }],
            })
        };
        let denied = response("client `a` may not describe topic `audit` (acl_file)");
        let at = |version| at_version(&denied, version);
        assert_eq!(at(0), ResponseFrame::Ok(response("")));
        assert_eq!(at(1), ResponseFrame::Ok(denied.clone()));
    }

    #[test]
    fn cluster_messages_round_trip() {
        check_request(Request::Raft(RaftRequest {
            rpc: RaftRpc::Vote,
            from: 2,
            payload: Bytes::from_static(b"{\"vote\":1}"),
        }));
        check_response(Response::Raft(RaftResponse {
            payload: Bytes::from_static(b"{}"),
        }));
        check_request(Request::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: 3,
            incarnation: u64::MAX - 1,
            host: "127.0.0.1".into(),
            port: 9103,
            rack: Some("rack-a".into()),
            wants_shutdown: true,
            kafka: Some(("10.0.0.3".into(), 9092)),
        }));
        check_response(Response::BrokerHeartbeat(BrokerHeartbeatResponse {
            error: ErrorCode::NotController,
            message: "ask 1".into(),
            controller_id: 1,
            fenced: true,
            shutdown_ready: false,
        }));
        check_request(Request::AlterPartition(AlterPartitionRequest {
            broker_id: 1,
            topic: "t".into(),
            partition: 4,
            leader_epoch: 2,
            partition_epoch: 7,
            isr: vec![1, 3],
        }));
        check_response(Response::AlterPartition(AlterPartitionResponse {
            error: ErrorCode::InvalidUpdateVersion,
            message: "stale".into(),
            leader: NO_BROKER,
            leader_epoch: 3,
            partition_epoch: 8,
            isr: vec![1],
            replicas: vec![1, 2, 3],
        }));
        check_request(Request::ControlledShutdown(ControlledShutdownRequest {
            broker_id: 2,
            incarnation: 99,
        }));
        check_response(Response::ControlledShutdown(ControlledShutdownResponse {
            error: ErrorCode::None,
            message: String::new(),
            remaining: vec![TopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 2],
            }],
        }));
    }

    #[test]
    fn every_request_round_trips() {
        check_request(Request::ApiVersions(ApiVersionsRequest {
            client_software: "meridian-client/0.1".into(),
        }));
        check_request(Request::Metadata(MetadataRequest { topics: None }));
        check_request(Request::Metadata(MetadataRequest {
            topics: Some(vec!["a".into(), "b".into()]),
        }));
        check_request(Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "orders".into(),
                partitions: 16,
                replication_factor: 1,
                configs: vec![ConfigEntry {
                    key: "retention.ms".into(),
                    value: "1000".into(),
                }],
            }],
            validate_only: true,
        }));
        check_request(Request::DeleteTopics(DeleteTopicsRequest {
            names: vec!["x".into()],
            ids: vec![ORDERS_ID],
        }));
        check_request(Request::DescribeTopics(DescribeTopicsRequest {
            names: vec![],
        }));
        check_request(Request::Produce(ProduceRequest {
            acks: -1,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "t".into(),
                partitions: vec![ProducePartition {
                    partition: 3,
                    records: Bytes::from_static(b"batch"),
                }],
            }],
        }));
        check_request(Request::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "t".into(),
                id: TopicId::NONE,
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: 42,
                    partition_max_bytes: 1024,
                    current_leader_epoch: 3,
                    last_fetched_epoch: 2,
                }],
            }],
            filter: Some(FetchFilter {
                plugin: "f".into(),
                params: vec![("where".into(), "a=1".into())],
            }),
            replica_id: CONSUMER_REPLICA_ID,
        }));
        // A follower's fetch.
        check_request(Request::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "t".into(),
                id: TopicId::NONE,
                partitions: vec![FetchPartition::new(1, 0, 7)],
            }],
            filter: None,
            replica_id: 2,
        }));
        check_request(Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "t".into(),
                partitions: vec![ListOffsetsPartition {
                    partition: 1,
                    timestamp: EARLIEST_TIMESTAMP,
                }],
            }],
        }));
        check_request(Request::DeleteRecords(DeleteRecordsRequest {
            topics: vec![DeleteRecordsTopic {
                name: "t".into(),
                partitions: vec![
                    DeleteRecordsPartition {
                        partition: 0,
                        offset: 42,
                    },
                    DeleteRecordsPartition {
                        partition: 3,
                        offset: DELETE_TO_END,
                    },
                ],
            }],
        }));
    }

    #[test]
    fn every_response_round_trips() {
        check_response(Response::ApiVersions(ApiVersionsResponse {
            apis: vec![ApiVersionRange {
                api_key: 5,
                min_version: 0,
                max_version: 0,
            }],
            broker_id: 1,
            cluster_id: "c".into(),
            max_frame_bytes: 1 << 20,
        }));
        check_response(Response::Metadata(MetadataResponse {
            brokers: vec![BrokerInfo {
                broker_id: 1,
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            controller_id: 1,
            topics: vec![
                TopicMetadata {
                    name: "t".into(),
                    id: ORDERS_ID,
                    error: ErrorCode::None,
                    message: String::new(),
                    partitions: vec![PartitionMetadata {
                        partition: 0,
                        error: ErrorCode::None,
                        leader: 1,
                        leader_epoch: 0,
                        replicas: vec![1],
                        isr: vec![1],
                    }],
                },
                TopicMetadata {
                    name: "audit".into(),
                    id: TopicId::NONE,
                    error: ErrorCode::TopicAuthorizationFailed,
                    message: "client `a` may not describe topic `audit` (acl_file)".into(),
                    partitions: vec![],
                },
            ],
        }));
        check_response(Response::CreateTopics(CreateTopicsResponse {
            results: vec![
                TopicResult {
                    name: "t".into(),
                    error: ErrorCode::InvalidTopic,
                    message: "bad".into(),
                },
                TopicResult {
                    name: "orders".into(),
                    error: ErrorCode::None,
                    message: String::new(),
                },
            ],
            created: vec![CreatedTopic {
                name: "orders".into(),
                id: ORDERS_ID,
                partitions: 3,
                replication_factor: 1,
                configs: vec![DescribedConfig {
                    key: "retention.ms".into(),
                    value: "3600000".into(),
                    is_default: false,
                }],
            }],
        }));
        check_response(Response::DeleteTopics(DeleteTopicsResponse {
            results: vec![],
            by_id: vec![
                DeletedById {
                    id: ORDERS_ID,
                    name: "orders".into(),
                    error: ErrorCode::None,
                    message: String::new(),
                },
                DeletedById {
                    id: TopicId([1; 16]),
                    name: String::new(),
                    error: ErrorCode::UnknownTopicId,
                    message: "no topic has ID AQEBAQEBAQEBAQEBAQEBAQ".into(),
                },
            ],
        }));
        check_response(Response::DescribeTopics(DescribeTopicsResponse {
            topics: vec![TopicDescription {
                name: "t".into(),
                id: ORDERS_ID,
                error: ErrorCode::None,
                message: String::new(),
                replication_factor: 1,
                configs: vec![DescribedConfig {
                    key: "k".into(),
                    value: "v".into(),
                    is_default: true,
                }],
                partitions: vec![PartitionDescription {
                    partition: 0,
                    error: ErrorCode::None,
                    log_start_offset: 0,
                    high_watermark: 10,
                    size_bytes: 1000,
                    segments: 1,
                }],
                plugins: vec![crate::plugin_messages::Attachment {
                    plugin: "json-filter".into(),
                    params: vec![("where".into(), "total>=100".into())],
                    batch_time_max_ms: 100,
                    memory_max_bytes: 1 << 24,
                    on_failure: "dead-letter:orders-dlq".into(),
                }],
            }],
        }));
        check_response(Response::Produce(ProduceResponse {
            topics: vec![ProduceTopicResponse {
                name: "t".into(),
                partitions: vec![ProducePartitionResponse {
                    partition: 0,
                    error: ErrorCode::None,
                    message: String::new(),
                    base_offset: 7,
                    log_append_time: -1,
                    log_start_offset: 0,
                }],
            }],
        }));
        check_response(fetched("t", TopicId::NONE));
        // A follower told where its log diverges: no records come with it.
        let Response::Fetch(mut diverged) = fetched("t", TopicId::NONE) else {
            unreachable!()
        };
        let p = &mut diverged.topics[0].partitions[0];
        p.records = Bytes::new();
        p.diverging_epoch = Some(DivergingEpoch {
            epoch: 4,
            end_offset: 120,
        });
        check_response(Response::Fetch(diverged));
        let listed = |leader_epoch| {
            Response::ListOffsets(ListOffsetsResponse {
                topics: vec![ListOffsetsTopicResponse {
                    name: "t".into(),
                    partitions: vec![ListOffsetsPartitionResponse {
                        partition: 0,
                        error: ErrorCode::None,
                        offset: 5,
                        timestamp: 100,
                        leader_epoch,
                    }],
                }],
            })
        };
        check_response(listed(3));
        // Version 0 has no epoch: it decodes as unknown.
        assert_eq!(
            at_version(&listed(3), 0),
            ResponseFrame::Ok(listed(NO_LEADER_EPOCH))
        );
        check_response(Response::DeleteRecords(DeleteRecordsResponse {
            topics: vec![DeleteRecordsTopicResponse {
                name: "t".into(),
                partitions: vec![
                    DeleteRecordsPartitionResponse {
                        partition: 0,
                        error: ErrorCode::None,
                        message: String::new(),
                        low_watermark: 42,
                    },
                    DeleteRecordsPartitionResponse {
                        partition: 1,
                        error: ErrorCode::OffsetOutOfRange,
                        message: "past the end".into(),
                        low_watermark: -1,
                    },
                ],
            }],
        }));
    }

    #[test]
    fn every_group_message_round_trips() {
        let tps = vec![TopicPartitions {
            topic: "t".into(),
            partitions: vec![0, 3],
        }];
        let offsets = vec![TopicOffsets {
            topic: "t".into(),
            partitions: vec![PartitionOffset {
                partition: 2,
                offset: 99,
                leader_epoch: 7,
                metadata: "m".into(),
                commit_timestamp_ms: 1_700_000_000_000,
            }],
        }];
        check_request(Request::FindCoordinator(FindCoordinatorRequest {
            group_id: "g".into(),
        }));
        check_request(Request::JoinGroup(JoinGroupRequest {
            group_id: "g".into(),
            member_id: String::new(),
            instance_id: Some("host-1".into()),
            client_id: "c".into(),
            topics: vec!["t".into(), "u".into()],
            assignor: "cooperative-sticky".into(),
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
        }));
        check_request(Request::SyncGroup(SyncGroupRequest {
            group_id: "g".into(),
            member_id: "m".into(),
            owned: tps.clone(),
        }));
        check_request(Request::Heartbeat(HeartbeatRequest {
            group_id: "g".into(),
            member_id: "m".into(),
            member_epoch: 4,
            max_wait_ms: 3000,
        }));
        check_request(Request::LeaveGroup(LeaveGroupRequest {
            group_id: "g".into(),
            member_id: String::new(),
            instance_id: Some("host-1".into()),
        }));
        check_request(Request::OffsetCommit(OffsetCommitRequest {
            group_id: "g".into(),
            member_id: "m".into(),
            member_epoch: 4,
            topics: offsets.clone(),
        }));
        check_request(Request::OffsetFetch(OffsetFetchRequest {
            group_id: "g".into(),
            topics: Some(tps.clone()),
        }));
        check_request(Request::OffsetFetch(OffsetFetchRequest {
            group_id: "g".into(),
            topics: None,
        }));
        check_request(Request::ListGroups(ListGroupsRequest {}));
        check_request(Request::DescribeGroups(DescribeGroupsRequest {
            group_ids: vec!["g".into()],
        }));
        check_request(Request::DeleteGroups(DeleteGroupsRequest {
            group_ids: vec!["g".into(), "h".into()],
        }));
        check_request(Request::OffsetDelete(OffsetDeleteRequest {
            group_id: "g".into(),
            topics: tps.clone(),
        }));

        check_response(Response::FindCoordinator(FindCoordinatorResponse {
            error: ErrorCode::None,
            message: String::new(),
            broker_id: 1,
            host: "127.0.0.1".into(),
            port: 9092,
        }));
        check_response(Response::JoinGroup(JoinGroupResponse {
            error: ErrorCode::InvalidSessionTimeout,
            message: "too short".into(),
            member_id: "m".into(),
            member_epoch: 1,
            heartbeat_interval_ms: 3000,
        }));
        check_response(Response::SyncGroup(SyncGroupResponse {
            error: ErrorCode::None,
            message: String::new(),
            member_epoch: 2,
            assignment: tps.clone(),
            pending: true,
        }));
        check_response(Response::Heartbeat(HeartbeatResponse {
            error: ErrorCode::UnknownMemberId,
            message: "gone".into(),
            sync_needed: false,
        }));
        check_response(Response::LeaveGroup(LeaveGroupResponse {
            error: ErrorCode::None,
            message: String::new(),
        }));
        check_response(Response::OffsetCommit(OffsetCommitResponse {
            error: ErrorCode::NonEmptyGroup,
            message: "busy".into(),
        }));
        check_response(Response::OffsetFetch(OffsetFetchResponse {
            error: ErrorCode::None,
            message: String::new(),
            topics: offsets,
        }));
        check_response(Response::ListGroups(ListGroupsResponse {
            groups: vec![GroupListing {
                group_id: "g".into(),
                state: "Stable".into(),
            }],
        }));
        check_response(Response::DescribeGroups(DescribeGroupsResponse {
            groups: vec![GroupDescription {
                group_id: "g".into(),
                error: ErrorCode::None,
                message: String::new(),
                state: "Stable".into(),
                assignor: "range".into(),
                epoch: 3,
                members: vec![GroupMember {
                    member_id: "m".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "127.0.0.1:5000".into(),
                    member_epoch: 3,
                    topics: vec!["t".into()],
                    owned: tps.clone(),
                    target: tps,
                }],
            }],
        }));
        check_request(Request::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
        }));
        check_request(Request::AlterPartitionReassignments(
            AlterPartitionReassignmentsRequest {
                reassignments: vec![
                    PartitionReassignment {
                        topic: "t".into(),
                        partition: 2,
                        replicas: Some(vec![3, 1, 4]),
                    },
                    PartitionReassignment {
                        topic: "t".into(),
                        partition: 0,
                        replicas: None,
                    },
                ],
            },
        ));
        check_response(Response::AlterPartitionReassignments(
            AlterPartitionReassignmentsResponse {
                results: vec![ReassignmentResult {
                    topic: "t".into(),
                    partition: 2,
                    error: ErrorCode::None,
                    message: String::new(),
                }],
            },
        ));
        check_request(Request::ListPartitionReassignments(
            ListPartitionReassignmentsRequest {
                topics: Some(vec!["t".into()]),
            },
        ));
        check_request(Request::ListPartitionReassignments(
            ListPartitionReassignmentsRequest { topics: None },
        ));
        check_request(Request::DescribeCluster);
        check_request(Request::UnregisterBroker(UnregisterBrokerRequest {
            broker_id: 4,
        }));
        check_response(Response::UnregisterBroker(UnregisterBrokerResponse {
            error: ErrorCode::InvalidRequest,
            message: "broker 4 still holds replicas".into(),
        }));
        check_request(Request::ElectLeaders(ElectLeadersRequest {
            partitions: None,
            unclean: false,
        }));
        check_request(Request::DescribeLogs(DescribeLogsRequest {
            partitions: None,
        }));
        check_request(Request::DescribeLogs(DescribeLogsRequest {
            partitions: Some(vec![TopicPartitions {
                topic: "t".into(),
                partitions: vec![3],
            }]),
        }));
        check_response(Response::DescribeLogs(DescribeLogsResponse {
            error: ErrorCode::None,
            message: String::new(),
            broker_id: 4,
            log_dir: "/var/lib/meridian/topics".into(),
            total_bytes: 107_374_182_400,
            usable_bytes: 41_234_567_890,
            logs: vec![
                LocalLog {
                    topic: "t".into(),
                    partition: 3,
                    error: ErrorCode::None,
                    replica: true,
                    log_start_offset: 10,
                    log_end_offset: 40_000,
                    size_bytes: 41_234_567_890,
                },
                LocalLog {
                    topic: "gone".into(),
                    partition: 0,
                    error: ErrorCode::UnknownTopic,
                    replica: false,
                    log_start_offset: 0,
                    log_end_offset: 0,
                    size_bytes: 0,
                },
            ],
        }));
        check_request(Request::ElectLeaders(ElectLeadersRequest {
            partitions: Some(vec![TopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 2],
            }]),
            unclean: true,
        }));
        check_response(Response::ElectLeaders(ElectLeadersResponse {
            error: ErrorCode::None,
            message: String::new(),
            results: vec![
                ElectionResult {
                    topic: "t".into(),
                    partition: 0,
                    error: ErrorCode::None,
                    message: String::new(),
                    leader: 1,
                },
                ElectionResult {
                    topic: "t".into(),
                    partition: 2,
                    error: ErrorCode::PreferredLeaderNotAvailable,
                    message: "broker 3 is fenced".into(),
                    leader: 2,
                },
            ],
        }));
        check_response(Response::DescribeCluster(DescribeClusterResponse {
            error: ErrorCode::None,
            message: String::new(),
            cluster_id: "c1".into(),
            broker_id: 2,
            controller_id: 1,
            quorum: Some(QuorumStatus {
                term: 4,
                last_log_index: 812,
                applied_index: 810,
                from_controller: false,
                millis_since_quorum_ack: -1,
            }),
            brokers: vec![
                BrokerStatus {
                    broker_id: 1,
                    host: "127.0.0.1".into(),
                    port: 9192,
                    rack: Some("eu-1a".into()),
                    state: BrokerState::Running,
                    role: QuorumRole::Voter,
                    leaders: 6,
                    replicas: 18,
                    matched_index: 812,
                },
                BrokerStatus {
                    broker_id: 4,
                    host: String::new(),
                    port: 0,
                    rack: None,
                    state: BrokerState::Unregistered,
                    role: QuorumRole::Observer,
                    leaders: 0,
                    replicas: 0,
                    matched_index: -1,
                },
            ],
        }));
        check_response(Response::DescribeCluster(DescribeClusterResponse {
            error: ErrorCode::None,
            message: String::new(),
            cluster_id: String::new(),
            broker_id: 1,
            controller_id: 1,
            quorum: None,
            brokers: Vec::new(),
        }));
        check_request(Request::AlterTopicConfigs(AlterTopicConfigsRequest {
            topics: vec![TopicConfigChanges {
                name: "t".into(),
                changes: vec![
                    ConfigChange {
                        key: "retention.ms".into(),
                        value: Some("60000".into()),
                    },
                    ConfigChange {
                        key: "segment.bytes".into(),
                        value: None,
                    },
                ],
                replace: true,
            }],
            validate_only: true,
        }));
        check_response(Response::AlterTopicConfigs(AlterTopicConfigsResponse {
            results: vec![TopicResult {
                name: "t".into(),
                error: ErrorCode::InvalidConfig,
                message: "retention.ms must be an integer".into(),
            }],
        }));
        check_request(Request::CreatePartitions(CreatePartitionsRequest {
            topics: vec![PartitionsIncrease {
                name: "t".into(),
                count: 12,
            }],
            validate_only: true,
        }));
        check_response(Response::CreatePartitions(CreatePartitionsResponse {
            results: vec![TopicResult {
                name: "t".into(),
                error: ErrorCode::None,
                message: String::new(),
            }],
        }));
        check_request(Request::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest {
            topics: vec![EpochQueryTopic {
                name: "t".into(),
                partitions: vec![
                    EpochQuery {
                        partition: 0,
                        current_leader_epoch: NO_LEADER_EPOCH,
                        leader_epoch: 3,
                    },
                    EpochQuery {
                        partition: 2,
                        current_leader_epoch: 7,
                        leader_epoch: 6,
                    },
                ],
            }],
        }));
        check_response(Response::OffsetForLeaderEpoch(
            OffsetForLeaderEpochResponse {
                topics: vec![EpochEndTopic {
                    name: "t".into(),
                    partitions: vec![
                        EpochEnd {
                            partition: 0,
                            error: ErrorCode::None,
                            message: String::new(),
                            leader_epoch: 2,
                            end_offset: 4_000_000_000,
                        },
                        EpochEnd {
                            partition: 2,
                            error: ErrorCode::FencedLeaderEpoch,
                            message: "epoch 7 is older than 8".into(),
                            leader_epoch: UNDEFINED_EPOCH,
                            end_offset: UNDEFINED_EPOCH_OFFSET,
                        },
                    ],
                }],
            },
        ));
        check_response(Response::ListPartitionReassignments(
            ListPartitionReassignmentsResponse {
                error: ErrorCode::None,
                message: String::new(),
                reassignments: vec![OngoingReassignment {
                    topic: "t".into(),
                    partition: 1,
                    replicas: vec![1, 2, 3, 4],
                    target: vec![4, 2, 3],
                    adding: vec![4],
                    removing: vec![1],
                    isr: vec![1, 2, 3],
                    leader: 1,
                }],
            },
        ));
        check_response(Response::InitProducerId(InitProducerIdResponse {
            error: ErrorCode::None,
            message: String::new(),
            producer_id: 4_000,
            producer_epoch: 0,
        }));
        check_response(Response::OffsetDelete(OffsetDeleteResponse {
            error: ErrorCode::GroupSubscribedToTopic,
            message: "subscribed".into(),
            deleted: vec![TopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 2],
            }],
            refused: vec![crate::group::RefusedTopic {
                topic: "busy".into(),
                error: ErrorCode::GroupSubscribedToTopic,
                message: "subscribed".into(),
            }],
        }));
        check_response(Response::DeleteGroups(DeleteGroupsResponse {
            results: vec![GroupResult {
                group_id: "g".into(),
                error: ErrorCode::GroupIdNotFound,
                message: "no such group".into(),
            }],
        }));
    }
}
