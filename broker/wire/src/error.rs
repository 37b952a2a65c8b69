//! Error codes carried in responses. Stable numbers: a code, once shipped, keeps its
//! meaning. Every error response also carries a human-readable message.

macro_rules! error_codes {
    ($($name:ident = $code:literal, $retriable:literal, $doc:literal;)*) => {
        /// Why a request or one of its partitions failed, as carried on the wire.
        ///
        /// ```
        /// use meridian_wire::ErrorCode;
        /// let code = ErrorCode::from_u16(ErrorCode::NotLeaderOrFollower as u16);
        /// assert_eq!(code, ErrorCode::NotLeaderOrFollower);
        /// // Retriable codes clear up on their own (a new leader, more replicas).
        /// assert!(code.is_retriable());
        /// assert!(!ErrorCode::UnknownTopic.is_retriable());
        /// println!("{}", ErrorCode::UnknownTopic.description());
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $(#[doc = $doc] $name = $code,)*
        }

        impl ErrorCode {
            pub fn from_u16(code: u16) -> ErrorCode {
                match code {
                    $($code => ErrorCode::$name,)*
                    _ => ErrorCode::Unknown,
                }
            }

            /// Whether a client may retry the same request unchanged and hope to succeed.
            pub fn is_retriable(self) -> bool {
                match self {
                    $(ErrorCode::$name => $retriable,)*
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                }
            }

            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $doc,)*
                }
            }
        }
    };
}

error_codes! {
    None = 0, false, "no error";
    Unknown = 1, false, "an unexpected server error";
    CorruptMessage = 2, false, "the record batch is malformed or its CRC does not match";
    UnknownTopic = 3, false, "the topic does not exist";
    InvalidPartition = 4, false, "the partition index is out of range for the topic";
    MessageTooLarge = 5, false, "the record batch is larger than the topic's max.message.bytes";
    InvalidTopic = 6, false, "the topic name is invalid";
    InvalidConfig = 7, false, "a topic configuration key or value is invalid";
    TopicAlreadyExists = 8, false, "a topic with that name already exists";
    OffsetOutOfRange = 9, false, "the requested offset is outside the partition's log";
    StorageError = 10, true, "the broker could not write to disk (for example, the disk is full)";
    UnsupportedVersion = 11, false, "the request API or version is not supported by this broker";
    InvalidRequest = 12, false, "the request is malformed";
    FrameTooLarge = 13, false, "the request frame exceeds the broker's max frame size";
    RequestTimedOut = 14, true, "the request did not complete in time";
    UnsupportedCompression = 15, false, "the batch uses a compression codec the broker does not accept";
    InvalidPartitions = 16, false, "the requested partition count is invalid";
    InvalidReplicationFactor = 17, false, "the requested replication factor is invalid";
    InvalidRequiredAcks = 18, false, "acks must be 0, 1 or -1 (all)";
    PolicyViolation = 19, false, "the request exceeds a broker limit";
    TopicDeletionInProgress = 20, true, "the topic is being deleted";
    BrokerShuttingDown = 21, true, "the broker is shutting down";
    CorruptLog = 22, false, "the partition's log on disk is corrupted; an operator must repair it";
    NotCoordinator = 23, true, "this broker is not the coordinator of the group";
    CoordinatorNotAvailable = 24, true, "the group coordinator is not available yet";
    InvalidGroupId = 25, false, "the group id is invalid";
    UnknownMemberId = 26, false, "the member is not in the group (its session may have expired); rejoin";
    FencedInstanceId = 27, false, "a newer member took over this static member's instance id";
    IllegalGeneration = 28, false, "the member epoch is not one the group handed out";
    InvalidSessionTimeout = 29, false, "the session timeout is outside the broker's allowed range";
    GroupMaxSizeReached = 30, false, "the group has as many members as the broker allows";
    InconsistentGroupProtocol = 31, false, "the member's assignor or subscription conflicts with the group's";
    GroupIdNotFound = 32, false, "the group does not exist";
    NonEmptyGroup = 33, false, "the group has active members";
    OffsetMetadataTooLarge = 34, false, "the commit's metadata string is longer than the broker allows";
    InvalidCommitOffset = 35, false, "the committed offset is invalid";
    OutOfOrderSequenceNumber = 36, false, "the producer's batch does not follow its previous one (records lost or reordered)";
    InvalidProducerEpoch = 37, false, "the producer epoch is older than the partition's: a newer producer took over";
    UnknownProducerId = 38, false, "the partition has no state for this producer id; start a new producer id";
    GroupSubscribedToTopic = 39, false, "a member of the group subscribes to the topic; stop it or change its subscription first";
    // 40..=49: replication.
    NotLeaderOrFollower = 40, true, "this broker is not the leader of the partition (nor, for a follower's fetch, a replica of it); refresh metadata and retry at the leader";
    FencedLeaderEpoch = 41, true, "the request's leader epoch is older than the partition's: a newer leader was elected; refresh metadata";
    UnknownLeaderEpoch = 42, true, "the request's leader epoch is newer than this broker knows: it has not seen the leader change yet; retry";
    NotEnoughReplicas = 43, true, "acks=all refused before appending: fewer in-sync replicas than the topic's min.insync.replicas";
    NotEnoughReplicasAfterAppend = 44, true, "the records were written but the in-sync replicas fell below min.insync.replicas before they were committed; retry (an idempotent producer will not duplicate)";
    LeaderNotAvailable = 45, true, "the partition has no leader right now (an election is under way, or every in-sync replica is down); retry";
    // 46..=49: cluster control plane (metadata quorum, controller).
    NotController = 46, true, "this broker is not the controller; ask the controller named in the response";
    InvalidUpdateVersion = 47, false, "the partition changed since the request's partition epoch; use the state in the response";
    StaleBrokerEpoch = 48, false, "the request comes from an earlier incarnation of the broker";
    MetadataNotReady = 49, true, "this broker has just started and not yet caught up with the cluster's metadata; retry, or ask another broker";
    // 60..=69: log lifecycle (compaction, delete records).
    InvalidRecord = 60, false, "a record is invalid for this topic (for example, a record without a key in a compacted topic)";
    InvalidTimestamp = 61, false, "a batch's timestamp is further from the broker's clock than the topic allows (message.timestamp.after.max.ms, message.timestamp.before.max.ms)";
    // 70..=89: WebAssembly plugins.
    PluginNotFound = 70, false, "no plugin is deployed under that name";
    InvalidPlugin = 71, false, "the module is not a valid plugin (malformed, wrong ABI version or exports, or refused its parameters)";
    PluginRejected = 72, false, "a plugin attached to the topic rejected a record or failed on the batch";
    PluginInUse = 73, false, "the plugin is attached to a topic; detach it first";
    // 90..=99: partition placement.
    InvalidReplicaAssignment = 90, false, "the replica list is invalid (empty, repeats a broker, or names a broker that is not registered)";
    NoReassignmentInProgress = 91, false, "the partition has no reassignment to cancel";
    ElectionNotNeeded = 92, false, "nothing to elect: the partition's preferred replica (the first of its replicas) leads it already, or, asked for an unclean election, it has a leader";
    PreferredLeaderNotAvailable = 93, true, "the partition's preferred replica cannot lead it now: it is fenced or not registered, not in the ISR, or the partition is being reassigned";
    BrokerIdNotRegistered = 94, false, "no broker with that id is registered in the cluster";
    EligibleLeadersNotAvailable = 95, true, "no replica of the partition is alive and unfenced to lead it";
    UnknownTopicId = 96, false, "no topic has that ID: it was deleted (perhaps created again under its name, with a new ID), or never existed";
    // 100..=109: authorization (`acl_file`).
    TopicAuthorizationFailed = 100, false, "the client's certificate does not allow this operation on the topic";
    GroupAuthorizationFailed = 101, false, "the client's certificate does not allow this operation on the consumer group";
    ClusterAuthorizationFailed = 102, false, "the client's certificate does not allow this operation on the cluster";
}

impl ErrorCode {
    pub fn is_ok(self) -> bool {
        self == ErrorCode::None
    }
}

/// The name only (`UnknownTopic`): errors carry their own message, which says more
/// than [`ErrorCode::description`].
impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
