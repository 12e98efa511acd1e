//! FAT12/16/32 volumes on block devices, in the VFS.
//!
//! The format is hadris-fat's (long file names, FSInfo, the clean bit);
//! this crate adapts its node interface to the VFS's inode calls and mounts
//! the volumes `vfs.fstab=` names (`vda:/data:vfat[:ro|nofail]`).
//!
//! The contract, as a program sees it through the VFS:
//! - Files and directories, rename (replacing a file or an empty directory),
//!   truncate, statfs (the volume's clusters), ENOSPC when full, EROFS on a
//!   read-only mount or disk. FAT has no symlinks, hard links or Unix
//!   permissions: `symlink` and `link` fail with EPERM (as on Linux's vfat),
//!   modes read 0755 (directories) and 0644 (files) and `chmod` is accepted
//!   and forgotten.
//! - Writes go to the device at once, except a file's size and time, which
//!   are published when its last descriptor closes or at `fsync`. `fsync`,
//!   `fdatasync`, `O_SYNC`/`O_DSYNC` writes and `sync` write what is pending
//!   and flush the device (virtio-blk's flush), so what they acknowledged
//!   survives a power cut. A volume cut off between two syncs is at worst
//!   left with lost clusters or a file shorter than what was written, which
//!   fsck.fat repairs.
//! - Removing the last name of a file that is still open fails with EBUSY
//!   (FAT has no place to keep a nameless file).
//! - A volume that is not FAT, or is corrupt, is refused at mount with the
//!   reason; the boot stops, unless the entry says `nofail`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use hadris_fat::sync::FatFs;
use hadris_fs::{DirCursor, ErrorKind, MountOptions, Name, NodeId, OpenMode, RenameMode, SetAttr};
use hadris_storage::{BlockIndex, BlockSize};
use kiln_blk::Disk;
use kiln_vfs::{DirEntry, Error, FileSystem, FileType, Ino, Result, Stat, StatFs};

/// A disk as hadris-storage sees it.
pub struct Device(Arc<Disk>);

impl hadris_io::ErrorType for Device {
    type Error = kiln_blk::Error;
}

fn device_error<T>(
    r: core::result::Result<T, kiln_blk::Error>,
) -> core::result::Result<T, hadris_io::Error<kiln_blk::Error>> {
    r.map_err(|e| match e {
        kiln_blk::Error::ReadOnly => hadris_io::Error::new(ErrorKind::ReadOnly, "read-only disk"),
        e => hadris_io::Error::device(e, "virtio-blk request failed"),
    })
}

impl hadris_storage::sync::BlockDevice for Device {
    fn block_size(&self) -> BlockSize {
        BlockSize::new(kiln_blk::SECTOR_SIZE as u32).expect("512 is a block size")
    }

    fn block_count(&self) -> u64 {
        self.0.sectors()
    }

    fn writable(&self) -> bool {
        !self.0.readonly()
    }

    fn read_blocks(
        &mut self,
        first: BlockIndex,
        buf: &mut [u8],
    ) -> core::result::Result<(), hadris_io::Error<Self::Error>> {
        device_error(self.0.read(first.get(), buf))
    }

    fn write_blocks(
        &mut self,
        first: BlockIndex,
        buf: &[u8],
    ) -> core::result::Result<(), hadris_io::Error<Self::Error>> {
        device_error(self.0.write(first.get(), buf))
    }

    fn flush(&mut self) -> core::result::Result<(), hadris_io::Error<Self::Error>> {
        device_error(self.0.flush())
    }
}

/// The wall clock for new and changed entries: the host's time at boot
/// (`clock.epoch=`, which `kiln run` passes) plus the time since.
struct WallClock;

impl hadris_fs::Clock for WallClock {
    fn now(&self) -> hadris_fs::DateTime {
        static EPOCH: spin::Once<i64> = spin::Once::new();
        let epoch = *EPOCH.call_once(|| {
            kiln_boot::param("clock.epoch")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        });
        let p = kiln_boot::platform();
        let ticks = p.map_or(0, |p| p.ticks());
        let secs =
            kiln_boot::ticks_to_us(ticks, p.and_then(|p| p.tick_hz())).unwrap_or(0) / 1_000_000;
        hadris_fs::DateTime::from_unix_seconds(epoch + secs as i64)
            .unwrap_or(hadris_fs::DateTime::UNIX_EPOCH)
    }
}

static CLOCK: WallClock = WallClock;

fn error<E>(e: hadris_io::Error<E>) -> Error {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::InvalidHandle => Error::NotFound,
        ErrorKind::AlreadyExists => Error::Exists,
        ErrorKind::NotADirectory => Error::NotDir,
        ErrorKind::IsADirectory => Error::IsDir,
        ErrorKind::DirectoryNotEmpty => Error::NotEmpty,
        ErrorKind::NoSpace => Error::NoSpace,
        ErrorKind::ReadOnly => Error::ReadOnly,
        ErrorKind::InvalidInput => Error::Invalid,
        ErrorKind::NameTooLong => Error::NameTooLong,
        ErrorKind::FileTooLarge => Error::TooBig,
        ErrorKind::Symlink => Error::Loop,
        ErrorKind::Busy => Error::Busy,
        ErrorKind::Unsupported => Error::NotPermitted,
        _ => Error::Io,
    }
}

struct Inner {
    fs: FatFs<Device>,
    /// Nodes this adapter holds one pin of (the VFS keeps inode numbers
    /// without saying when it is done with them).
    pinned: BTreeSet<u64>,
    /// Open counts of nodes open through the VFS (`retain`/`release`).
    open: BTreeMap<u64, u32>,
}

/// A mounted FAT volume.
pub struct FatVolume {
    inner: kiln_sched::Mutex<Inner>,
    read_only: bool,
}

fn node(ino: Ino) -> Result<NodeId> {
    NodeId::new(ino).ok_or(Error::NotFound)
}

impl Inner {
    fn pin(&mut self, id: NodeId) -> Ino {
        if !self.pinned.insert(id.get()) {
            self.fs.forget(id, 1);
        }
        id.get()
    }

    /// Runs `f` with `ino` open: files opened through the VFS already are;
    /// others (a path-based truncate, a read by the kernel) are opened for
    /// the call.
    fn with_open<T>(
        &mut self,
        ino: Ino,
        mode: OpenMode,
        f: impl FnOnce(
            &mut FatFs<Device>,
            NodeId,
        ) -> core::result::Result<T, hadris_io::Error<kiln_blk::Error>>,
    ) -> Result<T> {
        let id = node(ino)?;
        if self.open.contains_key(&ino) {
            return f(&mut self.fs, id).map_err(error);
        }
        self.fs.open(id, mode).map_err(error)?;
        let r = f(&mut self.fs, id);
        let closed = self.fs.close(id);
        let v = r.map_err(error)?;
        closed.map_err(error)?;
        Ok(v)
    }
}

impl FatVolume {
    /// Mounts the FAT volume on `disk`.
    pub fn mount(disk: Arc<Disk>, read_only: bool) -> core::result::Result<FatVolume, String> {
        let read_only = read_only || disk.readonly();
        let mut options = MountOptions::new().with_clock(&CLOCK);
        if read_only {
            options = options.read_only();
        }
        let name = disk.name().to_string();
        let fs = FatFs::mount(Device(disk), options).map_err(|e| {
            let e: hadris_fs::Error<kiln_blk::Error> = e.into();
            match e.kind() {
                ErrorKind::NotRecognized => format!(
                    "{name}: not a FAT file system (make one with `kiln volume create`, or mkfs.fat on the host)"
                ),
                ErrorKind::Corrupt => format!("{name}: the FAT file system is damaged ({e}); repair it with fsck.fat on the host"),
                _ => format!("{name}: cannot mount: {e}"),
            }
        })?;
        // Bounded read caches (write-through: nothing is deferred, so crash
        // safety is as without): positions in cluster chains, so a read at
        // an offset does not walk the chain from its start; FAT and
        // directory blocks (64 x 512 B); a directory's first entries.
        let fs = fs.with_cache(
            hadris_fat::CacheOptions::new()
                .with_chain_positions(256)
                .with_blocks(64)
                .with_directory_entries(128)
                .with_directory_hint(true),
        );
        Ok(FatVolume {
            inner: kiln_sched::Mutex::new(Inner {
                fs,
                pinned: BTreeSet::new(),
                open: BTreeMap::new(),
            }),
            read_only,
        })
    }

    fn mode(&self) -> OpenMode {
        if self.read_only {
            OpenMode::Read
        } else {
            OpenMode::Write
        }
    }
}

fn name_of(s: &str) -> &Name {
    Name::new(s)
}

impl FileSystem for FatVolume {
    fn name(&self) -> &'static str {
        "vfat"
    }

    fn root(&self) -> Ino {
        self.inner.lock().fs.root().get()
    }

    fn lookup(&self, dir: Ino, name: &str) -> Result<Ino> {
        let mut g = self.inner.lock();
        let id = g.fs.lookup(node(dir)?, name_of(name)).map_err(error)?;
        Ok(g.pin(id))
    }

    fn stat(&self, ino: Ino) -> Result<Stat> {
        let mut g = self.inner.lock();
        let m = g.fs.stat(node(ino)?).map_err(error)?;
        let kind = if m.file_type().is_dir() {
            FileType::Dir
        } else {
            FileType::File
        };
        Ok(Stat {
            ino,
            kind,
            mode: if kind == FileType::Dir { 0o755 } else { 0o644 },
            size: m.len(),
            blocks: m.len().div_ceil(512),
            nlink: m.nlink().max(1) as u32,
            mtime: m.modified().map_or(0, |t| t.unix_seconds().max(0) as u64),
        })
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner
            .lock()
            .with_open(ino, OpenMode::Read, |fs, id| fs.read(id, offset, buf))
    }

    fn write(&self, ino: Ino, offset: u64, buf: &[u8]) -> Result<usize> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.inner
            .lock()
            .with_open(ino, OpenMode::Write, |fs, id| fs.write(id, offset, buf))
    }

    fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.inner
            .lock()
            .with_open(ino, OpenMode::Write, |fs, id| fs.truncate(id, size))
    }

    fn create(&self, dir: Ino, name: &str, kind: FileType, _mode: u32) -> Result<Ino> {
        let mut g = self.inner.lock();
        let d = node(dir)?;
        let attrs = SetAttr::new();
        let id = match kind {
            FileType::Dir => g.fs.mkdir(d, name_of(name), &attrs),
            FileType::File => g.fs.create(d, name_of(name), &attrs),
            _ => return Err(Error::NotPermitted),
        }
        .map_err(error)?;
        Ok(g.pin(id))
    }

    fn unlink(&self, dir: Ino, name: &str) -> Result<()> {
        self.inner
            .lock()
            .fs
            .unlink(node(dir)?, name_of(name))
            .map_err(error)
    }

    fn rmdir(&self, dir: Ino, name: &str) -> Result<()> {
        self.inner
            .lock()
            .fs
            .rmdir(node(dir)?, name_of(name))
            .map_err(error)
    }

    fn rename(&self, from_dir: Ino, from: &str, to_dir: Ino, to: &str) -> Result<()> {
        self.inner
            .lock()
            .fs
            .rename(
                node(from_dir)?,
                name_of(from),
                node(to_dir)?,
                name_of(to),
                RenameMode::Replace,
            )
            .map_err(error)
    }

    fn retain(&self, ino: Ino) {
        let mut g = self.inner.lock();
        let Ok(id) = node(ino) else { return };
        if let Some(n) = g.open.get_mut(&ino) {
            *n += 1;
            return;
        }
        // Directories are not opened in hadris-fat's sense; files are,
        // for as long as a descriptor refers to them.
        if g.fs.open(id, self.mode()).is_ok() {
            g.open.insert(ino, 1);
        }
    }

    fn release(&self, ino: Ino) {
        let mut g = self.inner.lock();
        let Some(n) = g.open.get_mut(&ino) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            g.open.remove(&ino);
            if let Ok(id) = node(ino) {
                if let Err(e) = g.fs.close(id) {
                    kiln_console::log!(kiln_console::Level::Warn, "fatfs: closing a file: {e}");
                }
            }
        }
    }

    fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        let mut g = self.inner.lock();
        let d = node(dir)?;
        let mut out = Vec::new();
        let mut at = DirCursor::START;
        while let Some(e) = g.fs.readdir(d, at).map_err(error)? {
            at = e.next_cursor();
            let Ok(name) = e.name().to_str() else {
                continue;
            };
            out.push(DirEntry {
                name: name.to_string(),
                ino: e.node().get(),
                kind: if e.file_type().is_dir() {
                    FileType::Dir
                } else {
                    FileType::File
                },
            });
        }
        Ok(out)
    }

    fn set_mode(&self, _ino: Ino, _mode: u32) -> Result<()> {
        Ok(())
    }

    fn sync(&self, ino: Option<Ino>) -> Result<()> {
        let mut g = self.inner.lock();
        if self.read_only {
            return Ok(());
        }
        match ino {
            Some(i) if g.open.contains_key(&i) => g.fs.fsync(node(i)?).map_err(error),
            _ => g.fs.sync().map_err(error),
        }
    }

    fn statfs(&self) -> Result<StatFs> {
        let mut g = self.inner.lock();
        let s = g.fs.statfs().map_err(error)?;
        Ok(StatFs {
            magic: kiln_vfs::MSDOS_MAGIC,
            block_size: s.block_size() as u64,
            blocks: s.total_blocks(),
            free: s.free_blocks(),
            files: 0,
            free_files: 0,
            name_max: 255,
            read_only: self.read_only,
        })
    }
}

/// Every mounted volume, for the sync at exit.
static MOUNTED: spin::Mutex<Vec<Arc<FatVolume>>> = spin::Mutex::new(Vec::new());

/// At exit: every volume writes what it holds and is marked clean, so the
/// host's fsck finds it unmounted properly. A volume whose lock the exiting
/// thread holds (it exits from inside a file system call) is left as it is.
fn sync_at_exit() {
    let all = MOUNTED.lock().clone();
    for v in all {
        if v.read_only {
            continue;
        }
        match v.inner.try_lock() {
            Some(mut g) => {
                if let Err(e) = g.fs.sync() {
                    kiln_console::log!(
                        kiln_console::Level::Warn,
                        "fatfs: writing a volume at exit: {e}"
                    );
                }
            }
            None => kiln_console::log!(
                kiln_console::Level::Warn,
                "fatfs: a volume was busy at exit and is left unsynced"
            ),
        }
    }
}

/// Mounts `entry` (a vfat entry of vfs.fstab=).
fn mount(e: &kiln_vfs::fstab::Entry) -> core::result::Result<(), String> {
    let vfs = kiln_vfs::vfs();
    let disk = kiln_blk::disk(&e.source).ok_or_else(|| {
        let have: Vec<String> = kiln_blk::disks()
            .iter()
            .map(|d| d.name().to_string())
            .collect();
        format!(
            "no disk {} (this machine has {})",
            e.source,
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        )
    })?;
    vfs.prepare_mount_point(&e.destination)?;
    let fs = Arc::new(FatVolume::mount(disk.clone(), e.read_only)?);
    let ro = fs.read_only;
    let stats = fs.statfs().ok();
    vfs.mount(&e.destination, fs.clone())
        .map_err(|err| format!("{}: {err}", e.destination))?;
    let mut all = MOUNTED.lock();
    if all.is_empty() {
        kiln_boot::at_exit(sync_at_exit);
    }
    all.push(fs);
    kiln_console::log!(
        kiln_console::Level::Info,
        "fatfs: {} on {}{}{}",
        e.source,
        e.destination,
        if ro { " (read-only)" } else { "" },
        stats.map_or(String::new(), |s| format!(
            ", {} of {} KiB free",
            s.free * s.block_size / 1024,
            s.blocks * s.block_size / 1024
        ))
    );
    Ok(())
}

/// Boot-time init: mounts the vfat entries of `vfs.fstab=`.
pub fn kiln_init() -> core::result::Result<(), String> {
    let Some(v) = kiln_boot::param("vfs.fstab") else {
        return Ok(());
    };
    let entries = kiln_vfs::fstab::parse(v)?;
    for e in entries
        .iter()
        .filter(|e| matches!(e.fstype.as_str(), "vfat" | "fat" | "msdos" | "fatfs"))
    {
        if let Err(why) = mount(e) {
            if e.optional {
                kiln_console::log!(
                    kiln_console::Level::Warn,
                    "fatfs: {} not mounted (nofail): {why}",
                    e.destination
                );
            } else {
                return Err(format!("fatfs: {}: {why}", e.destination));
            }
        }
    }
    Ok(())
}
