//! The file libraries in a booted kernel: apps/files reads its initrd (the
//! Kraftfile's rootfs, packed into the image) and the test compares what it
//! prints with the rootfs folder on the host, byte for byte.

mod support;
use support::root;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn kiln(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root()).args(args).stdin(Stdio::null());
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(600));
        if !d.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: kill(2) on our child, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let o = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    o
}

fn text(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// What apps/files prints for its walk of a folder, computed on the host.
fn expected_walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    if prefix.is_empty() {
        names.push("dev".into());
    }
    names.sort();
    for n in names {
        let p = format!("{prefix}/{n}");
        if p == "/dev" {
            out.push("dir  /dev mode 755".into());
            continue;
        }
        let host = dir.join(&n);
        let m = std::fs::symlink_metadata(&host).unwrap();
        if m.file_type().is_symlink() {
            out.push(format!(
                "link {p} -> {}",
                std::fs::read_link(&host).unwrap().display()
            ));
        } else if m.is_dir() {
            out.push(format!(
                "dir  {p} mode {:o}",
                m.permissions().mode() & 0o7777
            ));
            expected_walk(&host, &p, out);
        } else {
            out.push(format!(
                "file {p} mode {:o} size {}",
                m.permissions().mode() & 0o7777,
                m.len()
            ));
        }
    }
}

#[test]
fn files_app_sees_its_rootfs_byte_for_byte() {
    sees_its_rootfs(&[]);
}

#[test]
fn files_app_on_arm64_sees_the_same_rootfs() {
    sees_its_rootfs(&["--arch", "arm64"]);
}

#[test]
fn files_app_on_the_raspberry_pi_sees_its_embedded_rootfs() {
    sees_its_rootfs(&["--plat", "raspi", "--arch", "arm64"]);
}

#[test]
fn files_app_as_a_host_process_sees_the_same_rootfs() {
    sees_its_rootfs(&["--plat", "linuxu"]);
}

fn sees_its_rootfs(target: &[&str]) {
    let (code, out, err) = text(&kiln(
        &[&["run", "-q", "--timeout", "120"], target, &["apps/files"]].concat(),
    ));
    assert_eq!(code, 0, "{out}{err}");
    let rootfs = root().join("apps/files/rootfs");
    let mut want = Vec::new();
    expected_walk(&rootfs, "", &mut want);
    let got: Vec<&str> = out
        .lines()
        .take_while(|l| !l.starts_with("motd: "))
        .collect();
    assert_eq!(
        got, want,
        "the listing differs from the rootfs folder\n{out}"
    );

    let motd = std::fs::read_to_string(rootfs.join("etc/motd")).unwrap();
    assert!(out.contains(&format!("motd: {motd}")), "{out}");
    assert!(
        out.contains(&format!("greeting: {motd}")),
        "symlink not followed:\n{out}"
    );
    let blob = std::fs::read(rootfs.join("data/blob.bin")).unwrap();
    let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
    let line = out.lines().find(|l| l.starts_with("blob: ")).unwrap();
    assert_eq!(&line[6..], hex, "binary file differs");
    for l in [
        "tail: the app\nappended\n",
        "moved: written by the app\nappended\n",
        "after remove: ENOENT\n",
        "missing: ENOENT\n",
        "rmdir non-empty: ENOTEMPTY\n",
        "zero: 0000000000000000 null took 4 urandom nonzero: true\n",
    ] {
        assert!(out.contains(l), "missing {l:?} in:\n{out}");
    }
}

#[test]
fn an_initrd_given_at_run_time_replaces_the_embedded_one() {
    initrd_at_run_time(&[], "x86_64");
}

#[test]
fn an_initrd_given_at_run_time_on_arm64_comes_through_the_device_tree() {
    initrd_at_run_time(&["--arch", "arm64"], "arm64");
}

fn initrd_at_run_time(target: &[&str], tag: &str) {
    let d = std::env::temp_dir().join(format!("kiln-runtime-initrd-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc")).unwrap();
    std::fs::write(d.join("etc/motd"), "a different root\n").unwrap();
    let (code, out, err) = text(&kiln(
        &[
            &[
                "run",
                "-q",
                "--timeout",
                "120",
                "--initrd",
                d.to_str().unwrap(),
            ],
            target,
            &["apps/files"],
        ]
        .concat(),
    ));
    // The app finds the new motd, then misses the blob the embedded rootfs had.
    assert!(out.contains("motd: a different root\n"), "{out}{err}");
    assert!(
        out.contains("files: no such file or directory (ENOENT)"),
        "{out}"
    );
    assert_eq!(code, 1);
    // A corrupt cpio is refused before booting.
    let bad = d.join("bad.cpio");
    std::fs::write(&bad, b"070701 this is not an archive").unwrap();
    let (code, _, err) = text(&kiln(
        &[
            &["run", "-q", "--initrd", bad.to_str().unwrap()],
            target,
            &["apps/files"],
        ]
        .concat(),
    ));
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}: cpio", bad.display())), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_corrupt_initrd_at_boot_is_a_clear_error() {
    // Straight to QEMU, past kiln's own check: the kernel must say what is wrong.
    let kernel = root().join("apps/files/.kiln/build/files_qemu-x86_64");
    let (code, _, err) = text(&kiln(&["build", "apps/files"]));
    assert_eq!(code, 0, "{err}");
    let d = std::env::temp_dir().join(format!("kiln-corrupt-initrd-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let good = std::fs::read(root().join("apps/files/.kiln/build/files_qemu-x86_64.cpio")).unwrap();
    let bad = d.join("truncated.cpio");
    std::fs::write(&bad, &good[..good.len() - 150]).unwrap();
    let o = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off,pit=off,pic=off,rtc=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "64M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-append",
            "kiln.quiet --",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("kiln: initrd: cpio archive at offset")
            || out.contains("kiln: initrd: cpio entry"),
        "{out}"
    );
    // Exit code 126 reaches QEMU as (126 + 1) * 2 + 1.
    assert_eq!(o.status.code(), Some(255), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_rootfs_folders_fail_the_build_with_the_file_named() {
    let d = std::env::temp_dir().join(format!("kiln-bad-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("rootfs")).unwrap();
    let app = root().join("apps/files");
    std::fs::write(
        d.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: badfs\napp: {}\ntargets: [qemu/x86_64]\nrootfs: ./rootfs\n",
            app.display()
        ),
    )
    .unwrap();
    let fifo = d.join("rootfs/pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (code, _, err) = text(&kiln(&["build", d.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{}: a FIFO cannot go into an initrd",
            fifo.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(
        d.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: badfs\napp: {}\ntargets: [qemu/x86_64]\nrootfs: ./missing\n",
            app.display()
        ),
    )
    .unwrap();
    let (code, _, err) = text(&kiln(&["build", d.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(
        err.contains("Kraftfile:5: rootfs './missing' does not exist"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
