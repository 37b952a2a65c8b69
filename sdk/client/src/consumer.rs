//! The consumer: reads assigned partitions from chosen positions, with fetch
//! requests kept in flight in the background while the caller processes records.
//!
//! The background task only frames what comes back (batch headers and CRCs: enough
//! to know where the next fetch starts) and asks again at once; records are
//! decompressed and decoded by [`Consumer::poll`], on the caller's task, so decoding
//! one response overlaps with fetching the next.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_wire::batch::{decode_records, split_fetched_batches, BatchHeader, Header};
use meridian_wire::frame::TraceContext;
use meridian_wire::messages::{
    ApiKey, DivergingEpoch, FetchPartition, FetchRequest, FetchResponse, FetchTopic, Request,
    Response, CONSUMER_REPLICA_ID, LATEST_TIMESTAMP, NO_LEADER_EPOCH,
};
pub use meridian_wire::plugin_messages::FetchFilter;
use meridian_wire::ErrorCode;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::accumulator::TopicPartition;
use crate::admin::Offset;
use crate::client::{unexpected, Client};
use crate::error::{Error, Result};
use crate::group::{self, GroupConfig, Membership, OffsetCommit, Position, RebalanceListener};
use crate::metadata::{on_error, route, BrokerId, LeaderLookup, OnError};

/// Consecutive failed fetch requests (lost connection, timeouts) tolerated quietly
/// before the error is reported by [`Consumer::poll`]; fetching goes on either way.
const QUIET_FETCH_FAILURES: u32 = 5;
const FETCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Fetch results buffered between the background task and `poll` (bytes are bounded
/// separately by `prefetch_bytes`).
const RESULT_QUEUE_LEN: usize = 4;
/// Fetch requests kept in flight to one broker, each for its own share of the
/// partitions led there. With one, the broker idles while the answer crosses the
/// network and is framed and the next request comes back; with two, it is reading
/// and sending one answer while the client takes in the other. A third paid off once
/// the broker's reads stopped faulting in fresh memory and it had time to spare
/// (`bench consume`, three alternating pairs: 531–600 MiB/s against 473–530 with
/// two; four measured 410–608).
const FETCHES_PER_BROKER: usize = 3;

/// Consumer settings; the defaults match Kafka's where the concept is the same.
///
/// ```
/// use std::time::Duration;
/// use meridian_client::ConsumerConfig;
/// let config = ConsumerConfig {
///     fetch_max_wait: Duration::from_millis(100),
///     ..ConsumerConfig::default()
/// };
/// assert_eq!(config.max_partition_fetch_bytes, 1024 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// How long the broker may hold a fetch waiting for `fetch_min_bytes`. Default 500 ms.
    pub fetch_max_wait: Duration,
    /// Bytes the broker waits for before answering a fetch. Default 1.
    pub fetch_min_bytes: u32,
    /// Bytes per fetch response, all partitions together. Default 50 MiB.
    pub fetch_max_bytes: u32,
    /// Bytes per partition per fetch response. Default 1 MiB.
    pub max_partition_fetch_bytes: u32,
    /// Record bytes fetched ahead of [`Consumer::poll`]; the background fetch waits
    /// while this much is buffered. Default 64 MiB.
    pub prefetch_bytes: usize,
    /// Where to go when a partition's position is outside its log (retention or
    /// `delete_records` removed it, or it is past the end), and where a group member
    /// starts a partition its group has no committed offset for: Kafka's
    /// `auto.offset.reset`. Default [`AutoOffsetReset::Latest`], as in Kafka.
    pub auto_offset_reset: AutoOffsetReset,
    /// A deployed filter plugin the broker runs over every fetch, so only the records
    /// it keeps cross the network. Default none.
    pub filter: Option<FetchFilter>,
}

/// Where a consumer goes when its position is out of range or, in a group, when
/// nothing is committed.
///
/// ```
/// use meridian_client::{AutoOffsetReset, ConsumerConfig};
/// let config = ConsumerConfig {
///     auto_offset_reset: "earliest".parse().unwrap(),
///     ..ConsumerConfig::default()
/// };
/// assert_eq!(config.auto_offset_reset, AutoOffsetReset::Earliest);
/// assert!("oldest".parse::<AutoOffsetReset>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoOffsetReset {
    /// To the log start offset: read everything still there.
    Earliest,
    /// To the log end offset: read only what comes next.
    Latest,
    /// Nowhere: [`Consumer::poll`] returns the [`ErrorCode::OffsetOutOfRange`] error
    /// and the partition pauses until [`Consumer::seek`].
    None,
}

impl std::str::FromStr for AutoOffsetReset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(AutoOffsetReset::Earliest),
            "latest" => Ok(AutoOffsetReset::Latest),
            "none" => Ok(AutoOffsetReset::None),
            other => Err(format!(
                "auto offset reset `{other}`: expected earliest, latest or none"
            )),
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            prefetch_bytes: 64 * 1024 * 1024,
            auto_offset_reset: AutoOffsetReset::Latest,
            filter: None,
        }
    }
}

/// One record read from a partition.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use std::time::Duration;
/// use meridian_client::{ConsumerConfig, Offset};
/// let mut consumer = client.consumer(ConsumerConfig::default());
/// consumer.assign("orders", &[0, 1]).await?;
/// consumer.seek("orders", 0, Offset::Earliest).await?;
/// consumer.seek("orders", 1, Offset::Earliest).await?;
/// for record in consumer.poll(Duration::from_secs(1)).await? {
///     let key = record.key.as_deref().map(String::from_utf8_lossy);
///     let value = record.value.as_deref().map(String::from_utf8_lossy);
///     println!(
///         "{}/{}@{} ts={} key={key:?} value={value:?} headers={}",
///         record.topic, record.partition, record.offset, record.timestamp,
///         record.headers.len()
///     );
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Shared by the records of one fetched partition.
    pub topic: Arc<str>,
    pub partition: u32,
    /// Leader epoch of the batch holding the record. Committing it with the next
    /// offset ([`OffsetCommit::leader_epoch`](crate::OffsetCommit::leader_epoch))
    /// lets a consumer resuming there notice a log cut by a leader change.
    pub leader_epoch: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl ConsumerRecord {
    /// The W3C trace context in the record's `traceparent` header (the producer's
    /// span, see [`ProducerConfig::propagate_trace_context`](crate::ProducerConfig::propagate_trace_context)),
    /// when it has a valid one: to make the span that processes the record a child of
    /// it, or to link to it.
    ///
    /// ```
    /// # use meridian_client::ConsumerRecord;
    /// # fn example(record: &ConsumerRecord) {
    /// if let Some(parent) = record.trace_parent() {
    ///     println!("produced in trace {:02x?}", parent.trace_id);
    /// }
    /// # }
    /// ```
    pub fn trace_parent(&self) -> Option<TraceContext> {
        let header = self
            .headers
            .iter()
            .find(|h| h.key == crate::producer::TRACEPARENT_HEADER)?;
        TraceContext::from_traceparent(header.value.as_deref()?)
    }
}

#[derive(Debug)]
struct PartitionState {
    /// Offset of the next record `poll` returns.
    position: i64,
    /// Leader epoch of the batch of the last record `poll` returned, or, at a
    /// position ListOffsets found, the epoch the leader gave it ([`NO_LEADER_EPOCH`]
    /// when not known: after a seek to an offset). Fetches carry it so the leader can
    /// tell whether its log still holds what was read, or where it was placed
    /// (KIP-320).
    epoch: i32,
    high_watermark: Option<i64>,
    /// Stopped after a partition error, until the next `seek` or `assign`.
    stopped: bool,
    /// Paused by the application ([`Consumer::pause`]) until it resumes it.
    paused: bool,
}

impl PartitionState {
    /// At a committed position, or one ListOffsets found: the first fetch names its
    /// epoch, so a log cut since is caught like one cut under a running consumer.
    fn resuming(at: Position) -> PartitionState {
        PartitionState {
            position: at.offset,
            epoch: at.epoch,
            high_watermark: None,
            stopped: false,
            paused: false,
        }
    }

    /// Neither stopped by an error nor paused: the fetcher reads it.
    fn fetching(&self) -> bool {
        !self.stopped && !self.paused
    }

    fn lag(&self) -> Option<i64> {
        self.high_watermark.map(|hw| (hw - self.position).max(0))
    }

    fn committable(&self) -> Position {
        Position {
            offset: self.position,
            epoch: self.epoch,
        }
    }

    /// Sought or reset: read on from `at` (its epoch [`NO_LEADER_EPOCH`] unless the
    /// caller knows the record before it).
    fn moved_to(&mut self, at: Position) {
        self.position = at.offset;
        self.epoch = at.epoch.max(NO_LEADER_EPOCH);
        self.stopped = false;
    }
}

/// Reads records from assigned partitions (no consumer groups yet: the caller picks
/// partitions and positions).
///
/// A background task keeps one fetch request in flight for all assigned partitions
/// while the caller processes records, bounded by
/// [`ConsumerConfig::prefetch_bytes`]. Records of a partition come in offset order,
/// never duplicated and never skipped. A position outside the log is reset per
/// [`ConsumerConfig::auto_offset_reset`] (or, with `None`, reported as below). Any other
/// partition error is returned by the next [`poll`](Consumer::poll) and pauses that
/// partition until it is sought or assigned again.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
/// use std::time::Duration;
/// use meridian_client::{ConsumerConfig, Offset};
/// let mut consumer = client.consumer(ConsumerConfig::default());
/// let partitions = consumer.assign_all("orders").await?;
/// for p in &partitions {
///     consumer.seek("orders", *p, Offset::Earliest).await?;
/// }
/// loop {
///     for record in consumer.poll(Duration::from_secs(1)).await? {
///         println!("{}/{}@{}: {:?}", record.topic, record.partition, record.offset, record.value);
///     }
/// }
/// # }
/// ```
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    fetcher: Option<Fetcher>,
    /// An error to return from the next `poll`.
    pending_error: Option<Error>,
    /// Set by [`Consumer::subscribe`]: group membership.
    group: Option<Membership>,
    /// In a mutex only so `Consumer` stays `Sync`; `&mut self` reaches it unlocked.
    listener: Option<std::sync::Mutex<Box<dyn RebalanceListener>>>,
    /// Partitions found out of range, to reset per `auto_offset_reset`.
    pending_resets: Vec<TopicPartition>,
    /// Kept by the fetcher tasks, one after another.
    fetch_counters: Arc<FetchCounters>,
    /// Records `poll` returned, and the bytes of the batches they came in.
    records_consumed: u64,
    bytes_consumed: u64,
}

/// What the fetcher tasks of a consumer did, across restarts.
#[derive(Debug, Default)]
struct FetchCounters {
    requests: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of what a [`Consumer`] did since it was made: the counts the Kafka Java
/// client reports as `records-consumed-total`, `bytes-consumed-total`,
/// `fetch-total` and `records-lag-max`, to feed to whatever metrics system the
/// application uses.
///
/// ```no_run
/// # async fn example(mut consumer: meridian_client::Consumer) -> meridian_client::Result<()> {
/// use std::time::Duration;
/// consumer.poll(Duration::from_secs(1)).await?;
/// let metrics = consumer.metrics();
/// if metrics.records_lag_max.unwrap_or(0) > 100_000 {
///     eprintln!("falling behind: {metrics:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerMetrics {
    /// Records [`poll`](Consumer::poll) returned.
    pub records_consumed: u64,
    /// Bytes of the record batches those records came in, as fetched (compressed).
    pub bytes_consumed: u64,
    /// Fetch requests sent, and those that failed (each is retried, and reported
    /// by `poll` when failures go on).
    pub fetch_requests: u64,
    pub fetch_failures: u64,
    /// The largest [`lag`](Consumer::lag) of the assigned partitions, `None` before
    /// any fetch brought a high watermark.
    pub records_lag_max: Option<i64>,
}

/// The background fetch task and its output. Dropping it stops the task and throws
/// away what it fetched but `poll` did not return yet (positions only advance when
/// `poll` returns records, so nothing is lost).
struct Fetcher {
    task: JoinHandle<()>,
    results: mpsc::Receiver<FetchResult>,
    /// One permit per prefetched byte not yet returned by `poll`.
    budget: Arc<Semaphore>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one fetch request yielded.
#[derive(Debug, Default)]
struct FetchResult {
    partitions: Vec<PartitionFetch>,
    /// Budget permits held by these records, returned once `poll` hands them out.
    reserved_bytes: usize,
    /// A request-level failure worth reporting.
    error: Option<Error>,
}

#[derive(Debug)]
struct PartitionFetch {
    tp: TopicPartition,
    /// Whole batches with at least one record at or past the position the fetch
    /// started from, CRCs checked, not yet decoded.
    batches: Vec<(BatchHeader, Bytes)>,
    /// Where the next fetch of this partition starts.
    next_offset: i64,
    /// Leader epoch of the last of the batches (control batches included).
    last_epoch: Option<i32>,
    high_watermark: Option<i64>,
    /// The partition stopped with this error.
    error: Option<Error>,
    /// The leader's log does not hold what was read before `next_offset`: the
    /// epoch it has there and where that ends. The fetcher stopped the partition.
    diverged: Option<DivergingEpoch>,
}

impl PartitionFetch {
    /// No batches: the fetcher stopped the partition at `position` (set `error` or
    /// `diverged` to say why).
    fn stopped(tp: TopicPartition, position: i64, high_watermark: Option<i64>) -> PartitionFetch {
        PartitionFetch {
            tp,
            batches: Vec::new(),
            next_offset: position,
            last_epoch: None,
            high_watermark,
            error: None,
            diverged: None,
        }
    }
}

impl Consumer {
    pub(crate) fn new(client: Client, config: ConsumerConfig) -> Consumer {
        let config = ConsumerConfig {
            fetch_max_bytes: config.fetch_max_bytes.max(1),
            max_partition_fetch_bytes: config.max_partition_fetch_bytes.max(1),
            prefetch_bytes: config.prefetch_bytes.clamp(1, u32::MAX as usize),
            ..config
        };
        Consumer {
            client,
            config,
            partitions: BTreeMap::new(),
            fetcher: None,
            pending_error: None,
            group: None,
            listener: None,
            pending_resets: Vec::new(),
            fetch_counters: Arc::default(),
            records_consumed: 0,
            bytes_consumed: 0,
        }
    }

    /// What this consumer did so far; see [`ConsumerMetrics`].
    ///
    /// ```no_run
    /// # fn example(consumer: &meridian_client::Consumer) {
    /// let metrics = consumer.metrics();
    /// println!(
    ///     "{} records, {} fetches, lag {:?}",
    ///     metrics.records_consumed, metrics.fetch_requests, metrics.records_lag_max
    /// );
    /// # }
    /// ```
    pub fn metrics(&self) -> ConsumerMetrics {
        ConsumerMetrics {
            records_consumed: self.records_consumed,
            bytes_consumed: self.bytes_consumed,
            fetch_requests: self.fetch_counters.requests.load(Ordering::Relaxed),
            fetch_failures: self.fetch_counters.failures.load(Ordering::Relaxed),
            records_lag_max: self
                .partitions
                .values()
                .filter_map(PartitionState::lag)
                .max(),
        }
    }

    /// Assigns `partitions` of `topic`, replacing the earlier assignment of that topic.
    /// Partitions that stay assigned keep their position; new ones start at
    /// [`Offset::Latest`] unless [`seek`](Consumer::seek) is called.
    pub async fn assign(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        let n_partitions = self.client.partition_count(topic).await?;
        let mut wanted: Vec<u32> = partitions.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if let Some(bad) = wanted.iter().find(|p| **p >= n_partitions) {
            return Err(Error::broker(
                ErrorCode::InvalidPartition,
                format!(
                    "partition {bad} does not exist: topic `{topic}` has {n_partitions} partitions"
                ),
            ));
        }
        let new: Vec<(u32, i64)> = wanted
            .iter()
            .filter(|p| !self.partitions.contains_key(&tp(topic, **p)))
            .map(|p| (*p, LATEST_TIMESTAMP))
            .collect();
        let mut resolved = Vec::with_capacity(new.len());
        if !new.is_empty() {
            for (partition, position) in self.client.admin().list_offsets_many(topic, &new).await? {
                resolved.push((partition, position?));
            }
        }
        self.partitions
            .retain(|key, _| key.topic != topic || wanted.contains(&key.partition));
        for (partition, position) in resolved {
            self.partitions
                .insert(tp(topic, partition), PartitionState::resuming(position));
        }
        self.restart_fetching();
        Ok(())
    }

    /// Assigns every partition of `topic` and returns them.
    pub async fn assign_all(&mut self, topic: &str) -> Result<Vec<u32>> {
        let n_partitions = self.client.partition_count(topic).await?;
        let partitions: Vec<u32> = (0..n_partitions).collect();
        self.assign(topic, &partitions).await?;
        Ok(partitions)
    }

    /// Stops reading every partition of `topic`.
    pub fn unassign(&mut self, topic: &str) {
        self.partitions.retain(|key, _| key.topic != topic);
        self.restart_fetching();
    }

    /// The assigned partitions, sorted.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions
            .keys()
            .map(|key| (key.topic.clone(), key.partition))
            .collect()
    }

    /// Moves the position of an assigned partition. `Earliest`, `Latest` and
    /// `Timestamp` are resolved with the broker now. Restarts a partition stopped by
    /// an error (one [`pause`](Self::pause)d stays paused).
    pub async fn seek(&mut self, topic: &str, partition: u32, to: Offset) -> Result<()> {
        self.move_to(topic, partition, to, NO_LEADER_EPOCH).await
    }

    /// [`seek`](Self::seek), with the epoch of the record before the new position
    /// when it is known.
    async fn move_to(&mut self, topic: &str, partition: u32, to: Offset, epoch: i32) -> Result<()> {
        let key = tp(topic, partition);
        if !self.partitions.contains_key(&key) {
            return Err(Error::Config(format!(
                "cannot seek {topic}/{partition}: the partition is not assigned"
            )));
        }
        if let Offset::At(offset) = to {
            if offset < 0 {
                return Err(Error::Config(format!("offset {offset} is negative")));
            }
        }
        let found = self
            .client
            .admin()
            .position_of(topic, partition, to)
            .await?;
        if let Some(state) = self.partitions.get_mut(&key) {
            // The caller's epoch for a position it gave, the leader's for one it found.
            state.moved_to(Position {
                offset: found.offset,
                epoch: if epoch == NO_LEADER_EPOCH {
                    found.epoch
                } else {
                    epoch
                },
            });
        }
        self.restart_fetching();
        Ok(())
    }

    /// Moves to `offset` of an assigned partition, where the record before it was
    /// read from a batch of `leader_epoch`: for positions kept outside Meridian
    /// (stored with the application's own data), with
    /// [`ConsumerRecord::leader_epoch`] of the last record processed. The first
    /// fetch then checks that the log still holds what was read, as after a group
    /// commit: a log cut by a leader change since is reported as
    /// [`Error::LogTruncated`] or read on from the cut, per `auto_offset_reset`.
    ///
    /// ```no_run
    /// # async fn example(mut consumer: meridian_client::Consumer) -> meridian_client::Result<()> {
    /// // Saved with the output of the last record processed: offset 41, epoch 3.
    /// consumer.assign("orders", &[0]).await?;
    /// consumer.seek_with_epoch("orders", 0, 42, 3).await?;
    /// # Ok(()) }
    /// ```
    pub async fn seek_with_epoch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: i64,
        leader_epoch: i32,
    ) -> Result<()> {
        self.move_to(topic, partition, Offset::At(offset), leader_epoch)
            .await
    }

    /// Stops fetching `partitions` of `topic` (assigned ones) until
    /// [`resume`](Self::resume): `poll` returns none of their records meanwhile,
    /// while the other partitions go on, as with Kafka's `pause`. For an application
    /// whose work for some partitions is backed up. Positions stay where they are
    /// (records prefetched for them are fetched again after resuming); a seek does
    /// not resume; a group rebalance that takes a partition away and gives it back
    /// does.
    ///
    /// ```no_run
    /// # async fn example(mut consumer: meridian_client::Consumer) -> meridian_client::Result<()> {
    /// use std::time::Duration;
    /// consumer.pause("orders", &[0])?;
    /// let others = consumer.poll(Duration::from_secs(1)).await?; // none of partition 0
    /// consumer.resume("orders", &[0])?;
    /// # Ok(()) }
    /// ```
    pub fn pause(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        self.set_paused(topic, partitions, true)
    }

    /// Fetches `partitions` of `topic` again after [`pause`](Self::pause), from
    /// their positions.
    pub fn resume(&mut self, topic: &str, partitions: &[u32]) -> Result<()> {
        self.set_paused(topic, partitions, false)
    }

    /// The partitions [`pause`](Self::pause)d, sorted.
    pub fn paused(&self) -> Vec<(String, u32)> {
        self.partitions
            .iter()
            .filter(|(_, state)| state.paused)
            .map(|(key, _)| (key.topic.clone(), key.partition))
            .collect()
    }

    fn set_paused(&mut self, topic: &str, partitions: &[u32], paused: bool) -> Result<()> {
        let what = if paused { "pause" } else { "resume" };
        if let Some(p) = partitions
            .iter()
            .find(|p| !self.partitions.contains_key(&tp(topic, **p)))
        {
            return Err(Error::Config(format!(
                "cannot {what} {topic}/{p}: the partition is not assigned"
            )));
        }
        let mut changed = false;
        for p in partitions {
            if let Some(state) = self.partitions.get_mut(&tp(topic, *p)) {
                changed |= std::mem::replace(&mut state.paused, paused) != paused;
            }
        }
        if changed {
            // The fetcher reads a fixed set of partitions: start one for the new set.
            self.restart_fetching();
        }
        Ok(())
    }

    /// The offset of the next record [`poll`](Consumer::poll) returns for a partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.partitions
            .get(&tp(topic, partition))
            .map(|state| state.position)
    }

    /// The partition's high watermark as last seen in a fetch response (for lag and
    /// "caught up" checks): caught up when `position >= high_watermark`.
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Option<i64> {
        self.partitions
            .get(&tp(topic, partition))
            .and_then(|state| state.high_watermark)
    }

    /// Records of an assigned partition between the position and the high watermark
    /// last seen (`None` before a fetch brought one): what `poll` has yet to return.
    pub fn lag(&self, topic: &str, partition: u32) -> Option<i64> {
        self.partitions
            .get(&tp(topic, partition))
            .and_then(PartitionState::lag)
    }

    /// Returns prefetched records, or waits up to `timeout` for a fetch to bring some;
    /// an empty vector when none came. A partition error is returned as `Err` (after
    /// the records fetched together with it).
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        self.maintain_group().await?;
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        if self.partitions.is_empty() && self.group.is_none() {
            return Err(Error::Config("no partitions are assigned".into()));
        }
        if self.fetcher.is_none() {
            self.fetcher = self.start_fetcher();
        }
        loop {
            let assignment_ready = self.group.as_ref().map(|g| g.assignment_ready.clone());
            let assignment_changed = async {
                match &assignment_ready {
                    Some(ready) => ready.notified().await,
                    None => std::future::pending().await,
                }
            };
            let Some(fetcher) = self.fetcher.as_mut() else {
                // Nothing to fetch (no partitions, or all paused or stopped): wait
                // for the group to hand some out, or for the timeout.
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                    _ = assignment_changed => {}
                }
                self.apply_group_changes().await?;
                continue;
            };
            let received = tokio::select! {
                received = tokio::time::timeout_at(deadline, fetcher.results.recv()) => Some(received),
                _ = assignment_changed => None,
            };
            let Some(received) = received else {
                self.apply_group_changes().await?;
                continue;
            };
            let result = match received {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(Some(result)) => result,
                Ok(None) => {
                    // The task stopped (a request-level error it already reported, or
                    // nothing left to fetch); start afresh at the next poll.
                    self.fetcher = None;
                    tokio::time::sleep_until(deadline).await;
                    return Ok(Vec::new());
                }
            };
            fetcher.budget.add_permits(result.reserved_bytes);
            let records = self.apply(result);
            if !self.pending_resets.is_empty() {
                self.reset_out_of_range().await;
            }
            if !records.is_empty() {
                return Ok(records);
            }
            if let Some(error) = self.pending_error.take() {
                return Err(error);
            }
        }
    }

    /// Decodes the fetched batches, moves positions past them and returns their
    /// records; keeps the first error for the caller.
    fn apply(&mut self, result: FetchResult) -> Vec<ConsumerRecord> {
        let mut records = Vec::new();
        let mut restart = false;
        for fetched in result.partitions {
            let Some(state) = self.partitions.get_mut(&fetched.tp) else {
                continue;
            };
            // The fetcher starts from our positions and is replaced whenever they
            // change, so its results continue exactly where we are.
            debug_assert!(fetched
                .batches
                .first()
                .is_none_or(|(header, _)| header.last_offset() >= state.position));
            let undecodable =
                decode_batches(&fetched.tp, &fetched.batches, state.position, &mut records);
            self.bytes_consumed += fetched
                .batches
                .iter()
                .map(|(_, bytes)| bytes.len() as u64)
                .sum::<u64>();
            if fetched.high_watermark.is_some() {
                state.high_watermark = fetched.high_watermark;
            }
            if let Some((at, error)) = undecodable {
                // The fetcher has gone on past this batch: stop the partition here
                // and start fetching afresh from the positions we hold.
                state.position = at;
                state.epoch = NO_LEADER_EPOCH;
                state.stopped = true;
                self.pending_error.get_or_insert(error);
                restart = true;
                continue;
            }
            state.position = fetched.next_offset;
            if let Some(epoch) = fetched.last_epoch {
                state.epoch = epoch;
            }
            if let Some(diverging) = fetched.diverged {
                self.truncated(&fetched.tp, diverging);
                restart = true;
                continue;
            }
            if let Some(error) = fetched.error {
                state.stopped = true;
                let out_of_range = error.code() == Some(ErrorCode::OffsetOutOfRange);
                if out_of_range && self.config.auto_offset_reset != AutoOffsetReset::None {
                    self.pending_resets.push(fetched.tp);
                } else {
                    self.pending_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = result.error {
            self.pending_error.get_or_insert(error);
        }
        if restart {
            self.restart_fetching();
        }
        self.records_consumed += records.len() as u64;
        records
    }

    /// The leader's log diverged from what this partition's records were read from
    /// (see [`Error::LogTruncated`]): reads on from where it diverged, or with
    /// `auto_offset_reset = None` pauses the partition and reports it.
    fn truncated(&mut self, key: &TopicPartition, diverging: DivergingEpoch) {
        let Some(state) = self.partitions.get_mut(key) else {
            return;
        };
        // Later fetches name the epoch the leader has, which it can vouch for.
        state.epoch = diverging.epoch;
        if diverging.end_offset >= state.position {
            return;
        }
        let error = Error::LogTruncated {
            topic: key.topic.clone(),
            partition: key.partition,
            position: state.position,
            truncated_to: diverging.end_offset,
        };
        if self.config.auto_offset_reset == AutoOffsetReset::None {
            state.stopped = true;
            self.pending_error.get_or_insert(error);
        } else {
            tracing::warn!(%error, "reading on from where the leader's log diverged");
            state.position = diverging.end_offset;
        }
    }

    /// Applies what the membership task reported, then resumes fetching.
    async fn apply_group_changes(&mut self) -> Result<()> {
        self.maintain_group().await?;
        if self.fetcher.is_none() {
            self.fetcher = self.start_fetcher();
        }
        Ok(())
    }

    /// Moves partitions found out of range to their log start or end, per
    /// `auto_offset_reset`, and resumes fetching. A failed lookup leaves the partition
    /// stopped and is returned by the next `poll`.
    async fn reset_out_of_range(&mut self) {
        let to = match self.config.auto_offset_reset {
            AutoOffsetReset::Earliest => Offset::Earliest,
            AutoOffsetReset::Latest => Offset::Latest,
            AutoOffsetReset::None => return,
        };
        let admin = self.client.admin();
        for key in std::mem::take(&mut self.pending_resets) {
            match admin.position_of(&key.topic, key.partition, to).await {
                Ok(position) => {
                    if let Some(state) = self.partitions.get_mut(&key) {
                        tracing::info!(
                            topic = %key.topic,
                            partition = key.partition,
                            from = state.position,
                            to = position.offset,
                            "position out of range; reset per auto_offset_reset"
                        );
                        state.moved_to(position);
                    }
                }
                Err(e) => {
                    self.pending_error.get_or_insert(e);
                }
            }
        }
        // The running fetcher skips stopped partitions; start one with the new positions.
        self.fetcher = self.start_fetcher();
    }

    fn restart_fetching(&mut self) {
        self.fetcher = None;
    }

    fn start_fetcher(&self) -> Option<Fetcher> {
        let positions: BTreeMap<TopicPartition, i64> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.fetching())
            .map(|(key, state)| (key.clone(), state.position))
            .collect();
        if positions.is_empty() {
            return None;
        }
        let read_epochs: HashMap<TopicPartition, i32> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.fetching() && state.epoch != NO_LEADER_EPOCH)
            .map(|(key, state)| (key.clone(), state.epoch))
            .collect();
        let budget = Arc::new(Semaphore::new(self.config.prefetch_bytes));
        let (sender, results) = mpsc::channel(RESULT_QUEUE_LEN);
        let task = tokio::spawn(run_fetcher(
            self.client.clone(),
            self.config.clone(),
            positions,
            read_epochs,
            budget.clone(),
            sender,
            self.fetch_counters.clone(),
        ));
        Some(Fetcher {
            task,
            results,
            budget,
        })
    }
}

/// Consumer groups.
impl Consumer {
    /// Joins `config.group_id` and consumes `topics` as the group assigns them.
    /// Partitions start at the group's committed offsets (or per
    /// [`ConsumerConfig::auto_offset_reset`] when none); assignments arrive and are
    /// applied inside [`poll`](Consumer::poll). Replaces any manual assignment.
    ///
    /// ```no_run
    /// # async fn example(client: meridian_client::Client) -> meridian_client::Result<()> {
    /// use std::time::Duration;
    /// use meridian_client::{ConsumerConfig, GroupConfig};
    /// let mut consumer = client.consumer(ConsumerConfig::default());
    /// consumer.subscribe(GroupConfig::new("billing"), &["orders"]).await?;
    /// loop {
    ///     for record in consumer.poll(Duration::from_secs(1)).await? {
    ///         println!("{}/{}@{}", record.topic, record.partition, record.offset);
    ///     }
    ///     // Auto-commit is on by default; or commit explicitly after processing:
    ///     consumer.commit().await?;
    /// }
    /// # }
    /// ```
    pub async fn subscribe(&mut self, config: GroupConfig, topics: &[&str]) -> Result<()> {
        if topics.is_empty() {
            return Err(Error::Config("subscribe needs at least one topic".into()));
        }
        if config.group_id.is_empty() {
            return Err(Error::Config("group_id must not be empty".into()));
        }
        if let Some(old) = self.group.take() {
            old.leave(&self.client).await?;
        }
        self.partitions.clear();
        self.restart_fetching();
        let topics: BTreeSet<String> = topics.iter().map(|t| t.to_string()).collect();
        self.group = Some(Membership::start(self.client.clone(), config, topics));
        Ok(())
    }

    /// Called from `poll` as partitions are assigned, revoked or lost.
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(std::sync::Mutex::new(listener));
    }

    /// This consumer's member id in its group, once joined.
    pub fn member_id(&self) -> Option<String> {
        let group = self.group.as_ref()?;
        let id = group::lock(&group.state).member_id.clone();
        (!id.is_empty()).then_some(id)
    }

    /// Commits the current position of every owned partition (the offset after the
    /// last record `poll` returned) and waits for the broker to store it. A commit
    /// the group's coordinator did not answer (it failed, or the group moved) is
    /// sent again to the next coordinator until `ClientConfig::request_timeout`
    /// runs out, as Kafka's `commitSync` does; committing the same offsets twice
    /// does no harm.
    pub async fn commit(&mut self) -> Result<()> {
        let positions = self.positions();
        self.commit_positions(positions).await
    }

    /// Starts committing the current positions without waiting; the returned handle
    /// gives the outcome.
    pub fn commit_async(&mut self) -> tokio::task::JoinHandle<Result<()>> {
        let positions = self.positions();
        let client = self.client.clone();
        let target = self.commit_target();
        tokio::spawn(async move {
            let (group_id, member_id, epoch) = target?;
            group::commit(&client, &group_id, &member_id, epoch, &positions).await
        })
    }

    /// Commits explicit offsets, each the next offset to consume, with an optional
    /// metadata string stored beside it (`Admin::committed_offsets` shows it).
    pub async fn commit_offsets(&mut self, offsets: &[OffsetCommit]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (group_id, member_id, epoch) = self.commit_target()?;
        self.wait_for_auto_commit().await;
        group::commit_with_metadata(&self.client, &group_id, &member_id, epoch, offsets).await
    }

    async fn commit_positions(
        &mut self,
        offsets: BTreeMap<TopicPartition, Position>,
    ) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (group_id, member_id, epoch) = self.commit_target()?;
        self.wait_for_auto_commit().await;
        group::commit(&self.client, &group_id, &member_id, epoch, &offsets).await
    }

    async fn wait_for_auto_commit(&mut self) {
        if let Some(handle) = self.group.as_mut().and_then(|g| g.auto_commit.take()) {
            if let Ok(Err(e)) = handle.await {
                tracing::debug!(error = %e, "auto-commit failed");
            }
        }
    }

    /// The group's committed offset of a partition.
    pub async fn committed(&self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let group = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Config("not subscribed to a group".into()))?;
        let committed = self
            .client
            .admin()
            .committed_offsets(&group.config.group_id, Some(topic))
            .await?;
        Ok(committed
            .into_iter()
            .find(|c| c.partition == partition)
            .map(|c| c.offset))
    }

    /// Commits (with auto-commit on), leaves the group so its partitions move on at
    /// once (static members stay until their session expires) and stops.
    pub async fn close(mut self) -> Result<()> {
        let Some(mut group) = self.group.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if let Some(handle) = group.auto_commit.as_mut() {
            let _ = handle.await;
        }
        if group.config.enable_auto_commit {
            let positions = self.positions();
            let (member_id, epoch) = {
                let state = group::lock(&group.state);
                (state.member_id.clone(), state.member_epoch)
            };
            if !member_id.is_empty() && !positions.is_empty() {
                result = group::commit(
                    &self.client,
                    &group.config.group_id,
                    &member_id,
                    epoch,
                    &positions,
                )
                .await;
            }
        }
        group.leave(&self.client).await?;
        result
    }

    fn positions(&self) -> BTreeMap<TopicPartition, Position> {
        self.partitions
            .iter()
            .map(|(tp, state)| (tp.clone(), state.committable()))
            .collect()
    }

    fn commit_target(&self) -> Result<(String, String, i32)> {
        let group = self
            .group
            .as_ref()
            .ok_or_else(|| Error::Config("commit needs a group: call subscribe first".into()))?;
        let state = group::lock(&group.state);
        if state.member_id.is_empty() {
            return Err(Error::broker(
                ErrorCode::UnknownMemberId,
                "not a member of the group right now (joining or rejoining)",
            ));
        }
        Ok((
            group.config.group_id.clone(),
            state.member_id.clone(),
            state.member_epoch,
        ))
    }

    /// Applies what the membership task reported: a lost membership, a new
    /// assignment (revoke first, then assign), and auto-commit when due.
    async fn maintain_group(&mut self) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let (lost, assignment, error, outside) = {
            let mut state = group::lock(&group.state);
            state.last_poll = Some(Instant::now());
            // Cleared below once the partitions are dropped: the membership task
            // waits for that before joining again.
            let lost = state.lost;
            if lost {
                state.owned.clear();
            }
            let outside = state.member_id.is_empty();
            (lost, state.assignment.take(), state.error.take(), outside)
        };
        if outside {
            // Wakes a membership task that left after max_poll_interval: rejoin.
            group.sync_now.notify_one();
        }
        if let Some(error) = error {
            return Err(error);
        }
        if lost {
            let auto_commit = group.config.enable_auto_commit;
            if !self.partitions.is_empty() {
                if auto_commit {
                    self.save_lost_positions().await;
                }
                let gone: Vec<(String, u32)> = self
                    .partitions
                    .keys()
                    .map(|k| (k.topic.clone(), k.partition))
                    .collect();
                self.partitions.clear();
                self.restart_fetching();
                self.tell_listener(|l| l.on_lost(&gone));
            }
            if let Some(group) = &self.group {
                group::lock(&group.state).lost = false;
                group.sync_now.notify_one();
            }
        }
        let Some(assignment) = assignment else {
            return self.auto_commit_if_due().await;
        };
        let owned: BTreeSet<TopicPartition> = self.partitions.keys().cloned().collect();
        let revoked: Vec<TopicPartition> = owned.difference(&assignment).cloned().collect();
        let added: Vec<TopicPartition> = assignment.difference(&owned).cloned().collect();
        let auto_commit = self
            .group
            .as_ref()
            .is_some_and(|g| g.config.enable_auto_commit);
        if !revoked.is_empty() {
            if auto_commit {
                let positions: BTreeMap<TopicPartition, Position> = revoked
                    .iter()
                    .filter_map(|tp| {
                        self.partitions
                            .get(tp)
                            .map(|s| (tp.clone(), s.committable()))
                    })
                    .collect();
                if let Err(e) = self.commit_positions(positions).await {
                    tracing::warn!(error = %e, "commit before revoking partitions failed");
                }
            }
            for tp in &revoked {
                self.partitions.remove(tp);
            }
            let names = names(&revoked);
            self.tell_listener(|l| l.on_revoked(&names));
        }
        let mut failed = None;
        if !added.is_empty() {
            match self.starting_positions(&added).await {
                Ok(positions) => {
                    for (tp, position) in positions {
                        self.partitions
                            .insert(tp, PartitionState::resuming(position));
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        let group = self.group.as_ref().expect("checked above");
        group::lock(&group.state).owned = self.partitions.keys().cloned().collect();
        group.sync_now.notify_one();
        self.restart_fetching();
        if let Some(e) = failed {
            // Not taken: tell the group at the next sync, and the caller now.
            return Err(e);
        }
        if !added.is_empty() {
            let names = names(&added);
            self.tell_listener(|l| l.on_assigned(&names));
        }
        Ok(())
    }

    fn tell_listener(&mut self, call: impl FnOnce(&mut dyn RebalanceListener)) {
        if let Some(listener) = self.listener.as_mut() {
            let listener = listener.get_mut().unwrap_or_else(|p| p.into_inner());
            call(listener.as_mut());
        }
    }

    /// After the membership was lost, commits the positions of the partitions it
    /// held that are ahead of the group's committed offsets, as a commit from outside
    /// the group, which the coordinator takes only while the group has no member.
    ///
    /// That is the case when the group's only member was removed (its session expired,
    /// say while the process was stopped), or when the membership went with its
    /// coordinator (a broker that does not keep memberships: those from before
    /// Meridian kept them in `__consumer_offsets`); then the records read since the
    /// last auto-commit are not read again after rejoining.
    /// While any member is in the group (ours timed out and the partitions moved on),
    /// the commit is refused, as Kafka refuses a zombie's. Positions behind what is
    /// committed are left out, so this never moves a group back.
    async fn save_lost_positions(&mut self) {
        let Some(group) = self.group.as_ref() else {
            return;
        };
        let group_id = group.config.group_id.clone();
        let mut ahead: BTreeMap<TopicPartition, Position> = self
            .partitions
            .iter()
            .map(|(tp, state)| (tp.clone(), state.committable()))
            .collect();
        let committed = match self.committed_positions(ahead.keys()).await {
            Ok(committed) => committed,
            Err(e) => {
                tracing::debug!(group = %group_id, error = %e, "cannot read committed offsets after losing the membership; not committing");
                return;
            }
        };
        ahead.retain(|key, at| committed.get(key).is_none_or(|c| at.offset > c.offset));
        if ahead.is_empty() {
            return;
        }
        self.wait_for_auto_commit().await;
        match group::commit(&self.client, &group_id, "", -1, &ahead).await {
            Ok(()) => {
                tracing::info!(group = %group_id, partitions = ahead.len(), "committed the positions of the lost membership (the group had no member)")
            }
            Err(e) => {
                tracing::debug!(group = %group_id, error = %e, "positions of the lost membership not committed")
            }
        }
    }

    /// The group's committed positions in the topics of `partitions` (all of each
    /// topic's partitions that have one).
    async fn committed_positions(
        &self,
        partitions: impl IntoIterator<Item = &TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, Position>> {
        let group = self.group.as_ref().expect("called for group members only");
        let admin = self.client.admin();
        let topics: BTreeSet<&str> = partitions.into_iter().map(|tp| tp.topic.as_str()).collect();
        let mut committed = BTreeMap::new();
        for topic in topics {
            for c in admin
                .committed_offsets(&group.config.group_id, Some(topic))
                .await?
            {
                let at = Position {
                    offset: c.offset,
                    epoch: c.leader_epoch.unwrap_or(NO_LEADER_EPOCH),
                };
                committed.insert(tp(&c.topic, c.partition), at);
            }
        }
        Ok(committed)
    }

    /// Committed positions of `partitions`, or the reset position where none exists.
    async fn starting_positions(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Position)>> {
        let group = self.group.as_ref().expect("called for group members only");
        let admin = self.client.admin();
        let committed = self.committed_positions(partitions).await?;
        let mut positions = Vec::with_capacity(partitions.len());
        for key in partitions {
            let position = match committed.get(key) {
                Some(at) => *at,
                None => {
                    let at = match self.config.auto_offset_reset {
                        AutoOffsetReset::Earliest => Offset::Earliest,
                        AutoOffsetReset::Latest => Offset::Latest,
                        AutoOffsetReset::None => {
                            return Err(Error::Config(format!(
                                "group `{}` has no committed offset for {}/{} and auto_offset_reset is none",
                                group.config.group_id, key.topic, key.partition
                            )))
                        }
                    };
                    admin.position_of(&key.topic, key.partition, at).await?
                }
            };
            positions.push((key.clone(), position));
        }
        Ok(positions)
    }

    async fn auto_commit_if_due(&mut self) -> Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        if !group.config.enable_auto_commit
            || group.last_auto_commit.elapsed() < group.config.auto_commit_interval
        {
            return Ok(());
        }
        group.last_auto_commit = Instant::now();
        if self.partitions.is_empty() {
            return Ok(());
        }
        // In the background: a slow commit must not stall consumption. A failed one
        // is retried at the next interval with newer positions.
        if self
            .group
            .as_ref()
            .and_then(|g| g.auto_commit.as_ref())
            .is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        self.wait_for_auto_commit().await;
        let handle = self.commit_async();
        if let Some(group) = self.group.as_mut() {
            group.auto_commit = Some(handle);
        }
        Ok(())
    }
}

fn names(tps: &[TopicPartition]) -> Vec<(String, u32)> {
    tps.iter().map(|k| (k.topic.clone(), k.partition)).collect()
}

fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition {
        topic: topic.to_string(),
        partition,
    }
}

/// The background fetch loop: partitions are grouped by their leader, with one fetch
/// request in flight per leader (so a partition has at most one, and its records come
/// in order), each waiting for budget first. A partition whose leader moved or is
/// unknown waits for fresh metadata and a backoff, then goes to the new leader from
/// the same position.
async fn run_fetcher(
    client: Client,
    config: ConsumerConfig,
    mut positions: BTreeMap<TopicPartition, i64>,
    mut read_epochs: HashMap<TopicPartition, i32>,
    budget: Arc<Semaphore>,
    results: mpsc::Sender<FetchResult>,
    counters: Arc<FetchCounters>,
) {
    let reserve = (config.fetch_max_bytes as usize).min(config.prefetch_bytes);
    let request_timeout = client.config().request_timeout + config.fetch_max_wait;
    // Consecutive failed requests, for reporting; per-broker ones, for backoff.
    let mut failures = 0u32;
    let mut broker_failures: HashMap<BrokerId, u32> = HashMap::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut requests_to: HashMap<BrokerId, usize> = HashMap::new();
    let mut busy: BTreeSet<TopicPartition> = BTreeSet::new();
    let mut waiting_since: Option<u32> = None;
    loop {
        if positions.is_empty() && in_flight.is_empty() {
            return;
        }
        let idle: Vec<TopicPartition> = positions
            .keys()
            .filter(|tp| !busy.contains(*tp))
            .cloned()
            .collect();
        let mut waiting_for_leader = false;
        if !idle.is_empty() {
            let mut topics: Vec<String> = idle.iter().map(|tp| tp.topic.clone()).collect();
            topics.dedup();
            if let Err(e) = client.ensure_metadata(&topics).await {
                tracing::debug!(error = %e, "metadata refresh for the consumer failed");
            }
            // Each fetch carries the leader epoch the metadata names, so a broker that
            // has lost or not yet taken up the leadership refuses it (KIP-320's fencing)
            // instead of serving from a log that is no longer, or not yet, the leader's.
            let (routed, epochs, reasons) = {
                let cache = client.metadata_cache();
                let routed = route(idle, |tp| cache.leader(&tp.topic, tp.partition));
                let reasons: Vec<String> = routed
                    .missing
                    .iter()
                    .map(|(tp, code)| cache.missing_reason(&tp.topic, *code))
                    .collect();
                let epochs: HashMap<TopicPartition, i32> = routed
                    .by_broker
                    .values()
                    .flatten()
                    .filter_map(|tp| match cache.leader(&tp.topic, tp.partition) {
                        LeaderLookup::Known { epoch, .. } => Some((tp.clone(), epoch)),
                        _ => None,
                    })
                    .collect();
                (routed, epochs, reasons)
            };
            if !routed.missing.is_empty() {
                let mut result = FetchResult::default();
                for ((tp, code), why) in routed.missing.into_iter().zip(reasons) {
                    let position = positions.remove(&tp).unwrap_or_default();
                    let error = Error::broker(
                        code,
                        format!("{}/{} at offset {position}: {why}", tp.topic, tp.partition),
                    );
                    result.partitions.push(PartitionFetch {
                        error: Some(error),
                        ..PartitionFetch::stopped(tp, position, None)
                    });
                }
                if results.send(result).await.is_err() {
                    return;
                }
            }
            waiting_for_leader = !routed.unroutable.is_empty();
            let n_destinations = routed.by_broker.len().max(1);
            // Against one leader, the whole reserve; against several, or in several
            // requests, a share each, so the prefetch bound holds.
            let per_request = (reserve / (n_destinations * FETCHES_PER_BROKER)).max(1);
            for (broker, tps) in routed.by_broker {
                let delay = match broker_failures.get(&broker) {
                    Some(n) if *n > 0 => fetch_backoff(*n),
                    _ => Duration::ZERO,
                };
                let requests = requests_to.entry(broker).or_default();
                let free = FETCHES_PER_BROKER.saturating_sub(*requests).max(1);
                for share in deal(tps, free) {
                    *requests += 1;
                    let request_positions: BTreeMap<TopicPartition, FetchFrom> = share
                        .iter()
                        .filter_map(|tp| {
                            let from = FetchFrom {
                                offset: *positions.get(tp)?,
                                leader_epoch: epochs.get(tp).copied().unwrap_or(NO_LEADER_EPOCH),
                                read_epoch: read_epochs.get(tp).copied().unwrap_or(NO_LEADER_EPOCH),
                            };
                            Some((tp.clone(), from))
                        })
                        .collect();
                    busy.extend(share.iter().cloned());
                    let request = fetch_request(&config, &request_positions, per_request as u32);
                    let client = client.clone();
                    let budget = budget.clone();
                    let counters = counters.clone();
                    in_flight.spawn(async move {
                        tokio::time::sleep(delay).await;
                        let Ok(permit) = budget.acquire_many(per_request as u32).await else {
                            return (broker, share, Err(Error::Closed), 0);
                        };
                        permit.forget();
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        let response = match client
                            .request_to_with_timeout(broker, request, request_timeout)
                            .await
                        {
                            Ok(Response::Fetch(response)) => Ok(response),
                            Ok(other) => Err(unexpected(ApiKey::Fetch, &other)),
                            Err(e) => Err(e),
                        };
                        (broker, share, response, per_request)
                    });
                }
            }
        }
        if waiting_for_leader {
            let n = waiting_since.get_or_insert(0);
            *n += 1;
        } else {
            waiting_since = None;
        }
        let finished = if in_flight.is_empty() {
            if let Some(n) = waiting_since {
                // Only partitions without a leader: wait, then look again.
                tokio::time::sleep(fetch_backoff(n)).await;
                client.metadata_cache().mark_stale();
            }
            continue;
        } else if let Some(n) = waiting_since {
            tokio::select! {
                finished = in_flight.join_next() => finished,
                () = tokio::time::sleep(fetch_backoff(n)) => {
                    client.metadata_cache().mark_stale();
                    continue;
                }
            }
        } else {
            in_flight.join_next().await
        };
        let Some(Ok((broker, tps, response, reserved))) = finished else {
            // A fetch task panicked or was cancelled: nothing sensible to go on with.
            return;
        };
        for tp in &tps {
            busy.remove(tp);
        }
        if let Some(requests) = requests_to.get_mut(&broker) {
            *requests = requests.saturating_sub(1);
        }
        let response = match response {
            Ok(response) => response,
            Err(Error::Closed) => return,
            Err(error) => {
                budget.add_permits(reserved);
                counters.failures.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                *broker_failures.entry(broker).or_default() += 1;
                let action = client.broker_failed(broker, &error);
                let retriable = action != OnError::Fail;
                if !retriable || failures >= QUIET_FETCH_FAILURES {
                    let report = FetchResult {
                        error: Some(error.clone()),
                        ..FetchResult::default()
                    };
                    if results.send(report).await.is_err() || !retriable {
                        return;
                    }
                    failures = 0;
                }
                tracing::debug!(%error, broker, "fetch failed; retrying");
                continue;
            }
        };
        failures = 0;
        // Only the partitions of this request; the others are in flight elsewhere.
        let mut asked: BTreeMap<TopicPartition, i64> = tps
            .iter()
            .filter_map(|tp| positions.get(tp).map(|p| (tp.clone(), *p)))
            .collect();
        let (result, stalled, moved) = read_response(&response, &mut asked, reserved);
        for tp in &tps {
            match asked.get(tp) {
                Some(position) => {
                    positions.insert(tp.clone(), *position);
                }
                None => {
                    positions.remove(tp);
                }
            }
        }
        for (tp, code) in &moved {
            client.partition_failed(&tp.topic, tp.partition, &Error::broker(*code, ""));
        }
        for fetched in &result.partitions {
            if let Some(epoch) = fetched.last_epoch {
                read_epochs.insert(fetched.tp.clone(), epoch);
            }
        }
        // Give back the budget the response did not use.
        budget.add_permits(reserved - result.reserved_bytes);
        if results.send(result).await.is_err() {
            return;
        }
        let broker_failed = broker_failures.entry(broker).or_default();
        if stalled {
            // Only retriable partition errors came back: don't hammer the broker.
            *broker_failed += 1;
        } else {
            *broker_failed = 0;
        }
    }
}

/// Deals `items` round-robin into at most `n` non-empty hands.
fn deal<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let n = n.clamp(1, items.len().max(1));
    let mut hands: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        hands[i % n].push(item);
    }
    hands.retain(|hand| !hand.is_empty());
    hands
}

/// Pause before the `n`th consecutive retry of a fetch.
fn fetch_backoff(n: u32) -> Duration {
    crate::config::backoff(FETCH_BACKOFF_MIN, FETCH_BACKOFF_MAX, n)
}

/// Where a fetch of one partition starts.
#[derive(Clone, Copy, Debug)]
struct FetchFrom {
    offset: i64,
    /// The leader epoch the client's metadata gives the partition.
    leader_epoch: i32,
    /// The leader epoch of the last batch read.
    read_epoch: i32,
}

/// A fetch of each partition from its position, with the leader epoch the client's
/// metadata gives it and the epoch of the last batch read ([`NO_LEADER_EPOCH`] for
/// none).
fn fetch_request(
    config: &ConsumerConfig,
    positions: &BTreeMap<TopicPartition, FetchFrom>,
    max_bytes: u32,
) -> Request {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (key, from) in positions {
        let partition = FetchPartition {
            current_leader_epoch: from.leader_epoch,
            last_fetched_epoch: from.read_epoch,
            ..FetchPartition::new(
                key.partition,
                from.offset,
                config.max_partition_fetch_bytes.min(max_bytes),
            )
        };
        match topics.last_mut() {
            Some(topic) if topic.name == key.topic => topic.partitions.push(partition),
            _ => topics.push(FetchTopic {
                name: key.topic.clone(),
                id: meridian_wire::TopicId::NONE,
                partitions: vec![partition],
            }),
        }
    }
    Request::Fetch(FetchRequest {
        max_wait_ms: u32::try_from(config.fetch_max_wait.as_millis()).unwrap_or(u32::MAX),
        min_bytes: config.fetch_min_bytes,
        max_bytes,
        topics,
        filter: config.filter.clone(),
        replica_id: CONSUMER_REPLICA_ID,
    })
}

/// Turns a fetch response into records, advancing `positions`; partitions that fail
/// for good are removed from `positions`. Returns whether no partition made progress
/// because of retriable errors (so the caller should back off), and the partitions
/// whose errors say their leader moved (the caller refreshes metadata for them).
fn read_response(
    response: &FetchResponse,
    positions: &mut BTreeMap<TopicPartition, i64>,
    reserve: usize,
) -> (FetchResult, bool, Vec<(TopicPartition, ErrorCode)>) {
    let mut moved = Vec::new();
    let mut result = FetchResult::default();
    let mut bytes = 0usize;
    let mut retriable_errors = 0usize;
    let mut progressed = false;
    for topic in &response.topics {
        for answer in &topic.partitions {
            let key = tp(&topic.name, answer.partition);
            let Some(position) = positions.get(&key).copied() else {
                continue;
            };
            let high_watermark = Some(answer.high_watermark).filter(|hw| *hw >= 0);
            if !answer.error.is_ok() {
                if answer.error.is_retriable() {
                    retriable_errors += 1;
                    if on_error(&Error::broker(answer.error, "")) == OnError::RefreshAndRetry {
                        moved.push((key.clone(), answer.error));
                    }
                    tracing::debug!(topic = %key.topic, partition = key.partition, error = %answer.error, "fetch partition error; retrying");
                    continue;
                }
                let detail = if answer.message.is_empty() {
                    answer.error.description().to_string()
                } else {
                    answer.message.clone()
                };
                let error = Error::broker(
                    answer.error,
                    format!(
                        "{}/{} at offset {position}: {detail}",
                        key.topic, key.partition
                    ),
                );
                positions.remove(&key);
                result.partitions.push(PartitionFetch {
                    error: Some(error),
                    ..PartitionFetch::stopped(key, position, high_watermark)
                });
                progressed = true;
                continue;
            }
            if let Some(diverging) = answer.diverging_epoch {
                // The consumer decides where to go on from; a new fetcher takes it up.
                positions.remove(&key);
                result.partitions.push(PartitionFetch {
                    diverged: Some(diverging),
                    ..PartitionFetch::stopped(key, position, high_watermark)
                });
                progressed = true;
                continue;
            }
            bytes += answer.records.len();
            let Framed {
                batches,
                next_offset,
                last_epoch,
                error,
            } = frame_partition(&key, answer.records.clone(), position);
            if next_offset != position || error.is_some() {
                progressed = true;
            }
            if error.is_some() {
                positions.remove(&key);
            } else {
                positions.insert(key.clone(), next_offset);
            }
            result.partitions.push(PartitionFetch {
                tp: key,
                batches,
                next_offset,
                last_epoch,
                high_watermark,
                error,
                diverged: None,
            });
        }
    }
    result.reserved_bytes = bytes.min(reserve);
    let stalled = !progressed && retriable_errors > 0;
    (result, stalled, moved)
}

/// What [`frame_partition`] made of one partition's fetched bytes.
struct Framed {
    /// The batches to decode.
    batches: Vec<(BatchHeader, Bytes)>,
    /// The next position.
    next_offset: i64,
    /// The leader epoch of the last batch at or past the position (control batches
    /// too).
    last_epoch: Option<i32>,
    /// An error that stops the partition.
    error: Option<Error>,
}

/// Frames the batches fetched for one partition starting at `position`: checks each
/// batch's header and CRC, and drops batches wholly below the position (a fetch
/// returns whole batches) and control batches.
fn frame_partition(key: &TopicPartition, bytes: Bytes, mut position: i64) -> Framed {
    let mut batches = Vec::new();
    let mut last_epoch = None;
    let had_bytes = !bytes.is_empty();
    let start = position;
    for batch in split_fetched_batches(bytes) {
        let (header, batch) = match batch {
            Ok(ok) => ok,
            Err(e) => {
                let error = Error::Protocol(format!(
                    "{}/{}: corrupt batch at offset {position}: {e}",
                    key.topic, key.partition
                ));
                return Framed {
                    batches,
                    next_offset: position,
                    last_epoch,
                    error: Some(error),
                };
            }
        };
        if header.last_offset() < position {
            continue;
        }
        position = header.last_offset() + 1;
        last_epoch = Some(header.partition_leader_epoch);
        if !header.is_control() {
            batches.push((header, batch));
        }
    }
    if had_bytes && position == start {
        // Bytes came back but not one whole batch at our position: a batch larger
        // than the fetch size, which the broker should never send cut.
        let error = Error::Protocol(format!(
            "{}/{}: fetch at offset {start} returned no complete batch; raise max_partition_fetch_bytes",
            key.topic, key.partition
        ));
        return Framed {
            batches,
            next_offset: position,
            last_epoch,
            error: Some(error),
        };
    }
    Framed {
        batches,
        next_offset: position,
        last_epoch,
        error: None,
    }
}

/// Decodes framed batches into `records`, skipping records below `position`. On a
/// batch that cannot be decoded (its CRC held, yet it does not decompress or parse),
/// stops and returns that batch's first offset still wanted, with the error.
fn decode_batches(
    key: &TopicPartition,
    batches: &[(BatchHeader, Bytes)],
    position: i64,
    records: &mut Vec<ConsumerRecord>,
) -> Option<(i64, Error)> {
    // One copy of the name for all the records, not one each.
    let topic: Arc<str> = Arc::from(key.topic.as_str());
    for (header, batch) in batches {
        let decoded = match decode_records(header, batch) {
            Ok(decoded) => decoded,
            Err(e) => {
                let error = Error::Protocol(format!(
                    "{}/{}: cannot decode batch at offset {}: {e}",
                    key.topic, key.partition, header.base_offset
                ));
                return Some((header.base_offset.max(position), error));
            }
        };
        records.extend(
            decoded
                .into_iter()
                .filter(|record| record.offset >= position)
                .map(|record| ConsumerRecord {
                    topic: topic.clone(),
                    partition: key.partition,
                    leader_epoch: header.partition_leader_epoch,
                    offset: record.offset,
                    timestamp: record.timestamp,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                }),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_wire::batch::{
        encode_batch, patch_batch, Compression, NewRecord, ProducerIdentity,
    };
    use meridian_wire::messages::{FetchPartitionResponse, FetchTopicResponse};

    /// A batch of `n` records placed at `base_offset`, as the broker stores it.
    fn batch(base_offset: i64, n: usize, compression: Compression) -> Bytes {
        let records: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord {
                timestamp: 1000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{}", base_offset + i as i64))),
                headers: vec![],
            })
            .collect();
        let encoded = encode_batch(&records, compression, ProducerIdentity::NONE).unwrap();
        let mut bytes = encoded.to_vec();
        patch_batch(&mut bytes, base_offset, 0);
        Bytes::from(bytes)
    }

    fn key() -> TopicPartition {
        tp("t", 0)
    }

    fn offsets(records: &[ConsumerRecord]) -> Vec<i64> {
        records.iter().map(|r| r.offset).collect()
    }

    /// What the fetcher and then `poll` make of one partition's fetched bytes.
    fn decode_partition(
        key: &TopicPartition,
        bytes: Bytes,
        position: i64,
    ) -> (Vec<ConsumerRecord>, i64, Option<Error>) {
        let Framed {
            batches,
            next_offset: next,
            error,
            ..
        } = frame_partition(key, bytes, position);
        let mut records = Vec::new();
        match decode_batches(key, &batches, position, &mut records) {
            Some((at, error)) => (records, at, Some(error)),
            None => (records, next, error),
        }
    }

    #[test]
    fn a_batch_that_does_not_decode_stops_the_partition_at_its_offset() {
        let mut bytes = batch(0, 3, Compression::None).to_vec();
        // A zstd batch relabelled lz4, CRC made right again: it frames, and only
        // decoding finds it bad.
        let mut bad = batch(3, 4, Compression::Zstd).to_vec();
        bad[22] = (bad[22] & !0x07) | 0x03;
        let crc = crc32c::crc32c(&bad[21..]);
        bad[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&batch(7, 2, Compression::None));

        let Framed {
            batches,
            next_offset: next,
            error,
            ..
        } = frame_partition(&key(), Bytes::from(bytes.clone()), 1);
        assert!(error.is_none());
        assert_eq!(batches.len(), 3);
        assert_eq!(next, 9);

        let (records, at, error) = decode_partition(&key(), Bytes::from(bytes), 1);
        assert_eq!(offsets(&records), vec![1, 2]);
        assert_eq!(at, 3);
        let error = error.unwrap().to_string();
        assert!(
            error.contains("t/0: cannot decode batch at offset 3"),
            "{error}"
        );
    }

    #[test]
    fn records_below_the_position_are_skipped() {
        let mut bytes = batch(0, 5, Compression::None).to_vec();
        bytes.extend_from_slice(&batch(5, 3, Compression::Zstd));
        let (records, next, error) = decode_partition(&key(), Bytes::from(bytes), 3);
        assert!(error.is_none());
        assert_eq!(offsets(&records), vec![3, 4, 5, 6, 7]);
        assert_eq!(next, 8);
        assert_eq!(records[2].value.as_deref(), Some(&b"v5"[..]));
        assert_eq!(records[0].key.as_deref(), Some(&b"k3"[..]));
    }

    #[test]
    fn a_truncated_trailing_batch_is_left_for_the_next_fetch() {
        let mut bytes = batch(10, 2, Compression::Lz4).to_vec();
        let second = batch(12, 2, Compression::None);
        bytes.extend_from_slice(&second[..second.len() - 3]);
        let (records, next, error) = decode_partition(&key(), Bytes::from(bytes), 10);
        assert!(error.is_none());
        assert_eq!(offsets(&records), vec![10, 11]);
        assert_eq!(next, 12);
    }

    #[test]
    fn no_progress_and_corruption_are_errors() {
        let whole = batch(0, 2, Compression::None);
        let cut = whole.slice(..whole.len() - 1);
        let (_, next, error) = decode_partition(&key(), cut, 0);
        assert_eq!(next, 0);
        assert!(matches!(error, Some(Error::Protocol(_))));

        let mut corrupt = whole.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let (_, _, error) = decode_partition(&key(), Bytes::from(corrupt), 0);
        assert!(matches!(error, Some(Error::Protocol(_))));

        let (records, next, error) = decode_partition(&key(), Bytes::new(), 7);
        assert!(records.is_empty() && error.is_none());
        assert_eq!(next, 7);
    }

    fn partition_answer(
        partition: u32,
        error: ErrorCode,
        records: Bytes,
    ) -> FetchPartitionResponse {
        FetchPartitionResponse {
            partition,
            error,
            message: String::new(),
            high_watermark: 20,
            log_start_offset: 0,
            records,
            diverging_epoch: None,
        }
    }

    #[test]
    fn fetch_responses_advance_positions_and_pause_failed_partitions() {
        let mut positions = BTreeMap::from([(tp("t", 0), 0), (tp("t", 1), 4), (tp("t", 2), 0)]);
        let response = FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "t".into(),
                id: meridian_wire::TopicId::NONE,
                partitions: vec![
                    partition_answer(0, ErrorCode::None, batch(0, 3, Compression::None)),
                    partition_answer(1, ErrorCode::OffsetOutOfRange, Bytes::new()),
                    partition_answer(2, ErrorCode::StorageError, Bytes::new()),
                ],
            }],
        };
        let (result, stalled, moved) = read_response(&response, &mut positions, 1 << 20);
        assert!(!stalled && moved.is_empty());
        assert_eq!(
            positions,
            BTreeMap::from([(tp("t", 0), 3), (tp("t", 2), 0)])
        );
        assert_eq!(result.partitions.len(), 2);
        let mut records = Vec::new();
        let fetched = &result.partitions[0];
        assert!(decode_batches(&fetched.tp, &fetched.batches, 0, &mut records).is_none());
        assert_eq!(offsets(&records), vec![0, 1, 2]);
        assert_eq!(fetched.next_offset, 3);
        assert_eq!(result.partitions[0].high_watermark, Some(20));
        let error = result.partitions[1].error.as_ref().unwrap();
        assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange));
        assert!(error.to_string().contains("t/1 at offset 4"));
        assert!(result.reserved_bytes > 0);

        // Only retriable errors: the fetcher should back off.
        let response = FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "t".into(),
                id: meridian_wire::TopicId::NONE,
                partitions: vec![partition_answer(2, ErrorCode::StorageError, Bytes::new())],
            }],
        };
        let (_, stalled, moved) = read_response(&response, &mut positions, 1 << 20);
        assert!(stalled && moved.is_empty());

        // The leader moved: the partition keeps its position and is reported for a
        // metadata refresh, so the next fetch goes to the new leader.
        let response = FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "t".into(),
                id: meridian_wire::TopicId::NONE,
                partitions: vec![
                    partition_answer(0, ErrorCode::NotLeaderOrFollower, Bytes::new()),
                    partition_answer(2, ErrorCode::FencedLeaderEpoch, Bytes::new()),
                ],
            }],
        };
        let (result, stalled, moved) = read_response(&response, &mut positions, 1 << 20);
        assert!(stalled && result.partitions.is_empty());
        assert_eq!(
            moved,
            vec![
                (tp("t", 0), ErrorCode::NotLeaderOrFollower),
                (tp("t", 2), ErrorCode::FencedLeaderEpoch)
            ]
        );
        assert_eq!(
            positions,
            BTreeMap::from([(tp("t", 0), 3), (tp("t", 2), 0)])
        );
    }

    #[test]
    fn fetch_requests_group_partitions_by_topic() {
        let from = |offset, leader_epoch, read_epoch| FetchFrom {
            offset,
            leader_epoch,
            read_epoch,
        };
        let positions = BTreeMap::from([
            (tp("a", 0), from(5, 3, 2)),
            (tp("a", 1), from(6, NO_LEADER_EPOCH, NO_LEADER_EPOCH)),
            (tp("b", 0), from(7, 0, 0)),
        ]);
        let Request::Fetch(request) = fetch_request(&ConsumerConfig::default(), &positions, 4096)
        else {
            panic!("not a fetch");
        };
        assert_eq!(request.max_bytes, 4096);
        assert_eq!(request.max_wait_ms, 500);
        assert_eq!(request.topics.len(), 2);
        assert_eq!(request.topics[0].partitions.len(), 2);
        assert_eq!(request.topics[0].partitions[1].fetch_offset, 6);
        assert_eq!(request.topics[0].partitions[1].partition_max_bytes, 4096);
        assert_eq!(request.topics[1].name, "b");
        let epochs: Vec<i32> = request
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.current_leader_epoch))
            .collect();
        assert_eq!(epochs, vec![3, NO_LEADER_EPOCH, 0]);
        let read_epochs: Vec<i32> = request
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.last_fetched_epoch))
            .collect();
        assert_eq!(read_epochs, vec![2, NO_LEADER_EPOCH, 0]);
    }

    #[test]
    fn a_diverging_answer_stops_the_partition_and_batches_tell_their_epoch() {
        let mut positions = BTreeMap::from([(tp("t", 0), 100), (tp("t", 1), 0)]);
        let diverging = DivergingEpoch {
            epoch: 1,
            end_offset: 50,
        };
        let cut = FetchPartitionResponse {
            diverging_epoch: Some(diverging),
            ..partition_answer(0, ErrorCode::None, Bytes::new())
        };
        let mut bytes = batch(0, 2, Compression::None).to_vec();
        patch_batch(&mut bytes, 0, 6);
        let mut later = batch(2, 1, Compression::None).to_vec();
        patch_batch(&mut later, 2, 7);
        bytes.extend_from_slice(&later);
        let response = FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "t".into(),
                id: meridian_wire::TopicId::NONE,
                partitions: vec![
                    cut,
                    partition_answer(1, ErrorCode::None, Bytes::from(bytes)),
                ],
            }],
        };
        let (result, stalled, moved) = read_response(&response, &mut positions, 1 << 20);
        assert!(!stalled && moved.is_empty());
        // The fetcher leaves the diverged partition to the consumer.
        assert_eq!(positions, BTreeMap::from([(tp("t", 1), 3)]));
        let [p0, p1] = &result.partitions[..] else {
            panic!("{:?}", result.partitions);
        };
        assert_eq!((p0.diverged, p0.next_offset), (Some(diverging), 100));
        assert!(p0.error.is_none());
        // The epoch of the last batch is what the next fetch names.
        assert_eq!((p1.last_epoch, p1.diverged), (Some(7), None));
    }

    #[test]
    fn partitions_are_dealt_into_at_most_n_requests() {
        assert_eq!(
            deal(vec![1, 2, 3, 4, 5], 2),
            vec![vec![1, 3, 5], vec![2, 4]]
        );
        assert_eq!(deal(vec![1], 2), vec![vec![1]]);
        assert_eq!(deal(vec![1, 2], 1), vec![vec![1, 2]]);
        assert!(deal(Vec::<u8>::new(), 2).is_empty());
    }

    #[test]
    fn consumer_defaults() {
        let config = ConsumerConfig::default();
        assert_eq!(config.fetch_max_wait, Duration::from_millis(500));
        assert_eq!(config.fetch_min_bytes, 1);
        assert_eq!(config.fetch_max_bytes, 50 << 20);
        assert_eq!(config.max_partition_fetch_bytes, 1 << 20);
        assert_eq!(config.prefetch_bytes, 64 << 20);
        assert_eq!(config.auto_offset_reset, AutoOffsetReset::Latest);
        assert_eq!("none".parse(), Ok(AutoOffsetReset::None));
        assert!("smallest".parse::<AutoOffsetReset>().is_err());
    }
}
