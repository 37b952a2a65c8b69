//! What replication needs from the log: follower appends of the leader's bytes,
//! truncation of a divergent tail, reads bounded by the high watermark, and the
//! durable leader-epoch checkpoint, including after kill-style reopen.

use bytes::Bytes;
use meridian_log::checkpoint::LEADER_EPOCH_CHECKPOINT_FILE;
use meridian_log::{validate_batches, PartitionLog};
use meridian_wire::batch::{
    encode_batch, split_batches, BatchHeader, Compression, NewRecord, ProducerIdentity,
};
use meridian_wire::ErrorCode;

use crate::support::*;

fn append_at_epoch(log: &mut PartitionLog, batch: &Bytes, epoch: i32) -> i64 {
    let validated = validate_batches(batch, log.config().max_message_bytes).unwrap();
    log.append(validated, epoch, 0).unwrap().base_offset
}

/// Everything in the log, as the bytes `read` returns.
fn all_bytes(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, bytes) in read_all(log) {
        out.extend_from_slice(&bytes);
    }
    out
}

fn idempotent_batch(producer_id: i64, base_sequence: i32, n: usize) -> Bytes {
    let records: Vec<NewRecord> = (0..n)
        .map(|i| NewRecord {
            timestamp: 5,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: vec![],
        })
        .collect();
    encode_batch(
        &records,
        Compression::None,
        ProducerIdentity {
            producer_id,
            producer_epoch: 0,
            base_sequence,
        },
    )
    .unwrap()
}

/// A leader log of 60 batches over three epochs and several segments.
fn leader_log(dir: &std::path::Path) -> PartitionLog {
    let mut log = PartitionLog::open(dir, small_config(), 0).unwrap();
    for i in 0..60usize {
        let epoch = [0, 3, 4][i / 20];
        append_at_epoch(
            &mut log,
            &batch(1 + i % 3, 100 + 3 * i, 100 + i as i64),
            epoch,
        );
    }
    assert!(log.segment_count() > 3);
    log
}

#[test]
fn a_follower_stores_the_leaders_bytes_with_their_offsets_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_log(&dir.path().join("leader"));
    let mut follower = PartitionLog::open(&dir.path().join("follower"), small_config(), 0).unwrap();
    // Fetch in chunks of whatever size the leader's reads give, like the fetcher.
    let mut fetched = Vec::new();
    while follower.log_end_offset() < leader.log_end_offset() {
        let slice = leader
            .read(follower.log_end_offset(), 700)
            .unwrap()
            .unwrap();
        let bytes = slice.read().unwrap();
        let end = follower.log_end_offset();
        let appended = follower.append_as_follower(&bytes, 0).unwrap();
        assert_eq!(appended[0].1, end);
        let n: i64 = appended.iter().map(|(_, _, n)| i64::from(*n)).sum();
        assert_eq!(follower.log_end_offset(), end + n);
        fetched.extend(appended);
    }
    assert_eq!(all_bytes(&follower), all_bytes(&leader));
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    assert_eq!(
        leader
            .leader_epochs()
            .entries()
            .iter()
            .map(|(e, _)| *e)
            .collect::<Vec<_>>(),
        vec![0, 3, 4]
    );
    let epochs: Vec<i32> = fetched.iter().map(|(e, _, _)| *e).collect();
    assert_eq!(epochs.len(), 60);
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]));

    // Timestamp lookups use the follower's own time index.
    assert_eq!(
        follower.offset_for_timestamp(130).unwrap(),
        leader.offset_for_timestamp(130).unwrap()
    );

    // Reopened after a kill (no clean close), it is the same log.
    drop(follower);
    let follower = PartitionLog::open(&dir.path().join("follower"), small_config(), 0).unwrap();
    assert_eq!(all_bytes(&follower), all_bytes(&leader));
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());
}

#[test]
fn follower_appends_refuse_overlaps_corruption_and_older_epochs_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_log(&dir.path().join("leader"));
    let mut follower = PartitionLog::open(&dir.path().join("follower"), small_config(), 0).unwrap();
    let first = leader.read(0, 1).unwrap().unwrap().read().unwrap();
    let second = leader.read(1, 1).unwrap().unwrap().read().unwrap();
    let check = |follower: &mut PartitionLog, bytes: Bytes, code: ErrorCode| {
        let end = follower.log_end_offset();
        let error = follower.append_as_follower(&bytes, 0).unwrap_err();
        assert_eq!(error.code(), code, "{error}");
        assert_eq!(follower.log_end_offset(), end);
    };
    let mut flipped = first.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    check(
        &mut follower,
        Bytes::from(flipped),
        ErrorCode::CorruptMessage,
    );
    check(
        &mut follower,
        first.slice(..first.len() - 1),
        ErrorCode::CorruptMessage,
    );
    assert!(follower
        .append_as_follower(&Bytes::new(), 0)
        .unwrap()
        .is_empty());
    follower.append_as_follower(&first, 0).unwrap();
    follower.append_as_follower(&second, 0).unwrap();
    assert_eq!(follower.log_end_offset(), 3);
    // What the log already holds (from its end, or a batch crossing it) is refused.
    check(&mut follower, second.clone(), ErrorCode::CorruptMessage);
    check(&mut follower, first.clone(), ErrorCode::CorruptMessage);
    // A batch stamped with an epoch older than one the log has records of is refused.
    let mut late = PartitionLog::open(&dir.path().join("late"), small_config(), 0).unwrap();
    append_at_epoch(&mut late, &batch(1, 10, 1), 9);
    let mut older = first.to_vec();
    older[..8].copy_from_slice(&late.log_end_offset().to_be_bytes());
    check(&mut late, Bytes::from(older), ErrorCode::CorruptMessage);
}

#[test]
fn truncation_cuts_across_segments_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let mut log = leader_log(&path);
    let before = read_all(&log);
    let segments_before = log.segment_count();
    // An offset inside a batch removes that whole batch.
    let (cut_header, _) = before
        .iter()
        .find(|(h, _)| h.last_offset() > h.base_offset && h.base_offset > 12)
        .unwrap()
        .clone();
    let new_end = log.truncate_to(cut_header.base_offset + 1, 0).unwrap();
    assert_eq!(new_end, cut_header.base_offset);
    assert_eq!(log.log_end_offset(), new_end);
    assert!(log.segment_count() < segments_before);
    let kept: Vec<(BatchHeader, Bytes)> = before
        .iter()
        .filter(|(h, _)| h.base_offset < new_end)
        .cloned()
        .collect();
    assert_eq!(read_all(&log), kept);
    // All epochs started before the cut except those after it.
    assert_eq!(log.leader_epochs().entries(), &[(0, 0)]);
    assert!(log.read(new_end, 100).unwrap().is_none());
    assert_eq!(
        log.read(new_end + 1, 100).unwrap_err().code(),
        ErrorCode::OffsetOutOfRange
    );
    // Appending continues densely at the new end, in a new epoch.
    let base = append_at_epoch(&mut log, &batch(2, 10, 1), 6);
    assert_eq!(base, new_end);
    assert_eq!(log.leader_epochs().entries(), &[(0, 0), (6, new_end)]);
    // Kill and reopen: the truncation and the epochs are durable.
    drop(log);
    let log = PartitionLog::open(&path, small_config(), 0).unwrap();
    assert_eq!(log.log_end_offset(), new_end + 2);
    assert_eq!(log.leader_epochs().entries(), &[(0, 0), (6, new_end)]);
    assert_eq!(read_all(&log)[..kept.len()], kept[..]);

    // Truncating to the log end changes nothing; below the log start is refused.
    let mut log = log;
    assert_eq!(log.truncate_to(i64::MAX, 0).unwrap(), new_end + 2);
    assert_eq!(log.truncate_to(0, 0).unwrap(), 0);
    assert_eq!(log.segment_count(), 1);
    assert!(log.leader_epochs().entries().is_empty());
    assert_eq!(append_at_epoch(&mut log, &batch(1, 1, 1), 7), 0);
}

#[test]
fn truncation_rebuilds_producer_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    // Sequences 0..40 in 20 batches of two records, over several segments (rolls
    // write producer snapshots).
    let mut bases = Vec::new();
    for i in 0..20 {
        let b = idempotent_batch(42, 2 * i, 2);
        bases.push(append_at_epoch(&mut log, &b, 1));
        append_at_epoch(&mut log, &batch(1, 300, 1), 1);
    }
    assert!(log.segment_count() > 2);
    // Cut off the last eight idempotent batches: their sequences are free again.
    log.truncate_to(bases[12], 0).unwrap();
    let retry = idempotent_batch(42, 24, 2);
    let validated = validate_batches(&retry, u32::MAX).unwrap();
    let info = log.append(validated, 2, 0).unwrap();
    assert!(!info.duplicate, "the removed batch is not remembered");
    assert_eq!(info.base_offset, bases[12]);
    // The batch before the cut is still a duplicate.
    let validated = validate_batches(&idempotent_batch(42, 22, 2), u32::MAX).unwrap();
    let info = log.append(validated, 2, 0).unwrap();
    assert!(info.duplicate);
    assert_eq!(info.base_offset, bases[11]);
}

/// Batches a produce chain rewrote: spanning offsets they hold no record for (none at
/// all, even), an idempotent batch followed by a producer-less one. The producer's
/// sequence goes on across them, retries are duplicates, a follower copies them and
/// a reopened log rebuilds the same state.
#[test]
fn rewritten_batches_keep_offsets_and_producer_sequences() {
    use meridian_log::validate_rewritten_batches;
    use meridian_wire::batch::encode_batch_spanning;
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(&dir.path().join("leader"), small_config(), 0).unwrap();
    let record = |v: &str| NewRecord {
        timestamp: 5,
        key: None,
        value: Some(Bytes::from(v.to_string())),
        headers: vec![],
    };
    let identity = |base_sequence| ProducerIdentity {
        producer_id: 42,
        producer_epoch: 0,
        base_sequence,
    };
    // Four records sent, two kept at deltas 1 and 3.
    let kept = encode_batch_spanning(
        &[record("b"), record("d")],
        &[1, 3],
        3,
        Compression::Zstd,
        identity(0),
    )
    .unwrap();
    // Two sent, none kept.
    let emptied = encode_batch_spanning(&[], &[], 1, Compression::None, identity(4)).unwrap();
    // One sent, three out: the producer's batch takes one, a producer-less one the rest.
    let grown = Bytes::from(
        [
            encode_batch(&[record("e1")], Compression::None, identity(6)).unwrap(),
            encode_batch(
                &[record("e2"), record("e3")],
                Compression::None,
                ProducerIdentity::NONE,
            )
            .unwrap(),
        ]
        .concat(),
    );
    for bytes in [&kept, &emptied, &grown] {
        // A producer never sends such batches.
        assert!(validate_batches(bytes, u32::MAX).is_err());
    }
    let append = |log: &mut PartitionLog, bytes: &Bytes| {
        let validated = validate_rewritten_batches(bytes, u32::MAX).unwrap();
        let info = log.append(validated, 1, 0).unwrap();
        (info.base_offset, info.duplicate)
    };
    assert_eq!(append(&mut log, &kept), (0, false));
    assert_eq!(append(&mut log, &emptied), (4, false));
    assert_eq!(append(&mut log, &grown), (6, false));
    assert_eq!(log.log_end_offset(), 9);
    assert_eq!(append(&mut log, &kept), (0, true));
    assert_eq!(append(&mut log, &emptied), (4, true));
    assert_eq!(append(&mut log, &grown), (6, true));
    assert_eq!(log.log_end_offset(), 9);
    // The producer's next batch follows on from sequence 7.
    assert_eq!(append_at_epoch(&mut log, &idempotent_batch(42, 7, 1), 1), 9);

    let values = |log: &PartitionLog| -> Vec<(i64, String)> {
        let mut out = Vec::new();
        for (header, bytes) in read_all(log) {
            for r in meridian_wire::batch::decode_records(&header, &bytes).unwrap() {
                let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                out.push((r.offset, v));
            }
        }
        out
    };
    let expected: Vec<(i64, String)> = [(1, "b"), (3, "d"), (6, "e1"), (7, "e2"), (8, "e3")]
        .iter()
        .map(|&(o, v)| (o, v.to_string()))
        .chain([(9, "v0".to_string())])
        .collect();
    assert_eq!(values(&log), expected);

    // A follower copies them as they are, producer state included.
    let mut follower = PartitionLog::open(&dir.path().join("follower"), small_config(), 0).unwrap();
    follower
        .append_as_follower(&Bytes::from(all_bytes(&log)), 0)
        .unwrap();
    assert_eq!(all_bytes(&follower), all_bytes(&log));
    assert_eq!(append(&mut follower, &emptied), (4, true));

    // Reopened without a clean shutdown: the state is rebuilt from the batches.
    drop(log);
    let mut log = PartitionLog::open(&dir.path().join("leader"), small_config(), 0).unwrap();
    assert_eq!(values(&log), expected);
    assert_eq!(append(&mut log, &grown), (6, true));
    assert_eq!(
        append_at_epoch(&mut log, &idempotent_batch(42, 8, 1), 1),
        10
    );
}

/// A broker that became leader in epoch 1 (the epoch starts at its log end) and
/// lost the leadership before appending anything follows a leader whose log holds
/// records of epoch 0 from there: the record-less epoch gives way, durably. An epoch
/// older than one this log has records of is still refused.
#[test]
fn an_epoch_without_records_here_gives_way_to_the_leaders_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = PartitionLog::open(&dir.path().join("leader"), small_config(), 0).unwrap();
    append_at_epoch(&mut leader, &batch(2, 10, 1), 0);
    append_at_epoch(&mut leader, &batch(1, 10, 1), 2);
    let mut log = PartitionLog::open(&dir.path().join("follower"), small_config(), 0).unwrap();
    log.assign_leader_epoch(1).unwrap();
    assert_eq!(log.leader_epochs().entries(), [(1, 0)]);
    log.append_as_follower(&Bytes::from(all_bytes(&leader)), 0)
        .unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(log.leader_epochs().entries(), [(0, 0), (2, 2)]);
    drop(log);
    let mut log = PartitionLog::open(&dir.path().join("follower"), small_config(), 0).unwrap();
    assert_eq!(log.leader_epochs().entries(), [(0, 0), (2, 2)]);
    assert_eq!(all_bytes(&log), all_bytes(&leader));
    // Epoch 2 has records here now: epoch 1 after it is a regression.
    let mut older = batch(1, 10, 1).to_vec();
    older[..8].copy_from_slice(&3i64.to_be_bytes());
    older[12..16].copy_from_slice(&1i32.to_be_bytes());
    let err = log.append_as_follower(&Bytes::from(older), 0).unwrap_err();
    assert!(
        matches!(err, meridian_log::LogError::EpochRegression { .. }),
        "{err}"
    );
}

/// Only the first batch of an append may carry a producer: its sequence check decides
/// for the whole append.
#[test]
fn an_idempotent_batch_after_another_batch_is_refused() {
    use meridian_log::validate_rewritten_batches;
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(), 0).unwrap();
    let both = Bytes::from([batch(1, 10, 1), idempotent_batch(7, 0, 1)].concat());
    let validated = validate_rewritten_batches(&both, u32::MAX).unwrap();
    let err = log.append(validated, 0, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn reads_stop_at_an_upper_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = leader_log(dir.path());
    let headers: Vec<BatchHeader> = read_all(&log).into_iter().map(|(h, _)| h).collect();
    let read = |offset: i64, end: i64| -> Vec<i64> {
        match log.read_up_to(offset, 1 << 20, end).unwrap() {
            None => vec![],
            Some(slice) => split_batches(slice.read().unwrap())
                .map(|r| r.unwrap().0.base_offset)
                .collect(),
        }
    };
    let b = |i: usize| headers[i].base_offset;
    // Up to a batch boundary: every batch below it (within the segment read).
    let got = read(0, b(3));
    assert_eq!(got, vec![b(0), b(1), b(2)]);
    // A bound inside a batch (batch 2 holds three records) leaves that batch out.
    assert_eq!(headers[2].last_offset(), b(2) + 2);
    assert_eq!(read(0, b(2) + 1), vec![b(0), b(1)]);
    assert_eq!(read(b(2), b(2) + 2), Vec::<i64>::new());
    assert_eq!(read(b(3), b(3)), Vec::<i64>::new());
    assert_eq!(read(b(3), b(4)), vec![b(3)]);
    // Unbounded is the ordinary read.
    assert_eq!(read(b(5), i64::MAX), read_bases(&log, b(5), 1 << 20));
}

#[test]
fn the_leader_epoch_checkpoint_is_rebuilt_and_trimmed_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let log = leader_log(&path);
    let epochs = log.leader_epochs().clone();
    let end = log.log_end_offset();
    drop(log);
    // Missing: rebuilt from the batches' epochs.
    std::fs::remove_file(path.join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
    let log = PartitionLog::open(&path, small_config(), 0).unwrap();
    assert_eq!(log.leader_epochs(), &epochs);
    drop(log);
    // Damaged: rebuilt too.
    std::fs::write(path.join(LEADER_EPOCH_CHECKPOINT_FILE), "0\n7\ngarbage").unwrap();
    let mut log = PartitionLog::open(&path, small_config(), 0).unwrap();
    assert_eq!(log.leader_epochs(), &epochs);
    // A new epoch is durable before its records: a crash that tears the only batch of
    // epoch 8 leaves the epoch behind in the file; recovery drops it with the batch.
    append_at_epoch(&mut log, &batch(1, 5, 1), 8);
    assert_eq!(log.leader_epochs().latest_epoch(), Some(8));
    drop(log);
    let active = segment_files(&path, "log").pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let log = PartitionLog::open(&path, small_config(), 0).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.leader_epochs(), &epochs);
    let text = std::fs::read_to_string(path.join(LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
    assert_eq!(text.lines().nth(1), Some("3"), "{text}");
}

/// A follower whose log ends below its leader's log start empties its log and
/// continues at the leader's start: durably, and a crash half-way (the new segment
/// made, the old ones not yet deleted, even an empty one) reopens as the new log.
#[test]
fn a_follower_below_the_leaders_log_start_restarts_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let mut log = leader_log(&path);
    let end = log.log_end_offset();
    assert!(log.segment_count() > 1);
    assert_eq!(
        log.truncate_fully_and_start_at(end, 0).unwrap_err().code(),
        ErrorCode::OffsetOutOfRange,
        "only past the log end"
    );
    let start = end + 500;
    assert_eq!(log.truncate_fully_and_start_at(start, 0).unwrap(), start);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (start, start)
    );
    assert_eq!(log.segment_count(), 1);
    assert!(log.leader_epochs().entries().is_empty());
    assert!(log.read(start, 100).unwrap().is_none());
    assert_eq!(
        log.read(0, 100).unwrap_err().code(),
        ErrorCode::OffsetOutOfRange
    );
    assert_eq!(append_at_epoch(&mut log, &batch(2, 10, 1), 5), start);
    drop(log);
    let log = PartitionLog::open(&path, small_config(), 0).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (start, start + 2)
    );
    assert_eq!(log.leader_epochs().entries(), &[(5, start)]);
    assert_eq!(read_all(&log).len(), 1);

    // An empty log may restart lower: at the first batch its leader sent, which holds
    // the leader's log start but begins below it.
    let mut log = log;
    let end = log.log_end_offset();
    log.truncate_fully_and_start_at(end + 50, 0).unwrap();
    assert_eq!(
        log.truncate_fully_and_start_at(end + 20, 0).unwrap(),
        end + 20
    );
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (end + 20, end + 20)
    );
    assert_eq!(append_at_epoch(&mut log, &batch(40, 10, 1), 6), end + 20);
    drop(log);
    let log = PartitionLog::open(&path, small_config(), 0).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (end + 20, end + 60)
    );

    // A crash after the new segment was made: an empty old active segment (which
    // alone would not open as a sealed one) and the new start persisted.
    let crashed = dir.path().join("crashed");
    let log = PartitionLog::open(&crashed, small_config(), 0).unwrap();
    drop(log);
    std::fs::write(crashed.join(format!("{:020}.log", 700)), b"").unwrap();
    std::fs::write(crashed.join(meridian_log::LOG_START_OFFSET_FILE), b"700\n").unwrap();
    let log = PartitionLog::open(&crashed, small_config(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (700, 700));
    assert_eq!(log.segment_count(), 1);
    assert!(!crashed.join(format!("{:020}.log", 0)).exists());
}
