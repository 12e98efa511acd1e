//! UDP echo (RFC 862): every datagram to port 7 goes back to its sender,
//! upper-cased when it starts with "upper:", so a test can tell the guest
//! answered. `quit` ends the app with status 0.
#![no_std]

use kiln_std::net::UdpSocket;
use kiln_std::prelude::*;

/// Entry point.
pub fn main(_args: &[&str], _env: &[(&str, &str)]) -> i32 {
    let mut s = match UdpSocket::bind(7) {
        Ok(s) => s,
        Err(e) => {
            println!("udpecho: {e}");
            return 1;
        }
    };
    println!("udpecho: listening on port 7");
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        let msg = &mut buf[..n];
        if msg == b"quit" {
            let _ = s.send_to(b"bye", from);
            return 0;
        }
        if msg.starts_with(b"upper:") {
            msg.make_ascii_uppercase();
        }
        let _ = s.send_to(msg, from);
    }
}
