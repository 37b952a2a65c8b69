//! The producer: per-partition batching, client-side compression, Kafka-compatible
//! partitioning, backpressure and retries.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use meridian_wire::batch::{encode_batch_in, Compression, Header, NewRecord, ProducerIdentity};
use meridian_wire::messages::{
    ApiKey, InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic,
    Request, Response,
};
use meridian_wire::ErrorCode;
use tokio::sync::{watch, Notify, Semaphore, TryAcquireError};

use crate::accumulator::{
    AccumulatorConfig, ProducerBatch, RecordAccumulator, Routing, TopicPartition,
};
use crate::client::{unexpected, Client};
use crate::error::{Error, Result};
use crate::metadata::{BrokerId, LeaderLookup, MetadataCache, OnError};
use crate::partitioner::partition_for_key;
pub use meridian_wire::messages::UNASSIGNED_PARTITION;

/// Soft limit on the record bytes of one produce request (several partitions' batches
/// are grouped up to this size; one oversized batch still goes alone).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// Lower bound of [`ProducerConfig::leader_check_interval`]: metadata requests no
/// more often than this per stalled request.
const MIN_LEADER_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// How late tokio's timer may wake the sender: it rounds deadlines up to its
/// millisecond ticks. With `linger = 1 ms`, batches went after 1–2 ms (p50 of
/// `bench produce --linger-ms 1 --rate 53000`: 1.7–1.8 ms); lingering now ends half
/// of this early, so batches go within half a tick either side of `linger`.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// How many replicas must have a record before it is acknowledged.
///
/// ```
/// use meridian_client::{Acks, ProducerConfig};
/// let acks: Acks = "all".parse().unwrap();
/// assert_eq!(acks, Acks::All);
/// assert_eq!("1".parse::<Acks>().unwrap().wire_value(), 1);
/// let config = ProducerConfig {
///     acks: Acks::Leader,
///     ..ProducerConfig::default()
/// };
/// assert_eq!(config.acks.wire_value(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// `0`: no acknowledgement; the broker sends no response. Offsets are unknown (-1).
    None,
    /// `1`: the partition leader wrote it.
    Leader,
    /// `-1` / `all`: every in-sync replica has it.
    All,
}

impl Acks {
    /// The value carried in produce requests.
    pub fn wire_value(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = Error;
    fn from_str(s: &str) -> Result<Acks> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(Error::Config(format!(
                "acks `{other}` is invalid: expected 0, 1, all or -1"
            ))),
        }
    }
}

impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

/// Producer settings; the defaults match Kafka's where the concept is the same.
///
/// ```
/// use std::time::Duration;
/// use meridian_client::{Acks, Compression, ProducerConfig};
/// let config = ProducerConfig {
///     linger: Duration::from_millis(20),
///     compression: Compression::Zstd,
///     acks: Acks::Leader,
///     ..ProducerConfig::default()
/// };
/// assert_eq!(config.batch_size, 16 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// A partition's batch is sent once its records reach this many bytes. Default 16 KiB.
    pub batch_size: usize,
    /// How long a batch waits for more records before it is sent (Kafka's
    /// `linger.ms`), unless it fills first. The sender's timer ticks in
    /// milliseconds, so a batch goes out within half a millisecond either side of
    /// `linger` after its first record; a linger of 0.5 ms or less sends at once.
    /// Default 5 ms.
    pub linger: Duration,
    /// Codec for batches, applied in the client: any of Kafka's (none, gzip,
    /// snappy, lz4, zstd; zstd and lz4 are the fast ones). Default none.
    pub compression: Compression,
    /// Default [`Acks::All`].
    pub acks: Acks,
    /// How long one produce request may take. Default 30 s.
    pub request_timeout: Duration,
    /// Produce requests in flight per partition. Default 1, which keeps records in
    /// `send` order: the broker handles concurrent requests (one QUIC stream each)
    /// independently, so two in-flight batches of one partition may be appended in
    /// either order. Raise it only when per-partition order does not matter.
    pub max_in_flight_per_partition: usize,
    /// Bytes of records buffered (queued or in flight) before [`Producer::send`] waits
    /// for room. Default 32 MiB. Buffers of sent batches are kept for reuse up to as
    /// much again.
    pub buffer_memory: usize,
    /// The longest [`Producer::send`] waits, in all: for a topic's partition count the
    /// first time the topic is used (asking again, with the client's retry backoff,
    /// while no broker answers), and for room in [`buffer_memory`](Self::buffer_memory).
    /// Then `send` fails: with the last error of the asks for the partition count
    /// ([`Error::Timeout`] if an ask was under way), with [`Error::Timeout`] for room.
    /// Kafka's `max.block.ms`, default 60 s.
    pub max_block: Duration,
    /// How often a batch is sent again after a retriable error (the partition's
    /// leader moved, too few in-sync replicas, a lost connection, no answer), with
    /// [`ClientConfig::retry_backoff`](crate::ClientConfig::retry_backoff) doubling
    /// between attempts. Default unlimited (`u32::MAX`), as in Kafka: retries stop at
    /// [`delivery_timeout`](Self::delivery_timeout). `0` fails a batch at its first
    /// error.
    pub retries: u32,
    /// How long a record may take from [`Producer::send`] to its acknowledgement,
    /// retries and waiting for a partition leader included; then it fails with
    /// [`Error::Timeout`]. Kafka's `delivery.timeout.ms`, default 2 minutes.
    pub delivery_timeout: Duration,
    /// Idempotence: batches carry a producer id and per-partition sequence numbers, so
    /// a retry of a batch the broker already wrote (say, its answer was lost) is not
    /// written twice, and a gap is refused. Default on; it applies with
    /// `max_in_flight_per_partition = 1` and acks other than [`Acks::None`] (otherwise
    /// it is off).
    pub enable_idempotence: bool,
    /// While a produce request goes unanswered, how often the producer asks another
    /// broker whether the partitions it carries have a new leader; the first check
    /// comes after twice this. A broker killed outright sends nothing, and its
    /// connection fails only at the QUIC idle timeout (2.5 s); once metadata names a
    /// new leader (another broker or a newer leader epoch), the request is abandoned
    /// and its batches go to the new leader with the same bytes. Only with
    /// idempotence: the producer id and sequence numbers make the broker drop a
    /// batch it already has, so re-sending cannot duplicate. Default 250 ms; at least
    /// 10 ms.
    pub leader_check_interval: Duration,
    /// With the `otel` feature: a record sent inside a span that the application
    /// exports through `tracing-opentelemetry` gets a W3C `traceparent` header
    /// naming that span (unless it has one already), so whoever consumes it can
    /// continue the trace ([`ConsumerRecord::trace_parent`](crate::ConsumerRecord::trace_parent)),
    /// as Kafka's OpenTelemetry instrumentation does. 55 bytes per record, before
    /// compression. Default on; without the feature or outside exported spans,
    /// nothing is added.
    pub propagate_trace_context: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_size: 16 * 1024,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            acks: Acks::All,
            request_timeout: Duration::from_secs(30),
            max_in_flight_per_partition: 1,
            buffer_memory: 32 * 1024 * 1024,
            max_block: Duration::from_secs(60),
            retries: u32::MAX,
            delivery_timeout: Duration::from_secs(120),
            enable_idempotence: true,
            leader_check_interval: Duration::from_millis(250),
            propagate_trace_context: true,
        }
    }
}

/// The record header carrying a W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Adds a `traceparent` header naming the current span, when it is exported (see
/// [`ProducerConfig::propagate_trace_context`]). Without the `otel` feature there is
/// no context to read, and nothing is looked at.
fn add_trace_header(record: &mut ProducerRecord) {
    if !cfg!(feature = "otel") || record.headers.iter().any(|h| h.key == TRACEPARENT_HEADER) {
        return;
    }
    if let Some(trace) = crate::client::trace_context(&tracing::Span::current()) {
        record.headers.push(Header {
            key: TRACEPARENT_HEADER.into(),
            value: Some(trace.to_traceparent().into()),
        });
    }
}

/// A record to send.
///
/// ```
/// use meridian_client::ProducerRecord;
/// let record = ProducerRecord::new("orders", r#"{"id": 7}"#)
///     .key("customer-42")
///     .header("trace-id", "abc123");
/// assert_eq!(record.partition, None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// Explicit partition; wins over the key. [`UNASSIGNED_PARTITION`] leaves the choice
    /// to the partitioner plugin attached to the topic on the broker.
    pub partition: Option<u32>,
    /// Records with the same key go to the same partition (Kafka's murmur2 mapping).
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Create time in ms since the epoch; now if `None`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// A record with a null value (a tombstone on compacted topics).
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Bytes>) -> Self {
        ProducerRecord {
            value: None,
            ..ProducerRecord::new(topic, Bytes::new()).key(key)
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// Where an acknowledged record was written.
///
/// ```no_run
/// # async fn example(producer: meridian_client::Producer) -> meridian_client::Result<()> {
/// use meridian_client::{ProducerRecord, RecordMetadata};
/// let delivery = producer.send(ProducerRecord::new("orders", "hello").key("k1")).await?;
/// let RecordMetadata { topic, partition, offset, timestamp } = delivery.await?;
/// println!("{topic}/{partition} @ {offset}, timestamp {timestamp}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Shared by the records of a batch.
    pub topic: Arc<str>,
    pub partition: u32,
    /// The record's offset; -1 with `acks=0`.
    pub offset: i64,
    /// The record's create time, or the broker's append time if the topic uses it.
    pub timestamp: i64,
}

/// Resolves when the record is acknowledged (or failed for good).
///
/// Dropping it does not cancel the send.
///
/// ```no_run
/// # async fn example(producer: meridian_client::Producer) -> meridian_client::Result<()> {
/// use meridian_client::ProducerRecord;
/// let delivery = producer.send(ProducerRecord::new("orders", "hello")).await?;
/// let metadata = delivery.await?;
/// println!("{}/{} @ {}", metadata.topic, metadata.partition, metadata.offset);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DeliveryFuture {
    outcome: Arc<BatchOutcome>,
    /// The record's position in its batch.
    index: u32,
    timestamp: i64,
    /// This future's waker is in `outcome.wakers`.
    registered: bool,
}

impl DeliveryFuture {
    fn metadata(&self, result: &Result<(i64, i64)>) -> Result<RecordMetadata> {
        self.outcome.metadata(result, self.index, self.timestamp)
    }
}

impl DeliveryFuture {
    /// Follows the record to the batch that took it over when its own was split
    /// (see [`split`]); true if it moved.
    fn follow(&mut self) -> bool {
        let Some((start, next)) = self.outcome.forwarded(self.index) else {
            return false;
        };
        self.outcome = next;
        self.index -= start;
        self.registered = false;
        true
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut wakers = loop {
            if this.follow() {
                continue;
            }
            if let Some(result) = this.outcome.result.get() {
                return Poll::Ready(this.metadata(result));
            }
            let wakers = this.outcome.lock_wakers();
            // Checked again under the lock: `finish` sets the result and `forward`
            // adds a forward before they take the wakers, so either it is visible
            // here or this waker is among those taken.
            if this.outcome.forwarded(this.index).is_some() {
                continue;
            }
            if let Some(result) = this.outcome.result.get() {
                return Poll::Ready(this.metadata(result));
            }
            break wakers;
        };
        let waker = cx.waker();
        if !this.registered {
            wakers.push(waker.clone());
            this.registered = true;
        } else if !wakers.iter().any(|w| w.will_wake(waker)) {
            // Polled again, from another task.
            wakers.push(waker.clone());
        }
        Poll::Pending
    }
}

/// The outcome of one batch, shared by the delivery futures of its records: one
/// allocation and one wake-up per batch rather than a channel per record (which
/// cost a measurable share of a producer's CPU with 1 KiB records).
#[derive(Debug)]
struct BatchOutcome {
    topic: Arc<str>,
    partition: u32,
    /// The base offset and log-append time (-1 unless the topic uses it), or the
    /// error; set once.
    result: OnceLock<Result<(i64, i64)>>,
    wakers: StdMutex<Vec<Waker>>,
    /// Where records moved when the batch was split: the records from `start` on
    /// (up to the next entry's start) belong to the batch of that outcome, at
    /// `index - start`.
    forwards: StdMutex<Vec<(u32, Arc<BatchOutcome>)>>,
    /// `forwards` is not empty: a poll of a batch never split takes no lock for it.
    split: AtomicBool,
}

impl BatchOutcome {
    /// What the record at `index` of the batch, created at `timestamp`, learns of
    /// the batch's `result`.
    fn metadata(
        &self,
        result: &Result<(i64, i64)>,
        index: u32,
        timestamp: i64,
    ) -> Result<RecordMetadata> {
        let (base_offset, log_append_time) = result.as_ref().map_err(Clone::clone)?;
        Ok(RecordMetadata {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: if *base_offset < 0 {
                -1
            } else {
                base_offset + i64::from(index)
            },
            timestamp: if *log_append_time >= 0 {
                *log_append_time
            } else {
                timestamp
            },
        })
    }

    fn lock_wakers(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_forwards(&self) -> MutexGuard<'_, Vec<(u32, Arc<BatchOutcome>)>> {
        self.forwards.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The outcome the record at `index` moved to, and the index it moved from the
    /// start of, if its part of the batch was split off.
    fn forwarded(&self, index: u32) -> Option<(u32, Arc<BatchOutcome>)> {
        if !self.split.load(Ordering::Acquire) {
            return None;
        }
        self.lock_forwards()
            .iter()
            .filter(|(start, _)| *start <= index)
            .max_by_key(|(start, _)| *start)
            .map(|(start, outcome)| (*start, outcome.clone()))
    }

    /// The records from `start` on (up to an earlier forward's start) now belong to
    /// the batch of `to`; the futures waiting here look again.
    fn forward(&self, start: u32, to: Arc<BatchOutcome>) {
        let mut wakers = self.lock_wakers();
        self.lock_forwards().push((start, to));
        self.split.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *wakers);
        for waker in wakers {
            waker.wake();
        }
    }

    /// Sets the outcome, unless it is set already, and wakes the futures waiting.
    fn finish(&self, result: Result<(i64, i64)>) {
        if self.result.set(result).is_ok() {
            let wakers = std::mem::take(&mut *self.lock_wakers());
            for waker in wakers {
                waker.wake();
            }
        }
    }
}

/// What [`Producer::send_with_callback`] calls with a record's outcome.
type DeliveryCallback = Box<dyn FnOnce(Result<RecordMetadata>) + Send>;

/// The producer's state for one batch in the accumulator.
struct BatchState {
    outcome: Arc<BatchOutcome>,
    /// Buffer-memory permits held for the batch's records.
    reserved: usize,
    memory: Arc<Semaphore>,
    /// Records in the batch, counted delivered or failed when it finishes.
    records: u64,
    counters: Arc<Counters>,
    /// Records sent with a callback: index in the batch, timestamp, callback.
    callbacks: Vec<(u32, i64, DeliveryCallback)>,
    /// The broker's answer to the last attempt, when it was a retriable error: what
    /// the batch reports if its delivery timeout runs out before a retry succeeds.
    last_refusal: Option<Error>,
}

impl std::fmt::Debug for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchState")
            .field("outcome", &self.outcome)
            .field("reserved", &self.reserved)
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl BatchState {
    /// A new batch's state, holding no memory yet.
    fn new(tp: &TopicPartition, memory: &Arc<Semaphore>, counters: &Arc<Counters>) -> BatchState {
        BatchState {
            outcome: Arc::new(BatchOutcome {
                topic: Arc::from(tp.topic.as_str()),
                partition: tp.partition,
                result: OnceLock::new(),
                wakers: StdMutex::new(Vec::new()),
                forwards: StdMutex::new(Vec::new()),
                split: AtomicBool::new(false),
            }),
            reserved: 0,
            memory: memory.clone(),
            records: 0,
            counters: counters.clone(),
            callbacks: Vec::new(),
            last_refusal: None,
        }
    }

    /// Hands the records from `at` on, their callbacks and their share of the
    /// buffer memory to a new batch state, and forwards their futures to it.
    fn split_off(&mut self, at: u32, tp: &TopicPartition) -> BatchState {
        let mut rest = BatchState::new(tp, &self.memory, &self.counters);
        let total = self.records.max(1);
        rest.records = self.records.saturating_sub(u64::from(at));
        self.records -= rest.records;
        rest.reserved = (self.reserved as u64 * rest.records / total) as usize;
        self.reserved -= rest.reserved;
        let callbacks = std::mem::take(&mut self.callbacks);
        for (index, timestamp, callback) in callbacks {
            if index < at {
                self.callbacks.push((index, timestamp, callback));
            } else {
                rest.callbacks.push((index - at, timestamp, callback));
            }
        }
        rest.last_refusal = self.last_refusal.clone();
        self.outcome.forward(at, rest.outcome.clone());
        rest
    }

    /// The batch's error when its delivery timeout ran out: the broker's last
    /// refusal (say `NotEnoughReplicas`, retried all along), else
    /// [`Error::Timeout`].
    fn expired(&mut self) -> Error {
        match self.last_refusal.take() {
            Some(Error::Broker { code, message }) => Error::Broker {
                code,
                message: format!("{message} (retried until the delivery timeout ran out)"),
            },
            _ => Error::Timeout,
        }
    }

    /// Sets the batch's outcome, unless it is set already: wakes its records'
    /// futures and calls their callbacks.
    fn finish(&mut self, result: Result<(i64, i64)>) {
        if self.outcome.result.get().is_none() {
            // Counted, and the records' buffer memory given back, before the futures
            // wake: whoever sees a record's outcome sees it in `Producer::metrics`.
            let counter = match &result {
                Ok(_) => &self.counters.records_delivered,
                Err(_) => &self.counters.records_failed,
            };
            counter.fetch_add(self.records, Ordering::Relaxed);
            self.memory.add_permits(std::mem::take(&mut self.reserved));
        }
        self.outcome.finish(result);
        let Some(result) = self.outcome.result.get() else {
            return;
        };
        for (index, timestamp, on_delivery) in self.callbacks.drain(..) {
            let metadata = self.outcome.metadata(result, index, timestamp);
            // A user's panic must not take the sender task, and every later batch of
            // the producer, with it.
            let called =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_delivery(metadata)));
            if called.is_err() {
                tracing::error!(
                    topic = %self.outcome.topic,
                    partition = self.outcome.partition,
                    "a delivery callback panicked"
                );
            }
        }
    }
}

impl Drop for BatchState {
    /// A batch leaves the producer through [`settle`], which finishes it; one dropped
    /// otherwise (the runtime shutting down under the sender) fails its records
    /// rather than leaving their futures pending or their callbacks uncalled. Either
    /// way its records' buffer memory is free again.
    fn drop(&mut self) {
        self.finish(Err(Error::Closed));
        self.memory.add_permits(std::mem::take(&mut self.reserved));
    }
}

/// Sends records to topics, batching them per partition.
///
/// Cheap to clone; clones share the buffers and the background sender task. When the
/// last clone is dropped, buffered records are still sent (call [`Producer::flush`]
/// to wait for them).
///
/// Ordering: with the default `max_in_flight_per_partition = 1`, records of one
/// partition are written in the order `send` was called, retries included (a retried
/// batch goes before any later batch of its partition). With more in flight, the
/// broker may append concurrent batches of a partition in either order.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use meridian_client::{ProducerConfig, ProducerRecord};
/// let producer = client.producer(ProducerConfig::default());
/// let mut deliveries = Vec::new();
/// for i in 0..1000 {
///     let record = ProducerRecord::new("events", format!("event {i}")).key(format!("user-{}", i % 10));
///     deliveries.push(producer.send(record).await?);
/// }
/// producer.flush().await?;
/// for delivery in deliveries {
///     delivery.await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    _close_on_drop: Arc<CloseOnDrop>,
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    accumulator: StdMutex<RecordAccumulator<BatchState>>,
    /// Wakes the sender task: a batch became ready or a request finished.
    wake: Notify,
    /// Bumped after every finished request, for `flush` to re-check.
    progress: watch::Sender<u64>,
    /// One permit per buffered byte.
    memory: Arc<Semaphore>,
    sender_started: AtomicBool,
    /// A metadata refresh for the sender is under way (one at a time).
    refreshing: AtomicBool,
    /// Set when idempotence is in effect.
    idempotence: Option<Idempotence>,
    /// Buffers of finished batches, to encode the next ones in.
    spare_buffers: StdMutex<SpareBuffers>,
    counters: Arc<Counters>,
}

/// What [`Producer::metrics`] reports, kept as relaxed atomics: each count is exact,
/// a snapshot of several is not taken at one instant.
#[derive(Default)]
struct Counters {
    records_accepted: AtomicU64,
    records_delivered: AtomicU64,
    records_failed: AtomicU64,
    batches_delivered: AtomicU64,
    bytes_delivered: AtomicU64,
    requests: AtomicU64,
    requests_unanswered: AtomicU64,
    retries: AtomicU64,
}

/// A producer's counts since it was made, from [`Producer::metrics`]: what Kafka's
/// Java client reports as `record-send-total`, `record-error-total`,
/// `record-retry-total`, `request-total` and `buffer-available-bytes`, to feed to
/// whatever metrics system the application uses.
///
/// ```no_run
/// # fn example(producer: &meridian_client::Producer) {
/// let before = producer.metrics();
/// // … a minute of sending …
/// let now = producer.metrics();
/// let sent = now.records_delivered - before.records_delivered;
/// let per_request = sent as f64 / (now.requests - before.requests).max(1) as f64;
/// println!("{sent} records delivered, {per_request:.1} per request");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerMetrics {
    /// Records `send` or `send_with_callback` accepted.
    pub records_accepted: u64,
    /// Records the brokers acknowledged (with [`Acks::None`]: written to the
    /// broker).
    pub records_delivered: u64,
    /// Records that failed for good: their future or callback got the error.
    pub records_failed: u64,
    /// Batches delivered, and their bytes as sent (after compression).
    pub batches_delivered: u64,
    pub bytes_delivered: u64,
    /// Produce requests sent, and those that got no answer (the connection was lost,
    /// the request timed out, or it was abandoned when its partitions' leader moved).
    pub requests: u64,
    pub requests_unanswered: u64,
    /// Times a batch was queued to be sent again after a retriable error.
    pub retries: u64,
    /// Bytes of [`ProducerConfig::buffer_memory`] free for new records now.
    pub buffer_available_bytes: u64,
}

impl ProducerMetrics {
    /// Records accepted and not yet delivered or failed: queued or in flight.
    pub fn records_pending(&self) -> u64 {
        self.records_accepted
            .saturating_sub(self.records_delivered + self.records_failed)
    }
}

/// Buffers of batches the producer is done with, at most `buffer_memory` bytes of
/// them: encoding into memory already faulted in saves the kernel clearing a fresh
/// page every 4 KiB (measured at ~6 % of a producer's CPU with 1 MiB batches).
#[derive(Default)]
struct SpareBuffers {
    buffers: Vec<BytesMut>,
    bytes: usize,
}

/// The producer id and the next sequence number of each partition.
struct Idempotence {
    /// `(producer_id, producer_epoch)`, fetched from the broker on first use and again
    /// after a batch failed for good (its sequence numbers may now have a gap).
    identity: tokio::sync::Mutex<Option<(i64, i16)>>,
    /// Next sequence per partition, under the current identity.
    sequences: StdMutex<std::collections::HashMap<TopicPartition, i32>>,
}

impl Idempotence {
    async fn identity(&self, client: &Client) -> Result<(i64, i16)> {
        let mut identity = self.identity.lock().await;
        if let Some(known) = *identity {
            return Ok(known);
        }
        let response = client
            .request(Request::InitProducerId(InitProducerIdRequest {
                transactional_id: None,
            }))
            .await?;
        let Response::InitProducerId(r) = response else {
            return Err(unexpected(ApiKey::InitProducerId, &response));
        };
        if !r.error.is_ok() {
            return Err(Error::broker(r.error, r.message));
        }
        *identity = Some((r.producer_id, r.producer_epoch));
        self.sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok((r.producer_id, r.producer_epoch))
    }

    /// Takes the sequence numbers for `n` records of a partition.
    fn take_sequence(&self, tp: &TopicPartition, n: usize) -> i32 {
        let mut sequences = self.sequences.lock().unwrap_or_else(|p| p.into_inner());
        let next = sequences.entry(tp.clone()).or_insert(0);
        let first = *next;
        *next = ((i64::from(first) + n as i64) % (i64::from(i32::MAX) + 1)) as i32;
        first
    }

    /// Gives back the last `n` sequence numbers taken for a partition, those of a
    /// batch the broker refused without writing (nothing was taken after them). A
    /// partition forgotten meanwhile (`reset`) starts over anyway.
    fn give_back(&self, tp: &TopicPartition, n: usize) {
        let mut sequences = self.sequences.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = sequences.get_mut(tp) {
            let modulus = i64::from(i32::MAX) + 1;
            *next = ((i64::from(*next) - n as i64).rem_euclid(modulus)) as i32;
        }
    }

    /// The partition no longer knows this producer (it forgot an idle producer after
    /// `producer_id_expiration_ms`, or the topic was deleted and created again): its
    /// sequence numbers start over at 0, under the same producer id.
    fn restart_partition(&self, tp: &TopicPartition) {
        self.sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.clone(), 0);
    }

    /// A batch failed for good: later batches start over under a new producer id.
    fn reset(&self) {
        if let Ok(mut identity) = self.identity.try_lock() {
            *identity = None;
        }
        self.sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Dropped with the last `Producer` clone: lets the sender send what is left and stop.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.lock().close();
        self.0.wake.notify_one();
    }
}

impl Shared {
    /// A buffer to encode a batch in: a kept one, or a new empty one.
    fn spare_buffer(&self) -> BytesMut {
        let mut spare = self.spare_buffers.lock().unwrap_or_else(|e| e.into_inner());
        match spare.buffers.pop() {
            Some(buffer) => {
                spare.bytes -= buffer.capacity();
                buffer
            }
            None => BytesMut::new(),
        }
    }

    /// Keeps a finished batch's buffer for the next batch, if nothing else holds it
    /// (the transport may still, until the peer acknowledged every byte) and there is
    /// room.
    fn keep_buffer(&self, encoded: Bytes) {
        let Ok(buffer) = encoded.try_into_mut() else {
            return;
        };
        let mut spare = self.spare_buffers.lock().unwrap_or_else(|e| e.into_inner());
        if spare.bytes + buffer.capacity() <= self.config.buffer_memory {
            spare.bytes += buffer.capacity();
            spare.buffers.push(buffer);
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecordAccumulator<BatchState>> {
        // The accumulator asserts its invariants; a panic there is a bug that poisoned
        // the state, so carrying on with it is no worse than what the assert caught.
        self.accumulator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Producer {
        let config = ProducerConfig {
            batch_size: config.batch_size.max(1),
            max_in_flight_per_partition: config.max_in_flight_per_partition.max(1),
            buffer_memory: config.buffer_memory.clamp(1, u32::MAX as usize),
            leader_check_interval: config.leader_check_interval.max(MIN_LEADER_CHECK_INTERVAL),
            ..config
        };
        let accumulator = RecordAccumulator::new(
            AccumulatorConfig {
                batch_size: config.batch_size,
                linger: config.linger,
                timer_resolution: TIMER_RESOLUTION,
                max_in_flight: config.max_in_flight_per_partition,
                retry_backoff: client.config().retry_backoff,
                retry_backoff_max: client.config().retry_backoff_max,
                delivery_timeout: config.delivery_timeout,
            },
            RandomState::new().hash_one(Instant::now()) as u32,
        );
        let idempotence = (config.enable_idempotence
            && config.max_in_flight_per_partition == 1
            && config.acks != Acks::None)
            .then(|| Idempotence {
                identity: tokio::sync::Mutex::new(None),
                sequences: StdMutex::new(std::collections::HashMap::new()),
            });
        let shared = Arc::new(Shared {
            client,
            idempotence,
            memory: Arc::new(Semaphore::new(config.buffer_memory)),
            config,
            accumulator: StdMutex::new(accumulator),
            wake: Notify::new(),
            progress: watch::channel(0).0,
            sender_started: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            spare_buffers: StdMutex::new(SpareBuffers::default()),
            counters: Arc::new(Counters::default()),
        });
        Producer {
            _close_on_drop: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// The producer's counts so far: records accepted, delivered and failed, bytes
    /// and requests sent, retries, free buffer memory.
    ///
    /// ```no_run
    /// # async fn example(producer: meridian_client::Producer) -> meridian_client::Result<()> {
    /// producer.flush().await?;
    /// let metrics = producer.metrics();
    /// println!(
    ///     "{} delivered, {} failed, {} retries, {} pending",
    ///     metrics.records_delivered,
    ///     metrics.records_failed,
    ///     metrics.retries,
    ///     metrics.records_pending()
    /// );
    /// # Ok(()) }
    /// ```
    pub fn metrics(&self) -> ProducerMetrics {
        let c = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProducerMetrics {
            records_accepted: load(&c.records_accepted),
            records_delivered: load(&c.records_delivered),
            records_failed: load(&c.records_failed),
            batches_delivered: load(&c.batches_delivered),
            bytes_delivered: load(&c.bytes_delivered),
            requests: load(&c.requests),
            requests_unanswered: load(&c.requests_unanswered),
            retries: load(&c.retries),
            buffer_available_bytes: self.shared.memory.available_permits() as u64,
        }
    }

    /// Enqueues the record into its partition's batch and returns a future for its
    /// acknowledgement. Awaits only for buffer space (backpressure, see
    /// [`ProducerConfig::buffer_memory`]) and, the first time a topic is used, for its
    /// partition count; for at most [`ProducerConfig::max_block`] in all.
    ///
    /// Partitioning: an explicit partition wins (checked against the partition count,
    /// else [`ErrorCode::InvalidPartition`]); otherwise a key picks
    /// [`partition_for_key`] like Kafka's default partitioner; records with neither
    /// stick to one partition until a batch's worth has gone to it or its batch is
    /// sent, then move to the next.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let (outcome, index, timestamp) = self.enqueue(record, None).await?;
        Ok(DeliveryFuture {
            outcome,
            index,
            timestamp,
            registered: false,
        })
    }

    /// Like [`send`](Producer::send), but the outcome goes to `on_delivery` instead of
    /// a future, as with the Java client's `send(record, callback)`.
    ///
    /// The callback runs on the producer's own task that handled the record's batch,
    /// when the batch is acknowledged or fails for good, so it must be quick and must
    /// not block: it holds up the handling of that response, and of the partition's
    /// next batch. Callbacks of one batch run in the order their records were sent;
    /// those of different brokers' requests may run at the same time on different
    /// threads. A callback that panics is reported in the log and does not stop the
    /// producer.
    ///
    /// It costs less than a [`DeliveryFuture`] per record: no waker to register and
    /// no task to wake, which matters at hundreds of thousands of records a second.
    ///
    /// ```no_run
    /// # async fn example(producer: meridian_client::Producer) -> meridian_client::Result<()> {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use meridian_client::ProducerRecord;
    /// let acknowledged = Arc::new(AtomicU64::new(0));
    /// for i in 0..1000 {
    ///     let acknowledged = acknowledged.clone();
    ///     let record = ProducerRecord::new("events", format!("event {i}"));
    ///     producer
    ///         .send_with_callback(record, move |delivered| match delivered {
    ///             Ok(_) => {
    ///                 acknowledged.fetch_add(1, Ordering::Relaxed);
    ///             }
    ///             Err(e) => eprintln!("event {i} not delivered: {e}"),
    ///         })
    ///         .await?;
    /// }
    /// producer.flush().await?;
    /// println!("{} acknowledged", acknowledged.load(Ordering::Relaxed));
    /// # Ok(()) }
    /// ```
    ///
    /// An `Err` returned here means the record was not enqueued, and the callback is
    /// dropped without being called.
    pub async fn send_with_callback(
        &self,
        record: ProducerRecord,
        on_delivery: impl FnOnce(Result<RecordMetadata>) + Send + 'static,
    ) -> Result<()> {
        self.enqueue(record, Some(Box::new(on_delivery))).await?;
        Ok(())
    }

    /// Appends the record to its partition's batch; a callback is kept with the
    /// batch. Returns the batch's outcome, the record's index in the batch and its
    /// timestamp.
    async fn enqueue(
        &self,
        mut record: ProducerRecord,
        on_delivery: Option<DeliveryCallback>,
    ) -> Result<(Arc<BatchOutcome>, u32, i64)> {
        let shared = &self.shared;
        if shared.client.is_closed() {
            return Err(Error::Closed);
        }
        if shared.config.propagate_trace_context {
            add_trace_header(&mut record);
        }
        // A send that needs no wait completes without yielding, so a loop of them
        // would hold its worker thread until the buffer is full, and with it the
        // sender task, which its wake-up put on the same worker. Spending tokio's
        // cooperative budget yields every so many sends. Without this, `bench
        // produce` sent 20–40 % fewer MiB/s once it no longer awaited a channel
        // send per record, whose budget had been doing the same.
        tokio::task::consume_budget().await;
        // Set by the first wait, so a send that waits for nothing reads no clock.
        let mut deadline = None;
        // The waits below are boxed: they are rare (a topic not in the metadata cache
        // yet, a full buffer), and inline they made this future kilobytes long, which
        // its caller copied for every record.
        let n_partitions = match shared.client.cached_partition_count(&record.topic) {
            Some(n) => n,
            None => Box::pin(self.partition_count(&record.topic, &mut deadline)).await?,
        };
        let partition = match (record.partition, &record.key) {
            // The broker's partitioner plugin routes each record; delivery metadata then
            // carries this partition and offset -1.
            (Some(UNASSIGNED_PARTITION), _) => Some(UNASSIGNED_PARTITION),
            (Some(p), _) if p >= n_partitions => {
                return Err(Error::broker(
                    ErrorCode::InvalidPartition,
                    format!(
                        "partition {p} does not exist: topic `{}` has {n_partitions} partitions",
                        record.topic
                    ),
                ))
            }
            (Some(p), _) => Some(p),
            (None, Some(key)) => Some(partition_for_key(key, n_partitions)),
            // Sticky, once the record's size is known.
            (None, None) => None,
        };
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let new_record = NewRecord {
            timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        let size = new_record.estimated_size();
        // A record larger than the whole buffer takes all of it rather than waiting
        // forever.
        let reserve = size.clamp(1, shared.config.buffer_memory) as u32;
        let permit = match shared.memory.try_acquire_many(reserve) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(Error::Closed),
            Err(TryAcquireError::NoPermits) => {
                let deadline =
                    *deadline.get_or_insert_with(|| Instant::now() + shared.config.max_block);
                Box::pin(tokio::time::timeout_at(
                    deadline.into(),
                    shared.memory.acquire_many(reserve),
                ))
                .await
                .map_err(|_| Error::Timeout)?
                .map_err(|_| Error::Closed)?
            }
        };
        self.start_sender();
        let (wake, outcome, index) = {
            let mut accumulator = shared.lock();
            let partition = partition
                .unwrap_or_else(|| accumulator.sticky_partition(&record.topic, n_partitions, size));
            let tp = TopicPartition {
                topic: record.topic,
                partition,
            };
            let appended = accumulator.append_with(tp, new_record, Instant::now, |tp| {
                BatchState::new(tp, &shared.memory, &shared.counters)
            })?;
            // The batch gives the permits back when it is done.
            permit.forget();
            let index = appended.index as u32;
            appended.state.reserved += reserve as usize;
            appended.state.records += 1;
            shared
                .counters
                .records_accepted
                .fetch_add(1, Ordering::Relaxed);
            if let Some(on_delivery) = on_delivery {
                appended
                    .state
                    .callbacks
                    .push((index, timestamp, on_delivery));
            }
            (appended.wake, appended.state.outcome.clone(), index)
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok((outcome, index, timestamp))
    }

    /// The partition count of `topic`, asked again while the error is retriable (no
    /// broker reachable, say: the producer started, or lost its connection, while its
    /// brokers were down) until `deadline` (set to `max_block` from now if unset).
    async fn partition_count(&self, topic: &str, deadline: &mut Option<Instant>) -> Result<u32> {
        let client = &self.shared.client;
        if let Some(n) = client.cached_partition_count(topic) {
            return Ok(n);
        }
        let deadline =
            *deadline.get_or_insert_with(|| Instant::now() + self.shared.config.max_block);
        let mut attempt = 0;
        loop {
            // An ask of a broker that is down can take seconds (until the connection
            // attempt times out); none runs past the deadline.
            let error =
                match tokio::time::timeout_at(deadline.into(), client.partition_count(topic)).await
                {
                    Ok(Ok(n)) => return Ok(n),
                    Ok(Err(e)) if e.is_retriable() && !client.is_closed() => e,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(Error::Timeout),
                };
            let now = Instant::now();
            if now >= deadline {
                return Err(error);
            }
            attempt += 1;
            // The last ask comes at the deadline, not a backoff before it.
            let wait = client.config().backoff(attempt).min(deadline - now);
            tracing::debug!(topic, attempt, %error, "cannot learn the topic's partitions yet; asking again");
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends every queued batch now and waits until all records sent before this call
    /// are acknowledged or failed, and their callbacks have run. Returns the first
    /// failure among them, if any (each record's [`DeliveryFuture`] or callback has
    /// its own outcome).
    pub async fn flush(&self) -> Result<()> {
        let mut progress = self.shared.progress.subscribe();
        let epoch = self.shared.lock().begin_flush();
        self.start_sender();
        self.shared.wake.notify_one();
        loop {
            if let Some(result) = self.shared.lock().flush_status(epoch) {
                return result;
            }
            progress.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    fn start_sender(&self) {
        // Read first: a write per record would take the flag's cache line away from
        // every other core that sends.
        let started = &self.shared.sender_started;
        if !started.load(Ordering::Acquire) && !started.swap(true, Ordering::SeqCst) {
            tokio::spawn(run_sender(self.shared.clone()));
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The routing decision for one partition's batches. Records for
/// [`UNASSIGNED_PARTITION`] go where partition 0's would: the topic's partitioner
/// plugin routes them on a broker that holds the topic (partition 0's leader), which
/// passes other partitions' records on to their leaders.
fn route_partition(cache: &MetadataCache, tp: &TopicPartition) -> Routing<BrokerId> {
    let partition = if tp.partition == UNASSIGNED_PARTITION {
        0
    } else {
        tp.partition
    };
    match cache.leader(&tp.topic, partition) {
        LeaderLookup::Known { broker, .. } => Routing::To(broker),
        LeaderLookup::Unknown => Routing::Wait,
        LeaderLookup::Missing(code) => Routing::Fail(code),
    }
}

/// The sender task: expires batches past their delivery timeout, drains ready batches
/// into one produce request per leader (each request runs in its own task, so up to
/// `max_in_flight_per_partition` are under way per partition), asks for fresh
/// metadata when a partition's leader is unknown, and sleeps until the next linger,
/// backoff or expiry deadline or a wake-up.
async fn run_sender(shared: Arc<Shared>) {
    let max_age = shared.client.config().metadata_max_age;
    loop {
        // The `Notified` future is created before looking at the accumulator, so a
        // wake-up between the look and the wait is not lost.
        let notified = shared.wake.notified();
        let now = Instant::now();
        let (expired, drained, failed, wakeup, finished, refresh, topics) = {
            // Lock order: accumulator, then metadata; nothing takes them the other way.
            let mut accumulator = shared.lock();
            let expired = accumulator.expire(now);
            let cache = shared.client.metadata_cache();
            let mut drained =
                accumulator.drain(now, MAX_REQUEST_BYTES, |tp| route_partition(&cache, tp));
            // Each with the reason the metadata gave (which rule refused this client).
            let failed: Vec<_> = std::mem::take(&mut drained.failed)
                .into_iter()
                .map(|(batch, code)| {
                    let why = cache.missing_reason(&batch.tp.topic, code);
                    (batch, code, why)
                })
                .collect();
            let refresh = drained.waiting_for_leader || cache.needs_refresh(now, max_age);
            let finished = accumulator.is_closed() && accumulator.is_empty();
            (
                expired,
                drained,
                failed,
                accumulator.next_wakeup(),
                finished,
                refresh,
                accumulator.topics(),
            )
        };
        let mut progressed = false;
        for mut batch in expired {
            let error = batch.state.expired();
            tracing::debug!(topic = %batch.tp.topic, partition = batch.tp.partition, "batch expired after delivery_timeout");
            settle(&shared, batch, Err(error));
            progressed = true;
        }
        for (batch, code, why) in failed {
            let error = Error::broker(
                code,
                format!("{}/{}: {why}", batch.tp.topic, batch.tp.partition),
            );
            settle(&shared, batch, Err(error));
            progressed = true;
        }
        for (leader, batches) in drained.by_destination {
            tokio::spawn(send_batches(shared.clone(), leader, batches));
            progressed = true;
        }
        if refresh && !shared.refreshing.swap(true, Ordering::SeqCst) {
            tokio::spawn(refresh_for_sender(shared.clone(), topics));
        }
        if progressed {
            continue;
        }
        if finished {
            return;
        }
        match wakeup {
            Some(at) => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Refreshes metadata for the sender, wakes it, and then holds off the next refresh
/// for a backoff, so a partition without a leader (an election under way, a dead
/// broker) does not turn into a stream of metadata requests.
///
/// The request names `topics`, every topic with records in the producer, and not
/// only the topics cached: an `UnknownTopic` answer (say, from a leader that has
/// not applied a just-created topic yet) drops the topic from the cache, and a
/// refresh of the cached topics alone would then never learn its leaders again, so
/// its batches would wait for a leader until their delivery timeout while a full
/// buffer keeps `send` from asking for the topic.
async fn refresh_for_sender(shared: Arc<Shared>, topics: Vec<String>) {
    let result = shared.client.refresh_metadata(&topics).await;
    if let Err(e) = &result {
        tracing::debug!(error = %e, "metadata refresh for the producer failed");
    }
    shared.wake.notify_one();
    tokio::time::sleep(shared.client.config().retry_backoff).await;
    shared.refreshing.store(false, Ordering::SeqCst);
    shared.wake.notify_one();
}

/// Sends one produce request holding `batches` to `leader` and settles every
/// batch: acknowledged, failed, or back to the accumulator for a retry.
async fn send_batches(
    shared: Arc<Shared>,
    broker: BrokerId,
    batches: Vec<ProducerBatch<BatchState>>,
) {
    let config = &shared.config;
    let mut sendable = Vec::with_capacity(batches.len());
    for mut batch in batches {
        if batch.encoded.is_none() {
            let producer = match &shared.idempotence {
                None => ProducerIdentity::NONE,
                Some(idempotence) => match idempotence.identity(&shared.client).await {
                    Ok((producer_id, producer_epoch)) => ProducerIdentity {
                        producer_id,
                        producer_epoch,
                        base_sequence: idempotence.take_sequence(&batch.tp, batch.records.len()),
                    },
                    Err(e) => {
                        settle(&shared, batch, Err(e));
                        continue;
                    }
                },
            };
            match encode_batch_in(
                shared.spare_buffer(),
                &batch.records,
                config.compression,
                producer,
            ) {
                Ok(bytes) => batch.encoded = Some(bytes),
                Err(e) => {
                    let error = Error::Config(format!("cannot encode batch: {e}"));
                    settle(&shared, batch, Err(error));
                    continue;
                }
            }
        }
        sendable.push(batch);
    }
    if sendable.is_empty() {
        shared.wake.notify_one();
        return;
    }
    let request = produce_request(config, &sendable);
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let client = &shared.client;
    // The partitions' leaders as this request is sent, to notice a move while it
    // waits (idempotent producers only; see `leader_check_interval`).
    let watched: Vec<(TopicPartition, i32)> = if shared.idempotence.is_some() {
        let cache = client.metadata_cache();
        sendable
            .iter()
            .map(|batch| {
                let epoch = match cache.leader(&batch.tp.topic, batch.tp.partition) {
                    LeaderLookup::Known { broker: b, epoch } if b == broker => epoch,
                    // Routed by older metadata: only a different leader counts.
                    _ => i32::MAX,
                };
                (batch.tp.clone(), epoch)
            })
            .collect()
    } else {
        Vec::new()
    };
    let outcome = if config.acks == Acks::None {
        client
            .send_no_response_to(broker, request)
            .await
            .map(|()| None)
    } else {
        let response = if watched.is_empty() {
            client
                .request_to_with_timeout(broker, request, config.request_timeout)
                .await
        } else {
            tokio::select! {
                response = client.request_to_with_timeout(broker, request, config.request_timeout) => response,
                () = leader_moved(&shared, broker, &watched) => {
                    tracing::debug!(broker, "a partition's leader moved while its produce request was unanswered; re-sending to the new leader");
                    for batch in sendable {
                        let error = Error::broker(
                            ErrorCode::NotLeaderOrFollower,
                            format!(
                                "{}/{}: the leader moved while broker {broker} left the produce request unanswered",
                                batch.tp.topic, batch.tp.partition
                            ),
                        );
                        retry_elsewhere(&shared, batch, error);
                    }
                    shared.counters.requests_unanswered.fetch_add(1, Ordering::Relaxed);
                    shared.wake.notify_one();
                    return;
                }
            }
        };
        match response {
            Ok(Response::Produce(response)) => Ok(Some(response)),
            Ok(other) => Err(unexpected(ApiKey::Produce, &other)),
            Err(e) => Err(e),
        }
    };
    if let Err(e) = &outcome {
        // No answer at all: whatever the broker leads waits for fresh metadata.
        shared
            .counters
            .requests_unanswered
            .fetch_add(1, Ordering::Relaxed);
        client.broker_failed(broker, e);
    }
    for batch in sendable {
        let result = match &outcome {
            Err(e) => Err(e.clone()),
            Ok(None) => Ok((-1, -1)),
            Ok(Some(response)) => partition_result(response, &batch.tp),
        };
        settle(&shared, batch, result);
    }
    shared.wake.notify_one();
}

/// Resolves once metadata, asked of brokers other than `broker` every
/// `leader_check_interval` (the first time after twice that), names a new leader for
/// one of `watched` (`(partition, leader epoch at send time)`): another broker, or
/// a newer epoch.
async fn leader_moved(shared: &Shared, broker: BrokerId, watched: &[(TopicPartition, i32)]) {
    let interval = shared.config.leader_check_interval;
    tokio::time::sleep(interval).await;
    loop {
        tokio::time::sleep(interval).await;
        if !shared
            .client
            .refresh_metadata_avoiding(broker, interval.max(Duration::from_millis(500)))
            .await
        {
            continue;
        }
        let cache = shared.client.metadata_cache();
        let moved = watched.iter().any(|(tp, sent_epoch)| {
            matches!(
                cache.leader(&tp.topic, tp.partition),
                LeaderLookup::Known { broker: now, epoch }
                    if now != broker || (*sent_epoch != i32::MAX && epoch > *sent_epoch)
            )
        });
        if moved {
            return;
        }
    }
}

/// A batch the broker refused as larger than its topic's `max.message.bytes`, with
/// more than one record in it, goes again as two halves at the head of its
/// partition's queue (each halved again if still too large), as with Kafka's
/// producer: the records that fit are not failed with one that does not, or with a
/// batch that only grew too large by batching. Not counted as a retry.
fn split(shared: &Shared, mut batch: ProducerBatch<BatchState>) {
    let at = batch.records.len() / 2;
    if let Some(encoded) = batch.encoded.take() {
        // The broker wrote nothing of it: its sequence numbers are taken again by
        // the halves (with one batch in flight per partition, nothing later of the
        // partition was encoded).
        if let Some(idempotence) = &shared.idempotence {
            idempotence.give_back(&batch.tp, batch.records.len());
        }
        shared.keep_buffer(encoded);
    }
    tracing::debug!(
        topic = %batch.tp.topic,
        partition = batch.tp.partition,
        records = batch.records.len(),
        "splitting a batch refused as too large"
    );
    let rest = batch.state.split_off(at as u32, &batch.tp);
    shared.lock().split(batch, at, rest);
    shared.progress.send_modify(|n| *n += 1);
}

/// Whether a batch that came back may be sent again at all: its delivery timeout
/// has not run out and the client is open (retries also need attempts left).
fn may_go_again(shared: &Shared, batch: &ProducerBatch<BatchState>) -> bool {
    batch.created().elapsed() < shared.config.delivery_timeout && !shared.client.is_closed()
}

/// Puts a batch whose request was abandoned back in the queue for the leader that
/// metadata names now, to go at once (unlike [`settle`], the partition's leader is
/// not marked suspect and there is no backoff: the cache was just refreshed and
/// names a new leader). Fails it when no attempt or time is left.
fn retry_elsewhere(shared: &Shared, batch: ProducerBatch<BatchState>, error: Error) {
    let retry = batch.attempts < shared.config.retries && may_go_again(shared, &batch);
    if !retry {
        settle(shared, batch, Err(error));
        return;
    }
    tracing::debug!(topic = %batch.tp.topic, partition = batch.tp.partition, attempt = batch.attempts + 1, error = %error, "retrying produce");
    shared.counters.retries.fetch_add(1, Ordering::Relaxed);
    shared.lock().retry_now(batch, Instant::now());
    shared.progress.send_modify(|n| *n += 1);
}

fn produce_request(config: &ProducerConfig, batches: &[ProducerBatch<BatchState>]) -> Request {
    let mut topics: Vec<ProduceTopic> = Vec::new();
    for batch in batches {
        let partition = ProducePartition {
            partition: batch.tp.partition,
            records: batch.encoded.clone().unwrap_or_default(),
        };
        match topics.iter_mut().find(|t| t.name == batch.tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(ProduceTopic {
                name: batch.tp.topic.clone(),
                partitions: vec![partition],
            }),
        }
    }
    Request::Produce(ProduceRequest {
        acks: config.acks.wire_value(),
        timeout_ms: u32::try_from(config.request_timeout.as_millis()).unwrap_or(u32::MAX),
        topics,
    })
}

/// `(base_offset, log_append_time)` of one partition in a produce response.
fn partition_result(response: &ProduceResponse, tp: &TopicPartition) -> Result<(i64, i64)> {
    let found = response
        .topics
        .iter()
        .filter(|t| t.name == tp.topic)
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition == tp.partition);
    match found {
        None => Err(Error::Protocol(format!(
            "produce response lacks {}/{}",
            tp.topic, tp.partition
        ))),
        Some(p) if p.error.is_ok() => Ok((p.base_offset, p.log_append_time)),
        Some(p) => {
            let detail = if p.message.is_empty() {
                p.error.description()
            } else {
                &p.message
            };
            Err(Error::broker(
                p.error,
                format!("{}/{}: {detail}", tp.topic, tp.partition),
            ))
        }
    }
}

/// Completes, fails or re-queues one batch after its request finished. A retriable
/// failure (by [`on_error`](crate::metadata::on_error)) goes back to the accumulator
/// while attempts remain and the delivery timeout has not passed; one that says the
/// leader moved also marks the partition for a metadata refresh, so the retry goes
/// to the new leader with the same bytes (producer id, epoch and sequence).
fn settle(shared: &Shared, mut batch: ProducerBatch<BatchState>, result: Result<(i64, i64)>) {
    let too_large = matches!(
        &result,
        Err(Error::Broker {
            code: ErrorCode::MessageTooLarge,
            ..
        })
    );
    if too_large && batch.records.len() > 1 && may_go_again(shared, &batch) {
        split(shared, batch);
        return;
    }
    // The partition has no state for this producer, so it cannot hold this batch (a
    // lost answer to a write would have left the state there): with one batch in
    // flight per partition, nothing later of the partition is encoded yet, and the
    // batch is retried as the first of a restarted sequence (Kafka's KIP-360 does the
    // same with an epoch bump).
    let restart_sequence = shared.idempotence.is_some()
        && matches!(
            &result,
            Err(Error::Broker {
                code: ErrorCode::UnknownProducerId,
                ..
            })
        );
    let retry = match &result {
        Err(e) => {
            let action = if restart_sequence {
                OnError::Retry
            } else {
                shared
                    .client
                    .partition_failed(&batch.tp.topic, batch.tp.partition, e)
            };
            action != OnError::Fail
                && batch.attempts < shared.config.retries
                && may_go_again(shared, &batch)
        }
        Ok(_) => false,
    };
    if retry {
        if let Err(e) = &result {
            if matches!(e, Error::Broker { .. }) {
                batch.state.last_refusal = Some(e.clone());
            }
            tracing::debug!(
                topic = %batch.tp.topic,
                partition = batch.tp.partition,
                attempt = batch.attempts + 1,
                error = %e,
                "retrying produce"
            );
        }
        if restart_sequence {
            if let Some(idempotence) = &shared.idempotence {
                idempotence.restart_partition(&batch.tp);
            }
            batch.encoded = None;
        }
        shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        shared.lock().retry(batch, Instant::now());
        shared.progress.send_modify(|n| *n += 1);
        return;
    }
    if result.is_err() {
        if let Some(idempotence) = &shared.idempotence {
            if batch.encoded.is_some() {
                idempotence.reset();
            }
        }
    }
    let epoch = batch.epoch();
    let ProducerBatch {
        tp,
        attempts,
        encoded,
        mut state,
        ..
    } = batch;
    if let Some(encoded) = encoded {
        if result.is_ok() {
            let counters = &shared.counters;
            counters.batches_delivered.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_delivered
                .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        }
        shared.keep_buffer(encoded);
    }
    if let Err(Error::Broker { code, .. }) = &result {
        if matches!(code, ErrorCode::UnknownTopic | ErrorCode::InvalidPartition) {
            shared.client.invalidate_partition_count(&tp.topic);
        }
    }
    let completed = result.as_ref().map(|_| ()).map_err(Clone::clone);
    // The records' callbacks run before the accumulator counts the batch done, so a
    // `flush` that returns has seen every callback of the records sent before it, as
    // with the Java client.
    state.finish(result);
    shared.lock().complete(&tp, attempts, epoch, completed);
    drop(state);
    shared.progress.send_modify(|n| *n += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_state(memory: &Arc<Semaphore>, reserved: usize) -> BatchState {
        let tp = TopicPartition {
            topic: "events".into(),
            partition: 3,
        };
        let mut state = BatchState::new(&tp, memory, &Arc::new(Counters::default()));
        state.reserved = reserved;
        state
    }

    fn delivery(state: &BatchState, index: u32, timestamp: i64) -> DeliveryFuture {
        DeliveryFuture {
            outcome: state.outcome.clone(),
            index,
            timestamp,
            registered: false,
        }
    }

    #[tokio::test]
    async fn a_batch_outcome_gives_each_record_its_offset_and_wakes_the_waiting() {
        let memory = Arc::new(Semaphore::new(100));
        memory.acquire_many(30).await.unwrap().forget();
        let state = batch_state(&memory, 30);
        let waiting = tokio::spawn(delivery(&state, 0, 7));
        let later = delivery(&state, 2, 9);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        state.outcome.finish(Ok((100, -1)));
        // A second outcome (the drop below) does not replace the first.
        drop(state);
        assert_eq!(memory.available_permits(), 100);
        let first = waiting.await.unwrap().unwrap();
        assert_eq!(
            (
                &*first.topic,
                first.partition,
                first.offset,
                first.timestamp
            ),
            ("events", 3, 100, 7)
        );
        let third = later.await.unwrap();
        assert_eq!((third.offset, third.timestamp), (102, 9));

        // Log-append time replaces the create time; acks=0 has no offsets.
        let state = batch_state(&memory, 0);
        let record = delivery(&state, 1, 7);
        state.outcome.finish(Ok((-1, 555)));
        assert_eq!(record.await.unwrap().offset, -1);
        let record = delivery(&state, 1, 7);
        assert_eq!(record.await.unwrap().timestamp, 555);
    }

    /// A waker that notes, when woken, what the producer's metrics say.
    struct Observer {
        counters: Arc<Counters>,
        memory: Arc<Semaphore>,
        seen: StdMutex<Option<(u64, usize)>>,
    }

    impl std::task::Wake for Observer {
        fn wake(self: Arc<Self>) {
            let failed = self.counters.records_failed.load(Ordering::Relaxed);
            *self.seen.lock().unwrap() = Some((failed, self.memory.available_permits()));
        }
    }

    #[tokio::test]
    async fn whoever_sees_an_outcome_sees_it_counted_and_the_memory_free() {
        let memory = Arc::new(Semaphore::new(100));
        memory.acquire_many(30).await.unwrap().forget();
        let mut state = batch_state(&memory, 30);
        state.records = 3;
        let observer = Arc::new(Observer {
            counters: state.counters.clone(),
            memory: memory.clone(),
            seen: StdMutex::new(None),
        });
        let waker = std::task::Waker::from(observer.clone());
        let mut future = std::pin::pin!(delivery(&state, 1, 0));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(future.as_mut().poll(&mut cx).is_pending());
        state.finish(Err(Error::Timeout));
        // Woken with the batch still held by the sender: already counted and freed.
        assert_eq!(*observer.seen.lock().unwrap(), Some((3, 100)));
        assert!(future.as_mut().poll(&mut cx).is_ready());
        drop(state);
        assert_eq!(memory.available_permits(), 100, "freed once");
    }

    #[tokio::test]
    async fn split_batches_forward_their_records_futures_callbacks_and_memory() {
        let memory = Arc::new(Semaphore::new(100));
        memory.acquire_many(40).await.unwrap().forget();
        let mut first = batch_state(&memory, 40);
        first.records = 4;
        let called = Arc::new(StdMutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for index in 0..4u32 {
            if index == 3 {
                let called = called.clone();
                first.callbacks.push((
                    index,
                    0,
                    Box::new(move |delivered| called.lock().unwrap().push(delivered)),
                ));
            } else {
                waiting.push(tokio::spawn(delivery(&first, index, 0)));
            }
        }
        tokio::task::yield_now().await;
        let tp = TopicPartition {
            topic: "events".into(),
            partition: 3,
        };
        // Halves [0, 1] and [2, 3], then [0] and [1].
        let mut third = first.split_off(2, &tp);
        let mut second = first.split_off(1, &tp);
        assert_eq!((first.records, second.records, third.records), (1, 1, 2));
        assert_eq!(first.reserved + second.reserved + third.reserved, 40);
        assert_eq!(third.callbacks.len(), 1, "the callback moved with record 3");
        third.finish(Ok((200, -1)));
        second.finish(Ok((150, -1)));
        first.finish(Ok((100, -1)));
        let mut offsets = Vec::new();
        for task in waiting {
            offsets.push(task.await.unwrap().unwrap().offset);
        }
        assert_eq!(offsets, vec![100, 150, 200]);
        let delivered = called.lock().unwrap().pop().unwrap().unwrap();
        assert_eq!(delivered.offset, 201);
        // Futures made after the split follow the forwards too.
        assert_eq!(delivery(&first, 3, 0).await.unwrap().offset, 201);
        drop((first, second, third));
        assert_eq!(memory.available_permits(), 100);
    }

    #[tokio::test]
    async fn a_batch_dropped_unfinished_fails_its_records_and_frees_their_memory() {
        let memory = Arc::new(Semaphore::new(10));
        memory.acquire_many(10).await.unwrap().forget();
        let state = batch_state(&memory, 10);
        let record = tokio::spawn(delivery(&state, 0, 0));
        tokio::task::yield_now().await;
        drop(state);
        assert!(matches!(record.await.unwrap(), Err(Error::Closed)));
        assert_eq!(memory.available_permits(), 10);
    }

    /// What callbacks were called with: their tag and offset, or the error.
    type Seen = Arc<StdMutex<Vec<Result<(i64, i64)>>>>;

    /// A callback that appends what it was given to `seen`.
    fn recorder(seen: &Seen, tag: i64, panic: bool) -> DeliveryCallback {
        let seen = seen.clone();
        Box::new(move |delivered: Result<RecordMetadata>| {
            seen.lock()
                .unwrap()
                .push(delivered.map(|m| (tag, m.offset)));
            assert!(!panic, "a user's callback panics");
        })
    }

    #[test]
    fn an_expired_batch_reports_the_brokers_last_refusal() {
        let memory = Arc::new(Semaphore::new(100));
        let mut state = batch_state(&memory, 0);
        assert!(matches!(state.expired(), Error::Timeout));
        state.last_refusal = Some(Error::broker(
            ErrorCode::NotEnoughReplicas,
            "events/3: 2 in sync, 3 needed",
        ));
        let error = state.expired();
        assert_eq!(error.code(), Some(ErrorCode::NotEnoughReplicas));
        assert!(
            error
                .to_string()
                .contains("3 needed (retried until the delivery timeout ran out)"),
            "{error}"
        );
    }

    #[test]
    fn callbacks_run_once_in_send_order_and_a_panicking_one_spares_the_rest() {
        let memory = Arc::new(Semaphore::new(100));
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let mut state = batch_state(&memory, 0);
        state.callbacks.push((0, 1, recorder(&seen, 10, false)));
        state.callbacks.push((1, 1, recorder(&seen, 11, true)));
        state.callbacks.push((2, 1, recorder(&seen, 12, false)));
        let mut future = delivery(&state, 2, 1);
        state.finish(Ok((40, -1)));
        // Finished already: neither a second outcome nor the drop calls them again.
        state.finish(Err(Error::Timeout));
        drop(state);
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let seen: Vec<_> = seen.into_iter().map(Result::unwrap).collect();
        assert_eq!(seen, [(10, 40), (11, 41), (12, 42)]);
        // The record's future sees the same outcome.
        let polled = Pin::new(&mut future).poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(
            polled,
            Poll::Ready(Ok(RecordMetadata { offset: 42, .. }))
        ));
    }

    #[test]
    fn a_batch_dropped_unfinished_calls_its_callbacks_with_the_error() {
        let memory = Arc::new(Semaphore::new(10));
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let mut state = batch_state(&memory, 0);
        state.callbacks.push((0, 1, recorder(&seen, 1, false)));
        drop(state);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(matches!(seen[0], Err(Error::Closed)));
    }

    #[test]
    fn acks_parse_and_print() {
        for (input, expected) in [
            ("0", Acks::None),
            ("1", Acks::Leader),
            ("all", Acks::All),
            ("ALL", Acks::All),
            ("-1", Acks::All),
        ] {
            assert_eq!(input.parse::<Acks>().unwrap(), expected, "{input}");
        }
        assert!(matches!("2".parse::<Acks>(), Err(Error::Config(_))));
        assert_eq!(Acks::All.wire_value(), -1);
        assert_eq!(Acks::None.wire_value(), 0);
        assert_eq!(Acks::Leader.to_string(), "1");
    }

    #[test]
    fn producer_defaults() {
        let config = ProducerConfig::default();
        assert_eq!(config.batch_size, 16 * 1024);
        assert_eq!(config.linger, Duration::from_millis(5));
        assert_eq!(config.compression, Compression::None);
        assert_eq!(config.acks, Acks::All);
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.max_in_flight_per_partition, 1);
        assert_eq!(config.buffer_memory, 32 << 20);
        assert_eq!(config.retries, u32::MAX);
        assert_eq!(config.delivery_timeout, Duration::from_secs(120));
        assert_eq!(config.leader_check_interval, Duration::from_millis(250));
    }

    #[test]
    fn record_builder() {
        let record = ProducerRecord::new("t", "v")
            .key("k")
            .partition(2)
            .header("h", "x")
            .timestamp(42);
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(record.partition, Some(2));
        assert_eq!(record.headers.len(), 1);
        assert_eq!(record.timestamp, Some(42));
        assert_eq!(ProducerRecord::tombstone("t", "k").value, None);
    }

    #[test]
    fn produce_responses_map_to_partitions() {
        use meridian_wire::messages::{ProducePartitionResponse, ProduceTopicResponse};
        let response = ProduceResponse {
            topics: vec![ProduceTopicResponse {
                name: "t".into(),
                partitions: vec![
                    ProducePartitionResponse {
                        partition: 0,
                        error: ErrorCode::None,
                        message: String::new(),
                        base_offset: 10,
                        log_append_time: -1,
                        log_start_offset: 0,
                    },
                    ProducePartitionResponse {
                        partition: 1,
                        error: ErrorCode::MessageTooLarge,
                        message: String::new(),
                        base_offset: -1,
                        log_append_time: -1,
                        log_start_offset: 0,
                    },
                ],
            }],
        };
        let tp = |partition| TopicPartition {
            topic: "t".into(),
            partition,
        };
        assert_eq!(partition_result(&response, &tp(0)).unwrap(), (10, -1));
        let err = partition_result(&response, &tp(1)).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge));
        assert!(err.to_string().contains("t/1"));
        assert!(matches!(
            partition_result(&response, &tp(2)),
            Err(Error::Protocol(_))
        ));
    }
}
