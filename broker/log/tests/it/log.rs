//! Appends, reads, rolls, timestamp lookups and retention.

use bytes::Bytes;
use meridian_log::{validate_batches, LogConfig, LogError, PartitionLog};
use meridian_wire::batch::split_batches;
use meridian_wire::buffers::{BufferPool, MIN_POOLED_BYTES};
use meridian_wire::ErrorCode;

use crate::support::*;

#[test]
fn round_trip_with_consecutive_offsets_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    let mut appended = Vec::new();
    for i in 0..120usize {
        let n_records = 1 + i % 5;
        let batch = batch(n_records, 10 + (i * 37) % 200, 1000 + i as i64);
        let info = append(&mut log, &batch, 0);
        assert_eq!(info.base_offset, log.log_end_offset() - n_records as i64);
        assert_eq!(info.last_offset, info.base_offset + n_records as i64 - 1);
        assert_eq!(info.n_records, n_records as u64);
        assert_eq!(info.max_timestamp, 1000 + i as i64);
        appended.push((info, batch));
    }
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    let total: usize = appended.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(log.size_bytes(), total as u64);

    // Every offset reads back the whole batch holding it, byte for byte.
    for (info, batch) in &appended {
        for offset in info.base_offset..=info.last_offset {
            let slice = log.read(offset, 1).unwrap().unwrap();
            assert_eq!(slice.read().unwrap(), as_stored(batch, info.base_offset));
        }
    }
    let all = read_all(&log);
    assert_eq!(all.len(), appended.len());
    for ((header, bytes), (info, batch)) in all.iter().zip(&appended) {
        assert_eq!(header.partition_leader_epoch, EPOCH);
        assert_eq!(bytes, &as_stored(batch, info.base_offset));
    }

    let end = log.log_end_offset();
    assert!(log.read(end, 100).unwrap().is_none());
    for bad in [-1, end + 1, i64::MAX] {
        let error = log.read(bad, 100).unwrap_err();
        assert_eq!(error.code(), ErrorCode::OffsetOutOfRange, "{bad}: {error}");
    }
}

#[test]
fn reads_reuse_buffers_nothing_holds_and_keep_at_most_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    // Both above the smallest buffer pooled, the large one under 4 times the small.
    let small = batch(2, 40_000, 1000);
    let large = batch(3, 40_000, 1001);
    assert!(small.len() >= MIN_POOLED_BYTES && large.len() < 4 * small.len());
    let small_info = append(&mut log, &small, 0);
    let large_info = append(&mut log, &large, 0);
    let read = |offset: i64, pool: &BufferPool| {
        let slice = log.read(offset, 1).unwrap().unwrap();
        slice.read_with(pool).unwrap()
    };
    let pool = BufferPool::new(1 << 20);

    // The first read has nothing to reuse; its buffer is kept.
    let first = read(large_info.base_offset, &pool);
    assert_eq!(first, as_stored(&large, large_info.base_offset));
    assert_eq!(pool.kept_bytes(), large.len());
    let address = first.as_ptr();
    // Still held (as the transport holds bytes until they are acknowledged).
    let second = read(large_info.base_offset, &pool);
    assert_ne!(second.as_ptr(), address);
    let second_address = second.as_ptr();
    drop((first, second));

    // Released: the next read, even a smaller one, goes into the same memory, and
    // what it returns is its own batch, not the old contents.
    let reused = read(small_info.base_offset, &pool);
    assert_eq!(reused.as_ptr(), address);
    assert_eq!(reused, as_stored(&small, small_info.base_offset));
    drop(reused);

    // A larger read into a buffer holding a smaller one's bytes is whole too.
    for _ in 0..2 {
        let larger = read(large_info.base_offset, &pool);
        assert!([address, second_address].contains(&larger.as_ptr()));
        assert_eq!(larger, as_stored(&large, large_info.base_offset));
    }
    assert_eq!(
        pool.kept_bytes(),
        2 * large.len(),
        "each buffer counted once"
    );

    // Nothing beyond the limit is kept.
    let limited = BufferPool::new(large.len() - 1);
    let _ = read(large_info.base_offset, &limited);
    assert_eq!(limited.kept_bytes(), 0);
}

#[test]
fn reads_return_whole_batches_up_to_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 100,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    // Ten batches of 3 records each: offsets 0-2, 3-5, ..., 27-29, all the same size.
    let batch = batch(3, 50, 1);
    for _ in 0..10 {
        append(&mut log, &batch, 0);
    }
    let len = batch.len() as u32;
    let check = |offset: i64, max_bytes: u32, expected: &[i64]| {
        assert_eq!(
            read_bases(&log, offset, max_bytes),
            expected,
            "read({offset}, {max_bytes})"
        );
    };
    check(0, 0, &[0]);
    check(0, len - 1, &[0]);
    check(0, len, &[0]);
    check(1, len, &[0]);
    check(2, 2 * len - 1, &[0]);
    check(2, 2 * len, &[0, 3]);
    check(4, 3 * len + 5, &[3, 6, 9]);
    check(14, 1 << 20, &[12, 15, 18, 21, 24, 27]);
    check(29, 1, &[27]);
    check(30, 1 << 20, &[]);
}

#[test]
fn rolls_by_bytes_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        segment_ms: 60_000,
        ..small_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    let small = batch(1, 150, 0);
    // (batch, now_ms, expected segment count after the append)
    let big = batch(1, 3000, 0);
    let steps: Vec<(&Bytes, i64, usize)> = vec![
        (&small, 0, 1),
        (&small, 1, 1),
        (&small, 2, 1),
        (&small, 3, 1),
        (&small, 4, 2), // 5 * 222 bytes > 1000: rolled first
        (&big, 5, 3),   // bigger than a segment: a segment of its own
        (&small, 6, 4),
        (&small, 60_005, 4), // the segment's first batch came at 6
        (&small, 60_006, 5), // now 60 s old
    ];
    for (i, (batch, now_ms, segments)) in steps.into_iter().enumerate() {
        append(&mut log, batch, now_ms);
        assert_eq!(log.segment_count(), segments, "step {i}");
    }
    // An empty active segment never rolls by time.
    let empty_dir = tempfile::tempdir().unwrap();
    let mut empty = PartitionLog::open(empty_dir.path(), small_config(), 0).unwrap();
    empty.set_config(LogConfig {
        segment_ms: 1,
        ..small_config()
    });
    append(&mut empty, &small, 1_000_000);
    assert_eq!(empty.segment_count(), 1);
    let bases = read_all(&log)
        .iter()
        .map(|(h, _)| h.base_offset)
        .collect::<Vec<_>>();
    assert_eq!(bases, (0..9).collect::<Vec<_>>());
    assert_eq!(segment_files(dir.path(), "log").len(), 5);
    assert_eq!(segment_files(dir.path(), "index").len(), 5);
    assert_eq!(segment_files(dir.path(), "timeindex").len(), 5);
}

#[test]
fn oversized_batches_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default(), 0).unwrap();
    let ok = batch(1, 10, 0);
    let big = batch(1, 2_000_000, 0);
    let input = Bytes::from([ok.to_vec(), big.to_vec()].concat());
    let error = validate_batches(&input, log.config().max_message_bytes).unwrap_err();
    assert!(matches!(
        error,
        LogError::MessageTooLarge {
            limit: 1_048_588,
            ..
        }
    ));
    assert_eq!(error.code(), ErrorCode::MessageTooLarge);
    assert_eq!(log.log_end_offset(), 0);
    append(&mut log, &ok, 0);
    assert_eq!(log.log_end_offset(), 1);
}

#[test]
fn index_lookups_land_on_the_right_batch() {
    // Many tiny batches, several per index interval, over many segments: every offset
    // must resolve through the index plus a short header walk.
    for index_interval_bytes in [1, 100, 333, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 3000,
            index_interval_bytes,
            ..small_config()
        };
        let mut log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
        let mut bases = Vec::new();
        for i in 0..300usize {
            let info = append(&mut log, &batch(1 + i % 3, i % 40, i as i64), 0);
            bases.push((info.base_offset, info.last_offset));
        }
        // Reopen too, so sealed indexes come from disk (loaded lazily).
        log.close().unwrap();
        let log = PartitionLog::open(dir.path(), config, 0).unwrap();
        for &(base, last) in &bases {
            for offset in base..=last {
                assert_eq!(
                    read_bases(&log, offset, 0),
                    vec![base],
                    "interval {index_interval_bytes}"
                );
            }
        }
    }
}

/// Appends `batches` batches of one to four records with pseudo-random timestamps
/// below `below` (from `seed`), not monotonic within or across batches, over
/// several segments; returns every record's `(offset, timestamp)`.
fn append_unordered_timestamps(
    log: &mut PartitionLog,
    seed: u64,
    batches: usize,
    below: u64,
) -> Vec<(i64, i64)> {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % below
    };
    let mut records = Vec::new();
    for _ in 0..batches {
        let timestamps: Vec<i64> = (0..1 + next() % 4).map(|_| next() as i64).collect();
        let info = append(log, &batch_with_timestamps(&timestamps, 30), 0);
        for (i, &t) in timestamps.iter().enumerate() {
            records.push((info.base_offset + i as i64, t));
        }
    }
    assert!(log.segment_count() > 3);
    records
}

#[test]
fn offset_for_timestamp_is_exact_with_unordered_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    let records = append_unordered_timestamps(&mut log, 12345, 150, 10_000);
    let expected = |target: i64| records.iter().find(|&&(_, t)| t >= target).copied();
    let check = |log: &PartitionLog| {
        for target in (-5..10_010)
            .step_by(7)
            .chain([0, 9_999, 10_000, i64::MIN, i64::MAX])
        {
            assert_eq!(
                log.offset_for_timestamp(target).unwrap(),
                expected(target),
                "target {target}"
            );
        }
    };
    check(&log);
    drop(log); // a crash: recovery rebuilds the active segment's time index
    let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    check(&log);
}

/// The max-timestamp lookup (Kafka's ListOffsets version 7) finds the first record
/// holding the largest timestamp, wherever it is, and leaves out records below the
/// log start offset, even inside the batch the start cuts into.
#[test]
fn offset_of_max_timestamp_is_the_first_record_with_the_largest() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(log.offset_of_max_timestamp().unwrap(), None);
    let records = append_unordered_timestamps(&mut log, 777, 120, 5_000);
    let expected = |from: i64| {
        let live = records.iter().filter(|&&(o, _)| o >= from);
        let max = live.clone().map(|&(_, t)| t).max()?;
        live.copied().find(|&(_, t)| t == max)
    };
    assert_eq!(log.offset_of_max_timestamp().unwrap(), expected(0));
    // Move the start forward, into batches and segments, then past the record
    // found each time until the log is empty.
    for start in [3, 17, 61, 140] {
        log.delete_before(start).unwrap();
        assert_eq!(
            log.offset_of_max_timestamp().unwrap(),
            expected(start),
            "from {start}"
        );
    }
    while let Some((offset, _)) = log.offset_of_max_timestamp().unwrap() {
        log.delete_before(offset + 1).unwrap();
        assert_eq!(
            log.offset_of_max_timestamp().unwrap(),
            expected(offset + 1),
            "from {}",
            offset + 1
        );
    }
    assert_eq!(log.log_start_offset(), log.log_end_offset());
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(
        log.offset_of_max_timestamp().unwrap(),
        expected(log.log_start_offset())
    );
}

#[test]
fn retention_by_time_deletes_old_sealed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        retention_ms: Some(1000),
        ..small_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    // Segments of ~4 batches; timestamps 0, 100, 200, ...
    for i in 0..20 {
        append(&mut log, &batch(2, 200, i * 100), 0);
    }
    let segments = log.segment_count();
    assert!(segments >= 4);
    let slice_before = log.read(0, 100_000).unwrap().unwrap();

    assert_eq!(log.apply_retention(1000).unwrap().deleted_segments, 0);
    // Cutoff 2500 - 1000 = 1500: segments whose newest batch is older go.
    let outcome = log.apply_retention(2500).unwrap();
    assert!(outcome.deleted_segments > 0);
    assert_eq!(outcome.log_start_offset, log.log_start_offset());
    assert!(log.log_start_offset() > 0);
    let first = read_all(&log)[0].0;
    assert!(first.max_timestamp >= 1000, "{first:?}");
    let error = log.read(0, 100).unwrap_err();
    assert_eq!(error.code(), ErrorCode::OffsetOutOfRange);
    // The slice planned before the deletion still reads the unlinked file.
    let bytes = slice_before.read().unwrap();
    assert_eq!(
        split_batches(bytes).next().unwrap().unwrap().0.base_offset,
        0
    );

    // Everything is expired, but the active segment stays.
    let outcome = log.apply_retention(i64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(outcome.log_start_offset, log.log_start_offset());
    assert_eq!(segment_files(dir.path(), "log").len(), 1);
    assert_eq!(segment_files(dir.path(), "index").len(), 1);
    let end = log.log_end_offset();
    append(&mut log, &batch(1, 1, 0), 0);
    assert_eq!(log.log_end_offset(), end + 1);
    // None keeps everything.
    log.set_config(LogConfig {
        retention_ms: None,
        ..log.config().clone()
    });
    assert_eq!(log.apply_retention(i64::MAX).unwrap().deleted_segments, 0);
}

#[test]
fn retention_by_size_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        retention_bytes: Some(2500),
        ..small_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    for i in 0..30 {
        append(&mut log, &batch(1, 200, i), 0);
    }
    let before = log.size_bytes();
    let outcome = log.apply_retention(0).unwrap();
    assert!(outcome.deleted_segments > 0);
    assert_eq!(log.size_bytes(), before - outcome.deleted_bytes);
    assert!(log.size_bytes() >= 2500, "{}", log.size_bytes());
    // One more deletion would go under the limit.
    let sizes_without_oldest = log.size_bytes()
        - log
            .read(log.log_start_offset(), u32::MAX)
            .unwrap()
            .unwrap()
            .len() as u64;
    assert!(sizes_without_oldest < 2500);
    assert_eq!(log.apply_retention(0).unwrap().deleted_segments, 0);
    // Reopen: the log starts where retention left it.
    let start = log.log_start_offset();
    let end = log.log_end_offset();
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, end));
}
