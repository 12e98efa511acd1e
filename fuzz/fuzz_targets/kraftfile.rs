//! Any text as a Kraftfile: reading it gives a Kraftfile or an error that
//! names the file, never a panic; selecting a target is as safe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match kiln::kraftfile::parse(Path::new("/fuzz/Kraftfile"), text) {
        Ok(kf) => {
            for (plat, arch) in [(None, None), (Some("qemu"), Some("x86_64")), (Some("raspi4"), Some("arm64"))] {
                let _ = kf.select_target(plat, arch);
            }
        }
        Err(e) => assert!(format!("{e:#}").contains("Kraftfile"), "error without the file: {e:#}"),
    }
});
