//! Any bytes as an initrd: checking and unpacking must return an error or
//! succeed, never panic, loop or corrupt the file system.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = kiln_initrd::entries(data) {
        for e in &list {
            assert!(!e.path.starts_with('/') && !e.path.split('/').any(|c| c == ".." || c == "."));
        }
    }
    let v = kiln_vfs::Vfs::new();
    v.mount("/", Arc::new(kiln_ramfs::RamFs::new())).unwrap();
    let _ = kiln_initrd::unpack(&v, data);
    // Whatever was unpacked stays inside the root and readable.
    let _ = v.readdir("/");
});
