//! Linux system calls for programs the ELF loader runs (x86_64 numbers).
//!
//! The program is the only process: it is pid 1, root, and owns the
//! console as fds 0-2. Files are the VFS's (the rootfs), numbered from 3.
//! Memory comes from the kernel heap: `brk` grows a reserved area, `mmap`
//! hands out zeroed, page-aligned blocks (file mappings are read in).
//! Calls Kiln does not carry out return ENOSYS and are logged once each,
//! with their number and name.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::collections::BTreeMap;
use alloc::string::String;
use kiln_vfs::{vfs, Error as VfsError, Whence};

/// Linux errno values used here.
mod errno {
    pub const ENOENT: i64 = 2;
    pub const EBADF: i64 = 9;
    pub const EAGAIN: i64 = 11;
    pub const ENOMEM: i64 = 12;
    pub const EFAULT: i64 = 14;
    pub const EINVAL: i64 = 22;
    pub const ENOTTY: i64 = 25;
    pub const ENOSYS: i64 = 38;
}

/// x86_64 system call numbers Kiln knows by name.
pub fn name(nr: u64) -> &'static str {
    match nr {
        0 => "read",
        1 => "write",
        2 => "open",
        3 => "close",
        4 => "stat",
        5 => "fstat",
        6 => "lstat",
        7 => "poll",
        8 => "lseek",
        9 => "mmap",
        10 => "mprotect",
        11 => "munmap",
        12 => "brk",
        13 => "rt_sigaction",
        14 => "rt_sigprocmask",
        16 => "ioctl",
        17 => "pread64",
        19 => "readv",
        20 => "writev",
        21 => "access",
        28 => "madvise",
        39 => "getpid",
        60 => "exit",
        63 => "uname",
        72 => "fcntl",
        79 => "getcwd",
        89 => "readlink",
        102 => "getuid",
        104 => "getgid",
        107 => "geteuid",
        108 => "getegid",
        131 => "sigaltstack",
        158 => "arch_prctl",
        186 => "gettid",
        202 => "futex",
        204 => "sched_getaffinity",
        218 => "set_tid_address",
        228 => "clock_gettime",
        231 => "exit_group",
        257 => "openat",
        262 => "newfstatat",
        273 => "set_robust_list",
        302 => "prlimit64",
        318 => "getrandom",
        334 => "rseq",
        _ => "?",
    }
}

fn vfs_err(e: VfsError) -> i64 {
    -(e.errno() as i64)
}

/// First fd number for files (0-2 are the console).
const FD_BASE: i64 = 3;

/// Guest memory a pointer argument names.
///
/// # Safety
/// The program runs in the kernel's address space; a pointer it passes is
/// trusted as it would be by the program itself (a bad one faults, and the
/// fault report ends the program). Null is refused.
unsafe fn bytes<'a>(ptr: u64, len: u64) -> Option<&'a [u8]> {
    // SAFETY: the caller's contract above; the program is single-threaded
    // and stopped in its syscall, so nothing else touches the bytes.
    (ptr != 0).then(|| unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) })
}

/// Guest memory a pointer argument names, to write results into.
///
/// # Safety
/// As for [`bytes`].
unsafe fn bytes_mut<'a>(ptr: u64, len: u64) -> Option<&'a mut [u8]> {
    // SAFETY: as for `bytes`.
    (ptr != 0).then(|| unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, len as usize) })
}

/// A NUL-terminated path (at most 4096 bytes).
///
/// # Safety
/// As for [`bytes`].
unsafe fn cstr<'a>(ptr: u64) -> Option<&'a str> {
    if ptr == 0 {
        return None;
    }
    let mut n = 0;
    // SAFETY: as for `bytes`; the string ends at its NUL byte.
    unsafe {
        while *(ptr as *const u8).add(n) != 0 && n < 4096 {
            n += 1;
        }
        core::str::from_utf8(core::slice::from_raw_parts(ptr as *const u8, n)).ok()
    }
}

struct Memory {
    /// brk area: start, current break, end.
    brk: (u64, u64, u64),
    /// mmap blocks: address -> size.
    maps: BTreeMap<u64, u64>,
}

static MEM: spin::Mutex<Memory> = spin::Mutex::new(Memory { brk: (0, 0, 0), maps: BTreeMap::new() });

/// Size of the area `brk` grows in.
const BRK_AREA: u64 = 16 << 20;

fn page_layout(len: u64) -> Option<Layout> {
    Layout::from_size_align(len.max(1).next_multiple_of(4096) as usize, 4096).ok()
}

fn mmap(addr: u64, len: u64, _prot: u64, flags: u64, fd: i64, off: u64) -> i64 {
    const MAP_FIXED: u64 = 0x10;
    const MAP_ANONYMOUS: u64 = 0x20;
    if len == 0 {
        return -errno::EINVAL;
    }
    let mut m = MEM.lock();
    if flags & MAP_FIXED != 0 {
        // Only inside memory the program already has (musl guards its brk
        // area this way): nothing to do, the pages exist.
        let inside = m.maps.range(..=addr).next_back().is_some_and(|(&a, &s)| addr + len <= a + s)
            || (addr >= m.brk.0 && addr + len <= m.brk.2);
        if !inside {
            return -errno::ENOMEM;
        }
        drop(m);
        // Placing part of a file (a library's segment) or fresh zeroes
        // inside a block the program already has (how a dynamic loader
        // lays out a library in the reservation it made).
        // SAFETY: [addr, addr + len) lies inside memory the program owns.
        let buf = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
        if flags & MAP_ANONYMOUS != 0 {
            buf.fill(0);
        } else {
            let Ok(vfd) = i32::try_from(fd - FD_BASE) else { return -errno::EBADF };
            match vfs().pread(vfd, buf, off) {
                Ok(n) => buf[n..].fill(0),
                Err(e) => return vfs_err(e),
            }
        }
        return addr as i64;
    }
    let Some(layout) = page_layout(len) else { return -errno::EINVAL };
    // SAFETY: a fresh, zeroed allocation of a non-zero size.
    let p = unsafe { alloc_zeroed(layout) } as u64;
    if p == 0 {
        return -errno::ENOMEM;
    }
    m.maps.insert(p, layout.size() as u64);
    drop(m);
    if flags & MAP_ANONYMOUS == 0 {
        // A file mapping: its bytes, read in (private, so never written back).
        let Ok(vfd) = i32::try_from(fd - FD_BASE) else { return -errno::EBADF };
        // SAFETY: the block was just allocated with at least `len` bytes.
        let buf = unsafe { core::slice::from_raw_parts_mut(p as *mut u8, len as usize) };
        if let Err(e) = vfs().pread(vfd, buf, off) {
            return vfs_err(e);
        }
    }
    p as i64
}

fn munmap(addr: u64, _len: u64) -> i64 {
    if let Some(size) = MEM.lock().maps.remove(&addr) {
        // SAFETY: allocated by `mmap` with this size and page alignment.
        unsafe { dealloc(addr as *mut u8, Layout::from_size_align_unchecked(size as usize, 4096)) };
    }
    0
}

fn brk(want: u64) -> i64 {
    let mut m = MEM.lock();
    if m.brk.0 == 0 {
        let Some(layout) = page_layout(BRK_AREA) else { return 0 };
        // SAFETY: a fresh, zeroed allocation of a non-zero size.
        let p = unsafe { alloc_zeroed(layout) } as u64;
        if p == 0 {
            return 0;
        }
        m.brk = (p, p, p + BRK_AREA);
    }
    if want >= m.brk.0 && want <= m.brk.2 {
        m.brk.1 = want;
    }
    m.brk.1 as i64
}

/// Linux `struct stat` (x86_64), 144 bytes.
fn write_stat(out: u64, st: &kiln_vfs::Stat) -> i64 {
    // SAFETY: see `bytes_mut`; the program passes a struct stat.
    let Some(b) = (unsafe { bytes_mut(out, 144) }) else { return -errno::EFAULT };
    b.fill(0);
    let put = |b: &mut [u8], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(b, 8, &st.ino.to_le_bytes());
    put(b, 16, &(st.nlink as u64).to_le_bytes());
    put(b, 24, &st.st_mode().to_le_bytes());
    put(b, 48, &st.size.to_le_bytes());
    put(b, 56, &4096u64.to_le_bytes());
    put(b, 64, &st.size.div_ceil(512).to_le_bytes());
    put(b, 88, &st.mtime.to_le_bytes());
    0
}

fn console_write(buf: &[u8]) -> i64 {
    kiln_console::write_bytes(buf);
    buf.len() as i64
}

fn write(fd: i64, buf: &[u8]) -> i64 {
    match fd {
        1 | 2 => console_write(buf),
        0 => -errno::EBADF,
        _ => i32::try_from(fd - FD_BASE).map_or(-errno::EBADF, |v| vfs().write(v, buf).map_or_else(vfs_err, |n| n as i64)),
    }
}

fn read(fd: i64, buf: &mut [u8]) -> i64 {
    match fd {
        // No console input: end of file.
        0 => 0,
        1 | 2 => -errno::EBADF,
        _ => i32::try_from(fd - FD_BASE).map_or(-errno::EBADF, |v| vfs().read(v, buf).map_or_else(vfs_err, |n| n as i64)),
    }
}

fn open(path: Option<&str>, flags: u64, mode: u64) -> i64 {
    let Some(path) = path else { return -errno::EFAULT };
    match vfs().open(path, flags as u32, mode as u32) {
        Ok(v) => v as i64 + FD_BASE,
        Err(e) => {
            missing(path, e);
            vfs_err(e)
        }
    }
}

/// Files the program looked for and did not find (for the summary at exit).
static MISSING: spin::Mutex<alloc::vec::Vec<String>> = spin::Mutex::new(alloc::vec::Vec::new());
/// Unsupported calls seen (number), each logged once.
static UNSUPPORTED: spin::Mutex<alloc::vec::Vec<u64>> = spin::Mutex::new(alloc::vec::Vec::new());

fn missing(path: &str, e: VfsError) {
    if e == VfsError::NotFound {
        let mut m = MISSING.lock();
        if m.len() < 64 && !m.iter().any(|p| p == path) {
            m.push(path.into());
        }
    }
}

fn exit(code: i64) -> ! {
    let missing = MISSING.lock().clone();
    if !missing.is_empty() {
        kiln_console::log!(kiln_console::Level::Info, "elf: files the program looked for and did not find: {}", missing.join(", "));
    }
    let unsupported = UNSUPPORTED.lock().clone();
    if !unsupported.is_empty() {
        let names: alloc::vec::Vec<String> = unsupported.iter().map(|n| alloc::format!("{} ({n})", name(*n))).collect();
        kiln_console::log!(kiln_console::Level::Info, "elf: unsupported system calls: {}", names.join(", "));
    }
    kiln_boot::exit((code & 0xff) as i32)
}

/// `kiln run --strace` (kernel parameter `syscall.strace=1`): print every call.
static STRACE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Carries out one system call (and prints it under `--strace`).
pub fn dispatch(nr: u64, a: [u64; 6]) -> i64 {
    if !STRACE.load(core::sync::atomic::Ordering::Relaxed) {
        return call(nr, a);
    }
    // exit and exit_group do not return: print them first.
    if nr == 60 || nr == 231 {
        kiln_console::println!("strace: {}({})", name(nr), a[0] as i64);
    }
    let r = call(nr, a);
    kiln_console::println!("strace: {}({:#x}, {:#x}, {:#x}) = {r}", name_or_number(nr), a[0], a[1], a[2]);
    r
}

fn name_or_number(nr: u64) -> String {
    match name(nr) {
        "?" => alloc::format!("syscall_{nr}"),
        n => n.into(),
    }
}

fn call(nr: u64, a: [u64; 6]) -> i64 {
    // SAFETY (of the pointer helpers below): see `bytes`.
    unsafe {
        match nr {
            0 => bytes_mut(a[1], a[2]).map_or(-errno::EFAULT, |b| read(a[0] as i64, b)),
            1 => bytes(a[1], a[2]).map_or(-errno::EFAULT, |b| write(a[0] as i64, b)),
            2 => open(cstr(a[0]), a[1], a[2]),
            257 => open(cstr(a[1]), a[2], a[3]),
            3 => match a[0] as i64 {
                0..=2 => 0,
                fd => i32::try_from(fd - FD_BASE).map_or(-errno::EBADF, |v| vfs().close(v).map_or_else(vfs_err, |_| 0)),
            },
            4 | 6 => match cstr(a[0]).map(|p| vfs().stat(p)) {
                Some(Ok(st)) => write_stat(a[1], &st),
                Some(Err(e)) => vfs_err(e),
                None => -errno::EFAULT,
            },
            5 => match a[0] as i64 {
                // The console: a character device.
                0..=2 => write_stat(
                    a[1],
                    &kiln_vfs::Stat { ino: 1, kind: kiln_vfs::FileType::CharDevice, mode: 0o620, size: 0, nlink: 1, mtime: 0 },
                ),
                fd => match i32::try_from(fd - FD_BASE).map(|v| vfs().fstat(v)) {
                    Ok(Ok(st)) => write_stat(a[1], &st),
                    Ok(Err(e)) => vfs_err(e),
                    Err(_) => -errno::EBADF,
                },
            },
            // newfstatat: AT_EMPTY_PATH with "" is fstat of the fd.
            262 if a[3] & 0x1000 != 0 && cstr(a[1]) == Some("") => call(5, [a[0], a[2], 0, 0, 0, 0]),
            262 => match cstr(a[1]).map(|p| vfs().stat(p)) {
                Some(Ok(st)) => write_stat(a[2], &st),
                Some(Err(e)) => vfs_err(e),
                None => -errno::EFAULT,
            },
            8 => {
                let whence = match a[2] {
                    0 => Whence::Set,
                    1 => Whence::Cur,
                    2 => Whence::End,
                    _ => return -errno::EINVAL,
                };
                i32::try_from(a[0] as i64 - FD_BASE).map_or(-errno::EBADF, |v| vfs().lseek(v, a[1] as i64, whence).map_or_else(vfs_err, |o| o as i64))
            }
            17 => bytes_mut(a[1], a[2]).map_or(-errno::EFAULT, |b| {
                i32::try_from(a[0] as i64 - FD_BASE).map_or(-errno::EBADF, |v| vfs().pread(v, b, a[3]).map_or_else(vfs_err, |n| n as i64))
            }),
            19 | 20 => {
                let mut total = 0i64;
                for i in 0..a[2] {
                    let Some(iov) = bytes(a[1] + i * 16, 16) else { return -errno::EFAULT };
                    let base = u64::from_le_bytes(iov[..8].try_into().unwrap());
                    let len = u64::from_le_bytes(iov[8..].try_into().unwrap());
                    if len == 0 {
                        continue;
                    }
                    let r = if nr == 20 {
                        bytes(base, len).map_or(-errno::EFAULT, |b| write(a[0] as i64, b))
                    } else {
                        bytes_mut(base, len).map_or(-errno::EFAULT, |b| read(a[0] as i64, b))
                    };
                    if r < 0 {
                        return if total > 0 { total } else { r };
                    }
                    total += r;
                    if (r as u64) < len {
                        break;
                    }
                }
                total
            }
            9 => mmap(a[0], a[1], a[2], a[3], a[4] as i64, a[5]),
            11 => munmap(a[0], a[1]),
            12 => brk(a[0]),
            10 | 28 => 0,
            // Signals are accepted; none is ever delivered.
            13 | 14 | 131 => {
                if nr == 13 && a[2] != 0 {
                    if let Some(old) = bytes_mut(a[2], 32) {
                        old.fill(0);
                    }
                }
                0
            }
            16 => -errno::ENOTTY,
            // poll: nothing is ever ready or invalid.
            7 => 0,
            21 => match cstr(a[0]).map(|p| vfs().stat(p)) {
                Some(Ok(_)) => 0,
                Some(Err(e)) => vfs_err(e),
                None => -errno::EFAULT,
            },
            72 => 0,
            79 => bytes_mut(a[0], a[1]).map_or(-errno::EFAULT, |b| {
                if b.len() < 2 {
                    return -errno::EINVAL;
                }
                b[..2].copy_from_slice(b"/\0");
                a[0] as i64
            }),
            89 => -errno::ENOENT,
            39 | 186 => 1,
            102 | 104 | 107 | 108 => 0,
            60 | 231 => exit(a[0] as i64),
            63 => bytes_mut(a[0], 390).map_or(-errno::EFAULT, |b| {
                b.fill(0);
                for (i, f) in ["Linux", "kiln", "6.1.0-kiln", "#1 Kiln", "x86_64", ""].iter().enumerate() {
                    b[i * 65..i * 65 + f.len()].copy_from_slice(f.as_bytes());
                }
                0
            }),
            158 => arch_prctl(a[0], a[1]),
            202 => {
                // futex: one thread, so a wait on a changed word returns and
                // a wake wakes nobody.
                let op = a[1] & 0x7f;
                if op == 0 { -errno::EAGAIN } else { 0 }
            }
            204 => bytes_mut(a[2], a[1].min(128)).map_or(-errno::EFAULT, |b| {
                b.fill(0);
                if let Some(first) = b.first_mut() {
                    *first = 1;
                }
                b.len() as i64
            }),
            218 => 1,
            228 => bytes_mut(a[1], 16).map_or(-errno::EFAULT, |b| {
                let us = now_us();
                b[..8].copy_from_slice(&(us / 1_000_000).to_le_bytes());
                b[8..].copy_from_slice(&((us % 1_000_000) * 1000).to_le_bytes());
                0
            }),
            273 => 0,
            302 => {
                if a[3] != 0 {
                    if let Some(b) = bytes_mut(a[3], 16) {
                        b.copy_from_slice(&[0xff; 16]);
                    }
                }
                0
            }
            318 => bytes_mut(a[0], a[1]).map_or(-errno::EFAULT, |b| {
                let mut x = now_us() ^ 0x9e37_79b9_7f4a_7c15;
                for byte in b.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *byte = x as u8;
                }
                b.len() as i64
            }),
            _ => unsupported(nr),
        }
    }
}

fn unsupported(nr: u64) -> i64 {
    let mut u = UNSUPPORTED.lock();
    if !u.contains(&nr) {
        u.push(nr);
        kiln_console::log!(kiln_console::Level::Warn, "elf: system call {nr} ({}) is not supported: ENOSYS", name(nr));
    }
    -errno::ENOSYS
}

fn now_us() -> u64 {
    let p = kiln_boot::platform();
    let ticks = p.map_or(0, |p| p.ticks());
    let hz = p.and_then(|p| p.tick_hz()).unwrap_or(1_000_000_000);
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

fn arch_prctl(code: u64, addr: u64) -> i64 {
    const ARCH_SET_FS: u64 = 0x1002;
    const ARCH_GET_FS: u64 = 0x1003;
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    match code {
        ARCH_SET_FS => {
            kiln_arch_x86_64::syscall::set_fs_base(addr);
            return 0;
        }
        ARCH_GET_FS => {
            // SAFETY: see `bytes_mut`.
            return unsafe { bytes_mut(addr, 8) }.map_or(-errno::EFAULT, |b| {
                b.copy_from_slice(&kiln_arch_x86_64::syscall::fs_base().to_le_bytes());
                0
            });
        }
        _ => {}
    }
    let _ = (code, addr, ARCH_SET_FS, ARCH_GET_FS);
    -errno::EINVAL
}

/// Installs [`dispatch`] behind the `syscall` instruction.
pub fn install() {
    if kiln_boot::param("syscall.strace").is_some_and(|v| v != "0") {
        STRACE.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        kiln_arch_x86_64::syscall::set_handler(|args| dispatch(args.nr, args.a));
        kiln_arch_x86_64::syscall::init();
    }
}
