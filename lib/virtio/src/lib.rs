//! virtio devices through the `virtio-drivers` crate: Kiln's [`Hal`]
//! (DMA pages from the kernel heap, identity-mapped, so physical and
//! virtual addresses are equal) and discovery of the virtio-mmio transports
//! the platform found and of virtio PCI functions (with MSI-X where the
//! platform takes message interrupts, msix.rs). [`devices`] hands them out
//! wrapped in [`Stepwise`], ready for a virtio-drivers driver.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
use virtio_drivers::transport::pci::bus::{
    Command, ConfigurationAccess, DeviceFunction, MmioCam, PciRoot,
};
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
use virtio_drivers::transport::pci::virtio_device_type;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

pub use virtio_drivers;

mod msix;
mod stepwise;
pub use stepwise::{refused, Stepwise};

/// A device's transport as drivers take it.
pub type Device = Stepwise<SomeTransport<'static>>;

/// Kiln's glue for virtio-drivers.
pub struct KilnHal;

// SAFETY: dma_alloc hands out zeroed, page-aligned pages that nothing else
// uses until dma_dealloc; memory is identity-mapped, so the physical address
// of any buffer is its address, valid for the device as long as the buffer
// lives.
unsafe impl Hal for KilnHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let p = kiln_alloc::pages::alloc(pages).expect("virtio: out of memory for DMA buffers");
        debug_assert_eq!(p.as_ptr() as usize % PAGE_SIZE, 0);
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: forwarded contract: vaddr came from dma_alloc(pages).
        unsafe { kiln_alloc::pages::free(vaddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // PCI BARs can lie anywhere; the platform maps them uncached.
        if let Some(p) = kiln_boot::platform() {
            p.map_device(paddr as usize, size);
        }
        NonNull::new(paddr as *mut u8).expect("virtio: MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// A virtio-mmio transport with its device type.
pub type Mmio = MmioTransport<'static>;

/// The virtio-mmio devices of the given type, in slot order.
pub fn mmio_devices(kind: DeviceType) -> Vec<Mmio> {
    let mut out = Vec::new();
    for &(base, size) in kiln_boot::virtio_mmio() {
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the platform found a virtio-mmio header at `base` and
        // mapped its `size` bytes uncached; nothing else drives this slot.
        match unsafe { MmioTransport::new(header, size) } {
            Ok(t) if t.device_type() == kind => out.push(t),
            // Dropping a transport resets its device: another driver's
            // device (found by an earlier scan for its own type) would
            // lose its queues. A transport owns no memory, so it is
            // forgotten instead.
            Ok(t) => core::mem::forget(t),
            Err(_) => {}
        }
    }
    out
}

/// PCI configuration space through the x86 ports 0xCF8 (address) and 0xCFC
/// (data): configuration mechanism #1, present on every PC machine (q35).
#[derive(Clone, Copy)]
pub struct PortCam;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl PortCam {
    fn address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (df.bus as u32) << 16
            | (df.device as u32) << 11
            | (df.function as u32) << 8
            | (offset as u32 & 0xfc)
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let v: u32;
        // SAFETY: ports 0xCF8/0xCFC are the PCI configuration mechanism on
        // PC platforms (checked by the caller through has_pci_ports); a
        // read selects a register and reads it, with no other effect.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") Self::address(df, offset), options(nomem, nostack));
            core::arch::asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") v, options(nomem, nostack));
        }
        v
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: as above; the write goes to the selected register of a
        // device this driver owns.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") Self::address(df, offset), options(nomem, nostack));
            core::arch::asm!("out dx, eax", in("dx") 0xcfcu16, in("eax") data, options(nomem, nostack));
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// PCI configuration space as the platform offers it: memory-mapped
/// (PCIe ECAM, where the firmware's MCFG names it: q35) or the ports (`pc`,
/// and machines booted without firmware tables).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub enum Cam {
    Ports(PortCam),
    Ecam(MmioCam<'static>),
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl Cam {
    fn for_platform(p: &dyn kiln_boot::Platform) -> Cam {
        match p.pci_ecam() {
            // SAFETY: the platform mapped bus 0's configuration space
            // (1 MiB) uncached at `base`; only this driver uses it.
            Some(base) => Cam::Ecam(unsafe {
                MmioCam::new(
                    base as *mut u8,
                    virtio_drivers::transport::pci::bus::Cam::Ecam,
                )
            }),
            None => Cam::Ports(PortCam),
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl ConfigurationAccess for Cam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        match self {
            Cam::Ports(c) => c.read_word(df, offset),
            Cam::Ecam(c) => c.read_word(df, offset),
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        match self {
            Cam::Ports(c) => c.write_word(df, offset, data),
            Cam::Ecam(c) => c.write_word(df, offset, data),
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        match self {
            Cam::Ports(_) => Cam::Ports(PortCam),
            // SAFETY: the caller's promise, passed on.
            Cam::Ecam(c) => Cam::Ecam(unsafe { c.unsafe_clone() }),
        }
    }
}

/// Routes a function's legacy INTx line (Interrupt Pin and Line at 0x3D and
/// 0x3C, the line as firmware set it to an ISA IRQ); whether the platform did.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn route_intx(cam: &Cam, df: DeviceFunction, p: &dyn kiln_boot::Platform) -> bool {
    let w = cam.read_word(df, 0x3c);
    let (line, pin) = (w as u8, (w >> 8) as u8);
    pin != 0 && (1..16).contains(&line) && p.route_pci_intx(line)
}

/// The virtio PCI devices of the given type on bus 0, with memory decoding
/// and bus mastering (DMA) enabled, and interrupts where they can be had:
/// MSI-X, else the legacy INTx line.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub fn pci_devices(kind: DeviceType) -> Vec<Device> {
    let mut out = Vec::new();
    let Some(p) = kiln_boot::platform().filter(|p| p.has_pci_ports()) else {
        return out;
    };
    // A machine without PCI reads all ones (QEMU's microvm) or zeros
    // (Firecracker) from the configuration ports: look once at 00:00.0 (a
    // PC's host bridge) before scanning 32 slots a VMM may log every
    // access to.
    static NO_PCI: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if NO_PCI.load(core::sync::atomic::Ordering::Relaxed) {
        return out;
    }
    let host = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    let id = PortCam.read_word(host, 0);
    if id == 0xffff_ffff || id == 0 {
        NO_PCI.store(true, core::sync::atomic::Ordering::Relaxed);
        return out;
    }
    // Said once: how configuration space is reached.
    static SAID: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, core::sync::atomic::Ordering::Relaxed) {
        match p.pci_ecam() {
            Some(base) => kiln_console::log!(
                kiln_console::Level::Info,
                "pci: configuration space through ECAM at {base:#x} (ACPI MCFG)"
            ),
            None => kiln_console::log!(
                kiln_console::Level::Info,
                "pci: configuration space through ports 0xcf8/0xcfc"
            ),
        }
    }
    let mut root = PciRoot::new(Cam::for_platform(p));
    let mut cam = Cam::for_platform(p);
    // virtio-drivers looks at all eight functions of every slot. A
    // device's functions 1-7 exist only when function 0's header type has
    // the multifunction bit (PCI 3.0, 6.2.1); cloud-hypervisor's ECAM
    // answers every function number with function 0, which made one disk
    // eight.
    let multifunction = |df: DeviceFunction| {
        let f0 = DeviceFunction { function: 0, ..df };
        cam.read_word(f0, 0x0c) >> 16 & 0x80 != 0
    };
    let found: Vec<DeviceFunction> = root
        .enumerate_bus(0)
        .filter(|(df, _)| df.function == 0 || multifunction(*df))
        .filter(|(_, info)| virtio_device_type(info) == Some(kind))
        .map(|(df, _)| df)
        .collect();
    for df in found {
        root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        if let Ok(t) = PciTransport::new::<KilnHal, _>(&mut root, df) {
            let t = SomeTransport::Pci(t);
            out.push(match msix::enable(&mut cam, df) {
                Some(common) => Stepwise::with_msix(t, common),
                None if route_intx(&cam, df, p) => Stepwise::with_intx(t),
                None => Stepwise::new(t),
            });
        }
    }
    out
}

#[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
pub fn pci_devices(_kind: DeviceType) -> Vec<Device> {
    Vec::new()
}

/// Every virtio device of the given type: virtio-mmio slots, then PCI.
pub fn devices(kind: DeviceType) -> Vec<Device> {
    let mut v: Vec<Device> = mmio_devices(kind)
        .into_iter()
        .map(|t| Stepwise::new(SomeTransport::Mmio(t)))
        .collect();
    v.extend(pci_devices(kind));
    v
}
