//! The `syscall` instruction, for Linux programs run by the ELF loader.
//!
//! Programs run in ring 0 on Kiln's page tables, like the kernel (as in
//! Unikraft's ELF loader), so `syscall` does not change privilege or stack
//! by itself. The entry below moves to the calling thread's **kernel
//! stack** (the program's stack may be a goroutine's 8 KiB, and a call
//! that blocks runs the scheduler, the network stack and the idle loop):
//! the top of that stack is [`kernel_stack`], which each thread sets when
//! it first enters its program ([`enter`], [`resume`]) and every return
//! to the program puts back, so it is always the running program thread's.
//! Interrupts are masked while this happens (they are taken only in the
//! idle halt), and there is one CPU, so one scratch word holds the
//! program's stack pointer for the two instructions that need it.
//!
//! On the kernel stack the entry saves the program's registers (a
//! [`Frame`]), calls the handler the syscall library installed with
//! [`set_handler`], and returns with `popfq; jmp rcx` (sysret would drop
//! to ring 3). As on Linux, only rax (the result), rcx and r11 change, and
//! nothing is written to the program's stack.

use core::sync::atomic::{AtomicPtr, Ordering};

/// The program's registers at a system call: the number, the six
/// arguments, and everything else a new thread (`clone`) resumes with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    pub nr: u64,
    /// rdi, rsi, rdx, r10, r8, r9.
    pub a: [u64; 6],
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// The program's stack pointer at the `syscall`.
    pub rsp: u64,
    /// Where the program continues (rcx at the `syscall`).
    pub rip: u64,
    /// Its flags (r11 at the `syscall`).
    pub rflags: u64,
}

fn enosys(_: &mut Frame) -> i64 {
    -38
}

static HANDLER: AtomicPtr<()> = AtomicPtr::new(enosys as *mut ());

/// Installs the function that carries out system calls.
pub fn set_handler(f: fn(&mut Frame) -> i64) {
    HANDLER.store(f as *mut (), Ordering::Release);
}

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kiln_syscall_dispatch(frame: &mut Frame) -> i64 {
    let p = HANDLER.load(Ordering::Acquire);
    // SAFETY: HANDLER only holds `enosys` or a `fn(&mut Frame) -> i64` stored by set_handler.
    let f: fn(&mut Frame) -> i64 = unsafe { core::mem::transmute(p) };
    let r = f(frame);
    crate::irq::arm_slice();
    r
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .text.kiln_syscall, \"ax\"",
    ".global kiln_syscall_entry",
    "kiln_syscall_entry:",
    "mov [rip + kiln_user_rsp], rsp",
    "mov rsp, [rip + kiln_kstack_top]",
    "push qword ptr [rip + kiln_user_rsp]",
    "push rbp",
    "mov rbp, rsp",
    // A Frame, pushed from its last field down (16 words; the top is
    // 16-byte aligned and two words are above, so it stays aligned).
    "push r11",
    "push rcx",
    "push qword ptr [rbp + 8]",
    "push r15",
    "push r14",
    "push r13",
    "push r12",
    "push qword ptr [rbp]",
    "push rbx",
    "push r9",
    "push r8",
    "push r10",
    "push rdx",
    "push rsi",
    "push rdi",
    "push rax",
    "mov rdi, rsp",
    "cld",
    "call kiln_syscall_dispatch",
    // This thread's kernel stack is the next call's again (others may
    // have run while this one was blocked).
    "lea rcx, [rbp + 16]",
    "mov [rip + kiln_kstack_top], rcx",
    "mov rdi, [rsp + 8]",
    "mov rsi, [rsp + 16]",
    "mov rdx, [rsp + 24]",
    "mov r10, [rsp + 32]",
    "mov r8, [rsp + 40]",
    "mov r9, [rsp + 48]",
    "mov rcx, [rsp + 112]",
    "mov r11, [rsp + 120]",
    "push r11",
    "popfq",
    "mov rsp, rbp",
    "pop rbp",
    "pop rsp",
    "jmp rcx",
    // kiln_syscall_resume(frame, kstack): continue a program at frame.rip
    // with all of frame's registers (a new thread returning from `clone`,
    // a signal handler); kstack is the thread's kernel stack top, or 0 for
    // "from here".
    ".global kiln_syscall_resume",
    "kiln_syscall_resume:",
    "test rsi, rsi",
    "jnz 2f",
    "mov rsi, rsp",
    "and rsi, -16",
    "2:",
    "mov [rip + kiln_kstack_top], rsi",
    "mov rax, [rdi]",
    "mov rsi, [rdi + 16]",
    "mov rdx, [rdi + 24]",
    "mov r10, [rdi + 32]",
    "mov r8, [rdi + 40]",
    "mov r9, [rdi + 48]",
    "mov rbx, [rdi + 56]",
    "mov rbp, [rdi + 64]",
    "mov r12, [rdi + 72]",
    "mov r13, [rdi + 80]",
    "mov r14, [rdi + 88]",
    "mov r15, [rdi + 96]",
    "mov rcx, [rdi + 112]",
    "mov r11, [rdi + 120]",
    "mov rsp, [rdi + 104]",
    "lea rsp, [rsp - 128]",
    "push r11",
    "mov rdi, [rdi + 8]",
    "popfq",
    "lea rsp, [rsp + 128]",
    "jmp rcx",
);

/// The program's stack pointer between the first two instructions of the
/// entry (interrupts are masked and there is one CPU).
#[cfg(target_os = "none")]
#[no_mangle]
static mut kiln_user_rsp: u64 = 0;

/// Top of the running program thread's kernel stack: where the next
/// `syscall` puts its frame.
#[cfg(target_os = "none")]
#[no_mangle]
static kiln_kstack_top: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The kernel stack top the current system call was entered on. Read it
/// at the start of a call (before anything blocks) to [`resume`] the same
/// thread's program on the same stack later.
#[cfg(target_os = "none")]
pub fn kernel_stack() -> u64 {
    kiln_kstack_top.load(Ordering::Relaxed)
}

#[cfg(not(target_os = "none"))]
pub fn kernel_stack() -> u64 {
    0
}

/// Continues a program with `frame`'s registers: rax = `frame.nr`, the
/// stack at `frame.rsp`, at `frame.rip`. How a thread made by `clone`
/// starts (`kstack` None: its kernel stack is the current one, from
/// here up) and how a signal handler is entered or left (`kstack`: the
/// [`kernel_stack`] the call came in on).
///
/// # Safety
/// `frame.rip` must be program code and `frame.rsp` a stack it owns;
/// nothing on the kernel stack below `kstack` (or here) may still be in use.
#[cfg(target_os = "none")]
pub unsafe fn resume(frame: &Frame, kstack: Option<u64>) -> ! {
    extern "C" {
        fn kiln_syscall_resume(frame: *const Frame, kstack: u64) -> !;
    }
    crate::irq::arm_slice();
    // SAFETY: per the contract; `frame` is read before the stack changes.
    unsafe { kiln_syscall_resume(frame, kstack.unwrap_or(0) & !15) }
}

/// Host builds (unit tests) cannot run programs.
///
/// # Safety
/// Never runs.
#[cfg(not(target_os = "none"))]
pub unsafe fn resume(_frame: &Frame, _kstack: Option<u64>) -> ! {
    unreachable!("programs run only in a kernel")
}

/// A program thread's SSE and x87 state (FXSAVE format).
#[repr(C, align(16))]
pub struct FpState(pub [u8; 512]);

impl FpState {
    pub const fn new() -> FpState {
        FpState([0; 512])
    }

    /// Saves the CPU's SSE/x87 registers here.
    #[cfg(target_os = "none")]
    pub fn save(&mut self) {
        // SAFETY: FXSAVE writes 512 bytes to a 16-byte aligned buffer, which
        // this is; SSE is enabled by `init` before any program runs.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack)) }
    }

    /// Loads the SSE/x87 registers saved by [`FpState::save`].
    #[cfg(target_os = "none")]
    pub fn restore(&self) {
        // SAFETY: the buffer holds an image FXSAVE wrote; kernel code uses
        // no SSE/x87 state, so only the program sees the change.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack)) }
    }
}

impl Default for FpState {
    fn default() -> Self {
        Self::new()
    }
}

/// Enables `syscall` (EFER.SCE) with [`kiln_syscall_entry`] as its target,
/// and SSE for programs (the kernel itself is built without it).
#[cfg(target_os = "none")]
pub fn init() {
    use x86_64::instructions::segmentation::Segment;
    use x86_64::registers::model_specific::Msr;
    extern "C" {
        fn kiln_syscall_entry();
    }
    // SAFETY: these MSRs configure `syscall`, which nothing else uses: EFER
    // bit 0 enables it, STAR holds the kernel code selector (syscall loads
    // CS from it; the program already runs in ring 0 with that CS), LSTAR
    // the entry, SFMASK the RFLAGS bits cleared on entry (IF, TF, DF, AC).
    // CR0/CR4: SSE state (FXSAVE, unmasked SIMD exceptions) is enabled and
    // x87 emulation turned off, which only affects code that uses SSE.
    unsafe {
        let cs = x86_64::instructions::segmentation::CS::get_reg().0 as u64;
        let mut efer = Msr::new(0xC000_0080);
        efer.write(efer.read() | 1);
        Msr::new(0xC000_0081).write(cs << 32);
        Msr::new(0xC000_0082).write(kiln_syscall_entry as *const () as usize as u64);
        Msr::new(0xC000_0084).write((1 << 9) | (1 << 8) | (1 << 10) | (1 << 18));
        let mut cr0: u64;
        core::arch::asm!("mov {}, cr0", out(reg) cr0);
        cr0 = (cr0 & !(1 << 2)) | (1 << 1); // EM off, MP on
        core::arch::asm!("mov cr0, {}", in(reg) cr0);
        let mut cr4: u64;
        core::arch::asm!("mov {}, cr4", out(reg) cr4);
        cr4 |= (1 << 9) | (1 << 10); // OSFXSR, OSXMMEXCPT
        core::arch::asm!("mov cr4, {}", in(reg) cr4);
    }
}

/// Sets the FS base (a program's thread pointer, `arch_prctl(ARCH_SET_FS)`).
#[cfg(target_os = "none")]
pub fn set_fs_base(v: u64) {
    // SAFETY: FS_BASE only changes what %fs-relative accesses address; Kiln
    // itself does not use %fs.
    unsafe { x86_64::registers::model_specific::Msr::new(0xC000_0100).write(v) }
}

/// The FS base.
#[cfg(target_os = "none")]
pub fn fs_base() -> u64 {
    // SAFETY: reading FS_BASE has no side effects.
    unsafe { x86_64::registers::model_specific::Msr::new(0xC000_0100).read() }
}

/// Starts a program: stack pointer `sp` (argc at [sp]), entry `entry`,
/// rdx = 0 (no exit function), the other registers zero, interrupts
/// enabled when programs are preemptible ([`crate::irq`]). Never returns;
/// the program ends through `exit_group`. The caller's stack, from here
/// up, becomes the thread's kernel stack.
///
/// # Safety
/// `entry` must be executable program code and `sp` its initial stack.
#[cfg(target_os = "none")]
pub unsafe fn enter(entry: u64, sp: u64) -> ! {
    let flags: u64 = if crate::irq::preemptive() { 0x202 } else { 0x2 };
    crate::irq::arm_slice();
    // SAFETY: per the contract; the kernel's stack is abandoned and reused
    // by the program's system calls. The flags go through the word below
    // the program's initial stack, which holds nothing yet.
    unsafe {
        core::arch::asm!(
            "mov rbx, rsp",
            "and rbx, -16",
            "mov [rip + kiln_kstack_top], rbx",
            "mov rsp, rdi",
            "push rax",
            "popfq",
            "xor eax, eax", "xor ebx, ebx", "xor ecx, ecx", "xor edx, edx",
            "xor esi, esi", "xor edi, edi", "xor ebp, ebp",
            "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d", "xor r11d, r11d",
            "xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d",
            "jmp r15",
            in("rdi") sp, in("r15") entry, in("rax") flags, options(noreturn)
        )
    }
}

/// Host builds (unit tests) cannot run programs.
///
/// # Safety
/// Never runs.
#[cfg(not(target_os = "none"))]
pub unsafe fn enter(_entry: u64, _sp: u64) -> ! {
    unreachable!("programs run only in a kernel")
}
