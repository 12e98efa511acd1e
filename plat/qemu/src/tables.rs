//! The firmware's ACPI tables, read with the `acpi` crate (5.x, without
//! its allocator feature) where the loader says where the RSDP is (GRUB's
//! multiboot2 copy on BIOS and UEFI, PVH's `rsdp_paddr`). Nothing is read
//! at boot: each user asks when it needs them.
//!
//! - [`interrupts`]: the MADT's IOAPIC and its interrupt source overrides
//!   (which ISA IRQ arrives on which global system interrupt, with which
//!   polarity), for PCI functions that signal with legacy INTx;
//! - [`ecam_bus0`]: the MCFG's memory-mapped configuration space (PCIe
//!   ECAM) for bus 0;
//! - power.rs reads the FADT and DSDT for soft-off.

use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use kiln_arch_x86_64 as arch;

/// The RSDP's address from the loader; 0 when it gave none.
static RSDP: AtomicUsize = AtomicUsize::new(0);

/// Remembers where the loader put the RSDP.
pub fn set_rsdp(addr: Option<usize>) {
    RSDP.store(addr.unwrap_or(0), Ordering::Relaxed);
}

/// Identity mapping of firmware tables: each region is mapped uncached
/// (map_device) and used in place; nothing is unmapped.
#[derive(Clone, Copy)]
pub struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        arch::mmu::map_device(physical_address as u64, size as u64);
        // SAFETY: the region is identity-mapped now; the crate reads it
        // as the table it asked for, within `size` bytes.
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new(physical_address as *mut T).expect("ACPI table at address 0"),
                size,
                size,
                Identity,
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The tables, if the loader gave an RSDP.
pub fn tables() -> Option<AcpiTables<Identity>> {
    let rsdp = RSDP.load(Ordering::Relaxed);
    // No search of the BIOS area without the loader's word: its pointer
    // to the EBDA lies in page 0, which is unmapped (and a machine booted
    // without firmware has no tables there anyway).
    if rsdp == 0 {
        return None;
    }
    // SAFETY: the RSDP address came from the loader; the crate checks its
    // signature and checksum, and those of every table it leads to.
    unsafe { AcpiTables::from_rsdp(Identity, rsdp) }.ok()
}

/// Where an ISA IRQ arrives at the IOAPIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The IOAPIC's physical address and its input number.
    pub ioapic: u64,
    pub pin: u32,
    pub active_low: bool,
    pub level: bool,
}

/// The IOAPIC input for ISA IRQ `irq` (a PCI function's Interrupt Line,
/// which firmware sets to the IRQ its INTx pin is routed to): the MADT's
/// override for it, else the identity mapping with PCI's level trigger;
/// None without an MADT or without an IOAPIC serving that input.
pub fn isa_route(irq: u8) -> Option<Route> {
    use acpi::madt::{Madt, MadtEntry};
    let tables = tables()?;
    let madt = tables.find_table::<Madt>().ok()?;
    let madt = madt.get();
    let (mut gsi, mut active_low, mut level) = (irq as u32, false, true);
    for e in madt.entries() {
        if let MadtEntry::InterruptSourceOverride(o) = e {
            if o.bus == 0 && o.irq == irq {
                gsi = o.global_system_interrupt;
                // MPS INTI flags: polarity in bits 0-1 (3: active low),
                // trigger mode in bits 2-3 (1: edge); 0 conforms to the
                // bus, which for a PCI line means level, active low.
                let flags = o.flags;
                active_low = matches!(flags & 3, 0 | 3);
                level = flags >> 2 & 3 != 1;
            }
        }
    }
    madt.entries().find_map(|e| match e {
        MadtEntry::IoApic(a) => {
            let base = a.global_system_interrupt_base;
            (gsi >= base && gsi - base < 24).then_some(Route {
                ioapic: a.io_apic_address as u64,
                pin: gsi - base,
                active_low,
                level,
            })
        }
        _ => None,
    })
}

/// The physical address of bus 0's configuration space in the MCFG's
/// ECAM region (segment 0), if the machine has one (q35 does, `pc` not).
pub fn ecam_bus0() -> Option<u64> {
    let tables = tables()?;
    let mcfg = tables.find_table::<acpi::mcfg::Mcfg>().ok()?;
    mcfg.entries()
        .iter()
        .find(|e| e.pci_segment_group == 0 && e.bus_number_start == 0)
        .map(|e| e.base_address)
}
