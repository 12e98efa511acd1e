//! ACPI soft-off (S5) on machines that boot through firmware or tell
//! Kiln where the RSDP is: q35 and `pc` under SeaBIOS or OVMF, clouds, and
//! cloud-hypervisor. There the exit path would otherwise end in a reset,
//! which such machines answer by booting the image again.
//!
//! Nothing is read at boot (every instruction before `main` counts): the
//! loader's RSDP address (GRUB's multiboot2 copy, PVH's `rsdp_paddr`) is
//! remembered and followed when the machine is powered off. Without one
//! (QEMU's own PVH loader gives none) the caller's other ways remain. The tables are read with the `acpi` crate:
//! the FADT gives the PM1 control registers (or, on hardware-reduced ACPI,
//! the sleep control register), and the DSDT's `\_S5` package the sleep
//! type values, read by looking for the package's name in the AML, as the
//! rest of the DSDT needs no interpreter here.
//!
//! The power button of cloud-hypervisor (its `vm.power-button`, which `kiln
//! stop` presses) is an ACPI Generic Event Device: the VMM sets bit 3 of a
//! one-byte register and raises the GED's interrupt, and its AML reads the
//! register (which clears it) and notifies the button. [`power_button`]
//! finds that register the same way (the `GDST` operation region in the
//! DSDT) on its first call and then polls it, as the i8042 is polled.

use kiln_arch_x86_64 as arch;

/// How to enter S5: registers (I/O ports) and the values to write.
struct SoftOff {
    pm1a: u16,
    pm1b: Option<u16>,
    typ_a: u16,
    typ_b: u16,
    /// Hardware-reduced ACPI: the sleep control register (8 bits).
    sleep_control: Option<u16>,
}

/// `\_S5`'s SLP_TYPa and SLP_TYPb from the DSDT's AML: the name, then a
/// package (PackageOp, PkgLength, NumElements) whose first two elements
/// are integers (ZeroOp, OneOp or BytePrefix).
fn s5_from_aml(aml: &[u8]) -> Option<(u16, u16)> {
    let at = aml.windows(4).position(|w| w == b"_S5_")?;
    let rest = aml.get(at + 4..)?;
    if *rest.first()? != 0x12 {
        return None;
    }
    let len_bytes = 1 + (*rest.get(1)? >> 6) as usize;
    let mut i = 1 + len_bytes + 1;
    let mut value = || -> Option<u16> {
        let v = match *rest.get(i)? {
            0x00 => 0,
            0x01 => 1,
            0x0a => {
                i += 1;
                *rest.get(i)? as u16
            }
            _ => return None,
        };
        i += 1;
        Some(v)
    };
    let a = value()?;
    let b = value().unwrap_or(a);
    Some((a, b))
}

fn soft_off() -> Option<SoftOff> {
    let tables = super::tables::tables()?;
    let fadt = tables.find_table::<acpi::fadt::Fadt>().ok()?;
    let dsdt = tables.dsdt().ok()?;
    arch::mmu::map_device(dsdt.address as u64, dsdt.length as u64);
    // SAFETY: the DSDT's AML, identity-mapped above, `length` bytes long
    // (checksummed by the crate).
    let aml =
        unsafe { core::slice::from_raw_parts(dsdt.address as *const u8, dsdt.length as usize) };
    let (typ_a, typ_b) = s5_from_aml(aml)?;
    let io = |g: acpi::address::GenericAddress| {
        (g.address_space == acpi::address::AddressSpace::SystemIo
            && g.address != 0
            && g.address < 0x1_0000)
            .then_some(g.address as u16)
    };
    let sleep_control = fadt.sleep_control_register().ok().flatten().and_then(io);
    let pm1a = fadt.pm1a_control_block().ok().and_then(io);
    let pm1b = fadt.pm1b_control_block().ok().flatten().and_then(io);
    if pm1a.is_none() && sleep_control.is_none() {
        return None;
    }
    Some(SoftOff {
        pm1a: pm1a.unwrap_or(0),
        pm1b,
        typ_a,
        typ_b,
        sleep_control,
    })
}

/// The address of the operation region named `name` in system memory
/// (`OperationRegion(name, SystemMemory, address, length)` with a constant
/// address: ExtOpPrefix, OpRegionOp, the name, space 0, an integer).
fn memory_region(aml: &[u8], name: &[u8; 4]) -> Option<u64> {
    let mut head = [0x5b, 0x80, 0, 0, 0, 0, 0x00];
    head[2..6].copy_from_slice(name);
    let at = aml.windows(head.len()).position(|w| w == head)?;
    let rest = aml.get(at + head.len()..)?;
    let int = |n: usize| -> Option<u64> {
        let b = rest.get(1..1 + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
    };
    match *rest.first()? {
        0x0a => int(1),
        0x0b => int(2),
        0x0c => int(4),
        0x0e => int(8),
        _ => None,
    }
}

/// The GED's event register, found in the DSDT (0: not looked for yet; 1:
/// none).
static GED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// cloud-hypervisor's "power button pressed" bit in the GED register.
const GED_POWER_BUTTON: u8 = 1 << 3;

fn ged_register() -> Option<u64> {
    let tables = super::tables::tables()?;
    let dsdt = tables.dsdt().ok()?;
    arch::mmu::map_device(dsdt.address as u64, dsdt.length as u64);
    // SAFETY: as in `soft_off`.
    let aml =
        unsafe { core::slice::from_raw_parts(dsdt.address as *const u8, dsdt.length as usize) };
    let addr = memory_region(aml, b"GDST")?;
    (addr > 1 && arch::mmu::map_device(addr, 1)).then_some(addr)
}

/// Whether cloud-hypervisor's power button was pressed since the last
/// call. The first call reads the DSDT; without a GED register (QEMU, no
/// ACPI tables) every call is a load and a compare.
pub fn power_button() -> bool {
    use core::sync::atomic::Ordering;
    let addr = match GED.load(Ordering::Relaxed) {
        0 => {
            let a = ged_register().unwrap_or(1);
            GED.store(a, Ordering::Relaxed);
            a
        }
        a => a,
    };
    if addr == 1 {
        return false;
    }
    // SAFETY: the GED's one-byte event register, identity-mapped as device
    // memory above; reading it clears the events, which nothing else in
    // Kiln reads.
    let events = unsafe { core::ptr::read_volatile(addr as *const u8) };
    events & GED_POWER_BUTTON != 0
}

/// Enters S5 if the ACPI tables say how; returns if they do not, and may
/// return before the machine acts on the request (QEMU stops from its main
/// loop, and takes a shutdown before a reset asked for after it).
pub fn power_off() {
    let Some(s) = soft_off() else { return };
    const SLP_EN: u16 = 1 << 13;
    // SAFETY: the registers are the FADT's PM1 control (and sleep control)
    // ports; writing SLP_TYP with SLP_EN is the specified way to enter
    // S5, after which nothing runs.
    unsafe {
        if let Some(port) = s.sleep_control {
            arch::cpu::outb(port, ((s.typ_a as u8 & 7) << 2) | 1 << 5);
        }
        if s.pm1a != 0 {
            arch::cpu::outw(s.pm1a, (s.typ_a & 7) << 10 | SLP_EN);
        }
        if let Some(port) = s.pm1b {
            arch::cpu::outw(port, (s.typ_b & 7) << 10 | SLP_EN);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_s5_packages() {
        // Name(_S5, Package(4) {Zero, Zero, Zero, Zero}), as QEMU writes it.
        assert_eq!(
            super::s5_from_aml(b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00"),
            Some((0, 0))
        );
        // Name(\_S5, Package(2) {0x07, 0x07}) with BytePrefix.
        assert_eq!(
            super::s5_from_aml(b"xx\x08\\_S5_\x12\x07\x02\x0a\x07\x0a\x07"),
            Some((7, 7))
        );
        // A method called _S5_ (not a package) is no answer.
        assert_eq!(super::s5_from_aml(b"\x14_S5_\x00"), None);
        assert_eq!(super::s5_from_aml(b"\x08_S5_\x12\x06"), None);
        assert_eq!(super::s5_from_aml(b"nothing"), None);
    }

    #[test]
    fn finds_memory_regions() {
        // OperationRegion(GDST, SystemMemory, 0xfed0a000, 1), as
        // cloud-hypervisor writes it (a DWordPrefix address).
        let aml = b"..\x5b\x80GDST\x00\x0c\x00\xa0\xd0\xfe\x01..";
        assert_eq!(super::memory_region(aml, b"GDST"), Some(0xfed0_a000));
        // QWordPrefix, and a region in I/O space (not memory).
        let q = b"\x5b\x80GDST\x00\x0e\x00\x00\x00\x00\x01\x00\x00\x00\x01";
        assert_eq!(super::memory_region(q, b"GDST"), Some(0x1_0000_0000));
        assert_eq!(
            super::memory_region(b"\x5b\x80GDST\x01\x0a\x60\x01", b"GDST"),
            None
        );
        assert_eq!(super::memory_region(b"\x5b\x80GDST\x00", b"GDST"), None);
    }
}
