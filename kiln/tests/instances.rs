//! Detached instances: kiln run -d, ps, logs, stop, rm, with a state folder
//! of the test's own (KILN_STATE_DIR).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct State(PathBuf);

impl State {
    fn new(tag: &str) -> State {
        let d = std::env::temp_dir().join(format!("kiln-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        State(d)
    }

    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let o: Output = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .env("KILN_STATE_DIR", &self.0)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn state_of(&self, name: &str) -> String {
        let (_, out, _) = self.kiln(&["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    fn wait_for(&self, name: &str, state: &str) {
        let start = Instant::now();
        while self.state_of(name) != state {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} never reached '{state}' (now '{}')",
                self.state_of(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Stop anything left running.
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten() {
                let _ = self.kiln(&["rm", "-f", &e.file_name().to_string_lossy()]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
    assert!(err.contains("-M 1K: this image needs at least ") && err.contains("MiB"), "{err}");
    let need: String = err.split("at least ").nth(1).unwrap().chars().take_while(|c| c.is_ascii_digit()).collect();
    let (code, out, err) = s.kiln(&["run", "-q", "-M", &format!("{need}M"), "apps/helloworld"]);
    assert_eq!(code, 0, "the minimum it names boots: {out}{err}");
    // A bad instance name, before any build.
    let (code, out, err) = s.kiln(&["run", "-d", "--name", "../evil", "apps/helloworld"]);
    assert_eq!(code, 1);
    assert!(err.contains("instance name '../evil'") && !out.contains("[1/4]") && !err.contains("[1/4]"), "{out}{err}");
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
        assert!(err.contains(&format!("host port {port} (tcp) is in use by another program")), "{err}");
    }
    drop(taken);
    // One a Kiln instance holds: named.
    let fwd = format!("{port}:80");
    assert_eq!(s.kiln(&["run", "-d", "--name", "web", "-p", &fwd, "apps/httpd"]).0, 0);
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
        let o = Command::new("pgrep").args(["-P", &run.id().to_string(), "qemu-system"]).output().unwrap();
        if let Some(p) = String::from_utf8_lossy(&o.stdout).split_whitespace().next() {
            break p.parse::<i32>().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "QEMU never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on the QEMU this test started.
    unsafe { libc::kill(qemu, libc::SIGTERM) };
    let status = run.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("the guest was stopped by SIGTERM from outside") && !err.contains("triple fault"), "{err}");
}
