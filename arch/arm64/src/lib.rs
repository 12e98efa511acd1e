//! AArch64 CPU support for Kiln.
//!
//! `entry.S` holds the arm64 Image header and the boot path (EL2 to EL1,
//! FP/SIMD, stack, .bss, MMU, vectors) that ends in [`kiln_arch_start`],
//! which hands over to the platform's `kiln_plat_main` with the device
//! tree's address. Exceptions other than interrupts are fatal: they become a
//! [`FaultReport`] (exception class, ESR, FAR, ELR, registers) passed to the
//! handler the platform installed.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(target_arch = "aarch64"), allow(dead_code, unused_imports))]

use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

pub mod context;
pub mod gic;
pub mod mmu;
pub mod paging;
pub mod preempt;
pub mod syscall;

/// The frame-pointer chain, for backtraces (kernels are built with frame
/// pointers: x29 points at the caller's x29 and the return address, x30;
/// `kiln_boot::walk_frames` walks it).
pub mod frames {
    /// The frame and stack pointers of the function this is inlined into.
    #[inline(always)]
    pub fn here() -> (usize, usize) {
        #[cfg(target_arch = "aarch64")]
        {
            let (fp, sp): (usize, usize);
            // SAFETY: copies two registers; touches no memory.
            unsafe {
                core::arch::asm!("mov {}, x29", "mov {}, sp", out(reg) fp, out(reg) sp, options(nomem, nostack, preserves_flags))
            };
            (fp, sp)
        }
        // Host builds (unit tests) have no such frames: no backtrace.
        #[cfg(not(target_arch = "aarch64"))]
        (0, 0)
    }

    /// Reads one word of a stack.
    ///
    /// # Safety
    /// `addr` must be readable: within a thread's stack, above its stack
    /// pointer (RAM is mapped whole; only guard pages, below stacks, are
    /// not).
    pub unsafe fn read_word(addr: usize) -> usize {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::read_volatile(addr as *const usize) }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
core::arch::global_asm!(include_str!("entry.S"));

extern "Rust" {
    /// The platform's main: the device tree's address (x0 at entry) and the
    /// generic timer's count at entry.
    fn kiln_plat_main(dtb: usize, entry_ticks: u64) -> !;
}

/// Called by `entry.S` at EL1 with the MMU on.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[no_mangle]
extern "C" fn kiln_arch_start(dtb: usize, ticks: u64) -> ! {
    // SAFETY: the plat crate linked into every kernel defines this symbol.
    unsafe { kiln_plat_main(dtb, ticks) }
}

/// Registers saved by the exception entry, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub x: [u64; 29],
    pad: u64,
    pub x29: u64,
    pub x30: u64,
}

/// Everything known about a fatal exception.
#[derive(Clone, Copy, Debug)]
pub struct FaultReport {
    pub frame: Frame,
    /// Vector index (0-15): which of the 16 entries was taken.
    pub vector: u64,
    pub esr: u64,
    pub far: u64,
    pub elr: u64,
    pub spsr: u64,
    /// The interrupted code's stack pointer (SP_EL0).
    pub sp: u64,
    /// The kernel's read-only range (text and rodata).
    pub readonly: (u64, u64),
    /// The unmapped page below the boot stack.
    pub stack_guard: u64,
}

impl FaultReport {
    /// The frame and stack pointers of the code that faulted, where its
    /// backtrace starts.
    pub fn frame_registers(&self) -> (usize, usize) {
        (self.frame.x29 as usize, self.sp as usize)
    }

    /// The exception class (ESR_EL1.EC).
    pub fn class(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }

    /// The exception class's name.
    pub fn name(&self) -> &'static str {
        match self.class() {
            0x00 => "unknown reason (undefined instruction)",
            0x01 => "WFI/WFE trapped",
            0x07 => "FP/SIMD access trapped",
            0x0e => "illegal execution state",
            0x15 => "SVC instruction",
            0x18 => "system register access trapped",
            0x20 | 0x21 => "instruction abort",
            0x22 => "PC alignment fault",
            0x24 | 0x25 => "data abort",
            0x26 => "SP alignment fault",
            0x2c => "floating-point exception",
            0x2f => "SError",
            0x30 | 0x31 => "breakpoint",
            0x32 | 0x33 => "software step",
            0x34 | 0x35 => "watchpoint",
            0x3c => "BRK instruction",
            _ => "other exception",
        }
    }

    /// A one-line diagnosis when the report shows a well-known mistake.
    pub fn diagnosis(&self) -> Option<&'static str> {
        let class = self.class();
        if matches!(class, 0x20 | 0x21 | 0x24 | 0x25) {
            if self.far < 4096 {
                return Some("null pointer dereference");
            }
            if self.far & !0xfff == self.stack_guard {
                return Some("stack overflow (hit the guard page below the stack)");
            }
            let write = self.esr & (1 << 6) != 0;
            if matches!(class, 0x24 | 0x25)
                && write
                && self.far >= self.readonly.0
                && self.far < self.readonly.1
            {
                return Some("write to read-only memory (kernel code or constants: W^X)");
            }
            if matches!(class, 0x20 | 0x21) {
                return Some("jump into memory that is not executable (heap, stack or data: W^X)");
            }
        }
        if class == 0x3c {
            return Some("a Rust panic or explicit trap (brk)");
        }
        None
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            out,
            "kiln: CPU exception class 0x{:02x} ({}) at vector {}",
            self.class(),
            self.name(),
            self.vector
        )?;
        writeln!(out, "  ESR 0x{:x}", self.esr)?;
        writeln!(out, "  fault address       0x{:016x}", self.far)?;
        writeln!(
            out,
            "  instruction pointer 0x{:016x}  SPSR 0x{:x}",
            self.elr, self.spsr
        )?;
        writeln!(out, "  stack pointer       0x{:016x}", self.sp)?;
        for (i, pair) in self.frame.x.chunks(4).enumerate() {
            for (j, v) in pair.iter().enumerate() {
                write!(
                    out,
                    "{}x{:<2} {:016x}",
                    if j == 0 { "  " } else { " " },
                    i * 4 + j,
                    v
                )?;
            }
            writeln!(out)?;
        }
        write!(
            out,
            "  x29 {:016x} x30 {:016x}",
            self.frame.x29, self.frame.x30
        )?;
        if let Some(d) = self.diagnosis() {
            write!(out, "\nkiln: likely cause: {d}")?;
        }
        Ok(())
    }
}

fn no_handler(_: &FaultReport) -> ! {
    halt()
}

static HANDLER: AtomicPtr<()> = AtomicPtr::new(no_handler as *mut ());

/// Installs the function that reports a fatal exception and powers off.
pub fn set_fault_handler(f: fn(&FaultReport) -> !) {
    HANDLER.store(f as *mut (), Ordering::Release);
}

static IRQ: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Installs the interrupt handler (the platform's interrupt controller).
pub fn set_irq_handler(f: fn()) {
    IRQ.store(f as *mut (), Ordering::Release);
}

/// A data or instruction abort taken at EL1 on SP_EL0 (a Linux program,
/// or the kernel touching a program's memory), as the page-fault hook
/// sees it.
#[derive(Clone, Copy, Debug)]
pub struct PageFault {
    /// The address touched (FAR_EL1).
    pub addr: u64,
    /// Where: the faulting instruction (ELR_EL1).
    pub pc: u64,
    pub write: bool,
    pub exec: bool,
    /// A permission fault (the page is mapped, the access not allowed),
    /// not a missing translation.
    pub permission: bool,
}

fn no_hook(_: &PageFault) -> bool {
    false
}

static PAGE_FAULT_HOOK: AtomicPtr<()> = AtomicPtr::new(no_hook as *mut ());

/// Installs the function that may serve a page fault (true: the
/// instruction runs again); without one, every fault is fatal.
pub fn set_page_fault_hook(f: fn(&PageFault) -> bool) {
    PAGE_FAULT_HOOK.store(f as *mut (), Ordering::Release);
}

/// Called by the vectors with the saved registers and the vector index.
/// Returns (and the CPU resumes) for interrupts and for page faults the
/// hook served: 0, or 1 when an interrupt preempts a program (see
/// [`preempt`]).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
#[no_mangle]
extern "C" fn kiln_arch_exception(frame: &Frame, vector: u64) -> u64 {
    // Vector 1: IRQ from EL1 running on SP_EL0 (a program running with
    // IRQs unmasked); 5: the same while on the exception stack.
    if vector == 1 && preempt::active() {
        let (elr, spsr): (u64, u64);
        // SAFETY: reading the exception return state has no side effects.
        unsafe {
            core::arch::asm!("mrs {}, elr_el1", out(reg) elr);
            core::arch::asm!("mrs {}, spsr_el1", out(reg) spsr);
        }
        return preempt::irq(elr, spsr) as u64;
    }
    if vector == 1 || vector == 5 {
        let p = IRQ.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: IRQ only holds null or a `fn()` stored by set_irq_handler.
            let f: fn() = unsafe { core::mem::transmute(p) };
            f();
            return 0;
        }
    }
    let (esr, far, elr, spsr, sp): (u64, u64, u64, u64, u64);
    // SAFETY: reading the exception syndrome registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, sp_el0", out(reg) sp);
        core::arch::asm!("mrs {}, esr_el1", out(reg) esr);
        core::arch::asm!("mrs {}, far_el1", out(reg) far);
        core::arch::asm!("mrs {}, elr_el1", out(reg) elr);
        core::arch::asm!("mrs {}, spsr_el1", out(reg) spsr);
    }
    // Vector 0: a synchronous exception on SP_EL0. Instruction (0x21) and
    // data (0x25) aborts go to the hook first.
    let ec = esr >> 26;
    if vector == 0 && (ec == 0x21 || ec == 0x25) {
        let f = PageFault {
            addr: far,
            pc: elr,
            write: ec == 0x25 && esr & (1 << 6) != 0,
            exec: ec == 0x21,
            permission: esr & 0x3c == 0x0c,
        };
        let p = PAGE_FAULT_HOOK.load(Ordering::Acquire);
        // SAFETY: only `no_hook` or a `fn(&PageFault) -> bool` is stored.
        let hook: fn(&PageFault) -> bool = unsafe { core::mem::transmute(p) };
        if hook(&f) {
            return 0;
        }
    }
    let report = FaultReport {
        frame: *frame,
        vector,
        esr,
        far,
        elr,
        spsr,
        sp,
        readonly: {
            let k = layout::sections();
            (k.text.0, k.rodata.1)
        },
        stack_guard: layout::stack_guard() as u64,
    };
    let p = HANDLER.load(Ordering::Acquire);
    // SAFETY: HANDLER only holds `no_handler` or a `fn(&FaultReport) -> !`.
    let f: fn(&FaultReport) -> ! = unsafe { core::mem::transmute(p) };
    f(&report)
}

/// Stops the CPU for good.
pub fn halt() -> ! {
    loop {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: waiting for an event has no other effect.
        unsafe {
            core::arch::asm!("wfe")
        };
    }
}

/// The generic timer: a count and its frequency.
pub mod timer {
    /// CNTVCT_EL0, the virtual count.
    pub fn ticks() -> u64 {
        #[cfg(target_arch = "aarch64")]
        {
            let v: u64;
            // SAFETY: the counter is readable at EL1 (and EL0).
            unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v) };
            v
        }
        #[cfg(not(target_arch = "aarch64"))]
        0
    }

    static ROUTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

    /// Says the virtual timer's interrupt reaches this CPU (a GIC set up
    /// for it, or a board's own interrupt controller), so [`idle`] may wait
    /// for it.
    pub fn set_wake_routed() {
        ROUTED.store(true, core::sync::atomic::Ordering::Relaxed);
    }

    /// Waits (`wfi`) until an enabled interrupt is pending or `us`
    /// microseconds pass (the virtual timer's interrupt). Returns at once
    /// when the timer's interrupt is not routed to the CPU.
    pub fn idle(us: u64) {
        if !ROUTED.load(core::sync::atomic::Ordering::Relaxed) || us == 0 {
            return;
        }
        let f = frequency();
        let t = (us as u128 * f as u128 / 1_000_000).clamp(1, u32::MAX as u128) as u64;
        #[cfg(target_arch = "aarch64")]
        // SAFETY: programs this CPU's virtual timer (enabled, unmasked),
        // waits, and disables it again, which lowers its interrupt line;
        // IRQs stay masked in PSTATE, so no handler runs.
        unsafe {
            core::arch::asm!("msr cntv_tval_el0, {}", "msr cntv_ctl_el0, {}", "isb", "wfi", "msr cntv_ctl_el0, xzr", "isb", in(reg) t, in(reg) 1u64);
        }
        crate::preempt::slice_stopped();
        let _ = t;
    }

    /// The counter's frequency, if firmware or QEMU set one.
    pub fn hz() -> Option<u64> {
        Some(frequency()).filter(|&f| f != 0)
    }

    /// CNTFRQ_EL0, set by firmware or QEMU.
    pub fn frequency() -> u64 {
        #[cfg(target_arch = "aarch64")]
        {
            let v: u64;
            // SAFETY: reading the frequency register has no side effects.
            unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) v) };
            v
        }
        #[cfg(not(target_arch = "aarch64"))]
        0
    }
}

/// Powering off.
pub mod power {
    use core::sync::atomic::{AtomicBool, Ordering};

    static EXITING: AtomicBool = AtomicBool::new(false);

    /// Whether [`exit`] is under way: a fault then is its semihosting call
    /// failing (no semihosting), not something to report.
    pub fn exiting() -> bool {
        EXITING.load(Ordering::Acquire)
    }

    /// The code [`exit`] was first asked to report.
    static CODE: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

    /// Powers off reporting `code`. Semihosting carries it as QEMU's exit
    /// status `((code + 1) << 1) | 1`, the encoding of x86_64's
    /// isa-debug-exit, so `kiln run` decodes both alike. Without semihosting
    /// (Firecracker, a board, QEMU run by hand) the call is an undefined
    /// instruction, whose fault handler exits again: the second time
    /// `report` gets the first call's code (the platform prints it on its
    /// console, see kiln_boot::EXIT_LINE), then this powers off through
    /// PSCI (when `psci`, as on QEMU virt and Firecracker) or halts (a
    /// board without PSCI).
    pub fn exit(code: i32, psci: bool, report: fn(i32)) -> ! {
        if !EXITING.swap(true, Ordering::AcqRel) {
            CODE.store(code, Ordering::Relaxed);
            semihosting_exit((((code + 1) << 1) | 1) as u32);
        }
        report(CODE.load(Ordering::Relaxed));
        if psci {
            psci_off();
        }
        crate::halt()
    }

    /// Ends QEMU with `code` through semihosting (SYS_EXIT_EXTENDED); QEMU
    /// must run with `-semihosting` (kiln run adds it). Returns if the call
    /// did nothing.
    pub fn semihosting_exit(code: u32) {
        #[cfg(target_arch = "aarch64")]
        {
            // ADP_Stopped_ApplicationExit and the exit code.
            let block: [u64; 2] = [0x20026, code as u64];
            // SAFETY: `hlt #0xf000` with w0 = 0x20 (SYS_EXIT_EXTENDED) is the
            // AArch64 semihosting call; x1 points at a live parameter block.
            unsafe {
                core::arch::asm!("hlt #0xf000", in("x0") 0x20u64, in("x1") block.as_ptr(), options(nostack));
            }
        }
        let _ = code;
    }

    /// PSCI SYSTEM_OFF through `hvc` (QEMU virt without EL2 emulation).
    pub fn psci_off() {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: PSCI SYSTEM_OFF does not return when it works; otherwise
        // x0 holds an error and nothing else changed.
        unsafe {
            core::arch::asm!("hvc #0", inout("x0") 0x8400_0008u64 => _, options(nostack));
        }
    }
}

/// Addresses from the linker script.
pub mod layout {
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    extern "C" {
        static __kernel_start: u8;
        static __kernel_end: u8;
        static __stack_guard: u8;
        static __rodata_start: u8;
        static __data_start: u8;
        static __map_ram_start: u8;
        static __map_ram_end: u8;
        static __map_dev_end: u8;
    }

    /// The RAM window entry.S maps as normal memory, [start, end), as the
    /// layout's linker script gives it (QEMU virt: 1 to 4 GiB; Firecracker:
    /// 2 to 4 GiB).
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn ram_window() -> (usize, usize) {
        // Taking the address of an extern (absolute) symbol is safe.
        (
            &raw const __map_ram_start as usize,
            &raw const __map_ram_end as usize,
        )
    }

    /// The end of the device window entry.S maps as device memory.
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn device_end() -> usize {
        // Taking the address of an extern (absolute) symbol is safe.
        &raw const __map_dev_end as usize
    }

    /// The kernel's sections: [start, end) of text, read-only data, and the rest.
    #[derive(Clone, Copy, Debug)]
    pub struct Sections {
        pub text: (u64, u64),
        pub rodata: (u64, u64),
        pub data: (u64, u64),
    }

    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn kernel_start() -> usize {
        // Taking the address of an extern static is safe.
        &raw const __kernel_start as usize
    }

    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn kernel_end() -> usize {
        // Taking the address of an extern static is safe.
        &raw const __kernel_end as usize
    }

    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn stack_guard() -> usize {
        // Taking the address of an extern static is safe.
        &raw const __stack_guard as usize
    }

    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn sections() -> Sections {
        // Taking the address of an extern static is safe.
        let (ro, data) = (
            &raw const __rodata_start as u64,
            &raw const __data_start as u64,
        );
        Sections {
            text: (kernel_start() as u64, ro),
            rodata: (ro, data),
            data: (data, kernel_end() as u64),
        }
    }
}
