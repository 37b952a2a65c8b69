//! Memory of large frames and reads, used again once nothing holds it.
//!
//! Fresh memory for every large buffer costs a page fault and a page clear per
//! 4 KiB: glibc maps allocations of a few hundred KiB and more anew and unmaps them
//! when they are freed. `bench consume` of 2 GB (consumer and broker together) took
//! ~190,000 page faults with only the broker's reads pooled, and ~40,000 with the
//! consumer's response bodies pooled too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

/// Buffers smaller than this are not pooled: the allocator serves them from memory
/// it already holds.
pub const MIN_POOLED_BYTES: usize = 64 * 1024;

/// How many pooled buffers [`BufferPool::take`] looks at, so taking costs little
/// even when many are still held.
const MAX_LOOKED_AT: usize = 32;

/// Large buffers handed out (as [`Bytes`]) and kept, to be handed out again once
/// every other handle on them is gone: the transport dropped a sent response once
/// the peer acknowledged it, the broker handled a request, a consumer's caller
/// dropped the records of a fetch. Clones share one pool.
///
/// The pool holds at most `max_bytes` of buffers (by capacity), whether or not they
/// are still held elsewhere; a buffer that would pass the limit is not kept.
#[derive(Clone, Debug)]
pub struct BufferPool(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    max_bytes: usize,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// Each buffer with its capacity, oldest first (the likeliest to be let go).
    buffers: VecDeque<(Bytes, usize)>,
    /// Sum of the capacities.
    bytes: usize,
}

impl BufferPool {
    /// A pool of at most `max_bytes`; 0 keeps nothing.
    pub fn new(max_bytes: usize) -> BufferPool {
        BufferPool(Arc::new(Inner {
            max_bytes,
            kept: Mutex::new(Kept::default()),
        }))
    }

    /// Bytes of buffers kept, whether still held elsewhere or not.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Every critical section leaves `Kept` whole.
        self.0.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of at least `len` bytes' capacity that nothing else holds, if one is
    /// kept, with its old contents (clear it to append; a read into it can overwrite
    /// them instead of zeroing memory first). Not one of more than four times `len`
    /// either: a small buffer must not take the memory a large one would fit in.
    pub fn take(&self, len: usize) -> Option<BytesMut> {
        if len < MIN_POOLED_BYTES {
            return None;
        }
        let fits = len..=len.saturating_mul(4);
        let mut kept = self.lock();
        for _ in 0..kept.buffers.len().min(MAX_LOOKED_AT) {
            let (bytes, capacity) = kept.buffers.pop_front()?;
            match bytes.try_into_mut() {
                Ok(buffer) if fits.contains(&capacity) => {
                    kept.bytes -= capacity;
                    return Some(buffer);
                }
                // The wrong size for this one, or still held: look again next time.
                Ok(buffer) => kept.buffers.push_back((buffer.freeze(), capacity)),
                Err(bytes) => kept.buffers.push_back((bytes, capacity)),
            }
        }
        None
    }

    /// An empty buffer for `len` bytes: a kept one ([`take`](Self::take)) or a new
    /// one.
    pub fn take_empty(&self, len: usize) -> BytesMut {
        match self.take(len) {
            Some(mut buffer) => {
                buffer.clear();
                buffer
            }
            None => BytesMut::with_capacity(len),
        }
    }

    /// Freezes `buffer` and keeps a handle on it (unless it is small or the pool is
    /// full), to hand its memory out again once the returned handle and every
    /// slice of it are dropped.
    pub fn keep(&self, buffer: BytesMut) -> Bytes {
        let capacity = buffer.capacity();
        self.keep_frozen(buffer.freeze(), capacity)
    }

    /// [`keep`](Self::keep) for a `Vec`.
    pub fn keep_vec(&self, buffer: Vec<u8>) -> Bytes {
        let capacity = buffer.capacity();
        self.keep_frozen(Bytes::from(buffer), capacity)
    }

    fn keep_frozen(&self, bytes: Bytes, capacity: usize) -> Bytes {
        if bytes.len() >= MIN_POOLED_BYTES {
            let mut kept = self.lock();
            if kept.bytes + capacity <= self.0.max_bytes {
                kept.bytes += capacity;
                kept.buffers.push_back((bytes.clone(), capacity));
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &BufferPool, len: usize, byte: u8) -> Bytes {
        let mut buffer = pool.take_empty(len);
        buffer.resize(len, byte);
        pool.keep(buffer)
    }

    #[test]
    fn a_buffer_is_handed_out_again_only_once_nothing_holds_it() {
        let pool = BufferPool::new(1 << 20);
        let a = filled(&pool, 100_000, 1);
        let memory = a.as_ptr();
        let slice = a.slice(10..20);
        drop(a);
        assert!(pool.take(100_000).is_none(), "a slice still holds it");
        drop(slice);
        let again = pool.take(90_000).expect("free now");
        assert_eq!(again.as_ptr(), memory);
        assert_eq!(&again[..], &[1; 100_000][..], "with its old contents");
        assert!(again.capacity() >= 100_000);
        assert_eq!(pool.kept_bytes(), 0, "taken out of the pool");
        // Kept again when filled and frozen, counted by capacity.
        let b = pool.keep(again);
        assert_eq!(pool.kept_bytes(), b.len().max(100_000));
    }

    #[test]
    fn sizes_limits_and_small_buffers() {
        let pool = BufferPool::new(600_000);
        drop(filled(&pool, 400_000, 1));
        // Too large for it, and far too small for it.
        assert!(pool.take(400_001).is_none());
        assert!(pool.take(90_000).is_none());
        // Below the pooled size nothing is taken or kept.
        assert!(pool.take(MIN_POOLED_BYTES - 1).is_none());
        drop(filled(&pool, MIN_POOLED_BYTES - 1, 2));
        assert_eq!(pool.kept_bytes(), 400_000);
        // Past the limit: not kept.
        drop(filled(&pool, 250_000, 3));
        assert_eq!(pool.kept_bytes(), 400_000);
        // Within [len, 4 len]: taken.
        assert!(pool.take(100_000).is_some());
        assert_eq!(pool.kept_bytes(), 0);
        // A limit of 0 keeps nothing.
        let none = BufferPool::new(0);
        drop(filled(&none, 200_000, 4));
        assert_eq!(none.kept_bytes(), 0);
    }
}
