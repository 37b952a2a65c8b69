//! The sparse offset index and the time index of one segment, in memory.
//!
//! Invariants (checked by [`SegmentIndex::from_bytes`] when loading from disk):
//! - offset entries are strictly increasing in relative offset and in position, and no
//!   entry sits at position 0 (the segment start is an implicit entry);
//! - time entries are strictly increasing in timestamp and in relative offset, and every
//!   time entry's relative offset is also an offset entry's relative offset.

pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
pub(crate) const TIME_ENTRY_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Every record in a batch before `relative_offset` has a timestamp `<= max_timestamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub max_timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// The last indexed batch start at or before `relative_offset`; the segment start
    /// (relative offset 0, position 0) if there is none.
    pub fn entry_for_offset(&self, relative_offset: u32) -> OffsetEntry {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        match i.checked_sub(1) {
            Some(i) => self.offsets[i],
            None => OffsetEntry {
                relative_offset: 0,
                position: 0,
            },
        }
    }

    /// Position of the last indexed batch starting at or before `relative_offset`.
    #[cfg(test)]
    pub fn position_for_offset(&self, relative_offset: u32) -> u64 {
        self.entry_for_offset(relative_offset).position as u64
    }

    /// The last indexed batch start at or before `position`.
    pub fn entry_at_or_before_position(&self, position: u64) -> Option<OffsetEntry> {
        let i = self
            .offsets
            .partition_point(|e| e.position as u64 <= position);
        i.checked_sub(1).map(|i| self.offsets[i])
    }

    /// Relative offset from which to scan for the first record with a timestamp
    /// `>= timestamp`: everything before it is known to be older.
    pub fn scan_start_for_timestamp(&self, timestamp: i64) -> u32 {
        let i = self.times.partition_point(|e| e.max_timestamp < timestamp);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset
        }
    }

    pub fn offsets_to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_LEN);
        for e in &self.offsets {
            out.extend_from_slice(&encode_offset_entry(*e));
        }
        out
    }

    pub fn times_to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_LEN);
        for e in &self.times {
            out.extend_from_slice(&encode_time_entry(*e));
        }
        out
    }

    /// Parses both index files, requiring every invariant above and that positions lie
    /// inside a log of `log_size` bytes. `Err` describes the first violation.
    pub fn from_bytes(offsets: &[u8], times: &[u8], log_size: u64) -> Result<Self, String> {
        let index = Self::valid_prefix(offsets, times, log_size);
        if index.offsets.len() * OFFSET_ENTRY_LEN != offsets.len() {
            return Err(format!(
                "offset index is {} bytes but only {} entries are valid",
                offsets.len(),
                index.offsets.len()
            ));
        }
        if index.times.len() * TIME_ENTRY_LEN != times.len() {
            return Err(format!(
                "time index is {} bytes but only {} entries are valid",
                times.len(),
                index.times.len()
            ));
        }
        Ok(index)
    }

    /// The longest prefix of both files that satisfies the invariants. Used by crash
    /// recovery, where the tail of an index file may be missing or torn.
    pub fn valid_prefix(offsets: &[u8], times: &[u8], log_size: u64) -> Self {
        let mut index = SegmentIndex::default();
        for chunk in offsets.chunks_exact(OFFSET_ENTRY_LEN) {
            let e = decode_offset_entry(chunk);
            let ok = e.position != 0
                && (e.position as u64) < log_size
                && index.offsets.last().is_none_or(|last| {
                    last.relative_offset < e.relative_offset && last.position < e.position
                });
            if !ok {
                break;
            }
            index.offsets.push(e);
        }
        for chunk in times.chunks_exact(TIME_ENTRY_LEN) {
            let e = decode_time_entry(chunk);
            let ok = index.times.last().is_none_or(|last| {
                last.max_timestamp < e.max_timestamp && last.relative_offset < e.relative_offset
            }) && index
                .offsets
                .binary_search_by_key(&e.relative_offset, |o| o.relative_offset)
                .is_ok();
            if !ok {
                break;
            }
            index.times.push(e);
        }
        index
    }
}

pub(crate) fn encode_offset_entry(e: OffsetEntry) -> [u8; OFFSET_ENTRY_LEN] {
    let mut out = [0u8; OFFSET_ENTRY_LEN];
    out[..4].copy_from_slice(&e.relative_offset.to_be_bytes());
    out[4..].copy_from_slice(&e.position.to_be_bytes());
    out
}

pub(crate) fn encode_time_entry(e: TimeEntry) -> [u8; TIME_ENTRY_LEN] {
    let mut out = [0u8; TIME_ENTRY_LEN];
    out[..8].copy_from_slice(&e.max_timestamp.to_be_bytes());
    out[8..].copy_from_slice(&e.relative_offset.to_be_bytes());
    out
}

pub(crate) fn decode_offset_entry(b: &[u8]) -> OffsetEntry {
    assert_eq!(b.len(), OFFSET_ENTRY_LEN);
    OffsetEntry {
        relative_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    }
}

pub(crate) fn decode_time_entry(b: &[u8]) -> TimeEntry {
    assert_eq!(b.len(), TIME_ENTRY_LEN);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&b[..8]);
    TimeEntry {
        max_timestamp: i64::from_be_bytes(ts),
        relative_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
    }
}

/// The running state that decides where the next index entries go. Kept separately
/// from the entries so an append can plan its entries and commit them only once the
/// writes succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexCursor {
    /// Log bytes written since the last offset entry (or the segment start).
    pub bytes_since_entry: u64,
    /// Largest batch max timestamp in the segment so far; `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// Timestamp of the last time entry; `i64::MIN` when there is none.
    pub last_time_entry: i64,
}

impl IndexCursor {
    pub const EMPTY: IndexCursor = IndexCursor {
        bytes_since_entry: 0,
        max_timestamp: i64::MIN,
        last_time_entry: i64::MIN,
    };

    /// Accounts for a batch found by a scan at `position` of the segment starting at
    /// `segment_base`, appending the index entries it earns to `index`.
    pub fn index_scanned(
        &mut self,
        index: &mut SegmentIndex,
        segment_base: i64,
        header: &meridian_wire::batch::BatchHeader,
        position: u64,
        index_interval_bytes: u32,
    ) {
        let (offset_entry, time_entry) = self.advance(
            (header.base_offset - segment_base) as u32,
            position as u32,
            header.total_len() as u64,
            header.max_timestamp,
            index_interval_bytes,
        );
        index.offsets.extend(offset_entry);
        index.times.extend(time_entry);
    }

    /// Accounts for a batch about to be placed at `position`, returning the index
    /// entries to write for it.
    pub fn advance(
        &mut self,
        relative_offset: u32,
        position: u32,
        batch_len: u64,
        batch_max_timestamp: i64,
        index_interval_bytes: u32,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        let mut entries = (None, None);
        if position > 0 && self.bytes_since_entry >= index_interval_bytes.max(1) as u64 {
            entries.0 = Some(OffsetEntry {
                relative_offset,
                position,
            });
            if self.max_timestamp > self.last_time_entry {
                entries.1 = Some(TimeEntry {
                    max_timestamp: self.max_timestamp,
                    relative_offset,
                });
                self.last_time_entry = self.max_timestamp;
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += batch_len;
        self.max_timestamp = self.max_timestamp.max(batch_max_timestamp);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_places_entries_every_interval_and_times_only_when_growing() {
        let mut cursor = IndexCursor::EMPTY;
        let mut index = SegmentIndex::default();
        // (batch len, max timestamp) appended back to back, interval 100 bytes.
        let batches = [
            (60, 5),
            (60, 3),
            (60, 4),
            (60, 9),
            (200, 1),
            (10, 1),
            (10, 2),
        ];
        let (mut position, mut offset) = (0u32, 0u32);
        for (len, ts) in batches {
            let (o, t) = cursor.advance(offset, position, len, ts, 100);
            index.offsets.extend(o);
            index.times.extend(t);
            position += len as u32;
            offset += 1;
        }
        assert_eq!(
            index.offsets,
            vec![
                OffsetEntry {
                    relative_offset: 2,
                    position: 120
                },
                OffsetEntry {
                    relative_offset: 4,
                    position: 240
                },
                OffsetEntry {
                    relative_offset: 5,
                    position: 440
                },
            ]
        );
        assert_eq!(
            index.times,
            vec![
                TimeEntry {
                    max_timestamp: 5,
                    relative_offset: 2
                },
                TimeEntry {
                    max_timestamp: 9,
                    relative_offset: 4
                },
            ]
        );
        let bytes = (index.offsets_to_bytes(), index.times_to_bytes());
        assert_eq!(
            SegmentIndex::from_bytes(&bytes.0, &bytes.1, 460),
            Ok(index.clone())
        );
        assert!(SegmentIndex::from_bytes(&bytes.0, &bytes.1, 440).is_err());
        assert_eq!(index.position_for_offset(1), 0);
        assert_eq!(index.position_for_offset(3), 120);
        assert_eq!(index.position_for_offset(4), 240);
        assert_eq!(index.position_for_offset(6), 440);
        assert_eq!(index.scan_start_for_timestamp(5), 0);
        assert_eq!(index.scan_start_for_timestamp(6), 2);
        assert_eq!(index.scan_start_for_timestamp(100), 4);
        assert_eq!(index.entry_at_or_before_position(119), None);
        assert_eq!(
            index.entry_at_or_before_position(439).map(|e| e.position),
            Some(240)
        );
    }
}
