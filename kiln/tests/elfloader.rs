//! The ELF loader runs unmodified Linux programs from a run-time initrd: a
//! static-pie Rust program built here for x86_64-unknown-linux-musl (std:
//! args, environment, files, heap, exit code), Debian's glibc echo and cat
//! through their dynamic loader, and busybox-static at its fixed address;
//! what it cannot run is refused with the reason.
//!
//! Under TCG (-W): some hosts' KVM (PVM) cannot emulate the SSE
//! instructions ordinary Linux programs use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(rootfs: &Path, extra: &[&str], args: &[&str]) -> (i32, String) {
    let b = Command::new(env!("CARGO_BIN_EXE_kiln")).current_dir(root()).args(["build", "-q", "apps/elfloader"]).status().unwrap();
    assert!(b.success());
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["run", "-W", "--timeout", "120", "--initrd", rootfs.to_str().unwrap()])
        .args(extra)
        .args(["apps/elfloader", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The test program, built for Linux with musl (static-pie).
fn hello() -> PathBuf {
    let dir = root().join("kiln/tests/linux/hello");
    let o = Command::new(env!("CARGO"))
        .args(["build", "-q", "--release", "--target", "x86_64-unknown-linux-musl"])
        .current_dir(&dir)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(o.status.success(), "building the Linux test program: {}", String::from_utf8_lossy(&o.stderr));
    dir.join("target/x86_64-unknown-linux-musl/release/linux-hello")
}

fn rootfs(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-elf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc")).unwrap();
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(d.join("etc/motd"), "served by Kiln\n").unwrap();
    d
}

#[test]
fn a_static_pie_rust_program_runs_unmodified() {
    let prog = hello();
    let head = std::fs::read(&prog).unwrap();
    assert_eq!(u16::from_le_bytes([head[16], head[17]]), 3, "ET_DYN: position-independent");
    let d = rootfs("pie");
    std::fs::copy(&prog, d.join("bin/hello")).unwrap();
    let (code, out) = run(&d, &["-e", "GREETING=hello from the host"], &["/bin/hello", "a", "two words"]);
    assert!(out.contains(r#"linux-hello: 3 argument(s): ["/bin/hello", "a", "two words"]"#), "{out}");
    assert!(out.contains("GREETING=hello from the host\n"), "{out}");
    assert!(out.contains("motd: served by Kiln\n"), "{out}");
    assert!(out.contains("sum of multiples of 3: 166833\n"), "{out}");
    assert_eq!(code, 43, "the program's own exit code (40 + argc): {out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn programs_it_cannot_run_are_refused_with_the_reason() {
    let d = rootfs("bad");
    let (code, out) = run(&d, &[], &["/bin/none"]);
    assert_eq!(code, 126, "{out}");
    assert!(out.contains("elfloader: /bin/none: no such file or directory (ENOENT)"), "{out}");
    std::fs::write(d.join("bin/text"), "#!/bin/sh\necho hi\n").unwrap();
    let (code, out) = run(&d, &[], &["/bin/text"]);
    assert_eq!(code, 126, "{out}");
    assert!(out.contains("elfloader: /bin/text: not a valid ELF file"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn busybox_static_runs_at_its_fixed_address() {
    // Debian's busybox-static is a static non-PIE linked at 4 MiB, which the
    // platform keeps out of the heap when the ELF loader is configured.
    let d = rootfs("busybox");
    std::fs::copy("/bin/busybox", d.join("bin/busybox")).unwrap();
    let (code, out) = run(&d, &["-M", "256M"], &["/bin/busybox", "echo", "hello", "from busybox"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nhello from busybox\n"), "{out}");
    let (code, out) = run(&d, &["-M", "256M"], &["/bin/busybox", "sh", "-c", "echo one; echo two three; exit 5"]);
    assert!(out.contains("\none\ntwo three\n"), "{out}");
    assert_eq!(code, 5, "the shell's exit status: {out}");
    let (code, out) = run(&d, &["-M", "256M"], &["/bin/busybox", "cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nserved by Kiln\n"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn debian_programs_linked_against_glibc_run_through_their_loader() {
    // echo and cat from Debian's coreutils (dynamic PIEs): `kiln rootfs add`
    // copies them with libc and ld-linux; the loader maps the libraries.
    let d = rootfs("glibc");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["rootfs", "add", "--to", d.to_str().unwrap(), "/bin/echo", "/bin/cat"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, out) = run(&d, &[], &["/bin/echo", "hello", "from", "Debian's", "echo"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nhello from Debian's echo\n"), "{out}");
    let (code, out) = run(&d, &[], &["/bin/cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nserved by Kiln\n"), "{out}");
    // The summary at exit names what the loader looked for and did not find.
    let summary = out.lines().find(|l| l.contains("files the program looked for and did not find: ")).unwrap_or_default();
    assert!(summary.contains(" /etc/ld.so.cache,"), "{out}");
    // --strace prints every call with its result.
    let (code, out) = run(&d, &["--strace"], &["/bin/echo", "traced"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("strace: openat(0xffffff9c, "), "{out}");
    assert!(out.contains("strace: write(0x1, ") && out.contains(", 0x7) = 7"), "{out}");
    assert!(out.contains("strace: exit_group(0)"), "{out}");
    let (code, out) = run(&d, &[], &["/bin/cat", "/etc/none"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/bin/cat: /etc/none: No such file or directory"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}
