//! The broker driven through bytes, as clients would: each test connects
//! clients, sends packets and checks the packets that come back.

use crate::broker::{Broker, ConnId};
use crate::codec::*;
use crate::config::{Acl, Config};

const S: u64 = 1_000_000;

struct Client {
    id: ConnId,
    v: u8,
    /// Packets received but not yet looked at.
    pending: std::cell::RefCell<Vec<Packet>>,
}

fn client(id: ConnId, v: u8) -> Client {
    Client {
        id,
        v,
        pending: Default::default(),
    }
}

fn broker() -> Broker {
    Broker::new(
        Config {
            sys_interval: 0,
            ..Config::default()
        },
        0,
    )
}

fn send(b: &mut Broker, c: &Client, p: Packet, now: u64) {
    let mut buf = Vec::new();
    encode(&p, c.v, &mut buf);
    b.input(c.id, &buf, now);
}

/// Packets the broker queued for `c` (and clears them).
fn recv(b: &mut Broker, c: &Client) -> Vec<Packet> {
    let out = b.output(c.id).map(<[u8]>::to_vec).unwrap_or_default();
    b.consumed(c.id, out.len());
    let mut at = 0;
    let mut v = std::mem::take(&mut *c.pending.borrow_mut());
    while let Some((first, body, used)) = frame(&out[at..], usize::MAX).unwrap() {
        v.push(decode(first, body, c.v).unwrap());
        at += used;
    }
    v
}

fn connect_with(
    b: &mut Broker,
    v: u8,
    id: &str,
    clean: bool,
    f: impl FnOnce(&mut Connect),
) -> (Client, ConnAck) {
    let c = client(b.open("test".into(), 0).unwrap(), v);
    let mut p = Connect {
        version: v,
        client_id: id.into(),
        clean,
        keep_alive: 60,
        username: None,
        password: None,
        will: None,
        props: Props::default(),
    };
    f(&mut p);
    send(b, &c, Packet::Connect(p), 0);
    let mut got = recv(b, &c);
    let Packet::ConnAck(a) = got.remove(0) else {
        panic!("no CONNACK")
    };
    *c.pending.borrow_mut() = got;
    (c, a)
}

fn connect(b: &mut Broker, v: u8, id: &str) -> Client {
    let (c, a) = connect_with(b, v, id, true, |_| {});
    assert_eq!(a.code, 0);
    c
}

fn sub(b: &mut Broker, c: &Client, f: &str, qos: u8) -> Vec<u8> {
    send(
        b,
        c,
        Packet::Subscribe(Subscribe {
            pid: 1,
            filters: vec![(
                f.into(),
                SubOpts {
                    qos,
                    ..SubOpts::default()
                },
            )],
            props: Props::default(),
        }),
        0,
    );
    let mut got = recv(b, c);
    let i = got
        .iter()
        .position(|p| matches!(p, Packet::SubAck(_)))
        .expect("a SUBACK");
    let Packet::SubAck(a) = got.remove(i) else {
        unreachable!()
    };
    *c.pending.borrow_mut() = got;
    a.codes
}

fn publish(topic: &str, payload: &str, qos: u8, pid: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        pid,
        payload: payload.into(),
        props: Props::default(),
    })
}

fn payloads(ps: &[Packet]) -> Vec<(String, String, u8)> {
    ps.iter()
        .filter_map(|p| match p {
            Packet::Publish(m) => Some((
                m.topic.clone(),
                String::from_utf8(m.payload.clone()).unwrap(),
                m.qos,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn codec_round_trips_both_versions() {
    for v in [4, 5] {
        let mut props = Props::default();
        if v == 5 {
            props.set(prop::MESSAGE_EXPIRY, Value::U32(30));
            props
                .0
                .push((prop::USER_PROPERTY, Value::Pair("k".into(), "v".into())));
        }
        let ps = [
            Packet::Publish(Publish {
                dup: true,
                qos: 2,
                retain: true,
                topic: "a/b".into(),
                pid: 7,
                payload: b"hi".to_vec(),
                props,
            }),
            Packet::PubRel(Ack {
                pid: 7,
                reason: 0,
                props: Props::default(),
            }),
            Packet::Subscribe(Subscribe {
                pid: 3,
                filters: vec![(
                    "a/+".into(),
                    SubOpts {
                        qos: 1,
                        ..SubOpts::default()
                    },
                )],
                props: Props::default(),
            }),
            Packet::PingReq,
        ];
        for p in ps {
            let mut buf = Vec::new();
            encode(&p, v, &mut buf);
            let (first, body, used) = frame(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!(used, buf.len());
            assert_eq!(decode(first, body, v).unwrap(), p);
        }
    }
    // Malformed input is an error, never a panic.
    assert!(matches!(
        frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        frame(&[0x30, 0x80, 0x80, 0x01], 1000),
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        decode(0x30, &[0, 5, b'a'], 4),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(decode(0x82, &[0, 1], 4), Err(Error::Protocol(_))));
    assert!(matches!(decode(0x20, &[0, 0], 0), Err(Error::Protocol(_))));
}

#[test]
fn fuzzed_bytes_never_panic() {
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..20000 {
        let len = (x % 40) as usize;
        let mut buf = Vec::new();
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        for v in [0, 4, 5] {
            if let Ok(Some((first, body, _))) = frame(&buf, 1 << 20) {
                let _ = decode(first, body, v);
            }
        }
    }
    // And a broker fed garbage disconnects the client but carries on.
    let mut b = broker();
    let ok = connect(&mut b, 4, "ok");
    let bad = client(b.open("bad".into(), 0).unwrap(), 4);
    b.input(bad.id, &[0xff, 0x00], 0);
    assert!(b.wants_close(bad.id));
    sub(&mut b, &ok, "t", 0);
}

#[test]
fn qos0_qos1_and_qos2_flows() {
    let mut b = broker();
    let s = connect(&mut b, 4, "sub");
    let p = connect(&mut b, 5, "pub");
    assert_eq!(sub(&mut b, &s, "sensors/+/temp", 2), [2]);
    send(&mut b, &p, publish("sensors/a/temp", "21", 0, 0, false), 0);
    send(&mut b, &p, publish("sensors/b/temp", "22", 1, 1, false), 0);
    assert!(matches!(
        recv(&mut b, &p)[..],
        [Packet::PubAck(Ack {
            pid: 1,
            reason: 0,
            ..
        })]
    ));
    send(&mut b, &p, publish("sensors/c/temp", "23", 2, 2, false), 0);
    // A repeated QoS 2 PUBLISH (before PUBREL) is not delivered twice.
    send(&mut b, &p, publish("sensors/c/temp", "23", 2, 2, false), 0);
    assert!(matches!(
        recv(&mut b, &p)[..],
        [Packet::PubRec(_), Packet::PubRec(_)]
    ));
    send(
        &mut b,
        &p,
        Packet::PubRel(Ack {
            pid: 2,
            reason: 0,
            props: Props::default(),
        }),
        0,
    );
    assert!(matches!(
        recv(&mut b, &p)[..],
        [Packet::PubComp(Ack {
            pid: 2,
            reason: 0,
            ..
        })]
    ));
    let got = recv(&mut b, &s);
    assert_eq!(
        payloads(&got),
        [
            ("sensors/a/temp".into(), "21".into(), 0),
            ("sensors/b/temp".into(), "22".into(), 1),
            ("sensors/c/temp".into(), "23".into(), 2)
        ]
    );
    // The subscriber completes its side.
    let Packet::Publish(q1) = &got[1] else {
        panic!()
    };
    let Packet::Publish(q2) = &got[2] else {
        panic!()
    };
    send(
        &mut b,
        &s,
        Packet::PubAck(Ack {
            pid: q1.pid,
            reason: 0,
            props: Props::default(),
        }),
        0,
    );
    send(
        &mut b,
        &s,
        Packet::PubRec(Ack {
            pid: q2.pid,
            reason: 0,
            props: Props::default(),
        }),
        0,
    );
    assert!(matches!(recv(&mut b, &s)[..], [Packet::PubRel(Ack { pid, .. })] if pid == q2.pid));
    send(
        &mut b,
        &s,
        Packet::PubComp(Ack {
            pid: q2.pid,
            reason: 0,
            props: Props::default(),
        }),
        0,
    );
}

#[test]
fn retained_messages_wildcards_and_sys_apart() {
    let mut b = Broker::new(
        Config {
            sys_interval: 10,
            ..Config::default()
        },
        0,
    );
    let p = connect(&mut b, 4, "pub");
    send(
        &mut b,
        &p,
        publish("home/kitchen/light", "on", 1, 1, true),
        0,
    );
    send(&mut b, &p, publish("home/hall/light", "off", 0, 0, true), 0);
    b.tick(10 * S);
    let s = connect(&mut b, 4, "sub");
    sub(&mut b, &s, "home/+/light", 1);
    let mut got = payloads(&recv(&mut b, &s));
    got.sort();
    assert_eq!(
        got,
        [
            ("home/hall/light".into(), "off".into(), 0),
            ("home/kitchen/light".into(), "on".into(), 1)
        ]
    );
    // `#` does not see $SYS; `$SYS/#` does.
    sub(&mut b, &s, "#", 0);
    assert!(payloads(&recv(&mut b, &s))
        .iter()
        .all(|(t, _, _)| !t.starts_with('$')));
    sub(&mut b, &s, "$SYS/broker/clients/connected", 0);
    assert_eq!(
        payloads(&recv(&mut b, &s)),
        [("$SYS/broker/clients/connected".into(), "1".into(), 0)]
    );
    // An empty retained message clears it.
    send(&mut b, &p, publish("home/hall/light", "", 0, 0, true), 0);
    recv(&mut b, &s);
    let s2 = connect(&mut b, 4, "sub2");
    sub(&mut b, &s2, "home/hall/#", 0);
    assert!(payloads(&recv(&mut b, &s2)).is_empty());
}

#[test]
fn persistent_sessions_queue_and_resend() {
    let mut b = broker();
    let (s, a) = connect_with(&mut b, 4, "keeper", false, |_| {});
    assert!(!a.session_present);
    sub(&mut b, &s, "jobs/#", 1);
    let p = connect(&mut b, 4, "pub");
    send(&mut b, &p, publish("jobs/1", "first", 1, 1, false), 0);
    // Delivered but not acknowledged; then the subscriber drops.
    assert_eq!(payloads(&recv(&mut b, &s)).len(), 1);
    b.closed(s.id, 0);
    send(&mut b, &p, publish("jobs/2", "second", 1, 2, false), 0);
    send(&mut b, &p, publish("jobs/3", "lost", 0, 0, false), 0);
    let (s, a) = connect_with(&mut b, 4, "keeper", false, |_| {});
    assert!(a.session_present);
    let got = recv(&mut b, &s);
    // The unacknowledged one again (DUP), then the queued one; QoS 0 is not kept.
    assert!(matches!(&got[0], Packet::Publish(m) if m.dup && m.payload == b"first"));
    assert_eq!(payloads(&got[1..]), [("jobs/2".into(), "second".into(), 1)]);
    // A clean session forgets.
    b.closed(s.id, 0);
    let (_s, a) = connect_with(&mut b, 4, "keeper", true, |_| {});
    assert!(!a.session_present);
}

#[test]
fn wills_keepalive_and_takeover() {
    let mut b = broker();
    let w = connect(&mut b, 4, "watcher");
    sub(&mut b, &w, "status/#", 0);
    let will = |c: &mut Connect| {
        c.will = Some(Will {
            topic: "status/dev".into(),
            payload: b"gone".to_vec(),
            qos: 0,
            retain: false,
            props: Props::default(),
        });
        c.keep_alive = 2;
    };
    let (d, _) = connect_with(&mut b, 4, "dev", true, will);
    // Silent past 1.5 x keep-alive: disconnected, will published.
    b.tick(4 * S);
    assert!(b.wants_close(d.id));
    b.closed(d.id, 4 * S);
    assert_eq!(
        payloads(&recv(&mut b, &w)),
        [("status/dev".into(), "gone".into(), 0)]
    );
    // DISCONNECT: no will.
    let (d, _) = connect_with(&mut b, 4, "dev", true, will);
    send(
        &mut b,
        &d,
        Packet::Disconnect(Disconnect {
            reason: 0,
            props: Props::default(),
        }),
        5 * S,
    );
    b.closed(d.id, 5 * S);
    assert!(payloads(&recv(&mut b, &w)).is_empty());
    // Take-over: the old connection is closed.
    let (d1, _) = connect_with(&mut b, 5, "twin", true, |_| {});
    let (_d2, _) = connect_with(&mut b, 5, "twin", true, |_| {});
    assert!(matches!(
        recv(&mut b, &d1).last(),
        None | Some(Packet::Disconnect(Disconnect { reason: 0x8e, .. }))
    ));
}

#[test]
fn mqtt5_aliases_expiry_and_limits() {
    let mut b = Broker::new(
        Config {
            sys_interval: 0,
            max_packet_size: 512,
            ..Config::default()
        },
        0,
    );
    let s = connect(&mut b, 5, "s5");
    sub(&mut b, &s, "t/#", 1);
    let (p, a) = connect_with(&mut b, 5, "", true, |_| {});
    assert!(
        matches!(a.props.get(prop::ASSIGNED_CLIENT_ID), Some(Value::Str(n)) if n.starts_with("kiln-"))
    );
    assert_eq!(a.props.num(prop::TOPIC_ALIAS_MAXIMUM), Some(10));
    assert_eq!(a.props.num(prop::MAXIMUM_PACKET_SIZE), Some(512));
    let mut props = Props::default();
    props.set(prop::TOPIC_ALIAS, Value::U16(3));
    props.set(prop::MESSAGE_EXPIRY, Value::U32(60));
    send(
        &mut b,
        &p,
        Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "t/long/name".into(),
            pid: 0,
            payload: b"1".to_vec(),
            props,
        }),
        0,
    );
    let mut props = Props::default();
    props.set(prop::TOPIC_ALIAS, Value::U16(3));
    send(
        &mut b,
        &p,
        Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: String::new(),
            pid: 0,
            payload: b"2".to_vec(),
            props,
        }),
        0,
    );
    let got = recv(&mut b, &s);
    assert_eq!(
        payloads(&got),
        [
            ("t/long/name".into(), "1".into(), 0),
            ("t/long/name".into(), "2".into(), 0)
        ]
    );
    let Packet::Publish(m) = &got[0] else {
        panic!()
    };
    assert_eq!(m.props.num(prop::MESSAGE_EXPIRY), Some(60));
    assert!(m.props.get(prop::TOPIC_ALIAS).is_none());
    // Oversize: DISCONNECT 0x95.
    let big = "x".repeat(600);
    send(&mut b, &p, publish("t/big", &big, 0, 0, false), 0);
    assert!(matches!(
        recv(&mut b, &p).last(),
        Some(Packet::Disconnect(Disconnect { reason: 0x95, .. }))
    ));
    assert!(b.wants_close(p.id));
    // An alias out of range: 0x94.
    let p2 = connect(&mut b, 5, "p2");
    let mut props = Props::default();
    props.set(prop::TOPIC_ALIAS, Value::U16(99));
    send(
        &mut b,
        &p2,
        Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: false,
            topic: "t/x".into(),
            pid: 0,
            payload: vec![],
            props,
        }),
        0,
    );
    assert!(matches!(
        recv(&mut b, &p2).last(),
        Some(Packet::Disconnect(Disconnect { reason: 0x94, .. }))
    ));
}

#[test]
fn server_assigned_topic_aliases() {
    let mut b = broker();
    // A subscriber that takes up to 2 aliases.
    let (s, _) = connect_with(&mut b, 5, "s", true, |c| {
        c.props.set(prop::TOPIC_ALIAS_MAXIMUM, Value::U16(2))
    });
    sub(&mut b, &s, "t/#", 0);
    let p = connect(&mut b, 5, "p");
    for topic in ["t/a", "t/a", "t/b", "t/c", "t/b", "t/c"] {
        send(&mut b, &p, publish(topic, "x", 0, 0, false), 0);
    }
    let got: Vec<(String, Option<u64>)> = recv(&mut b, &s)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(m) => Some((m.topic, m.props.num(prop::TOPIC_ALIAS).map(u64::from))),
            _ => None,
        })
        .collect();
    let want: Vec<(String, Option<u64>)> = vec![
        ("t/a".into(), Some(1)),
        (String::new(), Some(1)),
        ("t/b".into(), Some(2)),
        ("t/c".into(), None),
        (String::new(), Some(2)),
        ("t/c".into(), None),
    ];
    assert_eq!(got, want);
    // A client that allows none (and a 3.1.1 client) gets topics only.
    let plain = connect(&mut b, 5, "plain");
    sub(&mut b, &plain, "t/#", 0);
    send(&mut b, &p, publish("t/a", "y", 0, 0, false), 0);
    let Some(Packet::Publish(m)) = recv(&mut b, &plain)
        .into_iter()
        .find(|p| matches!(p, Packet::Publish(_)))
    else {
        panic!()
    };
    assert_eq!(
        (m.topic.as_str(), m.props.get(prop::TOPIC_ALIAS).is_none()),
        ("t/a", true)
    );
}

#[test]
fn per_listener_settings() {
    let mut cfg = Config {
        sys_interval: 0,
        ..Config::default()
    };
    let files = cfg
        .parse(
            "per_listener_settings true\n\
             listener 1883\nallow_anonymous true\nacl_file /acl\n\
             listener 8883\npassword_file /pw\n\
             listener 9001\n",
            "conf",
        )
        .unwrap();
    assert_eq!(
        files,
        [
            ("acl_file".to_string(), "/acl".to_string()),
            ("password_file".to_string(), "/pw".to_string())
        ]
    );
    cfg.load_file("acl_file", "/acl", "topic read public/#\n")
        .unwrap();
    cfg.load_file("password_file", "/pw", "alice:secret\n")
        .unwrap();
    let mut b = Broker::new(cfg, 0);
    let on = |b: &mut Broker, port: u16, id: &str, user: Option<(&str, &[u8])>| {
        let c = client(b.open_on("test".into(), port, 0).unwrap(), 4);
        let p = Connect {
            version: 4,
            client_id: id.into(),
            clean: true,
            keep_alive: 60,
            username: user.map(|u| u.0.into()),
            password: user.map(|u| u.1.to_vec()),
            will: None,
            props: Props::default(),
        };
        send(b, &c, Packet::Connect(p), 0);
        let got = recv(b, &c);
        let Some(Packet::ConnAck(a)) = got.first() else {
            panic!("no CONNACK")
        };
        (c, a.code)
    };
    // 1883: anonymous, but its ACL lets it only read public/#.
    let (anon, code) = on(&mut b, 1883, "anon", None);
    assert_eq!(code, 0);
    // 8883: users from its password file only; no anonymous clients.
    assert_eq!(on(&mut b, 8883, "nobody", None).1, 0x87);
    assert_eq!(
        on(&mut b, 8883, "mallory", Some(("alice", b"wrong"))).1,
        0x86
    );
    let (alice, code) = on(&mut b, 8883, "alice", Some(("alice", b"secret")));
    assert_eq!(code, 0);
    // 9001: given nothing, so nobody gets in (as mosquitto).
    assert_eq!(on(&mut b, 9001, "x", None).1, 0x87);
    // The ACL of 1883 applies to its client only.
    sub(&mut b, &anon, "public/#", 0);
    let mut subs = Vec::new();
    send(
        &mut b,
        &anon,
        publish("public/a", "from anon", 0, 0, false),
        0,
    );
    send(
        &mut b,
        &alice,
        Packet::Subscribe(Subscribe {
            pid: 1,
            filters: vec![("#".into(), SubOpts::default())],
            props: Props::default(),
        }),
        0,
    );
    subs.extend(recv(&mut b, &alice));
    send(
        &mut b,
        &alice,
        publish("private/b", "from alice", 0, 0, false),
        0,
    );
    send(
        &mut b,
        &alice,
        publish("public/c", "from alice", 0, 0, false),
        0,
    );
    let got: Vec<String> = recv(&mut b, &anon)
        .into_iter()
        .filter_map(|p| {
            if let Packet::Publish(m) = p {
                Some(m.topic)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        got,
        ["public/c"],
        "anon may only read public/# and may not publish"
    );
    let got: Vec<String> = recv(&mut b, &alice)
        .into_iter()
        .filter_map(|p| {
            if let Packet::Publish(m) = p {
                Some(m.topic)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        got,
        ["private/b", "public/c"],
        "alice's listener has no ACL"
    );
    // Without per_listener_settings, options are global wherever they are.
    let mut g = Config::default();
    g.parse(
        "listener 1883\nlistener 8883\nallow_anonymous false\n",
        "conf",
    )
    .unwrap();
    assert!(!g.security(1883).allow_anonymous && !g.security(8883).allow_anonymous);
    assert!(Config::default()
        .parse("listener 1883\nper_listener_settings true\n", "c")
        .unwrap_err()
        .contains("must come before"));
}

#[test]
fn auth_and_acl() {
    let mut cfg = Config {
        sys_interval: 0,
        allow_anonymous: false,
        ..Config::default()
    };
    cfg.parse_passwords("alice:secret\n", "passwd").unwrap();
    cfg.acl = Some(
        Acl::parse(
            "user alice\ntopic readwrite room/#\ntopic deny room/private\n",
            "acl",
        )
        .unwrap(),
    );
    let mut b = Broker::new(cfg, 0);
    let (_, a) = connect_with(&mut b, 4, "anon", true, |_| {});
    assert_eq!(a.code, 0x87, "3.1.1: not authorised (return code 5)");
    let (_, a) = connect_with(&mut b, 5, "wrong", true, |c| {
        c.username = Some("alice".into());
        c.password = Some(b"nope".to_vec());
    });
    assert_eq!(a.code, 0x86);
    let login = |c: &mut Connect| {
        c.username = Some("alice".into());
        c.password = Some(b"secret".to_vec());
    };
    let (s, a) = connect_with(&mut b, 5, "s", true, login);
    assert_eq!(a.code, 0);
    assert_eq!(sub(&mut b, &s, "room/#", 0), [0]);
    assert_eq!(sub(&mut b, &s, "hall/#", 0), [0x87]);
    let (p, _) = connect_with(&mut b, 5, "p", true, login);
    send(&mut b, &p, publish("room/a", "yes", 0, 0, false), 0);
    send(&mut b, &p, publish("room/private", "no", 1, 5, false), 0);
    assert!(matches!(
        recv(&mut b, &p)[..],
        [Packet::PubAck(Ack { reason: 0x87, .. })]
    ));
    assert_eq!(
        payloads(&recv(&mut b, &s)),
        [("room/a".into(), "yes".into(), 0)]
    );
}

#[test]
fn connection_limits_and_silent_connections() {
    let mut b = Broker::new(
        Config {
            sys_interval: 0,
            max_connections: 2,
            connect_timeout: 5,
            ..Config::default()
        },
        0,
    );
    let a = b.open("a".into(), 0).unwrap();
    let _b2 = b.open("b".into(), 0).unwrap();
    assert!(b.open("c".into(), 0).is_none());
    // A connection that never sends CONNECT is closed after the timeout.
    b.tick(6 * S);
    assert!(b.wants_close(a));
}

/// Found by fuzzing the codec: 3.1.1 acknowledgements with codes the
/// protocol does not have decoded into packets that encoded differently.
#[test]
fn v4_acknowledgement_codes_are_checked() {
    assert!(decode(0x90, &[0, 1, 0x35], 4).is_err(), "SUBACK code 0x35");
    assert!(
        decode(0xb0, &[0, 1, 0], 4).is_err(),
        "UNSUBACK with a payload"
    );
    assert!(decode(0x20, &[0, 0x20], 4).is_err(), "CONNACK code 0x20");
    let Packet::ConnAck(a) = decode(0x20, &[0, 1], 4).unwrap() else {
        panic!()
    };
    assert_eq!(
        a.code, 0x84,
        "return code 1 is v5's unsupported protocol version"
    );
    let mut out = Vec::new();
    encode(&Packet::ConnAck(a), 4, &mut out);
    assert_eq!(out, [0x20, 2, 0, 1]);
}

#[test]
fn retained_messages_and_persistent_sessions_survive_a_snapshot() {
    let mut b = broker();
    // An offline persistent subscriber with QoS 1 messages queued for it.
    let (s, _) = connect_with(&mut b, 4, "keeper", false, |_| {});
    assert_eq!(sub(&mut b, &s, "plant/+/temp", 1), vec![1]);
    let s_id = s.id;
    b.closed(s_id, S);
    let p = connect(&mut b, 5, "pub");
    let before = b.changes();
    send(
        &mut b,
        &p,
        publish("plant/a/temp", "21.5", 1, 1, true),
        2 * S,
    );
    send(
        &mut b,
        &p,
        publish("plant/b/temp", "19.0", 1, 2, false),
        2 * S,
    );
    assert!(
        b.changes() > before,
        "publishing QoS 1 and retained messages counts as changes"
    );
    let snap = b.snapshot(3 * S);

    // A new broker (a restarted machine) restores it.
    let mut b2 = broker();
    let got = b2.restore(&snap, 0).unwrap();
    assert_eq!((got.retained, got.sessions, got.messages), (1, 1, 2));
    // The subscriber comes back: its session is present, its messages come.
    let (s2, ack) = connect_with(&mut b2, 4, "keeper", false, |_| {});
    assert!(ack.session_present);
    let msgs = payloads(&recv(&mut b2, &s2));
    assert_eq!(
        msgs,
        vec![
            ("plant/a/temp".into(), "21.5".into(), 1),
            ("plant/b/temp".into(), "19.0".into(), 1)
        ]
    );
    // A new subscriber gets the retained message.
    let n = connect(&mut b2, 4, "new");
    sub(&mut b2, &n, "plant/#", 0);
    assert_eq!(
        payloads(&recv(&mut b2, &n)),
        vec![("plant/a/temp".into(), "21.5".into(), 0)]
    );
    // The restored session keeps its subscription.
    send(&mut b2, &n, publish("plant/c/temp", "7", 1, 3, false), S);
    assert_eq!(
        payloads(&recv(&mut b2, &s2)),
        vec![("plant/c/temp".into(), "7".into(), 1)]
    );
}

/// QoS 2 in flight both ways survives a snapshot: a message the broker
/// sent a persistent subscriber that never acknowledged it is sent again
/// (DUP, same packet identifier) after the restore; one whose PUBREC came
/// gets its PUBREL again; and a publisher's QoS 2 message the broker took
/// (PUBREC sent, PUBREL not yet come) is not delivered twice when the
/// publisher sends it again with DUP.
#[test]
fn qos2_messages_in_flight_survive_a_snapshot() {
    let mut b = broker();
    let (s, _) = connect_with(&mut b, 4, "q2sub", false, |_| {});
    assert_eq!(sub(&mut b, &s, "t/#", 2), vec![2]);
    let (p, _) = connect_with(&mut b, 4, "q2pub", false, |_| {});
    send(&mut b, &p, publish("t/a", "one", 2, 7, false), S);
    send(&mut b, &p, publish("t/b", "two", 2, 8, false), S);
    // The publisher got PUBRECs and sends no PUBREL yet.
    assert!(recv(&mut b, &p)
        .iter()
        .any(|x| matches!(x, Packet::PubRec(_))));
    let got = recv(&mut b, &s);
    let pids: Vec<u16> = got
        .iter()
        .filter_map(|x| match x {
            Packet::Publish(m) => Some(m.pid),
            _ => None,
        })
        .collect();
    assert_eq!(payloads(&got).len(), 2, "{got:?}");
    // The subscriber acknowledges the second only as far as PUBREC.
    send(
        &mut b,
        &s,
        Packet::PubRec(Ack {
            pid: pids[1],
            reason: 0,
            props: Props::default(),
        }),
        S,
    );
    let rel = recv(&mut b, &s);
    assert!(
        rel.iter()
            .any(|x| matches!(x, Packet::PubRel(a) if a.pid == pids[1])),
        "{rel:?}"
    );
    b.closed(s.id, 2 * S);
    b.closed(p.id, 2 * S);
    let snap = b.snapshot(3 * S);

    let mut b2 = broker();
    b2.restore(&snap, 0).unwrap();
    let (s2, ack) = connect_with(&mut b2, 4, "q2sub", false, |_| {});
    assert!(ack.session_present);
    let again = recv(&mut b2, &s2);
    let resent: Vec<(u16, bool, String)> = again
        .iter()
        .filter_map(|x| match x {
            Packet::Publish(m) => {
                Some((m.pid, m.dup, String::from_utf8(m.payload.clone()).unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        resent,
        vec![(pids[0], true, "one".to_string())],
        "{again:?}"
    );
    assert!(
        again
            .iter()
            .any(|x| matches!(x, Packet::PubRel(a) if a.pid == pids[1])),
        "{again:?}"
    );
    // The publisher comes back and sends its first message again (DUP):
    // the broker answers PUBREC and does not deliver it a second time.
    let (p2, ack) = connect_with(&mut b2, 4, "q2pub", false, |_| {});
    assert!(ack.session_present);
    let mut dup = publish("t/a", "one", 2, 7, false);
    if let Packet::Publish(m) = &mut dup {
        m.dup = true;
    }
    send(&mut b2, &p2, dup, S);
    assert!(recv(&mut b2, &p2)
        .iter()
        .any(|x| matches!(x, Packet::PubRec(a) if a.pid == 7)));
    assert!(payloads(&recv(&mut b2, &s2)).is_empty(), "delivered twice");
}

#[test]
fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let mut b = broker();
    let (s, _) = connect_with(&mut b, 4, "keeper", false, |_| {});
    sub(&mut b, &s, "t", 1);
    let p = connect(&mut b, 4, "pub");
    send(&mut b, &p, publish("t", "x", 1, 1, true), 0);
    let snap = b.snapshot(0);
    assert!(broker()
        .restore(b"nonsense", 0)
        .unwrap_err()
        .contains("not a Kiln MQTT persistence file"));
    // Every cut, and every flipped byte, is either refused or restores
    // something consistent; never a panic.
    for n in 0..snap.len() {
        let mut b2 = broker();
        assert!(
            b2.restore(&snap[..n], 0).is_err(),
            "a file cut at {n} was accepted"
        );
        assert_eq!(b2.memory_used(), 0);
    }
    for i in 0..snap.len() {
        let mut bad = snap.clone();
        bad[i] ^= 0xa5;
        let _ = broker().restore(&bad, 0);
    }
    let mut long = snap.clone();
    long.push(0);
    assert!(broker()
        .restore(&long, 0)
        .unwrap_err()
        .contains("after the end"));
}

#[test]
fn shared_subscriptions_take_turns() {
    let mut b = broker();
    let (w1, ack) = connect_with(&mut b, 5, "w1", true, |_| {});
    // CONNACK no longer says shared subscriptions are unavailable.
    assert_eq!(ack.props.num(prop::SHARED_SUB_AVAILABLE), None);
    let (w2, _) = connect_with(&mut b, 4, "w2", false, |_| {});
    let all = connect(&mut b, 5, "all");
    let p = connect(&mut b, 5, "pub");
    send(&mut b, &p, publish("jobs/old", "kept", 0, 0, true), 0);
    assert_eq!(sub(&mut b, &w1, "$share/workers/jobs/#", 1), [1]);
    assert_eq!(sub(&mut b, &w2, "$share/workers/jobs/#", 1), [1]);
    assert_eq!(sub(&mut b, &all, "jobs/#", 1), [1]);
    // No retained messages for a shared subscription.
    assert!(payloads(&recv(&mut b, &w1)).is_empty());
    recv(&mut b, &all);
    for i in 0..6 {
        send(
            &mut b,
            &p,
            publish("jobs/new", &format!("{i}"), 0, 0, false),
            0,
        );
    }
    let (g1, g2) = (payloads(&recv(&mut b, &w1)), payloads(&recv(&mut b, &w2)));
    assert_eq!((g1.len(), g2.len()), (3, 3), "{g1:?} {g2:?}");
    let mut seen: Vec<String> = g1.iter().chain(&g2).map(|m| m.1.clone()).collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2", "3", "4", "5"]);
    // The ordinary subscriber gets every one.
    assert_eq!(payloads(&recv(&mut b, &all)).len(), 6);
    // A member that went away (its session kept) is passed over while
    // another is connected.
    b.closed(w2.id, 0);
    for i in 0..2 {
        send(
            &mut b,
            &p,
            publish("jobs/new", &format!("late{i}"), 0, 0, false),
            0,
        );
    }
    assert_eq!(payloads(&recv(&mut b, &w1)).len(), 2);
    // Malformed shared filters, and no-local on one (a protocol error).
    assert_eq!(sub(&mut b, &w1, "$share/workers", 0), [0x8f]);
    assert_eq!(sub(&mut b, &w1, "$share//jobs", 0), [0x8f]);
    assert_eq!(sub(&mut b, &w1, "$share/a+b/jobs", 0), [0x8f]);
    send(
        &mut b,
        &w1,
        Packet::Subscribe(Subscribe {
            pid: 2,
            filters: vec![(
                "$share/g/x".into(),
                SubOpts {
                    no_local: true,
                    ..SubOpts::default()
                },
            )],
            props: Props::default(),
        }),
        0,
    );
    assert!(recv(&mut b, &w1)
        .iter()
        .any(|p| matches!(p, Packet::Disconnect(d) if d.reason == 0x82)));
}

#[test]
fn a_subscription_in_the_same_pass_as_a_publish_takes_effect_first() {
    let mut b = broker();
    // The publisher's connection comes first in the broker's order.
    let p = connect(&mut b, 5, "pub");
    let s = connect(&mut b, 5, "sub");
    let mut bytes = Vec::new();
    encode(&publish("race/x", "first", 0, 0, false), 5, &mut bytes);
    b.receive(p.id, &bytes, 0);
    let mut bytes = Vec::new();
    encode(
        &Packet::Subscribe(Subscribe {
            pid: 1,
            filters: vec![("race/#".into(), SubOpts::default())],
            props: Props::default(),
        }),
        5,
        &mut bytes,
    );
    b.receive(s.id, &bytes, 0);
    b.process(0);
    let got = recv(&mut b, &s);
    assert!(got.iter().any(|p| matches!(p, Packet::SubAck(_))));
    assert_eq!(
        payloads(&got),
        [("race/x".to_string(), "first".to_string(), 0)]
    );
}
