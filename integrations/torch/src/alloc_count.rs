//! A counting global allocator: the extension's own allocations of at least a threshold size,
//! so a test can show that a step allocates nothing parameter-sized.
//!
//! It forwards every call to the system allocator and, for a request of at least
//! [`start`]'s threshold (none before the first call), adds one to a counter and its size to a
//! byte total. The cost is one relaxed atomic load per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator with a count of large requests.
pub struct Counting;

static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if size >= THRESHOLD.load(Relaxed) {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(size, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            note(new_size);
        }
        // SAFETY: forwarded; `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resets the count and counts from now on every allocation of at least `threshold` bytes.
pub fn start(threshold: usize) {
    THRESHOLD.store(threshold, Relaxed);
    COUNT.store(0, Relaxed);
    BYTES.store(0, Relaxed);
}

/// Allocations counted since [`start`], and their total size in bytes.
pub fn counted() -> (usize, usize) {
    (COUNT.load(Relaxed), BYTES.load(Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_large_requests() {
        // Other tests of this binary may allocate concurrently, but none allocates 64 MiB.
        start(64 << 20);
        let small = vec![0u8; 1024];
        assert_eq!(counted(), (0, 0));
        let big = vec![0u8; 64 << 20];
        assert_eq!(counted(), (1, 64 << 20));
        drop((small, big));
        start(usize::MAX);
    }
}
