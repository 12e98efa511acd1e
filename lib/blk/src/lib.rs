//! Block devices: every virtio-blk device the VMM provides, driven through
//! virtio-drivers' `VirtIOBlk`, named `vda`, `vdb`, ... in the order found
//! (virtio-mmio slots, then PCI).
//!
//! The contract of a [`Disk`]:
//! - [`Disk::read`] and [`Disk::write`] take whole sectors (512 bytes) at a
//!   sector number and return when the device has answered; the calling
//!   thread blocks meanwhile and other threads run. A write is on the
//!   device when `write` returns, not necessarily on stable storage:
//!   [`Disk::flush`] asks the device to make every finished write durable
//!   (VIRTIO_BLK_F_FLUSH; a device without it writes through).
//! - Requests from several threads are served one at a time, in the order
//!   the threads asked.
//! - Errors are [`Error`]s: out of range, read-only, or the device's own
//!   failure; nothing panics on a device's answer.
//!
//! How the scheduler learns that a request finished is chosen in Kconfig
//! like the network's: the device's interrupt ends the CPU's halt
//! (LIBVIRTIO_IRQ on platforms that route it), or a poller looks every
//! 20 µs while a request is in flight. A flush has no non-blocking form in
//! virtio-drivers, so it waits on the CPU (a flush is rare: fsync).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use kiln_virtio::virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE as SECTOR};
use kiln_virtio::virtio_drivers::transport::{DeviceType, SomeTransport, Transport as _};
use kiln_virtio::KilnHal;

/// Bytes in a sector, the unit of every request.
pub const SECTOR_SIZE: usize = SECTOR;

/// Status writes in the specification's steps, as for the network.
type Transport = kiln_virtio::Stepwise<SomeTransport<'static>>;

/// Largest transfer in one request: buffers are split into requests of at
/// most this many bytes.
const MAX_REQUEST: usize = 64 * 1024;

/// What went wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The sectors lie past the end of the disk, or the buffer is not a
    /// whole number of sectors.
    OutOfRange,
    /// The device is read-only.
    ReadOnly,
    /// The device answered with an error.
    Device,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::OutOfRange => "request outside the disk",
            Error::ReadOnly => "read-only disk",
            Error::Device => "the device reported an I/O error",
        })
    }
}

impl core::error::Error for Error {}

struct Device {
    blk: VirtIOBlk<KilnHal, Transport>,
    /// Every transfer goes through this kernel buffer: a caller's buffer
    /// may be a Linux program's memory, which is not identity-mapped, and
    /// the device must be given physical addresses.
    bounce: alloc::boxed::Box<[u8]>,
    /// A request was submitted and not yet completed.
    in_flight: bool,
}

/// One virtio-blk disk.
pub struct Disk {
    name: String,
    /// The device's serial number (QEMU's `serial=`), empty if it has none.
    serial: String,
    sectors: u64,
    readonly: bool,
    /// The device, locked briefly by a requester and by the poller.
    dev: spin::Mutex<Device>,
    /// Requests are served one at a time: the thread holding this turn owns
    /// the queue until its request completes.
    turn: kiln_sched::Mutex<()>,
    /// The thread whose request is in flight waits here.
    done: kiln_sched::WaitQueue,
    /// Whether the device has a write cache to flush (VIRTIO_BLK_F_FLUSH;
    /// without it a write is durable when it completes).
    flush_cache: bool,
    /// Writes and cache flushes sent, for the summary at exit.
    writes: core::sync::atomic::AtomicU64,
    flushes: core::sync::atomic::AtomicU64,
}

static DISKS: spin::Mutex<Vec<Arc<Disk>>> = spin::Mutex::new(Vec::new());
static IRQ: AtomicBool = AtomicBool::new(false);

/// Every disk found at boot.
pub fn disks() -> Vec<Arc<Disk>> {
    DISKS.lock().clone()
}

/// The disk called `name` (`vda`, `vdb`, ...), or whose serial number is
/// `name` (the host tool names volumes' disks by serial).
pub fn disk(name: &str) -> Option<Arc<Disk>> {
    let all = DISKS.lock();
    all.iter()
        .find(|d| d.name == name)
        .or_else(|| {
            all.iter()
                .find(|d| !d.serial.is_empty() && d.serial == name)
        })
        .cloned()
}

/// The name of the `i`th disk: vda, vdb, ... vdz, vdaa, ...
pub fn disk_name(mut i: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    s.reverse();
    format!("vd{}", String::from_utf8(s).unwrap_or_default())
}

impl Disk {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    fn check(&self, sector: u64, len: usize) -> Result<(), Error> {
        let count = (len / SECTOR_SIZE) as u64;
        if len % SECTOR_SIZE != 0
            || sector
                .checked_add(count)
                .is_none_or(|end| end > self.sectors)
        {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check(sector, buf.len())?;
        let _turn = self.turn.lock();
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST).enumerate() {
            let at = sector + (i * MAX_REQUEST / SECTOR_SIZE) as u64;
            self.transfer(Op::Read(chunk), at)?;
        }
        Ok(())
    }

    /// Writes whole sectors from `buf` starting at `sector`.
    pub fn write(&self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        self.check(sector, buf.len())?;
        let _turn = self.turn.lock();
        for (i, chunk) in buf.chunks(MAX_REQUEST).enumerate() {
            let at = sector + (i * MAX_REQUEST / SECTOR_SIZE) as u64;
            self.transfer(Op::Write(chunk), at)?;
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Makes every finished write durable.
    pub fn flush(&self) -> Result<(), Error> {
        if self.readonly {
            return Ok(());
        }
        let _turn = self.turn.lock();
        self.dev.lock().blk.flush().map_err(|_| Error::Device)?;
        if self.flush_cache {
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes and cache flushes sent to the device since boot.
    pub fn requests(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
        )
    }

    /// One request (at most MAX_REQUEST bytes): submit, block until the
    /// device used it, complete.
    fn transfer(&self, op: Op<'_>, sector: u64) -> Result<(), Error> {
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        let len = match &op {
            Op::Read(b) => b.len(),
            Op::Write(b) => b.len(),
        };
        let token = {
            let mut d = self.dev.lock();
            let Device {
                blk,
                bounce,
                in_flight,
            } = &mut *d;
            let buf = &mut bounce[..len];
            // SAFETY: `req` and `resp` live on this frame and the bounce
            // buffer in the device until the request is completed below
            // (this function does not return before; `turn` keeps other
            // requests out of the bounce buffer meanwhile).
            let t = unsafe {
                match &op {
                    Op::Read(_) => blk.read_blocks_nb(sector as usize, &mut req, buf, &mut resp),
                    Op::Write(b) => {
                        buf.copy_from_slice(b);
                        blk.write_blocks_nb(sector as usize, &mut req, buf, &mut resp)
                    }
                }
            };
            let t = t.map_err(|_| Error::Device)?;
            *in_flight = true;
            t
        };
        let mut op = op;
        loop {
            {
                let mut d = self.dev.lock();
                let Device {
                    blk,
                    bounce,
                    in_flight,
                } = &mut *d;
                if blk.peek_used() == Some(token) {
                    *in_flight = false;
                    let buf = &mut bounce[..len];
                    // SAFETY: the same buffers as at submission.
                    let r = unsafe {
                        match &mut op {
                            Op::Read(_) => blk.complete_read_blocks(token, &req, buf, &mut resp),
                            Op::Write(_) => blk.complete_write_blocks(token, &req, buf, &mut resp),
                        }
                    };
                    r.map_err(|_| Error::Device)?;
                    if let Op::Read(b) = &mut op {
                        b.copy_from_slice(buf);
                    }
                    return Ok(());
                }
            }
            // Nothing preempts this thread between the look above and the
            // wait, so the poller's wake cannot come in between; the
            // timeout only guards against a lost interrupt.
            self.done
                .wait_timeout(core::time::Duration::from_millis(10));
        }
    }
}

enum Op<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// The scheduler's view of the disks: acknowledge their interrupts and wake
/// the thread whose request finished.
fn poller() -> kiln_sched::PollOutcome {
    let irq = IRQ.load(Ordering::Relaxed);
    let mut out = kiln_sched::PollOutcome::default();
    let mut waiting = false;
    for disk in DISKS.lock().iter() {
        let mut d = disk.dev.lock();
        if irq {
            d.blk.ack_interrupt();
            if let Some(p) = kiln_boot::platform() {
                p.device_irq_done();
            }
        }
        if d.in_flight {
            if d.blk.peek_used().is_some() {
                drop(d);
                disk.done.wake_all();
                out.active = true;
            } else {
                waiting = true;
            }
        }
    }
    if waiting && !irq {
        out.within_us = Some(20);
    }
    out
}

/// Boot-time init (lib/boot runs it when LIBBLK is selected): brings up
/// every virtio-blk device.
pub fn kiln_init() -> Result<(), String> {
    let want_irq = option_env!("KILN_CONFIG_LIBVIRTIO_IRQ") == Some("y");
    let mut found = Vec::new();
    let mut wakes = true;
    for t in kiln_virtio::devices(DeviceType::Block) {
        wakes &= t.wakes_cpu();
        let name = disk_name(found.len());
        let refused = kiln_virtio::refused();
        // VIRTIO_BLK_F_FLUSH, which the driver takes when offered.
        let mut t = t;
        let flush_cache = t.read_device_features() & (1 << 9) != 0;
        let mut blk = VirtIOBlk::<KilnHal, Transport>::new(t)
            .map_err(|e| format!("blk: {name}: virtio-blk: {e:?}"))?;
        if kiln_virtio::refused() != refused {
            return Err(format!(
                "blk: {name}: the device refused the features Kiln asked for"
            ));
        }
        let sectors = blk.capacity();
        let readonly = blk.readonly();
        blk.disable_interrupts();
        let mut id = [0u8; 20];
        let serial = match blk.device_id(&mut id) {
            Ok(n) => core::str::from_utf8(&id[..n.min(20)])
                .unwrap_or("")
                .trim_end_matches('\0')
                .into(),
            Err(_) => String::new(),
        };
        kiln_console::log!(
            kiln_console::Level::Info,
            "blk: {name}{}: {} sectors ({} MiB){}",
            if serial.is_empty() {
                String::new()
            } else {
                format!(" ({serial})")
            },
            sectors,
            sectors * SECTOR_SIZE as u64 >> 20,
            if readonly { ", read-only" } else { "" }
        );
        found.push(Arc::new(Disk {
            name,
            serial,
            sectors,
            readonly,
            dev: spin::Mutex::new(Device {
                blk,
                in_flight: false,
                bounce: alloc::vec![0u8; MAX_REQUEST].into_boxed_slice(),
            }),
            turn: kiln_sched::Mutex::new(()),
            done: kiln_sched::WaitQueue::for_device(),
            flush_cache,
            writes: core::sync::atomic::AtomicU64::new(0),
            flushes: core::sync::atomic::AtomicU64::new(0),
        }));
    }
    if found.is_empty() {
        kiln_console::log!(kiln_console::Level::Debug, "blk: no block device");
        return Ok(());
    }
    // Interrupts only when every disk's wakes the CPU (MSI-X on PCI, a
    // routed line on virtio-mmio); otherwise all are polled.
    let irq = want_irq && wakes;
    if irq {
        for d in &found {
            d.dev.lock().blk.enable_interrupts();
        }
    }
    IRQ.store(irq, Ordering::Relaxed);
    kiln_console::log!(
        kiln_console::Level::Info,
        "blk: {} disk{}, {}",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        if irq { "interrupts" } else { "polled" }
    );
    *DISKS.lock() = found;
    kiln_sched::add_poller(poller);
    kiln_boot::at_exit(summary);
    Ok(())
}

/// At exit: what each disk written to was sent (before the file systems'
/// last sync), so a run shows that fsync reached the device.
fn summary() {
    let Some(disks) = DISKS.try_lock() else {
        return;
    };
    for d in disks.iter() {
        let (writes, flushes) = d.requests();
        if writes > 0 {
            kiln_console::log!(
                kiln_console::Level::Info,
                "blk: {}: {writes} writes, {}",
                d.name,
                if d.flush_cache {
                    format!("{flushes} cache flushes")
                } else {
                    String::from("no write cache to flush")
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_named_as_linux_names_them() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(1), "vdb");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
        assert_eq!(disk_name(26 + 26 * 26), "vdaaa");
    }
}
