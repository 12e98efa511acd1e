//! The interrupt controller (GICv2 or GICv3), used only to wake the CPU.
//!
//! Kiln takes no interrupts on arm64: IRQs stay masked in PSTATE, and `wfi`
//! still ends when an enabled interrupt is pending at the CPU interface.
//! So the timer (PPI 27, the virtual timer) and device lines only need to be
//! enabled here; a pending level-sensitive interrupt clears itself when its
//! source lowers the line (the timer is disabled after the wait, a device is
//! acknowledged by its driver), and nothing is ever acknowledged at the GIC.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

static DIST: AtomicUsize = AtomicUsize::new(0);
/// GICv2: the CPU interface; GICv3: this CPU's redistributor.
static LOCAL: AtomicUsize = AtomicUsize::new(0);
/// 0: none, 2 or 3.
static VERSION: AtomicU8 = AtomicU8::new(0);

/// The virtual timer's interrupt.
pub const TIMER_PPI: u32 = 27;

/// One 32-bit register access, as a single plain load or store (through
/// safe-mmio): under KVM a GIC access traps to the hypervisor, which can
/// only decode accesses that report their syndrome (no writeback or pair
/// forms, which the compiler may pick for a volatile access in a loop).
fn reg(addr: usize) -> safe_mmio::UniqueMmioPointer<'static, u32> {
    // SAFETY: callers pass registers of the GIC whose base the platform
    // handed to `init_*`; it lies in the device memory entry.S maps, and
    // the pointer lives for one access.
    unsafe { safe_mmio::UniqueMmioPointer::new(core::ptr::NonNull::new(addr as *mut u32).unwrap()) }
}

fn w32(addr: usize, v: u32) {
    // SAFETY: writing a GIC register only changes interrupt routing.
    unsafe { reg(addr).write_unsafe(v) }
}

fn r32(addr: usize) -> u32 {
    // SAFETY: the registers read here (configuration, enable and wake
    // state) have no read side effects.
    unsafe { reg(addr).read_unsafe() }
}

/// Sets up a GICv2 from its distributor and CPU interface bases.
pub fn init_v2(dist: usize, cpu: usize) {
    DIST.store(dist, Relaxed);
    LOCAL.store(cpu, Relaxed);
    w32(dist, 1); // GICD_CTLR: forward group 0
    w32(cpu + 0x4, 0xf0); // GICC_PMR: every priority below 0xf0
    w32(cpu, 1); // GICC_CTLR: signal group 0 as IRQ
    VERSION.store(2, Relaxed);
    enable(TIMER_PPI);
    crate::timer::set_wake_routed();
}

/// Sets up a GICv3 from its distributor and (first) redistributor bases.
pub fn init_v3(dist: usize, redist: usize) {
    DIST.store(dist, Relaxed);
    LOCAL.store(redist, Relaxed);
    // GICD_CTLR: affinity routing, group 1 forwarded.
    w32(dist, (1 << 4) | (1 << 1));
    // GICR_WAKER: this CPU is awake (clear ProcessorSleep, wait for ChildrenAsleep to clear).
    w32(redist + 0x14, r32(redist + 0x14) & !(1 << 1));
    for _ in 0..1_000_000 {
        if r32(redist + 0x14) & (1 << 2) == 0 {
            break;
        }
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: enabling the system-register CPU interface, letting every
    // priority through and enabling group 1 only changes interrupt routing
    // to this CPU, whose IRQs stay masked in PSTATE.
    unsafe {
        core::arch::asm!("msr icc_sre_el1, {}", "isb", in(reg) 7u64);
        core::arch::asm!("msr icc_pmr_el1, {}", in(reg) 0xf0u64);
        core::arch::asm!("msr icc_igrpen1_el1, {}", "isb", in(reg) 1u64);
    }
    VERSION.store(3, Relaxed);
    enable(TIMER_PPI);
    crate::timer::set_wake_routed();
}

/// Whether a GIC was set up.
pub fn present() -> bool {
    VERSION.load(Relaxed) != 0
}

/// Enables interrupt `intid` (PPI 16-31 or SPI 32+) as level-sensitive,
/// highest priority, group 1 on GICv3 (group 0 on GICv2), to this CPU.
pub fn enable(intid: u32) {
    let (dist, local, v) = (
        DIST.load(Relaxed),
        LOCAL.load(Relaxed),
        VERSION.load(Relaxed),
    );
    if v == 0 || intid >= 1020 {
        return;
    }
    let (word, bit) = ((intid / 32) as usize * 4, 1u32 << (intid % 32));
    let cfg = (intid / 16) as usize * 4;
    let cfg_mask = !(3u32 << ((intid % 16) * 2));
    if v == 3 && intid < 32 {
        // SGIs and PPIs live in the redistributor's SGI frame.
        let sgi = local + 0x1_0000;
        w32(sgi + 0x80, r32(sgi + 0x80) | bit); // IGROUPR0: group 1
        w32(sgi + 0xc00 + cfg, r32(sgi + 0xc00 + cfg) & cfg_mask);
        w32(sgi + 0x100, bit); // ISENABLER0
        return;
    }
    if v == 3 {
        w32(dist + 0x80 + word, r32(dist + 0x80 + word) | bit); // IGROUPR: group 1
                                                                // IROUTER: to affinity 0.0.0.0 (this CPU).
        w32(dist + 0x6000 + intid as usize * 8, 0);
        w32(dist + 0x6000 + intid as usize * 8 + 4, 0);
    } else if intid >= 32 {
        // ITARGETSR: to CPU 0.
        let t = dist + 0x800 + (intid as usize & !3);
        w32(t, r32(t) | 1 << ((intid % 4) * 8));
    }
    if intid >= 32 {
        w32(dist + 0xc00 + cfg, r32(dist + 0xc00 + cfg) & cfg_mask); // ICFGR: level
    }
    w32(dist + 0x100 + word, bit); // ISENABLER
}

/// Takes the highest-priority pending interrupt: its ID (1023: none).
pub fn ack() -> u32 {
    match VERSION.load(Relaxed) {
        2 => r32(LOCAL.load(Relaxed) + 0x0c) & 0x3ff, // GICC_IAR
        3 => {
            #[allow(unused_mut)]
            let mut v: u64 = 1023;
            #[cfg(target_arch = "aarch64")]
            // SAFETY: reading ICC_IAR1_EL1 acknowledges the interrupt it names.
            unsafe {
                core::arch::asm!("mrs {}, icc_iar1_el1", out(reg) v)
            };
            (v & 0xff_ffff) as u32
        }
        _ => 1023,
    }
}

/// Ends interrupt `intid` (taken with [`ack`]).
pub fn eoi(intid: u32) {
    match VERSION.load(Relaxed) {
        2 => w32(LOCAL.load(Relaxed) + 0x10, intid), // GICC_EOIR
        3 => {
            #[cfg(target_arch = "aarch64")]
            // SAFETY: writing ICC_EOIR1_EL1 ends the interrupt it names.
            unsafe {
                core::arch::asm!("msr icc_eoir1_el1, {}", "isb", in(reg) intid as u64)
            };
        }
        _ => {}
    }
}

/// Shared peripheral interrupts (device lines) [`mask_line`] turned off,
/// one bit per ID from 32.
static MASKED: [core::sync::atomic::AtomicU32; 31] =
    [const { core::sync::atomic::AtomicU32::new(0) }; 31];

/// Turns device line `intid` off at the distributor until
/// [`unmask_lines`] (its device keeps it raised until the driver has
/// polled it, and a program running with interrupts on would take it
/// again at once).
pub fn mask_line(intid: u32) {
    if !(32..1020).contains(&intid) {
        return;
    }
    let (word, bit) = ((intid / 32) as usize, 1u32 << (intid % 32));
    w32(DIST.load(Relaxed) + 0x180 + word * 4, bit); // ICENABLER
    MASKED[word - 1].fetch_or(bit, Relaxed);
}

/// Turns the lines [`mask_line`] turned off on again.
pub fn unmask_lines() {
    for (i, m) in MASKED.iter().enumerate() {
        let bits = m.swap(0, Relaxed);
        if bits != 0 {
            w32(DIST.load(Relaxed) + 0x100 + (i + 1) * 4, bits); // ISENABLER
        }
    }
}
