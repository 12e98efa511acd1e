//! Detached instances: kiln run -d, ps, logs, stop, rm, with a state folder
//! of the test's own (KILN_STATE_DIR).

mod support;
use support::{root, State};

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn detached_instances_are_listed_logged_stopped_and_removed() {
    let s = State::new("lifecycle");
    assert_eq!(s.kiln(&["build", "-q", "apps/httpd"]).0, 0);
    assert_eq!(s.kiln(&["build", "-q", "apps/crashtest"]).0, 0);

    // A short-lived app: it exits, its status and output are kept.
    let (code, out, err) = s.kiln(&[
        "run",
        "-d",
        "--name",
        "short",
        "apps/crashtest",
        "--",
        "exit",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "short");
    s.wait_for("short", "exited (3)");
    let (_, logs, _) = s.kiln(&["logs", "short"]);
    assert!(logs.contains("crashtest: exit"), "{logs}");
    // logs -f returns once the instance has ended.
    let (code, logs, _) = s.kiln(&["logs", "-f", "short"]);
    assert_eq!(code, 0);
    assert!(logs.contains("crashtest: exit"));

    // A server: running, with its port, reachable, then stopped.
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-q",
        "--name",
        "web",
        "-p",
        "18095:80",
        "apps/httpd",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.state_of("web"), "running");
    let start = Instant::now();
    loop {
        let o = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:18095/",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout) == "200" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the detached server never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, table, _) = s.kiln(&["ps"]);
    let line = table.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(
        line.contains("httpd")
            && line.contains("running")
            && line.contains("18095:80/tcp")
            && line.contains("64M"),
        "{table}"
    );

    // Names are unique; unknown names and removing a running instance are errors.
    let (code, _, err) = s.kiln(&["run", "-d", "--name", "web", "apps/httpd"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("an instance named 'web' exists already"),
        "{err}"
    );
    let (code, _, err) = s.kiln(&["logs", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no instance named 'nope'"), "{err}");
    let (code, _, err) = s.kiln(&["rm", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("is running; stop it first"), "{err}");

    let t = Instant::now();
    assert_eq!(s.kiln(&["stop", "web"]).0, 0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stop fell back to killing"
    );
    assert_eq!(s.state_of("web"), "stopped");
    assert_eq!(s.kiln(&["rm", "web"]).0, 0);
    assert_eq!(s.state_of("web"), "");

    // --rm: the record goes away when the guest exits.
    assert_eq!(
        s.kiln(&[
            "run",
            "-d",
            "--rm",
            "--name",
            "gone",
            "apps/crashtest",
            "--",
            "exit",
            "0"
        ])
        .0,
        0
    );
    let start = Instant::now();
    while s.0.join("gone").exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_instance_whose_qemu_died_shows_as_exited() {
    let s = State::new("stale");
    assert_eq!(s.kiln(&["build", "-q", "apps/crashtest"]).0, 0);
    assert_eq!(
        s.kiln(&[
            "run",
            "-d",
            "--name",
            "victim",
            "apps/crashtest",
            "--",
            "hang"
        ])
        .0,
        0
    );
    assert_eq!(s.state_of("victim"), "running");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.0.join("victim/instance.json")).unwrap())
            .unwrap();
    let pid = info["pid"].as_u64().unwrap() as i32;
    // Kill the supervisor first, then QEMU: nobody records the exit.
    let sup = Command::new("pgrep")
        .args([
            "-f",
            &format!("__supervise {}", s.0.join("victim").display()),
        ])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&sup.stdout).split_whitespace() {
        // SAFETY: kill(2) on processes this test started.
        unsafe { libc::kill(p.parse().unwrap(), libc::SIGKILL) };
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    s.wait_for("victim", "exited (unknown)");
    // A dead QEMU's pid is not reported (it may be another program's by
    // now), and the table keeps its columns.
    let (_, out, _) = s.kiln(&["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v[0]["pid"].is_null(), "{out}");
    let (_, table, _) = s.kiln(&["ps"]);
    let lines: Vec<&str> = table.lines().collect();
    let col = |l: &str, w: &str| l.find(w).unwrap_or_else(|| panic!("{w} in {l:?}"));
    assert_eq!(col(lines[0], "PORTS"), col(lines[1], "-"), "{table}");
}

/// Ctrl-C at a terminal reaches `kiln run` and the VMM together (one
/// process group): QEMU ends the machine, and `kiln run` says so and exits
/// 130; a linuxu process takes it as the host's request to stop, as from
/// `kiln stop`, and the web server finishes gracefully.
#[test]
fn ctrl_c_stops_the_guest_and_says_so() {
    use std::os::unix::process::CommandExt;
    for (how, code, says) in [
        (
            &["-W"][..],
            130,
            "kiln: interrupted (Ctrl-C); the guest was stopped",
        ),
        (&["--plat", "linuxu"][..], 0, "httpd: stopped"),
    ] {
        let port = support::free_port();
        let fwd = format!("{port}:80");
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args(["run", "--timeout", "120", "-p", &fwd])
            .args(how)
            .arg("apps/httpd")
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let status = support::first_status(addr, Duration::from_secs(90));
        // SAFETY: kill(2) on the process group this test made.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
        let o = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 200 OK"),
            "{how:?}: {text}"
        );
        assert_eq!(o.status.code(), Some(code), "{how:?}: {text}");
        assert!(text.contains(says), "{how:?}: {text}");
    }
}

/// What `kiln run` can tell is wrong is refused before anything boots,
/// with what to do instead; a guest stopped from outside is reported as
/// such, not as a crash.
#[test]
fn run_refuses_early_and_reports_a_stop_from_outside() {
    let s = State::new("refuse");
    // Memory below what the image needs (QEMU used to stop with a KVM
    // emulation failure and hang).
    let (code, _, err) = s.kiln(&["run", "-q", "-M", "1K", "apps/helloworld"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("-M 1K: this image needs at least ") && err.contains("MiB"),
        "{err}"
    );
    // The same under TCG, and at 1 MiB (both hung once).
    for args in [&["-W", "-M", "1K"][..], &["-M", "1M"][..]] {
        let (code, _, err) = s.kiln(&[&["run", "-q"], args, &["apps/helloworld"]].concat());
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "-M {}: this image needs at least ",
                args[args.len() - 1]
            )),
            "{args:?}: {err}"
        );
    }
    let need: String = err
        .split("at least ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let (code, out, err) = s.kiln(&["run", "-q", "-M", &format!("{need}M"), "apps/helloworld"]);
    assert_eq!(code, 0, "the minimum it names boots: {out}{err}");
    // A bad instance name, before any build.
    let (code, out, err) = s.kiln(&["run", "-d", "--name", "../evil", "apps/helloworld"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("instance name '../evil'") && !out.contains("[1/4]") && !err.contains("[1/4]"),
        "{out}{err}"
    );
    // A host port another program holds, in the foreground and with -d.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for detach in [false, true] {
        let fwd = format!("{port}:80");
        let mut args = vec!["run", "-q", "-p", &fwd, "apps/httpd"];
        if detach {
            args.insert(1, "-d");
        }
        let (code, out, err) = s.kiln(&args);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains(&format!(
                "host port {port} (tcp) is in use by another program"
            )),
            "{err}"
        );
    }
    drop(taken);
    // One a Kiln instance holds: named.
    let fwd = format!("{port}:80");
    assert_eq!(
        s.kiln(&["run", "-d", "--name", "web", "-p", &fwd, "apps/httpd"])
            .0,
        0
    );
    let (code, _, err) = s.kiln(&["run", "-q", "-p", &fwd, "apps/httpd"]);
    assert_eq!(code, 1);
    assert!(err.contains("is in use by Kiln instance 'web'"), "{err}");
    assert_eq!(s.kiln(&["rm", "-f", "web"]).0, 0);
    // SIGTERM to QEMU from outside: 128 + 15, said as such.
    assert_eq!(s.kiln(&["build", "-q", "apps/crashtest"]).0, 0);
    let mut run = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .env("KILN_STATE_DIR", &s.0)
        .args(["run", "-q", "apps/crashtest", "--", "hang"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let qemu = loop {
        let o = Command::new("pgrep")
            .args(["-P", &run.id().to_string(), "qemu-system"])
            .output()
            .unwrap();
        if let Some(p) = String::from_utf8_lossy(&o.stdout).split_whitespace().next() {
            break p.parse::<i32>().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "QEMU never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(qemu, libc::SIGTERM) };
    let status = run.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    // QEMU says it is terminating (stopped) or, when the signal comes
    // before it has set up its handlers, dies of it (killed): either way
    // the signal is named, and it is not called a crash.
    assert!(
        (err.contains("the guest was stopped by SIGTERM from outside")
            || err.contains("qemu was killed by SIGTERM from outside"))
            && !err.contains("triple fault"),
        "{err}"
    );
}

/// QEMU stops a guest after a KVM internal error and waits (it used to
/// hang `kiln run`): the run ends with the error, a clear message and
/// 125, and QEMU is gone. Triggered for real where the host's KVM cannot
/// emulate SSE (PVM, as on the machines this suite runs on): a glibc
/// program under `--accel kvm`.
#[test]
fn a_kvm_internal_error_ends_the_run_clearly() {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists()
        || std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        println!("SKIPPED a_kvm_internal_error_ends_the_run_clearly: needs a KVM that fails to emulate SSE (this host's is not kvm_pvm)");
        return;
    }
    let s = State::new("kvmerror");
    let d = s.0.join("rootfs");
    std::fs::create_dir_all(&d).unwrap();
    let (code, _, err) = s.kiln(&[
        "rootfs",
        "add",
        "--to",
        d.to_str().unwrap(),
        "/usr/bin/printf",
    ]);
    assert_eq!(code, 0, "{err}");
    let start = Instant::now();
    let (code, out, err) = s.kiln(&[
        "run",
        "-q",
        "--accel",
        "kvm",
        "--timeout",
        "300",
        "-M",
        "64M",
        "--initrd",
        d.to_str().unwrap(),
        "apps/elfloader",
        "--",
        "/usr/bin/printf",
        "hi\n",
    ]);
    assert_eq!(code, 125, "{out}{err}");
    assert!(
        err.contains("emulation failure")
            && err.contains("qemu stopped the guest after an internal error")
            && err.contains("`kiln run -W` runs it under TCG"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(240),
        "ended by the timeout, not by noticing the error"
    );
}

/// `kiln stop` asks the guest to shut down (Ctrl-Alt-Del on x86_64, the
/// power button on arm64) and the app finishes: httpd its responses, the
/// broker sends wills and tells its clients, a Linux program gets SIGTERM
/// and its handler runs; an app with no hook just ends.
#[test]
fn kiln_stop_lets_the_app_finish() {
    let s = State::new("graceful");
    let port = support::free_port().to_string();
    // httpd, x86_64 and arm64.
    for (name, arch) in [("web", "x86_64"), ("web-arm", "arm64")] {
        let (code, _, err) = s.kiln(&[
            "run",
            "-d",
            "-W",
            "--arch",
            arch,
            "--name",
            name,
            "-p",
            &format!("{port}:80"),
            "apps/httpd",
        ]);
        assert_eq!(code, 0, "{err}");
        s.wait_for_log(name, "httpd: serving");
        let logs = s.stop_gracefully(name);
        assert!(
            logs.contains("kiln: stopping at the host's request")
                && logs.contains("httpd: stopping: ")
                && logs.contains("httpd: stopped"),
            "{logs}"
        );
        assert_eq!(s.kiln(&["rm", name]).0, 0);
    }

    // The broker: a client with a will is connected, another waits for it.
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-W",
        "--name",
        "broker",
        "-p",
        &format!("{port}:1883"),
        "apps/mqtt",
    ]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_log("broker", "mqtt: listening");
    let sub = |args: &[&str]| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut with_will = sub(&[
        "-i",
        "dying",
        "-t",
        "nothing",
        "--will-topic",
        "status/dying",
        "--will-payload",
        "gone",
    ]);
    let waiting = sub(&["-i", "waiting", "-t", "status/#", "-C", "1", "-W", "60"]);
    s.wait_for_log("broker", "waiting");
    let logs = s.stop_gracefully("broker");
    let got = waiting.wait_with_output().unwrap();
    let _ = with_will.kill();
    let _ = with_will.wait();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "gone",
        "the will reached the other client before the broker went: {logs}"
    );
    assert!(
        logs.contains("Shutting down at the host's request")
            && logs.contains("Publishing the will of dying")
            && logs.contains("mqtt: stopped"),
        "{logs}"
    );

    // A Linux program under the ELF loader: SIGTERM and its handler.
    let d = std::env::temp_dir().join(format!("kiln-graceful-{}", std::process::id()));
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::copy(
        support::linux_program_for("x86_64", "linux-term"),
        d.join("bin/term"),
    )
    .unwrap();
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-W",
        "--name",
        "term",
        "--initrd",
        d.to_str().unwrap(),
        "apps/elfloader",
        "--",
        "/bin/term",
    ]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_log("term", "term: waiting");
    let logs = s.stop_gracefully("term");
    assert!(
        logs.contains("term: got SIGTERM (poll interrupted), state saved"),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(&d);

    // Debian's redis saves its data on SIGTERM (its threads block signals
    // of their own; the main thread takes it).
    let r = std::env::temp_dir().join(format!("kiln-graceful-redis-{}", std::process::id()));
    std::fs::create_dir_all(r.join("data")).unwrap();
    let (code, _, err) = s.kiln(&[
        "rootfs",
        "add",
        "--to",
        r.to_str().unwrap(),
        "/usr/bin/redis-server",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-W",
        "-M",
        "256M",
        "--name",
        "redis",
        "-p",
        &format!("{port}:6379"),
        "--initrd",
        r.to_str().unwrap(),
        "apps/elfloader",
        "--",
        "/usr/bin/redis-server",
        "--save",
        "3600 1",
        "--dir",
        "/data",
        "--protected-mode",
        "no",
    ]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_log("redis", "Ready to accept connections");
    let set = Command::new("redis-cli")
        .args(["-p", &port, "set", "kept", "yes"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let logs = s.stop_gracefully("redis");
    assert!(
        logs.contains("Received SIGTERM")
            && logs.contains("DB saved on disk")
            && logs.contains("ready to exit"),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(&r);

    // Debian's nginx (apps/nginx) quits on SIGTERM, as from an init system.
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-W",
        "--name",
        "nginx",
        "-p",
        &format!("{port}:80"),
        "apps/nginx",
    ]);
    assert_eq!(code, 0, "{err}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().unwrap()));
    assert_eq!(
        support::first_status(addr, Duration::from_secs(120)).as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    s.stop_gracefully("nginx");

    // An app without a hook ends at once.
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-W",
        "--name",
        "plain",
        "-p",
        &format!("{port}:7/udp"),
        "apps/udpecho",
    ]);
    assert_eq!(code, 0, "{err}");
    s.wait_for_log("plain", "udpecho");
    let logs = s.stop_gracefully("plain");
    assert!(
        logs.contains("kiln: stopped at the host's request"),
        "{logs}"
    );

    // A guest that never looks (spinning) is stopped after the grace period.
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "-W",
        "--name",
        "spin",
        "apps/crashtest",
        "--",
        "hang",
    ]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(1));
    let (code, _, err) = s.kiln(&["stop", "spin"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("kiln: spin did not shut down within 5 s; stopped"),
        "{err}"
    );
    assert_eq!(s.state_of("spin"), "stopped");
}
