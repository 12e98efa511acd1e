//! Random path operations on a small tree: path resolution (`..`,
//! symlinks, long names, loops) must give errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let v = kiln_vfs::Vfs::new();
    v.mount("/", Arc::new(kiln_ramfs::RamFs::new())).unwrap();
    v.mkdir("/a", 0o755).unwrap();
    v.write_file("/a/f", b"x", 0o644).unwrap();
    v.symlink("/a", "/s").unwrap();
    v.symlink("../a/f", "/a/up").unwrap();
    v.symlink("/l2", "/l1").unwrap();
    v.symlink("/l1", "/l2").unwrap();
    while let (Some(op), Some(p)) = (parts.next(), parts.next()) {
        let q = parts.next().unwrap_or("/a/g");
        let _ = match op.bytes().next().unwrap_or(0) % 9 {
            0 => v.stat(p).map(|_| ()),
            1 => v.mkdir(p, 0o755),
            2 => v.write_file(p, q.as_bytes(), 0o644),
            3 => v.symlink(q, p),
            4 => v.rename(p, q),
            5 => v.unlink(p),
            6 => v.rmdir(p),
            7 => v.readdir(p).map(|_| ()),
            _ => v.link(p, q),
        };
        let _ = kiln_initrd::normalise(p);
    }
    // The tree stays walkable.
    let _ = v.readdir("/");
});
