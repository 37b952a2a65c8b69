//! Log compaction (`cleanup.policy=compact`): keeps only the latest record per key in
//! the sealed segments, as Kafka's log cleaner does.
//!
//! A clean runs in three steps so that a server can do the heavy I/O outside the
//! partition lock:
//!
//! 1. [`PartitionLog::plan_clean`] (under the lock) decides whether the partition is
//!    due and snapshots the cleanable segments (their open files, so retention may
//!    unlink them meanwhile).
//! 2. [`CleanPlan::run`] (no lock) reads the *dirty* segments (those after the cleaner
//!    checkpoint) into a map `key -> latest offset`, then rewrites every cleanable
//!    segment, in groups of consecutive segments that fit one segment, into a new
//!    file `NNN.log.cleaned` (plus `.index.cleaned`, `.timeindex.cleaned`), synced.
//! 3. For each group, oldest first, the `swap` callback (under the lock) calls
//!    [`PartitionLog::swap_cleaned`], which commits the group by renaming the new log to
//!    `BBB.EEE.swap` (B = the group's base offset, E = the base offset of the segment
//!    after it) and syncing the directory, then deletes the old segments and renames
//!    the new files into place. A crash before that rename leaves `.cleaned` files,
//!    which [`PartitionLog::open`] deletes (the old segments are intact); a crash
//!    after it leaves a `.swap` file, and open finishes the swap: it deletes every
//!    segment file with a base offset in `[B, E)` and renames the swap file to
//!    `BBB.log` (the index is rebuilt from it). Groups are swapped oldest first, so a
//!    crash between two swaps never leaves an older value of a key whose tombstone is
//!    already gone.
//!
//! Which records stay (Kafka's rules):
//! - a record whose key has a later record in the dirty part goes;
//! - the latest record of a key stays, unless it is a tombstone (null value) that
//!   was first cleaned at least `delete.retention.ms` ago: as in Kafka, a tombstone's
//!   retention starts when a clean first takes it into the clean part of the log (the
//!   first clean keeps it, a later one removes it), not at its own timestamp, which
//!   the producer chose. The checkpoint file records when each stretch of offsets was
//!   first cleaned. So a consumer that reads from the start and finishes within
//!   `delete.retention.ms` of a tombstone's first clean sees it;
//! - records without a key (written before the topic became compacted; produce refuses
//!   them afterwards) and control batches are kept.
//!
//! Offsets never change. A batch that loses records is rewritten with the same base
//! offset and last offset delta (so it still ends where it did), the kept records'
//! bytes unchanged, and a fresh CRC; a compressed batch is re-compressed with its own
//! codec. A batch that loses every record goes, which leaves a gap in the offsets; so
//! does a group of segments that loses every record, except at the front of the log,
//! where an empty segment stays so that the log start offset does not move (as in
//! Kafka, where compaction never changes the log start).
//!
//! When: only sealed segments are cleaned, never the active one; a segment is cleanable
//! once its newest record is at least `min.compaction.lag.ms` old (and so is every
//! segment after it). The partition is due when the dirty bytes are at least
//! `min.cleanable.dirty.ratio` of the cleanable bytes. The checkpoint lives in
//! [`CLEANER_CHECKPOINT_FILE`]: one line `END_OFFSET CLEANED_AT_MS` per pass, in
//! order; the last end offset is the first dirty offset, and a line says that the
//! offsets after the previous line's end were first cleaned at that time. Lines older
//! than `delete.retention.ms` are merged into one (all their tombstones may go), so
//! the file holds about one line per pass within that window.
//!
//! The key map holds the distinct keys of the dirty part (their bytes plus ~48 bytes
//! each), up to a cap ([`CleanPlan::limit_key_map`]): a full map ends the pass at a
//! segment boundary and the rest of the dirty part waits for the next pass.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use meridian_wire::batch::{
    for_each_record, retain_records, BatchHeader, RecordSummary, Retained, BATCH_HEADER_LEN,
};

use crate::index::{IndexCursor, SegmentIndex};
use crate::partition::{parse_segment_name, replace_file, sync_dir, PartitionLog};
use crate::segment::{segment_file_name, write_index_files, Segment, SegmentPaths};
use crate::LogError;

/// Holds when each stretch of offsets was first cleaned; see the module docs.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
const CLEANED_SUFFIX: &str = ".cleaned";
const SWAP_EXTENSION: &str = "swap";
/// Segments are read in chunks of this size (a larger batch is read whole).
const READ_CHUNK_BYTES: u64 = 4 << 20;
/// Cleaned output is written in chunks of this size.
const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// What a plan knows of one sealed segment.
#[derive(Clone, Debug)]
struct SegmentSnapshot {
    base_offset: i64,
    next_offset: i64,
    size: u64,
    file: Arc<File>,
    path: PathBuf,
}

/// A clean to run: the cleanable sealed segments, snapshotted under the partition
/// lock. Running it needs no lock (see the module docs).
#[derive(Debug)]
pub struct CleanPlan {
    dir: PathBuf,
    segments: Vec<SegmentSnapshot>,
    first_dirty_offset: i64,
    /// The base offset of the first segment not cleaned (the next checkpoint).
    end_offset: i64,
    /// The checkpoint's passes: `(end offset, first cleaned at)`, in order.
    passes: Vec<(i64, i64)>,
    now_ms: i64,
    delete_retention_ms: i64,
    max_group_bytes: u64,
    index_interval_bytes: u32,
    /// Bytes of cleanable segments after the checkpoint.
    pub dirty_bytes: u64,
    /// Bytes of all cleanable segments.
    pub cleanable_bytes: u64,
    /// Memory the key map may take (estimated); see [`CleanPlan::limit_key_map`].
    key_map_bytes_max: u64,
}

/// What a clean did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Bytes of the segments rewritten (the input; the key-map pass reads the dirty
    /// part once more).
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_kept: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    /// False when a swap found the log changed meanwhile (retention or
    /// `delete_before` removed a segment) and the pass stopped; it runs again later.
    pub completed: bool,
    /// Everything before this offset is clean after this pass (the next checkpoint).
    /// Short of the plan's cleanable end when the key map filled up.
    pub end_offset: i64,
    /// The `now_ms` of the plan: when the newly cleaned offsets were first cleaned.
    pub cleaned_at_ms: i64,
}

/// Reads the checkpoint: `(end offset, first cleaned at)` per pass, in order.
fn read_checkpoint(dir: &Path) -> Result<Vec<(i64, i64)>, LogError> {
    let path = dir.join(CLEANER_CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut passes: Vec<(i64, i64)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(end, at)| Some((end.parse().ok()?, at.parse().ok()?)));
        match parsed {
            Some(pass) if passes.last().is_none_or(|last| last.0 < pass.0) => passes.push(pass),
            _ => {
                return Err(LogError::Corrupt {
                    path,
                    position: n as u64,
                    detail: format!("checkpoint line {} is not `END CLEANED_AT_MS` after the previous end: {line:?}", n + 1),
                })
            }
        }
    }
    Ok(passes)
}

/// The checkpoint after a pass ending at `end_offset` at `now_ms`: the pass appended,
/// and the passes first cleaned at least `delete_retention_ms` ago merged into the
/// last of them (every tombstone they cover may go; a later time is conservative).
fn next_checkpoint(
    mut passes: Vec<(i64, i64)>,
    end_offset: i64,
    now_ms: i64,
    delete_retention_ms: i64,
) -> Vec<(i64, i64)> {
    if passes.last().is_none_or(|last| last.0 < end_offset) {
        passes.push((end_offset, now_ms));
    }
    let expired = passes
        .iter()
        .take_while(|(_, at)| now_ms.saturating_sub(*at) >= delete_retention_ms)
        .count();
    if expired > 1 {
        passes.drain(..expired - 1);
    }
    passes
}

/// One group of segments rewritten into one new (maybe empty) segment, not yet
/// swapped in. Dropping it without [`PartitionLog::swap_cleaned`] leaves temporary
/// files that the next clean or open removes.
#[derive(Debug)]
pub struct CleanedGroup {
    dir: PathBuf,
    base_offset: i64,
    /// `(base offset, size)` of the segments it replaces, oldest first.
    replaced: Vec<(i64, u64)>,
    /// Base offset of the segment after the group.
    end_offset: i64,
    output: Option<CleanedOutput>,
}

#[derive(Debug)]
struct CleanedOutput {
    file: File,
    size: u64,
    next_offset: i64,
    max_timestamp: i64,
    index: SegmentIndex,
}

/// Paths of a group's output before the swap.
fn cleaned_paths(dir: &Path, base_offset: i64) -> SegmentPaths {
    let path = |extension| dir.join(segment_file_name(base_offset, extension) + CLEANED_SUFFIX);
    SegmentPaths {
        log: path("log"),
        offset_index: path("index"),
        time_index: path("timeindex"),
    }
}

fn swap_file_name(base_offset: i64, end_offset: i64) -> String {
    format!("{base_offset:020}.{end_offset:020}.{SWAP_EXTENSION}")
}

/// Parses `BBBBBBBBBBBBBBBBBBBB.EEEEEEEEEEEEEEEEEEEE.swap`.
fn parse_swap_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(SWAP_EXTENSION)?.strip_suffix('.')?;
    let (base, end) = stem.split_once('.')?;
    let parse = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    Some((parse(base)?, parse(end)?))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Called by [`PartitionLog::open`] first: deletes the output of a clean that had not
/// committed (`*.cleaned`) and finishes swaps that had (`*.swap`).
pub(crate) fn recover_interrupted_clean(dir: &Path) -> Result<(), LogError> {
    let mut swaps = Vec::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.ends_with(CLEANED_SUFFIX) {
            tracing::warn!(file = %entry.path().display(), "removing the output of an interrupted clean");
            std::fs::remove_file(entry.path())?;
        } else if let Some(range) = parse_swap_name(&name) {
            swaps.push((range, entry.path()));
        } else {
            names.push(name);
        }
    }
    if swaps.is_empty() {
        return Ok(());
    }
    swaps.sort();
    for ((base_offset, end_offset), swap_path) in swaps {
        tracing::warn!(
            file = %swap_path.display(),
            "finishing a clean interrupted after it committed: replacing segments {base_offset}..{end_offset}"
        );
        for name in &names {
            let base = ["log", "index", "timeindex"]
                .iter()
                .find_map(|extension| parse_segment_name(name, extension));
            if base.is_some_and(|base| (base_offset..end_offset).contains(&base)) {
                remove_if_exists(&dir.join(name))?;
            }
        }
        std::fs::rename(&swap_path, dir.join(segment_file_name(base_offset, "log")))?;
    }
    sync_dir(dir)?;
    Ok(())
}

impl PartitionLog {
    /// Decides whether this partition is due for a clean and, if so, snapshots what to
    /// clean. `None` when the policy is not `compact`, nothing is cleanable yet, or the
    /// dirty ratio is below `min_cleanable_dirty_ratio`.
    pub fn plan_clean(&self, now_ms: i64) -> Result<Option<CleanPlan>, LogError> {
        let config = &self.config;
        if !config.cleanup_policy.compact {
            return Ok(None);
        }
        let lag_ms = config.min_compaction_lag_ms.min(i64::MAX as u64) as i64;
        let sealed = &self.segments[..self.segments.len() - 1];
        let n_cleanable = if lag_ms > 0 {
            let cutoff = now_ms.saturating_sub(lag_ms);
            // Timestamps need not grow from segment to segment: stop at the first
            // segment holding a record newer than the cutoff.
            sealed
                .iter()
                .position(|s| s.max_timestamp > cutoff)
                .unwrap_or(sealed.len())
        } else {
            sealed.len()
        };
        if n_cleanable == 0 {
            return Ok(None);
        }
        let passes = read_checkpoint(&self.dir)?;
        let first_dirty_offset = passes.last().map_or(i64::MIN, |last| last.0);
        let segments: Vec<SegmentSnapshot> = sealed[..n_cleanable]
            .iter()
            .map(|s| SegmentSnapshot {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                file: Arc::clone(&s.file),
                path: s.paths.log.clone(),
            })
            .collect();
        let cleanable_bytes = segments.iter().map(|s| s.size).sum();
        let dirty_bytes = segments
            .iter()
            .filter(|s| s.next_offset > first_dirty_offset)
            .map(|s| s.size)
            .sum();
        if dirty_bytes == 0
            || (dirty_bytes as f64) < config.min_cleanable_dirty_ratio * cleanable_bytes as f64
        {
            return Ok(None);
        }
        let delete_retention_ms = config.delete_retention_ms.min(i64::MAX as u64) as i64;
        Ok(Some(CleanPlan {
            dir: self.dir.clone(),
            end_offset: self.segments[n_cleanable].base_offset,
            segments,
            first_dirty_offset,
            passes,
            now_ms,
            delete_retention_ms,
            max_group_bytes: config.segment_bytes.clamp(1, u32::MAX as u64),
            index_interval_bytes: config.index_interval_bytes,
            dirty_bytes,
            cleanable_bytes,
            key_map_bytes_max: u64::MAX,
        }))
    }

    /// Swaps a cleaned group in for the segments it replaces (see the module docs for
    /// the crash-safe order). Returns `false`, and removes the group's files, when those
    /// segments are no longer exactly in the log (retention or `delete_before` took
    /// some meanwhile); nothing changes then.
    pub fn swap_cleaned(&mut self, group: CleanedGroup) -> Result<bool, LogError> {
        let n = group.replaced.len();
        let start = self
            .segments
            .iter()
            .position(|s| s.base_offset == group.base_offset);
        let intact = start.is_some_and(|i| {
            i + n < self.segments.len()
                && self.segments[i..i + n]
                    .iter()
                    .map(|s| (s.base_offset, s.size))
                    .eq(group.replaced.iter().copied())
                && self.segments[i + n].base_offset == group.end_offset
        });
        let Some(i) = start.filter(|_| intact) else {
            group.discard();
            return Ok(false);
        };
        let dir = self.dir.clone();
        let output = match group.output {
            // Every record of the log's first group went. An empty segment stays in
            // its place, as in Kafka, so the log start offset does not move: a
            // consumer whose position is below the first record kept reads on from
            // it rather than being out of range (and reset, to the end by default).
            None if i == 0 => Some(empty_output(&dir, group.base_offset)?),
            output => output,
        };
        let old: Vec<Segment> = match output {
            Some(output) => {
                let cleaned = cleaned_paths(&dir, group.base_offset);
                let swap = dir.join(swap_file_name(group.base_offset, group.end_offset));
                // The commit point: from here on a restart completes the swap.
                std::fs::rename(&cleaned.log, &swap)?;
                sync_dir(&dir)?;
                let segment = Segment::cleaned(
                    group.base_offset,
                    SegmentPaths::new(&dir, group.base_offset),
                    output.file,
                    output.size,
                    output.next_offset,
                    output.max_timestamp,
                    output.index,
                );
                let old: Vec<Segment> = self.segments.splice(i..i + n, [segment]).collect();
                let finish = (|| -> io::Result<()> {
                    delete_oldest_first(&old)?;
                    let paths = SegmentPaths::new(&dir, group.base_offset);
                    std::fs::rename(&cleaned.offset_index, &paths.offset_index)?;
                    std::fs::rename(&cleaned.time_index, &paths.time_index)?;
                    std::fs::rename(&swap, &paths.log)?;
                    sync_dir(&dir)
                })();
                if let Err(e) = finish {
                    // Memory already holds the new segment (its file stays open); the
                    // next open finishes from the swap file.
                    tracing::error!(dir = %dir.display(), "finishing a swap failed: {e}");
                    return Err(e.into());
                }
                old
            }
            None => {
                // Every record of the group went. Deleting oldest first keeps the
                // invariant above if this is interrupted.
                let old: Vec<Segment> = self.segments.drain(i..i + n).collect();
                delete_oldest_first(&old)?;
                sync_dir(&dir)?;
                old
            }
        };
        self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
        tracing::debug!(
            dir = %dir.display(),
            base_offset = group.base_offset,
            replaced = old.len(),
            "swapped in a cleaned segment"
        );
        Ok(true)
    }

    /// Records what a completed pass cleaned (writes the checkpoint); does nothing
    /// after an incomplete one.
    pub fn finish_clean(&mut self, stats: &CleanStats) -> Result<(), LogError> {
        if !stats.completed {
            return Ok(());
        }
        let passes = next_checkpoint(
            read_checkpoint(&self.dir)?,
            stats.end_offset,
            stats.cleaned_at_ms,
            self.config.delete_retention_ms.min(i64::MAX as u64) as i64,
        );
        let text: String = passes
            .iter()
            .map(|(end, at)| format!("{end} {at}\n"))
            .collect();
        replace_file(&self.dir, CLEANER_CHECKPOINT_FILE, text.as_bytes())
    }

    /// Plans, runs and swaps a clean in one call, holding `&mut self` throughout (for
    /// tests and benchmarks; the broker runs the steps itself to keep the lock short).
    /// `io` is told every byte read or written. `None` when no clean was due.
    pub fn clean(
        &mut self,
        now_ms: i64,
        io: &mut dyn FnMut(u64),
    ) -> Result<Option<CleanStats>, LogError> {
        let Some(plan) = self.plan_clean(now_ms)? else {
            return Ok(None);
        };
        let stats = plan.run(io, &mut |group| self.swap_cleaned(group))?;
        self.finish_clean(&stats)?;
        Ok(Some(stats))
    }
}

fn delete_oldest_first(segments: &[Segment]) -> io::Result<()> {
    for segment in segments {
        segment.delete_files()?;
    }
    Ok(())
}

impl CleanedGroup {
    /// Drops the group without swapping it in, removing its files.
    pub fn discard(self) {
        let paths = cleaned_paths(&self.dir, self.base_offset);
        for path in [&paths.log, &paths.offset_index, &paths.time_index] {
            if let Err(e) = remove_if_exists(path) {
                tracing::warn!(file = %path.display(), "could not remove cleaner output: {e}");
            }
        }
    }
}

/// Latest offset of every key in the dirty part.
type KeyMap = HashMap<Box<[u8]>, i64>;

/// Estimated memory of one key-map entry besides the key bytes: the boxed slice's
/// pointer and length, the offset, and the hash table's slot and control byte with
/// its spare capacity.
const KEY_ENTRY_OVERHEAD_BYTES: u64 = 48;

impl CleanPlan {
    /// Caps the key map at about `bytes` (keys plus ~48 bytes each): once it is full,
    /// mapping stops at the end of the current batch and this pass cleans only the
    /// segments before the one being mapped; the rest stays dirty for the next pass.
    /// The first dirty segment is always mapped whole, so every pass makes progress;
    /// the map may exceed the cap by that segment's keys or one batch's.
    pub fn limit_key_map(mut self, bytes: u64) -> CleanPlan {
        self.key_map_bytes_max = bytes;
        self
    }

    /// Runs the clean: builds the key map, rewrites each group and hands it to `swap`
    /// (which returns `false` to stop the pass). `io` is told every byte read or
    /// written, before the next one, so it can throttle by sleeping.
    pub fn run(
        &self,
        io: &mut dyn FnMut(u64),
        swap: &mut dyn FnMut(CleanedGroup) -> Result<bool, LogError>,
    ) -> Result<CleanStats, LogError> {
        let (map, n_covered) = self.build_key_map(io)?;
        let mut stats = CleanStats {
            segments_before: n_covered,
            end_offset: self
                .segments
                .get(n_covered)
                .map_or(self.end_offset, |s| s.base_offset),
            cleaned_at_ms: self.now_ms,
            ..CleanStats::default()
        };
        for group in self.groups(n_covered) {
            let cleaned = self.clean_group(&map, group, io, &mut stats)?;
            let has_output = cleaned.output.is_some();
            if !swap(cleaned)? {
                return Ok(stats);
            }
            stats.segments_after += usize::from(has_output);
        }
        stats.completed = true;
        Ok(stats)
    }

    /// Maps the dirty segments' keys to their latest offsets, up to the key-map cap.
    /// Also returns how many leading segments this pass cleans: all of them, or those
    /// before the segment whose mapping the cap cut short. Offsets in the map from a
    /// partly mapped segment are still right to use: a record they supersede has a
    /// later record in the log.
    fn build_key_map(&self, io: &mut dyn FnMut(u64)) -> Result<(KeyMap, usize), LogError> {
        let mut map = KeyMap::new();
        let mut map_bytes = 0u64;
        let mut first_dirty = true;
        for (i, segment) in self.segments.iter().enumerate() {
            if segment.next_offset <= self.first_dirty_offset {
                continue;
            }
            let mut cut_short = false;
            for_each_batch(segment, io, |header, batch, _| {
                if !header.is_control() {
                    for_each_record(header, &batch, |record| {
                        if let Some(key) = record.key {
                            match map.get_mut(key) {
                                Some(latest) => *latest = record.offset,
                                None => {
                                    map_bytes += key.len() as u64 + KEY_ENTRY_OVERHEAD_BYTES;
                                    map.insert(key.into(), record.offset);
                                }
                            }
                        }
                    })?;
                }
                cut_short = !first_dirty && map_bytes > self.key_map_bytes_max;
                Ok(!cut_short)
            })?;
            if cut_short {
                return Ok((map, i));
            }
            first_dirty = false;
            if map_bytes > self.key_map_bytes_max {
                return Ok((map, i + 1));
            }
        }
        Ok((map, self.segments.len()))
    }

    /// The first `n` segments in groups of consecutive segments whose total size fits
    /// one segment and whose offsets fit one segment's `u32` relative offsets.
    fn groups(&self, n: usize) -> Vec<Range<usize>> {
        let mut groups = Vec::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (i, segment) in self.segments[..n].iter().enumerate() {
            let base = self.segments[start].base_offset;
            let fits = bytes + segment.size <= self.max_group_bytes
                && segment.next_offset - 1 - base <= u32::MAX as i64;
            if i > start && !fits {
                groups.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += segment.size;
        }
        groups.push(start..n);
        groups
    }

    fn keep(&self, map: &KeyMap, record: &RecordSummary<'_>) -> bool {
        let Some(key) = record.key else {
            return true;
        };
        if map.get(key).is_some_and(|&latest| latest > record.offset) {
            return false;
        }
        !(record.is_tombstone
            && self
                .now_ms
                .saturating_sub(self.first_cleaned_at(record.offset))
                >= self.delete_retention_ms)
    }

    /// When `offset` was first cleaned: by an earlier pass if it lies before the
    /// checkpoint, by this one otherwise.
    fn first_cleaned_at(&self, offset: i64) -> i64 {
        let i = self.passes.partition_point(|(end, _)| *end <= offset);
        self.passes.get(i).map_or(self.now_ms, |(_, at)| *at)
    }

    fn clean_group(
        &self,
        map: &KeyMap,
        group: Range<usize>,
        io: &mut dyn FnMut(u64),
        stats: &mut CleanStats,
    ) -> Result<CleanedGroup, LogError> {
        let segments = &self.segments[group.clone()];
        let base_offset = segments[0].base_offset;
        let mut cleaned = CleanedGroup {
            dir: self.dir.clone(),
            base_offset,
            replaced: segments.iter().map(|s| (s.base_offset, s.size)).collect(),
            end_offset: self
                .segments
                .get(group.end)
                .map_or(self.end_offset, |s| s.base_offset),
            output: None,
        };
        let result = self.write_group(map, segments, io, stats);
        match result {
            Ok(output) => {
                cleaned.output = output;
                Ok(cleaned)
            }
            Err(e) => {
                cleaned.discard();
                Err(e)
            }
        }
    }

    fn write_group(
        &self,
        map: &KeyMap,
        segments: &[SegmentSnapshot],
        io: &mut dyn FnMut(u64),
        stats: &mut CleanStats,
    ) -> Result<Option<CleanedOutput>, LogError> {
        let base_offset = segments[0].base_offset;
        let paths = cleaned_paths(&self.dir, base_offset);
        let file = create_cleaned_log(&paths)?;
        let mut out: Vec<u8> = Vec::with_capacity(WRITE_CHUNK_BYTES + (64 << 10));
        let mut written = 0u64;
        let mut cursor = IndexCursor::EMPTY;
        let mut index = SegmentIndex::default();
        let mut next_offset = base_offset;
        for segment in segments {
            stats.bytes_read += segment.size;
            for_each_batch(segment, io, |header, batch, io| {
                stats.records_read += header.records_count.max(0) as u64;
                let kept = if header.is_control() {
                    batch
                } else {
                    match retain_records(header, &batch, |record| self.keep(map, record))? {
                        Retained::All => batch,
                        Retained::Nothing => return Ok(true),
                        Retained::Some(rewritten) => rewritten,
                    }
                };
                let kept_header = BatchHeader::parse(&kept)?;
                stats.records_kept += kept_header.records_count.max(0) as u64;
                let position = written + out.len() as u64;
                cursor.index_scanned(
                    &mut index,
                    base_offset,
                    &kept_header,
                    position,
                    self.index_interval_bytes,
                );
                next_offset = kept_header.last_offset() + 1;
                out.extend_from_slice(&kept);
                if out.len() >= WRITE_CHUNK_BYTES {
                    file.write_all_at(&out, written)?;
                    io(out.len() as u64);
                    written += out.len() as u64;
                    out.clear();
                }
                Ok(true)
            })?;
        }
        if !out.is_empty() {
            file.write_all_at(&out, written)?;
            io(out.len() as u64);
            written += out.len() as u64;
        }
        stats.bytes_written += written;
        if written == 0 {
            drop(file);
            std::fs::remove_file(&paths.log)?;
            return Ok(None);
        }
        file.sync_data()?;
        write_index_files(&paths, &index, true)?;
        Ok(Some(CleanedOutput {
            file,
            size: written,
            next_offset,
            max_timestamp: cursor.max_timestamp,
            index,
        }))
    }
}

/// The new log file of a group's output (emptied if an earlier clean left one).
fn create_cleaned_log(paths: &SegmentPaths) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&paths.log)
}

/// An empty cleaned segment at `base_offset`, written and synced like any other.
fn empty_output(dir: &Path, base_offset: i64) -> Result<CleanedOutput, LogError> {
    let paths = cleaned_paths(dir, base_offset);
    let file = create_cleaned_log(&paths)?;
    file.sync_data()?;
    let index = SegmentIndex::default();
    write_index_files(&paths, &index, true)?;
    Ok(CleanedOutput {
        file,
        size: 0,
        next_offset: base_offset,
        max_timestamp: i64::MIN,
        index,
    })
}

/// Calls `f` with every batch of a sealed segment, CRC-checked (a clean must not
/// launder corruption into a fresh CRC), reading in large chunks, until `f` returns
/// `false`.
fn for_each_batch(
    segment: &SegmentSnapshot,
    io: &mut dyn FnMut(u64),
    mut f: impl FnMut(&BatchHeader, Bytes, &mut dyn FnMut(u64)) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    let corrupt = |position: u64, detail: String| LogError::Corrupt {
        path: segment.path.clone(),
        position,
        detail,
    };
    let mut position = 0u64;
    while position < segment.size {
        let want = READ_CHUNK_BYTES.min(segment.size - position);
        let mut buf = vec![0u8; want as usize];
        segment.file.read_exact_at(&mut buf, position)?;
        io(want);
        let mut chunk = Bytes::from(buf);
        let mut consumed = 0u64;
        while chunk.len() >= BATCH_HEADER_LEN {
            let header = BatchHeader::parse(&chunk)
                .map_err(|e| corrupt(position + consumed, e.to_string()))?;
            if chunk.len() < header.total_len() {
                break;
            }
            let batch = chunk.split_to(header.total_len());
            header
                .validate(&batch)
                .map_err(|e| corrupt(position + consumed, e.to_string()))?;
            if !f(&header, batch, io)? {
                return Ok(());
            }
            consumed += header.total_len() as u64;
        }
        if consumed == 0 {
            // A batch larger than a chunk: read it whole.
            if chunk.len() < BATCH_HEADER_LEN {
                return Err(corrupt(
                    position,
                    "segment ends inside a batch header".into(),
                ));
            }
            let header =
                BatchHeader::parse(&chunk).map_err(|e| corrupt(position, e.to_string()))?;
            let len = header.total_len() as u64;
            if position + len > segment.size {
                return Err(corrupt(position, "segment ends inside a batch".into()));
            }
            let mut buf = vec![0u8; len as usize];
            segment.file.read_exact_at(&mut buf, position)?;
            io(len);
            let batch = Bytes::from(buf);
            header
                .validate(&batch)
                .map_err(|e| corrupt(position, e.to_string()))?;
            if !f(&header, batch, io)? {
                return Ok(());
            }
            consumed = len;
        }
        position += consumed;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_append_passes_and_merge_expired_ones() {
        let passes = next_checkpoint(vec![], 10, 1000, 100);
        assert_eq!(passes, vec![(10, 1000)]);
        let passes = next_checkpoint(passes, 20, 1050, 100);
        assert_eq!(passes, vec![(10, 1000), (20, 1050)]);
        // A pass that cleaned nothing new adds nothing.
        let passes = next_checkpoint(passes, 20, 1060, 100);
        assert_eq!(passes, vec![(10, 1000), (20, 1050)]);
        // At 1150 both earlier passes are expired: one line stands for both, with the
        // later time (its tombstones are as expired as the earlier ones').
        let passes = next_checkpoint(passes, 30, 1150, 100);
        assert_eq!(passes, vec![(20, 1050), (30, 1150)]);
    }

    #[test]
    fn checkpoint_files_parse_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLEANER_CHECKPOINT_FILE);
        assert_eq!(read_checkpoint(dir.path()).unwrap(), vec![]);
        std::fs::write(&path, "10 1000\n20 1050\n").unwrap();
        assert_eq!(
            read_checkpoint(dir.path()).unwrap(),
            vec![(10, 1000), (20, 1050)]
        );
        for bad in ["10\n", "10 x\n", "20 1\n10 2\n"] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(read_checkpoint(dir.path()), Err(LogError::Corrupt { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn swap_names_round_trip() {
        let name = swap_file_name(42, 1000);
        assert_eq!(name, "00000000000000000042.00000000000000001000.swap");
        assert_eq!(parse_swap_name(&name), Some((42, 1000)));
        assert_eq!(parse_swap_name("00000000000000000042.log"), None);
        assert_eq!(parse_swap_name("42.1000.swap"), None);
    }
}
