//! `svc #0`, for Linux programs run by the ELF loader.
//!
//! Programs run at EL1 on SP_EL0 and the kernel's page tables, like the
//! kernel itself, so `svc` arrives at the vector for the current EL with
//! SP_EL0. `entry.S` moves to the calling thread's kernel stack
//! ([`kernel_stack`]; never the program's stack, which may be a
//! goroutine's few KiB, nor the shared exception stack), saves every
//! register (a [`Frame`], vector registers and TPIDR_EL0 included: the
//! kernel uses FP/SIMD itself, and a thread switch inside the call must
//! not lose them), calls the handler installed with [`set_handler`], and
//! returns with `eret`. As on Linux, only x0 (the result) changes.

use core::sync::atomic::{AtomicPtr, Ordering};

/// A program's registers at a system call (the layout `entry.S` writes).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    /// x0-x30: the arguments in x0-x5, the number in x8.
    pub x: [u64; 31],
    /// The program's stack pointer.
    pub sp: u64,
    /// Where the program continues (after the `svc`).
    pub elr: u64,
    pub spsr: u64,
    /// The thread pointer.
    pub tpidr: u64,
    pad: u64,
    pub q: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

const _: () = assert!(core::mem::size_of::<Frame>() == 816);

fn enosys(_: &mut Frame) -> i64 {
    -38
}

static HANDLER: AtomicPtr<()> = AtomicPtr::new(enosys as *mut ());

/// Installs the function that carries out system calls.
pub fn set_handler(f: fn(&mut Frame) -> i64) {
    HANDLER.store(f as *mut (), Ordering::Release);
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[no_mangle]
extern "C" fn kiln_svc_dispatch(frame: &mut Frame) {
    let p = HANDLER.load(Ordering::Acquire);
    // SAFETY: HANDLER only holds `enosys` or a `fn(&mut Frame) -> i64` stored by set_handler.
    let f: fn(&mut Frame) -> i64 = unsafe { core::mem::transmute(p) };
    frame.x[0] = f(frame) as u64;
    crate::preempt::arm_slice();
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
core::arch::global_asm!(
    ".section .text.kiln_sigreturn, \"ax\"",
    ".global kiln_sigreturn_trampoline",
    "kiln_sigreturn_trampoline:",
    "mov x8, #139",
    "svc #0",
);

/// Where a signal handler installed without a restorer returns: two
/// instructions of the kernel's text (executable at EL1, where programs
/// run) that call rt_sigreturn, as Linux's vDSO trampoline does.
pub fn sigreturn_trampoline() -> u64 {
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    {
        extern "C" {
            fn kiln_sigreturn_trampoline();
        }
        kiln_sigreturn_trampoline as *const () as usize as u64
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
    0
}

/// SPSR for a program: EL1 on SP_EL0 (EL1t), interrupts masked as in
/// kernel code, or IRQs unmasked when programs are preemptible
/// ([`crate::preempt::program_spsr`]).
pub fn program_spsr() -> u64 {
    crate::preempt::program_spsr()
}

/// Top of the running program thread's kernel stack: where the entry
/// puts the next `svc`'s frame. Each thread sets it when it enters its
/// program and every return to the program puts it back.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[no_mangle]
static kiln_kstack_top: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The kernel stack top the current system call was entered on.
pub fn kernel_stack() -> u64 {
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    return kiln_kstack_top.load(Ordering::Relaxed);
    #[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
    0
}

/// Continues a program with every register of `frame` (a new thread
/// returning from `clone`, or a program's first instruction). `kstack`
/// is the thread's kernel stack top for its later calls; None: the
/// current stack, from here up.
///
/// # Safety
/// `frame.elr` must be program code and `frame.sp` a stack it owns;
/// nothing on the kernel stack below `kstack` (or here) may still be in use.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub unsafe fn resume(frame: &Frame, kstack: Option<u64>) -> ! {
    extern "C" {
        fn kiln_svc_resume(frame: *const Frame, kstack: u64) -> !;
    }
    crate::preempt::arm_slice();
    // SAFETY: per the contract; `frame` is read before the stack changes.
    unsafe { kiln_svc_resume(frame, kstack.unwrap_or(0) & !15) }
}

/// Starts a program: stack pointer `sp` (argc at [sp]), entry `entry`,
/// every other register zero. Never returns.
///
/// # Safety
/// `entry` must be executable program code and `sp` its initial stack.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub unsafe fn enter(entry: u64, sp: u64) -> ! {
    let f = Frame {
        sp,
        elr: entry,
        spsr: program_spsr(),
        ..Frame::default()
    };
    // SAFETY: per the contract; the caller's stack becomes the thread's
    // kernel stack.
    unsafe { resume(&f, None) }
}

/// Host builds (unit tests) cannot run programs.
///
/// # Safety
/// Never runs.
#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
pub unsafe fn resume(_frame: &Frame, _kstack: Option<u64>) -> ! {
    unreachable!("programs run only in a kernel")
}

/// Host builds (unit tests) cannot run programs.
///
/// # Safety
/// Never runs.
#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
pub unsafe fn enter(_entry: u64, _sp: u64) -> ! {
    unreachable!("programs run only in a kernel")
}
