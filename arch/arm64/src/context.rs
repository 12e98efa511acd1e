//! Switching between threads' stacks, for lib/sched (see `entry.S`): the
//! callee-saved registers x19-x30 and d8-d15 go on the old stack, the stack
//! pointers are swapped, and the new thread's registers come off its stack.

#[cfg(target_arch = "aarch64")]
extern "C" {
    fn kiln_context_switch(save: *mut usize, resume: usize);
    fn kiln_context_start();
}

/// Words of the frame [`switch`] saves.
const FRAME_WORDS: usize = 20;

/// Prepares `stack` so that switching to the returned stack pointer calls
/// `entry(arg)`, which must never return.
///
/// # Safety
/// `stack` must be valid for writes, 16-byte aligned at its end, and stay
/// allocated while the thread can run.
#[cfg(target_arch = "aarch64")]
pub unsafe fn prepare(stack: &mut [u8], entry: extern "C" fn(usize) -> !, arg: usize) -> usize {
    let top = stack.as_mut_ptr() as usize + stack.len();
    let sp = top - FRAME_WORDS * 8;
    let mut frame = [0usize; FRAME_WORDS];
    frame[0] = entry as usize; // x19
    frame[1] = arg; // x20
    frame[11] = kiln_context_start as *const () as usize; // x30
                                                          // SAFETY: the caller guarantees the stack is writable; the frame is its top.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), sp as *mut usize, FRAME_WORDS) };
    sp
}

/// Suspends the running thread (its stack pointer goes to `*save`) and
/// resumes the one whose stack pointer is `resume`.
///
/// # Safety
/// As for the x86_64 version: `resume` comes from [`prepare`] or an earlier
/// `*save` of a thread that has not run since, whose stack is allocated.
#[cfg(target_arch = "aarch64")]
pub unsafe fn switch(save: *mut usize, resume: usize) {
    // SAFETY: per the contract above.
    unsafe { kiln_context_switch(save, resume) }
}
