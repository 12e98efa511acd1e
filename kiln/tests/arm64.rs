//! arm64: the same apps, built with `--arch arm64` and booted on QEMU's
//! virt board (TCG): output, arguments, exit codes and fault reports as on
//! x86_64, and a raw arm64 Image for boot loaders.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds each app once for arm64 per test process.
fn built(app: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let mut done = BUILT.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap_or_else(|e| e.into_inner());
    if !done.iter().any(|a| a == app) {
        let o = Command::new(env!("CARGO_BIN_EXE_kiln")).current_dir(root()).args(["build", "-q", "--arch", "arm64", &format!("apps/{app}")]).output().unwrap();
        assert!(o.status.success(), "kiln build --arch arm64 apps/{app}:\n{}", String::from_utf8_lossy(&o.stderr));
        done.push(app.to_string());
    }
    root().join("apps").join(app).join(".kiln/build").join(format!("{app}_qemu-arm64"))
}

fn boot(app: &str, args: &[&str]) -> (i32, String) {
    built(app);
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["run", "--arch", "arm64", "--timeout", "60", &format!("apps/{app}"), "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn helloworld_boots_on_virt_with_its_arguments() {
    let (code, out) = boot("helloworld", &["a", "two words"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kiln: helloworld on qemu/arm64 virt"), "{out}");
    assert!(out.contains("Hello, world!\narg 1: a\narg 2: two words\n"), "{out}");
    assert!(out.contains("(virt, TCG,"), "{out}");
}

#[test]
fn the_kernel_is_an_arm64_image() {
    let image = std::fs::read(built("helloworld")).unwrap();
    assert_eq!(&image[56..60], b"ARM\x64", "arm64 Image magic");
    assert_eq!(u64::from_le_bytes(image[8..16].try_into().unwrap()), 0x80000, "text_offset");
    let size = u64::from_le_bytes(image[16..24].try_into().unwrap());
    assert!(size >= image.len() as u64, "image_size {size} covers the file and .bss");
    // The ELF stays beside it for debuggers.
    let elf = std::fs::read(built("helloworld").with_extension("elf")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183, "EM_AARCH64");
}

#[test]
fn exit_codes_and_panics_reach_kiln_run() {
    for code in ["0", "42", "126"] {
        let (c, out) = boot("crashtest", &["exit", code]);
        assert_eq!(c.to_string(), code, "{out}");
    }
    let (c, out) = boot("crashtest", &["panic"]);
    assert_eq!(c, 101, "{out}");
    assert!(out.contains("crashtest was asked to panic"), "{out}");
}

#[test]
fn faults_are_reported_with_syndrome_and_address() {
    let (c, out) = boot("crashtest", &["null"]);
    assert_eq!(c, 125, "{out}");
    assert!(out.contains("kiln: CPU exception class 0x25 (data abort)"), "{out}");
    assert!(out.contains("fault address       0x0000000000000000"), "{out}");
    assert!(out.contains("likely cause: null pointer dereference"), "{out}");
    let (c, out) = boot("crashtest", &["ud"]);
    assert_eq!(c, 125, "{out}");
    assert!(out.contains("(unknown reason (undefined instruction))"), "{out}");
    assert!(out.contains("instruction pointer 0x00000000400"), "{out}");
}
