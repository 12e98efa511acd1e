//! The Arm PL011 UART as the console (QEMU virt, Raspberry Pi), through the
//! pl011-uart crate. The UART is used as firmware or QEMU left it.

use core::sync::atomic::{AtomicUsize, Ordering};

/// A PL011 at an address the platform sets (before the first write).
pub struct Pl011 {
    base: AtomicUsize,
}

impl Pl011 {
    pub const fn new(base: usize) -> Pl011 {
        Pl011 {
            base: AtomicUsize::new(base),
        }
    }

    /// Moves the console to the UART at `base` (from the device tree).
    pub fn set_base(&self, base: usize) {
        self.base.store(base, Ordering::Relaxed);
    }
}

impl crate::Sink for Pl011 {
    fn write(&self, bytes: &[u8]) {
        // SAFETY: the platform sets `base` to its PL011's registers, which
        // its MMU setup maps as device memory. The driver value is
        // recreated per write and holds no state of its own, so the alias
        // rule (one driver per device) holds for each write; the console's
        // lock keeps writers apart.
        let mut uart =
            unsafe { pl011_uart::Uart::new(self.base.load(Ordering::Relaxed) as *mut u32) };
        for &b in bytes {
            uart.write_byte(b);
        }
    }
}
