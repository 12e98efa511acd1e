//! Kiln's virtual file system: POSIX-style calls (open, read, write,
//! pread/pwrite, lseek, stat, readdir, mkdir, unlink, rmdir, rename,
//! truncate, symlinks, dup) over file systems mounted in one tree.
//!
//! A file system implements [`FileSystem`] on inode numbers; the [`Vfs`]
//! resolves paths (`.`, `..`, symlinks, mount points), keeps the table of
//! open files, and turns everything into `errno`-style [`Error`]s. The
//! kernel has one global instance, [`vfs()`].
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;

pub mod fstab;

/// An error, with the errno Linux uses for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    NotFound,
    NotDir,
    IsDir,
    Exists,
    NotEmpty,
    BadFd,
    Invalid,
    Loop,
    NameTooLong,
    CrossDevice,
    NoSpace,
    ReadOnly,
    Busy,
    NotPermitted,
    /// The device or the file system's data failed (EIO).
    Io,
    /// A file would grow past what the file system can hold (EFBIG).
    TooBig,
}

impl Error {
    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        match self {
            Error::NotPermitted => 1,
            Error::NotFound => 2,
            Error::BadFd => 9,
            Error::Io => 5,
            Error::Busy => 16,
            Error::TooBig => 27,
            Error::Exists => 17,
            Error::CrossDevice => 18,
            Error::NotDir => 20,
            Error::IsDir => 21,
            Error::Invalid => 22,
            Error::NoSpace => 28,
            Error::ReadOnly => 30,
            Error::NameTooLong => 36,
            Error::NotEmpty => 39,
            Error::Loop => 40,
        }
    }

    /// The errno name, as in C.
    pub fn name(self) -> &'static str {
        match self {
            Error::NotPermitted => "EPERM",
            Error::NotFound => "ENOENT",
            Error::BadFd => "EBADF",
            Error::Io => "EIO",
            Error::Busy => "EBUSY",
            Error::TooBig => "EFBIG",
            Error::Exists => "EEXIST",
            Error::CrossDevice => "EXDEV",
            Error::NotDir => "ENOTDIR",
            Error::IsDir => "EISDIR",
            Error::Invalid => "EINVAL",
            Error::NoSpace => "ENOSPC",
            Error::ReadOnly => "EROFS",
            Error::NameTooLong => "ENAMETOOLONG",
            Error::NotEmpty => "ENOTEMPTY",
            Error::Loop => "ELOOP",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::NotPermitted => "operation not permitted",
            Error::NotFound => "no such file or directory",
            Error::BadFd => "bad file descriptor",
            Error::Io => "input/output error",
            Error::Busy => "device or resource busy",
            Error::TooBig => "file too large",
            Error::Exists => "file exists",
            Error::CrossDevice => "cross-device link",
            Error::NotDir => "not a directory",
            Error::IsDir => "is a directory",
            Error::Invalid => "invalid argument",
            Error::NoSpace => "no space left on device",
            Error::ReadOnly => "read-only file system",
            Error::NameTooLong => "file name too long",
            Error::NotEmpty => "directory not empty",
            Error::Loop => "too many levels of symbolic links",
        };
        write!(f, "{} ({})", text, self.name())
    }
}

pub type Result<T> = core::result::Result<T, Error>;

/// Longest file name and path, as in Linux.
pub const NAME_MAX: usize = 255;
pub const PATH_MAX: usize = 4096;
/// Symlinks followed in one lookup before giving up with ELOOP.
pub const SYMLINK_MAX: usize = 40;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    CharDevice,
}

/// File metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub kind: FileType,
    /// Permission bits (0o7777).
    pub mode: u32,
    pub size: u64,
    /// 512-byte units the data takes (`st_blocks`): less than the size
    /// for a sparse file.
    pub blocks: u64,
    pub nlink: u32,
    pub mtime: u64,
}

impl Stat {
    /// `st_mode` as Linux has it: type bits and permissions.
    pub fn st_mode(&self) -> u32 {
        let t = match self.kind {
            FileType::File => 0o100000,
            FileType::Dir => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
        };
        t | (self.mode & 0o7777)
    }
}

/// `statfs`'s magic number of a file system in memory.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `statfs`'s magic number of a FAT file system.
pub const MSDOS_MAGIC: u64 = 0x4d44;

/// What `statfs` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub magic: u64,
    pub block_size: u64,
    /// Total and free blocks of `block_size`.
    pub blocks: u64,
    pub free: u64,
    pub files: u64,
    pub free_files: u64,
    pub name_max: u64,
    pub read_only: bool,
}

impl StatFs {
    /// A file system in memory (ramfs, devfs), and descriptors that are no
    /// file: no fixed size.
    pub const IN_MEMORY: StatFs = StatFs {
        magic: TMPFS_MAGIC,
        block_size: 4096,
        blocks: 0,
        free: 0,
        files: 0,
        free_files: 0,
        name_max: NAME_MAX as u64,
        read_only: false,
    };
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    pub kind: FileType,
}

/// An inode number within one file system.
pub type Ino = u64;

/// A file system: operations on inodes. Directory operations take the
/// directory's inode and a single name component (never `.` or `..`).
pub trait FileSystem: Send + Sync {
    /// Name shown in mount listings (ramfs, devfs).
    fn name(&self) -> &'static str;
    fn root(&self) -> Ino;
    fn lookup(&self, dir: Ino, name: &str) -> Result<Ino>;
    fn stat(&self, ino: Ino) -> Result<Stat>;
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize>;
    fn write(&self, ino: Ino, offset: u64, buf: &[u8]) -> Result<usize>;
    fn truncate(&self, ino: Ino, size: u64) -> Result<()>;
    /// Creates a file or directory `name` in `dir`; EEXIST if it exists.
    fn create(&self, dir: Ino, name: &str, kind: FileType, mode: u32) -> Result<Ino>;
    /// A symbolic link; the default (a file system without them, as
    /// Linux's vfat) refuses with EPERM.
    fn symlink(&self, _dir: Ino, _name: &str, _target: &str) -> Result<Ino> {
        Err(Error::NotPermitted)
    }
    /// The default: nothing here is a symlink (EINVAL).
    fn readlink(&self, _ino: Ino) -> Result<String> {
        Err(Error::Invalid)
    }
    /// A hard link: `name` in `dir` for the existing inode `ino`.
    /// The default refuses with EPERM (no hard links).
    fn link(&self, _dir: Ino, _name: &str, _ino: Ino) -> Result<()> {
        Err(Error::NotPermitted)
    }
    /// Removes a non-directory entry.
    fn unlink(&self, dir: Ino, name: &str) -> Result<()>;
    /// Removes an empty directory.
    fn rmdir(&self, dir: Ino, name: &str) -> Result<()>;
    fn rename(&self, from_dir: Ino, from: &str, to_dir: Ino, to: &str) -> Result<()>;
    /// A file's contents as memory that lives as long as the kernel (the
    /// initrd's bytes, for a file not changed since), when the file system
    /// has them so: readers that need the whole file can use it in place.
    fn static_data(&self, _ino: Ino) -> Option<&'static [u8]> {
        None
    }
    /// An open file now refers to `ino`: it lives on, contents and all,
    /// after its last name is unlinked, until [`FileSystem::release`].
    fn retain(&self, _ino: Ino) {}
    /// One open reference to `ino` less (see [`FileSystem::retain`]).
    fn release(&self, _ino: Ino) {}
    fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>>;
    fn set_mode(&self, ino: Ino, mode: u32) -> Result<()>;
    /// Makes a file's data and metadata durable (`fsync`); with `None`,
    /// everything the file system holds (`sync`). A file system in memory
    /// has nothing to do.
    fn sync(&self, _ino: Option<Ino>) -> Result<()> {
        Ok(())
    }
    /// Space and limits, for `statfs`. The default describes a file system
    /// in memory.
    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs::IN_MEMORY)
    }
    /// Makes a file's contents `data`, which lives as long as the kernel,
    /// without copying it if the file system can (ramfs copies on the first
    /// write). The default writes a copy.
    fn set_static(&self, ino: Ino, data: &'static [u8]) -> Result<()> {
        self.truncate(ino, 0)?;
        let mut done = 0;
        while done < data.len() {
            match self.write(ino, done as u64, &data[done..])? {
                0 => return Err(Error::NoSpace),
                n => done += n,
            }
        }
        Ok(())
    }
}

/// Open flags (Linux values).
pub mod flags {
    pub const O_RDONLY: u32 = 0;
    pub const O_WRONLY: u32 = 1;
    pub const O_RDWR: u32 = 2;
    pub const O_ACCMODE: u32 = 3;
    pub const O_CREAT: u32 = 0o100;
    pub const O_EXCL: u32 = 0o200;
    pub const O_TRUNC: u32 = 0o1000;
    pub const O_APPEND: u32 = 0o2000;
    /// Every write reaches stable storage before it returns (O_SYNC
    /// includes this bit).
    pub const O_DSYNC: u32 = 0o10000;
    pub const O_SYNC: u32 = 0o4010000;
    pub const O_DIRECTORY: u32 = 0o200000;
    pub const O_NOFOLLOW: u32 = 0o400000;
}
use flags::*;

/// `lseek` origins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    Set,
    Cur,
    End,
}

/// A place in the tree: a mounted file system and an inode in it.
#[derive(Clone)]
struct Node {
    mount: usize,
    ino: Ino,
}

struct Mount {
    /// Absolute, normalised path of the mount point.
    path: String,
    fs: Arc<dyn FileSystem>,
}

/// An open file description (shared by dup'ed descriptors).
struct Open {
    node: Node,
    flags: u32,
    offset: Mutex<u64>,
    /// The file system, told when the last descriptor goes
    /// ([`FileSystem::release`]).
    fs: Arc<dyn FileSystem>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.fs.release(self.node.ino);
    }
}

/// The VFS: a mount table and a descriptor table.
pub struct Vfs {
    mounts: Mutex<Vec<Mount>>,
    fds: Mutex<BTreeMap<i32, Arc<Open>>>,
}

impl Default for Vfs {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits a path into components, dropping empty ones and `.`.
fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::NotFound);
    }
    if path.len() >= PATH_MAX {
        return Err(Error::NameTooLong);
    }
    if components(path).any(|c| c.len() > NAME_MAX) {
        return Err(Error::NameTooLong);
    }
    Ok(())
}

impl Vfs {
    pub const fn new() -> Vfs {
        Vfs {
            mounts: Mutex::new(Vec::new()),
            fds: Mutex::new(BTreeMap::new()),
        }
    }

    /// Mounts `fs` at `path` (`/` first; other mount points must be
    /// existing directories).
    pub fn mount(&self, path: &str, fs: Arc<dyn FileSystem>) -> Result<()> {
        let norm = if path == "/" {
            String::from("/")
        } else {
            let n = self.lookup(path, true)?;
            if self.fs(n.mount).stat(n.ino)?.kind != FileType::Dir {
                return Err(Error::NotDir);
            }
            self.abs_path(path)?
        };
        let mut m = self.mounts.lock();
        if m.iter().any(|x| x.path == norm) {
            return Err(Error::Busy);
        }
        if m.is_empty() && norm != "/" {
            return Err(Error::NotFound);
        }
        m.push(Mount { path: norm, fs });
        Ok(())
    }

    /// Makes `path` ready to mount a file system on: an existing empty
    /// folder, or a new one. A folder that holds files (the initrd's) is
    /// refused rather than hidden, as is a file.
    pub fn prepare_mount_point(&self, path: &str) -> core::result::Result<(), String> {
        match self.stat(path) {
            Ok(st) if st.kind != FileType::Dir => Err(alloc::format!(
                "{path} is a file in the initrd, not a folder to mount on"
            )),
            Ok(_) => {
                let inside = self
                    .readdir(path)
                    .map_err(|err| alloc::format!("{path}: {err}"))?;
                if inside.iter().any(|d| d.name != "." && d.name != "..") {
                    return Err(alloc::format!(
                        "{path} already holds files from the initrd, which the volume would hide; mount it on an empty or new folder"
                    ));
                }
                Ok(())
            }
            Err(_) => self
                .mkdir_all(path, 0o755)
                .map_err(|err| alloc::format!("making {path}: {err}")),
        }
    }

    /// Mount points and file system names.
    pub fn mounts(&self) -> Vec<(String, &'static str)> {
        self.mounts
            .lock()
            .iter()
            .map(|m| (m.path.clone(), m.fs.name()))
            .collect()
    }

    fn fs(&self, i: usize) -> Arc<dyn FileSystem> {
        self.mounts.lock()[i].fs.clone()
    }

    /// The path of a directory reached by resolving, with `..` and `.`
    /// folded lexically (used for mount points).
    fn abs_path(&self, path: &str) -> Result<String> {
        let mut parts: Vec<&str> = Vec::new();
        for c in components(path) {
            if c == ".." {
                parts.pop();
            } else {
                parts.push(c);
            }
        }
        let mut s = String::new();
        for p in parts {
            s.push('/');
            s.push_str(p);
        }
        Ok(if s.is_empty() { "/".into() } else { s })
    }

    /// The mount whose root covers `path` exactly, if any.
    fn mount_at(&self, path: &str) -> Option<usize> {
        self.mounts.lock().iter().rposition(|m| m.path == path)
    }

    /// Resolves `path` to a node. The final symlink is followed when
    /// `follow` is set; symlinks in the middle always are.
    fn lookup_node(&self, path: &str, follow: bool) -> Result<(Node, String)> {
        check_path(path)?;
        if self.mounts.lock().is_empty() {
            return Err(Error::NotFound);
        }
        let mut hops = 0;
        // The work list: components still to walk, last one at the end.
        let mut todo: Vec<String> = components(path).rev().map(|s| s.to_string()).collect();
        // The walked path as (node, absolute path string) frames, root first.
        let root = Node {
            mount: 0,
            ino: self.fs(0).root(),
        };
        let mut stack: Vec<(Node, String)> = alloc::vec![(root, String::from("/"))];
        while let Some(c) = todo.pop() {
            let (cur, cur_path) = stack.last().cloned().unwrap();
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let fs = self.fs(cur.mount);
            if fs.stat(cur.ino)?.kind != FileType::Dir {
                return Err(Error::NotDir);
            }
            let ino = fs.lookup(cur.ino, &c)?;
            let child_path = if cur_path == "/" {
                alloc::format!("/{c}")
            } else {
                alloc::format!("{cur_path}/{c}")
            };
            let mut node = Node {
                mount: cur.mount,
                ino,
            };
            // Crossing into a file system mounted here.
            if let Some(m) = self.mount_at(&child_path) {
                node = Node {
                    mount: m,
                    ino: self.fs(m).root(),
                };
            }
            let st = self.fs(node.mount).stat(node.ino)?;
            if st.kind == FileType::Symlink && (follow || !todo.is_empty()) {
                hops += 1;
                if hops > SYMLINK_MAX {
                    return Err(Error::Loop);
                }
                let target = self.fs(node.mount).readlink(node.ino)?;
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                for t in components(&target).rev() {
                    todo.push(t.to_string());
                }
                continue;
            }
            stack.push((node, child_path));
        }
        Ok(stack.pop().unwrap())
    }

    fn lookup(&self, path: &str, follow: bool) -> Result<Node> {
        self.lookup_node(path, follow).map(|(n, _)| n)
    }

    /// Resolves the parent directory of `path` and returns it with the last
    /// component.
    fn parent<'p>(&self, path: &'p str) -> Result<(Node, &'p str)> {
        check_path(path)?;
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = match trimmed.rfind('/') {
            Some(i) => (if i == 0 { "/" } else { &trimmed[..i] }, &trimmed[i + 1..]),
            None => (".", trimmed),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(if trimmed.is_empty() {
                Error::Busy
            } else {
                Error::Invalid
            });
        }
        let dir = if dir == "." { "/" } else { dir };
        let d = self.lookup(dir, true)?;
        if self.fs(d.mount).stat(d.ino)?.kind != FileType::Dir {
            return Err(Error::NotDir);
        }
        Ok((d, name))
    }

    fn new_fd(&self, open: Open) -> i32 {
        let mut fds = self.fds.lock();
        let fd = (3..).find(|n| !fds.contains_key(n)).unwrap();
        fds.insert(fd, Arc::new(open));
        fd
    }

    fn get(&self, fd: i32) -> Result<Arc<Open>> {
        self.fds.lock().get(&fd).cloned().ok_or(Error::BadFd)
    }

    /// Opens (and with O_CREAT creates) a file; returns a descriptor >= 3.
    pub fn open(&self, path: &str, flags: u32, mode: u32) -> Result<i32> {
        let found = self.lookup(path, flags & O_NOFOLLOW == 0);
        let node = match found {
            Ok(n) => {
                if flags & O_CREAT != 0 && flags & O_EXCL != 0 {
                    return Err(Error::Exists);
                }
                n
            }
            Err(Error::NotFound) if flags & O_CREAT != 0 => {
                let (dir, name) = self.parent(path)?;
                if name.len() > NAME_MAX {
                    return Err(Error::NameTooLong);
                }
                let ino =
                    self.fs(dir.mount)
                        .create(dir.ino, name, FileType::File, mode & 0o7777)?;
                Node {
                    mount: dir.mount,
                    ino,
                }
            }
            Err(e) => return Err(e),
        };
        let fs = self.fs(node.mount);
        let st = fs.stat(node.ino)?;
        if st.kind == FileType::Symlink {
            return Err(Error::Loop);
        }
        let acc = flags & O_ACCMODE;
        if st.kind == FileType::Dir && acc != O_RDONLY {
            return Err(Error::IsDir);
        }
        if flags & O_DIRECTORY != 0 && st.kind != FileType::Dir {
            return Err(Error::NotDir);
        }
        if flags & O_TRUNC != 0 && acc != O_RDONLY && st.kind == FileType::File {
            fs.truncate(node.ino, 0)?;
        }
        fs.retain(node.ino);
        Ok(self.new_fd(Open {
            node,
            flags,
            offset: Mutex::new(0),
            fs,
        }))
    }

    pub fn close(&self, fd: i32) -> Result<()> {
        self.fds.lock().remove(&fd).map(|_| ()).ok_or(Error::BadFd)
    }

    /// A second descriptor for the same open file (shared offset).
    pub fn dup(&self, fd: i32) -> Result<i32> {
        let o = self.get(fd)?;
        let mut fds = self.fds.lock();
        let new = (3..).find(|n| !fds.contains_key(n)).unwrap();
        fds.insert(new, o);
        Ok(new)
    }

    /// Makes `new` refer to the same open file as `old`.
    pub fn dup2(&self, old: i32, new: i32) -> Result<i32> {
        let o = self.get(old)?;
        if new < 0 {
            return Err(Error::BadFd);
        }
        self.fds.lock().insert(new, o);
        Ok(new)
    }

    fn readable(o: &Open) -> Result<()> {
        if o.flags & O_ACCMODE == O_WRONLY {
            return Err(Error::BadFd);
        }
        Ok(())
    }

    fn writable(o: &Open) -> Result<()> {
        if o.flags & O_ACCMODE == O_RDONLY {
            return Err(Error::BadFd);
        }
        Ok(())
    }

    pub fn read(&self, fd: i32, buf: &mut [u8]) -> Result<usize> {
        let o = self.get(fd)?;
        Self::readable(&o)?;
        let fs = self.fs(o.node.mount);
        if fs.stat(o.node.ino)?.kind == FileType::Dir {
            return Err(Error::IsDir);
        }
        let at = *o.offset.lock();
        let n = fs.read(o.node.ino, at, buf)?;
        *o.offset.lock() = at + n as u64;
        Ok(n)
    }

    pub fn write(&self, fd: i32, buf: &[u8]) -> Result<usize> {
        let o = self.get(fd)?;
        Self::writable(&o)?;
        let fs = self.fs(o.node.mount);
        // The offset's lock is not held across the file system's call: a
        // disk's file system blocks the thread there, and another thread
        // spinning on this lock would never let it run again.
        let at = if o.flags & O_APPEND != 0 {
            fs.stat(o.node.ino)?.size
        } else {
            *o.offset.lock()
        };
        let n = fs.write(o.node.ino, at, buf)?;
        *o.offset.lock() = at + n as u64;
        Self::synced(&o, &*fs)?;
        Ok(n)
    }

    /// After a write: with O_DSYNC or O_SYNC, the data reaches the device.
    fn synced(o: &Open, fs: &dyn FileSystem) -> Result<()> {
        if o.flags & O_DSYNC != 0 {
            fs.sync(Some(o.node.ino))?;
        }
        Ok(())
    }

    /// `fsync`/`fdatasync`: the open file's data and metadata reach stable
    /// storage.
    pub fn fsync(&self, fd: i32) -> Result<()> {
        let o = self.get(fd)?;
        self.fs(o.node.mount).sync(Some(o.node.ino))
    }

    /// `sync`: every mounted file system writes what it holds.
    pub fn sync_all(&self) -> Result<()> {
        let all: Vec<Arc<dyn FileSystem>> =
            self.mounts.lock().iter().map(|m| m.fs.clone()).collect();
        let mut first = Ok(());
        for fs in all {
            if let Err(e) = fs.sync(None) {
                first = first.and(Err(e));
            }
        }
        first
    }

    /// `statfs` of the file system holding `path`.
    pub fn statfs(&self, path: &str) -> Result<StatFs> {
        let n = self.lookup(path, true)?;
        self.fs(n.mount).statfs()
    }

    /// `fstatfs` of the file system holding the open file `fd`.
    pub fn fstatfs(&self, fd: i32) -> Result<StatFs> {
        let o = self.get(fd)?;
        self.fs(o.node.mount).statfs()
    }

    pub fn pread(&self, fd: i32, buf: &mut [u8], offset: u64) -> Result<usize> {
        let o = self.get(fd)?;
        Self::readable(&o)?;
        let fs = self.fs(o.node.mount);
        if fs.stat(o.node.ino)?.kind == FileType::Dir {
            return Err(Error::IsDir);
        }
        fs.read(o.node.ino, offset, buf)
    }

    pub fn pwrite(&self, fd: i32, buf: &[u8], offset: u64) -> Result<usize> {
        let o = self.get(fd)?;
        Self::writable(&o)?;
        let fs = self.fs(o.node.mount);
        let n = fs.write(o.node.ino, offset, buf)?;
        Self::synced(&o, &*fs)?;
        Ok(n)
    }

    pub fn lseek(&self, fd: i32, offset: i64, whence: Whence) -> Result<u64> {
        let o = self.get(fd)?;
        let end = match whence {
            Whence::End => self.fs(o.node.mount).stat(o.node.ino)?.size as i64,
            _ => 0,
        };
        let mut off = o.offset.lock();
        let base = match whence {
            Whence::Set => 0,
            Whence::Cur => *off as i64,
            Whence::End => end,
        };
        let new = base
            .checked_add(offset)
            .filter(|n| *n >= 0)
            .ok_or(Error::Invalid)?;
        *off = new as u64;
        Ok(*off)
    }

    pub fn fstat(&self, fd: i32) -> Result<Stat> {
        let o = self.get(fd)?;
        self.fs(o.node.mount).stat(o.node.ino)
    }

    pub fn ftruncate(&self, fd: i32, size: u64) -> Result<()> {
        let o = self.get(fd)?;
        Self::writable(&o)?;
        self.fs(o.node.mount).truncate(o.node.ino, size)
    }

    /// A file's whole contents without a copy, when its file system keeps
    /// them in memory that lives as long as the kernel (see
    /// [`FileSystem::static_data`]); None otherwise (use [`Vfs::read_file`]).
    pub fn static_file(&self, path: &str) -> Option<&'static [u8]> {
        let n = self.lookup(path, true).ok()?;
        self.fs(n.mount).static_data(n.ino)
    }

    /// [`Vfs::static_file`] for an open file.
    pub fn static_data(&self, fd: i32) -> Option<&'static [u8]> {
        let o = self.get(fd).ok()?;
        self.fs(o.node.mount).static_data(o.node.ino)
    }

    /// Metadata, following a final symlink.
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let n = self.lookup(path, true)?;
        self.fs(n.mount).stat(n.ino)
    }

    /// Metadata of the path itself (a symlink is not followed).
    pub fn lstat(&self, path: &str) -> Result<Stat> {
        let n = self.lookup(path, false)?;
        self.fs(n.mount).stat(n.ino)
    }

    pub fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        self.fs(dir.mount)
            .create(dir.ino, name, FileType::Dir, mode & 0o7777)
            .map(|_| ())
    }

    /// Creates every missing directory on the way to `path`.
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<()> {
        let mut p = String::new();
        for c in components(path) {
            p.push('/');
            p.push_str(c);
            match self.mkdir(&p, mode) {
                Ok(()) | Err(Error::Exists) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn unlink(&self, path: &str) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        self.fs(dir.mount).unlink(dir.ino, name)
    }

    pub fn rmdir(&self, path: &str) -> Result<()> {
        let full = self.abs_path(path)?;
        if self.mount_at(&full).is_some() {
            return Err(Error::Busy);
        }
        let (dir, name) = self.parent(path)?;
        self.fs(dir.mount).rmdir(dir.ino, name)
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        if fd.mount != td.mount {
            return Err(Error::CrossDevice);
        }
        self.fs(fd.mount).rename(fd.ino, fname, td.ino, tname)
    }

    pub fn truncate(&self, path: &str, size: u64) -> Result<()> {
        let n = self.lookup(path, true)?;
        self.fs(n.mount).truncate(n.ino, size)
    }

    pub fn symlink(&self, target: &str, path: &str) -> Result<()> {
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        let (dir, name) = self.parent(path)?;
        self.fs(dir.mount)
            .symlink(dir.ino, name, target)
            .map(|_| ())
    }

    pub fn readlink(&self, path: &str) -> Result<String> {
        let n = self.lookup(path, false)?;
        self.fs(n.mount).readlink(n.ino)
    }

    /// A hard link `new` to the existing file `old`.
    pub fn link(&self, old: &str, new: &str) -> Result<()> {
        let src = self.lookup(old, false)?;
        let (dir, name) = self.parent(new)?;
        if src.mount != dir.mount {
            return Err(Error::CrossDevice);
        }
        self.fs(dir.mount).link(dir.ino, name, src.ino)
    }

    /// Directory entries, without `.` and `..`, sorted by name.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let (n, p) = self.lookup_node(path, true)?;
        let mut v = self.fs(n.mount).readdir(n.ino)?;
        // Mount points show the mounted root's type.
        for e in &mut v {
            let child = if p == "/" {
                alloc::format!("/{}", e.name)
            } else {
                alloc::format!("{p}/{}", e.name)
            };
            if self.mount_at(&child).is_some() {
                e.kind = FileType::Dir;
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub fn chmod(&self, path: &str, mode: u32) -> Result<()> {
        let n = self.lookup(path, true)?;
        self.fs(n.mount).set_mode(n.ino, mode & 0o7777)
    }

    /// Reads a whole file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let fd = self.open(path, O_RDONLY, 0)?;
        let size = self.fstat(fd)?.size as usize;
        let mut out = alloc::vec![0u8; size];
        let mut got = 0;
        let r = loop {
            if got == out.len() {
                out.resize(out.len() + 4096, 0);
            }
            match self.read(fd, &mut out[got..]) {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e),
            }
        };
        let _ = self.close(fd);
        r?;
        out.truncate(got);
        Ok(out)
    }

    /// Creates or replaces a file whose contents are memory that lives as
    /// long as the kernel (the initrd): no copy where the file system allows.
    pub fn write_file_static(&self, path: &str, data: &'static [u8], mode: u32) -> Result<()> {
        let fd = self.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)?;
        let r = self
            .get(fd)
            .and_then(|o| self.fs(o.node.mount).set_static(o.node.ino, data));
        let _ = self.close(fd);
        r
    }

    /// Creates or replaces a whole file.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let fd = self.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)?;
        let mut done = 0;
        let r = loop {
            if done == data.len() {
                break Ok(());
            }
            match self.write(fd, &data[done..]) {
                Ok(0) => break Err(Error::NoSpace),
                Ok(n) => done += n,
                Err(e) => break Err(e),
            }
        };
        let _ = self.close(fd);
        r
    }
}

static VFS: Vfs = Vfs::new();

/// The kernel's file system tree.
pub fn vfs() -> &'static Vfs {
    &VFS
}
