//! x86_64 CPU support for Kiln.
//!
//! The entry code (`entry.S`) takes the CPU from 32-bit protected mode to long
//! mode on identity-mapped 2 MiB pages and calls [`kiln_arch_start64`], which
//! loads the final GDT (with a TSS whose IST stacks catch double faults and
//! stack overflows), the IDT, and hands over to the platform's
//! `kiln_plat_main`. CPU exceptions are fatal: they are turned into a
//! [`FaultReport`] and passed to the handler the platform installed with
//! [`set_fault_handler`].
#![cfg_attr(not(test), no_std)]
// Much of this crate only runs on the bare-metal target; host builds exist for unit tests.
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

pub mod apic;
pub mod context;
pub mod cpu;
mod exceptions;
mod gdt;
pub mod irq;
pub mod mmu;
pub mod paging;
pub mod syscall;
pub mod tsc;

pub use exceptions::{
    set_fault_handler, set_page_fault_hook, FaultReport, Frame as ExceptionFrame,
};

/// The frame-pointer chain, for backtraces (kernels are built with frame
/// pointers; `kiln_boot::walk_frames` walks it).
pub mod frames {
    /// The frame and stack pointers of the function this is inlined into.
    #[inline(always)]
    pub fn here() -> (usize, usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (fp, sp): (usize, usize);
            // SAFETY: copies two registers; touches no memory.
            unsafe {
                core::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) fp, out(reg) sp, options(nomem, nostack, preserves_flags))
            };
            (fp, sp)
        }
        #[cfg(not(target_arch = "x86_64"))]
        (0, 0)
    }

    /// Reads one word of a stack.
    ///
    /// # Safety
    /// `addr` must be readable: within a thread's stack, above its stack
    /// pointer (RAM is identity-mapped; only guard pages, below stacks,
    /// are not).
    pub unsafe fn read_word(addr: usize) -> usize {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::read_volatile(addr as *const usize) }
    }
}

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("entry.S"), options(att_syntax));
#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("exceptions.S"), options(att_syntax));

extern "Rust" {
    /// The platform's main, defined by the plat crate: receives the boot
    /// loader's argument (EBX at entry) and the TSC value at the first
    /// instruction.
    fn kiln_plat_main(boot_arg: usize, entry_tsc: u64) -> !;
}

#[cfg(target_os = "none")]
extern "C" {
    static kiln_entry_tsc: u64;
    static kiln_entry_eax: u32;
}

/// EAX as the boot loader left it at the 32-bit entry: multiboot2's magic
/// (0x36d76289) when GRUB booted the kernel, anything under PVH.
#[cfg(target_os = "none")]
pub fn entry_eax() -> u32 {
    // SAFETY: written once by entry.S before any Rust code runs.
    unsafe { core::ptr::read_volatile(&raw const kiln_entry_eax) }
}

/// Called by `entry.S` on the boot stack in 64-bit mode.
#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn kiln_arch_start64(boot_arg: u64) -> ! {
    gdt::init();
    exceptions::init();
    // SAFETY: written once by entry.S before this function runs.
    let t0 = unsafe { core::ptr::read_volatile(&raw const kiln_entry_tsc) };
    // SAFETY: the plat crate linked into every kernel defines this symbol.
    unsafe { kiln_plat_main(boot_arg as usize, t0) }
}

/// Addresses from the linker script.
pub mod layout {
    #[cfg(target_os = "none")]
    extern "C" {
        static __kernel_start: u8;
        static __kernel_end: u8;
        static __stack_guard: u8;
    }

    /// First byte of the kernel image.
    #[cfg(target_os = "none")]
    pub fn kernel_start() -> usize {
        // Taking the address of an extern static is safe.
        &raw const __kernel_start as usize
    }

    /// First byte after the kernel image, its .bss and boot stack.
    #[cfg(target_os = "none")]
    pub fn kernel_end() -> usize {
        // Taking the address of an extern static is safe.
        &raw const __kernel_end as usize
    }

    /// The unmapped page below the boot stack.
    #[cfg(target_os = "none")]
    pub fn stack_guard() -> usize {
        // Taking the address of an extern static is safe.
        &raw const __stack_guard as usize
    }

    /// The kernel's sections: [start, end) of text, read-only data, and
    /// writable data with .bss and the boot stack.
    #[derive(Clone, Copy, Debug)]
    pub struct Sections {
        pub text: (u64, u64),
        pub rodata: (u64, u64),
        pub data: (u64, u64),
    }

    #[cfg(target_os = "none")]
    extern "C" {
        static __rodata_start: u8;
        static __data_start: u8;
    }

    /// The sections of the running kernel.
    #[cfg(target_os = "none")]
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
