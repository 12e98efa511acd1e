//! QEMU on x86_64 (`microvm`, the default, and `q35`).
//!
//! Boot protocols: Xen PVH, and multiboot2 for disk images. QEMU's
//! `-kernel` loader (and Firecracker's and cloud-hypervisor's) finds the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note below and jumps to the arch's 32-bit entry
//! with EBX pointing at a `hvm_start_info`; GRUB, booting a disk image from
//! `kiln pkg` on BIOS or UEFI firmware, finds the multiboot2 header below and
//! jumps to the same entry with EBX pointing at its multiboot2 information.
//! From either this crate takes the command line and the memory map
//! (bootinfo.rs). Console: the 16550 UART at COM1. Exit:
//! QEMU's `isa-debug-exit` device at port 0xf4 (`kiln run` adds it), which
//! ends QEMU with status `(value << 1) | 1`; Kiln writes `code + 1`, so status
//! 1 (a QEMU error) and 0 (QEMU stopped for another reason) never look like a
//! guest exit code.

#[path = "bootinfo.rs"]
mod bootinfo;
#[path = "power.rs"]
mod power;
#[path = "tables.rs"]
mod tables;

use core::sync::atomic::{AtomicBool, Ordering};
use kiln_arch_x86_64 as arch;
use kiln_boot::{BootInfo, MemRegion, Platform};

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .note.Xen, \"a\"",
    ".balign 4",
    ".long 4",  // name size ("Xen\0")
    ".long 4",  // descriptor size
    ".long 18", // XEN_ELFNOTE_PHYS32_ENTRY
    ".asciz \"Xen\"",
    ".balign 4",
    ".long _kiln_entry32",
    ".balign 4",
);

// The multiboot2 header (magic, architecture 0 = i386 protected mode,
// length, checksum, tags): the loader takes the load addresses and the
// entry point from the ELF program headers. One tag says a framebuffer is
// welcome but optional, with no preferred mode: UEFI has no text console
// to hand over, and GRUB warns on the console when the kernel accepts
// neither (Kiln's console is COM1 either way). It must lie 8-aligned in
// the first 32 KiB of the file: linker.ld puts it first in the text
// segment.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .multiboot2, \"a\"",
    ".balign 8",
    "2:",
    ".long 0xe85250d6",
    ".long 0",
    ".long 3f - 2b",
    ".long -(0xe85250d6 + (3f - 2b))",
    ".short 5", // framebuffer tag: type 5, optional, size 20, any mode
    ".short 1",
    ".long 20",
    ".long 0",
    ".long 0",
    ".long 0",
    ".balign 8",
    ".short 0", // end tag: type 0, flags 0, size 8
    ".short 0",
    ".long 8",
    "3:",
);

/// I/O port of QEMU's isa-debug-exit device.
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// COM1.
const COM1: u16 = 0x3f8;
/// QEMU's fw_cfg interface: selector and data ports.
const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;

/// Whether this is QEMU (fw_cfg's signature reads "QEMU") with the
/// isa-debug-exit device (which reads as 0, where an empty port reads all
/// ones). Looked at only on the way out: Firecracker and cloud-hypervisor
/// have neither port and may log the accesses.
fn qemu_debug_exit() -> bool {
    // SAFETY: selecting fw_cfg item 0 (the signature) and reading its
    // bytes has no other effect; on a machine without fw_cfg the ports
    // are empty. Reading the debug-exit port has no effect.
    unsafe {
        arch::cpu::outw(FW_CFG_SELECTOR, 0);
        let sig = [0; 4].map(|_: u8| arch::cpu::inb(FW_CFG_DATA));
        &sig == b"QEMU" && arch::cpu::inl(DEBUG_EXIT_PORT) == 0
    }
}

/// cloud-hypervisor's ACPI sleep control register and the value that
/// enters S5 (SLP_TYP 5 in bits 2-4, SLP_EN in bit 5).
const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
const S5_SLEEP: u8 = 5 << 2 | 1 << 5;
/// The i8042's command port and its "pulse reset line" command.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

struct Serial {
    ready: AtomicBool,
}

impl kiln_console::Sink for Serial {
    fn write(&self, bytes: &[u8]) {
        // SAFETY: COM1 is this platform's console UART and nothing else drives it.
        let mut port = unsafe { uart_16550::SerialPort::new(COM1) };
        // Programming the UART costs VM exits, so it happens on the first
        // write rather than during boot. A race between two first writers
        // only programs it twice.
        if !self.ready.swap(true, Ordering::AcqRel) {
            port.init();
        }
        for &b in bytes {
            port.send_raw(b);
        }
    }
}

impl Serial {
    /// Waits (bounded) until the UART has sent every byte (LSR bit 6, TEMT).
    fn drain(&self) {
        if !self.ready.load(Ordering::Acquire) {
            return;
        }
        let mut lsr = x86_64::instructions::port::PortReadOnly::<u8>::new(COM1 + 5);
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of our own console
            // UART has no side effects.
            if unsafe { lsr.read() } & 0x40 != 0 {
                break;
            }
        }
    }
}

static SERIAL: Serial = Serial {
    ready: AtomicBool::new(false),
};

/// Applies `CONFIG_PLAT_QEMU_UART_INIT`: when false, the UART is used as QEMU
/// leaves it, without programming it. Call before anything is printed.
pub fn configure(uart_init: bool) {
    if !uart_init {
        SERIAL.ready.store(true, Ordering::Release);
    }
}

struct Qemu;

impl Platform for Qemu {
    fn backtrace(&self, out: &mut [usize]) -> usize {
        let (fp, sp) = arch::frames::here();
        // SAFETY: walk_frames reads only this thread's own frame chain,
        // above its stack pointer.
        kiln_boot::walk_frames(fp, sp, |a| unsafe { arch::frames::read_word(a) }, out)
    }
    fn name(&self) -> &'static str {
        "qemu/x86_64"
    }

    fn exit(&self, code: i32) -> ! {
        // Let the UART drain first, or QEMU may exit with console bytes
        // still in its transmit FIFO.
        SERIAL.drain();
        if qemu_debug_exit() {
            // SAFETY: writing to the debug-exit port only asks QEMU to stop.
            unsafe { arch::cpu::outl(DEBUG_EXIT_PORT, (code + 1) as u32) };
            // QEMU stops the machine from its main loop a moment later;
            // nothing more may run (or print) meanwhile.
            arch::cpu::halt()
        }
        // Not QEMU with the debug-exit device: the code goes on the
        // console (see kiln_boot::EXIT_LINE), then the machine is powered
        // off the ways other VMMs offer.
        kiln_boot::print_exit_line(code);
        SERIAL.drain();
        // Firmware-booted machines (and cloud-hypervisor) describe their
        // power-off in ACPI; a reset would boot them again.
        power::power_off();
        // SAFETY: port 0x600 is cloud-hypervisor's ACPI sleep control
        // register: SLP_TYPx = 5 (S5, soft off) with SLP_EN powers off. On
        // q35 it is the PM1 status register, whose bits this write clears
        // (nothing waits on them); elsewhere nothing decodes it.
        unsafe { arch::cpu::outb(ACPI_SLEEP_CONTROL_PORT, S5_SLEEP) };
        // SAFETY: 0xFE to the i8042's command port pulses the CPU reset
        // line: Firecracker's only guest-initiated exit (and QEMU's with
        // -no-reboot). The machine goes away; nothing runs after it.
        unsafe { arch::cpu::outb(I8042_COMMAND_PORT, I8042_RESET) };
        arch::cpu::halt()
    }

    fn ticks(&self) -> u64 {
        arch::tsc::read()
    }

    fn tick_hz(&self) -> Option<u64> {
        // Looked up once: CPUID traps to the hypervisor under KVM. The
        // host's measurement (`clock.tsc_hz=`, which `kiln run` passes)
        // comes first: under TCG the guest's TSC is the host's, and CPUID
        // has no frequency leaf there.
        static HZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        match HZ.load(core::sync::atomic::Ordering::Relaxed) {
            0 => {
                let hz = kiln_boot::param("clock.tsc_hz")
                    .and_then(|v| v.parse().ok())
                    .or_else(arch::tsc::frequency)?;
                HZ.store(hz, core::sync::atomic::Ordering::Relaxed);
                Some(hz)
            }
            hz => Some(hz),
        }
    }

    fn map_device(&self, addr: usize, len: usize) -> bool {
        arch::mmu::map_device(addr as u64, len as u64)
    }

    fn has_pci_ports(&self) -> bool {
        true
    }

    fn pci_ecam(&self) -> Option<usize> {
        // Read and mapped once (every driver's scan asks): bus 0's 32
        // devices of 8 functions, 4 KiB each. 0: not looked yet, 1: none.
        static ECAM: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
        let known = ECAM.load(Ordering::Relaxed);
        if known == 0 {
            let found = tables::ecam_bus0()
                .filter(|&base| arch::mmu::map_device(base, 1 << 20))
                .map_or(1, |base| base as usize);
            ECAM.store(found, Ordering::Relaxed);
            return (found != 1).then_some(found);
        }
        (known != 1).then_some(known)
    }

    fn route_pci_intx(&self, irq: u8) -> bool {
        tables::isa_route(irq).is_some_and(|r| {
            u8::try_from(r.pin)
                .is_ok_and(|pin| arch::apic::route_line(r.ioapic, pin, r.active_low, r.level))
        })
    }

    fn msi_message(&self) -> Option<(u64, u32)> {
        arch::apic::msi_message()
    }

    fn idle(&self, us: u64) {
        arch::apic::idle(us)
    }

    fn device_wakes(&self) -> bool {
        arch::apic::devices_routed()
    }

    fn device_irq_done(&self) {
        arch::apic::unmask_devices()
    }

    fn stop_requested(&self) -> bool {
        // Ctrl-Alt-Del (QEMU, Firecracker) or cloud-hypervisor's ACPI
        // power button.
        keyboard::delete_pressed() | power::power_button()
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

/// The i8042 keyboard controller, which `kiln run` gives microvm and PC
/// machines have: the host asks the guest to stop with Ctrl-Alt-Del on it
/// (QMP `send-key`; Firecracker's SendCtrlAltDel does the same). Polled,
/// not interrupt-driven: the scheduler looks every few milliseconds while
/// busy and at least once a second while idle.
mod keyboard {
    use core::sync::atomic::{AtomicU8, Ordering};
    use kiln_arch_x86_64 as arch;

    const DATA: u16 = 0x60;
    const STATUS: u16 = 0x64;
    const OUTPUT_FULL: u8 = 0x01;
    const FROM_MOUSE: u8 = 0x20;
    /// The previous key byte (Delete is a two-byte code).
    static PREV: AtomicU8 = AtomicU8::new(0);

    /// Whether Delete was pressed since the last call; reads (and drops)
    /// every byte the controller holds. Without a controller the status
    /// port reads 0xff and nothing is read.
    pub fn delete_pressed() -> bool {
        let mut pressed = false;
        for _ in 0..64 {
            // SAFETY: reading the i8042's status and data ports consumes
            // only keyboard bytes, which nothing else in Kiln reads.
            let status = unsafe { arch::cpu::inb(STATUS) };
            if status == 0xff || status & OUTPUT_FULL == 0 {
                break;
            }
            // SAFETY: as above.
            let byte = unsafe { arch::cpu::inb(DATA) };
            if status & FROM_MOUSE != 0 {
                continue;
            }
            // Delete's make code: E0 71 in scan code set 2 (QEMU without
            // firmware, Firecracker), E0 53 in set 1 (after a BIOS turned
            // on translation).
            if PREV.swap(byte, Ordering::Relaxed) == 0xe0 && (byte == 0x71 || byte == 0x53) {
                pressed = true;
            }
        }
        pressed
    }
}

static QEMU: Qemu = Qemu;

fn fault(report: &arch::FaultReport) -> ! {
    kiln_console::print_unlocked(format_args!("{report}\n"));
    kiln_boot::explain_fault(report.address as usize);
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
    kiln_boot::exit(kiln_boot::EXIT_FAULT)
}

#[cfg(target_os = "none")]
extern "Rust" {
    /// The generated link crate's start function (boot sequence + app).
    fn kiln_start(info: &BootInfo) -> !;
}

/// Parses `SIZE@BASE:IRQ` (SIZE decimal, or with a K suffix; BASE 0x-hex):
/// base, size and the IRQ if given.
fn parse_virtio_mmio(s: &str) -> Option<(usize, usize, Option<u8>)> {
    let (size, rest) = s.split_once('@')?;
    let base = rest.split(':').next()?;
    let irq = rest.split(':').nth(1).and_then(|i| i.parse::<u8>().ok());
    let size = match size.strip_suffix(['K', 'k']) {
        Some(k) => k.parse::<usize>().ok()? * 1024,
        None => size.parse().ok()?,
    };
    let base = usize::from_str_radix(base.strip_prefix("0x")?, 16).ok()?;
    Some((base, size, irq))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_virtio_mmio_parameters() {
        assert_eq!(
            super::parse_virtio_mmio("512@0xfeb00e00:12"),
            Some((0xfeb0_0e00, 512, Some(12)))
        );
        assert_eq!(
            super::parse_virtio_mmio("4K@0xd0000000:5"),
            Some((0xd000_0000, 4096, Some(5)))
        );
        assert_eq!(super::parse_virtio_mmio("512@feb00e00:12"), None);
        assert_eq!(super::parse_virtio_mmio("junk"), None);
    }
}

/// RAM kept out of the heap at boot for a Linux program linked at fixed
/// addresses (with LIBELF_FIXED_AREA): from 4 MiB (or the end of the kernel
/// image) up to 8 MiB below the end of that RAM block (or below a loader's
/// initrd), so that programs as large as the machine allows fit. The
/// 8 MiB are the heap the boot needs (the ramfs serves the initrd's files
/// in place, and the ELF loader reads the program there, so neither needs
/// heap in proportion to them). The ELF loader gives the area back to the
/// heap as soon as it knows how much of it the program needs (none for a
/// position-independent one). (0, 0) when there is no room.
#[cfg(target_os = "none")]
fn fixed_area(ram: &[(u64, u64)], module: (usize, usize)) -> (usize, usize) {
    const BASE: u64 = 0x40_0000;
    if option_env!("KILN_CONFIG_LIBELF_FIXED_AREA") != Some("y") {
        return (0, 0);
    }
    let Some(&(_, top)) = ram.iter().find(|&&(s, e)| s <= BASE && e > BASE) else {
        return (0, 0);
    };
    let start = BASE.max((arch::layout::kernel_end() as u64).next_multiple_of(4096));
    const BOOT_HEAP: u64 = 8 << 20;
    let module_len = (module.1 - module.0) as u64;
    let mut end = top.saturating_sub(BOOT_HEAP);
    if module_len > 0 && module.1 as u64 > start {
        // The boot heap is found below the initrd or above it.
        end = end.min(if top - module.1 as u64 >= BOOT_HEAP {
            module.0 as u64
        } else {
            (module.0 as u64).saturating_sub(BOOT_HEAP)
        });
    }
    let end = end & !((2 << 20) - 1);
    if end <= start {
        return (0, 0);
    }
    (start as usize, end as usize)
}

/// Called by the arch entry with EBX from the boot loader and the TSC at entry.
#[cfg(target_os = "none")]
#[no_mangle]
pub fn kiln_plat_main(boot_arg: usize, entry_tsc: u64) -> ! {
    arch::set_fault_handler(fault);
    kiln_console::set_sink(&SERIAL);
    kiln_boot::set_platform(&QEMU);

    // SAFETY: the loader passes the address of its boot information in EBX
    // and says in EAX which form it has; `bootinfo::parse` checks magic
    // numbers and sizes before trusting anything else.
    let start = match unsafe { bootinfo::parse(boot_arg, arch::entry_eax()) } {
        Ok(s) => s,
        Err(e) => {
            kiln_console::println!("kiln: boot: {e}");
            kiln_boot::exit(kiln_boot::EXIT_MAX)
        }
    };
    // Page 0 held boot information (q35); it is copied, so null pointers
    // can fault from now on. Then memory above the first GiB is mapped.
    arch::mmu::unmap_null_page();
    tables::set_rsdp(start.rsdp);
    let mut ram = [(0u64, 0u64); 128];
    let mut nram = 0;
    for (s, e) in start.ram().take(ram.len()) {
        ram[nram] = (s as u64, e as u64);
        nram += 1;
    }
    let mapped = arch::mmu::init(&ram[..nram]);
    // The kernel image (with its embedded initrd) and a loader-provided
    // initrd stay out of the heap.
    let module = start.module.unwrap_or((0, 0));
    let module = (
        module.0 & !0xfff,
        (module.0 + module.1).next_multiple_of(4096),
    );
    let fixed = fixed_area(&ram[..nram], module);
    kiln_boot::set_fixed_area(fixed.0, fixed.1);
    let reserved = [
        (arch::layout::kernel_start(), arch::layout::kernel_end()),
        module,
        fixed,
    ];
    let mut regions = [MemRegion { start: 0, size: 0 }; 32];
    // Below 1 MiB lie firmware tables and the loader's data.
    let n = kiln_boot::mem::carve(
        start.ram(),
        &reserved,
        1 << 20,
        mapped.end as usize,
        &mut regions,
    );
    if n == 0 {
        // Say what the loader gave rather than fail the first allocation.
        kiln_console::println!(
            "kiln: boot: no free RAM above 1 MiB in the loader's memory map (image {:#x}-{:#x}, module {:#x}-{:#x}, mapped to {:#x}); RAM ranges:",
            reserved[0].0,
            reserved[0].1,
            module.0,
            module.1,
            mapped.end
        );
        for (s, e) in start.ram() {
            kiln_console::println!("kiln: boot:   {s:#x}-{e:#x}");
        }
        kiln_boot::exit(kiln_boot::EXIT_MAX)
    }
    // QEMU's microvm names its virtio-mmio transports on the command line
    // (virtio_mmio.device=SIZE@BASE:IRQ, as for Linux): no probing needed.
    // Their interrupt lines are routed (masked) to the device vector; a
    // driver that waits for interrupts unmasks them.
    arch::apic::init();
    let mut mmio = [(0usize, 0usize); 32];
    let mut nmmio = 0;
    for w in start.cmdline.split_ascii_whitespace() {
        if let Some((base, size, irq)) = w
            .strip_prefix(kiln_boot::cmdline::PLATFORM_PREFIX)
            .and_then(parse_virtio_mmio)
        {
            if nmmio < mmio.len() && arch::mmu::map_device(base as u64, size as u64) {
                mmio[nmmio] = (base, size);
                nmmio += 1;
                if let Some(irq) = irq {
                    arch::apic::route_device(irq);
                }
            }
        }
    }
    let info = BootInfo {
        platform: &QEMU,
        cmdline: start.cmdline,
        memory: &regions[..n],
        entry_ticks: entry_tsc,
        // SAFETY: QEMU loaded the module there; its pages are reserved above
        // and identity-mapped, and nothing writes to them.
        initrd: start
            .module
            .map(|(a, n)| unsafe { core::slice::from_raw_parts(a as *const u8, n) }),
        virtio_mmio: &mmio[..nmmio],
    };
    // SAFETY: the link crate of every kernel defines `kiln_start`.
    unsafe { kiln_start(&info) }
}
