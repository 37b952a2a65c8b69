//! Durable Raft storage in a directory of the broker's data dir.
//!
//! - `vote.json`: the vote, replaced atomically (temp file, fsync, rename, fsync dir)
//!   before openraft is told it is saved.
//! - `log`: an append-only file of JSON lines, each an operation on the log (append an
//!   entry, truncate from an index, purge up to a log id, the committed log id).
//!   Appends are fsynced before openraft hears they are flushed. Replay at open
//!   rebuilds the log; a torn last line (a crash mid-append, never acknowledged) is
//!   cut off. A purge rewrites the file with what is left, so it stays small.
//! - `snapshot.json`: the last snapshot (its meta and the serialized image), replaced
//!   atomically. The state machine starts from it; openraft re-applies the log after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::image::MetadataImage;
use crate::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Externally tagged: an internally tagged enum is buffered by serde, and buffered
/// maps keep their keys as strings, which openraft's `BTreeMap<u64, _>` (membership)
/// cannot be read back from.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LogOp {
    Append { entry: Entry<TypeConfig> },
    Truncate { since: u64 },
    Purge { upto: LogId<NodeId> },
    Committed { log_id: Option<LogId<NodeId>> },
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct LogInner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

impl LogInner {
    fn write_ops(&mut self, ops: &[LogOp], sync: bool) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for op in ops {
            serde_json::to_writer(&mut buf, op).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Rewrites the log file with only what is kept (after a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut ops = Vec::new();
        if let Some(upto) = self.last_purged {
            ops.push(LogOp::Purge { upto });
        }
        for entry in self.entries.values() {
            ops.push(LogOp::Append {
                entry: entry.clone(),
            });
        }
        ops.push(LogOp::Committed {
            log_id: self.committed,
        });
        for op in &ops {
            serde_json::to_writer(&mut buf, op).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let path = self.dir.join("log");
        write_atomically(&path, &buf)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

/// The Raft log and vote. Cheap to clone: clones share the log (the reader openraft
/// asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying the log file.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let vote = match std::fs::read(dir.join("vote.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(io_error)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let path = dir.join("log");
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut committed = None;
        let mut valid_len = 0u64;
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            let mut lines = reader.split(b'\n').peekable();
            while let Some(line) = lines.next() {
                let line = line?;
                let is_last = lines.peek().is_none();
                let op: LogOp = match serde_json::from_slice(&line) {
                    Ok(op) => op,
                    Err(e) if is_last => {
                        tracing::warn!(error = %e, "metadata log: cutting off a torn last line");
                        break;
                    }
                    Err(e) => {
                        return Err(io_error(format!(
                            "metadata log {} is corrupted at byte {valid_len}: {e}",
                            path.display()
                        )))
                    }
                };
                valid_len += line.len() as u64 + 1;
                match op {
                    LogOp::Append { entry } => {
                        entries.insert(entry.log_id.index, entry);
                    }
                    LogOp::Truncate { since } => {
                        entries.retain(|index, _| *index < since);
                    }
                    LogOp::Purge { upto } => {
                        entries.retain(|index, _| *index > upto.index);
                        last_purged = Some(upto);
                    }
                    LogOp::Committed { log_id } => committed = log_id,
                }
            }
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_owned(),
                file,
                entries,
                last_purged,
                committed,
                vote,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        // A panic while holding the lock leaves the log as the file says; the next
        // open replays it. Keep going with what is in memory.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of entries held (for tests of purging).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        write_atomically(&inner.dir.join("vote.json"), &bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut inner = self.lock();
        inner.committed = committed;
        // Not fsynced: losing it only means re-learning it from the leader.
        inner
            .write_ops(&[LogOp::Committed { log_id: committed }], false)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let ops: Vec<LogOp> = entries
            .iter()
            .map(|e| LogOp::Append { entry: e.clone() })
            .collect();
        let result = inner.write_ops(&ops, true);
        if result.is_ok() {
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        let reported = result.as_ref().map(drop).map_err(io_error);
        callback.log_io_completed(reported);
        result.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        inner
            .write_ops(
                &[LogOp::Truncate {
                    since: log_id.index,
                }],
                true,
            )
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.entries.retain(|index, _| *index < log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut inner = self.lock();
        inner.entries.retain(|index, _| *index > log_id.index);
        inner.last_purged = Some(log_id);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    image: MetadataImage,
}

struct MachineInner {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    n_snapshots: u64,
    publish: watch::Sender<AppliedImage>,
}

/// The image and the log position it reflects, as published to the broker.
#[derive(Clone, Debug, Default)]
pub struct AppliedImage {
    pub image: Arc<MetadataImage>,
    /// Index of the last applied Raft entry (0 before any).
    pub applied_index: u64,
}

/// The state machine: the metadata image. Every applied batch of records is published
/// on a `watch` channel ([`StateMachine::subscribe`]).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<MachineInner>>,
}

impl StateMachine {
    /// Opens the state machine from the snapshot in `dir`, if any.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let (image, last_applied, membership, snapshot) =
            match std::fs::read(dir.join("snapshot.json")) {
                Ok(bytes) => {
                    let stored: StoredSnapshot =
                        serde_json::from_slice(&bytes).map_err(io_error)?;
                    let data = serde_json::to_vec(&stored.image).map_err(io_error)?;
                    (
                        stored.image,
                        stored.meta.last_log_id,
                        stored.meta.last_membership.clone(),
                        Some((stored.meta, data)),
                    )
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (MetadataImage::default(), None, Default::default(), None)
                }
                Err(e) => return Err(e),
            };
        let (publish, _) = watch::channel(AppliedImage {
            image: Arc::new(image.clone()),
            applied_index: last_applied.map_or(0, |l| l.index),
        });
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                dir: dir.to_owned(),
                image,
                last_applied,
                membership,
                snapshot,
                n_snapshots: 0,
                publish,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every image applied from now on (and the current one).
    pub fn subscribe(&self) -> watch::Receiver<AppliedImage> {
        self.lock().publish.subscribe()
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.lock().publish.borrow().image.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let mut inner = self.lock();
        let data =
            serde_json::to_vec(&inner.image).map_err(|e| StorageIOError::read_state_machine(&e))?;
        inner.n_snapshots += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.n_snapshots),
            None => format!("none-{}", inner.n_snapshots),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: inner.image.clone(),
        };
        let bytes =
            serde_json::to_vec(&stored).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        write_atomically(&inner.dir.join("snapshot.json"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut responses = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for record in &batch.records {
                        inner.image.apply_at(record, entry.log_id.index);
                    }
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            responses.push(());
        }
        let applied = AppliedImage {
            image: Arc::new(inner.image.clone()),
            applied_index: inner.last_applied.map_or(0, |l| l.index),
        };
        inner.publish.send_replace(applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let image: MetadataImage = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut inner = self.lock();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: image.clone(),
        };
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        write_atomically(&inner.dir.join("snapshot.json"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.image = image;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), data));
        let applied = AppliedImage {
            image: Arc::new(inner.image.clone()),
            applied_index: inner.last_applied.map_or(0, |l| l.index),
        };
        inner.publish.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
