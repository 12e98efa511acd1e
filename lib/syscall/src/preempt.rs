//! Preemption of program threads (`LIBSYSCALL_PREEMPT`; arm64 where a GIC
//! delivers interrupts).
//!
//! The scheduler is cooperative for the kernel: kernel code is never
//! interrupted. A Linux program's code is: it runs with interrupts
//! enabled, and a timer tick (every 10 ms of running at most, see
//! `kiln_arch_x86_64::irq` and `kiln_arch_arm64::preempt`) or a device
//! interrupt that finds it running lands here, on the thread's kernel
//! stack, with the interrupted registers. The thread then
//! - keeps what the registers do not hold: on x86_64 its SSE state and FS
//!   base (other program threads change both; on arm64 the frame holds
//!   the vector registers and TPIDR_EL0 already);
//! - yields: the other ready threads run (the program's, the network's),
//!   the scheduler's pollers and timers get their turn, and sleepers whose
//!   time came wake (Go's sysmon among them);
//! - on coming back, takes a signal pending for it or for the program,
//!   entering the handler with every register saved in the signal frame
//!   (how Go's asynchronous preemption works: sysmon sends SIGURG to the
//!   thread whose goroutine ran too long, and the handler makes the
//!   goroutine call into the Go scheduler).
//!
//! Nothing here holds a lock of the kernel's: the program cannot hold one
//! while its own code runs.

use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(target_arch = "x86_64")]
use kiln_arch_x86_64::irq::Irq;

/// Times a program thread was preempted.
pub(crate) static PREEMPTIONS: AtomicU64 = AtomicU64::new(0);

/// Makes programs preemptible when the kernel was configured so.
pub(crate) fn install() {
    if option_env!("KILN_CONFIG_LIBSYSCALL_PREEMPT") == Some("y") {
        #[cfg(target_arch = "x86_64")]
        kiln_arch_x86_64::irq::set_preempt_hook(preempted);
        #[cfg(target_arch = "aarch64")]
        kiln_arch_arm64::preempt::set_hook(preempted);
    }
}

#[cfg(target_arch = "aarch64")]
fn preempted(f: &mut crate::Frame) {
    PREEMPTIONS.fetch_add(1, Ordering::Relaxed);
    kiln_sched::yield_now();
    // x0 holds what the program had there (no call returned).
    if let Some(n) = crate::signal::deliver(f, f.x[0] as i64) {
        *f = n;
    }
}

#[cfg(target_arch = "x86_64")]
fn preempted(f: &mut Irq) {
    PREEMPTIONS.fetch_add(1, Ordering::Relaxed);
    let mut fp = kiln_arch_x86_64::syscall::FpState::new();
    #[cfg(target_os = "none")]
    let fs = {
        fp.save();
        kiln_arch_x86_64::syscall::fs_base()
    };
    kiln_sched::yield_now();
    #[cfg(target_os = "none")]
    {
        kiln_arch_x86_64::syscall::set_fs_base(fs);
        fp.restore();
    }
    let _ = &mut fp;
    crate::signal::deliver_async(f);
}
