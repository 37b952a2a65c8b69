//! The log of one partition: an ordered list of segments, the last one active.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use meridian_wire::batch::BATCH_LOG_OVERHEAD;

/// Patches the first 16 bytes of a batch (base offset, length, leader epoch) the way
/// `meridian_wire::batch::patch_batch` patches a whole one (the CRC covers neither).
fn patch_front(front: &mut [u8; 16], base_offset: i64, leader_epoch: i32) {
    front[0..8].copy_from_slice(&base_offset.to_be_bytes());
    front[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

use crate::checkpoint::LeaderEpochs;
use crate::group_commit::SyncHandle;
use crate::producer_state::{self, ProducerStates, SequenceCheck};
use crate::segment::{PlannedBatch, ReadSlice, Segment, SegmentPaths};
use crate::validate::ValidatedBatches;
use crate::{LogConfig, LogError};

/// Written by [`PartitionLog::close`], removed by [`PartitionLog::open`]. Its absence
/// at open means the last run crashed and the active segment must be scanned.
pub const CLEAN_SHUTDOWN_MARKER: &str = ".clean_shutdown";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub n_records: u64,
    /// An idempotent producer's retry of a batch already in the log: nothing was
    /// written and the offsets are the original ones.
    pub duplicate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: i64,
}

/// The append-only segmented log of one partition.
///
/// Invariants: `segments` is never empty and sorted by base offset; only the last one
/// is active; every sealed segment is non-empty and ends at or before the next one's
/// base offset. Not `Sync`-shared: the server wraps it in a mutex, and reads only plan
/// here (`read` returns a [`ReadSlice`] to read after releasing the lock).
#[derive(Debug)]
pub struct PartitionLog {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) segments: Vec<Segment>,
    /// The first readable offset: at least the first segment's base offset, and
    /// further on after `delete_before` (persisted in [`LOG_START_OFFSET_FILE`]).
    pub(crate) log_start_offset: i64,
    /// The clean-shutdown marker is on disk; the next append removes it first.
    marked_clean: bool,
    /// Idempotent producers' recent batches (see `producer_state`).
    producers: ProducerStates,
    /// Which leader epoch starts where, persisted in `leader-epoch-checkpoint`
    /// (see `checkpoint`). Never behind the log: a new epoch is stored before its
    /// first records are written.
    epochs: LeaderEpochs,
}

/// One batch a follower appended: `(partition leader epoch, base offset, offsets it
/// takes)`, the shape `meridian_core::replication::Replica::appended_as_follower` wants.
pub type FollowerBatch = (i32, i64, u32);

/// Producer snapshots kept per partition (the newest is the one used).
const SNAPSHOTS_KEPT: usize = 2;
/// Holds the log start offset set by [`PartitionLog::delete_before`] when it lies
/// inside the first segment (so it survives a restart).
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset";

/// Reads a file holding one decimal offset; `None` if there is none.
pub(crate) fn read_offset_file(dir: &Path, name: &str) -> Result<Option<i64>, LogError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse() {
            Ok(offset) => Ok(Some(offset)),
            Err(_) => Err(LogError::Corrupt {
                path,
                position: 0,
                detail: format!("expected one offset, found {text:?}"),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces a one-offset file atomically and durably.
pub(crate) fn write_offset_file(dir: &Path, name: &str, offset: i64) -> Result<(), LogError> {
    replace_file(dir, name, format!("{offset}\n").as_bytes())
}

/// Replaces a small file atomically and durably: write a temporary file, sync it,
/// rename it over the old one, sync the directory.
pub(crate) fn replace_file(dir: &Path, name: &str, contents: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = File::create(&tmp)?;
    std::io::Write::write_all(&mut &file, contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(())
}

/// Parses `NNNNNNNNNNNNNNNNNNNN.log` into its base offset.
pub(crate) fn parse_segment_name(name: &str, extension: &str) -> Option<i64> {
    let stem = name.strip_suffix(extension)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl PartitionLog {
    /// Opens or creates the partition directory.
    ///
    /// Without a clean-shutdown marker, the active (last) segment is scanned from its
    /// last trustworthy index entry, each batch's CRC is checked, and a torn or corrupt
    /// tail is truncated (with a warning saying how many bytes). Sealed segments are not
    /// scanned: each gets a cheap sanity check (see `Segment::open_sealed`) and failing
    /// it is `LogError::Corrupt` naming the file. A missing or damaged index of a sealed
    /// segment is rebuilt from its log. The marker is removed once open.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<PartitionLog, LogError> {
        std::fs::create_dir_all(dir)?;
        crate::cleaner::recover_interrupted_clean(dir)?;
        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean = marker.exists();
        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = parse_segment_name(name, "log") {
                bases.push(base);
            } else if let Some(base) =
                parse_segment_name(name, "index").or_else(|| parse_segment_name(name, "timeindex"))
            {
                index_files.push((base, entry.path()));
            }
        }
        bases.sort_unstable();
        // Index files whose log is gone (e.g. a crash in the middle of retention).
        for (base, path) in index_files {
            if bases.binary_search(&base).is_err() {
                tracing::info!(file = %path.display(), "removing orphan index file");
                std::fs::remove_file(&path)?;
            }
        }
        let persisted_start = read_offset_file(dir, LOG_START_OFFSET_FILE)?;
        // Segments wholly below a persisted log start (a crash came before they were
        // deleted) go unopened: they may be anything, e.g. an empty former active
        // segment that `truncate_fully_and_start_at` had not deleted yet.
        if let Some(start) = persisted_start {
            while bases.len() > 1 && bases[1] <= start {
                let base = bases.remove(0);
                tracing::info!(dir = %dir.display(), base_offset = base, log_start_offset = start, "deleting a segment below the log start");
                SegmentPaths::new(dir, base).delete()?;
            }
        }
        let mut segments = Vec::with_capacity(bases.len().max(1));
        if let Some((&active_base, sealed)) = bases.split_last() {
            for (i, &base) in sealed.iter().enumerate() {
                let next_base = bases[i + 1];
                segments.push(Segment::open_sealed(
                    dir,
                    base,
                    next_base,
                    i == 0,
                    config.index_interval_bytes,
                )?);
            }
            segments.push(Segment::open_active(
                dir,
                active_base,
                clean,
                config.index_interval_bytes,
                now_ms,
            )?);
        } else {
            segments.push(Segment::create(dir, 0)?);
            sync_dir(dir)?;
        }
        if clean {
            std::fs::remove_file(&marker)?;
            sync_dir(dir)?;
        }
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            log_start_offset: segments[0].base_offset,
            config,
            segments,
            marked_clean: false,
            producers: ProducerStates::default(),
            epochs: LeaderEpochs::default(),
        };
        if let Some(start) = persisted_start {
            // A crash may have come between persisting the start and deleting the
            // segments below it: finish that now.
            log.advance_log_start(start.min(log.log_end_offset()))?;
        }
        log.load_producer_states(now_ms)?;
        log.load_leader_epochs()?;
        tracing::debug!(
            dir = %log.dir.display(),
            clean,
            segments = log.segments.len(),
            log_start_offset = log.log_start_offset(),
            log_end_offset = log.log_end_offset(),
            "opened partition log"
        );
        Ok(log)
    }

    /// Rebuilds producer state: the newest snapshot at or below the active segment's
    /// base, then the batch headers after it (normally just the active segment).
    /// Replayed producers count as active at `now_ms` (when they last wrote is not in
    /// the log).
    fn load_producer_states(&mut self, now_ms: i64) -> Result<(), LogError> {
        let active_base = self.active().base_offset;
        let (from, states) = match producer_state::load_latest(&self.dir, active_base)? {
            Some((offset, states)) => (offset, states),
            None => (self.log_start_offset(), ProducerStates::default()),
        };
        self.producers = states;
        for segment in &self.segments {
            if segment.next_offset <= from {
                continue;
            }
            let producers = &mut self.producers;
            segment.for_each_header(|header| {
                if header.base_offset >= from {
                    producers.record(header, header.base_offset, now_ms);
                }
            })?;
        }
        producer_state::prune_snapshots(&self.dir, SNAPSHOTS_KEPT, self.log_end_offset())?;
        Ok(())
    }

    /// Loads the leader-epoch checkpoint, dropping epochs that start at or after the
    /// recovered log end (their records did not survive). A missing or damaged
    /// checkpoint is rebuilt from the batches' `partitionLeaderEpoch` fields.
    fn load_leader_epochs(&mut self) -> Result<(), LogError> {
        let log_end = self.log_end_offset();
        match LeaderEpochs::load(&self.dir)? {
            Some(mut epochs) => {
                if epochs.truncate_from(log_end) {
                    epochs.store(&self.dir)?;
                }
                self.epochs = epochs;
            }
            None => {
                let mut epochs = LeaderEpochs::default();
                let log_start = self.log_start_offset;
                for segment in &self.segments {
                    segment.for_each_header(|header| {
                        let epoch = header.partition_leader_epoch;
                        if header.last_offset() >= log_start
                            && epoch >= 0
                            && epochs.latest_epoch().is_none_or(|latest| epoch > latest)
                        {
                            epochs.assign(epoch, header.base_offset.max(log_start));
                        }
                    })?;
                }
                epochs.store(&self.dir)?;
                self.epochs = epochs;
            }
        }
        Ok(())
    }

    /// Leader epochs of this log and where each starts.
    pub fn leader_epochs(&self) -> &LeaderEpochs {
        &self.epochs
    }

    /// Records (durably) that `epoch` starts at the log end: a replica became leader
    /// at a new epoch. Appends do this themselves for the epoch they stamp.
    pub fn assign_leader_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        if self.epochs.assign(epoch, self.log_end_offset()) {
            self.epochs.store(&self.dir)?;
        }
        Ok(())
    }

    /// Idempotent producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Forgets idempotent producers silent for `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`); their next batch must start a new producer id.
    pub fn expire_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producers.expire(now_ms, expiration_ms)
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("invariant: a log has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("invariant: a log has a segment")
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments.iter().map(|s| s.base_offset).collect()
    }

    /// Appends validated batches, assigning consecutive offsets from `log_end_offset()`
    /// and patching each batch's base offset and leader epoch.
    ///
    /// Rolls first when the append would push the active segment past `segment_bytes`
    /// (a produce larger than that goes into a segment of its own) or `segment_ms`
    /// elapsed. On a write error (e.g. ENOSPC) the segment files are cut back to their
    /// previous sizes, in-memory state is unchanged and the error is `LogError::Io`; the
    /// log stays usable. (A roll that succeeded before a failed write stays: the new
    /// active segment is simply empty.)
    pub fn append(
        &mut self,
        batches: ValidatedBatches,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        if self.marked_clean {
            std::fs::remove_file(self.dir.join(CLEAN_SHUTDOWN_MARKER))?;
            self.marked_clean = false;
        }
        let total_bytes = batches.total_bytes() as u64;
        if total_bytes > u32::MAX as u64 {
            return Err(LogError::MessageTooLarge {
                size: batches.total_bytes(),
                limit: u32::MAX,
            });
        }
        // An idempotent producer's batch comes first and alone, but for producer-less
        // batches after it (see `validate_rewritten_batches`): its sequence check
        // decides for the whole append, and a duplicate is answered with its offsets.
        if batches.headers[1..].iter().any(|h| h.producer_id >= 0) {
            return Err(LogError::IdempotentBatchNotAlone);
        }
        let idempotent = batches.headers[0].producer_id >= 0;
        if idempotent {
            let header = &batches.headers[0];
            if let SequenceCheck::Duplicate {
                base_offset,
                last_offset,
            } = self.producers.check(header)?
            {
                return Ok(AppendInfo {
                    base_offset,
                    last_offset,
                    max_timestamp: header.max_timestamp,
                    n_records: header.records_count as u64,
                    duplicate: true,
                });
            }
        }
        if self.should_roll(total_bytes, batches.n_offsets(), now_ms) {
            self.roll()?;
        }
        self.assign_leader_epoch(leader_epoch)?;
        // The producer's bytes are written as they are, except the 16 bytes at the
        // front of each batch that carry the base offset and leader epoch: those go
        // from patched copies. One `pwritev`, no copy of the payload.
        const PATCHED_LEN: usize = 16;
        let bytes = &batches.bytes;
        let mut headers: Vec<[u8; PATCHED_LEN]> = Vec::with_capacity(batches.headers.len());
        let mut planned = Vec::with_capacity(batches.headers.len());
        let mut position = 0usize;
        let mut offset = self.log_end_offset();
        let mut max_timestamp = i64::MIN;
        for header in &batches.headers {
            let len = header.total_len();
            assert!(len >= BATCH_LOG_OVERHEAD && position + len <= bytes.len());
            let mut front = [0u8; PATCHED_LEN];
            front.copy_from_slice(&bytes[position..position + PATCHED_LEN]);
            patch_front(&mut front, offset, leader_epoch);
            headers.push(front);
            let last_offset = offset + header.last_offset_delta as i64;
            planned.push(PlannedBatch {
                base_offset: offset,
                last_offset,
                len: len as u64,
                max_timestamp: header.max_timestamp,
            });
            max_timestamp = max_timestamp.max(header.max_timestamp);
            position += len;
            offset = last_offset + 1;
        }
        assert_eq!(position, bytes.len(), "validated batches cover the input");
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * headers.len());
        let mut position = 0usize;
        for (front, batch) in headers.iter().zip(&planned) {
            let len = batch.len as usize;
            parts.push(front);
            parts.push(&bytes[position + PATCHED_LEN..position + len]);
            position += len;
        }
        let base_offset = self.log_end_offset();
        let interval = self.config.index_interval_bytes;
        self.active_mut()
            .append(&parts, &planned, interval, now_ms)?;
        if idempotent {
            for (header, planned) in batches.headers.iter().zip(&planned) {
                self.producers.record(header, planned.base_offset, now_ms);
            }
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: offset - 1,
            max_timestamp,
            n_records: batches.n_records(),
            duplicate: false,
        })
    }

    /// Appends batches fetched from the leader exactly as they are: their offsets and
    /// leader epochs are the leader's and nothing is patched or re-encoded, so the
    /// follower's segments hold the leader's bytes.
    ///
    /// Checks before writing anything: every batch parses and passes its CRC, the
    /// first starts at or after the log end and each next one after the previous
    /// one, and no batch's epoch is older than the latest epoch the log has records
    /// of (epochs starting at the log end, with no records here, give way: this
    /// broker led in them and appended nothing). A batch may start
    /// past where the previous one ended: the leader's log was compacted, and a batch
    /// that lost every record left a gap in the offsets (Kafka's followers accept
    /// such gaps the same way). Indexes, the time index, producer state and leader
    /// epochs are updated as for a leader append (a new epoch is stored before its
    /// records are written). Empty input appends nothing. Returns what was appended,
    /// per batch.
    pub fn append_as_follower(
        &mut self,
        records: &bytes::Bytes,
        now_ms: i64,
    ) -> Result<Vec<FollowerBatch>, LogError> {
        use meridian_wire::batch::{BatchError, BatchHeader};
        let mut headers = Vec::new();
        let mut position = 0usize;
        let mut next_offset = self.log_end_offset();
        // Epochs starting at the log end hold no records here (this broker led in
        // them and appended nothing): the leader's log says what comes next, possibly
        // records of an older epoch. Only an epoch older than one with records here
        // is a regression.
        let mut epochs = self.epochs.clone();
        epochs.truncate_from(next_offset);
        let mut latest_epoch = epochs.latest_epoch();
        while position < records.len() {
            let header = BatchHeader::parse(&records[position..])?;
            let len = header.total_len();
            if position + len > records.len() {
                return Err(BatchError::Truncated {
                    needed: len,
                    available: records.len() - position,
                }
                .into());
            }
            header.validate(&records[position..position + len])?;
            if header.base_offset < next_offset || header.last_offset_delta < 0 {
                return Err(LogError::BelowLogEnd {
                    expected: next_offset,
                    found: header.base_offset,
                });
            }
            let epoch = header.partition_leader_epoch;
            if latest_epoch.is_some_and(|latest| epoch < latest) {
                return Err(LogError::EpochRegression {
                    epoch,
                    latest: latest_epoch.unwrap_or(-1),
                    offset: header.base_offset,
                });
            }
            latest_epoch = Some(epoch);
            next_offset = header.last_offset() + 1;
            position += len;
            headers.push(header);
        }
        if headers.is_empty() {
            return Ok(Vec::new());
        }
        if self.marked_clean {
            std::fs::remove_file(self.dir.join(CLEAN_SHUTDOWN_MARKER))?;
            self.marked_clean = false;
        }
        let n_offsets = next_offset - self.log_end_offset();
        if self.should_roll(records.len() as u64, n_offsets, now_ms) {
            self.roll()?;
        }
        for header in headers.iter().filter(|h| h.partition_leader_epoch >= 0) {
            epochs.assign(header.partition_leader_epoch, header.base_offset);
        }
        if epochs != self.epochs {
            epochs.store(&self.dir)?;
            self.epochs = epochs;
        }
        let planned: Vec<PlannedBatch> = headers
            .iter()
            .map(|h| PlannedBatch {
                base_offset: h.base_offset,
                last_offset: h.last_offset(),
                len: h.total_len() as u64,
                max_timestamp: h.max_timestamp,
            })
            .collect();
        let interval = self.config.index_interval_bytes;
        self.active_mut()
            .append(&[&records[..]], &planned, interval, now_ms)?;
        for header in &headers {
            self.producers.record(header, header.base_offset, now_ms);
        }
        Ok(headers
            .iter()
            .map(|h| {
                (
                    h.partition_leader_epoch,
                    h.base_offset,
                    (h.last_offset_delta as u32) + 1,
                )
            })
            .collect())
    }

    /// Removes every batch holding an offset at or after `offset` (a follower whose
    /// tail diverges from its leader's). `offset` inside a batch removes that whole
    /// batch. Segments wholly past it are deleted (newest first), the one holding it
    /// is cut and becomes the active segment, leader epochs starting at or after the
    /// new end are forgotten (durably), and producer state is rebuilt from the newest
    /// snapshot at or below the new active segment. Returns the new log end offset.
    /// Truncating below the log start offset is `OffsetOutOfRange`.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<i64, LogError> {
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        if offset >= log_end {
            return Ok(log_end);
        }
        if offset < log_start {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end,
            });
        }
        if self.marked_clean {
            std::fs::remove_file(self.dir.join(CLEAN_SHUTDOWN_MARKER))?;
            self.marked_clean = false;
        }
        let keep = self.segments.partition_point(|s| s.base_offset <= offset);
        // The first segment's base is at most the log start, so `keep >= 1`.
        assert!(
            keep >= 1,
            "truncation offset {offset} below the first segment"
        );
        let interval = self.config.index_interval_bytes;
        let position = self.segments[keep - 1].position_of(offset, interval)?;
        while self.segments.len() > keep {
            let segment = self.segments.pop().expect("more than `keep` segments");
            segment.delete_files()?;
        }
        let segment = self.segments.pop().expect("`keep >= 1` segments remain");
        let base = segment.base_offset;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment.paths.log)?;
        file.set_len(position)?;
        file.sync_data()?;
        drop((file, segment));
        // Reopening as the active segment re-checks the cut tail and rewrites the
        // indexes to end where the log now ends.
        let active = Segment::open_active(&self.dir, base, true, interval, now_ms)?;
        self.segments.push(active);
        sync_dir(&self.dir)?;
        let new_end = self.log_end_offset();
        if self.epochs.truncate_from(new_end) {
            self.epochs.store(&self.dir)?;
        }
        producer_state::prune_snapshots(&self.dir, usize::MAX, new_end)?;
        self.load_producer_states(now_ms)?;
        tracing::info!(dir = %self.dir.display(), requested = offset, log_end_offset = new_end, removed = log_end - new_end, "truncated log");
        Ok(new_end)
    }

    fn should_roll(&self, append_bytes: u64, append_offsets: i64, now_ms: i64) -> bool {
        let active = self.active();
        if active.size == 0 {
            return false;
        }
        let segment_bytes = self.config.segment_bytes.min(u32::MAX as u64);
        let too_big = active.size + append_bytes > segment_bytes;
        let too_many_offsets =
            active.next_offset + append_offsets - 1 - active.base_offset > u32::MAX as i64;
        let too_old = active.first_append_ms().is_some_and(|first| {
            now_ms.saturating_sub(first) >= self.config.segment_ms.min(i64::MAX as u64) as i64
        });
        too_big || too_many_offsets || too_old
    }

    /// Seals the active segment (after syncing it and its indexes) and starts a new one
    /// at the log end offset.
    fn roll(&mut self) -> Result<(), LogError> {
        self.active_mut().sync()?;
        let next_base = self.log_end_offset();
        // The producer state as of the new segment's start, so recovery replays only
        // the new active segment.
        producer_state::write_snapshot(&self.dir, next_base, &self.producers)?;
        producer_state::prune_snapshots(&self.dir, SNAPSHOTS_KEPT, next_base)?;
        // On failure `create` leaves nothing behind and the old segment stays active.
        let segment = Segment::create(&self.dir, next_base)?;
        self.active_mut().seal();
        self.segments.push(segment);
        tracing::debug!(dir = %self.dir.display(), base_offset = next_base, "rolled segment");
        // The new files exist in memory and on disk either way; if making the directory
        // entry durable fails, the state is still consistent and the error is reported.
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Plans a read of whole batches from the batch holding `offset` (or, when
    /// compaction removed it, the first batch after it), up to `max_bytes` but always
    /// at least one whole batch. `offset == log_end_offset()` gives `None`; outside
    /// `[log_start, log_end]` is `OffsetOutOfRange`. Never crosses a segment.
    pub fn read(&self, offset: i64, max_bytes: u32) -> Result<Option<ReadSlice>, LogError> {
        self.read_up_to(offset, max_bytes, i64::MAX)
    }

    /// Like [`PartitionLog::read`], but returns only batches that end below
    /// `end_offset` (a consumer's read stops at the high watermark); `None` when the
    /// first batch does not.
    pub fn read_up_to(
        &self,
        offset: i64,
        max_bytes: u32,
        end_offset: i64,
    ) -> Result<Option<ReadSlice>, LogError> {
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end,
            });
        }
        if offset == log_end {
            return Ok(None);
        }
        let mut i = self.segments.partition_point(|s| s.base_offset <= offset) - 1;
        let mut offset = offset;
        // Skip a gap between segments (compaction may empty the end of a segment).
        while offset >= self.segments[i].next_offset {
            i += 1;
            if i == self.segments.len() {
                return Ok(None);
            }
            offset = offset.max(self.segments[i].base_offset);
        }
        if offset >= end_offset {
            return Ok(None);
        }
        let interval = self.config.index_interval_bytes;
        let segment = &self.segments[i];
        let mut slice = segment.plan_read(offset, max_bytes, interval)?;
        if end_offset < segment.next_offset {
            let limit = segment.position_of(end_offset, interval)?;
            if limit <= slice.position() {
                return Ok(None);
            }
            slice.limit_to(limit);
        }
        Ok(Some(slice))
    }

    /// The earliest offset whose record timestamp is `>= timestamp`, with that record's
    /// timestamp; `None` if every record is older. Records below the log start offset
    /// (after `delete_before`) are not considered; offsets in gaps left by compaction
    /// are never returned, only offsets of records that exist.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        for segment in &self.segments {
            if segment.size == 0
                || segment.max_timestamp < timestamp
                || segment.next_offset <= self.log_start_offset
            {
                continue;
            }
            let found = segment.find_timestamp(
                timestamp,
                self.log_start_offset,
                self.config.index_interval_bytes,
            )?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The first record holding the log's largest timestamp, as `(offset,
    /// timestamp)` (Kafka's max-timestamp lookup, ListOffsets version 7); `None` when
    /// the log holds no record. Records below the log start offset do not count.
    /// Only the segments whose max timestamp could win are searched, each as
    /// [`PartitionLog::offset_for_timestamp`] does.
    pub fn offset_of_max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        let index_interval_bytes = self.config.index_interval_bytes;
        let start = self.log_start_offset;
        let mut live: Vec<&Segment> = self
            .segments
            .iter()
            .filter(|s| s.size > 0 && s.next_offset > start)
            .collect();
        // Highest max timestamp first; the sort is stable, so among equals the
        // earlier segment (the earlier offsets) comes first.
        live.sort_by_key(|s| std::cmp::Reverse(s.max_timestamp));
        let mut best: Option<(i64, i64)> = None;
        for segment in live {
            if best.is_some_and(|(_, timestamp)| timestamp > segment.max_timestamp) {
                break;
            }
            let max = if segment.base_offset < start {
                match segment.max_timestamp_from(start, index_interval_bytes)? {
                    Some(max) => max,
                    None => continue,
                }
            } else {
                segment.max_timestamp
            };
            let Some((offset, timestamp)) =
                segment.find_timestamp(max, start, index_interval_bytes)?
            else {
                continue;
            };
            let better = best.is_none_or(|(best_offset, best_timestamp)| {
                timestamp > best_timestamp || (timestamp == best_timestamp && offset < best_offset)
            });
            if better {
                best = Some((offset, timestamp));
            }
        }
        Ok(best)
    }

    /// fdatasyncs the active segment and its indexes (sealed ones were synced on roll).
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.active_mut().sync()?;
        Ok(())
    }

    /// A handle to give to [`crate::GroupCommit`] after an append under `flush=always`.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: std::sync::Arc::clone(&self.active().file),
        }
    }

    /// Deletes whole sealed segments from the front of the log: while the oldest one's
    /// max timestamp is older than `now_ms - retention_ms`, or while the log without it
    /// is still at least `retention_bytes`. Never the active segment. Does nothing
    /// unless the cleanup policy includes `delete`.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<RetentionOutcome, LogError> {
        let mut outcome = RetentionOutcome {
            deleted_segments: 0,
            deleted_bytes: 0,
            log_start_offset: self.log_start_offset(),
        };
        if !self.config.cleanup_policy.delete {
            return Ok(outcome);
        }
        let mut total = self.size_bytes();
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let expired = self.config.retention_ms.is_some_and(|retention_ms| {
                let cutoff = now_ms.saturating_sub(retention_ms.min(i64::MAX as u64) as i64);
                oldest.max_timestamp < cutoff
            });
            let over_size = self
                .config
                .retention_bytes
                .is_some_and(|retention_bytes| total - oldest.size >= retention_bytes);
            if !(expired || over_size) {
                break;
            }
            let segment = self.segments.remove(0);
            total -= segment.size;
            self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
            outcome.deleted_segments += 1;
            outcome.deleted_bytes += segment.size;
            outcome.log_start_offset = self.log_start_offset();
            tracing::info!(
                segment = %segment.paths.log.display(),
                bytes = segment.size,
                expired,
                over_size,
                "retention deleted segment"
            );
            segment.delete_files()?;
        }
        Ok(outcome)
    }

    /// Empties the log and restarts it at `offset` (Kafka's `truncateFullyAndStartAt`):
    /// past its end, for a follower that fell below its leader's log start (it holds
    /// nothing the leader still has); anywhere, for an empty log (a follower whose
    /// first fetched batch starts below its empty log's start). Past the end, the new
    /// start is persisted first and the new empty segment created before the old ones
    /// are deleted; a reopen after a crash in between deletes those unopened (see
    /// [`PartitionLog::open`]). Leader epochs and producer state (all of it below
    /// `offset`) are forgotten. Returns the new log start (= end) offset.
    pub fn truncate_fully_and_start_at(
        &mut self,
        offset: i64,
        now_ms: i64,
    ) -> Result<i64, LogError> {
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        let empty = log_start == log_end;
        if offset < 0 || (offset <= log_end && !empty) {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end,
            });
        }
        if empty && offset == log_end {
            return Ok(offset);
        }
        if self.marked_clean {
            std::fs::remove_file(self.dir.join(CLEAN_SHUTDOWN_MARKER))?;
            self.marked_clean = false;
        }
        write_offset_file(&self.dir, LOG_START_OFFSET_FILE, offset)?;
        if offset > log_end {
            // From here a reopen (after a crash) deletes the old segments unopened.
            let segment = Segment::create(&self.dir, offset)?;
            sync_dir(&self.dir)?;
            let old = std::mem::replace(&mut self.segments, vec![segment]);
            self.log_start_offset = offset;
            for segment in old {
                segment.delete_files()?;
            }
        } else {
            // An empty log restarting lower. Its one segment holds nothing, so it goes
            // first (a crash before the new one exists reopens as an empty log).
            debug_assert_eq!(self.segments.len(), 1);
            for segment in &self.segments {
                segment.delete_files()?;
            }
            sync_dir(&self.dir)?;
            self.segments = vec![Segment::create(&self.dir, offset)?];
            self.log_start_offset = offset;
        }
        sync_dir(&self.dir)?;
        self.epochs = LeaderEpochs::default();
        self.epochs.store(&self.dir)?;
        producer_state::prune_snapshots(&self.dir, 0, -1)?;
        self.load_producer_states(now_ms)?;
        tracing::info!(dir = %self.dir.display(), previous_log_end_offset = log_end, log_start_offset = offset, "emptied the log; it now starts at the leader's log start");
        Ok(offset)
    }

    /// Makes `offset` the new log start offset (Kafka's DeleteRecords): reads below it
    /// fail with `OffsetOutOfRange` from now on and after a restart (the offset is
    /// persisted before anything is deleted), and sealed segments lying wholly below it
    /// are deleted. An offset at or below the current start changes nothing; one past
    /// the log end is `OffsetOutOfRange`. Returns the log start offset.
    pub fn delete_before(&mut self, offset: i64) -> Result<i64, LogError> {
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        if offset > log_end || offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end,
            });
        }
        if offset <= log_start {
            return Ok(log_start);
        }
        write_offset_file(&self.dir, LOG_START_OFFSET_FILE, offset)?;
        self.advance_log_start(offset)?;
        tracing::info!(dir = %self.dir.display(), log_start_offset = offset, "deleted records before offset");
        Ok(self.log_start_offset)
    }

    /// Sets the log start offset to at least `offset` and deletes the sealed segments
    /// that lie wholly below it (oldest first, never the active segment).
    fn advance_log_start(&mut self, offset: i64) -> Result<(), LogError> {
        self.log_start_offset = self.log_start_offset.max(offset);
        while self.segments.len() > 1 && self.segments[1].base_offset <= self.log_start_offset {
            let segment = self.segments.remove(0);
            segment.delete_files()?;
        }
        Ok(())
    }

    /// Flushes and writes the clean-shutdown marker, so the next open skips recovery.
    pub fn close(mut self) -> Result<(), LogError> {
        self.mark_clean_shutdown()
    }

    /// Like [`PartitionLog::close`] for a log that stays reachable (behind a lock in
    /// the broker): an append after this removes the marker again before writing.
    pub fn mark_clean_shutdown(&mut self) -> Result<(), LogError> {
        self.flush()?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        File::create(&marker)?.sync_all()?;
        sync_dir(&self.dir)?;
        self.marked_clean = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PartitionLog>();
        send_sync::<ReadSlice>();
        send_sync::<SyncHandle>();
        send_sync::<crate::GroupCommit>();
        send_sync::<ValidatedBatches>();
        send_sync::<LogError>();
    }

    #[test]
    fn segment_names() {
        assert_eq!(
            parse_segment_name("00000000000000000042.log", "log"),
            Some(42)
        );
        assert_eq!(
            parse_segment_name("00000000000000000042.index", "log"),
            None
        );
        assert_eq!(parse_segment_name("0000000000000000042.log", "log"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log", "log"), None);
        assert_eq!(
            parse_segment_name("00000000000000000007.timeindex", "timeindex"),
            Some(7)
        );
    }
}
