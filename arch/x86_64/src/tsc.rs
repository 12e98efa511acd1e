//! Time from the time-stamp counter.

/// Reads the time-stamp counter.
#[inline]
pub fn read() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is left clear so it works at any ring.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC frequency in Hz when the CPU or hypervisor reports it: the
/// hypervisor timing leaf (0x40000010, KVM/QEMU and VMware), then KVM's
/// paravirtual clock (what Firecracker and cloud-hypervisor offer), then
/// the TSC/crystal ratio leaf (0x15), then the processor base frequency
/// (0x16).
pub fn frequency() -> Option<u64> {
    // cpuid is always available in long mode (a safe intrinsic).
    use core::arch::x86_64::__cpuid;
    let hv_max = __cpuid(0x4000_0000).eax;
    if (0x4000_0010..0x4000_0100).contains(&hv_max) {
        let khz = __cpuid(0x4000_0010).eax;
        if khz != 0 {
            return Some(khz as u64 * 1000);
        }
    }
    #[cfg(target_os = "none")]
    if let Some(hz) = kvmclock_frequency() {
        return Some(hz);
    }
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let r = __cpuid(0x15);
        if r.eax != 0 && r.ebx != 0 && r.ecx != 0 {
            return Some(r.ecx as u64 * r.ebx as u64 / r.eax as u64);
        }
    }
    if max >= 0x16 {
        let mhz = __cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(mhz as u64 * 1_000_000);
        }
    }
    None
}

/// KVM's `pvclock_vcpu_time_info`, which the hypervisor fills in.
#[cfg(target_os = "none")]
#[repr(C, align(32))]
struct PvClock {
    version: u32,
    _pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    _pad: [u8; 2],
}

/// The TSC rate from KVM's paravirtual clock: the hypervisor publishes how
/// it turns TSC ticks into nanoseconds, `ns = (ticks << shift) * mul >> 32`
/// (a right shift for a negative `shift`), so ticks per second are
/// `(10^9 << 32) / mul`, shifted back. Only under KVM with the second
/// clock source MSR (CPUID 0x40000001, EAX bit 3); the clock is switched
/// off again after one reading.
#[cfg(target_os = "none")]
fn kvmclock_frequency() -> Option<u64> {
    use core::arch::x86_64::__cpuid;
    const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
    let sig = __cpuid(0x4000_0000);
    let kvm = sig.ebx == u32::from_le_bytes(*b"KVMK")
        && sig.ecx == u32::from_le_bytes(*b"VMKV")
        && sig.edx == u32::from_le_bytes(*b"M\0\0\0");
    if !kvm || sig.eax < 0x4000_0001 || __cpuid(0x4000_0001).eax & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return None;
    }
    static mut CLOCK: PvClock = PvClock {
        version: 0,
        _pad0: 0,
        tsc_timestamp: 0,
        system_time: 0,
        tsc_to_system_mul: 0,
        tsc_shift: 0,
        flags: 0,
        _pad: [0; 2],
    };
    let addr = (&raw mut CLOCK) as u64;
    let wrmsr = |v: u64| {
        // SAFETY: the MSR exists (the CPUID bit above); its value is the
        // address of CLOCK (identity-mapped kernel memory, 32-byte aligned)
        // with the enable bit, or 0 to switch it off. The hypervisor then
        // writes only into CLOCK.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") MSR_KVM_SYSTEM_TIME_NEW, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack));
        }
    };
    wrmsr(addr | 1);
    // SAFETY: CLOCK is written by the hypervisor during the wrmsr above
    // (an even version means the fields are consistent); volatile reads.
    let (mul, shift, version) = unsafe {
        (
            core::ptr::read_volatile(&raw const CLOCK.tsc_to_system_mul),
            core::ptr::read_volatile(&raw const CLOCK.tsc_shift),
            core::ptr::read_volatile(&raw const CLOCK.version),
        )
    };
    wrmsr(0);
    if mul == 0 || version % 2 == 1 {
        return None;
    }
    Some(rate(mul, shift))
}

/// Ticks per second for a paravirtual clock's multiplier and shift.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
fn rate(mul: u32, shift: i8) -> u64 {
    let hz = (1_000_000_000u128 << 32) / mul.max(1) as u128;
    let hz = if shift >= 0 {
        hz >> shift
    } else {
        hz << -shift
    };
    u64::try_from(hz).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pvclock_scale_to_hertz() {
        // 2.4 GHz: ns = ticks * 2^32/2.4 >> 32, with shift -1 and mul
        // 2^32 * 2 / 2.4.
        let mul = ((1u64 << 33) * 10 / 24) as u32;
        let hz = super::rate(mul, -1);
        assert!((2_399_999_000..=2_400_001_000).contains(&hz), "{hz}");
        // 1 GHz: shift 0, mul 2^32 - 1 (one tick is one nanosecond).
        assert!((999_999_999..=1_000_000_001).contains(&super::rate(u32::MAX, 0)));
    }
}
