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

pub use admin::{Admin, NewTopic, Offset, TopicConfigChanges};
pub use client::Client;
pub use config::{
    certificate_fingerprint, format_fingerprint, parse_bootstrap, ClientConfig, Trust,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_METADATA_MAX_AGE,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_BACKOFF, DEFAULT_RETRY_BACKOFF_MAX,
};
pub use consumer::{AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, FetchFilter};
pub use error::{Error, Result};
pub use group::{
    Assignor, CommittedOffset, GroupConfig, GroupListing, OffsetCommit, RebalanceListener,
};
pub use meridian_wire::batch::{Compression, Header};
pub use meridian_wire::group::{GroupDescription, GroupMember, TopicPartitions};
pub use meridian_wire::reassign::OngoingReassignment;
pub use meridian_wire::ErrorCode;
pub use partitioner::{murmur2, partition_for_key};
pub use plugin_admin::{Attachment, PluginInfo};
pub use producer::{
    Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
    UNASSIGNED_PARTITION,
};
