//! Soak tests: the web server and the MQTT broker under a bounded mixed
//! load (SOAK_SECONDS, default 20), on a bridge and through `kiln run -p`,
//! under TCG. Every response body is checked byte for byte against the
//! file served; every MQTT message is checked for loss, duplication, order
//! per publisher and payload. The guest must stay up, and its console must
//! hold no failed allocation or panic. Each run prints one `soak:` line of
//! totals and latencies (scripts/bench/soak collects them).

mod support;

use kiln_mqtt::codec::{self, Ack, Connect, Packet, Props, Publish, SubOpts, Subscribe};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{free_port, root, Bridge, Guest, Net};

fn soak_time() -> Duration {
    let s = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(s)
}

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `len` bytes determined by `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

/// Lines in a guest's console that mean something went wrong inside it.
fn console_problems(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            // The heap's summary line counts failed allocations.
            let failed = lower
                .split(", ")
                .any(|part| part.strip_suffix(" failed)").is_some_and(|n| n != "0"));
            failed
                || lower.contains("out of memory")
                || lower.contains("panic")
                || lower.contains("exception")
        })
        .collect()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------- HTTP

/// The files the soak site serves: sizes from empty to 1 MiB, contents
/// that differ at every byte.
const SIZES: [usize; 12] = [
    0,
    1,
    100,
    1459,
    1460,
    4096,
    16_383,
    65_536,
    100_001,
    262_144,
    500_000,
    1 << 20,
];

/// An app folder that builds apps/httpd with the soak site as its rootfs.
fn soak_site() -> (PathBuf, Vec<Vec<u8>>) {
    let dir = root().join("target/soak/httpd");
    let www = dir.join("rootfs/www");
    std::fs::create_dir_all(&www).unwrap();
    let files: Vec<Vec<u8>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(i as u64 + 7, n))
        .collect();
    for (i, f) in files.iter().enumerate() {
        let p = www.join(format!("f{i}.bin"));
        if std::fs::read(&p).ok().as_ref() != Some(f) {
            std::fs::write(&p, f).unwrap();
        }
    }
    std::fs::write(www.join("index.html"), b"soak\n").unwrap();
    let kraftfile = "spec: v0.6\nname: httpd-soak\napp: ../../../apps/httpd\ntargets:\n  - qemu/x86_64\nrootfs: ./rootfs\n";
    std::fs::write(dir.join("Kraftfile"), kraftfile).unwrap();
    (dir, files)
}

#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_checked: AtomicU64,
    resets: AtomicU64,
    errors: Mutex<Vec<String>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Totals {
    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap();
        if v.len() < 50 {
            v.push(e);
        }
    }
}

/// Reads one response to a GET of `want` from `s` (after `buf`'s bytes)
/// and checks it byte for byte; leftover bytes stay in `buf`.
fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: &[u8],
    slow: Option<&mut Rng>,
) -> Result<(), String> {
    let mut chunk = vec![0u8; 65536];
    let mut slow = slow;
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("reading the head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf[..buf.len().min(80)])
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!(
            "status line {:?}",
            head.lines().next().unwrap_or("")
        ));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(usize::MAX))
        })
        .ok_or("no Content-Length")?;
    if len != want.len() {
        return Err(format!("Content-Length {len}, file has {}", want.len()));
    }
    buf.drain(..head_end);
    while buf.len() < len {
        let room = match slow.as_deref_mut() {
            Some(r) => {
                std::thread::sleep(Duration::from_millis(2 + r.below(15)));
                1024 + r.below(3072) as usize
            }
            None => chunk.len(),
        };
        let n = s
            .read(&mut chunk[..room])
            .map_err(|e| format!("reading the body at {}/{len}: {e}", buf.len()))?;
        if n == 0 {
            return Err(format!("closed at {}/{len} body bytes", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if let Some(at) = buf[..len].iter().zip(want).position(|(a, b)| a != b) {
        return Err(format!("body differs from the file at byte {at} of {len}"));
    }
    buf.drain(..len);
    Ok(())
}

fn request(file: usize, pad: usize, close: bool) -> Vec<u8> {
    let mut r = format!("GET /f{file}.bin HTTP/1.1\r\nHost: soak\r\n");
    if pad > 0 {
        r.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad)));
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One client connection doing one of five things.
fn http_client(
    addr: SocketAddr,
    files: &[Vec<u8>],
    rng: &mut Rng,
    t: &Totals,
) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_nodelay(true).unwrap();
    t.connections.fetch_add(1, Ordering::Relaxed);
    let pick = |rng: &mut Rng| {
        // Mostly small files, some large.
        if rng.below(4) == 0 {
            rng.below(SIZES.len() as u64) as usize
        } else {
            rng.below(8) as usize
        }
    };
    let mut buf = Vec::new();
    match rng.below(10) {
        // Pipelined keep-alive requests, written in random pieces.
        0..=4 => {
            let k = 1 + rng.below(8) as usize;
            let wanted: Vec<usize> = (0..k).map(|_| pick(rng)).collect();
            let mut all = Vec::new();
            for (i, &f) in wanted.iter().enumerate() {
                all.extend(request(
                    f,
                    rng.below(3000) as usize,
                    i + 1 == k && rng.below(2) == 0,
                ));
            }
            let start = Instant::now();
            let mut at = 0;
            while at < all.len() {
                let n = (1 + rng.below(all.len() as u64) as usize).min(all.len() - at);
                s.write_all(&all[at..at + n])
                    .map_err(|e| format!("write: {e}"))?;
                at += n;
            }
            for &f in &wanted {
                read_response(&mut s, &mut buf, &files[f], None)?;
                t.requests.fetch_add(1, Ordering::Relaxed);
                t.bytes_checked
                    .fetch_add(files[f].len() as u64, Ordering::Relaxed);
            }
            t.latencies.lock().unwrap().push(start.elapsed() / k as u32);
        }
        // A slow writer: the request a few bytes at a time.
        5 | 6 => {
            let f = pick(rng);
            let req = request(f, rng.below(500) as usize, false);
            for piece in req.chunks(1 + rng.below(24) as usize) {
                s.write_all(piece).map_err(|e| format!("slow write: {e}"))?;
                std::thread::sleep(Duration::from_millis(1 + rng.below(25)));
            }
            read_response(&mut s, &mut buf, &files[f], None)?;
            t.requests.fetch_add(1, Ordering::Relaxed);
            t.bytes_checked
                .fetch_add(files[f].len() as u64, Ordering::Relaxed);
        }
        // A slow reader of a large file.
        7 => {
            let f = 6 + rng.below(4) as usize;
            s.write_all(&request(f, 0, false))
                .map_err(|e| format!("write: {e}"))?;
            read_response(&mut s, &mut buf, &files[f], Some(rng))?;
            t.requests.fetch_add(1, Ordering::Relaxed);
            t.bytes_checked
                .fetch_add(files[f].len() as u64, Ordering::Relaxed);
        }
        // A half-close after the request: one answer, then the end.
        8 => {
            let f = pick(rng);
            s.write_all(&request(f, rng.below(200) as usize, false))
                .map_err(|e| format!("write: {e}"))?;
            s.shutdown(Shutdown::Write).unwrap();
            read_response(&mut s, &mut buf, &files[f], None)?;
            t.requests.fetch_add(1, Ordering::Relaxed);
            t.bytes_checked
                .fetch_add(files[f].len() as u64, Ordering::Relaxed);
            let mut rest = Vec::new();
            match s.read_to_end(&mut rest) {
                Ok(_) if rest.is_empty() && buf.is_empty() => {}
                Ok(_) => {
                    return Err(format!(
                        "{} bytes after the answer to a half-closed request",
                        rest.len() + buf.len()
                    ))
                }
                Err(e) => return Err(format!("no end after a half-close: {e}")),
            }
        }
        // A reset: half a request, or in the middle of a large answer.
        _ => {
            if rng.below(2) == 0 {
                s.write_all(b"GET /f11.bin HT")
                    .map_err(|e| format!("write: {e}"))?;
            } else {
                s.write_all(&request(11, 0, false))
                    .map_err(|e| format!("write: {e}"))?;
                let mut some = [0u8; 5000];
                let _ = s.read(&mut some);
            }
            set_linger_zero(&s);
            t.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Makes dropping `s` send a RST instead of a FIN.
fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a properly sized linger.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    s.write_all(b"GET /index.html HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_end(&mut got).is_ok()
        && got.starts_with(b"HTTP/1.1 200")
}

fn http_soak(net: Net, clients: usize, label: &str) {
    let (dir, files) = soak_site();
    let guest = Guest::start(&dir, net, &["-M", "256M"], answers);
    let addr = guest.addr;
    let files = Arc::new(files);
    let totals = Arc::new(Totals::default());
    let until = Instant::now() + soak_time();
    let workers: Vec<_> = (0..clients)
        .map(|w| {
            let (files, totals) = (files.clone(), totals.clone());
            std::thread::spawn(move || {
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
                while Instant::now() < until {
                    if let Err(e) = http_client(addr, &files, &mut rng, &totals) {
                        totals.error(e);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let still = answers(addr);
    let console = guest.stop();
    let errors = totals.errors.lock().unwrap().clone();
    let mut lat = totals.latencies.lock().unwrap().clone();
    println!(
        "soak: http {label}: {} connections, {} requests, {} bytes checked, {} resets, {} errors, p50 {:?}, p99 {:?}",
        totals.connections.load(Ordering::Relaxed),
        totals.requests.load(Ordering::Relaxed),
        totals.bytes_checked.load(Ordering::Relaxed),
        totals.resets.load(Ordering::Relaxed),
        errors.len(),
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
    );
    assert!(
        errors.is_empty(),
        "{} client errors, first ones: {errors:#?}",
        errors.len()
    );
    assert!(
        totals.requests.load(Ordering::Relaxed) > 100,
        "too little traffic to mean anything"
    );
    assert!(still, "the server stopped answering after the soak");
    assert!(
        console_problems(&console).is_empty(),
        "console: {:?}",
        console_problems(&console)
    );
}

#[test]
fn web_server_soak_through_a_forwarded_port() {
    http_soak(
        Net::Forward {
            host: free_port(),
            guest: 80,
        },
        16,
        "-p",
    );
}

#[test]
fn web_server_soak_on_a_bridge() {
    http_soak(Net::Bridge(Bridge::create("ks", 80)), 32, "bridge");
}

// ---------------------------------------------------------------- MQTT

/// A blocking MQTT client on the codec the broker uses.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    v: u8,
}

impl Client {
    fn connect(addr: SocketAddr, id: &str) -> Result<Client, String> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
            .map_err(|e| format!("{id}: connect: {e}"))?;
        s.set_nodelay(true).unwrap();
        let mut c = Client {
            s,
            buf: Vec::new(),
            v: 4,
        };
        c.send(&Packet::Connect(Connect {
            version: 4,
            client_id: id.into(),
            clean: true,
            keep_alive: 120,
            username: None,
            password: None,
            will: None,
            props: Props::default(),
        }))?;
        match c.next(Duration::from_secs(30))? {
            Some(Packet::ConnAck(a)) if a.code == 0 => Ok(c),
            p => Err(format!("{id}: no CONNACK but {p:?}")),
        }
    }

    fn send(&mut self, p: &Packet) -> Result<(), String> {
        let mut out = Vec::new();
        codec::encode(p, self.v, &mut out);
        self.s.write_all(&out).map_err(|e| format!("send: {e}"))
    }

    /// The next packet, or None when none came within `wait`.
    fn next(&mut self, wait: Duration) -> Result<Option<Packet>, String> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some((first, body, used)) =
                codec::frame(&self.buf, usize::MAX).map_err(|e| format!("framing: {e}"))?
            {
                let p = codec::decode(first, body, self.v).map_err(|e| format!("decoding: {e}"))?;
                self.buf.drain(..used);
                return Ok(Some(p));
            }
            self.s.set_read_timeout(Some(wait)).unwrap();
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("the broker closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// Publisher `p`'s message `seq`: its QoS, and a payload that carries
/// (p, seq, send time in µs since `t0`) and then bytes determined by them.
fn message(p: u64, seq: u64, t0: Instant) -> (u8, Vec<u8>) {
    let mut r = Rng((p << 32 | seq).wrapping_mul(0x9e37_79b9) + 1);
    let qos = 1 + (seq % 2) as u8;
    let len = r.below(2000) as usize;
    let mut payload = Vec::with_capacity(24 + len);
    payload.extend_from_slice(&p.to_be_bytes());
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
    payload.extend(bytes(p << 32 | seq, len));
    (qos, payload)
}

/// Messages a second from each publisher.
const RATE: f64 = 400.0;

/// Publishes until `until` with up to 16 messages unacknowledged; returns
/// how many were sent (all acknowledged when it returns Ok).
fn publisher(addr: SocketAddr, p: u64, until: Instant, t0: Instant) -> Result<u64, String> {
    let mut c = Client::connect(addr, &format!("pub{p}"))?;
    let t_start = Instant::now();
    let mut seq = 0u64;
    let mut open: BTreeMap<u16, u64> = BTreeMap::new();
    loop {
        let sending = Instant::now() < until;
        if !sending && open.is_empty() {
            return Ok(seq);
        }
        // At most RATE messages a second: a soak, not a flood (the slow
        // subscriber must be able to keep up on average).
        let due = sending && (seq as f64) < t_start.elapsed().as_secs_f64() * RATE;
        if due && open.len() < 16 {
            let pid = (seq % 60000) as u16 + 1;
            let (qos, payload) = message(p, seq, t0);
            c.send(&Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: format!("soak/p{p}"),
                pid,
                payload,
                props: Props::default(),
            }))?;
            open.insert(pid, seq);
            seq += 1;
            continue;
        }
        let ack = |pid| Ack {
            pid,
            reason: 0,
            props: Props::default(),
        };
        let wait = if open.is_empty() {
            Duration::from_millis(2)
        } else {
            Duration::from_secs(30)
        };
        match c.next(wait)? {
            Some(Packet::PubAck(a)) | Some(Packet::PubComp(a)) => {
                open.remove(&a.pid).ok_or_else(|| {
                    format!("pub{p}: acknowledgement of unknown packet {}", a.pid)
                })?;
            }
            Some(Packet::PubRec(a)) => c.send(&Packet::PubRel(ack(a.pid)))?,
            Some(other) => return Err(format!("pub{p}: unexpected {other:?}")),
            None if open.is_empty() => {}
            None => {
                return Err(format!(
                    "pub{p}: no acknowledgement within 30 s ({} open, {seq} sent, at {:?})",
                    open.len(),
                    t0.elapsed()
                ))
            }
        }
    }
}

/// What a subscriber saw: next expected seq per publisher, latencies.
struct Seen {
    next: BTreeMap<u64, u64>,
    latencies: Vec<Duration>,
    bytes: u64,
}

/// Subscribes to soak/# at QoS 2 and checks every message until `stop`
/// holds and nothing came for 3 s.
fn subscriber(
    addr: SocketAddr,
    id: String,
    t0: Instant,
    stop: Arc<AtomicU64>,
    slow: bool,
) -> Result<Seen, String> {
    let mut c = Client::connect(addr, &id)?;
    c.send(&Packet::Subscribe(Subscribe {
        pid: 1,
        filters: vec![(
            "soak/#".into(),
            SubOpts {
                qos: 2,
                ..SubOpts::default()
            },
        )],
        props: Props::default(),
    }))?;
    let mut seen = Seen {
        next: BTreeMap::new(),
        latencies: Vec::new(),
        bytes: 0,
    };
    let mut n = 0u64;
    loop {
        let p = match c.next(Duration::from_secs(3))? {
            Some(p) => p,
            None if stop.load(Ordering::SeqCst) == 1 => return Ok(seen),
            None => continue,
        };
        let ack = |pid| Ack {
            pid,
            reason: 0,
            props: Props::default(),
        };
        match p {
            Packet::SubAck(a) => {
                if a.codes != [2] {
                    return Err(format!("{id}: SUBACK {:?}", a.codes));
                }
            }
            Packet::Publish(m) => {
                if m.payload.len() < 24 {
                    return Err(format!("{id}: payload of {} bytes", m.payload.len()));
                }
                let num = |at: usize| u64::from_be_bytes(m.payload[at..at + 8].try_into().unwrap());
                let (pp, seq, sent) = (num(0), num(8), num(16));
                let (qos, mut want) = message(pp, seq, t0);
                want[16..24].copy_from_slice(&sent.to_be_bytes());
                if m.payload != want || m.qos != qos || m.topic != format!("soak/p{pp}") {
                    return Err(format!(
                        "{id}: message {pp}/{seq} corrupted (qos {}, topic {})",
                        m.qos, m.topic
                    ));
                }
                let expect = seen.next.entry(pp).or_insert(seq);
                if seq != *expect {
                    return Err(format!("{id}: from pub{pp} got {seq}, expected {expect} (lost, duplicated or reordered)"));
                }
                *expect += 1;
                seen.bytes += m.payload.len() as u64;
                seen.latencies
                    .push(t0.elapsed().saturating_sub(Duration::from_micros(sent)));
                match m.qos {
                    1 => c.send(&Packet::PubAck(ack(m.pid)))?,
                    2 => c.send(&Packet::PubRec(ack(m.pid)))?,
                    _ => {}
                }
                n += 1;
                if slow && n % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
            Packet::PubRel(a) => c.send(&Packet::PubComp(ack(a.pid)))?,
            other => return Err(format!("{id}: unexpected {other:?}")),
        }
    }
}

/// Connects, subscribes and drops the socket, or sends garbage, again
/// and again: the broker must shrug it off.
fn nuisance(addr: SocketAddr, until: Instant) -> u64 {
    let mut rng = Rng(77);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        if rng.below(3) == 0 {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(&bytes(rng.next(), 1 + rng.below(300) as usize));
                set_linger_zero(&s);
            }
        } else if let Ok(mut c) = Client::connect(addr, &format!("nuisance{}", rng.below(4))) {
            let _ = c.send(&Packet::Subscribe(Subscribe {
                pid: 1,
                filters: vec![(
                    "soak/#".into(),
                    SubOpts {
                        qos: (rng.below(3)) as u8,
                        ..SubOpts::default()
                    },
                )],
                props: Props::default(),
            }));
            let _ = c.next(Duration::from_millis(rng.below(500)));
            if rng.below(2) == 0 {
                set_linger_zero(&c.s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

fn mqtt_connects(addr: SocketAddr) -> bool {
    Client::connect(addr, "probe").is_ok()
}

fn mqtt_soak(net: Net, label: &str) {
    let dir = Path::new("apps/mqtt");
    // Queues long enough that a slow subscriber loses nothing.
    let guest = Guest::start(
        dir,
        net,
        &[
            "-M",
            "256M",
            "-e",
            "MQTT_MAX_QUEUED_MESSAGES=100000",
            "-e",
            "MQTT_MAX_QUEUED_BYTES=33554432",
            "-e",
            "MQTT_MEMORY_LIMIT=67108864",
        ],
        mqtt_connects,
    );
    let addr = guest.addr;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicU64::new(0));
    let subs: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || subscriber(addr, format!("sub{i}"), t0, stop, i == 3))
        })
        .collect();
    // Subscriptions are in place before anything is published.
    std::thread::sleep(Duration::from_secs(3));
    let until = Instant::now() + soak_time();
    let pubs: Vec<_> = (0..4u64)
        .map(|p| std::thread::spawn(move || publisher(addr, p, until, t0)))
        .collect();
    let noise = std::thread::spawn(move || nuisance(addr, until));
    let sent: Vec<Result<u64, String>> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
    let nuisances = noise.join().unwrap();
    stop.store(1, Ordering::SeqCst);
    let seen: Vec<Result<Seen, String>> = subs.into_iter().map(|h| h.join().unwrap()).collect();
    let still = mqtt_connects(addr);
    let console = guest.stop();
    let mut errors: Vec<String> = sent
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    errors.extend(seen.iter().filter_map(|r| r.as_ref().err().cloned()));
    if !errors.is_empty() {
        for (i, s) in seen.iter().enumerate() {
            if let Ok(s) = s {
                errors.push(format!("sub{i} got {:?}", s.next));
            }
        }
        errors.push(format!("the broker accepts clients after it: {still}"));
        let log = root().join(format!("target/soak/mqtt-{label}.log"));
        std::fs::write(&log, &console).unwrap();
        panic!(
            "{errors:#?}\nconsole in {}; problems: {:?}",
            log.display(),
            console_problems(&console)
        );
    }
    let sent: Vec<u64> = sent.into_iter().map(Result::unwrap).collect();
    let seen: Vec<Seen> = seen.into_iter().map(Result::unwrap).collect();
    for (i, s) in seen.iter().enumerate() {
        for (p, &n) in sent.iter().enumerate() {
            let got = s.next.get(&(p as u64)).copied().unwrap_or(0);
            assert_eq!(got, n, "sub{i} got {got} of pub{p}'s {n} messages");
        }
    }
    // Latency as the prompt subscribers see it (the slow one's includes
    // its own backlog).
    let mut lat: Vec<Duration> = seen[..3]
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    let total: u64 = sent.iter().sum();
    println!(
        "soak: mqtt {label}: {total} messages published (QoS 1 and 2), {} deliveries checked, {} payload bytes, {nuisances} nuisance connections, 0 errors, p50 {:?}, p99 {:?}",
        seen.iter().map(|s| s.latencies.len()).sum::<usize>(),
        seen.iter().map(|s| s.bytes).sum::<u64>(),
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
    );
    assert!(total > 100, "too little traffic to mean anything");
    assert!(still, "the broker stopped accepting clients after the soak");
    assert!(
        console_problems(&console).is_empty(),
        "console: {:?}",
        console_problems(&console)
    );
}

#[test]
fn mqtt_broker_soak_through_a_forwarded_port() {
    mqtt_soak(
        Net::Forward {
            host: free_port(),
            guest: 1883,
        },
        "-p",
    );
}

#[test]
fn mqtt_broker_soak_on_a_bridge() {
    mqtt_soak(Net::Bridge(Bridge::create("km", 1883)), "bridge");
}
