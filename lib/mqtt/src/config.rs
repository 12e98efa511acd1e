//! The broker's configuration, in mosquitto.conf's words, with its
//! password and ACL files. Bad input is reported with file and line.

use crate::topic;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Broker settings. The defaults bound memory for a small edge VM (see
/// `Config::memory_bound`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The TCP ports to listen on: each `listener` line adds one (the
    /// first replaces the default 1883), `port` and `-p` set the only one.
    pub listeners: Vec<u16>,
    /// Whether a `listener` line has been read (the default is replaced
    /// by the first).
    pub listeners_given: bool,
    /// TLS settings of listeners, by port: mosquitto's words after a
    /// `listener` line (before any, they are the default listener's).
    pub tls: BTreeMap<u16, TlsListener>,
    /// Listeners that speak MQTT over WebSockets (`protocol websockets`
    /// after their `listener` line); the others speak plain MQTT.
    pub websockets: alloc::collections::BTreeSet<u16>,
    pub allow_anonymous: bool,
    /// user -> password: plain text, or mosquitto_passwd's `$6$`/`$7$` hash.
    pub passwords: Option<BTreeMap<String, String>>,
    pub acl: Option<Acl>,
    /// mosquitto's `per_listener_settings true`: `allow_anonymous`,
    /// `password_file` and `acl_file` after a `listener` line are that
    /// listener's ([`Config::listener_security`]); a listener given none
    /// allows no anonymous clients, as mosquitto's do.
    pub per_listener_settings: bool,
    pub listener_security: BTreeMap<u16, Security>,
    /// password_file and acl_file lines: (option, path, the listener they
    /// belong to with per_listener_settings).
    pub files: Vec<(String, String, Option<u16>)>,
    /// Largest packet accepted or sent, in bytes.
    pub max_packet_size: usize,
    /// Unacknowledged QoS 1/2 messages in flight to one client.
    pub max_inflight: u16,
    /// QoS 1/2 messages queued for one client (offline, or beyond the
    /// in-flight window); more are dropped.
    pub max_queued: usize,
    /// Bytes (topics and payloads) queued and in flight for one client.
    pub max_queued_bytes: usize,
    /// Bytes of messages the broker holds for all clients together:
    /// queued, in flight, waiting to be sent, and retained (mosquitto's
    /// `memory_limit`).
    pub memory_limit: usize,
    pub max_connections: usize,
    /// Sessions kept, connected or not (persistent sessions outlive their
    /// connections).
    pub max_sessions: usize,
    /// Longest keep-alive a client may ask for (seconds; longer is cut).
    pub max_keepalive: u16,
    pub retain_available: bool,
    pub max_retained: usize,
    /// Topic aliases a v5 client may use.
    pub topic_alias_max: u16,
    /// Seconds between $SYS updates (0: none).
    pub sys_interval: u32,
    /// Seconds a connection may stay open before it sends CONNECT.
    pub connect_timeout: u32,
    /// Bytes waiting to be sent to one client before QoS 0 messages to it
    /// are dropped.
    pub max_out_buffer: usize,
    /// Print connections and disconnections.
    pub verbose: bool,
    /// Keep retained messages and persistent sessions in a file
    /// (`persistence_location` + `persistence_file`) across restarts.
    pub persistence: bool,
    /// Folder of the persistence file (mosquitto: with a trailing slash).
    pub persistence_location: String,
    pub persistence_file: String,
    /// Seconds between saves (0: only at a clean stop); with
    /// `autosave_on_changes`, the number of changes between saves.
    pub autosave_interval: u32,
    pub autosave_on_changes: bool,
}

/// A listener's TLS settings (file paths as given; the app reads them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsListener {
    pub certfile: String,
    pub keyfile: String,
    /// CA certificates that client certificates must chain to.
    pub cafile: Option<String>,
    /// Clients must present a certificate from `cafile`.
    pub require_certificate: bool,
    /// The client certificate's common name is the user name.
    pub use_identity_as_username: bool,
    /// `tlsv1.2` or `tlsv1.3`: only that version (default: both).
    pub tls_version: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: alloc::vec![1883],
            listeners_given: false,
            websockets: alloc::collections::BTreeSet::new(),
            per_listener_settings: false,
            listener_security: BTreeMap::new(),
            files: Vec::new(),
            tls: BTreeMap::new(),
            allow_anonymous: true,
            passwords: None,
            acl: None,
            max_packet_size: 16 * 1024,
            max_inflight: 20,
            max_queued: 1000,
            max_queued_bytes: 256 * 1024,
            memory_limit: 4 << 20,
            max_connections: 1024,
            max_sessions: 2048,
            max_keepalive: 65535,
            retain_available: true,
            max_retained: 1000,
            topic_alias_max: 10,
            sys_interval: 10,
            connect_timeout: 10,
            max_out_buffer: 64 * 1024,
            verbose: true,
            persistence: false,
            persistence_location: String::new(),
            persistence_file: String::from("mosquitto.db"),
            autosave_interval: 1800,
            autosave_on_changes: false,
        }
    }
}

impl Config {
    /// The persistence file's path.
    pub fn persistence_path(&self) -> String {
        let dir = self.persistence_location.trim_end_matches('/');
        format!("{dir}/{}", self.persistence_file)
    }

    /// Most bytes of messages the broker holds (beyond the network
    /// stack's socket buffers and bookkeeping): per connection, a packet
    /// being received and one being queued past the budget, and
    /// `memory_limit` for everything queued, in flight, unsent or retained.
    pub fn memory_bound(&self) -> usize {
        self.max_connections * 2 * self.max_packet_size + self.memory_limit
    }

    /// Sets option `key` (as in mosquitto.conf) to `value`; the error says
    /// what is wrong. Files named by options are returned to be read.
    pub fn set(&mut self, key: &str, value: &str) -> Result<Option<(String, String)>, String> {
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{key}: '{v}' is not a number"))
        };
        let flag = |v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("{key}: '{v}' is not true or false")),
        };
        match key {
            "listener" | "port" => {
                // `listener PORT [ADDRESS]`: the address is not needed (one
                // interface).
                let p = value.split_whitespace().next().unwrap_or("");
                let port: u16 = num(p)?
                    .try_into()
                    .ok()
                    .filter(|&p: &u16| p != 0)
                    .ok_or(format!("{key}: {p} is not a TCP port"))?;
                if key == "port" || !self.listeners_given {
                    self.listeners.clear();
                }
                if key == "listener" {
                    self.listeners_given = true;
                }
                if self.listeners.contains(&port) {
                    return Err(format!("{key}: port {port} is listed twice"));
                }
                self.listeners.push(port);
            }
            "protocol" => {
                let port = *self.listeners.last().expect("there is always a listener");
                match value {
                    "mqtt" => {
                        self.websockets.remove(&port);
                    }
                    "websockets" => {
                        self.websockets.insert(port);
                    }
                    _ => return Err(format!("{key}: '{value}' is not mqtt or websockets")),
                }
            }
            "per_listener_settings" => {
                if self.listeners_given || !self.files.is_empty() {
                    return Err(format!(
                        "{key}: must come before any listener and security option"
                    ));
                }
                self.per_listener_settings = flag(value)?;
            }
            "allow_anonymous" => {
                let v = flag(value)?;
                match self.current_listener() {
                    Some(port) => {
                        self.listener_security
                            .entry(port)
                            .or_default()
                            .allow_anonymous = v
                    }
                    None => self.allow_anonymous = v,
                }
            }
            "password_file" | "acl_file" => {
                let port = self.current_listener();
                if let Some(port) = port {
                    self.listener_security.entry(port).or_default();
                }
                self.files.push((key.into(), value.into(), port));
                return Ok(Some((key.into(), value.into())));
            }
            "max_packet_size" => self.max_packet_size = (num(value)? as usize).clamp(64, 256 << 20),
            "max_inflight_messages" => self.max_inflight = num(value)?.clamp(1, 65535) as u16,
            "max_queued_messages" => self.max_queued = num(value)? as usize,
            "max_queued_bytes" => self.max_queued_bytes = num(value)? as usize,
            "memory_limit" => self.memory_limit = (num(value)? as usize).max(64 * 1024),
            "max_sessions" => self.max_sessions = num(value)?.max(1) as usize,
            "max_connections" => {
                self.max_connections = if value == "-1" {
                    65536
                } else {
                    num(value)? as usize
                }
            }
            "max_keepalive" => self.max_keepalive = num(value)?.min(65535) as u16,
            "retain_available" => self.retain_available = flag(value)?,
            "max_retained_messages" => self.max_retained = num(value)? as usize,
            "topic_alias_maximum" => self.topic_alias_max = num(value)?.min(65535) as u16,
            "sys_interval" => self.sys_interval = num(value)? as u32,
            "connect_timeout" => self.connect_timeout = num(value)?.max(1) as u32,
            "max_out_buffer" => self.max_out_buffer = (num(value)? as usize).max(1024),
            "verbose" | "connection_messages" => self.verbose = flag(value)?,
            "persistence" => self.persistence = flag(value)?,
            "persistence_location" => self.persistence_location = value.into(),
            "persistence_file" => {
                if value.is_empty() || value.contains('/') {
                    return Err(format!(
                        "{key}: '{value}' must be a file name (the folder is persistence_location)"
                    ));
                }
                self.persistence_file = value.into()
            }
            "autosave_interval" => self.autosave_interval = num(value)?.min(u32::MAX as u64) as u32,
            "autosave_on_changes" => self.autosave_on_changes = flag(value)?,
            "certfile"
            | "keyfile"
            | "cafile"
            | "require_certificate"
            | "use_identity_as_username"
            | "tls_version" => {
                let port = *self.listeners.last().expect("there is always a listener");
                let t = self.tls.entry(port).or_default();
                match key {
                    "certfile" => t.certfile = value.into(),
                    "keyfile" => t.keyfile = value.into(),
                    "cafile" => t.cafile = Some(value.into()),
                    "require_certificate" => t.require_certificate = flag(value)?,
                    "use_identity_as_username" => t.use_identity_as_username = flag(value)?,
                    _ => {
                        if !matches!(value, "tlsv1.2" | "tlsv1.3") {
                            return Err(format!("{key}: '{value}' is not tlsv1.2 or tlsv1.3 (Kiln speaks no older TLS)"));
                        }
                        t.tls_version = Some(value.into());
                    }
                }
            }
            _ => return Err(format!("unknown option '{key}'")),
        }
        Ok(None)
    }

    /// What is wrong with the listeners' TLS settings, if anything (run
    /// once every option is in).
    pub fn check_tls(&self) -> Result<(), String> {
        for (port, t) in &self.tls {
            if !self.listeners.contains(port) {
                continue;
            }
            if t.certfile.is_empty() || t.keyfile.is_empty() {
                return Err(format!(
                    "listener {port}: TLS needs both certfile and keyfile"
                ));
            }
            if t.require_certificate && t.cafile.is_none() {
                return Err(format!("listener {port}: require_certificate needs a cafile to check client certificates against"));
            }
            if t.use_identity_as_username && !t.require_certificate {
                return Err(format!(
                    "listener {port}: use_identity_as_username needs require_certificate true"
                ));
            }
        }
        Ok(())
    }

    /// Reads a mosquitto.conf-style file: `option value` per line, `#`
    /// comments. Returns the files it names (password_file, acl_file).
    pub fn parse(&mut self, text: &str, file: &str) -> Result<Vec<(String, String)>, String> {
        let mut files = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((line, ""));
            if v.is_empty() {
                return Err(format!("{file}:{}: '{k}' needs a value", n + 1));
            }
            match self.set(k, v) {
                Ok(Some(f)) => files.push(f),
                Ok(None) => {}
                Err(e) => return Err(format!("{file}:{}: {e}", n + 1)),
            }
        }
        Ok(files)
    }

    /// Reads a password file: `user:password` per line (plain text).
    pub fn parse_passwords(&mut self, text: &str, file: &str) -> Result<(), String> {
        self.passwords = Some(parse_password_lines(text, file)?);
        Ok(())
    }

    /// The listener security options apply to now: the last listener's
    /// with per_listener_settings, else none (the global ones).
    fn current_listener(&self) -> Option<u16> {
        (self.per_listener_settings && self.listeners_given)
            .then(|| *self.listeners.last().expect("there is always a listener"))
    }

    /// Reads a password_file or acl_file the configuration named (`text`
    /// is the file at `path`) into every listener that named it.
    pub fn load_file(&mut self, key: &str, path: &str, text: &str) -> Result<(), String> {
        let ports: Vec<Option<u16>> = self
            .files
            .iter()
            .filter(|(k, p, _)| k == key && p == path)
            .map(|f| f.2)
            .collect();
        let ports = if ports.is_empty() {
            alloc::vec![None]
        } else {
            ports
        };
        for port in ports {
            if key == "password_file" {
                let m = parse_password_lines(text, path)?;
                match port {
                    Some(port) => {
                        self.listener_security.entry(port).or_default().passwords = Some(m)
                    }
                    None => self.passwords = Some(m),
                }
            } else {
                let a = Acl::parse(text, path)?;
                match port {
                    Some(port) => self.listener_security.entry(port).or_default().acl = Some(a),
                    None => self.acl = Some(a),
                }
            }
        }
        Ok(())
    }

    /// The security options of connections on `port` (0: unknown, the
    /// global ones).
    pub fn security(&self, port: u16) -> SecurityRef<'_> {
        match self
            .listener_security
            .get(&port)
            .filter(|_| self.per_listener_settings)
        {
            Some(s) => SecurityRef {
                allow_anonymous: s.allow_anonymous,
                passwords: s.passwords.as_ref(),
                acl: s.acl.as_ref(),
            },
            None if self.per_listener_settings && port != 0 => SecurityRef {
                allow_anonymous: false,
                passwords: None,
                acl: None,
            },
            None => SecurityRef {
                allow_anonymous: self.allow_anonymous,
                passwords: self.passwords.as_ref(),
                acl: self.acl.as_ref(),
            },
        }
    }

    /// Whether `user`/`password` may connect (with the global options).
    pub fn authenticate(&self, user: Option<&str>, password: Option<&[u8]>) -> Result<(), u8> {
        self.security(0).authenticate(user, password)
    }
}

/// One listener's security options (mosquitto's per_listener_settings).
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub allow_anonymous: bool,
    pub passwords: Option<BTreeMap<String, String>>,
    pub acl: Option<Acl>,
}

/// The security options that apply to a connection.
#[derive(Clone, Copy)]
pub struct SecurityRef<'a> {
    pub allow_anonymous: bool,
    pub passwords: Option<&'a BTreeMap<String, String>>,
    pub acl: Option<&'a Acl>,
}

impl SecurityRef<'_> {
    /// Whether `user`/`password` may connect.
    pub fn authenticate(&self, user: Option<&str>, password: Option<&[u8]>) -> Result<(), u8> {
        match (user, self.passwords) {
            (None, _) if self.allow_anonymous => Ok(()),
            (None, _) => Err(0x87),
            (Some(_), None) => Ok(()),
            (Some(u), Some(m)) => match (m.get(u), password) {
                (Some(p), Some(given)) if check_password(p, given) => Ok(()),
                _ => Err(0x86),
            },
        }
    }
}

/// A password file's `user:password` lines.
fn parse_password_lines(text: &str, file: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((u, p)) = line.split_once(':') else {
            return Err(format!("{file}:{}: expected user:password", n + 1));
        };
        if p.starts_with('$') && Hashed::parse(p).is_none() {
            return Err(format!("{file}:{}: unknown password hash '{}'; mosquitto_passwd's $6$ and $7$ hashes and plain text are understood", n + 1, p.split('$').nth(1).unwrap_or("")));
        }
        m.insert(u.to_string(), p.to_string());
    }
    Ok(m)
}

/// A password hash from mosquitto_passwd: `$6$SALT$HASH` (SHA-512 of the
/// password and salt) or `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512),
/// salt and hash in base64.
struct Hashed {
    iterations: Option<u32>,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Hashed {
    fn parse(s: &str) -> Option<Hashed> {
        use base64::Engine;
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.decode(v).ok();
        let parts: Vec<&str> = s.split('$').collect();
        match parts.as_slice() {
            ["", "6", salt, hash] => Some(Hashed {
                iterations: None,
                salt: b64(salt)?,
                hash: b64(hash)?,
            }),
            ["", "7", it, salt, hash] => Some(Hashed {
                iterations: Some(it.parse().ok().filter(|&n| n > 0)?),
                salt: b64(salt)?,
                hash: b64(hash)?,
            }),
            _ => None,
        }
    }

    fn matches(&self, password: &[u8]) -> bool {
        use sha2::{Digest, Sha512};
        let got: Vec<u8> = match self.iterations {
            None => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(&self.salt);
                h.finalize().to_vec()
            }
            Some(n) => {
                let mut out = alloc::vec![0u8; self.hash.len().clamp(1, 64)];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &self.salt, n, &mut out);
                out
            }
        };
        // Compared without an early exit.
        got.len() == self.hash.len()
            && got
                .iter()
                .zip(&self.hash)
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    }
}

/// Whether `given` is the password `stored` (plain or hashed) describes.
fn check_password(stored: &str, given: &[u8]) -> bool {
    if stored.starts_with('$') {
        return Hashed::parse(stored).is_some_and(|h| h.matches(given));
    }
    stored.len() == given.len() && stored.bytes().zip(given).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

/// Access kinds in an ACL rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Clone, Debug)]
struct Rule {
    access: Access,
    topic: String,
    /// `pattern` rules substitute %c (client id) and %u (user name).
    pattern: bool,
}

/// Per-topic access rules, in mosquitto's acl_file format: `topic [read|
/// write|readwrite|deny] TOPIC` lines before any `user` line apply to
/// anonymous clients, those after `user NAME` to that user, and `pattern`
/// lines (with %c and %u) to everyone. With an ACL, what no rule grants is
/// denied.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: BTreeMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn parse(text: &str, file: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |m: &str| format!("{file}:{}: {m}", n + 1);
            let (k, rest) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((line, ""));
            match k {
                "user" if !rest.is_empty() => user = Some(rest.into()),
                "topic" | "pattern" => {
                    let (access, t) = match rest.split_once(char::is_whitespace) {
                        Some(("read", t)) => (Access::Read, t.trim()),
                        Some(("write", t)) => (Access::Write, t.trim()),
                        Some(("readwrite", t)) => (Access::ReadWrite, t.trim()),
                        Some(("deny", t)) => (Access::Deny, t.trim()),
                        _ => (Access::ReadWrite, rest),
                    };
                    if !topic::valid_filter(t) {
                        return Err(err(&format!("'{t}' is not a valid topic filter")));
                    }
                    let r = Rule { access, topic: t.into(), pattern: k == "pattern" };
                    if k == "pattern" {
                        acl.patterns.push(r);
                    } else if let Some(u) = &user {
                        acl.users.entry(u.clone()).or_default().push(r);
                    } else {
                        acl.anonymous.push(r);
                    }
                }
                _ => return Err(err(&format!("expected 'user NAME', 'topic [read|write|readwrite|deny] TOPIC' or 'pattern ...', found '{line}'"))),
            }
        }
        Ok(acl)
    }

    /// Whether a client may do `op`: publish to a topic, subscribe to a
    /// filter, or receive a message on a topic.
    pub fn allows(&self, user: Option<&str>, client: &str, op: Op, s: &str) -> bool {
        let own = match user {
            Some(u) => self.users.get(u).map(|v| v.as_slice()).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let mut granted = false;
        for r in own.iter().chain(self.patterns.iter()) {
            let t = if r.pattern {
                r.topic
                    .replace("%c", client)
                    .replace("%u", user.unwrap_or(""))
            } else {
                r.topic.clone()
            };
            // A deny rule inside a subscription (sensors/secret within
            // sensors/#) does not refuse it: the messages it covers are
            // not delivered (Op::Receive).
            let hit = if op == Op::Subscribe {
                topic::covers(&t, s)
            } else {
                topic::matches(&t, s)
            };
            if !hit {
                continue;
            }
            match (r.access, op) {
                (Access::Deny, _) => return false,
                (Access::ReadWrite, _)
                | (Access::Write, Op::Publish)
                | (Access::Read, Op::Subscribe | Op::Receive) => granted = true,
                _ => {}
            }
        }
        granted
    }
}

/// What an ACL is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Publish,
    Subscribe,
    Receive,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_belong_to_their_listener() {
        let mut c = Config::default();
        c.parse("listener 1883\nlistener 8883\ncertfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\nrequire_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n", "m.conf").unwrap();
        assert!(!c.tls.contains_key(&1883));
        let t = &c.tls[&8883];
        assert_eq!(
            (t.certfile.as_str(), t.keyfile.as_str(), t.cafile.as_deref()),
            ("/c.pem", "/k.pem", Some("/ca.pem"))
        );
        assert!(t.require_certificate && t.use_identity_as_username);
        c.check_tls().unwrap();
        let mut c = Config::default();
        c.parse("listener 8883\ncertfile /c.pem\n", "m.conf")
            .unwrap();
        assert_eq!(
            c.check_tls().unwrap_err(),
            "listener 8883: TLS needs both certfile and keyfile"
        );
        assert_eq!(
            c.parse("tls_version tlsv1\n", "m.conf").unwrap_err(),
            "m.conf:1: tls_version: 'tlsv1' is not tlsv1.2 or tlsv1.3 (Kiln speaks no older TLS)"
        );
        let mut c = Config::default();
        c.parse(
            "listener 8883\ncertfile /c.pem\nkeyfile /k.pem\nrequire_certificate true\n",
            "m.conf",
        )
        .unwrap();
        assert!(c.check_tls().unwrap_err().contains("needs a cafile"));
    }

    #[test]
    fn websocket_listeners() {
        let mut c = Config::default();
        c.parse("listener 1883\nlistener 8080\nprotocol websockets\nlistener 9001\nprotocol websockets\nprotocol mqtt\n", "f").unwrap();
        assert_eq!(c.listeners, [1883, 8080, 9001]);
        assert_eq!(c.websockets.iter().copied().collect::<Vec<_>>(), [8080]);
        assert_eq!(
            c.parse("protocol http\n", "f").unwrap_err(),
            "f:1: protocol: 'http' is not mqtt or websockets"
        );
    }

    #[test]
    fn several_listeners() {
        let mut c = Config::default();
        assert_eq!(c.listeners, [1883]);
        c.parse("listener 1883\nlistener 8883 0.0.0.0\n", "m.conf")
            .unwrap();
        assert_eq!(c.listeners, [1883, 8883]);
        assert_eq!(
            c.parse("listener 8883\n", "m.conf").unwrap_err(),
            "m.conf:1: listener: port 8883 is listed twice"
        );
        // `port` (and -p) set the only one.
        c.set("port", "1999").unwrap();
        assert_eq!(c.listeners, [1999]);
    }

    #[test]
    fn conf_files_parse_and_errors_name_the_line() {
        let mut c = Config::default();
        let files = c.parse("# edge broker\nlistener 1884\nallow_anonymous false\npassword_file /etc/mqtt/passwd\nmax_packet_size 1024\n", "mqtt.conf").unwrap();
        assert_eq!(c.listeners, [1884]);
        assert!(!c.allow_anonymous);
        assert_eq!(c.max_packet_size, 1024);
        assert_eq!(
            files,
            [("password_file".to_string(), "/etc/mqtt/passwd".to_string())]
        );
        assert_eq!(
            c.parse("listener 1883\nbogus 1\n", "f.conf").unwrap_err(),
            "f.conf:2: unknown option 'bogus'"
        );
        assert_eq!(
            c.parse("max_inflight_messages many\n", "f.conf")
                .unwrap_err(),
            "f.conf:1: max_inflight_messages: 'many' is not a number"
        );
        assert_eq!(
            c.parse("allow_anonymous\n", "f.conf").unwrap_err(),
            "f.conf:1: 'allow_anonymous' needs a value"
        );
    }

    #[test]
    fn passwords_and_acls() {
        let mut c = Config {
            allow_anonymous: false,
            ..Config::default()
        };
        c.parse_passwords("alice:secret\nbob:hunter2\n", "passwd")
            .unwrap();
        assert_eq!(c.authenticate(Some("alice"), Some(b"secret")), Ok(()));
        assert_eq!(c.authenticate(Some("alice"), Some(b"wrong")), Err(0x86));
        assert_eq!(c.authenticate(Some("carol"), Some(b"x")), Err(0x86));
        assert_eq!(c.authenticate(None, None), Err(0x87));
        assert!(c
            .parse_passwords("alice:$9$abc\n", "passwd")
            .unwrap_err()
            .starts_with("passwd:1: unknown password hash '9'"));
        // A file written by `mosquitto_passwd -c -b pw alice wonderland`.
        c.parse_passwords(
            "alice:$7$101$UuXJI11Por0vTMpX$jfVt1v3BBgcqLgK23dPb08gZkSz8qOatMv25HzFRklHyFBYM7aJGlGMLpXBbjdCL9gKhnsnltY0uhqx0ax4q1w==\n",
            "pw",
        )
        .unwrap();
        assert_eq!(c.authenticate(Some("alice"), Some(b"wonderland")), Ok(()));
        assert_eq!(
            c.authenticate(Some("alice"), Some(b"wonderlanD")),
            Err(0x86)
        );
        let acl = Acl::parse("topic read public/#\nuser alice\ntopic readwrite sensors/#\ntopic deny sensors/secret\npattern write clients/%c/status\n", "acl").unwrap();
        assert!(acl.allows(Some("alice"), "c1", Op::Publish, "sensors/a/temp"));
        assert!(!acl.allows(Some("alice"), "c1", Op::Publish, "sensors/secret"));
        assert!(acl.allows(Some("alice"), "c1", Op::Subscribe, "sensors/+/temp"));
        assert!(acl.allows(Some("alice"), "c1", Op::Subscribe, "sensors/#"));
        assert!(!acl.allows(Some("alice"), "c1", Op::Receive, "sensors/secret"));
        assert!(!acl.allows(Some("alice"), "c1", Op::Subscribe, "public/news"));
        assert!(acl.allows(None, "c2", Op::Subscribe, "public/news"));
        assert!(acl.allows(None, "c2", Op::Receive, "public/news"));
        assert!(!acl.allows(None, "c2", Op::Publish, "public/news"));
        assert!(acl.allows(Some("bob"), "c3", Op::Publish, "clients/c3/status"));
        assert!(!acl.allows(Some("bob"), "c3", Op::Publish, "clients/c4/status"));
        assert!(Acl::parse("topic read a/#/b\n", "acl")
            .unwrap_err()
            .contains("acl:1: 'a/#/b' is not a valid topic filter"));
    }
}
