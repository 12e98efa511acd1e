//! Files, like `std::fs`: whole-file helpers, [`File`], [`OpenOptions`] and
//! directory calls over the kernel's VFS. Enabled by kiln-std's `fs`
//! feature; the kernel needs a root file system (LIBRAMFS, or LIBINITRD for
//! a rootfs), which an app's Kconfig selects.

use alloc::string::String;
use alloc::vec::Vec;
use kiln_vfs::flags::*;
use kiln_vfs::{vfs, Whence};

pub use kiln_vfs::{DirEntry, Error, FileType, Stat as Metadata};

pub type Result<T> = core::result::Result<T, Error>;

/// Reads a whole file.
pub fn read(path: &str) -> Result<Vec<u8>> {
    vfs().read_file(path)
}

/// Reads a whole file as UTF-8 text (EINVAL if it is not).
pub fn read_to_string(path: &str) -> Result<String> {
    String::from_utf8(read(path)?).map_err(|_| Error::Invalid)
}

/// Creates or replaces a file with `data` (mode 0644).
pub fn write(path: &str, data: impl AsRef<[u8]>) -> Result<()> {
    vfs().write_file(path, data.as_ref(), 0o644)
}

/// The entries of a directory, sorted by name, without `.` and `..`.
pub fn read_dir(path: &str) -> Result<Vec<DirEntry>> {
    vfs().readdir(path)
}

pub fn create_dir(path: &str) -> Result<()> {
    vfs().mkdir(path, 0o755)
}

pub fn create_dir_all(path: &str) -> Result<()> {
    vfs().mkdir_all(path, 0o755)
}

pub fn remove_file(path: &str) -> Result<()> {
    vfs().unlink(path)
}

pub fn remove_dir(path: &str) -> Result<()> {
    vfs().rmdir(path)
}

pub fn rename(from: &str, to: &str) -> Result<()> {
    vfs().rename(from, to)
}

/// Every file system writes what it holds (`sync`).
pub fn sync() -> Result<()> {
    vfs().sync_all()
}

/// Replaces `path` with `data` so that a crash at any moment leaves either
/// the old contents or the new: the data goes to `path.new`, is made
/// durable, renamed over `path`, and the file system synced.
pub fn write_durably(path: &str, data: &[u8]) -> Result<()> {
    let tmp = alloc::format!("{path}.new");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    rename(&tmp, path)?;
    sync()
}

/// Metadata, following symlinks.
pub fn metadata(path: &str) -> Result<Metadata> {
    vfs().stat(path)
}

/// Metadata of the path itself.
pub fn symlink_metadata(path: &str) -> Result<Metadata> {
    vfs().lstat(path)
}

pub fn read_link(path: &str) -> Result<String> {
    vfs().readlink(path)
}

/// Creates `link` pointing at `target`.
pub fn symlink(target: &str, link: &str) -> Result<()> {
    vfs().symlink(target, link)
}

pub fn hard_link(original: &str, link: &str) -> Result<()> {
    vfs().link(original, link)
}

/// Where a seek starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekFrom {
    Start(u64),
    End(i64),
    Current(i64),
}

/// How to open a file, like `std::fs::OpenOptions`.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
}

impl OpenOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn read(&mut self, v: bool) -> &mut Self {
        self.read = v;
        self
    }
    pub fn write(&mut self, v: bool) -> &mut Self {
        self.write = v;
        self
    }
    pub fn append(&mut self, v: bool) -> &mut Self {
        self.append = v;
        self
    }
    pub fn truncate(&mut self, v: bool) -> &mut Self {
        self.truncate = v;
        self
    }
    pub fn create(&mut self, v: bool) -> &mut Self {
        self.create = v;
        self
    }
    pub fn create_new(&mut self, v: bool) -> &mut Self {
        self.create_new = v;
        self
    }

    pub fn open(&self, path: &str) -> Result<File> {
        let w = self.write || self.append;
        let mut f = match (self.read, w) {
            (_, false) => O_RDONLY,
            (false, true) => O_WRONLY,
            (true, true) => O_RDWR,
        };
        if self.append {
            f |= O_APPEND;
        }
        if self.truncate {
            f |= O_TRUNC;
        }
        if self.create || self.create_new {
            f |= O_CREAT;
        }
        if self.create_new {
            f |= O_EXCL;
        }
        vfs().open(path, f, 0o644).map(|fd| File { fd })
    }
}

/// An open file; closed when dropped.
#[derive(Debug)]
pub struct File {
    fd: i32,
}

impl File {
    /// Opens for reading.
    pub fn open(path: &str) -> Result<File> {
        OpenOptions::new().read(true).open(path)
    }

    /// Creates or truncates, for writing.
    pub fn create(path: &str) -> Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// The descriptor number.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        vfs().read(self.fd, buf)
    }

    pub fn read_to_end(&mut self, out: &mut Vec<u8>) -> Result<usize> {
        let start = out.len();
        let mut chunk = [0u8; 4096];
        loop {
            match self.read(&mut chunk)? {
                0 => return Ok(out.len() - start),
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        vfs().write(self.fd, buf)
    }

    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.write(buf)? {
                0 => return Err(Error::NoSpace),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        vfs().pread(self.fd, buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        vfs().pwrite(self.fd, buf, offset)
    }

    pub fn seek(&mut self, pos: SeekFrom) -> Result<u64> {
        let (off, whence) = match pos {
            SeekFrom::Start(n) => (i64::try_from(n).map_err(|_| Error::Invalid)?, Whence::Set),
            SeekFrom::End(n) => (n, Whence::End),
            SeekFrom::Current(n) => (n, Whence::Cur),
        };
        vfs().lseek(self.fd, off, whence)
    }

    pub fn metadata(&self) -> Result<Metadata> {
        vfs().fstat(self.fd)
    }

    pub fn set_len(&self, size: u64) -> Result<()> {
        vfs().ftruncate(self.fd, size)
    }

    /// Makes the file's data and metadata durable (`fsync`): on a disk,
    /// written and flushed to the device.
    pub fn sync_all(&self) -> Result<()> {
        vfs().fsync(self.fd)
    }

    /// A second handle to the same open file (shared position), like `dup`.
    pub fn try_clone(&self) -> Result<File> {
        vfs().dup(self.fd).map(|fd| File { fd })
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = vfs().close(self.fd);
    }
}
