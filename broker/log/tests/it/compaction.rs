//! Compaction (the cleaner), `delete_before`, and their crash recovery.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use meridian_log::{
    require_keys, validate_batches, CleanupPolicy, LogConfig, LogError, PartitionLog,
};
use meridian_wire::batch::{
    decode_records, encode_batch, split_batches, Compression, NewRecord, ProducerIdentity,
};
use proptest::prelude::*;

use crate::support::{append, batch, small_config};

/// One produced record: key, value (`None` is a tombstone), timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Produced {
    key: Option<u8>,
    value: Option<u16>,
    timestamp: i64,
}

fn key_bytes(key: u8) -> Bytes {
    Bytes::from(format!("key-{key}"))
}

fn encode(records: &[Produced], compression: Compression) -> Bytes {
    let records: Vec<NewRecord> = records
        .iter()
        .map(|r| NewRecord {
            timestamp: r.timestamp,
            key: r.key.map(key_bytes),
            value: r
                .value
                .map(|v| Bytes::from(format!("value-{v}-{}", "x".repeat(40)))),
            headers: vec![],
        })
        .collect();
    encode_batch(&records, compression, ProducerIdentity::NONE).unwrap()
}

fn compact_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: 50,
        ..small_config()
    }
}

/// `(offset, key, value, timestamp)` of every record from the log start, checking
/// that offsets strictly increase and that each read starts where asked or later.
fn read_records(log: &PartitionLog) -> Vec<(i64, Option<Bytes>, Option<Bytes>, i64)> {
    let mut out: Vec<(i64, Option<Bytes>, Option<Bytes>, i64)> = Vec::new();
    let mut offset = log.log_start_offset();
    while let Some(slice) = log.read(offset, 700).unwrap() {
        for result in split_batches(slice.read().unwrap()) {
            let (header, batch) = result.unwrap();
            assert!(
                header.last_offset() >= offset,
                "a read never goes backwards"
            );
            for record in decode_records(&header, &batch).unwrap() {
                if record.offset < offset {
                    continue;
                }
                if let Some(last) = out.last() {
                    assert!(record.offset > last.0, "offsets strictly increase");
                }
                out.push((record.offset, record.key, record.value, record.timestamp));
            }
            offset = header.last_offset() + 1;
        }
    }
    assert_eq!(offset, log.log_end_offset());
    out
}

/// Appends the records in batches of the given sizes; returns every record with its
/// offset.
fn produce(
    log: &mut PartitionLog,
    records: &[Produced],
    batch_sizes: &[usize],
    compression: Compression,
) -> Vec<(i64, Produced)> {
    let mut out = Vec::new();
    let mut rest = records;
    let mut sizes = batch_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        let info = append(log, &encode(chunk, compression), 0);
        for (i, record) in chunk.iter().enumerate() {
            out.push((info.base_offset + i as i64, record.clone()));
        }
        rest = tail;
    }
    out
}

/// What a log must hold after cleaning everything below `cleaned_end`, where
/// `tombstone_expired(offset)` says whether a tombstone there was first cleaned at
/// least `delete.retention.ms` before the last clean.
fn expected_after_clean(
    produced: &[(i64, Produced)],
    cleaned_end: i64,
    tombstone_expired: impl Fn(i64) -> bool,
) -> Vec<i64> {
    let mut latest: HashMap<u8, i64> = HashMap::new();
    for (offset, record) in produced {
        if *offset < cleaned_end {
            if let Some(key) = record.key {
                latest.insert(key, *offset);
            }
        }
    }
    produced
        .iter()
        .filter(|(offset, record)| {
            if *offset >= cleaned_end {
                return true;
            }
            let Some(key) = record.key else { return true };
            latest[&key] == *offset && !(record.value.is_none() && tombstone_expired(*offset))
        })
        .map(|(offset, _)| *offset)
        .collect()
}

fn check_contents(log: &PartitionLog, produced: &[(i64, Produced)], expected: &[i64]) {
    let by_offset: HashMap<i64, &Produced> = produced.iter().map(|(o, r)| (*o, r)).collect();
    let read = read_records(log);
    let offsets: Vec<i64> = read.iter().map(|r| r.0).collect();
    assert_eq!(offsets, expected);
    for (offset, key, value, timestamp) in read {
        let original = by_offset[&offset];
        assert_eq!(key, original.key.map(key_bytes), "key at {offset}");
        assert_eq!(
            value.is_none(),
            original.value.is_none(),
            "tombstone at {offset}"
        );
        if let (Some(value), Some(v)) = (&value, original.value) {
            assert!(value.starts_with(format!("value-{v}-").as_bytes()));
        }
        assert_eq!(timestamp, original.timestamp, "timestamp at {offset}");
    }
}

fn compression_strategy() -> impl Strategy<Value = Compression> {
    proptest::sample::select(Compression::ALL.to_vec())
}

fn record_strategy() -> impl Strategy<Value = Produced> {
    (
        0u8..12,
        prop::option::weighted(0.8, any::<u16>()),
        0i64..100,
    )
        .prop_map(|(key, value, timestamp)| Produced {
            key: Some(key),
            value,
            timestamp,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After cleaning (twice, with more data and some time in between, and after a
    /// reopen), reading from the start gives every record that must stay and nothing
    /// else: the latest record of every key below the cleaned end, tombstones until a
    /// clean at least `delete.retention.ms` (50 ms here) after their first clean,
    /// everything in the uncleaned tail; at their original offsets, in increasing
    /// order, with their original contents.
    #[test]
    fn cleaning_keeps_the_latest_record_per_key(
        first in prop::collection::vec(record_strategy(), 1..250),
        second in prop::collection::vec(record_strategy(), 0..150),
        batch_sizes in prop::collection::vec(1usize..9, 1..6),
        compression in compression_strategy(),
        later_ms in prop_oneof![Just(0i64), Just(49), Just(50), Just(500)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
        let mut produced = produce(&mut log, &first, &batch_sizes, compression);
        let first_end = *log.segment_base_offsets().last().unwrap();
        let stats = log.clean(100, &mut |_| {}).unwrap();
        prop_assert_eq!(stats.is_some(), first_end > 0);
        // A first clean keeps every tombstone.
        let expected = expected_after_clean(&produced, first_end, |_| false);
        check_contents(&log, &produced, &expected);

        produced.extend(produce(&mut log, &second, &batch_sizes, compression));
        let sealed_end = *log.segment_base_offsets().last().unwrap();
        let second_clean = log.clean(100 + later_ms, &mut |_| {}).unwrap();
        prop_assert_eq!(second_clean.is_some(), sealed_end > first_end);
        // The second drops the tombstones the first one took in, once 50 ms passed.
        let expired = second_clean.is_some() && later_ms >= 50;
        let expected =
            expected_after_clean(&produced, sealed_end, |offset| expired && offset < first_end);
        check_contents(&log, &produced, &expected);

        // From every offset, gap or not, a consumer reaches the first record at or
        // after it (a batch may end in removed records: then the next one follows).
        for offset in log.log_start_offset()..log.log_end_offset() {
            let first_after = expected.iter().copied().find(|&o| o >= offset);
            let mut position = offset;
            let mut first_read = None;
            while let Some(slice) = log.read(position, 1).unwrap() {
                let (header, batch) =
                    split_batches(slice.read().unwrap()).next().unwrap().unwrap();
                prop_assert!(header.last_offset() >= position);
                first_read = decode_records(&header, &batch)
                    .unwrap()
                    .into_iter()
                    .map(|r| r.offset)
                    .find(|&o| o >= offset);
                if first_read.is_some() {
                    break;
                }
                position = header.last_offset() + 1;
            }
            prop_assert_eq!(first_read, first_after);
        }

        // Timestamp lookups find the first remaining record at or after a time.
        let by_offset: HashMap<i64, i64> =
            produced.iter().map(|(o, r)| (*o, r.timestamp)).collect();
        for timestamp in [0, 1, 25, 50, 99, 100] {
            let want = expected
                .iter()
                .map(|o| (*o, by_offset[o]))
                .find(|(_, t)| *t >= timestamp);
            prop_assert_eq!(log.offset_for_timestamp(timestamp).unwrap(), want);
        }

        drop(log);
        let log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
        check_contents(&log, &produced, &expected);
    }
}

/// A topic with several keys rewritten many times, in segments of a few batches.
fn churn(log: &mut PartitionLog, rounds: u16, compression: Compression) -> Vec<(i64, Produced)> {
    let records: Vec<Produced> = (0..rounds)
        .flat_map(|round| {
            (0..5u8).map(move |key| Produced {
                key: Some(key),
                value: Some(round),
                timestamp: 10,
            })
        })
        .collect();
    produce(log, &records, &[5], compression)
}

#[test]
fn the_active_segment_is_never_cleaned_and_the_dirty_ratio_decides() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        min_cleanable_dirty_ratio: 0.5,
        ..compact_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    let produced = churn(&mut log, 60, Compression::None);
    let segments_before = log.segment_count();
    assert!(segments_before > 3);
    let active_base = *log.segment_base_offsets().last().unwrap();
    let stats = log
        .clean(100, &mut |_| {})
        .unwrap()
        .expect("all dirty: due");
    assert!(stats.completed);
    assert!(stats.records_kept < stats.records_read);
    assert_eq!(*log.segment_base_offsets().last().unwrap(), active_base);
    let expected = expected_after_clean(&produced, active_base, |_| false);
    check_contents(&log, &produced, &expected);
    assert!(
        log.segment_count() < segments_before,
        "small cleaned segments are merged"
    );

    // Nothing new is dirty: not due.
    assert!(log.plan_clean(100).unwrap().is_none());
    // A little new dirty data against a bigger clean part: still below 0.5.
    let mut produced = produced;
    produced.extend(churn(&mut log, 2, Compression::None));
    let plan = log.plan_clean(100).unwrap();
    let sealed_after_first = log.segment_count() - 1;
    if let Some(plan) = plan {
        panic!(
            "dirty {} of {} bytes is below the ratio ({sealed_after_first} sealed)",
            plan.dirty_bytes, plan.cleanable_bytes
        );
    }
    // Once the dirty part outweighs the clean part, it is due.
    produced.extend(churn(&mut log, 60, Compression::None));
    let plan = log.plan_clean(100).unwrap().expect("due once dirty");
    assert!(plan.dirty_bytes * 2 >= plan.cleanable_bytes);
}

#[test]
fn min_compaction_lag_keeps_recent_segments_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        min_compaction_lag_ms: 1000,
        ..compact_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    churn(&mut log, 40, Compression::None);
    // Records are stamped 10: at 500 they are only 490 ms old.
    assert!(log.clean(500, &mut |_| {}).unwrap().is_none());
    let stats = log.clean(1010, &mut |_| {}).unwrap().unwrap();
    assert!(stats.records_kept < stats.records_read);

    // A segment holding a recent record stops the cleanable part, even when older
    // segments follow it (timestamps are the producers' and need not grow).
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        min_compaction_lag_ms: 1000,
        ..compact_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    let stamped = |timestamp: i64, n: u16| -> Vec<Produced> {
        (0..n)
            .map(|v| Produced {
                key: Some((v % 5) as u8),
                value: Some(v),
                timestamp,
            })
            .collect()
    };
    produce(&mut log, &stamped(10, 100), &[5], Compression::None);
    let recent_from = log.log_end_offset();
    produce(&mut log, &stamped(2000, 5), &[5], Compression::None);
    produce(&mut log, &stamped(10, 200), &[5], Compression::None);
    let bases = log.segment_base_offsets();
    let recent_segment = bases.partition_point(|&b| b <= recent_from) - 1;
    assert!(
        bases.len() > recent_segment + 3,
        "old segments follow: {bases:?}"
    );
    let stats = log.clean(1500, &mut |_| {}).unwrap().unwrap();
    assert_eq!(stats.end_offset, bases[recent_segment]);
}

#[test]
fn tombstones_stay_for_delete_retention_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    let mut records = vec![
        Produced {
            key: Some(1),
            value: Some(1),
            timestamp: 10,
        },
        Produced {
            key: Some(1),
            value: None,
            timestamp: 20,
        },
    ];
    // Enough later records (other key) to seal the segment holding the tombstone.
    records.extend((0..80).map(|v| Produced {
        key: Some(2),
        value: Some(v),
        timestamp: 30,
    }));
    let mut produced = produce(&mut log, &records, &[1], Compression::Zstd);
    // Retention counts from the first clean, not from the record's timestamp (20):
    // the clean at 1000 takes the tombstone in and keeps it.
    log.clean(1000, &mut |_| {}).unwrap().unwrap();
    let read = read_records(&log);
    assert_eq!(read[0].0, 1, "the old value goes, the tombstone stays");
    assert!(read[0].2.is_none());
    // Later cleans (each needs new dirty data) keep it for 50 ms after that.
    let mut more = |log: &mut PartitionLog, key: u8| {
        let records: Vec<Produced> = (0..80)
            .map(|v| Produced {
                key: Some(key),
                value: Some(v),
                timestamp: 30,
            })
            .collect();
        produced.extend(produce(log, &records, &[1], Compression::Zstd));
    };
    more(&mut log, 3);
    log.clean(1049, &mut |_| {}).unwrap().unwrap();
    assert_eq!(
        read_records(&log)[0].0,
        1,
        "49 ms after its first clean: stays"
    );
    more(&mut log, 4);
    log.clean(1050, &mut |_| {}).unwrap().unwrap();
    assert!(
        read_records(&log).iter().all(|r| r.0 > 1),
        "50 ms after: gone"
    );
    more(&mut log, 5);
    log.clean(1200, &mut |_| {}).unwrap().unwrap();
    let sealed_end = *log.segment_base_offsets().last().unwrap();
    check_contents(
        &log,
        &produced,
        &expected_after_clean(&produced, sealed_end, |offset| offset == 1),
    );
    // The checkpoint merged the three passes older than the retention into one line.
    let checkpoint =
        std::fs::read_to_string(dir.path().join(meridian_log::CLEANER_CHECKPOINT_FILE)).unwrap();
    assert_eq!(checkpoint.lines().count(), 2, "{checkpoint}");
}

#[test]
fn compact_only_topics_ignore_retention_and_compact_delete_applies_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(1),
        ..compact_config()
    };
    let mut log = PartitionLog::open(dir.path(), config.clone(), 0).unwrap();
    churn(&mut log, 30, Compression::None);
    let outcome = log.apply_retention(1_000_000).unwrap();
    assert_eq!(outcome.deleted_segments, 0);
    log.set_config(LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT_DELETE,
        ..config
    });
    let outcome = log.apply_retention(1_000_000).unwrap();
    assert!(outcome.deleted_segments > 0);
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn records_without_keys_are_refused_for_compacted_topics() {
    let keyless = encode(
        &[
            Produced {
                key: Some(1),
                value: Some(1),
                timestamp: 0,
            },
            Produced {
                key: None,
                value: Some(2),
                timestamp: 0,
            },
        ],
        Compression::Lz4,
    );
    let validated = validate_batches(&keyless, 1 << 20).unwrap();
    let error = require_keys(&validated).unwrap_err();
    assert!(
        matches!(error, LogError::MissingKey { offset_delta: 1 }),
        "{error}"
    );
    assert_eq!(error.code(), meridian_wire::ErrorCode::InvalidRecord);
    let keyed = encode(
        &[Produced {
            key: Some(1),
            value: None,
            timestamp: 0,
        }],
        Compression::None,
    );
    require_keys(&validate_batches(&keyed, 1 << 20).unwrap()).unwrap();
}

/// Copies the regular files of a partition directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Crash states of a clean, built from the files before and after a real one: before
/// the commit (leftover `.cleaned` files: the old segments stay), after it (a `.swap`
/// file, with some or all old segments deleted: the swap completes). Either way the
/// reopened log holds exactly one version of the data, never a mix.
#[test]
fn a_crash_at_any_point_of_a_swap_recovers_to_before_or_after() {
    let root = tempfile::tempdir().unwrap();
    let before_dir = root.path().join("before");
    let after_dir = root.path().join("after");
    let mut log = PartitionLog::open(&before_dir, compact_config(), 0).unwrap();
    let produced = churn(&mut log, 40, Compression::Lz4);
    log.close().unwrap();
    copy_dir(&before_dir, &after_dir);
    let mut log = PartitionLog::open(&after_dir, compact_config(), 0).unwrap();
    let before = read_records(&log);
    let sealed_before: Vec<i64> = log.segment_base_offsets();
    let stats = log.clean(100, &mut |_| {}).unwrap().unwrap();
    assert_eq!(
        stats.segments_after, 1,
        "one group: the sealed part is small"
    );
    let after = read_records(&log);
    assert_ne!(before, after);
    let cleaned_end = *log.segment_base_offsets().last().unwrap();
    check_contents(
        &log,
        &produced,
        &expected_after_clean(&produced, cleaned_end, |_| false),
    );
    log.close().unwrap();
    let cleaned_log = after_dir.join(format!("{:020}.log", 0));
    let swap_name = format!("{:020}.{:020}.swap", 0, cleaned_end);
    let sealed_old: Vec<i64> = sealed_before[..sealed_before.len() - 1].to_vec();

    let scenario = |name: &str, build: &dyn Fn(&Path)| -> Vec<_> {
        let dir = root.path().join(name);
        copy_dir(&before_dir, &dir);
        build(&dir);
        let log = PartitionLog::open(&dir, compact_config(), 0).unwrap();
        let names = file_names(&dir);
        assert!(
            names
                .iter()
                .all(|n| !n.ends_with(".cleaned") && !n.ends_with(".swap")),
            "{name}: temporary files remain: {names:?}"
        );
        read_records(&log)
    };
    // Crash while writing the output: a partial `.cleaned` log and index.
    let read = scenario("writing", &|dir| {
        std::fs::write(dir.join(format!("{:020}.log.cleaned", 0)), b"partial").unwrap();
        std::fs::write(dir.join(format!("{:020}.index.cleaned", 0)), b"").unwrap();
    });
    assert_eq!(read, before);
    // Crash right after the commit rename: old segments all there.
    let read = scenario("committed", &|dir| {
        std::fs::copy(&cleaned_log, dir.join(&swap_name)).unwrap();
        std::fs::write(dir.join(format!("{:020}.index.cleaned", 0)), b"junk").unwrap();
    });
    assert_eq!(read, after);
    // Crash halfway through deleting the old segments.
    let read = scenario("half-deleted", &|dir| {
        std::fs::copy(&cleaned_log, dir.join(&swap_name)).unwrap();
        for base in &sealed_old[..sealed_old.len() / 2 + 1] {
            for ext in ["log", "index", "timeindex"] {
                std::fs::remove_file(dir.join(format!("{base:020}.{ext}"))).unwrap();
            }
        }
    });
    assert_eq!(read, after);
    // Crash after the new index was renamed into place but not the log.
    let read = scenario("index-renamed", &|dir| {
        std::fs::copy(&cleaned_log, dir.join(&swap_name)).unwrap();
        for base in &sealed_old {
            std::fs::remove_file(dir.join(format!("{base:020}.log"))).unwrap();
        }
        std::fs::copy(
            after_dir.join(format!("{:020}.index", 0)),
            dir.join(format!("{:020}.index", 0)),
        )
        .unwrap();
    });
    assert_eq!(read, after);
}

#[test]
fn a_group_changed_by_retention_meanwhile_is_not_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT_DELETE,
        ..compact_config()
    };
    let mut log = PartitionLog::open(dir.path(), config, 0).unwrap();
    churn(&mut log, 40, Compression::None);
    let plan = log.plan_clean(100).unwrap().unwrap();
    // Retention takes the oldest segment while the clean runs outside the lock.
    let second = log.segment_base_offsets()[1];
    log.delete_before(second).unwrap();
    let before = read_records(&log);
    let stats = plan
        .run(&mut |_| {}, &mut |group| log.swap_cleaned(group))
        .unwrap();
    assert!(!stats.completed);
    assert_eq!(read_records(&log), before);
    assert!(file_names(dir.path())
        .iter()
        .all(|n| !n.ends_with(".cleaned")));
    // The next pass cleans what is left.
    assert!(log.clean(100, &mut |_| {}).unwrap().unwrap().completed);
}

#[test]
fn a_full_key_map_cleans_in_several_passes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    // Many distinct keys: every segment brings new ones.
    let records: Vec<Produced> = (0..400u16)
        .map(|i| Produced {
            key: Some((i % 97) as u8),
            value: Some(i),
            timestamp: 10,
        })
        .collect();
    let produced = produce(&mut log, &records, &[4], Compression::None);
    let bases = log.segment_base_offsets();
    let sealed_end = *bases.last().unwrap();
    assert!(bases.len() > 4);
    // A cap of one byte: each pass maps one dirty segment, cleans up to its end.
    let mut passes = 0;
    let mut checkpoints = Vec::new();
    while let Some(plan) = log.plan_clean(100).unwrap() {
        let plan = plan.limit_key_map(1);
        let stats = plan
            .run(&mut |_| {}, &mut |group| log.swap_cleaned(group))
            .unwrap();
        assert!(stats.completed);
        log.finish_clean(&stats).unwrap();
        checkpoints.push(stats.end_offset);
        passes += 1;
        assert!(passes <= bases.len(), "no progress: {checkpoints:?}");
    }
    assert_eq!(
        checkpoints.first(),
        Some(&bases[1]),
        "the first pass covers one segment"
    );
    assert!(
        checkpoints.windows(2).all(|w| w[0] < w[1]),
        "{checkpoints:?}"
    );
    assert_eq!(checkpoints.last(), Some(&sealed_end));
    assert_eq!(passes, bases.len() - 1);
    check_contents(
        &log,
        &produced,
        &expected_after_clean(&produced, sealed_end, |_| false),
    );
}

#[test]
fn the_io_callback_sees_every_byte_read_and_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    churn(&mut log, 40, Compression::None);
    let mut total = 0;
    let stats = log
        .clean(100, &mut |bytes| total += bytes)
        .unwrap()
        .unwrap();
    // The key map reads the dirty part (here everything) once more.
    assert_eq!(total, 2 * stats.bytes_read + stats.bytes_written);
}

#[test]
fn delete_before_moves_the_log_start_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    for _ in 0..30 {
        append(&mut log, &batch(5, 100, 0), 0);
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() > 3);
    let target = bases[2] + 3;
    assert_eq!(log.delete_before(target).unwrap(), target);
    assert_eq!(log.log_start_offset(), target);
    assert_eq!(
        log.segment_base_offsets()[0],
        bases[2],
        "whole segments below go"
    );
    let below = log.read(target - 1, 1000).unwrap_err();
    assert!(matches!(below, LogError::OffsetOutOfRange { log_start, .. } if log_start == target));
    // The batch holding `target` is still returned whole.
    let slice = log.read(target, 1).unwrap().unwrap();
    let (header, _) = split_batches(slice.read().unwrap())
        .next()
        .unwrap()
        .unwrap();
    assert!(header.base_offset <= target && target <= header.last_offset());
    // Going backwards changes nothing; past the end is an error.
    assert_eq!(log.delete_before(1).unwrap(), target);
    assert!(matches!(
        log.delete_before(log.log_end_offset() + 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let found = log.offset_for_timestamp(0).unwrap().unwrap();
    assert_eq!(found.0, target, "timestamp lookups start at the log start");
    drop(log);
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(log.log_start_offset(), target);
    assert!(log.read(target - 1, 1000).is_err());
    // Up to the log end: every sealed segment goes, the active one stays.
    let end = log.log_end_offset();
    log.delete_before(end).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.read(end, 1000).unwrap().map(|s| s.len()), None);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(log.log_start_offset(), end);
}

#[test]
fn a_crash_between_persisting_the_start_and_deleting_segments_finishes_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    for _ in 0..30 {
        append(&mut log, &batch(5, 100, 0), 0);
    }
    let bases = log.segment_base_offsets();
    drop(log);
    std::fs::write(
        dir.path().join("log-start-offset"),
        format!("{}\n", bases[3]),
    )
    .unwrap();
    let log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    assert_eq!(log.log_start_offset(), bases[3]);
    assert_eq!(log.segment_base_offsets()[0], bases[3]);
    assert!(!dir.path().join(format!("{:020}.log", bases[0])).exists());
}

/// Rounds of two batches: keys 0 and 1 rewritten (so every round's batch but the
/// last loses all its records when cleaned), then a key of the round's own, which
/// stays. Returns every record with its offset.
fn rewrites_and_own_keys(log: &mut PartitionLog, rounds: u8) -> Vec<(i64, Produced)> {
    let mut produced = Vec::new();
    for round in 0..rounds {
        let rewritten = [0u8, 1].map(|key| Produced {
            key: Some(key),
            value: Some(round.into()),
            timestamp: 10,
        });
        produced.extend(produce(log, &rewritten, &[2], Compression::None));
        let own = Produced {
            key: Some(10 + round),
            value: Some(round.into()),
            timestamp: 10,
        };
        produced.extend(produce(log, &[own], &[1], Compression::None));
    }
    produced
}

/// First and last offset of every batch, read from the log start.
fn batch_ranges(log: &PartitionLog) -> Vec<(i64, i64)> {
    crate::support::read_all(log)
        .iter()
        .map(|(h, _)| (h.base_offset, h.last_offset()))
        .collect()
}

/// A follower copying a compacted leader log (a new replica, or one whose disk was
/// replaced) gets batches whose offsets skip the batches the cleaner removed. It
/// stores them with their gaps, in its active segment too, keeps them across a
/// kill and a clean restart, and appends after them as a leader would.
#[test]
fn a_follower_copies_a_compacted_log_with_its_gaps_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = PartitionLog::open(&dir.path().join("leader"), compact_config(), 0).unwrap();
    let produced = rewrites_and_own_keys(&mut leader, 40);
    let active_base = *leader.segment_base_offsets().last().unwrap();
    leader.clean(100, &mut |_| {}).unwrap().expect("due");
    let ranges = batch_ranges(&leader);
    let gaps = ranges.windows(2).filter(|w| w[1].0 > w[0].1 + 1).count();
    assert!(gaps > 10, "the clean left gaps between batches: {ranges:?}");
    assert_eq!(ranges[0].0, 2, "the first batch went too, not the segment");
    assert_eq!(leader.log_start_offset(), 0);

    // One segment for everything, so the gaps land in the follower's active one.
    let follower_config = LogConfig {
        segment_bytes: 1 << 30,
        ..compact_config()
    };
    let path = dir.path().join("follower");
    let mut follower = PartitionLog::open(&path, follower_config.clone(), 0).unwrap();
    // Fetch as the fetcher does: from the log end, whatever the leader's read gives.
    while follower.log_end_offset() < leader.log_end_offset() {
        let end = follower.log_end_offset();
        let bytes = leader.read(end, 700).unwrap().unwrap().read().unwrap();
        let appended = follower.append_as_follower(&bytes, 0).unwrap();
        assert!(appended[0].1 >= end);
        let (_, base, n) = *appended.last().unwrap();
        assert_eq!(follower.log_end_offset(), base + i64::from(n));
    }
    assert_eq!(follower.segment_count(), 1);
    let expected = expected_after_clean(&produced, active_base, |_| false);
    check_contents(&follower, &produced, &expected);
    assert_eq!(batch_ranges(&follower), ranges);

    // After a kill (no clean close), recovery scans the active segment in full and
    // keeps every batch; after a clean close too.
    drop(follower);
    let follower = PartitionLog::open(&path, follower_config.clone(), 0).unwrap();
    assert_eq!(batch_ranges(&follower), ranges);
    follower.close().unwrap();
    let mut follower = PartitionLog::open(&path, follower_config, 0).unwrap();
    assert_eq!(batch_ranges(&follower), ranges);
    check_contents(&follower, &produced, &expected);

    // Made leader, it goes on from its log end.
    let end = follower.log_end_offset();
    assert_eq!(end, leader.log_end_offset());
    let info = append(&mut follower, &batch(3, 10, 20), 0);
    assert_eq!(info.base_offset, end);

    // A batch below the log end is still refused.
    let first = leader.read(0, 1).unwrap().unwrap().read().unwrap();
    let error = follower.append_as_follower(&first, 0).unwrap_err();
    assert!(matches!(error, LogError::BelowLogEnd { .. }), "{error}");
}

/// Truncating into a cleaned segment (a follower's diverging tail reaching that far
/// back) makes it the active segment again; every batch below the cut stays, gaps
/// and all, across a reopen.
#[test]
fn truncation_into_a_cleaned_segment_keeps_what_is_below_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    rewrites_and_own_keys(&mut log, 60);
    log.clean(100, &mut |_| {}).unwrap().expect("due");
    // Cut at the last batch of the first (cleaned) segment.
    let second_base = log.segment_base_offsets()[1];
    let ranges = batch_ranges(&log);
    let cut = ranges.iter().rev().find(|r| r.1 < second_base).unwrap().0;
    let kept: Vec<(i64, i64)> = ranges.iter().copied().filter(|r| r.1 < cut).collect();
    assert!(
        kept.windows(2).any(|w| w[1].0 > w[0].1 + 1),
        "gaps below the cut"
    );
    log.truncate_to(cut, 0).unwrap();
    assert_eq!(batch_ranges(&log), kept);
    drop(log);
    let log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    assert_eq!(batch_ranges(&log), kept);
}

/// When a clean removes every record of the log's first segments, an empty segment
/// stays at the front (as in Kafka): the log start offset does not move, so reading
/// from it (a consumer whose position is below the first record kept) gets the first
/// record kept instead of `OffsetOutOfRange`. Across a kill, a clean restart and
/// more cleaning.
#[test]
fn emptying_the_front_of_the_log_keeps_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    let mut produced = churn(&mut log, 60, Compression::None);
    let active_base = *log.segment_base_offsets().last().unwrap();
    let second_base = log.segment_base_offsets()[1];
    log.clean(100, &mut |_| {}).unwrap().expect("due");
    let expected = expected_after_clean(&produced, active_base, |_| false);
    assert!(
        expected[0] >= second_base,
        "the first segment lost every record"
    );
    let check = |log: &PartitionLog, produced: &[(i64, Produced)], expected: &[i64]| {
        assert_eq!(log.log_start_offset(), 0);
        assert_eq!(log.segment_base_offsets()[0], 0);
        check_contents(log, produced, expected);
        let first = log.read(0, 1).unwrap().expect("records after 0");
        let (header, _) = split_batches(first.read().unwrap())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(header.base_offset, expected[0]);
    };
    check(&log, &produced, &expected);
    drop(log);
    let log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    check(&log, &produced, &expected);
    log.close().unwrap();
    let mut log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    check(&log, &produced, &expected);

    // The empty segment joins the next clean's first group.
    produced.extend(churn(&mut log, 60, Compression::None));
    let active_base = *log.segment_base_offsets().last().unwrap();
    log.clean(200, &mut |_| {}).unwrap().expect("due");
    let expected = expected_after_clean(&produced, active_base, |_| false);
    check(&log, &produced, &expected);
    drop(log);
    let log = PartitionLog::open(dir.path(), compact_config(), 0).unwrap();
    check(&log, &produced, &expected);
}
