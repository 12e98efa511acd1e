//! apps/mqtt driven by real clients: Debian's mosquitto_pub and
//! mosquitto_sub (every QoS, retained messages, wildcards, $SYS, wills,
//! authentication and ACLs), paho-mqtt from PyPI for MQTT 5 features, and
//! raw packets (made with lib/mqtt's codec) for topic aliases and for
//! clients that misbehave: garbage, oversize packets, a flood of
//! connections that never send CONNECT, silent clients.
//!
//! Guests run under TCG (-W), each on a port of its own.

mod support;
use support::root;

use kiln_mqtt::codec::{self, prop, Connect, Packet, Props, Publish, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Broker {
    child: Option<Child>,
    port: u16,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Broker guests run one at a time: under TCG on two cores, several at
/// once are slow enough that a client's subscription can miss a message
/// published a moment later.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Broker {
    /// Starts apps/mqtt with `extra` `kiln run` arguments; waits until it
    /// accepts MQTT connections.
    fn start(extra: &[&str]) -> Broker {
        let lock = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let b = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args(["build", "-q", "apps/mqtt"])
            .status()
            .unwrap();
        assert!(b.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args([
                "run",
                "-W",
                "--timeout",
                "300",
                "-p",
                &format!("{port}:1883"),
            ])
            .args(extra)
            .arg("apps/mqtt")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let b = Broker {
            child: Some(child),
            port,
            _one_at_a_time: lock,
        };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut c = Vec::new();
                codec::encode(&connect_packet("probe", 4, 0), 4, &mut c);
                let mut reply = [0u8; 4];
                if s.write_all(&c).is_ok() && s.read_exact(&mut reply).is_ok() && reply[0] == 0x20 {
                    return b;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the broker never answered on port {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the guest and returns its console output.
    fn stop(mut self) -> String {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let o = c.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn pubc(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// mosquitto_sub in the background; `wait` reads what it printed.
    fn sub(&self, args: &[&str]) -> Child {
        let c = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Subscribed once it has connected; give it a moment.
        std::thread::sleep(Duration::from_millis(2000));
        c
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait(c: Child) -> String {
    let o = c.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn connect_packet(id: &str, v: u8, keep_alive: u16) -> Packet {
    Packet::Connect(Connect {
        version: v,
        client_id: id.into(),
        clean: true,
        keep_alive,
        username: None,
        password: None,
        will: None,
        props: Props::default(),
    })
}

/// A client speaking raw packets.
struct Raw {
    s: TcpStream,
    v: u8,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(port: u16, p: Packet, v: u8) -> (Raw, Packet) {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = Raw {
            s,
            v,
            buf: Vec::new(),
        };
        r.send(&p);
        let ack = r.next().expect("a CONNACK");
        (r, ack)
    }

    fn send(&mut self, p: &Packet) {
        let mut b = Vec::new();
        codec::encode(p, self.v, &mut b);
        self.s.write_all(&b).unwrap();
    }

    /// The next packet, or None when the broker closed the connection.
    fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some((first, body, used)) = codec::frame(&self.buf, usize::MAX).unwrap() {
                let p = codec::decode(first, body, self.v).unwrap();
                self.buf.drain(..used);
                return Some(p);
            }
            let mut b = [0u8; 4096];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
            }
        }
    }
}

#[test]
fn mosquitto_clients_every_qos_retained_wildcards_and_sys() {
    let b = Broker::start(&["-e", "MQTT_SYS_INTERVAL=1"]);
    let all = b.sub(&[
        "-t",
        "plant/+/temp",
        "-t",
        "plant/line2/#",
        "-v",
        "-C",
        "5",
        "-W",
        "60",
    ]);
    let every = b.sub(&["-t", "#", "-v", "-W", "4"]);
    for (qos, t, m) in [
        ("0", "plant/line1/temp", "20.5"),
        ("1", "plant/line2/temp", "21.0"),
        ("2", "plant/line3/temp", "22.5"),
        ("1", "plant/line2/pressure", "1.2"),
        ("2", "plant/line1/humidity", "40"),
    ] {
        let (ok, out) = b.pubc(&["-q", qos, "-t", t, "-m", m]);
        assert!(ok, "{out}");
    }
    let (ok, out) = b.pubc(&["-q", "1", "-t", "plant/line9/temp", "-m", "last"]);
    assert!(ok, "{out}");
    let got = wait(all);
    // + matches one level, # the rest; the humidity reading matches neither.
    assert_eq!(got, "plant/line1/temp 20.5\nplant/line2/temp 21.0\nplant/line3/temp 22.5\nplant/line2/pressure 1.2\nplant/line9/temp last\n");
    // `#` saw the plant but not the broker's $SYS tree; `$SYS/#` does.
    let every = wait(every);
    assert!(
        every.contains("plant/line1/humidity 40\n") && !every.contains("$SYS"),
        "{every}"
    );
    let sys = wait(b.sub(&[
        "-t",
        "$SYS/broker/clients/connected",
        "-t",
        "$SYS/broker/version",
        "-v",
        "-C",
        "2",
        "-W",
        "20",
    ]));
    assert!(
        sys.contains("$SYS/broker/version kiln-mqtt")
            && sys.contains("$SYS/broker/clients/connected "),
        "{sys}"
    );
    // Retained messages reach later subscribers; an empty one clears it.
    let (ok, out) = b.pubc(&["-r", "-q", "1", "-t", "config/rate", "-m", "10s"]);
    assert!(ok, "{out}");
    assert_eq!(
        wait(b.sub(&["-t", "config/#", "-v", "-C", "1", "-W", "20"])),
        "config/rate 10s\n"
    );
    b.pubc(&["-r", "-t", "config/rate", "-n"]);
    let none = wait(b.sub(&["-t", "config/#", "-v", "-W", "3"]));
    assert!(!none.contains("config/rate"), "{none}");
    let out = b.stop();
    assert!(out.contains("mqtt: listening on port 1883"), "{out}");
}

#[test]
fn wills_keep_alive_and_persistent_sessions() {
    let b = Broker::start(&[]);
    let watcher = b.sub(&["-t", "status/#", "-v", "-C", "2", "-W", "60"]);
    // A client that vanishes (killed): its will goes out.
    let mut dev = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port.to_string(),
            "-t",
            "cmd/dev1",
            "--will-topic",
            "status/dev1",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    dev.kill().unwrap();
    dev.wait().unwrap();
    // A client that goes silent with its socket open: after 1.5 times its
    // keep-alive the broker drops it and publishes its will.
    let mut c = connect_packet("silent", 4, 1);
    if let Packet::Connect(c) = &mut c {
        c.will = Some(codec::Will {
            topic: "status/silent".into(),
            payload: b"timed out".to_vec(),
            qos: 0,
            retain: false,
            props: Props::default(),
        });
    }
    let (mut silent, ack) = Raw::connect(b.port, c, 4);
    assert!(matches!(ack, Packet::ConnAck(a) if a.code == 0));
    assert_eq!(silent.next(), None, "the broker closes a silent connection");
    let got = wait(watcher);
    assert!(
        got.contains("status/dev1 offline\n") && got.contains("status/silent timed out\n"),
        "{got}"
    );
    // A persistent session (clean session off) gets QoS 1 messages sent
    // while it was away.
    let (ok, out) = b.pubc(&["-q", "1", "-t", "inbox/a", "-m", "hello", "-i", "sender"]);
    assert!(ok, "{out}");
    let first = wait(b.sub(&[
        "-i", "keeper", "-c", "-q", "1", "-t", "inbox/#", "-v", "-W", "3",
    ]));
    assert!(!first.contains("hello"), "not retained: {first}");
    b.pubc(&["-q", "1", "-t", "inbox/b", "-m", "while away"]);
    let back = wait(b.sub(&[
        "-i", "keeper", "-c", "-q", "1", "-t", "inbox/#", "-v", "-C", "1", "-W", "20",
    ]));
    assert_eq!(back, "inbox/b while away\n");
    let out = b.stop();
    assert!(
        out.contains("Client silent disconnected: keep-alive timeout"),
        "{out}"
    );
    assert!(out.contains("Publishing the will of"), "{out}");
}

#[test]
fn passwords_and_acls_from_the_rootfs() {
    let d = std::env::temp_dir().join(format!("kiln-mqtt-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc/mqtt")).unwrap();
    std::fs::write(d.join("etc/mqtt/mqtt.conf"), "listener 1883\nallow_anonymous false\npassword_file /etc/mqtt/passwd\nacl_file /etc/mqtt/acl\n").unwrap();
    // alice in plain text; bob hashed by mosquitto_passwd ($7$, PBKDF2).
    std::fs::write(d.join("etc/mqtt/passwd"), "alice:wonderland\n").unwrap();
    let o = Command::new("mosquitto_passwd")
        .args([
            "-b",
            d.join("etc/mqtt/passwd").to_str().unwrap(),
            "bob",
            "builder",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(d.join("etc/mqtt/passwd"))
        .unwrap()
        .contains("bob:$7$"));
    std::fs::write(
        d.join("etc/mqtt/acl"),
        "user alice\ntopic readwrite farm/#\nuser bob\ntopic read farm/#\n",
    )
    .unwrap();
    let b = Broker::start(&["--initrd", d.to_str().unwrap()]);
    let (ok, out) = b.pubc(&["-t", "farm/x", "-m", "1"]);
    assert!(!ok && out.contains("not authorised"), "anonymous: {out}");
    let (ok, out) = b.pubc(&["-u", "alice", "-P", "wrong", "-t", "farm/x", "-m", "1"]);
    assert!(
        !ok && out.contains("bad user name or password"),
        "wrong password: {out}"
    );
    let s = b.sub(&[
        "-u", "bob", "-P", "builder", "-t", "farm/#", "-v", "-C", "1", "-W", "30",
    ]);
    // bob may read but not write: his message is dropped (3.1.1 has no way
    // to say so), alice's arrives.
    let (ok, out) = b.pubc(&[
        "-u", "bob", "-P", "builder", "-t", "farm/bob", "-m", "from bob",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = b.pubc(&[
        "-u",
        "alice",
        "-P",
        "wonderland",
        "-t",
        "farm/alice",
        "-m",
        "from alice",
    ]);
    assert!(ok, "{out}");
    assert_eq!(wait(s), "farm/alice from alice\n");
    // MQTT 5 says why: a refused subscription and a refused publish.
    let o = Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &b.port.to_string(),
            "-u",
            "bob",
            "-P",
            "builder",
            "-t",
            "barn/#",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("denied") || text.contains("Not authorized"),
        "{text}"
    );
    let out = b.stop();
    assert!(
        out.contains("refused: client") && out.contains("bad user name or password"),
        "{out}"
    );
    assert!(
        out.contains("not authorised to publish on farm/bob"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn mqtt5_features_with_paho() {
    let py = root().join("target/pydeps");
    assert!(
        py.join("paho").exists(),
        "paho-mqtt is installed by scripts/test into target/pydeps"
    );
    let b = Broker::start(&[]);
    let o = Command::new("python3")
        .arg(root().join("kiln/tests/mqtt/mqtt5.py"))
        .arg(b.port.to_string())
        .env("PYTHONPATH", &py)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && out.ends_with("done\n"), "{out}");
    for check in [
        "assigned client id kiln-",
        "subscription identifier, message expiry",
        "no local",
        "retain as published",
        "ok: message expiry",
        "queued message delivered",
        "session expiry 0",
    ] {
        assert!(out.contains(check), "{check}: {out}");
    }
    // Topic aliases, from raw packets.
    let (mut p, ack) = Raw::connect(b.port, connect_packet("aliaser", 5, 30), 5);
    let Packet::ConnAck(a) = ack else { panic!() };
    assert_eq!(a.props.num(prop::TOPIC_ALIAS_MAXIMUM), Some(10));
    let (mut s, _) = Raw::connect(b.port, connect_packet("alias-sub", 5, 30), 5);
    s.send(&Packet::Subscribe(codec::Subscribe {
        pid: 1,
        filters: vec![("alias/#".into(), codec::SubOpts::default())],
        props: Props::default(),
    }));
    assert!(matches!(s.next(), Some(Packet::SubAck(_))));
    let mut props = Props::default();
    props.set(prop::TOPIC_ALIAS, Value::U16(7));
    p.send(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: "alias/a/very/long/topic".into(),
        pid: 0,
        payload: b"one".to_vec(),
        props: props.clone(),
    }));
    p.send(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: String::new(),
        pid: 0,
        payload: b"two".to_vec(),
        props,
    }));
    for want in ["one", "two"] {
        let Some(Packet::Publish(m)) = s.next() else {
            panic!("no message")
        };
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            ("alias/a/very/long/topic", want.as_bytes())
        );
    }
    // The broker's own aliases, to a subscriber that allows one: the
    // topic once, then the alias alone.
    let Packet::Connect(mut c) = connect_packet("alias-taker", 5, 30) else {
        unreachable!()
    };
    c.props.set(prop::TOPIC_ALIAS_MAXIMUM, Value::U16(1));
    let (mut t, _) = Raw::connect(b.port, Packet::Connect(c), 5);
    t.send(&Packet::Subscribe(codec::Subscribe {
        pid: 1,
        filters: vec![("alias/#".into(), codec::SubOpts::default())],
        props: Props::default(),
    }));
    assert!(matches!(t.next(), Some(Packet::SubAck(_))));
    for (n, topic) in ["alias/x", "alias/x", "alias/y"].into_iter().enumerate() {
        p.send(&Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: topic.into(),
            pid: 0,
            payload: vec![n as u8],
            props: Props::default(),
        }));
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let Some(Packet::Publish(m)) = t.next() else {
            panic!("no message")
        };
        got.push((m.topic, m.props.num(prop::TOPIC_ALIAS), m.payload));
    }
    assert_eq!(
        got,
        [
            ("alias/x".to_string(), Some(1), vec![0]),
            (String::new(), Some(1), vec![1]),
            ("alias/y".to_string(), None, vec![2])
        ]
    );
}

#[test]
fn misbehaving_clients_are_disconnected_and_others_carry_on() {
    let b = Broker::start(&[
        "-e",
        "MQTT_CONNECT_TIMEOUT=2",
        "-e",
        "MQTT_MAX_CONNECTIONS=60",
        "-e",
        "MQTT_MAX_PACKET_SIZE=2048",
    ]);
    // Garbage instead of CONNECT: closed.
    let mut g = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(
        matches!(g.read(&mut [0u8; 16]), Ok(0) | Err(_)),
        "garbage gets the connection closed"
    );
    // A malformed packet after CONNECT (MQTT 5): DISCONNECT 0x81, closed.
    let (mut m, _) = Raw::connect(b.port, connect_packet("malformed", 5, 30), 5);
    m.s.write_all(&[0x30, 0x03, 0x00, 0x09, b'x']).unwrap();
    assert!(matches!(m.next(), Some(Packet::Disconnect(d)) if d.reason == 0x81));
    // Oversize: DISCONNECT 0x95.
    let (mut big, _) = Raw::connect(b.port, connect_packet("big", 5, 30), 5);
    big.send(&Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: "t".into(),
        pid: 0,
        payload: vec![b'x'; 4096],
        props: Props::default(),
    }));
    assert!(matches!(big.next(), Some(Packet::Disconnect(d)) if d.reason == 0x95));
    assert_eq!(big.next(), None);
    // A flood: 50 connections that never send CONNECT, while a normal
    // client keeps working; they are dropped after the connect timeout.
    let flood: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(("127.0.0.1", b.port)).unwrap())
        .collect();
    let s = b.sub(&["-t", "during/flood", "-C", "1", "-W", "30"]);
    let (ok, out) = b.pubc(&["-q", "1", "-t", "during/flood", "-m", "still here"]);
    assert!(ok, "{out}");
    assert_eq!(wait(s), "still here\n");
    std::thread::sleep(Duration::from_secs(4));
    for mut f in flood {
        f.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(
            matches!(f.read(&mut [0u8; 4]), Ok(0) | Err(_)),
            "a silent connection was dropped"
        );
    }
    // Past max_connections, new connections are closed at once.
    let held: Vec<(Raw, Packet)> = (0..60)
        .map(|i| Raw::connect(b.port, connect_packet(&format!("h{i}"), 4, 60), 4))
        .collect();
    assert!(held
        .iter()
        .all(|(_, a)| matches!(a, Packet::ConnAck(c) if c.code == 0)));
    let mut extra = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        matches!(extra.read(&mut [0u8; 4]), Ok(0) | Err(_)),
        "over max_connections: closed"
    );
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out) = b.pubc(&["-t", "after", "-m", "fine"]);
    assert!(ok, "the broker carries on: {out}");
    let out = b.stop();
    assert!(
        out.contains("malformed packet") && out.contains("larger than the maximum packet size"),
        "{out}"
    );
    assert!(
        out.contains("no CONNECT in time") && out.contains("refused: 60 connections open"),
        "{out}"
    );
}

#[test]
fn a_bad_configuration_stops_the_broker_with_file_and_line() {
    let d = std::env::temp_dir().join(format!("kiln-mqtt-badconf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc/mqtt")).unwrap();
    std::fs::write(
        d.join("etc/mqtt/mqtt.conf"),
        "listener 1883\nmax_inflight_messages lots\n",
    )
    .unwrap();
    let b = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["build", "-q", "apps/mqtt"])
        .status()
        .unwrap();
    assert!(b.success());
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-W",
            "--timeout",
            "60",
            "--initrd",
            d.to_str().unwrap(),
            "apps/mqtt",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("mqtt: /etc/mqtt/mqtt.conf:2: max_inflight_messages: 'lots' is not a number"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Two `listener` lines are two ports: a subscriber on one gets what a
/// publisher sends to the other.
#[test]
fn several_listeners_serve_at_once() {
    let second = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fwd = format!("{second}:8883");
    let b = Broker::start(&["-p", &fwd, "-e", "MQTT_LISTENER=8883"]);
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &second.to_string(),
            "-t",
            "two/ports",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out) = b.pubc(&["-t", "two/ports", "-m", "across", "-q", "1"]);
    assert!(ok, "{out}");
    let got = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "across");
    let console = b.stop();
    assert!(
        console.contains("mqtt: listening on ports 1883, 8883"),
        "{console}"
    );
}

/// MQTT 5 shared subscriptions: two members of `$share/workers/...` split
/// the messages between them, each message going to one.
#[test]
fn shared_subscriptions_split_the_messages() {
    let b = Broker::start(&[]);
    let w1 = b.sub(&[
        "-V",
        "5",
        "-t",
        "$share/workers/jobs/#",
        "-C",
        "2",
        "-W",
        "30",
    ]);
    let w2 = b.sub(&[
        "-V",
        "5",
        "-t",
        "$share/workers/jobs/#",
        "-C",
        "2",
        "-W",
        "30",
    ]);
    for i in 0..4 {
        let (ok, out) = b.pubc(&[
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            "jobs/next",
            "-m",
            &format!("job{i}"),
        ]);
        assert!(ok, "{out}");
    }
    let got: Vec<String> = [w1, w2]
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    let mut all: Vec<&str> = got.iter().flat_map(|g| g.lines()).collect();
    all.sort();
    assert_eq!(all, ["job0", "job1", "job2", "job3"], "{got:?}");
    assert!(got.iter().all(|g| g.lines().count() == 2), "{got:?}");
}

/// MQTT over WebSockets (`protocol websockets` on a second listener, as
/// browsers and mosquitto's users run it): paho-mqtt over WebSockets and
/// over plain TCP, MQTT 3.1.1 and 5, each receives what the other sends
/// (one message larger than 64 KiB); a plain HTTP request to the
/// WebSocket port gets 400 and the broker carries on.
#[test]
fn mqtt_over_websockets_beside_plain_tcp() {
    let py = root().join("target/pydeps");
    assert!(
        py.join("paho").exists(),
        "paho-mqtt is installed by scripts/test into target/pydeps"
    );
    let d = std::env::temp_dir().join(format!("kiln-mqtt-ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc/mqtt")).unwrap();
    std::fs::write(
        d.join("etc/mqtt/mqtt.conf"),
        "listener 1883\nlistener 8080\nprotocol websockets\nallow_anonymous true\nmax_packet_size 1000000\n",
    )
    .unwrap();
    let ws = support::free_port();
    let b = Broker::start(&["--initrd", d.to_str().unwrap(), "-p", &format!("{ws}:8080")]);
    let mut s = TcpStream::connect(("127.0.0.1", ws)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let o = Command::new("python3")
        .arg(root().join("kiln/tests/mqtt/websockets.py"))
        .args([ws.to_string(), b.port.to_string()])
        .env("PYTHONPATH", &py)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let log = b.stop();
    let _ = std::fs::remove_dir_all(&d);
    assert!(
        o.status.success() && out.ends_with("done\n"),
        "{out}\n{log}"
    );
    assert!(
        out.contains("MQTT 3.1.1: websockets and tcp both ways")
            && out.contains("MQTT 5: websockets and tcp both ways"),
        "{out}"
    );
    assert!(
        log.contains("mqtt: listener 8080 speaks MQTT over WebSockets"),
        "{log}"
    );
    assert!(
        log.contains("WebSocket handshake: not a WebSocket upgrade; connection closed"),
        "{log}"
    );
}

/// mosquitto's per_listener_settings: each listener its own
/// allow_anonymous and password file, as mosquitto clients see it.
#[test]
fn per_listener_security() {
    let d = std::env::temp_dir().join(format!("kiln-mqtt-perlistener-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc/mqtt")).unwrap();
    std::fs::write(
        d.join("etc/mqtt/mqtt.conf"),
        "per_listener_settings true\nlistener 1883\nallow_anonymous true\nlistener 1884\npassword_file /etc/mqtt/passwords\n",
    )
    .unwrap();
    std::fs::write(d.join("etc/mqtt/passwords"), "alice:secret\n").unwrap();
    let guarded = support::free_port();
    let b = Broker::start(&[
        "--initrd",
        d.to_str().unwrap(),
        "-p",
        &format!("{guarded}:1884"),
    ]);
    let pub_on = |port: u16, extra: &[&str]| {
        let o = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "t",
                "-m",
                "x",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(pub_on(b.port, &[]).0, "anonymous on the open listener");
    let (ok, err) = pub_on(guarded, &[]);
    assert!(
        !ok && err.contains("not authorised"),
        "anonymous on the guarded listener: {err}"
    );
    assert!(!pub_on(guarded, &["-u", "alice", "-P", "wrong"]).0);
    assert!(pub_on(guarded, &["-u", "alice", "-P", "secret"]).0);
    let log = b.stop();
    let _ = std::fs::remove_dir_all(&d);
    assert!(log.contains("security options per listener"), "{log}");
}
