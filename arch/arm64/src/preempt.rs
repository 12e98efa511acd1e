//! Preemption of Linux programs (arm64; see `arch/x86_64/src/irq.rs` for
//! the x86_64 side).
//!
//! Kernel code runs with IRQs masked in PSTATE (the idle `wfi` wakes on a
//! pending interrupt without taking it). Once lib/syscall installs a hook
//! ([`set_hook`]; only where a GIC delivers interrupts), a program runs
//! with IRQs unmasked ([`program_spsr`]), and the virtual timer counts a
//! [`SLICE_US`] slice ([`arm_slice`]) on every way back into it. An IRQ
//! taken at vector 1 (EL1 on SP_EL0) is acknowledged at the GIC: the timer
//! is stopped, a device line is masked at the distributor until its driver
//! has polled (`gic::unmask_lines`, the platform's `device_irq_done`). If
//! it interrupted the program (IRQs unmasked, the instruction outside the
//! kernel's text), the exception entry builds a system-call frame (every
//! register, the vector registers and TPIDR_EL0) at the thread's kernel
//! stack top, leaves the exception with `eret` into `kiln_preempted_entry`
//! on that stack, and the hook runs there: it yields to the scheduler and
//! may enter a signal handler; `kiln_svc_resume` then continues the
//! program from the frame.

use crate::syscall::Frame;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// How long a program runs before the timer interrupts it, at most.
pub const SLICE_US: u64 = 10_000;

static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Whether the virtual timer is counting a slice.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Makes programs preemptible: `f` runs on a program thread's kernel stack
/// each time an interrupt finds the program running. Nothing happens
/// without a GIC (the Raspberry Pi 3's own controller is not handled).
pub fn set_hook(f: fn(&mut Frame)) {
    if crate::gic::present() {
        HOOK.store(f as *mut (), Ordering::Release);
    }
}

/// Whether programs run preemptible.
pub fn active() -> bool {
    !HOOK.load(Ordering::Relaxed).is_null()
}

/// PSTATE for a program: EL1 on SP_EL0 (EL1t); debug, SError and FIQ
/// masked; IRQs unmasked when programs are preemptible.
pub fn program_spsr() -> u64 {
    if active() {
        0x344
    } else {
        0x3c4
    }
}

/// Starts a time slice unless one is counting.
pub fn arm_slice() {
    if active() && !ARMED.load(Ordering::Relaxed) {
        let t = (SLICE_US as u128 * crate::timer::frequency() as u128 / 1_000_000) as u64;
        #[cfg(all(target_arch = "aarch64", target_os = "none"))]
        // SAFETY: programs this CPU's virtual timer; its interrupt is taken
        // only while a program runs with IRQs unmasked.
        unsafe {
            core::arch::asm!("msr cntv_tval_el0, {}", "msr cntv_ctl_el0, {}", "isb", in(reg) t.max(1), in(reg) 1u64)
        };
        let _ = t;
        ARMED.store(true, Ordering::Relaxed);
    }
}

/// The idle wait stopped the timer (and so the slice).
pub(crate) fn slice_stopped() {
    ARMED.store(false, Ordering::Relaxed);
}

/// An IRQ at vector 1: acknowledged here. True if it interrupted a program
/// that should now yield (the entry then builds the frame and calls the
/// hook through `kiln_preempted_entry`).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub(crate) fn irq(elr: u64, spsr: u64) -> bool {
    let intid = crate::gic::ack();
    if intid == crate::gic::TIMER_PPI {
        // SAFETY: disabling the virtual timer lowers its line.
        unsafe { core::arch::asm!("msr cntv_ctl_el0, xzr", "isb") };
        ARMED.store(false, Ordering::Relaxed);
    } else {
        crate::gic::mask_line(intid);
    }
    if intid < 1020 {
        crate::gic::eoi(intid);
    }
    if spsr & (1 << 7) != 0 {
        return false;
    }
    let text = crate::layout::sections().text;
    if (text.0..text.1).contains(&elr) {
        // The few instructions of a return to the program.
        arm_slice();
        return false;
    }
    crate::syscall::kernel_stack() != 0
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[no_mangle]
extern "C" fn kiln_arch_preempted(f: &mut Frame) {
    let p = HOOK.load(Ordering::Acquire);
    // SAFETY: non-null here (irq checked active) and only ever a
    // `fn(&mut Frame)` stored by set_hook.
    let hook: fn(&mut Frame) = unsafe { core::mem::transmute(p) };
    hook(f);
    arm_slice();
}
