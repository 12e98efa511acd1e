//! `kiln rootfs add`: host programs (qemu-img, curl, busybox from Debian) go into a rootfs folder with their
//! shared libraries and dynamic loader. The proof that nothing is missing:
//! the copied programs run in a chroot of that folder (as root), and every
//! library `ldd` names is there.

mod support;
use support::kiln;

use std::path::PathBuf;
use std::process::Command;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-rootfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn programs_run_in_a_chroot_of_the_folder() {
    let d = temp("chroot");
    let (code, out, err) = kiln(&[
        "rootfs",
        "add",
        "--to",
        d.to_str().unwrap(),
        "/usr/bin/qemu-img",
        "/usr/bin/curl",
        "/usr/bin/id",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("/usr/bin/qemu-img") && out.contains("/lib64/ld-linux-x86-64.so.2"),
        "{out}"
    );
    // qemu-img and curl come with scripts/test (scripts/setup).
    for prog in ["/usr/bin/qemu-img", "/usr/bin/curl"] {
        let ldd =
            String::from_utf8(Command::new("ldd").arg(prog).output().unwrap().stdout).unwrap();
        for lib in ldd
            .lines()
            .filter_map(|l| l.split("=> ").nth(1))
            .map(|r| r.split(' ').next().unwrap())
        {
            assert!(
                d.join(lib.trim_start_matches('/')).is_file(),
                "{prog}: {lib} (from ldd) was not copied"
            );
        }
    }
    let img = Command::new("chroot")
        .arg(&d)
        .args(["/usr/bin/qemu-img", "--version"])
        .output()
        .unwrap();
    assert!(
        img.status.success(),
        "{}",
        String::from_utf8_lossy(&img.stderr)
    );
    assert!(String::from_utf8_lossy(&img.stdout).starts_with("qemu-img version"));
    let curl = Command::new("chroot")
        .arg(&d)
        .args(["/usr/bin/curl", "--version"])
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    // A folder without a user database gets one: users are looked up.
    let id = Command::new("chroot")
        .arg(&d)
        .args(["/usr/bin/id", "-un", "65534"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&id.stdout), "nobody\n", "{id:?}");
    assert!(out.contains("/etc/passwd"), "{out}");
    // One the folder has is kept.
    std::fs::write(d.join("etc/passwd"), "root:x:0:0::/:/bin/false\n").unwrap();
    let (code, _, err) = kiln(&["rootfs", "add", "--to", d.to_str().unwrap(), "/usr/bin/id"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("etc/passwd")).unwrap(),
        "root:x:0:0::/:/bin/false\n"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_app_rootfs_folder_is_the_default_and_bad_input_is_named() {
    let app = temp("app");
    std::fs::create_dir_all(app.join("rootfs")).unwrap();
    std::fs::write(
        app.join("Kraftfile"),
        "spec: v0.6\nname: x\ntargets:\n  - qemu/x86_64\nrootfs: ./rootfs\n",
    )
    .unwrap();
    let (code, _, err) = kiln(&[
        "rootfs",
        "add",
        "--app",
        app.to_str().unwrap(),
        "/bin/busybox",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        app.join("rootfs/bin/busybox").is_file(),
        "static programs need nothing else"
    );
    let mut top: Vec<String> = std::fs::read_dir(app.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["bin", "etc"], "bin/ and the user database only");

    let text = app.join("notes.txt");
    std::fs::write(&text, "just text").unwrap();
    let (code, _, err) = kiln(&[
        "rootfs",
        "add",
        "--app",
        app.to_str().unwrap(),
        text.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("notes.txt: not an ELF file"), "{err}");
    let (code, _, err) = kiln(&[
        "rootfs",
        "add",
        "--app",
        app.to_str().unwrap(),
        "/no/such/program",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/program: no such program"), "{err}");

    std::fs::write(
        app.join("Kraftfile"),
        "spec: v0.6\nname: x\ntargets:\n  - qemu/x86_64\n",
    )
    .unwrap();
    let (code, _, err) = kiln(&[
        "rootfs",
        "add",
        "--app",
        app.to_str().unwrap(),
        "/bin/busybox",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no `rootfs:` folder to copy into"), "{err}");
    let _ = std::fs::remove_dir_all(&app);
}
