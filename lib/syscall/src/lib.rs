//! Linux system calls for programs the ELF loader runs (x86_64 numbers).
//!
//! The program is the only process: pid 1, root. Its descriptors are
//! Kiln's own table ([`fd`]): the console as 0-2, VFS files and
//! directories, pipes, eventfds, epoll sets and sockets over lib/net.
//! Memory comes from the kernel heap ([`mem`]). Threads made by `clone`
//! are lib/sched threads ([`thread`]); a call that must wait blocks its
//! thread and lets the others (and the network stack) run.
//!
//! Calls Kiln does not carry out return ENOSYS and are logged once each,
//! with their number and name; [`table`] lists what is supported, and
//! `docs/syscalls.md` is generated from it.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
mod fd;
mod limits;
pub mod mem;
mod names;
mod net;
mod poll;
mod preempt;
pub mod process;
mod signal;
pub mod table;
mod thread;
pub mod vm;

/// A random u64 from lib/random.
pub(crate) fn random_u64() -> u64 {
    kiln_random::u64()
}

use alloc::string::String;
use alloc::vec::Vec;
pub use arch::Frame;
use core::sync::atomic::{AtomicBool, Ordering};

/// Linux errno values.
#[allow(dead_code)]
pub(crate) mod errno {
    pub const EPERM: i64 = 1;
    pub const ENOENT: i64 = 2;
    pub const E2BIG: i64 = 7;
    pub const ENOEXEC: i64 = 8;
    pub const EINTR: i64 = 4;
    pub const EBADF: i64 = 9;
    pub const ECHILD: i64 = 10;
    pub const EAGAIN: i64 = 11;
    pub const ENOMEM: i64 = 12;
    pub const EFAULT: i64 = 14;
    pub const EEXIST: i64 = 17;
    pub const ENOTDIR: i64 = 20;
    pub const EINVAL: i64 = 22;
    pub const EMFILE: i64 = 24;
    pub const ENOTTY: i64 = 25;
    pub const ESPIPE: i64 = 29;
    pub const ENODEV: i64 = 19;
    pub const EPIPE: i64 = 32;
    pub const ERANGE: i64 = 34;
    pub const ENOSYS: i64 = 38;
    pub const ENOTSOCK: i64 = 88;
    pub const EDESTADDRREQ: i64 = 89;
    pub const ENOPROTOOPT: i64 = 92;
    pub const EPROTONOSUPPORT: i64 = 93;
    pub const EOPNOTSUPP: i64 = 95;
    pub const EAFNOSUPPORT: i64 = 97;
    pub const EADDRINUSE: i64 = 98;
    pub const ENETDOWN: i64 = 100;
    pub const ECONNRESET: i64 = 104;
    pub const EISCONN: i64 = 106;
    pub const ENOTCONN: i64 = 107;
    pub const ETIMEDOUT: i64 = 110;
    pub const ECONNREFUSED: i64 = 111;
    pub const EINPROGRESS: i64 = 115;
}

/// A call's result: a value, or an errno (returned negated).
pub(crate) type Sys = Result<i64, i64>;

pub(crate) fn vfs_err(e: kiln_vfs::Error) -> i64 {
    e.errno() as i64
}

/// Whether `[ptr, ptr + len)` lies where program memory can be: in the
/// program window (where the page-fault hook serves each touch or ends the
/// program) or in the RAM the kernel maps one to one (fixed-address
/// programs, the initrd). Anything else, a non-canonical address above
/// all (which faults as #GP, not as a page fault) or memory beyond RAM, is
/// refused with EFAULT before the kernel touches it.
pub(crate) fn user_range(ptr: u64, len: u64) -> bool {
    let Some(end) = ptr.checked_add(len) else {
        return false;
    };
    let top = kiln_boot::ram_top() as u64;
    top == 0 || end <= top || (vm::WINDOW.contains(&ptr) && end <= vm::WINDOW.end)
}

/// Guest memory a pointer argument names.
///
/// # Safety
/// The program runs in the kernel's address space; a pointer it passes is
/// trusted as it would be by the program itself (a bad one faults, and the
/// fault report ends the program). Null, and a range outside program
/// memory ([`user_range`]), are refused. Threads are scheduled
/// cooperatively, so no other program thread runs while a call uses the
/// bytes.
pub(crate) unsafe fn bytes<'a>(ptr: u64, len: u64) -> Result<&'a [u8], i64> {
    if (ptr == 0 && len != 0) || !user_range(ptr, len) {
        return Err(errno::EFAULT);
    }
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: the caller's contract above.
    Ok(unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) })
}

/// Guest memory a pointer argument names, to write results into.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn bytes_mut<'a>(ptr: u64, len: u64) -> Result<&'a mut [u8], i64> {
    if (ptr == 0 && len != 0) || !user_range(ptr, len) {
        return Err(errno::EFAULT);
    }
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: as for `bytes`.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, len as usize) })
}

/// Copies `v` to guest memory at `ptr`.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn put(ptr: u64, v: &[u8]) -> Result<(), i64> {
    // SAFETY: as for `bytes`.
    unsafe { bytes_mut(ptr, v.len() as u64) }?.copy_from_slice(v);
    Ok(())
}

/// Reads a little-endian word from guest memory.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn get_u64(ptr: u64) -> Result<u64, i64> {
    // SAFETY: as for `bytes`.
    Ok(u64::from_le_bytes(
        unsafe { bytes(ptr, 8) }?.try_into().unwrap(),
    ))
}

/// Reads a little-endian 32-bit value from guest memory.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn get_u32(ptr: u64) -> Result<u32, i64> {
    // SAFETY: as for `bytes`.
    Ok(u32::from_le_bytes(
        unsafe { bytes(ptr, 4) }?.try_into().unwrap(),
    ))
}

/// A NUL-terminated string (at most 4096 bytes).
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn cstr<'a>(ptr: u64) -> Result<&'a str, i64> {
    if ptr == 0 || !user_range(ptr, 1) {
        return Err(errno::EFAULT);
    }
    // Not past the end of program memory.
    let most = if user_range(ptr, 4096) {
        4096
    } else if vm::WINDOW.contains(&ptr) {
        (vm::WINDOW.end - ptr) as usize
    } else {
        (kiln_boot::ram_top() as u64).saturating_sub(ptr).min(4096) as usize
    };
    let mut n = 0;
    // SAFETY: as for `bytes`; the string ends at its NUL byte.
    unsafe {
        while n < most && *(ptr as *const u8).add(n) != 0 {
            n += 1;
        }
        core::str::from_utf8(core::slice::from_raw_parts(ptr as *const u8, n))
            .map_err(|_| errno::EINVAL)
    }
}

/// An iovec array: (base, len) pairs.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn iovecs(ptr: u64, n: u64) -> Result<Vec<(u64, u64)>, i64> {
    if n > 1024 {
        return Err(errno::EINVAL);
    }
    // SAFETY: as for `bytes`.
    let raw = unsafe { bytes(ptr, n * 16) }?;
    Ok(raw
        .chunks(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect())
}

/// Files the program looked for and did not find (for the summary at exit).
static MISSING: spin::Mutex<Vec<String>> = spin::Mutex::new(Vec::new());
/// Unsupported calls seen (number), each logged once.
static UNSUPPORTED: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());

pub(crate) fn note_missing(path: &str, e: kiln_vfs::Error) {
    if e == kiln_vfs::Error::NotFound {
        let mut m = MISSING.lock();
        if m.len() < 64 && !m.iter().any(|p| p == path) {
            m.push(path.into());
        }
    }
}

/// Ends the program: the summary of what it missed, then the machine's exit.
pub(crate) fn exit(code: i64) -> ! {
    // A program another one started ends alone.
    if process::in_child() {
        process::child_exit(((code & 0xff) << 8) as i32)
    }
    // What the program sent just before exiting still reaches its peers.
    if kiln_net::available() {
        kiln_net::flush(200_000);
    }
    let missing = MISSING.lock().clone();
    if !missing.is_empty() {
        kiln_console::log!(
            kiln_console::Level::Info,
            "elf: files the program looked for and did not find: {}",
            missing.join(", ")
        );
    }
    let unsupported = UNSUPPORTED.lock().clone();
    if !unsupported.is_empty() {
        let names: Vec<String> = unsupported
            .iter()
            .map(|n| alloc::format!("{} ({n})", table::name(*n)))
            .collect();
        kiln_console::log!(
            kiln_console::Level::Info,
            "elf: unsupported system calls: {}",
            names.join(", ")
        );
    }
    kiln_boot::exit((code & 0xff) as i32)
}

fn unsupported(nr: u64) -> Sys {
    Err(unsupported_named(nr, table::name(nr)))
}

/// Logs an unsupported call once (by the number the program used);
/// returns ENOSYS.
fn unsupported_named(nr: u64, name: &str) -> i64 {
    let mut u = UNSUPPORTED.lock();
    if !u.contains(&nr) {
        u.push(nr);
        kiln_console::log!(
            kiln_console::Level::Warn,
            "elf: system call {nr} ({name}) is not supported: ENOSYS"
        );
    }
    errno::ENOSYS
}

/// `kiln run --strace` (kernel parameter `syscall.strace=1`): print every call.
static STRACE: AtomicBool = AtomicBool::new(false);

/// Carries out one system call (and prints it under `--strace`).
pub fn dispatch(f: &mut Frame) -> i64 {
    // Threads switch only inside system calls; each keeps its own SSE
    // state and TLS pointer across the switch.
    let keep = thread::Keep::new();
    // This thread's kernel stack, for continuing its program elsewhere
    // (a signal handler) without leaving this call's frame on it.
    #[cfg(target_arch = "x86_64")]
    let kstack = kiln_arch_x86_64::syscall::kernel_stack();
    #[cfg(target_arch = "aarch64")]
    let kstack = kiln_arch_arm64::syscall::kernel_stack();
    let (nr, raw, a) = arch::call_of(f);
    let Some(nr) = nr else {
        // A number of this architecture's that Kiln does not know at all.
        return -unsupported_named(raw, "?");
    };
    let strace = STRACE.load(Ordering::Relaxed);
    if nr == 15 {
        // rt_sigreturn: back to where the signal handler interrupted.
        drop(keep);
        if strace {
            kiln_console::println!("strace: rt_sigreturn()");
        }
        match signal::sigreturn(f) {
            #[cfg(target_arch = "x86_64")]
            Ok(n) => resume_all(n, kstack),
            #[cfg(target_arch = "aarch64")]
            Ok(n) => resume(&n, kstack),
            Err(_) => {
                // The stack no longer holds the frame Kiln wrote: Linux
                // would kill the program with SIGSEGV.
                kiln_console::log!(
                    kiln_console::Level::Info,
                    "elf: rt_sigreturn found no signal frame on the stack: the program ends"
                );
                exit(128 + 11)
            }
        }
    }
    // exit and exit_group do not return: print them first.
    if strace && (nr == 60 || nr == 231) {
        kiln_console::println!("strace: {}({})", table::name(nr), a[0] as i64);
    }
    let r = call(nr, a, f).unwrap_or_else(|e| -e);
    if strace {
        let tid = thread::tid();
        let who = if tid == 1 {
            String::new()
        } else {
            alloc::format!("[{tid}] ")
        };
        kiln_console::println!(
            "strace: {who}{}({:#x}, {:#x}, {:#x}) = {r}",
            table::name_or_number(nr),
            a[0],
            a[1],
            a[2]
        );
    }
    drop(keep);
    // A signal the program sent itself (or its alarm) runs its handler now.
    if let Some(n) = signal::deliver(f, r) {
        if strace {
            #[cfg(target_arch = "x86_64")]
            let sig = n.a[0];
            #[cfg(target_arch = "aarch64")]
            let sig = n.x[0];
            kiln_console::println!("strace: --- signal {sig} delivered ---");
        }
        resume(&n, kstack);
    }
    r
}

/// Continues the program with `f`'s registers from kernel stack top
/// `kstack` (a parent after its child ended, a child on its own stack).
pub(crate) fn resume_at(f: &Frame, kstack: u64) -> ! {
    resume(f, kstack)
}

/// Continues the program with `f`'s registers (a signal handler, or the
/// return from one).
fn resume(f: &Frame, kstack: u64) -> ! {
    #[cfg(all(target_os = "none", target_arch = "x86_64"))]
    // SAFETY: `f` holds the program's own registers, or its handler's
    // address and a stack below the program's, set up by `signal`;
    // `kstack` is this thread's kernel stack top, which holds nothing
    // once this call is abandoned.
    unsafe {
        kiln_arch_x86_64::syscall::resume(f, Some(kstack))
    }
    #[cfg(all(target_os = "none", target_arch = "aarch64"))]
    // SAFETY: as above.
    unsafe {
        kiln_arch_arm64::syscall::resume(f, Some(kstack))
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (f, kstack);
        unreachable!("programs run only in a kernel")
    }
}

/// Continues the program with every register of `f` (the return from a
/// signal handler, which may have interrupted it anywhere).
#[cfg(target_arch = "x86_64")]
fn resume_all(f: kiln_arch_x86_64::irq::Irq, kstack: u64) -> ! {
    #[cfg(target_os = "none")]
    // SAFETY: `f` holds the program's registers from its signal frame
    // (sigreturn kept only harmless flags) with the kernel's selectors;
    // `kstack` is this thread's kernel stack top, which holds nothing once
    // this call is abandoned.
    unsafe {
        let (cs, ss) = kiln_arch_x86_64::irq::selectors();
        kiln_arch_x86_64::irq::resume(&kiln_arch_x86_64::irq::Irq { cs, ss, ..f }, kstack)
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (f, kstack);
        unreachable!("programs run only in a kernel")
    }
}

fn call(nr: u64, a: [u64; 6], f: &mut Frame) -> Sys {
    // arm64 has no pause(): libcs call ppoll with no descriptors and no
    // timeout, which is the same wait for a signal.
    if cfg!(target_arch = "aarch64") && nr == 271 && a[..3] == [0, 0, 0] {
        return signal::call(34, a, arch::stack_pointer(f)).unwrap();
    }
    if let Some(r) = fd::call(nr, a) {
        return r;
    }
    if let Some(r) = mem::call(nr, a) {
        return r;
    }
    if let Some(r) = net::call(nr, a) {
        return r;
    }
    if let Some(r) = poll::call(nr, a) {
        return r;
    }
    if let Some(r) = thread::call(nr, a, f) {
        return r;
    }
    if let Some(r) = limits::call(nr, a) {
        return r;
    }
    if let Some(r) = signal::call(nr, a, arch::stack_pointer(f)) {
        return r;
    }
    if nr == 59 {
        return exec_call(a);
    }
    if let Some(r) = misc(nr, a) {
        return r;
    }
    unsupported(nr)
}

/// execve(path, argv, envp): the strings are read before anything changes.
fn exec_call(a: [u64; 6]) -> Sys {
    // SAFETY: see `bytes`.
    let path = String::from(unsafe { cstr(a[0]) }?);
    let list = |mut p: u64| -> Result<Vec<String>, i64> {
        let mut v = Vec::new();
        while p != 0 {
            // SAFETY: see `bytes`.
            let s = unsafe { get_u64(p) }?;
            if s == 0 {
                break;
            }
            // SAFETY: see `bytes`.
            v.push(String::from(unsafe { cstr(s) }?));
            if v.len() > 4096 {
                return Err(errno::E2BIG);
            }
            p += 8;
        }
        Ok(v)
    };
    let (argv, envp) = (list(a[1])?, list(a[2])?);
    process::execve(&path, argv, envp)
}

/// Identity, time, randomness, limits: calls with no state of their own.
fn misc(nr: u64, a: [u64; 6]) -> Option<Sys> {
    mine(misc_call(nr, a))
}

/// What a module's call function returns for a number that is not its.
pub(crate) const NOT_MINE: i64 = i64::MIN;

/// None for [`NOT_MINE`].
pub(crate) fn mine(r: Sys) -> Option<Sys> {
    (r != Err(NOT_MINE)).then_some(r)
}

fn misc_call(nr: u64, a: [u64; 6]) -> Sys {
    // SAFETY (of the pointer helpers below): see `bytes`.
    unsafe {
        match nr {
            // getpid, getppid (0: no parent), getuid/getgid/geteuid/getegid,
            // setuid/setgid (root may), getpgrp/getsid/getpgid.
            39 => Ok(process::pid() as i64),
            110 => Ok(process::parent_pid() as i64),
            102 | 104 | 107 | 108 | 105 | 106 | 113 | 114 | 116 => Ok(0),
            111 | 124 | 121 => Ok(1),
            115 | 112 => Ok(0),
            // getresuid, getresgid: all root.
            118 | 120 => {
                for p in [a[0], a[1], a[2]] {
                    put(p, &0u32.to_le_bytes())?;
                }
                Ok(0)
            }
            63 => {
                let b = bytes_mut(a[0], 390)?;
                b.fill(0);
                for (i, f) in ["Linux", "kiln", "6.1.0-kiln", "#1 Kiln", "x86_64", ""]
                    .iter()
                    .enumerate()
                {
                    b[i * 65..i * 65 + f.len()].copy_from_slice(f.as_bytes());
                }
                Ok(0)
            }
            // clock_gettime, gettimeofday, time.
            228 => {
                // CLOCK_REALTIME (0) and its coarse form (5) are wall time;
                // the others count from boot.
                let us = if a[0] == 0 || a[0] == 5 {
                    realtime_us()
                } else {
                    now_us()
                };
                put(a[1], &timespec(us))?;
                Ok(0)
            }
            96 => {
                let us = realtime_us();
                if a[0] != 0 {
                    let mut tv = [0u8; 16];
                    tv[..8].copy_from_slice(&(us / 1_000_000).to_le_bytes());
                    tv[8..].copy_from_slice(&(us % 1_000_000).to_le_bytes());
                    put(a[0], &tv)?;
                }
                Ok(0)
            }
            201 => {
                let s = realtime_us() / 1_000_000;
                if a[0] != 0 {
                    put(a[0], &s.to_le_bytes())?;
                }
                Ok(s as i64)
            }
            // clock_getres: 1 µs.
            229 => {
                if a[1] != 0 {
                    put(a[1], &timespec(1))?;
                }
                Ok(0)
            }
            // nanosleep, clock_nanosleep (TIMER_ABSTIME = 1).
            35 | 230 => {
                let (ts, abs) = if nr == 35 {
                    (a[0], false)
                } else {
                    (a[2], a[1] & 1 != 0)
                };
                let us = read_timespec_us(ts)?;
                let now = now_us();
                let until = match (abs, a[0]) {
                    (false, _) => now.saturating_add(us),
                    // An absolute CLOCK_REALTIME time.
                    (true, 0) => boot_time_of(us),
                    (true, _) => us,
                };
                if until > now {
                    kiln_sched::sleep(core::time::Duration::from_micros(until - now));
                }
                Ok(0)
            }
            // sched_yield
            24 => {
                kiln_sched::yield_now();
                Ok(0)
            }
            318 => {
                let b = bytes_mut(a[0], a[1])?;
                kiln_random::fill(b);
                Ok(b.len() as i64)
            }
            // sched_getaffinity: one CPU.
            204 => {
                let b = bytes_mut(a[2], a[1].min(128))?;
                b.fill(0);
                if let Some(first) = b.first_mut() {
                    *first = 1;
                }
                Ok(b.len() as i64)
            }
            203 => Ok(0),
            // getcpu
            309 => {
                if a[0] != 0 {
                    put(a[0], &0u32.to_le_bytes())?;
                }
                if a[1] != 0 {
                    put(a[1], &0u32.to_le_bytes())?;
                }
                Ok(0)
            }
            // sysinfo: uptime, total and free RAM as the heap sees them.
            99 => {
                let b = bytes_mut(a[0], 112)?;
                b.fill(0);
                b[..8].copy_from_slice(&(now_us() / 1_000_000).to_le_bytes());
                b[32..40].copy_from_slice(&(256u64 << 20).to_le_bytes());
                b[40..48].copy_from_slice(&(128u64 << 20).to_le_bytes());
                b[80..82].copy_from_slice(&1u16.to_le_bytes());
                b[104..108].copy_from_slice(&1u32.to_le_bytes());
                Ok(0)
            }
            // umask
            95 => Ok(0o022),
            // prctl: PR_SET_NAME and the like are accepted.
            157 => Ok(0),
            // wait4: a child started with vfork/posix_spawn (crate::process).
            61 => process::wait4(a[0] as i64, a[1]),
            // fork: one address space.
            57 => {
                kiln_console::log!(kiln_console::Level::Warn, "{}", process::NO_FORK);
                Err(errno::ENOSYS)
            }
            _ => Err(NOT_MINE),
        }
    }
}

/// A timespec for `us` microseconds.
pub(crate) fn timespec(us: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(us / 1_000_000).to_le_bytes());
    b[8..].copy_from_slice(&((us % 1_000_000) * 1000).to_le_bytes());
    b
}

/// Reads a timespec from guest memory, in microseconds (rounded up).
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn read_timespec_us(ptr: u64) -> Result<u64, i64> {
    // SAFETY: as for `bytes`.
    let (s, ns) = unsafe { (get_u64(ptr)?, get_u64(ptr + 8)?) };
    if ns >= 1_000_000_000 {
        return Err(errno::EINVAL);
    }
    Ok(s.saturating_mul(1_000_000)
        .saturating_add(ns.div_ceil(1000)))
}

/// Wall-clock time in µs since 1970: the host's time at boot
/// (`clock.epoch=`, which `kiln run` passes) plus the time since boot.
pub(crate) fn realtime_us() -> u64 {
    static EPOCH: spin::Once<u64> = spin::Once::new();
    let epoch = *EPOCH.call_once(|| {
        kiln_boot::param("clock.epoch")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    });
    epoch.saturating_mul(1_000_000).saturating_add(now_us())
}

/// The time since boot (µs) at which the wall clock reads `wall_us`.
pub(crate) fn boot_time_of(wall_us: u64) -> u64 {
    (wall_us + now_us()).saturating_sub(realtime_us())
}

pub(crate) fn now_us() -> u64 {
    let p = kiln_boot::platform();
    let ticks = p.map_or(0, |p| p.ticks());
    let hz = p.and_then(|p| p.tick_hz()).unwrap_or(1_000_000_000);
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

/// Installs [`dispatch`] behind the `syscall` instruction (`svc #0` on
/// arm64). `exe` is the program's path (what `/proc/self/exe` names).
pub fn install(exe: &str) {
    if kiln_boot::param("syscall.strace").is_some_and(|v| v != "0") {
        STRACE.store(true, Ordering::Relaxed);
    }
    fd::set_exe(exe);
    // `kiln stop` reaches the program as SIGTERM.
    kiln_boot::on_stop(signal::stop_from_host);
    arch::install(dispatch);
}
