//! Device status, one step at a time.
//!
//! The virtio specification (3.1.1) has the driver set the status bits in
//! order, each in its own write: ACKNOWLEDGE, DRIVER, then FEATURES_OK,
//! which it must read back (a device that cannot work with the features
//! clears it), then DRIVER_OK. virtio-drivers 0.13 writes
//! ACKNOWLEDGE|DRIVER at once and never reads FEATURES_OK back. QEMU does
//! not mind; a strict device (Firecracker's) refuses the jump and every
//! later write, and the driver went on as if the device were up.
//! [`Stepwise`] wraps any transport and splits each status write into the
//! specification's steps; a device that drops FEATURES_OK is set FAILED,
//! counted in [`refused`] and reported, so the driver using it can say the
//! device is unusable instead of waiting on it forever.
//!
//! It also finishes what virtio-drivers leaves out of MSI-X: a virtio PCI
//! function whose MSI-X table Kiln enabled (lib.rs) signals a queue only
//! once the queue has a vector, and a device reset clears the vectors. So
//! when the driver sets DRIVER_OK, every queue is given vector 0 (the
//! table entry that wakes the CPU), and configuration changes none.

use core::sync::atomic::{AtomicU32, Ordering};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Devices that refused the features their driver asked for.
static REFUSED: AtomicU32 = AtomicU32::new(0);

/// How many devices have refused their driver's features since boot.
pub fn refused() -> u32 {
    REFUSED.load(Ordering::Relaxed)
}

/// The status bits in the order the specification sets them.
const STEPS: [DeviceStatus; 4] = [
    DeviceStatus::ACKNOWLEDGE,
    DeviceStatus::DRIVER,
    DeviceStatus::FEATURES_OK,
    DeviceStatus::DRIVER_OK,
];

/// A transport whose status writes follow the specification's steps.
pub struct Stepwise<T> {
    inner: T,
    /// The virtio PCI common configuration of a device with MSI-X on.
    msix: Option<crate::msix::CommonCfg>,
    /// A PCI function without MSI-X whose legacy INTx line the platform
    /// routed.
    intx: bool,
}

impl<T> Stepwise<T> {
    /// Wraps a transport that needs no MSI-X vectors.
    pub fn new(inner: T) -> Self {
        Stepwise {
            inner,
            msix: None,
            intx: false,
        }
    }

    /// Wraps a virtio PCI transport whose MSI-X table is enabled: its
    /// queues get vector 0 when the driver finishes.
    #[cfg_attr(not(all(target_arch = "x86_64", target_os = "none")), allow(dead_code))]
    pub(crate) fn with_msix(inner: T, common: crate::msix::CommonCfg) -> Self {
        Stepwise {
            inner,
            msix: Some(common),
            intx: false,
        }
    }

    /// Wraps a virtio PCI transport without MSI-X whose INTx line the
    /// platform routed to the device interrupt.
    #[cfg_attr(not(all(target_arch = "x86_64", target_os = "none")), allow(dead_code))]
    pub(crate) fn with_intx(inner: T) -> Self {
        Stepwise {
            inner,
            msix: None,
            intx: true,
        }
    }

    /// Whether the device's interrupts arrive as MSI-X messages.
    pub fn msix(&self) -> bool {
        self.msix.is_some()
    }
}

impl Stepwise<virtio_drivers::transport::SomeTransport<'_>> {
    /// Whether the device's interrupts end `Platform::idle` early: a PCI
    /// function's when MSI-X is on or its INTx line is routed, a
    /// virtio-mmio slot's when the platform routed its line.
    /// How the device signals, for the boot line: "MSI-X", "INTx" (a PCI
    /// function's legacy line) or "line" (a virtio-mmio slot's); None
    /// when it does not wake the CPU.
    pub fn signals_by(&self) -> Option<&'static str> {
        if !self.wakes_cpu() {
            return None;
        }
        Some(match (&self.msix, self.intx) {
            (Some(_), _) => "MSI-X",
            (None, true) => "INTx",
            _ => "line",
        })
    }

    pub fn wakes_cpu(&self) -> bool {
        match self.inner {
            virtio_drivers::transport::SomeTransport::Pci(_) => self.msix.is_some() || self.intx,
            _ => kiln_boot::platform().is_some_and(|p| p.device_wakes()),
        }
    }
}

impl<T: Transport> Transport for Stepwise<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        // A reset is one write.
        if status.is_empty() {
            self.inner.set_status(status);
            return;
        }
        let mut now = self.inner.get_status();
        // A failed device stays so until reset.
        if now.contains(DeviceStatus::FAILED) {
            return;
        }
        for step in STEPS {
            if !status.contains(step) || now.contains(step) {
                continue;
            }
            now |= step;
            self.inner.set_status(now);
            if step == DeviceStatus::FEATURES_OK && !self.inner.get_status().contains(step) {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                kiln_console::log!(
                    kiln_console::Level::Warn,
                    "virtio: the {:?} device refused the features its driver asked for; it is set FAILED",
                    self.inner.device_type()
                );
                let cur = self.inner.get_status();
                self.inner.set_status(cur | DeviceStatus::FAILED);
                return;
            }
        }
        let mut rest = status;
        for step in STEPS {
            rest.remove(step);
        }
        if !rest.is_empty() {
            self.inner.set_status(now | rest);
        }
        if status.contains(DeviceStatus::DRIVER_OK) {
            if let Some(common) = &self.msix {
                if !common.route_queues() {
                    // The device kept no vector: it cannot wake the CPU.
                    kiln_console::log!(
                        kiln_console::Level::Warn,
                        "virtio: the {:?} device took no MSI-X vector; it is polled",
                        self.inner.device_type()
                    );
                    self.msix = None;
                }
            }
        }
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, _queue: u16) {
        // A driver unsets its queues when it is dropped, with the device
        // still live. virtio-drivers then clears QueueReady and spins until
        // it reads 0 back; a strict device (Firecracker's) refuses queue
        // writes after DRIVER_OK, so that loop never ends. The
        // specification's way to take a device's queues away is a reset,
        // which clears every queue's ready bit (4.1.4.3.2, 4.2.2.1): reset
        // once, and leave the queues to it.
        if !self.inner.get_status().is_empty() {
            self.inner.set_status(DeviceStatus::empty());
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<C: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<C> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<C: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: C,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device as strict as Firecracker's: a status write may add one bit
    /// to the current status (or reset it); anything else is refused, and
    /// once refused, every later write too. `keep_features` false: it
    /// clears FEATURES_OK, as a device that cannot work with the features.
    struct Strict {
        status: u32,
        broken: bool,
        keep_features: bool,
        writes: std::vec::Vec<u32>,
        /// A queue write after DRIVER_OK, which the device refused: the
        /// crate would then wait for QueueReady to read 0, forever.
        stuck: bool,
    }

    impl Strict {
        fn new(keep_features: bool) -> Self {
            Strict {
                status: 0,
                broken: false,
                keep_features,
                writes: std::vec::Vec::new(),
                stuck: false,
            }
        }
    }

    impl Transport for Strict {
        fn device_type(&self) -> DeviceType {
            DeviceType::Network
        }
        fn read_device_features(&mut self) -> u64 {
            1 << 32 | 1 << 5 // VERSION_1, MAC
        }
        fn write_driver_features(&mut self, _: u64) {}
        fn max_queue_size(&mut self, _: u16) -> u32 {
            16
        }
        fn notify(&mut self, _: u16) {}
        fn get_status(&self) -> DeviceStatus {
            DeviceStatus::from_bits_truncate(self.status)
        }
        fn set_status(&mut self, status: DeviceStatus) {
            let new = status.bits();
            self.writes.push(new);
            let added = new & !self.status;
            let ok = new == 0
                || (new & self.status == self.status && added.count_ones() == 1)
                || added == DeviceStatus::FAILED.bits();
            if new == 0 {
                self.broken = false;
            } else if !ok || self.broken {
                self.broken = true;
                return;
            }
            self.status = new;
            if !self.keep_features {
                self.status &= !DeviceStatus::FEATURES_OK.bits();
            }
        }
        fn set_guest_page_size(&mut self, _: u32) {}
        fn requires_legacy_layout(&self) -> bool {
            false
        }
        fn queue_set(&mut self, _: u16, _: u32, _: PhysAddr, _: PhysAddr, _: PhysAddr) {}
        fn queue_unset(&mut self, _: u16) {
            if self.status & DeviceStatus::DRIVER_OK.bits() != 0 {
                self.stuck = true;
            }
        }
        fn queue_used(&mut self, _: u16) -> bool {
            false
        }
        fn ack_interrupt(&mut self) -> InterruptStatus {
            InterruptStatus::empty()
        }
        fn read_config_generation(&self) -> u32 {
            0
        }
        fn read_config_space<C: FromBytes + IntoBytes>(
            &self,
            _: usize,
        ) -> virtio_drivers::Result<C> {
            Ok(C::new_zeroed())
        }
        fn write_config_space<C: IntoBytes + Immutable>(
            &mut self,
            _: usize,
            _: C,
        ) -> virtio_drivers::Result<()> {
            Ok(())
        }
    }

    bitflags::bitflags! {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        struct Features: u64 {
            const VERSION_1 = 1 << 32;
            const MAC = 1 << 5;
        }
    }

    #[test]
    fn the_crate_alone_breaks_a_strict_device() {
        let mut t = Strict::new(true);
        t.begin_init(Features::all());
        t.finish_init();
        assert!(t.broken, "ACKNOWLEDGE|DRIVER in one write is refused");
        assert_ne!(t.status, 0xf);
    }

    #[test]
    fn stepwise_brings_a_strict_device_up() {
        let mut t = Stepwise::new(Strict::new(true));
        let f = t.begin_init(Features::all());
        t.finish_init();
        assert_eq!(f, Features::all());
        assert!(!t.inner.broken);
        assert_eq!(
            t.inner.status, 0xf,
            "ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK"
        );
        assert_eq!(t.inner.writes, [0, 1, 3, 0xb, 0xf]);
    }

    #[test]
    fn a_device_that_drops_features_ok_is_failed_and_counted() {
        let before = refused();
        let mut t = Stepwise::new(Strict::new(false));
        t.begin_init(Features::all());
        t.finish_init();
        assert_eq!(refused(), before + 1);
        assert!(t.inner.status & DeviceStatus::FAILED.bits() != 0);
        assert!(
            t.inner.status & DeviceStatus::DRIVER_OK.bits() == 0,
            "never set DRIVER_OK"
        );
    }

    #[test]
    fn a_dropped_driver_resets_a_strict_device_instead_of_waiting_on_it() {
        // The crate alone unsets the queue of a live device.
        let mut t = Strict::new(true);
        t.status = 0xf;
        t.queue_unset(0);
        assert!(t.stuck);
        // Stepwise resets it first, once for all its queues.
        let mut t = Stepwise::new(Strict::new(true));
        t.begin_init(Features::all());
        t.finish_init();
        t.queue_unset(0);
        t.queue_unset(1);
        assert!(!t.inner.stuck);
        assert_eq!(t.inner.status, 0);
        assert_eq!(t.inner.writes, [0, 1, 3, 0xb, 0xf, 0]);
    }
}
