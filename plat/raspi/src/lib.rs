//! The Raspberry Pi 3 (BCM2837), and with the `pi4` feature (plat/raspi4)
//! the Raspberry Pi 4 (BCM2711, GIC-400).
//!
//! The firmware (or QEMU's `raspi3b`) loads `kernel8.img` at 0x80000 and
//! starts the first core there, at EL2, with a device tree's address in x0
//! when it has one (real boards; QEMU only with `-dtb`); the other cores are
//! parked by the arch entry. Memory and the command line come from the
//! device tree when there is one, else the Pi 3's 1 GiB less the GPU's
//! default share. Console: the PL011 (UART0) at 0x3F201000, as the firmware
//! left it (on a real board, `enable_uart=1` in config.txt; GPIO 14/15).
//! Exit: semihosting under QEMU; a real board halts.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(
    not(all(target_arch = "aarch64", target_os = "none")),
    allow(dead_code, unused_imports)
)]

#[cfg(target_arch = "aarch64")]
mod board {
    use kiln_arch_arm64 as arch;
    use kiln_boot::{BootInfo, MemRegion, Platform};

    /// UART0 (PL011): BCM2837 (Pi 3) or BCM2711 (Pi 4, low peripheral mode).
    #[cfg(not(feature = "pi4"))]
    const UART0: usize = 0x3F20_1000;
    #[cfg(feature = "pi4")]
    const UART0: usize = 0xFE20_1000;
    /// RAM the Arm cores get by default (the GPU keeps 64 MiB at the top of
    /// the first GiB).
    const RAM_END: usize = 0x3C00_0000;
    /// Where the peripherals start (the heap stays below).
    #[cfg(not(feature = "pi4"))]
    const PERIPHERALS: usize = 0x3F00_0000;
    #[cfg(feature = "pi4")]
    const PERIPHERALS: usize = 0xFC00_0000;
    /// The Pi 4's GIC-400: distributor and CPU interface.
    #[cfg(feature = "pi4")]
    const GIC400: (usize, usize) = (0xFF84_1000, 0xFF84_2000);

    static UART: kiln_console::pl011::Pl011 = kiln_console::pl011::Pl011::new(UART0);

    /// The UART is used as the firmware left it.
    pub fn configure(_uart_init: bool) {}

    struct Raspi;

    impl Platform for Raspi {
        fn backtrace(&self, out: &mut [usize]) -> usize {
            let (fp, sp) = arch::frames::here();
            // SAFETY: walk_frames reads only this thread's own frame chain,
            // above its stack pointer.
            kiln_boot::walk_frames(fp, sp, |a| unsafe { arch::frames::read_word(a) }, out)
        }
        fn name(&self) -> &'static str {
            if cfg!(feature = "pi4") {
                "raspi4/arm64 (BCM2711)"
            } else {
                "raspi/arm64 (BCM2837)"
            }
        }

        fn exit(&self, code: i32) -> ! {
            // No PSCI on the Pis: a board without semihosting halts.
            arch::power::exit(code, false, kiln_boot::print_exit_line)
        }

        fn ticks(&self) -> u64 {
            arch::timer::ticks()
        }

        fn tick_hz(&self) -> Option<u64> {
            arch::timer::hz()
        }

        fn idle(&self, us: u64) {
            // The timer's interrupt ends `wfi` (Pi 4: GIC-400; Pi 3: the
            // local interrupt controller).
            arch::timer::idle(us)
        }
        #[cfg(target_os = "none")]
        fn guard_page(&self, page: usize) -> bool {
            arch::mmu::guard_page(page as u64, kiln_boot::page_table_page)
        }

        #[cfg(target_os = "none")]
        fn unguard_page(&self, page: usize) {
            arch::mmu::unguard_page(page as u64)
        }
    }

    static RASPI: Raspi = Raspi;

    fn fault(report: &arch::FaultReport) -> ! {
        if !arch::power::exiting() {
            kiln_console::print_unlocked(format_args!("{report}\n"));
            kiln_boot::explain_fault(report.far as usize);
            let (fp, sp) = report.frame_registers();
            let mut frames = [0usize; 24];
            // SAFETY: walk_frames reads only within 1 MiB above the faulting
            // code's stack pointer, along its own frame chain.
            let n = kiln_boot::walk_frames(
                fp,
                sp,
                |a| unsafe { arch::frames::read_word(a) },
                &mut frames,
            );
            kiln_boot::print_backtrace(&frames[..n]);
        }
        kiln_boot::exit(kiln_boot::EXIT_FAULT)
    }

    #[cfg(target_os = "none")]
    extern "Rust" {
        fn kiln_start(info: &BootInfo) -> !;
    }

    /// Called by the arch entry with x0 (a device tree, or 0) and the timer
    /// count at entry.
    #[cfg(target_os = "none")]
    #[no_mangle]
    pub fn kiln_plat_main(dtb: usize, entry_ticks: u64) -> ! {
        arch::set_fault_handler(fault);
        kiln_console::set_sink(&UART);
        kiln_boot::set_platform(&RASPI);
        #[cfg(feature = "pi4")]
        arch::gic::init_v2(GIC400.0, GIC400.1);
        // The Pi 3 has no GIC: its Arm local interrupt controller routes
        // core 0's virtual timer (bit 3 of "core 0 timers interrupt control",
        // 0x40000040) as an IRQ, which ends `wfi`.
        #[cfg(not(feature = "pi4"))]
        {
            // SAFETY: the BCM2836 local peripheral block at 0x40000000 is
            // mapped as device memory by entry.S (the linker script's device
            // range); this register only routes timer interrupts to core 0.
            unsafe { core::ptr::write_volatile(0x4000_0040 as *mut u32, 1 << 3) };
            arch::timer::set_wake_routed();
        }
        // SAFETY: when x0 is not null it is the firmware's device tree; the
        // fdt crate checks the header's magic and sizes before using it.
        let fdt = if dtb != 0 {
            unsafe { fdt::Fdt::from_ptr(dtb as *const u8) }.ok()
        } else {
            None
        };
        let cmdline = fdt
            .as_ref()
            .and_then(|f| f.chosen().bootargs())
            .unwrap_or("");
        let mut ram = [(0usize, 0usize); 8];
        let mut nram = 0;
        if let Some(f) = &fdt {
            for r in f.memory().regions().take(ram.len()) {
                let s = r.starting_address as usize;
                ram[nram] = (s, s + r.size.unwrap_or(0));
                nram += 1;
            }
        }
        if nram == 0 {
            ram[0] = (0, RAM_END);
            nram = 1;
        }
        let dt = fdt.as_ref().map_or((0, 0), |f| {
            (dtb & !0xfff, (dtb + f.total_size()).next_multiple_of(4096))
        });
        let reserved = [
            (arch::layout::kernel_start(), arch::layout::kernel_end()),
            dt,
        ];
        let mut regions = [MemRegion { start: 0, size: 0 }; 16];
        // The first 512 KiB hold the firmware's spin tables and the boot stub.
        let n = kiln_boot::mem::carve(
            ram[..nram].iter().copied(),
            &reserved,
            0x8_0000,
            PERIPHERALS,
            &mut regions,
        );
        let info = BootInfo {
            platform: &RASPI,
            cmdline,
            memory: &regions[..n],
            entry_ticks,
            initrd: None,
            virtio_mmio: &[],
        };
        // SAFETY: the link crate of every kernel defines `kiln_start`.
        unsafe { kiln_start(&info) }
    }
}

#[cfg(target_arch = "aarch64")]
pub use board::*;

/// Host builds (unit tests) have no board.
#[cfg(not(target_arch = "aarch64"))]
pub fn configure(_uart_init: bool) {}
