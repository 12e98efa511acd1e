//! Signals a program sends itself: `kill`/`tgkill`/`raise`, SIGALRM from
//! `alarm` and `setitimer(ITIMER_REAL)`, and the signals of POSIX timers
//! (`timer_create` with SIGEV_SIGNAL or SIGEV_THREAD_ID; SIGEV_NONE timers
//! only count). There is no other process to send one, and faults end the
//! program with a report, so these are the signals that make sense in a
//! unikernel. The pending set is the process's; each thread has its own
//! blocked mask, and a signal is taken by a thread that does not block it.
//!
//! A signal with a handler is delivered when a system call returns (the
//! scheduler is cooperative, so a program that never makes a call never
//! gets one): the kernel writes a Linux signal frame on the program's
//! stack (return address = the program's `sa_restorer`, a `ucontext` with
//! the registers, the siginfo, the FXSAVE state) and continues at the
//! handler; `rt_sigreturn` puts everything back. A signal left at its
//! default action ends the program with status 128 + the signal, as a
//! shell reports it (when it is unblocked, if it was blocked); ignored ones
//! vanish. `rt_sigtimedwait` takes a pending signal without its handler.
//! Blocking calls are not interrupted (no EINTR), except `pause`,
//! `rt_sigsuspend` and `rt_sigtimedwait`, which wait for a signal (from a
//! timer or another thread). The one signal from outside is SIGTERM when
//! the host asks the machine to stop (`kiln stop`): while it is pending,
//! blocking calls (reads, accepts, poll, epoll_wait) return EINTR so the
//! handler runs; left at its default it ends the program with status 0.
//! Both architectures deliver at the return from a system call, with the
//! frame Linux writes for each (x86_64's `rt_sigframe` with its FXSAVE
//! area; arm64's with its `fpsimd_context` record); x86_64 also delivers
//! when it preempts a program thread.

use crate::Frame;
use crate::{errno, get_u64, put, Sys};
use core::sync::atomic::{AtomicU64, Ordering};

const SIGALRM: u64 = 14;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;

#[derive(Clone, Copy, Default)]
struct Action {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

static ACTIONS: spin::Mutex<[Action; 65]> = spin::Mutex::new(
    [Action {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    }; 65],
);
/// Pending signals (bit n-1 for signal n).
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Signals sent to one thread (tkill, tgkill: Go asks a thread to stop
/// its goroutine with SIGURG), delivered only to it; `ANY_DIRECTED` keeps
/// the lock off the path of every call while there are none.
static DIRECTED: spin::Mutex<alloc::collections::BTreeMap<kiln_sched::ThreadId, u64>> =
    spin::Mutex::new(alloc::collections::BTreeMap::new());
static ANY_DIRECTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Signals pending for thread `id` alone.
fn directed(id: kiln_sched::ThreadId) -> u64 {
    if !ANY_DIRECTED.load(Ordering::Relaxed) {
        return 0;
    }
    DIRECTED.lock().get(&id).copied().unwrap_or(0)
}

fn take_directed(id: kiln_sched::ThreadId, bits: u64) {
    let mut d = DIRECTED.lock();
    if let Some(p) = d.get_mut(&id) {
        *p &= !bits;
        if *p == 0 {
            d.remove(&id);
        }
    }
    ANY_DIRECTED.store(!d.is_empty(), Ordering::Relaxed);
}

/// tkill/tgkill: `sig` for the thread with Linux id `tid` (ESRCH if there
/// is none); handled as the program's own signal when it is the caller.
fn raise_in(tid: u64, sig: u64) -> Sys {
    if sig == 0 {
        return crate::thread::thread_of(tid as u32).map(|_| 0).ok_or(3);
    }
    valid(sig)?;
    let Some(id) = crate::thread::thread_of(tid as u32) else {
        return Err(3); // ESRCH
    };
    if id == kiln_sched::current() {
        return raise(sig, -6);
    }
    let handler = ACTIONS.lock()[sig as usize].handler;
    match handler {
        SIG_IGN => return Ok(0),
        SIG_DFL if ignored_by_default(sig) => return Ok(0),
        SIG_DFL => die_of(sig),
        _ => {}
    }
    INFO.lock()[sig as usize] = Info { code: -6, ..USER };
    *DIRECTED.lock().entry(id).or_insert(0) |= bit(sig);
    ANY_DIRECTED.store(true, Ordering::Relaxed);
    SIGNALLED.wake_all();
    Ok(0)
}
/// The blocked masks.
static BLOCKED: Masks = Masks(spin::Mutex::new(alloc::collections::BTreeMap::new()));

/// Blocked signals, one mask per thread as on Linux: glibc starts a
/// thread with every signal blocked until it sets the thread's own mask,
/// and jemalloc's background threads keep everything blocked; with one
/// mask for all, the last such thread to run would block every signal of
/// the program (SIGTERM from `kiln stop` among them). A new thread starts
/// with its creator's mask ([`inherit_mask`]). Calls read and write the
/// calling thread's.
struct Masks(spin::Mutex<alloc::collections::BTreeMap<kiln_sched::ThreadId, u64>>);

impl Masks {
    /// The calling thread's mask.
    fn get(&self) -> u64 {
        self.0
            .lock()
            .get(&kiln_sched::current())
            .copied()
            .unwrap_or(0)
    }

    fn set(&self, mask: u64) {
        self.0.lock().insert(kiln_sched::current(), mask);
    }

    /// Sets the calling thread's mask; returns the one it had.
    fn replace(&self, mask: u64) -> u64 {
        self.0
            .lock()
            .insert(kiln_sched::current(), mask)
            .unwrap_or(0)
    }
}

/// Thread `child` (just spawned by `clone`) starts with the calling
/// thread's blocked mask.
pub(crate) fn inherit_mask(child: kiln_sched::ThreadId) {
    let mask = BLOCKED.get();
    BLOCKED.0.lock().insert(child, mask);
}

/// Thread `id` ended: its mask and alternate stack go.
pub(crate) fn forget_mask(id: kiln_sched::ThreadId) {
    BLOCKED.0.lock().remove(&id);
    take_directed(id, u64::MAX);
    ALT_STACKS.lock().remove(&id);
}

/// Each thread's alternate signal stack (`sigaltstack`): base and size.
/// A handler installed with SA_ONSTACK runs there (Go runs every signal
/// handler on such a stack of its own and checks that it did).
static ALT_STACKS: spin::Mutex<alloc::collections::BTreeMap<kiln_sched::ThreadId, (u64, u64)>> =
    spin::Mutex::new(alloc::collections::BTreeMap::new());

const SS_ONSTACK: u32 = 1;
const SS_DISABLE: u32 = 2;
/// Linux's SS_AUTODISARM, accepted (the stack stays armed: handlers do not
/// nest on it here, as signals arrive only on return from system calls).
const SS_AUTODISARM: u32 = 1 << 31;
const MINSIGSTKSZ: u64 = 2048;

/// sigaltstack(ss, old): `stack_t` is ss_sp (8 bytes), ss_flags (4,
/// padded to 8), ss_size (8). `sp` is the program's stack pointer at the
/// call, for SS_ONSTACK and for refusing a change while on the stack.
fn sigaltstack(ss: u64, old: u64, sp: u64) -> Sys {
    let me = kiln_sched::current();
    let cur = ALT_STACKS.lock().get(&me).copied();
    let on = cur.is_some_and(|(base, size)| sp > base && sp <= base + size);
    if old != 0 {
        let (base, size) = cur.unwrap_or((0, 0));
        let flags = match cur {
            None => SS_DISABLE,
            Some(_) if on => SS_ONSTACK,
            Some(_) => 0,
        };
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&base.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[16..].copy_from_slice(&size.to_le_bytes());
        // SAFETY: see `crate::bytes`.
        unsafe { put(old, &b) }?;
    }
    if ss != 0 {
        // SAFETY: see `crate::bytes`.
        let (base, flags, size) =
            unsafe { (get_u64(ss)?, get_u64(ss + 8)? as u32, get_u64(ss + 16)?) };
        if on {
            return Err(1); // EPERM: in use
        }
        if flags & !(SS_DISABLE | SS_AUTODISARM) != 0 {
            return Err(22); // EINVAL
        }
        if flags & SS_DISABLE != 0 {
            ALT_STACKS.lock().remove(&me);
        } else if size < MINSIGSTKSZ {
            return Err(12); // ENOMEM
        } else {
            ALT_STACKS.lock().insert(me, (base, size));
        }
    }
    Ok(0)
}
/// ITIMER_REAL: (due, interval) in µs since boot; due 0 means off.
static ALARM: spin::Mutex<(u64, u64)> = spin::Mutex::new((0, 0));
/// When the next timer (the alarm or a POSIX timer) is due, µs since boot;
/// 0 if none is armed. Every system call checks this, not the locks.
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Woken when a signal becomes pending (pause, sigsuspend, sigtimedwait).
static SIGNALLED: kiln_sched::WaitQueue = kiln_sched::WaitQueue::new();

/// What a handler's siginfo says about a pending signal.
#[derive(Clone, Copy)]
struct Info {
    /// si_code: SI_USER 0, SI_KERNEL 0x80, SI_TIMER -2, SI_TKILL -6.
    code: i32,
    /// The two 32-bit fields after it: pid and uid, or a timer's id and
    /// overrun count.
    a: u32,
    b: u32,
    /// A timer's sigev_value.
    value: u64,
}

const USER: Info = Info {
    code: 0,
    a: 1,
    b: 0,
    value: 0,
};
static INFO: spin::Mutex<[Info; 65]> = spin::Mutex::new([USER; 65]);

/// A POSIX timer (`timer_create`).
#[derive(Clone, Copy)]
struct PosixTimer {
    /// µs since boot; 0 when disarmed.
    due: u64,
    interval: u64,
    /// The signal it sends; 0 for SIGEV_NONE.
    sig: u64,
    value: u64,
    /// Expirations missed before the last signal was taken.
    overrun: u64,
    /// On CLOCK_REALTIME (absolute times are wall-clock times).
    realtime: bool,
}

/// Timers by id (Linux numbers them from 0); at most [`MAX_TIMERS`].
static TIMERS: spin::Mutex<alloc::vec::Vec<Option<PosixTimer>>> =
    spin::Mutex::new(alloc::vec::Vec::new());
const MAX_TIMERS: usize = 1024;

fn bit(sig: u64) -> u64 {
    1 << (sig - 1)
}

fn valid(sig: u64) -> Result<(), i64> {
    if (1..=64).contains(&sig) {
        Ok(())
    } else {
        Err(errno::EINVAL)
    }
}

/// rt_sigaction: records the handler (struct kernel_sigaction: handler,
/// flags, restorer, mask).
fn sigaction(sig: u64, act: u64, old: u64) -> Sys {
    valid(sig)?;
    let mut a = ACTIONS.lock();
    if old != 0 {
        let o = a[sig as usize];
        let mut b = [0u8; 32];
        for (i, v) in [o.handler, o.flags, o.restorer, o.mask]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        // SAFETY: see `crate::bytes`.
        unsafe { put(old, &b) }?;
    }
    if act != 0 {
        if sig == 9 || sig == 19 {
            return Err(errno::EINVAL);
        }
        // SAFETY: see `crate::bytes`.
        let v = unsafe {
            [
                get_u64(act)?,
                get_u64(act + 8)?,
                get_u64(act + 16)?,
                get_u64(act + 24)?,
            ]
        };
        a[sig as usize] = Action {
            handler: v[0],
            flags: v[1],
            restorer: v[2],
            mask: v[3],
        };
    }
    Ok(0)
}

fn sigprocmask(how: u64, set: u64, old: u64) -> Sys {
    let cur = BLOCKED.get();
    if old != 0 {
        // SAFETY: see `crate::bytes`.
        unsafe { put(old, &cur.to_le_bytes()) }?;
    }
    if set != 0 {
        // SAFETY: see `crate::bytes`.
        let s = unsafe { get_u64(set) }? & !(bit(9) | bit(19));
        let new = match how {
            0 => cur | s,
            1 => cur & !s,
            2 => s,
            _ => return Err(errno::EINVAL),
        };
        BLOCKED.set(new);
    }
    Ok(0)
}

/// A signal sent to the program itself by kill (SI_USER) or tkill.
fn raise(sig: u64, code: i32) -> Sys {
    if sig == 0 {
        return Ok(0);
    }
    valid(sig)?;
    pend(sig, Info { code, ..USER });
    Ok(0)
}

/// Whether `sig` left at SIG_DFL is ignored (SIGCHLD, SIGCONT, SIGURG,
/// SIGWINCH and the stop signals); the others end the program.
fn ignored_by_default(sig: u64) -> bool {
    matches!(sig, 17 | 18 | 19 | 20 | 21 | 22 | 23 | 28)
}

fn die_of(sig: u64) -> ! {
    // A program another one started dies alone.
    if crate::process::in_child() {
        kiln_console::log!(
            kiln_console::Level::Info,
            "elf: process {} got signal {sig} with no handler: it ends",
            crate::process::pid()
        );
        crate::process::child_exit(sig as i32)
    }
    if sig == SIGTERM && FROM_HOST.load(Ordering::Relaxed) {
        // `kiln stop` asked, and the program took the default: it ends as
        // asked, which is success.
        kiln_console::log!(
            kiln_console::Level::Info,
            "elf: the program ended on SIGTERM (the host's stop request)"
        );
        crate::exit(0)
    }
    kiln_console::log!(
        kiln_console::Level::Info,
        "elf: the program got signal {sig} with no handler: it ends"
    );
    crate::exit(128 + sig as i64)
}

const SIGTERM: u64 = 15;
/// Set by the host's stop request (`kiln stop`): SIGTERM came from
/// outside, and blocking calls return EINTR while it is pending, so the
/// program's handler runs promptly (signals a program sends itself do not
/// interrupt calls).
static FROM_HOST: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The host asked the machine to stop: the program gets SIGTERM, as a
/// Linux system's shutdown sends it (nginx, redis and most servers finish
/// their work and exit on it). Runs from the scheduler (see
/// `kiln_boot::on_stop`).
pub(crate) fn stop_from_host() {
    FROM_HOST.store(true, Ordering::Relaxed);
    pend(SIGTERM, USER);
    crate::fd::notify();
}

/// Whether a blocking call should give up with EINTR: the host's SIGTERM
/// is pending, unblocked, and has a handler to run.
pub(crate) fn interrupted() -> bool {
    FROM_HOST.load(Ordering::Relaxed)
        && PENDING.load(Ordering::Relaxed) & !BLOCKED.get() & bit(SIGTERM) != 0
}

/// Makes `sig` pending (or acts on it at once if it is not blocked and has
/// no handler).
fn pend(sig: u64, info: Info) {
    let handler = ACTIONS.lock()[sig as usize].handler;
    let blocked = BLOCKED.get() & bit(sig) != 0;
    match handler {
        SIG_IGN => return,
        SIG_DFL if ignored_by_default(sig) => return,
        SIG_DFL if !blocked => die_of(sig),
        _ => {}
    }
    INFO.lock()[sig as usize] = info;
    PENDING.fetch_or(bit(sig), Ordering::Relaxed);
    SIGNALLED.wake_all();
}

/// Fires the alarm and the POSIX timers that are due.
fn check_alarm() {
    let next = NEXT.load(Ordering::Relaxed);
    if next == 0 {
        return;
    }
    let now = crate::now_us();
    if now < next {
        return;
    }
    let fire = {
        let mut a = ALARM.lock();
        if a.0 != 0 && now >= a.0 {
            a.0 = if a.1 > 0 { now + a.1 } else { 0 };
            true
        } else {
            false
        }
    };
    if fire {
        pend(
            SIGALRM,
            Info {
                code: 0x80,
                a: 0,
                b: 0,
                value: 0,
            },
        );
    }
    let mut due = alloc::vec::Vec::new();
    for (id, t) in TIMERS.lock().iter_mut().enumerate() {
        let Some(t) = t.as_mut().filter(|t| t.due != 0 && now >= t.due) else {
            continue;
        };
        let missed = if t.interval > 0 {
            (now - t.due) / t.interval
        } else {
            0
        };
        t.due = if t.interval > 0 {
            t.due + (missed + 1) * t.interval
        } else {
            0
        };
        if t.sig == 0 {
            continue;
        }
        // An expiry while the last signal is still pending is an overrun.
        let queued = PENDING.load(Ordering::Relaxed) & bit(t.sig) != 0;
        t.overrun = if queued {
            t.overrun + 1 + missed
        } else {
            missed
        };
        due.push((
            t.sig,
            Info {
                code: -2,
                a: id as u32,
                b: t.overrun.min(i32::MAX as u64) as u32,
                value: t.value,
            },
        ));
    }
    rearm();
    for (sig, info) in due {
        pend(sig, info);
    }
}

/// Recomputes [`NEXT`] after a timer changed.
fn rearm() {
    let a = ALARM.lock().0;
    let t = TIMERS
        .lock()
        .iter()
        .flatten()
        .map(|t| t.due)
        .filter(|&d| d != 0)
        .min()
        .unwrap_or(0);
    NEXT.store(
        match (a, t) {
            (0, t) => t,
            (a, 0) => a,
            (a, t) => a.min(t),
        },
        Ordering::Relaxed,
    );
}

fn timeval_us(ptr: u64) -> Result<u64, i64> {
    // SAFETY: see `crate::bytes`.
    let (s, us) = unsafe { (get_u64(ptr)?, get_u64(ptr + 8)?) };
    Ok(s.saturating_mul(1_000_000).saturating_add(us))
}

fn put_timeval(ptr: u64, us: u64) -> Result<(), i64> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(us / 1_000_000).to_le_bytes());
    b[8..].copy_from_slice(&(us % 1_000_000).to_le_bytes());
    // SAFETY: see `crate::bytes`.
    unsafe { put(ptr, &b) }
}

/// setitimer/getitimer(ITIMER_REAL) as struct itimerval (interval, value).
fn itimer(which: u64, new: u64, old: u64) -> Sys {
    if which != 0 {
        return Err(errno::EINVAL);
    }
    let now = crate::now_us();
    let mut a = ALARM.lock();
    if old != 0 {
        put_timeval(old, a.1)?;
        put_timeval(
            old + 16,
            if a.0 == 0 {
                0
            } else {
                a.0.saturating_sub(now).max(1)
            },
        )?;
    }
    if new != 0 {
        let (interval, value) = (timeval_us(new)?, timeval_us(new + 16)?);
        *a = (if value == 0 { 0 } else { now + value }, interval);
        drop(a);
        rearm();
    }
    Ok(0)
}

fn alarm(secs: u64) -> Sys {
    let now = crate::now_us();
    let mut a = ALARM.lock();
    let left = if a.0 == 0 {
        0
    } else {
        a.0.saturating_sub(now).div_ceil(1_000_000)
    };
    *a = (if secs == 0 { 0 } else { now + secs * 1_000_000 }, 0);
    drop(a);
    rearm();
    Ok(left as i64)
}

/// Waits until a signal in `set` is pending or `deadline` (µs since boot)
/// passes; true if one is pending.
fn wait_for(set: u64, deadline: Option<u64>) -> bool {
    loop {
        check_alarm();
        if (PENDING.load(Ordering::Relaxed) | directed(kiln_sched::current())) & set != 0 {
            return true;
        }
        let now = crate::now_us();
        let until = match (NEXT.load(Ordering::Relaxed), deadline) {
            (0, d) => d,
            (n, None) => Some(n),
            (n, Some(d)) => Some(n.min(d)),
        };
        if deadline.is_some_and(|d| now >= d) {
            return false;
        }
        match until {
            // Nothing will come but from another thread (a deadlock report
            // if there is none).
            None => SIGNALLED.wait(),
            Some(u) => {
                SIGNALLED.wait_timeout(core::time::Duration::from_micros(
                    u.saturating_sub(now).max(1),
                ));
            }
        }
    }
}

/// pause/rt_sigsuspend: waits for a signal that is not blocked, then EINTR.
fn pause() -> Sys {
    wait_for(!BLOCKED.get(), None);
    Err(errno::EINTR)
}

/// rt_sigtimedwait: takes a pending signal in `set` (blocked or not)
/// without running its handler; EAGAIN when the timeout passes.
fn timedwait(set: u64, info: u64, timeout: u64) -> Sys {
    // SAFETY: see `crate::bytes`.
    let set = unsafe { get_u64(set) }?;
    let deadline = if timeout != 0 {
        // SAFETY: see `crate::bytes`.
        Some(crate::now_us().saturating_add(unsafe { crate::read_timespec_us(timeout) }?))
    } else {
        None
    };
    if !wait_for(set, deadline) {
        return Err(errno::EAGAIN);
    }
    let ready = PENDING.load(Ordering::Relaxed) & set;
    let sig = ready.trailing_zeros() as u64 + 1;
    PENDING.fetch_and(!bit(sig), Ordering::Relaxed);
    if info != 0 {
        // SAFETY: see `crate::bytes`.
        unsafe { put(info, &siginfo(sig)) }?;
    }
    Ok(sig as i64)
}

/// The siginfo (128 bytes) for a pending `sig`.
fn siginfo(sig: u64) -> [u8; 128] {
    let i = INFO.lock()[sig as usize];
    let mut b = [0u8; 128];
    b[..4].copy_from_slice(&(sig as i32).to_le_bytes());
    b[8..12].copy_from_slice(&i.code.to_le_bytes());
    b[16..20].copy_from_slice(&i.a.to_le_bytes());
    b[20..24].copy_from_slice(&i.b.to_le_bytes());
    b[24..32].copy_from_slice(&i.value.to_le_bytes());
    b
}

/// timer_create(clock, sigevent, id).
fn timer_create(clock: u64, sev: u64, idp: u64) -> Sys {
    // The clocks Linux has (CPU-time clocks count wall time here: the
    // program is all that runs); not another process's CPU clock.
    if clock > 11 || matches!(clock, 10) {
        return Err(errno::EINVAL);
    }
    let mut timers = TIMERS.lock();
    let id = match timers.iter().position(Option::is_none) {
        Some(i) => i,
        None if timers.len() < MAX_TIMERS => {
            timers.push(None);
            timers.len() - 1
        }
        None => return Err(errno::EAGAIN),
    };
    let (sig, value) = if sev == 0 {
        (SIGALRM, id as u64)
    } else {
        // SAFETY: see `crate::bytes` (struct sigevent: value, signo,
        // notify, thread id).
        let (value, word) = unsafe { (get_u64(sev)?, get_u64(sev + 8)?) };
        let (signo, notify) = (word & 0xffff_ffff, word >> 32);
        match notify {
            // SIGEV_SIGNAL, SIGEV_THREAD_ID (to the process: its threads
            // share one pending set).
            0 | 4 => {
                valid(signo)?;
                (signo, value)
            }
            // SIGEV_NONE
            1 => (0, value),
            _ => return Err(errno::EINVAL),
        }
    };
    // SAFETY: see `crate::bytes`.
    unsafe { put(idp, &(id as i32).to_le_bytes()) }?;
    let realtime = matches!(clock, 0 | 5 | 8 | 11);
    timers[id] = Some(PosixTimer {
        due: 0,
        interval: 0,
        sig,
        value,
        overrun: 0,
        realtime,
    });
    Ok(0)
}

/// Runs `f` on the slot of existing timer `id` (a timer_t: an int);
/// EINVAL if there is none.
fn with_slot<R>(id: u64, f: impl FnOnce(&mut Option<PosixTimer>) -> R) -> Result<R, i64> {
    let mut timers = TIMERS.lock();
    let slot = usize::try_from(id as i32)
        .ok()
        .and_then(|i| timers.get_mut(i))
        .filter(|t| t.is_some())
        .ok_or(errno::EINVAL)?;
    Ok(f(slot))
}

fn with_timer<R>(id: u64, f: impl FnOnce(&mut PosixTimer) -> R) -> Result<R, i64> {
    with_slot(id, |t| f(t.as_mut().unwrap()))
}

/// Writes a struct itimerspec (interval, time left) for `t`.
fn put_itimerspec(ptr: u64, t: &PosixTimer) -> Result<(), i64> {
    let left = if t.due == 0 {
        0
    } else {
        t.due.saturating_sub(crate::now_us()).max(1)
    };
    // SAFETY: see `crate::bytes`.
    unsafe {
        put(ptr, &crate::timespec(t.interval))?;
        put(ptr + 16, &crate::timespec(left))
    }
}

/// timer_settime(id, flags, new, old): TIMER_ABSTIME (1) takes the value
/// as a time on the timer's clock (CLOCK_REALTIME's is the wall clock).
fn timer_settime(id: u64, flags: u64, new: u64, old: u64) -> Sys {
    // SAFETY: see `crate::bytes`.
    let (interval, value) = unsafe {
        (
            crate::read_timespec_us(new)?,
            crate::read_timespec_us(new + 16)?,
        )
    };
    let now = crate::now_us();
    let prev = with_timer(id, |t| {
        let due = match (value, flags & 1 != 0) {
            (0, _) => 0,
            (v, false) => now.saturating_add(v),
            // Absolute: a time on the timer's clock (already past: at once).
            (v, true) if t.realtime => crate::boot_time_of(v).max(1),
            (v, true) => v.max(1),
        };
        let prev = *t;
        t.due = due;
        t.interval = interval;
        t.overrun = 0;
        prev
    })?;
    rearm();
    if old != 0 {
        put_itimerspec(old, &prev)?;
    }
    Ok(0)
}

/// rt_sigsuspend: waits with the given mask, then puts the old one back.
fn suspend(mask: u64) -> Sys {
    // SAFETY: see `crate::bytes`.
    let mask = unsafe { get_u64(mask) }?;
    let old = BLOCKED.replace(mask & !(bit(9) | bit(19)));
    let r = pause();
    BLOCKED.set(old);
    r
}

/// The signal calls; None if `nr` is not one (rt_sigreturn is handled by
/// [`sigreturn`]).
pub(crate) fn call(nr: u64, a: [u64; 6], sp: u64) -> Option<Sys> {
    Some(match nr {
        131 => sigaltstack(a[0], a[1], sp),
        13 => sigaction(a[0], a[1], a[2]),
        14 => sigprocmask(a[0], a[1], a[2]),
        127 => {
            let p = PENDING.load(Ordering::Relaxed) & BLOCKED.get();
            // SAFETY: see `crate::bytes`.
            unsafe { put(a[0], &p.to_le_bytes()) }.map(|_| 0)
        }
        // kill(pid, sig) to itself (pid 1, 0 or -1); tkill/tgkill to one of
        // its threads.
        62 if matches!(a[0] as i64, 0 | 1 | -1) => raise(a[1], 0),
        62 => Err(3), // ESRCH
        200 => raise_in(a[0], a[1]),
        234 => raise_in(a[1], a[2]),
        128 => timedwait(a[0], a[1], a[2]),
        222 => timer_create(a[0], a[1], a[2]),
        223 => timer_settime(a[0], a[1], a[2], a[3]),
        224 => with_timer(a[0], |t| *t)
            .and_then(|t| put_itimerspec(a[1], &t))
            .map(|_| 0),
        225 => with_timer(a[0], |t| t.overrun as i64),
        226 => with_slot(a[0], |t| *t = None).map(|()| {
            rearm();
            0
        }),
        37 => alarm(a[0]),
        36 => itimer(a[0], 0, a[1]),
        38 => itimer(a[0], a[1], a[2]),
        34 => pause(),
        130 => suspend(a[0]),
        _ => return None,
    })
}

/// Offsets in the Linux x86_64 `ucontext` and `sigcontext`.
const UC_MCONTEXT: u64 = 40;
const UC_SIGMASK: u64 = UC_MCONTEXT + 256;
const UC_SIZE: u64 = UC_SIGMASK + 8;

/// The next signal to deliver to the calling thread: pending for it or
/// for the program, not blocked, with a handler to run (a default action
/// that ends the program ends it here; ignored ones are dropped).
fn take_deliverable() -> Option<(u64, Action)> {
    // Every system call returns through here: the locks only when
    // something is pending.
    let mine = directed(kiln_sched::current());
    let pending = PENDING.load(Ordering::Relaxed) | mine;
    if pending == 0 {
        return None;
    }
    let ready = pending & !BLOCKED.get();
    if ready == 0 {
        return None;
    }
    let sig = ready.trailing_zeros() as u64 + 1;
    if mine & bit(sig) != 0 {
        take_directed(kiln_sched::current(), bit(sig));
    } else {
        PENDING.fetch_and(!bit(sig), Ordering::Relaxed);
    }
    let a = {
        let mut acts = ACTIONS.lock();
        let a = acts[sig as usize];
        if a.flags & SA_RESETHAND != 0 {
            acts[sig as usize] = Action::default();
        }
        a
    };
    if a.handler == SIG_DFL && !ignored_by_default(sig) {
        die_of(sig);
    }
    // x86_64 needs the program's restorer; arm64 handlers without one
    // return to the kernel's (Linux's vDSO has one; Go relies on it).
    if a.handler <= SIG_IGN || (cfg!(target_arch = "x86_64") && a.flags & SA_RESTORER == 0) {
        return None;
    }
    Some((sig, a))
}

/// Writes the Linux signal frame for `sig` below the program's stack (or
/// on its alternate stack) from `g`, the registers where the signal
/// interrupted it in `mcontext` order (r8-r15, rdi, rsi, rbp, rbx, rdx,
/// rax, rcx, rsp, rip, eflags), and blocks what the handler blocks.
/// Returns the handler's stack pointer, siginfo and ucontext addresses.
#[cfg(target_arch = "x86_64")]
fn write_frame(g: &[u64; 18], sig: u64, a: &Action) -> Option<(u64, u64, u64)> {
    let rsp = g[15];
    // Below the red zone, or at the top of the thread's alternate stack
    // for an SA_ONSTACK handler (unless already on it): FXSAVE area
    // (64-aligned), siginfo, ucontext, and the return address (the
    // restorer) where the handler's stack starts.
    let alt = ALT_STACKS.lock().get(&kiln_sched::current()).copied();
    let top = match alt {
        Some((base, size)) if a.flags & SA_ONSTACK != 0 && !(rsp > base && rsp <= base + size) => {
            (base + size) & !15
        }
        _ => rsp - 128,
    };
    let fp = (top - 512) & !63;
    let info = fp - 128;
    let uc = (info - UC_SIZE) & !15;
    let sp = uc - 8;
    let mut ucb = [0u8; UC_SIZE as usize];
    for (i, v) in g.iter().enumerate() {
        let at = (UC_MCONTEXT + i as u64 * 8) as usize;
        ucb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    // uc_stack: the alternate stack as it was where the signal came (at
    // 16: sp, flags, size), as Linux saves it.
    let (ss_base, ss_flags, ss_size) = match alt {
        Some((b, n)) if rsp > b && rsp <= b + n => (b, SS_ONSTACK, n),
        Some((b, n)) => (b, 0, n),
        None => (0, SS_DISABLE, 0),
    };
    ucb[16..24].copy_from_slice(&ss_base.to_le_bytes());
    ucb[24..28].copy_from_slice(&ss_flags.to_le_bytes());
    ucb[32..40].copy_from_slice(&ss_size.to_le_bytes());
    // cs (the kernel's: programs run in ring 0), then fpstate.
    ucb[(UC_MCONTEXT + 144) as usize..(UC_MCONTEXT + 146) as usize]
        .copy_from_slice(&8u16.to_le_bytes());
    ucb[(UC_MCONTEXT + 184) as usize..(UC_MCONTEXT + 192) as usize]
        .copy_from_slice(&fp.to_le_bytes());
    let blocked = BLOCKED.get();
    ucb[UC_SIGMASK as usize..].copy_from_slice(&blocked.to_le_bytes());
    let infob = siginfo(sig);
    #[allow(unused_mut)]
    let mut fpb = kiln_arch_x86_64::syscall::FpState::new();
    #[cfg(target_os = "none")]
    fpb.save();
    // SAFETY (of `put`): the program's stack, below what it uses (see
    // `crate::bytes`).
    unsafe {
        put(fp, &fpb.0).ok()?;
        put(info, &infob).ok()?;
        put(uc, &ucb).ok()?;
        put(sp, &a.restorer.to_le_bytes()).ok()?;
    }
    let mut mask = blocked | a.mask;
    if a.flags & SA_NODEFER == 0 {
        mask |= bit(sig);
    }
    BLOCKED.set(mask & !(bit(9) | bit(19)));
    Some((sp, info, uc))
}

/// Called when a system call returns `result`: if a signal with a handler
/// is pending and not blocked, the registers the program continues with
/// (at its handler, with the frame written below its stack).
#[cfg(target_arch = "x86_64")]
pub(crate) fn deliver(f: &Frame, result: i64) -> Option<Frame> {
    check_alarm();
    let (sig, a) = take_deliverable()?;
    // rcx and r11 hold the return address and flags, as `syscall` leaves them.
    let g = [
        f.a[4],
        f.a[5],
        f.a[3],
        f.rflags,
        f.r12,
        f.r13,
        f.r14,
        f.r15,
        f.a[0],
        f.a[1],
        f.rbp,
        f.rbx,
        f.a[2],
        result as u64,
        f.rip,
        f.rsp,
        f.rip,
        f.rflags,
    ];
    let (sp, info, uc) = write_frame(&g, sig, &a)?;
    let mut n = *f;
    n.nr = 0;
    n.a = [sig, info, uc, 0, 0, 0];
    n.rsp = sp;
    n.rip = a.handler;
    n.rflags &= !(1 << 10); // DF clear, as the ABI wants at a call
    Some(n)
}

/// A signal for a program thread the timer or a device interrupted
/// anywhere (Go's preemption request, SIGURG, sent by another thread):
/// `f` becomes the handler's entry, with every register saved in the frame.
#[cfg(target_arch = "x86_64")]
pub(crate) fn deliver_async(f: &mut kiln_arch_x86_64::irq::Irq) -> bool {
    check_alarm();
    let Some((sig, a)) = take_deliverable() else {
        return false;
    };
    let g = [
        f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15, f.rdi, f.rsi, f.rbp, f.rbx, f.rdx,
        f.rax, f.rcx, f.rsp, f.rip, f.rflags,
    ];
    let Some((sp, info, uc)) = write_frame(&g, sig, &a) else {
        return false;
    };
    f.rdi = sig;
    f.rsi = info;
    f.rdx = uc;
    f.rax = 0;
    f.rsp = sp;
    f.rip = a.handler;
    f.rflags &= !(1 << 10);
    true
}

/// rt_sigreturn: the registers, FP state and signal mask saved when the
/// handler was entered (the `ucontext` at the stack pointer), every one of
/// them (a signal may have interrupted the program anywhere).
#[cfg(target_arch = "x86_64")]
pub(crate) fn sigreturn(f: &Frame) -> Result<kiln_arch_x86_64::irq::Irq, i64> {
    let uc = f.rsp;
    let r = |i: u64| {
        // SAFETY: see `crate::bytes`; the frame `deliver` wrote.
        unsafe { get_u64(uc + UC_MCONTEXT + i * 8) }
    };
    let n = kiln_arch_x86_64::irq::Irq {
        r8: r(0)?,
        r9: r(1)?,
        r10: r(2)?,
        r11: r(3)?,
        r12: r(4)?,
        r13: r(5)?,
        r14: r(6)?,
        r15: r(7)?,
        rdi: r(8)?,
        rsi: r(9)?,
        rbp: r(10)?,
        rbx: r(11)?,
        rdx: r(12)?,
        rax: r(13)?,
        rcx: r(14)?,
        rsp: r(15)?,
        rip: r(16)?,
        // The arithmetic flags, direction and IF as they were; nothing
        // else (trap, IOPL, nested task) comes from the program.
        rflags: r(17)? & 0xed5 | 0x2,
        cs: 0,
        ss: 0,
    };
    let fp = r(23)?;
    // SAFETY: see `crate::bytes`.
    let mask = unsafe { get_u64(uc + UC_SIGMASK) }?;
    BLOCKED.set(mask & !(bit(9) | bit(19)));
    if fp != 0 && fp.is_multiple_of(16) {
        #[allow(unused_mut)]
        let mut st = kiln_arch_x86_64::syscall::FpState::new();
        // SAFETY: see `crate::bytes`.
        st.0.copy_from_slice(unsafe { crate::bytes(fp, 512) }?);
        #[cfg(target_os = "none")]
        st.restore();
    }
    Ok(n)
}

/// arm64's signal frame: siginfo, then the ucontext (flags, link, the
/// alternate stack at 16, the mask at 40, the `sigcontext` at 176: fault
/// address, x0-x30, sp, pc, pstate, then its 4096-byte record area at 464
/// holding the FP/SIMD record and a terminating empty one), then a frame
/// record (x29, x30) for unwinders.
#[cfg(target_arch = "aarch64")]
mod arm64 {
    pub const INFO: u64 = 0;
    pub const UC: u64 = 128;
    pub const UC_STACK: u64 = UC + 16;
    pub const UC_SIGMASK: u64 = UC + 40;
    pub const SC: u64 = UC + 176;
    pub const SC_REGS: u64 = SC + 8;
    pub const SC_SP: u64 = SC + 256;
    pub const SC_PC: u64 = SC + 264;
    pub const SC_PSTATE: u64 = SC + 272;
    pub const SC_RESERVED: u64 = SC + 288;
    pub const FPSIMD_MAGIC: u32 = 0x4650_8001;
    pub const FPSIMD_SIZE: u32 = 528;
    /// siginfo + ucontext (176 + sigcontext's 4384).
    pub const FRAME: u64 = 128 + 176 + 4384;
    /// With the frame record, 16-aligned.
    pub const TOTAL: u64 = FRAME + 16;
}

/// Called when a system call returns (its result already in x0): if a
/// signal with a handler is pending and not blocked, the registers the
/// program continues with (at its handler, with Linux's arm64 frame
/// written below its stack).
#[cfg(target_arch = "aarch64")]
pub(crate) fn deliver(f: &Frame, result: i64) -> Option<Frame> {
    use arm64::*;
    check_alarm();
    let (sig, a) = take_deliverable()?;
    let sp = f.sp;
    let alt = ALT_STACKS.lock().get(&kiln_sched::current()).copied();
    let top = match alt {
        Some((base, size)) if a.flags & SA_ONSTACK != 0 && !(sp > base && sp <= base + size) => {
            base + size
        }
        _ => sp,
    };
    let at = (top - TOTAL) & !15;
    let mut b = alloc::vec![0u8; TOTAL as usize];
    let mut w = |off: u64, v: &[u8]| b[off as usize..off as usize + v.len()].copy_from_slice(v);
    w(INFO, &siginfo(sig));
    let (ss_base, ss_flags, ss_size) = match alt {
        Some((base, n)) if sp > base && sp <= base + n => (base, SS_ONSTACK, n),
        Some((base, n)) => (base, 0, n),
        None => (0, SS_DISABLE, 0),
    };
    w(UC_STACK, &ss_base.to_le_bytes());
    w(UC_STACK + 8, &ss_flags.to_le_bytes());
    w(UC_STACK + 16, &ss_size.to_le_bytes());
    let blocked = BLOCKED.get();
    w(UC_SIGMASK, &blocked.to_le_bytes());
    for (i, x) in f.x.iter().enumerate() {
        let v = if i == 0 { result as u64 } else { *x };
        w(SC_REGS + 8 * i as u64, &v.to_le_bytes());
    }
    w(SC_SP, &sp.to_le_bytes());
    w(SC_PC, &f.elr.to_le_bytes());
    w(SC_PSTATE, &f.spsr.to_le_bytes());
    w(SC_RESERVED, &FPSIMD_MAGIC.to_le_bytes());
    w(SC_RESERVED + 4, &FPSIMD_SIZE.to_le_bytes());
    w(SC_RESERVED + 8, &(f.fpsr as u32).to_le_bytes());
    w(SC_RESERVED + 12, &(f.fpcr as u32).to_le_bytes());
    for (i, q) in f.q.iter().enumerate() {
        w(SC_RESERVED + 16 + 16 * i as u64, &q.to_le_bytes());
    }
    // The terminating record (zero) follows; the frame record: the
    // interrupted x29 and pc.
    w(FRAME, &f.x[29].to_le_bytes());
    w(FRAME + 8, &f.elr.to_le_bytes());
    // SAFETY (of `put`): the program's stack, below what it uses (see
    // `crate::bytes`).
    unsafe { put(at, &b) }.ok()?;
    let mut mask = blocked | a.mask;
    if a.flags & SA_NODEFER == 0 {
        mask |= bit(sig);
    }
    BLOCKED.set(mask & !(bit(9) | bit(19)));
    let mut n = *f;
    n.x[0] = sig;
    n.x[1] = at + INFO;
    n.x[2] = at + UC;
    n.x[29] = at + FRAME;
    n.x[30] = if a.flags & SA_RESTORER != 0 && a.restorer != 0 {
        a.restorer
    } else {
        kiln_arch_arm64::syscall::sigreturn_trampoline()
    };
    n.sp = at;
    n.elr = a.handler;
    Some(n)
}

/// rt_sigreturn on arm64: the registers, FP/SIMD state and mask from the
/// frame at the stack pointer. Only the condition flags come from the
/// saved PSTATE; the rest is the program's mode as Kiln runs it.
#[cfg(target_arch = "aarch64")]
pub(crate) fn sigreturn(f: &Frame) -> Result<Frame, i64> {
    use arm64::*;
    let at = f.sp;
    // SAFETY: see `crate::bytes`; the frame `deliver` wrote.
    let r = |off: u64| unsafe { get_u64(at + off) };
    let mut n = *f;
    for i in 0..31 {
        n.x[i] = r(SC_REGS + 8 * i as u64)?;
    }
    n.sp = r(SC_SP)?;
    n.elr = r(SC_PC)?;
    n.spsr = r(SC_PSTATE)? & 0xf000_0000 | kiln_arch_arm64::syscall::program_spsr();
    let head = r(SC_RESERVED)?;
    if head as u32 == FPSIMD_MAGIC {
        let st = r(SC_RESERVED + 8)?;
        n.fpsr = st & 0xffff_ffff;
        n.fpcr = st >> 32;
        for i in 0..32u64 {
            let lo = r(SC_RESERVED + 16 + 16 * i)? as u128;
            let hi = r(SC_RESERVED + 24 + 16 * i)? as u128;
            n.q[i as usize] = hi << 64 | lo;
        }
    }
    let mask = r(UC_SIGMASK)?;
    BLOCKED.set(mask & !(bit(9) | bit(19)));
    Ok(n)
}

/// A started program's parent's signal actions, put back when it ends
/// (crate::process).
pub(crate) struct Saved {
    actions: [Action; 65],
    alt: Option<(u64, u64)>,
}

pub(crate) fn save() -> Saved {
    Saved {
        actions: *ACTIONS.lock(),
        alt: ALT_STACKS.lock().get(&kiln_sched::current()).copied(),
    }
}

pub(crate) fn restore(s: Saved) {
    *ACTIONS.lock() = s.actions;
    let mut alt = ALT_STACKS.lock();
    match s.alt {
        Some(a) => alt.insert(kiln_sched::current(), a),
        None => alt.remove(&kiln_sched::current()),
    };
}

/// execve: handlers go back to the default (ignored signals stay
/// ignored), and the alternate stack goes.
pub(crate) fn reset_on_exec() {
    for a in ACTIONS.lock().iter_mut() {
        if a.handler != SIG_IGN {
            *a = Action::default();
        }
    }
    ALT_STACKS.lock().remove(&kiln_sched::current());
}

/// A started program ended: SIGCHLD for its parent (ignored by default).
pub(crate) fn child_ended() {
    pend(17, USER);
}
