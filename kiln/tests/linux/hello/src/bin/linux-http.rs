//! A small HTTP server on std::net (musl, static-pie): a thread per
//! connection (served concurrently), answers GET with the path, a request count and a file from
//! the rootfs; `GET /quit` answers and ends the program with exit code 7.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn serve(s: TcpStream, count: &AtomicUsize) -> std::io::Result<()> {
    let peer = s.peer_addr()?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    // Headers up to the blank line.
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let motd = std::fs::read_to_string("/etc/motd").unwrap_or_default();
    let body = format!("path={path}\nrequest={n}\npeer-is-ipv4={}\nmotd={motd}", peer.is_ipv4());
    let mut w = s;
    write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}", body.len())?;
    w.flush()?;
    if path == "/quit" {
        println!("linux-http: {n} requests, quitting");
        std::process::exit(7);
    }
    Ok(())
}

fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8080".into());
    let l = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    println!("linux-http: listening on {}", l.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    for s in l.incoming() {
        let s = s.expect("accept");
        let count = count.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(s, &count) {
                println!("linux-http: {e}");
            }
        });
    }
}
