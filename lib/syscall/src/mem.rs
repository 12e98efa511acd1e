//! Program memory: `brk` grows a reserved area, `mmap` hands out zeroed,
//! page-aligned blocks from the kernel heap (file mappings are read in:
//! private, never written back). Everything is mapped read, write and
//! execute, so `mprotect` has nothing to change. A block is freed when the
//! whole of it is unmapped; unmapping part of one keeps it.

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

const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED_NOREPLACE: u64 = 0x100000;

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
        9 => mmap(a[0], a[1], a[3], a[4] as i64, a[5]),
        11 => munmap(a[0], a[1]),
        12 => brk(a[0]),
        25 => mremap(a[0], a[1], a[2], a[3]),
        28 => madvise(a[0], a[1], a[2]),
        // mprotect, mlock, munlock, mlockall, msync, membarrier: all memory
        // is present and mapped read/write/execute.
        10 | 149 | 150 | 151 | 152 | 26 | 324 => Ok(0),
        _ => return None,
    })
}
