//! `kiln rootfs add PROGRAM...`: copies host programs into an app's rootfs
//! folder with everything they need to run under Kiln's ELF loader: the
//! shared libraries they name (DT_NEEDED, recursively, found through their
//! RUNPATH/RPATH and the host's library folders, as the dynamic loader
//! would) and the dynamic loader itself (PT_INTERP); and, when the folder
//! has none, a user database (`/etc/passwd`, `/etc/group`: root, nobody),
//! as programs that look a user up (`memcached -u root`, nginx's workers)
//! find one on any Linux system. No Docker, no container image: the files
//! come from this machine.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the host's dynamic loader looks when a library has no RUNPATH.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// What one program needs: (its interpreter, its libraries), as host paths.
pub struct Closure {
    pub interpreter: Option<PathBuf>,
    pub libraries: Vec<PathBuf>,
}

struct Elf {
    interp: Option<String>,
    needed: Vec<String>,
    search: Vec<String>,
}

fn read_elf(path: &Path) -> Result<Elf> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = goblin::elf::Elf::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not an ELF file: {e}", path.display()))?;
    let origin = path
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    let search = elf
        .runpaths
        .iter()
        .chain(elf.rpaths.iter())
        .flat_map(|p| p.split(':'))
        .map(|p| p.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin))
        .collect();
    Ok(Elf {
        interp: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        search,
    })
}

/// Finds `name` the way the dynamic loader does: the requester's
/// RUNPATH/RPATH first, then the system folders.
fn find(name: &str, search: &[String], requester: &Path) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    for dir in search
        .iter()
        .map(String::as_str)
        .chain(LIB_DIRS.iter().copied())
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{}: needs {name}, which is in none of {}{}",
        requester.display(),
        if search.is_empty() {
            String::new()
        } else {
            format!("{} ", search.join(", "))
        },
        LIB_DIRS.join(", ")
    )
}

/// The interpreter and every library `program` needs, transitively.
pub fn closure(program: &Path) -> Result<Closure> {
    let top = read_elf(program)?;
    let interpreter = top.interp.as_ref().map(PathBuf::from);
    let mut seen = BTreeSet::new();
    let mut libraries = Vec::new();
    let mut queue: Vec<(String, Vec<String>, PathBuf)> = top
        .needed
        .iter()
        .map(|n| (n.clone(), top.search.clone(), program.to_path_buf()))
        .collect();
    while let Some((name, search, requester)) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let path = find(&name, &search, &requester)?;
        let lib = read_elf(&path)?;
        for n in &lib.needed {
            queue.push((n.clone(), lib.search.clone(), path.clone()));
        }
        libraries.push(path);
    }
    libraries.sort();
    Ok(Closure {
        interpreter,
        libraries,
    })
}

/// Copies `src` to `root/src` (the same absolute path inside the rootfs),
/// following symlinks (the rootfs gets the file itself).
fn copy_in(root: &Path, src: &Path) -> Result<PathBuf> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(src, &dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(dst)
}

/// The user database a rootfs without one gets (the guest runs as root).
const USERS: [(&str, &str); 2] = [
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
];

/// `kiln rootfs add`: copies each program and its closure into `root`.
/// Returns the rootfs paths written.
pub fn add(root: &Path, programs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for p in programs {
        let p = if p.is_absolute() {
            p.clone()
        } else {
            std::env::current_dir()?.join(p)
        };
        if !p.is_file() {
            bail!("{}: no such program", p.display());
        }
        let c = closure(&p)?;
        written.push(copy_in(root, &p)?);
        if let Some(i) = &c.interpreter {
            if !i.is_file() {
                bail!(
                    "{}: its dynamic loader {} is not on this machine",
                    p.display(),
                    i.display()
                );
            }
            written.push(copy_in(root, i)?);
        }
        for l in &c.libraries {
            written.push(copy_in(root, l)?);
        }
    }
    for (file, text) in USERS {
        let path = root.join(file);
        if !path.exists() {
            std::fs::create_dir_all(root.join("etc"))?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            written.push(Path::new("/").join(file));
        }
    }
    written.sort();
    written.dedup();
    Ok(written)
}

/// Copies the folder `from` into `to` (files, folders, symlinks; modes kept).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)
                .with_context(|| format!("creating {}", dst.display()))?;
        } else if t.is_dir() {
            std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
