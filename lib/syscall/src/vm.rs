//! A program's virtual memory (x86_64): mappings are address ranges with
//! protections in [`WINDOW`], above the kernel's identity map; pages get
//! memory on first touch.
//!
//! - `mmap` only records an [`Area`]; anonymous pages are demand-zero (the
//!   page-fault hook maps a zeroed frame of the kernel heap when the
//!   program, or the kernel on its behalf, first touches one), so a
//!   PROT_NONE reservation or untouched memory costs nothing. File
//!   mappings are read in when made (private copies, never written back),
//!   except the pages of a file whose contents lie page-aligned in memory
//!   that lives as long as the kernel (the initrd): those are **lent**,
//!   mapped in place without write permission, and copied into a frame of
//!   the program's own on the first write (copy on write), so a shared
//!   library's code and read-only data cost no memory.
//! - `munmap`, `mprotect`, `mremap` and `madvise(DONTNEED)` work on any
//!   page-aligned part of a mapping, splitting areas; unmapped and dropped
//!   pages go back to the heap at once.
//! - Protections are the pages' own: code is executable and not writable,
//!   data and stacks never executable (W^X); a touch an area does not
//!   allow, or of no area, is a segmentation fault that ends the program
//!   with the address, never a kernel fault.
//! - Where things go is random (ASLR): `brk`, the mmap base (and so the
//!   program, its loader, libraries and stack, which the ELF loader maps
//!   through here) start at page-granular random offsets from lib/random.
//!
//! The bookkeeping ([`Space`]) is plain code over a [`Pager`], so it is
//! unit-tested on the host with a fake one.

use alloc::collections::BTreeMap;

pub const PAGE: u64 = 4096;
/// Program addresses: above the kernel's identity map, in the same page
/// tables (x86_64: PML4 entries 1-255; arm64, whose tables translate 39
/// bits: level-1 entries 64-511).
#[cfg(not(target_arch = "aarch64"))]
pub const WINDOW: core::ops::Range<u64> = 0x80_0000_0000..0x7fff_ffff_f000;
#[cfg(target_arch = "aarch64")]
pub const WINDOW: core::ops::Range<u64> = 0x10_0000_0000..0x80_0000_0000;
/// Where brk and the mmap base start (before their random offsets of up to
/// 4 GiB and, for the mmap base, `MMAP_RANDOM` pages).
#[cfg(not(target_arch = "aarch64"))]
const BASES: (u64, u64, u64) = (0x100_0000_0000, 0x200_0000_0000, 0xfff_ffff);
#[cfg(target_arch = "aarch64")]
const BASES: (u64, u64, u64) = (0x20_0000_0000, 0x40_0000_0000, 0xff_ffff);
/// Room a MAP_GROWSDOWN area keeps above the next mapping down (Linux's
/// stack guard gap, 256 pages).
const STACK_GAP: u64 = 256 * PAGE;
/// How far a MAP_GROWSDOWN area may grow (RLIMIT_STACK's default).
const STACK_MAX: u64 = 8 << 20;
/// Address space kept for `brk` to grow into.
const BRK_SPAN: u64 = 1 << 30;

pub const PROT_READ: u8 = 1;
pub const PROT_WRITE: u8 = 2;
pub const PROT_EXEC: u8 = 4;

/// One mapping: [start, end) with one protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub end: u64,
    pub prot: u8,
    /// MAP_GROWSDOWN: a touch in the gap below extends the area down.
    pub grows: bool,
    /// The process that made it ([`Space::owner`] then): 1 for the first
    /// program, another id for a program it started (crate::process).
    pub owner: u32,
}

/// The page-table side: frames and entries.
pub trait Pager {
    /// A zeroed frame, or None when memory is exhausted.
    fn frame(&mut self) -> Option<u64>;
    /// Gives a frame back.
    fn free(&mut self, frame: u64);
    /// Maps `va` to `frame` with `prot`; false if a table could not be made.
    fn map(&mut self, va: u64, frame: u64, prot: u8) -> bool;
    /// Unmaps `va`, returning its frame.
    fn unmap(&mut self, va: u64) -> Option<u64>;
    /// Changes a mapped page's protection.
    fn protect(&mut self, va: u64, prot: u8);
    /// The frame at `va`, if mapped.
    fn lookup(&self, va: u64) -> Option<u64>;
    /// Whether `frame` came from [`Pager::frame`] (false: it is lent,
    /// memory the space maps but never frees).
    fn owned(&self, _frame: u64) -> bool {
        true
    }
    /// Copies one page of memory from frame `from` to frame `to`.
    fn copy(&mut self, from: u64, to: u64);
    /// The first page at or after `va` and below `end` that may be mapped
    /// (None: none is); lets a large, mostly untouched range be dropped
    /// without looking at every page.
    fn next_in_use(&self, va: u64, end: u64) -> Option<u64> {
        (va < end).then_some(va)
    }
}

/// Errors, as Linux numbers them.
pub const ENOMEM: i64 = 12;
pub const EEXIST: i64 = 17;
pub const EINVAL: i64 = 22;

/// A program's address space.
pub struct Space {
    pub areas: BTreeMap<u64, Area>,
    /// Where `mmap` starts looking for room.
    pub mmap_base: u64,
    /// brk: start, current break.
    pub brk: (u64, u64),
    /// Pages with memory behind them.
    pub resident: u64,
    /// Device memory the kernel mapped inside the window (cloud-hypervisor
    /// puts PCI BARs just below 64 TiB): never the program's.
    pub devices: alloc::vec::Vec<(u64, u64)>,
    /// Who new areas belong to (set before each change by the caller).
    pub owner: u32,
}

/// Where a fault came from, for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    Read,
    Write,
    Exec,
}

fn up(v: u64) -> u64 {
    v.saturating_add(PAGE - 1) & !(PAGE - 1)
}

impl Space {
    /// An empty space whose brk and mmap base are placed by `random`
    /// (page offsets; 0 gives the lowest addresses).
    pub fn new(random: u64) -> Space {
        let brk = BASES.0 + (random & 0xf_ffff) * PAGE;
        let mmap_base = BASES.1 + ((random >> 20) & BASES.2) * PAGE;
        Space {
            areas: BTreeMap::new(),
            mmap_base,
            brk: (brk, brk),
            resident: 0,
            devices: alloc::vec::Vec::new(),
            owner: 1,
        }
    }

    /// The area holding `addr`.
    pub fn find(&self, addr: u64) -> Option<(u64, Area)> {
        self.areas
            .range(..=addr)
            .next_back()
            .filter(|(_, a)| addr < a.end)
            .map(|(&s, &a)| (s, a))
    }

    /// Whether any area (or device memory) overlaps [start, end).
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.on_device(start, end)
            || self
                .areas
                .range(..end)
                .next_back()
                .is_some_and(|(_, a)| a.end > start)
    }

    /// Whether [start, end) overlaps device memory.
    pub fn on_device(&self, start: u64, end: u64) -> bool {
        self.devices.iter().any(|&(s, e)| start < e && s < end)
    }

    /// Whether [start, end) is wholly covered by areas.
    pub fn covered(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.find(at) {
                Some((_, a)) => at = a.end,
                None => return false,
            }
        }
        true
    }

    /// Room for `len` bytes: at `hint` if that is free, else the first gap
    /// above the mmap base (never in brk's room).
    pub fn room(&self, hint: u64, len: u64) -> Option<u64> {
        let brk_end = self.brk.0 + BRK_SPAN;
        let clear_of_brk = |s: u64| s + len <= self.brk.0 || s >= brk_end;
        let in_window =
            |s: u64| s >= WINDOW.start && s.checked_add(len).is_some_and(|e| e <= WINDOW.end);
        if hint != 0
            && hint % PAGE == 0
            && in_window(hint)
            && clear_of_brk(hint)
            && !self.overlaps(hint, hint + len)
        {
            return Some(hint);
        }
        let mut at = self.mmap_base;
        loop {
            if !in_window(at) {
                return None;
            }
            if !clear_of_brk(at) {
                at = brk_end;
                continue;
            }
            if let Some(&(_, e)) = self.devices.iter().find(|&&(s, e)| at < e && s < at + len) {
                at = e;
                continue;
            }
            match self.areas.range(..at + len).next_back() {
                Some((_, a)) if a.end > at => at = a.end,
                _ => return Some(at),
            }
        }
    }

    /// Splits the area holding `at` so that an area starts there.
    fn split(&mut self, at: u64) {
        if let Some((s, a)) = self.find(at) {
            if s < at {
                self.areas.insert(s, Area { end: at, ..a });
                self.areas.insert(at, a);
            }
        }
    }

    /// Removes [start, end) from the areas and gives its pages back.
    pub fn remove(&mut self, p: &mut dyn Pager, start: u64, end: u64) {
        self.split(start);
        self.split(end);
        let gone: alloc::vec::Vec<u64> = self.areas.range(start..end).map(|(&s, _)| s).collect();
        for s in gone {
            let a = self.areas.remove(&s).unwrap();
            self.drop_pages(p, s, a.end);
        }
    }

    /// Gives back the pages of [start, end) (they read as zero again).
    /// Device memory is not the program's: a range touching it is left.
    pub fn drop_pages(&mut self, p: &mut dyn Pager, start: u64, end: u64) {
        if self.on_device(start, end) {
            return;
        }
        let mut va = start;
        while let Some(at) = p.next_in_use(va, end) {
            if let Some(f) = p.unmap(at) {
                if p.owned(f) {
                    p.free(f);
                    self.resident -= 1;
                }
            }
            va = at + PAGE;
        }
    }

    /// Records a mapping of [start, start + len) with `prot`, replacing
    /// whatever was there.
    pub fn insert(&mut self, p: &mut dyn Pager, start: u64, len: u64, prot: u8) {
        let end = start + up(len);
        self.remove(p, start, end);
        self.areas.insert(
            start,
            Area {
                end,
                prot,
                grows: false,
                owner: self.owner,
            },
        );
    }

    /// `mprotect`: ENOMEM if part of the range is not mapped.
    pub fn protect(
        &mut self,
        p: &mut dyn Pager,
        start: u64,
        len: u64,
        prot: u8,
    ) -> Result<(), i64> {
        let end = start + up(len);
        if !self.covered(start, end) {
            return Err(ENOMEM);
        }
        self.split(start);
        self.split(end);
        let keys: alloc::vec::Vec<u64> = self.areas.range(start..end).map(|(&s, _)| s).collect();
        for s in keys {
            let a = self.areas.get_mut(&s).unwrap();
            a.prot = prot;
            let e = a.end;
            let mut va = s;
            while va < e {
                // PROT_NONE (0) leaves nothing accessible; the contents stay.
                // A lent page stays read-only: a write copies it first.
                let lent = prot & PROT_WRITE != 0 && p.lookup(va).is_some_and(|f| !p.owned(f));
                p.protect(va, if lent { prot & !PROT_WRITE } else { prot });
                va += PAGE;
            }
        }
        Ok(())
    }

    /// A touch of `addr`: maps a zeroed page if an area allows it.
    pub fn fault(
        &mut self,
        p: &mut dyn Pager,
        addr: u64,
        touch: Touch,
    ) -> Result<(), &'static str> {
        let (_, a) = match self.find(addr) {
            Some(x) => x,
            None => self.grow_down_to(addr).ok_or("no mapping there")?,
        };
        let allowed = match touch {
            Touch::Read => a.prot & (PROT_READ | PROT_WRITE | PROT_EXEC) != 0,
            Touch::Write => a.prot & PROT_WRITE != 0,
            Touch::Exec => a.prot & PROT_EXEC != 0,
        };
        if !allowed {
            return Err("the mapping does not allow it");
        }
        let va = addr & !(PAGE - 1);
        if let Some(lent) = p.lookup(va) {
            if touch != Touch::Write || p.owned(lent) {
                return Err("the mapping does not allow it");
            }
            // The first write to a lent page: the program gets its own copy.
            let f = p.frame().ok_or("out of memory")?;
            p.copy(lent, f);
            p.unmap(va);
            if !p.map(va, f, a.prot) {
                p.free(f);
                return Err("out of memory");
            }
            self.resident += 1;
            return Ok(());
        }
        let f = p.frame().ok_or("out of memory")?;
        if !p.map(va, f, a.prot) {
            p.free(f);
            return Err("out of memory");
        }
        self.resident += 1;
        Ok(())
    }

    /// A touch at `addr` below a MAP_GROWSDOWN area (none holds it): the
    /// area extends down to its page, as Linux does, if that leaves a
    /// [`STACK_GAP`] above the next area down and the area stays within
    /// [`STACK_MAX`]. Returns the grown area.
    fn grow_down_to(&mut self, addr: u64) -> Option<(u64, Area)> {
        let (&start, &a) = self.areas.range(addr..).next()?;
        let to = addr & !(PAGE - 1);
        let below = self
            .areas
            .range(..to)
            .next_back()
            .map_or(WINDOW.start, |(_, b)| b.end);
        if !a.grows || a.end - to > STACK_MAX || to < below.saturating_add(STACK_GAP) {
            return None;
        }
        if self.on_device(to, start) {
            return None;
        }
        self.areas.remove(&start);
        self.areas.insert(to, a);
        Some((to, a))
    }

    /// Marks the area starting at `start` MAP_GROWSDOWN.
    pub fn set_grows(&mut self, start: u64) {
        if let Some(a) = self.areas.get_mut(&start) {
            a.grows = true;
        }
    }

    /// Maps `frame`, memory the space does not own (see [`Pager::owned`]),
    /// at `va` inside an area, without write permission whatever the area
    /// allows; false when a page table could not be made.
    pub fn lend(&mut self, p: &mut dyn Pager, va: u64, frame: u64) -> bool {
        let Some((_, a)) = self.find(va) else {
            return false;
        };
        if let Some(f) = p.unmap(va) {
            if p.owned(f) {
                p.free(f);
                self.resident -= 1;
            }
        }
        p.map(va, frame, a.prot & !PROT_WRITE)
    }

    /// Makes sure [start, end) has frames (for file contents written in
    /// through their frames); returns false when memory ran out.
    pub fn populate(&mut self, p: &mut dyn Pager, start: u64, end: u64) -> bool {
        let Some((_, a)) = self.find(start) else {
            return false;
        };
        let mut va = start & !(PAGE - 1);
        while va < end {
            if p.lookup(va).is_none() {
                let Some(f) = p.frame() else { return false };
                if !p.map(va, f, a.prot) {
                    p.free(f);
                    return false;
                }
                self.resident += 1;
            }
            va += PAGE;
        }
        true
    }

    /// `mremap` of [old, old + old_len) to `new_len`: in place when the
    /// room after it is free, else moved (`may_move`) by moving its pages.
    pub fn remap(
        &mut self,
        p: &mut dyn Pager,
        old: u64,
        old_len: u64,
        new_len: u64,
        may_move: bool,
    ) -> Result<u64, i64> {
        let (old_len, new_len) = (up(old_len), up(new_len));
        let Some((_, a)) = self.find(old) else {
            return Err(EINVAL);
        };
        if new_len <= old_len {
            self.remove(p, old + new_len, old + old_len);
            return Ok(old);
        }
        let (grow_from, grow_to) = (old + old_len, old + new_len);
        if grow_to <= WINDOW.end && !self.overlaps(grow_from, grow_to) {
            self.areas.insert(
                grow_from,
                Area {
                    end: grow_to,
                    prot: a.prot,
                    grows: false,
                    owner: self.owner,
                },
            );
            return Ok(old);
        }
        if !may_move {
            return Err(ENOMEM);
        }
        let new = self.room(0, new_len).ok_or(ENOMEM)?;
        self.move_to(p, old, old_len, new, new_len, a.prot);
        Ok(new)
    }

    /// `mremap` with MREMAP_FIXED: [old, old + old_len) moves to `new`
    /// (page-aligned, in the window, not overlapping the old range),
    /// replacing whatever was mapped there; its first `new_len` bytes keep
    /// their pages.
    pub fn remap_fixed(
        &mut self,
        p: &mut dyn Pager,
        old: u64,
        old_len: u64,
        new_len: u64,
        new: u64,
    ) -> Result<u64, i64> {
        let (old_len, new_len) = (up(old_len), up(new_len));
        let Some((_, a)) = self.find(old) else {
            return Err(EINVAL);
        };
        let fits = new % PAGE == 0
            && new >= WINDOW.start
            && new.checked_add(new_len).is_some_and(|e| e <= WINDOW.end);
        if !fits
            || (new < old + old_len && old < new + new_len)
            || self.on_device(new, new + new_len)
        {
            return Err(EINVAL);
        }
        self.remove(p, new, new + new_len);
        self.move_to(p, old, old_len, new, new_len, a.prot);
        Ok(new)
    }

    /// Makes [new, new + new_len) an area with `prot`, moves the pages of
    /// [old, old + min(old_len, new_len)) there and removes the old range.
    fn move_to(
        &mut self,
        p: &mut dyn Pager,
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
        prot: u8,
    ) {
        self.areas.insert(
            new,
            Area {
                end: new + new_len,
                prot,
                grows: false,
                owner: self.owner,
            },
        );
        let mut off = 0;
        while off < old_len.min(new_len) {
            if let Some(f) = p.unmap(old + off) {
                let owned = p.owned(f);
                let pr = if owned { prot } else { prot & !PROT_WRITE };
                if !p.map(new + off, f, pr) && owned {
                    p.free(f);
                    self.resident -= 1;
                }
            }
            off += PAGE;
        }
        self.remove(p, old, old + old_len);
    }

    /// Removes every area process `owner` made (it ended), giving its
    /// pages back.
    pub fn remove_owned(&mut self, p: &mut dyn Pager, owner: u32) {
        let gone: alloc::vec::Vec<(u64, u64)> = self
            .areas
            .iter()
            .filter(|(_, a)| a.owner == owner)
            .map(|(&s, a)| (s, a.end))
            .collect();
        for (s, e) in gone {
            self.remove(p, s, e);
        }
    }

    /// `brk`: moves the break (never below its start, at most BRK_SPAN);
    /// returns the break.
    pub fn set_brk(&mut self, p: &mut dyn Pager, want: u64) -> u64 {
        let (start, cur) = self.brk;
        if want < start || want > start + BRK_SPAN {
            return cur;
        }
        let (old_end, new_end) = (up(cur), up(want));
        if new_end > old_end {
            if self.overlaps(old_end, new_end) {
                return cur;
            }
            self.areas.insert(
                old_end,
                Area {
                    end: new_end,
                    prot: PROT_READ | PROT_WRITE,
                    grows: false,
                    owner: self.owner,
                },
            );
        } else if new_end < old_end {
            self.remove(p, new_end, old_end);
        }
        self.brk.1 = want;
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Default)]
    struct Fake {
        pages: BTreeMap<u64, (u64, u8)>,
        next: u64,
        freed: BTreeSet<u64>,
        limit: Option<usize>,
        copies: Vec<(u64, u64)>,
    }

    impl Pager for Fake {
        fn frame(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.pages.len() >= l) {
                return None;
            }
            self.next += PAGE;
            Some(self.next)
        }
        fn free(&mut self, f: u64) {
            assert!(self.freed.insert(f), "frame {f:#x} freed twice");
        }
        fn map(&mut self, va: u64, f: u64, prot: u8) -> bool {
            self.pages.insert(va, (f, prot));
            true
        }
        fn unmap(&mut self, va: u64) -> Option<u64> {
            self.pages.remove(&va).map(|x| x.0)
        }
        fn protect(&mut self, va: u64, prot: u8) {
            if let Some(e) = self.pages.get_mut(&va) {
                e.1 = prot;
            }
        }
        fn lookup(&self, va: u64) -> Option<u64> {
            self.pages.get(&va).map(|x| x.0)
        }
        fn owned(&self, f: u64) -> bool {
            f < LENT
        }
        fn copy(&mut self, from: u64, to: u64) {
            self.copies.push((from, to));
        }
    }

    /// Frames at or above this are lent (a file's pages in the initrd).
    const LENT: u64 = 1 << 40;

    const RW: u8 = PROT_READ | PROT_WRITE;

    #[test]
    fn a_reservation_costs_nothing_until_touched() {
        let (mut s, mut p) = (Space::new(0), Fake::default());
        let a = s.room(0, 512 << 20).unwrap();
        s.insert(&mut p, a, 512 << 20, 0);
        assert_eq!(s.resident, 0);
        assert_eq!(
            s.fault(&mut p, a + 5, Touch::Read),
            Err("the mapping does not allow it")
        );
        s.protect(&mut p, a + PAGE, 2 * PAGE, RW).unwrap();
        s.fault(&mut p, a + PAGE + 9, Touch::Write).unwrap();
        assert_eq!(s.resident, 1);
        assert_eq!(p.pages[&(a + PAGE)].1, RW);
        assert_eq!(
            s.fault(&mut p, a + 3 * PAGE, Touch::Write),
            Err("the mapping does not allow it")
        );
        assert_eq!(s.areas.len(), 3, "split into none, rw, none");
    }

    #[test]
    fn partial_munmap_gives_pages_back_and_splits() {
        let (mut s, mut p) = (Space::new(7), Fake::default());
        let a = s.room(0, 16 * PAGE).unwrap();
        s.insert(&mut p, a, 16 * PAGE, RW);
        for i in 0..16 {
            s.fault(&mut p, a + i * PAGE, Touch::Write).unwrap();
        }
        s.remove(&mut p, a + 4 * PAGE, a + 12 * PAGE);
        assert_eq!(s.resident, 8);
        assert_eq!(p.freed.len(), 8);
        assert!(s.find(a + 3 * PAGE).is_some());
        assert!(s.find(a + 4 * PAGE).is_none());
        assert!(s.find(a + 12 * PAGE).is_some());
        assert_eq!(
            s.fault(&mut p, a + 5 * PAGE, Touch::Read),
            Err("no mapping there")
        );
        // The hole is found again by the next mapping of that size.
        assert!(s.room(0, 8 * PAGE).is_some());
        assert_eq!(
            s.room(a + 4 * PAGE, 8 * PAGE),
            Some(a + 4 * PAGE),
            "a free hint is honoured"
        );
        assert_eq!(
            s.room(a + 3 * PAGE, 2 * PAGE).map(|x| x == a + 3 * PAGE),
            Some(false)
        );
    }

    #[test]
    fn mremap_grows_in_place_or_moves_its_pages() {
        let (mut s, mut p) = (Space::new(0), Fake::default());
        let a = s.room(0, 2 * PAGE).unwrap();
        s.insert(&mut p, a, 2 * PAGE, RW);
        s.fault(&mut p, a, Touch::Write).unwrap();
        let f = p.lookup(a).unwrap();
        assert_eq!(s.remap(&mut p, a, 2 * PAGE, 4 * PAGE, false), Ok(a));
        // Something right after it: growing must move.
        s.insert(&mut p, a + 4 * PAGE, PAGE, RW);
        assert_eq!(s.remap(&mut p, a, 4 * PAGE, 8 * PAGE, false), Err(ENOMEM));
        let b = s.remap(&mut p, a, 4 * PAGE, 8 * PAGE, true).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.lookup(b), Some(f), "the page moved, not copied");
        assert!(s.find(a).is_none());
        assert_eq!(s.resident, 1);
        // MREMAP_FIXED: onto an address of the program's choosing,
        // replacing what was there; never onto itself.
        let c = s.room(0, 16 * PAGE).unwrap();
        s.insert(&mut p, c, 16 * PAGE, RW);
        s.fault(&mut p, c, Touch::Write).unwrap();
        assert_eq!(
            s.remap_fixed(&mut p, b, 8 * PAGE, 2 * PAGE, b + PAGE),
            Err(EINVAL)
        );
        assert_eq!(s.remap_fixed(&mut p, b, 8 * PAGE, 2 * PAGE, c), Ok(c));
        assert_eq!(
            p.lookup(c),
            Some(f),
            "the moved page replaced the one there"
        );
        assert!(s.find(b).is_none());
        assert_eq!(s.find(c).map(|(_, a)| a.end), Some(c + 2 * PAGE));
        assert_eq!(s.resident, 1);
    }

    #[test]
    fn brk_grows_and_shrinks_and_random_bases_differ() {
        let (mut s, mut p) = (Space::new(0x1234_5678), Fake::default());
        let b = s.brk.0;
        assert_eq!(s.set_brk(&mut p, b + 10 * PAGE), b + 10 * PAGE);
        s.fault(&mut p, b + 9 * PAGE, Touch::Write).unwrap();
        assert_eq!(s.set_brk(&mut p, b + PAGE), b + PAGE);
        assert_eq!(s.resident, 0);
        assert_eq!(s.set_brk(&mut p, b - 1), b + PAGE, "never below its start");
        assert_ne!(Space::new(1).mmap_base, Space::new(1 << 20).mmap_base);
        // Device memory in the window is never handed out.
        let mut d = Space::new(0);
        let base = d.mmap_base;
        d.devices.push((base, base + (2 << 20)));
        assert_eq!(d.room(base, PAGE), Some(base + (2 << 20)));
        assert_eq!(d.room(0, PAGE), Some(base + (2 << 20)));
        assert!(d.overlaps(base + PAGE, base + 2 * PAGE));
        assert_ne!(Space::new(1).brk.0, Space::new(2).brk.0);
        // mmap never lands in brk's room.
        let r = s.room(b + 2 * PAGE, PAGE).unwrap();
        assert!(r >= b + BRK_SPAN || r + PAGE <= b);
    }

    #[test]
    fn lent_pages_are_read_only_copied_on_write_and_never_freed() {
        let (mut s, mut p) = (Space::new(0), Fake::default());
        let a = s.room(0, 4 * PAGE).unwrap();
        s.insert(&mut p, a, 4 * PAGE, RW);
        for i in 0..3 {
            assert!(s.lend(&mut p, a + i * PAGE, LENT + i * PAGE));
        }
        assert_eq!(s.resident, 0, "lent pages cost nothing");
        assert_eq!(p.pages[&a].1, PROT_READ, "mapped without write");
        // Reading a lent page is not a fault to serve; writing copies it.
        assert_eq!(
            s.fault(&mut p, a, Touch::Read),
            Err("the mapping does not allow it")
        );
        s.fault(&mut p, a + PAGE, Touch::Write).unwrap();
        let own = p.lookup(a + PAGE).unwrap();
        assert!(own < LENT);
        assert_eq!(p.copies, [(LENT + PAGE, own)]);
        assert_eq!(p.pages[&(a + PAGE)].1, RW);
        assert_eq!(s.resident, 1);
        // mprotect keeps lent pages read-only; PROT_NONE hides them.
        s.protect(&mut p, a, 3 * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC)
            .unwrap();
        assert_eq!(p.pages[&a].1, PROT_READ | PROT_EXEC);
        assert_eq!(p.pages[&(a + PAGE)].1, PROT_READ | PROT_WRITE | PROT_EXEC);
        // Moving keeps them lent; unmapping frees only the owned one.
        let b = s.remap(&mut p, a, 4 * PAGE, 64 * PAGE, true).unwrap();
        s.insert(&mut p, a, PAGE, RW);
        assert_eq!(p.lookup(b + 2 * PAGE), Some(LENT + 2 * PAGE));
        assert_eq!(p.pages[&(b + 2 * PAGE)].1, PROT_READ | PROT_EXEC);
        s.remove(&mut p, b, b + 64 * PAGE);
        assert_eq!(p.freed.iter().copied().collect::<Vec<_>>(), [own]);
        assert_eq!(s.resident, 0);
    }

    #[test]
    fn a_growsdown_area_extends_on_a_touch_below_it() {
        let (mut s, mut p) = (Space::new(0), Fake::default());
        let a = s.room(0, 64 * PAGE).unwrap() + 32 * PAGE;
        s.insert(&mut p, a, PAGE, RW);
        s.set_grows(a);
        s.fault(&mut p, a - 8 * PAGE + 5, Touch::Write).unwrap();
        assert_eq!(
            s.find(a - 8 * PAGE).map(|(st, ar)| (st, ar.end)),
            Some((a - 8 * PAGE, a + PAGE))
        );
        // Not past 8 MiB, and not into the guard gap above another area.
        assert_eq!(
            s.fault(&mut p, a - (9 << 20), Touch::Write),
            Err("no mapping there")
        );
        let low = a - (4 << 20);
        s.insert(&mut p, low, PAGE, RW);
        assert_eq!(
            s.fault(&mut p, low + PAGE + 5, Touch::Write),
            Err("no mapping there")
        );
        s.fault(&mut p, low + PAGE + STACK_GAP, Touch::Write)
            .unwrap();
        // An ordinary area does not grow.
        let b = s.room(0, PAGE).unwrap() + 64 * PAGE;
        s.insert(&mut p, b, PAGE, RW);
        assert_eq!(
            s.fault(&mut p, b - 1, Touch::Write),
            Err("no mapping there")
        );
    }

    #[test]
    fn exhausted_memory_is_an_error_not_a_crash() {
        let (mut s, mut p) = (
            Space::new(0),
            Fake {
                limit: Some(2),
                ..Default::default()
            },
        );
        let a = s.room(0, 4 * PAGE).unwrap();
        s.insert(&mut p, a, 4 * PAGE, RW);
        s.fault(&mut p, a, Touch::Write).unwrap();
        s.fault(&mut p, a + PAGE, Touch::Write).unwrap();
        assert_eq!(
            s.fault(&mut p, a + 2 * PAGE, Touch::Write),
            Err("out of memory")
        );
        assert_eq!(
            s.fault(&mut p, a + 2 * PAGE, Touch::Exec),
            Err("the mapping does not allow it")
        );
    }
}
