//! httpd: a static HTTP/1.1 server for the files of its initrd.
//!
//! One event loop serves every connection: it polls the network stack,
//! accepts new connections, reads requests, and streams responses as the
//! send buffers drain, so a slow or silent client never holds up the others.
//! Supported: GET and HEAD, keep-alive and pipelining, `index.html` for
//! directories, content types by extension, ETag / If-None-Match (304),
//! 400, 404, 405, 413, 431, 505, idle timeouts. Lines may end in CRLF
//! or a bare LF (as nginx accepts); a client that half-closes (shutdown of
//! its sending side after the request) still gets its answers; a first
//! line that cannot become a request line is answered 400 at once.
//!
//! With APP_HTTPD_TLS (the `tls` feature, which `kiln build` turns on with
//! it), a second listener serves the same over TLS 1.3/1.2 (lib/tls), with
//! the certificate chain and key named by Kconfig or by the environment
//! (HTTPD_TLS_CERT, HTTPD_TLS_KEY, HTTPD_TLS_PORT). A connection that is
//! not TLS, or fails its handshake, gets an alert and is closed, with one
//! log line; the others are not affected.
#![no_std]

extern crate alloc;

use kiln_std::fs::{self, File, FileType};
use kiln_std::net::{self, Error as NetError, Stream, TcpListener};
use kiln_std::prelude::*;
use kiln_std::{kconfig_int, kconfig_str};

const PORT: i64 = kconfig_int!("APP_HTTPD_PORT", 80);
const ROOT: &str = kconfig_str!("APP_HTTPD_ROOT", "/www");
const BACKLOG: i64 = kconfig_int!("APP_HTTPD_BACKLOG", 128);
/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest wait for network activity before idle connections are checked.
const WAIT_US: u64 = 1_000_000;
/// A connection without progress for this long is closed.
const IDLE_US: u64 = 30_000_000;
/// How long responses under way may take to finish after `kiln stop`
/// (which waits 5 s for the guest).
const STOP_US: u64 = 3_000_000;

/// The content type for a file name.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

/// Decodes %XX escapes; `None` for bad escapes or a NUL.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = core::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub http10: bool,
    pub keep_alive: bool,
    pub if_none_match: Option<String>,
    pub content_length: usize,
}

/// Why a request head was rejected: the status to answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct Reject(pub u16);

/// Where the request head at the start of `buf` ends: (the head's length
/// without the blank line, the bytes up to and including the blank line).
/// Lines end in CRLF or a bare LF.
pub fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[start..i];
            if start > 0 && (line.is_empty() || line == b"\r") {
                return Some((start, i + 1));
            }
            start = i + 1;
        }
    }
    None
}

/// Whether the start of a request line, before its end has arrived,
/// already cannot be one (a method is a short run of capital letters
/// followed by a space): the client gets its 400 without waiting.
pub fn hopeless(partial: &[u8]) -> bool {
    let method = partial.split(|&b| b == b' ').next().unwrap_or(&[]);
    let complete = method.len() < partial.len();
    !method.iter().all(|c| c.is_ascii_uppercase()) || (!complete && method.len() > 32)
}

/// Parses a request head (without the final blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, Reject> {
    let text = core::str::from_utf8(head).map_err(|_| Reject(400))?;
    // Lines end in CRLF or LF (`lines` takes either).
    let mut lines = text.lines();
    let line = lines.next().ok_or(Reject(400))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject(400));
    };
    // As `hopeless` judges a request line still arriving: a method is 1-32
    // capital letters.
    if method.is_empty() || method.len() > 32 || !method.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err(Reject(400));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(Reject(505)),
        _ => return Err(Reject(400)),
    };
    if !target.starts_with('/') {
        return Err(Reject(400));
    }
    let raw_path = target.split(['?', '#']).next().unwrap_or("/");
    let path = percent_decode(raw_path).ok_or(Reject(400))?;
    let mut req = Request {
        method: method.into(),
        path,
        http10,
        keep_alive: !http10,
        if_none_match: None,
        content_length: 0,
    };
    for l in lines {
        let (name, value) = l.split_once(':').ok_or(Reject(400))?;
        if name.is_empty() || name.contains(' ') {
            return Err(Reject(400));
        }
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    req.keep_alive = false;
                } else if v.contains("keep-alive") {
                    req.keep_alive = true;
                }
            }
            "if-none-match" => req.if_none_match = Some(value.into()),
            "content-length" => req.content_length = value.parse().map_err(|_| Reject(400))?,
            "transfer-encoding" => return Err(Reject(501)),
            _ => {}
        }
    }
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The head and an error page for a status without a file.
fn error_response(status: u16, keep_alive: bool) -> Vec<u8> {
    let body = format!(
        "<!doctype html><title>{status} {0}</title><h1>{status} {0}</h1>\n",
        reason(status)
    );
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nServer: kiln-httpd\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if status == 405 {
        h += "Allow: GET, HEAD\r\n";
    }
    h += "\r\n";
    let mut v = h.into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

/// A file being sent.
struct Body {
    file: File,
    left: u64,
}

struct Conn {
    s: Stream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    body: Option<Body>,
    /// Close once everything queued is sent.
    closing: bool,
    /// Request body bytes still to skip.
    skip: usize,
    last: u64,
    /// The client has finished sending (half-close or close): answer what
    /// it sent, then close.
    eof: bool,
}

/// Resolves a request path to a file under ROOT.
fn resolve(path: &str) -> Option<(String, fs::Metadata)> {
    let full = format!("{}{}", ROOT.trim_end_matches('/'), path);
    let m = fs::metadata(&full).ok()?;
    match m.kind {
        FileType::File => Some((full, m)),
        FileType::Dir => {
            let idx = format!("{}/index.html", full.trim_end_matches('/'));
            let m = fs::metadata(&idx)
                .ok()
                .filter(|m| m.kind == FileType::File)?;
            Some((idx, m))
        }
        _ => None,
    }
}

impl Conn {
    fn new(s: Stream, now: u64) -> Conn {
        Conn {
            s,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            body: None,
            closing: false,
            skip: 0,
            last: now,
            eof: false,
        }
    }

    fn busy(&self) -> bool {
        self.out_pos < self.out.len() || self.body.is_some() || self.s.pending()
    }

    /// Answers one complete request head.
    fn respond(&mut self, head: &[u8]) {
        let req = match parse_head(head) {
            Ok(r) => r,
            Err(Reject(status)) => {
                self.out.extend(error_response(status, false));
                self.closing = true;
                return;
            }
        };
        self.skip = req.content_length;
        if !req.keep_alive {
            self.closing = true;
        }
        let head_only = req.method == "HEAD";
        if req.method != "GET" && !head_only {
            self.out.extend(error_response(405, req.keep_alive));
            return;
        }
        let Some((path, meta)) = resolve(&req.path) else {
            let mut r = error_response(404, req.keep_alive);
            if head_only {
                let end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                r.truncate(end);
            }
            self.out.extend(r);
            return;
        };
        let etag = format!("\"{:x}-{:x}\"", meta.ino, meta.size);
        let conn = if req.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        if req
            .if_none_match
            .as_deref()
            .is_some_and(|t| t == etag || t == "*")
        {
            self.out.extend(format!("HTTP/1.1 304 Not Modified\r\nServer: kiln-httpd\r\nETag: {etag}\r\nConnection: {conn}\r\n\r\n").bytes());
            return;
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(_) => {
                self.out.extend(error_response(404, req.keep_alive));
                return;
            }
        };
        self.out.extend(
            format!(
                "HTTP/1.1 200 OK\r\nServer: kiln-httpd\r\nContent-Type: {}\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: {conn}\r\n\r\n",
                content_type(&path),
                meta.size
            )
            .bytes(),
        );
        if !head_only && meta.size > 0 {
            self.body = Some(Body {
                file,
                left: meta.size,
            });
        }
    }

    /// Reads what arrived and answers complete requests, one at a time.
    fn read(&mut self, now: u64) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => {
                    // The client is done sending: it still gets answers
                    // to what it sent.
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.last = now;
                    let mut data = &buf[..n];
                    if self.skip > 0 {
                        let k = self.skip.min(data.len());
                        self.skip -= k;
                        data = &data[k..];
                    }
                    self.inbuf.extend_from_slice(data);
                }
                Err(NetError::WouldBlock) => break,
                Err(_) => {
                    if let Some(e) = self.s.tls_error() {
                        println!("httpd: TLS: {e}; connection closed");
                    }
                    return false;
                }
            }
        }
        while !self.busy() && !self.closing {
            // Empty lines before a request line are skipped (RFC 9112).
            let blank = self
                .inbuf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.inbuf.drain(..blank);
            let Some((end, used)) = head_end(&self.inbuf) else {
                let first = self.inbuf.split(|&b| b == b'\n').next().unwrap_or(&[]);
                if !self.inbuf.is_empty() && hopeless(first) {
                    self.out.extend(error_response(400, false));
                    self.closing = true;
                } else if self.inbuf.len() > MAX_HEAD {
                    self.out.extend(error_response(431, false));
                    self.closing = true;
                } else if self.eof {
                    // A request cut short by the client's end: nothing to answer.
                    self.closing = true;
                }
                break;
            };
            if end > MAX_HEAD {
                self.out.extend(error_response(431, false));
                self.closing = true;
                break;
            }
            let head: Vec<u8> = self.inbuf.drain(..used).collect();
            self.respond(&head[..end]);
            if self.skip > 0 {
                let k = self.skip.min(self.inbuf.len());
                self.inbuf.drain(..k);
                self.skip -= k;
            }
        }
        true
    }

    /// Sends as much as the connection takes. False when it should go.
    fn write(&mut self, now: u64) -> bool {
        loop {
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
                if self.s.pending() {
                    // TLS records of what was written wait for the socket.
                    if self.s.flush().is_err() {
                        return false;
                    }
                    if self.s.pending() {
                        return true;
                    }
                }
                // Refill from the file being sent.
                if let Some(b) = &mut self.body {
                    let room = self.s.send_capacity().min(64 * 1024);
                    if room == 0 {
                        return true;
                    }
                    let want = (b.left as usize).min(room);
                    self.out.resize(want, 0);
                    match b.file.read(&mut self.out) {
                        Ok(n) if n > 0 => {
                            self.out.truncate(n);
                            b.left -= n as u64;
                            if b.left == 0 {
                                self.body = None;
                            }
                        }
                        _ => return false,
                    }
                } else {
                    return true;
                }
            }
            match self.s.write(&self.out[self.out_pos..]) {
                Ok(0) | Err(NetError::WouldBlock) => return true,
                Ok(n) => {
                    self.out_pos += n;
                    self.last = now;
                }
                Err(_) => return false,
            }
        }
    }
}

/// Entry point: serves until the machine is stopped.
pub fn main(_args: &[&str], env: &[(&str, &str)]) -> i32 {
    if !net::available() {
        println!(
            "httpd: no network device (kiln run adds one; on QEMU use -device virtio-net-device)"
        );
        return 1;
    }
    if fs::metadata(ROOT).is_err() {
        println!(
            "httpd: the document root {ROOT} does not exist (the Kraftfile's rootfs provides it)"
        );
        return 1;
    }
    let mut listener = match TcpListener::bind(PORT as u16, BACKLOG as usize) {
        Ok(l) => l,
        Err(e) => {
            println!("httpd: port {PORT}: {e}");
            return 1;
        }
    };
    listener.set_nonblocking(true);
    #[cfg(feature = "tls")]
    let mut tls = match tls::listener(env) {
        Ok(t) => Some(t),
        Err(e) => {
            println!("httpd: TLS: {e}");
            return 1;
        }
    };
    #[cfg(not(feature = "tls"))]
    let _ = env;
    // `kiln stop`: stop accepting, finish the responses under way, exit.
    kiln_std::process::on_stop(net::wake_waiters);
    let mut listener = Some(listener);
    let mut stop_by = None;
    println!("httpd: serving {ROOT} on port {PORT}");
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut active = net::poll();
        let now = kiln_std::time::micros();
        if kiln_std::process::stop_requested() && stop_by.is_none() {
            listener = None;
            #[cfg(feature = "tls")]
            {
                tls = None;
            }
            let busy = conns.iter().filter(|c| c.busy()).count();
            println!(
                "httpd: stopping: {busy} responses under way, {} connections",
                conns.len()
            );
            for c in &mut conns {
                c.closing = true;
            }
            stop_by = Some(now + STOP_US);
        }
        if let Some(by) = stop_by {
            if conns.is_empty() || now >= by {
                net::flush(1_000_000);
                println!("httpd: stopped");
                return 0;
            }
        }
        while let Some(Ok(mut s)) = listener.as_mut().map(|l| l.accept()) {
            s.set_nonblocking(true);
            conns.push(Conn::new(Stream::Plain(s), now));
            active = true;
        }
        #[cfg(feature = "tls")]
        while let Some((l, config)) = tls.as_mut() {
            let Ok(mut s) = l.accept() else { break };
            s.set_nonblocking(true);
            match kiln_std::tls::TlsStream::new(s, config.clone()) {
                Ok(t) => conns.push(Conn::new(Stream::Tls(t), now)),
                Err(e) => println!("httpd: TLS: {e}; connection refused"),
            }
            active = true;
        }
        conns.retain_mut(|c| {
            if !c.read(now) {
                return false;
            }
            if !c.write(now) {
                return false;
            }
            if c.closing && !c.busy() {
                c.s.shutdown();
                return false;
            }
            // Clients that connect and go quiet do not keep their socket.
            now.saturating_sub(c.last) < IDLE_US
        });
        if !active && !conns.iter().any(|c| c.busy()) {
            // Nothing happened: block until the network does something
            // (the scheduler halts the CPU meanwhile), so an idle server
            // leaves its host CPU alone.
            net::idle(WAIT_US);
        }
    }
}

/// The HTTPS listener.
#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use alloc::sync::Arc;

    const PORT: i64 = kconfig_int!("APP_HTTPD_TLS_PORT", 443);
    const CERT: &str = kconfig_str!("APP_HTTPD_TLS_CERT", "/etc/tls/cert.pem");
    const KEY: &str = kconfig_str!("APP_HTTPD_TLS_KEY", "/etc/tls/key.pem");

    /// Reads the certificate and key (Kconfig's paths, or the
    /// environment's) and listens on the TLS port.
    pub fn listener(
        env: &[(&str, &str)],
    ) -> Result<(TcpListener, Arc<kiln_std::tls::ServerConfig>), String> {
        let var = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let port = match var("HTTPD_TLS_PORT") {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("HTTPD_TLS_PORT={p}: expected a port 1-65535"))?,
            None => PORT as u16,
        };
        let cert_path = var("HTTPD_TLS_CERT").unwrap_or(CERT);
        let key_path = var("HTTPD_TLS_KEY").unwrap_or(KEY);
        let cert =
            fs::read(cert_path).map_err(|e| format!("reading the certificate {cert_path}: {e}"))?;
        let key =
            fs::read(key_path).map_err(|e| format!("reading the private key {key_path}: {e}"))?;
        let config = kiln_std::tls::server_config(&cert, &key, &[b"http/1.1"])
            .map_err(|e| format!("{cert_path}, {key_path}: {e}"))?;
        let mut l =
            TcpListener::bind(port, BACKLOG as usize).map_err(|e| format!("port {port}: {e}"))?;
        l.set_nonblocking(true);
        println!("httpd: serving {ROOT} over TLS on port {port} ({cert_path})");
        Ok((l, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_rejects_bad_ones() {
        let r = parse_head(b"GET /a%20b.html?x=1 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"1-2\"")
            .unwrap();
        assert_eq!(r.path, "/a b.html");
        assert!(r.keep_alive && !r.http10);
        assert_eq!(r.if_none_match.as_deref(), Some("\"1-2\""));
        // Found by fuzzing: 34 capital letters parsed as a method, while
        // the same line still arriving was already answered 400.
        let long = b"GKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKET / HTTP/1.1";
        assert_eq!(parse_head(long), Err(Reject(400)));
        assert!(hopeless(&long[..33]));
        let r = parse_head(b"HEAD / HTTP/1.0").unwrap();
        assert!(!r.keep_alive && r.http10);
        assert!(
            parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert_eq!(parse_head(b"GET / HTTP/2.0"), Err(Reject(505)));
        assert_eq!(parse_head(b"GET /"), Err(Reject(400)));
        assert_eq!(parse_head(b"get / HTTP/1.1"), Err(Reject(400)));
        assert_eq!(parse_head(b"GET x HTTP/1.1"), Err(Reject(400)));
        assert_eq!(parse_head(b"GET /%zz HTTP/1.1"), Err(Reject(400)));
        assert_eq!(parse_head(b"GET /%00 HTTP/1.1"), Err(Reject(400)));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nbad header"),
            Err(Reject(400))
        );
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked"),
            Err(Reject(501))
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\xff: x"), Err(Reject(400)));
        // Bare LF line ends, as nginx takes them.
        let r = parse_head(b"GET /lf HTTP/1.1\nHost: x\nConnection: close\n").unwrap();
        assert_eq!((r.path.as_str(), r.keep_alive), ("/lf", false));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nnext"), Some((23, 24)));
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nnext"),
            Some((25, 27))
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert!(hopeless(b"\x16\x03\x01") && hopeless(b"aaaa") && hopeless(&[b'A'; 40]));
        assert!(!hopeless(b"GE") && !hopeless(b"GET / HTTP/1") && !hopeless(b"OPTIONS"));
        assert_eq!(content_type("/x/INDEX.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("/noext"), "application/octet-stream");
    }
}
