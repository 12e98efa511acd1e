//! Region (bump) allocator: hands out memory front to back and never reuses
//! it. It is a few dozen instructions, which makes it the choice for the
//! smallest images and for run-to-completion apps that allocate little.
//! Freed memory is only reclaimed when the freed block was the last one handed
//! out (the common push/pop pattern of short-lived buffers).
#![cfg_attr(not(test), no_std)]

use core::alloc::Layout;
use core::ptr::NonNull;
use kiln_alloc::{align_up, Backend};

/// Bump allocator over the largest region it was given.
pub struct Region {
    next: usize,
    end: usize,
}

impl Region {
    /// An empty region allocator.
    pub const fn new() -> Self {
        Region { next: 0, end: 0 }
    }
}

impl Default for Region {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Region {
    const NAME: &'static str = "region";

    unsafe fn add_region(&mut self, start: NonNull<u8>, size: usize) -> usize {
        // A bump allocator works on one range; keep the larger one.
        if size > self.end - self.next {
            self.next = start.as_ptr() as usize;
            self.end = self.next + size;
            size
        } else {
            0
        }
    }

    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let start = align_up(self.next, layout.align())?;
        let end = start.checked_add(layout.size().max(1))?;
        if end > self.end {
            return None;
        }
        self.next = end;
        NonNull::new(start as *mut u8)
    }

    unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let p = ptr.as_ptr() as usize;
        if p + layout.size().max(1) == self.next {
            self.next = p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_aligns_and_reclaims_the_last_block() {
        let mut mem = vec![0u64; 64];
        let base = mem.as_mut_ptr() as *mut u8;
        let mut r = Region::new();
        assert_eq!(
            unsafe { r.add_region(NonNull::new(base).unwrap(), 512) },
            512
        );
        let a = r.alloc(Layout::from_size_align(3, 1).unwrap()).unwrap();
        let b = r.alloc(Layout::from_size_align(8, 8).unwrap()).unwrap();
        assert_eq!(b.as_ptr() as usize % 8, 0);
        assert!(b.as_ptr() as usize >= a.as_ptr() as usize + 3);
        unsafe { r.dealloc(b, Layout::from_size_align(8, 8).unwrap()) };
        let c = r.alloc(Layout::from_size_align(8, 8).unwrap()).unwrap();
        assert_eq!(b, c);
        assert!(r.alloc(Layout::from_size_align(1024, 8).unwrap()).is_none());
    }
}
