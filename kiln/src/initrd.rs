//! Packing a rootfs into an initrd: a folder becomes a newc cpio archive
//! (modes, directories, symlinks and hard links kept; times zeroed so the
//! same folder gives the same bytes); a ready cpio file is checked. Either
//! way the archive passes the same checks the kernel runs (kiln-initrd), so a
//! bad rootfs fails here with the file named, not at boot.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A newc header's length.
const HEADER: usize = 110;
const PAGE: usize = 4096;
/// Files at least this long start on a page boundary.
const ALIGN_FROM: usize = 16 * 1024;

/// Writes newc cpio entries.
struct Writer {
    out: Vec<u8>,
    next_ino: u32,
}

impl Writer {
    fn entry(&mut self, name: &str, mode: u32, ino: u32, nlink: u32, data: &[u8]) {
        // A large file's data starts on a page boundary of the archive
        // (the name field is padded with NULs, which the kernel's reader and
        // Linux's skip): the archive is loaded page-aligned, so a program
        // that maps the file (a shared library) gets its read-only pages in
        // place instead of copies.
        let mut namesize = name.len() + 1;
        if data.len() >= ALIGN_FROM {
            let start = (self.out.len() + HEADER + namesize).next_multiple_of(4);
            namesize += start.next_multiple_of(PAGE) - start;
        }
        let h = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.resize(self.out.len() + namesize - name.len(), 0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

/// Packs folder `root` into a newc archive.
pub fn pack_dir(root: &Path) -> Result<Vec<u8>> {
    let mut w = Writer {
        out: Vec::new(),
        next_ino: 1,
    };
    let meta = std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    w.entry(".", 0o040000 | (meta.mode() & 0o7777), 1, 2, &[]);
    w.next_ino = 2;
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    walk(root, root, &mut w, &mut links)?;
    w.entry("TRAILER!!!", 0, 0, 1, &[]);
    Ok(w.out)
}

fn walk(
    root: &Path,
    dir: &Path,
    w: &mut Writer,
    links: &mut HashMap<(u64, u64), u32>,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap();
        let Some(name) = rel.to_str() else {
            bail!("{}: the name is not UTF-8", path.display());
        };
        if let Some(long) = rel.iter().find(|c| c.len() > 255) {
            bail!(
                "{}: the name {:?} is longer than 255 bytes",
                path.display(),
                long
            );
        }
        let m = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ft = m.file_type();
        let perm = m.mode() & 0o7777;
        let ino = w.next_ino;
        if ft.is_dir() {
            w.next_ino += 1;
            w.entry(name, 0o040000 | perm, ino, 2, &[]);
            walk(root, &path, w, links)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
            let Some(t) = target.to_str() else {
                bail!("{}: the symlink target is not UTF-8", path.display());
            };
            w.next_ino += 1;
            w.entry(name, 0o120000 | 0o777, ino, 1, t.as_bytes());
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(&first) = links.get(&(m.dev(), m.ino())) {
                    // Another name for a file already in the archive.
                    w.entry(name, 0o100000 | perm, first, m.nlink() as u32, &[]);
                    continue;
                }
                links.insert((m.dev(), m.ino()), ino);
            }
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            w.next_ino += 1;
            w.entry(name, 0o100000 | perm, ino, m.nlink().max(1) as u32, &data);
        } else {
            let what = if ft.is_char_device() {
                "a character device (devfs provides /dev at boot)"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a special file"
            };
            bail!("{}: {what} cannot go into an initrd", path.display());
        }
    }
    Ok(())
}

/// Checks an archive with the kernel's own rules.
pub fn check(data: &[u8], origin: &Path) -> Result<usize> {
    match kiln_initrd::entries(data) {
        Ok(e) => Ok(e.len()),
        Err(e) => bail!("{}: {e}", origin.display()),
    }
}

/// Packs (folder) or checks (cpio file) `rootfs` and writes the archive to
/// `out` if it changed. Returns its size.
pub fn prepare(rootfs: &Path, out: &Path) -> Result<usize> {
    let data = if rootfs.is_dir() {
        pack_dir(rootfs)?
    } else {
        std::fs::read(rootfs).with_context(|| format!("reading {}", rootfs.display()))?
    };
    check(&data, rootfs)?;
    if std::fs::read(out).ok().as_deref() != Some(&data[..]) {
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_folder_the_kernel_accepts() {
        let d = std::env::temp_dir().join(format!("kiln-initrd-pack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("etc/deep")).unwrap();
        std::fs::write(d.join("etc/motd"), b"hi\n").unwrap();
        std::fs::write(d.join("etc/deep/bin"), [0u8, 1, 2, 255]).unwrap();
        std::os::unix::fs::symlink("motd", d.join("etc/link")).unwrap();
        std::fs::hard_link(d.join("etc/motd"), d.join("hard")).unwrap();
        let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        std::fs::write(d.join("etc/lib.so"), &big).unwrap();
        let a = pack_dir(&d).unwrap();
        assert_eq!(
            a,
            pack_dir(&d).unwrap(),
            "the same folder packs to the same bytes"
        );
        let e = kiln_initrd::entries(&a).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "",
                "etc",
                "etc/deep",
                "etc/deep/bin",
                "etc/lib.so",
                "etc/link",
                "etc/motd",
                "hard"
            ]
        );
        assert_eq!(e[3].data, [0, 1, 2, 255]);
        assert_eq!(e[4].data, &big[..]);
        assert_eq!(
            (e[4].data.as_ptr() as usize - a.as_ptr() as usize) % PAGE,
            0,
            "a large file's data starts on a page of the archive"
        );
        assert_ne!(
            (e[3].data.as_ptr() as usize - a.as_ptr() as usize) % PAGE,
            0,
            "small files are not padded"
        );
        assert_eq!(e[5].kind, kiln_initrd::Kind::Symlink);
        assert_eq!(e[6].ino, e[7].ino, "hard links share an inode");

        // A FIFO is refused with its name.
        let fifo = d.join("etc/pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = pack_dir(&d).unwrap_err().to_string();
        assert!(
            err.contains("etc/pipe: a FIFO cannot go into an initrd"),
            "{err}"
        );
        std::fs::remove_file(&fifo).unwrap();

        // A corrupt cpio file is refused at build time.
        let bad = d.join("bad.cpio");
        std::fs::write(&bad, &a[..a.len() / 2]).unwrap();
        let err = prepare(&bad, &d.join("out.cpio")).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cpio", bad.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
