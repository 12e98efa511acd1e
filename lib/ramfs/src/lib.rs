//! ramfs: a read-write file system in memory. Files are byte vectors,
//! directories are sorted maps of names to inodes; hard links and symlinks
//! work as on Linux. Memory comes from the kernel heap. A file's size may
//! run past its bytes: the rest reads as zeros and takes no memory until
//! written, so `ftruncate` to a large size (a database or a log sized up
//! front) costs nothing, as on Linux's tmpfs. (Holes below written data
//! are stored as zeros.)
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use kiln_vfs::{DirEntry, Error, FileSystem, FileType, Ino, Result, Stat, NAME_MAX};
use spin::Mutex;

/// File contents: owned (the bytes, and the file's size, at least their
/// length: zeros follow them), or borrowed from memory that lives as long
/// as the kernel (the initrd), copied on the first change.
enum Contents {
    Owned(Vec<u8>, u64),
    Static(&'static [u8]),
}

impl Contents {
    /// The file's size.
    fn len(&self) -> u64 {
        match self {
            Contents::Owned(_, size) => *size,
            Contents::Static(s) => s.len() as u64,
        }
    }

    /// The stored bytes (the file's start; zeros follow up to `len`).
    fn bytes(&self) -> &[u8] {
        match self {
            Contents::Owned(v, _) => v,
            Contents::Static(s) => s,
        }
    }

    /// The owned vector and size, copying borrowed contents first.
    fn owned(&mut self) -> (&mut Vec<u8>, &mut u64) {
        if let Contents::Static(s) = *self {
            *self = Contents::Owned(s.to_vec(), s.len() as u64);
        }
        match self {
            Contents::Owned(v, size) => (v, size),
            Contents::Static(_) => unreachable!(),
        }
    }
}

enum Data {
    File(Contents),
    Dir(BTreeMap<String, Ino>),
    Symlink(String),
}

struct Inode {
    data: Data,
    mode: u32,
    nlink: u32,
    mtime: u64,
    /// Open descriptors: an unlinked inode lives until the last closes.
    opens: u32,
}

/// An in-memory file system.
pub struct RamFs {
    inodes: Mutex<BTreeMap<Ino, Inode>>,
    next: Mutex<Ino>,
}

const ROOT: Ino = 1;

/// Largest file: keeps a bad seek from asking for all memory.
pub const MAX_FILE: u64 = 1 << 40;

impl Default for RamFs {
    fn default() -> Self {
        Self::new()
    }
}

impl RamFs {
    pub fn new() -> RamFs {
        let mut m = BTreeMap::new();
        m.insert(
            ROOT,
            Inode {
                data: Data::Dir(BTreeMap::new()),
                mode: 0o755,
                nlink: 2,
                mtime: 0,
                opens: 0,
            },
        );
        RamFs {
            inodes: Mutex::new(m),
            next: Mutex::new(ROOT + 1),
        }
    }

    fn alloc_ino(&self) -> Ino {
        let mut n = self.next.lock();
        let i = *n;
        *n += 1;
        i
    }

    fn check_name(name: &str) -> Result<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::Invalid);
        }
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        Ok(())
    }

    fn dir_mut<'a>(
        m: &'a mut BTreeMap<Ino, Inode>,
        dir: Ino,
    ) -> Result<&'a mut BTreeMap<String, Ino>> {
        match &mut m.get_mut(&dir).ok_or(Error::NotFound)?.data {
            Data::Dir(d) => Ok(d),
            _ => Err(Error::NotDir),
        }
    }

    /// Drops one link to `ino`, freeing it with the last.
    fn drop_link(m: &mut BTreeMap<Ino, Inode>, ino: Ino) {
        if let Some(i) = m.get_mut(&ino) {
            i.nlink = i.nlink.saturating_sub(1);
            if i.nlink == 0 && i.opens == 0 {
                m.remove(&ino);
            }
        }
    }

    fn insert(&self, dir: Ino, name: &str, node: Inode) -> Result<Ino> {
        Self::check_name(name)?;
        let ino = self.alloc_ino();
        let mut m = self.inodes.lock();
        let is_dir = matches!(node.data, Data::Dir(_));
        let d = Self::dir_mut(&mut m, dir)?;
        if d.contains_key(name) {
            return Err(Error::Exists);
        }
        d.insert(name.to_string(), ino);
        m.insert(ino, node);
        if is_dir {
            m.get_mut(&dir).unwrap().nlink += 1;
        }
        Ok(ino)
    }
}

fn kind(d: &Data) -> FileType {
    match d {
        Data::File(_) => FileType::File,
        Data::Dir(_) => FileType::Dir,
        Data::Symlink(_) => FileType::Symlink,
    }
}

impl FileSystem for RamFs {
    fn name(&self) -> &'static str {
        "ramfs"
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn lookup(&self, dir: Ino, name: &str) -> Result<Ino> {
        let mut m = self.inodes.lock();
        Self::dir_mut(&mut m, dir)?
            .get(name)
            .copied()
            .ok_or(Error::NotFound)
    }

    fn stat(&self, ino: Ino) -> Result<Stat> {
        let m = self.inodes.lock();
        let i = m.get(&ino).ok_or(Error::NotFound)?;
        // Only a file's stored bytes take memory, counted in pages as
        // tmpfs does (which counts none for directories and short
        // symlinks either).
        let (size, stored) = match &i.data {
            Data::File(c) => (c.len(), c.bytes().len() as u64),
            Data::Dir(d) => (d.len() as u64, 0),
            Data::Symlink(t) => (t.len() as u64, 0),
        };
        Ok(Stat {
            ino,
            kind: kind(&i.data),
            mode: i.mode,
            size,
            blocks: stored.div_ceil(4096) * 8,
            nlink: i.nlink,
            mtime: i.mtime,
        })
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let m = self.inodes.lock();
        match &m.get(&ino).ok_or(Error::NotFound)?.data {
            Data::File(c) => {
                let v = c.bytes();
                let n = buf.len().min(c.len().saturating_sub(offset) as usize);
                // The stored part, then zeros.
                let start = offset.min(v.len() as u64) as usize;
                let stored = n.min(v.len() - start);
                buf[..stored].copy_from_slice(&v[start..start + stored]);
                buf[stored..n].fill(0);
                Ok(n)
            }
            Data::Dir(_) => Err(Error::IsDir),
            Data::Symlink(_) => Err(Error::Invalid),
        }
    }

    fn write(&self, ino: Ino, offset: u64, buf: &[u8]) -> Result<usize> {
        let mut m = self.inodes.lock();
        match &mut m.get_mut(&ino).ok_or(Error::NotFound)?.data {
            Data::File(c) => {
                let (v, size) = c.owned();
                let end = offset
                    .checked_add(buf.len() as u64)
                    .filter(|e| *e <= MAX_FILE)
                    .ok_or(Error::NoSpace)?;
                if end as usize > v.len() {
                    v.try_reserve(end as usize - v.len())
                        .map_err(|_| Error::NoSpace)?;
                }
                if offset as usize == v.len() {
                    // Appending (the common case): one copy, no zero-fill first.
                    v.extend_from_slice(buf);
                } else {
                    if end as usize > v.len() {
                        v.resize(end as usize, 0);
                    }
                    v[offset as usize..end as usize].copy_from_slice(buf);
                }
                *size = (*size).max(end);
                Ok(buf.len())
            }
            Data::Dir(_) => Err(Error::IsDir),
            Data::Symlink(_) => Err(Error::Invalid),
        }
    }

    fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        if size > MAX_FILE {
            return Err(Error::NoSpace);
        }
        let mut m = self.inodes.lock();
        match &mut m.get_mut(&ino).ok_or(Error::NotFound)?.data {
            Data::File(c) => {
                // Growing only moves the size (zeros follow the bytes).
                let (v, len) = c.owned();
                v.truncate(size as usize);
                *len = size;
                Ok(())
            }
            Data::Dir(_) => Err(Error::IsDir),
            Data::Symlink(_) => Err(Error::Invalid),
        }
    }

    fn create(&self, dir: Ino, name: &str, kind: FileType, mode: u32) -> Result<Ino> {
        let data = match kind {
            FileType::File => Data::File(Contents::Owned(Vec::new(), 0)),
            FileType::Dir => Data::Dir(BTreeMap::new()),
            _ => return Err(Error::Invalid),
        };
        let nlink = if kind == FileType::Dir { 2 } else { 1 };
        self.insert(
            dir,
            name,
            Inode {
                data,
                mode,
                nlink,
                mtime: 0,
                opens: 0,
            },
        )
    }

    fn symlink(&self, dir: Ino, name: &str, target: &str) -> Result<Ino> {
        self.insert(
            dir,
            name,
            Inode {
                data: Data::Symlink(target.to_string()),
                mode: 0o777,
                nlink: 1,
                mtime: 0,
                opens: 0,
            },
        )
    }

    fn readlink(&self, ino: Ino) -> Result<String> {
        match &self.inodes.lock().get(&ino).ok_or(Error::NotFound)?.data {
            Data::Symlink(t) => Ok(t.clone()),
            _ => Err(Error::Invalid),
        }
    }

    fn link(&self, dir: Ino, name: &str, ino: Ino) -> Result<()> {
        Self::check_name(name)?;
        let mut m = self.inodes.lock();
        match m.get(&ino).map(|i| &i.data) {
            None => return Err(Error::NotFound),
            Some(Data::Dir(_)) => return Err(Error::NotPermitted),
            _ => {}
        }
        let d = Self::dir_mut(&mut m, dir)?;
        if d.contains_key(name) {
            return Err(Error::Exists);
        }
        d.insert(name.to_string(), ino);
        m.get_mut(&ino).unwrap().nlink += 1;
        Ok(())
    }

    fn unlink(&self, dir: Ino, name: &str) -> Result<()> {
        let mut m = self.inodes.lock();
        let ino = *Self::dir_mut(&mut m, dir)?
            .get(name)
            .ok_or(Error::NotFound)?;
        if matches!(m[&ino].data, Data::Dir(_)) {
            return Err(Error::IsDir);
        }
        Self::dir_mut(&mut m, dir)?.remove(name);
        Self::drop_link(&mut m, ino);
        Ok(())
    }

    fn rmdir(&self, dir: Ino, name: &str) -> Result<()> {
        let mut m = self.inodes.lock();
        let ino = *Self::dir_mut(&mut m, dir)?
            .get(name)
            .ok_or(Error::NotFound)?;
        match &m[&ino].data {
            Data::Dir(d) if !d.is_empty() => return Err(Error::NotEmpty),
            Data::Dir(_) => {}
            _ => return Err(Error::NotDir),
        }
        Self::dir_mut(&mut m, dir)?.remove(name);
        m.remove(&ino);
        m.get_mut(&dir).unwrap().nlink -= 1;
        Ok(())
    }

    fn rename(&self, from_dir: Ino, from: &str, to_dir: Ino, to: &str) -> Result<()> {
        Self::check_name(to)?;
        let mut m = self.inodes.lock();
        let ino = *Self::dir_mut(&mut m, from_dir)?
            .get(from)
            .ok_or(Error::NotFound)?;
        let moving_dir = matches!(m[&ino].data, Data::Dir(_));
        // A directory cannot move into itself or below itself.
        if moving_dir {
            let mut stack = alloc::vec![ino];
            while let Some(d) = stack.pop() {
                if d == to_dir {
                    return Err(Error::Invalid);
                }
                if let Data::Dir(entries) = &m[&d].data {
                    stack.extend(
                        entries
                            .values()
                            .copied()
                            .filter(|c| matches!(m[c].data, Data::Dir(_))),
                    );
                }
            }
        }
        if let Some(&old) = Self::dir_mut(&mut m, to_dir)?.get(to) {
            if old == ino {
                return Ok(());
            }
            match (&m[&old].data, moving_dir) {
                (Data::Dir(d), true) if !d.is_empty() => return Err(Error::NotEmpty),
                (Data::Dir(_), false) => return Err(Error::IsDir),
                (Data::File(_) | Data::Symlink(_), true) => return Err(Error::NotDir),
                _ => {}
            }
            Self::dir_mut(&mut m, to_dir)?.remove(to);
            if moving_dir {
                m.remove(&old);
                m.get_mut(&to_dir).unwrap().nlink -= 1;
            } else {
                Self::drop_link(&mut m, old);
            }
        }
        Self::dir_mut(&mut m, from_dir)?.remove(from);
        Self::dir_mut(&mut m, to_dir)?.insert(to.to_string(), ino);
        if moving_dir && from_dir != to_dir {
            m.get_mut(&from_dir).unwrap().nlink -= 1;
            m.get_mut(&to_dir).unwrap().nlink += 1;
        }
        Ok(())
    }

    fn static_data(&self, ino: Ino) -> Option<&'static [u8]> {
        match &self.inodes.lock().get(&ino)?.data {
            Data::File(Contents::Static(s)) => Some(s),
            _ => None,
        }
    }

    fn retain(&self, ino: Ino) {
        if let Some(i) = self.inodes.lock().get_mut(&ino) {
            i.opens += 1;
        }
    }

    fn release(&self, ino: Ino) {
        let mut m = self.inodes.lock();
        if let Some(i) = m.get_mut(&ino) {
            i.opens = i.opens.saturating_sub(1);
            if i.opens == 0 && i.nlink == 0 {
                m.remove(&ino);
            }
        }
    }

    fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        let mut m = self.inodes.lock();
        let entries: Vec<(String, Ino)> = Self::dir_mut(&mut m, dir)?
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Ok(entries
            .into_iter()
            .map(|(name, ino)| DirEntry {
                kind: kind(&m[&ino].data),
                name,
                ino,
            })
            .collect())
    }

    fn set_static(&self, ino: Ino, data: &'static [u8]) -> Result<()> {
        match &mut self
            .inodes
            .lock()
            .get_mut(&ino)
            .ok_or(Error::NotFound)?
            .data
        {
            Data::File(c) => {
                *c = Contents::Static(data);
                Ok(())
            }
            Data::Dir(_) => Err(Error::IsDir),
            Data::Symlink(_) => Err(Error::Invalid),
        }
    }

    fn set_mode(&self, ino: Ino, mode: u32) -> Result<()> {
        self.inodes
            .lock()
            .get_mut(&ino)
            .ok_or(Error::NotFound)?
            .mode = mode;
        Ok(())
    }
}

/// Boot-time init (lib/boot runs it when LIBRAMFS is selected): mounts an
/// empty ramfs as the root file system.
pub fn kiln_init() -> core::result::Result<(), String> {
    kiln_vfs::vfs()
        .mount("/", alloc::sync::Arc::new(RamFs::new()))
        .map_err(|e| alloc::format!("mounting / : {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use kiln_vfs::flags::*;
    use kiln_vfs::{Vfs, Whence};

    fn vfs() -> Vfs {
        let v = Vfs::new();
        v.mount("/", Arc::new(RamFs::new())).unwrap();
        v
    }

    #[test]
    fn files_read_write_seek_and_descriptors() {
        let v = vfs();
        let fd = v.open("/a.txt", O_RDWR | O_CREAT, 0o644).unwrap();
        assert_eq!(v.write(fd, b"hello world").unwrap(), 11);
        assert_eq!(v.lseek(fd, 6, Whence::Set).unwrap(), 6);
        let mut b = [0u8; 5];
        assert_eq!(v.read(fd, &mut b).unwrap(), 5);
        assert_eq!(&b, b"world");
        assert_eq!(v.read(fd, &mut b).unwrap(), 0, "EOF");
        assert_eq!(v.pwrite(fd, b"HELLO", 0).unwrap(), 5);
        assert_eq!(v.pread(fd, &mut b, 0).unwrap(), 5);
        assert_eq!(&b, b"HELLO");
        let d = v.dup(fd).unwrap();
        assert_eq!(
            v.lseek(d, 0, Whence::Cur).unwrap(),
            11,
            "dup shares the offset"
        );
        assert_eq!(v.lseek(fd, -1, Whence::End).unwrap(), 10);
        assert_eq!(v.lseek(fd, -100, Whence::Cur), Err(Error::Invalid));
        v.ftruncate(fd, 3).unwrap();
        assert_eq!(v.fstat(d).unwrap().size, 3);
        v.close(fd).unwrap();
        assert_eq!(v.close(fd), Err(Error::BadFd));
        assert_eq!(v.read_file("/a.txt").unwrap(), b"HEL");
        // Writing past the end leaves a zero-filled hole.
        let fd = v.open("/a.txt", O_WRONLY | O_APPEND, 0).unwrap();
        v.write(fd, b"!").unwrap();
        v.pwrite(fd, b"x", 6).unwrap();
        assert_eq!(v.read_file("/a.txt").unwrap(), b"HEL!\0\0x");
        // Sized up front: 2 GiB that take no memory, read as zeros, and
        // a write in the middle.
        v.ftruncate(fd, 2 << 30).unwrap();
        assert_eq!(v.fstat(fd).unwrap().size, 2 << 30);
        assert_eq!(v.fstat(fd).unwrap().blocks, 8, "7 bytes stored: one page");
        let r = v.open("/a.txt", O_RDONLY, 0).unwrap();
        let mut z = [9u8; 8];
        assert_eq!(v.pread(r, &mut z, 3).unwrap(), 8);
        assert_eq!(&z, b"!\0\0x\0\0\0\0");
        assert_eq!(v.pread(r, &mut z, (2 << 30) - 3).unwrap(), 3);
        assert_eq!(&z[..3], b"\0\0\0");
        assert_eq!(v.pread(r, &mut z, 2 << 30).unwrap(), 0, "EOF");
        v.pwrite(fd, b"mid", 100).unwrap();
        assert_eq!(
            v.fstat(fd).unwrap().size,
            2 << 30,
            "a write inside keeps the size"
        );
        assert_eq!(v.pread(r, &mut z[..4], 99).unwrap(), 4);
        assert_eq!(&z[..4], b"\0mid");
        v.ftruncate(fd, 7).unwrap();
        v.close(r).unwrap();
        assert_eq!(v.read_file("/a.txt").unwrap(), b"HEL!\0\0x");
        let mut buf = [0u8; 1];
        assert_eq!(
            v.read(fd, &mut buf),
            Err(Error::BadFd),
            "write-only descriptor"
        );
        assert_eq!(
            v.open("/a.txt", O_CREAT | O_EXCL | O_WRONLY, 0),
            Err(Error::Exists)
        );
        assert_eq!(v.open("/missing", O_RDONLY, 0), Err(Error::NotFound));
        let fd = v.open("/a.txt", O_RDWR | O_TRUNC, 0).unwrap();
        assert_eq!(v.fstat(fd).unwrap().size, 0);
    }

    #[test]
    fn directories_and_path_resolution() {
        let v = vfs();
        v.mkdir("/d", 0o755).unwrap();
        v.mkdir("/d/e", 0o700).unwrap();
        v.write_file("/d/e/f", b"x", 0o600).unwrap();
        assert_eq!(v.mkdir("/d", 0o755), Err(Error::Exists));
        assert_eq!(v.mkdir("/nope/x", 0o755), Err(Error::NotFound));
        assert_eq!(v.mkdir("/d/e/f/g", 0o755), Err(Error::NotDir));
        assert_eq!(v.read_file("/d/./e/../e/f").unwrap(), b"x");
        assert_eq!(
            v.read_file("/../../d/e/f").unwrap(),
            b"x",
            ".. stops at the root"
        );
        assert_eq!(v.stat("/d/e").unwrap().kind, FileType::Dir);
        assert_eq!(v.stat("/d/e/f").unwrap().st_mode(), 0o100600);
        assert_eq!(v.open("/d/e", O_WRONLY, 0), Err(Error::IsDir));
        assert_eq!(
            v.open("/d/e/f", O_RDONLY | O_DIRECTORY, 0),
            Err(Error::NotDir)
        );
        let names: Vec<String> = v
            .readdir("/d")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["e"]);
        assert_eq!(v.rmdir("/d/e"), Err(Error::NotEmpty));
        assert_eq!(v.rmdir("/d/e/f"), Err(Error::NotDir));
        assert_eq!(v.unlink("/d/e"), Err(Error::IsDir));
        v.unlink("/d/e/f").unwrap();
        v.rmdir("/d/e").unwrap();
        assert_eq!(v.stat("/d/e"), Err(Error::NotFound));
        let long = "x".repeat(300);
        assert_eq!(
            v.write_file(&alloc::format!("/{long}"), b"", 0o644),
            Err(Error::NameTooLong)
        );
        assert_eq!(v.stat(&"/a".repeat(3000)), Err(Error::NameTooLong));
        v.mkdir_all("/p/q/r", 0o755).unwrap();
        assert_eq!(v.stat("/p/q/r").unwrap().kind, FileType::Dir);
    }

    #[test]
    fn an_unlinked_file_lives_while_it_is_open() {
        let v = Vfs::new();
        let fs = Arc::new(RamFs::new());
        v.mount("/", fs.clone()).unwrap();
        v.write_file("/tmp", b"hello", 0o644).unwrap();
        let fd = v.open("/tmp", O_RDWR, 0).unwrap();
        let dup = v.dup(fd).unwrap();
        v.unlink("/tmp").unwrap();
        assert_eq!(v.stat("/tmp"), Err(Error::NotFound));
        assert_eq!(v.fstat(fd).unwrap().nlink, 0);
        v.ftruncate(fd, 2).unwrap();
        assert_eq!(v.write(fd, b"y").unwrap(), 1);
        let mut b = [0u8; 8];
        assert_eq!(v.pread(dup, &mut b, 0).unwrap(), 2);
        assert_eq!(&b[..2], b"ye");
        v.close(fd).unwrap();
        assert_eq!(v.fstat(dup).unwrap().size, 2, "another descriptor keeps it");
        let ino = v.fstat(dup).unwrap().ino;
        v.close(dup).unwrap();
        assert_eq!(
            fs.stat(ino),
            Err(Error::NotFound),
            "freed after the last close"
        );
        // Static contents are lent out until the file changes.
        static DATA: &[u8] = b"from the initrd";
        v.write_file_static("/s", DATA, 0o644).unwrap();
        assert_eq!(v.static_file("/s").map(|d| d.as_ptr()), Some(DATA.as_ptr()));
        let fd = v.open("/s", O_RDWR, 0).unwrap();
        v.write(fd, b"F").unwrap();
        assert_eq!(v.static_file("/s"), None, "a changed file is a copy");
    }

    #[test]
    fn symlinks_hard_links_and_rename() {
        let v = vfs();
        v.mkdir("/etc", 0o755).unwrap();
        v.write_file("/etc/conf", b"c", 0o644).unwrap();
        v.symlink("/etc/conf", "/abs").unwrap();
        v.symlink("etc", "/rel").unwrap();
        v.symlink("../etc/conf", "/etc/up").unwrap();
        assert_eq!(v.read_file("/abs").unwrap(), b"c");
        assert_eq!(v.read_file("/rel/conf").unwrap(), b"c");
        assert_eq!(v.read_file("/etc/up").unwrap(), b"c");
        assert_eq!(v.readlink("/abs").unwrap(), "/etc/conf");
        assert_eq!(v.lstat("/abs").unwrap().kind, FileType::Symlink);
        assert_eq!(v.stat("/abs").unwrap().kind, FileType::File);
        v.symlink("/loop2", "/loop1").unwrap();
        v.symlink("/loop1", "/loop2").unwrap();
        assert_eq!(v.stat("/loop1"), Err(Error::Loop));
        v.symlink("/missing", "/dangling").unwrap();
        assert_eq!(v.stat("/dangling"), Err(Error::NotFound));
        assert_eq!(v.open("/abs", O_RDONLY | O_NOFOLLOW, 0), Err(Error::Loop));

        v.link("/etc/conf", "/hard").unwrap();
        assert_eq!(v.stat("/hard").unwrap().nlink, 2);
        v.unlink("/etc/conf").unwrap();
        assert_eq!(
            v.read_file("/hard").unwrap(),
            b"c",
            "the data lives while a link remains"
        );
        assert_eq!(v.link("/etc", "/etc2"), Err(Error::NotPermitted));

        v.rename("/hard", "/etc/renamed").unwrap();
        assert_eq!(v.stat("/hard"), Err(Error::NotFound));
        v.write_file("/other", b"o", 0o644).unwrap();
        v.rename("/other", "/etc/renamed").unwrap();
        assert_eq!(
            v.read_file("/etc/renamed").unwrap(),
            b"o",
            "rename replaces the target"
        );
        v.mkdir("/etc/sub", 0o755).unwrap();
        assert_eq!(
            v.rename("/etc", "/etc/sub/x"),
            Err(Error::Invalid),
            "into itself"
        );
        assert_eq!(v.rename("/etc/renamed", "/etc/sub"), Err(Error::IsDir));
        v.rename("/etc/sub", "/sub").unwrap();
        assert_eq!(v.stat("/sub").unwrap().kind, FileType::Dir);
    }

    #[test]
    fn mounts_are_crossed_and_protected() {
        let v = vfs();
        v.mkdir("/mnt", 0o755).unwrap();
        v.mount("/mnt", Arc::new(RamFs::new())).unwrap();
        v.write_file("/mnt/inner", b"i", 0o644).unwrap();
        assert_eq!(v.read_file("/mnt/../mnt/inner").unwrap(), b"i");
        assert_eq!(v.rename("/mnt/inner", "/outer"), Err(Error::CrossDevice));
        assert_eq!(v.rmdir("/mnt"), Err(Error::Busy));
        assert_eq!(v.mount("/mnt", Arc::new(RamFs::new())), Err(Error::Busy));
        assert_eq!(
            v.mount("/nowhere", Arc::new(RamFs::new())),
            Err(Error::NotFound)
        );
        assert_eq!(
            v.mounts(),
            [("/".to_string(), "ramfs"), ("/mnt".to_string(), "ramfs")]
        );
    }
}
