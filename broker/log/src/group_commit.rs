//! Group commit for `flush=always`: one fdatasync covers every batch appended before it
//! started, across partitions and producers.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

/// Cloneable handle on a segment file to fdatasync.
#[derive(Clone, Debug)]
pub struct SyncHandle {
    pub(crate) file: Arc<File>,
}

impl SyncHandle {
    /// fdatasyncs the file now, on the calling thread.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

type Callback = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Queue {
    pending: Vec<(SyncHandle, Callback)>,
    shutting_down: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wakeup: Condvar,
    asked: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
}

/// What a [`GroupCommit`] did since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncStats {
    /// Syncs asked for ([`GroupCommit::sync`] calls).
    pub asked: u64,
    /// fdatasyncs run for them: each covers every ask queued for its file before it.
    pub fsyncs: u64,
    /// Time spent in those fdatasyncs.
    pub fsync_seconds: f64,
}

/// One background thread that batches fdatasyncs.
///
/// Callers enqueue `(handle, callback)`; the thread takes everything queued, fdatasyncs
/// each distinct file once (deduplicated by `Arc` pointer), then runs every callback
/// with its file's result. While it syncs, new requests queue up for the next round.
///
/// The queue is unbounded on purpose: each entry is one in-flight produce request, and
/// the server already bounds those (in-flight requests per connection, connections).
/// Callbacks run on the group-commit thread, so they must be quick (e.g. send on a
/// channel) and must not block on another sync. A callback that panics is logged and
/// does not stop the thread.
///
/// Dropping the `GroupCommit` syncs whatever is still queued, runs those callbacks and
/// joins the thread.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub fn start() -> GroupCommit {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                shutting_down: false,
            }),
            wakeup: Condvar::new(),
            asked: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_nanos: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("meridian-group-commit".into())
            .spawn(move || run(&thread_shared))
            .ok();
        if thread.is_none() {
            tracing::error!("could not spawn the group-commit thread; syncing inline");
        }
        GroupCommit { shared, thread }
    }

    /// Queues an fdatasync of `handle`'s file; `done` runs once it completed.
    pub fn sync(&self, handle: SyncHandle, done: Box<dyn FnOnce(io::Result<()>) + Send>) {
        self.shared.asked.fetch_add(1, Ordering::Relaxed);
        if self.thread.is_none() {
            // No background thread (spawn failed): degrade to a synchronous sync.
            done(self.shared.fdatasync(&handle));
            return;
        }
        let mut queue = self.shared.queue.lock();
        queue.pending.push((handle, done));
        drop(queue);
        self.shared.wakeup.notify_one();
    }

    /// How many fdatasyncs ran so far.
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Syncs asked, fdatasyncs run and the time they took, so far.
    pub fn stats(&self) -> SyncStats {
        SyncStats {
            asked: self.shared.asked.load(Ordering::Relaxed),
            fsyncs: self.fsyncs(),
            fsync_seconds: self.shared.fsync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl Shared {
    /// fdatasyncs `handle`'s file on this thread, counted and timed.
    fn fdatasync(&self, handle: &SyncHandle) -> io::Result<()> {
        let started = std::time::Instant::now();
        let result = handle.sync();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos.fetch_add(nanos, Ordering::Relaxed);
        result
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.queue.lock().shutting_down = true;
        self.shared.wakeup.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("group-commit thread panicked");
            }
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let round = {
            let mut queue = shared.queue.lock();
            while queue.pending.is_empty() && !queue.shutting_down {
                shared.wakeup.wait(&mut queue);
            }
            if queue.pending.is_empty() {
                return; // Shutting down with nothing left to sync.
            }
            std::mem::take(&mut queue.pending)
        };
        // Pointer identity of the shared `File` is file identity: one fdatasync each.
        let mut results: HashMap<*const File, Result<(), (io::ErrorKind, String)>> = HashMap::new();
        for (handle, _) in &round {
            results.entry(Arc::as_ptr(&handle.file)).or_insert_with(|| {
                shared
                    .fdatasync(handle)
                    .map_err(|e| (e.kind(), e.to_string()))
            });
        }
        for (handle, done) in round {
            let result = match &results[&Arc::as_ptr(&handle.file)] {
                Ok(()) => Ok(()),
                Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            };
            // A panicking callback must not take the thread down with it: every
            // later sync would then wait forever.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(result)));
            if outcome.is_err() {
                tracing::error!("a group-commit callback panicked");
            }
        }
    }
}
