//! Signals a program sends itself, through musl's C API: handlers for
//! raise(), a blocked signal delivered when unblocked, alarm() with
//! pause(), and a handler on an alternate stack (sigaltstack, SA_ONSTACK).
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

static USR1: AtomicU32 = AtomicU32::new(0);
static ALRM: AtomicU32 = AtomicU32::new(0);

/// musl's stack_t.
#[repr(C)]
struct StackT {
    sp: *mut u8,
    flags: i32,
    size: usize,
}

/// musl's struct sigaction.
#[repr(C)]
struct SigAction {
    handler: extern "C" fn(i32),
    mask: [u64; 16],
    flags: i32,
    restorer: usize,
}

/// Where the SIGUSR2 handler's stack was, and the flags sigaltstack gave it.
static HANDLER_SP: AtomicUsize = AtomicUsize::new(0);
static HANDLER_SS_FLAGS: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_usr2(_: i32) {
    let here = 0u8;
    HANDLER_SP.store(std::hint::black_box(&here) as *const u8 as usize, Ordering::SeqCst);
    let mut st = StackT { sp: std::ptr::null_mut(), flags: -1, size: 0 };
    // SAFETY: sigaltstack only writes the stack_t we own.
    unsafe { sigaltstack(std::ptr::null(), &mut st) };
    HANDLER_SS_FLAGS.store(st.flags, Ordering::SeqCst);
}

extern "C" {
    fn sigaltstack(ss: *const StackT, old: *mut StackT) -> i32;
    fn sigaction(sig: i32, act: *const SigAction, old: *mut SigAction) -> i32;
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn raise(sig: i32) -> i32;
    fn alarm(secs: u32) -> u32;
    fn pause() -> i32;
    fn sigprocmask(how: i32, set: *const u64, old: *mut u64) -> i32;
}

extern "C" fn on_usr1(_: i32) {
    USR1.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_alrm(_: i32) {
    ALRM.fetch_add(1, Ordering::SeqCst);
}

fn main() {
    const SIGUSR1: i32 = 10;
    const SIGALRM: i32 = 14;
    // SAFETY: plain libc calls with valid arguments; the handlers only
    // touch atomics.
    unsafe {
        signal(SIGUSR1, on_usr1);
        signal(SIGALRM, on_alrm);
        raise(SIGUSR1);
        println!("signals: after raise, handler ran {} time(s)", USR1.load(Ordering::SeqCst));
        let set: u64 = 1 << (SIGUSR1 - 1);
        sigprocmask(0, &set, std::ptr::null_mut());
        raise(SIGUSR1);
        println!("signals: while blocked, handler ran {} time(s)", USR1.load(Ordering::SeqCst));
        sigprocmask(1, &set, std::ptr::null_mut());
        println!("signals: after unblocking, handler ran {} time(s)", USR1.load(Ordering::SeqCst));
        let t = std::time::Instant::now();
        alarm(1);
        pause();
        println!("signals: alarm handler ran {} time(s) after {} s", ALRM.load(Ordering::SeqCst), t.elapsed().as_secs_f32().round());
        // Floating point state survives a handler.
        let x = std::hint::black_box(1.5f64);
        raise(SIGUSR1);
        println!("signals: {} after another handler, handler ran {} time(s)", x * 2.0, USR1.load(Ordering::SeqCst));
        // A handler on an alternate stack.
        const SIGUSR2: i32 = 12;
        const SA_ONSTACK: i32 = 0x0800_0000;
        let mut alt = vec![0u8; 64 * 1024];
        let ss = StackT { sp: alt.as_mut_ptr(), flags: 0, size: alt.len() };
        let mut before = StackT { sp: std::ptr::null_mut(), flags: -1, size: 0 };
        sigaltstack(std::ptr::null(), &mut before);
        let set = sigaltstack(&ss, std::ptr::null_mut());
        let act = SigAction { handler: on_usr2, mask: [0; 16], flags: SA_ONSTACK, restorer: 0 };
        sigaction(SIGUSR2, &act, std::ptr::null_mut());
        raise(SIGUSR2);
        let (base, sp) = (alt.as_ptr() as usize, HANDLER_SP.load(Ordering::SeqCst));
        println!(
            "signals: Rust's runtime had set an alternate stack: {}; set: {set}; the SA_ONSTACK handler ran on it: {}, and saw SS_ONSTACK: {}",
            before.flags == 0 && before.size > 0,
            sp >= base && sp < base + alt.len(),
            HANDLER_SS_FLAGS.load(Ordering::SeqCst) == 1
        );
    }
}
