//! MQTT load for scripts/bench/mqtt, against any broker (Kiln's, mosquitto
//! on the host or in a Linux guest), with lib/mqtt's codec over std::net.
//!
//! mqttload fanin  PORT PUBLISHERS MESSAGES QOS   one subscriber, many publishers
//! mqttload fanout PORT SUBSCRIBERS MESSAGES QOS  one publisher, many subscribers
//! mqttload conns  PORT MAX                       clients held at once
//! mqttload retain PORT N                         N retained messages (QoS 1)
//!
//! Prints `key=value` lines: msgs_per_s, p50_us, p99_us, delivered, sent
//! (fan-in/out); held (conns). Each message carries its send time; the
//! latency is from publish to delivery.

use kiln_mqtt::codec::{self, Ack, Connect, Packet, Props, Publish, SubOpts, Subscribe};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16, id: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn { s, buf: Vec::new() };
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
        match c.next()? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            p => Err(std::io::Error::other(format!("refused: {p:?}"))),
        }
    }

    fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut b = Vec::new();
        codec::encode(p, 4, &mut b);
        self.s.write_all(&b)
    }

    fn next(&mut self) -> std::io::Result<Packet> {
        loop {
            if let Some((first, body, used)) = codec::frame(&self.buf, usize::MAX)
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                let p = codec::decode(first, body, 4)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.buf.drain(..used);
                return Ok(p);
            }
            let mut b = [0u8; 65536];
            let n = self.s.read(&mut b)?;
            if n == 0 {
                return Err(std::io::Error::other("closed"));
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    fn subscribe(&mut self, f: &str, qos: u8) -> std::io::Result<()> {
        self.send(&Packet::Subscribe(Subscribe {
            pid: 1,
            filters: vec![(
                f.into(),
                SubOpts {
                    qos,
                    ..SubOpts::default()
                },
            )],
            props: Props::default(),
        }))?;
        loop {
            if let Packet::SubAck(_) = self.next()? {
                return Ok(());
            }
        }
    }
}

/// Receives `want` messages (acknowledging QoS 1); returns latencies (µs)
/// and when the last one arrived.
fn receive(mut c: Conn, want: usize, stop: Arc<AtomicBool>) -> (Vec<u64>, Instant) {
    let mut lat = Vec::with_capacity(want);
    let mut last = Instant::now();
    c.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while lat.len() < want && !stop.load(Ordering::Relaxed) {
        match c.next() {
            Ok(Packet::Publish(m)) => {
                if m.qos == 1 {
                    let _ = c.send(&Packet::PubAck(Ack {
                        pid: m.pid,
                        reason: 0,
                        props: Props::default(),
                    }));
                }
                let sent = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                lat.push(now_us().saturating_sub(sent));
                last = Instant::now();
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    (lat, last)
}

/// Publishes `n` messages on `topic`, at most `window` QoS 1 messages unacknowledged.
fn publish(mut c: Conn, topic: &str, n: usize, qos: u8) -> usize {
    let window = 10;
    let mut unacked = 0;
    let mut pid = 0u16;
    for _ in 0..n {
        let mut payload = now_us().to_le_bytes().to_vec();
        payload.resize(64, b'k');
        pid = pid % 60000 + 1;
        if c.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            pid: if qos > 0 { pid } else { 0 },
            payload,
            props: Props::default(),
        }))
        .is_err()
        {
            return 0;
        }
        if qos == 1 {
            unacked += 1;
            while unacked >= window {
                match c.next() {
                    Ok(Packet::PubAck(_)) => unacked -= 1,
                    Ok(_) => {}
                    Err(_) => return 0,
                }
            }
        }
    }
    while qos == 1 && unacked > 0 {
        match c.next() {
            Ok(Packet::PubAck(_)) => unacked -= 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    n
}

fn report(lat: &mut [u64], secs: f64, sent: usize) {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("delivered={}", lat.len());
    println!("sent={sent}");
    println!("msgs_per_s={:.0}", lat.len() as f64 / secs);
    println!("p50_us={}", pct(0.5));
    println!("p99_us={}", pct(0.99));
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: mqttload fanin|fanout PORT CLIENTS MESSAGES QOS | mqttload conns PORT MAX | mqttload retain PORT N";
    let port: u16 = a.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let stop = Arc::new(AtomicBool::new(false));
    match a.get(1).map(String::as_str) {
        Some("fanin") | Some("fanout") => {
            let clients: usize = a[3].parse().expect(usage);
            let n: usize = a[4].parse().expect(usage);
            let qos: u8 = a[5].parse().expect(usage);
            let fanin = a[1] == "fanin";
            let tag = now_us();
            let topic = format!("bench/{tag}");
            let subs: Vec<Conn> = (0..if fanin { 1 } else { clients })
                .map(|i| {
                    let mut c =
                        Conn::open(port, &format!("sub-{tag}-{i}")).expect("subscriber connects");
                    c.subscribe(&format!("{topic}/#"), qos).expect("subscribes");
                    c
                })
                .collect();
            let pubs: Vec<Conn> = (0..if fanin { clients } else { 1 })
                .map(|i| Conn::open(port, &format!("pub-{tag}-{i}")).expect("publisher connects"))
                .collect();
            let want = if fanin { clients * n } else { n };
            let start = Instant::now();
            let receivers: Vec<_> = subs
                .into_iter()
                .map(|c| {
                    let stop = stop.clone();
                    std::thread::spawn(move || receive(c, want, stop))
                })
                .collect();
            let senders: Vec<_> = pubs
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let t = format!("{topic}/{i}");
                    std::thread::spawn(move || publish(c, &t, n, qos))
                })
                .collect();
            let sent: usize = senders.into_iter().map(|h| h.join().unwrap()).sum();
            // QoS 0 may drop; stop waiting a while after the last publish.
            let watchdog = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(5));
                    stop.store(true, Ordering::Relaxed);
                })
            };
            let got: Vec<(Vec<u64>, Instant)> =
                receivers.into_iter().map(|h| h.join().unwrap()).collect();
            let end = got.iter().map(|(_, t)| *t).max().unwrap_or(start);
            let mut lat: Vec<u64> = got.into_iter().flat_map(|(l, _)| l).collect();
            // Up to the last delivery (a QoS 0 loss does not count as time).
            let secs = end.duration_since(start).as_secs_f64().max(1e-6);
            drop(watchdog);
            report(&mut lat, secs, sent);
        }
        Some("conns") => {
            let max: usize = a[3].parse().expect(usage);
            let mut held = Vec::new();
            for i in 0..max {
                match Conn::open(port, &format!("held-{i}"))
                    .and_then(|mut c| c.subscribe("held/all", 0).map(|_| c))
                {
                    Ok(c) => held.push(c),
                    Err(_) => break,
                }
            }
            // Every held client still gets a message (published by the
            // first of them: the broker may have no room for another).
            let mut alive = 0;
            if !held.is_empty() {
                let mut payload = now_us().to_le_bytes().to_vec();
                payload.resize(16, 0);
                let _ = held[0].send(&Packet::Publish(Publish {
                    dup: false,
                    qos: 0,
                    retain: false,
                    topic: "held/all".into(),
                    pid: 0,
                    payload,
                    props: Props::default(),
                }));
                for c in held.iter_mut() {
                    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    if matches!(c.next(), Ok(Packet::Publish(_))) {
                        alive += 1;
                    }
                }
            }
            println!("connected={}", held.len());
            println!("held={alive}");
        }
        Some("retain") => {
            // N retained QoS 1 messages on topics of their own, 64-byte
            // payloads, in windows of 100 acknowledged ones.
            let n: usize = a[3].parse().expect(usage);
            let mut c = Conn::open(port, "retainer").expect("connect");
            let start = Instant::now();
            let mut acked = 0;
            for w in (0..n).step_by(100) {
                let end = (w + 100).min(n);
                for i in w..end {
                    let payload = vec![b'r'; 64];
                    let pid = (i % 60000) as u16 + 1;
                    c.send(&Packet::Publish(Publish {
                        dup: false,
                        qos: 1,
                        retain: true,
                        topic: format!("retained/{i}"),
                        pid,
                        payload,
                        props: Props::default(),
                    }))
                    .expect("publish");
                }
                while acked < end {
                    if let Packet::PubAck(_) = c.next().expect("PUBACK") {
                        acked += 1;
                    }
                }
            }
            println!("retained={acked}");
            println!(
                "msgs_per_s={:.0}",
                acked as f64 / start.elapsed().as_secs_f64()
            );
        }
        _ => panic!("{usage}"),
    }
}
