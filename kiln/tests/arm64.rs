//! arm64: the same apps, built with `--arch arm64` and booted on QEMU's
//! virt board (TCG): output, arguments, exit codes and fault reports as on
//! x86_64, and a raw arm64 Image for boot loaders.

mod support;
use support::root;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Builds each app once for arm64 per test process.
fn built(app: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let mut done = BUILT
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !done.iter().any(|a| a == app) {
        let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args(["build", "-q", "--arch", "arm64", &format!("apps/{app}")])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "kiln build --arch arm64 apps/{app}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        done.push(app.to_string());
    }
    root()
        .join("apps")
        .join(app)
        .join(".kiln/build")
        .join(format!("{app}_qemu-arm64"))
}

/// TCG guests are CPU-heavy; these tests boot one at a time so that a
/// loaded machine (CI) does not starve them into timeouts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `kiln run --arch arm64`: QEMU's virt board.
fn boot(app: &str, args: &[&str]) -> (i32, String) {
    built(app);
    boot_on("qemu", app, args)
}

#[test]
fn helloworld_boots_on_virt_with_its_arguments() {
    let (code, out) = boot("helloworld", &["a", "two words"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kiln: helloworld on qemu/arm64 virt"), "{out}");
    assert!(
        out.contains("Hello, world!\narg 1: a\narg 2: two words\n"),
        "{out}"
    );
    assert!(out.contains("(virt, TCG,"), "{out}");
}

#[test]
fn the_kernel_is_an_arm64_image() {
    let image = std::fs::read(built("helloworld")).unwrap();
    assert_eq!(&image[56..60], b"ARM\x64", "arm64 Image magic");
    assert_eq!(
        u64::from_le_bytes(image[8..16].try_into().unwrap()),
        0x80000,
        "text_offset"
    );
    let size = u64::from_le_bytes(image[16..24].try_into().unwrap());
    assert!(
        size >= image.len() as u64,
        "image_size {size} covers the file and .bss"
    );
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
    // The backtrace, named by kiln run from the ELF beside the image.
    assert!(
        out.contains("kiln: backtrace, most recent call first:"),
        "{out}"
    );
    assert!(
        out.contains("      in main at apps/crashtest/src/lib.rs:35"),
        "{out}"
    );
    assert!(
        out.contains("      in kiln_plat_main at plat/qemu/src/virt.rs:"),
        "{out}"
    );
}

/// Without semihosting (Firecracker, a QEMU run by hand) the exit call is
/// an undefined instruction: the code then goes on the console as the
/// last line, and PSCI powers the machine off (QEMU's status 0).
#[test]
fn without_semihosting_the_exit_code_comes_on_the_console() {
    let image = built("crashtest");
    let _g = one_at_a_time();
    let o = Command::new("timeout")
        .args(["60", "qemu-system-aarch64", "-M", "virt", "-accel", "tcg"])
        .args(["-cpu", "cortex-a72", "-m", "64M", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&image)
        .args(["-append", "kiln.quiet -- exit 4"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.ends_with("\nkiln: exit status 4\n"), "{out}");
    assert!(!out.contains("fault"), "{out}");
}

#[test]
fn faults_are_reported_with_syndrome_and_address() {
    let (c, out) = boot("crashtest", &["null"]);
    assert_eq!(c, 125, "{out}");
    assert!(
        out.contains("kiln: CPU exception class 0x25 (data abort)"),
        "{out}"
    );
    assert!(
        out.contains("fault address       0x0000000000000000"),
        "{out}"
    );
    assert!(
        out.contains("likely cause: null pointer dereference"),
        "{out}"
    );
    let (c, out) = boot("crashtest", &["ud"]);
    assert_eq!(c, 125, "{out}");
    assert!(
        out.contains("(unknown reason (undefined instruction))"),
        "{out}"
    );
    assert!(out.contains("instruction pointer 0x00000000400"), "{out}");
    // Exceptions have their own stack, so running out of stack is reported too.
    let (c, out) = boot("crashtest", &["overflow"]);
    assert_eq!(c, 125, "{out}");
    assert!(
        out.contains("likely cause: stack overflow (hit the guard page below the stack)"),
        "{out}"
    );
}

fn assert_tour(out: &str) {
    assert!(
        out.contains(r#"joined 4 workers: sums [500500, 2001000, 4501500, 8002000]"#),
        "{out}"
    );
    assert!(
        out.contains("sleepers woke in order [100, 200, 300] after"),
        "{out}"
    );
    assert!(out.contains("(at least 300: true)"), "{out}");
    assert!(out.contains("consumer got 1000 items, sum 500500"), "{out}");
    assert!(
        out.contains("timed wait timed out: true, after at least 50 ms: true"),
        "{out}"
    );
}

#[test]
fn threads_switch_and_sleep_on_the_gicv2_timer() {
    let (code, out) = boot("threads", &[]);
    assert_eq!(code, 0, "{out}");
    assert_tour(&out);
    // virtio-mmio lines are enabled at the GIC and end the idle wait.
    assert!(out.contains("/64, interrupts"), "{out}");
}

#[test]
fn threads_run_with_a_gicv3_and_from_el2_and_el3() {
    // kiln run uses virt's defaults (GICv2, entered at EL1); boot the same
    // image by hand on a GICv3, and entered at EL2 and at EL3 (the entry
    // drops to EL1 from either).
    let image = built("threads");
    let _g = one_at_a_time();
    for machine in [
        "virt,gic-version=3",
        "virt,virtualization=on",
        "virt,secure=on",
        "virt,secure=on,virtualization=on,gic-version=3",
    ] {
        let o = Command::new("timeout")
            .args([
                "60",
                "qemu-system-aarch64",
                "-M",
                machine,
                "-accel",
                "tcg",
                "-cpu",
                "cortex-a72",
                "-m",
                "64M",
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-semihosting-config",
                "enable=on,target=native",
            ])
            .arg("-kernel")
            .arg(&image)
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-device,netdev=n0",
                "-append",
                "--",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        // Exit status ((0 + 1) << 1) | 1 = 3 means the app returned 0.
        assert_eq!(
            o.status.code(),
            Some(3),
            "{machine}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_tour(&out);
        assert!(out.contains("/64, interrupts"), "{machine}: {out}");
    }
}

#[test]
fn httpd_serves_the_same_site_on_arm64() {
    built("httpd");
    let _g = one_at_a_time();
    let mut guest = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-q",
            "--arch",
            "arm64",
            "--timeout",
            "120",
            "-p",
            "18720:80",
            "apps/httpd",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let page = std::fs::read(root().join("apps/httpd/rootfs/www/612.html")).unwrap();
    let body = loop {
        let o = Command::new("curl")
            .args(["-s", "-m", "5", "--fail", "http://127.0.0.1:18720/612.html"])
            .output()
            .unwrap();
        if o.status.success() {
            break o.stdout;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "httpd on arm64 never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(body, page);
    for path in ["/", "/style.css", "/game.js", "/kiln.svg"] {
        let o = Command::new("curl")
            .args([
                "-s",
                "-m",
                "60",
                "--retry",
                "2",
                "--fail",
                &format!("http://127.0.0.1:18720{path}"),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{path}: curl exit {:?}",
            o.status.code()
        );
        let file = if path == "/" {
            "index.html"
        } else {
            &path[1..]
        };
        assert_eq!(
            o.stdout,
            std::fs::read(root().join("apps/httpd/rootfs/www").join(file)).unwrap(),
            "{path}"
        );
    }
    let _ = guest.kill();
    let _ = guest.wait();
}

/// `kiln run --plat raspi --arch arm64`: QEMU's raspi3b board.
fn boot_raspi(app: &str, args: &[&str]) -> (i32, String) {
    boot_on("raspi", app, args)
}

fn boot_on(plat: &str, app: &str, args: &[&str]) -> (i32, String) {
    let _g = one_at_a_time();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "--plat",
            plat,
            "--arch",
            "arm64",
            "--timeout",
            "60",
            &format!("apps/{app}"),
            "--",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn helloworld_boots_on_the_raspberry_pi_3() {
    let (code, out) = boot_raspi("helloworld", &["pi", "3 b"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("kiln: helloworld on raspi/arm64 (BCM2837)"),
        "{out}"
    );
    // The command line travels in the device tree's /chosen/bootargs.
    assert!(
        out.contains("Hello, world!\narg 1: pi\narg 2: 3 b\n"),
        "{out}"
    );
    assert!(out.contains("(raspi3b, TCG, 1024 MiB)"), "{out}");
    // kernel8.img: an arm64 Image linked for the Pi's load address.
    let image =
        std::fs::read(root().join("apps/helloworld/.kiln/build/helloworld_raspi-arm64")).unwrap();
    assert_eq!(&image[56..60], b"ARM\x64");
    // Exit codes and faults work there too.
    let (code, out) = boot_raspi("crashtest", &["exit", "42"]);
    assert_eq!(code, 42, "{out}");
    let (code, out) = boot_raspi("crashtest", &["ud"]);
    assert_eq!(code, 125, "{out}");
    assert!(
        out.contains("(unknown reason (undefined instruction))"),
        "{out}"
    );
}

#[test]
fn a_library_the_target_cannot_run_is_a_clear_error() {
    // An app that wants the network stack, built for a board without virtio.
    let d = std::env::temp_dir().join(format!("kiln-arm64-test-{}", std::process::id()));
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::write(
        d.join("Kraftfile"),
        "spec: v0.6\nname: netpi\ntargets:\n  - raspi/arm64\n",
    )
    .unwrap();
    std::fs::write(
        d.join("Kconfig"),
        "config APP_NETPI\n\tdef_bool y\n\tselect LIBNET\n",
    )
    .unwrap();
    std::fs::write(
        d.join("Cargo.toml"),
        format!(
            "[package]\nname = \"netpi\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n[dependencies]\nkiln-std = {{ path = {:?}, features = [\"net\"] }}\n",
            root().join("lib/std")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("src/lib.rs"),
        "#![no_std]\npub fn main(_: &[&str], _: &[(&str, &str)]) -> i32 { 0 }\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .arg("build")
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "LIBNET needs `HAVE_VIRTIO || HAVE_PLATFORM_NETDEV`, which raspi/arm64 does not support (selected by APP_NETPI)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn kernel_memory_is_write_xor_execute_on_arm64() {
    for (mode, class, cause) in [
        (
            "write-text",
            "0x25 (data abort)",
            "write to read-only memory",
        ),
        (
            "write-rodata",
            "0x25 (data abort)",
            "write to read-only memory",
        ),
        (
            "exec-heap",
            "0x21 (instruction abort)",
            "jump into memory that is not executable",
        ),
        (
            "exec-stack",
            "0x21 (instruction abort)",
            "jump into memory that is not executable",
        ),
    ] {
        let (c, out) = boot("crashtest", &[mode]);
        assert_eq!(c, 125, "{mode}: {out}");
        assert!(
            out.contains(&format!("CPU exception class {class}")),
            "{mode}: {out}"
        );
        assert!(
            out.contains(&format!("likely cause: {cause}")),
            "{mode}: {out}"
        );
    }
}

#[test]
fn helloworld_boots_on_the_raspberry_pi_4() {
    let (code, out) = boot_on("raspi4", "helloworld", &["pi", "4"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("kiln: helloworld on raspi4/arm64 (BCM2711)"),
        "{out}"
    );
    assert!(
        out.contains("Hello, world!\narg 1: pi\narg 2: 4\n"),
        "{out}"
    );
    assert!(out.contains("(raspi4b, TCG, 2048 MiB)"), "{out}");
    let (code, out) = boot_on("raspi4", "crashtest", &["null"]);
    assert_eq!(code, 125, "{out}");
    assert!(
        out.contains("CPU exception class 0x25 (data abort)"),
        "{out}"
    );
}

#[test]
fn idle_waits_for_the_timer_interrupt_on_every_arm_board() {
    // 300 waits of 1 ms, each ended by the virtual timer's interrupt (GIC on
    // virt and the Pi 4, the local interrupt controller on the Pi 3); if it
    // did not reach the CPU, idle would return at once and take far less.
    for plat in ["qemu", "raspi", "raspi4"] {
        let (code, out) = boot_on(plat, "crashtest", &["idle"]);
        assert_eq!(code, 0, "{plat}: {out}");
        let us: u64 = out
            .split("idled ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            (300_000..30_000_000).contains(&us),
            "{plat}: 300 idles of 1 ms took {us} us"
        );
    }
}

#[test]
fn the_mqtt_broker_serves_mosquitto_clients_on_arm64() {
    built("mqtt");
    let _g = one_at_a_time();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut guest = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-q",
            "--arch",
            "arm64",
            "--timeout",
            "120",
            "-p",
            &format!("{port}:1883"),
            "apps/mqtt",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = port.to_string();
    let start = std::time::Instant::now();
    while !Command::new("mosquitto_pub")
        .args(["-p", &p, "-t", "probe", "-m", "x"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "the broker on arm64 never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &p, "-t", "arm/#", "-v", "-C", "2", "-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for (q, m) in [("1", "one"), ("2", "two")] {
        assert!(Command::new("mosquitto_pub")
            .args(["-p", &p, "-q", q, "-t", "arm/x", "-m", m])
            .status()
            .unwrap()
            .success());
    }
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "arm/x one\narm/x two\n"
    );
    let _ = guest.kill();
    let _ = guest.wait();
}
