//! Idempotent producers: per partition, the last batches of each producer id, so a
//! retried batch is recognised and answered with its original offsets instead of
//! being written twice, and a gap in sequence numbers is refused.
//!
//! Rules (Kafka's): a batch carries `producer_id`, `producer_epoch` and the sequence of
//! its first record; sequences count records per partition from 0 and wrap at
//! `i32::MAX`. For a known producer:
//! - an older epoch is fenced (`InvalidProducerEpoch`);
//! - a newer epoch must start at sequence 0;
//! - one of the last [`MAX_TRACKED_BATCHES`] batches again is a duplicate;
//! - otherwise the first sequence must follow the last one (`OutOfOrderSequence`).
//!
//! An unknown producer must start at sequence 0 (`UnknownProducerId` otherwise: its
//! state expired or was never seen).
//!
//! Durability: the state is snapshotted to `<offset>.snapshot` when the log rolls (the
//! state after every batch below `offset`); opening loads the newest snapshot and
//! replays the batch headers after it, which is the active segment in the normal case.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use meridian_wire::batch::BatchHeader;

/// Batches remembered per producer: a producer with at most this many requests in
/// flight per partition always has its retries recognised.
pub const MAX_TRACKED_BATCHES: usize = 5;

const SNAPSHOT_MAGIC: &[u8; 4] = b"MPS1";

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// Newest last.
    batches: VecDeque<SequencedBatch>,
    last_timestamp: i64,
}

/// What to do with an incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next in sequence: append it.
    Append,
    /// Already in the log at these offsets: answer with them, append nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: sequence {got} where {expected} was expected (records were lost or reordered)")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id} is unknown to this partition and its batch starts at sequence {first_seq}, not 0")]
    UnknownProducerId { producer_id: i64, first_seq: i32 },
}

fn next_seq(seq: i32, n: i32) -> i32 {
    // Sequences wrap like Kafka's: after i32::MAX comes 0.
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// One producer of a partition's state, as `meridian dump-log` shows a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerView {
    pub producer_id: i64,
    pub epoch: i16,
    /// The broker's clock at its last batch (what expiry counts from).
    pub last_timestamp: i64,
    /// The batches remembered to answer retries, oldest first.
    pub batches: Vec<SequencedBatch>,
}

/// Where a producer's batch went: its sequences and offsets (what a retry of it is
/// answered with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequencedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// The producer state of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The producers, by id.
    pub fn producers(&self) -> Vec<ProducerView> {
        let mut views: Vec<ProducerView> = self
            .producers
            .iter()
            .map(|(id, e)| ProducerView {
                producer_id: *id,
                epoch: e.epoch,
                last_timestamp: e.last_timestamp,
                batches: e.batches.iter().copied().collect(),
            })
            .collect();
        views.sort_unstable_by_key(|v| v.producer_id);
        views
    }

    /// Checks a batch against the state (does not change it).
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        if header.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let producer_id = header.producer_id;
        let first_seq = header.base_sequence;
        let last_seq = next_seq(first_seq, header.last_offset_delta);
        let Some(entry) = self.producers.get(&producer_id) else {
            return if first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::UnknownProducerId {
                    producer_id,
                    first_seq,
                })
            };
        };
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::InvalidProducerEpoch {
                producer_id,
                epoch: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrderSequence {
                    producer_id,
                    expected: 0,
                    got: first_seq,
                })
            };
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: dup.base_offset,
                last_offset: dup.last_offset,
            });
        }
        let expected = entry.batches.back().map_or(0, |b| next_seq(b.last_seq, 1));
        if first_seq != expected {
            return Err(SequenceError::OutOfOrderSequence {
                producer_id,
                expected,
                got: first_seq,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records a batch written at `base_offset` (its header as stored or received) at
    /// `now_ms`. Activity for expiry is the broker's clock, not the batch's timestamps
    /// (those are the producer's to set).
    pub fn record(&mut self, header: &BatchHeader, base_offset: i64, now_ms: i64) {
        if header.producer_id < 0 {
            return;
        }
        let meta = SequencedBatch {
            first_seq: header.base_sequence,
            last_seq: next_seq(header.base_sequence, header.last_offset_delta),
            base_offset,
            last_offset: base_offset + i64::from(header.last_offset_delta),
        };
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: now_ms,
            });
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(meta);
        while entry.batches.len() > MAX_TRACKED_BATCHES {
            entry.batches.pop_front();
        }
        entry.last_timestamp = entry.last_timestamp.max(now_ms);
    }

    /// Forgets producers with no batch since `now_ms - expiration_ms`
    /// (Kafka's `producer.id.expiration.ms`). Returns how many went.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        let cutoff = now_ms.saturating_sub(expiration_ms);
        self.producers.retain(|_, e| e.last_timestamp >= cutoff);
        before - self.producers.len()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let e = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The state a snapshot file's bytes hold; `Err` says why they hold none.
    pub fn from_snapshot(bytes: &[u8]) -> Result<ProducerStates, String> {
        if bytes.len() < 12 || &bytes[..4] != SNAPSHOT_MAGIC {
            return Err("not a producer snapshot".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err("checksum mismatch".into());
        }
        let mut at = 4;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let slice = body.get(at..at + n).ok_or("truncated producer snapshot")?;
            at += n;
            Ok(slice)
        };
        let count = u32::from_be_bytes(take(4)?.try_into().expect("4"));
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = i64::from_be_bytes(take(8)?.try_into().expect("8"));
            let epoch = i16::from_be_bytes(take(2)?.try_into().expect("2"));
            let last_timestamp = i64::from_be_bytes(take(8)?.try_into().expect("8"));
            let n = take(1)?[0] as usize;
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(SequencedBatch {
                    first_seq: i32::from_be_bytes(take(4)?.try_into().expect("4")),
                    last_seq: i32::from_be_bytes(take(4)?.try_into().expect("4")),
                    base_offset: i64::from_be_bytes(take(8)?.try_into().expect("8")),
                    last_offset: i64::from_be_bytes(take(8)?.try_into().expect("8")),
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                },
            );
        }
        Ok(ProducerStates { producers })
    }
}

pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.snapshot"))
}

/// Writes the state as of `offset` durably (temp file, fsync, rename).
pub(crate) fn write_snapshot(dir: &Path, offset: i64, states: &ProducerStates) -> io::Result<()> {
    let path = snapshot_path(dir, offset);
    let temp = path.with_extension("snapshot.tmp");
    std::fs::write(&temp, states.encode())?;
    std::fs::File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, &path)?;
    Ok(())
}

/// Snapshot offsets present in `dir`, ascending.
pub(crate) fn list_snapshots(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".snapshot") {
            if stem.len() == 20 {
                if let Ok(offset) = stem.parse() {
                    offsets.push(offset);
                }
            }
        } else if name.ends_with(".snapshot.tmp") {
            // A snapshot cut short by a crash: the log replay covers it.
            std::fs::remove_file(entry_path(dir, name))?;
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

fn entry_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The newest readable snapshot at or below `max_offset`: `(offset, state)`. Unreadable
/// ones are skipped with a warning (an older snapshot plus a longer replay is as good).
pub(crate) fn load_latest(
    dir: &Path,
    max_offset: i64,
) -> io::Result<Option<(i64, ProducerStates)>> {
    for offset in list_snapshots(dir)?.into_iter().rev() {
        if offset > max_offset {
            continue;
        }
        let path = snapshot_path(dir, offset);
        match ProducerStates::from_snapshot(&std::fs::read(&path)?) {
            Ok(states) => return Ok(Some((offset, states))),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable producer snapshot")
            }
        }
    }
    Ok(None)
}

/// Deletes snapshots other than the newest `keep`, and any above `max_offset` (the log
/// was cut back below them).
pub(crate) fn prune_snapshots(dir: &Path, keep: usize, max_offset: i64) -> io::Result<()> {
    let offsets = list_snapshots(dir)?;
    let valid: Vec<i64> = offsets
        .iter()
        .copied()
        .filter(|o| *o <= max_offset)
        .collect();
    let keep_from = valid.len().saturating_sub(keep);
    for offset in offsets {
        let stale = offset > max_offset || valid[..keep_from].contains(&offset);
        if stale {
            std::fs::remove_file(snapshot_path(dir, offset))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header(producer_id: i64, epoch: i16, first_seq: i32, n: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first_seq,
            records_count: n,
        }
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&header(-1, -1, -1, 3)), Ok(SequenceCheck::Append));
        assert!(matches!(
            s.check(&header(7, 0, 5, 1)),
            Err(SequenceError::UnknownProducerId { .. })
        ));
        assert_eq!(s.check(&header(7, 0, 0, 3)), Ok(SequenceCheck::Append));
        s.record(&header(7, 0, 0, 3), 100, 1_000);
        // A retry of the same batch is a duplicate with its original offsets.
        assert_eq!(
            s.check(&header(7, 0, 0, 3)),
            Ok(SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 102
            })
        );
        assert_eq!(s.check(&header(7, 0, 3, 2)), Ok(SequenceCheck::Append));
        assert_eq!(
            s.check(&header(7, 0, 4, 1)),
            Err(SequenceError::OutOfOrderSequence {
                producer_id: 7,
                expected: 3,
                got: 4
            })
        );
        s.record(&header(7, 0, 3, 2), 200, 1_000);
        // A new epoch starts over at 0; the old epoch is fenced after it.
        assert!(matches!(
            s.check(&header(7, 1, 9, 1)),
            Err(SequenceError::OutOfOrderSequence { expected: 0, .. })
        ));
        s.record(&header(7, 1, 0, 1), 300, 1_000);
        assert!(matches!(
            s.check(&header(7, 0, 5, 1)),
            Err(SequenceError::InvalidProducerEpoch { current: 1, .. })
        ));
        // Only the last few batches are remembered.
        for i in 1..=MAX_TRACKED_BATCHES as i32 {
            s.record(&header(7, 1, i, 1), 300 + i64::from(i), 1_000);
        }
        assert!(matches!(
            s.check(&header(7, 1, 0, 1)),
            Err(SequenceError::OutOfOrderSequence { .. })
        ));
        assert_eq!(next_seq(i32::MAX, 1), 0, "sequences wrap");
    }

    #[test]
    fn snapshots_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 2), 10, 1_000);
        s.record(&header(2, 3, 0, 1), 12, 1_000);
        write_snapshot(dir.path(), 13, &s).unwrap();
        write_snapshot(dir.path(), 20, &ProducerStates::default()).unwrap();
        assert_eq!(load_latest(dir.path(), 19).unwrap(), Some((13, s.clone())));
        // A corrupted newest snapshot falls back to the older one.
        std::fs::write(snapshot_path(dir.path(), 20), b"MPS1garbage!").unwrap();
        assert_eq!(load_latest(dir.path(), 100).unwrap(), Some((13, s.clone())));
        prune_snapshots(dir.path(), 1, 15).unwrap();
        assert_eq!(list_snapshots(dir.path()).unwrap(), vec![13]);
        assert_eq!(s.expire(100_000, 1_000), 2);
        assert!(s.is_empty());
    }
}
