//! UDP sockets and DHCP in a booted kernel: apps/udpecho gets its address
//! from QEMU's DHCP server (netdev.ip=dhcp), renews the lease (capped at
//! 4 s so that it renews within the test), and echoes datagrams sent
//! through a forwarded UDP port.

mod support;
use support::root;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn udp_echo_over_a_dhcp_address() {
    udp_echo(&[], 18610);
}

#[test]
fn udp_echo_on_arm64() {
    udp_echo(&["--arch", "arm64"], 18611);
}

fn udp_echo(target: &[&str], port: u16) {
    let b = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["build", "-q"])
        .args(target)
        .arg("apps/udpecho")
        .status()
        .unwrap();
    assert!(b.success());
    let fwd = format!("{port}:7/udp");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "--timeout",
            "120",
            "-p",
            &fwd,
            "--kernel-arg",
            "netdev.ip=dhcp",
            "--kernel-arg",
            "netdev.dhcp_max_lease=4",
        ])
        .args(target)
        .arg("apps/udpecho")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    // Datagrams sent before the guest is up are lost; keep asking.
    let reply = loop {
        sock.send_to(b"upper:hello kiln", ("127.0.0.1", port))
            .unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(90), "no UDP echo");
    };
    assert_eq!(reply, "UPPER:HELLO KILN");
    let big: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    sock.send_to(&big, ("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &big[..],
        "a 1400-byte datagram came back changed"
    );
    // The lease is renewed after half its time; it keeps working after.
    std::thread::sleep(Duration::from_secs(5));
    sock.send_to(b"upper:still here", ("127.0.0.1", port))
        .unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"UPPER:STILL HERE");
    sock.send_to(b"quit", ("127.0.0.1", port)).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // QEMU's user network hands out 10.0.2.15 from its DHCP server.
    assert!(
        stdout.contains("net: 52:54:00:12:34:56 10.0.2.15/24 via 10.0.2.2 (DHCP)"),
        "{stdout}"
    );
    assert!(stdout.contains("udpecho: listening on port 7"), "{stdout}");
    // Its Kraftfile chooses polling over interrupts.
    assert!(
        stdout.contains("fe80::5054:ff:fe12:3456/64, polled"),
        "{stdout}"
    );
    assert!(
        stdout.contains("net: DHCP lease renewed: 10.0.2.15/24"),
        "{stdout}"
    );
}
