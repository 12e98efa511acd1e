//! The allocator interface.
//!
//! Every heap backend (`kiln-alloc-region`, `kiln-alloc-tlsf`, ...) implements
//! [`Backend`]; the generated link crate wraps the one chosen in Kconfig in a
//! [`Heap`], which is the kernel's `#[global_allocator]`. [`Heap`] adds what
//! every backend needs and none should re-implement: a lock, statistics
//! (bytes in use, peak, failures) and a report when memory runs out.
//!
//! The boot code hands memory to the heap through the object-safe
//! [`HeapControl`] trait, so `kiln-boot` does not need to know which backend
//! was chosen.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::{self, NonNull};
use spin::Mutex;

/// A heap algorithm. Implementations do not lock: [`Heap`] serialises calls.
pub trait Backend: Send {
    /// Short name for boot messages and statistics (`"tlsf"`, `"region"`).
    const NAME: &'static str;

    /// Gives the backend a block of free memory.
    ///
    /// # Safety
    /// `start..start+size` must be valid, writable, unused by anything else for
    /// the rest of the kernel's life, and must not overlap a region given before.
    unsafe fn add_region(&mut self, start: NonNull<u8>, size: usize) -> usize;

    /// Returns a block fitting `layout`, or `None` when no block fits.
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>>;

    /// Returns a block to the backend.
    ///
    /// # Safety
    /// `ptr` must come from `alloc` on this backend with the same `layout`.
    unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout);
}

/// Heap statistics, in bytes of requested size (not counting backend overhead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes handed to the backend by `add_region` (after its own alignment).
    pub total: usize,
    /// Bytes currently allocated.
    pub in_use: usize,
    /// Highest value `in_use` ever reached.
    pub peak: usize,
    /// Number of successful allocations so far.
    pub allocs: u64,
    /// Number of allocations that could not be satisfied.
    pub failures: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} KiB total, {} bytes in use, peak {} bytes, {} allocations, {} failed",
            self.total / 1024,
            self.in_use,
            self.peak,
            self.allocs,
            self.failures
        )
    }
}

/// What boot code needs from the heap, independent of the backend.
pub trait HeapControl: Sync {
    /// Adds free memory to the heap; returns the bytes the backend accepted.
    ///
    /// # Safety
    /// Same contract as [`Backend::add_region`].
    unsafe fn add_region(&self, start: usize, size: usize) -> usize;
    /// Current statistics.
    fn stats(&self) -> Stats;
    /// Backend name.
    fn backend(&self) -> &'static str;
}

/// A backend behind a lock, usable as `#[global_allocator]`.
pub struct Heap<B: Backend> {
    inner: Mutex<(B, Stats)>,
}

impl<B: Backend> Heap<B> {
    /// Wraps a backend that has no memory yet.
    pub const fn new(backend: B) -> Self {
        Heap {
            inner: Mutex::new((
                backend,
                Stats {
                    total: 0,
                    in_use: 0,
                    peak: 0,
                    allocs: 0,
                    failures: 0,
                },
            )),
        }
    }
}

impl<B: Backend> HeapControl for Heap<B> {
    unsafe fn add_region(&self, start: usize, size: usize) -> usize {
        let Some(p) = NonNull::new(start as *mut u8) else {
            return 0;
        };
        let mut g = self.inner.lock();
        // SAFETY: forwarded contract, see `Backend::add_region`.
        let added = unsafe { g.0.add_region(p, size) };
        g.1.total += added;
        added
    }

    fn stats(&self) -> Stats {
        self.inner.lock().1
    }

    fn backend(&self) -> &'static str {
        B::NAME
    }
}

// SAFETY: all access to the backend goes through the mutex; the backend
// contract guarantees returned blocks fit the layout and do not overlap.
unsafe impl<B: Backend> GlobalAlloc for Heap<B> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut g = self.inner.lock();
        match g.0.alloc(layout) {
            Some(p) => {
                let s = &mut g.1;
                s.in_use += layout.size();
                s.peak = s.peak.max(s.in_use);
                s.allocs += 1;
                p.as_ptr()
            }
            None => {
                g.1.failures += 1;
                let stats = g.1;
                drop(g);
                report_oom(layout, B::NAME, &stats);
                ptr::null_mut()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        let mut g = self.inner.lock();
        // SAFETY: GlobalAlloc's contract: ptr came from `alloc` with this layout.
        unsafe { g.0.dealloc(p, layout) };
        g.1.in_use -= layout.size();
    }
}

/// Hook for out-of-memory reports: the boot code installs one that prints to
/// the console. (The allocator cannot depend on the console itself: the
/// console must stay usable when the heap is not.)
static OOM_HOOK: spin::Once<fn(Layout, &'static str, &Stats)> = spin::Once::new();

/// Installs the function called when an allocation fails, before the null
/// pointer goes back to the caller (which then usually panics).
pub fn set_oom_hook(f: fn(Layout, &'static str, &Stats)) {
    OOM_HOOK.call_once(|| f);
}

fn report_oom(layout: Layout, backend: &'static str, stats: &Stats) {
    if let Some(f) = OOM_HOOK.get() {
        f(layout, backend, stats);
    }
}

/// Rounds `addr` up to `align` (a power of two); `None` on overflow.
/// Whole pages for drivers and DMA buffers: page-aligned, zeroed, from the
/// kernel heap (so they count in its statistics). Memory is identity-mapped,
/// so the address is also the physical address devices use.
pub mod workload;

pub mod pages {
    use core::alloc::Layout;
    use core::ptr::NonNull;

    /// The page size.
    pub const SIZE: usize = 4096;

    fn layout(n: usize) -> Option<Layout> {
        Layout::from_size_align(n.checked_mul(SIZE)?, SIZE).ok()
    }

    /// Allocates `n` contiguous zeroed pages; `None` when memory is short
    /// (reported like any out-of-memory) or `n` is 0.
    pub fn alloc(n: usize) -> Option<NonNull<u8>> {
        if n == 0 {
            return None;
        }
        let l = layout(n)?;
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { alloc::alloc::alloc_zeroed(l) })
    }

    /// Frees pages from [`alloc`].
    ///
    /// # Safety
    /// `p` came from `alloc(n)` with the same `n` and is not used afterwards.
    pub unsafe fn free(p: NonNull<u8>, n: usize) {
        if let Some(l) = layout(n) {
            // SAFETY: forwarded contract.
            unsafe { alloc::alloc::dealloc(p.as_ptr(), l) }
        }
    }
}

pub fn align_up(addr: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    addr.checked_add(align - 1).map(|a| a & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny backend for testing the wrapper: hands out one block only.
    struct One(Option<NonNull<u8>>, usize);
    unsafe impl Send for One {}
    impl Backend for One {
        const NAME: &'static str = "one";
        unsafe fn add_region(&mut self, start: NonNull<u8>, size: usize) -> usize {
            self.0 = Some(start);
            self.1 = size;
            size
        }
        fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
            if layout.size() <= self.1 {
                self.0.take()
            } else {
                None
            }
        }
        unsafe fn dealloc(&mut self, ptr: NonNull<u8>, _: Layout) {
            self.0 = Some(ptr);
        }
    }

    #[test]
    fn stats_track_use_peak_and_failures() {
        let mut mem = vec![0u8; 256];
        let heap = Heap::new(One(None, 0));
        unsafe { heap.add_region(mem.as_mut_ptr() as usize, 256) };
        let l = Layout::from_size_align(100, 8).unwrap();
        let p = unsafe { heap.alloc(l) };
        assert!(!p.is_null());
        assert!(unsafe { heap.alloc(l) }.is_null());
        unsafe { heap.dealloc(p, l) };
        let s = heap.stats();
        assert_eq!(
            (s.total, s.in_use, s.peak, s.allocs, s.failures),
            (256, 0, 100, 1, 1)
        );
    }

    #[test]
    fn align_up_works() {
        assert_eq!(align_up(0, 16), Some(0));
        assert_eq!(align_up(1, 16), Some(16));
        assert_eq!(align_up(16, 16), Some(16));
        assert_eq!(align_up(usize::MAX, 16), None);
    }
}
