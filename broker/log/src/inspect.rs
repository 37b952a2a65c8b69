//! Reading a partition's files for inspection (`meridian dump-log`), changing
//! nothing: segments batch by batch ([`inspect_segment`]), their offset and time
//! indexes ([`inspect_offset_index`], [`inspect_time_index`]) and snapshots of
//! idempotent producers' state ([`inspect_producer_snapshot`]). Each check is the one
//! the broker makes when it opens the files; a running broker's files can be read.

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use meridian_wire::batch::BatchHeader;

use crate::index::{SegmentIndex, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use crate::partition::parse_segment_name;
use crate::producer_state::{ProducerStates, ProducerView};
use crate::segment::{read_batch, read_header, scan_batches, ScanChecks};
use crate::LogError;

/// What a partition directory's file is, by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `.log`, or any name the others do not take.
    Segment,
    /// `.index`: a segment's sparse offset index.
    OffsetIndex,
    /// `.timeindex`: a segment's time index.
    TimeIndex,
    /// `.snapshot`: idempotent producers' state as of its offset.
    ProducerSnapshot,
}

impl FileKind {
    pub fn of(path: &Path) -> FileKind {
        match path.extension().and_then(|e| e.to_str()) {
            Some("index") => FileKind::OffsetIndex,
            Some("timeindex") => FileKind::TimeIndex,
            Some("snapshot") => FileKind::ProducerSnapshot,
            _ => FileKind::Segment,
        }
    }
}

/// The offset a segment's file is named for (`00000000000000001234.index`), if it is
/// named as the broker names them.
fn named_offset(path: &Path) -> Option<i64> {
    let name = path.file_name()?.to_str()?;
    parse_segment_name(name, path.extension()?.to_str()?)
}
/// One batch of a segment file, as [`inspect_segment`] read it.
#[derive(Clone, Debug)]
pub struct InspectedBatch {
    /// Where it starts in the file.
    pub position: u64,
    pub header: BatchHeader,
    /// The whole batch, header included; its CRC checked.
    pub bytes: Bytes,
}

/// Where [`inspect_segment`] stopped before the end of the file, and why: a short or
/// torn batch, a bad CRC or magic, offsets that go back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentProblem {
    pub position: u64,
    pub detail: String,
}

/// Reads the segment file at `path` for inspection (`meridian dump-log`), changing
/// nothing: calls `on_batch` with each batch in order, after checking its CRC and
/// that its offsets come after the previous batch's, and returns where and why the
/// walk stopped early, if it did. A running broker's segments can be read this way;
/// the active one may end in a batch being written.
///
/// The base offset is the file's name as the broker names segments
/// (`00000000000000001234.log`); under any other name, the first batch's.
pub fn inspect_segment(
    path: &Path,
    mut on_batch: impl FnMut(InspectedBatch),
) -> Result<Option<SegmentProblem>, LogError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let base_offset = match named_offset(path) {
        Some(base_offset) => base_offset,
        None => match read_header(&file, 0, size)? {
            Ok(header) => header.base_offset,
            Err(_) => 0,
        },
    };
    let mut read_error = None;
    let scan = scan_batches(
        &file,
        base_offset,
        0,
        size,
        base_offset,
        ScanChecks { verify_crc: true },
        |header, position| {
            if read_error.is_some() {
                return;
            }
            match read_batch(&file, position, header) {
                Ok(bytes) => on_batch(InspectedBatch {
                    position,
                    header: *header,
                    bytes,
                }),
                Err(e) => read_error = Some(e),
            }
        },
    )?;
    if let Some(e) = read_error {
        return Err(e.into());
    }
    Ok(scan
        .problem
        .map(|(position, detail)| SegmentProblem { position, detail }))
}

/// An offset index entry: the batch starting at `offset` sits at `position` of the
/// segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    pub offset: i64,
    pub position: u32,
}

/// A time index entry: every record before `offset` has a timestamp at or before
/// `timestamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp: i64,
    pub offset: i64,
}

/// An index file's valid entries, and where and why the rest are not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntries<E> {
    pub entries: Vec<E>,
    pub problem: Option<SegmentProblem>,
}

/// The segment's base offset, its index files and its log's size (`u64::MAX` without
/// the log beside them: positions are then not checked against it).
fn index_files(path: &Path) -> Result<(i64, Vec<u8>, Vec<u8>, u64), LogError> {
    let base_offset = named_offset(path).ok_or_else(|| LogError::Corrupt {
        path: path.to_owned(),
        position: 0,
        detail: "an index file's name must be its segment's base offset \
                 (00000000000000001234.index), which its entries count from"
            .into(),
    })?;
    let sibling = |extension: &str| -> PathBuf { path.with_extension(extension) };
    let read = |p: PathBuf| match std::fs::read(&p) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && p != path => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    let offsets = read(sibling("index"))?;
    let times = read(sibling("timeindex"))?;
    let log_size = match std::fs::metadata(sibling("log")) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => u64::MAX,
        Err(e) => return Err(e.into()),
    };
    Ok((base_offset, offsets, times, log_size))
}

/// Where the valid entries of an index file of `len` bytes end, if before its end.
fn index_problem(valid: usize, entry_len: usize, len: usize, rule: &str) -> Option<SegmentProblem> {
    let end = valid * entry_len;
    (end < len).then(|| SegmentProblem {
        position: end as u64,
        detail: if len - end < entry_len {
            format!("a torn entry of {} bytes", len - end)
        } else {
            format!("entry {valid} breaks the index's order: {rule}")
        },
    })
}

/// Reads a segment's offset index (`.index`, named for the segment's base offset):
/// its entries as long as they keep the broker's rules (offsets and positions
/// increasing, positions inside the segment's `.log` when it is beside it).
pub fn inspect_offset_index(path: &Path) -> Result<IndexEntries<OffsetIndexEntry>, LogError> {
    let (base_offset, offsets, _, log_size) = index_files(path)?;
    let index = SegmentIndex::valid_prefix(&offsets, &[], log_size);
    Ok(IndexEntries {
        problem: index_problem(
            index.offsets.len(),
            OFFSET_ENTRY_LEN,
            offsets.len(),
            "offsets and positions must increase, and positions lie inside the segment",
        ),
        entries: index
            .offsets
            .iter()
            .map(|e| OffsetIndexEntry {
                offset: base_offset + i64::from(e.relative_offset),
                position: e.position,
            })
            .collect(),
    })
}

/// Reads a segment's time index (`.timeindex`, named for the segment's base
/// offset): its entries as long as they keep the broker's rules (timestamps and
/// offsets increasing, each offset one of the offset index's, read beside it).
pub fn inspect_time_index(path: &Path) -> Result<IndexEntries<TimeIndexEntry>, LogError> {
    let (base_offset, offsets, times, log_size) = index_files(path)?;
    let index = SegmentIndex::valid_prefix(&offsets, &times, log_size);
    Ok(IndexEntries {
        problem: index_problem(
            index.times.len(),
            TIME_ENTRY_LEN,
            times.len(),
            "timestamps and offsets must increase, each offset an entry of the offset index",
        ),
        entries: index
            .times
            .iter()
            .map(|e| TimeIndexEntry {
                timestamp: e.max_timestamp,
                offset: base_offset + i64::from(e.relative_offset),
            })
            .collect(),
    })
}

/// Reads a snapshot of idempotent producers' state (`.snapshot`, named for the
/// offset it holds the state below): each producer by id, with its epoch and the
/// batches remembered to answer retries. A damaged snapshot is `LogError::Corrupt`
/// (the broker skips it for an older one and replays more of the log).
pub fn inspect_producer_snapshot(path: &Path) -> Result<Vec<ProducerView>, LogError> {
    let bytes = std::fs::read(path)?;
    let states = ProducerStates::from_snapshot(&bytes).map_err(|detail| LogError::Corrupt {
        path: path.to_owned(),
        position: 0,
        detail,
    })?;
    Ok(states.producers())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::segment_file_name;
    use meridian_wire::batch::{encode_batch, Compression, NewRecord, ProducerIdentity};

    fn batch_at(base_offset: i64, values: &[&str]) -> Vec<u8> {
        let records: Vec<NewRecord> = values
            .iter()
            .map(|v| NewRecord {
                timestamp: 1_700_000_000_000,
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                ..NewRecord::default()
            })
            .collect();
        let mut batch = encode_batch(&records, Compression::Zstd, ProducerIdentity::NONE)
            .unwrap()
            .to_vec();
        meridian_wire::batch::patch_batch(&mut batch, base_offset, 3);
        batch
    }

    fn inspect(path: &Path) -> (Vec<(u64, i64, i64)>, Option<SegmentProblem>) {
        let mut seen = Vec::new();
        let problem = inspect_segment(path, |b| {
            seen.push((b.position, b.header.base_offset, b.header.last_offset()));
        })
        .unwrap();
        (seen, problem)
    }

    #[test]
    fn inspecting_a_segment_reports_each_batch_and_where_damage_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(10, "log"));
        let first = batch_at(10, &["a", "b"]);
        let second = batch_at(12, &["c"]);
        let mut bytes = [first.clone(), second.clone()].concat();
        std::fs::write(&path, &bytes).unwrap();
        let (seen, problem) = inspect(&path);
        let second_at = first.len() as u64;
        assert_eq!(seen, [(0, 10, 11), (second_at, 12, 12)]);
        assert_eq!(problem, None);

        // A torn tail: the walk stops there and says so.
        bytes.extend_from_slice(&batch_at(13, &["d"])[..30]);
        std::fs::write(&path, &bytes).unwrap();
        let (seen, problem) = inspect(&path);
        assert_eq!(seen.len(), 2);
        let problem = problem.unwrap();
        assert_eq!(problem.position, second_at + second.len() as u64);
        assert!(problem.detail.contains("batch header needs"), "{problem:?}");

        // A flipped byte in the second batch's records: its CRC no longer holds.
        let last = bytes.len() - 31;
        bytes[last] ^= 0xff;
        bytes.truncate(first.len() + second.len());
        std::fs::write(&path, &bytes).unwrap();
        let (seen, problem) = inspect(&path);
        assert_eq!(seen, [(0, 10, 11)]);
        let problem = problem.unwrap();
        assert_eq!(problem.position, second_at);
        assert!(problem.detail.contains("CRC"), "{problem:?}");

        // Offsets that go back.
        std::fs::write(&path, [first.clone(), first.clone()].concat()).unwrap();
        let (_, problem) = inspect(&path);
        assert!(
            problem.unwrap().detail.contains("where 12 was expected"),
            "offsets going back"
        );

        // Under another name, the first batch gives the base offset.
        let copy = dir.path().join("copy.log");
        std::fs::write(&copy, &first).unwrap();
        assert_eq!(inspect(&copy), (vec![(0, 10, 11)], None));
    }

    #[test]
    fn inspecting_indexes_keeps_the_entries_the_broker_would_and_says_where_they_stop() {
        use crate::index::{encode_offset_entry, encode_time_entry, OffsetEntry, TimeEntry};
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(segment_file_name(100, "log"));
        std::fs::write(&log, vec![0u8; 1_000]).unwrap();
        let offset = |relative_offset, position| {
            encode_offset_entry(OffsetEntry {
                relative_offset,
                position,
            })
        };
        let index = dir.path().join(segment_file_name(100, "index"));
        let good = [offset(5, 100), offset(9, 300)].concat();
        // The third goes back in offset.
        std::fs::write(&index, [good.clone(), offset(7, 400).to_vec()].concat()).unwrap();
        let found = inspect_offset_index(&index).unwrap();
        let entries: Vec<(i64, u32)> = found
            .entries
            .iter()
            .map(|e| (e.offset, e.position))
            .collect();
        assert_eq!(entries, [(105, 100), (109, 300)]);
        let problem = found.problem.unwrap();
        assert_eq!(problem.position, 16);
        assert!(problem.detail.contains("entry 2 breaks"), "{problem:?}");
        // Past the end of the log beside it.
        std::fs::write(&index, [good.clone(), offset(12, 1_000).to_vec()].concat()).unwrap();
        assert_eq!(
            inspect_offset_index(&index)
                .unwrap()
                .problem
                .unwrap()
                .position,
            16
        );
        // A torn last entry.
        std::fs::write(&index, [good.clone(), vec![0, 0, 1]].concat()).unwrap();
        let problem = inspect_offset_index(&index).unwrap().problem.unwrap();
        assert_eq!(
            (problem.position, problem.detail.as_str()),
            (16, "a torn entry of 3 bytes")
        );

        std::fs::write(&index, &good).unwrap();
        assert_eq!(inspect_offset_index(&index).unwrap().problem, None);
        let time = |max_timestamp, relative_offset| {
            encode_time_entry(TimeEntry {
                max_timestamp,
                relative_offset,
            })
        };
        let times = dir.path().join(segment_file_name(100, "timeindex"));
        // The third names an offset the offset index does not have.
        std::fs::write(&times, [time(10, 5), time(20, 9), time(30, 11)].concat()).unwrap();
        let found = inspect_time_index(&times).unwrap();
        let entries: Vec<(i64, i64)> = found
            .entries
            .iter()
            .map(|e| (e.timestamp, e.offset))
            .collect();
        assert_eq!(entries, [(10, 105), (20, 109)]);
        assert_eq!(found.problem.unwrap().position, 24);

        // Entries count from the base offset in the name: another name is refused.
        let renamed = dir.path().join("copy.index");
        std::fs::write(&renamed, &good).unwrap();
        let refused = inspect_offset_index(&renamed).unwrap_err().to_string();
        assert!(
            refused.contains("must be its segment's base offset"),
            "{refused}"
        );
    }

    #[test]
    fn inspecting_a_producer_snapshot_lists_each_producer_and_refuses_a_damaged_one() {
        use crate::producer_state::tests::header;
        use crate::producer_state::{snapshot_path, write_snapshot, SequencedBatch};
        let mut states = ProducerStates::default();
        states.record(&header(7, 0, 0, 3), 0, 5_000);
        states.record(&header(7, 0, 3, 2), 3, 6_000);
        states.record(&header(4, 2, 0, 1), 5, 7_000);
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), 6, &states).unwrap();
        let path = snapshot_path(dir.path(), 6);
        let producers = inspect_producer_snapshot(&path).unwrap();
        let batch = |first_seq, last_seq, base_offset, last_offset| SequencedBatch {
            first_seq,
            last_seq,
            base_offset,
            last_offset,
        };
        let producer = |producer_id, epoch, last_timestamp, batches| ProducerView {
            producer_id,
            epoch,
            last_timestamp,
            batches,
        };
        assert_eq!(
            producers,
            [
                producer(4, 2, 7_000, vec![batch(0, 0, 5, 5)]),
                producer(7, 0, 6_000, vec![batch(0, 2, 0, 2), batch(3, 4, 3, 4)]),
            ]
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let refused = inspect_producer_snapshot(&path).unwrap_err().to_string();
        assert!(refused.contains("checksum mismatch"), "{refused}");
    }
}
