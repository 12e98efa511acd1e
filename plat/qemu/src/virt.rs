//! QEMU `virt` on arm64.
//!
//! Boot protocol: the arm64 Image (header in arch/arm64); x0 holds the
//! device tree, from which this module takes the memory, the command line
//! (`/chosen/bootargs`), an initrd (`linux,initrd-start/end`) and the
//! virtio-mmio transports. Console: the PL011 UART. Exit: semihosting's
//! SYS_EXIT_EXTENDED carries the exit code to QEMU's exit status (`kiln
//! run` passes `-semihosting`); without it, PSCI SYSTEM_OFF.

use core::sync::atomic::{AtomicBool, Ordering};
use kiln_arch_arm64 as arch;
use kiln_boot::{BootInfo, MemRegion, Platform};

/// The PL011 on QEMU virt, unless the device tree says otherwise.
const UART_DEFAULT: usize = 0x0900_0000;
/// Device memory that entry.S maps (the first GiB).
const DEVICE_END: usize = 0x4000_0000;

static UART: kiln_console::pl011::Pl011 = kiln_console::pl011::Pl011::new(UART_DEFAULT);

/// The UART is used as QEMU or firmware left it.
pub fn configure(_uart_init: bool) {}

struct Virt;

static EXITING: AtomicBool = AtomicBool::new(false);

impl Platform for Virt {
    fn name(&self) -> &'static str {
        "qemu/arm64 virt"
    }

    fn exit(&self, code: i32) -> ! {
        // A semihosting call without semihosting is an undefined instruction,
        // whose report exits again: the second time, skip it.
        // QEMU's exit status is `((code + 1) << 1) | 1`, as with x86's
        // isa-debug-exit, so `kiln run` decodes both the same way.
        if !EXITING.swap(true, Ordering::AcqRel) {
            arch::power::semihosting_exit((((code + 1) << 1) | 1) as u32);
        }
        arch::power::psci_off();
        arch::halt()
    }

    fn ticks(&self) -> u64 {
        arch::timer::ticks()
    }

    fn tick_hz(&self) -> Option<u64> {
        Some(arch::timer::frequency()).filter(|&f| f != 0)
    }

    fn map_device(&self, addr: usize, len: usize) -> bool {
        addr.checked_add(len).is_some_and(|end| end <= DEVICE_END)
    }

    fn idle(&self, us: u64) {
        arch::timer::idle(us)
    }

    fn device_wakes(&self) -> bool {
        DEVICE_LINES.load(Ordering::Relaxed)
    }
}

/// Whether device interrupt lines are enabled at the GIC (so they end an idle wait).
static DEVICE_LINES: AtomicBool = AtomicBool::new(false);

static VIRT: Virt = Virt;

fn fault(report: &arch::FaultReport) -> ! {
    kiln_console::print_unlocked(format_args!("{report}\n"));
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
    kiln_console::set_sink(&UART);
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
    if let Some(base) = fdt.find_compatible(&["arm,pl011"]).and_then(|n| n.reg()?.next()) {
        UART.set_base(base.starting_address as usize);
    }
    let cmdline = fdt.chosen().bootargs().unwrap_or("");
    let prop = |name: &str| fdt.find_node("/chosen").and_then(|c| c.property(name)).and_then(|p| p.as_usize());
    let initrd = match (prop("linux,initrd-start"), prop("linux,initrd-end")) {
        (Some(s), Some(e)) if e > s => Some((s, e)),
        _ => None,
    };
    let mut ram = [(0usize, 0usize); 16];
    let mut nram = 0;
    for r in fdt.memory().regions().take(ram.len()) {
        let s = r.starting_address as usize;
        ram[nram] = (s, s + r.size.unwrap_or(0));
        nram += 1;
    }
    // The GIC wakes the CPU from idle (the timer, device lines).
    let regs = |n: &fdt::node::FdtNode| {
        let mut r = n.reg().into_iter().flatten().map(|r| r.starting_address as usize);
        (r.next(), r.next())
    };
    if let Some(n) = fdt.find_compatible(&["arm,gic-v3"]) {
        if let (Some(d), Some(r)) = regs(&n) {
            arch::gic::init_v3(d, r);
        }
    } else if let Some(n) = fdt.find_compatible(&["arm,cortex-a15-gic", "arm,gic-400"]) {
        if let (Some(d), Some(c)) = regs(&n) {
            arch::gic::init_v2(d, c);
        }
    }
    let mut mmio = [(0usize, 0usize); 32];
    let mut nmmio = 0;
    for n in fdt.all_nodes() {
        if n.compatible().is_some_and(|c| c.all().any(|c| c == "virtio,mmio")) {
            if let Some(r) = n.reg().and_then(|mut r| r.next()) {
                if nmmio < mmio.len() {
                    mmio[nmmio] = (r.starting_address as usize, r.size.unwrap_or(0x200));
                    nmmio += 1;
                }
            }
            // interrupts = <type number flags>: type 0 is an SPI (INTID 32 + number).
            if let Some(p) = n.property("interrupts").filter(|p| p.value.len() >= 8) {
                let cell = |i: usize| u32::from_be_bytes(p.value[i * 4..i * 4 + 4].try_into().unwrap());
                if cell(0) == 0 && arch::gic::present() {
                    arch::gic::enable(32 + cell(1));
                    DEVICE_LINES.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    let (istart, iend) = initrd.unwrap_or((0, 0));
    let reserved = [
        (arch::layout::kernel_start(), arch::layout::kernel_end()),
        (dtb & !0xfff, (dtb + fdt.total_size()).next_multiple_of(4096)),
        (istart & !0xfff, iend.next_multiple_of(4096)),
    ];
    let mut regions = [MemRegion { start: 0, size: 0 }; 16];
    // entry.S maps RAM up to 4 GiB.
    let n = kiln_boot::mem::carve(ram[..nram].iter().copied(), &reserved, DEVICE_END, 1 << 32, &mut regions);
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
