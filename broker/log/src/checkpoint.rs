//! Small durable checkpoint files of replication, in Kafka's text formats:
//!
//! - `leader-epoch-checkpoint` in each partition directory: which leader epoch started
//!   at which offset (`LeaderEpochs`), so a follower can find where its log diverges
//!   from a new leader's (leader-epoch truncation, KIP-101). Written whenever a new
//!   epoch starts or the log is truncated, *before* the records of a new epoch are
//!   written, so it never lags the log; on open, entries at or past the recovered log
//!   end are dropped (their records did not survive), and a missing or damaged file is
//!   rebuilt from the batches' own `partitionLeaderEpoch` fields.
//! - `replication-offset-checkpoint` in the data directory: every partition's high
//!   watermark, written periodically by the broker (Kafka's file of the same name), so
//!   a restarted broker exposes at most what was committed before it stopped.
//!
//! Both are replaced atomically (temporary file, fsync, rename, fsync directory).
//! Format: a version line (`0`), a count line, then one entry per line.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::LogError;

/// Leader epochs of one partition's log, in the partition directory.
pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// High watermarks of every partition of a broker, in its data directory.
pub const REPLICATION_OFFSET_CHECKPOINT_FILE: &str = "replication-offset-checkpoint";

const VERSION: &str = "0";

/// Leader epochs of a log: `(epoch, start_offset)`, strictly ascending in epoch and
/// ascending in start offset. The same data as `meridian_core::replication::EpochCache`
/// (this crate does not depend on the replication core).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochs {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether anything changed
    /// (nothing does when `epoch` is already the latest). An epoch older than the
    /// latest is a broken invariant of the caller (leaders only move forward).
    pub(crate) fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        match self.entries.last() {
            Some((latest, _)) if *latest == epoch => false,
            Some((latest, start)) => {
                assert!(
                    epoch > *latest,
                    "leader epochs only grow: {epoch} after {latest}"
                );
                assert!(start_offset >= *start, "epoch start offsets only grow");
                self.entries.push((epoch, start_offset));
                true
            }
            None => {
                self.entries.push((epoch, start_offset));
                true
            }
        }
    }

    /// Forgets epochs starting at or after `offset`. Returns whether anything changed.
    pub(crate) fn truncate_from(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < offset);
        self.entries.len() != before
    }

    fn encode(&self) -> String {
        let mut out = format!("{VERSION}\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            out.push_str(&format!("{epoch} {start}\n"));
        }
        out
    }

    fn decode(text: &str) -> Result<LeaderEpochs, String> {
        let lines = parse_lines(text)?;
        let mut epochs = LeaderEpochs::default();
        for line in lines {
            let mut fields = line.split(' ');
            let (Some(epoch), Some(start), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("bad entry `{line}`"));
            };
            let epoch: i32 = epoch.parse().map_err(|_| format!("bad epoch `{epoch}`"))?;
            let start: i64 = start.parse().map_err(|_| format!("bad offset `{start}`"))?;
            let ordered = epochs
                .entries
                .last()
                .is_none_or(|(e, s)| epoch > *e && start >= *s);
            if epoch < 0 || start < 0 || !ordered {
                return Err(format!("entry `{line}` is out of order"));
            }
            epochs.entries.push((epoch, start));
        }
        Ok(epochs)
    }

    /// Reads the partition's checkpoint. `Ok(None)` when there is none or it is
    /// damaged (logged): the caller rebuilds it from the log.
    pub(crate) fn load(dir: &Path) -> Result<Option<LeaderEpochs>, LogError> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => String::new(),
            Err(e) => return Err(e.into()),
        };
        match LeaderEpochs::decode(&text) {
            Ok(epochs) => Ok(Some(epochs)),
            Err(why) => {
                tracing::warn!(file = %path.display(), "leader epoch checkpoint is damaged ({why}); rebuilding it from the log");
                Ok(None)
            }
        }
    }

    pub(crate) fn store(&self, dir: &Path) -> Result<(), LogError> {
        crate::partition::replace_file(dir, LEADER_EPOCH_CHECKPOINT_FILE, self.encode().as_bytes())
    }
}

fn parse_lines(text: &str) -> Result<Vec<&str>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(VERSION) {
        return Err("missing or unknown version line".into());
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("missing count line")?;
    let entries: Vec<&str> = lines.collect();
    if entries.len() != count {
        return Err(format!(
            "count says {count} entries, found {}",
            entries.len()
        ));
    }
    Ok(entries)
}

/// Offsets per (topic, partition): the broker's high-watermark checkpoint.
pub type PartitionOffsets = BTreeMap<(String, u32), i64>;

/// Writes `<dir>/replication-offset-checkpoint` atomically and durably.
pub fn write_offset_checkpoint(dir: &Path, offsets: &PartitionOffsets) -> Result<(), LogError> {
    let mut out = format!("{VERSION}\n{}\n", offsets.len());
    for ((topic, partition), offset) in offsets {
        out.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    crate::partition::replace_file(dir, REPLICATION_OFFSET_CHECKPOINT_FILE, out.as_bytes())
}

/// Reads `<dir>/replication-offset-checkpoint`; empty when there is none. A damaged
/// file is `LogError::Corrupt` (it is replaced atomically, so damage is not a crash).
pub fn read_offset_checkpoint(dir: &Path) -> Result<PartitionOffsets, LogError> {
    let path: PathBuf = dir.join(REPLICATION_OFFSET_CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |detail: String| LogError::Corrupt {
        path: path.clone(),
        position: 0,
        detail,
    };
    let mut offsets = BTreeMap::new();
    for line in parse_lines(&text).map_err(corrupt)? {
        let fields: Vec<&str> = line.split(' ').collect();
        let [topic, partition, offset] = fields[..] else {
            return Err(corrupt(format!("bad entry `{line}`")));
        };
        let partition: u32 = partition
            .parse()
            .map_err(|_| corrupt(format!("bad partition in `{line}`")))?;
        let offset: i64 = offset
            .parse()
            .map_err(|_| corrupt(format!("bad offset in `{line}`")))?;
        offsets.insert((topic.to_owned(), partition), offset);
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_epochs_round_trip_and_refuse_damage() {
        let mut epochs = LeaderEpochs::default();
        assert!(epochs.assign(0, 0));
        assert!(!epochs.assign(0, 5));
        assert!(epochs.assign(3, 10));
        assert!(epochs.assign(4, 10));
        let text = epochs.encode();
        assert_eq!(text, "0\n3\n0 0\n3 10\n4 10\n");
        assert_eq!(LeaderEpochs::decode(&text), Ok(epochs.clone()));
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n2\n3 0\n1 5\n",
            "0\n1\n0 x\n",
            "0\n1\n0 0 0\n",
        ] {
            assert!(LeaderEpochs::decode(bad).is_err(), "{bad:?}");
        }
        assert!(epochs.truncate_from(10));
        assert_eq!(epochs.entries(), &[(0, 0)]);
        assert!(!epochs.truncate_from(10));
    }

    #[test]
    fn offset_checkpoint_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_offset_checkpoint(dir.path()).unwrap().is_empty());
        let offsets: PartitionOffsets = [(("a".to_string(), 0), 5), (("b.c".to_string(), 3), 0)]
            .into_iter()
            .collect();
        write_offset_checkpoint(dir.path(), &offsets).unwrap();
        assert_eq!(read_offset_checkpoint(dir.path()).unwrap(), offsets);
        std::fs::write(
            dir.path().join(REPLICATION_OFFSET_CHECKPOINT_FILE),
            "0\n2\na 0 5\n",
        )
        .unwrap();
        assert!(read_offset_checkpoint(dir.path()).is_err());
    }
}
