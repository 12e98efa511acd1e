//! Time from the time-stamp counter.

/// Reads the time-stamp counter.
#[inline]
pub fn read() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is left clear so it works at any ring.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC frequency in Hz from CPUID, when the CPU or hypervisor reports it:
/// the hypervisor timing leaf (0x40000010, KVM/QEMU and VMware), then the
/// TSC/crystal ratio leaf (0x15), then the processor base frequency (0x16).
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
