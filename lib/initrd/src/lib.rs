//! The initial RAM disk: a newc ("070701", or "070702" with checksums)
//! cpio archive, checked entry by entry and unpacked into the VFS.
//! Modes, directories, symlinks and hard links are kept.
//!
//! Every way an archive can be wrong is an [`Error`] naming the entry and
//! its offset: a bad or truncated header, a missing trailer, a path that
//! leaves the root, a name that is too long, device files, FIFOs and
//! sockets. `kiln build` runs the same checks on the host, so a bad rootfs
//! fails the build rather than the boot.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use kiln_vfs::{Vfs, NAME_MAX, PATH_MAX};

/// What an archive entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One checked entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Normalised path relative to the root, without leading `/` or `./`.
    pub path: String,
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    pub data: &'a [u8],
    pub ino: u32,
    pub nlink: u32,
    /// Offset of the entry's header in the archive.
    pub offset: usize,
}

/// Why an archive was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub entry: Option<String>,
    pub what: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(e) => write!(
                f,
                "cpio entry '{}' at offset {}: {}",
                e, self.offset, self.what
            ),
            None => write!(f, "cpio archive at offset {}: {}", self.offset, self.what),
        }
    }
}

const HEADER: usize = 110;
const TRAILER: &str = "TRAILER!!!";

fn err(offset: usize, entry: Option<&str>, what: impl Into<String>) -> Error {
    Error {
        offset,
        entry: entry.map(String::from),
        what: what.into(),
    }
}

/// Normalises an archive path: drops `.` and empty components and a
/// leading `/`; `..` may not climb above the root.
pub fn normalise(name: &str) -> Result<String, &'static str> {
    if name.len() >= PATH_MAX {
        return Err("path too long");
    }
    if name.contains('\0') {
        return Err("NUL byte in the name");
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("path leaves the root (too many '..')");
                }
            }
            c if c.len() > NAME_MAX => return Err("a name in the path is longer than 255 bytes"),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Reads header field `i` (8 hex digits) of the header at `at`.
fn field(data: &[u8], at: usize, i: usize) -> Option<usize> {
    let f = data.get(at + 6 + i * 8..at + 6 + (i + 1) * 8)?;
    let mut v = 0usize;
    for &c in f {
        v = v * 16 + (c as char).to_digit(16)? as usize;
    }
    Some(v)
}

/// Checks the whole archive and returns its entries in order.
///
/// The format is parsed here rather than with the `cpio_reader` crate:
/// that crate sums every byte of every file for a checksum even in the newc
/// format, which has none (about five instructions per byte, most of the
/// cost of unpacking), and stops silently at a corrupt header, where Kiln
/// must say what is wrong and where.
pub fn entries(data: &[u8]) -> Result<Vec<Entry<'_>>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        if at >= data.len() {
            return Err(err(
                at,
                None,
                if data.is_empty() {
                    "empty archive"
                } else {
                    "truncated: no trailer"
                },
            ));
        }
        let Some(magic) = data.get(at..at + 6) else {
            return Err(err(at, None, "truncated header"));
        };
        let crc = match magic {
            b"070701" => false,
            b"070702" => true,
            _ => {
                return Err(err(
                    at,
                    None,
                    "bad header magic (not a newc cpio archive, or corrupt)",
                ))
            }
        };
        if data.len() < at + HEADER {
            return Err(err(at, None, "truncated header"));
        }
        let f = |i| {
            field(data, at, i).ok_or_else(|| err(at, None, "bad header field (not hexadecimal)"))
        };
        let (ino, mode, nlink, filesize, namesize, check) =
            (f(0)?, f(1)?, f(4)?, f(6)?, f(11)?, f(12)?);
        let name_start = at + HEADER;
        let Some(name_bytes) = namesize
            .checked_sub(1)
            .and_then(|n| data.get(name_start..name_start + n))
        else {
            return Err(err(at, None, "truncated name"));
        };
        // The name ends at its first NUL; the rest of the field may be
        // more NULs (Kiln's packer pads names so that large files' data
        // starts on a page boundary, which lets programs map them in
        // place; Linux's initramfs reader reads names the same way).
        let name_bytes = match name_bytes.iter().position(|&b| b == 0) {
            Some(end) if name_bytes[end..].iter().all(|&b| b == 0) => &name_bytes[..end],
            Some(_) => return Err(err(at, None, "NUL byte in the name")),
            None => name_bytes,
        };
        let Ok(raw) = core::str::from_utf8(name_bytes) else {
            return Err(err(at, None, "the name is not UTF-8"));
        };
        if data.get(name_start + namesize - 1) != Some(&0) {
            return Err(err(at, Some(raw), "the name is not NUL-terminated"));
        }
        let data_start = (name_start + namesize).next_multiple_of(4);
        let Some(file) = data_start
            .checked_add(filesize)
            .and_then(|e| data.get(data_start..e))
        else {
            return Err(err(
                at,
                Some(raw),
                "truncated: the file data runs past the end of the archive",
            ));
        };
        let offset = at;
        at = (data_start + filesize).next_multiple_of(4);
        if raw == TRAILER {
            return Ok(out);
        }
        let mode = mode as u32;
        if crc && mode & 0o170000 != 0o120000 {
            let sum = file.iter().fold(0u32, |a, &b| a.wrapping_add(b as u32));
            if sum != check as u32 {
                return Err(err(offset, Some(raw), "checksum mismatch"));
            }
        }
        let kind = match mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o020000 => {
                return Err(err(
                    offset,
                    Some(raw),
                    "character devices are not supported (devfs provides /dev)",
                ))
            }
            0o060000 => return Err(err(offset, Some(raw), "block devices are not supported")),
            0o010000 => return Err(err(offset, Some(raw), "FIFOs are not supported")),
            0o140000 => return Err(err(offset, Some(raw), "sockets are not supported")),
            t => {
                return Err(err(
                    offset,
                    Some(raw),
                    alloc::format!("unknown file type {t:#o}"),
                ))
            }
        };
        let path = normalise(raw).map_err(|w| err(offset, Some(raw), w))?;
        if kind == Kind::Symlink {
            if file.is_empty() {
                return Err(err(offset, Some(raw), "symlink without a target"));
            }
            if core::str::from_utf8(file).is_err() {
                return Err(err(offset, Some(raw), "symlink target is not UTF-8"));
            }
        }
        if path.is_empty() && kind != Kind::Dir {
            return Err(err(offset, Some(raw), "the root must be a directory"));
        }
        out.push(Entry {
            path,
            kind,
            mode: mode & 0o7777,
            data: file,
            ino: ino as u32,
            nlink: nlink as u32,
            offset,
        });
    }
}

/// What [`unpack`] created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub links: usize,
    pub bytes: usize,
}

/// Unpacks a checked archive into `vfs` under `/`, copying file contents.
pub fn unpack(vfs: &Vfs, data: &[u8]) -> Result<Summary, Error> {
    unpack_with(vfs, data, &|path, bytes, mode| {
        vfs.write_file(path, bytes, mode)
    })
}

/// Unpacks an archive that lives as long as the kernel: files point into
/// it instead of holding copies (ramfs copies a file on its first change).
pub fn unpack_static(vfs: &Vfs, data: &'static [u8]) -> Result<Summary, Error> {
    // The closure only receives subslices of `data`; re-slicing `data` by
    // offset gives them back their 'static lifetime.
    let base = data.as_ptr() as usize;
    unpack_with(vfs, data, &|path, bytes, mode| {
        let off = bytes.as_ptr() as usize - base;
        vfs.write_file_static(path, &data[off..off + bytes.len()], mode)
    })
}

type Writer<'w> = &'w dyn Fn(&str, &[u8], u32) -> kiln_vfs::Result<()>;

fn unpack_with(vfs: &Vfs, data: &[u8], write: Writer) -> Result<Summary, Error> {
    let list = entries(data)?;
    let mut s = Summary::default();
    // First path seen for each inode number with several links.
    let mut linked: BTreeMap<u32, String> = BTreeMap::new();
    for e in &list {
        let at = |x: kiln_vfs::Error| err(e.offset, Some(&e.path), alloc::format!("{x}"));
        let path = alloc::format!("/{}", e.path);
        if let Some(parent) = path
            .rfind('/')
            .map(|i| &path[..i])
            .filter(|p| !p.is_empty())
        {
            vfs.mkdir_all(parent, 0o755).map_err(at)?;
        }
        match e.kind {
            Kind::Dir => {
                if e.path.is_empty() {
                    vfs.chmod("/", e.mode).map_err(at)?;
                    continue;
                }
                match vfs.mkdir(&path, e.mode) {
                    Ok(()) => s.dirs += 1,
                    // Created earlier as a parent: now it gets its own mode.
                    Err(kiln_vfs::Error::Exists) => vfs.chmod(&path, e.mode).map_err(at)?,
                    Err(x) => return Err(at(x)),
                }
            }
            Kind::Symlink => {
                let target = core::str::from_utf8(e.data).unwrap_or_default();
                vfs.symlink(target, &path).map_err(at)?;
                s.symlinks += 1;
            }
            Kind::File => {
                if e.nlink > 1 {
                    if let Some(first) = linked.get(&e.ino) {
                        vfs.link(first, &path).map_err(at)?;
                        s.links += 1;
                        if !e.data.is_empty() {
                            // newc stores a hard-linked file's data once, with one of its names.
                            write(&path, e.data, e.mode).map_err(at)?;
                            s.bytes += e.data.len();
                        }
                        continue;
                    }
                    linked.insert(e.ino, path.clone());
                }
                write(&path, e.data, e.mode).map_err(at)?;
                vfs.chmod(&path, e.mode).map_err(at)?;
                s.files += 1;
                s.bytes += e.data.len();
            }
        }
    }
    Ok(s)
}

/// Boot-time init (lib/boot runs it when LIBINITRD is selected): unpacks
/// the initrd (the boot loader's, else the embedded one) into `/`.
pub fn kiln_init() -> Result<(), String> {
    note_root_entries();
    let Some(data) = kiln_boot::initrd() else {
        kiln_console::log!(kiln_console::Level::Debug, "initrd: none");
        return Ok(());
    };
    let p = kiln_boot::platform();
    let t0 = p.map_or(0, |p| p.ticks());
    let s = unpack_static(kiln_vfs::vfs(), data).map_err(|e| alloc::format!("initrd: {e}"))?;
    let ticks = p.map_or(0, |p| p.ticks()).wrapping_sub(t0);
    let us = kiln_boot::ticks_to_us(ticks, p.and_then(|p| p.tick_hz()));
    kiln_console::log!(
        kiln_console::Level::Info,
        "initrd: {} files, {} directories, {} symlinks, {} bytes unpacked in {}",
        s.files + s.links,
        s.dirs,
        s.symlinks,
        s.bytes,
        match us {
            Some(us) => alloc::format!("{us} us"),
            None => alloc::format!("{ticks} ticks"),
        }
    );
    Ok(())
}

/// urunc (and Unikraft's tools) put the initrd on `/` with `vfs.fstab=[
/// "initrd0:/:extract:::" ]`: the initrd is Kiln's root already, so such
/// entries are noted and left; the file system libraries mount the rest.
fn note_root_entries() {
    let Some(v) = kiln_boot::param("vfs.fstab") else {
        return;
    };
    let Ok(entries) = kiln_vfs::fstab::parse(v) else {
        return;
    };
    for e in entries.iter().filter(|e| {
        matches!(
            e.fstype.as_str(),
            "extract" | "initrd" | "ramfs" | "initrdfs"
        )
    }) {
        kiln_console::log!(
            kiln_console::Level::Info,
            "vfs.fstab: {} on {} ({}): the initrd is the root file system already; entry left",
            e.source,
            e.destination,
            e.fstype
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;

    /// A newc archive writer for tests (the host tool has its own).
    pub fn newc(entries: &[(&str, u32, &[u8], u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |name: &str, mode: u32, data: &[u8], ino: u32, nlink: u32| {
            let h = alloc::format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0, 0, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
            );
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        for (n, m, d, i, l) in entries {
            push(n, *m, d, *i, *l);
        }
        push(TRAILER, 0, &[], 0, 1);
        out
    }

    fn sample() -> Vec<u8> {
        newc(&[
            (".", 0o040755, b"", 1, 2),
            ("etc", 0o040700, b"", 2, 2),
            ("etc/motd", 0o100640, b"hello from the initrd\n", 3, 1),
            ("bin/deep/tool", 0o100755, b"\x7fELF", 4, 1),
            ("etc/link", 0o120777, b"motd", 5, 1),
            ("hard1", 0o100644, b"", 6, 2),
            ("hard2", 0o100644, b"shared", 6, 2),
            ("empty", 0o100600, b"", 7, 1),
        ])
    }

    #[test]
    fn unpacks_files_modes_links_and_directories() {
        let v = Vfs::new();
        v.mount("/", Arc::new(kiln_ramfs::RamFs::new())).unwrap();
        let s = unpack(&v, &sample()).unwrap();
        assert_eq!(
            s,
            Summary {
                files: 4,
                dirs: 1,
                symlinks: 1,
                links: 1,
                bytes: 22 + 4 + 6
            }
        );
        assert_eq!(
            v.read_file("/etc/motd").unwrap(),
            b"hello from the initrd\n"
        );
        assert_eq!(v.stat("/etc/motd").unwrap().mode, 0o640);
        assert_eq!(v.stat("/etc").unwrap().mode, 0o700);
        assert_eq!(v.stat("/bin/deep/tool").unwrap().mode, 0o755);
        assert_eq!(
            v.read_file("/etc/link").unwrap(),
            b"hello from the initrd\n"
        );
        assert_eq!(v.readlink("/etc/link").unwrap(), "motd");
        assert_eq!(v.read_file("/hard1").unwrap(), b"shared");
        assert_eq!(v.stat("/hard1").unwrap().nlink, 2);
        assert_eq!(v.read_file("/empty").unwrap(), b"");
    }

    #[test]
    fn static_unpack_shares_the_archive_and_copies_on_write() {
        let archive: &'static [u8] = Vec::leak(sample());
        let before = archive.to_vec();
        let v = Vfs::new();
        v.mount("/", Arc::new(kiln_ramfs::RamFs::new())).unwrap();
        unpack_static(&v, archive).unwrap();
        assert_eq!(
            v.read_file("/etc/motd").unwrap(),
            b"hello from the initrd\n"
        );
        assert_eq!(v.read_file("/hard2").unwrap(), b"shared");
        // Writing changes the file, never the archive it came from.
        let fd = v.open("/etc/motd", kiln_vfs::flags::O_WRONLY, 0).unwrap();
        v.write(fd, b"HELLO").unwrap();
        v.close(fd).unwrap();
        assert_eq!(
            v.read_file("/etc/motd").unwrap(),
            b"HELLO from the initrd\n"
        );
        assert_eq!(archive, &before[..]);
        v.truncate("/bin/deep/tool", 2).unwrap();
        assert_eq!(v.read_file("/bin/deep/tool").unwrap(), b"\x7fE");
    }

    #[test]
    fn bad_archives_are_clear_errors() {
        let good = sample();
        let e = entries(&good[..good.len() - 20]).unwrap_err();
        assert!(e.what.contains("truncated"), "{e}");
        let e = entries(&good[..200]).unwrap_err();
        assert!(
            e.to_string().contains("truncated") || e.to_string().contains("corrupt"),
            "{e}"
        );
        let e = entries(b"").unwrap_err();
        assert_eq!(e.what, "empty archive");
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(entries(&bad).unwrap_err().what.contains("bad header magic"));
        let esc = newc(&[("../etc/passwd", 0o100644, b"x", 1, 1)]);
        let e = entries(&esc).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cpio entry '../etc/passwd' at offset 0: path leaves the root (too many '..')"
        );
        let dev = newc(&[("dev/tty", 0o020644, b"", 1, 1)]);
        assert!(entries(&dev)
            .unwrap_err()
            .what
            .contains("character devices"));
        let fifo = newc(&[("p", 0o010644, b"", 1, 1)]);
        assert!(entries(&fifo).unwrap_err().what.contains("FIFOs"));
        // A name padded with NULs is the name; a NUL inside one is refused.
        let padded = newc(&[("lib.so\0\0\0", 0o100644, b"x", 1, 1)]);
        assert_eq!(entries(&padded).unwrap()[0].path, "lib.so");
        let inner = newc(&[("a\0b", 0o100644, b"x", 1, 1)]);
        assert!(entries(&inner).unwrap_err().what.contains("NUL byte"));
        let long = "n".repeat(300);
        let e = entries(&newc(&[(&long, 0o100644, b"", 1, 1)])).unwrap_err();
        assert!(e.what.contains("longer than 255"), "{e}");
        assert_eq!(normalise("/a/./b/../c//d").unwrap(), "a/c/d");
        assert_eq!(
            normalise("a/../..").unwrap_err(),
            "path leaves the root (too many '..')"
        );
    }
}
