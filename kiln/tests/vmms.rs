//! One image, every VMM this host has: QEMU always; Firecracker and
//! cloud-hypervisor when their programs are in PATH and KVM works (each
//! test prints a "SKIPPED" line for a VMM it cannot reach). Exit codes
//! come back through the console on the VMMs without a debug-exit device,
//! `-p` reaches the guest through a tap Kiln makes and removes, instances
//! stop on request, volumes keep data; what a VMM cannot do is refused
//! with what to do instead.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{other_vmms, root, State};

/// `kiln run -q` of `app` on `vmm` (QEMU under TCG) with `args` after `--`.
fn run_on(vmm: &str, app: &str, args: &[&str]) -> (i32, String, String) {
    run_on_with(vmm, &["-q"], app, args)
}

/// `kiln run` with `opts` of `app` on `vmm` (QEMU under TCG) with `args`
/// after `--`.
fn run_on_with(vmm: &str, opts: &[&str], app: &str, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["run", "--vmm", vmm, "--timeout", "120"];
    a.extend_from_slice(opts);
    if vmm == "qemu" {
        a.push("-W");
    }
    a.push(app);
    a.push("--");
    a.extend_from_slice(args);
    support::kiln(&a)
}

#[test]
fn exit_codes_arguments_and_panics_reach_kiln_run_on_every_vmm() {
    let mut vmms = vec!["qemu"];
    vmms.extend(other_vmms("exit codes"));
    for v in vmms {
        let (code, out, err) = run_on(v, "apps/helloworld", &["a", "b c"]);
        assert_eq!(code, 0, "{v}: {out}{err}");
        assert!(
            out.contains("Hello, world!") && out.contains("arg 2: b c"),
            "{v}: {out}"
        );
        // What a VMM appends to the command line (Firecracker's pci=off)
        // is not the app's.
        assert!(!out.contains("arg 3"), "{v}: {out}");
        assert!(
            !out.contains("exit status"),
            "{v}: the exit line is Kiln's, not the user's: {out}"
        );
        let (code, out, err) = run_on(v, "apps/crashtest", &["exit", "7"]);
        assert_eq!(code, 7, "{v}: {out}{err}");
        let (code, out, err) = run_on(v, "apps/crashtest", &["panic"]);
        assert_eq!(code, 101, "{v}: {out}{err}");
        assert!(
            format!("{out}{err}").contains("crashtest was asked to panic"),
            "{v}: {out}{err}"
        );
    }
}

#[test]
fn every_vmm_gives_the_guest_an_entropy_device() {
    let mut vmms = vec!["qemu"];
    vmms.extend(other_vmms("entropy"));
    for v in vmms {
        // Not -q: the boot log names the sources.
        let (code, out, err) = run_on_with(v, &[], "apps/files", &[]);
        assert_eq!(code, 0, "{v}: {out}{err}");
        let all = format!("{out}{err}");
        let line = all
            .lines()
            .find(|l| l.contains("random: seeded from"))
            .unwrap_or_else(|| panic!("{v}: no seeding line: {all}"));
        assert!(line.contains("virtio-rng"), "{v}: {line}");
        assert!(all.contains("urandom nonzero: true"), "{v}: {all}");
    }
}

/// GET / on 127.0.0.1:`port`: the status line.
fn get(port: u16) -> String {
    support::first_status(([127, 0, 0, 1], port).into(), Duration::from_secs(60))
        .unwrap_or_else(|| panic!("nothing answered on port {port}"))
}

/// Waits (10 s at most) until nothing listens on host port `port`.
fn wait_port_free(port: u16) {
    let t = Instant::now();
    while std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "port {port} stays taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tap device an instance's record names, if any.
fn tap_of(s: &State, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(s.0.join(name).join("instance.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["tap"]["name"].as_str().map(str::to_string)
}

#[test]
fn httpd_serves_through_p_and_stops_as_an_instance_on_every_other_vmm() {
    for v in other_vmms("httpd instances") {
        let s = State::new(&format!("vmm-{v}"));
        let port = support::free_port();
        let fwd = format!("{port}:80");
        let (code, _, err) = s.kiln(&[
            "run",
            "-q",
            "-d",
            "--vmm",
            v,
            "--name",
            "web",
            "-p",
            &fwd,
            "apps/httpd",
        ]);
        assert_eq!(code, 0, "{v}: {err}");
        s.wait_for_log("web", "httpd: serving");
        assert_eq!(get(port), "HTTP/1.1 200 OK", "{v}");
        let (_, ps, _) = s.kiln(&["ps"]);
        assert!(
            ps.contains(&format!("{v}/x86_64")) && ps.contains("running"),
            "{v}: {ps}"
        );
        let tap = tap_of(&s, "web").expect("the instance records its tap");
        assert!(
            Path::new("/sys/class/net").join(&tap).exists(),
            "{v}: {tap} missing while the guest runs"
        );
        let (code, _, err) = s.kiln(&["stop", "web"]);
        assert_eq!(code, 0, "{v}: {err}");
        // Ctrl-Alt-Del (Firecracker) or the ACPI power button
        // (cloud-hypervisor) through the VMM's API: the app stops by itself.
        assert!(err.contains("kiln: web shut down"), "{v}: {err}");
        let (_, log, _) = s.kiln(&["logs", "web"]);
        assert!(log.contains("httpd: stopped"), "{v}: {log}");
        assert_eq!(s.state_of("web"), "stopped");
        assert!(
            !Path::new("/sys/class/net").join(&tap).exists(),
            "{v}: {tap} left behind"
        );
        // The port is free again once the instance's supervisor is gone.
        wait_port_free(port);
    }
}

/// apps/mqtt with persistence on an image volume (Firecracker names its
/// disks vda, vdb...; cloud-hypervisor by serial number, as QEMU does): a
/// retained message survives a restart.
#[test]
fn a_volume_keeps_the_brokers_retained_messages_on_every_other_vmm() {
    for v in other_vmms("volumes") {
        let s = State::new(&format!("vmmvol-{v}"));
        let (code, _, err) = s.kiln(&["volume", "create", "mq", "--size", "8M"]);
        assert_eq!(code, 0, "{err}");
        let port = support::free_port();
        let start = |name: &str| {
            wait_port_free(port);
            let fwd = format!("{port}:1883");
            let (code, _, err) = s.kiln(&[
                "run",
                "-d",
                "--vmm",
                v,
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
            assert_eq!(code, 0, "{v}: {err}");
            s.wait_for_log(name, "mqtt: listening")
        };
        start("b1");
        let pub_ = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-r",
                "-q",
                "1",
                "-t",
                "edge/temp",
                "-m",
                "21.5",
            ])
            .output()
            .unwrap();
        assert!(
            pub_.status.success(),
            "{v}: {}",
            String::from_utf8_lossy(&pub_.stderr)
        );
        // The autosave follows the change (just after the PUBACK); then
        // the broker is stopped (on cloud-hypervisor at once, without its
        // help).
        std::thread::sleep(Duration::from_secs(5));
        let (code, _, err) = s.kiln(&["stop", "b1"]);
        assert_eq!(code, 0, "{v}: {err}");
        start("b2");
        let log = s.wait_for_log("b2", "mqtt: restored");
        assert!(log.contains("restored 1 retained messages"), "{v}: {log}");
        let sub = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "edge/#",
                "-C",
                "1",
                "-W",
                "30",
                "-v",
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&sub.stdout).contains("edge/temp 21.5"),
            "{v}: {}",
            String::from_utf8_lossy(&sub.stderr)
        );
        let (code, _, err) = s.kiln(&["stop", "b2"]);
        assert_eq!(code, 0, "{v}: {err}");
    }
}

/// A Kraftfile whose only target is `fc/x86_64` (as some of Unikraft's
/// catalog) runs on Firecracker with no `--vmm`; without Firecracker, the
/// run says how to get it.
#[test]
fn a_kraftfile_that_lists_only_firecracker_runs_there() {
    let dir = std::env::temp_dir().join(format!("kiln-fconly-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kf = dir.join("Kraftfile");
    std::fs::write(
        &kf,
        "spec: v0.6\nname: helloworld\ntargets:\n  - fc/x86_64\n",
    )
    .unwrap();
    let kf = kf.to_str().unwrap();
    if support::other_vmms("fc/x86_64 only").contains(&"firecracker") {
        let (code, out, err) = support::kiln(&[
            "run",
            "--timeout",
            "120",
            "-K",
            kf,
            "apps/helloworld",
            "--",
            "fc",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("(firecracker, KVM"), "{err}");
        assert!(out.contains("arg 1: fc"), "{out}");
    } else {
        let empty = dir.join("bin");
        std::fs::create_dir_all(&empty).unwrap();
        let (code, err) = kiln_with_path(&empty, &["run", "-K", kf, "apps/helloworld"]);
        assert_eq!(code, 1, "{err}");
        assert!(says_how_to_get_firecracker(&err), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `kiln run --vmm firecracker` says when there is no Firecracker.
fn says_how_to_get_firecracker(err: &str) -> bool {
    err.contains("firecracker not found in PATH") && err.contains("build it from its source")
}

/// `kiln ARGS` with PATH = `first` then the usual one.
fn kiln_with_path(first: &Path, args: &[&str]) -> (i32, String) {
    let path = std::env::join_paths(
        std::iter::once(first.to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .filter(|d| !d.join("firecracker").exists()),
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .env("PATH", path)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn what_a_vmm_cannot_do_is_refused_with_what_to_do() {
    let (code, _, err) = support::kiln(&["run", "--vmm", "xen", "apps/helloworld"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("invalid value 'xen'")
            && err.contains("firecracker")
            && err.contains("cloud-hypervisor"),
        "{err}"
    );
    // No firecracker in PATH: how to get it, before anything is built.
    let empty = std::env::temp_dir().join(format!("kiln-novmm-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (code, err) = kiln_with_path(&empty, &["run", "--vmm", "firecracker", "apps/helloworld"]);
    assert_eq!(code, 1, "{err}");
    assert!(says_how_to_get_firecracker(&err), "{err}");
    // A stand-in program: the checks that come before starting it.
    let fake: PathBuf = empty.join("firecracker");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&fake)
        .status()
        .unwrap();
    let (code, err) = kiln_with_path(
        &empty,
        &["run", "-W", "--vmm", "firecracker", "apps/helloworld"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("-W: firecracker runs guests on KVM only"),
        "{err}"
    );
    let (code, err) = kiln_with_path(
        &empty,
        &[
            "run",
            "--machine",
            "q35",
            "--vmm",
            "firecracker",
            "apps/helloworld",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--machine chooses QEMU's machine model"),
        "{err}"
    );
    let folder = format!("{}:/x", empty.display());
    let (code, err) = kiln_with_path(
        &empty,
        &[
            "run",
            "--vmm",
            "firecracker",
            "-v",
            &folder,
            "apps/helloworld",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Firecracker has no virtio-9p device") && err.contains("kiln volume create"),
        "{err}"
    );
    let (code, err) = kiln_with_path(
        &empty,
        &[
            "run",
            "--vmm",
            "firecracker",
            "-p",
            "5353:53/udp",
            "apps/helloworld",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Kiln forwards TCP ports only"), "{err}");
    let image = root().join("apps/helloworld/.kiln/build/helloworld_qemu-x86_64");
    let (code, err) = kiln_with_path(
        &empty,
        &[
            "run",
            "--vmm",
            "firecracker",
            "--arch",
            "arm64",
            "--kernel",
            image.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Firecracker runs guests of its host's architecture (with KVM), and this host is x86_64"),
        "{err}"
    );
    // The fc/arm64 target on this x86_64 host: refused before compiling.
    let (code, err) = kiln_with_path(
        &empty,
        &["run", "--plat", "fc", "--arch", "arm64", "apps/helloworld"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("run the arm64 image on an arm64 host") && !err.contains("Compiling"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

/// On a bridge from `kiln net create`, a guest of each other VMM gets a
/// tap on the bridge and an address of its own there.
#[test]
fn a_guest_of_every_other_vmm_serves_on_a_bridge() {
    for v in other_vmms("bridges") {
        let b = support::Bridge::create("kvb", 80);
        let s = State::new(&format!("vmmbr-{v}"));
        let net = format!("bridge:{}", b.name);
        let (code, _, err) = s.kiln(&[
            "run",
            "-q",
            "-d",
            "--vmm",
            v,
            "--name",
            "web",
            "--network",
            &net,
            "apps/httpd",
        ]);
        assert_eq!(code, 0, "{v}: {err}");
        s.wait_for_log("web", "httpd: serving");
        let tap = tap_of(&s, "web").expect("the instance records its tap");
        let master = std::fs::read_link(format!("/sys/class/net/{tap}/master")).unwrap();
        assert!(master.ends_with(&b.name), "{v}: {tap} is on {master:?}");
        let status = support::first_status(
            format!("{}:80", b.guest_ip).parse().unwrap(),
            Duration::from_secs(30),
        );
        assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"), "{v}");
        let (code, _, err) = s.kiln(&["rm", "-f", "web"]);
        assert_eq!(code, 0, "{v}: {err}");
        assert!(
            !Path::new("/sys/class/net").join(&tap).exists(),
            "{v}: {tap} left behind"
        );
    }
}

/// A QEMU started without Kiln's debug-exit device (by libvirt, by urunc,
/// by hand) gets the code on the console and a reset, which ends it with
/// -no-reboot.
#[test]
fn qemu_without_the_debug_exit_device_gets_the_code_on_the_console() {
    let (code, _, err) = support::kiln(&["build", "-q", "apps/crashtest"]);
    assert_eq!(code, 0, "{err}");
    let o = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-device",
            "i8042",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "64M",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(root().join("apps/crashtest/.kiln/build/crashtest_qemu-x86_64"))
        .args(["-append", "kiln.quiet -- exit 4"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.ends_with("\nkiln: exit status 4\n"), "{out}");
}

/// The fc/arm64 image on Firecracker on an arm64 host with KVM, as a user
/// there runs it: `kiln run --vmm firecracker` (Kiln built for aarch64),
/// exit codes through the console, `-d`, `ps`, `-p` through a tap, `logs`,
/// `stop`, `rm`. With no arm64 host at hand the host is emulated
/// (scripts/arm64-kvm-host: Debian's arm64 kernel with its KVM under
/// qemu-system-aarch64). Runs when an aarch64 Firecracker is in PATH as
/// `firecracker-aarch64` (README says how to build one); Kiln is built for
/// aarch64-unknown-linux-musl with Debian's gcc-aarch64-linux-gnu as linker.
#[test]
fn the_fc_arm64_image_runs_on_firecracker_on_an_arm64_host() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(fc) = std::env::split_paths(&path)
        .map(|d| d.join("firecracker-aarch64"))
        .find(|p| p.is_file())
    else {
        eprintln!("SKIPPED the fc/arm64 image on Firecracker: no firecracker-aarch64 in PATH (README: \"Firecracker and cloud-hypervisor\" says how to build it)");
        return;
    };
    for app in ["helloworld", "crashtest", "httpd"] {
        let (code, _, err) = support::kiln(&[
            "build",
            "-q",
            "--plat",
            "fc",
            "--arch",
            "arm64",
            &format!("apps/{app}"),
        ]);
        assert_eq!(code, 0, "{app}: {err}");
    }
    let o = Command::new("cargo")
        .current_dir(root())
        .args([
            "build",
            "-q",
            "--release",
            "--target",
            "aarch64-unknown-linux-musl",
            "-p",
            "kiln",
        ])
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building kiln for aarch64 (rustup target add aarch64-unknown-linux-musl; apt-get install gcc-aarch64-linux-gnu):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = std::env::temp_dir().join(format!("kiln-arm64-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        (
            "kiln",
            root().join("target/aarch64-unknown-linux-musl/release/kiln"),
        ),
        ("firecracker", fc),
        (
            "hello",
            root().join("apps/helloworld/.kiln/build/helloworld_qemu-arm64-firecracker"),
        ),
        (
            "crash",
            root().join("apps/crashtest/.kiln/build/crashtest_qemu-arm64-firecracker"),
        ),
        (
            "httpd",
            root().join("apps/httpd/.kiln/build/httpd_qemu-arm64-firecracker"),
        ),
    ];
    let mut c = Command::new(root().join("scripts/arm64-kvm-host"));
    for (name, from) in &files {
        std::fs::copy(from, dir.join(name)).unwrap();
        c.arg("--file").arg(dir.join(name));
    }
    let run = "kiln run --vmm firecracker --arch arm64 --kernel";
    let script = format!(
        "{run} hello -- a 'two words'; echo \"hello status $?\"
         {run} crash -q -- exit 42; echo \"crash status $?\"
         {run} crash -q -- panic; echo \"panic status $?\"
         kiln run -d --name web --vmm firecracker --arch arm64 --kernel httpd -p 8080:80
         for i in $(seq 30); do kiln logs web | grep -q 'httpd: serving' && break; sleep 1; done
         kiln ps
         wget -q -O - http://127.0.0.1:8080/ | grep -c '<!doctype html>' | sed 's/^/pages: /'
         kiln stop web 2>&1; echo \"stop status $?\"
         kiln ps --all
         kiln logs web
         kiln rm web; echo \"rm status $?\"
         ip link | grep -c kilntap | sed 's/^/taps left: /'"
    );
    let o = c
        .args(["--timeout", "400", "--", &script])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("kiln: helloworld on firecracker/arm64"),
        "{out}"
    );
    assert!(
        out.contains("Hello, world!\narg 1: a\narg 2: two words\n"),
        "{out}"
    );
    assert!(out.contains("hello status 0\n"), "{out}");
    assert!(out.contains("crash status 42\n"), "{out}");
    assert!(
        out.contains("crashtest was asked to panic") && out.contains("panic status 101\n"),
        "{out}"
    );
    let running = out.lines().find(|l| l.starts_with("web ")).unwrap_or("");
    assert!(
        running.contains("firecracker/arm64")
            && running.contains("running")
            && running.contains("8080:80"),
        "{out}"
    );
    assert!(out.contains("pages: 1\n"), "{out}");
    assert!(out.contains("httpd: serving /www on port 80"), "{out}");
    assert!(
        out.contains("stop status 0\n") && out.contains("rm status 0\n"),
        "{out}"
    );
    assert!(out.contains("taps left: 0\n"), "{out}");
    // Asked on the console's input, the app stops by itself.
    assert!(out.contains("kiln: web shut down"), "{out}");
    assert!(out.contains("httpd: stopped"), "{out}");
}
