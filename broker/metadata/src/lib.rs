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
    BrokerId, BrokerRegistration, MetadataImage, MetadataRecord, PartitionState, TopicImage,
    UNCLEAN_LEADER_ELECTION_KEY,
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

/// Raft timing for a quorum of brokers on one LAN. Heartbeats every 100 ms; an election
/// after 500–1000 ms of silence, so a dead controller is replaced well inside the 3 s
/// the failover budget allows.
pub fn raft_config(cluster_name: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 2000,
        // The image is small: snapshot often, keep the log short.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
}
