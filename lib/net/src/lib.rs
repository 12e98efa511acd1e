//! The network stack: smoltcp over the first virtio-net device (or the
//! platform's own device, a host tap under plat/linuxu), driven by
//! lib/sched. A blocking socket call that cannot finish blocks its thread on
//! the stack's activity queue; the scheduler runs the stack (this crate
//! registers a poller) when no thread is ready, and wakes those threads
//! when it did something. How the scheduler learns of packets is chosen in
//! Kconfig: the device's interrupt ends the CPU's halt (LIBVIRTIO_IRQ, on
//! platforms that route it: virtio-mmio on microvm), or the stack is polled
//! every 1 ms, backing off to 16 ms while the network is quiet
//! (LIBVIRTIO_POLL, and PCI devices).
//!
//! TCP listeners keep a backlog of listening sockets, so many clients can
//! connect at once; [`TcpListener::accept`] hands out the ones that
//! connected. [`dns::resolve`] asks the DNS servers from `netdev.dns=`, DHCP
//! or QEMU's user network. A DHCP lease is renewed as long as the kernel
//! runs.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use kiln_virtio::virtio_drivers::device::net::VirtIONet;
use kiln_virtio::virtio_drivers::transport::DeviceType;
use kiln_virtio::virtio_drivers::transport::SomeTransport;
use kiln_virtio::KilnHal;

/// Status writes in the specification's steps (strict devices refuse
/// virtio-drivers' combined ones).
type Transport = kiln_virtio::Stepwise<SomeTransport<'static>>;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
pub use smoltcp::wire::{IpAddress, Ipv4Address};
use spin::Mutex;

const QUEUE: usize = 256;

/// Threads waiting for the network to do something (a socket to become
/// readable, writable, connected, closed; a DNS answer).
static ACTIVITY: kiln_sched::WaitQueue = kiln_sched::WaitQueue::for_device();

/// Whether the device interrupt wakes the scheduler (else: timed polling).
static IRQ: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Current polling interval while quiet (polling mode), in µs.
static QUIET_US: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(MIN_QUIET_US);
const MIN_QUIET_US: u64 = 1000;
const MAX_QUIET_US: u64 = 16_000;
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
    /// DNS: no such name (or no address of the asked kind).
    NotFound,
    /// DNS: no server is configured (`netdev.dns=`).
    NoDnsServer,
    /// The heap cannot hold another socket's buffers.
    NoMemory,
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
            Error::NotFound => "name not found",
            Error::NoDnsServer => "no DNS server configured (netdev.dns=)",
            Error::NoMemory => "not enough memory for another socket",
        })
    }
}

pub type Result<T> = core::result::Result<T, Error>;

pub use smoltcp::wire::IpAddress as IpAddr;

/// The device under the stack: the first virtio-net device, or one the
/// platform drives itself (a host tap device under plat/linuxu).
enum Link {
    Virtio(VirtIONet<KilnHal, Transport, QUEUE>),
    Platform(&'static dyn kiln_boot::NetDevice),
}

/// smoltcp's view of the device, with a budget of packets to receive per
/// stack run (so listeners are topped up between bursts).
struct Nic(Link, usize);

impl Nic {
    /// Lowers the device's interrupt, so it can interrupt again.
    fn ack_interrupt(&mut self) {
        if let Link::Virtio(v) = &mut self.0 {
            v.ack_interrupt();
        }
    }
}

/// Packets received per stack run; the listeners' backlog is refilled
/// between runs, so a burst of SYNs finds listening sockets.
const RX_BUDGET: usize = 32;
/// Most packets taken in per stack run before sending (see [`poll`]).
const INGRESS_MAX: usize = 512;

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Nic);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match &mut self.0 .0 {
            Link::Virtio(v) => {
                let mut buf = v.new_tx_buffer(len);
                let r = f(buf.packet_mut());
                // A full queue drops the packet; TCP retransmits.
                let _ = v.send(buf);
                r
            }
            Link::Platform(d) => {
                let mut buf = vec![0u8; len];
                let r = f(&mut buf);
                let _ = d.send(&buf);
                r
            }
        }
    }
}

impl Device for Nic {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
        if self.1 == 0 {
            return None;
        }
        let data = match &mut self.0 {
            Link::Virtio(v) => {
                if !v.can_recv() {
                    return None;
                }
                let rx = v.receive().ok()?;
                let data = rx.packet().to_vec();
                let _ = v.recycle_rx_buffer(rx);
                data
            }
            Link::Platform(d) => {
                let mut buf = vec![0u8; 1514];
                let n = d.receive(&mut buf)?;
                buf.truncate(n);
                buf
            }
        };
        self.1 -= 1;
        Some((Rx(data), Tx(self)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        match &self.0 {
            Link::Virtio(v) if !v.can_send() => None,
            _ => Some(Tx(self)),
        }
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
    /// The DHCP client, kept to renew the lease.
    dhcp: Option<SocketHandle>,
    /// The DNS client, made on first use.
    dns: Option<SocketHandle>,
    dns_servers: Vec<IpAddress>,
    /// Open TCP listeners, by [`TcpListener`] slot.
    listeners: Vec<Option<Listen>>,
}

/// A listening port's sockets: some listening, the others connecting or
/// connected and waiting for [`TcpListener::accept`] (oldest first).
struct Listen {
    port: u16,
    /// Sockets kept in the listening state.
    ready: usize,
    socks: Vec<SocketHandle>,
}

impl Listen {
    /// Most connections waiting to be accepted, per listening socket.
    const QUEUE_FACTOR: usize = 8;

    /// Re-arms sockets whose handshake failed and tops up the listening
    /// ones (unless too many connections wait for accept).
    fn refill(&mut self, set: &mut SocketSet<'static>) {
        let mut listening = 0;
        for &h in &self.socks {
            let t = set.get_mut::<tcp::Socket>(h);
            match t.state() {
                tcp::State::Listen => listening += 1,
                tcp::State::Closed => {
                    if t.listen(self.port).is_ok() {
                        listening += 1;
                    }
                }
                _ => {}
            }
        }
        while listening < self.ready && self.socks.len() < self.ready * Self::QUEUE_FACTOR {
            // Out of memory: no more listening sockets until some close.
            let Some(mut t) = new_tcp() else { return };
            if t.listen(self.port).is_err() {
                return;
            }
            self.socks.push(set.add(t));
            listening += 1;
        }
    }

    /// Takes the oldest established connection.
    fn take(&mut self, set: &mut SocketSet<'static>) -> Option<SocketHandle> {
        let i = self.socks.iter().position(|&h| {
            matches!(
                set.get::<tcp::Socket>(h).state(),
                tcp::State::Established | tcp::State::CloseWait
            )
        })?;
        Some(self.socks.remove(i))
    }
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

/// Parses `ADDR/PREFIX[:GATEWAY[:DNS]]` (the DNS server, as urunc
/// passes it, is [`dns_in_ip`]'s).
pub fn parse_ip(s: &str) -> Option<(Ipv4Address, u8, Option<Ipv4Address>)> {
    let mut parts = s.split(':');
    let cidr = parts.next()?;
    let gw = match parts.next() {
        Some("") | None => None,
        Some(g) => Some(g.parse().ok()?),
    };
    if let Some(dns) = parts.next() {
        if !dns.is_empty() {
            dns.parse::<Ipv4Address>().ok()?;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    let (a, p) = cidr.split_once('/')?;
    let prefix: u8 = p.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    Some((a.parse().ok()?, prefix, gw))
}

/// The DNS server in `ADDR/PREFIX:GATEWAY:DNS`, if there is one.
pub fn dns_in_ip(s: &str) -> Option<Ipv4Address> {
    s.split(':').nth(2).and_then(|d| d.parse().ok())
}

/// Boot-time init (lib/boot runs it when LIBNET is selected): brings up the
/// platform's own network device if it has one (plat/linuxu's tap), else
/// the first virtio-net device, with the address from `netdev.ip=`.
pub fn kiln_init() -> core::result::Result<(), alloc::string::String> {
    let (mut nic, mac, irq, signals) =
        match kiln_boot::platform().and_then(|p| Some((p.net_device()?, p.device_wakes()))) {
            // The platform's own device wakes the CPU when the platform says so.
            Some((d, wakes)) => (Nic(Link::Platform(d), usize::MAX), d.mac(), wakes, None),
            None => {
                let Some(t) = kiln_virtio::devices(DeviceType::Network).into_iter().next() else {
                    kiln_console::log!(kiln_console::Level::Info, "net: no network device");
                    return Ok(());
                };
                let refused = kiln_virtio::refused();
                let signals = t.signals_by();
                let wakes = signals.is_some();
                let mut dev = VirtIONet::<KilnHal, Transport, QUEUE>::new(t, BUF_LEN)
                    .map_err(|e| alloc::format!("net: virtio-net: {e:?}"))?;
                if kiln_virtio::refused() != refused {
                    return Err(
                    "net: the virtio-net device refused the features Kiln asked for; no network"
                        .into(),
                );
                }
                let mac = dev.mac_address();
                let want_irq = option_env!("KILN_CONFIG_LIBVIRTIO_IRQ") == Some("y");
                let irq = want_irq && wakes;
                if irq {
                    dev.enable_interrupts();
                } else {
                    dev.disable_interrupts();
                }
                (Nic(Link::Virtio(dev), usize::MAX), mac, irq, signals)
            }
        };
    if irq {
        IRQ.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    let hw = HardwareAddress::Ethernet(EthernetAddress(mac));
    let mut iface = Interface::new(Config::new(hw), &mut nic, now());
    let given = kiln_boot::param("netdev.ip");
    let spec = given.unwrap_or("10.0.2.15/24:10.0.2.2");
    let mut sockets = SocketSet::new(vec![]);
    let mut dhcp_handle = None;
    let mut dns_servers = Vec::new();
    let (addr, prefix, gw) = if spec == "dhcp" {
        let (h, c) = dhcp(&mut iface, &mut nic, &mut sockets)?;
        dhcp_handle = Some(h);
        dns_servers = c.3;
        (c.0, c.1, c.2)
    } else {
        parse_ip(spec).ok_or_else(|| {
            alloc::format!("net: netdev.ip={spec}: expected ADDR/PREFIX[:GATEWAY[:DNS]] or dhcp")
        })?
    };
    if given.is_none() {
        // QEMU's user network answers DNS at 10.0.2.3.
        dns_servers.push(IpAddress::v4(10, 0, 2, 3));
    }
    if let Some(d) = dns_in_ip(spec) {
        dns_servers = vec![IpAddress::Ipv4(d)];
    }
    if let Some(list) = kiln_boot::param("netdev.dns") {
        dns_servers = parse_servers(list)
            .ok_or_else(|| alloc::format!("net: netdev.dns={list}: expected ADDR[,ADDR...]"))?;
    }
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
        "net: {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} {addr}/{prefix}{}{} {ll}/64, {}{}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        gw.map(|g| alloc::format!(" via {g}")).unwrap_or_default(),
        if spec == "dhcp" { " (DHCP)" } else { "" },
        if irq { "interrupts" } else { "polled" },
        match signals {
            Some(how) if irq && how != "line" => alloc::format!(" ({how})"),
            _ => alloc::string::String::new(),
        }
    );
    nic.1 = RX_BUDGET;
    *STACK.lock() = Some(Stack {
        iface,
        nic,
        sockets,
        dhcp: dhcp_handle,
        dns: None,
        dns_servers,
        listeners: Vec::new(),
    });
    kiln_sched::add_poller(poller);
    Ok(())
}

/// Parses `ADDR[,ADDR...]` (IPv4 or IPv6).
pub fn parse_servers(s: &str) -> Option<Vec<IpAddress>> {
    s.split(',')
        .map(|a| a.parse().ok())
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
}

/// What DHCP gave: address, prefix, router, DNS servers.
type Lease = (Ipv4Address, u8, Option<Ipv4Address>, Vec<IpAddress>);

/// Asks a DHCP server for an address (up to 30 s, asking again every
/// second: a first DISCOVER sent while the host's bridge port is still
/// coming up is lost, and smoltcp's default waits 10 s before the next).
/// The client socket stays
/// in the set and renews the lease (`netdev.dhcp_max_lease=SECONDS` caps
/// the lease the server grants, to renew sooner).
fn dhcp(
    iface: &mut Interface,
    nic: &mut Nic,
    set: &mut SocketSet<'static>,
) -> core::result::Result<(SocketHandle, Lease), alloc::string::String> {
    use smoltcp::socket::dhcpv4;
    let mut sock = dhcpv4::Socket::new();
    let mut retry = dhcpv4::RetryConfig::default();
    retry.discover_timeout = smoltcp::time::Duration::from_secs(1);
    retry.initial_request_timeout = smoltcp::time::Duration::from_secs(1);
    sock.set_retry_config(retry);
    if let Some(s) = kiln_boot::param("netdev.dhcp_max_lease") {
        let secs: u64 = s
            .parse()
            .map_err(|_| alloc::format!("net: netdev.dhcp_max_lease={s}: expected seconds"))?;
        sock.set_max_lease_duration(Some(smoltcp::time::Duration::from_secs(secs)));
    }
    // With a receive buffer, every renewal reports the configuration again,
    // so renewals can be logged.
    sock.set_receive_packet_buffer(alloc::boxed::Box::leak(vec![0u8; 1500].into_boxed_slice()));
    let h = set.add(sock);
    let start = now();
    loop {
        iface.poll(now(), nic, set);
        if let Some(dhcpv4::Event::Configured(c)) = set.get_mut::<dhcpv4::Socket>(h).poll() {
            let dns = c.dns_servers.iter().map(|a| IpAddress::Ipv4(*a)).collect();
            return Ok((
                h,
                (c.address.address(), c.address.prefix_len(), c.router, dns),
            ));
        }
        if (now() - start).total_millis() > 30_000 {
            return Err("net: no answer from a DHCP server within 30 s".into());
        }
    }
}

/// Applies what the DHCP client reports after the first lease.
fn dhcp_events(s: &mut Stack) {
    use smoltcp::socket::dhcpv4;
    let Some(h) = s.dhcp else { return };
    match s.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
        Some(dhcpv4::Event::Configured(c)) => {
            let cidr = IpCidr::Ipv4(c.address);
            let mut changed = false;
            s.iface.update_ip_addrs(|a| {
                if !a.contains(&cidr) {
                    changed = true;
                    a.retain(|x| !matches!(x, IpCidr::Ipv4(_)));
                    let _ = a.push(cidr);
                }
            });
            if let Some(r) = c.router {
                let _ = s.iface.routes_mut().add_default_ipv4_route(r);
            }
            let what = if changed {
                "new lease"
            } else {
                "lease renewed"
            };
            kiln_console::log!(kiln_console::Level::Info, "net: DHCP {what}: {}", c.address);
        }
        Some(dhcpv4::Event::Deconfigured) => {
            s.iface
                .update_ip_addrs(|a| a.retain(|x| !matches!(x, IpCidr::Ipv4(_))));
            s.iface.routes_mut().remove_default_ipv4_route();
            kiln_console::log!(
                kiln_console::Level::Info,
                "net: DHCP lease lost, asking again"
            );
        }
        None => {}
    }
}

/// Runs the stack once: receives, sends, runs timers, and wakes the threads
/// waiting on sockets if anything happened. Returns whether it did.
pub fn poll() -> bool {
    let active = {
        let mut g = STACK.lock();
        let Some(s) = g.as_mut() else { return false };
        let irq = IRQ.load(core::sync::atomic::Ordering::Relaxed);
        if irq {
            // Lower the device's interrupt line, then let it interrupt again.
            s.nic.ack_interrupt();
            if let Some(p) = kiln_boot::platform() {
                p.device_irq_done();
            }
        }
        let mut changed = false;
        // Every packet waiting is taken in before anything is sent: a
        // timer that expired while its answer sat in the receive queue
        // (a guest slowed by load) would otherwise send needless
        // retransmissions, and QEMU's user network loses bytes of a
        // connection when it sees a second SYN-ACK. Batches of RX_BUDGET
        // with the listeners topped up in between; at most INGRESS_MAX
        // packets per run, so a flood cannot starve the senders.
        use smoltcp::iface::{PollIngressSingleResult as In, PollResult};
        let mut taken = 0;
        loop {
            s.nic.1 = RX_BUDGET;
            loop {
                match s
                    .iface
                    .poll_ingress_single(now(), &mut s.nic, &mut s.sockets)
                {
                    In::None => break,
                    In::PacketProcessed => {}
                    In::SocketStateChanged => changed = true,
                }
            }
            for l in s.listeners.iter_mut().flatten() {
                l.refill(&mut s.sockets);
            }
            taken += RX_BUDGET - s.nic.1;
            // A spent budget means more packets may be waiting.
            if s.nic.1 > 0 || taken >= INGRESS_MAX {
                break;
            }
            changed = true;
        }
        s.iface.poll_maintenance(now());
        while s.iface.poll_egress(now(), &mut s.nic, &mut s.sockets) != PollResult::None {
            changed = true;
        }
        dhcp_events(s);
        changed
    };
    if active {
        ACTIVITY.wake_all();
    }
    active
}

/// The scheduler's view of the stack: run it, and say when it must run
/// again (its next TCP/DHCP/DNS timer; in polling mode also the polling
/// interval, which doubles from 1 ms to 16 ms while the network is quiet).
fn poller() -> kiln_sched::PollOutcome {
    use core::sync::atomic::Ordering::Relaxed;
    let active = poll();
    let timer = {
        let mut g = STACK.lock();
        g.as_mut()
            .and_then(|s| s.iface.poll_delay(now(), &s.sockets))
            .map(|d| d.total_micros())
    };
    let within = if IRQ.load(Relaxed) {
        timer
    } else {
        let q = if active {
            MIN_QUIET_US
        } else {
            (QUIET_US.load(Relaxed) * 2).min(MAX_QUIET_US)
        };
        QUIET_US.store(q, Relaxed);
        Some(timer.map_or(q, |t| t.min(q)))
    };
    kiln_sched::PollOutcome {
        active,
        within_us: within,
    }
}

/// Blocks the calling thread until the network does something (a packet,
/// a timer) or `max_us` pass; other threads run meanwhile, and with nothing
/// to run the CPU halts. Event loops call it when a round did nothing.
pub fn idle(max_us: u64) {
    ACTIVITY.wait_timeout(core::time::Duration::from_micros(max_us));
}

/// Wakes every thread waiting on the network, so it checks its condition
/// again (something other than a packet changed it: a pipe was written,
/// a Linux program's poll set became ready).
pub fn wake_waiters() {
    ACTIVITY.wake_all();
}

/// Runs the stack until every TCP socket has sent what it queued (and the
/// peer acknowledged it), or `max_us` pass: what a program wrote just
/// before exiting still reaches its peer.
pub fn flush(max_us: u64) {
    let until = now().total_micros() as u64 + max_us;
    loop {
        poll();
        let pending = with(|s| {
            s.sockets.iter().any(
                |(_, sock)| matches!(sock, smoltcp::socket::Socket::Tcp(t) if t.send_queue() > 0),
            )
        })
        .unwrap_or(false);
        if !pending || now().total_micros() as u64 >= until {
            return;
        }
        ACTIVITY.wait_timeout(core::time::Duration::from_micros(1000));
    }
}

/// The interface's IPv4 address.
pub fn local_ipv4() -> Option<Ipv4Address> {
    with(|s| s.iface.ipv4_addr()).ok().flatten()
}

/// The interface as programs ask about it (`SIOCGIF*`): its MAC address,
/// IPv4 address and prefix length, and MTU.
pub struct InterfaceInfo {
    pub mac: [u8; 6],
    pub ipv4: Option<(Ipv4Address, u8)>,
    pub mtu: usize,
}

/// The network interface (eth0), when a device is up.
pub fn interface() -> Option<InterfaceInfo> {
    with(|s| {
        let mac = match s.iface.hardware_addr() {
            HardwareAddress::Ethernet(EthernetAddress(m)) => m,
            #[allow(unreachable_patterns)]
            _ => [0; 6],
        };
        let ipv4 = s.iface.ip_addrs().iter().find_map(|c| match c.address() {
            IpAddress::Ipv4(a) => Some((a, c.prefix_len())),
            #[allow(unreachable_patterns)]
            _ => None,
        });
        InterfaceInfo {
            mac,
            ipv4,
            mtu: 1500,
        }
    })
    .ok()
}

/// Blocks until the network does something.
fn wait_activity() {
    ACTIVITY.wait();
}

/// Whether a packet's arrival wakes the CPU at once (its interrupt is
/// wired); else the stack is polled on a timer.
pub fn interrupts() -> bool {
    IRQ.load(core::sync::atomic::Ordering::Relaxed)
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
fn retry<T>(
    nonblocking: bool,
    mut attempt: impl FnMut(&mut Stack) -> Option<Result<T>>,
) -> Result<T> {
    loop {
        if let Some(r) = with(&mut attempt)? {
            return r;
        }
        if nonblocking {
            return Err(Error::WouldBlock);
        }
        if !poll() {
            wait_activity();
        }
    }
}

/// A zeroed buffer, or None when the heap cannot give it (the stack then
/// refuses the connection instead of the kernel running out of memory).
fn try_buffer(n: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, 0);
    Some(v)
}

fn new_tcp() -> Option<tcp::Socket<'static>> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(try_buffer(rx_buffer())?),
        tcp::SocketBuffer::new(try_buffer(tx_buffer())?),
    );
    s.set_nagle_enabled(false);
    Some(s)
}

/// A listening TCP port. It keeps `backlog` sockets listening, topped up
/// after every run of the stack, so that many clients can connect at once;
/// up to 8 times as many connections may wait for [`TcpListener::accept`]
/// before new SYNs are refused.
pub struct TcpListener {
    port: u16,
    slot: usize,
    nonblocking: bool,
}

impl TcpListener {
    /// Listens on `port` with `backlog` sockets listening at any time.
    pub fn bind(port: u16, backlog: usize) -> Result<TcpListener> {
        if port == 0 || backlog == 0 {
            return Err(Error::Invalid);
        }
        let slot = with(|s| {
            if s.listeners.iter().flatten().any(|l| l.port == port) {
                return Err(Error::AddrInUse);
            }
            let mut l = Listen {
                port,
                ready: backlog,
                socks: Vec::new(),
            };
            l.refill(&mut s.sockets);
            if l.socks.is_empty() {
                return Err(Error::Invalid);
            }
            let slot = match s.listeners.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    s.listeners.push(None);
                    s.listeners.len() - 1
                }
            };
            s.listeners[slot] = Some(l);
            Ok(slot)
        })??;
        Ok(TcpListener {
            port,
            slot,
            nonblocking: false,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_nonblocking(&mut self, v: bool) {
        self.nonblocking = v;
    }

    /// Whether a connection waits to be accepted.
    pub fn has_pending(&self) -> bool {
        let slot = self.slot;
        with(|s| {
            let Some(l) = s.listeners[slot].as_ref() else {
                return false;
            };
            l.socks.iter().any(|&h| {
                matches!(
                    s.sockets.get::<tcp::Socket>(h).state(),
                    tcp::State::Established | tcp::State::CloseWait
                )
            })
        })
        .unwrap_or(false)
    }

    /// The oldest connection that has been established. Blocks the thread
    /// unless non-blocking.
    pub fn accept(&mut self) -> Result<TcpStream> {
        loop {
            // Non-blocking callers run the stack themselves (net::poll).
            if !self.nonblocking {
                poll();
            }
            let slot = self.slot;
            let got = with(|s| {
                let l = s.listeners[slot].as_mut()?;
                let h = l.take(&mut s.sockets)?;
                l.refill(&mut s.sockets);
                Some(h)
            })?;
            if let Some(h) = got {
                return Ok(TcpStream {
                    h,
                    nonblocking: false,
                });
            }
            if self.nonblocking {
                return Err(Error::WouldBlock);
            }
            wait_activity();
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let _ = with(|s| {
            if let Some(l) = s.listeners[self.slot].take() {
                for h in l.socks {
                    s.sockets.remove(h);
                }
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

    /// Opens a connection to `addr:port` from an ephemeral local port. A
    /// blocking stream waits until it is established (or refused); a
    /// non-blocking one returns at once: [`TcpStream::is_connecting`] says
    /// when it is done.
    pub fn connect(addr: IpAddress, port: u16, nonblocking: bool) -> Result<TcpStream> {
        static NEXT_PORT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(49152);
        let local = NEXT_PORT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        if local == u16::MAX {
            NEXT_PORT.store(49152, core::sync::atomic::Ordering::Relaxed);
        }
        let h = with(|s| {
            let mut t = new_tcp().ok_or(Error::NoMemory)?;
            t.connect(s.iface.context(), (addr, port), local)
                .map_err(|_| Error::Invalid)?;
            Ok(s.sockets.add(t))
        })??;
        let stream = TcpStream { h, nonblocking };
        poll();
        if !nonblocking {
            retry(false, |s| {
                let t = s.sockets.get::<tcp::Socket>(h);
                match t.state() {
                    tcp::State::SynSent | tcp::State::SynReceived => None,
                    tcp::State::Established | tcp::State::CloseWait => Some(Ok(())),
                    _ => Some(Err(Error::ConnectionReset)),
                }
            })?;
        }
        Ok(stream)
    }

    /// Whether the handshake of [`TcpStream::connect`] is still going on.
    pub fn is_connecting(&self) -> bool {
        with(|s| {
            matches!(
                s.sockets.get::<tcp::Socket>(self.h).state(),
                tcp::State::SynSent | tcp::State::SynReceived
            )
        })
        .unwrap_or(false)
    }

    /// Whether a read would not block: data has arrived, or the peer closed
    /// its side (or the connection is gone).
    pub fn can_read(&self) -> bool {
        with(|s| {
            let t = s.sockets.get::<tcp::Socket>(self.h);
            t.can_recv()
                || !t.may_recv()
                    && !matches!(t.state(), tcp::State::SynSent | tcp::State::SynReceived)
        })
        .unwrap_or(true)
    }

    /// Whether a write would not block: there is room, or the connection
    /// can no longer send (the write then fails at once).
    pub fn can_write(&self) -> bool {
        with(|s| {
            let t = s.sockets.get::<tcp::Socket>(self.h);
            t.can_send()
                || !t.may_send()
                    && !matches!(t.state(), tcp::State::SynSent | tcp::State::SynReceived)
        })
        .unwrap_or(true)
    }

    /// Whether the peer has closed its side (or the connection is gone).
    pub fn peer_closed(&self) -> bool {
        with(|s| !s.sockets.get::<tcp::Socket>(self.h).may_recv()).unwrap_or(true)
    }

    /// The local address and port.
    pub fn local(&self) -> Option<(IpAddress, u16)> {
        with(|s| {
            s.sockets
                .get::<tcp::Socket>(self.h)
                .local_endpoint()
                .map(|e| (e.addr, e.port))
        })
        .ok()
        .flatten()
    }

    /// Bytes that have arrived and wait to be read.
    pub fn pending(&self) -> usize {
        with(|s| s.sockets.get::<tcp::Socket>(self.h).recv_queue()).unwrap_or(0)
    }

    /// The peer's address and port.
    pub fn peer(&self) -> Option<(IpAddress, u16)> {
        with(|s| {
            s.sockets
                .get::<tcp::Socket>(self.h)
                .remote_endpoint()
                .map(|e| (e.addr, e.port))
        })
        .ok()
        .flatten()
    }

    /// Reads what has arrived; 0 means the peer closed its side.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.receive(buf, false)
    }

    /// Like [`TcpStream::read`], but leaves what it copies in the stream
    /// (MSG_PEEK): the next read gets the same bytes.
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.receive(buf, true)
    }

    fn receive(&mut self, buf: &mut [u8], peek: bool) -> Result<usize> {
        let h = self.h;
        retry(self.nonblocking, |s| {
            let t = s.sockets.get_mut::<tcp::Socket>(h);
            if t.can_recv() {
                let r = if peek {
                    t.peek_slice(buf)
                } else {
                    t.recv_slice(buf)
                };
                return Some(r.map_err(|_| Error::ConnectionReset));
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
            t.can_send()
                .then(|| t.send_slice(buf).map_err(|_| Error::ConnectionReset))
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
                    if !poll() {
                        wait_activity();
                    }
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
            let mut u = udp::Socket::new(
                udp::PacketBuffer::new(meta(), vec![0; 65536]),
                udp::PacketBuffer::new(meta(), vec![0; 65536]),
            );
            u.bind(port).map_err(|_| Error::AddrInUse)?;
            Ok(s.sockets.add(u))
        })??;
        Ok(UdpSocket {
            h,
            nonblocking: false,
        })
    }

    pub fn set_nonblocking(&mut self, v: bool) {
        self.nonblocking = v;
    }

    /// Whether a datagram waits to be received.
    pub fn can_read(&self) -> bool {
        with(|s| s.sockets.get::<udp::Socket>(self.h).can_recv()).unwrap_or(false)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        with(|s| s.sockets.get::<udp::Socket>(self.h).endpoint().port).unwrap_or(0)
    }

    /// Receives one datagram: its length and the sender.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, (IpAddress, u16))> {
        let h = self.h;
        retry(self.nonblocking, |s| {
            let u = s.sockets.get_mut::<udp::Socket>(h);
            u.can_recv().then(|| {
                u.recv_slice(buf)
                    .map(|(n, m)| (n, (m.endpoint.addr, m.endpoint.port)))
                    .map_err(|_| Error::Invalid)
            })
        })
    }

    /// Sends one datagram to `to`.
    pub fn send_to(&mut self, buf: &[u8], to: (IpAddress, u16)) -> Result<usize> {
        let h = self.h;
        let r = retry(self.nonblocking, |s| {
            let u = s.sockets.get_mut::<udp::Socket>(h);
            u.can_send().then(|| {
                u.send_slice(buf, to)
                    .map(|_| buf.len())
                    .map_err(|_| Error::Invalid)
            })
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

/// Name resolution (IPv4 addresses) through the DNS servers from
/// `netdev.dns=ADDR[,ADDR]`, DHCP, or QEMU's user network (10.0.2.3) when no
/// address is configured.
pub mod dns {
    use super::*;
    use smoltcp::socket::dns;

    /// The DNS servers in use.
    pub fn servers() -> Vec<IpAddress> {
        with(|s| s.dns_servers.clone()).unwrap_or_default()
    }

    /// The IPv4 addresses of `name` (an address literal is returned as it
    /// is). Blocks the calling thread until the answer, a failure or the
    /// resolver's own timeout.
    pub fn resolve(name: &str) -> Result<Vec<IpAddress>> {
        if let Ok(a) = name.parse::<IpAddress>() {
            return Ok(vec![a]);
        }
        let (h, q) = with(|s| {
            let h = match s.dns {
                Some(h) => h,
                None => {
                    if s.dns_servers.is_empty() {
                        return Err(Error::NoDnsServer);
                    }
                    let h = s.sockets.add(dns::Socket::new(
                        &s.dns_servers,
                        vec![None, None, None, None],
                    ));
                    s.dns = Some(h);
                    h
                }
            };
            let q = s.sockets.get_mut::<dns::Socket>(h).start_query(
                s.iface.context(),
                name,
                smoltcp::wire::DnsQueryType::A,
            );
            Ok((
                h,
                q.map_err(|e| match e {
                    dns::StartQueryError::NoFreeSlot => Error::WouldBlock,
                    _ => Error::Invalid,
                })?,
            ))
        })??;
        retry(false, |s| {
            match s.sockets.get_mut::<dns::Socket>(h).get_query_result(q) {
                Err(dns::GetQueryResultError::Pending) => None,
                Err(dns::GetQueryResultError::Failed) => Some(Err(Error::NotFound)),
                Ok(v) if v.is_empty() => Some(Err(Error::NotFound)),
                Ok(v) => Some(Ok(v.to_vec())),
            }
        })
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
        assert_eq!(
            (a, p, g),
            (
                Ipv4Address::new(10, 0, 2, 15),
                24,
                Some(Ipv4Address::new(10, 0, 2, 2))
            )
        );
        assert_eq!(parse_ip("192.168.1.9/16").unwrap().2, None);
        assert!(parse_ip("10.0.2.15").is_none());
        assert!(parse_ip("10.0.2.15/33").is_none());
        assert!(parse_ip("10.0.2/24").is_none());
        // urunc's form: a DNS server after the gateway.
        let (a, _, g) = parse_ip("172.16.1.2/24:172.16.1.1:8.8.8.8").unwrap();
        assert_eq!(
            (a, g),
            (
                Ipv4Address::new(172, 16, 1, 2),
                Some(Ipv4Address::new(172, 16, 1, 1))
            )
        );
        assert_eq!(
            dns_in_ip("172.16.1.2/24:172.16.1.1:8.8.8.8"),
            Some(Ipv4Address::new(8, 8, 8, 8))
        );
        assert!(parse_ip("172.16.1.2/24:172.16.1.1:x").is_none());
        assert!(parse_ip("172.16.1.2/24:172.16.1.1:8.8.8.8:y").is_none());
        assert_eq!(parse_servers("10.0.2.3,fe80::1").unwrap().len(), 2);
        assert!(parse_servers("10.0.2.3,").is_none());
        assert!(parse_servers("").is_none());
    }
}
