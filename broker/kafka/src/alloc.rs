//! The allocator a process that decodes Kafka requests should run with.
//!
//! kafka-protocol 0.18 sizes each array it decodes by the count on the wire before
//! it reads an element (`Vec::with_capacity(count)`). A count is up to 2^32 - 1, so
//! a frame of two dozen bytes can ask for hundreds of gigabytes. Under Linux's
//! default overcommit policy the kernel refuses a mapping larger than memory and
//! swap together, the allocation fails, and Rust aborts the process: one
//! unauthenticated request would take the broker down. (Upstream knows; its fixes
//! were not released when this was written.)
//!
//! [`LazyLargeAllocator`] maps blocks of [`LARGE`] bytes and more with
//! `MAP_NORESERVE`, which the kernel does not count against memory until pages are
//! touched. The lying count's block is then granted, the decoder stops at its next
//! read (the frame ends long before the elements it promised), the request is
//! refused as malformed and the block is unmapped, never having used a page. A real
//! block of that size behaves as ordinary overcommitted memory does. Smaller blocks
//! go to the system allocator untouched. Under `vm.overcommit_memory = 2` (strict
//! accounting) the kernel ignores `MAP_NORESERVE` and a lying count still aborts;
//! outside Linux the allocator is the system's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Blocks at least this large are mapped lazily. Far above what a broker allocates
/// at once for a valid request (`max_frame_bytes` is 64 MiB by default), and above
/// glibc's largest mmap threshold, so blocks this size were mapped one by one
/// anyway.
pub const LARGE: usize = 256 << 20;

/// The system allocator, with blocks of [`LARGE`] bytes or more mapped lazily (see
/// the module's documentation). Install it in the binary:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: meridian_kafka::alloc::LazyLargeAllocator =
///     meridian_kafka::alloc::LazyLargeAllocator;
/// # fn main() {}
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct LazyLargeAllocator;

static BLOCKS_MAPPED: AtomicU64 = AtomicU64::new(0);

/// How many blocks [`LazyLargeAllocator`] has mapped lazily since the process
/// started.
pub fn blocks_mapped() -> u64 {
    BLOCKS_MAPPED.load(Ordering::Relaxed)
}

/// Why blocks mapped lazily would still be refused here, if they would: outside
/// Linux, or under `vm.overcommit_memory = 2`, where the kernel counts
/// `MAP_NORESERVE` mappings like any other. For the broker to say so at start, and
/// for tests of the guard to skip.
pub fn lazy_blocks_refused() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("blocks are mapped lazily on Linux only".into());
    }
    match std::fs::read_to_string("/proc/sys/vm/overcommit_memory") {
        Ok(mode) if mode.trim() == "2" => Some(
            "vm.overcommit_memory is 2 (strict accounting): the kernel counts \
             MAP_NORESERVE mappings against memory"
                .into(),
        ),
        _ => None,
    }
}

/// Whether a block of this layout is mapped by [`LazyLargeAllocator`] (decided by the
/// layout alone, so a block is freed the way it was allocated).
fn is_mapped(layout: &Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= LARGE && layout.align() <= 4096
}

#[allow(unsafe_code)]
// SAFETY: every block comes from the system allocator or from `mmap`, each with
// the size and alignment asked for (mmap returns page-aligned memory, and only
// alignments of 4096 or less go there); `is_mapped` of a block's layout, which
// the caller passes back unchanged, says which one to return it to.
unsafe impl GlobalAlloc for LazyLargeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_mapped(&layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_mapped(&layout) {
            // Anonymous mappings are zeroed.
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_mapped(&layout) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `map`.
            unsafe { unmap(ptr, layout.size()) }
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s contract makes this a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_mapped(&layout), is_mapped(&new_layout)) {
            // SAFETY: as in `alloc`.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `map`.
            (true, true) => unsafe { remap(ptr, layout.size(), new_size) },
            _ => {
                // SAFETY: `new_layout` has a non-zero size (one side is mapped, so
                // at least `LARGE`, or `new_size` came from a valid realloc).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and distinct;
                    // the old one is returned the way it was allocated.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn map(size: usize) -> *mut u8 {
    #[allow(unsafe_code)]
    // SAFETY: a new private anonymous mapping; no existing memory is affected.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        BLOCKS_MAPPED.fetch_add(1, Ordering::Relaxed);
        mapped.cast()
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
/// # Safety
/// `ptr` must be a mapping of `size` bytes made by [`map`], not used afterwards.
unsafe fn unmap(ptr: *mut u8, size: usize) {
    // SAFETY: the caller's.
    unsafe { libc::munmap(ptr.cast(), size) };
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
/// # Safety
/// `ptr` must be a mapping of `size` bytes made by [`map`]; on success it is no
/// longer valid and the returned one is.
unsafe fn remap(ptr: *mut u8, size: usize, new_size: usize) -> *mut u8 {
    // SAFETY: the caller's; the kernel moves the pages if it must.
    let moved = unsafe { libc::mremap(ptr.cast(), size, new_size, libc::MREMAP_MAYMOVE) };
    if moved == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        moved.cast()
    }
}

// Elsewhere nothing is mapped (`is_mapped` is false), so these are never called.
#[cfg(not(target_os = "linux"))]
fn map(_size: usize) -> *mut u8 {
    std::ptr::null_mut()
}

#[cfg(not(target_os = "linux"))]
#[allow(unsafe_code)]
unsafe fn unmap(_ptr: *mut u8, _size: usize) {}

#[cfg(not(target_os = "linux"))]
#[allow(unsafe_code)]
unsafe fn remap(_ptr: *mut u8, _size: usize, _new_size: usize) -> *mut u8 {
    std::ptr::null_mut()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_block_larger_than_memory_is_granted_and_costs_nothing_untouched() {
        if let Some(why) = lazy_blocks_refused() {
            eprintln!("skipping: {why}");
            return;
        }
        // 4 TiB: more than memory and swap on any machine this runs on, so the
        // system allocator would fail (and Rust abort) under the default policy.
        let mut huge: Vec<u64> = Vec::with_capacity(1 << 39);
        huge.push(7);
        huge.push(8);
        assert_eq!(huge[..], [7, 8]);
        assert!(huge.capacity() >= 1 << 39);
    }

    #[test]
    fn blocks_grow_and_shrink_across_the_threshold_keeping_their_bytes() {
        let mut bytes: Vec<u8> = Vec::with_capacity(LARGE - 4096);
        bytes.extend((0..4096u32).map(|i| i as u8));
        // Small to mapped.
        bytes.reserve_exact(LARGE);
        assert!(bytes.capacity() >= LARGE);
        // Mapped to mapped (mremap).
        bytes.reserve_exact(2 * LARGE);
        assert!(bytes.capacity() >= 2 * LARGE);
        // Mapped to small.
        bytes.shrink_to_fit();
        assert_eq!(bytes.capacity(), 4096);
        assert!(bytes.iter().enumerate().all(|(i, b)| *b == i as u8));
        let zeroed = vec![0u8; LARGE];
        assert!(zeroed.iter().step_by(4096).all(|b| *b == 0));
    }
}
