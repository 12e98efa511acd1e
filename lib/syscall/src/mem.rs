//! Program memory.
//!
//! A program's memory is virtual and demand-paged ([`crate::vm`], on
//! x86_64 and arm64 alike): every call here works on page ranges of its
//! address space, and the page-fault hook brings pages in. Addresses
//! outside that window are the fixed-address programs' own (RAM the
//! platform keeps for them on x86_64, heap blocks mapped at their
//! addresses on arm64), where `MAP_FIXED` fills in place with the
//! heap-block implementation below (`brk` grows a reserved area, `mmap`
//! hands out zeroed, page-aligned blocks; a block is freed when the whole
//! of it is unmapped).

#![allow(dead_code)]

use crate::{errno, vfs_err, Sys};
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::collections::BTreeMap;
use kiln_vfs::vfs;

struct Memory {
    /// brk area: start, current break, end.
    brk: (u64, u64, u64),
    /// mmap blocks: address -> size.
    maps: BTreeMap<u64, u64>,
}

static MEM: spin::Mutex<Memory> = spin::Mutex::new(Memory {
    brk: (0, 0, 0),
    maps: BTreeMap::new(),
});

/// Size of the area `brk` grows in: 16 MiB, or an eighth of the free heap
/// when that is less (at least 1 MiB). Past it, C libraries' malloc uses
/// mmap.
fn brk_area() -> u64 {
    let free = kiln_boot::heap_stats().map_or(u64::MAX, |h| (h.total - h.in_use) as u64);
    (free / 8).clamp(1 << 20, 16 << 20) & !0xfff
}

/// The most memory the program has held (KiB) and the page faults that
/// brought memory in, for getrusage.
pub(crate) fn usage() -> (u64, u64) {
    paged::usage()
}

const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED_NOREPLACE: u64 = 0x100000;
/// A stack that extends down when touched below.
const MAP_GROWSDOWN: u64 = 0x100;

fn page_layout(len: u64) -> Option<Layout> {
    Layout::from_size_align(len.max(1).next_multiple_of(4096) as usize, 4096).ok()
}

impl Memory {
    /// Whether [addr, addr + len) lies inside memory the program has.
    fn owns(&self, addr: u64, len: u64) -> bool {
        self.maps
            .range(..=addr)
            .next_back()
            .is_some_and(|(&a, &s)| addr + len <= a + s)
            || (addr >= self.brk.0 && addr + len <= self.brk.2)
    }
}

/// Reads a file's bytes at `off` into `buf` (zero past its end).
fn fill_from(fd: i64, buf: &mut [u8], off: u64) -> Result<(), i64> {
    let d = crate::fd::get(fd)?;
    let crate::fd::Kind::File(f) = &d.kind else {
        return Err(errno::EINVAL);
    };
    let n = vfs().pread(f.0, buf, off).map_err(vfs_err)?;
    buf[n..].fill(0);
    Ok(())
}

fn mmap(addr: u64, len: u64, flags: u64, fd: i64, off: u64) -> Sys {
    if len == 0 || !off.is_multiple_of(4096) {
        return Err(errno::EINVAL);
    }
    let mut m = MEM.lock();
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
        // Only inside memory the program already has (how a dynamic loader
        // lays out a library in the reservation it made, and how musl
        // guards its brk area): the pages exist; fill them in.
        if !m.owns(addr, len) {
            return Err(errno::ENOMEM);
        }
        drop(m);
        // SAFETY: [addr, addr + len) lies inside memory the program owns.
        let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
        if flags & MAP_ANONYMOUS != 0 {
            buf.fill(0);
        } else {
            fill_from(fd, buf, off)?;
            // A library's code, placed by the dynamic loader.
            crate::arch::code_written(addr, len);
        }
        return Ok(addr as i64);
    }
    let layout = page_layout(len).ok_or(errno::EINVAL)?;
    // SAFETY: a fresh, zeroed allocation of a non-zero size.
    let p = unsafe { alloc_zeroed(layout) } as u64;
    if p == 0 {
        return Err(errno::ENOMEM);
    }
    m.maps.insert(p, layout.size() as u64);
    drop(m);
    if flags & MAP_ANONYMOUS == 0 {
        // SAFETY: the block was just allocated with at least `len` bytes.
        let buf = unsafe { core::slice::from_raw_parts_mut(p as *mut u8, len as usize) };
        if let Err(e) = fill_from(fd, buf, off) {
            let _ = munmap(p, len);
            return Err(e);
        }
        crate::arch::code_written(p, len);
    }
    Ok(p as i64)
}

fn munmap(addr: u64, len: u64) -> Sys {
    if !addr.is_multiple_of(4096) {
        return Err(errno::EINVAL);
    }
    let mut m = MEM.lock();
    let whole = m
        .maps
        .get(&addr)
        .is_some_and(|&s| len.next_multiple_of(4096) >= s);
    if whole {
        let size = m.maps.remove(&addr).unwrap();
        drop(m);
        // SAFETY: allocated by `mmap` with this size and page alignment,
        // and no longer recorded, so never freed twice.
        unsafe {
            dealloc(
                addr as *mut u8,
                Layout::from_size_align_unchecked(size as usize, 4096),
            )
        };
    }
    Ok(0)
}

fn mremap(old: u64, old_len: u64, new_len: u64, flags: u64) -> Sys {
    const MREMAP_MAYMOVE: u64 = 1;
    let size = MEM.lock().maps.get(&old).copied().ok_or(errno::EFAULT)?;
    if new_len <= size {
        return Ok(old as i64);
    }
    if flags & MREMAP_MAYMOVE == 0 {
        return Err(errno::ENOMEM);
    }
    let new = mmap(0, new_len, MAP_ANONYMOUS, -1, 0)? as u64;
    // SAFETY: both blocks are the program's; the old one holds `size` bytes
    // and the new one at least `new_len` > `size`.
    unsafe {
        core::ptr::copy_nonoverlapping(old as *const u8, new as *mut u8, old_len.min(size) as usize)
    };
    munmap(old, size)?;
    Ok(new as i64)
}

fn madvise(addr: u64, len: u64, advice: u64) -> Sys {
    const MADV_DONTNEED: u64 = 4;
    if advice == MADV_DONTNEED && MEM.lock().owns(addr, len) {
        // Private anonymous pages read as zero afterwards (allocators count
        // on it).
        // SAFETY: the range lies inside memory the program owns.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) };
    }
    Ok(0)
}

fn brk(want: u64) -> Sys {
    let mut m = MEM.lock();
    if m.brk.0 == 0 {
        let area = brk_area();
        let Some(layout) = page_layout(area) else {
            return Ok(0);
        };
        // SAFETY: a fresh, zeroed allocation of a non-zero size.
        let p = unsafe { alloc_zeroed(layout) } as u64;
        if p == 0 {
            return Ok(0);
        }
        m.brk = (p, p, p + area);
    }
    if want >= m.brk.0 && want <= m.brk.2 {
        m.brk.1 = want;
    }
    Ok(m.brk.1 as i64)
}

/// The memory calls; None if `nr` is not one.
pub(crate) fn call(nr: u64, a: [u64; 6]) -> Option<Sys> {
    Some(match nr {
        9 => {
            if a[0] % 4096 == 0
                && a[3] & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0
                && !crate::vm::WINDOW.contains(&a[0])
            {
                mmap(a[0], a[1], a[3], a[4] as i64, a[5])
            } else {
                paged::mmap(a[0], a[1], a[2] as u8, a[3], a[4] as i64, a[5])
            }
        }
        11 => paged::munmap(a[0], a[1]),
        12 => Ok(paged::brk(a[0]) as i64),
        10 => paged::mprotect(a[0], a[1], a[2] as u8),
        25 => paged::mremap(a[0], a[1], a[2], a[3], a[4]),
        28 => paged::madvise(a[0], a[1], a[2]),
        // mlock, munlock, mlockall, munlockall, msync, membarrier.
        149 | 150 | 151 | 152 | 26 | 324 => Ok(0),
        _ => return None,
    })
}

/// Demand-paged memory: the system calls over [`crate::vm::Space`] and
/// the page-fault hook.
pub mod paged {
    use super::{fill_from, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN};
    #[cfg_attr(not(target_os = "none"), allow(unused_imports))]
    use crate::vm::{Pager, Space, Touch, PAGE, PROT_EXEC, PROT_READ, PROT_WRITE, WINDOW};
    use crate::{errno, Sys};
    use alloc::alloc::{alloc, dealloc, Layout};
    use alloc::collections::{BTreeMap, BTreeSet};
    use core::sync::atomic::{AtomicU64, Ordering};
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    use kiln_arch_arm64::paging as pt;
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    use kiln_arch_x86_64::paging as pt;

    static SPACE: spin::Mutex<Option<Space>> = spin::Mutex::new(None);

    /// Frames in use now and at most, and faults served (for getrusage).
    static RESIDENT: AtomicU64 = AtomicU64::new(0);
    static PEAK: AtomicU64 = AtomicU64::new(0);
    static FAULTS: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn usage() -> (u64, u64) {
        (
            PEAK.load(Ordering::Relaxed) * PAGE / 1024,
            FAULTS.load(Ordering::Relaxed),
        )
    }

    /// Frames from the kernel heap, page tables in the live tables.
    struct Kernel;

    /// Frames come from the heap in chunks of [`CHUNK`] pages (a
    /// page-aligned heap block costs up to a page of padding, so one per
    /// frame would double the cost); a chunk goes back to the heap as soon
    /// as all its frames are free.
    const CHUNK: u64 = 16;

    struct Frames {
        /// Chunk start -> bitmask of its free frames.
        chunks: BTreeMap<u64, u16>,
        /// Chunks with a free frame.
        partial: BTreeSet<u64>,
    }

    static FRAMES: spin::Mutex<Frames> = spin::Mutex::new(Frames {
        chunks: BTreeMap::new(),
        partial: BTreeSet::new(),
    });

    const CHUNK_LAYOUT: Layout = match Layout::from_size_align((CHUNK * PAGE) as usize, 4096) {
        Ok(l) => l,
        Err(_) => panic!(),
    };

    fn zeroed_frame() -> Option<u64> {
        let mut f = FRAMES.lock();
        let c = match f.partial.first() {
            Some(&c) => c,
            None => {
                // SAFETY: a fresh allocation of a non-zero size.
                let p = unsafe { alloc(CHUNK_LAYOUT) } as u64;
                if p == 0 {
                    return None;
                }
                f.chunks.insert(p, u16::MAX);
                f.partial.insert(p);
                p
            }
        };
        let mask = f.chunks.get_mut(&c).unwrap();
        let i = mask.trailing_zeros() as u64;
        *mask &= !(1 << i);
        if *mask == 0 {
            f.partial.remove(&c);
        }
        drop(f);
        let now = RESIDENT.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(now, Ordering::Relaxed);
        let frame = c + i * PAGE;
        // SAFETY: the frame is one page of a chunk this pool owns, handed
        // out to nobody else.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
        Some(frame)
    }

    /// The chunk `frame` belongs to, if it is one of the pool's.
    fn chunk_of(f: &Frames, frame: u64) -> Option<u64> {
        f.chunks
            .range(..=frame)
            .next_back()
            .map(|(&c, _)| c)
            .filter(|&c| frame < c + CHUNK * PAGE)
    }

    fn free_frame(frame: u64) {
        let mut f = FRAMES.lock();
        let Some(c) = chunk_of(&f, frame) else {
            return;
        };
        RESIDENT.fetch_sub(1, Ordering::Relaxed);
        let i = (frame - c) / PAGE;
        let mask = f.chunks.get_mut(&c).unwrap();
        *mask |= 1 << i;
        if *mask == u16::MAX {
            f.chunks.remove(&c);
            f.partial.remove(&c);
            // SAFETY: the chunk came from `alloc(CHUNK_LAYOUT)` and none of
            // its frames is in use any more.
            unsafe { dealloc(c as *mut u8, CHUNK_LAYOUT) };
        } else {
            f.partial.insert(c);
        }
    }

    #[cfg(target_os = "none")]
    fn access(prot: u8) -> Option<pt::Access> {
        (prot & (PROT_READ | PROT_WRITE | PROT_EXEC) != 0).then_some(pt::Access {
            write: prot & PROT_WRITE != 0,
            exec: prot & PROT_EXEC != 0,
        })
    }

    impl Pager for Kernel {
        fn frame(&mut self) -> Option<u64> {
            zeroed_frame()
        }
        fn free(&mut self, f: u64) {
            free_frame(f)
        }
        fn owned(&self, frame: u64) -> bool {
            chunk_of(&FRAMES.lock(), frame).is_some()
        }
        fn copy(&mut self, from: u64, to: u64) {
            // SAFETY: both are identity-mapped pages: `to` a frame of the
            // pool handed to nobody else, `from` memory that lives as long
            // as the kernel (a lent file page); they never overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, PAGE as usize)
            }
        }

        #[cfg(target_os = "none")]
        fn map(&mut self, va: u64, f: u64, prot: u8) -> bool {
            pt::map(va, f, access(prot), &mut zeroed_frame)
        }
        #[cfg(target_os = "none")]
        fn unmap(&mut self, va: u64) -> Option<u64> {
            pt::unmap(va)
        }
        #[cfg(target_os = "none")]
        fn next_in_use(&self, va: u64, end: u64) -> Option<u64> {
            pt::next_in_use(va, end)
        }
        #[cfg(target_os = "none")]
        fn protect(&mut self, va: u64, prot: u8) {
            pt::protect(va, access(prot))
        }
        #[cfg(target_os = "none")]
        fn lookup(&self, va: u64) -> Option<u64> {
            pt::frame(va)
        }
        #[cfg(not(target_os = "none"))]
        fn map(&mut self, _: u64, _: u64, _: u8) -> bool {
            false
        }
        #[cfg(not(target_os = "none"))]
        fn unmap(&mut self, _: u64) -> Option<u64> {
            None
        }
        #[cfg(not(target_os = "none"))]
        fn protect(&mut self, _: u64, _: u8) {}
        #[cfg(not(target_os = "none"))]
        fn lookup(&self, _: u64) -> Option<u64> {
            None
        }
    }

    /// Runs `f` on the program's address space (made on first use, its
    /// bases placed at random).
    fn with<R>(f: impl FnOnce(&mut Space) -> R) -> R {
        let mut g = SPACE.lock();
        let s = g.get_or_insert_with(|| {
            // Pages come in on first touch from here on.
            #[cfg(all(target_arch = "x86_64", target_os = "none"))]
            kiln_arch_x86_64::set_page_fault_hook(page_fault);
            #[cfg(all(target_arch = "aarch64", target_os = "none"))]
            kiln_arch_arm64::set_page_fault_hook(page_fault);
            #[allow(unused_mut)]
            let mut s = Space::new(crate::random_u64());
            #[cfg(all(target_arch = "x86_64", target_os = "none"))]
            s.devices.extend(kiln_arch_x86_64::mmu::high_devices());
            s
        });
        // New areas belong to the calling thread's program.
        s.owner = crate::process::pid();
        f(s)
    }

    /// A program started by another one ended: its memory goes back.
    pub(crate) fn forget_process(pid: u32) {
        with(|s| s.remove_owned(&mut Kernel, pid));
    }

    /// Room for a started program's brk: `len` bytes nobody uses, at a
    /// random place.
    pub(crate) fn fresh_room(len: u64) -> Option<u64> {
        with(|s| {
            let r = crate::random_u64() & 0xffff;
            s.room(s.mmap_base + r * (1 << 20), len)
                .or_else(|| s.room(0, len))
        })
    }

    fn up(v: u64) -> u64 {
        v.saturating_add(PAGE - 1) & !(PAGE - 1)
    }

    /// Maps `len` bytes of fresh demand-zero memory with `prot` (at
    /// `hint` if free, else where the space has room): the ELF loader's
    /// program images and stack.
    pub fn map_anon(hint: u64, len: u64, prot: u8) -> Option<u64> {
        with(|s| {
            let at = s.room(hint, up(len))?;
            s.insert(&mut Kernel, at, up(len), prot);
            Some(at)
        })
    }

    /// `mprotect` for the ELF loader.
    pub fn protect(addr: u64, len: u64, prot: u8) -> bool {
        with(|s| s.protect(&mut Kernel, addr, len, prot)).is_ok()
    }

    pub(crate) fn mmap(addr: u64, len: u64, prot: u8, flags: u64, fd: i64, off: u64) -> Sys {
        if len == 0 || !off.is_multiple_of(PAGE) || len > WINDOW.end - WINDOW.start {
            return Err(errno::EINVAL);
        }
        let size = up(len);
        let fixed = flags & MAP_FIXED != 0;
        let at = with(|s| {
            if fixed || flags & MAP_FIXED_NOREPLACE != 0 {
                if addr % PAGE != 0 || !WINDOW.contains(&addr) || addr + size > WINDOW.end {
                    return Err(errno::EINVAL);
                }
                if s.on_device(addr, addr + size) {
                    return Err(errno::ENOMEM);
                }
                if !fixed && s.overlaps(addr, addr + size) {
                    return Err(errno::EEXIST);
                }
                s.insert(&mut Kernel, addr, size, prot);
                return Ok(addr);
            }
            let at = s.room(addr & !(PAGE - 1), size).ok_or(errno::ENOMEM)?;
            s.insert(&mut Kernel, at, size, prot);
            Ok(at)
        })?;
        if flags & MAP_GROWSDOWN != 0 {
            with(|s| s.set_grows(at));
        }
        if flags & MAP_ANONYMOUS == 0 {
            // File contents, written through the frames (whatever the
            // protection), read in now; pages past the file's end stay
            // demand-zero.
            let file_len = crate::fd::file_size(fd).map_or(len, |n| n.saturating_sub(off).min(len));
            // Whole pages of a file kept page-aligned in memory that lives
            // as long as the kernel (the initrd) are lent, not copied.
            let mut lent = 0;
            if let Some(data) = crate::fd::static_data(fd) {
                let base = data.as_ptr() as u64 + off;
                if base % PAGE == 0 {
                    lent = file_len & !(PAGE - 1);
                    let ok = with(|s| {
                        (0..lent / PAGE)
                            .all(|i| s.lend(&mut Kernel, at + i * PAGE, base + i * PAGE))
                    });
                    if !ok {
                        let _ = munmap(at, size);
                        return Err(errno::ENOMEM);
                    }
                }
            }
            if let Err(e) = read_in(at + lent, fd, off + lent, file_len - lent) {
                let _ = munmap(at, size);
                return Err(e);
            }
        }
        Ok(at as i64)
    }

    /// Reads `len` bytes of file `fd` from `off` into frames of the
    /// program's own at `at` (mapped whatever the protection).
    fn read_in(at: u64, fd: i64, off: u64, len: u64) -> Result<(), i64> {
        if len == 0 {
            return Ok(());
        }
        if !with(|s| s.populate(&mut Kernel, at, at + up(len))) {
            return Err(errno::ENOMEM);
        }
        let mut buf = alloc::vec![0u8; PAGE as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE) as usize;
            fill_from(fd, &mut buf[..n], off + done)?;
            let frame = Kernel.lookup(at + done).ok_or(errno::ENOMEM)?;
            // SAFETY: the frame is one identity-mapped page of the
            // kernel heap, mapped only at this program page.
            unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), frame as *mut u8, n) };
            done += n as u64;
        }
        Ok(())
    }

    pub(crate) fn munmap(addr: u64, len: u64) -> Sys {
        if addr % PAGE != 0 || len == 0 {
            return Err(errno::EINVAL);
        }
        if WINDOW.contains(&addr) {
            with(|s| {
                s.remove(
                    &mut Kernel,
                    addr,
                    addr.saturating_add(up(len)).min(WINDOW.end),
                )
            });
        }
        Ok(0)
    }

    pub(crate) fn mprotect(addr: u64, len: u64, prot: u8) -> Sys {
        if addr % PAGE != 0 {
            return Err(errno::EINVAL);
        }
        if !WINDOW.contains(&addr) {
            // A fixed-address program's own memory (identity-mapped RAM
            // in the area kept for it) gets the permissions by 4 KiB page;
            // PROT_NONE leaves it readable. Elsewhere: nothing to change.
            let len = len.next_multiple_of(PAGE);
            if let Some((lo, hi)) = kiln_boot::fixed_area() {
                if addr >= lo as u64 && addr.saturating_add(len) <= hi as u64 {
                    crate::arch::protect_range(
                        addr,
                        len,
                        prot & PROT_WRITE != 0,
                        prot & PROT_EXEC != 0,
                    );
                }
            }
            return Ok(0);
        }
        with(|s| s.protect(&mut Kernel, addr, len, prot)).map(|_| 0)
    }

    pub(crate) fn mremap(old: u64, old_len: u64, new_len: u64, flags: u64, new_addr: u64) -> Sys {
        const MREMAP_MAYMOVE: u64 = 1;
        const MREMAP_FIXED: u64 = 2;
        if old % PAGE != 0 || new_len == 0 || !WINDOW.contains(&old) {
            return Err(errno::EINVAL);
        }
        if flags & MREMAP_FIXED != 0 {
            if flags & MREMAP_MAYMOVE == 0 {
                return Err(errno::EINVAL);
            }
            return with(|s| s.remap_fixed(&mut Kernel, old, old_len, new_len, new_addr))
                .map(|a| a as i64);
        }
        with(|s| {
            s.remap(
                &mut Kernel,
                old,
                old_len,
                new_len,
                flags & MREMAP_MAYMOVE != 0,
            )
        })
        .map(|a| a as i64)
    }

    pub(crate) fn madvise(addr: u64, len: u64, advice: u64) -> Sys {
        const MADV_DONTNEED: u64 = 4;
        const MADV_FREE: u64 = 8;
        if (advice == MADV_DONTNEED || advice == MADV_FREE) && WINDOW.contains(&addr) {
            with(|s| {
                s.drop_pages(
                    &mut Kernel,
                    addr & !(PAGE - 1),
                    addr.saturating_add(up(len)).min(WINDOW.end),
                )
            });
        } else if advice == MADV_DONTNEED {
            return super::madvise(addr, len, advice);
        }
        Ok(0)
    }

    pub(crate) fn brk(want: u64) -> u64 {
        with(|s| match crate::process::brk() {
            // A started program's own break, in the same space.
            Some(own) => {
                let first = core::mem::replace(&mut s.brk, own);
                let r = s.set_brk(&mut Kernel, want);
                let own = core::mem::replace(&mut s.brk, first);
                crate::process::set_brk(own);
                r
            }
            None => s.set_brk(&mut Kernel, want),
        })
    }

    /// The page-fault hook: brings in a demand-zero page; a touch that
    /// cannot be served ends the program (SIGSEGV), whether the program or
    /// the kernel on its behalf made it. Faults of kernel code outside the
    /// program's memory stay the kernel's (a fatal report).
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    pub(crate) fn page_fault(f: &kiln_arch_x86_64::ExceptionFrame, addr: u64) -> bool {
        let text = kiln_arch_x86_64::layout::sections().text;
        if f.vector == 13 {
            // A general-protection fault: the kernel's is its own (system
            // call arguments are checked before it touches them); the
            // program's (a non-canonical address) ends it as Linux does.
            if (text.0..text.1).contains(&f.rip) {
                return false;
            }
            kiln_console::log!(
                kiln_console::Level::Error,
                "elf: segmentation fault (SIGSEGV): the program made a general-protection fault (a non-canonical address) at instruction pointer {:#x}; the program ends",
                f.rip
            );
            kiln_boot::exit(128 + 11)
        }
        let touch = if f.error & 16 != 0 {
            Touch::Exec
        } else if f.error & 2 != 0 {
            Touch::Write
        } else {
            Touch::Read
        };
        serve(
            addr,
            touch,
            f.rip,
            (text.0..text.1).contains(&f.rip),
            f.error & 1 != 0,
        )
    }

    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub(crate) fn page_fault(f: &kiln_arch_arm64::PageFault) -> bool {
        let touch = if f.exec {
            Touch::Exec
        } else if f.write {
            Touch::Write
        } else {
            Touch::Read
        };
        let text = kiln_arch_arm64::layout::sections().text;
        serve(
            f.addr,
            touch,
            f.pc,
            (text.0..text.1).contains(&f.pc),
            f.permission,
        )
    }

    /// A touch of `addr` by the instruction at `pc` (kernel code, on the
    /// program's behalf, when `kernel`): true if a page was brought in;
    /// false leaves a kernel fault to the fatal report; anything else the
    /// program did ends it with SIGSEGV.
    #[cfg(target_os = "none")]
    fn serve(addr: u64, touch: Touch, pc: u64, kernel: bool, protected: bool) -> bool {
        let why = if WINDOW.contains(&addr) {
            // The lock is never held while program memory is touched, so
            // a busy lock is a kernel bug: report it as one.
            let Some(mut g) = SPACE.try_lock() else {
                return false;
            };
            let Some(s) = g.as_mut() else { return false };
            match s.fault(&mut Kernel, addr, touch) {
                Ok(()) => {
                    FAULTS.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(why) => why,
            }
        } else if kernel {
            return false;
        } else if protected {
            // Present but protected: a fixed-address program's code or
            // data, by its segments' permissions.
            "the mapping does not allow it"
        } else {
            "no mapping there"
        };
        let what = match touch {
            Touch::Read => "read",
            Touch::Write => "wrote",
            Touch::Exec => "executed",
        };
        let who = if kernel {
            "a system call's argument"
        } else {
            "the program"
        };
        kiln_console::log!(
            kiln_console::Level::Error,
            "elf: segmentation fault (SIGSEGV): {who} {what} {addr:#x}: {why} (instruction pointer {pc:#x}); the program ends"
        );
        kiln_boot::exit(128 + 11)
    }
}

/// A new program's stack (the ELF loader's program, lib/libc's C
/// runtime): 8 MiB of demand-paged memory at a random address, above an
/// inaccessible guard page. Returns its lowest address and length.
pub fn program_stack() -> Result<(u64, usize), alloc::string::String> {
    use crate::vm::{PROT_READ, PROT_WRITE};
    const LEN: u64 = 8 << 20;
    let at = paged::map_anon(0, LEN + 4096, PROT_READ | PROT_WRITE)
        .ok_or_else(|| alloc::string::String::from("no address space for the program's stack"))?;
    paged::protect(at, 4096, 0);
    Ok((at + 4096, LEN as usize))
}
