//! 4 KiB pages of a Linux program's address space.
//!
//! The kernel's identity map covers the first PML4 entry (512 GiB).
//! Programs get the rest of the lower half, [`WINDOW`], mapped page by
//! page in the same tables (there is one program, and it runs in ring 0
//! like the kernel): lib/syscall decides what is mapped where, with which
//! protection, and hands this module zeroed 4 KiB frames of the kernel
//! heap (identity-mapped, so a frame's address is its physical address)
//! for pages and for the page tables themselves. Table pages stay once
//! made; a page's frame goes back to its owner on [`unmap`].
//!
//! Every change flushes the page's TLB entry. There is one CPU, and the
//! caller holds its own lock, so no other code walks these tables while
//! they change.

use core::ops::Range;

/// Program addresses: PML4 entries 1 to 255 (512 GiB up to the top of the
/// lower half).
pub const WINDOW: Range<u64> = 0x80_0000_0000..0x7fff_ffff_f000;

const P: u64 = 1;
const W: u64 = 1 << 1;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// What a page allows besides reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub exec: bool,
}

/// A page that keeps its frame but allows nothing (PROT_NONE): not
/// present, with this software bit (the CPU ignores the rest of a
/// non-present entry).
const KEPT: u64 = 1 << 9;

fn leaf_flags(a: Option<Access>) -> u64 {
    match a {
        Some(a) => P | if a.write { W } else { 0 } | if a.exec { 0 } else { NX },
        None => KEPT,
    }
}

#[cfg(target_os = "none")]
fn pml4() -> *mut u64 {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    (cr3 & ADDR) as *mut u64
}

/// The page table entry for `va`, making missing tables with `table`
/// (which returns a zeroed, identity-mapped 4 KiB frame) when asked.
///
/// # Safety
/// One CPU, caller's lock held; `va` in [`WINDOW`].
#[cfg(target_os = "none")]
unsafe fn entry(va: u64, table: Option<&mut dyn FnMut() -> Option<u64>>) -> Option<*mut u64> {
    let mut t = pml4();
    let mut table = table;
    for shift in [39u32, 30, 21] {
        let i = ((va >> shift) & 511) as usize;
        // SAFETY: `t` is a live table of the hierarchy (identity-mapped).
        let e = unsafe { t.add(i) };
        // SAFETY: as above.
        let mut v = unsafe { *e };
        if v & P == 0 {
            let f = table.as_mut()?()?;
            v = f | P | W;
            // SAFETY: the new table is zeroed; intermediate entries allow
            // writing and executing, the leaf decides.
            unsafe { *e = v };
        }
        t = (v & ADDR) as *mut u64;
    }
    // SAFETY: `t` is the page table for `va`.
    Some(unsafe { t.add(((va >> 12) & 511) as usize) })
}

#[cfg(target_os = "none")]
fn flush(va: u64) {
    // SAFETY: invlpg only drops a TLB entry.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack)) };
}

/// Maps the page at `va` to `frame` with `access` (None: nothing allowed,
/// the frame kept). False if a table could not be made.
#[cfg(target_os = "none")]
pub fn map(
    va: u64,
    frame: u64,
    access: Option<Access>,
    table: &mut dyn FnMut() -> Option<u64>,
) -> bool {
    debug_assert!(WINDOW.contains(&va));
    // SAFETY: per the module's contract.
    match unsafe { entry(va, Some(table)) } {
        Some(e) => {
            // SAFETY: `e` is the live entry for `va`.
            unsafe { *e = frame | leaf_flags(access) };
            flush(va);
            true
        }
        None => false,
    }
}

/// Unmaps the page at `va`; returns its frame if it was mapped.
#[cfg(target_os = "none")]
pub fn unmap(va: u64) -> Option<u64> {
    // SAFETY: per the module's contract; no table is made.
    let e = unsafe { entry(va, None) }?;
    // SAFETY: `e` is the live entry for `va`.
    let v = unsafe { *e };
    if v & (P | KEPT) == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { *e = 0 };
    flush(va);
    Some(v & ADDR)
}

/// The first page in [va, end) whose entry is in use (mapped, or kept
/// with PROT_NONE), or None: missing tables are skipped whole, and a leaf
/// table is scanned without walking down again for every page.
#[cfg(target_os = "none")]
pub fn next_in_use(mut va: u64, end: u64) -> Option<u64> {
    'walk: while va < end {
        let mut t = pml4();
        for shift in [39u32, 30, 21] {
            // SAFETY: `t` is a live table of the hierarchy (identity-mapped);
            // only reads.
            let v = unsafe { *t.add(((va >> shift) & 511) as usize) };
            if v & P == 0 {
                va = (va | ((1u64 << shift) - 1)).checked_add(1)?;
                continue 'walk;
            }
            t = (v & ADDR) as *mut u64;
        }
        loop {
            // SAFETY: `t` is the page table for `va`; only reads.
            if unsafe { *t.add(((va >> 12) & 511) as usize) } & (P | KEPT) != 0 {
                return Some(va);
            }
            va += 4096;
            if va >= end {
                return None;
            }
            if va & ((2 << 20) - 1) == 0 {
                continue 'walk;
            }
        }
    }
    None
}

/// Changes what the page at `va` allows, if it is mapped.
#[cfg(target_os = "none")]
pub fn protect(va: u64, access: Option<Access>) {
    // SAFETY: per the module's contract; no table is made.
    if let Some(e) = unsafe { entry(va, None) } {
        // SAFETY: `e` is the live entry for `va`.
        unsafe {
            if *e & (P | KEPT) != 0 {
                *e = (*e & ADDR) | leaf_flags(access);
                flush(va);
            }
        }
    }
}

/// The frame mapped at `va`, if any.
#[cfg(target_os = "none")]
pub fn frame(va: u64) -> Option<u64> {
    // SAFETY: per the module's contract; no table is made.
    let e = unsafe { entry(va, None) }?;
    // SAFETY: `e` is the live entry for `va`.
    let v = unsafe { *e };
    (v & (P | KEPT) != 0).then_some(v & ADDR)
}
