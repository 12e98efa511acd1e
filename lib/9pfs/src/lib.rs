//! Host folders in the VFS: a 9P2000.L client over virtio-9p (QEMU's
//! `-virtfs`), mounted from `vfs.fstab=` entries of type `9pfs`
//! (`TAG:/path:9pfs[:ro]`, TAG the device's mount tag).
//!
//! The contract, as a program sees it through the VFS:
//! - What the host's file system does: files, directories, symlinks, hard
//!   links, rename, truncate, chmod, statfs (the host's figures), its
//!   errors (ENOSPC, EACCES as EPERM, ...). Changes are on the host when
//!   the call returns; `fsync` asks the host to make an open file durable.
//! - Inode numbers are the server's (qid paths). A file the host changes
//!   behind the guest's back is seen at the next call: nothing is cached.
//! - A read-only mount refuses every change with EROFS.
//! - A request occupies the CPU until the host answers (virtio-drivers'
//!   queue waits by polling); host file operations take microseconds.
//!
//! Kiln's own client: the 9P crates on crates.io are servers or need std.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod proto;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use kiln_vfs::{DirEntry, Error, FileSystem, FileType, Ino, Result, Stat, StatFs};
use proto::{Msg, Qid, Reply};

#[cfg(target_os = "none")]
mod device {
    use alloc::string::String;
    use alloc::vec::Vec;
    use kiln_virtio::virtio_drivers::device::common::Feature;
    use kiln_virtio::virtio_drivers::queue::VirtQueue;
    use kiln_virtio::virtio_drivers::transport::{DeviceType, SomeTransport, Transport};
    use kiln_virtio::KilnHal;

    type Tr = kiln_virtio::Stepwise<SomeTransport<'static>>;

    /// One virtio-9p device: one request at a time on its only queue.
    pub struct Device {
        transport: Tr,
        queue: VirtQueue<KilnHal, 16>,
        pub tag: String,
        /// Kernel buffers (identity-mapped, as the device needs) for the
        /// request and the reply.
        req: Vec<u8>,
        resp: Vec<u8>,
    }

    impl Device {
        /// Every virtio-9p device, with its mount tag.
        pub fn all(buf: usize) -> Vec<Device> {
            let mut out = Vec::new();
            for t in kiln_virtio::devices(DeviceType::_9P) {
                let mut transport = t;
                transport.begin_init(Feature::VERSION_1);
                let Ok(mut queue) = VirtQueue::new(&mut transport, 0, false, false) else {
                    continue;
                };
                transport.finish_init();
                // Replies are waited for by polling: no interrupts.
                queue.set_dev_notify(false);
                let tag = transport
                    .read_consistent(|| {
                        let n: u16 = transport.read_config_space(0)?;
                        let mut b = Vec::new();
                        for i in 0..n as usize {
                            b.push(transport.read_config_space::<u8>(2 + i)?);
                        }
                        Ok(b)
                    })
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                out.push(Device {
                    transport,
                    queue,
                    tag,
                    req: vec![0; buf],
                    resp: vec![0; buf],
                });
            }
            out
        }

        /// Sends `msg`, returns the reply's bytes.
        pub fn request(&mut self, msg: &[u8]) -> Result<&[u8], ()> {
            if msg.len() > self.req.len() {
                return Err(());
            }
            self.req[..msg.len()].copy_from_slice(msg);
            let n = self
                .queue
                .add_notify_wait_pop(
                    &[&self.req[..msg.len()]],
                    &mut [&mut self.resp[..]],
                    &mut self.transport,
                )
                .map_err(|_| ())? as usize;
            let _ = self.transport.ack_interrupt();
            Ok(&self.resp[..n.min(self.resp.len())])
        }
    }
    use alloc::vec;
}

#[cfg(not(target_os = "none"))]
mod device {
    /// Host builds have no devices.
    pub struct Device {
        pub tag: alloc::string::String,
    }
    impl Device {
        pub fn all(_buf: usize) -> alloc::vec::Vec<Device> {
            alloc::vec::Vec::new()
        }
        pub fn request(&mut self, _msg: &[u8]) -> Result<&[u8], ()> {
            Err(())
        }
    }
}

use device::Device;

/// Largest message: 64 KiB of data and the I/O header.
const MSIZE: usize = 64 * 1024 + proto::IO_HEADER;

fn errno(e: proto::Error) -> Error {
    match e {
        proto::Error::Errno(n) => match n {
            1 | 13 => Error::NotPermitted,
            2 => Error::NotFound,
            9 => Error::BadFd,
            16 => Error::Busy,
            17 => Error::Exists,
            18 => Error::CrossDevice,
            20 => Error::NotDir,
            21 => Error::IsDir,
            22 => Error::Invalid,
            27 => Error::TooBig,
            28 | 122 => Error::NoSpace,
            30 => Error::ReadOnly,
            36 => Error::NameTooLong,
            39 => Error::NotEmpty,
            40 => Error::Loop,
            _ => Error::Io,
        },
        proto::Error::Malformed => Error::Io,
    }
}

struct Node {
    /// A fid walked to the node (not open).
    fid: u32,
    /// A fid open for I/O, and whether it was opened for writing.
    io: Option<(u32, bool)>,
    /// Descriptors open on it through the VFS.
    refs: u32,
}

struct Client {
    dev: Device,
    msize: usize,
    next_fid: u32,
    nodes: BTreeMap<u64, Node>,
}

impl Client {
    fn call(&mut self, m: Msg, kind: u8) -> Result<Vec<u8>> {
        let msg = m.done();
        let reply = self.dev.request(&msg).map_err(|_| Error::Io)?.to_vec();
        Reply::parse(&reply, kind).map_err(errno)?;
        Ok(reply)
    }

    fn fid(&mut self) -> u32 {
        self.next_fid += 1;
        self.next_fid
    }

    fn clunk(&mut self, fid: u32) {
        let _ = self.call(Msg::new(proto::TCLUNK, 1).u32(fid), proto::TCLUNK);
    }

    /// Walks from `from` by `names` (none: a copy of `from`, whose qid is
    /// left default) to a new fid.
    fn walk(&mut self, from: u32, names: &[&str]) -> Result<(u32, Qid)> {
        let new = self.fid();
        let mut m = Msg::new(proto::TWALK, 1)
            .u32(from)
            .u32(new)
            .u16(names.len() as u16);
        for n in names {
            m = m.str(n);
        }
        let reply = self.call(m, proto::TWALK)?;
        let mut r = Reply::parse(&reply, proto::TWALK).map_err(errno)?;
        let n = r.u16().map_err(errno)?;
        if (n as usize) < names.len() {
            // A partial walk leaves no new fid.
            return Err(Error::NotFound);
        }
        // A copy (no names) has no qid in the reply: callers use only the fid.
        let mut qid = Qid::default();
        for _ in 0..n {
            qid = r.qid().map_err(errno)?;
        }
        Ok((new, qid))
    }

    fn getattr(&mut self, fid: u32) -> Result<proto::Attr> {
        let reply = self.call(
            Msg::new(proto::TGETATTR, 1)
                .u32(fid)
                .u64(proto::GETATTR_BASIC),
            proto::TGETATTR,
        )?;
        let mut r = Reply::parse(&reply, proto::TGETATTR).map_err(errno)?;
        proto::getattr(&mut r).map_err(errno)
    }

    fn node(&self, ino: Ino) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Error::NotFound)
    }

    /// Records a node reached by `fid`. A node known by the same qid path
    /// and still open keeps its fids (an open file's inode is not reused);
    /// otherwise the fresh fid replaces the old ones, which may belong to a
    /// removed file whose inode number the host gave to this one.
    fn remember(&mut self, fid: u32, qid: Qid) -> Ino {
        match self.nodes.get_mut(&qid.path) {
            Some(n) if n.refs > 0 => self.clunk(fid),
            Some(n) => {
                let old = core::mem::replace(
                    n,
                    Node {
                        fid,
                        io: None,
                        refs: 0,
                    },
                );
                self.clunk(old.fid);
                if let Some((f, _)) = old.io {
                    self.clunk(f);
                }
            }
            None => {
                self.nodes.insert(
                    qid.path,
                    Node {
                        fid,
                        io: None,
                        refs: 0,
                    },
                );
            }
        }
        qid.path
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Result<()> {
        self.call(
            Msg::new(proto::TLOPEN, 1).u32(fid).u32(flags),
            proto::TLOPEN,
        )
        .map(|_| ())
    }

    /// A fid of `ino` open for reading (and writing when `write`).
    fn io_fid(&mut self, ino: Ino, write: bool) -> Result<u32> {
        let n = self.node(ino)?;
        if let Some((fid, w)) = n.io {
            if w || !write {
                return Ok(fid);
            }
        }
        let (base, old) = (n.fid, n.io);
        let (fid, _) = self.walk(base, &[])?;
        let flags = if write { 2 } else { 0 };
        if let Err(e) = self.lopen(fid, flags) {
            self.clunk(fid);
            return Err(e);
        }
        if let Some((o, _)) = old {
            self.clunk(o);
        }
        self.nodes.get_mut(&ino).ok_or(Error::NotFound)?.io = Some((fid, write));
        Ok(fid)
    }

    /// Closes the I/O fid of a node no descriptor refers to any more.
    fn settle(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            if n.refs == 0 {
                if let Some((fid, _)) = n.io.take() {
                    self.clunk(fid);
                }
            }
        }
    }

    fn setattr(&mut self, fid: u32, valid: u32, mode: u32, size: u64) -> Result<()> {
        let m = Msg::new(proto::TSETATTR, 1)
            .u32(fid)
            .u32(valid)
            .u32(mode)
            .u32(0)
            .u32(0)
            .u64(size)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0);
        self.call(m, proto::TSETATTR).map(|_| ())
    }
}

/// A mounted host folder.
pub struct NinePFs {
    client: kiln_sched::Mutex<Client>,
    root: Ino,
    read_only: bool,
}

impl NinePFs {
    /// Attaches to `dev`'s exported folder.
    fn attach(dev: Device, read_only: bool) -> core::result::Result<NinePFs, String> {
        let mut c = Client {
            dev,
            msize: MSIZE,
            next_fid: 0,
            nodes: BTreeMap::new(),
        };
        let reply = c
            .call(
                Msg::new(proto::TVERSION, !0)
                    .u32(MSIZE as u32)
                    .str("9P2000.L"),
                proto::TVERSION,
            )
            .map_err(|e| format!("the 9P version exchange failed: {e}"))?;
        let mut r = Reply::parse(&reply, proto::TVERSION)
            .map_err(|_| String::from("a malformed Rversion"))?;
        let msize = r.u32().map_err(|_| String::from("a malformed Rversion"))? as usize;
        let version = r.str().map_err(|_| String::from("a malformed Rversion"))?;
        if version != "9P2000.L" {
            return Err(format!("the server speaks {version}, not 9P2000.L"));
        }
        if msize < 4096 {
            return Err(format!("the server's message size {msize} is too small"));
        }
        c.msize = msize.min(MSIZE);
        let root_fid = c.fid();
        let reply = c
            .call(
                Msg::new(proto::TATTACH, 1)
                    .u32(root_fid)
                    .u32(proto::NOFID)
                    .str("root")
                    .str("")
                    .u32(0),
                proto::TATTACH,
            )
            .map_err(|e| format!("attaching to the shared folder failed: {e}"))?;
        let qid = Reply::parse(&reply, proto::TATTACH)
            .and_then(|mut r| r.qid())
            .map_err(|_| String::from("a malformed Rattach"))?;
        c.nodes.insert(
            qid.path,
            Node {
                fid: root_fid,
                io: None,
                refs: 0,
            },
        );
        Ok(NinePFs {
            client: kiln_sched::Mutex::new(c),
            root: qid.path,
            read_only,
        })
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & 0o170000 {
        0o040000 => FileType::Dir,
        0o120000 => FileType::Symlink,
        0o020000 => FileType::CharDevice,
        _ => FileType::File,
    }
}

impl FileSystem for NinePFs {
    fn name(&self) -> &'static str {
        "9pfs"
    }

    fn root(&self) -> Ino {
        self.root
    }

    fn lookup(&self, dir: Ino, name: &str) -> Result<Ino> {
        let mut c = self.client.lock();
        let d = c.node(dir)?.fid;
        let (fid, qid) = c.walk(d, &[name])?;
        Ok(c.remember(fid, qid))
    }

    fn stat(&self, ino: Ino) -> Result<Stat> {
        let mut c = self.client.lock();
        let fid = c.node(ino)?.fid;
        let a = c.getattr(fid)?;
        Ok(Stat {
            ino,
            kind: kind_of(a.mode),
            mode: a.mode & 0o7777,
            size: a.size,
            blocks: a.blocks,
            nlink: a.nlink.max(1) as u32,
            mtime: a.mtime,
        })
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut c = self.client.lock();
        let fid = c.io_fid(ino, false)?;
        let chunk = c.msize - proto::IO_HEADER;
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(chunk);
            let reply = c.call(
                Msg::new(proto::TREAD, 1)
                    .u32(fid)
                    .u64(offset + done as u64)
                    .u32(want as u32),
                proto::TREAD,
            )?;
            let mut r = Reply::parse(&reply, proto::TREAD).map_err(errno)?;
            let n = (r.u32().map_err(errno)? as usize).min(want);
            let data = r.bytes(n).map_err(errno)?;
            buf[done..done + n].copy_from_slice(data);
            done += n;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    fn write(&self, ino: Ino, offset: u64, buf: &[u8]) -> Result<usize> {
        self.writable()?;
        let mut c = self.client.lock();
        let fid = c.io_fid(ino, true)?;
        let chunk = c.msize - proto::IO_HEADER;
        let mut done = 0;
        while done < buf.len() {
            let part = &buf[done..(done + chunk).min(buf.len())];
            let reply = c.call(
                Msg::new(proto::TWRITE, 1)
                    .u32(fid)
                    .u64(offset + done as u64)
                    .u32(part.len() as u32)
                    .bytes(part),
                proto::TWRITE,
            )?;
            let n = Reply::parse(&reply, proto::TWRITE)
                .and_then(|mut r| r.u32())
                .map_err(errno)? as usize;
            done += n.min(part.len());
            if n < part.len() {
                break;
            }
        }
        Ok(done)
    }

    fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        self.writable()?;
        let mut c = self.client.lock();
        let fid = c.node(ino)?.fid;
        c.setattr(fid, proto::SETATTR_SIZE, 0, size)
    }

    fn create(&self, dir: Ino, name: &str, kind: FileType, mode: u32) -> Result<Ino> {
        self.writable()?;
        let mut c = self.client.lock();
        let d = c.node(dir)?.fid;
        match kind {
            FileType::Dir => {
                c.call(
                    Msg::new(proto::TMKDIR, 1)
                        .u32(d)
                        .str(name)
                        .u32(mode & 0o7777)
                        .u32(0),
                    proto::TMKDIR,
                )?;
            }
            FileType::File => {
                // Tlcreate turns the fid it is given into the new file's.
                let (f, _) = c.walk(d, &[])?;
                // O_RDWR | O_CREAT | O_EXCL
                let r = c.call(
                    Msg::new(proto::TLCREATE, 1)
                        .u32(f)
                        .str(name)
                        .u32(0o302)
                        .u32(mode & 0o7777)
                        .u32(0),
                    proto::TLCREATE,
                );
                c.clunk(f);
                r?;
            }
            _ => return Err(Error::NotPermitted),
        }
        let (fid, qid) = c.walk(d, &[name])?;
        Ok(c.remember(fid, qid))
    }

    fn symlink(&self, dir: Ino, name: &str, target: &str) -> Result<Ino> {
        self.writable()?;
        let mut c = self.client.lock();
        let d = c.node(dir)?.fid;
        c.call(
            Msg::new(proto::TSYMLINK, 1)
                .u32(d)
                .str(name)
                .str(target)
                .u32(0),
            proto::TSYMLINK,
        )?;
        let (fid, qid) = c.walk(d, &[name])?;
        Ok(c.remember(fid, qid))
    }

    fn readlink(&self, ino: Ino) -> Result<String> {
        let mut c = self.client.lock();
        let fid = c.node(ino)?.fid;
        let reply = c.call(Msg::new(proto::TREADLINK, 1).u32(fid), proto::TREADLINK)?;
        Reply::parse(&reply, proto::TREADLINK)
            .and_then(|mut r| r.str())
            .map_err(errno)
    }

    fn link(&self, dir: Ino, name: &str, ino: Ino) -> Result<()> {
        self.writable()?;
        let mut c = self.client.lock();
        let (d, f) = (c.node(dir)?.fid, c.node(ino)?.fid);
        c.call(
            Msg::new(proto::TLINK, 1).u32(d).u32(f).str(name),
            proto::TLINK,
        )
        .map(|_| ())
    }

    fn unlink(&self, dir: Ino, name: &str) -> Result<()> {
        self.writable()?;
        let mut c = self.client.lock();
        let d = c.node(dir)?.fid;
        c.call(
            Msg::new(proto::TUNLINKAT, 1).u32(d).str(name).u32(0),
            proto::TUNLINKAT,
        )
        .map(|_| ())
    }

    fn rmdir(&self, dir: Ino, name: &str) -> Result<()> {
        self.writable()?;
        let mut c = self.client.lock();
        let d = c.node(dir)?.fid;
        c.call(
            Msg::new(proto::TUNLINKAT, 1)
                .u32(d)
                .str(name)
                .u32(proto::AT_REMOVEDIR),
            proto::TUNLINKAT,
        )
        .map(|_| ())
    }

    fn rename(&self, from_dir: Ino, from: &str, to_dir: Ino, to: &str) -> Result<()> {
        self.writable()?;
        let mut c = self.client.lock();
        let (a, b) = (c.node(from_dir)?.fid, c.node(to_dir)?.fid);
        c.call(
            Msg::new(proto::TRENAMEAT, 1)
                .u32(a)
                .str(from)
                .u32(b)
                .str(to),
            proto::TRENAMEAT,
        )
        .map(|_| ())
    }

    fn retain(&self, ino: Ino) {
        if let Some(n) = self.client.lock().nodes.get_mut(&ino) {
            n.refs += 1;
        }
    }

    fn release(&self, ino: Ino) {
        let mut c = self.client.lock();
        if let Some(n) = c.nodes.get_mut(&ino) {
            n.refs = n.refs.saturating_sub(1);
        }
        c.settle(ino);
    }

    fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        let mut c = self.client.lock();
        let d = c.node(dir)?.fid;
        let (fid, _) = c.walk(d, &[])?;
        // O_RDONLY | O_DIRECTORY
        if let Err(e) = c.lopen(fid, 0o200000) {
            c.clunk(fid);
            return Err(e);
        }
        let mut out = Vec::new();
        let mut offset = 0;
        let count = (c.msize - proto::HEADER - 4) as u32;
        let result = loop {
            let reply = match c.call(
                Msg::new(proto::TREADDIR, 1).u32(fid).u64(offset).u32(count),
                proto::TREADDIR,
            ) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let entries = Reply::parse(&reply, proto::TREADDIR).and_then(|mut r| {
                let n = r.u32()? as usize;
                proto::dirents(r.bytes(n)?)
            });
            match entries {
                Ok(e) if e.is_empty() => break Ok(()),
                Ok(e) => {
                    for (qid, next, kind, name) in e {
                        offset = next;
                        if name == "." || name == ".." {
                            continue;
                        }
                        let kind = match kind {
                            4 => FileType::Dir,
                            10 => FileType::Symlink,
                            2 => FileType::CharDevice,
                            _ => FileType::File,
                        };
                        out.push(DirEntry {
                            name,
                            ino: qid.path,
                            kind,
                        });
                    }
                }
                Err(e) => break Err(errno(e)),
            }
        };
        c.clunk(fid);
        result.map(|()| out)
    }

    fn set_mode(&self, ino: Ino, mode: u32) -> Result<()> {
        self.writable()?;
        let mut c = self.client.lock();
        let fid = c.node(ino)?.fid;
        c.setattr(fid, proto::SETATTR_MODE, mode & 0o7777, 0)
    }

    fn sync(&self, ino: Option<Ino>) -> Result<()> {
        let mut c = self.client.lock();
        let fids: Vec<u32> = match ino {
            Some(i) => c.node(i)?.io.map(|(f, _)| f).into_iter().collect(),
            None => c
                .nodes
                .values()
                .filter_map(|n| n.io.map(|(f, _)| f))
                .collect(),
        };
        for f in fids {
            c.call(Msg::new(proto::TFSYNC, 1).u32(f).u32(0), proto::TFSYNC)?;
        }
        Ok(())
    }

    fn statfs(&self) -> Result<StatFs> {
        let mut c = self.client.lock();
        let fid = c.node(self.root)?.fid;
        let reply = c.call(Msg::new(proto::TSTATFS, 1).u32(fid), proto::TSTATFS)?;
        let mut r = Reply::parse(&reply, proto::TSTATFS).map_err(errno)?;
        let (_kind, bsize) = (r.u32().map_err(errno)?, r.u32().map_err(errno)?);
        let (blocks, bfree, _bavail) = (
            r.u64().map_err(errno)?,
            r.u64().map_err(errno)?,
            r.u64().map_err(errno)?,
        );
        let (files, ffree) = (r.u64().map_err(errno)?, r.u64().map_err(errno)?);
        Ok(StatFs {
            magic: V9FS_MAGIC,
            block_size: bsize as u64,
            blocks,
            free: bfree,
            files,
            free_files: ffree,
            name_max: 255,
            read_only: self.read_only,
        })
    }
}

/// `statfs`'s magic number of a 9p mount (Linux's V9FS_MAGIC).
pub const V9FS_MAGIC: u64 = 0x0102_1997;

/// Boot-time init: mounts the 9pfs entries of `vfs.fstab=`.
pub fn kiln_init() -> core::result::Result<(), String> {
    let Some(v) = kiln_boot::param("vfs.fstab") else {
        return Ok(());
    };
    let entries = kiln_vfs::fstab::parse(v)?;
    let wanted: Vec<_> = entries
        .iter()
        .filter(|e| matches!(e.fstype.as_str(), "9pfs" | "9p"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut devices = Device::all(MSIZE);
    for e in wanted {
        let found = devices.iter().position(|d| d.tag == e.source);
        let r = match found {
            None => Err(format!(
                "no virtio-9p device with the tag {} (this machine has {})",
                e.source,
                if devices.is_empty() {
                    "none".to_string()
                } else {
                    devices
                        .iter()
                        .map(|d| d.tag.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Some(i) => kiln_vfs::vfs()
                .prepare_mount_point(&e.destination)
                .and_then(|()| NinePFs::attach(devices.remove(i), e.read_only))
                .and_then(|fs| {
                    kiln_vfs::vfs()
                        .mount(&e.destination, Arc::new(fs))
                        .map_err(|err| format!("{}: {err}", e.destination))
                }),
        };
        match r {
            Ok(()) => kiln_console::log!(
                kiln_console::Level::Info,
                "9pfs: {} on {}{}",
                e.source,
                e.destination,
                if e.read_only { " (read-only)" } else { "" }
            ),
            Err(why) if e.optional => {
                kiln_console::log!(
                    kiln_console::Level::Warn,
                    "9pfs: {} not mounted (nofail): {why}",
                    e.destination
                )
            }
            Err(why) => return Err(format!("9pfs: {}: {why}", e.destination)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_become_the_same_errno() {
        for n in [2u32, 17, 20, 21, 22, 28, 30, 36, 39] {
            assert_eq!(errno(proto::Error::Errno(n)).errno() as u32, n);
        }
        assert_eq!(errno(proto::Error::Errno(13)), Error::NotPermitted);
        assert_eq!(errno(proto::Error::Malformed), Error::Io);
    }
}
