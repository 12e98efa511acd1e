//! Threads in a booted kernel (apps/threads): the tour's results, a
//! deadlock reported instead of hanging, a TCP echo server with a blocking
//! thread per connection, and DNS answered by a server the test runs.

mod support;
use support::root;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root()).stdin(Stdio::null());
    c
}

fn build() {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        assert!(kiln()
            .args(["build", "-q", "apps/threads"])
            .status()
            .unwrap()
            .success())
    });
}

fn run(extra: &[&str], args: &[&str]) -> Child {
    build();
    kiln()
        .args(["run", "--timeout", "120"])
        .args(extra)
        .arg("apps/threads")
        .arg("--")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    )
}

#[test]
fn the_tour_joins_sleeps_and_hands_over() {
    let (code, out) = finish(run(&[], &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#"joined 4 workers: sums [500500, 2001000, 4501500, 8002000], finished ["worker-1", "worker-2", "worker-3", "worker-4"]"#),
        "{out}"
    );
    assert!(
        out.contains("sleepers woke in order [100, 200, 300] after"),
        "{out}"
    );
    assert!(out.contains("(at least 300: true)"), "{out}");
    assert!(out.contains("consumer got 1000 items, sum 500500"), "{out}");
    assert!(
        out.contains("timed wait timed out: true, after at least 50 ms: true"),
        "{out}"
    );
}

/// A thread that runs off the end of its stack hits the guard page below
/// it: a fault that names the thread, in x86_64 and arm64 VMs and in a
/// host process.
#[test]
fn a_thread_overflowing_its_stack_is_caught_by_its_guard_page() {
    for how in [
        &["-W"][..],
        &["-W", "--arch", "arm64"][..],
        &["--plat", "linuxu"][..],
    ] {
        let (code, out) = finish(run(how, &["overflow"]));
        assert_eq!(code, 125, "{how:?}: {out}");
        assert!(
            out.contains(
                "is the guard page below the stack of thread 'deep': it overflowed its stack"
            ),
            "{how:?}: {out}"
        );
        assert!(
            out.contains("in recurse at apps/threads/src/lib.rs"),
            "{how:?}: {out}"
        );
    }
}

/// The same scheduler in a host process (plat/linuxu): the tour and the
/// deadlock report.
#[test]
fn the_tour_and_a_deadlock_as_a_host_process() {
    let (code, out) = finish(run(&["--plat", "linuxu"], &[]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("threads on linuxu/x86_64"), "{out}");
    assert!(out.contains("consumer got 1000 items, sum 500500"), "{out}");
    assert!(out.contains("(at least 300: true)"), "{out}");
    let (code, out) = finish(run(&["--plat", "linuxu"], &["deadlock"]));
    assert_eq!(code, 123, "{out}");
    assert!(out.contains("nothing can wake them: main, stuck"), "{out}");
}

#[test]
fn a_deadlock_is_reported_with_the_threads_names() {
    let (code, out) = finish(run(&[], &["deadlock"]));
    assert_eq!(code, 123, "{out}");
    assert!(
        out.contains(
            "kiln: deadlock: every thread is waiting and nothing can wake them: main, stuck"
        ),
        "{out}"
    );
}

fn connect(port: u16, deadline: Instant) -> TcpStream {
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            // QEMU accepts at once; the guest's greeting is our echo.
            let mut probe = s.try_clone().unwrap();
            probe.write_all(b"ping\n").unwrap();
            let mut line = String::new();
            if BufReader::new(&s).read_line(&mut line).is_ok() && line.ends_with("ping\n") {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "the echo server never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ask(s: &mut TcpStream, what: &str) -> String {
    s.write_all(what.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&*s).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_thread_per_connection_blocks_without_stalling_the_others() {
    let child = run(&["-p", "18620:7"], &["echo"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut a = connect(18620, deadline);
    // A is now blocked in read() in its own thread; B must still be served.
    let mut b = connect(18620, deadline);
    let from_b = ask(&mut b, "second\n");
    assert!(
        from_b.starts_with("conn-") && from_b.ends_with(": second\n"),
        "{from_b:?}"
    );
    let from_a = ask(&mut a, "first\n");
    assert!(from_a.ends_with(": first\n"), "{from_a:?}");
    assert_ne!(
        from_a.split(':').next(),
        from_b.split(':').next(),
        "both served by one thread"
    );
    assert_eq!(
        ask(&mut b, "bye\n").trim_end(),
        format!("{}: bye", from_b.split(':').next().unwrap())
    );
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "B's thread closed its connection");
    assert_eq!(ask(&mut a, "quit\n"), "bye\n");
    let (code, out) = finish(child);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a thread per connection"), "{out}");
    // On microvm the device interrupt wakes the scheduler.
    assert!(out.contains("/64, interrupts"), "{out}");
}

/// Answers A queries for `*.kiln.test` with 192.0.2.N (N = the first label's
/// length) and everything else with NXDOMAIN.
fn dns_server(sock: UdpSocket) {
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let q = &buf[..n];
        if n < 17 {
            continue;
        }
        // Question name: labels from offset 12.
        let mut i = 12;
        let mut labels = Vec::new();
        while i < n && q[i] != 0 {
            let l = q[i] as usize;
            labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + l]).to_string());
            i += 1 + l;
        }
        let qend = i + 5; // zero byte, type, class
        let name = labels.join(".");
        let mut r = Vec::new();
        r.extend_from_slice(&q[0..2]); // id
        let found = name.ends_with(".kiln.test");
        r.extend_from_slice(&[0x81, if found { 0x80 } else { 0x83 }]);
        r.extend_from_slice(&[0, 1, 0, found as u8, 0, 0, 0, 0]);
        r.extend_from_slice(&q[12..qend]);
        if found {
            r.extend_from_slice(&[
                0xc0,
                12,
                0,
                1,
                0,
                1,
                0,
                0,
                0,
                60,
                0,
                4,
                192,
                0,
                2,
                labels[0].len() as u8,
            ]);
        }
        let _ = sock.send_to(&r, from);
    }
}

#[test]
fn dns_names_resolve_through_the_configured_server() {
    // QEMU's user network sends the guest's 10.0.2.2:53 to the host's
    // 127.0.0.1:53.
    let sock = match UdpSocket::bind("127.0.0.1:53") {
        Ok(s) => s,
        Err(e) => panic!("this test answers DNS on 127.0.0.1:53 and needs that port (root, and no local resolver on it): {e}"),
    };
    std::thread::spawn(move || dns_server(sock));
    let (code, out) = finish(run(
        &["--kernel-arg", "netdev.dns=10.0.2.2"],
        &[
            "resolve",
            "www.kiln.test",
            "mqtt.kiln.test",
            "198.51.100.7",
            "nowhere.example",
        ],
    ));
    assert!(
        out.contains("threads: DNS servers [Ipv4(10.0.2.2)]"),
        "{out}"
    );
    assert!(
        out.contains("threads: www.kiln.test has address 192.0.2.3"),
        "{out}"
    );
    assert!(
        out.contains("threads: mqtt.kiln.test has address 192.0.2.4"),
        "{out}"
    );
    assert!(
        out.contains("threads: 198.51.100.7 has address 198.51.100.7"),
        "{out}"
    );
    assert!(
        out.contains("threads: nowhere.example: name not found"),
        "{out}"
    );
    assert_eq!(code, 2, "a name not found makes the exit status 2: {out}");
}
