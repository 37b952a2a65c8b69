//! The log cleaner: `log_cleaner_threads` std threads compacting the partitions of
//! `cleanup.policy=compact` topics (see `meridian_log`'s cleaner for what a clean
//! keeps and how it stays crash-safe).
//!
//! A clean never blocks produce or fetch for long: the partition lock is taken to plan
//! (a snapshot of the sealed segments), once per rewritten group to swap it in (a few
//! renames and a directory fsync), and to write the checkpoint. Reading the old
//! segments and writing the new ones happens without it, paced by one [`IoBudget`]
//! shared by every cleaner thread.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_core::throttle::ByteRate;
use meridian_log::{CleanStats, LogError};
use parking_lot::Mutex;

use crate::handlers::now_ms;
use crate::topics::{Partition, Topic};
use crate::Shared;

/// Paces the cleaner's reads and writes to `bytes_per_second` (0: unlimited), shared by
/// all cleaner threads. Each chunk of I/O is charged to a [`ByteRate`] without burst,
/// and the caller then sleeps until that debt is paid off: a chunk waits for the ones
/// before it, then its own share of time. Idle time builds no credit, so the rate over
/// any window longer than one chunk stays within the budget.
pub(crate) struct IoBudget {
    rate: Option<Mutex<ByteRate>>,
}

impl IoBudget {
    pub(crate) fn new(bytes_per_second: u64) -> IoBudget {
        IoBudget {
            rate: (bytes_per_second > 0)
                .then(|| Mutex::new(ByteRate::new(bytes_per_second, 0, Instant::now()))),
        }
    }

    /// Accounts for `bytes` done at `now`; returns how long the caller must wait.
    fn reserve(&self, now: Instant, bytes: u64) -> Duration {
        let Some(rate) = &self.rate else {
            return Duration::ZERO;
        };
        let mut rate = rate.lock();
        rate.charge(bytes, now);
        rate.paid_off(now)
    }

    /// Accounts for `bytes` just read or written, sleeping to stay within the budget,
    /// unless `stop` is set (checked whenever the thread is unparked).
    pub(crate) fn consume(&self, bytes: u64, stop: &AtomicBool) {
        let now = Instant::now();
        let deadline = now + self.reserve(now, bytes);
        loop {
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

struct CleanerState {
    shared: Arc<Shared>,
    budget: IoBudget,
    /// Partitions a thread is cleaning now: one clean per partition at a time.
    in_progress: Mutex<HashSet<(String, u32)>>,
    stop: AtomicBool,
}

/// The running cleaner threads.
pub(crate) struct Cleaner {
    state: Arc<CleanerState>,
    threads: Vec<JoinHandle<()>>,
}

impl Cleaner {
    pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Cleaner> {
        let state = Arc::new(CleanerState {
            budget: IoBudget::new(shared.config.log_cleaner_io_max_bytes_per_second),
            in_progress: Mutex::new(HashSet::new()),
            stop: AtomicBool::new(false),
            shared,
        });
        let mut threads = Vec::new();
        for i in 0..state.shared.config.log_cleaner_threads {
            let state = Arc::clone(&state);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("log-cleaner-{i}"))
                    .spawn(move || cleaner_thread(&state))?,
            );
        }
        Ok(Cleaner { state, threads })
    }

    /// Stops the threads: a clean in progress stops pacing its I/O (a thread waiting
    /// for budget is woken) and drops its current group (its temporary files are
    /// removed) instead of swapping it in.
    pub(crate) fn stop(self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for thread in &self.threads {
            thread.thread().unpark();
        }
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a log cleaner thread panicked");
            }
        }
    }
}

fn cleaner_thread(state: &CleanerState) {
    let backoff = Duration::from_millis(state.shared.config.log_cleaner_backoff_ms);
    while !state.stop.load(Ordering::SeqCst) {
        let mut cleaned_any = false;
        for topic in state.shared.registry.all() {
            if !topic.log_config.cleanup_policy.compact {
                continue;
            }
            for partition in &topic.partitions {
                if state.stop.load(Ordering::SeqCst) {
                    return;
                }
                let key = (topic.name.clone(), partition.index);
                if !state.in_progress.lock().insert(key.clone()) {
                    continue;
                }
                let started = Instant::now();
                let result = clean_partition(state, partition);
                state.in_progress.lock().remove(&key);
                match result {
                    Ok(Some(stats)) => {
                        cleaned_any = true;
                        log_stats(&topic, partition, &stats, started.elapsed());
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        topic = %topic.name,
                        partition = partition.index,
                        error = %e,
                        "log cleaning failed"
                    ),
                }
            }
        }
        if !cleaned_any {
            std::thread::park_timeout(backoff);
        }
    }
}

fn log_stats(topic: &Topic, partition: &Partition, stats: &CleanStats, elapsed: Duration) {
    tracing::info!(
        topic = %topic.name,
        partition = partition.index,
        bytes_read = stats.bytes_read,
        bytes_written = stats.bytes_written,
        records_read = stats.records_read,
        records_kept = stats.records_kept,
        segments_before = stats.segments_before,
        segments_after = stats.segments_after,
        completed = stats.completed,
        elapsed_ms = elapsed.as_millis() as u64,
        "cleaned partition"
    );
}

/// One clean of one partition if it is due; `None` if it was not.
fn clean_partition(
    state: &CleanerState,
    partition: &Partition,
) -> Result<Option<CleanStats>, LogError> {
    let plan = match partition.log() {
        Ok(log) => log.plan_clean(now_ms())?,
        // An offline partition (corrupt log) is not cleaned.
        Err(_) => return Ok(None),
    };
    let Some(plan) = plan else {
        return Ok(None);
    };
    let config = &state.shared.config;
    let plan = plan.limit_key_map(
        config.log_cleaner_dedupe_buffer_size / u64::from(config.log_cleaner_threads.max(1)),
    );
    let stopping = || state.stop.load(Ordering::SeqCst);
    let stats = plan.run(
        &mut |bytes| state.budget.consume(bytes, &state.stop),
        &mut |group| match partition.log() {
            Ok(mut log) if !stopping() => log.swap_cleaned(group),
            _ => {
                group.discard();
                Ok(false)
            }
        },
    )?;
    if let Ok(mut log) = partition.log() {
        log.finish_clean(&stats)?;
    }
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_spaces_reservations_by_their_size() {
        let budget = IoBudget::new(1_000_000);
        let t0 = Instant::now();
        assert_eq!(budget.reserve(t0, 500_000), Duration::from_millis(500));
        // Back to back: the second waits for the first, then its own share.
        assert_eq!(budget.reserve(t0, 250_000), Duration::from_millis(750));
        // Later, after the reservations ended: no credit from the idle time.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(budget.reserve(later, 100_000), Duration::from_millis(100));
        let unlimited = IoBudget::new(0);
        assert_eq!(unlimited.reserve(t0, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn consuming_over_budget_takes_the_time_it_should() {
        let budget = IoBudget::new(2_000_000);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        for _ in 0..4 {
            budget.consume(100_000, &stop);
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn stopping_wakes_a_thread_waiting_for_budget() {
        let budget = Arc::new(IoBudget::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (budget, stop) = (budget.clone(), stop.clone());
            // A day's worth of budget at 1 byte per second.
            std::thread::spawn(move || budget.consume(86_400, &stop))
        };
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
        waiter.thread().unpark();
        let started = Instant::now();
        waiter.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
