//! Reopening after clean shutdowns and crashes, with damaged files.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use meridian_log::{LogConfig, LogError, PartitionLog, CLEAN_SHUTDOWN_MARKER};
use meridian_wire::batch::BatchHeader;
use meridian_wire::ErrorCode;
use proptest::prelude::*;

use crate::support::*;

/// Appends `n` batches of varying size; returns their stored bytes in order.
fn fill(log: &mut PartitionLog, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let batch = batch(1 + i % 4, 20 + (i * 53) % 300, i as i64);
            let info = append(log, &batch, 0);
            as_stored(&batch, info.base_offset)
        })
        .collect()
}

fn stored(log: &PartitionLog) -> Vec<Bytes> {
    read_all(log).into_iter().map(|(_, b)| b).collect()
}

fn active_log_file(dir: &Path) -> std::path::PathBuf {
    segment_files(dir, "log").pop().unwrap()
}

#[test]
fn clean_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    let batches = fill(&mut log, 60);
    let (segments, end) = (log.segment_count(), log.log_end_offset());
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert!(
        !dir.path().join(CLEAN_SHUTDOWN_MARKER).exists(),
        "marker removed on open"
    );
    assert_eq!((log.segment_count(), log.log_end_offset()), (segments, end));
    assert_eq!(stored(&log), batches);
    let info = append(&mut log, &batch(1, 1, 0), 0);
    assert_eq!(info.base_offset, end);
}

/// The damage done to the tail of the active segment after a crash.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut the file this many bytes before its end.
    Truncate(u64),
    /// Append these many garbage bytes.
    Garbage(usize),
    /// Flip a byte this many bytes before the end (inside the last batch).
    Flip(u64),
}

/// Damages the tail of a segment file.
fn damage(path: &Path, damage: Damage) {
    let len = std::fs::metadata(path).unwrap().len();
    match damage {
        Damage::Truncate(by) => OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len - by)
            .unwrap(),
        Damage::Garbage(n) => {
            let garbage: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            OpenOptions::new()
                .append(true)
                .open(path)
                .unwrap()
                .write_all(&garbage)
                .unwrap()
        }
        Damage::Flip(back) => {
            let mut bytes = std::fs::read(path).unwrap();
            let at = (len - back) as usize;
            bytes[at] ^= 0x40;
            std::fs::write(path, bytes).unwrap();
        }
    }
}

#[test]
fn crash_with_a_damaged_tail_keeps_exactly_the_batches_before_it() {
    // (damage, how many trailing batches are lost)
    let cases = [
        (Damage::Truncate(1), 1),
        (Damage::Truncate(30), 1),
        (Damage::Garbage(5), 0),
        (Damage::Garbage(100), 0),
        (Damage::Flip(1), 1),
        (Damage::Flip(20), 1),
    ];
    for (case, lost) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        let batches = fill(&mut log, 40);
        let segments = log.segment_count();
        drop(log); // crash: no clean-shutdown marker
        damage(&active_log_file(dir.path()), case);

        let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        let kept = &batches[..batches.len() - lost];
        assert_eq!(stored(&log), kept, "{case:?}");
        assert_eq!(log.segment_count(), segments);
        let end = log.log_end_offset();
        let info = append(&mut log, &batch(2, 5, 0), 0);
        assert_eq!(info.base_offset, end, "{case:?}");
        // And the repaired log survives another crash unchanged.
        let after = stored(&log);
        drop(log);
        let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        assert_eq!(stored(&log), after, "{case:?}");
    }
}

#[test]
fn a_damaged_tail_under_a_clean_marker_is_still_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    let batches = fill(&mut log, 10);
    log.close().unwrap();
    damage(&active_log_file(dir.path()), Damage::Garbage(70));
    let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(stored(&log), batches);
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt() {
    for victim in ["index", "timeindex"] {
        for (which, truncate) in [(0, false), (1, true), (usize::MAX, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
            let batches = fill(&mut log, 60);
            log.close().unwrap();
            let files = segment_files(dir.path(), victim);
            let path = &files[which.min(files.len() - 1)];
            if truncate {
                // Not a multiple of the entry size any more.
                let len = std::fs::metadata(path).unwrap().len();
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_len(len - 3)
                    .unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
            let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
            assert_eq!(stored(&log), batches, "{victim} {which} {truncate}");
            assert!(path.exists(), "{} rebuilt", path.display());
            assert_eq!(
                log.offset_for_timestamp(30).unwrap(),
                Some((read_all(&log)[30].0.base_offset, 30))
            );
        }
    }
}

#[test]
fn a_corrupt_sealed_segment_is_refused_loudly() {
    let cases = [
        Damage::Flip(1),
        Damage::Flip(40),
        Damage::Truncate(10),
        Damage::Garbage(30),
    ];
    for case in cases {
        for clean in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
            fill(&mut log, 60);
            if clean {
                log.close().unwrap();
            } else {
                drop(log);
            }
            let sealed = segment_files(dir.path(), "log").remove(1);
            damage(&sealed, case);
            match PartitionLog::open(dir.path(), small_config(), 0) {
                Err(error @ LogError::Corrupt { .. }) => {
                    assert_eq!(error.code(), ErrorCode::CorruptLog);
                    let message = error.to_string();
                    assert!(message.contains(sealed.to_str().unwrap()), "{message}");
                }
                other => panic!("{case:?}: expected Corrupt, got {other:?}"),
            }
        }
    }
}

/// Batches as (record timestamps, value length). Timestamps are random (not monotonic)
/// or, half the time, all equal, which leaves the time index nearly empty.
fn arb_batches() -> impl Strategy<Value = Vec<(Vec<i64>, usize)>> {
    let batch = (proptest::collection::vec(0i64..1000, 1..6), 0usize..400);
    (proptest::collection::vec(batch, 1..40), any::<bool>()).prop_map(|(mut batches, constant)| {
        if constant {
            for (timestamps, _) in &mut batches {
                timestamps.iter_mut().for_each(|t| *t = 500);
            }
        }
        batches
    })
}

proptest! {
    // 48 cases keep the fast suite fast; PROPTEST_CASES=2000 for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn recovery_keeps_every_batch_before_the_damage(
        shape in arb_batches(),
        cut_fraction in 0.0f64..1.0,
        flip in any::<bool>(),
        garbage in 0usize..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes: 6000, index_interval_bytes: 128, ..small_config() };
        let mut log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
        let mut batches = Vec::new(); // (base offset, stored bytes)
        let mut timestamps = Vec::new(); // per batch, its records' timestamps
        for (record_timestamps, value_len) in &shape {
            let batch = batch_with_timestamps(record_timestamps, *value_len);
            let info = append(&mut log, &batch, 0);
            batches.push((info.base_offset, as_stored(&batch, info.base_offset)));
            timestamps.push(record_timestamps.clone());
        }
        drop(log);

        // Damage the active segment: cut it anywhere (and maybe append garbage), or flip
        // a bit in its last batch. (A flip further back, before the last index entry,
        // is beyond what crash recovery scans; reads report it as Corrupt.)
        let path = active_log_file(dir.path());
        let active_base: i64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last_len = batches.last().unwrap().1.len();
        let at = if flip {
            bytes.len() - last_len + (last_len as f64 * cut_fraction) as usize
        } else {
            (bytes.len() as f64 * cut_fraction) as usize
        };
        if flip {
            bytes[at] ^= 0x01;
        } else {
            bytes.truncate(at);
            bytes.extend((0..garbage).map(|i| (i * 31 + 1) as u8));
        }
        std::fs::write(&path, &bytes).unwrap();

        // Whatever ends by the damage survives; the rest is gone.
        let mut position = 0usize;
        let mut expected = Vec::new();
        for (base, stored) in &batches {
            if *base < active_base {
                expected.push(stored.clone());
                continue;
            }
            let end = position + stored.len();
            if end > at {
                break;
            }
            expected.push(stored.clone());
            position = end;
        }
        let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
        let got = stored(&log);
        let flipped_uncovered = flip && {
            // Bytes 0..21 of a batch are base offset, length, epoch, magic and CRC. A
            // flip there is caught by a header or CRC check except in the epoch and
            // the base offset, which are not covered. A flipped epoch survives. So
            // does a base offset flipped upwards within what the segment can index:
            // offsets only have to increase, since a follower's copy of a compacted
            // log has gaps (Kafka checks no more); flipped downwards, it is caught.
            let offset_in_batch = at - position;
            let last = batches.last().unwrap();
            let header = BatchHeader::parse(&last.1).unwrap();
            let start = bytes.len() - last_len;
            let flipped_base = i64::from_be_bytes(bytes[start..start + 8].try_into().unwrap());
            (12..16).contains(&offset_in_batch)
                || (offset_in_batch < 8
                    && flipped_base > last.0
                    && flipped_base + i64::from(header.last_offset_delta) - active_base
                        <= i64::from(u32::MAX))
        };
        if flipped_uncovered {
            prop_assert_eq!(got.len(), expected.len() + 1);
            prop_assert_eq!(&got[..expected.len()], &expected[..]);
        } else {
            prop_assert_eq!(&got, &expected);
        }
        let end = log.log_end_offset();
        let info = append(&mut log, &batch(1, 3, 0), 0);
        prop_assert_eq!(info.base_offset, end);

        // Timestamp lookups over the recovered log are still exact.
        let mut records: Vec<(i64, i64)> = Vec::new();
        for (stored, record_timestamps) in got.iter().zip(&timestamps) {
            let base = BatchHeader::parse(stored).unwrap().base_offset;
            records.extend(record_timestamps.iter().enumerate().map(|(i, &t)| (base + i as i64, t)));
        }
        records.push((end, 0)); // the batch appended after recovery
        for target in [0, 1, 250, 499, 500, 501, 750, 999, 1000] {
            let expected = records.iter().find(|&&(_, t)| t >= target).copied();
            prop_assert_eq!(log.offset_for_timestamp(target).unwrap(), expected, "target {}", target);
        }
    }
}

#[test]
fn sealed_segments_are_not_scanned_on_open() {
    // Damage inside a record of a sealed segment's first batch, far from its end: the
    // cheap open-time check does not read it (that is what keeps restarts fast), the
    // log opens, and the batch is served as stored; consumers check CRCs end to end.
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        let batches = fill(&mut log, 60);
        if clean {
            log.close().unwrap();
        } else {
            drop(log);
        }
        let sealed = segment_files(dir.path(), "log").remove(0);
        let mut bytes = std::fs::read(&sealed).unwrap();
        bytes[batches[0].len() - 1] ^= 0x01;
        std::fs::write(&sealed, &bytes).unwrap();
        let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        assert_eq!(end_offset_from_last_batch(&log), log.log_end_offset());
        let first = log.read(0, 0).unwrap().unwrap().read().unwrap();
        assert_eq!(first.len(), batches[0].len());
        assert_ne!(first, batches[0]);
    }
}

/// The log end offset according to the last batch on disk.
fn end_offset_from_last_batch(log: &PartitionLog) -> i64 {
    let last = log.read(log.log_end_offset() - 1, 0).unwrap().unwrap();
    let bytes = last.read().unwrap();
    meridian_wire::batch::BatchHeader::parse(&bytes)
        .unwrap()
        .last_offset()
        + 1
}

#[test]
fn a_wrong_but_well_formed_sealed_index_entry_is_repaired_on_read() {
    // (how the first entry of the first sealed index is bent)
    type Bend = fn(u32, u32) -> (u32, u32);
    let bends: [Bend; 3] = [
        |rel, pos| (rel, pos + 1),     // points into the middle of a batch
        |rel, pos| (rel + 1, pos),     // right batch, wrong offset
        |rel, pos| (rel - 1, pos - 1), // still ordered, still wrong
    ];
    for bend in bends {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        let batches = fill(&mut log, 60);
        log.close().unwrap();
        let index_path = segment_files(dir.path(), "index").remove(0);
        let mut index = std::fs::read(&index_path).unwrap();
        assert!(index.len() >= 16, "the test needs two entries");
        let rel = u32::from_be_bytes(index[0..4].try_into().unwrap());
        let pos = u32::from_be_bytes(index[4..8].try_into().unwrap());
        let (rel, pos) = bend(rel, pos);
        index[0..4].copy_from_slice(&rel.to_be_bytes());
        index[4..8].copy_from_slice(&pos.to_be_bytes());
        std::fs::write(&index_path, &index).unwrap();

        let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
        assert_eq!(stored(&log), batches);
        for offset in 0..log.log_end_offset() {
            assert!(log.read(offset, 0).unwrap().is_some());
        }
        assert_ne!(
            std::fs::read(&index_path).unwrap(),
            index,
            "index file rewritten"
        );
    }
}

/// The active segment's index entries reach their files 128 at a time and at each
/// flush, not with every append; a crash in between loses none of them, and a
/// reopen keeps the files' entries rather than rewriting them.
#[test]
fn index_entries_are_written_in_groups_and_a_crash_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        // Every batch below is longer, so each after the first gets an offset entry,
        // and a time entry too, its timestamp being larger than any before.
        index_interval_bytes: 64,
        retention_ms: None,
        ..LogConfig::default()
    };
    let index_len = |extension| {
        std::fs::metadata(segment_files(dir.path(), extension).pop().unwrap())
            .unwrap()
            .len()
    };
    let mut log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
    let mut batches = Vec::new();
    let mut add = |log: &mut PartitionLog, n: usize| {
        for _ in 0..n {
            let t = batches.len() as i64 * 10;
            let batch = batch(1, 100, t);
            let info = append(log, &batch, 0);
            batches.push((info.base_offset, t, as_stored(&batch, info.base_offset)));
        }
    };
    add(&mut log, 100);
    assert_eq!((index_len("index"), index_len("timeindex")), (0, 0));
    add(&mut log, 50);
    // The first 128 entries went as one group (8 bytes an offset entry, 12 a time one).
    assert_eq!(
        (index_len("index"), index_len("timeindex")),
        (128 * 8, 128 * 12)
    );

    // A crash: 21 entries were never written.
    drop(log);
    let log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
    assert_eq!(
        stored(&log),
        batches
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (index_len("index"), index_len("timeindex")),
        (128 * 8, 128 * 12),
        "the files' entries were kept as they were"
    );
    for &(base_offset, timestamp, _) in &batches {
        assert_eq!(read_bases(&log, base_offset, 1)[0], base_offset);
        assert_eq!(
            log.offset_for_timestamp(timestamp).unwrap().unwrap().0,
            base_offset
        );
    }

    // A flush writes the rest; a clean reopen then finds every entry in the files.
    let mut log = log;
    log.flush().unwrap();
    assert_eq!(
        (index_len("index"), index_len("timeindex")),
        (149 * 8, 149 * 12)
    );
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), config, 0).unwrap();
    assert_eq!(log.log_end_offset(), 150);
    assert_eq!(read_bases(&log, 149, 1), [149]);
}
