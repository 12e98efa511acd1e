//! Signals a program sends itself: `kill`/`tgkill`/`raise`, and SIGALRM
//! from `alarm` and `setitimer(ITIMER_REAL)`. There is no other process to
//! send one, and faults end the program with a report, so these are the
//! signals that make sense in a unikernel.
//!
//! A signal with a handler is delivered when a system call returns (the
//! scheduler is cooperative, so a program that never makes a call never
//! gets one): the kernel writes a Linux signal frame on the program's
//! stack (return address = the program's `sa_restorer`, a `ucontext` with
//! the registers, the siginfo, the FXSAVE state) and continues at the
//! handler; `rt_sigreturn` puts everything back. A signal left at its
//! default action ends the program with status 128 + the signal, as a
//! shell reports it; ignored ones vanish. Blocking calls are not
//! interrupted (no EINTR), except `pause` and `rt_sigsuspend`, which wait
//! for the alarm. x86_64 only: on arm64 handlers are recorded but nothing
//! is delivered.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

#[cfg(target_arch = "x86_64")]
use crate::Frame;
use crate::{errno, get_u64, put, Sys};
use core::sync::atomic::{AtomicU64, Ordering};

const SIGALRM: u64 = 14;
const SA_RESTORER: u64 = 0x0400_0000;
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

static ACTIONS: spin::Mutex<[Action; 65]> = spin::Mutex::new([Action { handler: 0, flags: 0, restorer: 0, mask: 0 }; 65]);
/// Pending signals (bit n-1 for signal n) and the blocked mask.
static PENDING: AtomicU64 = AtomicU64::new(0);
static BLOCKED: AtomicU64 = AtomicU64::new(0);
/// ITIMER_REAL: (due, interval) in µs since boot; due 0 means off.
static ALARM: spin::Mutex<(u64, u64)> = spin::Mutex::new((0, 0));
/// Whether ALARM is set: every system call checks this, not the lock.
static ARMED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

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
        for (i, v) in [o.handler, o.flags, o.restorer, o.mask].into_iter().enumerate() {
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
        let v = unsafe { [get_u64(act)?, get_u64(act + 8)?, get_u64(act + 16)?, get_u64(act + 24)?] };
        a[sig as usize] = Action { handler: v[0], flags: v[1], restorer: v[2], mask: v[3] };
    }
    Ok(0)
}

fn sigprocmask(how: u64, set: u64, old: u64) -> Sys {
    let cur = BLOCKED.load(Ordering::Relaxed);
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
        BLOCKED.store(new, Ordering::Relaxed);
    }
    Ok(0)
}

/// A signal sent to the program itself.
fn raise(sig: u64) -> Sys {
    if sig == 0 {
        return Ok(0);
    }
    valid(sig)?;
    let a = ACTIONS.lock()[sig as usize];
    match a.handler {
        SIG_IGN => {}
        // SIGCHLD, SIGCONT, SIGURG, SIGWINCH and the stop signals are
        // ignored by default; the rest end the program.
        SIG_DFL if matches!(sig, 17 | 18 | 19 | 20 | 21 | 22 | 23 | 28) => {}
        SIG_DFL => {
            kiln_console::log!(kiln_console::Level::Info, "elf: the program got signal {sig} with no handler: it ends");
            crate::exit(128 + sig as i64)
        }
        _ => {
            PENDING.fetch_or(bit(sig), Ordering::Relaxed);
        }
    }
    Ok(0)
}

/// Fires the alarm if it is due.
fn check_alarm() {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let now = crate::now_us();
    let fire = {
        let mut a = ALARM.lock();
        if a.0 != 0 && now >= a.0 {
            a.0 = if a.1 > 0 { now + a.1 } else { 0 };
            ARMED.store(a.0 != 0, Ordering::Relaxed);
            true
        } else {
            false
        }
    };
    if fire {
        let _ = raise(SIGALRM);
    }
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
        put_timeval(old + 16, if a.0 == 0 { 0 } else { a.0.saturating_sub(now).max(1) })?;
    }
    if new != 0 {
        let (interval, value) = (timeval_us(new)?, timeval_us(new + 16)?);
        *a = (if value == 0 { 0 } else { now + value }, interval);
        ARMED.store(a.0 != 0, Ordering::Relaxed);
    }
    Ok(0)
}

fn alarm(secs: u64) -> Sys {
    let now = crate::now_us();
    let mut a = ALARM.lock();
    let left = if a.0 == 0 { 0 } else { a.0.saturating_sub(now).div_ceil(1_000_000) };
    *a = (if secs == 0 { 0 } else { now + secs * 1_000_000 }, 0);
    ARMED.store(a.0 != 0, Ordering::Relaxed);
    Ok(left as i64)
}

/// pause/rt_sigsuspend: waits for the alarm (or forever), then EINTR.
fn pause() -> Sys {
    loop {
        check_alarm();
        if PENDING.load(Ordering::Relaxed) & !BLOCKED.load(Ordering::Relaxed) != 0 {
            return Err(errno::EINTR);
        }
        let due = ALARM.lock().0;
        if due == 0 {
            // Nothing will ever come: wait for another thread (a deadlock
            // report if there is none).
            static NEVER: kiln_sched::WaitQueue = kiln_sched::WaitQueue::new();
            NEVER.wait();
        } else {
            kiln_sched::sleep(core::time::Duration::from_micros(due.saturating_sub(crate::now_us()).max(1)));
        }
    }
}

/// rt_sigsuspend: waits with the given mask, then puts the old one back.
fn suspend(mask: u64) -> Sys {
    // SAFETY: see `crate::bytes`.
    let mask = unsafe { get_u64(mask) }?;
    let old = BLOCKED.swap(mask & !(bit(9) | bit(19)), Ordering::Relaxed);
    let r = pause();
    BLOCKED.store(old, Ordering::Relaxed);
    r
}

/// The signal calls; None if `nr` is not one (rt_sigreturn is handled by
/// [`sigreturn`]).
pub(crate) fn call(nr: u64, a: [u64; 6]) -> Option<Sys> {
    Some(match nr {
        13 => sigaction(a[0], a[1], a[2]),
        14 => sigprocmask(a[0], a[1], a[2]),
        127 => {
            let p = PENDING.load(Ordering::Relaxed) & BLOCKED.load(Ordering::Relaxed);
            // SAFETY: see `crate::bytes`.
            unsafe { put(a[0], &p.to_le_bytes()) }.map(|_| 0)
        }
        131 => Ok(0),
        // kill(pid, sig) to itself (pid 1, 0 or -1); tkill/tgkill to one of
        // its threads.
        62 if matches!(a[0] as i64, 0 | 1 | -1) => raise(a[1]),
        62 => Err(3), // ESRCH
        200 => raise(a[1]),
        234 => raise(a[2]),
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

/// Called when a system call returns `result`: if a signal with a handler
/// is pending and not blocked, the registers the program continues with
/// (at its handler, with the frame written below its stack).
#[cfg(target_arch = "x86_64")]
pub(crate) fn deliver(f: &Frame, result: i64) -> Option<Frame> {
    check_alarm();
    let ready = PENDING.load(Ordering::Relaxed) & !BLOCKED.load(Ordering::Relaxed);
    if ready == 0 {
        return None;
    }
    let sig = ready.trailing_zeros() as u64 + 1;
    PENDING.fetch_and(!bit(sig), Ordering::Relaxed);
    let a = {
        let mut acts = ACTIONS.lock();
        let a = acts[sig as usize];
        if a.flags & SA_RESETHAND != 0 {
            acts[sig as usize] = Action::default();
        }
        a
    };
    if a.handler <= SIG_IGN || a.flags & SA_RESTORER == 0 {
        return None;
    }
    // Below the red zone: FXSAVE area (64-aligned), siginfo, ucontext, and
    // the return address (the restorer) where the handler's stack starts.
    let top = f.rsp - 128;
    let fp = (top - 512) & !63;
    let info = fp - 128;
    let uc = (info - UC_SIZE) & !15;
    let sp = uc - 8;
    let mut ucb = [0u8; UC_SIZE as usize];
    let regs = [f.a[4], f.a[5], f.a[3], f.rflags, f.r12, f.r13, f.r14, f.r15, f.a[0], f.a[1], f.rbp, f.rbx, f.a[2], result as u64, f.rip, f.rsp, f.rip, f.rflags];
    for (i, v) in regs.iter().enumerate() {
        let at = (UC_MCONTEXT + i as u64 * 8) as usize;
        ucb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    // cs (the kernel's: programs run in ring 0), then fpstate.
    ucb[(UC_MCONTEXT + 144) as usize..(UC_MCONTEXT + 146) as usize].copy_from_slice(&8u16.to_le_bytes());
    ucb[(UC_MCONTEXT + 184) as usize..(UC_MCONTEXT + 192) as usize].copy_from_slice(&fp.to_le_bytes());
    let blocked = BLOCKED.load(Ordering::Relaxed);
    ucb[UC_SIGMASK as usize..].copy_from_slice(&blocked.to_le_bytes());
    let mut infob = [0u8; 128];
    infob[..4].copy_from_slice(&(sig as i32).to_le_bytes());
    infob[16..20].copy_from_slice(&1i32.to_le_bytes());
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
    BLOCKED.store(mask & !(bit(9) | bit(19)), Ordering::Relaxed);
    let mut n = *f;
    n.nr = 0;
    n.a = [sig, info, uc, 0, 0, 0];
    n.rsp = sp;
    n.rip = a.handler;
    n.rflags &= !(1 << 10); // DF clear, as the ABI wants at a call
    Some(n)
}

/// rt_sigreturn: the registers, FP state and signal mask saved when the
/// handler was entered (the `ucontext` at the stack pointer).
#[cfg(target_arch = "x86_64")]
pub(crate) fn sigreturn(f: &Frame) -> Result<Frame, i64> {
    let uc = f.rsp;
    let r = |i: u64| {
        // SAFETY: see `crate::bytes`; the frame `deliver` wrote.
        unsafe { get_u64(uc + UC_MCONTEXT + i * 8) }
    };
    let mut n = *f;
    n.a = [r(8)?, r(9)?, r(12)?, r(2)?, r(0)?, r(1)?];
    n.r12 = r(4)?;
    n.r13 = r(5)?;
    n.r14 = r(6)?;
    n.r15 = r(7)?;
    n.rbp = r(10)?;
    n.rbx = r(11)?;
    n.nr = r(13)?;
    n.rsp = r(15)?;
    n.rip = r(16)?;
    n.rflags = r(17)?;
    let fp = r(23)?;
    // SAFETY: see `crate::bytes`.
    let mask = unsafe { get_u64(uc + UC_SIGMASK) }?;
    BLOCKED.store(mask & !(bit(9) | bit(19)), Ordering::Relaxed);
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
