//! CPU exceptions: the IDT and the fault report.
//!
//! Every exception vector (0-31) has a stub in `exceptions.S` that builds a
//! uniform [`Frame`] and calls [`kiln_arch_exception`]. A page fault goes
//! first to the hook a library installed ([`set_page_fault_hook`]: a Linux
//! program's demand-paged memory), and the instruction is retried when the
//! hook resolved it; so does a general-protection fault (vector 13, e.g. a
//! program touching a non-canonical address), which the hook may end as
//! the program's. Everything else is fatal: the report (vector, name, error code, faulting address,
//! instruction pointer, registers) goes to the platform's fault handler, which
//! prints it and powers off with a non-zero code.

use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Registers as saved by `kiln_exc_common`, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Everything known about a fatal CPU exception.
#[derive(Clone, Copy, Debug)]
pub struct FaultReport {
    /// The saved registers and CPU frame.
    pub frame: Frame,
    /// CR2: the faulting address, meaningful for page faults.
    pub address: u64,
    /// The boot stack's guard page, to recognise stack overflows.
    pub stack_guard: u64,
    /// The kernel's read-only range (text and rodata), to recognise writes
    /// to code or constants.
    pub readonly: (u64, u64),
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range exceeded",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack-segment fault",
    "#GP general protection fault",
    "#PF page fault",
    "reserved",
    "#MF x87 floating-point error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating-point error",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security exception",
    "reserved",
];

impl FaultReport {
    /// The exception's mnemonic and name.
    pub fn name(&self) -> &'static str {
        NAMES
            .get(self.frame.vector as usize)
            .copied()
            .unwrap_or("unknown")
    }

    /// The frame and stack pointers of the code that faulted, where its
    /// backtrace starts.
    pub fn frame_registers(&self) -> (usize, usize) {
        (self.frame.rbp as usize, self.frame.rsp as usize)
    }

    /// A one-line diagnosis when the report shows a well-known mistake.
    pub fn diagnosis(&self) -> Option<&'static str> {
        let f = &self.frame;
        if f.vector == 14 {
            if self.address < 4096 {
                return Some("null pointer dereference");
            }
            if self.address & !0xfff == self.stack_guard {
                return Some("stack overflow (hit the guard page below the stack)");
            }
            if f.error & 0x11 == 0x11 {
                return Some("jump into memory that is not executable (heap, stack or data: W^X)");
            }
            if f.error & 0x3 == 0x3
                && self.address >= self.readonly.0
                && self.address < self.readonly.1
            {
                return Some("write to read-only memory (kernel code or constants: W^X)");
            }
        }
        if f.vector == 8 {
            return Some("a fault happened while handling another fault");
        }
        None
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let f = &self.frame;
        writeln!(out, "kiln: CPU exception {} ({})", f.vector, self.name())?;
        write!(out, "  error code 0x{:x}", f.error)?;
        if f.vector == 14 {
            let e = f.error;
            write!(
                out,
                " ({} {}{}{})",
                if e & 1 != 0 {
                    "protection violation,"
                } else {
                    "page not present,"
                },
                if e & 2 != 0 { "write" } else { "read" },
                if e & 16 != 0 {
                    ", instruction fetch"
                } else {
                    ""
                },
                if e & 4 != 0 { ", user mode" } else { "" }
            )?;
        }
        writeln!(out)?;
        writeln!(out, "  fault address       0x{:016x}", self.address)?;
        writeln!(out, "  instruction pointer 0x{:016x}", f.rip)?;
        writeln!(
            out,
            "  stack pointer       0x{:016x}  rflags 0x{:x}",
            f.rsp, f.rflags
        )?;
        writeln!(
            out,
            "  rax {:016x} rbx {:016x} rcx {:016x} rdx {:016x}",
            f.rax, f.rbx, f.rcx, f.rdx
        )?;
        writeln!(
            out,
            "  rsi {:016x} rdi {:016x} rbp {:016x} r8  {:016x}",
            f.rsi, f.rdi, f.rbp, f.r8
        )?;
        writeln!(
            out,
            "  r9  {:016x} r10 {:016x} r11 {:016x} r12 {:016x}",
            f.r9, f.r10, f.r11, f.r12
        )?;
        write!(
            out,
            "  r13 {:016x} r14 {:016x} r15 {:016x}",
            f.r13, f.r14, f.r15
        )?;
        if let Some(d) = self.diagnosis() {
            write!(out, "\nkiln: likely cause: {d}")?;
        }
        Ok(())
    }
}

fn no_handler(_: &FaultReport) -> ! {
    crate::cpu::halt()
}

static HANDLER: AtomicPtr<()> = AtomicPtr::new(no_handler as *mut ());

/// Installs the function that reports a fatal exception and powers off.
pub fn set_fault_handler(f: fn(&FaultReport) -> !) {
    HANDLER.store(f as *mut (), Ordering::Release);
}

fn no_hook(_: &Frame, _: u64) -> bool {
    false
}

static PF_HOOK: AtomicPtr<()> = AtomicPtr::new(no_hook as *mut ());

/// Installs the function that may resolve a page fault (frame, faulting
/// address; general-protection faults come with address 0): true when the
/// page is now mapped and the instruction can be retried. It runs on the page-fault stack with interrupts masked.
pub fn set_page_fault_hook(f: fn(&Frame, u64) -> bool) {
    PF_HOOK.store(f as *mut (), Ordering::Release);
}

/// Called by the exception stubs with the saved frame; returns only when
/// the fault was resolved.
#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kiln_arch_exception(frame: &Frame) {
    if frame.vector == 14 || frame.vector == 13 {
        let p = PF_HOOK.load(Ordering::Acquire);
        // SAFETY: PF_HOOK only holds `no_hook` or a value stored by
        // `set_page_fault_hook`, both `fn(&Frame, u64) -> bool`.
        let hook: fn(&Frame, u64) -> bool = unsafe { core::mem::transmute(p) };
        let addr = if frame.vector == 14 {
            x86_64::registers::control::Cr2::read_raw()
        } else {
            0
        };
        if hook(frame, addr) {
            return;
        }
    }
    let report = FaultReport {
        frame: *frame,
        address: x86_64::registers::control::Cr2::read_raw(),
        stack_guard: crate::layout::stack_guard() as u64,
        readonly: {
            let k = crate::layout::sections();
            (k.text.0, k.rodata.1)
        },
    };
    let p = HANDLER.load(Ordering::Acquire);
    // SAFETY: HANDLER only ever holds `no_handler` or a value stored by
    // `set_fault_handler`, both `fn(&FaultReport) -> !`.
    let f: fn(&FaultReport) -> ! = unsafe { core::mem::transmute(p) };
    f(&report)
}

/// One IDT gate (64-bit interrupt gate).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

const EMPTY: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};
static mut IDT: Idt = Idt([EMPTY; 256]);

/// Installs an interrupt handler (an assembly stub ending in iretq) for
/// `vector` (32-255). It runs on the interrupt stack of its own (IST).
#[cfg(target_os = "none")]
pub fn set_interrupt(vector: u8, stub: u64) {
    use x86_64::instructions::segmentation::{Segment, CS};
    let cs = CS::get_reg().0;
    // SAFETY: one CPU; the gate is written while interrupts are disabled
    // (they are only enabled inside idle), and the stub is valid code.
    unsafe {
        (*(&raw mut IDT)).0[vector as usize] = Gate {
            offset_low: stub as u16,
            selector: cs,
            ist: (crate::gdt::IST_IRQ + 1) as u8,
            attributes: 0x8e,
            offset_mid: (stub >> 16) as u16,
            offset_high: (stub >> 32) as u32,
            reserved: 0,
        };
    }
}

/// Fills the IDT with the 32 exception stubs and loads it.
#[cfg(target_os = "none")]
pub fn init() {
    use crate::gdt::{IST_DOUBLE_FAULT, IST_NMI_MCE, IST_PAGE_FAULT};
    use x86_64::instructions::segmentation::{Segment, CS};
    use x86_64::structures::DescriptorTablePointer;
    extern "C" {
        static kiln_exc_table: [u64; 32];
    }
    let cs = CS::get_reg().0;
    // SAFETY: single-threaded early boot, before interrupts are enabled; the
    // IDT is a static that lives for the kernel's lifetime, and the stub
    // table holds valid code addresses from exceptions.S.
    unsafe {
        let idt = &mut *(&raw mut IDT);
        for (v, &addr) in (*(&raw const kiln_exc_table)).iter().enumerate() {
            let ist = match v {
                8 => IST_DOUBLE_FAULT + 1,
                14 => IST_PAGE_FAULT + 1,
                2 | 18 => IST_NMI_MCE + 1,
                _ => 0,
            };
            idt.0[v] = Gate {
                offset_low: addr as u16,
                selector: cs,
                ist: ist as u8,
                attributes: 0x8e, // present, ring 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        let ptr = DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: x86_64::VirtAddr::new(idt as *const Idt as u64),
        };
        x86_64::instructions::tables::lidt(&ptr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(vector: u64, error: u64, address: u64) -> FaultReport {
        // SAFETY: Frame is plain u64 fields, for which all-zero is valid.
        let mut frame: Frame = unsafe { core::mem::zeroed() };
        frame.vector = vector;
        frame.error = error;
        frame.rip = 0x10_2345;
        FaultReport {
            frame,
            address,
            stack_guard: 0x1f_0000,
            readonly: (0x10_0000, 0x10_8000),
        }
    }

    #[test]
    fn diagnoses_null_and_overflow() {
        assert_eq!(
            report(14, 0, 8).diagnosis(),
            Some("null pointer dereference")
        );
        assert!(report(14, 2, 0x1f_0ff8)
            .diagnosis()
            .unwrap()
            .starts_with("stack overflow"));
        assert_eq!(report(13, 0, 0).diagnosis(), None);
        assert!(report(14, 0x11, 0x40_0000)
            .diagnosis()
            .unwrap()
            .starts_with("jump into memory that is not executable"));
        assert!(report(14, 0x3, 0x10_1000)
            .diagnosis()
            .unwrap()
            .starts_with("write to read-only memory"));
        assert_eq!(report(14, 0x3, 0x40_0000).diagnosis(), None);
        let s = format!("{}", report(14, 2, 0));
        assert!(s.contains("CPU exception 14 (#PF page fault)"), "{s}");
        assert!(s.contains("page not present, write"), "{s}");
        assert!(s.contains("instruction pointer 0x0000000000102345"), "{s}");
    }
}
