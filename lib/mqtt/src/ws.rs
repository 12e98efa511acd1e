//! MQTT over WebSockets (RFC 6455, as MQTT's own specification and
//! mosquitto's `protocol websockets` listeners use it), with no I/O of its
//! own: [`Ws::input`] takes what the socket gave and returns the MQTT
//! bytes inside, [`Ws::frame`] wraps MQTT bytes for the socket, and
//! [`Ws::output`] is what to send (the handshake's answer, frames, pongs,
//! the closing frame).
//!
//! The handshake is an HTTP/1.1 GET with `Upgrade: websocket`, a
//! `Sec-WebSocket-Key` and version 13; the answer is `101 Switching
//! Protocols` with the key's accept hash and the `mqtt` subprotocol when
//! the client offered it. Client frames must be masked; binary frames and
//! their continuations carry MQTT, whatever their boundaries; ping gets
//! pong; close gets close and ends the connection. Text frames, unmasked
//! frames, unknown opcodes and oversized or malformed requests are
//! errors (the connection is closed with a status when the handshake was
//! done, with `400 Bad Request` before).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use base64::Engine;
use sha1::{Digest, Sha1};

/// Longest handshake request taken.
pub const MAX_REQUEST: usize = 8192;
/// Largest frame payload taken (MQTT packets are limited on their own).
pub const MAX_FRAME: u64 = 1 << 28;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One WebSocket connection's state.
#[derive(Debug, Default)]
pub struct Ws {
    /// The handshake is done.
    open: bool,
    /// Bytes received and not yet used (a partial request or frame).
    rx: Vec<u8>,
    /// Bytes to send.
    out: Vec<u8>,
    /// A close frame was sent: nothing more goes out, the connection ends
    /// once `out` is sent.
    closed: bool,
}

/// The `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

impl Ws {
    pub fn new() -> Ws {
        Ws::default()
    }

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of [`Ws::output`] were sent.
    pub fn sent(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Whether the connection is over once [`Ws::output`] is sent.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Wraps MQTT bytes in a binary frame (servers do not mask).
    pub fn frame(&mut self, data: &[u8]) {
        if !self.closed && !data.is_empty() {
            push_frame(&mut self.out, 0x2, data);
        }
    }

    /// Takes bytes from the socket; appends the MQTT bytes they carry to
    /// `mqtt`. An error says what was wrong; the answer to it (400, or a
    /// close frame) is in [`Ws::output`] and the connection should end
    /// once that is sent.
    pub fn input(&mut self, data: &[u8], mqtt: &mut Vec<u8>) -> Result<(), String> {
        if self.closed {
            return Ok(());
        }
        self.rx.extend_from_slice(data);
        if !self.open {
            let Some(end) = self.rx.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.rx.len() > MAX_REQUEST {
                    return Err(self.refuse("request head too large"));
                }
                return Ok(());
            };
            let head = String::from_utf8_lossy(&self.rx[..end]).into_owned();
            self.rx.drain(..end + 4);
            self.handshake(&head)?;
        }
        loop {
            match parse_frame(&self.rx) {
                Ok(None) => return Ok(()),
                Ok(Some((opcode, payload, used))) => {
                    self.rx.drain(..used);
                    match opcode {
                        0x0 | 0x2 => mqtt.extend_from_slice(&payload),
                        0x8 => {
                            // Echo the status code, then the end.
                            let code = payload.get(..2).map(<[u8]>::to_vec).unwrap_or_default();
                            push_frame(&mut self.out, 0x8, &code);
                            self.closed = true;
                            return Ok(());
                        }
                        0x9 => push_frame(&mut self.out, 0xA, &payload),
                        0xA => {}
                        0x1 => {
                            return Err(
                                self.close(1003, "a text frame (MQTT travels in binary frames)")
                            )
                        }
                        o => return Err(self.close(1002, &format!("unknown opcode {o:#x}"))),
                    }
                }
                Err((code, why)) => return Err(self.close(code, why)),
            }
        }
    }

    fn handshake(&mut self, head: &str) -> Result<(), String> {
        let mut lines = head.split("\r\n");
        let request = lines.next().unwrap_or("");
        let mut parts = request.split(' ');
        if parts.next() != Some("GET") || !parts.nth(1).is_some_and(|v| v.starts_with("HTTP/1.1")) {
            return Err(self.refuse("not an HTTP/1.1 GET"));
        }
        let mut key = None;
        let (mut upgrade, mut version, mut mqtt) = (false, false, false);
        for l in lines {
            let Some((name, value)) = l.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
                "sec-websocket-key" => key = Some(value.to_string()),
                "sec-websocket-version" => version = value == "13",
                "sec-websocket-protocol" => {
                    mqtt = value
                        .split(',')
                        .any(|p| matches!(p.trim(), "mqtt" | "mqttv3.1"))
                }
                _ => {}
            }
        }
        let Some(key) = key.filter(|_| upgrade) else {
            return Err(self.refuse("not a WebSocket upgrade"));
        };
        if !version {
            return Err(self.refuse("WebSocket version is not 13"));
        }
        let protocol = if mqtt {
            "Sec-WebSocket-Protocol: mqtt\r\n"
        } else {
            ""
        };
        self.out.extend_from_slice(
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n", accept_key(&key)).as_bytes(),
        );
        self.open = true;
        Ok(())
    }

    fn refuse(&mut self, why: &str) -> String {
        self.out.extend_from_slice(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        self.closed = true;
        format!("WebSocket handshake: {why}")
    }

    fn close(&mut self, code: u16, why: &str) -> String {
        push_frame(&mut self.out, 0x8, &code.to_be_bytes());
        self.closed = true;
        format!("WebSocket: {why}")
    }
}

fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// One client frame from the start of `b`: (opcode, unmasked payload,
/// bytes used), None when more bytes are needed, or (close status, why).
#[allow(clippy::type_complexity)]
fn parse_frame(b: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, (u16, &'static str)> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x70 != 0 {
        return Err((1002, "reserved bits set"));
    }
    let opcode = b[0] & 0x0f;
    if b[1] & 0x80 == 0 {
        return Err((1002, "an unmasked client frame"));
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    if len > MAX_FRAME {
        return Err((1009, "a frame too large"));
    }
    if opcode >= 0x8 && (len > 125 || b[0] & 0x80 == 0) {
        return Err((1002, "a control frame too large or fragmented"));
    }
    if b.len() < at + 4 + len as usize {
        return Ok(None);
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let payload = b[at..at + len as usize]
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    Ok(Some((opcode, payload, at + len as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = Vec::new();
        push_frame(&mut f, opcode, payload);
        // Set the mask bit and insert the key after the length.
        let at = match f[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        f[1] |= 0x80;
        let body: Vec<u8> = f
            .split_off(at)
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ mask[i % 4])
            .collect();
        f.extend_from_slice(&mask);
        f.extend_from_slice(&body);
        f
    }

    const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_rfcs_example_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_then_mqtt_in_frames_split_anywhere() {
        let mut ws = Ws::new();
        let mut mqtt = Vec::new();
        let mut input = UPGRADE.to_vec();
        input.extend(client_frame(0x2, b"\x10\x0c\x00\x04MQTT"));
        input.extend(client_frame(0x0, b"\x04\x02\x00\x3c\x00\x00"));
        input.extend(client_frame(0x9, b"hi"));
        // One byte at a time.
        for b in &input {
            ws.input(core::slice::from_ref(b), &mut mqtt).unwrap();
        }
        assert_eq!(mqtt, b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
        let out = String::from_utf8_lossy(ws.output()).into_owned();
        assert!(
            out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"), "{out}");
        assert!(ws.output().ends_with(&[0x8A, 2, b'h', b'i']), "pong");
        ws.sent(ws.output().len());
        // Server frames: unmasked binary, all three length forms.
        for n in [5usize, 300, 70000] {
            ws.frame(&alloc::vec![7u8; n]);
            let f = ws.output().to_vec();
            ws.sent(f.len());
            assert_eq!(f[0], 0x82);
            let (len, at) = match f[1] {
                126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                l => (l as usize, 2),
            };
            assert_eq!((len, f.len() - at), (n, n));
        }
        // Close: echoed, then nothing more.
        ws.input(&client_frame(0x8, &1000u16.to_be_bytes()), &mut mqtt)
            .unwrap();
        assert_eq!(ws.output(), [0x88, 2, 0x03, 0xe8]);
        assert!(ws.closed());
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let mut mqtt = Vec::new();
        let mut ws = Ws::new();
        let e = ws
            .input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut mqtt)
            .unwrap_err();
        assert_eq!(e, "WebSocket handshake: not a WebSocket upgrade");
        assert!(ws.output().starts_with(b"HTTP/1.1 400 ") && ws.closed());
        let mut ws = Ws::new();
        ws.input(UPGRADE, &mut mqtt).unwrap();
        ws.sent(ws.output().len());
        let e = ws
            .input(&client_frame(0x1, b"text"), &mut mqtt)
            .unwrap_err();
        assert!(e.contains("text frame"), "{e}");
        assert_eq!(ws.output(), [0x88, 2, 0x03, 0xeb]);
        let mut ws = Ws::new();
        ws.input(UPGRADE, &mut mqtt).unwrap();
        let mut unmasked = Vec::new();
        push_frame(&mut unmasked, 0x2, b"x");
        assert!(ws
            .input(&unmasked, &mut mqtt)
            .unwrap_err()
            .contains("unmasked"));
        let mut ws = Ws::new();
        assert!(ws
            .input(&alloc::vec![b'a'; MAX_REQUEST + 1], &mut mqtt)
            .unwrap_err()
            .contains("too large"));
    }
}
