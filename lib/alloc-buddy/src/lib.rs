//! Binary buddy backend through the `buddy_system_allocator` crate: blocks
//! are powers of two, split and merged with their buddy. Fast and simple,
//! with internal fragmentation up to half a block; the classic page-frame
//! allocator design.
#![cfg_attr(not(test), no_std)]

use core::alloc::Layout;
use core::ptr::NonNull;
use kiln_alloc::Backend;

/// Orders up to 2^40 bytes: more than any guest Kiln boots.
type Inner = buddy_system_allocator::Heap<40>;

/// Buddy heap backend.
pub struct Buddy(Inner);

impl Buddy {
    /// An empty buddy heap.
    pub const fn new() -> Self {
        Buddy(Inner::new())
    }
}

impl Default for Buddy {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Buddy {
    const NAME: &'static str = "buddy";

    unsafe fn add_region(&mut self, start: NonNull<u8>, size: usize) -> usize {
        let before = self.0.stats_total_bytes();
        let s = start.as_ptr() as usize;
        // SAFETY: forwarded contract: [s, s + size) is free memory owned by
        // this heap from now on.
        unsafe { self.0.add_to_heap(s, s + size) };
        self.0.stats_total_bytes() - before
    }

    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.0.alloc(layout).ok()
    }

    unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // The caller's contract (ptr came from alloc with this layout) is
        // what buddy_system_allocator's dealloc relies on.
        self.0.dealloc(ptr, layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_frees_merges_and_reuses() {
        let mut mem = vec![0u64; 16384];
        let base = NonNull::new(mem.as_mut_ptr() as *mut u8).unwrap();
        let mut b = Buddy::new();
        // SAFETY: `mem` is 128 KiB, outlives `b`, and nothing else uses it.
        let added = unsafe { b.add_region(base, 131072) };
        assert!(added > 65536, "{added}");
        let l = Layout::from_size_align(1000, 8).unwrap();
        let p = b.alloc(l).unwrap();
        let q = b.alloc(l).unwrap();
        assert_ne!(p, q);
        // SAFETY: p and q came from b.alloc(l) and are not used again.
        unsafe { b.dealloc(p, l) };
        // SAFETY: as above.
        unsafe { b.dealloc(q, l) };
        // After merging, one big block is available again.
        let big = Layout::from_size_align(65536, 4096).unwrap();
        let r = b.alloc(big).unwrap();
        assert_eq!(r.as_ptr() as usize % 4096, 0);
        assert!(b
            .alloc(Layout::from_size_align(1 << 20, 8).unwrap())
            .is_none());
    }
}
