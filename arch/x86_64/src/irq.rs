//! Timer and device interrupts, and preemption of Linux programs.
//!
//! Kernel code runs with interrupts masked, except in the idle halt
//! ([`crate::apic::idle`]). A Linux program run by the ELF loader runs
//! with them enabled once lib/syscall installs a preemption hook
//! ([`set_preempt_hook`]), so a program that computes without making
//! system calls (a goroutine in a loop) no longer keeps every other thread
//! and the network waiting.
//!
//! Both vectors enter on their own interrupt stack (IST; a program's stack
//! has a red zone the CPU would overwrite, and may be a goroutine's few
//! KiB), push the general registers (an [`Irq`] frame under the CPU's) and
//! call `kiln_arch_irq`: the timer's acknowledges, the device's masks the
//! device lines (the driver unmasks them after polling). If the interrupt
//! came while the program ran (interrupts enabled, instruction pointer
//! outside the kernel's text), the entry **preempts** it: it copies the
//! frame to the running thread's kernel stack (its top is
//! `kiln_kstack_top`, empty while the program runs), switches to it and
//! calls the hook, which saves the rest of the program thread's state,
//! lets the scheduler run other threads, and may rewrite the frame to
//! enter a signal handler; then `iretq` continues the program from the
//! frame. Interrupts that find the kernel (the idle halt, or the few
//! instructions that return to a program) just return.
//!
//! The time slice: [`arm_slice`], called on every way back into a
//! program, starts the local APIC's one-shot timer for [`SLICE_US`] unless
//! it is already counting; the idle halt uses the same timer and stops it.

use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The registers of an interrupted program, lowest address first: what
/// the entry pushes, then the CPU's interrupt frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Irq {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// How long a program runs before the timer interrupts it, at most.
pub const SLICE_US: u64 = 10_000;

/// RFLAGS.IF.
const IF: u64 = 1 << 9;

static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Whether the APIC timer is counting down a slice.
pub(crate) static ARMED: AtomicBool = AtomicBool::new(false);

/// Makes programs preemptible: `f` runs (on the program thread's kernel
/// stack) each time an interrupt finds the program running.
pub fn set_preempt_hook(f: fn(&mut Irq)) {
    HOOK.store(f as *mut (), Ordering::Release);
}

/// Whether programs run preemptible (with interrupts enabled).
pub fn preemptive() -> bool {
    !HOOK.load(Ordering::Relaxed).is_null()
}

/// Starts a time slice unless one is counting (nothing without a hook).
#[cfg(target_os = "none")]
pub fn arm_slice() {
    if preemptive() && !ARMED.load(Ordering::Relaxed) {
        crate::apic::start_timer(SLICE_US);
        ARMED.store(true, Ordering::Relaxed);
    }
}

#[cfg(not(target_os = "none"))]
pub fn arm_slice() {}

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kiln_arch_irq(f: &Irq, kind: u32) -> bool {
    if kind == 0 {
        ARMED.store(false, Ordering::Relaxed);
        crate::apic::end_of_interrupt();
    } else {
        crate::apic::device_irq();
    }
    if !preemptive() || f.rflags & IF == 0 {
        return false;
    }
    let text = crate::layout::sections().text;
    if (text.0..text.1).contains(&f.rip) {
        // The idle halt (which stops the timer itself), or the return to
        // a program: the slice starts again for the program.
        if kind == 0 {
            arm_slice();
        }
        return false;
    }
    crate::syscall::kernel_stack() != 0
}

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kiln_arch_preempted(f: &mut Irq) {
    let p = HOOK.load(Ordering::Acquire);
    // SAFETY: HOOK is non-null here (kiln_arch_irq checked) and only ever
    // holds a `fn(&mut Irq)` stored by set_preempt_hook.
    let hook: fn(&mut Irq) = unsafe { core::mem::transmute(p) };
    hook(f);
    arm_slice();
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .text.kiln_exc, \"ax\"",
    ".global kiln_timer_isr",
    "kiln_timer_isr:",
    "push rax",
    "xor eax, eax",
    "jmp kiln_irq_common",
    ".global kiln_device_isr",
    "kiln_device_isr:",
    "push rax",
    "mov eax, 1",
    "kiln_irq_common:",
    // The CPU aligned rsp to 16 before its 5-word frame; with these 15
    // words the Irq frame (20 words) keeps it aligned for the call.
    "push rbx",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push rbp",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov rdi, rsp",
    "mov esi, eax",
    "cld",
    "call kiln_arch_irq",
    "test al, al",
    "jz kiln_irq_return",
    // Preempt: the frame moves to the thread's kernel stack (rbx keeps its
    // top across the call), off the IST, which the next interrupt reuses.
    "mov rbx, [rip + kiln_kstack_top]",
    "lea rdi, [rbx - 160]",
    "mov rsi, rsp",
    "mov ecx, 20",
    "rep movsq",
    "lea rsp, [rbx - 160]",
    "mov rdi, rsp",
    "call kiln_arch_preempted",
    "mov [rip + kiln_kstack_top], rbx",
    "kiln_irq_return:",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rbp",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rbx",
    "pop rax",
    "iretq",
    // kiln_irq_resume(frame, kstack): continue a program with every
    // register of `frame` (rt_sigreturn after a signal that interrupted
    // it anywhere), from the thread's kernel stack top `kstack`.
    ".global kiln_irq_resume",
    "kiln_irq_resume:",
    "mov [rip + kiln_kstack_top], rsi",
    "lea rsp, [rsi - 160]",
    "mov rsi, rdi",
    "mov rdi, rsp",
    "mov ecx, 20",
    "rep movsq",
    "jmp kiln_irq_return",
);

/// Continues a program with every register of `f` (rt_sigreturn), from
/// this thread's kernel stack top `kstack`, through `iretq`.
///
/// # Safety
/// `f.rip` must be program code and `f.rsp` a stack it owns, `f.cs` and
/// `f.ss` the kernel's selectors; nothing on the kernel stack below
/// `kstack` may still be in use.
#[cfg(target_os = "none")]
pub unsafe fn resume(f: &Irq, kstack: u64) -> ! {
    extern "C" {
        fn kiln_irq_resume(frame: *const Irq, kstack: u64) -> !;
    }
    /// Where the frame waits while the stack it may lie on is reused
    /// (one CPU, interrupts masked).
    static mut SCRATCH: Irq = Irq {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rbp: 0,
        rdi: 0,
        rsi: 0,
        rdx: 0,
        rcx: 0,
        rbx: 0,
        rax: 0,
        rip: 0,
        cs: 0,
        rflags: 0,
        rsp: 0,
        ss: 0,
    };
    arm_slice();
    // SAFETY: per the contract; interrupts are masked in the kernel and
    // there is one CPU, so nothing else uses SCRATCH, which is read before
    // anything else can run.
    unsafe {
        *(&raw mut SCRATCH) = *f;
        kiln_irq_resume(&raw const SCRATCH, kstack & !15)
    }
}

/// The kernel's code and data selectors, for a frame [`resume`] returns
/// through.
#[cfg(target_os = "none")]
pub fn selectors() -> (u64, u64) {
    use x86_64::instructions::segmentation::{Segment, CS, SS};
    (CS::get_reg().0 as u64, SS::get_reg().0 as u64)
}
