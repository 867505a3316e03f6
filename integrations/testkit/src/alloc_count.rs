//! A global allocator that records, while armed, every allocation at or above a size.
//!
//! A test binary installs it with `#[global_allocator]` and arms it around the code under test
//! (an optimizer step): a step that copied a parameter tensor would show an allocation of the
//! tensor's size. It counts every thread (the CPU backend steps on a thread pool), so a test
//! binary that uses it should run one test at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Allocations recorded while armed (the first [`CountingAlloc::KEPT`] sizes are kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocRecord {
    /// Allocations (and growing reallocations) of at least the armed size.
    pub count: usize,
    /// Their sizes in bytes, in order (at most [`CountingAlloc::KEPT`]).
    pub sizes: Vec<usize>,
    /// Every allocation while armed, of any size.
    pub all: usize,
}

/// The allocator: [`System`] plus the record.
pub struct CountingAlloc {
    armed: AtomicBool,
    min_size: AtomicUsize,
    count: AtomicUsize,
    all: AtomicUsize,
    sizes: [AtomicUsize; CountingAlloc::KEPT],
}

impl CountingAlloc {
    /// How many sizes a record keeps.
    pub const KEPT: usize = 256;

    /// A disarmed allocator.
    #[allow(clippy::new_without_default)] // a `static` needs a const constructor
    pub const fn new() -> Self {
        CountingAlloc {
            armed: AtomicBool::new(false),
            min_size: AtomicUsize::new(usize::MAX),
            count: AtomicUsize::new(0),
            all: AtomicUsize::new(0),
            sizes: [const { AtomicUsize::new(0) }; CountingAlloc::KEPT],
        }
    }

    /// Starts recording allocations of `min_bytes` or more (clears the record).
    pub fn arm(&self, min_bytes: usize) {
        self.count.store(0, Ordering::SeqCst);
        self.all.store(0, Ordering::SeqCst);
        self.min_size.store(min_bytes, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Stops recording and returns the record.
    pub fn disarm(&self) -> AllocRecord {
        self.armed.store(false, Ordering::SeqCst);
        let count = self.count.load(Ordering::SeqCst);
        let kept = count.min(Self::KEPT);
        AllocRecord {
            count,
            sizes: self.sizes[..kept]
                .iter()
                .map(|s| s.load(Ordering::SeqCst))
                .collect(),
            all: self.all.load(Ordering::SeqCst),
        }
    }

    fn note(&self, size: usize) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        self.all.fetch_add(1, Ordering::Relaxed);
        if size >= self.min_size.load(Ordering::Relaxed) {
            let i = self.count.fetch_add(1, Ordering::SeqCst);
            if let Some(slot) = self.sizes.get(i) {
                slot.store(size, Ordering::SeqCst);
            }
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only touches atomics
// and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note(layout.size());
        // SAFETY: forwarded with the caller's layout, under the caller's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note(layout.size());
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes through it).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            self.note(new_size);
        }
        // SAFETY: as `dealloc`, forwarded under the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
