//! devfs: the device nodes programs expect under `/dev`: `null` (discards,
//! reads nothing), `zero` (reads zeros), `urandom` and `random` (lib/random's
//! ChaCha20 generator, seeded from the CPU and the host), and `console`
//! (writes go to the kernel console).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use kiln_vfs::{DirEntry, Error, FileSystem, FileType, Ino, Result, Stat};
use spin::Mutex;

const ROOT: Ino = 1;
const NODES: [(&str, Ino); 5] = [
    ("console", 2),
    ("null", 3),
    ("random", 4),
    ("urandom", 4),
    ("zero", 5),
];

/// The device file system.
pub struct DevFs {
    rng: Mutex<u64>,
    console: fn(&[u8]),
}

impl DevFs {
    /// `seed` starts the random generator; `console` receives writes to
    /// `/dev/console`.
    pub fn new(seed: u64, console: fn(&[u8])) -> DevFs {
        DevFs {
            rng: Mutex::new(seed | 1),
            console,
        }
    }

    fn fill_random(&self, buf: &mut [u8]) {
        let _ = &self.rng;
        kiln_random::fill(buf);
    }
}

impl FileSystem for DevFs {
    fn name(&self) -> &'static str {
        "devfs"
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn lookup(&self, dir: Ino, name: &str) -> Result<Ino> {
        if dir != ROOT {
            return Err(Error::NotDir);
        }
        NODES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, i)| *i)
            .ok_or(Error::NotFound)
    }

    fn stat(&self, ino: Ino) -> Result<Stat> {
        let (kind, mode, nlink) = match ino {
            ROOT => (FileType::Dir, 0o755, 2),
            2..=5 => (
                FileType::CharDevice,
                if ino == 2 { 0o600 } else { 0o666 },
                1,
            ),
            _ => return Err(Error::NotFound),
        };
        Ok(Stat {
            ino,
            kind,
            mode,
            size: 0,
            blocks: 0,
            nlink,
            mtime: 0,
        })
    }

    fn read(&self, ino: Ino, _offset: u64, buf: &mut [u8]) -> Result<usize> {
        match ino {
            ROOT => Err(Error::IsDir),
            2 | 3 => Ok(0),
            4 => {
                self.fill_random(buf);
                Ok(buf.len())
            }
            5 => {
                buf.fill(0);
                Ok(buf.len())
            }
            _ => Err(Error::NotFound),
        }
    }

    fn write(&self, ino: Ino, _offset: u64, buf: &[u8]) -> Result<usize> {
        match ino {
            ROOT => Err(Error::IsDir),
            2 => {
                (self.console)(buf);
                Ok(buf.len())
            }
            3..=5 => Ok(buf.len()),
            _ => Err(Error::NotFound),
        }
    }

    fn truncate(&self, ino: Ino, _size: u64) -> Result<()> {
        if ino == ROOT {
            Err(Error::IsDir)
        } else {
            Ok(())
        }
    }

    fn create(&self, _dir: Ino, _name: &str, _kind: FileType, _mode: u32) -> Result<Ino> {
        Err(Error::NotPermitted)
    }

    fn unlink(&self, _dir: Ino, _name: &str) -> Result<()> {
        Err(Error::NotPermitted)
    }

    fn rmdir(&self, _dir: Ino, _name: &str) -> Result<()> {
        Err(Error::NotPermitted)
    }

    fn rename(&self, _from_dir: Ino, _from: &str, _to_dir: Ino, _to: &str) -> Result<()> {
        Err(Error::NotPermitted)
    }

    fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        if dir != ROOT {
            return Err(Error::NotDir);
        }
        Ok(NODES
            .iter()
            .map(|(n, i)| DirEntry {
                name: (*n).into(),
                ino: *i,
                kind: FileType::CharDevice,
            })
            .collect())
    }

    fn set_mode(&self, _ino: Ino, _mode: u32) -> Result<()> {
        Err(Error::NotPermitted)
    }
}

/// Where devfs is mounted (`CONFIG_LIBDEVFS_MOUNTPOINT`).
const MOUNTPOINT: &str = match option_env!("KILN_CONFIG_LIBDEVFS_MOUNTPOINT") {
    Some(p) => p,
    None => "/dev",
};

fn console_write(b: &[u8]) {
    match core::str::from_utf8(b) {
        Ok(s) => kiln_console::print!("{s}"),
        Err(_) => kiln_console::print!("{}", String::from_utf8_lossy(b)),
    }
}

/// Boot-time init (lib/boot runs it when LIBDEVFS is selected): mounts
/// devfs, seeding the random generator from the boot clock.
pub fn kiln_init() -> core::result::Result<(), String> {
    let v = kiln_vfs::vfs();
    let seed = kiln_boot::platform().map_or(1, |p| p.ticks()) ^ 0x9e37_79b9_7f4a_7c15;
    let fs = alloc::sync::Arc::new(DevFs::new(seed, console_write));
    let r = if v.mounts().is_empty() {
        v.mount("/", fs)
    } else {
        v.mkdir_all(MOUNTPOINT, 0o755)
            .and_then(|_| v.mount(MOUNTPOINT, fs))
    };
    r.map_err(|e| alloc::format!("mounting {MOUNTPOINT}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use kiln_vfs::flags::*;
    use kiln_vfs::Vfs;

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    #[test]
    fn device_nodes_behave_like_linux() {
        let v = Vfs::new();
        v.mount("/", Arc::new(kiln_ramfs_stub::Root)).unwrap();
        v.mount(
            "/dev",
            Arc::new(DevFs::new(42, |b| WRITTEN.lock().extend_from_slice(b))),
        )
        .unwrap();
        let mut buf = [7u8; 16];
        let fd = v.open("/dev/null", O_RDWR, 0).unwrap();
        assert_eq!(v.read(fd, &mut buf).unwrap(), 0);
        assert_eq!(v.write(fd, b"gone").unwrap(), 4);
        let fd = v.open("/dev/zero", O_RDONLY, 0).unwrap();
        assert_eq!(v.read(fd, &mut buf).unwrap(), 16);
        assert_eq!(buf, [0; 16]);
        let fd = v.open("/dev/urandom", O_RDONLY, 0).unwrap();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        v.read(fd, &mut a).unwrap();
        v.read(fd, &mut b).unwrap();
        assert_ne!(a, b);
        assert!(a.iter().any(|x| *x != 0));
        let fd = v.open("/dev/console", O_WRONLY, 0).unwrap();
        v.write(fd, b"to the console").unwrap();
        assert_eq!(&WRITTEN.lock()[..], b"to the console");
        assert_eq!(v.stat("/dev/zero").unwrap().st_mode(), 0o020666);
        let names: Vec<String> = v
            .readdir("/dev")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["console", "null", "random", "urandom", "zero"]);
        assert_eq!(
            v.open("/dev/new", O_CREAT | O_WRONLY, 0o644),
            Err(Error::NotPermitted)
        );
        assert_eq!(v.unlink("/dev/null"), Err(Error::NotPermitted));
    }

    /// A root with one empty `dev` directory, so devfs has a mount point.
    mod kiln_ramfs_stub {
        use super::*;
        pub struct Root;
        impl FileSystem for Root {
            fn name(&self) -> &'static str {
                "stub"
            }
            fn root(&self) -> Ino {
                1
            }
            fn lookup(&self, dir: Ino, name: &str) -> Result<Ino> {
                if dir == 1 && name == "dev" {
                    Ok(2)
                } else {
                    Err(Error::NotFound)
                }
            }
            fn stat(&self, ino: Ino) -> Result<Stat> {
                Ok(Stat {
                    ino,
                    kind: FileType::Dir,
                    mode: 0o755,
                    size: 0,
                    blocks: 0,
                    nlink: 2,
                    mtime: 0,
                })
            }
            fn read(&self, _: Ino, _: u64, _: &mut [u8]) -> Result<usize> {
                Err(Error::IsDir)
            }
            fn write(&self, _: Ino, _: u64, _: &[u8]) -> Result<usize> {
                Err(Error::IsDir)
            }
            fn truncate(&self, _: Ino, _: u64) -> Result<()> {
                Err(Error::IsDir)
            }
            fn create(&self, _: Ino, _: &str, _: FileType, _: u32) -> Result<Ino> {
                Err(Error::NotPermitted)
            }
            fn symlink(&self, _: Ino, _: &str, _: &str) -> Result<Ino> {
                Err(Error::NotPermitted)
            }
            fn readlink(&self, _: Ino) -> Result<String> {
                Err(Error::Invalid)
            }
            fn link(&self, _: Ino, _: &str, _: Ino) -> Result<()> {
                Err(Error::NotPermitted)
            }
            fn unlink(&self, _: Ino, _: &str) -> Result<()> {
                Err(Error::NotPermitted)
            }
            fn rmdir(&self, _: Ino, _: &str) -> Result<()> {
                Err(Error::NotPermitted)
            }
            fn rename(&self, _: Ino, _: &str, _: Ino, _: &str) -> Result<()> {
                Err(Error::NotPermitted)
            }
            fn readdir(&self, _: Ino) -> Result<Vec<DirEntry>> {
                Ok(alloc::vec![DirEntry {
                    name: "dev".into(),
                    ino: 2,
                    kind: FileType::Dir
                }])
            }
            fn set_mode(&self, _: Ino, _: u32) -> Result<()> {
                Err(Error::NotPermitted)
            }
        }
    }
}
