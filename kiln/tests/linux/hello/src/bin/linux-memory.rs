//! Memory protection as a Linux program sees it, for Kiln's tests:
//! `where` prints where its code, stack, heap and an mmap landed (ASLR);
//! `reserve` maps 1 GiB PROT_NONE, opens 64 MiB of it, touches 4 MiB,
//! unmaps the middle and mprotects the rest (all of which must cost
//! nothing but the pages touched); `write-code` writes to its own code;
//! `exec-heap` jumps into heap memory; `segv` reads an unmapped address;
//! `flags` checks madvise(MADV_DONTNEED), MAP_FIXED and
//! MAP_FIXED_NOREPLACE as Linux answers them; `exhaust` touches more
//! anonymous memory than the machine has;
//! `growsdown` touches 8 pages below a MAP_GROWSDOWN mapping;
//! `efault` passes system calls pointers no memory is at (non-canonical,
//! above RAM) and expects EFAULT; `noncanonical` reads a non-canonical
//! address itself;
//! `lend FILE` maps a file private and writable, reads it all, writes one
//! page and reports what that cost in resident memory (a file of the
//! initrd is lent in place: only the written page is copied);
//! `bench` times demand-zero page faults and mmap/munmap of 1 MiB
//! (scripts/bench/vm runs it in Kiln and in a Linux guest).

use std::ffi::c_void;

extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> i32;
    fn mprotect(addr: *mut c_void, len: usize, prot: i32) -> i32;
    fn madvise(addr: *mut c_void, len: usize, advice: i32) -> i32;
    fn __errno_location() -> *mut i32;
    fn write(fd: i32, buf: *const c_void, n: usize) -> isize;
    fn read(fd: i32, buf: *mut c_void, n: usize) -> isize;
    fn open(path: *const i8, flags: i32, ...) -> i32;
}

/// Whether `r` is -1 with errno EFAULT.
unsafe fn efault(r: isize) -> bool {
    r == -1 && *__errno_location() == 14
}

const PROT_NONE: i32 = 0;
const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_PRIVATE: i32 = 2;
const MAP_ANONYMOUS: i32 = 0x20;
const MAP_NORESERVE: i32 = 0x4000;
const MAP_FIXED: i32 = 0x10;
const MAP_FIXED_NOREPLACE: i32 = 0x10_0000;
const MADV_DONTNEED: i32 = 4;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    match arg.as_str() {
        "where" => {
            let local = 0u8;
            let heap = Box::new(0u64);
            let m = unsafe { mmap(std::ptr::null_mut(), 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) };
            println!(
                "where: code {:#x} stack {:#x} heap {:#x} mmap {:#x}",
                main as *const () as usize, &local as *const u8 as usize, &*heap as *const u64 as usize, m as usize
            );
        }
        "reserve" => unsafe {
            let gib = 1usize << 30;
            let r = mmap(std::ptr::null_mut(), gib, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            assert!(r as isize != -1, "reserving 1 GiB");
            let base = r as usize;
            assert_eq!(mprotect(r, 64 << 20, PROT_READ | PROT_WRITE), 0);
            for i in (0..4 << 20).step_by(4096) {
                *((base + i) as *mut u8) = (i >> 12) as u8;
            }
            // Unmap the middle of the open part, keep both ends.
            assert_eq!(munmap((base + (1 << 20)) as *mut c_void, 2 << 20), 0);
            assert_eq!(*((base + 4096) as *const u8), 1);
            assert_eq!(*((base + (3 << 20) + 4096) as *const u8), ((3 << 20) + 4096 >> 12) as u8);
            // Read-only now; reading still works.
            assert_eq!(mprotect((base + (3 << 20)) as *mut c_void, 1 << 20, PROT_READ), 0);
            assert_eq!(*((base + (3 << 20)) as *const u8), (3 << 20 >> 12) as u8);
            // Fresh memory reads as zero; a whole other GiB costs nothing.
            assert_eq!(*((base + (40 << 20)) as *const u8), 0);
            let r2 = mmap(std::ptr::null_mut(), gib, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            assert!(r2 as isize != -1, "a second GiB");
            assert_eq!(munmap(r2, gib), 0);
            println!("reserve: ok");
        },
        "flags" => unsafe {
            let rw = PROT_READ | PROT_WRITE;
            let anon = MAP_PRIVATE | MAP_ANONYMOUS;
            let m = mmap(std::ptr::null_mut(), 4 << 12, rw, anon, -1, 0) as usize;
            assert!(m as isize != -1);
            for i in 0..4 {
                *((m + (i << 12)) as *mut u8) = 7;
            }
            // DONTNEED: the page reads as zero again; the others keep theirs.
            let r = madvise((m + 4096) as *mut c_void, 4096, MADV_DONTNEED);
            let dontneed = (r, *((m + 4096) as *const u8), *(m as *const u8));
            // NOREPLACE over a mapping: EEXIST, nothing changes.
            let r = mmap(m as *mut c_void, 4096, rw, anon | MAP_FIXED_NOREPLACE, -1, 0);
            let noreplace_taken = (r as isize, *__errno_location(), *((m + 2 * 4096) as *const u8));
            // NOREPLACE on free addresses: exactly there.
            assert_eq!(munmap((m + 3 * 4096) as *mut c_void, 4096), 0);
            let r = mmap((m + 3 * 4096) as *mut c_void, 4096, rw, anon | MAP_FIXED_NOREPLACE, -1, 0);
            let noreplace_free = r as usize == m + 3 * 4096;
            // MAP_FIXED replaces: fresh zeroed memory at the address.
            let r = mmap((m + 2 * 4096) as *mut c_void, 4096, rw, anon | MAP_FIXED, -1, 0);
            let fixed = (r as usize == m + 2 * 4096, *((m + 2 * 4096) as *const u8));
            println!(
                "flags: dontneed {dontneed:?}, noreplace over a mapping {noreplace_taken:?}, noreplace on free space {noreplace_free}, fixed {fixed:?}"
            );
        },
        "exhaust" => unsafe {
            let gib = 1usize << 30;
            let m = mmap(std::ptr::null_mut(), gib, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) as usize;
            assert!(m as isize != -1);
            for i in (0..gib).step_by(4096) {
                *((m + i) as *mut u8) = 1;
                if i % (16 << 20) == 0 {
                    println!("exhaust: {} MiB touched", i >> 20);
                }
            }
            println!("exhaust: all of 1 GiB touched");
        },
        "write-code" => unsafe {
            let p = main as *const () as usize as *mut u8;
            println!("write-code: writing to {:#x}", p as usize);
            std::ptr::write_volatile(p, 0xc3);
            println!("write-code: still running");
        },
        "exec-heap" => unsafe {
            let code: Vec<u8> = vec![0xc3; 64];
            println!("exec-heap: jumping to {:#x}", code.as_ptr() as usize);
            let f: extern "C" fn() = std::mem::transmute(code.as_ptr());
            f();
            println!("exec-heap: still running");
        },
        "segv" => unsafe {
            println!("segv: reading 0x7000dead0000");
            let v = std::ptr::read_volatile(0x7000_dead_0000usize as *const u8);
            println!("segv: read {v}");
        },
        "efault" => unsafe {
            // Text read as a pointer (the catalog's hello-nasm does this).
            let junk = 0x7720_2c6f_6c6c_6548usize;
            let high = 0x40_0000_0000usize; // 256 GiB: above RAM, below mappings
            let w = efault(write(1, junk as *const c_void, 14));
            let r = efault(read(0, high as *mut c_void, 16));
            let o = efault(open(junk as *const i8, 0) as isize);
            println!("efault: write {w}, read {r}, open {o}");
        },
        "noncanonical" => unsafe {
            println!("noncanonical: reading 0x8000000000000000");
            let v = std::ptr::read_volatile(0x8000_0000_0000_0000usize as *const u8);
            println!("noncanonical: read {v}");
        },
        "growsdown" => unsafe {
            // A stack mapped with MAP_GROWSDOWN extends when touched below.
            let m = mmap(std::ptr::null_mut(), 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | 0x100, -1, 0) as usize;
            assert!(m as isize != -1);
            let below = (m - 8 * 4096 + 100) as *mut u8;
            std::ptr::write_volatile(below, 42);
            println!("growsdown: 8 pages below read back {}", std::ptr::read_volatile(below));
        },
        "lend" => unsafe { lend(&std::env::args().nth(2).unwrap_or_default()) },
        "bench" => unsafe { bench() },
        _ => {
            println!("usage: linux-memory where|reserve|write-code|exec-heap|segv|bench");
            std::process::exit(2);
        }
    }
}

/// Nanoseconds on the monotonic clock (instructions under QEMU -icount
/// shift=0).
fn now_ns() -> u64 {
    let t = std::time::Instant::now();
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    t.duration_since(*START.get_or_init(|| t)).as_nanos() as u64
}

/// Demand-zero faults: 4096 pages of a fresh mapping touched once each;
/// then 1000 rounds of mmap 1 MiB, touch its first page, munmap; then
/// 1000 rounds of mmap and munmap without a touch. Prints ns per
/// operation.
unsafe fn bench() {
    const PAGES: usize = 4096;
    now_ns();
    let p = mmap(std::ptr::null_mut(), PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as *mut u8;
    let t = now_ns();
    for i in 0..PAGES {
        std::ptr::write_volatile(p.add(i * 4096), 1);
    }
    let fault = (now_ns() - t) / PAGES as u64;
    munmap(p as *mut c_void, PAGES * 4096);
    let t = now_ns();
    for _ in 0..1000 {
        let q = mmap(std::ptr::null_mut(), 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as *mut u8;
        std::ptr::write_volatile(q, 1);
        munmap(q as *mut c_void, 1 << 20);
    }
    let touched = (now_ns() - t) / 1000;
    let t = now_ns();
    for _ in 0..1000 {
        let q = mmap(std::ptr::null_mut(), 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(q, 1 << 20);
    }
    let bare = (now_ns() - t) / 1000;
    println!("vm-bench: fault {fault} ns, mmap+touch+munmap 1 MiB {touched} ns, mmap+munmap 1 MiB {bare} ns");
}

/// The program's peak resident memory in KiB (getrusage's ru_maxrss).
fn max_rss() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u.ru_maxrss
    }
}

unsafe fn lend(path: &str) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect(path);
    let len = f.metadata().unwrap().len() as usize;
    let before = max_rss();
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
    let m = mmap(std::ptr::null_mut(), len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) as *mut u8;
    assert!(m as isize != -1, "mmap {path}");
    let bytes = std::slice::from_raw_parts(m, len);
    let sum = bytes.iter().fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    let read_rss = max_rss() - before;
    // A write to the mapping is the program's own, never the file's.
    let at = len / 2 & !4095;
    let old = *m.add(at);
    *m.add(at) = old.wrapping_add(1);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at as u64).unwrap();
    let copied = *m.add(at) == old.wrapping_add(1) && *m.add(at + 1) == bytes[at + 1];
    println!(
        "lend: {len} bytes, sum {sum:x}, resident grew {read_rss} KiB reading and {} KiB writing, write kept {copied}, file unchanged {}",
        max_rss() - before - read_rss,
        b[0] == old
    );
    assert_eq!(munmap(m as *mut c_void, len), 0);
}
