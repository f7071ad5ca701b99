//! The node's memory allocator: the system allocator, except that one allocation of 1 GiB or more
//! only reserves address space (`MAP_NORESERVE`) and takes memory as its pages are written.
//!
//! Why: decoders of wire formats size vectors from counts in the request before reading the
//! elements. The Kafka codecs (`kafka-protocol` 0.18) do so for every array, so a 20-byte frame
//! that declares two billion elements asks for hundreds of gigabytes at once; the system allocator
//! refuses, and a refused allocation aborts the process. Reserved this way, the request succeeds,
//! the decoder fails on the missing elements, and the reservation is returned untouched, so the
//! frame closes one connection instead of the node. (Arrays whose counts are checked against the
//! remaining bytes are proposed upstream; until they are released this keeps the node up.)

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size on are reserved rather than committed.
pub const HUGE: usize = 1 << 30;
/// Alignment an anonymous mapping always has.
const PAGE: usize = 4096;

/// See the module documentation.
pub struct NodeAllocator;

fn reserved(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is returned by the same path it was taken from: `reserved` depends only on
// the layout, which callers pass back unchanged to `dealloc` and `realloc`.
unsafe impl GlobalAlloc for NodeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if reserved(&layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if reserved(&layout) {
            // Anonymous mappings read as zeros.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if reserved(&layout) {
            // SAFETY: `ptr` is a mapping of exactly this size made by `map`.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !reserved(&layout) && !reserved(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh block, filled from the old one, which is then freed by its own path.
        unsafe {
            let fresh = self.alloc(new_layout);
            if !fresh.is_null() {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reservation_succeeds_and_keeps_what_is_written() {
        let a = NodeAllocator;
        // Far more than this machine has: only address space.
        let layout = Layout::from_size_align(512 << 30, 8).expect("layout");
        // SAFETY: the block is used within its layout and freed with it.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "512 GiB reserved");
            *p.add(12345) = 7;
            assert_eq!(*p.add(12345), 7);
            let small = Layout::from_size_align(64, 8).expect("layout");
            let q = a.realloc(p, layout, small.size());
            assert_eq!(*q.add(7), 0);
            a.dealloc(q, small);
        }
        // The usual path for everything else.
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
    }
}
