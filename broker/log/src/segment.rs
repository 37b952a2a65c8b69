//! One segment: a `.log` file of batches plus its `.index` and `.timeindex`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use meridian_wire::batch::{decode_records, BatchHeader, BATCH_HEADER_LEN};
use meridian_wire::buffers::BufferPool;
use parking_lot::Mutex;

use crate::index::{
    decode_offset_entry, decode_time_entry, IndexCursor, OffsetEntry, SegmentIndex,
    OFFSET_ENTRY_LEN, TIME_ENTRY_LEN,
};
use crate::LogError;

/// Timestamp-type attribute bit: when set, every record's timestamp is the batch's max
/// timestamp (Kafka's LogAppendTime).
const LOG_APPEND_TIME_BIT: u16 = 0x08;

pub(crate) fn segment_file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

#[derive(Clone, Debug)]
pub(crate) struct SegmentPaths {
    pub log: PathBuf,
    pub offset_index: PathBuf,
    pub time_index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_offset: i64) -> Self {
        SegmentPaths {
            log: dir.join(segment_file_name(base_offset, "log")),
            offset_index: dir.join(segment_file_name(base_offset, "index")),
            time_index: dir.join(segment_file_name(base_offset, "timeindex")),
        }
    }

    /// Unlinks the log file and whichever index files exist.
    pub fn delete(&self) -> io::Result<()> {
        std::fs::remove_file(&self.log)?;
        for path in [&self.offset_index, &self.time_index] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A planned read. Holds an `Arc` to the segment file, so a read still works if
/// retention deletes (unlinks) the segment meanwhile.
#[derive(Clone, Debug)]
pub struct ReadSlice {
    file: Arc<File>,
    position: u64,
    len: usize,
}

impl ReadSlice {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte position of the first batch in its segment file.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Cuts the slice so it ends at or before byte `position` of the file (a batch
    /// boundary).
    pub(crate) fn limit_to(&mut self, position: u64) {
        let end = self.position + self.len as u64;
        self.len = (end.min(position).saturating_sub(self.position)) as usize;
    }

    /// Reads the planned whole batches, with one `pread` unless the kernel returns
    /// less. The read goes into uninitialised memory: zero-filling a megabyte first
    /// (and faulting its pages in to do it) cost as much as the copy itself.
    pub fn read(&self) -> io::Result<Bytes> {
        self.read_new().map(Bytes::from)
    }

    fn read_new(&self) -> io::Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(self.len);
        while buf.len() < self.len {
            let at = self.position + buf.len() as u64;
            // Fills (part of) the spare capacity and grows the length to match.
            let n = rustix::io::pread(&*self.file, rustix::buffer::spare_capacity(&mut buf), at)?;
            if n == 0 {
                return Err(self.ends_early());
            }
        }
        // The allocator may have given more capacity than asked for.
        buf.truncate(self.len);
        Ok(buf)
    }

    fn ends_early(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "segment ends before byte {}",
                self.position + self.len as u64
            ),
        )
    }

    /// [`read`](Self::read), into a buffer of `pool` when one is free, kept in the
    /// pool afterwards for later reads (once the transport let go of it: the peer
    /// acknowledged it). A fresh buffer for every read cost a page fault and a page
    /// clear per 4 KiB, ~9 % of the machine while the broker served one consumer.
    pub fn read_with(&self, pool: &BufferPool) -> io::Result<Bytes> {
        let Some(buffer) = pool.take(self.len) else {
            return Ok(pool.keep_vec(self.read_new()?));
        };
        // The old contents are initialised memory for the read to overwrite; only
        // what is beyond them is zeroed first.
        let mut buf = Vec::from(buffer);
        buf.resize(self.len, 0);
        let mut filled = 0;
        while filled < self.len {
            let n = self
                .file
                .read_at(&mut buf[filled..], self.position + filled as u64)?;
            if n == 0 {
                return Err(self.ends_early());
            }
            filled += n;
        }
        Ok(pool.keep_vec(buf))
    }
}

/// Reads the batch header at `position`. The inner `Err` says why there is no valid
/// header there (short file, bad magic, a length running past `limit`).
pub(crate) fn read_header(
    file: &File,
    position: u64,
    limit: u64,
) -> io::Result<Result<BatchHeader, String>> {
    if position + BATCH_HEADER_LEN as u64 > limit {
        return Ok(Err(format!(
            "{} bytes left, a batch header needs {BATCH_HEADER_LEN}",
            limit.saturating_sub(position)
        )));
    }
    let mut buf = [0u8; BATCH_HEADER_LEN];
    file.read_exact_at(&mut buf, position)?;
    let header = match BatchHeader::parse(&buf) {
        Ok(header) => header,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if position + header.total_len() as u64 > limit {
        return Ok(Err(format!(
            "batch of {} bytes runs past the end of the segment at {limit}",
            header.total_len()
        )));
    }
    Ok(Ok(header))
}

pub(crate) fn read_batch(file: &File, position: u64, header: &BatchHeader) -> io::Result<Bytes> {
    let mut buf = vec![0u8; header.total_len()];
    file.read_exact_at(&mut buf, position)?;
    Ok(Bytes::from(buf))
}

/// Outcome of walking the batches of a segment.
pub(crate) struct Scan {
    /// Position just after the last good batch.
    pub end: u64,
    /// Last offset + 1 of the last good batch (the starting offset if none).
    pub next_offset: i64,
    /// Largest batch max timestamp seen; `i64::MIN` if none.
    pub max_timestamp: i64,
    pub last_batch: Option<(u64, BatchHeader)>,
    /// Where and why the walk stopped before `limit`.
    pub problem: Option<(u64, String)>,
}

/// What [`scan_batches`] checks besides headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScanChecks {
    pub verify_crc: bool,
}

/// Walks batches from `start` to `limit`, checking each header (and each CRC when
/// `verify_crc`), that each batch starts at or after `first_offset` and after the one
/// before it, and that relative offsets fit the index. Offsets may skip: compaction
/// thins out sealed segments, and a follower copies a compacted leader's gaps into
/// its active one. Stops at the first problem.
pub(crate) fn scan_batches(
    file: &File,
    base_offset: i64,
    start: u64,
    limit: u64,
    first_offset: i64,
    checks: ScanChecks,
    mut on_batch: impl FnMut(&BatchHeader, u64),
) -> io::Result<Scan> {
    let ScanChecks { verify_crc } = checks;
    let mut scan = Scan {
        end: start,
        next_offset: first_offset,
        max_timestamp: i64::MIN,
        last_batch: None,
        problem: None,
    };
    while scan.end < limit {
        let position = scan.end;
        let header = match read_header(file, position, limit)? {
            Ok(header) => header,
            Err(detail) => {
                scan.problem = Some((position, detail));
                break;
            }
        };
        let out_of_order = header.base_offset < scan.next_offset;
        let problem = if out_of_order {
            Some(format!(
                "batch base offset {} where {} was expected",
                header.base_offset, scan.next_offset
            ))
        } else if header.last_offset_delta < 0
            || header.last_offset() - base_offset > u32::MAX as i64
        {
            Some(format!(
                "batch offsets {}..={} do not fit a segment based at {base_offset}",
                header.base_offset,
                header.last_offset()
            ))
        } else if verify_crc {
            let batch = read_batch(file, position, &header)?;
            header.validate(&batch).err().map(|e| e.to_string())
        } else {
            None
        };
        if let Some(detail) = problem {
            scan.problem = Some((position, detail));
            break;
        }
        on_batch(&header, position);
        scan.next_offset = header.last_offset() + 1;
        scan.max_timestamp = scan.max_timestamp.max(header.max_timestamp);
        scan.last_batch = Some((position, header));
        scan.end = position + header.total_len() as u64;
    }
    Ok(scan)
}

fn read_optional(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn len_optional(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes both index files from scratch and, if `sync`, syncs them; returns the open
/// handles.
pub(crate) fn write_index_files(
    paths: &SegmentPaths,
    index: &SegmentIndex,
    sync: bool,
) -> io::Result<(File, File)> {
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    };
    let offset_index = open(&paths.offset_index)?;
    offset_index.write_all_at(&index.offsets_to_bytes(), 0)?;
    let time_index = open(&paths.time_index)?;
    time_index.write_all_at(&index.times_to_bytes(), 0)?;
    if sync {
        offset_index.sync_data()?;
        time_index.sync_data()?;
    }
    Ok((offset_index, time_index))
}

/// Opens the index files for appending without changing them (a missing file is
/// created: it matched an empty index).
fn open_index_files(paths: &SegmentPaths) -> io::Result<(File, File)> {
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    Ok((open(&paths.offset_index)?, open(&paths.time_index)?))
}

/// A segment's index in memory, and whether it came from the index files unchecked
/// (`from_file`) or was built by this process (from appends or a scan of the log).
#[derive(Debug)]
struct LoadedIndex {
    index: SegmentIndex,
    from_file: bool,
}

impl LoadedIndex {
    fn built(index: SegmentIndex) -> Self {
        LoadedIndex {
            index,
            from_file: false,
        }
    }
}

/// Writes `parts` back to back at `position` with `pwritev`, continuing after short
/// writes and in chunks of at most `IOV_MAX` buffers.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut position: u64) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut rest: &mut [io::IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let chunk = rest.len().min(IOV_MAX);
        let written = rustix::io::pwritev(file, &rest[..chunk], position)?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        position += written as u64;
        io::IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// Index entries of the active segment are written to their files this many at a
/// time (and at every sync), not with each append: a produce request of a few records
/// otherwise cost two more writes besides the log's (at 53,000 records/s in small
/// requests, 1.5 index writes per appended batch). Recovery CRC-checks the log from
/// the last entry on disk, so a crash costs it at most this many index intervals of
/// extra scanning (512 KiB at the default 4 KiB), and nothing else.
const INDEX_ENTRIES_PER_WRITE: usize = 128;

/// Files and state that only the active segment has.
#[derive(Debug)]
struct ActiveFiles {
    offset_index: File,
    time_index: File,
    /// How many of the in-memory index's offset and time entries are in the files;
    /// the rest follow in one write (see [`INDEX_ENTRIES_PER_WRITE`]).
    offsets_on_disk: usize,
    times_on_disk: usize,
    cursor: IndexCursor,
    /// `now_ms` of the first append into this segment (or of `open` if it was
    /// non-empty then); drives `segment_ms`.
    first_append_ms: Option<i64>,
}

impl ActiveFiles {
    /// Entries not in the files yet.
    fn pending(&self, index: &SegmentIndex) -> usize {
        (index.offsets.len() - self.offsets_on_disk).max(index.times.len() - self.times_on_disk)
    }

    /// Writes the entries not in the files yet. On failure nothing is counted as
    /// written, so the next call writes them again at the same place.
    fn write_pending(&mut self, index: &SegmentIndex) -> io::Result<()> {
        let pending = SegmentIndex {
            offsets: index.offsets[self.offsets_on_disk..].to_vec(),
            times: index.times[self.times_on_disk..].to_vec(),
        };
        if !pending.offsets.is_empty() {
            self.offset_index.write_all_at(
                &pending.offsets_to_bytes(),
                (self.offsets_on_disk * OFFSET_ENTRY_LEN) as u64,
            )?;
        }
        if !pending.times.is_empty() {
            self.time_index.write_all_at(
                &pending.times_to_bytes(),
                (self.times_on_disk * TIME_ENTRY_LEN) as u64,
            )?;
        }
        self.offsets_on_disk = index.offsets.len();
        self.times_on_disk = index.times.len();
        Ok(())
    }
}

/// Where a batch goes in an append: offsets, size and max timestamp.
pub(crate) struct PlannedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub len: u64,
    pub max_timestamp: i64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    /// Last offset + 1 of the last batch; `base_offset` when empty.
    pub next_offset: i64,
    pub size: u64,
    /// Largest batch max timestamp in the segment; `i64::MIN` when empty.
    pub max_timestamp: i64,
    pub paths: SegmentPaths,
    pub file: Arc<File>,
    /// Loaded lazily for sealed segments (on first read); always loaded when active.
    index: Mutex<Option<LoadedIndex>>,
    active: Option<ActiveFiles>,
}

impl Segment {
    fn corrupt(&self, position: u64, detail: impl Into<String>) -> LogError {
        LogError::Corrupt {
            path: self.paths.log.clone(),
            position,
            detail: detail.into(),
        }
    }

    /// Creates a new, empty active segment.
    pub fn create(dir: &Path, base_offset: i64) -> Result<Segment, LogError> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&paths.log)?;
        let index = SegmentIndex::default();
        let (offset_index, time_index) = match write_index_files(&paths, &index, false) {
            Ok(files) => files,
            Err(e) => {
                // Leave no half-created segment behind.
                let _ = std::fs::remove_file(&paths.log);
                let _ = std::fs::remove_file(&paths.offset_index);
                let _ = std::fs::remove_file(&paths.time_index);
                return Err(e.into());
            }
        };
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp: i64::MIN,
            paths,
            file: Arc::new(file),
            index: Mutex::new(Some(LoadedIndex::built(index))),
            active: Some(ActiveFiles {
                offset_index,
                time_index,
                offsets_on_disk: 0,
                times_on_disk: 0,
                cursor: IndexCursor::EMPTY,
                first_append_ms: None,
            }),
        })
    }

    /// Calls `f` with every batch header, in order (no CRC checks: recovery already
    /// vouched for the data).
    pub fn for_each_header(&self, mut f: impl FnMut(&BatchHeader)) -> Result<(), LogError> {
        let scan = scan_batches(
            &self.file,
            self.base_offset,
            0,
            self.size,
            self.base_offset,
            // Cleaned segments have gaps; offsets only have to increase.
            ScanChecks { verify_crc: false },
            |header, _| f(header),
        )?;
        if let Some((position, detail)) = scan.problem {
            return Err(self.corrupt(position, detail));
        }
        Ok(())
    }

    /// A sealed segment the cleaner just wrote (and synced, indexes included).
    pub(crate) fn cleaned(
        base_offset: i64,
        paths: SegmentPaths,
        file: File,
        size: u64,
        next_offset: i64,
        max_timestamp: i64,
        index: SegmentIndex,
    ) -> Segment {
        Segment {
            base_offset,
            next_offset,
            size,
            max_timestamp,
            paths,
            file: Arc::new(file),
            index: Mutex::new(Some(LoadedIndex::built(index))),
            active: None,
        }
    }

    pub fn first_append_ms(&self) -> Option<i64> {
        self.active.as_ref().and_then(|a| a.first_append_ms)
    }

    /// Opens a sealed segment without scanning it: checks the index files' shape, walks
    /// the batch headers after the last offset-index entry, requires them to end exactly
    /// at the end of the file, and checks the CRC of the last batch. A damaged index is
    /// rebuilt from the log; damaged data is `LogError::Corrupt`.
    pub fn open_sealed(
        dir: &Path,
        base_offset: i64,
        next_segment_base: i64,
        first: bool,
        index_interval_bytes: u32,
    ) -> Result<Segment, LogError> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = File::open(&paths.log)?;
        let size = file.metadata()?.len();
        let mut segment = Segment {
            base_offset,
            next_offset: base_offset,
            size,
            max_timestamp: i64::MIN,
            paths,
            file: Arc::new(file),
            index: Mutex::new(None),
            active: None,
        };
        if size == 0 {
            // The cleaner leaves the log's first segment empty when it removes every
            // record in it; anywhere else an empty sealed segment is damage.
            if first {
                *segment.index.get_mut() = Some(LoadedIndex::built(SegmentIndex::default()));
                return Ok(segment);
            }
            return Err(segment.corrupt(0, "sealed segment is empty"));
        }
        if size > u32::MAX as u64 {
            return Err(segment.corrupt(0, format!("segment of {size} bytes exceeds 4 GiB")));
        }
        match segment.index_tail()? {
            Ok((position, first_offset, index_max_timestamp)) => {
                let scan = scan_batches(
                    &segment.file,
                    base_offset,
                    position,
                    size,
                    first_offset,
                    ScanChecks { verify_crc: false },
                    |_, _| {},
                )?;
                if let Some((position, detail)) = scan.problem {
                    return Err(segment.corrupt(position, detail));
                }
                let Some((last_position, last_header)) = scan.last_batch else {
                    return Err(segment.corrupt(position, "no batch after the last index entry"));
                };
                let batch = read_batch(&segment.file, last_position, &last_header)?;
                if let Err(e) = last_header.validate(&batch) {
                    return Err(segment.corrupt(last_position, format!("last batch: {e}")));
                }
                segment.next_offset = scan.next_offset;
                segment.max_timestamp = index_max_timestamp.max(scan.max_timestamp);
            }
            Err(why) => {
                tracing::warn!(
                    segment = %segment.paths.log.display(),
                    "index of sealed segment is unusable ({why}); rebuilding it from the log"
                );
                segment.rebuild_sealed_index(index_interval_bytes)?;
            }
        }
        if segment.next_offset > next_segment_base {
            return Err(segment.corrupt(
                size,
                format!(
                    "segment ends at offset {} but the next segment starts at {next_segment_base}",
                    segment.next_offset
                ),
            ));
        }
        Ok(segment)
    }

    /// Cheap look at the index files of a sealed segment: the position and offset of the
    /// last offset-index entry, and the last time-index timestamp. `Err` says why the
    /// index cannot be trusted.
    fn index_tail(&self) -> io::Result<Result<(u64, i64, i64), String>> {
        let Some(offsets_len) = len_optional(&self.paths.offset_index)? else {
            return Ok(Err("offset index missing".into()));
        };
        let Some(times_len) = len_optional(&self.paths.time_index)? else {
            return Ok(Err("time index missing".into()));
        };
        if offsets_len % OFFSET_ENTRY_LEN as u64 != 0 {
            return Ok(Err(format!(
                "offset index size {offsets_len} is not a multiple of {OFFSET_ENTRY_LEN}"
            )));
        }
        if times_len % TIME_ENTRY_LEN as u64 != 0 {
            return Ok(Err(format!(
                "time index size {times_len} is not a multiple of {TIME_ENTRY_LEN}"
            )));
        }
        if offsets_len == 0 {
            if times_len != 0 {
                return Ok(Err("time entries without offset entries".into()));
            }
            return Ok(Ok((0, self.base_offset, i64::MIN)));
        }
        let mut buf = [0u8; OFFSET_ENTRY_LEN];
        File::open(&self.paths.offset_index)?
            .read_exact_at(&mut buf, offsets_len - OFFSET_ENTRY_LEN as u64)?;
        let last = decode_offset_entry(&buf);
        let expected_offset = self.base_offset + last.relative_offset as i64;
        match read_header(&self.file, last.position as u64, self.size)? {
            Ok(header) if last.position > 0 && header.base_offset == expected_offset => {}
            Ok(header) => {
                return Ok(Err(format!(
                    "last offset entry points at a batch with base offset {}, expected {expected_offset}",
                    header.base_offset
                )))
            }
            Err(detail) => return Ok(Err(format!("last offset entry: {detail}"))),
        }
        let mut max_timestamp = i64::MIN;
        if times_len > 0 {
            let mut buf = [0u8; TIME_ENTRY_LEN];
            File::open(&self.paths.time_index)?
                .read_exact_at(&mut buf, times_len - TIME_ENTRY_LEN as u64)?;
            let time = decode_time_entry(&buf);
            if time.relative_offset > last.relative_offset {
                return Ok(Err("time index goes past the offset index".into()));
            }
            max_timestamp = time.max_timestamp;
        }
        Ok(Ok((last.position as u64, expected_offset, max_timestamp)))
    }

    /// Full CRC scan of a sealed segment whose index is unusable at open.
    fn rebuild_sealed_index(&mut self, index_interval_bytes: u32) -> Result<(), LogError> {
        let (index, scan) = self.build_index(index_interval_bytes)?;
        self.next_offset = scan.next_offset;
        self.max_timestamp = scan.max_timestamp;
        *self.index.get_mut() = Some(LoadedIndex::built(index));
        Ok(())
    }

    /// Opens the last segment of the log as the active one.
    ///
    /// Clean or not, recovery starts at the last time-index entry that has a matching
    /// offset entry (so the running max timestamp is exact) or at the segment start,
    /// walks batch headers up to the last offset-index entry, and checks every batch
    /// after it in full (CRC included). That tail is at most one index interval plus a
    /// batch, so this is cheap after a clean shutdown too. The log is truncated at the
    /// first torn or corrupt batch (with a warning), and the index files are rewritten
    /// unless they already match. `clean` only changes what is logged.
    pub fn open_active(
        dir: &Path,
        base_offset: i64,
        clean: bool,
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<Segment, LogError> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = OpenOptions::new().read(true).write(true).open(&paths.log)?;
        let file_size = file.metadata()?.len();
        let corrupt = |position, detail: String| LogError::Corrupt {
            path: paths.log.clone(),
            position,
            detail,
        };
        if file_size > u32::MAX as u64 {
            return Err(corrupt(
                0,
                format!("segment of {file_size} bytes exceeds 4 GiB"),
            ));
        }
        let offsets_bytes = read_optional(&paths.offset_index)?;
        let times_bytes = read_optional(&paths.time_index)?;
        let on_disk = SegmentIndex::valid_prefix(&offsets_bytes, &times_bytes, file_size);
        let on_disk_is_whole = on_disk.offsets.len() * OFFSET_ENTRY_LEN == offsets_bytes.len()
            && on_disk.times.len() * TIME_ENTRY_LEN == times_bytes.len();
        drop((offsets_bytes, times_bytes));

        let start = find_scan_start(&file, base_offset, file_size, &on_disk)?;
        let mut index = start.index;
        let mut cursor = IndexCursor {
            bytes_since_entry: 0,
            max_timestamp: start.max_timestamp_before,
            last_time_entry: index.times.last().map_or(i64::MIN, |t| t.max_timestamp),
        };
        let (mut scan_position, mut scan_offset) = (start.position, start.first_offset);
        // Phase 1: offset entries after the start point were written after the log
        // bytes before them, so those batches only need their headers walked, to learn
        // their max timestamp. The walk must land exactly on the last entry, whose
        // header must match, and the batch just before it must pass its CRC check
        // (the same test a sealed segment gets); otherwise everything from the start
        // point is checked in full.
        if let Some(last) = on_disk
            .offsets
            .last()
            .filter(|e| e.position as u64 > start.position)
        {
            let walk = scan_batches(
                &file,
                base_offset,
                start.position,
                last.position as u64,
                start.first_offset,
                ScanChecks { verify_crc: false },
                |_, _| {},
            )?;
            let last_offset = base_offset + last.relative_offset as i64;
            let lands_on_last_entry = walk.problem.is_none()
                && walk.next_offset <= last_offset
                && matches!(
                    read_header(&file, last.position as u64, file_size)?,
                    Ok(header) if header.base_offset == last_offset
                );
            let last_walked_is_intact = match walk.last_batch {
                Some((position, header)) => header
                    .validate(&read_batch(&file, position, &header)?)
                    .is_ok(),
                None => false,
            };
            if lands_on_last_entry && last_walked_is_intact {
                index.offsets = on_disk
                    .offsets
                    .iter()
                    .copied()
                    .take_while(|e| e.position <= last.position)
                    .collect();
                cursor.max_timestamp = cursor.max_timestamp.max(walk.max_timestamp);
                scan_position = walk.end;
                scan_offset = walk.next_offset;
            }
        }
        // Phase 2: every batch after that is checked in full, CRC included, and the
        // indexes are extended exactly as the appends did.
        let scan = scan_batches(
            &file,
            base_offset,
            scan_position,
            file_size,
            scan_offset,
            ScanChecks { verify_crc: true },
            |header, position| {
                cursor.index_scanned(
                    &mut index,
                    base_offset,
                    header,
                    position,
                    index_interval_bytes,
                )
            },
        )?;
        if clean && scan.problem.is_some() {
            tracing::warn!(
                segment = %paths.log.display(),
                "clean-shutdown marker present but the active segment's tail is damaged"
            );
        }
        if let Some((position, detail)) = &scan.problem {
            assert_eq!(*position, scan.end);
            tracing::warn!(
                segment = %paths.log.display(),
                position,
                truncated_bytes = file_size - scan.end,
                "truncating the torn or corrupt tail of the active segment: {detail}"
            );
            file.set_len(scan.end)?;
            file.sync_data()?;
        }
        // The start entry itself goes if the batch it pointed at was cut off.
        index.offsets.retain(|e| (e.position as u64) < scan.end);
        let last_relative_offset = index.offsets.last().map(|e| e.relative_offset);
        index
            .times
            .retain(|t| last_relative_offset.is_some_and(|last| t.relative_offset <= last));
        cursor.bytes_since_entry = scan.end - index.offsets.last().map_or(0, |e| e.position as u64);
        cursor.last_time_entry = index.times.last().map_or(i64::MIN, |t| t.max_timestamp);
        // The index files usually hold the index already (after a clean shutdown) or
        // its start (after a crash, the entries not written yet as a group): then they
        // are kept, and what is missing goes with the next group or sync. Rewriting
        // and syncing them adds up over many partitions, and needs disk space a full
        // disk does not have.
        let on_disk_is_prefix = on_disk_is_whole
            && index.offsets.starts_with(&on_disk.offsets)
            && index.times.starts_with(&on_disk.times);
        let (offset_index, time_index) = if on_disk_is_prefix {
            open_index_files(&paths)?
        } else {
            write_index_files(&paths, &index, true)?
        };
        let in_files = if on_disk_is_prefix { &on_disk } else { &index };
        let (offsets_on_disk, times_on_disk) = (in_files.offsets.len(), in_files.times.len());
        let size = scan.end;
        Ok(Segment {
            base_offset,
            next_offset: scan.next_offset,
            size,
            max_timestamp: cursor.max_timestamp,
            paths,
            file: Arc::new(file),
            index: Mutex::new(Some(LoadedIndex::built(index))),
            active: Some(ActiveFiles {
                offset_index,
                time_index,
                offsets_on_disk,
                times_on_disk,
                cursor,
                first_append_ms: (size > 0).then_some(now_ms),
            }),
        })
    }
}

/// Where recovery of the active segment starts.
struct ScanStart {
    /// The on-disk index entries up to and including the start point.
    index: SegmentIndex,
    position: u64,
    /// The offset the batch at `position` must have.
    first_offset: i64,
    /// Largest timestamp of any batch before `position`.
    max_timestamp_before: i64,
}

/// The last time-index entry that has a matching offset entry pointing at a batch with
/// the right base offset: the time entry gives the exact max timestamp of everything
/// before it. Without one, the segment start.
fn find_scan_start(
    file: &File,
    base_offset: i64,
    file_size: u64,
    on_disk: &SegmentIndex,
) -> io::Result<ScanStart> {
    for (k, time) in on_disk.times.iter().enumerate().rev() {
        let Ok(i) = on_disk
            .offsets
            .binary_search_by_key(&time.relative_offset, |o| o.relative_offset)
        else {
            continue;
        };
        let entry = on_disk.offsets[i];
        let first_offset = base_offset + entry.relative_offset as i64;
        if matches!(
            read_header(file, entry.position as u64, file_size)?,
            Ok(header) if header.base_offset == first_offset
        ) {
            return Ok(ScanStart {
                index: SegmentIndex {
                    offsets: on_disk.offsets[..=i].to_vec(),
                    times: on_disk.times[..=k].to_vec(),
                },
                position: entry.position as u64,
                first_offset,
                max_timestamp_before: time.max_timestamp,
            });
        }
    }
    Ok(ScanStart {
        index: SegmentIndex::default(),
        position: 0,
        first_offset: base_offset,
        max_timestamp_before: i64::MIN,
    })
}

impl Segment {
    /// Runs `f` on this segment's index, loading it first if this is a sealed segment
    /// read for the first time. An index file that breaks an invariant is rebuilt from
    /// the log; so is one whose entry turns out not to match the log (`f` reports
    /// `Corrupt`), after which `f` runs once more. Only a problem that remains with an
    /// index built from the log itself is returned.
    fn with_index<R>(
        &self,
        index_interval_bytes: u32,
        f: impl Fn(&SegmentIndex) -> Result<R, LogError>,
    ) -> Result<R, LogError> {
        let mut guard = self.index.lock();
        let loaded = match guard.take() {
            Some(loaded) => loaded,
            None => {
                let offsets = read_optional(&self.paths.offset_index)?;
                let times = read_optional(&self.paths.time_index)?;
                match SegmentIndex::from_bytes(&offsets, &times, self.size) {
                    Ok(index) => LoadedIndex {
                        index,
                        from_file: true,
                    },
                    Err(why) => LoadedIndex::built(self.rebuild_index(index_interval_bytes, &why)?),
                }
            }
        };
        let result = f(&loaded.index);
        if loaded.from_file && matches!(result, Err(LogError::Corrupt { .. })) {
            let why = result.err().map(|e| e.to_string()).unwrap_or_default();
            let rebuilt = LoadedIndex::built(self.rebuild_index(index_interval_bytes, &why)?);
            let result = f(&rebuilt.index);
            *guard = Some(rebuilt);
            return result;
        }
        *guard = Some(loaded);
        result
    }

    /// Rebuilds the index of a sealed segment after it proved unusable because of
    /// `why`, checking that the log still ends where it did at open.
    fn rebuild_index(
        &self,
        index_interval_bytes: u32,
        why: &str,
    ) -> Result<SegmentIndex, LogError> {
        tracing::warn!(
            segment = %self.paths.log.display(),
            "index of sealed segment is unusable ({why}); rebuilding it from the log"
        );
        let (index, scan) = self.build_index(index_interval_bytes)?;
        if scan.next_offset != self.next_offset {
            return Err(self.corrupt(
                scan.end,
                format!(
                    "segment ends at offset {} but was opened ending at {}",
                    scan.next_offset, self.next_offset
                ),
            ));
        }
        Ok(index)
    }

    /// Builds the index of a sealed segment from a full CRC scan and writes it out.
    /// Any bad batch is corruption of sealed data.
    fn build_index(&self, index_interval_bytes: u32) -> Result<(SegmentIndex, Scan), LogError> {
        let mut cursor = IndexCursor::EMPTY;
        let mut index = SegmentIndex::default();
        let base_offset = self.base_offset;
        let scan = scan_batches(
            &self.file,
            base_offset,
            0,
            self.size,
            base_offset,
            ScanChecks { verify_crc: true },
            |header, position| {
                cursor.index_scanned(
                    &mut index,
                    base_offset,
                    header,
                    position,
                    index_interval_bytes,
                )
            },
        )?;
        if let Some((position, detail)) = scan.problem {
            return Err(self.corrupt(position, detail));
        }
        write_index_files(&self.paths, &index, true)?;
        Ok((index, scan))
    }

    /// The header at `position`, which the index or a previous header says starts a
    /// batch. Anything else is corruption.
    fn header_at(&self, position: u64) -> Result<BatchHeader, LogError> {
        match read_header(&self.file, position, self.size)? {
            Ok(header) => Ok(header),
            Err(detail) => Err(self.corrupt(position, detail)),
        }
    }

    /// The batch an index entry points at, which must start with the entry's offset.
    fn indexed_batch(&self, entry: OffsetEntry) -> Result<(u64, BatchHeader), LogError> {
        let position = entry.position as u64;
        let header = self.header_at(position)?;
        let expected = self.base_offset + entry.relative_offset as i64;
        // The segment start is an implicit entry; compaction may have removed the
        // batches at the very start of a sealed segment, so the first one can begin
        // later. Real entries always name the batch they point at.
        let matches = if position == 0 {
            header.base_offset >= expected
        } else {
            header.base_offset == expected
        };
        if !matches {
            return Err(self.corrupt(
                position,
                format!(
                    "index entry says offset {expected} starts here, the batch says {}",
                    header.base_offset
                ),
            ));
        }
        Ok((position, header))
    }

    /// Position and header of the batch holding `offset`, which must be in
    /// `[base_offset, next_offset)`.
    fn find_batch(
        &self,
        index: &SegmentIndex,
        offset: i64,
    ) -> Result<(u64, BatchHeader), LogError> {
        assert!(self.base_offset <= offset && offset < self.next_offset);
        let relative_offset = (offset - self.base_offset) as u32;
        let entry = index.entry_for_offset(relative_offset);
        let mut position = self.indexed_batch(entry)?.0;
        loop {
            let header = self.header_at(position)?;
            // An offset in a gap left by compaction is served by the next batch.
            if header.last_offset() >= offset {
                return Ok((position, header));
            }
            position += header.total_len() as u64;
        }
    }

    /// Plans a read of whole batches from the one holding `offset`, up to `max_bytes`
    /// but at least one batch.
    pub fn plan_read(
        &self,
        offset: i64,
        max_bytes: u32,
        index_interval_bytes: u32,
    ) -> Result<ReadSlice, LogError> {
        self.with_index(index_interval_bytes, |index| {
            let (start, first) = self.find_batch(index, offset)?;
            let want_end = start + max_bytes as u64;
            let mut end = start + first.total_len() as u64;
            if self.size <= want_end {
                end = self.size;
            } else if end < want_end {
                // Jump over whole batches with the index, then walk the last stretch.
                if let Some(entry) = index.entry_at_or_before_position(want_end) {
                    if entry.position as u64 > end {
                        end = self.indexed_batch(entry)?.0;
                    }
                }
                while end < self.size {
                    let header = self.header_at(end)?;
                    if end + header.total_len() as u64 > want_end {
                        break;
                    }
                    end += header.total_len() as u64;
                }
            }
            Ok(ReadSlice {
                file: Arc::clone(&self.file),
                position: start,
                len: (end - start) as usize,
            })
        })
    }

    /// Byte position of the first batch that ends at or after `offset` (the batch
    /// holding it, or the next one after a gap); the segment size when `offset` is at
    /// or past the segment's end. Cutting the segment there removes every batch that
    /// holds an offset `>= offset`.
    pub fn position_of(&self, offset: i64, index_interval_bytes: u32) -> Result<u64, LogError> {
        if offset >= self.next_offset {
            return Ok(self.size);
        }
        if offset <= self.base_offset {
            return Ok(0);
        }
        self.with_index(index_interval_bytes, |index| {
            Ok(self.find_batch(index, offset)?.0)
        })
    }

    /// The earliest record in this segment at or after `min_offset` with a timestamp
    /// `>= timestamp`, as `(offset, timestamp)`.
    pub fn find_timestamp(
        &self,
        timestamp: i64,
        min_offset: i64,
        index_interval_bytes: u32,
    ) -> Result<Option<(i64, i64)>, LogError> {
        self.with_index(index_interval_bytes, |index| {
            let start = index.scan_start_for_timestamp(timestamp);
            let mut position = self.indexed_batch(index.entry_for_offset(start))?.0;
            while position < self.size {
                let header = self.header_at(position)?;
                if header.max_timestamp >= timestamp && header.last_offset() >= min_offset {
                    let batch = read_batch(&self.file, position, &header)?;
                    let records = decode_records(&header, &batch)?;
                    let log_append_time = header.attributes & LOG_APPEND_TIME_BIT != 0;
                    for record in records {
                        let record_timestamp = if log_append_time {
                            header.max_timestamp
                        } else {
                            record.timestamp
                        };
                        if record_timestamp >= timestamp && record.offset >= min_offset {
                            return Ok(Some((record.offset, record_timestamp)));
                        }
                    }
                }
                position += header.total_len() as u64;
            }
            Ok(None)
        })
    }

    /// The largest record timestamp at or after `min_offset` in this segment; `None`
    /// when no record there is. For the segment the log start offset cuts into: the
    /// segment's own `max_timestamp` may belong to a record below it.
    pub fn max_timestamp_from(
        &self,
        min_offset: i64,
        index_interval_bytes: u32,
    ) -> Result<Option<i64>, LogError> {
        if min_offset >= self.next_offset || self.size == 0 {
            return Ok(None);
        }
        self.with_index(index_interval_bytes, |index| {
            let mut position = if min_offset <= self.base_offset {
                0
            } else {
                self.find_batch(index, min_offset)?.0
            };
            let mut max = None;
            while position < self.size {
                let header = self.header_at(position)?;
                let batch_max = if header.base_offset >= min_offset {
                    Some(header.max_timestamp)
                } else {
                    // The batch the start cuts into: only its records from there.
                    let batch = read_batch(&self.file, position, &header)?;
                    let log_append_time = header.attributes & LOG_APPEND_TIME_BIT != 0;
                    decode_records(&header, &batch)?
                        .into_iter()
                        .filter(|r| r.offset >= min_offset)
                        .map(|r| {
                            if log_append_time {
                                header.max_timestamp
                            } else {
                                r.timestamp
                            }
                        })
                        .max()
                };
                max = max.max(batch_max);
                position += header.total_len() as u64;
            }
            Ok(max)
        })
    }

    /// Appends already-patched batches (`bytes`, described by `batches`) at the end.
    /// On a write error the log is cut back to its previous size and the in-memory
    /// state is left untouched. New index entries reach their files in groups (see
    /// [`INDEX_ENTRIES_PER_WRITE`]); failing to write them does not fail the append,
    /// whose bytes are in the log: they are written again later, and recovery rebuilds
    /// whatever is missing.
    pub fn append(
        &mut self,
        parts: &[&[u8]],
        batches: &[PlannedBatch],
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let active = self
            .active
            .as_mut()
            .expect("invariant: appends go to the active segment only");
        let index = &mut self
            .index
            .get_mut()
            .as_mut()
            .expect("invariant: the active segment's index is always loaded")
            .index;
        let mut cursor = active.cursor;
        let mut new_offsets = Vec::new();
        let mut new_times = Vec::new();
        let mut position = self.size;
        let mut max_timestamp = self.max_timestamp;
        for batch in batches {
            let relative_offset = batch.base_offset - self.base_offset;
            assert!((0..=u32::MAX as i64).contains(&(batch.last_offset - self.base_offset)));
            assert!(position + batch.len <= u32::MAX as u64);
            let (offset_entry, time_entry) = cursor.advance(
                relative_offset as u32,
                position as u32,
                batch.len,
                batch.max_timestamp,
                index_interval_bytes,
            );
            new_offsets.extend(offset_entry);
            new_times.extend(time_entry);
            position += batch.len;
            max_timestamp = max_timestamp.max(batch.max_timestamp);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert_eq!(position - self.size, total as u64);
        if let Err(error) = write_all_vectored_at(&self.file, parts, self.size) {
            if let Err(rollback_error) = self.file.set_len(self.size) {
                // Later appends overwrite from the in-memory size, and recovery
                // truncates whatever tail is left, so this is not fatal.
                tracing::error!(
                    segment = %self.paths.log.display(),
                    "append failed ({error}) and truncating back failed too: {rollback_error}"
                );
            }
            return Err(error.into());
        }
        index.offsets.extend(new_offsets);
        index.times.extend(new_times);
        if active.pending(index) >= INDEX_ENTRIES_PER_WRITE {
            if let Err(error) = active.write_pending(index) {
                tracing::warn!(
                    segment = %self.paths.log.display(),
                    "could not write index entries (they are written again at the next sync): {error}"
                );
            }
        }
        active.cursor = cursor;
        active.first_append_ms.get_or_insert(now_ms);
        self.size = position;
        self.max_timestamp = max_timestamp;
        if let Some(last) = batches.last() {
            self.next_offset = last.last_offset + 1;
        }
        Ok(())
    }

    /// fdatasyncs the log and, for the active segment, both index files, after
    /// writing the index entries not in them yet.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        if let Some(active) = &mut self.active {
            if let Some(loaded) = self.index.get_mut() {
                active.write_pending(&loaded.index)?;
            }
            active.offset_index.sync_data()?;
            active.time_index.sync_data()?;
        }
        Ok(())
    }

    /// Turns the active segment into a sealed one. The caller synced it first. The
    /// in-memory index is dropped too (it is reloaded from the synced file on the next
    /// read), so a long-lived partition holds only the indexes it actually reads.
    pub fn seal(&mut self) {
        self.active = None;
        *self.index.get_mut() = None;
    }

    /// Unlinks the segment's files. Open `ReadSlice`s keep the log readable.
    pub fn delete_files(&self) -> io::Result<()> {
        self.paths.delete()
    }
}
