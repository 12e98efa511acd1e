//! virtio devices through the `virtio-drivers` crate: Kiln's [`Hal`]
//! (DMA pages from the kernel heap, identity-mapped, so physical and
//! virtual addresses are equal) and discovery of the virtio-mmio transports
//! the platform found. Devices are driven by polling.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

pub use virtio_drivers;

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

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
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
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else { continue };
        // SAFETY: the platform found a virtio-mmio header at `base` and
        // mapped its `size` bytes uncached; nothing else drives this slot.
        match unsafe { MmioTransport::new(header, size) } {
            Ok(t) if t.device_type() == kind => out.push(t),
            _ => {}
        }
    }
    out
}
