//! The local APIC timer, used to sleep: [`idle`] halts the CPU until a
//! one-shot timer interrupt (or any other interrupt) arrives, so a guest
//! with nothing to do stops using its host CPU. The same timer ends a
//! Linux program's time slice ([`crate::irq`]).

#[cfg(target_os = "none")]
const BASE: u64 = 0xfee0_0000;
#[cfg(target_os = "none")]
const SPURIOUS: u64 = 0xf0;
#[cfg(target_os = "none")]
const LVT_TIMER: u64 = 0x320;
#[cfg(target_os = "none")]
const INITIAL_COUNT: u64 = 0x380;
#[cfg(target_os = "none")]
const DIVIDE: u64 = 0x3e0;
/// The timer's interrupt vector.
pub const TIMER_VECTOR: u8 = 0x20;

#[cfg(target_os = "none")]
static mut HZ: u64 = 0;

#[cfg(target_os = "none")]
fn write(reg: u64, v: u32) {
    // SAFETY: the xAPIC page is mapped uncached by init; these are its
    // documented 32-bit registers.
    unsafe { core::ptr::write_volatile((BASE + reg) as *mut u32, v) }
}

/// The APIC timer's frequency: the hypervisor timing leaf gives the bus
/// frequency (QEMU: 1 GHz); 1 GHz otherwise, QEMU's default.
#[cfg(target_os = "none")]
fn frequency() -> u64 {
    use core::arch::x86_64::__cpuid;
    let hv_max = __cpuid(0x4000_0000).eax;
    if (0x4000_0010..0x4000_0100).contains(&hv_max) {
        let khz = __cpuid(0x4000_0010).ebx;
        if khz != 0 {
            return khz as u64 * 1000;
        }
    }
    1_000_000_000
}

/// Maps and enables the local APIC and installs the timer vector. Returns
/// false when the APIC cannot be mapped (then [`idle`] only spins).
#[cfg(target_os = "none")]
pub fn init() -> bool {
    if !crate::mmu::map_device(BASE, 4096) {
        return false;
    }
    extern "C" {
        fn kiln_timer_isr();
    }
    crate::exceptions::set_interrupt(TIMER_VECTOR, kiln_timer_isr as *const () as usize as u64);
    // Mask both legacy 8259 PICs: firmware (q35's SeaBIOS) leaves them on
    // with the timer at vector 8, which would look like a double fault the
    // first time interrupts are enabled. Without PICs (microvm) the writes
    // go nowhere.
    // SAFETY: ports 0x21/0xA1 are the PICs' interrupt mask registers.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") 0x21u16, in("al") 0xffu8, options(nomem, nostack));
        core::arch::asm!("out dx, al", in("dx") 0xa1u16, in("al") 0xffu8, options(nomem, nostack));
    }
    // Software-enable the APIC (spurious vector 0xff), divide by 1, one-shot.
    write(SPURIOUS, 0x1ff);
    write(DIVIDE, 0xb);
    write(LVT_TIMER, TIMER_VECTOR as u32);
    // SAFETY: written once here, before any idle().
    unsafe { HZ = frequency() };
    true
}

/// Halts until an interrupt, at most `us` microseconds (the timer fires
/// then). Returns at once if the APIC is not set up.
#[cfg(target_os = "none")]
pub fn idle(us: u64) {
    // SAFETY: read-only after init.
    let hz = unsafe { HZ };
    if hz == 0 || us == 0 {
        return;
    }
    let count = (us as u128 * hz as u128 / 1_000_000).clamp(1, u32::MAX as u128) as u32;
    write(INITIAL_COUNT, count);
    // SAFETY: `sti; hlt` is the standard atomic idle sequence (interrupts
    // are recognised only after hlt begins); the interrupt sources are the
    // timer and routed device lines, whose handlers return here; interrupts
    // go off again after.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    write(INITIAL_COUNT, 0);
    crate::irq::ARMED.store(false, core::sync::atomic::Ordering::Relaxed);
}

/// Starts the one-shot timer: it interrupts in `us` microseconds (a
/// program's time slice, [`crate::irq::arm_slice`]).
#[cfg(target_os = "none")]
pub(crate) fn start_timer(us: u64) {
    // SAFETY: read-only after init.
    let hz = unsafe { HZ };
    if hz != 0 {
        write(
            INITIAL_COUNT,
            (us as u128 * hz as u128 / 1_000_000).clamp(1, u32::MAX as u128) as u32,
        );
    }
}

/// Signals end of interrupt to the local APIC.
#[cfg(target_os = "none")]
pub(crate) fn end_of_interrupt() {
    write(0xb0, 0);
}

/// Host builds (unit tests) have no APIC.
#[cfg(not(target_os = "none"))]
pub fn init() -> bool {
    false
}

/// Host builds (unit tests) do not sleep.
#[cfg(not(target_os = "none"))]
pub fn idle(_us: u64) {}

/// The vector device interrupts arrive on. Like the timer's, it wakes the
/// CPU from [`idle`] (or preempts a Linux program, see [`crate::irq`]):
/// the handler masks the device lines, and the driver unmasks them with
/// [`unmask_devices`] once it has acknowledged the interrupt at the device.
pub const DEVICE_VECTOR: u8 = 0x21;

/// The IOAPIC's address: the architectural default until the platform
/// names another (from the MADT) with [`route_line`].
#[cfg(target_os = "none")]
static IOAPIC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0xfec0_0000);

/// IOAPIC inputs routed to [`DEVICE_VECTOR`], one bit each.
static ROUTED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// Of those, the inputs that are active low, and the edge-triggered ones.
static ACTIVE_LOW: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
static EDGE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

#[cfg(target_os = "none")]
fn ioapic_write(reg: u32, v: u32) {
    // SAFETY: IOREGSEL (index) and IOWIN (data) of the IOAPIC, mapped
    // uncached by `route_device`; interrupts are off, so the index/data
    // pair is not interleaved with another writer.
    let base = IOAPIC.load(core::sync::atomic::Ordering::Relaxed);
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::write_volatile((base + 0x10) as *mut u32, v);
    }
}

/// Redirection entry (low half) for `gsi`: level triggered and active high
/// (as virtio-mmio lines are) unless routed otherwise, fixed delivery to
/// [`DEVICE_VECTOR`].
#[cfg(target_os = "none")]
fn set_entry(gsi: u32, masked: bool) {
    use core::sync::atomic::Ordering::Relaxed;
    let low = ACTIVE_LOW.load(Relaxed) >> gsi & 1;
    let level = !EDGE.load(Relaxed) >> gsi & 1;
    ioapic_write(
        0x10 + 2 * gsi,
        DEVICE_VECTOR as u32 | low << 13 | level << 15 | (masked as u32) << 16,
    );
}

/// Masks every routed line (the device keeps its line raised until the
/// driver acknowledges it) and signals end of interrupt.
#[cfg(target_os = "none")]
pub(crate) fn device_irq() {
    let routed = ROUTED.load(core::sync::atomic::Ordering::Relaxed);
    for gsi in 0..24 {
        if routed & 1 << gsi != 0 {
            set_entry(gsi, true);
        }
    }
    write(0xb0, 0);
}

/// Routes IOAPIC input `gsi` to [`DEVICE_VECTOR`] on this CPU, masked until
/// [`unmask_devices`]. False when there is no IOAPIC to program.
#[cfg(target_os = "none")]
pub fn route_device(gsi: u8) -> bool {
    route_line(
        IOAPIC.load(core::sync::atomic::Ordering::Relaxed),
        gsi,
        false,
        true,
    )
}

/// Routes input `pin` of the IOAPIC at `ioapic` (as the MADT names it) to
/// [`DEVICE_VECTOR`], with the line's polarity and trigger mode, masked
/// until [`unmask_devices`]. One IOAPIC serves all device lines: false
/// for a second one, or when there is no IOAPIC to program.
#[cfg(target_os = "none")]
pub fn route_line(ioapic: u64, pin: u8, active_low: bool, level: bool) -> bool {
    use core::sync::atomic::Ordering::Relaxed;
    let gsi = pin;
    let routed_lines = ROUTED.load(Relaxed) & !MSI_ROUTED;
    if routed_lines != 0 && IOAPIC.load(Relaxed) != ioapic {
        return false;
    }
    // SAFETY (of the HZ read): written once by init before devices are routed.
    if gsi >= 24 || unsafe { HZ } == 0 || !crate::mmu::map_device(ioapic, 4096) {
        return false;
    }
    IOAPIC.store(ioapic, Relaxed);
    let bit = 1u32 << gsi;
    if active_low {
        ACTIVE_LOW.fetch_or(bit, Relaxed);
    } else {
        ACTIVE_LOW.fetch_and(!bit, Relaxed);
    }
    if level {
        EDGE.fetch_and(!bit, Relaxed);
    } else {
        EDGE.fetch_or(bit, Relaxed);
    }
    extern "C" {
        fn kiln_device_isr();
    }
    crate::exceptions::set_interrupt(DEVICE_VECTOR, kiln_device_isr as *const () as usize as u64);
    // Destination: local APIC 0 (high half), then the masked entry.
    ioapic_write(0x10 + 2 * gsi as u32 + 1, 0);
    set_entry(gsi as u32, true);
    ROUTED.fetch_or(1 << gsi, core::sync::atomic::Ordering::Relaxed);
    true
}

/// Unmasks the routed device lines; a line still raised interrupts (and so
/// ends the next [`idle`]) at once.
#[cfg(target_os = "none")]
pub fn unmask_devices() {
    let routed = ROUTED.load(core::sync::atomic::Ordering::Relaxed);
    for gsi in 0..24 {
        if routed & 1 << gsi != 0 {
            set_entry(gsi, false);
        }
    }
}

/// Whether any device line is routed.
/// ROUTED's bit for "message interrupts handed out" (GSIs use bits 0-23).
const MSI_ROUTED: u32 = 1 << 31;

/// The MSI/MSI-X message that raises the device vector on this CPU:
/// address 0xFEE0_0000 with the local APIC's ID, data = the vector (fixed
/// delivery, edge-triggered). Installs the device handler; None before
/// [`init`] or without a timer frequency (idle could not sleep anyway).
#[cfg(target_os = "none")]
pub fn msi_message() -> Option<(u64, u32)> {
    // SAFETY: HZ is written once by init, before devices are probed.
    if unsafe { HZ } == 0 {
        return None;
    }
    extern "C" {
        fn kiln_device_isr();
    }
    crate::exceptions::set_interrupt(DEVICE_VECTOR, kiln_device_isr as *const () as usize as u64);
    // SAFETY: the local APIC's ID register (0x20), mapped by init.
    let id = unsafe { core::ptr::read_volatile((BASE + 0x20) as *const u32) } >> 24;
    ROUTED.fetch_or(MSI_ROUTED, core::sync::atomic::Ordering::Relaxed);
    Some((0xfee0_0000 | (id as u64) << 12, DEVICE_VECTOR as u32))
}

#[cfg(not(target_os = "none"))]
pub fn msi_message() -> Option<(u64, u32)> {
    None
}

pub fn devices_routed() -> bool {
    ROUTED.load(core::sync::atomic::Ordering::Relaxed) != 0
}

/// Host builds (unit tests) have no IOAPIC.
#[cfg(not(target_os = "none"))]
pub fn route_device(_gsi: u8) -> bool {
    false
}

/// Host builds (unit tests) have no IOAPIC.
#[cfg(not(target_os = "none"))]
pub fn route_line(_ioapic: u64, _pin: u8, _active_low: bool, _level: bool) -> bool {
    false
}

/// Host builds (unit tests) have no IOAPIC.
#[cfg(not(target_os = "none"))]
pub fn unmask_devices() {}
