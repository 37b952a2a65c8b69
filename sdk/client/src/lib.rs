//! Rust client for Meridian, an event-streaming broker with Kafka's model, over QUIC.
//!
//! - [`Client`]: one QUIC connection (TLS 1.3, ALPN `meridian/1`) shared by
//!   everything made from it; each request travels on its own stream.
//! - [`Producer`]: batches records per partition, compresses client-side, partitions
//!   keys like Kafka (murmur2), applies backpressure and retries.
//! - [`Consumer`]: reads assigned partitions from chosen offsets with a background
//!   prefetch, or joins a consumer group ([`Consumer::subscribe`]) with committed
//!   offsets and rebalancing.
//! - [`Admin`]: creates, deletes and describes topics, looks up offsets, lists,
//!   describes, resets and deletes consumer groups.
//!
//! The client bootstraps from one or more brokers ([`ClientConfig::bootstrap_servers`])
//! and routes each partition's produce, fetch and offset requests to its leader, with
//! one QUIC connection per broker; when a leader moves, it refreshes metadata and
//! retries (idempotent batches keep their sequence numbers, so nothing is written
//! twice).
//!
//! Each request runs in a DEBUG `request` span of target `meridian_client`. With the
//! `otel` feature, an application exporting spans through `tracing-opentelemetry`
//! also sends each request span's trace context to the broker, whose span of the
//! request then joins the client's trace (the application's, for a request made
//! inside one of its spans; see `examples/traced.rs`).
//!
//! ```no_run
//! use std::time::Duration;
//! use meridian_client::{Client, ClientConfig, NewTopic, Offset, ProducerConfig,
//!     ProducerRecord, ConsumerConfig, Trust};
//!
//! # async fn example() -> meridian_client::Result<()> {
//! let trust = Trust::parse_fingerprint("sha256:…")?; // printed by the broker at start-up
//! let client = Client::connect(ClientConfig::new("127.0.0.1:9092", trust)).await?;
//! client.admin().create_topic(NewTopic::new("orders", 3)).await?;
//!
//! let producer = client.producer(ProducerConfig::default());
//! let delivery = producer
//!     .send(ProducerRecord::new("orders", "hello").key("customer-1"))
//!     .await?;
//! let metadata = delivery.await?;
//! println!("written at {}/{}", metadata.partition, metadata.offset);
//!
//! let mut consumer = client.consumer(ConsumerConfig::default());
//! consumer.assign_all("orders").await?;
//! consumer.seek("orders", metadata.partition, Offset::Earliest).await?;
//! for record in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
//! }
//! # Ok(()) }
//! ```

mod accumulator;
mod admin;
mod client;
mod config;
mod consumer;
mod error;
#[doc(hidden)]
pub mod frame_io;
mod group;
mod metadata;
mod partitioner;
mod plugin_admin;
mod producer;
mod tls;

pub use admin::{Admin, LogDir, NewTopic, Offset, TopicConfigChanges};
pub use client::Client;
pub use config::{
    certificate_fingerprint, client_certificate_alert, format_fingerprint, parse_bootstrap,
    ClientConfig, ClientIdentity, Trust, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_METADATA_MAX_AGE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_BACKOFF_MAX,
};
pub use consumer::{
    AutoOffsetReset, Consumer, ConsumerConfig, ConsumerMetrics, ConsumerRecord, FetchFilter,
};
pub use error::{Error, Result};
pub use group::{
    Assignor, CommittedOffset, GroupConfig, GroupListing, OffsetCommit, RebalanceListener,
};
pub use meridian_wire::batch::{Compression, Header};
pub use meridian_wire::describe_cluster::{
    BrokerState, BrokerStatus, DescribeClusterResponse, QuorumRole, QuorumStatus,
};
pub use meridian_wire::frame::TraceContext;
pub use meridian_wire::group::{GroupDescription, GroupMember, TopicPartitions};
/// What [`Admin::describe_topic`] returns.
pub use meridian_wire::messages::{
    CreatedTopic, DescribedConfig, PartitionDescription, TopicDescription,
};
pub use meridian_wire::reassign::{ElectionResult, LocalLog, OngoingReassignment};
pub use meridian_wire::{ErrorCode, TopicId};
pub use partitioner::{murmur2, partition_for_key};
pub use plugin_admin::{Attachment, PluginInfo};
pub use producer::{
    Acks, DeliveryFuture, Producer, ProducerConfig, ProducerMetrics, ProducerRecord,
    RecordMetadata, TRACEPARENT_HEADER, UNASSIGNED_PARTITION,
};

/// A check the compiler makes: every future of the public async API can be handed to
/// `tokio::spawn` (it is `Send` and `'static` once its receiver and arguments are
/// moved in), as callers expect of an async client. An async closure inside
/// `Admin::await_brokers` once made the admin calls' futures not provably `Send`; a
/// regression fails `cargo test` and `cargo clippy --all-targets` at compile time.
#[cfg(test)]
#[allow(dead_code)]
mod futures_are_send {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    macro_rules! spawns {
        ($value:expr, $name:ident => $call:expr) => {{
            #[allow(unused_mut)]
            let mut $name = $value;
            tokio::spawn(async move {
                let _ = $call.await;
            });
        }};
    }

    fn every_call(client: Client, producer: Producer, record: ProducerRecord, at: Attachment) {
        let admin = client.admin();
        let config = || ClientConfig::new("127.0.0.1:9092", Trust::CaPem(Vec::new()));
        spawns!(config(), c => Client::connect(c));
        spawns!(client.clone(), c => c.broker_info());
        spawns!(client.clone(), c => c.request(meridian_wire::messages::Request::PluginList));
        spawns!(client.clone(), c => c.request_to(1, meridian_wire::messages::Request::PluginList));
        spawns!(client.clone(), c => c.send_no_response(meridian_wire::messages::Request::PluginList));
        spawns!(client.clone(), c => c.metadata(None));
        spawns!(client.clone(), c => c.leader("t", 0));
        spawns!(client.clone(), c => c.partition_count("t"));
        spawns!(admin.clone(), a => a.create_topic(NewTopic::new("t", 1)));
        spawns!(admin.clone(), a => a.delete_topic("t"));
        spawns!(admin.clone(), a => a.alter_topic_configs("t", TopicConfigChanges::new()));
        spawns!(admin.clone(), a => a.create_partitions("t", 2));
        spawns!(admin.clone(), a => a.validate_create_topic(NewTopic::new("t", 1)));
        spawns!(admin.clone(), a => a.validate_topic_configs("t", TopicConfigChanges::new()));
        spawns!(admin.clone(), a => a.validate_create_partitions("t", 2));
        spawns!(admin.clone(), a => a.list_topics());
        spawns!(admin.clone(), a => a.list_all_topics());
        spawns!(admin.clone(), a => a.describe_topic("t"));
        spawns!(admin.clone(), a => a.list_offsets("t", 0, Offset::Latest));
        spawns!(admin.clone(), a => a.delete_records("t", &[(0, Offset::Latest)]));
        spawns!(admin.clone(), a => a.reassign_partitions("t", &[(0, None)]));
        spawns!(admin.clone(), a => a.list_reassignments(None));
        spawns!(admin.clone(), a => a.describe_cluster());
        spawns!(admin.clone(), a => a.elect_preferred_leaders(None));
        spawns!(admin.clone(), a => a.list_groups());
        spawns!(admin.clone(), a => a.describe_group("g"));
        spawns!(admin.clone(), a => a.committed_offsets("g", None));
        spawns!(admin.clone(), a => a.set_committed_offsets("g", &[]));
        spawns!(admin.clone(), a => a.delete_committed_offsets("g", "t", None));
        spawns!(admin.clone(), a => a.delete_group("g"));
        spawns!(admin.clone(), a => a.remove_static_member("g", "i"));
        spawns!(admin.clone(), a => a.deploy_plugin("p", "1", Bytes::new()));
        spawns!(admin.clone(), a => a.list_plugins());
        spawns!(admin.clone(), a => a.describe_plugin("p"));
        spawns!(admin.clone(), a => a.remove_plugin("p"));
        spawns!(admin.clone(), a => a.attach_plugin("t", at));
        spawns!(admin.clone(), a => a.detach_plugin("t", "p"));
        let sent = record.clone();
        spawns!(producer.clone(), p => p.send(sent));
        spawns!(producer.clone(), p => p.send_with_callback(record, |_| {}));
        spawns!(producer.clone(), p => p.flush());
        let consumer = || client.consumer(ConsumerConfig::default());
        spawns!(consumer(), c => c.assign("t", &[0]));
        spawns!(consumer(), c => c.assign_all("t"));
        spawns!(consumer(), c => c.seek("t", 0, Offset::Earliest));
        spawns!(consumer(), c => c.seek_with_epoch("t", 0, 5, 1));
        spawns!(consumer(), c => c.poll(Duration::from_secs(1)));
        spawns!(consumer(), c => c.subscribe(GroupConfig::new("g"), &["t"]));
        spawns!(consumer(), c => c.commit());
        spawns!(consumer(), c => c.commit_offsets(&[]));
        spawns!(consumer(), c => c.committed("t", 0));
        spawns!(consumer(), c => c.close());
    }
}
