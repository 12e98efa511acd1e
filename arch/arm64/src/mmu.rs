//! Changes to the boot page tables (`entry.S` builds them: one level-1
//! table, four level-2 tables of 2 MiB blocks covering 4 GiB, and level-3
//! tables for the kernel image's blocks), for Linux programs and for the
//! guard pages below threads' stacks (a 2 MiB block is split into 4 KiB
//! pages for one).

/// Descriptor bits.
const VALID: u64 = 1;
const TABLE_OR_PAGE: u64 = 2;
const ATTR_MASK: u64 = 7 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// End of QEMU virt's flash window (device memory in the boot map).
const FLASH_END: u64 = 128 << 20;
/// A 2 MiB block of normal memory: access flag, inner shareable, read,
/// write and execute.
const NORMAL_BLOCK: u64 = VALID | ATTR_NORMAL | (3 << 8) | (1 << 10);

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
extern "C" {
    static mut kiln_l2: [u64; 2048];
    static mut kiln_l3: [u64; 8 * 512];
}

/// Makes the TLB forget old translations after a table change.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn flush() {
    // SAFETY: barriers and a TLB invalidation have no other effect.
    unsafe { core::arch::asm!("dsb ishst", "tlbi vmalle1", "dsb ish", "isb") }
}

/// Makes RAM outside the kernel image executable (Linux programs and
/// their libraries are loaded into heap memory): the 2 MiB blocks of
/// normal memory, and the 4 KiB pages past the kernel image's end. W^X then
/// covers the kernel image only.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn ram_executable() {
    let end = crate::layout::kernel_end() as u64;
    // SAFETY: the tables are the live boot tables; clearing the
    // never-execute bits of normal-memory entries changes no mapping's
    // address or writability, and the flush makes the change visible.
    unsafe {
        let l2 = &mut *core::ptr::addr_of_mut!(kiln_l2);
        for e in l2.iter_mut() {
            let v = core::ptr::read_volatile(e);
            if v & (VALID | TABLE_OR_PAGE) == VALID && v & ATTR_MASK == ATTR_NORMAL {
                core::ptr::write_volatile(e, v & !(PXN | UXN));
            }
        }
        // Level-3 tables: the kernel image's (kiln_l3) and blocks split
        // for guard pages.
        for i in 0..l2.len() {
            let t = core::ptr::read_volatile(&l2[i]);
            if t & (VALID | TABLE_OR_PAGE) != VALID | TABLE_OR_PAGE {
                continue;
            }
            let l3 = (t & ADDR) as *mut u64;
            for j in 0..512 {
                let e = l3.add(j);
                let v = core::ptr::read_volatile(e);
                let addr = v & ADDR;
                if v & (VALID | TABLE_OR_PAGE) == VALID | TABLE_OR_PAGE
                    && v & ATTR_MASK == ATTR_NORMAL
                    && addr >= end
                {
                    core::ptr::write_volatile(e, v & !(PXN | UXN));
                }
            }
        }
    }
    flush();
}

/// Maps the 2 MiB block at virtual address `va` to RAM at `pa` (both 2 MiB
/// aligned, below 4 GiB), readable, writable and executable: where a Linux
/// program linked at a fixed address that is not RAM here (0x200000,
/// 0x400000) is placed. Taken only where nothing is mapped, or where the
/// boot map put device memory below 128 MiB (on QEMU virt that is the
/// flash window, which Kiln does not use); false otherwise.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn map_block(va: u64, pa: u64) -> bool {
    const BLOCK: u64 = 2 << 20;
    if !va.is_multiple_of(BLOCK) || !pa.is_multiple_of(BLOCK) || va >= 4 << 30 {
        return false;
    }
    // SAFETY: the entry is in the live level-2 tables and was unused (so
    // nothing relies on the address being unmapped but the program).
    unsafe {
        let l2 = &mut *core::ptr::addr_of_mut!(kiln_l2);
        let e = &mut l2[(va / BLOCK) as usize];
        let old = core::ptr::read_volatile(e);
        let device = old & (VALID | TABLE_OR_PAGE) == VALID && old & ATTR_MASK == 0;
        if old != 0 && !(device && va < FLASH_END) {
            return false;
        }
        core::ptr::write_volatile(e, pa | NORMAL_BLOCK);
    }
    flush();
    true
}

/// The address bits of a table or page descriptor.
const ADDR: u64 = 0x0000_ffff_ffff_f000;

/// The level-3 descriptor that maps RAM address `addr`, splitting its
/// 2 MiB block of normal memory into 4 KiB pages with the same attributes
/// (in the table `new_table()` gives: zeroed, 4 KiB-aligned, kept for
/// good). None outside the first 4 GiB's normal memory.
///
/// # Safety
/// One CPU; `addr` is RAM the caller owns; a table `new_table` returns is
/// a zeroed, 4 KiB-aligned page nothing else uses.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
unsafe fn page_entry(addr: u64, new_table: impl FnOnce() -> Option<u64>) -> Option<*mut u64> {
    const BLOCK: u64 = 2 << 20;
    if addr >= 4 << 30 {
        return None;
    }
    // SAFETY: per the contract; the tables are the live boot tables.
    unsafe {
        let l2 = &mut *core::ptr::addr_of_mut!(kiln_l2);
        let e = &mut l2[(addr / BLOCK) as usize];
        let v = core::ptr::read_volatile(e);
        if v & VALID == 0 || v & ATTR_MASK != ATTR_NORMAL && v & TABLE_OR_PAGE == 0 {
            return None;
        }
        if v & TABLE_OR_PAGE == 0 {
            // A block: its attributes go to each page (page descriptors
            // have bits 1:0 = 0b11 where blocks have 0b01).
            let t = new_table()?;
            let base = v & 0x0000_ffff_ffe0_0000;
            let attrs = v & !0x0000_ffff_ffff_f000 & !3;
            let pt = t as *mut u64;
            for i in 0..512u64 {
                core::ptr::write_volatile(
                    pt.add(i as usize),
                    (base + i * 4096) | attrs | VALID | TABLE_OR_PAGE,
                );
            }
            core::arch::asm!("dsb ishst");
            core::ptr::write_volatile(e, t | VALID | TABLE_OR_PAGE);
            flush();
        }
        let t = core::ptr::read_volatile(e) & ADDR;
        Some((t as *mut u64).add(((addr % BLOCK) / 4096) as usize))
    }
}

/// Unmaps the 4 KiB page at `addr` (aligned RAM the caller owns) so that
/// touching it faults: the guard page below a thread's stack. `new_table`
/// gives a level-3 table if a block must be split. False where the memory
/// cannot be split (outside the first 4 GiB) or no table was given.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn guard_page(addr: u64, new_table: impl FnOnce() -> Option<u64>) -> bool {
    // SAFETY: the caller owns the page; only its valid bit changes.
    unsafe {
        let Some(e) = page_entry(addr, new_table) else {
            return false;
        };
        core::ptr::write_volatile(e, core::ptr::read_volatile(e) & !VALID);
    }
    flush();
    true
}

/// W^X for a fixed-address program's memory: the pages of [addr, addr +
/// len) (in blocks [`map_block`] mapped, split into 4 KiB pages with
/// tables from `new_table`) become writable or read-only and executable or
/// not as asked. False where a block could not be split.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn protect_pages(
    addr: u64,
    len: u64,
    write: bool,
    exec: bool,
    mut new_table: impl FnMut() -> Option<u64>,
) -> bool {
    const RO: u64 = 1 << 7;
    let mut a = addr & !0xfff;
    while a < addr + len {
        // SAFETY: the caller's memory; only the permission bits change.
        unsafe {
            let Some(e) = page_entry(a, &mut new_table) else {
                return false;
            };
            let v = core::ptr::read_volatile(e) & !(RO | PXN | UXN);
            let v = v | UXN | if write { 0 } else { RO } | if exec { 0 } else { PXN };
            core::ptr::write_volatile(e, v);
        }
        a += 4096;
    }
    flush();
    true
}

/// Maps a page [`guard_page`] unmapped again.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn unguard_page(addr: u64) {
    // SAFETY: as for guard_page; the table exists already.
    unsafe {
        if let Some(e) = page_entry(addr, || None) {
            // Executable or not as its neighbour is (ram_executable may
            // have run while it was unmapped).
            let i = ((addr % (2 << 20)) / 4096) as usize;
            let next = if i < 511 { e.add(1) } else { e.sub(1) };
            let x = core::ptr::read_volatile(next) & (PXN | UXN);
            let v = core::ptr::read_volatile(e) & !(PXN | UXN);
            core::ptr::write_volatile(e, v | x | VALID);
        }
    }
    flush();
}

/// Makes instructions just written to memory visible to instruction
/// fetch (clean the data cache to the point of unification, invalidate
/// the instruction cache).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn sync_icache(start: u64, len: u64) {
    let line = 64;
    let (lo, hi) = (start & !(line - 1), start + len);
    // SAFETY: cache maintenance by address on mapped memory changes no data.
    unsafe {
        let mut a = lo;
        while a < hi {
            core::arch::asm!("dc cvau, {}", in(reg) a);
            a += line;
        }
        core::arch::asm!("dsb ish");
        let mut a = lo;
        while a < hi {
            core::arch::asm!("ic ivau, {}", in(reg) a);
            a += line;
        }
        core::arch::asm!("dsb ish", "isb");
    }
}
