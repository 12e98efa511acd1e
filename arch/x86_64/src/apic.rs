//! The local APIC timer, used to sleep: [`idle`] halts the CPU until a
//! one-shot timer interrupt (or any other interrupt) arrives, so a guest
//! with nothing to do stops using its host CPU.

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
    crate::exceptions::set_interrupt(TIMER_VECTOR, kiln_timer_isr as usize as u64);
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
    // are recognised only after hlt begins); the only interrupt source is
    // the timer, whose handler returns here; interrupts go off again after.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    write(INITIAL_COUNT, 0);
}

/// Host builds (unit tests) have no APIC.
#[cfg(not(target_os = "none"))]
pub fn init() -> bool {
    false
}

/// Host builds (unit tests) do not sleep.
#[cfg(not(target_os = "none"))]
pub fn idle(_us: u64) {}
