//! Switching between threads' stacks, for lib/sched.
//!
//! A suspended thread is just its stack pointer: [`switch`] pushes the
//! registers the System V ABI asks a callee to preserve (rbx, rbp, r12-r15)
//! on the current stack, stores the stack pointer, loads the other thread's
//! and pops its registers. Every other register is caller-saved, so the
//! compiler has already saved what it needs around the call. Kernel code is
//! built without SSE/x87 state (the bare-metal target is soft-float), so
//! there is no FPU state to carry. The same code runs in a host process,
//! which lets lib/sched's unit tests switch real stacks.

core::arch::global_asm!(
    ".section .text.kiln_context, \"ax\"",
    ".global kiln_context_switch",
    // rdi: where to store the current stack pointer; rsi: the stack pointer to resume.
    "kiln_context_switch:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    // A new thread's first `ret` lands here with its entry function in r12
    // and the entry's argument in r13 (both popped from the prepared stack).
    ".global kiln_context_start",
    "kiln_context_start:",
    "mov rdi, r13",
    "call r12",
    "ud2",
);

extern "C" {
    fn kiln_context_switch(save: *mut usize, resume: usize);
    fn kiln_context_start();
}

/// Words [`prepare`] writes at the top of a new stack.
const FRAME_WORDS: usize = 7;

/// Writes a first frame at the top of `stack` so that switching to the
/// returned stack pointer calls `entry(arg)` on it. `entry` must never
/// return (it ends by switching away for good).
///
/// # Safety
/// `stack` must be valid for writes, 16-byte aligned at its end, and stay
/// allocated for as long as the thread can run.
pub unsafe fn prepare(stack: &mut [u8], entry: extern "C" fn(usize) -> !, arg: usize) -> usize {
    let top = stack.as_mut_ptr() as usize + stack.len();
    debug_assert!(top % 16 == 0 && stack.len() >= 256);
    // From the stack pointer up: r15 r14 r13 r12 rbx rbp and the return
    // address. After the `ret`, rsp = top (16-byte aligned), so `call r12`
    // enters `entry` with rsp = 8 mod 16, as the ABI wants.
    let sp = top - FRAME_WORDS * 8;
    let frame = [
        0usize,
        0,
        arg,
        entry as usize,
        0,
        0,
        kiln_context_start as *const () as usize,
    ];
    // SAFETY: the caller guarantees the stack is writable; the frame lies
    // within its last FRAME_WORDS words.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), sp as *mut usize, FRAME_WORDS) };
    sp
}

/// Suspends the running thread, storing its stack pointer in `*save`, and
/// resumes the thread whose stack pointer is `resume`. Returns when some
/// thread switches back to the stack pointer stored in `*save`.
///
/// # Safety
/// `resume` must come from [`prepare`] or from a `*save` of an earlier
/// switch whose thread has not run since; its stack must still be
/// allocated. Interrupt handlers must not switch.
pub unsafe fn switch(save: *mut usize, resume: usize) {
    // SAFETY: per the contract above.
    unsafe { kiln_context_switch(save, resume) }
}
