//! Signals a program sends itself, through musl's C API: handlers for
//! raise(), a blocked signal delivered when unblocked, and alarm() with
//! pause().
use std::sync::atomic::{AtomicU32, Ordering};

static USR1: AtomicU32 = AtomicU32::new(0);
static ALRM: AtomicU32 = AtomicU32::new(0);

extern "C" {
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
    }
}
