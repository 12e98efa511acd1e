//! Bridged networking: kiln net create makes a bridge, a guest on it gets
//! an address of its own and serves HTTP there directly; kiln net rm
//! removes it. Without root the commands say so. Over a bridge (no QEMU
//! user network in between), the web server holds a thousand concurrent
//! connections.

mod support;
use support::{kiln, root};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Bridge tests pick free subnets; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_guest_on_a_bridge_serves_at_its_own_address() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("kt{}", std::process::id() % 100000);
    // A subnet no interface of this host uses yet.
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
    let subnet = format!("10.{third}.0.0/24");
    // The bridge goes away even if an assertion fails.
    let _cleanup = Cleanup(name.clone());
    let (code, out, err) = kiln(&["net", "create", &name, "--subnet", &subnet]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("bridge 10.{third}.0.1/24")), "{out}");
    let (_, list, _) = kiln(&["net", "ls"]);
    assert!(list.contains(&name), "{list}");
    let (code, _, err) = kiln(&["net", "create", &name]);
    assert_eq!(code, 1);
    assert!(err.contains("exists already"), "{err}");

    assert_eq!(kiln(&["build", "-q", "apps/httpd"]).0, 0);
    let mut guest = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-q",
            "--timeout",
            "120",
            "--network",
            &format!("bridge:{name}"),
            "apps/httpd",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://10.{third}.0.2/612.html");
    let start = Instant::now();
    let body = loop {
        let o = Command::new("curl")
            .args(["-s", "-m", "3", "--fail", &url])
            .output()
            .unwrap();
        if o.status.success() {
            break o.stdout;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the bridged guest never answered at {url}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        body,
        std::fs::read(root().join("apps/httpd/rootfs/www/612.html")).unwrap()
    );
    // ICMP echo: the stack answers pings.
    let ping = Command::new("ping")
        .args(["-c", "2", "-W", "5", &format!("10.{third}.0.2")])
        .output()
        .expect("ping is installed by scripts/setup");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // IPv6: the guest's link-local address, from its MAC 52:54:00:00:00:02.
    let v6 = format!("http://[fe80::5054:ff:fe00:2%25{name}]/612.html");
    let o = Command::new("curl")
        .args(["-g", "-s", "-m", "10", "--fail", &v6])
        .output()
        .unwrap();
    assert!(o.status.success(), "no answer over IPv6 at {v6}");
    assert_eq!(o.stdout, body);
    let _ = guest.kill();
    let _ = guest.wait();
    // QEMU's tap goes with it; then the bridge can go.
    let start = Instant::now();
    loop {
        let o = Command::new("ip")
            .args(["-o", "link", "show", "master", &name])
            .output()
            .unwrap();
        if o.stdout.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tap device left on the bridge"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = kiln(&["net", "rm", &name]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kiln(&["net", "rm", &name]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("no network named '{name}'")), "{err}");
    let (code, _, err) = kiln(&["run", "--network", &format!("bridge:{name}"), "apps/httpd"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "no network named '{name}' (create it with: kiln net create {name})"
        )),
        "{err}"
    );
}

#[test]
fn without_root_the_network_commands_say_so() {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["net", "create", "ktnoroot"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("need root"), "{err}");
}

/// Removes a test's bridge (and its line in QEMU's bridge.conf) even when
/// an assertion fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["net", "rm", &self.0])
            .output();
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Waits until `url` answers with a success status.
fn wait_for(url: &str, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let o = Command::new("curl")
            .args(["-s", "-m", "3", "--fail", url])
            .output()
            .unwrap();
        if o.status.success() {
            return o.stdout;
        }
        assert!(
            start.elapsed() < limit,
            "the bridged guest never answered at {url}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a client got: the status line's code, or how the socket ended.
fn exchange(addr: SocketAddr, request: &[u8]) -> (String, usize) {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(60)) {
        Ok(s) => s,
        Err(e) => return (format!("connect: {e}"), 0),
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    if let Err(e) = s.write_all(request) {
        return (format!("write: {:?}", e.kind()), 0);
    }
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) if got.is_empty() => ("closed".into(), 0),
        Ok(_) => {
            let text = String::from_utf8_lossy(&got);
            let code = text.split(' ').nth(1).unwrap_or("?").to_string();
            let body = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
            (code, body)
        }
        Err(e) if got.is_empty() => (format!("read: {:?}", e.kind()), 0),
        Err(_) => ("partial".into(), 0),
    }
}

#[test]
fn a_thousand_concurrent_connections_each_get_an_answer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("kc{}", std::process::id() % 100000);
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
    let _cleanup = Cleanup(name.clone());
    let (code, _, err) = kiln(&[
        "net",
        "create",
        &name,
        "--subnet",
        &format!("10.{third}.0.0/24"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(kiln(&["build", "-q", "apps/httpd"]).0, 0);
    // TCG, not KVM: this checks behaviour under load, and some hosts' KVM
    // (PVM) runs a non-PVM guest far slower than TCG does.
    let mut guest = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-q",
            "-W",
            "-M",
            "256M",
            "--timeout",
            "300",
            "--network",
            &format!("bridge:{name}"),
            "apps/httpd",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let page = std::fs::read(root().join("apps/httpd/rootfs/www/612.html")).unwrap();
    wait_for(
        &format!("http://10.{third}.0.2/612.html"),
        Duration::from_secs(60),
    );
    let addr: SocketAddr = format!("10.{third}.0.2:80").parse().unwrap();

    // 100 clients connect and say nothing; they hold their sockets.
    let silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(30)).unwrap())
        .collect();
    // 900 more at once: 850 fetch the page, 30 send garbage, 20 send 20 KiB of headers.
    let get = b"GET /612.html HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n".to_vec();
    let junk = b"BLAH\x01\x02 nonsense\r\n\r\n".to_vec();
    let mut huge = b"GET / HTTP/1.1\r\nHost: kiln\r\n".to_vec();
    for i in 0..400 {
        huge.extend_from_slice(format!("X-Filler-{i:03}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let barrier = Arc::new(Barrier::new(900));
    let clients: Vec<_> = (0..900)
        .map(|i| {
            let req = if i < 850 {
                get.clone()
            } else if i < 880 {
                junk.clone()
            } else {
                huge.clone()
            };
            let b = barrier.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    b.wait();
                    exchange(addr, &req)
                })
                .unwrap()
        })
        .collect();
    let results: Vec<(String, usize)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut summary = std::collections::BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        let kind = if i < 850 {
            "page"
        } else if i < 880 {
            "garbage"
        } else {
            "huge"
        };
        *summary.entry((kind, r.0.clone())).or_insert(0) += 1;
    }
    let pages_ok = results[..850]
        .iter()
        .filter(|r| r.0 == "200" && r.1 == page.len())
        .count();
    assert_eq!(
        pages_ok, 850,
        "every page request is answered in full: {summary:?}"
    );
    assert!(
        results[850..880]
            .iter()
            .all(|r| r.0 == "400" || r.0 == "closed"),
        "garbage gets 400: {summary:?}"
    );
    // The server answers 431 and closes while the client may still be
    // sending; the client then sees the close or a reset.
    assert!(
        results[880..].iter().all(|r| r.0 == "431"
            || r.0.starts_with("read:")
            || r.0.starts_with("write:")
            || r.0 == "closed"),
        "{summary:?}"
    );
    assert!(
        results[880..].iter().any(|r| r.0 == "431"),
        "huge headers get 431: {summary:?}"
    );
    // The silent ones are still connected, and the server still serves.
    for mut s in silent {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a silent client was dropped early"
        );
    }
    assert_eq!(
        wait_for(
            &format!("http://10.{third}.0.2/612.html"),
            Duration::from_secs(30)
        ),
        page
    );
    let _ = guest.kill();
    let _ = guest.wait();
}
