//! The producer's record accumulator, sans-IO: records go into per-partition batches,
//! and the caller asks, with an explicit `now`, which batches are ready to send and
//! when to ask again. The producer's sender task is a thin loop around it; tests drive
//! it with a virtual clock.
//!
//! Invariants, per partition:
//! - batches leave the queue in the order they were created, except that a batch
//!   coming back for a retry goes before every batch not yet sent;
//! - at most `max_in_flight` batches are in flight;
//! - a retried batch is sent only when nothing else of the partition is in flight, and
//!   nothing else is sent while it is in flight, so retries never overtake each other
//!   or later batches. (Batches already in flight when an earlier one failed can still
//!   land before the retry; `max_in_flight = 1` rules that out.)
//! - a batch is drained only towards a known destination (its partition's leader):
//!   a partition whose leader is unknown keeps its batches queued, in order, until
//!   metadata names one, so a batch re-routed to a new leader still goes before
//!   every later batch of its partition;
//! - a queued batch older than `delivery_timeout` leaves through
//!   [`RecordAccumulator::expire`], never through `drain`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_wire::batch::NewRecord;
use rustc_hash::FxHashMap;

use crate::config::backoff;
use crate::error::{Error, Result};
use meridian_wire::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct AccumulatorConfig {
    pub batch_size: usize,
    /// The longest a batch waits for more records.
    pub linger: Duration,
    /// How late the timer that wakes the sender may fire (tokio's: up to 1 ms, as
    /// it rounds deadlines up to its millisecond ticks). A lingering batch is ready
    /// half of this before its linger is over, so that it goes out within half a
    /// tick either side of `linger` instead of up to a whole tick after it.
    pub timer_resolution: Duration,
    pub max_in_flight: usize,
    /// Pause before the first retry of a batch; doubles per attempt up to
    /// `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// A batch not acknowledged this long after it was created fails.
    pub delivery_timeout: Duration,
}

/// Where a partition's batches go now, as the caller's routing decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Routing<D> {
    /// To this destination (a broker).
    To(D),
    /// Nowhere yet (no known leader): keep the batches queued.
    Wait,
    /// The partition does not exist: fail its batches.
    Fail(ErrorCode),
}

/// What [`RecordAccumulator::drain`] took, by destination.
#[derive(Debug)]
pub(crate) struct Drained<D, B = ()> {
    /// Ready batches per destination, each group up to the request size.
    pub by_destination: BTreeMap<D, Vec<ProducerBatch<B>>>,
    /// Batches of partitions that do not exist, with the reason; in flight like the
    /// others until completed.
    pub failed: Vec<(ProducerBatch<B>, ErrorCode)>,
    /// Some ready partition has no known leader: refresh metadata.
    pub waiting_for_leader: bool,
}

/// A batch of records for one partition, with state of the caller's for the whole
/// batch (`B`).
#[derive(Debug)]
pub(crate) struct ProducerBatch<B = ()> {
    pub tp: TopicPartition,
    pub records: Vec<NewRecord>,
    pub state: B,
    /// Sum of the records' estimated sizes.
    pub size_bytes: usize,
    /// How many times this batch was sent and came back for a retry.
    pub attempts: u32,
    /// The encoded batch, kept so a retry sends the very same bytes.
    pub encoded: Option<Bytes>,
    created: Instant,
    not_before: Option<Instant>,
    /// Position in its partition's queue; retries are re-inserted by it.
    sequence: u64,
    /// The flush epoch the batch belongs to (see [`RecordAccumulator::begin_flush`]).
    epoch: u64,
}

#[derive(Debug)]
struct PartitionQueue<B> {
    batches: VecDeque<ProducerBatch<B>>,
    in_flight: usize,
    /// A retried batch is in flight: nothing else may be sent meanwhile.
    retry_in_flight: bool,
    /// The last drain found the queue ready but its partition without a known
    /// leader. Only new metadata can change that, and the sender is woken for it, so
    /// the queue's deadline must not wake it: being past, it would wake it at once,
    /// over and over, for as long as an election or a dead broker lasts.
    waiting_for_leader: bool,
    next_sequence: u64,
}

impl<B> Default for PartitionQueue<B> {
    fn default() -> Self {
        PartitionQueue {
            batches: VecDeque::new(),
            in_flight: 0,
            retry_in_flight: false,
            waiting_for_leader: false,
            next_sequence: 0,
        }
    }
}

impl<B> PartitionQueue<B> {
    /// Where a batch of queue sequence `sequence` coming back goes: before every
    /// batch not sent yet that came after it, and before the queued parts of an
    /// earlier split of the same batch (they share its sequence and hold later
    /// records).
    fn position_back(&self, sequence: u64) -> usize {
        self.batches
            .iter()
            .position(|b| b.sequence >= sequence)
            .unwrap_or(self.batches.len())
    }
}

#[derive(Debug, Default)]
struct EpochState {
    /// Batches of this epoch not yet acknowledged or failed for good.
    unfinished: usize,
    /// The first permanent failure among them.
    error: Option<Error>,
}

/// Where [`RecordAccumulator::append_with`] put a record.
pub(crate) struct Appended<'a, B> {
    /// The sender should look again now (see [`RecordAccumulator::append`]).
    pub wake: bool,
    /// The record's position in its batch.
    pub index: usize,
    /// The batch's state.
    pub state: &'a mut B,
}

/// The current sticky partition of a topic.
#[derive(Debug)]
pub(crate) struct StickyState {
    partition: u32,
    n_partitions: u32,
    /// Record bytes given to `partition` since it became the sticky one.
    bytes: usize,
}

impl StickyState {
    fn move_on(&mut self) {
        self.partition = (self.partition + 1) % self.n_partitions;
        self.bytes = 0;
    }
}

#[derive(Debug)]
pub(crate) struct RecordAccumulator<B = ()> {
    config: AccumulatorConfig,
    partitions: BTreeMap<TopicPartition, PartitionQueue<B>>,
    /// Sticky partition for records without key and partition, per topic.
    sticky: FxHashMap<String, StickyState>,
    sticky_seed: u32,
    /// Epoch given to new batches; bumped by every flush.
    epoch: u64,
    /// Batches of epochs up to this one are sent without waiting for linger.
    flush_through: Option<u64>,
    epochs: BTreeMap<u64, EpochState>,
    /// Everything is ready at once and no new record is accepted.
    closed: bool,
}

impl<B> RecordAccumulator<B> {
    /// `sticky_seed` picks the first sticky partition of each topic (pass something
    /// random so that producers started together spread out).
    pub fn new(config: AccumulatorConfig, sticky_seed: u32) -> RecordAccumulator<B> {
        assert!(config.max_in_flight > 0);
        RecordAccumulator {
            config,
            partitions: BTreeMap::new(),
            sticky: FxHashMap::default(),
            sticky_seed,
            epoch: 0,
            flush_through: None,
            epochs: BTreeMap::new(),
            closed: false,
        }
    }

    /// The partition for a record without key or explicit partition, of
    /// `record_size` bytes ([`NewRecord::estimated_size`]): the same one until a
    /// batch's worth (`batch_size`) has gone to it or a batch of it is sent, then the
    /// next.
    ///
    /// The byte count is what keeps keyless records spread evenly when the producer
    /// outruns the broker (KIP-794's fix to Kafka's first sticky partitioner): a
    /// partition whose batches wait behind `max_in_flight` would otherwise take
    /// records until the buffer memory ran out, so one partition of sixteen ended up
    /// with six times the records of the others.
    pub fn sticky_partition(&mut self, topic: &str, n_partitions: u32, record_size: usize) -> u32 {
        assert!(n_partitions > 0);
        let seed = self.sticky_seed;
        // Looked up before inserting, so the topic name is copied once, not per record.
        if !self.sticky.contains_key(topic) {
            self.sticky.insert(
                topic.to_string(),
                StickyState {
                    partition: seed % n_partitions,
                    n_partitions,
                    bytes: 0,
                },
            );
        }
        let state = self.sticky.get_mut(topic).expect("inserted above");
        if state.n_partitions != n_partitions || state.partition >= n_partitions {
            state.n_partitions = n_partitions;
            state.partition = seed % n_partitions;
            state.bytes = 0;
        }
        let partition = state.partition;
        state.bytes += record_size;
        if state.bytes >= self.config.batch_size {
            state.move_on();
        }
        partition
    }

    /// Adds a record to the open batch of its partition, or a new batch. Returns
    /// whether the sender should look again now (a new batch started a linger timer,
    /// or a batch became full).
    #[cfg(test)]
    pub fn append(&mut self, tp: TopicPartition, record: NewRecord, now: Instant) -> Result<bool>
    where
        B: Default,
    {
        self.append_with(tp, record, || now, |_| B::default())
            .map(|appended| appended.wake)
    }

    /// [`append`](Self::append) for a caller with state per batch: `new_batch` makes
    /// it when the record starts a batch, and `now` is asked only then (a clock read
    /// per record is a measurable cost at hundreds of thousands of records a second).
    pub fn append_with(
        &mut self,
        tp: TopicPartition,
        record: NewRecord,
        now: impl FnOnce() -> Instant,
        new_batch: impl FnOnce(&TopicPartition) -> B,
    ) -> Result<Appended<'_, B>> {
        if self.closed {
            return Err(Error::Closed);
        }
        let size = record.estimated_size();
        let epoch = self.epoch;
        let batch_size = self.config.batch_size;
        // Looked up before inserting: `entry` would want a key of its own, which is a
        // copy of the topic name for every record.
        if !self.partitions.contains_key(&tp) {
            self.partitions
                .insert(tp.clone(), PartitionQueue::default());
        }
        let queue = self.partitions.get_mut(&tp).expect("inserted above");
        let fits = queue.batches.back().is_some_and(|open| {
            open.attempts == 0
                && open.encoded.is_none()
                && open.epoch == epoch
                && open.size_bytes + size <= batch_size
        });
        if fits {
            let open = queue.batches.back_mut().expect("checked above");
            open.records.push(record);
            open.size_bytes += size;
            return Ok(Appended {
                wake: open.size_bytes >= batch_size,
                index: open.records.len() - 1,
                state: &mut open.state,
            });
        }
        let sequence = queue.next_sequence;
        queue.next_sequence += 1;
        let state = new_batch(&tp);
        queue.batches.push_back(ProducerBatch {
            tp,
            records: vec![record],
            state,
            size_bytes: size,
            attempts: 0,
            encoded: None,
            created: now(),
            not_before: None,
            sequence,
            epoch,
        });
        self.epochs.entry(epoch).or_default().unfinished += 1;
        let open = queue.batches.back_mut().expect("pushed above");
        Ok(Appended {
            wake: true,
            index: 0,
            state: &mut open.state,
        })
    }

    fn is_ready(&self, queue: &PartitionQueue<B>, now: Instant) -> bool {
        let Some(head) = queue.batches.front() else {
            return false;
        };
        if queue.retry_in_flight {
            return false;
        }
        if head.attempts > 0 {
            return queue.in_flight == 0 && head.not_before.is_none_or(|t| now >= t);
        }
        queue.in_flight < self.config.max_in_flight
            && (self.closed
                || head.size_bytes >= self.config.batch_size
                || queue.batches.len() > 1
                || now >= self.linger_over(head)
                || self.flush_through.is_some_and(|e| head.epoch <= e))
    }

    /// Takes the ready batches, at most one per partition, grouped by the destination
    /// `route` gives their partition; each destination's group stops once its size
    /// passes `max_request_bytes` (at least one batch is taken per destination if any
    /// is ready). Partitions routed to [`Routing::Wait`] keep their batches. Each
    /// taken batch counts as in flight until [`complete`](Self::complete) or
    /// [`retry`](Self::retry).
    pub fn drain<D: Ord + Clone>(
        &mut self,
        now: Instant,
        max_request_bytes: usize,
        route: impl Fn(&TopicPartition) -> Routing<D>,
    ) -> Drained<D, B> {
        let ready: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, queue)| self.is_ready(queue, now))
            .map(|(tp, _)| tp.clone())
            .collect();
        for queue in self.partitions.values_mut() {
            queue.waiting_for_leader = false;
        }
        let mut drained = Drained {
            by_destination: BTreeMap::new(),
            failed: Vec::new(),
            waiting_for_leader: false,
        };
        let mut totals: BTreeMap<D, usize> = BTreeMap::new();
        for tp in ready {
            let destination = match route(&tp) {
                Routing::Wait => {
                    drained.waiting_for_leader = true;
                    if let Some(queue) = self.partitions.get_mut(&tp) {
                        queue.waiting_for_leader = true;
                    }
                    continue;
                }
                Routing::Fail(code) => Err(code),
                Routing::To(destination) => {
                    if totals
                        .get(&destination)
                        .is_some_and(|total| *total >= max_request_bytes)
                    {
                        continue;
                    }
                    Ok(destination)
                }
            };
            let Some(queue) = self.partitions.get_mut(&tp) else {
                continue;
            };
            let Some(batch) = queue.batches.pop_front() else {
                continue;
            };
            queue.in_flight += 1;
            if batch.attempts > 0 {
                queue.retry_in_flight = true;
            }
            if let Some(sticky) = self.sticky.get_mut(&tp.topic) {
                if sticky.partition == tp.partition {
                    sticky.move_on();
                }
            }
            match destination {
                Ok(destination) => {
                    *totals.entry(destination.clone()).or_default() += batch.size_bytes;
                    drained
                        .by_destination
                        .entry(destination)
                        .or_default()
                        .push(batch);
                }
                Err(code) => drained.failed.push((batch, code)),
            }
        }
        drained
    }

    /// The topics with records queued or in flight, sorted, each once.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.partitions.keys().map(|tp| tp.topic.clone()).collect();
        topics.dedup();
        topics
    }

    /// Takes the queued batches (not in flight) created `delivery_timeout` or longer
    /// ago, to be failed; they count as in flight until completed.
    pub fn expire(&mut self, now: Instant) -> Vec<ProducerBatch<B>> {
        let timeout = self.config.delivery_timeout;
        let mut expired = Vec::new();
        for queue in self.partitions.values_mut() {
            // Batches are queued oldest first (a retry is older than what it
            // overtakes), so the expired ones are a prefix.
            while queue
                .batches
                .front()
                .is_some_and(|b| now.saturating_duration_since(b.created) >= timeout)
            {
                if let Some(batch) = queue.batches.pop_front() {
                    queue.in_flight += 1;
                    expired.push(batch);
                }
            }
        }
        expired
    }

    /// When `batch` has lingered long enough to go, given the timer's resolution.
    fn linger_over(&self, batch: &ProducerBatch<B>) -> Instant {
        batch.created
            + self
                .config
                .linger
                .saturating_sub(self.config.timer_resolution / 2)
    }

    /// When the next batch becomes ready by time alone (linger or retry backoff);
    /// `None` if only a new record, a completion or new metadata can make one ready.
    /// Partitions the last [`drain`](Self::drain) found without a leader count only by
    /// their delivery timeout.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let ready_at = self
            .partitions
            .values()
            .filter(|queue| !queue.retry_in_flight && !queue.waiting_for_leader)
            .filter_map(|queue| {
                let head = queue.batches.front()?;
                if head.attempts > 0 {
                    (queue.in_flight == 0).then_some(head.not_before?)
                } else if queue.in_flight < self.config.max_in_flight {
                    Some(self.linger_over(head))
                } else {
                    None
                }
            })
            .min();
        // A batch waiting for a leader (or behind an in-flight one) still expires.
        let expires_at = self
            .partitions
            .values()
            .filter_map(|queue| queue.batches.front())
            .map(|head| head.created + self.config.delivery_timeout)
            .min();
        ready_at.into_iter().chain(expires_at).min()
    }

    /// A drained batch is done: acknowledged (`Ok`) or failed for good.
    pub fn complete(
        &mut self,
        tp: &TopicPartition,
        attempts: u32,
        epoch: u64,
        outcome: Result<()>,
    ) {
        if let Some(queue) = self.partitions.get_mut(tp) {
            assert!(queue.in_flight > 0, "completion without a batch in flight");
            queue.in_flight -= 1;
            if attempts > 0 {
                queue.retry_in_flight = false;
            }
            if queue.in_flight == 0 && queue.batches.is_empty() {
                self.partitions.remove(tp);
            }
        }
        if let Some(state) = self.epochs.get_mut(&epoch) {
            state.unfinished -= 1;
            if let Err(e) = outcome {
                state.error.get_or_insert(e);
            }
            if state.unfinished == 0 && state.error.is_none() {
                self.epochs.remove(&epoch);
            }
        }
    }

    /// A drained batch failed in a way worth retrying: it goes back to the queue,
    /// before every batch of its partition that was not sent yet, to be sent again
    /// after `retry_backoff` once nothing else of the partition is in flight.
    pub fn retry(&mut self, batch: ProducerBatch<B>, now: Instant) {
        let pause = backoff(
            self.config.retry_backoff,
            self.config.retry_backoff_max,
            batch.attempts + 1,
        );
        self.requeue(batch, now + pause);
    }

    /// Like [`retry`](Self::retry) but without the backoff: for a batch whose
    /// partition is known to have a new leader (its request went to the old one), so
    /// there is nothing to wait for.
    pub fn retry_now(&mut self, batch: ProducerBatch<B>, now: Instant) {
        self.requeue(batch, now);
    }

    /// A drained batch refused as too large: the records from `at` on go to a new
    /// batch with state `rest`, and both go back to the head of the queue, before
    /// every batch of the partition not sent yet, in order, to be sent at once. The
    /// attempt count is kept (a split is not a retry).
    pub fn split(&mut self, mut batch: ProducerBatch<B>, at: usize, rest: B) {
        assert!(0 < at && at < batch.records.len(), "split inside the batch");
        self.epochs.entry(batch.epoch).or_default().unfinished += 1;
        let queue = self.take_back(&batch);
        let records = batch.records.split_off(at);
        let size_bytes: usize = records.iter().map(NewRecord::estimated_size).sum();
        batch.size_bytes = batch.size_bytes.saturating_sub(size_bytes);
        batch.encoded = None;
        batch.not_before = None;
        let rest = ProducerBatch {
            tp: batch.tp.clone(),
            records,
            state: rest,
            size_bytes,
            attempts: batch.attempts,
            encoded: None,
            created: batch.created,
            not_before: None,
            sequence: batch.sequence,
            epoch: batch.epoch,
        };
        let position = queue.position_back(batch.sequence);
        queue.batches.insert(position, rest);
        queue.batches.insert(position, batch);
    }

    /// The queue a drained batch comes back to (retried or split), the batch no
    /// longer counted in flight.
    fn take_back(&mut self, batch: &ProducerBatch<B>) -> &mut PartitionQueue<B> {
        let queue = self.partitions.entry(batch.tp.clone()).or_default();
        assert!(queue.in_flight > 0, "a batch back without one in flight");
        queue.in_flight -= 1;
        if batch.attempts > 0 {
            queue.retry_in_flight = false;
        }
        queue
    }

    fn requeue(&mut self, mut batch: ProducerBatch<B>, not_before: Instant) {
        let queue = self.take_back(&batch);
        batch.attempts += 1;
        batch.not_before = Some(not_before);
        let position = queue.position_back(batch.sequence);
        queue.batches.insert(position, batch);
    }

    /// Makes every batch created so far ready now; returns the epoch to pass to
    /// [`flush_status`](Self::flush_status). Records appended afterwards go into new
    /// batches and are not waited for.
    pub fn begin_flush(&mut self) -> u64 {
        let epoch = self.epoch;
        self.flush_through = Some(epoch);
        self.epoch += 1;
        epoch
    }

    /// `None` while a batch of epoch `through` or earlier is unfinished; then the
    /// first permanent failure among them (reported to one flush only).
    pub fn flush_status(&mut self, through: u64) -> Option<Result<()>> {
        if self
            .epochs
            .range(..=through)
            .any(|(_, state)| state.unfinished > 0)
        {
            return None;
        }
        let finished: Vec<u64> = self.epochs.range(..=through).map(|(e, _)| *e).collect();
        let mut first_error = None;
        for epoch in finished {
            if let Some(state) = self.epochs.remove(&epoch) {
                if first_error.is_none() {
                    first_error = state.error;
                }
            }
        }
        Some(first_error.map_or(Ok(()), Err))
    }

    /// Stops accepting records and makes everything ready at once.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// No batch is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

impl<B> ProducerBatch<B> {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the batch's first record was appended.
    pub fn created(&self) -> Instant {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_wire::ErrorCode;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> AccumulatorConfig {
        AccumulatorConfig {
            batch_size: 1000,
            linger: 5 * MS,
            timer_resolution: Duration::ZERO,
            max_in_flight: 2,
            retry_backoff: 100 * MS,
            retry_backoff_max: 1000 * MS,
            delivery_timeout: 10_000 * MS,
        }
    }

    /// Drains with every partition routed to one broker, as against a single broker.
    fn drain(
        acc: &mut RecordAccumulator,
        now: Instant,
        max_request_bytes: usize,
    ) -> Vec<ProducerBatch> {
        let mut drained = acc.drain(now, max_request_bytes, |_| Routing::To(1u32));
        assert!(drained.failed.is_empty() && !drained.waiting_for_leader);
        assert!(drained.by_destination.len() <= 1);
        drained.by_destination.remove(&1).unwrap_or_default()
    }

    /// Drained record ids per broker, as `(broker, [(partition, [record ids])])`.
    type ByBroker = Vec<(u32, Vec<(u32, Vec<u32>)>)>;

    /// Leaders by partition for routing tests: `None` is no known leader.
    fn routed(
        acc: &mut RecordAccumulator,
        now: Instant,
        leaders: &[Option<u32>],
    ) -> (ByBroker, bool) {
        let drained = acc.drain(now, usize::MAX, |tp| {
            match leaders.get(tp.partition as usize).copied().flatten() {
                Some(broker) => Routing::To(broker),
                None => Routing::Wait,
            }
        });
        assert!(drained.failed.is_empty());
        let groups = drained
            .by_destination
            .iter()
            .map(|(broker, batches)| (*broker, ids(batches)))
            .collect();
        (groups, drained.waiting_for_leader)
    }

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition,
        }
    }

    /// A record whose estimated size is exactly `size` bytes, known by `id` (kept
    /// in its timestamp, which the size does not depend on).
    fn record(size: usize, id: u32) -> NewRecord {
        let overhead = NewRecord::default().estimated_size();
        NewRecord {
            timestamp: i64::from(id),
            value: Some(Bytes::from(vec![0u8; size - overhead])),
            ..NewRecord::default()
        }
    }

    /// The ids of a batch's records (see [`record`]).
    fn record_ids(batch: &ProducerBatch) -> Vec<u32> {
        batch.records.iter().map(|r| r.timestamp as u32).collect()
    }

    /// Record ids of drained batches, as `(partition, [record ids])`.
    fn ids(batches: &[ProducerBatch]) -> Vec<(u32, Vec<u32>)> {
        batches
            .iter()
            .map(|b| (b.tp.partition, record_ids(b)))
            .collect()
    }

    #[test]
    fn linger_ends_half_a_timer_tick_early_to_even_out_a_late_timer() {
        let t0 = Instant::now();
        let tick = AccumulatorConfig {
            timer_resolution: MS,
            ..config()
        };
        let mut acc = RecordAccumulator::new(tick.clone(), 0);
        acc.append(tp(0), record(100, 1), t0).unwrap();
        // Linger 5 ms, timer up to 1 ms late: woken at 4.5 ms, so sent between 4.5
        // and 5.5 ms rather than between 5 and 6.
        let half = Duration::from_micros(500);
        assert_eq!(acc.next_wakeup(), Some(t0 + 4 * MS + half));
        assert!(drain(&mut acc, t0 + 4 * MS, usize::MAX).is_empty());
        assert_eq!(
            ids(&drain(&mut acc, t0 + 4 * MS + half, usize::MAX)),
            vec![(0, vec![1])]
        );
        // A linger of half a tick or less sends at once.
        let mut acc = RecordAccumulator::new(
            AccumulatorConfig {
                linger: half,
                ..tick
            },
            0,
        );
        acc.append(tp(0), record(100, 2), t0).unwrap();
        assert_eq!(acc.next_wakeup(), Some(t0));
        assert_eq!(ids(&drain(&mut acc, t0, usize::MAX)), vec![(0, vec![2])]);
    }

    #[test]
    fn a_batch_waits_for_linger_unless_full() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        assert!(acc.append(tp(0), record(400, 1), t0).unwrap());
        assert!(!acc.append(tp(0), record(400, 2), t0).unwrap());
        assert!(drain(&mut acc, t0 + 4 * MS, usize::MAX).is_empty());
        assert_eq!(acc.next_wakeup(), Some(t0 + 5 * MS));
        assert_eq!(
            ids(&drain(&mut acc, t0 + 5 * MS, usize::MAX)),
            vec![(0, vec![1, 2])]
        );

        // Filling the batch makes it ready at once and starts the next one.
        let t1 = t0 + 10 * MS;
        acc.append(tp(1), record(500, 3), t1).unwrap();
        assert!(
            acc.append(tp(1), record(500, 4), t1).unwrap(),
            "full batch wakes the sender"
        );
        acc.append(tp(1), record(500, 5), t1).unwrap();
        assert_eq!(ids(&drain(&mut acc, t1, usize::MAX)), vec![(1, vec![3, 4])]);
        assert_eq!(
            ids(&drain(&mut acc, t1 + 5 * MS, usize::MAX)),
            vec![(1, vec![5])]
        );
    }

    #[test]
    fn an_oversized_record_gets_a_batch_of_its_own() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        acc.append(tp(0), record(100, 1), t0).unwrap();
        acc.append(tp(0), record(5000, 2), t0).unwrap();
        acc.append(tp(0), record(100, 3), t0).unwrap();
        // Two batches queued: the first is ready (a later one exists), and so is the
        // full second one, but one per partition per drain.
        assert_eq!(ids(&drain(&mut acc, t0, usize::MAX)), vec![(0, vec![1])]);
        assert_eq!(ids(&drain(&mut acc, t0, usize::MAX)), vec![(0, vec![2])]);
        assert!(
            drain(&mut acc, t0, usize::MAX).is_empty(),
            "in-flight limit 2 reached"
        );
    }

    #[test]
    fn in_flight_limit_and_completion() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        for id in 0..4 {
            acc.append(tp(0), record(1000, id), t0).unwrap();
        }
        let first = drain(&mut acc, t0, usize::MAX);
        let second = drain(&mut acc, t0, usize::MAX);
        assert!(drain(&mut acc, t0, usize::MAX).is_empty());
        assert_eq!(
            acc.next_wakeup(),
            Some(t0 + 10_000 * MS),
            "blocked until a completion, or until the queued batches expire"
        );
        acc.complete(&first[0].tp, 0, first[0].epoch(), Ok(()));
        assert_eq!(ids(&drain(&mut acc, t0, usize::MAX)), vec![(0, vec![2])]);
        acc.complete(&second[0].tp, 0, second[0].epoch(), Ok(()));
        assert_eq!(ids(&drain(&mut acc, t0, usize::MAX)), vec![(0, vec![3])]);
    }

    #[test]
    fn several_partitions_drain_together_up_to_the_request_size() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        for p in 0..4 {
            acc.append(tp(p), record(600, p), t0).unwrap();
        }
        let at = t0 + 5 * MS;
        assert_eq!(
            ids(&drain(&mut acc, at, 1000)),
            vec![(0, vec![0]), (1, vec![1])]
        );
        assert_eq!(
            ids(&drain(&mut acc, at, usize::MAX)),
            vec![(2, vec![2]), (3, vec![3])]
        );
    }

    #[test]
    fn retries_go_first_alone_and_in_order() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        for id in 0..3 {
            acc.append(tp(0), record(1000, id), t0).unwrap();
        }
        let mut a = drain(&mut acc, t0, usize::MAX);
        let mut b = drain(&mut acc, t0, usize::MAX);
        // Both fail (say, the connection dropped); completions arrive in reverse.
        let t1 = t0 + MS;
        acc.retry(b.remove(0), t1);
        assert!(
            drain(&mut acc, t1, usize::MAX).is_empty(),
            "retry waits for in-flight batch"
        );
        acc.retry(a.remove(0), t1);
        assert!(drain(&mut acc, t1, usize::MAX).is_empty(), "retry backoff");
        assert_eq!(acc.next_wakeup(), Some(t1 + 100 * MS));
        let t2 = t1 + 100 * MS;
        let retried = drain(&mut acc, t2, usize::MAX);
        assert_eq!(ids(&retried), vec![(0, vec![0])]);
        assert_eq!(retried[0].attempts, 1);
        assert!(
            drain(&mut acc, t2, usize::MAX).is_empty(),
            "nothing passes a retry in flight"
        );
        acc.complete(&retried[0].tp, 1, retried[0].epoch(), Ok(()));
        let retried = drain(&mut acc, t2, usize::MAX);
        assert_eq!(ids(&retried), vec![(0, vec![1])]);
        acc.complete(&retried[0].tp, 1, retried[0].epoch(), Ok(()));
        assert_eq!(ids(&drain(&mut acc, t2, usize::MAX)), vec![(0, vec![2])]);
    }

    #[test]
    fn a_split_batch_goes_again_in_order_before_what_followed_it() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(
            AccumulatorConfig {
                max_in_flight: 1,
                ..config()
            },
            0,
        );
        for id in 0..4 {
            acc.append(tp(0), record(200, id), t0).unwrap();
        }
        acc.append(tp(0), record(1000, 9), t0).unwrap();
        let epoch = acc.begin_flush();
        let mut sent = drain(&mut acc, t0, usize::MAX);
        assert_eq!(ids(&sent), vec![(0, vec![0, 1, 2, 3])]);
        // Refused as too large: halves, then the second half's halves, each before
        // what was queued behind the batch.
        acc.split(sent.remove(0), 2, ());
        let mut first = drain(&mut acc, t0, usize::MAX);
        assert_eq!(ids(&first), vec![(0, vec![0, 1])]);
        assert_eq!(first[0].attempts, 0, "a split is not a retry");
        let first = first.remove(0);
        acc.complete(&first.tp, 0, first.epoch(), Ok(()));
        let mut second = drain(&mut acc, t0, usize::MAX);
        assert_eq!(ids(&second), vec![(0, vec![2, 3])]);
        acc.split(second.remove(0), 1, ());
        // A part that fails in a retriable way is retried before its sibling.
        let part = drain(&mut acc, t0, usize::MAX).remove(0);
        assert_eq!(ids(std::slice::from_ref(&part)), vec![(0, vec![2])]);
        acc.retry(part, t0);
        let t1 = t0 + 100 * MS;
        for want in [vec![2], vec![3], vec![9]] {
            let batch = drain(&mut acc, t1, usize::MAX).remove(0);
            assert_eq!(ids(std::slice::from_ref(&batch)), vec![(0, want)]);
            assert!(
                acc.flush_status(epoch).is_none(),
                "flush waits for every part"
            );
            acc.complete(&batch.tp, batch.attempts, batch.epoch(), Ok(()));
        }
        assert!(matches!(acc.flush_status(epoch), Some(Ok(()))));
        assert!(acc.is_empty());
    }

    #[test]
    fn flush_makes_batches_ready_and_reports_failures_once() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        acc.append(tp(0), record(100, 1), t0).unwrap();
        acc.append(tp(1), record(100, 2), t0).unwrap();
        let epoch = acc.begin_flush();
        assert_eq!(acc.flush_status(epoch).map(|r| r.is_ok()), None);
        // A record after the flush starts a new batch that lingers as usual.
        acc.append(tp(0), record(100, 3), t0).unwrap();
        let drained = drain(&mut acc, t0, usize::MAX);
        assert_eq!(ids(&drained), vec![(0, vec![1]), (1, vec![2])]);
        acc.complete(&drained[0].tp, 0, drained[0].epoch(), Ok(()));
        assert!(acc.flush_status(epoch).is_none());
        let failure = Error::broker(ErrorCode::MessageTooLarge, "too big");
        acc.complete(&drained[1].tp, 0, drained[1].epoch(), Err(failure));
        let status = acc.flush_status(epoch).expect("flush finished");
        assert_eq!(status.unwrap_err().code(), Some(ErrorCode::MessageTooLarge));
        assert!(matches!(acc.flush_status(epoch), Some(Ok(()))));
        // The later batch is unaffected by the finished flush.
        assert!(drain(&mut acc, t0 + MS, usize::MAX).is_empty());
        assert_eq!(
            ids(&drain(&mut acc, t0 + 5 * MS, usize::MAX)),
            vec![(0, vec![3])]
        );
    }

    #[test]
    fn flush_with_nothing_buffered_is_done_at_once() {
        let mut acc: RecordAccumulator = RecordAccumulator::new(config(), 0);
        let epoch = acc.begin_flush();
        assert!(matches!(acc.flush_status(epoch), Some(Ok(()))));
    }

    #[test]
    fn sticky_partition_moves_on_when_its_batch_is_sent() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 7);
        let first = acc.sticky_partition("t", 3, 100);
        assert_eq!(first, 7 % 3);
        assert_eq!(acc.sticky_partition("t", 3, 100), first);
        acc.append(tp(first), record(100, 1), t0).unwrap();
        drain(&mut acc, t0 + 5 * MS, usize::MAX);
        let second = acc.sticky_partition("t", 3, 100);
        assert_eq!(second, (first + 1) % 3);
        // A different partition count (topic recreated) resets it into range.
        assert!(acc.sticky_partition("t", 1, 100) == 0);
    }

    #[test]
    fn sticky_partition_moves_on_after_a_batch_worth_even_if_nothing_is_sent() {
        // A producer ahead of the broker: batches queue behind max_in_flight and none
        // is drained. Each partition still gets one batch's worth in turn.
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::<()>::new(config(), 0);
        let mut per_partition = [0usize; 4];
        for i in 0..400 {
            let partition = acc.sticky_partition("t", 4, 100);
            acc.append(tp(partition), record(100, i), t0).unwrap();
            per_partition[partition as usize] += 1;
        }
        // batch_size 1000: ten records of 100 bytes, then the next partition.
        assert_eq!(per_partition, [100; 4]);
        let mut acc = RecordAccumulator::<()>::new(config(), 0);
        let picks: Vec<u32> = (0..25).map(|_| acc.sticky_partition("t", 4, 100)).collect();
        assert_eq!(picks[..10], [0; 10]);
        assert_eq!(picks[10..20], [1; 10]);
        assert_eq!(picks[20..], [2; 5]);
        // A record larger than a batch moves it on at once.
        assert_eq!(acc.sticky_partition("t", 4, 5000), 2);
        assert_eq!(acc.sticky_partition("t", 4, 100), 3);
    }

    #[test]
    fn close_sends_everything_and_refuses_new_records() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        acc.append(tp(0), record(100, 1), t0).unwrap();
        acc.close();
        assert!(matches!(
            acc.append(tp(0), record(100, 2), t0),
            Err(Error::Closed)
        ));
        let drained = drain(&mut acc, t0, usize::MAX);
        assert_eq!(ids(&drained), vec![(0, vec![1])]);
        assert!(!acc.is_empty());
        acc.complete(&drained[0].tp, 0, drained[0].epoch(), Ok(()));
        assert!(acc.is_empty());
    }

    #[test]
    fn batches_are_grouped_by_leader_and_wait_for_an_unknown_one() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        for p in 0..4 {
            acc.append(tp(p), record(100, p), t0).unwrap();
        }
        let at = t0 + 5 * MS;
        // Partitions 0 and 2 on broker 1, 1 on broker 2, 3 has no leader yet.
        let leaders = [Some(1), Some(2), Some(1), None];
        let (groups, waiting) = routed(&mut acc, at, &leaders);
        assert_eq!(
            groups,
            vec![
                (1, vec![(0, vec![0]), (2, vec![2])]),
                (2, vec![(1, vec![1])])
            ]
        );
        assert!(waiting, "the sender must refresh metadata");
        assert_eq!(routed(&mut acc, at, &leaders), (vec![], true));
        // Partition 3's batch is past its linger, yet only metadata can send it: the
        // sender is not to be woken for it before it expires.
        assert_eq!(
            acc.next_wakeup(),
            Some(t0 + config().delivery_timeout),
            "a batch waiting for a leader must not keep the sender spinning"
        );
        // Metadata names a leader: the batch goes.
        let leaders = [Some(1), Some(2), Some(1), Some(3)];
        assert_eq!(
            routed(&mut acc, at, &leaders),
            (vec![(3, vec![(3, vec![3])])], false)
        );
    }

    #[test]
    fn the_request_size_limit_applies_per_broker() {
        let t0 = Instant::now();
        let mut acc: RecordAccumulator = RecordAccumulator::new(config(), 0);
        for p in 0..4 {
            acc.append(tp(p), record(600, p), t0).unwrap();
        }
        let drained = acc.drain(t0 + 5 * MS, 1000, |tp| Routing::To(tp.partition % 2));
        let sizes: Vec<(u32, usize)> = drained
            .by_destination
            .iter()
            .map(|(broker, batches)| (*broker, batches.len()))
            .collect();
        // 600 + 600 passes 1000 on each broker: two batches each, one request each.
        assert_eq!(sizes, vec![(0, 2), (1, 2)]);
        let drained = acc.drain(t0 + 5 * MS, 500, |tp| Routing::To(tp.partition % 2));
        assert!(drained.by_destination.is_empty());
    }

    #[test]
    fn a_batch_refused_by_a_moved_leader_goes_to_the_new_one_first() {
        // One in flight per partition, as with idempotence.
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(
            AccumulatorConfig {
                max_in_flight: 1,
                ..config()
            },
            0,
        );
        for id in 0..3 {
            acc.append(tp(0), record(1000, id), t0).unwrap();
        }
        let mut sent = acc.drain(t0, usize::MAX, |_| Routing::To(1u32));
        let first = sent.by_destination.remove(&1).unwrap().remove(0);
        assert_eq!(record_ids(&first), vec![0]);
        assert_eq!(
            routed(&mut acc, t0, &[Some(1)]),
            (vec![], false),
            "one in flight"
        );
        // Broker 1 answers NotLeaderOrFollower: the batch comes back, and while no
        // leader is known nothing of the partition moves.
        let t1 = t0 + MS;
        acc.retry(first, t1);
        let after_backoff = t1 + 100 * MS;
        assert_eq!(routed(&mut acc, after_backoff, &[None]), (vec![], true));
        // The new leader is broker 2: the retried batch goes first and alone (with
        // its encoded bytes, so the same producer id, epoch and sequence).
        let mut sent = acc.drain(after_backoff, usize::MAX, |_| Routing::To(2u32));
        let retried = sent.by_destination.remove(&2).unwrap().remove(0);
        assert_eq!((record_ids(&retried), retried.attempts), (vec![0], 1));
        assert_eq!(routed(&mut acc, after_backoff, &[Some(2)]), (vec![], false));
        acc.complete(&retried.tp, 1, retried.epoch(), Ok(()));
        assert_eq!(
            routed(&mut acc, after_backoff, &[Some(2)]),
            (vec![(2, vec![(0, vec![1])])], false)
        );
    }

    #[test]
    fn retry_backoff_doubles_per_attempt() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        acc.append(tp(0), record(1000, 1), t0).unwrap();
        let mut now = t0;
        for expected_backoff in [100, 200, 400, 800, 1000, 1000] {
            let batch = drain(&mut acc, now, usize::MAX).remove(0);
            acc.retry(batch, now);
            assert_eq!(acc.next_wakeup(), Some(now + expected_backoff * MS));
            assert!(drain(&mut acc, now + (expected_backoff - 1) * MS, usize::MAX).is_empty());
            now += expected_backoff * MS;
        }
    }

    #[test]
    fn batches_expire_after_the_delivery_timeout() {
        let t0 = Instant::now();
        let mut acc = RecordAccumulator::new(config(), 0);
        acc.append(tp(0), record(1000, 1), t0).unwrap();
        acc.append(tp(0), record(1000, 2), t0 + 3000 * MS).unwrap();
        // No leader for a long time: the batches wait, but the sender wakes up to
        // expire them.
        assert_eq!(routed(&mut acc, t0 + 5 * MS, &[None]), (vec![], true));
        assert!(acc.expire(t0 + 9_999 * MS).is_empty());
        let expired = acc.expire(t0 + 10_000 * MS);
        assert_eq!(ids(&expired), vec![(0, vec![1])]);
        for batch in &expired {
            acc.complete(
                &batch.tp,
                batch.attempts,
                batch.epoch(),
                Err(Error::Timeout),
            );
        }
        // The partition still has no leader: the second batch's linger, long past,
        // does not count; its expiry does.
        assert_eq!(acc.next_wakeup(), Some(t0 + 13_000 * MS));
        let expired = acc.expire(t0 + 13_000 * MS);
        assert_eq!(ids(&expired), vec![(0, vec![2])]);
        acc.complete(&expired[0].tp, 0, expired[0].epoch(), Err(Error::Timeout));
        assert!(acc.is_empty());
    }

    #[test]
    fn batches_of_missing_partitions_fail() {
        let t0 = Instant::now();
        let mut acc: RecordAccumulator<i32> = RecordAccumulator::new(config(), 0);
        acc.append(tp(0), record(100, 1), t0).unwrap();
        let drained = acc.drain(t0 + 5 * MS, usize::MAX, |_| {
            Routing::<u32>::Fail(ErrorCode::UnknownTopic)
        });
        assert_eq!(drained.failed.len(), 1);
        let (batch, code) = &drained.failed[0];
        assert_eq!(*code, ErrorCode::UnknownTopic);
        acc.complete(&batch.tp, 0, batch.epoch(), Err(Error::broker(*code, "")));
        assert!(acc.is_empty());
    }
}
