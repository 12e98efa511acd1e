//! `--plat linuxu`: the same apps built as Linux executables (plat/linuxu)
//! run as host processes: arguments, exit codes and fault reports as in a
//! VM, the web server on a tap device behind `-p`, `kiln stop` as a
//! graceful stop, and Debian's gdb on the executable as on any program.
//! No VM is started, so these are the suite's fast checks of the boot
//! sequence, the scheduler and the network stack.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

/// Builds `app` for linuxu and returns its executable.
fn build(app: &str) -> std::path::PathBuf {
    let (code, _, err) = support::kiln(&["build", "-q", "--plat", "linuxu", app]);
    assert_eq!(code, 0, "{err}");
    let name = app.trim_start_matches("apps/");
    let exe = support::root().join(format!("{app}/.kiln/build/{name}_linuxu-x86_64"));
    assert!(exe.is_file(), "{} was not built", exe.display());
    exe
}

#[test]
fn an_app_runs_as_a_host_process_with_its_arguments_and_exit_code() {
    let (code, out, err) = support::kiln(&[
        "run",
        "-q",
        "--plat",
        "linuxu",
        "apps/helloworld",
        "--",
        "one",
        "two words",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Hello, world!"), "{out}");
    assert!(out.contains("arg 1: one\narg 2: two words\n"), "{out}");

    // The executable alone, as a user runs it: arguments after `--`.
    let exe = build("apps/helloworld");
    let o = Command::new(&exe)
        .args(["kiln.quiet", "--", "--", "\"q\""])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(out, "Hello, world!\narg 1: --\narg 2: \"q\"\n");

    // Exit codes as from a VM: the app's own, a panic's, a fault's.
    for (req, want) in [("exit 42", 42), ("panic", 101), ("null", 125)] {
        let mut args = vec!["run", "-q", "--plat", "linuxu", "apps/crashtest", "--"];
        args.extend(req.split(' '));
        let (code, out, err) = support::kiln(&args);
        assert_eq!(code, want, "{req}: {out}{err}");
        if req == "null" {
            // The host's SIGSEGV, reported as a CPU exception is, with
            // function names from the executable's symbols.
            assert!(out.contains("kiln: fault: SIGSEGV"), "{out}");
            assert!(
                out.contains("fault address       0x0000000000000000"),
                "{out}"
            );
            assert!(out.contains("main at apps/crashtest/src/lib.rs"), "{out}");
            assert!(
                out.contains("in kiln_linuxu_main at plat/linuxu/src/host.rs"),
                "{out}"
            );
        }
    }
}

#[test]
fn bad_platform_parameters_and_runs_are_refused_with_the_reason() {
    let exe = build("apps/helloworld");
    for (arg, says) in [
        ("linuxu.mem=lots", "linuxu.mem: expected MiB"),
        ("linuxu.mac=52:54", "linuxu.mac: expected six hex bytes"),
        (
            "linuxu.tap=kiln-name-too-long",
            "tap kiln-name-too-long: cannot attach (errno 22: a name of 1 to 15 bytes",
        ),
    ] {
        let o = Command::new(&exe).arg(arg).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(126), "{arg}: {out}");
        assert!(out.contains(says), "{arg}: {out}");
    }
    let (code, _, err) = support::kiln(&[
        "run",
        "--plat",
        "linuxu",
        "--vmm",
        "firecracker",
        "apps/helloworld",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("a linuxu kernel is a host process"), "{err}");
    // C runs on the Linux system call layer, which needs page tables.
    let (code, _, err) = support::kiln(&["build", "--plat", "linuxu", "apps/hello-c"]);
    assert_ne!(code, 0);
    assert!(err.contains("LIBSYSCALL needs `!PLAT_LINUXU`, which linuxu/x86_64 does not support (selected by LIBC)"), "{err}");
    let (code, _, err) = support::kiln(&[
        "run",
        "--plat",
        "linuxu",
        "-v",
        "/tmp:/data",
        "apps/helloworld",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("volumes are virtio-blk disks"), "{err}");
}

#[test]
fn the_web_server_serves_from_a_host_process_on_a_tap_and_stops_when_asked() {
    let s = support::State::new("linuxu");
    let port = support::free_port();
    let fwd = format!("{port}:80");
    let (code, _, err) = s.kiln(&[
        "run",
        "-d",
        "--name",
        "web",
        "--plat",
        "linuxu",
        "-p",
        &fwd,
        "apps/httpd",
    ]);
    assert_eq!(code, 0, "{err}");
    let log = s.wait_for_log("web", "httpd: serving");
    assert!(log.contains("httpd on linuxu/x86_64"), "{log}");
    assert!(log.contains("net: 52:54:00:"), "{log}");
    let (_, ps, _) = s.kiln(&["ps"]);
    assert!(ps.contains("linuxu/x86_64"), "{ps}");
    let page = std::fs::read(support::root().join("apps/httpd/rootfs/www/index.html")).unwrap();
    // Several clients, each a keep-alive connection with two requests.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /about.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                got
            })
        })
        .collect();
    for c in clients {
        let got = c.join().unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
        assert!(
            got.windows(page.len()).any(|w| w == page),
            "index.html not whole"
        );
    }
    let log = s.stop_gracefully("web");
    assert!(log.contains("httpd: stopped"), "{log}");
}

#[test]
fn gdb_debugs_the_executable_like_any_program() {
    let exe = build("apps/helloworld");
    let o = Command::new("timeout")
        .args(["120", "gdb", "-batch", "-nx"])
        // Frames above `main` are Kiln's boot sequence, not a C runtime's.
        .args(["-ex", "set backtrace past-main on"])
        .args([
            "-ex",
            "break main",
            "-ex",
            "run",
            "-ex",
            "bt",
            "-ex",
            "kill",
        ])
        .arg("--args")
        .arg(&exe)
        .args(["kiln.quiet", "--", "x"])
        .output()
        .expect("gdb (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("Breakpoint 1, main ("), "{text}");
    for frame in [
        " in start () at src/lib.rs",
        " in kiln_start () at src/main.rs",
        " in kiln_linuxu_main () at src/host.rs",
    ] {
        assert!(
            text.contains(frame),
            "no '{frame}' in the backtrace:\n{text}"
        );
    }
}
