//! Volumes: `kiln volume create` makes a FAT image the host's fsck.fat
//! accepts; a Linux program writes to it through `kiln run -v` (virtio-blk,
//! lib/fatfs) and what it wrote is there at the next boot and on the host
//! (mtools); a guest killed with SIGKILL while it writes and fsyncs loses
//! nothing it was told was synced; host folders are shared over virtio-9p;
//! redis, sqlite3 and the MQTT broker keep their data; bad volumes are
//! refused with the reason.
//!
//! Under TCG (-W), as the other Linux-program tests.

mod support;
use support::{linux_program_for, State};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An initrd folder with the volume test program as /bin/volume.
fn rootfs(arch: &str, tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-volumes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::create_dir_all(d.join("etc")).unwrap();
    std::fs::write(d.join("etc/motd"), "from the initrd\n").unwrap();
    std::fs::copy(
        linux_program_for(arch, "linux-volume"),
        d.join("bin/volume"),
    )
    .unwrap();
    d
}

/// `kiln run` of the ELF loader with `extra` options, the volume program
/// and its arguments: (exit code, everything printed).
fn run(s: &State, initrd: &Path, extra: &[&str], args: &[&str]) -> (i32, String) {
    let mut all = vec![
        "run",
        "-W",
        "--timeout",
        "240",
        "--initrd",
        initrd.to_str().unwrap(),
    ];
    all.extend_from_slice(extra);
    all.extend_from_slice(&["apps/elfloader", "--", "/bin/volume"]);
    all.extend_from_slice(args);
    let (code, out, err) = s.kiln(&all);
    (code, format!("{out}{err}"))
}

fn image(s: &State, name: &str) -> PathBuf {
    s.0.join(".volumes").join(format!("{name}.img"))
}

/// `fsck.fat -n` of an image: (clean, its report). A dirty bit alone (an
/// unmount that never came: the guest was killed) is not an error.
fn fsck(img: &Path) -> (bool, String) {
    let o = Command::new("fsck.fat")
        .arg("-n")
        .arg(img)
        .output()
        .expect("fsck.fat (dosfstools) is installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let only_dirty = text.lines().filter(|l| !l.trim().is_empty()).all(|l| {
        l.starts_with("fsck.fat ")
            || l.contains("Dirty bit is set")
            || l.contains("Automatically removing dirty bit")
            || l.contains("Leaving filesystem unchanged")
            || l.contains(" files, ")
    });
    (o.status.success() || only_dirty, text)
}

/// A file's contents in an image, read on the host (mtools).
fn host_read(img: &Path, path: &str) -> String {
    String::from_utf8_lossy(&host_bytes(img, path)).into_owned()
}

/// A file's bytes in an image, read on the host (mtools).
fn host_bytes(img: &Path, path: &str) -> Vec<u8> {
    let o = Command::new("mtype")
        .arg("-i")
        .arg(img)
        .arg(format!("::{path}"))
        .output()
        .expect("mtype (mtools) is installed by scripts/test");
    assert!(
        o.status.success(),
        "mtype {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn a_volume_keeps_what_a_program_wrote_across_boots() {
    let s = State::new("volumes");
    let (code, out, err) = s.kiln(&["volume", "create", "data", "--size", "16M"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().ends_with("data.img"), "{out}");
    let img = image(&s, "data");
    let (clean, report) = fsck(&img);
    assert!(clean && report.contains("0/"), "a new volume: {report}");
    let (_, ls, _) = s.kiln(&["volume", "ls"]);
    assert!(ls.contains("data") && ls.contains("16.0M"), "{ls}");

    let initrd = rootfs("x86_64", "keep");
    for n in 1..=2 {
        let (code, out) = run(&s, &initrd, &["-v", "data:/data"], &["count", "/data"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("was {} now {n}", n - 1)),
            "boot {n}: {out}"
        );
        assert!(out.contains("listing renamed-note.txt"), "{out}");
        // statfs: FAT's magic, and the volume's clusters.
        assert!(out.contains("statfs 0 type 4d44"), "{out}");
        assert!(out.contains("fatfs: kiln-vol0 on /data"), "{out}");
        // The disk's completions wake the CPU (as the network's do).
        assert!(out.contains("kiln: blk: 1 disk, interrupts"), "{out}");
        // The program's fsync reached the device as a cache flush.
        let flushes: u64 = out
            .lines()
            .find_map(|l| l.split("blk: vda: ").nth(1))
            .and_then(|r| r.split(", ").nth(1))
            .and_then(|r| r.strip_suffix(" cache flushes"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(flushes >= 1, "no cache flush reached the disk: {out}");
        let (clean, report) = fsck(&img);
        assert!(
            clean && !report.contains("Dirty"),
            "after a clean exit the volume is clean: {report}"
        );
    }
    assert_eq!(
        host_read(&img, "/count.txt").trim().parse::<u64>().unwrap(),
        2
    );
    assert_eq!(
        host_read(&img, "/A Directory With A Long Name/renamed-note.txt"),
        "kept"
    );
    // O_SYNC and O_DSYNC writes, fdatasync, truncating down and extending
    // (zeros): the same as on Linux, and the same on the host afterwards.
    let (code, out) = run(&s, &initrd, &["-v", "data:/data"], &["sync", "/data"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#"sync: "o_sync" "o_dsync" [48, 49, 50, 51, 0, 0, 0, 0]"#),
        "{out}"
    );
    assert_eq!(host_read(&img, "/data.txt"), "0123\0\0\0\0");
    assert!(fsck(&img).0);
    // Four threads writing and fsyncing their own files at once.
    let (code, out) = run(&s, &initrd, &["-v", "data:/data"], &["threads", "/data"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("threads: 4 of 4 files whole"), "{out}");
    let want: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8 ^ 3).collect();
    assert!(
        host_bytes(&img, "/thread3.bin") == want,
        "thread3.bin differs on the host"
    );
    assert!(fsck(&img).0);

    // The same volume on arm64 (virt's virtio-mmio) and on q35 (PCI).
    let (code, out) = run(
        &s,
        &rootfs("aarch64", "keep-arm64"),
        &["--arch", "arm64", "-M", "256M", "-v", "data:/data"],
        &["count", "/data"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("was 2 now 3"), "arm64: {out}");
    let (code, out) = run(
        &s,
        &initrd,
        &[
            "--machine",
            "q35",
            "-v",
            &format!("{}:/data", img.display()),
        ],
        &["count", "/data"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("was 3 now 4"), "q35: {out}");
    assert!(
        out.contains("kiln: blk: 1 disk, interrupts"),
        "q35 (MSI-X): {out}"
    );
    assert!(fsck(&img).0);

    // Read-only: the program's write fails with EROFS, nothing changes.
    let (code, out) = run(&s, &initrd, &["-v", "data:/data:ro"], &["write", "/data"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("write: EROFS") && out.contains("(read-only)"),
        "{out}"
    );

    // A full volume: ENOSPC, and the file system is still sound.
    let (code, _, err) = s.kiln(&["volume", "create", "small", "--size", "2M"]);
    assert_eq!(code, 0, "{err}");
    let (code, out) = run(&s, &initrd, &["-v", "small:/data"], &["fill", "/data"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fill: ENOSPC after "), "{out}");
    let (clean, report) = fsck(&image(&s, "small"));
    assert!(clean, "{report}");

    let (code, _, err) = s.kiln(&["volume", "rm", "small"]);
    assert_eq!(code, 0, "{err}");
    assert!(!image(&s, "small").exists());
    let _ = std::fs::remove_dir_all(&initrd);
}

/// The Kraftfile's `volumes:`, in kraft's long form (an image with
/// `driver: vfat`, a host folder with `driver: 9pfs` and `readOnly`) and
/// the short one, paths relative to the Kraftfile: mounted without `-v`.
#[test]
fn the_kraftfiles_volumes_are_mounted() {
    let s = State::new("kfvolumes");
    let (code, _, err) = s.kiln(&["volume", "create", "kf", "--size", "8M"]);
    assert_eq!(code, 0, "{err}");
    let app = s.0.join("app");
    std::fs::create_dir_all(app.join("shared")).unwrap();
    std::fs::create_dir_all(app.join("notes")).unwrap();
    std::fs::write(app.join("shared/hello.txt"), "from the host\n").unwrap();
    std::fs::copy(image(&s, "kf"), app.join("data.img")).unwrap();
    let initrd = rootfs("x86_64", "kfvolumes");
    std::fs::write(
        app.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: kfvolumes\napp: {}\nrootfs: {}\ntargets:\n  - qemu/x86_64\ncmd: [\"/bin/volume\", \"count\", \"/data\"]\nvolumes:\n  - source: ./data.img\n    destination: /data\n    driver: vfat\n  - source: ./shared\n    destination: /ro\n    driver: 9pfs\n    readOnly: true\n  - ./notes:/notes\n",
            support::root().join("apps/elfloader").display(),
            initrd.display()
        ),
    )
    .unwrap();
    let dir = app.to_str().unwrap();
    let (code, out, err) = s.kiln(&["run", "-W", "--timeout", "240", dir]);
    let out = format!("{out}{err}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("was 0 now 1"), "{out}");
    assert!(out.contains("fatfs: kiln-vol0 on /data"), "{out}");
    assert_eq!(
        host_read(&app.join("data.img"), "/count.txt")
            .trim()
            .parse::<u64>()
            .unwrap(),
        1
    );
    // The read-only folder: readable, not writable.
    let (code, out, err) = s.kiln(&[
        "run",
        "-W",
        "--timeout",
        "240",
        dir,
        "--",
        "/bin/volume",
        "write",
        "/ro",
    ]);
    let out = format!("{out}{err}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("write: EROFS"), "{out}");
    // The short form's folder: what the guest writes is on the host.
    let (code, out, err) = s.kiln(&[
        "run",
        "-W",
        "--timeout",
        "240",
        dir,
        "--",
        "/bin/volume",
        "count",
        "/notes",
    ]);
    let out = format!("{out}{err}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_to_string(app.join("notes/count.txt"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap(),
        1,
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&initrd);
}

/// A host folder shared over virtio-9p (`-v ./folder:/path`): the guest
/// sees the host's files and the host sees the guest's changes at once.
#[test]
fn a_host_folder_is_shared_both_ways() {
    let s = State::new("share");
    let share = s.0.with_extension("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "from the host\n").unwrap();
    let initrd = rootfs("x86_64", "share");
    let flag = format!("{}:/data", share.display());
    let (code, out) = run(&s, &initrd, &["-v", &flag], &["share", "/data"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9pfs: kiln-fs0 on /data"), "{out}");
    assert!(
        out.contains("host says: from the host") && out.contains("through the link: from the host"),
        "{out}"
    );
    assert!(
        out.contains("share: cut.txt,hello.txt,link,secret.txt"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("cut.txt")).unwrap(),
        "0123"
    );
    assert_eq!(
        std::fs::read_link(share.join("link")).unwrap(),
        Path::new("hello.txt")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(share.join("secret.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(!share.join("tmp").exists());
    // Twice, and on arm64: the counter grows in the host's folder.
    for n in 1..=2 {
        let (code, out) = run(&s, &initrd, &["-v", &flag], &["count", "/data"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("was {} now {n}", n - 1)), "{out}");
        assert!(
            out.contains("statfs 0 type 1021997"),
            "the host's figures, as a 9p mount: {out}"
        );
    }
    let (code, out) = run(
        &s,
        &rootfs("aarch64", "share-arm64"),
        &["--arch", "arm64", "-M", "256M", "-v", &flag],
        &["count", "/data"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("was 2 now 3"), "arm64: {out}");
    assert_eq!(
        std::fs::read_to_string(share.join("count.txt"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap(),
        3
    );
    // Read-only: the guest cannot change the host's files.
    let (code, out) = run(
        &s,
        &initrd,
        &["-v", &format!("{flag}:ro")],
        &["write", "/data"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("write: EROFS"), "{out}");
    assert!(!share.join("new.txt").exists());
    let _ = std::fs::remove_dir_all(&share);
    let _ = std::fs::remove_dir_all(&initrd);
}

#[test]
fn bad_volumes_are_refused_with_the_reason() {
    let s = State::new("badvolumes");
    let initrd = rootfs("x86_64", "bad");
    // Caught by kiln before booting.
    for (flag, why) in [
        ("nosuch:/data", "no volume named 'nosuch'"),
        ("./nosuch.img:/data", "no such image file or folder"),
    ] {
        let (code, out) = run(&s, &initrd, &["-v", flag], &["count", "/data"]);
        assert_ne!(code, 0, "{flag}: {out}");
        assert!(out.contains(why), "{flag}: {out}");
    }
    let (code, _, err) = s.kiln(&["volume", "create", "bad name"]);
    assert_ne!(code, 0);
    assert!(err.contains("a volume name is letters"), "{err}");

    // Caught by the guest: an image with no file system, and a volume
    // over the initrd's files. The boot stops with the reason.
    let zero = s.0.join("zero.img");
    std::fs::create_dir_all(&s.0).unwrap();
    std::fs::write(&zero, vec![0u8; 4 << 20]).unwrap();
    let (code, out) = run(
        &s,
        &initrd,
        &["-v", &format!("{}:/data", zero.display())],
        &["count", "/data"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not a FAT file system"), "{out}");
    // A formatted image whose boot sector was damaged afterwards (a sector
    // size of 65535), and one whose FATs were overwritten (clusters marked
    // used): the first is refused with the reason, the second mounts and
    // the program's writes end in ENOSPC. The kernel survives both.
    let (code, _, err) = s.kiln(&["volume", "create", "dmg1", "--size", "4M"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = s.kiln(&["volume", "create", "dmg2", "--size", "4M"]);
    assert_eq!(code, 0, "{err}");
    let mut b = std::fs::read(image(&s, "dmg1")).unwrap();
    b[11..13].copy_from_slice(&[0xff, 0xff]);
    std::fs::write(image(&s, "dmg1"), b).unwrap();
    let mut b = std::fs::read(image(&s, "dmg2")).unwrap();
    let reserved = u16::from_le_bytes([b[14], b[15]]) as usize;
    let fats = b[16] as usize;
    let per_fat = match u16::from_le_bytes([b[22], b[23]]) {
        0 => u32::from_le_bytes(b[36..40].try_into().unwrap()) as usize,
        n => n as usize,
    };
    // Past the first 16 bytes (the media entry and the root's chain).
    b[reserved * 512 + 16..(reserved + fats * per_fat) * 512].fill(0xff);
    std::fs::write(image(&s, "dmg2"), b).unwrap();
    let (code, out) = run(&s, &initrd, &["-v", "dmg1:/data"], &["count", "/data"]);
    assert_eq!(code, 126, "{out}");
    assert!(
        out.contains("kiln: fatfs: /data: vda: not a FAT file system"),
        "{out}"
    );
    let (code, out) = run(&s, &initrd, &["-v", "dmg2:/data"], &["fill", "/data"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fill: ENOSPC after "), "{out}");
    let (code, _, err) = s.kiln(&["volume", "create", "v", "--size", "4M"]);
    assert_eq!(code, 0, "{err}");
    let (code, out) = run(&s, &initrd, &["-v", "v:/etc"], &["count", "/etc"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("/etc already holds files from the initrd"),
        "{out}"
    );
    // Optional (nofail): the program runs without the mount.
    let (code, out) = run(
        &s,
        &initrd,
        &[
            "--kernel-arg",
            "vfs.fstab=vdz:/data:vfat:nofail",
            "-v",
            "v:/vol",
        ],
        &["count", "/vol"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("/data not mounted (nofail): no disk vdz (this machine has vda)"),
        "{out}"
    );
    assert!(out.contains("was 0 now 1"), "{out}");
    let _ = std::fs::remove_dir_all(&initrd);
}

/// A guest writing and fsyncing a counter is killed with SIGKILL at random
/// moments, 20 times: each time the volume mounts again, fsck.fat finds
/// nothing but the dirty bit, and the counter is at least the last value
/// the guest reported synced.
#[test]
fn a_guest_killed_while_writing_loses_nothing_it_synced() {
    let s = State::new("crash");
    let (code, _, err) = s.kiln(&["volume", "create", "crash", "--size", "8M"]);
    assert_eq!(code, 0, "{err}");
    let img = image(&s, "crash");
    let initrd = rootfs("x86_64", "crash");
    let mut seed = std::process::id() as u64 | 1;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut last = 0u64;
    for round in 0..20 {
        let name = format!("w{round}");
        let (code, _, err) = s.kiln(&[
            "run",
            "-d",
            "-W",
            "--name",
            &name,
            "--initrd",
            initrd.to_str().unwrap(),
            "-v",
            "crash:/data",
            "apps/elfloader",
            "--",
            "/bin/volume",
            "loop",
            "/data",
        ]);
        assert_eq!(code, 0, "{err}");
        s.wait_for_log(&name, "synced");
        std::thread::sleep(Duration::from_millis(random(1500)));
        kill_9(&s, &name);
        let (_, log, _) = s.kiln(&["logs", &name]);
        let synced: Vec<u64> = log
            .lines()
            .filter_map(|l| l.strip_prefix("synced ")?.trim().parse().ok())
            .collect();
        let acked = *synced
            .last()
            .unwrap_or_else(|| panic!("{name}: nothing synced:\n{log}"));
        assert!(
            synced.first().copied().unwrap_or(0) > last,
            "round {round} started below the last value {last}: {log}"
        );
        let (clean, report) = fsck(&img);
        assert!(clean, "round {round}: fsck.fat found damage:\n{report}");
        let on_disk: u64 = host_read(&img, "/count.txt").trim().parse().unwrap();
        assert!(
            on_disk >= acked,
            "round {round}: the guest reported {acked} synced, the volume holds {on_disk}"
        );
        last = on_disk;
        let (code, _, err) = s.kiln(&["rm", &name]);
        assert_eq!(code, 0, "{err}");
    }
    assert!(last >= 20, "{last}");
    let _ = std::fs::remove_dir_all(&initrd);
}

/// Kills an instance's QEMU with SIGKILL (a power cut) and waits until it
/// is gone.
fn kill_9(s: &State, name: &str) {
    let (_, ps, _) = s.kiln(&["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ps).unwrap();
    let pid = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["pid"].as_u64());
    let pid = pid.unwrap_or_else(|| panic!("{name} is not running: {ps}"));
    // SAFETY: sends SIGKILL to the QEMU process of this test's instance.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let t = Instant::now();
    while s.state_of(name) == "running" {
        assert!(t.elapsed() < Duration::from_secs(30), "{name} did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// mosquitto_sub/pub against 127.0.0.1:`port`: (success, output).
fn mosquitto(tool: &str, port: u16, args: &[&str]) -> (bool, String) {
    let o = Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// apps/mqtt with mosquitto's persistence options on a volume: a retained
/// message and QoS 1 messages queued for an offline persistent session
/// survive a SIGKILL of the VMM (autosave after every change) and a clean
/// stop, as mosquitto clients see it.
#[test]
fn the_broker_keeps_retained_messages_and_sessions_across_restarts() {
    let s = State::new("mqttkeep");
    let (code, _, err) = s.kiln(&["volume", "create", "mq", "--size", "8M"]);
    assert_eq!(code, 0, "{err}");
    let port = support::free_port();
    let start = |name: &str| {
        let fwd = format!("{port}:1883");
        let (code, _, err) = s.kiln(&[
            "run",
            "-d",
            "-W",
            "--name",
            name,
            "-p",
            &fwd,
            "-v",
            "mq:/var/lib/mqtt",
            "-e",
            "MQTT_PERSISTENCE=true",
            "-e",
            "MQTT_PERSISTENCE_LOCATION=/var/lib/mqtt/",
            "-e",
            "MQTT_AUTOSAVE_INTERVAL=1",
            "-e",
            "MQTT_AUTOSAVE_ON_CHANGES=true",
            "apps/mqtt",
        ]);
        assert_eq!(code, 0, "{err}");
        s.wait_for_log(name, "mqtt: listening")
    };
    let log = start("b1");
    assert!(log.contains("will be made at the first save"), "{log}");
    // A persistent session subscribes, then goes away.
    let (ok, out) = mosquitto(
        "mosquitto_sub",
        port,
        &["-c", "-i", "keeper", "-q", "1", "-t", "plant/#", "-E"],
    );
    assert!(ok, "{out}");
    let (ok, out) = mosquitto(
        "mosquitto_pub",
        port,
        &["-r", "-q", "1", "-t", "plant/a/temp", "-m", "21.5"],
    );
    assert!(ok, "{out}");
    let (ok, out) = mosquitto(
        "mosquitto_pub",
        port,
        &["-q", "1", "-t", "plant/b/temp", "-m", "19.0"],
    );
    assert!(ok, "{out}");
    // The autosave follows each change (after the PUBACK, as mosquitto's
    // does): once the volume holds the last message, the power goes.
    let img = image(&s, "mq");
    let t = Instant::now();
    let saved = |img: &Path| {
        Command::new("mtype")
            .arg("-i")
            .arg(img)
            .arg("::/mosquitto.db")
            .output()
            .is_ok_and(|o| o.stdout.windows(4).any(|w| w == b"19.0"))
    };
    while !saved(&img) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the broker never saved the second message"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, before, _) = s.kiln(&["logs", "b1"]);
    kill_9(&s, "b1");
    // Its supervisor lets go of the forwarded port as it notices.
    let t = Instant::now();
    while std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "port {port} stays taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let log = start("b2");
    assert!(
        log.contains("restored 1 retained messages and 1 sessions (2 messages queued)"),
        "{before}\n---\n{log}"
    );
    // A volume in use is not removed.
    let (code, _, err) = s.kiln(&["volume", "rm", "mq"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("volume 'mq' is in use by instance 'b2'"),
        "{err}"
    );
    // The session's two queued messages, then the retained one again
    // (mosquitto_sub subscribes at every connect). All three are read, so
    // the client leaves with nothing unread: a socket closed with unread
    // data is reset, and a reset can overtake the acknowledgements on
    // their way through QEMU's forwarding.
    let (ok, out) = mosquitto(
        "mosquitto_sub",
        port,
        &[
            "-c", "-i", "keeper", "-q", "1", "-t", "plant/#", "-C", "3", "-W", "30", "-v",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("plant/a/temp 21.5") && out.contains("plant/b/temp 19.0"),
        "{out}"
    );
    assert_eq!(out.matches("plant/a/temp 21.5").count(), 2, "{out}");
    let (ok, out) = mosquitto(
        "mosquitto_sub",
        port,
        &["-t", "plant/#", "-C", "1", "-W", "30", "-v"],
    );
    assert!(
        ok && out.contains("plant/a/temp 21.5"),
        "a new subscriber gets the retained message: {out}"
    );
    // A clean stop saves too.
    let (_, b2, _) = s.kiln(&["logs", "b2"]);
    let (code, _, err) = s.kiln(&["stop", "b2"]);
    assert_eq!(code, 0, "{err}");
    let log = start("b3");
    assert!(
        log.contains("restored 1 retained messages and 1 sessions (0 messages queued)"),
        "the messages received were acknowledged:\n{b2}\n---\n{err}\n---\n{log}"
    );
    let (code, _, err) = s.kiln(&["stop", "b3"]);
    assert_eq!(code, 0, "{err}");
    let (clean, report) = fsck(&img);
    assert!(
        clean && !report.contains("Dirty"),
        "{report}\n(kiln stop b3: {err})"
    );
}

/// A run-time initrd with Debian's `programs` and their libraries.
fn debian_rootfs(s: &State, tag: &str, programs: &[&str]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-volumes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let mut args = vec!["rootfs", "add", "--to", d.to_str().unwrap()];
    args.extend_from_slice(programs);
    let (code, _, err) = s.kiln(&args);
    assert_eq!(code, 0, "{err}");
    d
}

fn wait_port_free(port: u16) {
    let t = Instant::now();
    while std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "port {port} stays taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian's redis-server with `appendonly yes` and `appendfsync always` on a
/// volume: every write redis-cli saw acknowledged is there after a SIGKILL
/// of the VMM and a restart.
#[test]
fn debians_redis_keeps_every_acknowledged_write_on_a_volume() {
    let s = State::new("redis");
    let (code, _, err) = s.kiln(&["volume", "create", "rd", "--size", "32M"]);
    assert_eq!(code, 0, "{err}");
    let initrd = debian_rootfs(&s, "redis", &["/usr/bin/redis-server"]);
    let port = support::free_port();
    let p = port.to_string();
    let start = |name: &str| {
        let fwd = format!("{port}:6379");
        let (code, _, err) = s.kiln(&[
            "run",
            "-d",
            "-W",
            "-M",
            "512M",
            "--name",
            name,
            "-p",
            &fwd,
            "-v",
            "rd:/data",
            "--initrd",
            initrd.to_str().unwrap(),
            "apps/elfloader",
            "--",
            "/usr/bin/redis-server",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            "/data",
            "--protected-mode",
            "no",
        ]);
        assert_eq!(code, 0, "{err}");
        s.wait_for_log(name, "Ready to accept connections")
    };
    let cli = |args: &[&str]| {
        let o = Command::new("redis-cli")
            .args(["-p", &p])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    start("r1");
    for i in 1..=50 {
        assert_eq!(cli(&["set", &format!("k{i}"), &format!("v{i}")]), "OK");
        assert_eq!(cli(&["incr", "counter"]), i.to_string());
    }
    kill_9(&s, "r1");
    wait_port_free(port);
    let log = start("r2");
    assert!(log.contains("DB loaded from append only file"), "{log}");
    assert_eq!(cli(&["dbsize"]), "51");
    assert_eq!(cli(&["get", "k50"]), "v50");
    assert_eq!(cli(&["get", "counter"]), "50");
    let (code, _, err) = s.kiln(&["stop", "r2"]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&initrd);
}

/// Debian's sqlite3 inserting row after row (a transaction each) on a
/// volume is killed with SIGKILL: the database passes `PRAGMA
/// integrity_check` and holds at least the rows it reported inserted.
#[test]
fn debians_sqlite_survives_a_kill_in_the_middle_of_a_write_loop() {
    let s = State::new("sqlite");
    let (code, _, err) = s.kiln(&["volume", "create", "sq", "--size", "16M"]);
    assert_eq!(code, 0, "{err}");
    let initrd = debian_rootfs(&s, "sqlite", &["/usr/bin/sqlite3"]);
    let mut sql = String::from("create table if not exists t(x integer, y text);\n");
    for i in 1..=5000 {
        sql += &format!("insert into t values({i}, 'row {i}'); select 'inserted {i}';\n");
    }
    std::fs::create_dir_all(initrd.join("sql")).unwrap();
    std::fs::write(initrd.join("sql/insert.sql"), sql).unwrap();
    let sqlite = |extra: &[&str], args: &[&str]| {
        let mut all = vec![
            "run",
            "-W",
            "-M",
            "128M",
            "-v",
            "sq:/data",
            "--initrd",
            initrd.to_str().unwrap(),
        ];
        all.extend_from_slice(extra);
        all.extend_from_slice(&["apps/elfloader", "--", "/usr/bin/sqlite3", "/data/t.db"]);
        all.extend_from_slice(args);
        s.kiln(&all)
    };
    let (code, _, err) = sqlite(&["-d", "--name", "w"], &[".read /sql/insert.sql"]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_log("w", "inserted 200");
    kill_9(&s, "w");
    let (_, log, _) = s.kiln(&["logs", "w"]);
    let reported: u64 = log
        .lines()
        .filter_map(|l| l.strip_prefix("inserted ")?.trim().parse().ok())
        .max()
        .unwrap();
    assert!(
        reported < 5000,
        "the loop had finished before the kill: {reported}"
    );
    let (code, out, err) = sqlite(
        &["--timeout", "120"],
        &["pragma integrity_check; select 'rows', count(*) from t;"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.trim() == "ok"), "{out}{err}");
    let rows: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("rows|")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}{err}"));
    assert!(
        rows >= reported,
        "sqlite3 reported {reported} rows inserted, the database holds {rows}"
    );
    let _ = std::fs::remove_dir_all(&initrd);
}
