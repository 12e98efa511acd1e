//! MSI-X for virtio PCI functions: interrupts as messages to the local
//! APIC, which need no interrupt controller routing (no ACPI tables, no
//! IOAPIC pin per slot) and work the same on q35, `pc` and any
//! firmware-booted x86 VM.
//!
//! [`enable`] reads the function's capability list, points table entry 0
//! at the platform's message (`Platform::msi_message`) and turns MSI-X on;
//! it returns the virtio common configuration, through which
//! [`CommonCfg::route_queues`] gives the queues that vector once the driver
//! has set them up (stepwise.rs calls it at DRIVER_OK).

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// The virtio PCI common configuration structure (`virtio_pci_common_cfg`),
/// mapped uncached at this address.
pub struct CommonCfg(usize);

/// Offsets in the common configuration.
const MSIX_CONFIG: usize = 0x10;
const NUM_QUEUES: usize = 0x12;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
/// "No vector" for `msix_config` and `queue_msix_vector`.
const NO_VECTOR: u16 = 0xffff;

impl CommonCfg {
    fn read16(&self, off: usize) -> u16 {
        // SAFETY: `self.0` is the device's common configuration, mapped
        // uncached by `enable`; the offsets are the specification's.
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u16) }
    }

    fn write16(&self, off: usize, v: u16) {
        // SAFETY: as in read16; the driver that owns this device is the
        // only writer.
        unsafe { core::ptr::write_volatile((self.0 + off) as *mut u16, v) }
    }

    /// Gives every queue vector 0 and configuration changes none; false if
    /// the device refused a vector (it reads back NO_VECTOR).
    pub fn route_queues(&self) -> bool {
        self.write16(MSIX_CONFIG, NO_VECTOR);
        let n = self.read16(NUM_QUEUES);
        for q in 0..n {
            self.write16(QUEUE_SELECT, q);
            self.write16(QUEUE_MSIX_VECTOR, 0);
            if self.read16(QUEUE_MSIX_VECTOR) != 0 {
                return false;
            }
        }
        true
    }
}

/// PCI configuration registers and capability IDs used here.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod reg {
    pub const STATUS_COMMAND: u8 = 0x04;
    pub const STATUS_CAP_LIST: u32 = 1 << 20;
    pub const COMMAND_INTX_DISABLE: u32 = 1 << 10;
    pub const CAP_POINTER: u8 = 0x34;
    pub const BAR0: u8 = 0x10;
    pub const CAP_VENDOR: u8 = 0x09;
    pub const CAP_MSIX: u8 = 0x11;
    /// virtio's vendor capability: cfg_type at +3, BAR at +4, offset at +8.
    pub const VIRTIO_COMMON_CFG: u8 = 1;
    /// MSI-X message control (upper half of the capability's first word).
    pub const MSIX_ENABLE: u32 = 1 << 31;
    pub const MSIX_FUNCTION_MASK: u32 = 1 << 30;
}

/// The memory address a BAR decodes, or None for an I/O or unset BAR.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn bar_address(cam: &impl ConfigurationAccess, df: DeviceFunction, bar: u8) -> Option<usize> {
    if bar > 5 {
        return None;
    }
    let lo = cam.read_word(df, reg::BAR0 + 4 * bar);
    if lo & 1 != 0 {
        return None;
    }
    let mut addr = (lo & !0xf) as u64;
    if (lo >> 1) & 3 == 2 && bar < 5 {
        addr |= (cam.read_word(df, reg::BAR0 + 4 * (bar + 1)) as u64) << 32;
    }
    (addr != 0).then_some(addr as usize)
}

/// Turns on MSI-X for a virtio PCI function, its table entry 0 carrying
/// the platform's message: the common configuration's address, or None
/// (no MSI-X capability, no platform message, a BAR that cannot be mapped;
/// the device is then polled).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub fn enable(cam: &mut impl ConfigurationAccess, df: DeviceFunction) -> Option<CommonCfg> {
    let platform = kiln_boot::platform()?;
    if cam.read_word(df, reg::STATUS_COMMAND) & reg::STATUS_CAP_LIST == 0 {
        return None;
    }
    let (mut msix, mut common) = (None, None);
    let mut at = (cam.read_word(df, reg::CAP_POINTER) & 0xfc) as u8;
    // At most 48 capabilities fit in configuration space: a loop in a
    // broken list ends.
    for _ in 0..48 {
        if at < 0x40 {
            break;
        }
        let head = cam.read_word(df, at);
        match head as u8 {
            reg::CAP_MSIX => msix = Some(at),
            reg::CAP_VENDOR if (head >> 24) as u8 == reg::VIRTIO_COMMON_CFG && common.is_none() => {
                let bar = cam.read_word(df, at + 4) as u8;
                let offset = cam.read_word(df, at + 8) as usize;
                common = bar_address(cam, df, bar).map(|b| b + offset);
            }
            _ => {}
        }
        at = ((head >> 8) & 0xfc) as u8;
    }
    let (msix, common) = (msix?, common?);
    let control = cam.read_word(df, msix);
    let entries = ((control >> 16) & 0x7ff) as usize + 1;
    let table = cam.read_word(df, msix + 4);
    let table = bar_address(cam, df, (table & 7) as u8)? + (table & !7) as usize;
    if !platform.map_device(table, entries * 16) || !platform.map_device(common, 0x40) {
        return None;
    }
    let (address, data) = platform.msi_message()?;
    // SAFETY: entry 0 of this function's MSI-X table, mapped uncached
    // above: message address (low, high), data, vector control (0: not
    // masked). Nothing else writes this table.
    unsafe {
        let e = table as *mut u32;
        core::ptr::write_volatile(e, address as u32);
        core::ptr::write_volatile(e.add(1), (address >> 32) as u32);
        core::ptr::write_volatile(e.add(2), data);
        core::ptr::write_volatile(e.add(3), 0);
    }
    cam.write_word(
        df,
        msix,
        (control | reg::MSIX_ENABLE) & !reg::MSIX_FUNCTION_MASK,
    );
    let command = cam.read_word(df, reg::STATUS_COMMAND) & 0xffff;
    cam.write_word(df, reg::STATUS_COMMAND, command | reg::COMMAND_INTX_DISABLE);
    Some(CommonCfg(common))
}
