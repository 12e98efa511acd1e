//! A memory-mapped 16550 UART as the console (Firecracker's serial port on
//! arm64, device tree compatible `ns16550a`), through the uart_16550
//! crate. The UART is used as the VMM left it: no interrupts, no speed
//! change.

use core::sync::atomic::{AtomicUsize, Ordering};

/// A 16550 whose registers start at an address the platform sets (before
/// the first write), `1 << shift` bytes apart (the tree's `reg-shift`).
pub struct Ns16550 {
    base: AtomicUsize,
    shift: AtomicUsize,
}

impl Ns16550 {
    pub const fn new() -> Ns16550 {
        Ns16550 {
            base: AtomicUsize::new(0),
            shift: AtomicUsize::new(0),
        }
    }

    /// Moves the console to the UART at `base` (from the device tree).
    pub fn set_base(&self, base: usize, reg_shift: u32) {
        self.shift.store(reg_shift as usize, Ordering::Relaxed);
        self.base.store(base, Ordering::Release);
    }

    /// Whether a base address was set.
    pub fn present(&self) -> bool {
        self.base.load(Ordering::Acquire) != 0
    }
}

impl Default for Ns16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::Sink for Ns16550 {
    fn write(&self, bytes: &[u8]) {
        let base = self.base.load(Ordering::Acquire);
        if base == 0 {
            return;
        }
        // SAFETY: the platform sets `base` to its 16550's registers, which
        // its MMU setup maps as device memory. The driver value holds only
        // the register addresses and is recreated per write; the console's
        // lock keeps writers apart.
        let mut uart = unsafe {
            uart_16550::MmioSerialPort::new_with_stride(
                base,
                1 << self.shift.load(Ordering::Relaxed),
            )
        };
        for &b in bytes {
            uart.send_raw(b);
        }
    }
}
