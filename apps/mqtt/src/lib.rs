//! Kiln's MQTT broker: the kiln-mqtt engine (MQTT 3.1.1 and 5.0) driven
//! by one event loop over lib/net's non-blocking sockets.
//!
//! Configuration, later wins: the defaults, the file given with `-c FILE`
//! (or /etc/mqtt/mqtt.conf when it exists), `MQTT_<OPTION>=value`
//! environment variables (from the Kraftfile's `env` or `kiln run -e`), and
//! `-p PORT`. Options are mosquitto.conf's (listener, allow_anonymous,
//! password_file, acl_file, max_packet_size, max_inflight_messages,
//! max_queued_messages, max_connections, max_keepalive, retain_available,
//! sys_interval, persistence, persistence_location, persistence_file,
//! autosave_interval, autosave_on_changes, ...). A bad option stops the
//! broker with file, line and reason. With persistence on (the file on a
//! volume), retained messages and persistent sessions outlive the machine.
#![no_std]

extern crate alloc;

use alloc::collections::BTreeMap;
use kiln_mqtt::broker::{Broker, ConnId};
use kiln_mqtt::config::Config;
use kiln_mqtt::ws::Ws;
use kiln_std::net::{self, Error as NetError, Stream, TcpListener};
use kiln_std::prelude::*;

/// Listening sockets kept ready for connecting clients.
const BACKLOG: usize = 16;
/// Longest wait for network activity before timeouts are checked.
const WAIT_US: u64 = 100_000;
/// Interval of the broker's timeout checks.
const TICK_US: u64 = 100_000;
/// How long clients have to take their last packets after `kiln stop`
/// (which waits 5 s for the guest).
const STOP_US: u64 = 3_000_000;

fn read_file(path: &str, what: &str) -> Result<String, String> {
    kiln_std::fs::read_to_string(path).map_err(|e| format!("{what} {path}: {e}"))
}

/// Builds the configuration from the command line, the file and the
/// environment.
fn configure(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut file = None;
    let mut port = None;
    let mut it = args.iter().skip(1);
    while let Some(&a) = it.next() {
        match a {
            "-c" => file = Some(it.next().ok_or("-c needs a file")?.to_string()),
            "-p" => port = Some(it.next().ok_or("-p needs a port")?.to_string()),
            "-q" => cfg.verbose = false,
            _ => {
                return Err(format!(
                    "unknown argument '{a}' (expected -c FILE, -p PORT, -q)"
                ))
            }
        }
    }
    let default = "/etc/mqtt/mqtt.conf";
    let file = file.or_else(|| {
        kiln_std::fs::metadata(default)
            .ok()
            .map(|_| default.to_string())
    });
    let mut files = Vec::new();
    if let Some(f) = &file {
        let text = read_file(f, "configuration file")?;
        files = cfg.parse(&text, f)?;
    }
    for (k, v) in env {
        if let Some(opt) = k.strip_prefix("MQTT_") {
            match cfg.set(&opt.to_ascii_lowercase(), v) {
                Ok(Some(f)) => files.push(f),
                Ok(None) => {}
                Err(e) => return Err(format!("environment {k}: {e}")),
            }
        }
    }
    if let Some(p) = port {
        cfg.set("port", &p).map_err(|e| format!("-p: {e}"))?;
    }
    for (key, path) in files {
        let text = read_file(&path, &key)?;
        cfg.load_file(&key, &path, &text)?;
    }
    Ok(cfg)
}

/// mosquitto's `persistence`: the broker's state is restored from
/// `persistence_location/persistence_file` at start and saved every
/// `autosave_interval` seconds when something changed (or, with
/// `autosave_on_changes`, after that many changes), and at a clean stop.
/// A save replaces the file durably (written, fsynced, renamed), so a
/// power cut leaves the previous save or the new one; a snapshot equal to
/// the file's is not written again.
struct Saver {
    path: String,
    saved_at: u64,
    saved_changes: u64,
    failed: bool,
    /// What the file holds: a snapshot equal to it is not written again
    /// (a clean-session client coming and going changes nothing kept).
    last: Vec<u8>,
}

impl Saver {
    fn open(broker: &mut Broker, now: u64) -> Saver {
        let path = broker.cfg.persistence_path();
        let dir = broker.cfg.persistence_location.trim_end_matches('/');
        if !dir.is_empty() {
            let _ = kiln_std::fs::create_dir_all(dir);
        }
        let mut last = Vec::new();
        match kiln_std::fs::read(&path) {
            Ok(data) => {
                let t = kiln_std::time::micros();
                match broker.restore(&data, now) {
                    Ok(r) => {
                        println!(
                            "mqtt: restored {} retained messages and {} sessions ({} messages queued) from {path} in {} us",
                            r.retained,
                            r.sessions,
                            r.messages,
                            kiln_std::time::micros() - t
                        );
                        last = data;
                    }
                    Err(e) => {
                        let aside = format!("{path}.damaged");
                        let _ = kiln_std::fs::rename(&path, &aside);
                        println!(
                            "mqtt: {path} is damaged ({e}); starting without it (kept as {aside})"
                        );
                    }
                }
            }
            Err(kiln_std::fs::Error::NotFound) => {
                println!("mqtt: persistence: {path} will be made at the first save")
            }
            Err(e) => println!("mqtt: persistence: reading {path}: {e}; starting without it"),
        }
        Saver {
            path,
            saved_at: now,
            saved_changes: broker.changes(),
            failed: false,
            last,
        }
    }

    fn due(&self, broker: &Broker, now: u64) -> bool {
        let changes = broker.changes() - self.saved_changes;
        let every = broker.cfg.autosave_interval as u64;
        if changes == 0 || every == 0 {
            return false;
        }
        if broker.cfg.autosave_on_changes {
            changes >= every
        } else {
            now.saturating_sub(self.saved_at) >= every * 1_000_000
        }
    }

    fn save(&mut self, broker: &Broker, now: u64) {
        let changes = broker.changes();
        let snapshot = broker.snapshot(now);
        if snapshot == self.last && !self.failed {
            self.saved_changes = changes;
            self.saved_at = now;
            return;
        }
        match kiln_std::fs::write_durably(&self.path, &snapshot) {
            Ok(()) => {
                self.failed = false;
                self.saved_changes = changes;
                self.last = snapshot;
            }
            Err(e) if !self.failed => {
                self.failed = true;
                println!(
                    "mqtt: saving {}: {e} (tried again at the next autosave)",
                    self.path
                );
            }
            Err(_) => {}
        }
        self.saved_at = now;
    }
}

fn peer_of(s: &Stream) -> String {
    s.peer()
        .map_or_else(|| String::from("?"), |(a, p)| format!("{a}:{p}"))
}

/// Entry point: serves until the machine is stopped.
pub fn main(args: &[&str], env: &[(&str, &str)]) -> i32 {
    let mut cfg = match configure(args, env) {
        Ok(c) => c,
        Err(e) => {
            println!("mqtt: {e}");
            return 2;
        }
    };
    // As many clients as memory holds: each has the network stack's two
    // socket buffers and a few KiB of broker and stack state; a reserve
    // stays for the listening sockets and messages in flight.
    let per_client = kiln_std::kconfig_int!("LIBNET_TCP_RX_BUFFER", 16384) as usize
        + kiln_std::kconfig_int!("LIBNET_TCP_TX_BUFFER", 32768) as usize
        + 6 * 1024;
    if let Some(h) = kiln_std::heap_stats() {
        let free = h.total.saturating_sub(h.in_use);
        // The message budget: at most a quarter of free memory.
        cfg.memory_limit = cfg.memory_limit.min(free / 4);
        let reserve = (1 << 20) + BACKLOG * per_client + cfg.memory_limit;
        let fit = free.saturating_sub(reserve) / per_client;
        if cfg.max_connections > fit {
            println!(
                "mqtt: max_connections {} lowered to {fit}: {} KiB of free memory hold about {fit} clients of ~{} KiB each (give the VM more with kiln run -M)",
                cfg.max_connections,
                free / 1024,
                per_client / 1024
            );
            cfg.max_connections = fit.max(1);
        }
    }
    if !net::available() {
        println!(
            "mqtt: no network device (kiln run adds one; on QEMU use -device virtio-net-device)"
        );
        return 1;
    }
    if let Err(e) = cfg.check_tls() {
        println!("mqtt: {e}");
        return 2;
    }
    let mut listeners = Vec::new();
    for &port in &cfg.listeners {
        let tls = match tls::listener(&cfg, port) {
            Ok(t) => t,
            Err(e) => {
                println!("mqtt: listener {port}: {e}");
                return 2;
            }
        };
        match TcpListener::bind(port, BACKLOG) {
            Ok(mut l) => {
                l.set_nonblocking(true);
                let ws = cfg.websockets.contains(&port);
                if ws {
                    println!("mqtt: listener {port} speaks MQTT over WebSockets");
                }
                listeners.push((l, tls, ws, port));
            }
            Err(e) => {
                println!("mqtt: port {port}: {e}");
                return 1;
            }
        }
    }
    let ports: Vec<String> = cfg.listeners.iter().map(|p| p.to_string()).collect();
    // Said once the saved state is back: a client that connects after
    // "listening" finds its retained messages and sessions.
    let listening = format!(
        "mqtt: listening on port{} {} (MQTT 3.1.1 and 5.0; up to {} clients, packets up to {} bytes, {}; messages held in at most {} KiB)",
        if ports.len() > 1 { "s" } else { "" },
        ports.join(", "),
        cfg.max_connections,
        cfg.max_packet_size,
        match (&cfg.passwords, cfg.allow_anonymous) {
            _ if cfg.per_listener_settings => String::from("security options per listener"),
            (Some(p), true) => format!("{} users and anonymous clients", p.len()),
            (Some(p), false) => format!("{} users, no anonymous clients", p.len()),
            (None, true) => String::from("anonymous clients allowed"),
            (None, false) => String::from("no anonymous clients and no password file: nobody can connect"),
        },
        cfg.memory_bound() / 1024
    );
    let start = kiln_std::time::micros();
    let mut broker = Broker::new(cfg, start);
    let mut saver = broker
        .cfg
        .persistence
        .then(|| Saver::open(&mut broker, start));
    println!("{listening}");
    // Each connection's stream, and its WebSocket layer on a websockets
    // listener.
    let mut conns: BTreeMap<ConnId, (Stream, Option<Ws>)> = BTreeMap::new();
    let mut unwrapped = Vec::new();
    // TLS connections whose certificate's name becomes the user name once
    // the handshake is done.
    let mut identity_wanted: Vec<ConnId> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut last_tick = 0;
    let mut gone: Vec<ConnId> = Vec::new();
    // `kiln stop`: wills out, clients told, then exit.
    kiln_std::process::on_stop(net::wake_waiters);
    let mut stop_by = None;
    loop {
        let mut active = net::poll();
        let now = kiln_std::time::micros();
        if kiln_std::process::stop_requested() && stop_by.is_none() {
            broker.shutdown(now);
            stop_by = Some(now + STOP_US);
        }
        if let Some(by) = stop_by {
            if conns.is_empty() || now >= by {
                for line in broker.take_log() {
                    println!("mqtt: {line}");
                }
                if let Some(s) = &mut saver {
                    s.save(&broker, now);
                }
                net::flush(1_000_000);
                println!("mqtt: stopped");
                return 0;
            }
        }
        for (listener, tls, ws, port) in listeners.iter_mut().filter(|_| stop_by.is_none()) {
            while let Ok(mut s) = listener.accept() {
                active = true;
                s.set_nonblocking(true);
                let mut s = match tls::wrap(s, tls) {
                    Ok(s) => s,
                    Err(e) => {
                        println!("mqtt: TLS: {e}");
                        continue;
                    }
                };
                if let Some(id) = broker.open_on(peer_of(&s), *port, now) {
                    if tls::identity_as_username(tls) {
                        identity_wanted.push(id);
                    }
                    conns.insert(id, (s, ws.then(Ws::new)));
                } else {
                    s.shutdown();
                }
            }
        }
        for (&id, (s, ws)) in conns.iter_mut() {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        gone.push(id);
                        break;
                    }
                    Ok(n) => {
                        active = true;
                        if let Some(i) = identity_wanted.iter().position(|&w| w == id) {
                            identity_wanted.swap_remove(i);
                            if let Some(name) = tls::peer_name(s) {
                                broker.set_identity(id, name);
                            }
                        }
                        match ws {
                            None => broker.receive(id, &buf[..n], now),
                            Some(w) => {
                                unwrapped.clear();
                                if let Err(e) = w.input(&buf[..n], &mut unwrapped) {
                                    println!("mqtt: {}: {e}; connection closed", peer_of(s));
                                }
                                if !unwrapped.is_empty() {
                                    broker.receive(id, &unwrapped, now);
                                }
                            }
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(NetError::WouldBlock) => break,
                    Err(_) => {
                        if let Some(e) = s.tls_error() {
                            println!("mqtt: TLS from {}: {e}; connection closed", peer_of(s));
                        }
                        gone.push(id);
                        break;
                    }
                }
            }
        }
        // Everything received in this pass, subscriptions first.
        broker.process(now);
        // After every input: one client's message is others' output.
        for (&id, (s, ws)) in conns.iter_mut() {
            match ws {
                None => {
                    if let Some(out) = broker.output(id).filter(|o| !o.is_empty()) {
                        match s.write(out) {
                            Ok(n) => {
                                broker.consumed(id, n);
                                active |= n > 0;
                            }
                            Err(NetError::WouldBlock) => {}
                            Err(_) => gone.push(id),
                        }
                    }
                    if broker.wants_close(id) {
                        s.shutdown();
                        gone.push(id);
                    }
                }
                Some(w) => {
                    // The broker's bytes go into frames at once; the
                    // frames leave as the socket takes them.
                    if let Some(out) = broker.output(id).filter(|o| !o.is_empty()) {
                        let n = out.len();
                        w.frame(out);
                        broker.consumed(id, n);
                    }
                    if !w.output().is_empty() {
                        match s.write(w.output()) {
                            Ok(n) => {
                                w.sent(n);
                                active |= n > 0;
                            }
                            Err(NetError::WouldBlock) => {}
                            Err(_) => gone.push(id),
                        }
                    }
                    if w.output().is_empty() && (w.closed() || broker.wants_close(id)) {
                        s.shutdown();
                        gone.push(id);
                    }
                }
            }
        }
        for id in gone.drain(..) {
            conns.remove(&id);
            identity_wanted.retain(|&w| w != id);
            broker.closed(id, now);
        }
        if now.saturating_sub(last_tick) >= TICK_US {
            last_tick = now;
            broker.tick(now);
        }
        for line in broker.take_log() {
            println!("mqtt: {line}");
        }
        if let Some(s) = &mut saver {
            if s.due(&broker, now) {
                s.save(&broker, now);
            }
        }
        if !active {
            net::idle(WAIT_US);
        }
    }
}

/// TLS listeners (the `tls` feature): their configuration from the
/// listener's files, and connections wrapped in it.
#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use alloc::sync::Arc;
    use kiln_std::tls::{ServerConfig, TlsStream};

    /// A listener's TLS: its configuration and whether the certificate's
    /// name is the user name.
    pub type Tls = Option<(Arc<ServerConfig>, bool)>;

    pub fn listener(cfg: &Config, port: u16) -> Result<Tls, String> {
        let Some(t) = cfg.tls.get(&port) else {
            return Ok(None);
        };
        let cert = read_file(&t.certfile, "certfile")?;
        let key = read_file(&t.keyfile, "keyfile")?;
        let ca = t
            .cafile
            .as_deref()
            .map(|f| read_file(f, "cafile"))
            .transpose()?;
        let o = options(t, ca.as_deref());
        let config = kiln_std::tls::server_config_with(cert.as_bytes(), key.as_bytes(), &o)
            .map_err(|e| format!("{}, {}: {e}", t.certfile, t.keyfile))?;
        println!(
            "mqtt: listener {port} speaks TLS ({}{})",
            t.certfile,
            if t.require_certificate {
                ", client certificates required"
            } else {
                ""
            }
        );
        Ok(Some((config, t.use_identity_as_username)))
    }

    fn options<'a>(
        t: &kiln_mqtt::config::TlsListener,
        ca: Option<&'a str>,
    ) -> kiln_std::tls::Options<'a> {
        kiln_std::tls::Options {
            alpn: &[],
            client_ca: ca.map(str::as_bytes),
            require_client_cert: t.require_certificate,
            only_version: match t.tls_version.as_deref() {
                Some("tlsv1.2") => Some(12),
                Some("tlsv1.3") => Some(13),
                _ => None,
            },
        }
    }

    pub fn wrap(s: net::TcpStream, tls: &Tls) -> Result<Stream, String> {
        Ok(match tls {
            None => Stream::Plain(s),
            Some((config, _)) => Stream::Tls(TlsStream::new(s, config.clone())?),
        })
    }

    pub fn identity_as_username(tls: &Tls) -> bool {
        tls.as_ref().is_some_and(|t| t.1)
    }

    pub fn peer_name(s: &Stream) -> Option<String> {
        match s {
            Stream::Tls(t) => t.session().peer_common_name(),
            Stream::Plain(_) => None,
        }
    }
}

/// Without the `tls` feature: a listener with TLS settings is refused.
#[cfg(not(feature = "tls"))]
mod tls {
    use super::*;

    pub type Tls = ();

    pub fn listener(cfg: &Config, port: u16) -> Result<Tls, String> {
        match cfg.tls.contains_key(&port) {
            true => Err("TLS settings (certfile, keyfile, ...) need APP_MQTT_TLS=y in the app's Kconfig (kconfig: CONFIG_APP_MQTT_TLS: y in the Kraftfile)".into()),
            false => Ok(()),
        }
    }

    pub fn wrap(s: net::TcpStream, _: &Tls) -> Result<Stream, String> {
        Ok(Stream::Plain(s))
    }

    pub fn identity_as_username(_: &Tls) -> bool {
        false
    }

    pub fn peer_name(_: &Stream) -> Option<String> {
        None
    }
}
