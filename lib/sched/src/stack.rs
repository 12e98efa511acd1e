//! Threads' stacks: 4 KiB-aligned heap memory with a guard page below,
//! which the platform unmaps where it can (`kiln_boot::guard_page`), so an
//! overflow faults at once and the fault report names the thread. The
//! canary in the lowest usable word stays, for platforms without guard
//! pages: it is checked whenever the thread is switched out.

use alloc::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use core::ptr::NonNull;

const PAGE: usize = 4096;

/// Written at the lowest usable address of every spawned thread's stack.
pub(crate) const CANARY: u64 = 0x6b69_6c6e_5f73_746b;

/// A thread's stack: [guard page][usable bytes], freed on drop.
pub(crate) struct Stack {
    base: NonNull<u8>,
    layout: Layout,
    guarded: bool,
}

// SAFETY: the stack is plain memory owned by one thread record.
unsafe impl Send for Stack {}

impl Stack {
    /// At least `size` usable bytes for the thread `owner` names.
    pub(crate) fn new(size: usize, owner: &str) -> Stack {
        let usable = size.max(PAGE).next_multiple_of(PAGE);
        let layout = Layout::from_size_align(usable + PAGE, PAGE).expect("a stack size that fits");
        // SAFETY: the layout is not zero-sized.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) })
            .unwrap_or_else(|| handle_alloc_error(layout));
        let mut s = Stack {
            base,
            layout,
            guarded: false,
        };
        s.usable()[..8].copy_from_slice(&CANARY.to_ne_bytes());
        s.guarded = kiln_boot::guard_page(base.as_ptr() as usize, owner);
        s
    }

    /// The bytes above the guard page, 16-byte aligned at both ends.
    pub(crate) fn usable(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `layout.size()` bytes from `base`; the
        // first page is the guard.
        unsafe {
            core::slice::from_raw_parts_mut(self.base.as_ptr().add(PAGE), self.layout.size() - PAGE)
        }
    }

    /// Whether the canary is intact.
    pub(crate) fn canary_ok(&self) -> bool {
        // SAFETY: the first usable word lies within the allocation.
        unsafe { (self.base.as_ptr().add(PAGE) as *const u64).read() == CANARY }
    }

    /// Whether the page below is unmapped.
    #[allow(dead_code)]
    pub(crate) fn guarded(&self) -> bool {
        self.guarded
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.guarded {
            kiln_boot::unguard_page(self.base.as_ptr() as usize);
        }
        // SAFETY: allocated in `new` with this layout; the thread is gone.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}
