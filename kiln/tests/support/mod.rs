//! What the boot tests share: the repository root, running `kiln`, free
//! host ports, bridges that go away after the test, and guests started
//! with `kiln run` that are stopped (and their console returned) at the
//! end. Each test file includes it with `mod support;`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `kiln ARGS` in the repository root: (exit code, stdout, stderr).
pub fn kiln(args: &[&str]) -> (i32, String, String) {
    kiln_in(args, None)
}

/// Runs `kiln ARGS` with KILN_STATE_DIR set to `state` when given.
fn kiln_in(args: &[&str], state: Option<&Path>) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root()).args(args);
    if let Some(d) = state {
        c.env("KILN_STATE_DIR", d);
    }
    let o: Output = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A host TCP port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// kiln/tests/linux/hello, where the Linux test programs' sources are.
pub fn test_programs() -> PathBuf {
    root().join("kiln/tests/linux/hello")
}

/// Builds of the test programs run one at a time: two cargo processes
/// creating `target/` and a new `--target-dir` under it at once race (one
/// saw its fresh directory's parent missing).
static BUILDING: Mutex<()> = Mutex::new(());

/// Runs cargo with `args` on the Linux test programs; fails the test if
/// the build fails.
pub fn cargo_in_test_programs(args: &[&str]) {
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let o = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(test_programs())
        .env_remove("RUSTFLAGS")
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building the Linux test programs ({args:?}): {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A test program built for `arch` Linux with musl: static-pie on
/// x86_64; on arm64 a static executable at a fixed address (0x200000),
/// linked by rust-lld, so no cross C toolchain is needed.
pub fn linux_program_for(arch: &str, name: &str) -> PathBuf {
    let target = format!("{arch}-unknown-linux-musl");
    cargo_in_test_programs(&["build", "-q", "--release", "--target", &target]);
    test_programs()
        .join("target")
        .join(target)
        .join("release")
        .join(name)
}

/// Guests run one at a time within a test binary: a guest under TCG
/// takes a whole host CPU, and these machines have two.
static ONE: Mutex<()> = Mutex::new(());

/// Where a guest is reached.
pub enum Net {
    /// `-p HOST:GUEST` on QEMU's user network; the guest is 127.0.0.1:HOST.
    Forward { host: u16, guest: u16 },
    /// On a bridge made for the test; the guest is at its own address.
    Bridge(Bridge),
}

/// A guest booted with `kiln run` (under TCG: this checks behaviour, and
/// some hosts' KVM runs a non-PVM guest far slower than TCG does).
pub struct Guest {
    child: Option<Child>,
    /// What the guest printed so far (stdout, stderr), read as it comes: a
    /// console pipe nobody reads fills up, and then the guest waits on its
    /// serial port forever.
    console: Option<(
        std::thread::JoinHandle<Vec<u8>>,
        std::thread::JoinHandle<Vec<u8>>,
    )>,
    /// Address and port clients use for the guest port asked for.
    pub addr: std::net::SocketAddr,
    net: Net,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Guest {
    /// Builds and boots the app in `dir` (relative to the repository root
    /// or absolute) with `extra` `kiln run` options, reached through `net`
    /// on guest port `port`; returns once `ready(addr)` holds (within 90 s).
    pub fn start(
        dir: &Path,
        net: Net,
        extra: &[&str],
        ready: impl Fn(std::net::SocketAddr) -> bool,
    ) -> Guest {
        Guest::start_with_args(dir, net, extra, &[], ready)
    }

    /// [`Guest::start`], with `args` for the app (after `--`).
    pub fn start_with_args(
        dir: &Path,
        net: Net,
        extra: &[&str],
        args: &[&str],
        ready: impl Fn(std::net::SocketAddr) -> bool,
    ) -> Guest {
        let lock = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = root().join(dir);
        let dir_s = dir.to_str().unwrap();
        let (code, _, err) = kiln(&["build", "-q", dir_s]);
        assert_eq!(code, 0, "kiln build {dir_s}: {err}");
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.current_dir(root())
            .args(["run", "-W", "--timeout", "600"])
            .args(extra);
        let addr = match &net {
            Net::Forward { host, guest } => {
                c.args(["-p", &format!("{host}:{guest}")]);
                format!("127.0.0.1:{host}").parse().unwrap()
            }
            Net::Bridge(b) => {
                c.args(["--network", &format!("bridge:{}", b.name)]);
                b.guest
            }
        };
        c.arg(dir_s);
        if !args.is_empty() {
            c.arg("--").args(args);
        }
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let console = Some((
            drain(Box::new(child.stdout.take().unwrap())),
            drain(Box::new(child.stderr.take().unwrap())),
        ));
        let g = Guest {
            child: Some(child),
            console,
            addr,
            net,
            _one_at_a_time: lock,
        };
        let start = Instant::now();
        while !ready(g.addr) {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{dir_s} never became ready at {}",
                g.addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        g
    }

    /// Stops the guest; returns its console output (stdout, then stderr).
    pub fn stop(mut self) -> String {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        let (out, err) = self.console.take().unwrap();
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A bridge made with `kiln net create` on a free 10.x.0.0/24 and removed
/// (with its line in QEMU's bridge.conf) when dropped, even after a
/// failed assertion. The guest gets 10.x.0.2.
pub struct Bridge {
    pub name: String,
    pub guest_ip: String,
    guest: std::net::SocketAddr,
}

impl Bridge {
    /// A bridge whose guest serves on `port`.
    pub fn create(prefix: &str, port: u16) -> Bridge {
        let name = format!("{prefix}{}", std::process::id() % 100000);
        let addrs = String::from_utf8(
            Command::new("ip")
                .args(["-o", "-4", "addr"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let third = (100..250)
            .find(|t| !addrs.contains(&format!(" 10.{t}.")))
            .expect("a free 10.x.0.0/24");
        let b = Bridge {
            name: name.clone(),
            guest_ip: format!("10.{third}.0.2"),
            guest: format!("10.{third}.0.2:{port}").parse().unwrap(),
        };
        let (code, _, err) = kiln(&[
            "net",
            "create",
            &name,
            "--subnet",
            &format!("10.{third}.0.0/24"),
        ]);
        assert_eq!(code, 0, "kiln net create: {err}");
        b
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["net", "rm", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A Kiln state folder of the test's own (KILN_STATE_DIR): instances and
/// volumes; everything in it is stopped and removed when it goes.
pub struct State(pub PathBuf);

impl State {
    pub fn new(tag: &str) -> State {
        let d = std::env::temp_dir().join(format!("kiln-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        State(d)
    }

    pub fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        kiln_in(args, Some(&self.0))
    }

    pub fn state_of(&self, name: &str) -> String {
        let (_, out, _) = self.kiln(&["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn wait_for(&self, name: &str, state: &str) {
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

impl State {
    /// Waits until the instance's console shows `text`.
    pub fn wait_for_log(&self, name: &str, text: &str) -> String {
        let start = Instant::now();
        loop {
            let (_, logs, _) = self.kiln(&["logs", name]);
            if logs.contains(text) {
                return logs;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{name} never printed {text:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kiln stop NAME`: the guest must shut down by itself (not be
    /// killed after the grace period); returns its console.
    pub fn stop_gracefully(&self, name: &str) -> String {
        let t = Instant::now();
        let (code, _, err) = self.kiln(&["stop", name]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(&format!("kiln: {name} shut down")),
            "{name} did not shut down by itself: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stopping {name} took {:?}",
            t.elapsed()
        );
        assert_eq!(self.state_of(name), "stopped");
        self.kiln(&["logs", name]).1
    }
}

/// Whether the VMM `name` (firecracker, cloud-hypervisor) can run here:
/// its program in PATH and KVM usable; Err says why not, for the test's
/// "skipped" line. QEMU is always there (scripts/test installs it).
pub fn vmm_available(name: &str) -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join(name).is_file()) {
        return Err(format!("{name} is not in PATH (README: \"Firecracker and cloud-hypervisor\" says how to build it)"));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    Ok(())
}

/// The VMMs besides QEMU that this host can run, each test saying which
/// it skipped and why.
pub fn other_vmms(test: &str) -> Vec<&'static str> {
    ["firecracker", "cloud-hypervisor"]
        .into_iter()
        .filter(|v| match vmm_available(v) {
            Ok(()) => true,
            Err(why) => {
                eprintln!("SKIPPED {test} on {v}: {why}");
                false
            }
        })
        .collect()
}

/// Reads `r` to its end on a thread: the text it gave (a console pipe
/// nobody reads fills up and stops the guest).
pub fn read_in_background(
    mut r: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// GET / at `addr` until something answers (at most `within`): the
/// status line, or None.
pub fn first_status(addr: std::net::SocketAddr, within: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if !r.is_empty() {
                return Some(r.lines().next().unwrap_or("").to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Headless Chromium's DOM of `url` after 5 s of virtual time, with
/// `flags` added.
pub fn chromium_dom(url: &str, flags: &[&str]) -> String {
    chromium_dom_in(url, flags, None)
}

/// Headless Chromium's DOM of `url`, with `home` as its home folder when
/// given (where it finds its NSS database).
fn chromium_dom_in(url: &str, flags: &[&str], home: Option<&Path>) -> String {
    let mut c = Command::new("chromium");
    c.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=5000",
    ])
    .args(flags)
    .args(["--dump-dom", url])
    .stderr(Stdio::null());
    if let Some(h) = home {
        c.env("HOME", h);
    }
    let o = c.output().expect("chromium is installed by scripts/setup");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// [`chromium_dom`] with the CA certificate `ca` (PEM) as a trust anchor:
/// Chromium reads it from an NSS database in a home folder of its own
/// (made with certutil, libnss3-tools).
pub fn chromium_dom_trusting(url: &str, flags: &[&str], ca: &Path) -> String {
    let home = std::env::temp_dir().join(format!(
        "kiln-chromium-{}-{}",
        std::process::id(),
        free_port()
    ));
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    for args in [
        vec!["-d", &db_arg, "-N", "--empty-password"],
        vec![
            "-d",
            &db_arg,
            "-A",
            "-t",
            "C,,",
            "-n",
            "kiln-test-ca",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let o = Command::new("certutil")
            .args(&args)
            .output()
            .expect("certutil (libnss3-tools) is installed by scripts/test");
        assert!(
            o.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let dom = chromium_dom_in(url, flags, Some(&home));
    let _ = std::fs::remove_dir_all(&home);
    dom
}

/// `N` different host TCP ports nothing listens on now (each held until
/// all are chosen, so none is handed out twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}
