//! The broker's state as bytes, for mosquitto's `persistence`: retained
//! messages and persistent sessions (expiry above zero) with their
//! subscriptions, queued messages, messages in flight and QoS 2 packet
//! identifiers still awaiting PUBREL. $SYS topics, connections and delayed
//! wills are not kept.
//!
//! Kiln's own format (mosquitto's database format is not documented as a
//! stable interface): the magic `KILNMQTT`, a format version, then
//! length-prefixed records in little endian. A message is kept as an MQTT 5
//! PUBLISH packet (so its properties travel with it) and the seconds left
//! before it expires. [`Broker::restore`] checks every length and value: a
//! damaged file is refused with the offset where it went wrong, and
//! nothing of it is used.

use super::{Broker, Flight, Msg, Session};
use crate::codec::{self, Packet, Publish, SubOpts};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

const MAGIC: &[u8; 8] = b"KILNMQTT";
const FORMAT: u32 = 1;
const SECOND: u64 = 1_000_000;

/// What [`Broker::restore`] brought back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub retained: usize,
    pub sessions: usize,
    /// Messages queued or in flight, over all sessions.
    pub messages: usize,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn msg(&mut self, m: &Msg, now: u64) {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: m.qos,
            retain: m.retain,
            topic: m.topic.to_string(),
            pid: if m.qos > 0 { 1 } else { 0 },
            payload: m.payload.to_vec(),
            props: (*m.props).clone(),
        });
        let mut enc = Vec::new();
        codec::encode(&p, 5, &mut enc);
        self.bytes(&enc);
        self.u32(m.expires.map_or(u32::MAX, |e| {
            (e.saturating_sub(now) / SECOND).min(u32::MAX as u64 - 1) as u32
        }));
    }
    fn ids(&mut self, ids: &[u32]) {
        self.u32(ids.len() as u32);
        for &i in ids {
            self.u32(i);
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, String> {
        let at = self.at;
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| format!("text that is not UTF-8 at byte {at}"))
    }
    /// A count of records of at least `min` bytes each: a count the rest of
    /// the file cannot hold is damage, not a reason to reserve memory.
    fn count(&mut self, min: usize) -> Result<usize, String> {
        let at = self.at;
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.data.len() - self.at {
            return Err(format!(
                "a count of {n} at byte {at} is more than the file holds"
            ));
        }
        Ok(n)
    }
    fn msg(&mut self, now: u64) -> Result<Msg, String> {
        let at = self.at;
        let enc = self.bytes()?;
        let bad = |why: &str| format!("a message at byte {at}: {why}");
        let (first, body, used) = codec::frame(enc, usize::MAX)
            .map_err(|e| bad(&e.to_string()))?
            .ok_or_else(|| bad("incomplete packet"))?;
        if used != enc.len() {
            return Err(bad("bytes after the packet"));
        }
        let Packet::Publish(p) = codec::decode(first, body, 5).map_err(|e| bad(&e.to_string()))?
        else {
            return Err(bad("not a PUBLISH packet"));
        };
        let left = self.u32()?;
        let expires = (left != u32::MAX).then(|| now + left as u64 * SECOND);
        Ok(Msg {
            topic: p.topic.as_str().into(),
            payload: p.payload.into(),
            qos: p.qos,
            retain: p.retain,
            props: Arc::new(p.props),
            expires,
        })
    }
    fn ids(&mut self) -> Result<Vec<u32>, String> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
}

fn size(m: &Msg) -> usize {
    m.topic.len() + m.payload.len()
}

impl Broker {
    /// A change to the state [`Broker::snapshot`] keeps was made: the
    /// count grows with every one (for `autosave_on_changes`).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The retained messages and persistent sessions, as bytes.
    pub fn snapshot(&self, now: u64) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.u32(FORMAT);
        let retained: Vec<&Msg> = self
            .retained
            .values()
            .filter(|m| !m.topic.starts_with('$') && m.expires.is_none_or(|e| e > now))
            .collect();
        w.u32(retained.len() as u32);
        for m in retained {
            w.msg(m, now);
        }
        let kept: Vec<(&Arc<str>, &Session)> =
            self.sessions.iter().filter(|(_, s)| s.expiry > 0).collect();
        w.u32(kept.len() as u32);
        for (client, s) in kept {
            w.bytes(client.as_bytes());
            match &s.user {
                Some(u) => {
                    w.u8(1);
                    w.bytes(u.as_bytes());
                }
                None => w.u8(0),
            }
            w.u8(s.version);
            w.u32(s.expiry);
            w.u16(s.receive_max);
            w.u16(s.next_pid);
            w.u32(s.subs.len() as u32);
            for (f, (o, id)) in &s.subs {
                w.bytes(f.as_bytes());
                w.u8(o.qos);
                w.u8(o.no_local as u8 | (o.retain_as_published as u8) << 1);
                w.u8(o.retain_handling);
                w.u32(id.unwrap_or(0));
            }
            w.u32(s.queue.len() as u32);
            for (m, ids) in &s.queue {
                w.msg(m, now);
                w.ids(ids);
            }
            w.u32(s.inflight.len() as u32);
            for (pid, (m, ids, f)) in &s.inflight {
                w.u16(*pid);
                w.u8(match f {
                    Flight::PubAck => 0,
                    Flight::PubRec => 1,
                    Flight::PubComp => 2,
                });
                w.msg(m, now);
                w.ids(ids);
            }
            w.u32(s.qos2_in.len() as u32);
            for &p in &s.qos2_in {
                w.u16(p);
            }
        }
        w.0
    }

    /// Brings back what [`Broker::snapshot`] wrote, into a broker with no
    /// sessions and no retained messages yet. The sessions come back
    /// offline, their expiry counted from now. Nothing changes if the data
    /// is damaged.
    pub fn restore(&mut self, data: &[u8], now: u64) -> Result<Restored, String> {
        let mut r = Reader { data, at: 0 };
        if r.take(8).ok() != Some(&MAGIC[..]) {
            return Err("not a Kiln MQTT persistence file".into());
        }
        let v = r.u32()?;
        if v != FORMAT {
            return Err(format!("format {v}, this broker reads format {FORMAT}"));
        }
        let mut retained = BTreeMap::new();
        for _ in 0..r.count(8)? {
            let m = r.msg(now)?;
            retained.insert(m.topic.to_string(), m);
        }
        let mut sessions = BTreeMap::new();
        let mut messages = 0;
        for _ in 0..r.count(20)? {
            let client: Arc<str> = r.str()?.into();
            let user = match r.u8()? {
                0 => None,
                1 => Some(r.str()?),
                b => return Err(format!("a session flag {b} at byte {}", r.at - 1)),
            };
            let version = r.u8()?;
            if !matches!(version, 3..=5) {
                return Err(format!("protocol version {version} at byte {}", r.at - 1));
            }
            let expiry = r.u32()?;
            let receive_max = r.u16()?.max(1);
            let next_pid = r.u16()?.max(1);
            let mut subs = BTreeMap::new();
            for _ in 0..r.count(11)? {
                let f = r.str()?;
                let (qos, flags, rh) = (r.u8()?.min(2), r.u8()?, r.u8()?.min(2));
                let id = r.u32()?;
                subs.insert(
                    f,
                    (
                        SubOpts {
                            qos,
                            no_local: flags & 1 != 0,
                            retain_as_published: flags & 2 != 0,
                            retain_handling: rh,
                        },
                        (id != 0).then_some(id),
                    ),
                );
            }
            let mut held = 0;
            let mut queue = VecDeque::new();
            for _ in 0..r.count(12)? {
                let m = r.msg(now)?;
                held += size(&m);
                queue.push_back((m, r.ids()?));
            }
            let mut inflight = BTreeMap::new();
            for _ in 0..r.count(15)? {
                let pid = r.u16()?;
                let f = match r.u8()? {
                    0 => Flight::PubAck,
                    1 => Flight::PubRec,
                    2 => Flight::PubComp,
                    b => return Err(format!("a delivery state {b} at byte {}", r.at - 1)),
                };
                let m = r.msg(now)?;
                held += size(&m);
                inflight.insert(pid, (m, r.ids()?, f));
            }
            let mut qos2_in = BTreeSet::new();
            for _ in 0..r.count(2)? {
                qos2_in.insert(r.u16()?);
            }
            messages += queue.len() + inflight.len();
            sessions.insert(
                client,
                Session {
                    conn: None,
                    user,
                    listener: 0,
                    version,
                    subs,
                    queue,
                    inflight,
                    next_pid,
                    qos2_in,
                    expiry,
                    gone_at: Some(now),
                    receive_max,
                    held,
                    delayed_will: None,
                },
            );
        }
        if r.at != data.len() {
            return Err(format!(
                "{} bytes after the end at byte {}",
                data.len() - r.at,
                r.at
            ));
        }
        let out = Restored {
            retained: retained.len(),
            sessions: sessions.len(),
            messages,
        };
        for m in retained.values() {
            self.retained_bytes += size(m);
        }
        for s in sessions.values() {
            self.held += s.held;
        }
        self.retained.extend(retained);
        self.sessions.extend(sessions);
        Ok(out)
    }
}
