//! The network stack: smoltcp over the first virtio-net device, driven by
//! polling (no interrupts): every blocking socket call and [`poll`] run the
//! stack. TCP listeners keep a backlog of listening sockets, so many clients
//! can connect at once; [`TcpListener::accept`] hands out the ones that
//! connected.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use kiln_virtio::virtio_drivers::device::net::VirtIONet;
use kiln_virtio::virtio_drivers::transport::DeviceType;
use kiln_virtio::virtio_drivers::transport::SomeTransport;
use kiln_virtio::KilnHal;

type Transport = SomeTransport<'static>;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
pub use smoltcp::wire::{IpAddress, Ipv4Address};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
use spin::Mutex;

const QUEUE: usize = 64;
const BUF_LEN: usize = 2048;

fn config_int(v: Option<&str>, default: usize) -> usize {
    v.and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Per-socket TCP buffers (`CONFIG_LIBNET_TCP_RX_BUFFER`, `..._TX_BUFFER`).
fn rx_buffer() -> usize {
    config_int(option_env!("KILN_CONFIG_LIBNET_TCP_RX_BUFFER"), 16384)
}
fn tx_buffer() -> usize {
    config_int(option_env!("KILN_CONFIG_LIBNET_TCP_TX_BUFFER"), 32768)
}

/// A socket error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Non-blocking call with nothing to do yet.
    WouldBlock,
    /// No network device.
    NoDevice,
    /// The port is taken.
    AddrInUse,
    /// The peer reset or the connection is gone.
    ConnectionReset,
    NotConnected,
    Invalid,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::WouldBlock => "operation would block",
            Error::NoDevice => "no network device",
            Error::AddrInUse => "address in use",
            Error::ConnectionReset => "connection reset",
            Error::NotConnected => "not connected",
            Error::Invalid => "invalid argument",
        })
    }
}

pub type Result<T> = core::result::Result<T, Error>;

pub use smoltcp::wire::IpAddress as IpAddr;

/// smoltcp's view of the virtio-net device.
struct Nic(VirtIONet<KilnHal, Transport, QUEUE>);

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Nic);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.0 .0.new_tx_buffer(len);
        let r = f(buf.packet_mut());
        // A full queue drops the packet; TCP retransmits.
        let _ = self.0 .0.send(buf);
        r
    }
}

impl Device for Nic {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
        if !self.0.can_recv() {
            return None;
        }
        let rx = self.0.receive().ok()?;
        let data = rx.packet().to_vec();
        let _ = self.0.recycle_rx_buffer(rx);
        Some((Rx(data), Tx(self)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        self.0.can_send().then_some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c.max_burst_size = Some(QUEUE / 2);
        c
    }
}

struct Stack {
    iface: Interface,
    nic: Nic,
    sockets: SocketSet<'static>,
}

static STACK: Mutex<Option<Stack>> = Mutex::new(None);

/// Microseconds since boot, from the platform clock (1 GHz assumed when the
/// frequency is unknown, as under TCG).
fn now() -> Instant {
    let p = kiln_boot::platform();
    let ticks = p.map_or(0, |p| p.ticks());
    let hz = p.and_then(|p| p.tick_hz()).unwrap_or(1_000_000_000);
    Instant::from_micros((ticks as u128 * 1_000_000 / hz as u128) as i64)
}

/// Parses `ADDR/PREFIX[:GATEWAY]`.
pub fn parse_ip(s: &str) -> Option<(Ipv4Address, u8, Option<Ipv4Address>)> {
    let (cidr, gw) = match s.split_once(':') {
        Some((c, g)) => (c, Some(g.parse().ok()?)),
        None => (s, None),
    };
    let (a, p) = cidr.split_once('/')?;
    let prefix: u8 = p.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    Some((a.parse().ok()?, prefix, gw))
}

/// Boot-time init (lib/boot runs it when LIBNET is selected): brings up the
/// first virtio-net device with the address from `netdev.ip=`.
pub fn kiln_init() -> core::result::Result<(), alloc::string::String> {
    let Some(t) = kiln_virtio::devices(DeviceType::Network).into_iter().next() else {
        kiln_console::log!(kiln_console::Level::Info, "net: no network device");
        return Ok(());
    };
    let dev = VirtIONet::<KilnHal, Transport, QUEUE>::new(t, BUF_LEN).map_err(|e| alloc::format!("net: virtio-net: {e:?}"))?;
    let mac = dev.mac_address();
    let mut nic = Nic(dev);
    let hw = HardwareAddress::Ethernet(EthernetAddress(mac));
    let mut iface = Interface::new(Config::new(hw), &mut nic, now());
    let spec = kiln_boot::param("netdev.ip").unwrap_or("10.0.2.15/24:10.0.2.2");
    let (addr, prefix, gw) = if spec == "dhcp" {
        dhcp(&mut iface, &mut nic)?
    } else {
        parse_ip(spec).ok_or_else(|| alloc::format!("net: netdev.ip={spec}: expected ADDR/PREFIX[:GATEWAY] or dhcp"))?
    };
    // IPv6: the link-local address from the MAC (EUI-64).
    let ll = smoltcp::wire::Ipv6Address::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    );
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), prefix));
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(ll), 64));
    });
    if let Some(gw) = gw {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    kiln_console::log!(
        kiln_console::Level::Info,
        "net: {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} {addr}/{prefix}{}{} {ll}/64",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
        gw.map(|g| alloc::format!(" via {g}")).unwrap_or_default(),
        if spec == "dhcp" { " (DHCP)" } else { "" }
    );
    *STACK.lock() = Some(Stack { iface, nic, sockets: SocketSet::new(vec![]) });
    Ok(())
}

/// Asks a DHCP server for an address (up to 10 s).
fn dhcp(iface: &mut Interface, nic: &mut Nic) -> core::result::Result<(Ipv4Address, u8, Option<Ipv4Address>), alloc::string::String> {
    use smoltcp::socket::dhcpv4;
    let mut set = SocketSet::new(vec![]);
    let h = set.add(dhcpv4::Socket::new());
    let start = now();
    loop {
        iface.poll(now(), nic, &mut set);
        if let Some(dhcpv4::Event::Configured(c)) = set.get_mut::<dhcpv4::Socket>(h).poll() {
            return Ok((c.address.address(), c.address.prefix_len(), c.router));
        }
        if (now() - start).total_millis() > 10_000 {
            return Err("net: no answer from a DHCP server within 10 s".into());
        }
    }
}

/// Runs the stack once: receives, sends, runs timers. Returns whether
/// anything happened.
pub fn poll() -> bool {
    let mut g = STACK.lock();
    let Some(s) = g.as_mut() else { return false };
    let r = s.iface.poll(now(), &mut s.nic, &mut s.sockets);
    r != smoltcp::iface::PollResult::None
}

/// Sleeps while the network has nothing to do: until the stack's next timer
/// is due, at most `max_us` (devices are polled, so a packet that arrives
/// meanwhile waits for the wake-up). Event loops call it when a round did
/// nothing, so an idle guest stops using its host CPU.
pub fn idle(max_us: u64) {
    let delay = {
        let mut g = STACK.lock();
        g.as_mut().and_then(|s| s.iface.poll_delay(now(), &s.sockets)).map(|d| d.total_micros())
    };
    let us = delay.map_or(max_us, |d| d.min(max_us));
    if let (Some(p), true) = (kiln_boot::platform(), us > 0) {
        p.idle(us);
    }
}

/// Whether a network device is up.
pub fn available() -> bool {
    STACK.lock().is_some()
}

fn with<R>(f: impl FnOnce(&mut Stack) -> R) -> Result<R> {
    let mut g = STACK.lock();
    g.as_mut().map(f).ok_or(Error::NoDevice)
}

/// Runs `attempt` on the stack until it has an answer: at once when
/// non-blocking (WouldBlock if none), else polling the stack between tries.
fn retry<T>(nonblocking: bool, mut attempt: impl FnMut(&mut Stack) -> Option<Result<T>>) -> Result<T> {
    loop {
        if let Some(r) = with(&mut attempt)? {
            return r;
        }
        if nonblocking {
            return Err(Error::WouldBlock);
        }
        poll();
    }
}

fn new_tcp() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx_buffer()]), tcp::SocketBuffer::new(vec![0; tx_buffer()]));
    s.set_nagle_enabled(false);
    s
}

/// A listening TCP port with a backlog of listening sockets.
pub struct TcpListener {
    port: u16,
    backlog: Vec<SocketHandle>,
    nonblocking: bool,
}

impl TcpListener {
    /// Listens on `port` with room for `backlog` connections being set up at once.
    pub fn bind(port: u16, backlog: usize) -> Result<TcpListener> {
        if port == 0 || backlog == 0 {
            return Err(Error::Invalid);
        }
        let handles = with(|s| {
            let taken = s.sockets.iter().any(|(_, sock)| match sock {
                smoltcp::socket::Socket::Tcp(t) => t.state() == tcp::State::Listen && t.listen_endpoint().port == port,
                _ => false,
            });
            if taken {
                return Err(Error::AddrInUse);
            }
            let mut v = Vec::new();
            for _ in 0..backlog {
                let mut t = new_tcp();
                t.listen(port).map_err(|_| Error::Invalid)?;
                v.push(s.sockets.add(t));
            }
            Ok(v)
        })??;
        Ok(TcpListener { port, backlog: handles, nonblocking: false })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_nonblocking(&mut self, v: bool) {
        self.nonblocking = v;
    }

    /// A connection that has been established, replacing its listening
    /// socket with a fresh one. Blocks (polling) unless non-blocking.
    pub fn accept(&mut self) -> Result<TcpStream> {
        loop {
            // Non-blocking callers run the stack themselves (net::poll).
            if !self.nonblocking {
                poll();
            }
            let port = self.port;
            let got = with(|s| {
                for h in self.backlog.iter_mut() {
                    let st = s.sockets.get::<tcp::Socket>(*h).state();
                    if matches!(st, tcp::State::Established | tcp::State::CloseWait) {
                        let mut t = new_tcp();
                        if t.listen(port).is_err() {
                            return None;
                        }
                        let fresh = s.sockets.add(t);
                        return Some(core::mem::replace(h, fresh));
                    }
                }
                None
            })?;
            if let Some(h) = got {
                return Ok(TcpStream { h, nonblocking: false });
            }
            if self.nonblocking {
                return Err(Error::WouldBlock);
            }
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let _ = with(|s| {
            for h in &self.backlog {
                s.sockets.remove(*h);
            }
        });
    }
}

/// A TCP connection. Closed (gracefully) when dropped.
pub struct TcpStream {
    h: SocketHandle,
    nonblocking: bool,
}

impl TcpStream {
    pub fn set_nonblocking(&mut self, v: bool) {
        self.nonblocking = v;
    }

    /// The peer's address and port.
    pub fn peer(&self) -> Option<(IpAddress, u16)> {
        with(|s| s.sockets.get::<tcp::Socket>(self.h).remote_endpoint().map(|e| (e.addr, e.port))).ok().flatten()
    }

    /// Reads what has arrived; 0 means the peer closed its side.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let h = self.h;
        retry(self.nonblocking, |s| {
            let t = s.sockets.get_mut::<tcp::Socket>(h);
            if t.can_recv() {
                return Some(t.recv_slice(buf).map_err(|_| Error::ConnectionReset));
            }
            (!t.may_recv()).then_some(Ok(0))
        })
    }

    /// Queues as much of `buf` as fits in the send buffer.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        let h = self.h;
        let r = retry(self.nonblocking, |s| {
            let t = s.sockets.get_mut::<tcp::Socket>(h);
            if !t.may_send() {
                return Some(Err(Error::ConnectionReset));
            }
            t.can_send().then(|| t.send_slice(buf).map_err(|_| Error::ConnectionReset))
        });
        if !self.nonblocking {
            poll();
        }
        r
    }

    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(Error::WouldBlock) => {
                    poll();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Room left in the send buffer.
    pub fn send_capacity(&self) -> usize {
        with(|s| {
            let t = s.sockets.get::<tcp::Socket>(self.h);
            t.send_capacity() - t.send_queue()
        })
        .unwrap_or(0)
    }

    /// Whether the connection can still carry data both ways.
    pub fn is_open(&self) -> bool {
        with(|s| s.sockets.get::<tcp::Socket>(self.h).may_send()).unwrap_or(false)
    }

    /// Closes the sending side; the peer sees end of file.
    pub fn shutdown(&mut self) {
        let _ = with(|s| s.sockets.get_mut::<tcp::Socket>(self.h).close());
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let _ = with(|s| {
            let t = s.sockets.get_mut::<tcp::Socket>(self.h);
            // Graceful close; the socket is reclaimed once the peer is done.
            t.close();
        });
        CLOSING.lock().push(self.h);
        reap();
    }
}

/// A UDP socket bound to a local port.
pub struct UdpSocket {
    h: SocketHandle,
    nonblocking: bool,
}

impl UdpSocket {
    /// Binds to `port` on every local address.
    pub fn bind(port: u16) -> Result<UdpSocket> {
        if port == 0 {
            return Err(Error::Invalid);
        }
        let h = with(|s| {
            let meta = || vec![udp::PacketMetadata::EMPTY; 32];
            let mut u = udp::Socket::new(udp::PacketBuffer::new(meta(), vec![0; 65536]), udp::PacketBuffer::new(meta(), vec![0; 65536]));
            u.bind(port).map_err(|_| Error::AddrInUse)?;
            Ok(s.sockets.add(u))
        })??;
        Ok(UdpSocket { h, nonblocking: false })
    }

    pub fn set_nonblocking(&mut self, v: bool) {
        self.nonblocking = v;
    }

    /// Receives one datagram: its length and the sender.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, (IpAddress, u16))> {
        let h = self.h;
        retry(self.nonblocking, |s| {
            let u = s.sockets.get_mut::<udp::Socket>(h);
            u.can_recv().then(|| u.recv_slice(buf).map(|(n, m)| (n, (m.endpoint.addr, m.endpoint.port))).map_err(|_| Error::Invalid))
        })
    }

    /// Sends one datagram to `to`.
    pub fn send_to(&mut self, buf: &[u8], to: (IpAddress, u16)) -> Result<usize> {
        let h = self.h;
        let r = retry(self.nonblocking, |s| {
            let u = s.sockets.get_mut::<udp::Socket>(h);
            u.can_send().then(|| u.send_slice(buf, to).map(|_| buf.len()).map_err(|_| Error::Invalid))
        });
        if !self.nonblocking {
            poll();
        }
        r
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let _ = with(|s| s.sockets.remove(self.h));
    }
}

/// Sockets closed by their owner, freed once their connection has ended.
static CLOSING: Mutex<Vec<SocketHandle>> = Mutex::new(Vec::new());

fn reap() {
    let mut closing = CLOSING.lock();
    let _ = with(|s| {
        closing.retain(|h| {
            let t = s.sockets.get_mut::<tcp::Socket>(*h);
            if matches!(t.state(), tcp::State::Closed | tcp::State::TimeWait) {
                s.sockets.remove(*h);
                false
            } else {
                true
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_like_unikraft() {
        let (a, p, g) = parse_ip("10.0.2.15/24:10.0.2.2").unwrap();
        assert_eq!((a, p, g), (Ipv4Address::new(10, 0, 2, 15), 24, Some(Ipv4Address::new(10, 0, 2, 2))));
        assert_eq!(parse_ip("192.168.1.9/16").unwrap().2, None);
        assert!(parse_ip("10.0.2.15").is_none());
        assert!(parse_ip("10.0.2.15/33").is_none());
        assert!(parse_ip("10.0.2/24").is_none());
    }
}
