//! MQTT 3.1.1 and 5.0 packets: decoding from a byte stream and encoding.
//!
//! One set of types serves both versions; the version (4 for 3.1.1, 5 for
//! 5.0) decides whether properties and reason codes are on the wire.

use alloc::string::String;
use alloc::vec::Vec;

/// Why bytes are not a valid packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not MQTT: a length, string or field is wrong (v5 reason 0x81).
    Malformed(&'static str),
    /// Valid bytes that break the protocol's rules (v5 reason 0x82).
    Protocol(&'static str),
    /// Larger than the maximum packet size (v5 reason 0x95).
    TooLarge(usize),
    /// A protocol level other than 4 (3.1.1) or 5 (5.0).
    Version(u8),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Malformed(w) => write!(f, "malformed packet: {w}"),
            Error::Protocol(w) => write!(f, "protocol error: {w}"),
            Error::TooLarge(n) => write!(
                f,
                "packet of {n} bytes is larger than the maximum packet size"
            ),
            Error::Version(v) => write!(f, "unsupported protocol level {v}"),
        }
    }
}

impl Error {
    /// The MQTT 5 reason code that goes with the error.
    pub fn reason(&self) -> u8 {
        match self {
            Error::Malformed(_) => 0x81,
            Error::Protocol(_) => 0x82,
            Error::TooLarge(_) => 0x95,
            Error::Version(_) => 0x84,
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

/// An MQTT 5 property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// MQTT 5 properties, in wire order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, Value)>);

/// Property identifiers used by the broker.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0b;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const REASON_STRING: u8 = 0x1f;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
    pub const SUB_ID_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUB_AVAILABLE: u8 = 0x2a;
}

/// The wire type of each property identifier (None: not a property).
fn kind(id: u8) -> Option<u8> {
    // 0: byte, 1: u16, 2: u32, 3: varint, 4: string, 5: binary, 6: pair
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 0,
        0x13 | 0x21 | 0x22 | 0x23 => 1,
        0x02 | 0x11 | 0x18 | 0x27 => 2,
        0x0b => 3,
        0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => 4,
        0x09 | 0x16 => 5,
        0x26 => 6,
        _ => return None,
    })
}

impl Props {
    pub fn get(&self, id: u8) -> Option<&Value> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// A numeric property (byte, u16, u32 or varint).
    pub fn num(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Value::Byte(v) => Some(*v as u32),
            Value::U16(v) => Some(*v as u32),
            Value::U32(v) | Value::VarInt(v) => Some(*v),
            _ => None,
        }
    }

    pub fn set(&mut self, id: u8, v: Value) {
        self.remove(id);
        self.0.push((id, v));
    }

    pub fn remove(&mut self, id: u8) {
        self.0.retain(|(i, _)| *i != id);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// 4 (3.1.1) or 5 (5.0).
    pub version: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// v5 reason code; encoded as the matching 3.1.1 return code for v4.
    pub code: u8,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// 0 for QoS 0.
    pub pid: u16,
    pub payload: Vec<u8>,
    pub props: Props,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub pid: u16,
    pub reason: u8,
    pub props: Props,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub pid: u16,
    pub filters: Vec<(String, SubOpts)>,
    pub props: Props,
}

/// SUBACK and UNSUBACK: one code per filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub pid: u16,
    pub codes: Vec<u8>,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pid: u16,
    pub filters: Vec<String>,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: u8,
    pub props: Props,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(SubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Disconnect),
}

/// Reads fields from a packet's body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.at
    }

    fn u8(&mut self) -> Result<u8> {
        let v = *self
            .b
            .get(self.at)
            .ok_or(Error::Malformed("packet ends early"))?;
        self.at += 1;
        Ok(v)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn varint(&mut self) -> Result<u32> {
        let mut v = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.left() < n {
            return Err(Error::Malformed("field longer than the packet"));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn bin(&mut self) -> Result<Vec<u8>> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    fn str(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let s = core::str::from_utf8(self.take(n)?)
            .map_err(|_| Error::Malformed("string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(Error::Malformed("string contains U+0000"));
        }
        Ok(s.into())
    }

    fn props(&mut self, v5: bool) -> Result<Props> {
        if !v5 {
            return Ok(Props::default());
        }
        let len = self.varint()? as usize;
        let end = self
            .at
            .checked_add(len)
            .filter(|&e| e <= self.b.len())
            .ok_or(Error::Malformed("properties longer than the packet"))?;
        let mut p = Props::default();
        while self.at < end {
            let id = self.varint()?;
            let id = u8::try_from(id).map_err(|_| Error::Malformed("unknown property"))?;
            let v = match kind(id).ok_or(Error::Malformed("unknown property"))? {
                0 => Value::Byte(self.u8()?),
                1 => Value::U16(self.u16()?),
                2 => Value::U32(self.u32()?),
                3 => Value::VarInt(self.varint()?),
                4 => Value::Str(self.str()?),
                5 => Value::Bin(self.bin()?),
                _ => Value::Pair(self.str()?, self.str()?),
            };
            if id != prop::USER_PROPERTY && id != prop::SUBSCRIPTION_ID && p.get(id).is_some() {
                return Err(Error::Protocol("a property appears twice"));
            }
            p.0.push((id, v));
        }
        if self.at != end {
            return Err(Error::Malformed("properties overrun their length"));
        }
        Ok(p)
    }
}

/// Splits the next packet off `buf`: its first byte and body, and how many
/// bytes it took. None while the packet is incomplete.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<(u8, &[u8], usize)>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i == 5 {
            return Err(Error::Malformed("remaining length longer than 4 bytes"));
        }
    }
    if i + len > max {
        return Err(Error::TooLarge(i + len));
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((buf[0], &buf[i..i + len], i + len)))
}

/// Decodes one packet's first byte and body. `version` is the session's
/// (0 before CONNECT: only CONNECT is valid then).
pub fn decode(first: u8, body: &[u8], version: u8) -> Result<Packet> {
    let v5 = version == 5;
    let mut r = Reader { b: body, at: 0 };
    let flags = first & 0x0f;
    let ty = first >> 4;
    if version == 0 && ty != 1 {
        return Err(Error::Protocol("the first packet must be CONNECT"));
    }
    let fixed = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(Error::Malformed("reserved flags are wrong"))
        }
    };
    let p = match ty {
        1 => {
            fixed(0)?;
            if version != 0 {
                return Err(Error::Protocol("a second CONNECT"));
            }
            let name = r.str().map_err(|_| Error::Malformed("bad protocol name"))?;
            let level = r.u8()?;
            if name != "MQTT" {
                return Err(if name == "MQIsdp" {
                    Error::Version(3)
                } else {
                    Error::Malformed("protocol name is not MQTT")
                });
            }
            if level != 4 && level != 5 {
                return Err(Error::Version(level));
            }
            let cf = r.u8()?;
            if cf & 1 != 0 {
                return Err(Error::Malformed("reserved CONNECT flag set"));
            }
            let keep_alive = r.u16()?;
            let props = r.props(level == 5)?;
            let client_id = r.str()?;
            let will_flag = cf & 0x04 != 0;
            let will_qos = (cf >> 3) & 3;
            let will_retain = cf & 0x20 != 0;
            if !will_flag && (will_qos != 0 || will_retain) {
                return Err(Error::Malformed("will QoS or retain without a will"));
            }
            if will_qos > 2 {
                return Err(Error::Malformed("will QoS 3"));
            }
            let will = if will_flag {
                let props = r.props(level == 5)?;
                let topic = r.str()?;
                if topic.is_empty() || topic.contains(['+', '#']) {
                    return Err(Error::Protocol("will topic is not a valid topic name"));
                }
                let payload = r.bin()?;
                Some(Will {
                    topic,
                    payload,
                    qos: will_qos,
                    retain: will_retain,
                    props,
                })
            } else {
                None
            };
            let username = if cf & 0x80 != 0 { Some(r.str()?) } else { None };
            if level == 4 && cf & 0x40 != 0 && username.is_none() {
                return Err(Error::Protocol("password without a user name"));
            }
            let password = if cf & 0x40 != 0 { Some(r.bin()?) } else { None };
            Packet::Connect(Connect {
                version: level,
                client_id,
                clean: cf & 0x02 != 0,
                keep_alive,
                username,
                password,
                will,
                props,
            })
        }
        2 => {
            fixed(0)?;
            let session_present = r.u8()? & 1 != 0;
            let code = r.u8()?;
            // A 3.1.1 return code is read as the v5 reason it stands for.
            let code = if v5 { code } else { v5_connack(code)? };
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                props: r.props(v5)?,
            })
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(Error::Malformed("PUBLISH with QoS 3"));
            }
            let dup = flags & 8 != 0;
            if qos == 0 && dup {
                return Err(Error::Malformed("DUP set on a QoS 0 PUBLISH"));
            }
            let topic = r.str()?;
            if topic.contains(['+', '#']) {
                return Err(Error::Protocol("wildcard in a PUBLISH topic"));
            }
            let pid = if qos > 0 { r.u16()? } else { 0 };
            if qos > 0 && pid == 0 {
                return Err(Error::Malformed("packet identifier 0"));
            }
            let props = r.props(v5)?;
            let payload = body[r.at..].to_vec();
            Packet::Publish(Publish {
                dup,
                qos,
                retain: flags & 1 != 0,
                topic,
                pid,
                payload,
                props,
            })
        }
        4..=7 => {
            fixed(if ty == 6 { 2 } else { 0 })?;
            let pid = r.u16()?;
            let (reason, props) = if v5 && r.left() > 0 {
                (
                    r.u8()?,
                    if r.left() > 0 {
                        r.props(true)?
                    } else {
                        Props::default()
                    },
                )
            } else {
                (0, Props::default())
            };
            let a = Ack { pid, reason, props };
            match ty {
                4 => Packet::PubAck(a),
                5 => Packet::PubRec(a),
                6 => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            }
        }
        8 => {
            fixed(2)?;
            let pid = r.u16()?;
            if pid == 0 {
                return Err(Error::Malformed("packet identifier 0"));
            }
            let props = r.props(v5)?;
            let mut filters = Vec::new();
            while r.left() > 0 {
                let f = r.str()?;
                let o = r.u8()?;
                if (!v5 && o & 0xfc != 0)
                    || (v5 && o & 0xc0 != 0)
                    || o & 3 == 3
                    || (o >> 4) & 3 == 3
                {
                    return Err(Error::Malformed("bad subscription options"));
                }
                filters.push((
                    f,
                    SubOpts {
                        qos: o & 3,
                        no_local: o & 4 != 0,
                        retain_as_published: o & 8 != 0,
                        retain_handling: (o >> 4) & 3,
                    },
                ));
            }
            if filters.is_empty() {
                return Err(Error::Protocol("SUBSCRIBE without a topic filter"));
            }
            Packet::Subscribe(Subscribe {
                pid,
                filters,
                props,
            })
        }
        10 => {
            fixed(2)?;
            let pid = r.u16()?;
            let props = r.props(v5)?;
            let mut filters = Vec::new();
            while r.left() > 0 {
                filters.push(r.str()?);
            }
            if filters.is_empty() {
                return Err(Error::Protocol("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                pid,
                filters,
                props,
            })
        }
        9 | 11 => {
            let pid = r.u16()?;
            let props = r.props(v5)?;
            let codes = body[r.at..].to_vec();
            // 3.1.1: a SUBACK's return codes are 0-2 or 0x80, an UNSUBACK
            // has none.
            if !v5 && ty == 9 && codes.iter().any(|&c| c > 2 && c != 0x80) {
                return Err(Error::Malformed(
                    "SUBACK return code other than 0, 1, 2 or 0x80",
                ));
            }
            if !v5 && ty == 11 && !codes.is_empty() {
                return Err(Error::Malformed("UNSUBACK with a payload"));
            }
            let a = SubAck { pid, codes, props };
            if ty == 9 {
                Packet::SubAck(a)
            } else {
                Packet::UnsubAck(a)
            }
        }
        12 | 13 => {
            fixed(0)?;
            if !body.is_empty() {
                return Err(Error::Malformed("PINGREQ/PINGRESP with a body"));
            }
            if ty == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 | 15 => {
            fixed(0)?;
            if ty == 15 && !v5 {
                return Err(Error::Malformed("AUTH is MQTT 5 only"));
            }
            let (reason, props) = if v5 && r.left() > 0 {
                (
                    r.u8()?,
                    if r.left() > 0 {
                        r.props(true)?
                    } else {
                        Props::default()
                    },
                )
            } else {
                (0, Props::default())
            };
            let d = Disconnect { reason, props };
            if ty == 14 {
                Packet::Disconnect(d)
            } else {
                Packet::Auth(d)
            }
        }
        _ => return Err(Error::Malformed("reserved packet type")),
    };
    if r.left() > 0
        && !matches!(
            p,
            Packet::Publish(_) | Packet::SubAck(_) | Packet::UnsubAck(_)
        )
        && ty != 8
        && ty != 10
    {
        return Err(Error::Malformed("bytes after the packet's fields"));
    }
    Ok(p)
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn put_props(out: &mut Vec<u8>, p: &Props) {
    let mut b = Vec::new();
    for (id, v) in &p.0 {
        put_varint(&mut b, *id as u32);
        match v {
            Value::Byte(x) => b.push(*x),
            Value::U16(x) => b.extend_from_slice(&x.to_be_bytes()),
            Value::U32(x) => b.extend_from_slice(&x.to_be_bytes()),
            Value::VarInt(x) => put_varint(&mut b, *x),
            Value::Str(s) => put_str(&mut b, s.as_bytes()),
            Value::Bin(s) => put_str(&mut b, s),
            Value::Pair(k, v) => {
                put_str(&mut b, k.as_bytes());
                put_str(&mut b, v.as_bytes());
            }
        }
    }
    put_varint(out, b.len() as u32);
    out.extend_from_slice(&b);
}

/// The 3.1.1 CONNACK return code for a v5 reason code.
/// The v5 reason code for a 3.1.1 CONNACK return code.
fn v5_connack(code: u8) -> Result<u8> {
    Ok(match code {
        0 => 0,
        1 => 0x84,
        2 => 0x85,
        3 => 0x88,
        4 => 0x86,
        5 => 0x87,
        _ => return Err(Error::Malformed("CONNACK return code above 5")),
    })
}

fn v4_connack(code: u8) -> u8 {
    match code {
        0 => 0,
        0x84 => 1,
        0x85 => 2,
        0x88 | 0x89 | 0x97 => 3,
        0x86 => 4,
        _ => 5,
    }
}

/// Appends `p`'s bytes for a session of `version` (4 or 5).
pub fn encode(p: &Packet, version: u8, out: &mut Vec<u8>) {
    let v5 = version == 5;
    let mut body = Vec::new();
    let first: u8 = match p {
        Packet::Connect(c) => {
            put_str(&mut body, b"MQTT");
            body.push(c.version);
            let mut f = 0u8;
            if c.clean {
                f |= 2;
            }
            if let Some(w) = &c.will {
                f |= 4 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if c.password.is_some() {
                f |= 0x40;
            }
            if c.username.is_some() {
                f |= 0x80;
            }
            body.push(f);
            body.extend_from_slice(&c.keep_alive.to_be_bytes());
            if c.version == 5 {
                put_props(&mut body, &c.props);
            }
            put_str(&mut body, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if c.version == 5 {
                    put_props(&mut body, &w.props);
                }
                put_str(&mut body, w.topic.as_bytes());
                put_str(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u.as_bytes());
            }
            if let Some(pw) = &c.password {
                put_str(&mut body, pw);
            }
            0x10
        }
        Packet::ConnAck(c) => {
            body.push(c.session_present as u8);
            body.push(if v5 { c.code } else { v4_connack(c.code) });
            if v5 {
                put_props(&mut body, &c.props);
            }
            0x20
        }
        Packet::Publish(m) => {
            put_str(&mut body, m.topic.as_bytes());
            if m.qos > 0 {
                body.extend_from_slice(&m.pid.to_be_bytes());
            }
            if v5 {
                put_props(&mut body, &m.props);
            }
            body.extend_from_slice(&m.payload);
            0x30 | (m.dup as u8) << 3 | m.qos << 1 | m.retain as u8
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            body.extend_from_slice(&a.pid.to_be_bytes());
            if v5 && (a.reason != 0 || !a.props.is_empty()) {
                body.push(a.reason);
                if !a.props.is_empty() {
                    put_props(&mut body, &a.props);
                }
            }
            match p {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            body.extend_from_slice(&s.pid.to_be_bytes());
            if v5 {
                put_props(&mut body, &s.props);
            }
            for (f, o) in &s.filters {
                put_str(&mut body, f.as_bytes());
                body.push(
                    o.qos
                        | (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | o.retain_handling << 4,
                );
            }
            0x82
        }
        Packet::SubAck(a) | Packet::UnsubAck(a) => {
            body.extend_from_slice(&a.pid.to_be_bytes());
            if v5 {
                put_props(&mut body, &a.props);
            }
            // 3.1.1 UNSUBACK has no payload; its SUBACK codes are 0-2 or 0x80.
            if matches!(p, Packet::SubAck(_)) {
                body.extend(a.codes.iter().map(|&c| if v5 || c < 3 { c } else { 0x80 }));
                0x90
            } else {
                if v5 {
                    body.extend_from_slice(&a.codes);
                }
                0xb0
            }
        }
        Packet::Unsubscribe(u) => {
            body.extend_from_slice(&u.pid.to_be_bytes());
            if v5 {
                put_props(&mut body, &u.props);
            }
            for f in &u.filters {
                put_str(&mut body, f.as_bytes());
            }
            0xa2
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 && (d.reason != 0 || !d.props.is_empty()) {
                body.push(d.reason);
                put_props(&mut body, &d.props);
            }
            if matches!(p, Packet::Disconnect(_)) {
                0xe0
            } else {
                0xf0
            }
        }
    };
    out.push(first);
    put_varint(out, body.len() as u32);
    out.extend_from_slice(&body);
}
