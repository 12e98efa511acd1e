//! A memory-mapped 16550 UART as the console (Firecracker's serial port on
//! arm64, device tree compatible `ns16550a`). The UART is used as the VMM
//! left it: no interrupts, no speed change; a byte goes out when the line
//! status says the transmitter is empty. Written here rather than with
//! the uart_16550 crate, whose memory-mapped port reads and writes its
//! registers with plain (not volatile) accesses; safe-mmio does the
//! accesses.

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

/// Transmit holding register and line status register (THR empty: bit 5).
const THR: usize = 0;
const LSR: usize = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

impl crate::Sink for Ns16550 {
    fn write(&self, bytes: &[u8]) {
        let base = self.base.load(Ordering::Acquire);
        if base == 0 {
            return;
        }
        let shift = self.shift.load(Ordering::Relaxed);
        // SAFETY: the platform sets `base` to its 16550's registers, which
        // its MMU setup maps as device memory; these are its line status
        // and transmit registers, which only the console (under its lock)
        // touches. safe-mmio makes each access one plain load or store,
        // which a hypervisor can decode.
        let reg = |r: usize| unsafe {
            safe_mmio::UniqueMmioPointer::new(
                core::ptr::NonNull::new((base + (r << shift)) as *mut u8).unwrap(),
            )
        };
        for &b in bytes {
            // SAFETY: reading the line status has no side effect on
            // transmission; writing THR sends the byte.
            unsafe {
                while reg(LSR).read_unsafe() & LSR_THR_EMPTY == 0 {
                    core::hint::spin_loop();
                }
                reg(THR).write_unsafe(b);
            }
        }
    }
}
