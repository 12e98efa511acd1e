//! apps/httpd in a booted kernel, over QEMU's user network: pages fetched
//! with curl and compared byte for byte with the rootfs, HTTP semantics,
//! and bad clients that must not stop the server.

mod support;
use support::root;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running httpd guest on a host port of its own. The guest polls its
/// network device without pause, taking a whole host CPU, so the tests
/// here run one guest at a time.
struct Guest {
    child: Child,
    port: u16,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Guest {
    fn start(port: u16) -> Guest {
        Guest::start_on(port, "microvm")
    }

    fn start_on(port: u16, machine: &str) -> Guest {
        Guest::start_with(port, machine, &[])
    }

    /// With more `kiln run` options (`-W`: TCG, which is faster than this
    /// host's PVM-based KVM for long runs).
    fn start_with(port: u16, machine: &str, extra: &[&str]) -> Guest {
        let lock = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let b = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args(["build", "-q", "apps/httpd"])
            .status()
            .unwrap();
        assert!(b.success());
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args(["run", "-q", "--timeout", "300", "--machine", machine])
            .args(extra)
            .args(["-p", &format!("{port}:80"), "apps/httpd"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let g = Guest {
            child,
            port,
            _one_at_a_time: lock,
        };
        // Ready when a request gets an answer.
        let start = Instant::now();
        while g.get("/").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "httpd did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        g
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// (status, body) through curl.
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let o = Command::new("curl")
            .args([
                "-s",
                "-m",
                "10",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &self.url(path),
            ])
            .output()
            .unwrap();
        let mut out = o.stdout;
        let nl = out.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&out[nl..])
            .trim()
            .parse()
            .unwrap_or(0);
        out.truncate(nl);
        (code, out)
    }

    /// A raw exchange: sends `req`, returns what came back until close or timeout.
    fn raw(&self, req: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_the_site_byte_for_byte_with_http_semantics() {
    let g = Guest::start(18181);
    let www = root().join("apps/httpd/rootfs/www");
    for (path, file) in [
        ("/", "index.html"),
        ("/index.html", "index.html"),
        ("/style.css", "style.css"),
        ("/game.js", "game.js"),
        ("/about.html", "about.html"),
        ("/kiln.svg", "kiln.svg"),
    ] {
        let (code, body) = g.get(path);
        assert_eq!(code, 200, "{path}");
        assert_eq!(
            body,
            std::fs::read(www.join(file)).unwrap(),
            "{path} differs from the rootfs"
        );
    }
    assert_eq!(g.get("/missing.html").0, 404);
    assert_eq!(g.get("/../../etc/passwd").0, 404);

    // Headers: content types, HEAD, 405, 304, keep-alive with pipelining.
    let r = g.raw(b"HEAD /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Content-Type: text/css"),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "Content-Length: {}\r\n",
            std::fs::metadata(www.join("style.css")).unwrap().len()
        )),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\n"), "HEAD must not send a body: {r}");
    let r =
        g.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
    assert!(
        r.starts_with("HTTP/1.1 405 Method Not Allowed") && r.contains("Allow: GET, HEAD"),
        "{r}"
    );
    let etag = r#"""#;
    let first = g.raw(b"GET /kiln.svg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let tag = first
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .unwrap()
        .to_string();
    assert!(tag.starts_with(etag));
    let r = g.raw(format!("GET /kiln.svg HTTP/1.1\r\nHost: x\r\nIf-None-Match: {tag}\r\nConnection: close\r\n\r\n").as_bytes());
    assert!(r.starts_with("HTTP/1.1 304 Not Modified"), "{r}");
    let r = g.raw(b"GET /kiln.svg HTTP/1.1\r\nHost: x\r\n\r\nGET /about.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(
        r.matches("HTTP/1.1 200 OK").count(),
        2,
        "pipelined requests on one connection: {r}"
    );

    // Bad requests get an answer and a closed connection.
    assert!(g
        .raw(b"GARBAGE\r\n\r\n")
        .starts_with("HTTP/1.1 400 Bad Request"));
    assert!(g.raw(b"GET / HTTP/9.9\r\n\r\n").starts_with("HTTP/1.1 505"));
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    assert!(g.raw(huge.as_bytes()).starts_with("HTTP/1.1 431"));
    // After all that, the server still serves.
    assert_eq!(g.get("/").0, 200);
}

/// Clients connected at once. (On hosts where the guest runs slowly, as
/// under PVM, a burst of SYNs all in the same instant overflows the device's
/// receive ring: QEMU's user network then retries the dropped SYNs with
/// exponential backoff, and connections wait a minute or more. The clients
/// here connect 20 ms apart.)
const CLIENTS: usize = 30;

#[test]
fn silent_clients_and_many_connections_do_not_stop_the_server() {
    let g = Guest::start(18182);
    // Clients that connect and send nothing.
    let silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", g.port)).unwrap())
        .collect();
    assert_eq!(
        g.get("/about.html").0,
        200,
        "a silent client blocked the server"
    );
    // Many clients at once, each fetching a page over keep-alive.
    let want = std::fs::read(root().join("apps/httpd/rootfs/www/game.js")).unwrap();
    let port = g.port;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let want = want.clone();
            // Connections open 20 ms apart: all of them are still in flight
            // together (a response takes seconds here), without one burst of
            // SYNs overflowing the guest's receive ring.
            std::thread::sleep(Duration::from_millis(20));
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(150))).unwrap();
                s.write_all(b"GET /game.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = Vec::new();
                let t = Instant::now();
                let r = s.read_to_end(&mut out);
                let body = out
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| &out[i + 4..])
                    .unwrap_or(&[]);
                if r.is_err() || body != &want[..] {
                    eprintln!(
                        "client: {r:?} after {:?}, {} bytes: {:?}",
                        t.elapsed(),
                        out.len(),
                        String::from_utf8_lossy(&out[..out.len().min(200)])
                    );
                }
                body == &want[..]
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count();
    assert_eq!(
        ok, CLIENTS,
        "only {ok} of {CLIENTS} concurrent clients got the page"
    );
    drop(silent);
    assert_eq!(g.get("/").0, 200);
}

#[test]
fn the_site_renders_in_a_headless_browser() {
    let g = Guest::start(18183);
    let dom = support::chromium_dom(&g.url("/"), &[]);
    // game.js ran, the stylesheet applied, the logo loaded, and the game
    // drew its status line.
    assert!(dom.contains(r#"data-ready="yes""#), "{dom}");
    assert!(
        dom.contains(r#"data-background="rgb(29, 20, 16)""#),
        "style.css did not apply:\n{dom}"
    );
    let logo: u32 = dom
        .split(r#"data-logo=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(logo > 0, "kiln.svg did not load (naturalWidth 0):\n{dom}");
    assert!(dom.contains("Score: 0 · Lives: 3"), "{dom}");
    let shot = std::env::temp_dir().join(format!("kiln-httpd-{}.png", std::process::id()));
    let o = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
            "--window-size=800,700",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(g.url("/"))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        800,
        "screenshot width"
    );
    let _ = std::fs::remove_file(&shot);
}

#[test]
fn q35_serves_through_virtio_pci() {
    // On q35 the network card is a virtio PCI device (microvm's are virtio-mmio).
    let g = Guest::start_on(18184, "q35");
    let (code, body) = g.get("/about.html");
    assert_eq!(code, 200);
    assert_eq!(
        body,
        std::fs::read(root().join("apps/httpd/rootfs/www/about.html")).unwrap()
    );
}

/// Requests as clients other than browsers send them: one followed by a
/// half-close (`nc -N`, HTTP/1.0 scripts) is answered before the server
/// closes; lines ending in a bare LF are taken as nginx takes them; a
/// first line that cannot be a request is answered 400 at once rather
/// than at the idle timeout (30 s; the exchange waits at most 10 s).
#[test]
fn half_closes_bare_line_feeds_and_garbage_are_answered() {
    let g = Guest::start(18184);
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /about.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(
        r.is_ok() && out.starts_with("HTTP/1.1 200 OK\r\n"),
        "after a half-close: {r:?} {out:?}"
    );
    let want = std::fs::read_to_string(root().join("apps/httpd/rootfs/www/about.html")).unwrap();
    assert!(out.ends_with(&want), "{out}");
    let lf = g.raw(
        b"GET /about.html HTTP/1.1\nHost: x\n\nGET / HTTP/1.1\nHost: x\nConnection: close\n\n",
    );
    assert_eq!(
        lf.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "bare LF: {lf}"
    );
    for garbage in [
        vec![b'x'; 4096],
        (0..4096u32).map(|i| (i * 7 % 251) as u8).collect(),
    ] {
        let out = g.raw(&garbage);
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "garbage: {out:?}"
        );
    }
    // A request cut short by the client's end gets no answer, and the
    // server goes on.
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HT").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(r.is_ok() && out.is_empty(), "a cut request: {r:?} {out:?}");
    assert_eq!(g.get("/").0, 200);
}

/// 100 clients send one request a byte at a time, all in lock step, while
/// another fetches pages: every one gets the same 200 and the whole page. (A loaded guest
/// used to send a spurious second SYN-ACK, which made QEMU's user network
/// drop bytes of that connection: answers came back 400 and 405.)
#[test]
fn slow_clients_in_lock_step_all_get_their_answer() {
    let g = Guest::start(18185);
    let req = b"GET /about.html HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaa\r\n\r\n";
    let mut conns: Vec<TcpStream> = (0..100)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let port = g.port;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let other = std::thread::spawn(move || {
        let mut ok = 0;
        while !d.load(std::sync::atomic::Ordering::Relaxed) {
            let o = Command::new("curl")
                .args([
                    "-s",
                    "-m",
                    "30",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://127.0.0.1:{port}/"),
                ])
                .output()
                .unwrap();
            ok += (o.stdout == b"200") as usize;
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    for i in 0..req.len() {
        for s in &mut conns {
            s.write_all(&req[i..i + 1]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(if i < 24 { 500 } else { 20 }));
    }
    let want = std::fs::read(root().join("apps/httpd/rootfs/www/about.html")).unwrap();
    let mut answers = std::collections::BTreeMap::new();
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // One response: the head, then Content-Length bytes.
        while !out.windows(4).any(|w| w == b"\r\n\r\n") || out.len() < want.len() {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let status = String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned();
        let whole = out.ends_with(&want);
        *answers.entry((status, whole)).or_insert(0) += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let ok = other.join().unwrap();
    assert_eq!(
        answers.get(&("HTTP/1.1 200".to_string(), true)),
        Some(&100),
        "{answers:?}"
    );
    assert!(ok > 0, "the other client got no page meanwhile");
}

/// 300 clients connect through `-p` at once and make 20 keep-alive
/// requests each: all are served. (QEMU's own forward listens with a
/// backlog of one, and clients it had not taken saw an open connection and
/// silence for up to minutes; `kiln run` now listens itself.)
#[test]
fn three_hundred_keep_alive_clients_through_a_forwarded_port() {
    let g = Guest::start_with(18186, "microvm", &["-W"]);
    let want = std::fs::read(root().join("apps/httpd/rootfs/www/about.html")).unwrap();
    let port = g.port;
    let start = Instant::now();
    let clients: Vec<_> = (0..300)
        .map(|_| {
            let want = want.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut buf = vec![0u8; 65536];
                for _ in 0..20 {
                    s.write_all(b"GET /about.html HTTP/1.1\r\nHost: x\r\n\r\n")
                        .map_err(|e| e.to_string())?;
                    let mut got = Vec::new();
                    // The head, then Content-Length bytes.
                    let body_at = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut buf) {
                            Ok(0) => return Err("closed".into()),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => return Err(e.to_string()),
                        }
                    };
                    while got.len() < body_at + want.len() {
                        match s.read(&mut buf) {
                            Ok(0) => return Err("closed in the body".into()),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    if !got.starts_with(b"HTTP/1.1 200 OK\r\n") || got[body_at..] != want[..] {
                        return Err(String::from_utf8_lossy(&got[..got.len().min(80)]).into_owned());
                    }
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 300 failed after {:?}: {:?}",
        errors.len(),
        start.elapsed(),
        &errors[..errors.len().min(5)]
    );
}
