//! Sockets over lib/net (smoltcp): IPv4 TCP and UDP. Other families are
//! refused with EAFNOSUPPORT, which C libraries expect (glibc then skips
//! its name-service daemon, for instance).
//!
//! lib/net's sockets are used non-blocking; waiting is done here, through
//! [`crate::fd::block`], so a blocked call holds no lock and one thread
//! can read a connection while another writes it.

use crate::fd::{self, block_with, Desc, Kind, POLLHUP, POLLIN, POLLOUT, POLLRDHUP};
use crate::{bytes, bytes_mut, errno, get_u32, get_u64, iovecs, put, Sys};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, Ordering};
use kiln_net::{Error as NetError, IpAddress, Ipv4Address, TcpListener, TcpStream, UdpSocket};

const AF_INET: u64 = 2;
const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
const SOCK_NONBLOCK: u64 = 0o4000;
const SOCK_CLOEXEC: u64 = 0o2000000;
const MSG_DONTWAIT: u64 = 0x40;
const MSG_PEEK: u64 = 0x2;

/// Most sockets a listener keeps listening at once, whatever backlog the
/// program asks for (each holds its buffers).
const MAX_BACKLOG: usize = 32;

type Peer = (IpAddress, u16);

enum State {
    /// A TCP socket before listen or connect (port 0: not bound).
    Tcp {
        port: u16,
    },
    Listener(TcpListener),
    Stream(TcpStream),
    Udp {
        sock: Option<UdpSocket>,
        port: u16,
        peer: Option<Peer>,
    },
}

pub(crate) struct Socket {
    state: spin::Mutex<State>,
}

fn net_err(e: NetError) -> i64 {
    match e {
        NetError::WouldBlock => errno::EAGAIN,
        NetError::NoDevice => errno::ENETDOWN,
        NetError::AddrInUse => errno::EADDRINUSE,
        NetError::ConnectionReset => errno::ECONNRESET,
        NetError::NotConnected => errno::ENOTCONN,
        NetError::NoMemory => errno::ENOMEM,
        _ => errno::EINVAL,
    }
}

/// The next ephemeral port for UDP sockets that send before binding.
fn ephemeral() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(40000);
    let p = NEXT.fetch_add(1, Ordering::Relaxed);
    if p >= 48000 {
        NEXT.store(40000, Ordering::Relaxed);
    }
    p
}

/// Reads a sockaddr_in.
fn sockaddr(ptr: u64, len: u64) -> Result<Peer, i64> {
    if len < 8 {
        return Err(errno::EINVAL);
    }
    // SAFETY: see `crate::bytes`.
    let b = unsafe { bytes(ptr, 8) }?;
    if u16::from_le_bytes([b[0], b[1]]) as u64 != AF_INET {
        return Err(errno::EAFNOSUPPORT);
    }
    let port = u16::from_be_bytes([b[2], b[3]]);
    Ok((
        IpAddress::Ipv4(Ipv4Address::new(b[4], b[5], b[6], b[7])),
        port,
    ))
}

/// Writes a sockaddr_in to `ptr` (up to `*lenptr` bytes) and its length to `*lenptr`.
fn put_sockaddr(ptr: u64, lenptr: u64, (addr, port): Peer) -> Result<(), i64> {
    if ptr == 0 || lenptr == 0 {
        return Ok(());
    }
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(AF_INET as u16).to_le_bytes());
    b[2..4].copy_from_slice(&port.to_be_bytes());
    #[allow(irrefutable_let_patterns)]
    if let IpAddress::Ipv4(a) = addr {
        b[4..8].copy_from_slice(&a.octets());
    }
    // SAFETY: see `crate::bytes`.
    unsafe {
        let room = get_u32(lenptr)? as usize;
        put(ptr, &b[..room.min(16)])?;
        put(lenptr, &16u32.to_le_bytes())?;
    }
    Ok(())
}

impl Socket {
    pub fn readiness(&self) -> u32 {
        match &*self.state.lock() {
            State::Tcp { .. } => POLLOUT | POLLHUP,
            State::Listener(l) => {
                if l.has_pending() {
                    POLLIN
                } else {
                    0
                }
            }
            State::Stream(s) => {
                if s.is_connecting() {
                    return 0;
                }
                let mut r = 0;
                if s.can_read() {
                    r |= POLLIN;
                }
                if s.can_write() {
                    r |= POLLOUT;
                }
                if s.peer_closed() {
                    r |= POLLRDHUP;
                    if !s.is_open() {
                        r |= POLLHUP;
                    }
                }
                r
            }
            State::Udp { sock, .. } => {
                POLLOUT
                    | if sock.as_ref().is_some_and(|s| s.can_read()) {
                        POLLIN
                    } else {
                        0
                    }
            }
        }
    }

    /// Bytes waiting to be read (FIONREAD).
    pub fn pending(&self) -> usize {
        match &*self.state.lock() {
            State::Stream(s) => s.pending(),
            _ => 0,
        }
    }

    /// Receives into `buf`; also says from whom (UDP).
    pub fn recv(&self, d: &Desc, buf: &mut [u8], flags: u64) -> Result<(i64, Option<Peer>), i64> {
        let mut from = None;
        let n = block_with(
            d.nonblocking() || flags & MSG_DONTWAIT != 0,
            || match &mut *self.state.lock() {
                State::Stream(s) => match if flags & MSG_PEEK != 0 {
                    s.peek(buf)
                } else {
                    s.read(buf)
                } {
                    Ok(n) => Some(Ok(n as i64)),
                    Err(NetError::WouldBlock) => None,
                    Err(e) => Some(Err(net_err(e))),
                },
                State::Udp { sock: Some(u), .. } => match u.recv_from(buf) {
                    Ok((n, p)) => {
                        from = Some(p);
                        Some(Ok(n as i64))
                    }
                    Err(NetError::WouldBlock) => None,
                    Err(e) => Some(Err(net_err(e))),
                },
                State::Udp { sock: None, .. } => None,
                _ => Some(Err(errno::ENOTCONN)),
            },
        )?;
        Ok((n, from))
    }

    /// Sends `buf` (to `to`, for UDP). A blocking TCP send returns once all
    /// of it is queued.
    pub fn send(&self, d: &Desc, buf: &[u8], to: Option<Peer>) -> Sys {
        self.send_flags(d, buf, to, 0)
    }

    fn send_flags(&self, d: &Desc, buf: &[u8], to: Option<Peer>, flags: u64) -> Sys {
        let nonblocking = d.nonblocking() || flags & MSG_DONTWAIT != 0;
        let mut sent = 0usize;
        block_with(nonblocking, || match &mut *self.state.lock() {
            State::Stream(s) => match s.write(&buf[sent..]) {
                Ok(n) => {
                    sent += n;
                    (sent == buf.len() || nonblocking).then_some(Ok(sent as i64))
                }
                Err(NetError::WouldBlock) if sent > 0 && nonblocking => Some(Ok(sent as i64)),
                Err(NetError::WouldBlock) => None,
                Err(NetError::ConnectionReset) if sent == 0 => Some(Err(errno::EPIPE)),
                Err(_) if sent > 0 => Some(Ok(sent as i64)),
                Err(e) => Some(Err(net_err(e))),
            },
            State::Udp { sock, port, peer } => {
                let Some(dest) = to.or(*peer) else {
                    return Some(Err(errno::EDESTADDRREQ));
                };
                if sock.is_none() {
                    if *port == 0 {
                        *port = ephemeral();
                    }
                    match UdpSocket::bind(*port) {
                        Ok(mut u) => {
                            u.set_nonblocking(true);
                            *sock = Some(u);
                        }
                        Err(e) => return Some(Err(net_err(e))),
                    }
                }
                match sock.as_mut().unwrap().send_to(buf, dest) {
                    Ok(n) => Some(Ok(n as i64)),
                    Err(NetError::WouldBlock) => None,
                    Err(e) => Some(Err(net_err(e))),
                }
            }
            _ => Some(Err(errno::ENOTCONN)),
        })
    }
}

fn socket_of(fd: i64) -> Result<alloc::sync::Arc<Desc>, i64> {
    let d = fd::get(fd)?;
    if !matches!(d.kind, Kind::Socket(_)) {
        return Err(errno::ENOTSOCK);
    }
    Ok(d)
}

/// A socketpair end (read and written like a pipe).
fn pair(fd: i64) -> Option<alloc::sync::Arc<Desc>> {
    fd::get(fd)
        .ok()
        .filter(|d| matches!(d.kind, Kind::Pair(..)))
}

fn sock(d: &Desc) -> &Socket {
    match &d.kind {
        Kind::Socket(s) => s,
        _ => unreachable!("checked by socket_of"),
    }
}

fn socket(domain: u64, ty: u64) -> Sys {
    if domain != AF_INET {
        return Err(errno::EAFNOSUPPORT);
    }
    if !kiln_net::available() {
        return Err(errno::ENETDOWN);
    }
    let state = match ty & 0xf {
        SOCK_STREAM => State::Tcp { port: 0 },
        SOCK_DGRAM => State::Udp {
            sock: None,
            port: 0,
            peer: None,
        },
        _ => return Err(errno::EPROTONOSUPPORT),
    };
    let flags = (ty & (SOCK_NONBLOCK | SOCK_CLOEXEC)) as u32 | 2;
    fd::install(
        Kind::Socket(Socket {
            state: spin::Mutex::new(state),
        }),
        flags,
    )
}

fn bind(fd: i64, addr: u64, len: u64) -> Sys {
    let d = socket_of(fd)?;
    let (_, p) = sockaddr(addr, len)?;
    match &mut *sock(&d).state.lock() {
        State::Tcp { port } => *port = p,
        State::Udp {
            sock: s @ None,
            port,
            ..
        } => {
            *port = if p == 0 { ephemeral() } else { p };
            let mut u = UdpSocket::bind(*port).map_err(net_err)?;
            u.set_nonblocking(true);
            *s = Some(u);
        }
        _ => return Err(errno::EINVAL),
    }
    Ok(0)
}

fn listen(fd: i64, backlog: u64) -> Sys {
    let d = socket_of(fd)?;
    let mut st = sock(&d).state.lock();
    match &*st {
        State::Tcp { port } => {
            let port = if *port == 0 { ephemeral() } else { *port };
            let mut l =
                TcpListener::bind(port, (backlog as i32).clamp(1, MAX_BACKLOG as i32) as usize)
                    .map_err(net_err)?;
            l.set_nonblocking(true);
            *st = State::Listener(l);
            Ok(0)
        }
        State::Listener(_) => Ok(0),
        _ => Err(errno::EINVAL),
    }
}

fn accept(fd: i64, addr: u64, lenptr: u64, flags: u64) -> Sys {
    let d = socket_of(fd)?;
    let s = sock(&d);
    let r = block_with(d.nonblocking(), || match &mut *s.state.lock() {
        State::Listener(l) => match l.accept() {
            Ok(c) => Some(Ok(c)),
            Err(NetError::WouldBlock) => None,
            Err(e) => Some(Err(net_err(e))),
        },
        _ => Some(Err(errno::EINVAL)),
    });
    d.after_io();
    let mut c = r?;
    c.set_nonblocking(true);
    if let Some(p) = c.peer() {
        put_sockaddr(addr, lenptr, p)?;
    }
    let f = (flags & (SOCK_NONBLOCK | SOCK_CLOEXEC)) as u32 | 2;
    fd::install(
        Kind::Socket(Socket {
            state: spin::Mutex::new(State::Stream(c)),
        }),
        f,
    )
}

fn connect(fd: i64, addr: u64, len: u64) -> Sys {
    let d = socket_of(fd)?;
    let to = sockaddr(addr, len)?;
    let s = sock(&d);
    {
        let mut st = s.state.lock();
        match &mut *st {
            State::Udp { peer, .. } => {
                *peer = Some(to);
                return Ok(0);
            }
            State::Stream(c) if c.is_connecting() => return Err(114), // EALREADY
            State::Stream(_) | State::Listener(_) => return Err(errno::EISCONN),
            State::Tcp { .. } => {}
        }
    }
    // The handshake waits outside the socket's lock.
    let c = TcpStream::connect(to.0, to.1, true).map_err(net_err)?;
    *s.state.lock() = State::Stream(c);
    if d.nonblocking() {
        return Err(errno::EINPROGRESS);
    }
    block_with(false, || match &*s.state.lock() {
        State::Stream(c) if c.is_connecting() => None,
        State::Stream(c) if c.is_open() => Some(Ok(0)),
        _ => Some(Err(errno::ECONNREFUSED)),
    })
}

fn sendto(fd: i64, buf: u64, len: u64, flags: u64, addr: u64, alen: u64) -> Sys {
    if let Some(d) = pair(fd) {
        // SAFETY: see `crate::bytes`.
        return fd::write_desc(&d, unsafe { bytes(buf, len) }?);
    }
    let d = socket_of(fd)?;
    let to = if addr != 0 {
        Some(sockaddr(addr, alen)?)
    } else {
        None
    };
    // SAFETY: see `crate::bytes`.
    let data = unsafe { bytes(buf, len) }?;
    let r = sock(&d).send_flags(&d, data, to, flags);
    d.after_io();
    r
}

fn recvfrom(fd: i64, buf: u64, len: u64, flags: u64, addr: u64, lenptr: u64) -> Sys {
    if let Some(d) = pair(fd) {
        // SAFETY: see `crate::bytes`.
        return fd::read_desc(&d, unsafe { bytes_mut(buf, len) }?);
    }
    let d = socket_of(fd)?;
    // SAFETY: see `crate::bytes`.
    let data = unsafe { bytes_mut(buf, len) }?;
    let r = sock(&d).recv(&d, data, flags);
    d.after_io();
    let (n, from) = r?;
    if let Some(p) = from.or_else(|| peer_of(&d)) {
        put_sockaddr(addr, lenptr, p)?;
    }
    Ok(n)
}

fn peer_of(d: &Desc) -> Option<Peer> {
    match &*sock(d).state.lock() {
        State::Stream(s) => s.peer(),
        State::Udp { peer, .. } => *peer,
        _ => None,
    }
}

/// sendmsg/recvmsg: the iovecs gathered into (scattered from) one buffer.
fn msg(fd: i64, hdr: u64, flags: u64, send: bool) -> Sys {
    // SAFETY: see `crate::bytes`; struct msghdr is 56 bytes.
    let (name, namelen, iov, iovlen) = unsafe {
        (
            get_u64(hdr)?,
            get_u32(hdr + 8)? as u64,
            get_u64(hdr + 16)?,
            get_u64(hdr + 24)?,
        )
    };
    // SAFETY: see `crate::bytes`.
    let v = unsafe { iovecs(iov, iovlen) }?;
    if send {
        let mut all = Vec::new();
        for &(b, l) in &v {
            // SAFETY: see `crate::bytes`.
            all.extend_from_slice(unsafe { bytes(b, l) }?);
        }
        return sendto(
            fd,
            all.as_ptr() as u64,
            all.len() as u64,
            flags,
            if namelen > 0 { name } else { 0 },
            namelen,
        );
    }
    let total: u64 = v.iter().map(|&(_, l)| l).sum();
    let mut tmp = alloc::vec![0u8; total.min(1 << 20) as usize];
    let n = recvfrom(
        fd,
        tmp.as_mut_ptr() as u64,
        tmp.len() as u64,
        flags,
        name,
        if name != 0 { hdr + 8 } else { 0 },
    )?;
    let mut at = 0usize;
    for (b, l) in v {
        if at >= n as usize {
            break;
        }
        let k = (l as usize).min(n as usize - at);
        // SAFETY: see `crate::bytes`.
        unsafe { put(b, &tmp[at..at + k]) }?;
        at += k;
    }
    // No control data; no flags.
    // SAFETY: see `crate::bytes`.
    unsafe {
        put(hdr + 40, &0u64.to_le_bytes())?;
        put(hdr + 48, &0u32.to_le_bytes())?;
    }
    Ok(n)
}

/// sendmmsg/recvmmsg: [`msg`] for each struct mmsghdr (a msghdr, then
/// the byte count: 64 bytes) in turn, as many as go without an error after
/// the first. recvmmsg's MSG_WAITFORONE waits for the first message only;
/// its timeout is checked after each message, as Linux does.
fn mmsg(fd: i64, vec: u64, vlen: u64, flags: u64, timeout: u64, send: bool) -> Sys {
    const MSG_WAITFORONE: u64 = 0x10000;
    let deadline = match (send, timeout) {
        (false, t) if t != 0 => {
            // SAFETY: see `crate::bytes`.
            Some(crate::now_us().saturating_add(unsafe { crate::read_timespec_us(t) }?))
        }
        _ => None,
    };
    let mut done = 0;
    // UIO_MAXIOV messages at most.
    while done < vlen.min(1024) {
        let hdr = vec + done * 64;
        let mut f = flags & !MSG_WAITFORONE;
        if !send && done > 0 && flags & MSG_WAITFORONE != 0 {
            f |= MSG_DONTWAIT;
        }
        match msg(fd, hdr, f, send) {
            Ok(n) => {
                // SAFETY: see `crate::bytes`.
                unsafe { put(hdr + 56, &(n as u32).to_le_bytes()) }?;
                done += 1;
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
        if deadline.is_some_and(|d| crate::now_us() >= d) {
            break;
        }
    }
    Ok(done as i64)
}

fn getsockopt(fd: i64, level: u64, name: u64, val: u64, lenptr: u64) -> Sys {
    const SOL_SOCKET: u64 = 1;
    let d = socket_of(fd)?;
    let v: u32 = match (level, name) {
        // SO_ERROR: a refused connect shows here after EINPROGRESS.
        (SOL_SOCKET, 4) => match &*sock(&d).state.lock() {
            State::Stream(s) if !s.is_connecting() && !s.is_open() && !s.can_read() => {
                errno::ECONNREFUSED as u32
            }
            _ => 0,
        },
        (SOL_SOCKET, 3) => match &*sock(&d).state.lock() {
            State::Udp { .. } => SOCK_DGRAM as u32,
            _ => SOCK_STREAM as u32,
        },
        (SOL_SOCKET, 7) => 32768,
        (SOL_SOCKET, 8) => 16384,
        // SO_ACCEPTCONN: only a socket that listens.
        (SOL_SOCKET, 30) => matches!(&*sock(&d).state.lock(), State::Listener(_)) as u32,
        _ => 0,
    };
    // SAFETY: see `crate::bytes`.
    unsafe {
        let room = get_u32(lenptr)? as usize;
        put(val, &v.to_le_bytes()[..room.min(4)])?;
        put(lenptr, &4u32.to_le_bytes())?;
    }
    Ok(0)
}

fn name(fd: i64, addr: u64, lenptr: u64, peer: bool) -> Sys {
    let d = socket_of(fd)?;
    let any = IpAddress::Ipv4(Ipv4Address::new(0, 0, 0, 0));
    let local_ip = kiln_net::local_ipv4().map_or(any, IpAddress::Ipv4);
    let p = match (&*sock(&d).state.lock(), peer) {
        (State::Stream(s), true) => s.peer(),
        (State::Udp { peer, .. }, true) => *peer,
        (_, true) => None,
        (State::Stream(s), false) => s.local(),
        (State::Listener(l), false) => Some((any, l.port())),
        (State::Tcp { port }, false) => Some((any, *port)),
        (State::Udp { port, .. }, false) => Some((local_ip, *port)),
    };
    put_sockaddr(addr, lenptr, p.ok_or(errno::ENOTCONN)?)?;
    Ok(0)
}

fn shutdown(fd: i64, how: u64) -> Sys {
    let d = socket_of(fd)?;
    if let State::Stream(s) = &mut *sock(&d).state.lock() {
        // SHUT_WR or SHUT_RDWR close the sending side.
        if how >= 1 {
            s.shutdown();
        }
        return Ok(0);
    }
    Err(errno::ENOTCONN)
}

/// The socket calls; None if `nr` is not one.
pub(crate) fn call(nr: u64, a: [u64; 6]) -> Option<Sys> {
    let fd = a[0] as i64;
    Some(match nr {
        41 => socket(a[0], a[1]),
        53 => fd::socketpair(a[0], a[1], a[3]),
        49 => bind(fd, a[1], a[2]),
        50 => listen(fd, a[1]),
        43 => accept(fd, a[1], a[2], 0),
        288 => accept(fd, a[1], a[2], a[3]),
        42 => connect(fd, a[1], a[2]),
        44 => sendto(fd, a[1], a[2], a[3], a[4], a[5]),
        45 => recvfrom(fd, a[1], a[2], a[3], a[4], a[5]),
        46 => msg(fd, a[1], a[2], true),
        47 => msg(fd, a[1], a[2], false),
        307 => mmsg(fd, a[1], a[2], a[3], 0, true),
        299 => mmsg(fd, a[1], a[2], a[3], a[4], false),
        48 => shutdown(fd, a[1]),
        51 => name(fd, a[1], a[2], false),
        52 => name(fd, a[1], a[2], true),
        // setsockopt: options are accepted (addresses are always reusable,
        // Nagle is off, keep-alive is the stack's).
        54 => fd::get(fd).map(|_| 0),
        55 => getsockopt(fd, a[1], a[2], a[3], a[4]),
        _ => return None,
    })
}
