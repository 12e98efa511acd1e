//! The broker: connections, sessions, subscriptions, retained messages
//! and QoS flows, with no I/O of its own. The caller feeds it the bytes
//! each connection received ([`Broker::input`]), sends what it queued
//! ([`Broker::output`]), closes connections it marks ([`Broker::wants_close`])
//! and calls [`Broker::tick`] now and then for timeouts. Time is in
//! microseconds from any origin.

use crate::codec::{
    self, prop, Ack, ConnAck, Connect, Disconnect, Error, Packet, Props, Publish, SubAck, SubOpts,
    Value, Will,
};
use crate::config::{Config, Op};
use crate::topic;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

#[path = "persist.rs"]
mod persist;
pub use persist::Restored;

pub type ConnId = u64;

const SECOND: u64 = 1_000_000;

/// A message on its way: shared by every subscriber it goes to.
#[derive(Clone, Debug)]
struct Msg {
    topic: Arc<str>,
    payload: Arc<[u8]>,
    qos: u8,
    retain: bool,
    /// Properties forwarded to subscribers (v5).
    props: Arc<Props>,
    /// When it expires (v5 message expiry interval).
    expires: Option<u64>,
}

struct Conn {
    peer: String,
    /// The user name a TLS client certificate gave (it replaces
    /// CONNECT's user name and password).
    identity: Option<String>,
    rx: Vec<u8>,
    out: Vec<u8>,
    /// 0 until CONNECT.
    version: u8,
    client: Option<Arc<str>>,
    keep_alive_us: u64,
    opened: u64,
    last_rx: u64,
    will: Option<Will>,
    alias_in: BTreeMap<u16, String>,
    /// The listener (port) it came in on; 0 when not said.
    listener: u16,
    /// Topic aliases this broker gave the client's incoming messages (v5:
    /// up to the TopicAliasMaximum its CONNECT allowed; 0, none).
    alias_out: BTreeMap<Arc<str>, u16>,
    alias_out_max: u16,
    /// Largest packet the client accepts.
    max_packet: usize,
    /// Close once `out` is sent.
    close: bool,
    /// When a timeout check first saw `close` with output still unsent.
    closing_since: Option<u64>,
    /// DISCONNECT received: no will.
    clean_exit: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flight {
    /// QoS 1 sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

struct Session {
    conn: Option<ConnId>,
    user: Option<String>,
    /// The listener of its last connection (0: unknown, as after a
    /// restore): its security options apply to deliveries.
    listener: u16,
    version: u8,
    subs: BTreeMap<String, (SubOpts, Option<u32>)>,
    queue: VecDeque<(Msg, Vec<u32>)>,
    inflight: BTreeMap<u16, (Msg, Vec<u32>, Flight)>,
    next_pid: u16,
    qos2_in: BTreeSet<u16>,
    /// Session expiry interval in seconds (u32::MAX: never).
    expiry: u32,
    gone_at: Option<u64>,
    receive_max: u16,
    /// Bytes of the queued and in-flight messages.
    held: usize,
    /// A will waiting for its delay (v5), with when it is due.
    delayed_will: Option<(Will, u64)>,
}

/// Counters (also published under $SYS).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub received: u64,
    pub sent: u64,
    pub dropped: u64,
    pub connections_refused: u64,
}

pub struct Broker {
    pub cfg: Config,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<Arc<str>, Session>,
    retained: BTreeMap<String, Msg>,
    next_conn: ConnId,
    next_client: u64,
    started: u64,
    last_sys: u64,
    pub stats: Stats,
    /// Bytes of messages queued or in flight, over all sessions.
    held: usize,
    /// Bytes waiting in connections' output buffers.
    unsent: usize,
    /// Bytes of retained messages.
    retained_bytes: usize,
    log: Vec<String>,
    /// Changes to what persistence keeps (see [`Broker::changes`]).
    changes: u64,
    /// Shared subscriptions: the next member to get a message, per
    /// `$share/GROUP/FILTER` (round robin).
    share_turn: BTreeMap<String, usize>,
}

/// A shared subscription's group and filter (`$share/GROUP/FILTER`), or
/// None for an ordinary filter; Err for a malformed one.
pub fn shared(f: &str) -> Option<Result<(&str, &str), ()>> {
    let rest = f.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((g, filter))
            if !g.is_empty()
                && !g.contains(['+', '#'])
                && !filter.is_empty()
                && topic::valid_filter(filter) =>
        {
            Ok((g, filter))
        }
        _ => Err(()),
    })
}

impl Broker {
    pub fn new(cfg: Config, now: u64) -> Broker {
        Broker {
            cfg,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            retained: BTreeMap::new(),
            next_conn: 1,
            next_client: 1,
            started: now,
            last_sys: 0,
            stats: Stats::default(),
            held: 0,
            unsent: 0,
            retained_bytes: 0,
            log: Vec::new(),
            changes: 0,
            share_turn: BTreeMap::new(),
        }
    }

    fn say(&mut self, line: String) {
        if self.cfg.verbose && self.log.len() < 1000 {
            self.log.push(line);
        }
    }

    /// Lines to print (connections, disconnections, refusals).
    pub fn take_log(&mut self) -> Vec<String> {
        core::mem::take(&mut self.log)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A new connection from `peer`; None when `max_connections` are open
    /// (the caller closes the socket).
    pub fn open(&mut self, peer: String, now: u64) -> Option<ConnId> {
        self.open_on(peer, 0, now)
    }

    /// A new connection that came in on listener `port` (whose security
    /// options apply to it with per_listener_settings).
    pub fn open_on(&mut self, peer: String, port: u16, now: u64) -> Option<ConnId> {
        if self.conns.len() >= self.cfg.max_connections {
            self.stats.connections_refused += 1;
            self.say(format!(
                "Connection from {peer} refused: {} connections open (max_connections)",
                self.conns.len()
            ));
            return None;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                peer,
                identity: None,
                rx: Vec::new(),
                out: Vec::new(),
                version: 0,
                client: None,
                keep_alive_us: 0,
                opened: now,
                last_rx: now,
                will: None,
                alias_in: BTreeMap::new(),
                listener: port,
                alias_out: BTreeMap::new(),
                alias_out_max: 0,
                max_packet: usize::MAX,
                close: false,
                closing_since: None,
                clean_exit: false,
            },
        );
        Some(id)
    }

    /// Bytes waiting to be sent on `id`; the caller reports what it sent
    /// with [`Broker::consumed`].
    pub fn output(&self, id: ConnId) -> Option<&[u8]> {
        self.conns.get(&id).map(|c| c.out.as_slice())
    }

    /// `n` bytes of `id`'s output were sent.
    pub fn consumed(&mut self, id: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&id) {
            let n = n.min(c.out.len());
            c.out.drain(..n);
            self.unsent -= n;
        }
    }

    /// Bytes of messages held now (queued, in flight, unsent, retained).
    pub fn memory_used(&self) -> usize {
        self.held + self.unsent + self.retained_bytes
    }

    /// Whether the caller should close `id` now (all output sent).
    pub fn wants_close(&self, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| c.close && c.out.is_empty())
    }

    /// Whether `id` has output waiting.
    pub fn has_output(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| !c.out.is_empty())
    }

    fn send(&mut self, id: ConnId, p: &Packet) {
        if let Some(c) = self.conns.get_mut(&id) {
            let v = if c.version == 0 { 4 } else { c.version };
            let at = c.out.len();
            codec::encode(p, v, &mut c.out);
            self.unsent += c.out.len() - at;
        }
    }

    /// Ends a connection because of `why`: a v5 client gets a DISCONNECT
    /// with `reason` first. Its will is published when it closes.
    fn fail(&mut self, id: ConnId, reason: u8, why: &str) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.close {
            return;
        }
        c.close = true;
        let name = c
            .client
            .as_deref()
            .map_or_else(|| format!("<unknown> from {}", c.peer), |s| s.to_string());
        if c.version == 5 {
            self.send(
                id,
                &Packet::Disconnect(Disconnect {
                    reason,
                    props: Props::default(),
                }),
            );
        }
        self.say(format!("Client {name} disconnected: {why}"));
    }

    /// Bytes received on `id`, handled at once.
    pub fn input(&mut self, id: ConnId, data: &[u8], now: u64) {
        self.receive(id, data, now);
        self.drain(id, false, now);
    }

    /// Bytes received on `id`, kept until [`Broker::process`]. An event
    /// loop receives on every connection, then processes: a subscription
    /// that came in during the same pass as another client's PUBLISH then
    /// takes effect first, whatever the connections' order.
    pub fn receive(&mut self, id: ConnId, data: &[u8], now: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.close {
            return;
        }
        c.rx.extend_from_slice(data);
        c.last_rx = now;
    }

    /// Handles what [`Broker::receive`] kept: first, on every connection,
    /// the packets before its first PUBLISH (CONNECT, SUBSCRIBE,
    /// UNSUBSCRIBE, acknowledgements), then the rest. Each connection's
    /// packets keep their order.
    pub fn process(&mut self, now: u64) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.rx.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            self.drain(id, true, now);
        }
        for &id in &ids {
            self.drain(id, false, now);
        }
    }

    /// Handles the complete packets `id` has received (with `early`, only
    /// those before its first PUBLISH).
    fn drain(&mut self, id: ConnId, early: bool, now: u64) {
        let max = self.cfg.max_packet_size;
        loop {
            let (version, rx) = match self.conns.get_mut(&id) {
                Some(c) if !c.close => (c.version, core::mem::take(&mut c.rx)),
                _ => return,
            };
            let r = codec::frame(&rx, max).and_then(|f| match f {
                Some((first, body, used)) => {
                    codec::decode(first, body, version).map(|p| Some((p, used)))
                }
                None => Ok(None),
            });
            match r {
                Ok(Some((Packet::Publish(_), _))) if early => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.rx = rx;
                    }
                    return;
                }
                Ok(Some((p, used))) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.rx = rx;
                        c.rx.drain(..used);
                    }
                    self.handle(id, p, now);
                }
                Ok(None) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.rx = rx;
                    }
                    return;
                }
                Err(e) => {
                    if let (Error::Version(v), 0) = (e, version) {
                        // Refused with CONNACK "unacceptable protocol version" in 3.1.1 form.
                        self.send(
                            id,
                            &Packet::ConnAck(ConnAck {
                                session_present: false,
                                code: 0x84,
                                props: Props::default(),
                            }),
                        );
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.close = true;
                            let peer = c.peer.clone();
                            self.say(format!("Connection from {peer} refused: protocol level {v} is not supported"));
                        }
                        return;
                    }
                    self.fail(id, e.reason(), &e.to_string());
                    return;
                }
            }
        }
    }

    fn handle(&mut self, id: ConnId, p: Packet, now: u64) {
        // Packets that change sessions, subscriptions, queues or retained
        // messages (persistence saves after changes).
        if !matches!(p, Packet::PingReq | Packet::Auth(_))
            && !matches!(&p, Packet::Publish(m) if m.qos == 0 && !m.retain)
        {
            self.changes += 1;
        }
        match p {
            Packet::Connect(c) => self.connect(id, c, now),
            Packet::Publish(m) => self.publish_in(id, m, now),
            Packet::PubAck(a) => self.acked(id, a.pid, Flight::PubAck, now),
            Packet::PubRec(a) => {
                let client = self.client_of(id);
                let known = client
                    .as_ref()
                    .and_then(|c| self.sessions.get_mut(c))
                    .and_then(|s| s.inflight.get_mut(&a.pid))
                    .filter(|f| f.2 == Flight::PubRec);
                match known {
                    Some(f) if a.reason < 0x80 => {
                        f.2 = Flight::PubComp;
                        self.send(
                            id,
                            &Packet::PubRel(Ack {
                                pid: a.pid,
                                reason: 0,
                                props: Props::default(),
                            }),
                        );
                    }
                    Some(_) => self.acked(id, a.pid, Flight::PubRec, now),
                    None => self.send(
                        id,
                        &Packet::PubRel(Ack {
                            pid: a.pid,
                            reason: 0x92,
                            props: Props::default(),
                        }),
                    ),
                }
            }
            Packet::PubRel(a) => {
                let client = self.client_of(id);
                let found = client
                    .as_ref()
                    .and_then(|c| self.sessions.get_mut(c))
                    .is_some_and(|s| s.qos2_in.remove(&a.pid));
                self.send(
                    id,
                    &Packet::PubComp(Ack {
                        pid: a.pid,
                        reason: if found { 0 } else { 0x92 },
                        props: Props::default(),
                    }),
                );
            }
            Packet::PubComp(a) => self.acked(id, a.pid, Flight::PubComp, now),
            Packet::Subscribe(s) => self.subscribe(id, s, now),
            Packet::Unsubscribe(u) => {
                let client = self.client_of(id);
                let mut codes = Vec::new();
                if let Some(s) = client.as_ref().and_then(|c| self.sessions.get_mut(c)) {
                    for f in &u.filters {
                        codes.push(if s.subs.remove(f.as_str()).is_some() {
                            0
                        } else {
                            0x11
                        });
                    }
                }
                self.send(
                    id,
                    &Packet::UnsubAck(SubAck {
                        pid: u.pid,
                        codes,
                        props: Props::default(),
                    }),
                );
            }
            Packet::PingReq => self.send(id, &Packet::PingResp),
            Packet::Disconnect(d) => {
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                // v5 reason 0x04: disconnect, but publish the will.
                c.clean_exit = d.reason != 0x04;
                c.close = true;
                if let (Some(n), Some(client)) =
                    (d.props.num(prop::SESSION_EXPIRY), c.client.clone())
                {
                    if let Some(s) = self.sessions.get_mut(&client) {
                        s.expiry = n;
                    }
                }
                let name = self.conns[&id].client.as_deref().unwrap_or("").to_string();
                self.say(format!("Client {name} disconnected."));
            }
            Packet::Auth(_) => self.fail(id, 0x8c, "enhanced authentication is not supported"),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.fail(id, 0x82, "a server-to-client packet from a client")
            }
        }
    }

    fn client_of(&self, id: ConnId) -> Option<Arc<str>> {
        self.conns.get(&id).and_then(|c| c.client.clone())
    }

    /// Connection `id` is a TLS client whose certificate names it `user`
    /// (mosquitto's use_identity_as_username): that is its user name,
    /// whatever CONNECT says, and no password is asked.
    pub fn set_identity(&mut self, id: ConnId, user: String) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.identity = Some(user);
        }
    }

    fn connect(&mut self, id: ConnId, mut c: Connect, now: u64) {
        let v = c.version;
        let identity = self.conns[&id].identity.clone();
        let peer = self.conns[&id].peer.clone();
        let refuse = |b: &mut Broker, code: u8, why: &str| {
            if let Some(conn) = b.conns.get_mut(&id) {
                conn.version = v;
                conn.close = true;
                conn.clean_exit = true;
            }
            b.send(
                id,
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    props: Props::default(),
                }),
            );
            b.say(format!("Connection from {peer} refused: {why}"));
        };
        let mut assigned = None;
        let client: Arc<str> = if c.client_id.is_empty() {
            if v == 4 && !c.clean {
                return refuse(self, 0x85, "empty client id without a clean session");
            }
            let n = self.next_client;
            self.next_client += 1;
            let name = format!("kiln-{n:x}-{:x}", now & 0xffff_ffff);
            assigned = Some(name.clone());
            name.into()
        } else {
            c.client_id.as_str().into()
        };
        if let Some(user) = identity {
            c.username = Some(user);
            c.password = None;
        } else if let Err(code) = self
            .cfg
            .security(self.conns[&id].listener)
            .authenticate(c.username.as_deref(), c.password.as_deref())
        {
            let why = if code == 0x87 {
                "not authorised (anonymous clients are not allowed)"
            } else {
                "bad user name or password"
            };
            return refuse(self, code, &format!("client {client}: {why}"));
        }
        if let Some(w) = &c.will {
            if let Some(acl) = self.cfg.security(self.conns[&id].listener).acl {
                if !acl.allows(c.username.as_deref(), &client, Op::Publish, &w.topic) {
                    return refuse(
                        self,
                        0x87,
                        &format!(
                            "client {client}: not authorised to publish its will on {}",
                            w.topic
                        ),
                    );
                }
            }
        }
        // A client already connected with this id is taken over: the old
        // connection is closed (by the caller, once told) and its will
        // published now, since it did not say DISCONNECT.
        if let Some(old) = self.sessions.get(&client).and_then(|s| s.conn) {
            if old != id {
                self.fail(old, 0x8e, "session taken over by a new connection");
                let will = self.conns.get_mut(&old).and_then(|c| c.will.take());
                if let Some(w) = will {
                    self.publish_will(&client, w, now);
                }
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.conn = None;
                }
            }
        }
        let keep_alive = c.keep_alive.min(self.cfg.max_keepalive);
        let expiry = if v == 5 {
            c.props.num(prop::SESSION_EXPIRY).unwrap_or(0)
        } else if c.clean {
            0
        } else {
            u32::MAX
        };
        let present = !c.clean && self.sessions.contains_key(&client);
        if !self.sessions.contains_key(&client) && self.sessions.len() >= self.cfg.max_sessions {
            return refuse(
                self,
                0x97,
                &format!(
                    "client {client}: {} sessions kept (max_sessions)",
                    self.sessions.len()
                ),
            );
        }
        if !present {
            if let Some(old) = self.sessions.remove(&client) {
                self.held -= old.held;
            }
        }
        let receive_max = c
            .props
            .num(prop::RECEIVE_MAXIMUM)
            .map_or(65535, |n| n.clamp(1, 65535) as u16);
        let listener = self.conns[&id].listener;
        let s = self
            .sessions
            .entry(client.clone())
            .or_insert_with(|| Session {
                conn: None,
                user: None,
                listener,
                version: v,
                subs: BTreeMap::new(),
                queue: VecDeque::new(),
                inflight: BTreeMap::new(),
                next_pid: 1,
                qos2_in: BTreeSet::new(),
                expiry,
                gone_at: None,
                receive_max,
                held: 0,
                delayed_will: None,
            });
        s.conn = Some(id);
        s.user = c.username.clone();
        s.listener = listener;
        s.version = v;
        s.expiry = expiry;
        s.gone_at = None;
        s.receive_max = receive_max;
        // A delayed will is cancelled when the client comes back.
        s.delayed_will = None;
        let conn = self.conns.get_mut(&id).expect("the connection exists");
        conn.version = v;
        conn.client = Some(client.clone());
        conn.keep_alive_us = keep_alive as u64 * SECOND;
        conn.will = c.will;
        conn.max_packet = c
            .props
            .num(prop::MAXIMUM_PACKET_SIZE)
            .map_or(usize::MAX, |n| n as usize);
        conn.alias_out_max = c
            .props
            .num(prop::TOPIC_ALIAS_MAXIMUM)
            .map_or(0, |n| n.min(u16::MAX as u32) as u16);
        let mut props = Props::default();
        if v == 5 {
            if let Some(a) = assigned {
                props.set(prop::ASSIGNED_CLIENT_ID, Value::Str(a));
            }
            if keep_alive != c.keep_alive {
                props.set(prop::SERVER_KEEP_ALIVE, Value::U16(keep_alive));
            }
            props.set(prop::RECEIVE_MAXIMUM, Value::U16(self.cfg.max_inflight));
            props.set(
                prop::TOPIC_ALIAS_MAXIMUM,
                Value::U16(self.cfg.topic_alias_max),
            );
            props.set(
                prop::MAXIMUM_PACKET_SIZE,
                Value::U32(self.cfg.max_packet_size as u32),
            );
            if !self.cfg.retain_available {
                props.set(prop::RETAIN_AVAILABLE, Value::Byte(0));
            }
        }
        self.send(
            id,
            &Packet::ConnAck(ConnAck {
                session_present: present,
                code: 0,
                props,
            }),
        );
        let user = c
            .username
            .as_deref()
            .map(|u| format!(", u'{u}'"))
            .unwrap_or_default();
        self.say(format!(
            "New client connected from {peer} as {client} (p{}, c{}, k{keep_alive}{user}).",
            if v == 5 { 5 } else { 2 },
            c.clean as u8
        ));
        // Unfinished deliveries go again, then the queue.
        let pending: Vec<(u16, Msg, Vec<u32>, Flight)> = self.sessions[&client]
            .inflight
            .iter()
            .map(|(p, (m, ids, f))| (*p, m.clone(), ids.clone(), *f))
            .collect();
        for (pid, m, ids, f) in pending {
            if f == Flight::PubComp {
                self.send(
                    id,
                    &Packet::PubRel(Ack {
                        pid,
                        reason: 0,
                        props: Props::default(),
                    }),
                );
            } else {
                self.send_publish(id, &m, &ids, pid, true, now);
            }
        }
        self.flush(&client, now);
    }

    fn publish_in(&mut self, id: ConnId, mut m: Publish, now: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (v, client) = (conn.version, conn.client.clone().expect("connected"));
        // Topic aliases (v5).
        if let Some(alias) = m.props.num(prop::TOPIC_ALIAS) {
            let alias = alias as u16;
            if alias == 0 || alias > self.cfg.topic_alias_max {
                return self.fail(id, 0x94, "topic alias out of range");
            }
            if m.topic.is_empty() {
                match conn.alias_in.get(&alias) {
                    Some(t) => m.topic = t.clone(),
                    None => return self.fail(id, 0x82, "unknown topic alias"),
                }
            } else {
                conn.alias_in.insert(alias, m.topic.clone());
            }
            m.props.remove(prop::TOPIC_ALIAS);
        }
        if !topic::valid_name(&m.topic) {
            return self.fail(id, 0x82, "empty topic name");
        }
        self.stats.received += 1;
        let user = self.sessions.get(&client).and_then(|s| s.user.clone());
        let acl = self
            .cfg
            .security(self.conns.get(&id).map_or(0, |c| c.listener))
            .acl;
        let allowed = !m.topic.starts_with('$')
            && acl.is_none_or(|a| a.allows(user.as_deref(), &client, Op::Publish, &m.topic));
        let reason = if allowed { 0 } else { 0x87 };
        if m.qos == 2 {
            let s = self
                .sessions
                .get_mut(&client)
                .expect("a connected client has a session");
            if !s.qos2_in.contains(&m.pid) && s.qos2_in.len() >= self.cfg.max_inflight as usize {
                return self.fail(id, 0x93, "receive maximum exceeded");
            }
            // A repeated QoS 2 PUBLISH is acknowledged but not delivered again.
            let first = s.qos2_in.insert(m.pid);
            self.send(
                id,
                &Packet::PubRec(Ack {
                    pid: m.pid,
                    reason,
                    props: Props::default(),
                }),
            );
            if !first || !allowed {
                if !allowed {
                    self.qos2_refused(&client, m.pid);
                }
                return;
            }
        } else if m.qos == 1 {
            self.send(
                id,
                &Packet::PubAck(Ack {
                    pid: m.pid,
                    reason,
                    props: Props::default(),
                }),
            );
        }
        if !allowed {
            self.say(format!(
                "Client {client}: not authorised to publish on {}",
                m.topic
            ));
            return;
        }
        if v == 5 {
            m.props.remove(prop::SUBSCRIPTION_ID);
        }
        let expires = m
            .props
            .num(prop::MESSAGE_EXPIRY)
            .map(|s| now + s as u64 * SECOND);
        let msg = Msg {
            topic: m.topic.as_str().into(),
            payload: m.payload.into(),
            qos: m.qos,
            retain: m.retain,
            props: Arc::new(m.props),
            expires,
        };
        self.route(Some(&client), msg, now);
    }

    /// A refused QoS 2 message needs no PUBREL to be remembered.
    fn qos2_refused(&mut self, client: &str, pid: u16) {
        if let Some(s) = self.sessions.get_mut(client) {
            s.qos2_in.remove(&pid);
        }
    }

    fn acked(&mut self, id: ConnId, pid: u16, want: Flight, now: u64) {
        let Some(client) = self.client_of(id) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&client) {
            if s.inflight
                .get(&pid)
                .is_some_and(|f| f.2 == want || want == Flight::PubRec)
            {
                if let Some((m, _, _)) = s.inflight.remove(&pid) {
                    s.held -= m.topic.len() + m.payload.len();
                    self.held -= m.topic.len() + m.payload.len();
                }
            }
        }
        self.flush(&client, now);
    }

    fn subscribe(&mut self, id: ConnId, sub: codec::Subscribe, now: u64) {
        let Some(client) = self.client_of(id) else {
            return;
        };
        let v = self.conns[&id].version;
        let sid = sub.props.num(prop::SUBSCRIPTION_ID);
        if sid == Some(0) {
            return self.fail(id, 0x82, "subscription identifier 0");
        }
        let user = self.sessions.get(&client).and_then(|s| s.user.clone());
        let mut codes = Vec::new();
        let mut send_retained = Vec::new();
        for (f, o) in sub.filters {
            let share = shared(&f);
            if share.is_some() && o.no_local {
                return self.fail(id, 0x82, "no local on a shared subscription");
            }
            let code = if matches!(share, Some(Err(())))
                || (share.is_none() && !topic::valid_filter(&f))
            {
                0x8f
            } else if self
                .cfg
                .security(self.conns.get(&id).map_or(0, |c| c.listener))
                .acl
                .is_some_and(|a| !a.allows(user.as_deref(), &client, Op::Subscribe, &f))
            {
                0x87
            } else {
                o.qos.min(2)
            };
            codes.push(if v == 5 || code < 3 { code } else { 0x80 });
            if code >= 0x80 {
                self.say(format!(
                    "Client {client}: subscription to {f} refused (reason 0x{code:02x})"
                ));
                continue;
            }
            let s = self
                .sessions
                .get_mut(&client)
                .expect("a connected client has a session");
            let existed = s.subs.insert(f.clone(), (o, sid)).is_some();
            // A shared subscription gets no retained messages.
            if share.is_none() && (o.retain_handling == 0 || (o.retain_handling == 1 && !existed)) {
                send_retained.push((f, o, sid));
            }
        }
        self.send(
            id,
            &Packet::SubAck(SubAck {
                pid: sub.pid,
                codes,
                props: Props::default(),
            }),
        );
        // Retained messages matching the new subscriptions.
        for (f, o, sid) in send_retained {
            let msgs: Vec<Msg> = self
                .retained
                .values()
                .filter(|m| topic::matches(&f, &m.topic))
                .cloned()
                .collect();
            for mut m in msgs {
                m.qos = m.qos.min(o.qos);
                m.retain = true;
                self.deliver(&client, m, sid.into_iter().collect(), now);
            }
        }
    }

    /// Sends a message to every session subscribed to its topic, and keeps
    /// it if it is retained.
    fn route(&mut self, from: Option<&str>, msg: Msg, now: u64) {
        if msg.retain && self.cfg.retain_available {
            let size = msg.topic.len() + msg.payload.len();
            if let Some(old) = self.retained.remove(&*msg.topic) {
                self.retained_bytes -= old.topic.len() + old.payload.len();
            }
            if msg.payload.is_empty() {
                // An empty retained message only clears.
            } else if self.retained.len() < self.cfg.max_retained
                && self.memory_used() + size <= self.cfg.memory_limit
            {
                self.retained.insert(msg.topic.to_string(), msg.clone());
                self.retained_bytes += size;
            } else {
                self.stats.dropped += 1;
            }
        }
        let mut targets: Vec<(Arc<str>, u8, bool, Vec<u32>)> = Vec::new();
        // Shared subscriptions: per `$share/GROUP/FILTER`, the members
        // whose filter matches (client, QoS, identifier, online).
        let mut groups: BTreeMap<&str, Vec<(Arc<str>, u8, Option<u32>, bool)>> = BTreeMap::new();
        for (cid, s) in &self.sessions {
            let mut best: Option<(u8, bool)> = None;
            let mut ids = Vec::new();
            for (f, (o, sid)) in &s.subs {
                if let Some(share) = shared(f) {
                    if let Ok((_, filter)) = share {
                        let allowed = self.cfg.security(s.listener).acl.is_none_or(|acl| {
                            acl.allows(s.user.as_deref(), cid, Op::Receive, &msg.topic)
                        });
                        if allowed && topic::matches(filter, &msg.topic) {
                            groups.entry(f.as_str()).or_default().push((
                                cid.clone(),
                                o.qos.min(msg.qos),
                                *sid,
                                s.conn.is_some(),
                            ));
                        }
                    }
                    continue;
                }
                if !topic::matches(f, &msg.topic) || (o.no_local && from == Some(&**cid)) {
                    continue;
                }
                let q = o.qos.min(msg.qos);
                best = Some(best.map_or((q, o.retain_as_published), |(bq, br)| {
                    (bq.max(q), br || o.retain_as_published)
                }));
                if let Some(i) = sid {
                    ids.push(*i);
                }
            }
            if let Some((q, rap)) = best {
                if let Some(acl) = self.cfg.security(s.listener).acl {
                    if !acl.allows(s.user.as_deref(), cid, Op::Receive, &msg.topic) {
                        continue;
                    }
                }
                targets.push((cid.clone(), q, rap, ids));
            }
        }
        // One member of each group gets the message: the next in turn
        // that is connected, else the next in turn (its session keeps it).
        let picks: Vec<(String, Arc<str>, u8, Option<u32>)> = groups
            .into_iter()
            .map(|(key, members)| {
                let turn = self.share_turn.get(key).copied().unwrap_or(0);
                let n = members.len();
                let pick = (0..n)
                    .map(|k| (turn + k) % n)
                    .find(|&i| members[i].3)
                    .unwrap_or(turn % n);
                let (cid, q, sid, _) = members[pick].clone();
                (key.to_string(), cid, q, sid)
            })
            .collect();
        for (key, cid, q, sid) in picks {
            let turn = self.share_turn.entry(key).or_insert(0);
            *turn = turn.wrapping_add(1);
            let mut m = msg.clone();
            m.qos = q;
            m.retain = false;
            self.deliver(&cid, m, sid.into_iter().collect(), now);
        }
        for (cid, q, rap, ids) in targets {
            let mut m = msg.clone();
            m.qos = q;
            // 3.1.1: RETAIN is 0 on messages for established subscriptions.
            m.retain = msg.retain && rap;
            self.deliver(&cid, m, ids, now);
        }
    }

    fn deliver(&mut self, client: &str, m: Msg, ids: Vec<u32>, now: u64) {
        if m.expires.is_some_and(|e| e <= now) {
            return;
        }
        let out_limit = self.cfg.max_out_buffer;
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let budget =
            self.held + self.unsent + self.retained_bytes + m.topic.len() + m.payload.len()
                <= self.cfg.memory_limit;
        let room = budget
            && s.conn
                .and_then(|c| self.conns.get(&c))
                .is_some_and(|c| !c.close && c.out.len() < out_limit);
        if m.qos == 0 {
            match s.conn {
                Some(c) if room => self.send_publish(c, &m, &ids, 0, false, now),
                _ => self.stats.dropped += 1,
            }
            return;
        }
        let size = m.topic.len() + m.payload.len();
        if s.held + size > self.cfg.max_queued_bytes
            || self.held + self.unsent + self.retained_bytes + size > self.cfg.memory_limit
        {
            self.stats.dropped += 1;
            return;
        }
        let window = s.receive_max.min(self.cfg.max_inflight) as usize;
        if room && s.queue.is_empty() && s.inflight.len() < window {
            s.held += size;
            self.held += size;
            let pid = next_pid(s);
            s.inflight.insert(
                pid,
                (
                    m.clone(),
                    ids.clone(),
                    if m.qos == 1 {
                        Flight::PubAck
                    } else {
                        Flight::PubRec
                    },
                ),
            );
            let c = s.conn.expect("room implies a connection");
            self.send_publish(c, &m, &ids, pid, false, now);
        } else if s.queue.len() < self.cfg.max_queued {
            s.held += size;
            self.held += size;
            s.queue.push_back((m, ids));
        } else {
            self.stats.dropped += 1;
        }
    }

    /// Moves queued messages into the in-flight window.
    fn flush(&mut self, client: &str, now: u64) {
        loop {
            let out_limit = self.cfg.max_out_buffer;
            let Some(s) = self.sessions.get_mut(client) else {
                return;
            };
            let Some(c) = s.conn else { return };
            let room = self
                .conns
                .get(&c)
                .is_some_and(|c| !c.close && c.out.len() < out_limit);
            let window = s.receive_max.min(self.cfg.max_inflight) as usize;
            if !room || s.inflight.len() >= window {
                return;
            }
            let Some((m, ids)) = s.queue.pop_front() else {
                return;
            };
            if m.expires.is_some_and(|e| e <= now) {
                s.held -= m.topic.len() + m.payload.len();
                self.held -= m.topic.len() + m.payload.len();
                continue;
            }
            let pid = next_pid(s);
            s.inflight.insert(
                pid,
                (
                    m.clone(),
                    ids.clone(),
                    if m.qos == 1 {
                        Flight::PubAck
                    } else {
                        Flight::PubRec
                    },
                ),
            );
            self.send_publish(c, &m, &ids, pid, false, now);
        }
    }

    fn send_publish(&mut self, id: ConnId, m: &Msg, ids: &[u32], pid: u16, dup: bool, now: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut props = Props::default();
        if c.version == 5 {
            props = (*m.props).clone();
            if let Some(e) = m.expires {
                props.set(
                    prop::MESSAGE_EXPIRY,
                    Value::U32((e.saturating_sub(now)).div_ceil(SECOND) as u32),
                );
            }
            for &i in ids {
                props.0.push((prop::SUBSCRIPTION_ID, Value::VarInt(i)));
            }
        }
        // Server-assigned topic aliases (v5, when the client allows them):
        // a topic's first message carries it with a new alias, later ones
        // the alias alone. Aliases are not reassigned once all are taken.
        let mut topic = m.topic.to_string();
        let mut new_alias = None;
        if c.version == 5 && c.alias_out_max > 0 {
            match c.alias_out.get(&m.topic) {
                Some(&a) => {
                    props.set(prop::TOPIC_ALIAS, Value::U16(a));
                    topic.clear();
                }
                None if c.alias_out.len() < c.alias_out_max as usize => {
                    let a = c.alias_out.len() as u16 + 1;
                    props.set(prop::TOPIC_ALIAS, Value::U16(a));
                    new_alias = Some(a);
                }
                None => {}
            }
        }
        let p = Packet::Publish(Publish {
            dup,
            qos: m.qos,
            retain: m.retain,
            topic,
            pid,
            payload: m.payload.to_vec(),
            props,
        });
        let at = c.out.len();
        codec::encode(&p, c.version, &mut c.out);
        if c.out.len() - at > c.max_packet {
            // Larger than the client accepts: not sent (v5 says discard),
            // and its alias is not the client's to know.
            c.out.truncate(at);
            self.stats.dropped += 1;
            return;
        }
        if let Some(a) = new_alias {
            c.alias_out.insert(m.topic.clone(), a);
        }
        self.unsent += c.out.len() - at;
        self.stats.sent += 1;
    }

    /// The broker is going away (`kiln stop`). The wills of connected
    /// clients that did not say DISCONNECT are published now, while the
    /// others are still there to receive them (a will delay cannot hold:
    /// nobody would send it later), and so are the delayed wills of
    /// sessions whose client has gone. Then every client is told (v5:
    /// DISCONNECT 0x8B, server shutting down) and closes once its output
    /// is sent ([`Broker::wants_close`]).
    pub fn shutdown(&mut self, now: u64) {
        self.say("Shutting down at the host's request.".into());
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for &id in &ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.clean_exit {
                continue;
            }
            if let (Some(w), Some(client)) = (c.will.take(), c.client.clone()) {
                self.publish_will(&client, w, now);
            }
        }
        let delayed: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.delayed_will.is_some())
            .map(|(c, _)| c.clone())
            .collect();
        for c in delayed {
            if let Some((w, _)) = self
                .sessions
                .get_mut(&c)
                .and_then(|s| s.delayed_will.take())
            {
                self.publish_will(&c, w, now);
            }
        }
        for id in ids {
            self.fail(id, 0x8b, "server shutting down");
        }
    }

    /// The connection is gone (closed by either side). Publishes its will
    /// unless it said DISCONNECT, and ends or keeps its session.
    pub fn closed(&mut self, id: ConnId, now: u64) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.changes += 1;
        self.unsent -= c.out.len();
        let Some(client) = c.client else { return };
        if !c.close {
            self.say(format!("Client {client} closed its connection."));
        }
        let Some(s) = self.sessions.get_mut(&client) else {
            return;
        };
        if s.conn != Some(id) {
            return;
        }
        s.conn = None;
        s.gone_at = Some(now);
        let expiry = s.expiry;
        if let (Some(w), false) = (c.will, c.clean_exit) {
            let delay = w.props.num(prop::WILL_DELAY).unwrap_or(0).min(expiry);
            if delay > 0 {
                s.delayed_will = Some((w, now + delay as u64 * SECOND));
            } else {
                self.publish_will(&client, w, now);
            }
        }
        if expiry == 0 {
            self.end_session(&client, now);
        }
    }

    fn publish_will(&mut self, client: &str, w: Will, now: u64) {
        self.say(format!("Publishing the will of {client} on {}", w.topic));
        let mut props = w.props;
        props.remove(prop::WILL_DELAY);
        let expires = props
            .num(prop::MESSAGE_EXPIRY)
            .map(|s| now + s as u64 * SECOND);
        let msg = Msg {
            topic: w.topic.as_str().into(),
            payload: w.payload.into(),
            qos: w.qos,
            retain: w.retain,
            props: Arc::new(props),
            expires,
        };
        self.route(Some(client), msg, now);
    }

    fn end_session(&mut self, client: &str, now: u64) {
        if let Some(s) = self.sessions.remove(client) {
            self.changes += 1;
            self.held -= s.held;
            if let Some((w, _)) = s.delayed_will {
                self.publish_will(client, w, now);
            }
        }
    }

    /// Timeouts: CONNECT not sent in time, keep-alive expired, delayed
    /// wills, session expiry, and the $SYS topics. Call at least every
    /// second.
    pub fn tick(&mut self, now: u64) {
        let connect_us = self.cfg.connect_timeout as u64 * SECOND;
        let mut late = Vec::new();
        for c in self.conns.values_mut() {
            // A closing client that does not read its last bytes within 5 s
            // does not get them.
            if c.close && !c.out.is_empty() {
                let since = *c.closing_since.get_or_insert(now);
                if now.saturating_sub(since) > 5 * SECOND {
                    self.unsent -= c.out.len();
                    c.out.clear();
                }
            }
        }
        for (&id, c) in &self.conns {
            if c.close {
                continue;
            }
            if c.version == 0 && now.saturating_sub(c.opened) > connect_us {
                late.push((id, 0x87, "no CONNECT in time"));
            } else if c.keep_alive_us > 0 && now.saturating_sub(c.last_rx) > c.keep_alive_us * 3 / 2
            {
                late.push((id, 0x8d, "keep-alive timeout"));
            }
        }
        for (id, reason, why) in late {
            self.fail(id, reason, why);
        }
        let due: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.delayed_will.as_ref().is_some_and(|(_, at)| *at <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            if let Some((w, _)) = self
                .sessions
                .get_mut(&c)
                .and_then(|s| s.delayed_will.take())
            {
                self.publish_will(&c, w, now);
            }
        }
        let expired: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.conn.is_none()
                    && s.expiry != u32::MAX
                    && s.gone_at
                        .is_some_and(|g| now >= g + s.expiry as u64 * SECOND)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for c in expired {
            self.end_session(&c, now);
        }
        let interval = self.cfg.sys_interval as u64 * SECOND;
        if interval > 0 && now.saturating_sub(self.last_sys) >= interval {
            self.last_sys = now;
            self.publish_sys(now);
        }
    }

    fn publish_sys(&mut self, now: u64) {
        let online = self.sessions.values().filter(|s| s.conn.is_some()).count();
        let items = [
            (
                "$SYS/broker/version",
                String::from(concat!("kiln-mqtt ", env!("CARGO_PKG_VERSION"))),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", (now - self.started) / SECOND),
            ),
            ("$SYS/broker/clients/connected", online.to_string()),
            ("$SYS/broker/clients/total", self.sessions.len().to_string()),
            (
                "$SYS/broker/messages/received",
                self.stats.received.to_string(),
            ),
            ("$SYS/broker/messages/sent", self.stats.sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                self.stats.dropped.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained.len().to_string(),
            ),
        ];
        for (t, v) in items {
            let msg = Msg {
                topic: t.into(),
                payload: v.into_bytes().into(),
                qos: 0,
                retain: true,
                props: Arc::new(Props::default()),
                expires: None,
            };
            self.route(None, msg, now);
        }
    }
}

/// The session's next free packet identifier.
fn next_pid(s: &mut Session) -> u16 {
    loop {
        let p = s.next_pid;
        s.next_pid = if p == u16::MAX { 1 } else { p + 1 };
        if !s.inflight.contains_key(&p) {
            return p;
        }
    }
}
