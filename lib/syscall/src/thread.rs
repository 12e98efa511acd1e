//! Threads (`clone` with CLONE_THREAD), futexes and exit.
//!
//! A program thread is a lib/sched thread: `clone` spawns one whose first
//! act is to continue the program where the parent made the call, on the
//! stack the program gave, with rax = 0. Threads switch only inside system
//! calls (the scheduler is cooperative), so [`Keep`] saving the SSE state
//! and the TLS pointer around every call is all a switch needs.

use crate::{errno, get_u32, put, Frame, Sys};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;
#[cfg(target_arch = "x86_64")]
use kiln_arch_x86_64::syscall::FpState;
use kiln_sched::{ThreadId, WaitQueue};

/// A thread made by `clone`: its Linux thread id and the word to clear
/// (and wake) when it ends (CLONE_CHILD_CLEARTID, set_tid_address).
struct Task {
    tid: u32,
    clear_tid: u64,
}

static TASKS: spin::Mutex<BTreeMap<ThreadId, Task>> = spin::Mutex::new(BTreeMap::new());
static NEXT_TID: AtomicU32 = AtomicU32::new(2);
/// Set once a program made a second thread: from then on every call keeps
/// the caller's SSE state and TLS pointer.
static THREADED: AtomicBool = AtomicBool::new(false);

/// The thread whose Linux id is `tid`.
pub(crate) fn thread_of(tid: u32) -> Option<ThreadId> {
    let tasks = TASKS.lock();
    if tasks.is_empty() {
        // One thread, not yet a task: the caller, whose id is 1.
        return (tid == 1).then(kiln_sched::current);
    }
    tasks.iter().find(|(_, t)| t.tid == tid).map(|(&id, _)| id)
}

/// The calling thread's Linux id (the first thread is 1, the process id).
pub(crate) fn tid() -> u32 {
    if !THREADED.load(Ordering::Relaxed) {
        return 1;
    }
    TASKS
        .lock()
        .get(&kiln_sched::current())
        .map_or(1, |t| t.tid)
}

/// The calling thread's SSE registers and FS base, put back when dropped
/// (another program thread may have run in between). On arm64 the entry
/// saves every register itself, TPIDR_EL0 included.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Keep(Option<(FpState, u64)>);

#[cfg(target_arch = "x86_64")]
impl Keep {
    pub fn new() -> Keep {
        if !THREADED.load(Ordering::Relaxed) {
            return Keep(None);
        }
        let mut fp = FpState::new();
        save(&mut fp);
        Keep(Some((fp, fs_base())))
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Keep {
    fn drop(&mut self) {
        if let Some((fp, fs)) = &self.0 {
            restore(fp);
            set_fs_base(*fs);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) struct Keep;

#[cfg(not(target_arch = "x86_64"))]
impl Keep {
    pub fn new() -> Keep {
        Keep
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn save(fp: &mut FpState) {
    fp.save();
}
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn restore(fp: &FpState) {
    fp.restore();
}
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn fs_base() -> u64 {
    kiln_arch_x86_64::syscall::fs_base()
}
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn set_fs_base(v: u64) {
    kiln_arch_x86_64::syscall::set_fs_base(v)
}
#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
fn save(_: &mut FpState) {}
#[cfg(all(target_arch = "x86_64", not(target_os = "none")))]
fn restore(_: &FpState) {}
#[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
fn fs_base() -> u64 {
    0
}
#[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
fn set_fs_base(_: u64) {}

const CLONE_VM: u64 = 0x100;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x100000;
const CLONE_CHILD_CLEARTID: u64 = 0x200000;
const CLONE_CHILD_SETTID: u64 = 0x1000000;

/// Kernel stack of a program thread: the kernel thread spawned for it
/// starts the program thread, and its system calls (with whatever they
/// block in: the scheduler, the network stack, the idle loop) run here,
/// never on the program's stack.
const START_STACK: usize = 64 << 10;

/// A new Linux thread or process id.
pub(crate) fn new_tid() -> u32 {
    NEXT_TID.fetch_add(1, Ordering::Relaxed)
}

const CLONE_VFORK: u64 = 0x4000;

fn clone(a: [u64; 6], f: &Frame) -> Sys {
    let [flags, stack, ptid, ctid, tls, _] = a;
    if flags & (CLONE_VM | CLONE_VFORK | CLONE_THREAD) == CLONE_VM | CLONE_VFORK {
        // posix_spawn: another program, started by the child.
        return crate::process::spawn(f, stack);
    }
    if flags & CLONE_THREAD != 0 && crate::process::in_child() {
        static SAID_CHILD: AtomicBool = AtomicBool::new(false);
        if !SAID_CHILD.swap(true, Ordering::Relaxed) {
            kiln_console::log!(
                kiln_console::Level::Warn,
                "elf: a program started by another one may not make threads"
            );
        }
        return Err(errno::EAGAIN);
    }
    if flags & (CLONE_VM | CLONE_THREAD) != CLONE_VM | CLONE_THREAD {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            kiln_console::log!(kiln_console::Level::Warn, "{}", crate::process::NO_FORK);
        }
        return Err(errno::ENOSYS);
    }
    if stack == 0 {
        return Err(errno::EINVAL);
    }
    let tid = NEXT_TID.fetch_add(1, Ordering::Relaxed);
    // SAFETY (of `put`): see `crate::bytes`.
    unsafe {
        if flags & CLONE_PARENT_SETTID != 0 {
            put(ptid, &tid.to_le_bytes())?;
        }
        if flags & CLONE_CHILD_SETTID != 0 {
            put(ctid, &tid.to_le_bytes())?;
        }
    }
    let settls = flags & CLONE_SETTLS != 0;
    let child = crate::arch::child_frame(f, stack, settls.then_some(tls));
    let fs = if settls { tls } else { fs_base() };
    if !THREADED.swap(true, Ordering::Relaxed) {
        // The first thread becomes a task too, so tid() knows it.
        TASKS.lock().insert(
            kiln_sched::current(),
            Task {
                tid: 1,
                clear_tid: 0,
            },
        );
    }
    let h = kiln_sched::Builder::new()
        .name(alloc::format!("tid {tid}"))
        .stack_size(START_STACK)
        .spawn(move || crate::arch::start_thread(&child, fs));
    let clear_tid = if flags & CLONE_CHILD_CLEARTID != 0 {
        ctid
    } else {
        0
    };
    TASKS.lock().insert(h.id(), Task { tid, clear_tid });
    crate::signal::inherit_mask(h.id());
    Ok(tid as i64)
}

/// `exit` of one thread: clears and wakes its tid word (how pthread_join
/// learns of it), then the thread ends. The first thread's `exit` ends the
/// program.
fn exit_thread(code: i64) -> ! {
    if crate::process::in_child() {
        crate::process::child_exit(((code & 0xff) << 8) as i32)
    }
    let id = kiln_sched::current();
    let task = if id == 0 {
        None
    } else {
        TASKS.lock().remove(&id)
    };
    let Some(task) = task else { crate::exit(code) };
    if task.clear_tid != 0 {
        // SAFETY: see `crate::bytes`; the word is the program's.
        if unsafe { put(task.clear_tid, &0u32.to_le_bytes()) }.is_ok() {
            wake(task.clear_tid, 1);
        }
    }
    crate::signal::forget_mask(id);
    kiln_sched::exit_current()
}

static FUTEXES: spin::Mutex<BTreeMap<u64, Arc<WaitQueue>>> = spin::Mutex::new(BTreeMap::new());

fn queue(addr: u64) -> Arc<WaitQueue> {
    FUTEXES
        .lock()
        .entry(addr)
        .or_insert_with(|| Arc::new(WaitQueue::new()))
        .clone()
}

fn wake(addr: u64, n: u64) -> i64 {
    let Some(q) = FUTEXES.lock().get(&addr).cloned() else {
        return 0;
    };
    let mut woken = 0;
    while woken < n && q.wake_one() {
        woken += 1;
    }
    if !q.has_waiters() {
        FUTEXES.lock().remove(&addr);
    }
    woken as i64
}

fn futex(a: [u64; 6]) -> Sys {
    const WAIT: u64 = 0;
    const WAKE: u64 = 1;
    const REQUEUE: u64 = 3;
    const CMP_REQUEUE: u64 = 4;
    const WAKE_OP: u64 = 5;
    const WAIT_BITSET: u64 = 9;
    const WAKE_BITSET: u64 = 10;
    let [addr, op, val, timeout, addr2, val3] = a;
    // Without FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256): there
    // is one process, and wall-clock deadlines are converted.
    // SAFETY (of the pointer helpers): see `crate::bytes`.
    unsafe {
        match op & 0x7f {
            WAIT | WAIT_BITSET => {
                if get_u32(addr)? != val as u32 {
                    return Err(errno::EAGAIN);
                }
                let deadline = if timeout == 0 {
                    None
                } else {
                    let t = crate::read_timespec_us(timeout)?;
                    Some(if op & 0x7f == WAIT {
                        crate::now_us().saturating_add(t)
                    } else if op & 256 != 0 {
                        // FUTEX_CLOCK_REALTIME: an absolute wall-clock time.
                        crate::boot_time_of(t)
                    } else {
                        t
                    })
                };
                let q = queue(addr);
                match deadline {
                    None => q.wait(),
                    Some(d) => {
                        let left = d.saturating_sub(crate::now_us());
                        if left == 0 || !q.wait_timeout(Duration::from_micros(left)) {
                            return Err(errno::ETIMEDOUT);
                        }
                    }
                }
                Ok(0)
            }
            WAKE | WAKE_BITSET => Ok(wake(addr, val)),
            REQUEUE | CMP_REQUEUE => {
                if op & 0x7f == CMP_REQUEUE && get_u32(addr)? != val3 as u32 {
                    return Err(errno::EAGAIN);
                }
                // Waking instead of moving: every waiter checks its word again.
                Ok(wake(addr, val) + wake(addr, u64::MAX))
            }
            WAKE_OP => {
                let (kind, cmp) = ((val3 >> 28) & 0xf, (val3 >> 24) & 0xf);
                let (mut arg, cmparg) = (((val3 >> 12) & 0xfff) as u32, (val3 & 0xfff) as u32);
                if kind & 8 != 0 {
                    arg = 1u32.checked_shl(arg).unwrap_or(0);
                }
                let old = get_u32(addr2)?;
                let new = match kind & 7 {
                    0 => arg,
                    1 => old.wrapping_add(arg),
                    2 => old | arg,
                    3 => old & !arg,
                    4 => old ^ arg,
                    _ => return Err(errno::ENOSYS),
                };
                put(addr2, &new.to_le_bytes())?;
                let (o, c) = (old as i32, cmparg as i32);
                let hit = match cmp {
                    0 => o == c,
                    1 => o != c,
                    2 => o < c,
                    3 => o <= c,
                    4 => o > c,
                    5 => o >= c,
                    _ => return Err(errno::ENOSYS),
                };
                let mut n = wake(addr, val);
                if hit {
                    n += wake(addr2, timeout);
                }
                Ok(n)
            }
            _ => Err(errno::ENOSYS),
        }
    }
}

fn arch_prctl(code: u64, addr: u64) -> Sys {
    const ARCH_SET_FS: u64 = 0x1002;
    const ARCH_GET_FS: u64 = 0x1003;
    match code {
        ARCH_SET_FS => {
            set_fs_base(addr);
            Ok(0)
        }
        // SAFETY: see `crate::bytes`.
        ARCH_GET_FS => unsafe { put(addr, &fs_base().to_le_bytes()) }.map(|_| 0),
        _ => Err(errno::EINVAL),
    }
}

/// The thread calls; None if `nr` is not one.
pub(crate) fn call(nr: u64, a: [u64; 6], f: &mut Frame) -> Option<Sys> {
    Some(match nr {
        56 => clone(a, f),
        // clone3: glibc then uses clone.
        435 => Err(errno::ENOSYS),
        60 => exit_thread(a[0] as i64),
        231 => crate::exit(a[0] as i64),
        202 => futex(a),
        186 if crate::process::in_child() => Ok(crate::process::pid() as i64),
        186 => Ok(tid() as i64),
        58 => crate::process::spawn(f, 0),
        218 => {
            if THREADED.load(Ordering::Relaxed) {
                if let Some(t) = TASKS.lock().get_mut(&kiln_sched::current()) {
                    t.clear_tid = a[0];
                }
            }
            Ok(tid() as i64)
        }
        273 => Ok(0),
        // rseq: glibc carries on without it.
        334 => Err(errno::ENOSYS),
        158 => arch_prctl(a[0], a[1]),
        _ => return None,
    })
}
