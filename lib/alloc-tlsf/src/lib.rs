//! TLSF backend: two-level segregated fit through the `rlsf` crate. Constant
//! time allocation and free with bounded fragmentation; the default heap.
#![cfg_attr(not(test), no_std)]

use core::alloc::Layout;
use core::ptr::NonNull;
use kiln_alloc::Backend;

/// First-level classes cover block sizes up to 2^(FL + granularity bits):
/// 28 levels reach far beyond any guest memory size Kiln supports.
type Inner = rlsf::Tlsf<'static, u32, u32, 28, 32>;

/// TLSF heap backend.
pub struct Tlsf(Inner);

// SAFETY: the pool memory is owned by this allocator alone, and `Heap` serialises access.
unsafe impl Send for Tlsf {}

impl Tlsf {
    /// An empty TLSF heap.
    pub const fn new() -> Self {
        Tlsf(Inner::new())
    }
}

impl Default for Tlsf {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Tlsf {
    const NAME: &'static str = "tlsf";

    unsafe fn add_region(&mut self, start: NonNull<u8>, size: usize) -> usize {
        let block = NonNull::slice_from_raw_parts(start, size);
        // SAFETY: forwarded contract: the block is ours for the kernel's lifetime.
        unsafe { self.0.insert_free_block_ptr(block) }.map_or(0, |n| n.get())
    }

    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.0.allocate(layout)
    }

    unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: ptr was allocated here with this alignment.
        unsafe { self.0.deallocate(ptr, layout.align()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_frees_and_reuses() {
        let mut mem = vec![0u64; 8192];
        let base = NonNull::new(mem.as_mut_ptr() as *mut u8).unwrap();
        let mut t = Tlsf::new();
        let added = unsafe { t.add_region(base, 65536) };
        assert!(added > 60000, "added {added}");
        let l = Layout::from_size_align(1000, 16).unwrap();
        let blocks: Vec<_> = (0..50).map(|_| t.alloc(l).unwrap()).collect();
        assert!(blocks.iter().all(|b| b.as_ptr() as usize % 16 == 0));
        assert!(t
            .alloc(Layout::from_size_align(60000, 8).unwrap())
            .is_none());
        for b in blocks {
            unsafe { t.dealloc(b, l) };
        }
        assert!(t
            .alloc(Layout::from_size_align(60000, 8).unwrap())
            .is_some());
    }
}
