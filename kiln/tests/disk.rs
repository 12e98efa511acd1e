//! `kiln pkg --format raw|qcow2|vmdk|vhd|vhdx|vdi|gce`: disk images booted
//! the way clouds and desktop hypervisors boot them, from the disk alone
//! (no `-kernel`): through SeaBIOS and OVMF on QEMU's q35, and SeaBIOS on
//! `pc`, under TCG (firmware does not run under this host's KVM). The
//! network is virtio-net PCI with QEMU's user network, whose DHCP server
//! gives the address, and its interrupts are MSI-X messages; the console
//! is COM1. httpd answers HTTP and the MQTT
//! broker answers mosquitto's clients.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Packs `app` as `format` into `out`: the image's path.
fn package(app: &str, format: &str, out: &Path) -> PathBuf {
    let (code, stdout, err) = support::kiln(&[
        "pkg",
        "-q",
        "--format",
        format,
        "-o",
        out.to_str().unwrap(),
        app,
    ]);
    assert_eq!(code, 0, "{err}");
    let image = PathBuf::from(stdout.trim());
    assert!(image.is_file(), "{stdout}");
    image
}

fn out_dir(tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("kiln-disk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    out
}

#[derive(Clone, Copy, Debug)]
enum Firmware {
    SeaBios,
    Ovmf,
}

/// A QEMU booting a disk image through firmware, its console in a file;
/// killed when dropped.
struct DiskGuest {
    child: Child,
    console: PathBuf,
}

/// QEMU booting `image` through `firmware` (TCG, 128 MiB, COM1 into a file
/// beside the image, the image as a virtio disk): the command and the
/// console's path.
fn qemu(image: &Path, format: &str, machine: &str, firmware: Firmware) -> (Command, PathBuf) {
    let dir = image.parent().unwrap();
    let console = dir.join(format!(
        "{}.{machine}.{firmware:?}.console",
        image.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&console);
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        machine,
        "-accel",
        "tcg",
        "-m",
        "128M",
        "-display",
        "none",
        "-nodefaults",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-drive")
    .arg(format!(
        "file={},format={format},if=virtio",
        image.display()
    ));
    if let Firmware::Ovmf = firmware {
        let vars = dir.join(format!(
            "{}.vars.fd",
            image.file_name().unwrap().to_string_lossy()
        ));
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .expect("OVMF's variable store (scripts/test installs ovmf)");
        c.arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (c, console)
}

impl DiskGuest {
    /// Boots with a host port forwarded to the guest's (no reboot: a
    /// reset stops QEMU).
    fn boot(
        image: &Path,
        format: &str,
        machine: &str,
        firmware: Firmware,
        guest_port: u16,
        host_port: u16,
    ) -> DiskGuest {
        Self::boot_with(
            image,
            format,
            machine,
            firmware,
            guest_port,
            host_port,
            "virtio-net-pci",
        )
    }

    /// Boots with `nic` as the network card's device (its options).
    fn boot_with(
        image: &Path,
        format: &str,
        machine: &str,
        firmware: Firmware,
        guest_port: u16,
        host_port: u16,
        nic: &str,
    ) -> DiskGuest {
        let (mut c, console) = qemu(image, format, machine, firmware);
        c.arg("-no-reboot").args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"),
            "-device",
            &format!("{nic},netdev=n0"),
        ]);
        let child = c.spawn().expect("qemu-system-x86_64");
        DiskGuest { child, console }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for DiskGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The format `qemu-img info` finds (or reads when told it, for a fixed
/// VHD, which it would probe as raw).
fn qemu_img_format(image: &Path, told: Option<&str>) -> String {
    let mut c = Command::new("qemu-img");
    c.args(["info", "--output=json"]);
    if let Some(f) = told {
        c.args(["-f", f]);
    }
    let o = c.arg(image).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["format"].as_str().unwrap_or("").to_string()
}

/// Boots httpd's disk `image` and asks it for `/`: the first status line
/// (within two minutes) and the console.
fn serve(
    image: &Path,
    format: &str,
    machine: &str,
    firmware: Firmware,
    nic: &str,
) -> (Option<String>, String) {
    let port = support::free_port();
    let g = DiskGuest::boot_with(image, format, machine, firmware, 80, port, nic);
    let status = support::first_status(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(120),
    );
    (status, g.console())
}

/// httpd from each format on each firmware path (q35 with SeaBIOS, q35
/// with OVMF, pc with SeaBIOS): the first HTTP 200 within two minutes, the
/// DHCP address and PCI network on the console, its interrupts as MSI-X
/// messages, or through the legacy INTx line (read from the firmware's
/// MADT) where the card has no MSI-X (`vectors=0`), and PCI configuration
/// space through ECAM (ACPI MCFG) on q35, the ports on pc.
#[test]
fn httpd_serves_from_disk_images_on_bios_and_uefi() {
    let out = out_dir("httpd");
    // kiln pkg's format name, QEMU's.
    let formats = [
        ("raw", "raw"),
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vhd", "vpc"),
        ("vhdx", "vhdx"),
        ("vdi", "vdi"),
    ];
    let images: Vec<(PathBuf, &str)> = formats
        .iter()
        .map(|&(f, q)| (package("apps/httpd", f, &out), q))
        .collect();
    let paths = [
        ("q35", Firmware::SeaBios),
        ("q35", Firmware::Ovmf),
        ("pc", Firmware::SeaBios),
    ];
    let mut runs = Vec::new();
    for (image, format) in &images {
        for &(machine, firmware) in &paths {
            runs.push((image, *format, machine, firmware, "virtio-net-pci", "MSI-X"));
        }
    }
    // A card without MSI-X on each path: its INTx line.
    for (i, &(machine, firmware)) in paths.iter().enumerate() {
        let (image, format) = &images[i];
        runs.push((
            image,
            *format,
            machine,
            firmware,
            "virtio-net-pci,vectors=0",
            "INTx",
        ));
    }
    for (image, format, machine, firmware, nic, signals) in runs {
        assert_eq!(
            qemu_img_format(image, (format == "vpc").then_some(format)),
            format
        );
        let (status, console) = serve(image, format, machine, firmware, nic);
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 200 OK"),
            "{format} on {machine} with {firmware:?}; console:\n{console}"
        );
        assert!(console.contains("kiln: httpd on qemu/x86_64"), "{console}");
        assert!(
            console.contains("10.0.2.15/24 via 10.0.2.2 (DHCP)"),
            "{console}"
        );
        // virtio-net PCI signals with MSI-X or INTx: not polled.
        assert!(
            console.contains(&format!("/64, interrupts ({signals})")),
            "{nic} on {machine} with {firmware:?}: {console}"
        );
        // q35 has an MCFG table (ECAM); the i440fx PC only the ports.
        let cam = if machine == "q35" {
            "pci: configuration space through ECAM at 0x"
        } else {
            "pci: configuration space through ports 0xcf8/0xcfc"
        };
        assert!(console.contains(cam), "{machine}: {console}");
    }
    // Images for one firmware only (--firmware): each boots on its own.
    for (fw, firmware, machine) in [
        ("bios", Firmware::SeaBios, "pc"),
        ("uefi", Firmware::Ovmf, "q35"),
    ] {
        let dir = out.join(fw);
        std::fs::create_dir_all(&dir).unwrap();
        let (code, stdout, err) = support::kiln(&[
            "pkg",
            "-q",
            "--format",
            "raw",
            "--firmware",
            fw,
            "-o",
            dir.to_str().unwrap(),
            "apps/httpd",
        ]);
        assert_eq!(code, 0, "{err}");
        let image = PathBuf::from(stdout.trim());
        let (status, console) = serve(&image, "raw", machine, firmware, "virtio-net-pci");
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 200 OK"),
            "--firmware {fw}: {console}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The MQTT broker from a VDI image on UEFI: mosquitto's clients publish
/// and subscribe through it.
#[test]
fn mqtt_broker_serves_from_a_uefi_disk() {
    let out = out_dir("mqtt");
    let image = package("apps/mqtt", "vdi", &out);
    let port = support::free_port();
    let g = DiskGuest::boot(&image, "vdi", "q35", Firmware::Ovmf, 1883, port);
    let p = port.to_string();
    let t = Instant::now();
    while !Command::new("mosquitto_pub")
        .args(["-p", &p, "-t", "probe", "-m", "x"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no broker; console:\n{}",
            g.console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &p, "-t", "disk/#", "-v", "-C", "2", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for (q, m) in [("1", "from-uefi"), ("2", "exactly-once")] {
        assert!(Command::new("mosquitto_pub")
            .args(["-p", &p, "-q", q, "-t", "disk/x", "-m", m])
            .status()
            .unwrap()
            .success());
    }
    let got = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "disk/x from-uefi\ndisk/x exactly-once\n",
        "console:\n{}",
        g.console()
    );
    // DHCP's address, and the NIC on MSI-X under OVMF.
    let console = g.console();
    assert!(
        console.contains("10.0.2.15/24 via 10.0.2.2 (DHCP)"),
        "{console}"
    );
    assert!(console.contains("/64, interrupts (MSI-X)"), "{console}");
    let _ = std::fs::remove_dir_all(&out);
}

/// An app that ends powers the machine off through ACPI (S5), as clouds
/// expect, rather than resetting it, which would boot the image again:
/// QEMU, allowed to reboot, stops by itself after one run.
#[test]
fn an_app_that_ends_powers_the_machine_off() {
    let out = out_dir("off");
    let image = package("apps/helloworld", "raw", &out);
    for (machine, firmware) in [
        ("q35", Firmware::SeaBios),
        ("q35", Firmware::Ovmf),
        ("pc", Firmware::SeaBios),
    ] {
        let (mut c, console) = qemu(&image, "raw", machine, firmware);
        let mut child = c.spawn().unwrap();
        let status = ends_within(&mut child, Duration::from_secs(90));
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "{machine} with {firmware:?} did not power off: {status:?}; console:\n{text}"
        );
        assert_eq!(
            text.matches("Hello, world!").count(),
            1,
            "{machine} with {firmware:?}; console:\n{text}"
        );
        assert!(text.contains("kiln: exit status 0"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// GCE's import format: a gzip'd tar holding only `disk.raw`, a whole
/// number of GiB, with the protective MBR and the GPT header.
#[test]
fn gce_tarball_has_the_layout_gce_imports() {
    use std::io::Read;
    let out = out_dir("gce");
    let tarball = package("apps/helloworld", "gce", &out);
    assert!(tarball.to_string_lossy().ends_with(".tar.gz"));
    let f = std::fs::File::open(&tarball).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let size = e.header().size().unwrap();
        assert_eq!(size % (1 << 30), 0, "{name}: {size} bytes");
        let mut head = vec![0u8; 1024];
        e.read_exact(&mut head).unwrap();
        assert_eq!(&head[510..512], &[0x55, 0xaa], "MBR signature");
        assert_eq!(head[450], 0xee, "protective MBR partition");
        assert_eq!(&head[512..520], b"EFI PART", "GPT header");
        names.push(name);
    }
    assert_eq!(names, ["disk.raw"]);
    let _ = std::fs::remove_dir_all(&out);
}

/// Bad input: an unknown format, a VMM where firmware boots the disk, an
/// arm64 app, and a host without qemu-img.
#[test]
fn bad_disk_requests_are_refused_clearly() {
    let (code, _, err) = support::kiln(&["pkg", "--format", "iso9660", "apps/helloworld"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("invalid value 'iso9660'") && err.contains("qcow2"),
        "{err}"
    );
    let (code, _, err) = support::kiln(&[
        "pkg",
        "--format",
        "raw",
        "--vmm",
        "firecracker",
        "apps/helloworld",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("leave out --vmm"), "{err}");
    let (code, _, err) = support::kiln(&[
        "pkg",
        "--format",
        "qcow2",
        "--plat",
        "raspi4",
        "--arch",
        "arm64",
        "apps/helloworld",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("boots on a board, not under a VMM"), "{err}");
    // arm64 has no BIOS; --firmware is for disks only.
    let (code, _, err) = support::kiln(&[
        "pkg",
        "--format",
        "raw",
        "--arch",
        "arm64",
        "--firmware",
        "bios",
        "apps/helloworld",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--firmware bios: arm64 machines boot disks from UEFI only"),
        "{err}"
    );
    let (code, _, err) = support::kiln(&[
        "pkg",
        "--format",
        "oci",
        "--firmware",
        "uefi",
        "apps/helloworld",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--firmware: only disk images boot through firmware"),
        "{err}"
    );
    // A PATH with grub-mkimage but no qemu-img.
    let bin = out_dir("path");
    std::os::unix::fs::symlink("/usr/bin/grub-mkimage", bin.join("grub-mkimage")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(support::root())
        .env("PATH", &bin)
        .args(["pkg", "--format", "vmdk", "apps/helloworld"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("qemu-img not found") && err.contains("qemu-utils"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&bin);
}

/// QEMU's virt machine booting an arm64 `image` through its UEFI firmware
/// (Debian's qemu-efi-aarch64), TCG, the console in a file; `acpi` as
/// given (Kiln's loader needs the device tree that the firmware publishes
/// with `acpi=off`).
fn qemu_arm64(image: &Path, format: &str, acpi: bool) -> (Command, PathBuf) {
    let dir = image.parent().unwrap();
    let name = image.file_name().unwrap().to_string_lossy();
    let console = dir.join(format!("{name}.acpi-{acpi}.console"));
    let _ = std::fs::remove_file(&console);
    let vars = dir.join(format!("{name}.vars.fd"));
    std::fs::copy("/usr/share/AAVMF/AAVMF_VARS.fd", &vars)
        .expect("the arm64 UEFI variable store (scripts/test installs qemu-efi-aarch64)");
    let mut c = Command::new("qemu-system-aarch64");
    c.args([
        "-M",
        if acpi { "virt" } else { "virt,acpi=off" },
        "-cpu",
        "cortex-a57",
        "-accel",
        "tcg",
        "-m",
        "256M",
        "-display",
        "none",
        "-nodefaults",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-drive")
    .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd")
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ))
    .arg("-drive")
    .arg(format!(
        "file={},format={format},if=virtio",
        image.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    (c, console)
}

/// Waits up to `limit` for `child` to end by itself.
fn ends_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// arm64: Kiln's own UEFI loader boots the kernel from the disk on QEMU
/// virt's firmware. httpd answers through virtio-net with its address
/// from DHCP and its random seed from the firmware's RNG (virtio-rng);
/// helloworld runs once and powers the machine off; a firmware that
/// describes the machine with ACPI alone gets the loader's clear message.
#[test]
fn arm64_uefi_disk_boots_on_qemu_virt() {
    let out = out_dir("arm64");
    let image = {
        let (code, stdout, err) = support::kiln(&[
            "pkg",
            "-q",
            "--format",
            "qcow2",
            "--arch",
            "arm64",
            "-o",
            out.to_str().unwrap(),
            "apps/httpd",
        ]);
        assert_eq!(code, 0, "{err}");
        PathBuf::from(stdout.trim())
    };
    assert_eq!(qemu_img_format(&image, None), "qcow2");
    let port = support::free_port();
    let (mut c, console) = qemu_arm64(&image, "qcow2", false);
    c.args([
        "-no-reboot",
        "-device",
        "virtio-rng-pci",
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80"),
        "-device",
        "virtio-net-device,netdev=n0",
    ]);
    let mut child = c.spawn().expect("qemu-system-aarch64");
    let status = support::first_status(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(120),
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        status.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "console:\n{text}"
    );
    assert!(
        text.contains("kiln: UEFI loader: kernel at 0x40080000")
            && text.contains("with a seed from the firmware"),
        "{text}"
    );
    assert!(text.contains("kiln: httpd on qemu/arm64 virt"), "{text}");
    assert!(
        text.contains("kiln: random: seeded from host seed"),
        "{text}"
    );
    assert!(text.contains("10.0.2.15/24 via 10.0.2.2 (DHCP)"), "{text}");

    let hello_arm64 = {
        let (code, stdout, err) = support::kiln(&[
            "pkg",
            "-q",
            "--format",
            "raw",
            "--arch",
            "arm64",
            "-o",
            out.join("arm64").to_str().unwrap(),
            "apps/helloworld",
        ]);
        assert_eq!(code, 0, "{err}");
        PathBuf::from(stdout.trim())
    };
    let (mut c, console) = qemu_arm64(&hello_arm64, "raw", false);
    let mut child = c.spawn().unwrap();
    let status = ends_within(&mut child, Duration::from_secs(90));
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "did not power off: {status:?}; console:\n{text}"
    );
    assert_eq!(text.matches("Hello, world!").count(), 1, "{text}");

    let (mut c, console) = qemu_arm64(&hello_arm64, "raw", true);
    let mut child = c.spawn().unwrap();
    let t = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("acpi=off") || t.elapsed() > Duration::from_secs(60) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("kiln: UEFI loader: the firmware gives no device tree")
            && text.contains("-machine virt,acpi=off"),
        "{text}"
    );
    assert!(!text.contains("Hello, world!"), "{text}");
    let _ = std::fs::remove_dir_all(&out);
}
