//! TCP port forwarding for `-p HOST:GUEST`: to QEMU's user network, or
//! to a guest's own address on a tap (Firecracker, cloud-hypervisor).
//!
//! QEMU's user network listens for a forwarded port itself, with a backlog
//! of one: of a burst of simultaneous clients the host's kernel completes
//! every handshake, but QEMU takes the connections one by one only as the
//! kernel retries them, seconds to a minute later, and meanwhile a client
//! sees an open connection and silence. So Kiln listens on the host port
//! itself (with the kernel's full backlog), tells QEMU to forward a free
//! loopback port instead, and hands clients over one connect at a time,
//! each only once QEMU has taken the one before (its listening socket's
//! accept queue, read from `/proc/net/tcp`, is empty). Bytes are relayed
//! both ways by a thread per direction; a half-close (end of input) on one
//! side is passed on to the other, so a client that shuts down its sending
//! side still gets its answer.
//!
//! UDP forwards stay QEMU's own (no backlog there). A guest on a tap is
//! connected to directly, so there is no queue to wait on.

use anyhow::{bail, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One forward: clients on `host` (all addresses) are handed to `to`
/// (QEMU's forward on a loopback port, or the guest on its tap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relay {
    pub host: u16,
    pub to: SocketAddrV4,
}

/// A free loopback port for QEMU's side of a forward.
pub fn loopback_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Listens on every relay's host port (failing, with the port, when one
/// is taken), then serves them from background threads for as long as
/// this process lives.
pub fn start(relays: &[Relay]) -> Result<()> {
    let mut bound = Vec::new();
    for r in relays {
        match TcpListener::bind(("0.0.0.0", r.host)) {
            Ok(l) => bound.push((l, r.to)),
            Err(e) => bail!("-p {}: cannot listen on host port {} ({e})", r.host, r.host),
        }
    }
    for (listener, to) in bound {
        let (tx, rx) = mpsc::channel::<TcpStream>();
        std::thread::spawn(move || {
            for c in listener.incoming().flatten() {
                if tx.send(c).is_err() {
                    return;
                }
            }
        });
        std::thread::spawn(move || hand_over(rx, to));
    }
    Ok(())
}

/// Connects each client to `to` in turn and starts relaying its bytes.
fn hand_over(clients: mpsc::Receiver<TcpStream>, to: SocketAddrV4) {
    let loopback = to.ip().is_loopback();
    for client in clients {
        // The VMM (or the guest's server) may still be starting: it gets
        // two seconds to listen (a guest on a tap, which boots slowly under
        // emulation, 30).
        let start = Instant::now();
        let patience = Duration::from_secs(if loopback { 2 } else { 30 });
        let server = loop {
            match TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)) {
                Ok(q) => break Some(q),
                Err(_) if start.elapsed() < patience => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => break None,
            }
        };
        let Some(server) = server else {
            // QEMU is gone: the client is closed.
            continue;
        };
        if loopback {
            wait_taken(to.port());
        }
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(q2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || pipe(client, server));
        std::thread::spawn(move || pipe(q2, c2));
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s sending side
/// (and, on an error, both connections).
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Waits (at most 200 ms) until QEMU has accepted every connection made
/// to its listening socket on 127.0.0.1:`port`.
fn wait_taken(port: u16) {
    let start = Instant::now();
    while accept_queue(port).is_some_and(|n| n > 0) && start.elapsed() < Duration::from_millis(200)
    {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Connections waiting in the accept queue of the socket listening on
/// 127.0.0.1:`port` (for a listening socket, `/proc/net/tcp`'s rx_queue).
fn accept_queue(port: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    listen_queue(&text, port)
}

/// The accept queue of the listener on 127.0.0.1:`port` in a
/// `/proc/net/tcp` table.
fn listen_queue(table: &str, port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local rem st tx_queue:rx_queue ...; st 0A is LISTEN.
        if f.len() > 4 && f[1] == local && f[3] == "0A" {
            u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listeners_accept_queue() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9C41 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:9C41 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listen_queue(table, 0x9C41), Some(2));
        assert_eq!(listen_queue(table, 80), None);
    }

    #[test]
    fn relays_both_ways_with_half_close() {
        // An echo server standing in for QEMU.
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let via = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut c in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    c.read_to_end(&mut all).unwrap();
                    c.write_all(&all).unwrap();
                });
            }
        });
        let host = loopback_port().unwrap();
        let to = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, via);
        start(&[Relay { host, to }]).unwrap();
        let clients: Vec<_> = (0..50)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(("127.0.0.1", host)).unwrap();
                    let msg = format!("client {i}");
                    s.write_all(msg.as_bytes()).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut back = String::new();
                    s.read_to_string(&mut back).unwrap();
                    back == msg
                })
            })
            .collect();
        assert!(clients.into_iter().all(|c| c.join().unwrap()));
        assert!(
            start(&[Relay { host, to }]).is_err(),
            "a taken port is an error"
        );
    }
}
