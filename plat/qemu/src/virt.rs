//! QEMU `virt` on arm64, and Firecracker on arm64.
//!
//! Boot protocol: the arm64 Image (header in arch/arm64); x0 holds the
//! device tree, from which this module takes the memory, the command line
//! (`/chosen/bootargs`), an initrd (`linux,initrd-start/end`), the GIC and
//! the virtio-mmio transports. Console: the PL011 UART (QEMU), or the
//! 16550 the tree names (`ns16550a`, Firecracker). Exit: semihosting's
//! SYS_EXIT_EXTENDED carries the exit code to QEMU's exit status (`kiln
//! run` passes `-semihosting`); without it (Firecracker) the code goes on
//! the console as [`kiln_boot::EXIT_LINE`], then PSCI SYSTEM_OFF.
//!
//! The two machines differ in where RAM and devices are; the kernel is
//! linked for one of them (arch/arm64's linker.ld for QEMU virt, this
//! crate's linker-arm64-firecracker.ld for Firecracker), and the windows
//! entry.S maps come from that layout (`arch::layout`).

use core::sync::atomic::{AtomicBool, Ordering};
use kiln_arch_arm64 as arch;
use kiln_boot::{BootInfo, MemRegion, Platform};

/// The PL011 on QEMU virt, unless the device tree says otherwise.
const UART_DEFAULT: usize = 0x0900_0000;

static UART: kiln_console::pl011::Pl011 = kiln_console::pl011::Pl011::new(UART_DEFAULT);
/// Firecracker's UART, when the device tree names one.
static NS16550: kiln_console::ns16550::Ns16550 = kiln_console::ns16550::Ns16550::new();

/// The console: the 16550 if the device tree has one, else the PL011.
struct Console;

impl kiln_console::Sink for Console {
    fn write(&self, bytes: &[u8]) {
        if NS16550.present() {
            kiln_console::Sink::write(&NS16550, bytes)
        } else {
            kiln_console::Sink::write(&UART, bytes)
        }
    }
}

static CONSOLE: Console = Console;

/// The UART is used as QEMU or firmware left it.
pub fn configure(_uart_init: bool) {}

struct Virt;

impl Platform for Virt {
    fn backtrace(&self, out: &mut [usize]) -> usize {
        let (fp, sp) = arch::frames::here();
        // SAFETY: walk_frames reads only this thread's own frame chain,
        // above its stack pointer.
        kiln_boot::walk_frames(fp, sp, |a| unsafe { arch::frames::read_word(a) }, out)
    }
    fn name(&self) -> &'static str {
        // Firecracker's UART is the 16550 (QEMU virt's a PL011).
        if NS16550.present() {
            "firecracker/arm64"
        } else {
            "qemu/arm64 virt"
        }
    }

    fn exit(&self, code: i32) -> ! {
        arch::power::exit(code, true, kiln_boot::print_exit_line)
    }

    fn ticks(&self) -> u64 {
        arch::timer::ticks()
    }

    fn tick_hz(&self) -> Option<u64> {
        arch::timer::hz()
    }

    fn map_device(&self, addr: usize, len: usize) -> bool {
        addr.checked_add(len)
            .is_some_and(|end| end <= arch::layout::device_end())
    }

    fn idle(&self, us: u64) {
        arch::timer::idle(us)
    }

    fn device_wakes(&self) -> bool {
        DEVICE_LINES.load(Ordering::Relaxed)
    }

    fn device_irq_done(&self) {
        // Lines an interrupt masked while a program ran (see
        // arch/arm64/src/preempt.rs).
        arch::gic::unmask_lines()
    }

    fn stop_requested(&self) -> bool {
        power_button::pressed() || console_stop()
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

/// The power button of QEMU's virt machine: `system_powerdown` raises pin
/// 3 of the PL061 GPIO controller (the device tree's gpio-keys "poweroff"
/// key) for 100 ms. The pin is set to latch a rising edge, which the
/// scheduler's polling then finds however late it looks.
mod power_button {
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// The PL061's base address (0: none found).
    static BASE: AtomicUsize = AtomicUsize::new(0);
    const PIN: u32 = 1 << 3;
    /// Interrupt sense (0: edge), both edges, event (1: rising), raw
    /// status and clear registers.
    const GPIOIS: usize = 0x404;
    const GPIOIBE: usize = 0x408;
    const GPIOIEV: usize = 0x40c;
    const GPIORIS: usize = 0x414;
    const GPIOIC: usize = 0x41c;

    fn reg(base: usize, off: usize) -> *mut u32 {
        (base + off) as *mut u32
    }

    /// Sets the controller at `base` (inside the device memory entry.S
    /// maps) to latch a rising edge on the power pin.
    pub fn found(base: usize) {
        // SAFETY: `base` is the PL061 the device tree names, in the first
        // GiB that entry.S maps as device memory; these are its 32-bit
        // interrupt configuration registers, which nothing else touches.
        unsafe {
            let is = core::ptr::read_volatile(reg(base, GPIOIS));
            core::ptr::write_volatile(reg(base, GPIOIS), is & !PIN);
            let ibe = core::ptr::read_volatile(reg(base, GPIOIBE));
            core::ptr::write_volatile(reg(base, GPIOIBE), ibe & !PIN);
            let iev = core::ptr::read_volatile(reg(base, GPIOIEV));
            core::ptr::write_volatile(reg(base, GPIOIEV), iev | PIN);
            core::ptr::write_volatile(reg(base, GPIOIC), PIN);
        }
        BASE.store(base, Ordering::Relaxed);
    }

    /// Whether the button was pressed since the last call.
    pub fn pressed() -> bool {
        let base = BASE.load(Ordering::Relaxed);
        if base == 0 {
            return false;
        }
        // SAFETY: as in `found`; reading the raw status has no side
        // effect, writing the clear register acknowledges the edge.
        unsafe {
            if core::ptr::read_volatile(reg(base, GPIORIS)) & PIN == 0 {
                return false;
            }
            core::ptr::write_volatile(reg(base, GPIOIC), PIN);
        }
        true
    }
}

/// Whether the host wrote [`kiln_boot::STOP_SEQUENCE`] on the 16550's
/// input (Firecracker, whose arm64 API has no other way to ask); reads
/// what has arrived, at most 64 bytes a poll.
fn console_stop() -> bool {
    static MATCH: kiln_boot::StopMatcher = kiln_boot::StopMatcher::new();
    let mut stop = false;
    for _ in 0..64 {
        let Some(b) = NS16550.read_byte() else { break };
        stop |= MATCH.feed(b);
    }
    stop
}

/// Whether device interrupt lines are enabled at the GIC (so they end an idle wait).
static DEVICE_LINES: AtomicBool = AtomicBool::new(false);

static VIRT: Virt = Virt;

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
    /// The generated link crate's start function (boot sequence + app).
    fn kiln_start(info: &BootInfo) -> !;
}

/// Called by the arch entry with the device tree's address and the timer
/// count at entry.
#[cfg(target_os = "none")]
#[no_mangle]
pub fn kiln_plat_main(dtb: usize, entry_ticks: u64) -> ! {
    arch::set_fault_handler(fault);
    kiln_console::set_sink(&CONSOLE);
    kiln_boot::set_platform(&VIRT);
    // SAFETY: the boot loader passes the device tree's address in x0; the
    // fdt crate checks its header before reading it, and the blob stays in
    // place (it is reserved below).
    let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(f) => f,
        Err(e) => {
            kiln_console::println!("kiln: boot: no valid device tree at 0x{dtb:x}: {e:?}");
            kiln_boot::exit(kiln_boot::EXIT_MAX)
        }
    };
    // One walk over the tree finds the UART, the GIC and the virtio-mmio
    // transports (each lookup by name or compatible string would walk it
    // again).
    let mut gic: Option<(bool, usize, usize)> = None;
    let mut mmio = [(0usize, 0usize); 32];
    let mut spis = [0u32; 32];
    let mut nmmio = 0;
    let mut cmdline = "";
    let mut initrd = (None, None);
    let mut ram = [(0usize, 0usize); 16];
    let mut nram = 0;
    for n in fdt.all_nodes() {
        let name = n.name;
        if name == "chosen" {
            cmdline = n
                .property("bootargs")
                .and_then(|p| p.as_str())
                .unwrap_or("");
            initrd = (
                n.property("linux,initrd-start").and_then(|p| p.as_usize()),
                n.property("linux,initrd-end").and_then(|p| p.as_usize()),
            );
            continue;
        }
        if name.starts_with("memory") {
            for r in n.reg().into_iter().flatten() {
                if nram < ram.len() {
                    let s = r.starting_address as usize;
                    ram[nram] = (s, s + r.size.unwrap_or(0));
                    nram += 1;
                }
            }
            continue;
        }
        let Some(compat) = n.compatible() else {
            continue;
        };
        let first = compat.first();
        let mut regs = n
            .reg()
            .into_iter()
            .flatten()
            .map(|r| (r.starting_address as usize, r.size.unwrap_or(0x200)));
        match first {
            "virtio,mmio" => {
                if let (Some(r), true) = (regs.next(), nmmio < mmio.len()) {
                    mmio[nmmio] = r;
                    // interrupts = <type number flags>: type 0 is an SPI (INTID 32 + number).
                    spis[nmmio] = n
                        .property("interrupts")
                        .filter(|p| p.value.len() >= 8 && p.value[..4] == [0; 4])
                        .map_or(0, |p| {
                            32 + u32::from_be_bytes(p.value[4..8].try_into().unwrap())
                        });
                    nmmio += 1;
                }
            }
            // With `secure=on`, virt has a second PL061 for the secure
            // world (status "disabled" here); touching it faults.
            "arm,pl061" if n.property("status").and_then(|p| p.as_str()) != Some("disabled") => {
                if let Some((base, _)) = regs.next() {
                    power_button::found(base);
                }
            }
            "arm,pl011" => {
                if let Some((base, _)) = regs.next() {
                    UART.set_base(base);
                }
            }
            "ns16550a" | "ns16550" => {
                if let Some((base, _)) = regs.next() {
                    let shift = n
                        .property("reg-shift")
                        .and_then(|p| p.as_usize())
                        .unwrap_or(0);
                    NS16550.set_base(base, shift as u32);
                }
            }
            "arm,gic-v3" | "arm,cortex-a15-gic" | "arm,gic-400" => {
                if let (Some(d), Some(c)) = (regs.next(), regs.next()) {
                    gic = Some((first == "arm,gic-v3", d.0, c.0));
                }
            }
            _ => {}
        }
    }
    let initrd = match initrd {
        (Some(s), Some(e)) if e > s => Some((s, e)),
        _ => None,
    };
    // The GIC wakes the CPU from idle (the timer, device lines).
    match gic {
        Some((true, d, r)) => arch::gic::init_v3(d, r),
        Some((false, d, c)) => arch::gic::init_v2(d, c),
        None => {}
    }
    if arch::gic::present() {
        for &spi in spis[..nmmio].iter().filter(|&&s| s != 0) {
            arch::gic::enable(spi);
            DEVICE_LINES.store(true, Ordering::Relaxed);
        }
    }
    let (istart, iend) = initrd.unwrap_or((0, 0));
    let reserved = [
        (arch::layout::kernel_start(), arch::layout::kernel_end()),
        (
            dtb & !0xfff,
            (dtb + fdt.total_size()).next_multiple_of(4096),
        ),
        (istart & !0xfff, iend.next_multiple_of(4096)),
    ];
    let mut regions = [MemRegion { start: 0, size: 0 }; 16];
    // Only RAM inside the window entry.S maps.
    let (ram_start, ram_end) = arch::layout::ram_window();
    let n = kiln_boot::mem::carve(
        ram[..nram].iter().copied(),
        &reserved,
        ram_start,
        ram_end,
        &mut regions,
    );
    let info = BootInfo {
        platform: &VIRT,
        cmdline,
        memory: &regions[..n],
        entry_ticks,
        // SAFETY: the boot loader put the initrd there; its pages are
        // reserved above and mapped, and nothing writes to them.
        initrd: initrd.map(|(s, e)| unsafe { core::slice::from_raw_parts(s as *const u8, e - s) }),
        virtio_mmio: &mmio[..nmmio],
    };
    // SAFETY: the link crate of every kernel defines `kiln_start`.
    unsafe { kiln_start(&info) }
}
