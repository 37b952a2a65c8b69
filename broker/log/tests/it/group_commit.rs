//! Group commit: many appenders, few fdatasyncs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use meridian_log::{GroupCommit, LogConfig, PartitionLog};
use parking_lot::Mutex;

use crate::support::*;

#[test]
fn one_fsync_covers_many_appends_across_partitions() {
    const THREADS: usize = 8;
    const APPENDS_PER_THREAD: usize = 100;
    const IN_FLIGHT: usize = 10;
    const PARTITIONS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let partitions: Vec<Arc<Mutex<PartitionLog>>> = (0..PARTITIONS)
        .map(|p| {
            let log = PartitionLog::open(&dir.path().join(p.to_string()), LogConfig::default(), 0);
            Arc::new(Mutex::new(log.unwrap()))
        })
        .collect();
    let group_commit = Arc::new(GroupCommit::start());
    let acknowledged = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let partitions = partitions.clone();
            let group_commit = Arc::clone(&group_commit);
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                // Like a connection with up to IN_FLIGHT produce requests under
                // flush=always: each is acknowledged only once its sync completed.
                let (tx, rx) = mpsc::channel();
                for i in 0..APPENDS_PER_THREAD {
                    let batch = batch(1 + i % 3, 40, i as i64);
                    let handle = {
                        let mut log = partitions[(t + i) % PARTITIONS].lock();
                        append(&mut log, &batch, 0);
                        log.sync_handle()
                    };
                    let tx = tx.clone();
                    group_commit.sync(handle, Box::new(move |result| tx.send(result).unwrap()));
                    if i % IN_FLIGHT == IN_FLIGHT - 1 {
                        for _ in 0..IN_FLIGHT {
                            rx.recv().unwrap().unwrap();
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let syncs = (THREADS * APPENDS_PER_THREAD) as u64;
    assert_eq!(acknowledged.load(Ordering::Relaxed), syncs);
    let fsyncs = group_commit.fsyncs();
    eprintln!("{fsyncs} fdatasyncs for {syncs} sync calls");
    assert!(fsyncs > 0);
    assert!(fsyncs <= syncs / 4, "{fsyncs} fsyncs for {syncs} syncs");
    let stats = group_commit.stats();
    assert_eq!((stats.asked, stats.fsyncs), (syncs, fsyncs));
    assert!(stats.fsync_seconds > 0.0, "{stats:?}");
    let records: u64 = partitions
        .iter()
        .map(|p| {
            read_all(&p.lock())
                .iter()
                .map(|(h, _)| h.records_count as u64)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(
        records,
        (THREADS * (0..APPENDS_PER_THREAD).map(|i| 1 + i % 3).sum::<usize>()) as u64
    );
}

#[test]
fn queued_syncs_complete_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    append(&mut log, &batch(1, 1, 0), 0);
    let done = Arc::new(AtomicU64::new(0));
    let group_commit = GroupCommit::start();
    for _ in 0..100 {
        let done = Arc::clone(&done);
        group_commit.sync(
            log.sync_handle(),
            Box::new(move |result| {
                result.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }),
        );
    }
    drop(group_commit);
    assert_eq!(done.load(Ordering::Relaxed), 100);
}

#[test]
fn a_panicking_callback_does_not_stop_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    let group_commit = GroupCommit::start();
    group_commit.sync(log.sync_handle(), Box::new(|_| panic!("callback bug")));
    let (tx, rx) = mpsc::channel();
    group_commit.sync(
        log.sync_handle(),
        Box::new(move |result| tx.send(result).unwrap()),
    );
    rx.recv().unwrap().unwrap();
}
