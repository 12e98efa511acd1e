//! Volumes: data that outlives a guest.
//!
//! A volume is named in the Kraftfile's `volumes:` or with `kiln run -v
//! HOST:GUEST[:ro]`, where HOST is
//! - a disk image holding a FAT file system, or the name of one made with
//!   `kiln volume create` (kept in Kiln's state folder): it becomes a
//!   virtio-blk device with a serial number (`kiln-vol0`, ...) that the
//!   guest's LIBFATFS mounts;
//! - a host folder: it is shared over virtio-9p with the mount tag
//!   `kiln-fs0`, ..., which the guest's LIB9PFS mounts.
//!
//! Each gets an entry of `vfs.fstab=` naming its device by serial or tag,
//! so the guest finds each volume whatever order the machine lists its
//! devices in.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What a volume is on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A disk image (virtio-blk, FAT).
    Image,
    /// A folder (virtio-9p).
    Folder,
}

/// One volume of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The image file or folder.
    pub image: PathBuf,
    pub kind: Kind,
    /// Absolute path in the guest.
    pub destination: String,
    pub read_only: bool,
}

/// Where named volumes live: `.volumes` in the instances' state folder.
pub fn dir() -> PathBuf {
    crate::instance::state_dir().join(".volumes")
}

fn named(name: &str) -> PathBuf {
    dir().join(format!("{name}.img"))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Resolves a volume's source: a path (relative to `base`) when it has a
/// `/` or starts with `.`, else a named volume.
fn source(s: &str, base: &Path) -> Result<(PathBuf, Kind)> {
    if s.contains('/') || s.starts_with('.') {
        let p = base.join(s);
        if p.is_dir() {
            return Ok((p, Kind::Folder));
        }
        if !p.is_file() {
            bail!("{s}: no such image file or folder");
        }
        return Ok((p, Kind::Image));
    }
    if !valid_name(s) {
        bail!(
            "'{s}' is neither a path (put ./ in front of a file in this folder) nor a volume name"
        );
    }
    let p = named(s);
    if !p.is_file() {
        bail!("no volume named '{s}' (kiln volume create {s} --size 64M makes one; kiln volume ls lists them)");
    }
    Ok((p, Kind::Image))
}

fn destination(d: &str) -> Result<String> {
    if !d.starts_with('/') {
        bail!("the guest path '{d}' must be absolute");
    }
    let clean: Vec<&str> = d
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if clean.is_empty() {
        bail!(
            "a volume cannot be mounted on / (the initrd is the root); pick a folder such as /data"
        );
    }
    if clean.contains(&"..") {
        bail!("the guest path '{d}' must not contain '..'");
    }
    if d.contains([':', ' ', '"']) {
        bail!("the guest path '{d}' must not contain ':', blanks or quotes");
    }
    Ok(format!("/{}", clean.join("/")))
}

/// Parses `-v HOST:GUEST[:ro|rw]`, HOST relative to `base`.
pub fn parse(spec: &str, base: &Path) -> Result<Mount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, ro) = match parts[..] {
        [s, d] => (s, d, false),
        [s, d, "ro"] => (s, d, true),
        [s, d, "rw"] => (s, d, false),
        [_, _, m] => bail!("-v {spec}: unknown mode '{m}' (ro or rw)"),
        _ => bail!("-v {spec}: expected HOST:GUEST[:ro]"),
    };
    (|| -> Result<Mount> {
        let (image, kind) = source(src, base)?;
        Ok(Mount {
            image,
            kind,
            destination: destination(dst)?,
            read_only: ro,
        })
    })()
    .with_context(|| format!("-v {spec}"))
}

/// The Kraftfile's `volumes:`, resolved against its folder.
pub fn from_kraftfile(kf: &crate::kraftfile::Kraftfile) -> Result<Vec<Mount>> {
    let base = kf.path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for v in &kf.volumes {
        let m = source(&v.source, base)
            .and_then(|(image, kind)| {
                Ok(Mount {
                    image,
                    kind,
                    destination: destination(&v.destination)?,
                    read_only: v.read_only,
                })
            })
            .map_err(|e| anyhow::anyhow!("{}:{}: volumes: {e}", kf.path.display(), v.line))?;
        if let Some(d) = &v.driver {
            let fits = match m.kind {
                Kind::Image => matches!(d.as_str(), "vfat" | "fat" | "blk" | "virtio-blk"),
                Kind::Folder => matches!(d.as_str(), "9pfs" | "9p"),
            };
            if !fits {
                bail!(
                    "{}:{}: volume driver '{d}' does not fit {} (a folder is shared with 9pfs, an image mounted with vfat; leaving `driver` out picks it)",
                    kf.path.display(),
                    v.line,
                    v.source
                );
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// Checks a run's volumes together: one guest path each, one mount per
/// image.
pub fn check(all: &[Mount]) -> Result<()> {
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            if a.destination == b.destination {
                bail!("two volumes are mounted on {}", a.destination);
            }
            if std::fs::canonicalize(&a.image).ok() == std::fs::canonicalize(&b.image).ok() {
                bail!(
                    "{} is given twice (on {} and {})",
                    a.image.display(),
                    b.destination,
                    a.destination
                );
            }
        }
    }
    Ok(())
}

/// The serial number of the `i`th volume's disk, or the mount tag of its
/// shared folder.
pub fn serial(i: usize, kind: Kind) -> String {
    match kind {
        Kind::Image => format!("kiln-vol{i}"),
        Kind::Folder => format!("kiln-fs{i}"),
    }
}

/// The kernel parameter that mounts `all`: disks by their serial numbers,
/// or (`serials` false: a VMM that gives disks none) by their names, vda,
/// vdb, ... in the order they are attached.
pub fn fstab_param(all: &[Mount], serials: bool) -> Option<String> {
    if all.is_empty() {
        return None;
    }
    let entries: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let fs = match m.kind {
                Kind::Image => "vfat",
                Kind::Folder => "9pfs",
            };
            let source = if serials || m.kind == Kind::Folder {
                serial(i, m.kind)
            } else {
                let nth = all[..i].iter().filter(|o| o.kind == Kind::Image).count();
                format!("vd{}", (b'a' + nth as u8) as char)
            };
            format!(
                "{source}:{}:{fs}{}",
                m.destination,
                if m.read_only { ":ro" } else { "" }
            )
        })
        .collect();
    Some(format!("vfs.fstab={}", entries.join(" ")))
}

/// The Kconfig symbols volumes need: both file systems whatever the kinds,
/// so that switching between an image and a folder does not rebuild the
/// kernel (and runs of one app with different volumes share one image).
pub fn libraries(all: &[Mount]) -> Vec<&'static str> {
    if all.is_empty() {
        Vec::new()
    } else {
        vec!["CONFIG_LIBFATFS", "CONFIG_LIB9PFS"]
    }
}

/// Parses a size: 64M, 1G, 512K, or bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("--size {s}: expected a size such as 64M or 1G"))?;
    n.checked_mul(mul)
        .with_context(|| format!("--size {s}: too large"))
}

/// Makes an image of `bytes` at `path` with an empty FAT file system
/// (FAT12 below 16 MiB, FAT16 below 512 MiB, FAT32 above, as mkfs.fat).
pub fn format_image(path: &Path, bytes: u64, label: &str) -> Result<()> {
    if bytes < 1 << 20 {
        bail!("a volume needs at least 1M");
    }
    if bytes > 1 << 40 {
        bail!("a volume can have at most 1T");
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let made = (|| -> Result<()> {
        f.set_len(bytes)?;
        let mut dev = hadris_storage::host::FileDevice::new(f.try_clone()?)?;
        let mut label11: String = label
            .to_ascii_uppercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(11)
            .collect();
        if label11.is_empty() {
            label11 = "KILN".into();
        }
        let options = hadris_fat::FatOptions::new().with_label(
            hadris_fat::VolumeLabel::new(&label11)
                .map_err(|e| anyhow::anyhow!("label {label11}: {e:?}"))?,
        );
        hadris_fat::sync::format(&mut dev, &options)
            .map_err(|e| anyhow::anyhow!("formatting: {e}"))?;
        f.sync_all()?;
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// `kiln volume create NAME --size SIZE`.
pub fn create(name: &str, size: &str) -> Result<PathBuf> {
    if !valid_name(name) {
        bail!("'{name}': a volume name is letters, digits, '-' and '_' (at most 64)");
    }
    let bytes = parse_size(size)?;
    std::fs::create_dir_all(dir()).with_context(|| format!("creating {}", dir().display()))?;
    let p = named(name);
    if p.exists() {
        bail!("a volume named '{name}' exists already (kiln volume rm {name} removes it)");
    }
    format_image(&p, bytes, name)?;
    Ok(p)
}

/// `kiln volume ls`: name, size, free space and the image's path.
pub fn list() -> Result<()> {
    let mut names: Vec<(String, PathBuf)> = match std::fs::read_dir(dir()) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let n = p.file_name()?.to_str()?.strip_suffix(".img")?.to_string();
                Some((n, p))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    println!("{:<24} {:>10} {:>10}  IMAGE", "NAME", "SIZE", "FREE");
    for (n, p) in names {
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        let free = free_bytes(&p).map_or("?".to_string(), human);
        println!(
            "{:<24} {:>10} {:>10}  {}",
            n,
            human(size),
            free,
            p.display()
        );
    }
    Ok(())
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1}M", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{}K", b >> 10)
    }
}

/// Free space of the FAT file system in an image (read-only look).
fn free_bytes(image: &Path) -> Option<u64> {
    let dev = hadris_storage::host::FileDevice::new(std::fs::File::open(image).ok()?).ok()?;
    let mut fs = hadris_fat::sync::FatFs::mount(
        hadris_storage::ReadOnly::new(dev),
        hadris_fs::MountOptions::new().read_only(),
    )
    .ok()?;
    let s = fs.statfs().ok()?;
    Some(s.free_bytes())
}

/// `kiln volume rm NAME`.
pub fn remove(name: &str) -> Result<()> {
    if !valid_name(name) {
        bail!("'{name}' is not a volume name");
    }
    let p = named(name);
    if !p.is_file() {
        bail!("no volume named '{name}'");
    }
    if let Some(user) = crate::instance::using(&p) {
        bail!("volume '{name}' is in use by instance '{user}' (kiln stop {user} first)");
    }
    std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_are_checked() {
        let d = std::env::temp_dir().join(format!("kiln-vol-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let img = d.join("a.img");
        std::fs::write(&img, b"").unwrap();
        let m = parse(&format!("{}:/data:ro", img.display()), Path::new("/")).unwrap();
        assert_eq!(m.destination, "/data");
        assert!(m.read_only);
        assert_eq!(
            parse(&format!("{}:/data/./x/", img.display()), Path::new("/"))
                .unwrap()
                .destination,
            "/data/x"
        );
        let e = |s: &str| format!("{:#}", parse(s, Path::new("/")).unwrap_err());
        assert!(e(&format!("{}:/", img.display())).contains("cannot be mounted on /"));
        assert!(e(&format!("{}:data", img.display())).contains("must be absolute"));
        assert!(e(&format!("{}:/data:rx", img.display())).contains("unknown mode 'rx'"));
        let folder = parse(&format!("{}:/x", d.display()), Path::new("/")).unwrap();
        assert_eq!(folder.kind, Kind::Folder);
        assert!(e("./no-such.img:/x").contains("no such image file or folder"));
        assert!(e("/nope").contains("expected HOST:GUEST"));
        let two = [
            Mount {
                image: img.clone(),
                kind: Kind::Image,
                destination: "/a".into(),
                read_only: false,
            },
            Mount {
                image: img.clone(),
                kind: Kind::Image,
                destination: "/b".into(),
                read_only: false,
            },
        ];
        assert!(check(&two).unwrap_err().to_string().contains("given twice"));
        assert_eq!(
            fstab_param(&[two[0].clone(), folder.clone()], true).unwrap(),
            "vfs.fstab=kiln-vol0:/a:vfat kiln-fs1:/x:9pfs"
        );
        // Firecracker's disks have no serial numbers: by name.
        let other = Mount {
            destination: "/c".into(),
            read_only: true,
            ..two[1].clone()
        };
        assert_eq!(
            fstab_param(&[two[0].clone(), folder.clone(), other], false).unwrap(),
            "vfs.fstab=vda:/a:vfat kiln-fs1:/x:9pfs vdb:/c:vfat:ro"
        );
        assert_eq!(libraries(&[folder]), ["CONFIG_LIBFATFS", "CONFIG_LIB9PFS"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }
}
