//! The MQTT broker driven by up to four clients doing anything in any
//! order: well-formed packets (connect, subscribe, publish at every QoS,
//! acknowledgements, wills, persistent sessions, disconnects), raw bytes,
//! dropped connections and the passing of time. The broker must never
//! panic, everything it sends must be packets its own codec reads, and
//! its persistence snapshot must restore into the same state.
//!
//! The input is a list of operations: one byte chooses the client and the
//! operation, the bytes after it its arguments.
#![no_main]

use kiln_mqtt::broker::{Broker, ConnId};
use kiln_mqtt::codec::*;
use kiln_mqtt::config::Config;
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 6] = ["a", "a/b", "a/+", "#", "$SYS/#", "a/b/c"];

struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        a
    }
}

/// Checks that `out` is a sequence of whole packets in `version` (or in the
/// version a CONNECT in raw bytes asked for). The last may be cut when the
/// broker dropped the rest of a closing client's output (`cut_ok`).
fn check_output(out: &[u8], version: u8, cut_ok: bool) {
    let mut at = 0;
    while at < out.len() {
        let Some((first, body, used)) = frame(&out[at..], usize::MAX).expect("broker output frames") else {
            assert!(cut_ok, "broker output ends inside a packet");
            return;
        };
        let readable = [version, 3, 4, 5].iter().any(|&v| decode(first, body, v).is_ok());
        assert!(readable, "broker sent a packet it cannot read: {:?}", decode(first, body, version));
        at += used;
    }
}

/// The client reads the rest of its output, and all it read is checked.
/// A closing client that did not read for 5 s loses what was left (the
/// broker's `tick`), so its last packet may be cut.
fn finish(b: &mut Broker, id: ConnId, version: u8, read: &mut Vec<u8>) {
    let cut_ok = b.wants_close(id);
    if let Some(out) = b.output(id) {
        read.extend_from_slice(out);
        let n = out.len();
        b.consumed(id, n);
    }
    check_output(read, version, cut_ok);
    read.clear();
}

fuzz_target!(|data: &[u8]| {
    let cfg = Config { max_queued: 8, max_inflight: 4, max_connections: 4, ..Config::default() };
    let mut b = Broker::new(cfg, 0);
    let mut conns: [Option<(ConnId, u8)>; 4] = [None; 4];
    // What each client has read so far: whole packets, checked when it goes.
    let mut read: [Vec<u8>; 4] = Default::default();
    let mut now = 0u64;
    let mut ops = Ops(data);
    while let Some(op) = ops.byte() {
        let slot = (op & 3) as usize;
        let arg = ops.byte().unwrap_or(0);
        let topic = TOPICS[arg as usize % TOPICS.len()].to_string();
        let qos = (arg >> 3) % 3;
        let pid = u16::from(arg >> 5) + 1;
        let Some((id, v)) = conns[slot] else {
            let v = if op & 4 == 0 { 4 } else { 5 };
            conns[slot] = b.open(format!("peer{slot}"), now).map(|id| (id, v));
            read[slot].clear();
            continue;
        };
        let packet = match op >> 2 {
            0 => Some(Packet::Connect(Connect {
                version: v,
                client_id: format!("c{}", arg % 3),
                clean: arg & 0x80 == 0,
                keep_alive: u16::from(arg & 7),
                username: None,
                password: None,
                will: (arg & 0x40 != 0).then(|| Will { topic: topic.clone(), payload: b"gone".to_vec(), qos, retain: arg & 1 == 1, props: Props::default() }),
                props: Props::default(),
            })),
            1 => Some(Packet::Subscribe(Subscribe { pid, filters: vec![(topic, SubOpts { qos, no_local: arg & 1 == 1, ..SubOpts::default() })], props: Props::default() })),
            2 => {
                let len = ops.byte().unwrap_or(0) as usize;
                let payload = ops.bytes(len).to_vec();
                let topic = topic.replace(['+', '#'], "x");
                Some(Packet::Publish(Publish { dup: false, qos, retain: arg & 1 == 1, topic, pid: if qos == 0 { 0 } else { pid }, payload, props: Props::default() }))
            }
            3 => Some(Packet::PubAck(Ack { pid, reason: 0, props: Props::default() })),
            4 => Some(Packet::PubRec(Ack { pid, reason: 0, props: Props::default() })),
            5 => Some(Packet::PubRel(Ack { pid, reason: 0, props: Props::default() })),
            6 => Some(Packet::PubComp(Ack { pid, reason: 0, props: Props::default() })),
            7 => Some(Packet::Unsubscribe(Unsubscribe { pid, filters: vec![topic], props: Props::default() })),
            8 => Some(Packet::PingReq),
            9 => Some(Packet::Disconnect(Disconnect { reason: arg & 4, props: Props::default() })),
            10 => {
                // Raw bytes, possibly half a packet.
                let raw = ops.bytes(arg as usize).to_vec();
                b.input(id, &raw, now);
                None
            }
            11 => {
                finish(&mut b, id, v, &mut read[slot]);
                b.closed(id, now);
                conns[slot] = None;
                None
            }
            12 => {
                now += u64::from(arg) * 1_000_000;
                b.tick(now);
                None
            }
            _ => {
                // The client reads what it was sent (all or part of it).
                if let Some(out) = b.output(id) {
                    let n = if arg & 1 == 0 { out.len() } else { out.len() / 2 };
                    read[slot].extend_from_slice(&out[..n]);
                    b.consumed(id, n);
                }
                None
            }
        };
        if let Some(p) = packet {
            let mut buf = Vec::new();
            encode(&p, v, &mut buf);
            b.input(id, &buf, now);
        }
        if b.wants_close(id) {
            finish(&mut b, id, v, &mut read[slot]);
            b.closed(id, now);
            conns[slot] = None;
        }
    }
    for (slot, c) in conns.iter().enumerate() {
        if let Some((id, v)) = *c {
            finish(&mut b, id, v, &mut read[slot]);
            b.closed(id, now);
        }
    }
    b.tick(now + 3_600_000_000);
    // Persistence: what the broker saves, a new broker restores, and saves
    // the same bytes again.
    let later = now + 3_600_000_000;
    let snap = b.snapshot(later);
    let mut again = Broker::new(b.cfg.clone(), later);
    again.restore(&snap, later).expect("a broker's own snapshot restores");
    assert_eq!(again.snapshot(later), snap, "a restored broker saves what it restored");
});
