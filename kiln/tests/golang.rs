//! Go programs under the ELF loader: Debian's Go (`golang-go`, built here
//! offline with `CGO_ENABLED=0`) gives static binaries whose goroutines
//! start on 8 KiB stacks and whose runtime reserves large address ranges,
//! preempts itself with signals and runs its own timers. A net/http server
//! and a raw TCP echo server take 50 concurrent clients; 100 goroutines
//! meet on a channel; Eclipse Paho's Go client (Debian's
//! golang-github-eclipse-paho.mqtt.golang-dev) publishes and subscribes at
//! every QoS through apps/mqtt.

mod support;
use support::{free_port, root};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Guests run one at a time (TCG on two cores).
fn one_guest() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds `kiln/tests/go/<name>` with Debian's Go, offline (GOPATH mode,
/// Debian's Go sources under /usr/share/gocode); returns a rootfs folder
/// holding it as /bin/<name>.
fn go_rootfs(name: &str) -> PathBuf {
    go_rootfs_for("amd64", name)
}

/// As [`go_rootfs`], for Go's architecture `goarch` (amd64, arm64).
fn go_rootfs_for(goarch: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-go-{goarch}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    let out = d.join("bin").join(name);
    let o = Command::new("go")
        .args(["build", "-o", out.to_str().unwrap(), "."])
        .current_dir(root().join("kiln/tests/go").join(name))
        .env("CGO_ENABLED", "0")
        .env("GOARCH", goarch)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", root().join("target/gocache"))
        .output()
        .expect("go (Debian's golang-go; scripts/test installs it)");
    assert!(
        o.status.success(),
        "building {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    d
}

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root()).stdin(Stdio::null());
    c
}

fn build(app: &str) {
    assert!(kiln()
        .args(["build", "-q", app])
        .status()
        .unwrap()
        .success());
}

/// `kiln run` of the ELF loader (TCG) with `rootfs`, `-M mem` and
/// `extra` options, running `args`; output piped.
fn start(rootfs: &Path, mem: &str, extra: &[&str], args: &[&str]) -> Child {
    build("apps/elfloader");
    kiln()
        .args([
            "run",
            "-W",
            "--timeout",
            "280",
            "-M",
            mem,
            "--initrd",
            rootfs.to_str().unwrap(),
        ])
        .args(extra)
        .args(["apps/elfloader", "--"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most `secs`) for a guest to end: its exit code and output.
fn finish(mut c: Child, secs: u64) -> (i32, String) {
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Waits until the guest answers on `port`: a connection that stays open
/// and echoes (echo), answers HTTP (http) or answers an MQTT CONNECT
/// (mqtt). QEMU's user network accepts on the host port before anything
/// listens in the guest, then resets, so a bare connect proves nothing.
fn wait_for_port(port: u16, guest: &mut Child) {
    let answers = || -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        // An MQTT 3.1.1 CONNECT; the echo server sends it back, the HTTP
        // server answers 400, the broker a CONNACK: any reply will do.
        let connect = [
            0x10, 0x0f, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 3, b'p', b'r', b'b',
        ];
        let mut probe = connect.to_vec();
        probe.extend_from_slice(b"\n");
        if s.write_all(&probe).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(std::io::Read::read(&mut s, &mut b), Ok(1))
    };
    let t = Instant::now();
    while !answers() {
        assert!(
            guest.try_wait().unwrap().is_none(),
            "the guest ended before listening"
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "nothing listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A minimal HTTP/1.1 GET on a fresh connection: the status and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `n` GETs of `path` on one keep-alive connection: each status and body.
fn keep_alive(port: u16, path: &str, n: usize) -> Vec<(u16, String)> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    (0..n)
        .map(|_| {
            // One write, as curl and browsers send a request.
            w.write_all(format!("GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n").as_bytes())
                .unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let status = line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            std::io::Read::read_exact(&mut r, &mut body).unwrap();
            (status, String::from_utf8(body).unwrap())
        })
        .collect()
}

#[test]
fn a_go_net_http_server_serves_50_clients_at_once() {
    let _one = one_guest();
    let d = go_rootfs("goserver");
    let port = free_port();
    let mut g = start(
        &d,
        "1G",
        &["-p", &format!("{port}:80")],
        &["/bin/goserver", "http", "80"],
    );
    wait_for_port(port, &mut g);
    // 50 clients at once, each 6 requests on one keep-alive connection
    // (`kiln run -p` takes them all at once and hands them to QEMU in turn).
    let clients: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || keep_alive(port, "/hello", 6)))
        .collect();
    let mut ok = 0;
    for c in clients {
        for (status, body) in c.join().unwrap() {
            assert_eq!(status, 200, "{body}");
            assert!(
                body.starts_with("hello from Go on Kiln, request "),
                "{body}"
            );
            ok += 1;
        }
    }
    assert_eq!(ok, 300);
    let (status, big) = get(port, "/big");
    assert_eq!((status, big.len()), (200, 200 * 1024));
    assert!(big.starts_with("0123456789abcdef0123"));
    let (status, body) = get(port, "/quit");
    assert_eq!(status, 200);
    assert_eq!(body, "bye after 300\n", "every request counted once");
    let (code, out) = finish(g, 60);
    assert_eq!(code, 7, "the program's exit status: {out}");
    assert!(!out.contains("CPU exception"), "{out}");
}

#[test]
fn a_go_echo_server_keeps_50_connections_talking() {
    let _one = one_guest();
    let d = go_rootfs("goserver");
    let port = free_port();
    let mut g = start(
        &d,
        "1G",
        &["-p", &format!("{port}:7")],
        &["/bin/goserver", "echo", "7"],
    );
    wait_for_port(port, &mut g);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(20));
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for n in 0..20 {
                    let line = format!("client {i} line {n} {}\n", "x".repeat(n * 37));
                    w.write_all(line.as_bytes()).unwrap();
                    let mut back = String::new();
                    r.read_line(&mut back).unwrap();
                    assert_eq!(back, line, "client {i}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let mut q = TcpStream::connect(("127.0.0.1", port)).unwrap();
    q.write_all(b"quit\n").unwrap();
    let (code, out) = finish(g, 60);
    assert_eq!(code, 8, "the program's exit status: {out}");
}

/// Runs goserver built for `goarch` (amd64, arm64) with `args` in a
/// guest of `mem`: it must print `want` and exit 0 within `secs`. Its
/// output.
fn goserver_prints(goarch: &str, mem: &str, args: &[&str], secs: u64, want: &str) -> String {
    let _one = one_guest();
    let d = go_rootfs_for(goarch, "goserver");
    let extra: &[&str] = if goarch == "arm64" {
        &["--arch", "arm64"]
    } else {
        &[]
    };
    let argv: Vec<&str> = ["/bin/goserver"].iter().chain(args).copied().collect();
    let (code, out) = finish(start(&d, mem, extra, &argv), secs);
    assert!(out.contains(want), "{want:?}: {out}");
    assert_eq!(code, 0, "{out}");
    out
}

const HUNDRED: &str = "goserver: 100 goroutines done, sum 51450\n";
const SPUN: &str =
    "goserver: main ran and collected garbage while a goroutine spun (GOMAXPROCS 1)\n";

#[test]
fn a_hundred_goroutines_meet_on_a_channel() {
    goserver_prints("amd64", "1G", &["spawn", "100"], 240, HUNDRED);
}

/// A goroutine that loops forever without a function call, on the one P
/// Go has: main (sleeping, then forcing a collection, which stops the
/// world) runs only if the kernel preempts the looping thread and Go's
/// sysmon can stop the goroutine with SIGURG (asynchronous preemption).
#[test]
fn a_goroutine_that_never_yields_is_preempted() {
    goserver_prints("amd64", "256M", &["spin", "1"], 120, SPUN);
}

/// The same on arm64: the virtual timer preempts the thread through the
/// GIC, and Go's SIGURG handler (installed without a restorer, as Go does
/// on arm64) returns through the kernel's rt_sigreturn trampoline.
#[test]
fn a_goroutine_that_never_yields_is_preempted_on_arm64() {
    goserver_prints("arm64", "64M", &["spin", "1"], 120, SPUN);
}

/// The same program built for arm64 (Go cross-compiles without a C
/// toolchain) on QEMU virt, in 64 MiB: arm64 programs' memory is
/// demand-paged too, so Go's 512 MiB reservation costs nothing (it needed
/// a 2 GiB guest when arm64 programs got heap blocks).
#[test]
fn a_hundred_goroutines_meet_on_arm64() {
    let out = goserver_prints("arm64", "64M", &["spawn", "100"], 240, HUNDRED);
    assert!(out.contains("elfloader on qemu/arm64 virt"), "{out}");
}

#[test]
fn a_go_mqtt_client_publishes_and_subscribes_at_every_qos() {
    let _one = one_guest();
    let d = go_rootfs("gomqtt");
    build("apps/mqtt");
    let port = free_port();
    let mut broker = kiln()
        .args([
            "run",
            "-W",
            "--timeout",
            "280",
            "-p",
            &format!("{port}:1883"),
            "apps/mqtt",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut broker);
    // The client guest reaches the host (and the broker's forwarded port)
    // at 10.0.2.2 through QEMU's user network.
    let (code, out) = finish(
        start(
            &d,
            "1G",
            &[],
            &["/bin/gomqtt", &format!("tcp://10.0.2.2:{port}")],
        ),
        240,
    );
    let _ = broker.kill();
    let _ = broker.wait();
    for q in 0..3 {
        assert!(
            out.contains(&format!(
                "gomqtt: got kiln/go/q{q} qos{q} payload at qos {q}\n"
            )),
            "{out}"
        );
    }
    assert!(out.contains("gomqtt: done"), "{out}");
    assert_eq!(code, 0, "{out}");
}
