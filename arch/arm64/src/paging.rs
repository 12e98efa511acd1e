//! 4 KiB pages of a Linux program's address space (arm64).
//!
//! The boot tables (`entry.S`: TTBR0, 39-bit addresses, one level-1 table)
//! map the first 4 GiB. Programs get [`WINDOW`], level-1 entries 64 to
//! 511, mapped page by page in the same tables (one program, running at
//! EL1 like the kernel): lib/syscall decides what is mapped where, with
//! which protection, and hands this module zeroed 4 KiB frames of the
//! kernel heap (identity-mapped, so a frame's address is its physical
//! address) for pages and for the level-2 and level-3 tables. Tables stay
//! once made; a page's frame goes back to its owner on [`unmap`].
//!
//! Pages are normal write-back memory, inner shareable, accessed (AF set),
//! EL1 only (programs run at EL1), never executable at EL0; read-only
//! through AP[2], not executable through PXN. A PROT_NONE page keeps its
//! frame in an invalid descriptor with a software bit ([`KEPT`]). Every
//! change of a valid descriptor is followed by a TLB invalidation of its
//! address; a page that becomes executable gets its instruction cache
//! brought up to date. One CPU, and the caller holds its own lock.

use core::ops::Range;

/// Program addresses: level-1 entries 64 to 511 (64 GiB to 512 GiB).
pub const WINDOW: Range<u64> = 0x10_0000_0000..0x80_0000_0000;

/// What a page allows besides reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub exec: bool,
}

const VALID: u64 = 1;
const TABLE: u64 = 1 << 1;
/// Level-3 page: valid, page, attribute 1 (normal), inner shareable, AF.
const PAGE: u64 = VALID | TABLE | (1 << 2) | (3 << 8) | (1 << 10);
const RO: u64 = 1 << 7;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// An invalid descriptor that keeps its frame (PROT_NONE): the CPU
/// ignores every bit of an invalid descriptor but bit 0.
const KEPT: u64 = 1 << 58;
const ADDR: u64 = 0x0000_ffff_ffff_f000;

fn leaf(frame: u64, a: Option<Access>) -> u64 {
    match a {
        Some(a) => {
            frame | PAGE | UXN | if a.write { 0 } else { RO } | if a.exec { 0 } else { PXN }
        }
        None => frame | KEPT,
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
extern "C" {
    static mut kiln_l1: [u64; 512];
}

/// The level-3 descriptor for `va`, making missing tables with `table`
/// (a zeroed, identity-mapped 4 KiB frame) when given.
///
/// # Safety
/// One CPU, caller's lock held; `va` in [`WINDOW`].
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
unsafe fn entry(va: u64, mut table: Option<&mut dyn FnMut() -> Option<u64>>) -> Option<*mut u64> {
    // The live level-1 table of the boot tables (taking a static's
    // address is safe).
    let mut t = core::ptr::addr_of_mut!(kiln_l1) as *mut u64;
    for shift in [30u32, 21] {
        // SAFETY: `t` is a live table (identity-mapped).
        let e = unsafe { t.add(((va >> shift) & 511) as usize) };
        // SAFETY: as above.
        let mut v = unsafe { core::ptr::read_volatile(e) };
        if v & VALID == 0 {
            let f = table.as_mut()?()?;
            v = f | VALID | TABLE;
            // SAFETY: the new table is zeroed; the barrier makes it
            // visible to the table walker before the descriptor is.
            unsafe {
                core::arch::asm!("dsb ishst");
                core::ptr::write_volatile(e, v);
            }
        }
        t = (v & ADDR) as *mut u64;
    }
    // SAFETY: `t` is the level-3 table for `va`.
    Some(unsafe { t.add(((va >> 12) & 511) as usize) })
}

/// Writes descriptor `e` and drops any old translation of `va`.
///
/// # Safety
/// `e` is the live level-3 descriptor for `va`.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
unsafe fn set(e: *mut u64, va: u64, v: u64) {
    // SAFETY: per the contract; invalidation has no other effect.
    unsafe {
        core::ptr::write_volatile(e, v);
        core::arch::asm!(
            "dsb ishst",
            "tlbi vaae1is, {}",
            "dsb ish",
            "isb",
            in(reg) (va >> 12) & ((1 << 44) - 1)
        );
    }
}

/// Maps the page at `va` to `frame` with `access` (None: nothing allowed,
/// the frame kept). False if a table could not be made.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn map(
    va: u64,
    frame: u64,
    access: Option<Access>,
    table: &mut dyn FnMut() -> Option<u64>,
) -> bool {
    debug_assert!(WINDOW.contains(&va));
    if access.is_some_and(|a| a.exec) {
        crate::mmu::sync_icache(frame, 4096);
    }
    // SAFETY: per the module's contract.
    match unsafe { entry(va, Some(table)) } {
        Some(e) => {
            // SAFETY: `e` is the live descriptor for `va`. An old valid
            // one is replaced only by lib/syscall after unmapping it
            // (break before make).
            unsafe { set(e, va, leaf(frame, access)) };
            true
        }
        None => false,
    }
}

/// Unmaps the page at `va`; returns its frame if it was mapped.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn unmap(va: u64) -> Option<u64> {
    // SAFETY: per the module's contract; no table is made.
    let e = unsafe { entry(va, None) }?;
    // SAFETY: `e` is the live descriptor for `va`.
    let v = unsafe { core::ptr::read_volatile(e) };
    if v & (VALID | KEPT) == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { set(e, va, 0) };
    Some(v & ADDR)
}

/// The first page in [va, end) whose descriptor is in use (mapped, or
/// kept with PROT_NONE), or None; missing tables are skipped whole.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn next_in_use(mut va: u64, end: u64) -> Option<u64> {
    'walk: while va < end {
        // The live level-1 table; only reads.
        let mut t = core::ptr::addr_of!(kiln_l1) as *const u64;
        for shift in [30u32, 21] {
            // SAFETY: `t` is a live table; only reads.
            let v = unsafe { core::ptr::read_volatile(t.add(((va >> shift) & 511) as usize)) };
            if v & VALID == 0 {
                va = (va | ((1u64 << shift) - 1)).checked_add(1)?;
                continue 'walk;
            }
            t = (v & ADDR) as *const u64;
        }
        loop {
            // SAFETY: `t` is the level-3 table for `va`; only reads.
            if unsafe { core::ptr::read_volatile(t.add(((va >> 12) & 511) as usize)) }
                & (VALID | KEPT)
                != 0
            {
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
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn protect(va: u64, access: Option<Access>) {
    // SAFETY: per the module's contract; no table is made.
    if let Some(e) = unsafe { entry(va, None) } {
        // SAFETY: `e` is the live descriptor for `va`.
        let v = unsafe { core::ptr::read_volatile(e) };
        if v & (VALID | KEPT) != 0 {
            if access.is_some_and(|a| a.exec) {
                crate::mmu::sync_icache(v & ADDR, 4096);
            }
            // SAFETY: as above.
            unsafe { set(e, va, leaf(v & ADDR, access)) };
        }
    }
}

/// The frame mapped at `va`, if any.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn frame(va: u64) -> Option<u64> {
    // SAFETY: per the module's contract; no table is made.
    let e = unsafe { entry(va, None) }?;
    // SAFETY: `e` is the live descriptor for `va`.
    let v = unsafe { core::ptr::read_volatile(e) };
    (v & (VALID | KEPT) != 0).then_some(v & ADDR)
}
