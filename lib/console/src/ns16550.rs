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

/// Transmit holding (write) and receive buffer (read) register, line
/// status register (bit 0: data ready; bit 5: THR empty).
const THR: usize = 0;
const RBR: usize = 0;
const LSR: usize = 5;
const LSR_DATA_READY: u8 = 1;
const LSR_THR_EMPTY: u8 = 1 << 5;

impl Ns16550 {
    fn reg(&self, r: usize) -> Option<safe_mmio::UniqueMmioPointer<'static, u8>> {
        let base = self.base.load(Ordering::Acquire);
        let shift = self.shift.load(Ordering::Relaxed);
        // SAFETY: the platform sets `base` to its 16550's registers, which
        // its MMU setup maps as device memory; the pointer lives for one
        // access. safe-mmio makes each access one plain load or store,
        // which a hypervisor can decode.
        (base != 0).then(|| unsafe {
            safe_mmio::UniqueMmioPointer::new(
                core::ptr::NonNull::new((base + (r << shift)) as *mut u8).unwrap(),
            )
        })
    }

    /// A received byte, if one is waiting. Only the platform's polling
    /// reads input (nothing else in Kiln reads this UART).
    pub fn read_byte(&self) -> Option<u8> {
        // SAFETY: reading the line status has no side effect; reading RBR
        // takes the byte it reports.
        unsafe {
            if self.reg(LSR)?.read_unsafe() & LSR_DATA_READY == 0 {
                return None;
            }
            Some(self.reg(RBR)?.read_unsafe())
        }
    }
}

impl crate::Sink for Ns16550 {
    fn write(&self, bytes: &[u8]) {
        let (Some(mut lsr), Some(mut thr)) = (self.reg(LSR), self.reg(THR)) else {
            return;
        };
        for &b in bytes {
            // SAFETY: reading the line status has no side effect on
            // transmission; writing THR sends the byte. Only the console
            // (under its lock) writes.
            unsafe {
                while lsr.read_unsafe() & LSR_THR_EMPTY == 0 {
                    core::hint::spin_loop();
                }
                thr.write_unsafe(b);
            }
        }
    }
}
