//! Meridian's cluster metadata, replicated by a Raft quorum (openraft), as in Kafka's
//! KRaft mode: every voter is also a broker.
//!
//! - [`image`]: the records the controller writes and the [`MetadataImage`] every
//!   broker builds by applying them in log order.
//! - [`store`]: durable Raft storage (log, vote, snapshots) in the broker's data dir,
//!   and the state machine that publishes each new image on a `watch` channel.
//! - [`TypeConfig`]: openraft's type configuration. The network (Raft RPCs over QUIC)
//!   lives in the server, which owns the endpoint and the peer connections.
//!
//! This crate decides nothing: the controller (in the server, over
//! `meridian_core::replication::Controller`) decides and writes records through Raft.

pub mod image;
pub mod store;

use std::io::Cursor;

pub use image::{
    AttachmentImage, BrokerId, BrokerRegistration, Endpoint, MetadataImage, MetadataRecord,
    PartitionState, PluginImage, TopicImage, UNCLEAN_LEADER_ELECTION_KEY,
};
pub use openraft;
use serde::{Deserialize, Serialize};
pub use store::{AppliedImage, LogStore, StateMachine};

/// Raft node ids are broker ids.
pub type NodeId = u64;

/// Records written together (one Raft entry), applied together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBatch {
    pub records: Vec<MetadataRecord>,
}

openraft::declare_raft_types!(
    /// openraft's types for the metadata quorum.
    pub TypeConfig:
        D = MetadataBatch,
        R = (),
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// How fast the metadata quorum notices a dead leader (the controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    /// The leader's heartbeat to followers.
    pub heartbeat_interval_ms: u64,
    /// A follower's election timeout is picked in `[min, max)`. openraft's followers
    /// also honour the leader's lease (`max`) first, so a dead leader is replaced
    /// `max` plus this timeout after its last heartbeat.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTiming {
    /// For a quorum on one LAN: heartbeats every 50 ms, an election 750–1000 ms after
    /// the last one (ten heartbeats missed at least), so a dead controller is
    /// replaced well inside the 3 s the failover budget allows.
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
        }
    }
}

/// The Raft configuration of a cluster's metadata quorum.
pub fn raft_config(cluster_name: &str, timing: RaftTiming) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: timing.heartbeat_interval_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        install_snapshot_timeout: 2000,
        // The image is small: snapshot often, keep the log short.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        // Entries per AppendEntries. A record can carry a plugin module (up to
        // `plugins.module_size_max_bytes`, hex in the JSON payload): at openraft's
        // 300, a follower or learner catching up over a stretch of deploys was sent
        // hundreds of megabytes per RPC, serialized anew on every retry, and a
        // region fed deploys ran out of memory.
        max_payload_entries: 16,
        ..Default::default()
    }
}
