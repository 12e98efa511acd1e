//! TLS for Kiln's servers and clients: rustls (TLS 1.3 and 1.2) with
//! RustCrypto's algorithms, which build without `std` or C for both kernel
//! targets. [`server_config`] and [`client_config`] make configurations;
//! a [`Session`] is either end of one connection.
//!
//! Without `std`, rustls offers only its sans-I/O "unbuffered" connection.
//! [`Session`] puts buffers around it so that an event-loop server can treat
//! a TLS connection like a plain one: ciphertext from the socket goes in
//! with [`Session::received`], plaintext comes out of [`Session::read`],
//! plaintext goes in with [`Session::write`], and [`Session::outgoing`] is
//! the ciphertext to send ([`Session::sent`] says how much went). The
//! session never blocks and never touches a socket.
//!
//! Keys and nonces come from lib/random (RustCrypto asks `getrandom`, which
//! this crate points at it). Certificate validity uses the wall clock
//! (`clock.epoch=` plus the time since boot). Errors are strings that say
//! what was wrong (a file, a key that does not match its certificate, a
//! client that is not speaking TLS), for the server's log.
#![no_std]

extern crate alloc;

#[cfg(feature = "net")]
mod stream;
#[cfg(feature = "net")]
pub use stream::TlsStream;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
pub use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// The wall clock for rustls: `clock.epoch=` plus the time since boot.
/// Without `clock.epoch=` it starts at 1970: a server that checks no
/// client certificates still works (it needs the time only to date its
/// session tickets), and one that does refuses them as not yet valid.
#[derive(Debug)]
struct WallClock;

impl rustls::time_provider::TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        // Host tests: the host's clock.
        #[cfg(test)]
        {
            extern crate std;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            return Some(UnixTime::since_unix_epoch(now));
        }
        #[allow(unreachable_code)]
        let epoch: u64 = kiln_boot::param("clock.epoch")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let up = kiln_boot::platform()
            .and_then(|p| kiln_boot::ticks_to_us(p.ticks(), p.tick_hz()))
            .unwrap_or(0)
            / 1_000_000;
        Some(UnixTime::since_unix_epoch(core::time::Duration::from_secs(
            epoch + up,
        )))
    }
}

fn random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    kiln_random::fill(buf);
    Ok(())
}

getrandom::register_custom_getrandom!(random);

/// A server configuration from a certificate chain and its private key,
/// both PEM: TLS 1.3 and 1.2, no client certificates, `alpn` offered in
/// ALPN.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, String> {
    server_config_with(
        cert_pem,
        key_pem,
        &Options {
            alpn,
            ..Options::default()
        },
    )
}

/// What else a server asks of TLS.
#[derive(Default)]
pub struct Options<'a> {
    /// Protocols offered in ALPN.
    pub alpn: &'a [&'a [u8]],
    /// CA certificates (PEM) that client certificates must chain to: with
    /// it, clients may present one, and it is checked.
    pub client_ca: Option<&'a [u8]>,
    /// Clients must present a certificate (needs `client_ca`).
    pub require_client_cert: bool,
    /// Only this version: 12 or 13 (default: both).
    pub only_version: Option<u8>,
}

/// A server configuration with [`Options`].
pub fn server_config_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    o: &Options,
) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e:?}"))?;
    if certs.is_empty() {
        return Err("certificate: no CERTIFICATE block in the PEM file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e:?}"))?;
    let provider = Arc::new(rustls_rustcrypto::provider());
    key_goes_with(&certs[0], &key, &provider)?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match o.only_version {
        Some(12) => &[&rustls::version::TLS12],
        Some(13) => &[&rustls::version::TLS13],
        _ => rustls::DEFAULT_VERSIONS,
    };
    let builder = ServerConfig::builder_with_details(provider.clone(), Arc::new(WallClock))
        .with_protocol_versions(versions)
        .map_err(|e| format!("{e}"))?;
    let builder = match o.client_ca {
        None if o.require_client_cert => {
            return Err("client certificates required, but no CA to check them against".into())
        }
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = roots(ca)?;
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if o.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("CA file: {e}"))?)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("the private key does not go with the certificate, or is not usable: {e}")
    })?;
    config.alpn_protocols = o.alpn.iter().map(|p| p.to_vec()).collect();
    // Resumption: TLS 1.3 and 1.2 clients come back with a session ticket
    // (stateless, sealed under this configuration's key) or, for 1.2
    // clients without ticket support, a session ID from the cache.
    config.ticketer = Arc::new(Ticketer::new());
    config.session_storage = Arc::new(SessionCache::default());
    Ok(Arc::new(config))
}

/// Whether `key` is the private key of certificate `cert`: a message
/// signed with it must verify with the certificate's public key. (rustls
/// compares the two public keys only when the provider can derive one from
/// a private key, which this provider cannot; a server started with a
/// stranger's key would then fail every handshake.)
fn key_goes_with(
    cert: &CertificateDer<'_>,
    key: &PrivateKeyDer<'_>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(), String> {
    use rustls::SignatureScheme as S;
    let mismatch = || String::from("the private key does not go with the certificate");
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("private key: {e}"))?;
    let schemes = [
        S::ECDSA_NISTP256_SHA256,
        S::ECDSA_NISTP384_SHA384,
        S::ED25519,
        S::RSA_PSS_SHA256,
        S::RSA_PKCS1_SHA256,
    ];
    let Some(signer) = signing.choose_scheme(&schemes) else {
        return Err("private key: no signature scheme Kiln's TLS speaks".into());
    };
    let msg = b"kiln: does this private key go with the certificate?";
    let sig = signer.sign(msg).map_err(|e| format!("private key: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("certificate: {e:?}"))?;
    let algs = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(s, _)| *s == signer.scheme())
        .map_or(&[][..], |(_, a)| *a);
    if algs
        .iter()
        .any(|a| ee.verify_signature(*a, msg, &sig).is_ok())
    {
        Ok(())
    } else {
        Err(mismatch())
    }
}

/// The CA certificates of a PEM file, for checking the other side's.
fn roots(ca_pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| format!("CA file: {e:?}"))?;
        roots.add(c).map_err(|e| format!("CA file: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA file: no CERTIFICATE block in the PEM file".into());
    }
    Ok(roots)
}

/// A client configuration: servers' certificates must chain to one in
/// `ca_pem` (PEM, one or more) and name the server; TLS 1.3 and 1.2;
/// `alpn` offered. With `client_cert` (certificate chain and key, PEM),
/// the client presents it when a server asks.
pub fn client_config(
    ca_pem: &[u8],
    alpn: &[&[u8]],
    client_cert: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(ca_pem)?;
    let provider = Arc::new(rustls_rustcrypto::provider());
    let builder = ClientConfig::builder_with_details(provider, Arc::new(WallClock))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| format!("{e}"))?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client certificate: {e:?}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("client key: {e:?}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("the client key does not go with its certificate: {e}"))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Sessions by ID for TLS 1.2 resumption without tickets: at most
/// [`SessionCache::CAPACITY`], the oldest forgotten first.
#[derive(Debug, Default)]
pub struct SessionCache {
    inner: spin::Mutex<(
        alloc::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        alloc::collections::VecDeque<Vec<u8>>,
    )>,
}

impl SessionCache {
    pub const CAPACITY: usize = 1024;
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        if map.insert(key.clone(), value).is_none() {
            order.push_back(key);
        }
        while map.len() > Self::CAPACITY {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.lock().0.get(key).cloned()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut g = self.inner.lock();
        let v = g.0.remove(key)?;
        g.1.retain(|k| k != key);
        Some(v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Stateless session tickets: the session's secrets sealed with
/// ChaCha20-Poly1305 under a key drawn from lib/random when the
/// configuration is made (so tickets die with the boot, and a server
/// restarted with new keys simply does a full handshake). A ticket is a
/// random 12-byte nonce and the sealed state.
pub struct Ticketer {
    cipher: chacha20poly1305::ChaCha20Poly1305,
}

impl core::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Ticketer")
    }
}

impl Ticketer {
    /// How long a client may keep a ticket (6 hours, as rustls's own).
    pub const LIFETIME_S: u32 = 6 * 3600;

    pub fn new() -> Ticketer {
        use chacha20poly1305::KeyInit;
        let mut key = [0u8; 32];
        kiln_random::fill(&mut key);
        Ticketer {
            cipher: chacha20poly1305::ChaCha20Poly1305::new(&key.into()),
        }
    }
}

impl Default for Ticketer {
    fn default() -> Self {
        Ticketer::new()
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        Self::LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::aead::Aead;
        let mut nonce = [0u8; 12];
        kiln_random::fill(&mut nonce);
        let sealed = self.cipher.encrypt(&nonce.into(), plain).ok()?;
        let mut t = Vec::with_capacity(12 + sealed.len());
        t.extend_from_slice(&nonce);
        t.extend_from_slice(&sealed);
        Some(t)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::aead::Aead;
        if ticket.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = ticket.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        self.cipher.decrypt(&nonce.into(), sealed).ok()
    }
}

/// The common name (CN) in a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    /// One DER element: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let l = b[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
            b = &b[n..];
            l
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let mut fields = Vec::new();
    while let Some((tag, body, r)) = tlv(rest) {
        fields.push((tag, body));
        rest = r;
    }
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let (_, subject) = *fields.get(skip + 4)?;
    let mut rdns = subject;
    while let Some((_, set, r)) = tlv(rdns) {
        rdns = r;
        let mut atvs = set;
        while let Some((_, atv, r2)) = tlv(atvs) {
            atvs = r2;
            let (_, oid, value) = tlv(atv)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, v, _) = tlv(value)?;
                return core::str::from_utf8(v).ok().map(String::from);
            }
        }
    }
    None
}

/// Most ciphertext a session holds for sending before [`Session::write`]
/// takes no more plaintext.
const MAX_OUTGOING: usize = 64 * 1024;

/// rustls's two sans-I/O connections, for one state machine loop.
trait Records {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// 0-RTT data (only servers receive it).
    fn read_early(r: rustls::unbuffered::ReadEarlyData<'_, '_, Self::Data>, out: &mut Vec<u8>);
}

impl Records for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn read_early(mut r: rustls::unbuffered::ReadEarlyData<'_, '_, Self::Data>, out: &mut Vec<u8>) {
        while let Some(Ok(rec)) = r.next_record() {
            out.extend_from_slice(rec.payload);
        }
    }
}

impl Records for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn read_early(_: rustls::unbuffered::ReadEarlyData<'_, '_, Self::Data>, _: &mut Vec<u8>) {}
}

/// Which side of the connection this end is.
enum Conn {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// One TLS connection's state and buffers (see the module's contract):
/// a server's ([`Session::new`]) or a client's ([`Session::client`]).
pub struct Session {
    conn: Conn,
    b: Buffers,
}

/// What a session keeps besides rustls's connection.
struct Buffers {
    /// Ciphertext received and not yet processed.
    incoming: Vec<u8>,
    /// Ciphertext to send.
    outgoing: Vec<u8>,
    /// Plaintext received, not yet read.
    plain_in: Vec<u8>,
    /// Plaintext written before the handshake finished.
    plain_out: Vec<u8>,
    /// The handshake is done: plaintext is encrypted as it is written.
    established: bool,
    peer_closed: bool,
    close_requested: bool,
    close_sent: bool,
    error: Option<String>,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plain_in: Vec::new(),
            plain_out: Vec::new(),
            established: false,
            peer_closed: false,
            close_requested: false,
            close_sent: false,
            error: None,
        }
    }
}

impl Session {
    /// The server's end of a connection a client opened.
    pub fn new(config: Arc<ServerConfig>) -> Result<Session, String> {
        Ok(Session {
            conn: Conn::Server(
                UnbufferedServerConnection::new(config).map_err(|e| format!("{e}"))?,
            ),
            b: Buffers::new(),
        })
    }

    /// The client's end of a connection to `server_name` (the name its
    /// certificate must carry: a DNS name or an IP address). The
    /// ClientHello is in [`Session::outgoing`] at once.
    pub fn client(config: Arc<ClientConfig>, server_name: &str) -> Result<Session, String> {
        let name = rustls_pki_types::ServerName::try_from(String::from(server_name))
            .map_err(|e| format!("server name {server_name}: {e}"))?;
        let mut s = Session {
            conn: Conn::Client(
                UnbufferedClientConnection::new(config, name).map_err(|e| format!("{e}"))?,
            ),
            b: Buffers::new(),
        };
        s.pump();
        Ok(s)
    }

    /// Takes ciphertext from the peer and processes what it completes.
    pub fn received(&mut self, ciphertext: &[u8]) {
        self.b.incoming.extend_from_slice(ciphertext);
        self.pump();
    }

    /// Plaintext received: copies up to `buf.len()` bytes; 0 when there is
    /// none now (see [`Session::peer_closed`] for the end).
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.b.plain_in.len());
        buf[..n].copy_from_slice(&self.b.plain_in[..n]);
        self.b.plain_in.drain(..n);
        n
    }

    /// Queues plaintext to send; returns how much was taken (0 while
    /// [`MAX_OUTGOING`] bytes wait to go out).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.b.error.is_some() || self.b.close_requested {
            return 0;
        }
        let room = MAX_OUTGOING.saturating_sub(self.b.outgoing.len() + self.b.plain_out.len());
        let n = data.len().min(room);
        self.b.plain_out.extend_from_slice(&data[..n]);
        self.pump();
        n
    }

    /// Room for plaintext [`Session::write`] would take now.
    pub fn send_capacity(&self) -> usize {
        MAX_OUTGOING.saturating_sub(self.b.outgoing.len() + self.b.plain_out.len())
    }

    /// Sends close_notify after what is queued.
    pub fn close(&mut self) {
        self.b.close_requested = true;
        self.pump();
    }

    /// Ciphertext waiting to be sent.
    pub fn outgoing(&self) -> &[u8] {
        &self.b.outgoing
    }

    /// `n` bytes of [`Session::outgoing`] went out.
    pub fn sent(&mut self, n: usize) {
        self.b.outgoing.drain(..n.min(self.b.outgoing.len()));
    }

    /// The peer sent close_notify: no more plaintext will come.
    pub fn peer_closed(&self) -> bool {
        self.b.peer_closed && self.b.plain_in.is_empty()
    }

    /// Why the connection failed (a handshake the peer got wrong, bytes
    /// that are not TLS); the alert for the peer is in `outgoing`.
    pub fn error(&self) -> Option<&str> {
        self.b.error.as_deref()
    }

    /// Whether the handshake has finished.
    pub fn established(&self) -> bool {
        self.b.established
    }

    /// The common name of the client's certificate, once the handshake
    /// has checked it.
    pub fn peer_common_name(&self) -> Option<String> {
        let certs = match &self.conn {
            Conn::Server(c) => c.peer_certificates()?,
            Conn::Client(c) => c.peer_certificates()?,
        };
        common_name(certs.first()?)
    }

    /// Runs the connection's state machine until it needs more input.
    fn pump(&mut self) {
        match &mut self.conn {
            Conn::Server(c) => self.b.pump(c),
            Conn::Client(c) => self.b.pump(c),
        }
    }
}

impl Buffers {
    fn pump<C: Records>(&mut self, conn: &mut C) {
        if self.error.is_some() {
            return;
        }
        // Each round handles one state; 64 rounds are far more than one
        // flight of records needs, and stop a loop that makes no progress.
        for _ in 0..64 {
            let UnbufferedStatus { discard, state } = conn.process(&mut self.incoming);
            let mut more = true;
            match state {
                Err(e) => {
                    self.error = Some(format!("{e}"));
                    more = false;
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => self.plain_in.extend_from_slice(rec.payload),
                            Err(e) => {
                                self.error = Some(format!("{e}"));
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::ReadEarlyData(r)) => C::read_early(r, &mut self.plain_in),
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    more = false;
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let out = &mut self.outgoing;
                    let start = out.len();
                    out.resize(start + 4096, 0);
                    let r = match e.encode(&mut out[start..]) {
                        Err(EncodeError::InsufficientSize(s)) => {
                            out.resize(start + s.required_size, 0);
                            e.encode(&mut out[start..])
                        }
                        r => r,
                    };
                    match r {
                        Ok(n) => out.truncate(start + n),
                        Err(err) => {
                            out.truncate(start);
                            self.error = Some(format!("{err}"));
                        }
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // What was encoded is in `outgoing` already; the caller
                    // sends it.
                    t.done();
                }
                Ok(ConnectionState::BlockedHandshake) => more = false,
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    self.established = true;
                    if !self.plain_out.is_empty() {
                        let out = &mut self.outgoing;
                        let start = out.len();
                        out.resize(start + self.plain_out.len() + 1024, 0);
                        let r = match w.encrypt(&self.plain_out, &mut out[start..]) {
                            Err(EncryptError::InsufficientSize(s)) => {
                                out.resize(start + s.required_size, 0);
                                w.encrypt(&self.plain_out, &mut out[start..])
                            }
                            r => r,
                        };
                        match r {
                            Ok(n) => {
                                out.truncate(start + n);
                                self.plain_out.clear();
                            }
                            Err(err) => {
                                out.truncate(start);
                                self.error = Some(format!("{err}"));
                            }
                        }
                    }
                    if self.close_requested && !self.close_sent && self.plain_out.is_empty() {
                        let out = &mut self.outgoing;
                        let start = out.len();
                        out.resize(start + 64, 0);
                        match w.queue_close_notify(&mut out[start..]) {
                            Ok(n) => out.truncate(start + n),
                            Err(_) => out.truncate(start),
                        }
                        self.close_sent = true;
                    }
                    // Nothing more until the peer sends or the app writes.
                    more = false;
                }
                Ok(_) => more = false,
            }
            self.incoming.drain(..discard.min(self.incoming.len()));
            if !more || self.error.is_some() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &[u8] = include_bytes!("../tests/data/ca.pem");
    const CERT: &[u8] = include_bytes!("../tests/data/server.pem");
    const KEY: &[u8] = include_bytes!("../tests/data/server.key");

    /// Passes ciphertext between two sessions until neither has any.
    fn exchange(a: &mut Session, b: &mut Session) {
        for _ in 0..32 {
            let (x, y) = (a.outgoing().to_vec(), b.outgoing().to_vec());
            if x.is_empty() && y.is_empty() {
                return;
            }
            a.sent(x.len());
            b.sent(y.len());
            b.received(&x);
            a.received(&y);
        }
    }

    #[test]
    fn a_client_session_talks_to_a_server_session() {
        let server = server_config(CERT, KEY, &[b"mqtt"]).unwrap();
        let client = client_config(CA, &[b"mqtt"], None).unwrap();
        for name in ["kiln.test", "127.0.0.1"] {
            let mut c = Session::client(client.clone(), name).unwrap();
            assert!(!c.outgoing().is_empty(), "the ClientHello goes out at once");
            let mut s = Session::new(server.clone()).unwrap();
            assert_eq!(
                c.write(b"ping"),
                4,
                "written before the handshake, sent after it"
            );
            exchange(&mut c, &mut s);
            assert!(
                c.established() && s.established(),
                "{:?} {:?}",
                c.error(),
                s.error()
            );
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf);
            assert_eq!(&buf[..n], b"ping");
            s.write(b"pong");
            exchange(&mut c, &mut s);
            let n = c.read(&mut buf);
            assert_eq!(&buf[..n], b"pong");
            c.close();
            exchange(&mut c, &mut s);
            assert!(s.peer_closed());
        }
    }

    #[test]
    fn a_client_refuses_the_wrong_name_or_an_unknown_ca() {
        let server = server_config(CERT, KEY, &[]).unwrap();
        let client = client_config(CA, &[], None).unwrap();
        let mut c = Session::client(client, "other.test").unwrap();
        let mut s = Session::new(server.clone()).unwrap();
        exchange(&mut c, &mut s);
        assert!(
            c.error()
                .is_some_and(|e| e.contains("not valid for name \"other.test\"")),
            "{:?}",
            c.error()
        );
        // A CA the server's certificate does not chain to: its own.
        let stranger = client_config(CERT, &[], None).unwrap();
        let mut c = Session::client(stranger, "kiln.test").unwrap();
        let mut s = Session::new(server).unwrap();
        exchange(&mut c, &mut s);
        assert!(c.error().is_some() && !c.established(), "{:?}", c.error());
        assert!(client_config(b"not pem", &[], None)
            .unwrap_err()
            .contains("no CERTIFICATE"));
        assert!(Session::client(client_config(CA, &[], None).unwrap(), "not a name!").is_err());
    }

    #[test]
    fn tickets_open_only_under_their_key_and_unaltered() {
        use rustls::server::ProducesTickets;
        let t = Ticketer::new();
        let a = t.encrypt(b"session secrets").unwrap();
        let b = t.encrypt(b"session secrets").unwrap();
        assert_ne!(a, b, "a fresh nonce per ticket");
        assert_eq!(t.decrypt(&a).as_deref(), Some(&b"session secrets"[..]));
        let mut bent = a.clone();
        bent[20] ^= 1;
        assert_eq!(t.decrypt(&bent), None);
        assert_eq!(t.decrypt(&a[..20]), None);
        assert_eq!(Ticketer::new().decrypt(&a), None, "another key");
    }

    #[test]
    fn the_session_cache_forgets_the_oldest() {
        use rustls::server::StoresServerSessions;
        let c = SessionCache::default();
        for i in 0..SessionCache::CAPACITY + 2 {
            assert!(c.put(alloc::format!("{i}").into_bytes(), alloc::vec![i as u8]));
        }
        assert_eq!(c.get(b"0"), None);
        assert_eq!(c.get(b"1"), None);
        assert_eq!(c.get(b"2"), Some(alloc::vec![2]));
        assert_eq!(c.take(b"2"), Some(alloc::vec![2]));
        assert_eq!(c.get(b"2"), None);
    }

    #[test]
    fn bad_certificates_and_keys_are_named() {
        assert!(server_config(b"", b"", &[])
            .unwrap_err()
            .contains("no CERTIFICATE"));
        let not_pem = b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n";
        assert!(server_config(not_pem, b"", &[])
            .unwrap_err()
            .starts_with("certificate"));
    }
}
