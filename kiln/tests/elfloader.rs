//! The ELF loader runs unmodified Linux programs from a run-time initrd: a
//! static-pie Rust program built here for x86_64-unknown-linux-musl (std:
//! args, environment, files, heap, exit code), Debian's glibc echo and cat
//! through their dynamic loader, busybox-static at its fixed address (sh
//! builtins, ls -l), a multi-threaded Rust program, and a Rust network
//! server fetched with curl; what it cannot run is refused with the reason.
//!
//! Under TCG (-W): some hosts' KVM (PVM) cannot emulate the SSE
//! instructions ordinary Linux programs use.

mod support;
use support::{cargo_in_test_programs, free_port, linux_program_for, root, test_programs};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Server guests run one at a time: under TCG on two cores, several at
/// once starve each other and QEMU's user network stalls for seconds.
fn one_server() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `kiln run` of the ELF loader (TCG) on `rootfs`, with `extra` options
/// and the program's `args`.
fn loader(rootfs: &Path, extra: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root())
        .args([
            "run",
            "-W",
            "--timeout",
            "240",
            "--initrd",
            rootfs.to_str().unwrap(),
        ])
        .args(extra)
        .args(["apps/elfloader", "--"])
        .args(args)
        .stdin(Stdio::null());
    c
}

/// Runs to the end: the exit status and everything printed.
fn output(mut c: Command) -> (i32, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Stops a server guest; returns everything it printed.
fn stop(mut child: std::process::Child) -> String {
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts a server guest; its output is collected when it ends.
fn spawn(mut c: Command) -> std::process::Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Copies host programs with their libraries into `d` (`kiln rootfs add`).
fn rootfs_add(d: &Path, programs: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["rootfs", "add", "--to", d.to_str().unwrap()])
        .args(programs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn run(rootfs: &Path, extra: &[&str], args: &[&str]) -> (i32, String) {
    b_build();
    output(loader(rootfs, extra, args))
}

/// The test programs, built for Linux with musl (static-pie).
fn hello() -> PathBuf {
    linux_program("linux-hello")
}

fn linux_program(name: &str) -> PathBuf {
    linux_program_for("x86_64", name)
}

fn rootfs(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-elf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc")).unwrap();
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(d.join("etc/motd"), "served by Kiln\n").unwrap();
    d
}

#[test]
fn a_static_pie_rust_program_runs_unmodified() {
    let prog = hello();
    let head = std::fs::read(&prog).unwrap();
    assert_eq!(
        u16::from_le_bytes([head[16], head[17]]),
        3,
        "ET_DYN: position-independent"
    );
    let d = rootfs("pie");
    std::fs::copy(&prog, d.join("bin/hello")).unwrap();
    let (code, out) = run(
        &d,
        &["-e", "GREETING=hello from the host"],
        &["/bin/hello", "a", "two words"],
    );
    assert!(
        out.contains(r#"linux-hello: 3 argument(s): ["/bin/hello", "a", "two words"]"#),
        "{out}"
    );
    assert!(out.contains("GREETING=hello from the host\n"), "{out}");
    assert!(out.contains("motd: served by Kiln\n"), "{out}");
    assert!(out.contains("sum of multiples of 3: 166833\n"), "{out}");
    assert_eq!(code, 43, "the program's own exit code (40 + argc): {out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn programs_it_cannot_run_are_refused_with_the_reason() {
    let d = rootfs("bad");
    let (code, out) = run(&d, &[], &["/bin/none"]);
    assert_eq!(code, 126, "{out}");
    assert!(
        out.contains("elfloader: /bin/none: no such file or directory (ENOENT)"),
        "{out}"
    );
    std::fs::write(d.join("bin/text"), "#!/bin/sh\necho hi\n").unwrap();
    let (code, out) = run(&d, &[], &["/bin/text"]);
    assert_eq!(code, 126, "{out}");
    assert!(
        out.contains("elfloader: /bin/text: not a valid ELF file"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn busybox_static_runs_at_its_fixed_address() {
    // Debian's busybox-static is a static non-PIE linked at 4 MiB, which the
    // platform keeps out of the heap when the ELF loader is configured.
    let d = rootfs("busybox");
    std::fs::copy("/bin/busybox", d.join("bin/busybox")).unwrap();
    let (code, out) = run(
        &d,
        &["-M", "256M"],
        &["/bin/busybox", "echo", "hello", "from busybox"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nhello from busybox\n"), "{out}");
    // The shell with builtins only (anything else would fork): cd, pwd,
    // read from a file, arithmetic in a loop, a function, test, a
    // redirection that writes a file and reads it back, and its status.
    let script = "cd /etc && pwd; read x < /etc/motd; echo \"read: $x\"; for i in 1 2 3; do echo \"n=$((i*i))\"; done; \
                  f() { echo \"in f: $1\"; }; f arg; test -d /bin && echo 'bin is a dir'; \
                  echo data > /etc/new && read y < /etc/new && echo \"wrote and read: $y\"; exit 5";
    let (code, out) = run(&d, &["-M", "256M"], &["/bin/busybox", "sh", "-c", script]);
    assert!(out.contains("\n/etc\nread: served by Kiln\nn=1\nn=4\nn=9\nin f: arg\nbin is a dir\nwrote and read: data\n"), "{out}");
    assert_eq!(code, 5, "the shell's exit status: {out}");
    // ls -l: directory entries (getdents64), lstat, symlinks (readlink).
    std::os::unix::fs::symlink("busybox", d.join("bin/sh")).unwrap();
    let (code, out) = run(
        &d,
        &["-M", "256M"],
        &["/bin/busybox", "ls", "-l", "/", "/bin"],
    );
    assert_eq!(code, 0, "{out}");
    for want in [
        "drwxr-xr-x",
        " bin\n",
        " etc\n",
        "/bin:\n",
        "-rwxr-xr-x",
        " busybox\n",
        "lrwxrwxrwx",
        " sh -> busybox\n",
    ] {
        assert!(out.contains(want), "ls -l shows {want:?}: {out}");
    }
    // What needs a second process is refused with the reason.
    let (code, out) = run(
        &d,
        &["-M", "256M"],
        &["/bin/busybox", "sh", "-c", "echo a | cat"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("fork (clone without CLONE_VM) is not supported")
            && out.contains("sh: can't fork"),
        "{out}"
    );
    let (code, out) = run(&d, &["-M", "256M"], &["/bin/busybox", "cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nserved by Kiln\n"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn debian_programs_linked_against_glibc_run_through_their_loader() {
    // echo and cat from Debian's coreutils (dynamic PIEs): `kiln rootfs add`
    // copies them with libc and ld-linux; the loader maps the libraries.
    let d = rootfs("glibc");
    rootfs_add(&d, &["/bin/echo", "/bin/cat"]);
    let (code, out) = run(&d, &[], &["/bin/echo", "hello", "from", "Debian's", "echo"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nhello from Debian's echo\n"), "{out}");
    let (code, out) = run(&d, &[], &["/bin/cat", "/etc/motd"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nserved by Kiln\n"), "{out}");
    // The summary at exit names what the loader looked for and did not find.
    let summary = out
        .lines()
        .find(|l| l.contains("files the program looked for and did not find: "))
        .unwrap_or_default();
    assert!(summary.contains(" /etc/ld.so.cache,"), "{out}");
    // --strace prints every call with its result.
    let (code, out) = run(&d, &["--strace"], &["/bin/echo", "traced"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("strace: openat(0xffffff9c, "), "{out}");
    assert!(
        out.contains("strace: write(0x1, ") && out.contains(", 0x7) = 7"),
        "{out}"
    );
    assert!(out.contains("strace: exit_group(0)"), "{out}");
    let (code, out) = run(&d, &[], &["/bin/cat", "/etc/none"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/bin/cat: /etc/none: No such file or directory"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_multithreaded_rust_program_runs_its_threads() {
    // std threads over clone and futex: a Mutex, a channel, a Barrier,
    // join values, a Condvar after a sleep, scoped threads.
    let d = rootfs("threads");
    std::fs::copy(linux_program("linux-threads"), d.join("bin/threads")).unwrap();
    let (code, out) = run(&d, &["-M", "128M"], &["/bin/threads"]);
    assert_eq!(code, 0, "{out}");
    for i in 0..4 {
        assert!(
            out.contains(&format!("threads: worker-{i} (worker {i}) reported\n")),
            "{out}"
        );
    }
    assert!(out.contains("threads: counter = 1998000\n"), "{out}");
    assert!(out.contains("threads: joined sum = 1000\n"), "{out}");
    assert!(
        out.contains("threads: condvar woke after 50 ms or more\n"),
        "{out}"
    );
    assert!(out.contains("threads: scoped sum = 36\n"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_rust_network_server_serves_curl() {
    let _one = one_server();
    // std::net with a thread per connection: six clients at once, then
    // /quit, whose answer must still arrive before the program exits.
    let d = rootfs("http");
    std::fs::copy(linux_program("linux-http"), d.join("bin/http")).unwrap();
    b_build();
    let port = free_port();
    let child = spawn(loader(
        &d,
        &["-M", "128M", "-p", &format!("{port}:8080")],
        &["/bin/http", "8080"],
    ));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let start = std::time::Instant::now();
    while !curl(&url("/ready")).0 {
        assert!(start.elapsed().as_secs() < 90, "the server never answered");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let u = url(&format!("/c{i}"));
            std::thread::spawn(move || curl(&u))
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let (ok, body) = c.join().unwrap();
        assert!(
            ok && body.starts_with(&format!("path=/c{i}\nrequest=")),
            "{body}"
        );
        assert!(
            body.ends_with("peer-is-ipv4=true\nmotd=served by Kiln\n"),
            "{body}"
        );
    }
    let (ok, body) = curl(&url("/quit"));
    assert!(ok && body.starts_with("path=/quit\nrequest=8\n"), "{body}");
    let o = child.wait_with_output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(7), "{out}");
    assert!(
        out.contains("linux-http: listening on 0.0.0.0:8080\n"),
        "{out}"
    );
    assert!(out.contains("linux-http: 8 requests, quitting\n"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

fn b_build() {
    let b = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["build", "-q", "apps/elfloader"])
        .status()
        .unwrap();
    assert!(b.success());
}

/// GET with curl: whether it answered 200, and the body.
fn curl(url: &str) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-s", "-f", "-m", "20", url])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// A rootfs with Debian's nginx (copied with `kiln rootfs add`), a config
/// that keeps it in one process, and a small site.
fn nginx_rootfs() -> (PathBuf, Vec<u8>) {
    let d = rootfs("nginx");
    rootfs_add(&d, &["/usr/sbin/nginx"]);
    for dir in [
        "etc/nginx",
        "www",
        "var/log/nginx",
        "var/lib/nginx",
        "run",
        "tmp",
    ] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
    }
    std::fs::write(
        d.join("etc/nginx/nginx.conf"),
        "user root; daemon off; master_process off; worker_processes 1;\n\
         error_log stderr; pid /tmp/nginx.pid;\n\
         events { worker_connections 256; }\n\
         http { access_log off; server { listen 80; root /www; } }\n",
    )
    .unwrap();
    std::fs::write(d.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(d.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(d.join("www/index.html"), "<h1>nginx on Kiln</h1>\n").unwrap();
    // 300 KiB that is not a repeating pattern, to check byte for byte.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(d.join("www/big.bin"), &big).unwrap();
    (d, big)
}

/// The server random of the ServerHello in `openssl s_client -msg`
/// output (32 bytes after the message type, length and version).
fn server_random(msg: &str) -> Vec<u8> {
    let mut lines = msg
        .lines()
        .skip_while(|l| !(l.starts_with("<<<") && l.ends_with("ServerHello")));
    lines
        .next()
        .unwrap_or_else(|| panic!("no ServerHello in:\n{msg}"));
    let bytes: Vec<u8> = lines
        .take_while(|l| l.starts_with("    "))
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|h| u8::from_str_radix(h, 16).ok())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(bytes.len() >= 38 && bytes[0] == 2, "{msg}");
    bytes[6..38].to_vec()
}

#[test]
fn debians_nginx_serves_https_with_openssl_and_kilns_randomness() {
    let _one = one_server();
    // nginx with OpenSSL 3 (libssl, libcrypto from Debian, unmodified):
    // TLS 1.3 with the test CA's certificate; OpenSSL's keys and randoms
    // come from the kernel's getrandom, so two boots must differ.
    let (d, _) = nginx_rootfs();
    let tls = root().join("lib/tls/tests/data");
    for f in ["server.pem", "server.key"] {
        std::fs::copy(tls.join(f), d.join("etc/nginx").join(f)).unwrap();
    }
    std::fs::write(
        d.join("etc/nginx/nginx.conf"),
        "user root; daemon off; master_process off; worker_processes 1;\n\
         error_log stderr; pid /tmp/nginx.pid;\n\
         events { worker_connections 64; }\n\
         http { access_log off; server { listen 443 ssl; ssl_certificate /etc/nginx/server.pem;\n\
         ssl_certificate_key /etc/nginx/server.key; ssl_protocols TLSv1.2 TLSv1.3; root /www; } }\n",
    )
    .unwrap();
    b_build();
    let ca = tls.join("ca.pem");
    let mut randoms = Vec::new();
    for boot in 0..2 {
        let port = free_port();
        let child = spawn(loader(
            &d,
            &["-M", "256M", "-p", &format!("{port}:443")],
            &["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"],
        ));
        let get = || {
            Command::new("curl")
                .args([
                    "-s",
                    "-m",
                    "20",
                    "--cacert",
                    ca.to_str().unwrap(),
                    "--resolve",
                    &format!("kiln.test:{port}:127.0.0.1"),
                ])
                .arg(format!("https://kiln.test:{port}/"))
                .output()
                .unwrap()
        };
        let start = std::time::Instant::now();
        let body = loop {
            let o = get();
            if o.status.success() {
                break String::from_utf8_lossy(&o.stdout).into_owned();
            }
            if start.elapsed().as_secs() > 120 {
                panic!("nginx never answered over HTTPS:\n{}", stop(child));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        };
        assert_eq!(body, "<h1>nginx on Kiln</h1>\n");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 60 openssl s_client -connect 127.0.0.1:{port} -servername kiln.test -CAfile {} -tls1_3 -msg -ign_eof 2>&1", ca.display()))
            .output()
            .unwrap();
        let msg = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            msg.contains("New, TLSv1.3") && msg.contains("Verify return code: 0 (ok)"),
            "boot {boot}:\n{msg}"
        );
        randoms.push(server_random(&msg));
        let out = stop(child);
        assert!(
            !out.contains("kiln: CPU exception") && !out.contains("kiln: panic"),
            "{out}"
        );
    }
    assert_ne!(
        randoms[0], randoms[1],
        "two boots gave the same ServerHello random"
    );
    assert!(
        randoms.iter().all(|r| r.iter().any(|&b| b != 0)),
        "{randoms:?}"
    );
}

#[test]
fn debians_nginx_serves_curl() {
    let _one = one_server();
    // A dynamically linked glibc server (epoll, non-blocking sockets,
    // eventfd, socketpair, writev): pages, a 404, keep-alive, a large file
    // byte for byte, and clients at once.
    let (d, big) = nginx_rootfs();
    b_build();
    let port = free_port();
    let child = spawn(loader(
        &d,
        &["-M", "256M", "-p", &format!("{port}:80")],
        &["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"],
    ));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let start = std::time::Instant::now();
    while !curl(&url("/")).0 {
        assert!(start.elapsed().as_secs() < 120, "nginx never answered");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(curl(&url("/")).1, "<h1>nginx on Kiln</h1>\n");
    // Headers: nginx's own, and the host's date (the wall clock).
    let o = Command::new("curl")
        .args(["-s", "-i", "-m", "20", &url("/index.html")])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\nServer: nginx/"),
        "{head}"
    );
    let year = Command::new("date").args(["-u", "+%Y"]).output().unwrap();
    assert!(
        head.contains(&format!(
            " {} ",
            String::from_utf8_lossy(&year.stdout).trim()
        )),
        "the Date header has this year: {head}"
    );
    // 404 from nginx's error page.
    let o = Command::new("curl")
        .args(["-s", "-m", "20", "-w", "%{http_code}", &url("/missing")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        body.contains("<center>nginx/") && body.ends_with("404"),
        "{body}"
    );
    // Keep-alive: two requests on one connection.
    let o = Command::new("curl")
        .args(["-s", "-v", "-m", "20", &url("/"), &url("/index.html")])
        .output()
        .unwrap();
    let verbose = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "<h1>nginx on Kiln</h1>\n<h1>nginx on Kiln</h1>\n"
    );
    assert!(
        verbose.contains("Re-using existing connection"),
        "{verbose}"
    );
    // A large file, byte for byte.
    let o = Command::new("curl")
        .args(["-s", "-f", "-m", "60", &url("/big.bin")])
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout == big,
        "big.bin: {} bytes back of {}",
        o.stdout.len(),
        big.len()
    );
    // Clients at once.
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let u = url("/");
            std::thread::spawn(move || curl(&u))
        })
        .collect();
    for c in clients {
        assert_eq!(
            c.join().unwrap(),
            (true, "<h1>nginx on Kiln</h1>\n".to_string())
        );
    }
    let out = stop(child);
    assert!(
        out.contains("open() \"/www/missing\" failed (2: No such file or directory)"),
        "nginx's error log: {out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn debians_redis_serves_redis_cli_and_redis_benchmark() {
    let _one = one_server();
    // Redis 7 (glibc, jemalloc, epoll, and background threads made with
    // clone): commands from redis-cli, then redis-benchmark's clients.
    let d = rootfs("redis");
    std::fs::create_dir_all(d.join("data")).unwrap();
    rootfs_add(&d, &["/usr/bin/redis-server"]);
    b_build();
    let port = free_port();
    let child = spawn(loader(
        &d,
        &["-M", "512M", "-p", &format!("{port}:6379")],
        &[
            "/usr/bin/redis-server",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/data",
            "--protected-mode",
            "no",
        ],
    ));
    let p = port.to_string();
    let cli = |args: &[&str]| {
        let o = Command::new("redis-cli")
            .args(["-p", &p])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let start = std::time::Instant::now();
    while cli(&["ping"]) != "PONG" {
        assert!(start.elapsed().as_secs() < 120, "redis never answered");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(cli(&["set", "greeting", "hello from Kiln"]), "OK");
    assert_eq!(cli(&["get", "greeting"]), "hello from Kiln");
    assert_eq!(cli(&["incrby", "n", "41"]), "41");
    assert_eq!(cli(&["incr", "n"]), "42");
    assert_eq!(cli(&["rpush", "l", "a", "b", "c"]), "3");
    assert_eq!(cli(&["lrange", "l", "0", "-1"]), "a\nb\nc");
    let info = cli(&["info", "server"]);
    assert!(
        info.contains("redis_version:7.") && info.contains("process_id:1"),
        "{info}"
    );
    // 10 clients at once, 1000 requests per test, every reply checked by
    // redis-benchmark (it fails on an error reply or a lost connection).
    let o = Command::new("redis-benchmark")
        .args([
            "-p",
            &p,
            "-n",
            "1000",
            "-c",
            "10",
            "-q",
            "-t",
            "set,get,incr,lpush",
        ])
        .output()
        .unwrap();
    let bench = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{bench}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for t in ["SET", "GET", "INCR", "LPUSH"] {
        assert!(
            bench.contains(&format!("{t}: ")) && bench.contains("requests per second"),
            "{bench}"
        );
    }
    assert_eq!(cli(&["dbsize"]).parse::<u64>().map(|n| n >= 3), Ok(true));
    let out = stop(child);
    assert!(out.contains("Ready to accept connections"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `kiln build` of the ELF loader for arm64 (QEMU virt).
fn build_arm64_loader() {
    let b = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["build", "-q", "--arch", "arm64", "apps/elfloader"])
        .status()
        .unwrap();
    assert!(b.success());
}

#[test]
fn arm64_programs_run_through_svc() {
    let _one = one_server();
    // The same Rust programs built for aarch64-unknown-linux-musl, on QEMU
    // virt: `svc #0`, arm64's system call numbers, TPIDR_EL0 for TLS, a
    // program linked at a fixed address below RAM, threads and sockets.
    let d = rootfs("arm64");
    for p in [
        "linux-hello",
        "linux-threads",
        "linux-http",
        "linux-signals",
    ] {
        std::fs::copy(linux_program_for("aarch64", p), d.join("bin").join(p)).unwrap();
    }
    build_arm64_loader();
    let arm64 = ["--arch", "arm64", "-M", "256M"];
    let arm =
        |extra: &[&str], args: &[&str]| output(loader(&d, &[&arm64[..], extra].concat(), args));
    let (code, out) = arm(
        &["-e", "GREETING=hello from the host"],
        &["/bin/linux-hello", "a", "two words"],
    );
    assert!(
        out.contains(r#"linux-hello: 3 argument(s): ["/bin/linux-hello", "a", "two words"]"#),
        "{out}"
    );
    assert!(
        out.contains("GREETING=hello from the host\n") && out.contains("motd: served by Kiln\n"),
        "{out}"
    );
    assert!(out.contains("sum of multiples of 3: 166833\n"), "{out}");
    assert_eq!(code, 43, "{out}");
    let (code, out) = arm(&[], &["/bin/linux-threads"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("threads: counter = 1998000\n") && out.contains("threads: scoped sum = 36\n"),
        "{out}"
    );
    assert!(
        out.contains("threads: condvar woke after 50 ms or more\n"),
        "{out}"
    );
    // Signal handlers, with arm64's frame: the same lines as on x86_64.
    let (code, out) = arm(&[], &["/bin/linux-signals"]);
    assert_eq!(code, 0, "{out}");
    for line in SIGNAL_LINES {
        assert!(out.contains(line), "arm64: {line:?}: {out}");
    }
    // The network server, fetched with curl.
    let port = free_port();
    let child = spawn(loader(
        &d,
        &[&arm64[..], &["-p", &format!("{port}:8080")]].concat(),
        &["/bin/linux-http", "8080"],
    ));
    let start = std::time::Instant::now();
    while !curl(&format!("http://127.0.0.1:{port}/ready")).0 {
        assert!(
            start.elapsed().as_secs() < 120,
            "the arm64 server never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (ok, body) = curl(&format!("http://127.0.0.1:{port}/quit"));
    assert!(
        ok && body.starts_with("path=/quit\n") && body.ends_with("motd=served by Kiln\n"),
        "{body}"
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // An x86_64 program is refused on an arm64 kernel, with the reason.
    std::fs::copy(linux_program("linux-hello"), d.join("bin/x86")).unwrap();
    let (code, out) = arm(&[], &["/bin/x86"]);
    assert_eq!(code, 126, "{out}");
    assert!(
        out.contains(
            "/bin/x86: built for another CPU (ELF machine 62); this kernel runs aarch64 programs"
        ),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// What linux-signals prints on Linux.
const SIGNAL_LINES: [&str; 6] = [
    "signals: after raise, handler ran 1 time(s)\n",
    "signals: while blocked, handler ran 1 time(s)\n",
    "signals: after unblocking, handler ran 2 time(s)\n",
    "signals: alarm handler ran 1 time(s) after 1 s\n",
    "signals: 3 after another handler, handler ran 3 time(s)\n",
    "signals: Rust's runtime had set an alternate stack: true; set: 0; the SA_ONSTACK handler ran on it: true, and saw SS_ONSTACK: true\n",
];

#[test]
fn signals_a_program_sends_itself_run_its_handlers() {
    // musl's raise, sigprocmask, alarm and pause from a Rust program: the
    // same output as on Linux.
    let d = rootfs("signals");
    std::fs::copy(linux_program("linux-signals"), d.join("bin/signals")).unwrap();
    std::fs::copy("/bin/busybox", d.join("bin/busybox")).unwrap();
    let (code, out) = run(&d, &["-M", "128M"], &["/bin/signals"]);
    assert_eq!(code, 0, "{out}");
    for line in SIGNAL_LINES {
        assert!(out.contains(line), "{line:?}: {out}");
    }
    // busybox sh's trap, and a default action that ends the program.
    let script = "trap 'echo caught TERM' TERM; kill -TERM $$; echo after kill; kill -0 $$ && echo alive; trap - TERM; kill -TERM $$; echo not reached";
    let (code, out) = run(&d, &["-M", "256M"], &["/bin/busybox", "sh", "-c", script]);
    assert!(
        out.contains("\ncaught TERM\nafter kill\nalive\n") && !out.contains("not reached"),
        "{out}"
    );
    assert!(
        out.contains("the program got signal 15 with no handler: it ends"),
        "{out}"
    );
    assert_eq!(
        code, 126,
        "128 + 15 is reported as 126 (exit codes above 126 are clamped): {out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_nginx_app_packs_nginx_from_this_machine_and_serves_in_32_mib() {
    let _one = one_server();
    // apps/nginx: the Kraftfile's `programs:` packs Debian's nginx and its
    // libraries into the image at build time; `cmd:` runs it.
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-W",
            "-M",
            "32M",
            "--timeout",
            "240",
            "-p",
            &format!("{port}:80"),
            "apps/nginx",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let start = std::time::Instant::now();
    while !curl(&url).0 {
        assert!(start.elapsed().as_secs() < 180, "apps/nginx never answered");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (_, body) = curl(&url);
    assert!(
        body.contains("<h1>Debian's nginx, unmodified, on Kiln</h1>"),
        "{body}"
    );
    let o = Command::new("curl")
        .args(["-s", "-I", "-m", "20", &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        head.contains("Server: nginx/") && head.contains("Content-Type: text/html"),
        "{head}"
    );
    let out = stop(child);
    assert!(
        out.contains("files of 1 program(s) added to the rootfs")
            || out.contains("compiled 0 of")
            || out.contains("; up to date)"),
        "{out}"
    );
}

#[test]
fn debians_mosquitto_runs_unmodified() {
    let _one = one_server();
    // The broker people ran as a Nanos unikernel, from Debian, through the
    // ELF loader (glibc, OpenSSL, cJSON; epoll): a message at QoS 1 from
    // mosquitto_pub reaches mosquitto_sub.
    let d = rootfs("mosquitto");
    rootfs_add(&d, &["/usr/sbin/mosquitto"]);
    std::fs::write(
        d.join("etc/mosquitto.conf"),
        "listener 1883\nallow_anonymous true\nuser root\n",
    )
    .unwrap();
    std::fs::write(d.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(d.join("etc/group"), "root:x:0:\n").unwrap();
    b_build();
    let port = free_port();
    let child = spawn(loader(
        &d,
        &["-M", "128M", "-p", &format!("{port}:1883")],
        &["/usr/sbin/mosquitto", "-c", "/etc/mosquitto.conf"],
    ));
    let p = port.to_string();
    let start = std::time::Instant::now();
    while !Command::new("mosquitto_pub")
        .args(["-p", &p, "-t", "probe", "-m", "x"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(start.elapsed().as_secs() < 120, "mosquitto never answered");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &p, "-t", "edge/#", "-v", "-C", "1", "-W", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(Command::new("mosquitto_pub")
        .args(["-p", &p, "-q", "1", "-t", "edge/pump1", "-m", "42 psi"])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        String::from_utf8_lossy(&sub.wait_with_output().unwrap().stdout),
        "edge/pump1 42 psi\n"
    );
    let out = stop(child);
    assert!(
        out.contains("mosquitto version 2.") && out.contains("New client connected from 10.0.2.2"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Programs' memory is virtual (x86_64): a 1 GiB reservation costs
/// nothing, partial munmap/mprotect work, a PIE lands somewhere else on
/// every boot (ASLR), and W^X holds for the program: writing its code,
/// executing its heap or reading an unmapped address ends the program
/// with SIGSEGV and the address, and the kernel carries on to report it.
#[test]
fn program_memory_is_demand_paged_randomised_and_write_xor_execute() {
    let prog = linux_program("linux-memory");
    let d = rootfs("memory");
    std::fs::copy(&prog, d.join("bin/memory")).unwrap();
    let where_ = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("where: "))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    let (code, a) = run(&d, &["-M", "48M"], &["/bin/memory", "where"]);
    assert_eq!(code, 0, "{a}");
    let (code, b) = run(&d, &["-M", "48M"], &["/bin/memory", "where"]);
    assert_eq!(code, 0, "{b}");
    let (wa, wb) = (where_(&a), where_(&b));
    let field = |w: &str, name: &str| {
        w.split_whitespace()
            .skip_while(|x| *x != name)
            .nth(1)
            .unwrap()
            .to_string()
    };
    for name in ["code", "stack", "mmap"] {
        assert_ne!(
            field(&wa, name),
            field(&wb, name),
            "{name} at the same address on two boots: {wa} / {wb}"
        );
    }
    // The host's randomness through the virtio-rng device `kiln run` adds.
    assert!(
        a.lines()
            .any(|l| l.contains("random: seeded from") && l.contains("virtio-rng")),
        "{a}"
    );
    // 1 GiB reserved and another mapped, in a 48 MiB guest.
    // madvise(DONTNEED), MAP_FIXED_NOREPLACE (EEXIST over a mapping) and
    // MAP_FIXED: the line Linux prints.
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "flags"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("flags: dontneed (0, 0, 7), noreplace over a mapping (-1, 17, 7), noreplace on free space true, fixed (true, 0)"),
        "{out}"
    );
    // Touching more memory than the machine has: the program ends with
    // the faulting address named (no kernel symbol is put to the
    // program's instruction pointer); the kernel stays up to report it.
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "exhaust"]);
    assert_eq!(code, 126, "{out}");
    assert!(out.contains("exhaust: 16 MiB touched"), "{out}");
    assert!(
        out.contains("kiln: elf: segmentation fault (SIGSEGV): the program wrote 0x")
            && out.contains(": out of memory (instruction pointer 0x"),
        "{out}"
    );
    let after = out
        .split("out of memory (instruction pointer")
        .nth(1)
        .unwrap_or("");
    assert!(
        !after.lines().nth(1).unwrap_or("").contains("  in "),
        "{out}"
    );
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "reserve"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reserve: ok"), "{out}");
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "growsdown"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("growsdown: 8 pages below read back 42"),
        "{out}"
    );
    // A file of the initrd mapped private and writable: its pages are
    // lent in place (reading 4 MiB of it costs no resident memory), and a
    // write copies only the page written, never reaching the file.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(d.join("etc/big.dat"), &data).unwrap();
    let sum = data
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "lend", "/etc/big.dat"]);
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("lend: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with(&format!("lend: 4194304 bytes, sum {sum:x}, resident grew "))
            && line.ends_with("write kept true, file unchanged true"),
        "{line}"
    );
    let kib: Vec<i64> = line
        .split("grew ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // [reading, writing]
    assert!(
        kib[0] < 256 && kib[1] <= 64,
        "lent pages cost memory: {line}"
    );
    std::fs::remove_file(d.join("etc/big.dat")).unwrap();
    for (mode, what) in [
        ("write-code", "wrote"),
        ("exec-heap", "executed"),
        ("segv", "read 0x7000dead0000"),
    ] {
        let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", mode]);
        assert!(
            out.contains(&format!(
                "elf: segmentation fault (SIGSEGV): the program {what}"
            )),
            "{mode}: {out}"
        );
        assert!(
            !out.contains("still running") && !out.contains("segv: read "),
            "{mode}: {out}"
        );
        assert!(
            !out.contains("CPU exception"),
            "{mode}: a program's fault is not the kernel's: {out}"
        );
        assert_eq!(code, 126, "{mode}: 128 + SIGSEGV, reported as 126: {out}");
    }
    // Pointers no memory is at: system calls answer EFAULT (the kernel
    // never touches them), and the program's own touch of a
    // non-canonical address (a general-protection fault) is its SIGSEGV.
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "efault"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("efault: write true, read true, open true"),
        "{out}"
    );
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/memory", "noncanonical"]);
    assert_eq!(code, 126, "{out}");
    assert!(
        out.contains(
            "elf: segmentation fault (SIGSEGV): the program made a general-protection fault"
        ) && !out.contains("CPU exception")
            && !out.contains("noncanonical: read "),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The same virtual memory on arm64 (level-3 pages in the program window
/// of the boot tables, faults through the EL1 abort vector): reservations
/// cost nothing, stack and mappings move between boots, touching more than
/// the machine has ends the program, the heap is not executable, code is
/// not writable (the arm64 test programs are linked at a fixed address:
/// the blocks mapped there get their segments' permissions), and initrd
/// pages are lent.
#[test]
fn arm64_program_memory_is_demand_paged_and_randomised() {
    let _one = one_server();
    let d = rootfs("memory-arm64");
    std::fs::copy(
        linux_program_for("aarch64", "linux-memory"),
        d.join("bin/memory"),
    )
    .unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7) as u8).collect();
    std::fs::write(d.join("etc/big.dat"), &data).unwrap();
    build_arm64_loader();
    let arm = |args: &[&str]| output(loader(&d, &["--arch", "arm64", "-M", "48M"], args));
    let (_, a) = arm(&["/bin/memory", "where"]);
    let (_, b) = arm(&["/bin/memory", "where"]);
    let field = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.starts_with("where: "))
            .unwrap_or_else(|| panic!("{out}"))
            .split_whitespace()
            .skip_while(|x| *x != name)
            .nth(1)
            .unwrap()
            .to_string()
    };
    for name in ["stack", "mmap"] {
        assert_ne!(field(&a, name), field(&b, name), "{name}: {a} / {b}");
        let at = u64::from_str_radix(field(&a, name).trim_start_matches("0x"), 16).unwrap();
        assert!(
            (0x10_0000_0000..0x80_0000_0000).contains(&at),
            "{name} in the window: {a}"
        );
    }
    for (mode, want) in [
        ("reserve", "reserve: ok"),
        ("flags", "flags: dontneed (0, 0, 7), noreplace over a mapping (-1, 17, 7), noreplace on free space true, fixed (true, 0)"),
        ("growsdown", "growsdown: 8 pages below read back 42"),
    ] {
        let (code, out) = arm(&["/bin/memory", mode]);
        assert_eq!(code, 0, "{mode}: {out}");
        assert!(out.contains(want), "{mode}: {out}");
    }
    let (code, out) = arm(&["/bin/memory", "lend", "/etc/big.dat"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("lend: 1048576 bytes, sum ")
            && out.contains("write kept true, file unchanged true"),
        "{out}"
    );
    let reading: i64 = out
        .split("resident grew ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(reading < 256, "lent pages cost memory on arm64: {out}");
    for (mode, what) in [
        ("exhaust", "wrote 0x"),
        ("write-code", "wrote"),
        ("exec-heap", "executed"),
        ("segv", "read 0x7000dead0000"),
    ] {
        let (code, out) = arm(&["/bin/memory", mode]);
        assert!(
            out.contains(&format!(
                "elf: segmentation fault (SIGSEGV): the program {what}"
            )),
            "{mode}: {out}"
        );
        assert!(
            !out.contains("CPU exception") && !out.contains("still running"),
            "{mode}: {out}"
        );
        assert_eq!(code, 126, "{mode}: {out}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A program starts others as Linux programs do (Rust's Command, through
/// musl's posix_spawn: clone(CLONE_VM|CLONE_VFORK), execve, wait4): their
/// output captured, their environment, exit codes and pids, a two-stage
/// pipeline, ENOENT for a program that is not there; and the starter's own
/// descriptors and memory are intact after.
#[test]
fn a_program_starts_other_programs() {
    let d = rootfs("spawn");
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    std::fs::copy(hello(), d.join("bin/hello")).unwrap();
    std::fs::copy(linux_program("linux-spawn"), d.join("bin/spawn")).unwrap();
    let (code, out) = run(&d, &["-M", "64M"], &["/bin/spawn", "run"]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "spawn: hello exited Some(43) and said \"linux-hello: 3 argument(s): [\\\"/bin/hello\\\", \\\"from\\\", \\\"a child\\\"]\"\n",
        "spawn: its greeting true\n",
        "spawn: ids exited Some(5); my pid 1\n",
        "spawn: pipeline: count: 4 lines\n",
        "spawn: first stage exited Some(42)\n",
        "spawn: nowhere: NotFound\n",
        "spawn: after: file \"still mine\\n\", heap sum 4999950000\n",
    ] {
        assert!(out.contains(line), "{line:?}: {out}");
    }
    let ids = out
        .lines()
        .find(|l| l.starts_with("spawn: ids: pid "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        ids.ends_with(", parent 1") && !ids.contains("pid 1,"),
        "{ids}"
    );
    // fork stays refused, with the reason.
    let script = "echo $(echo nested)";
    std::fs::copy("/bin/busybox", d.join("bin/busybox")).unwrap();
    let (_, out) = run(&d, &["-M", "64M"], &["/bin/busybox", "sh", "-c", script]);
    assert!(
        out.contains("fork (clone without CLONE_VM) is not supported")
            && out.contains("vfork and posix_spawn"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// POSIX calls answered as Linux answers them (the lines are what the
/// same program prints on Linux, but for the limits Linux's shell sets):
/// SO_ACCEPTCONN, ftruncate of an unlinked open file, RLIMIT_NOFILE
/// enforced, POSIX timers with their signals, sigtimedwait, getrusage; and
/// recvmmsg/sendmmsg echoing datagrams sent through a forwarded UDP port.
#[test]
fn posix_calls_answer_as_on_linux() {
    let prog = linux_program("linux-posix");
    let d = rootfs("posix");
    std::fs::copy(&prog, d.join("bin/posix")).unwrap();
    let (code, out) = run(&d, &["-M", "48M"], &["/bin/posix"]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "acceptconn: bound 0, listening 1\n",
        "unlinked: ftruncate 0 (errno 0), size 3, links 0, reads \"abc\"\n",
        "sparse: ftruncate 0, size 2147483648, blocks 8, zeros at 1 GiB true\n",
        "nofile: soft 1024 hard 65536\n",
        "nofile: soft > hard is errno 22; set to 16, dup stops with errno 24 after fd 15\n",
        "timer: interval 20 ms, first in <= 50 ms, ticks as the time passed in 300 ms or more, si_code -2, si_value 42\n",
        "timer: deleted, 0 more ticks\n",
        "timer: SIGEV_NONE left about 900 ms\n",
        "sigtimedwait: signal 12 after about 100 ms, si_code -2, si_value 7\n",
        "sigtimedwait: nothing pending gives -1 errno 11\n",
        "timer_delete of a deleted timer: fails\n",
        "rusage: max resident at least 4 MiB, page faults at least 1024\n",
        "mremap: fixed move lands there true, keeps both pages true, onto itself errno 22\n",
        "ifreq: eth0 hw 52:54:00:12:34:56 addr 10.0.2.15 mask 255.255.255.0 mtu 1500; lo loopback true; wlan0 errno 19\n",
    ] {
        assert!(out.contains(line), "{line:?}: {out}");
    }
    let _one = one_server();
    let port = free_port();
    let child = spawn(loader(
        &d,
        &["-M", "48M", "-p", &format!("{port}:9000/udp")],
        &["/bin/posix", "udp", "9000"],
    ));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let to = format!("127.0.0.1:{port}");
    let mut buf = [0u8; 100];
    let start = std::time::Instant::now();
    // The guest is up once a ping comes back.
    loop {
        assert!(start.elapsed().as_secs() < 120, "no echo: {}", stop(child));
        sock.send_to(b"ping", &to).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"echo ping");
            break;
        }
    }
    let sent: Vec<String> = (0..5).map(|i| format!("datagram {i}")).collect();
    for m in &sent {
        sock.send_to(m.as_bytes(), &to).unwrap();
    }
    let mut got = Vec::new();
    // Late echoes of earlier pings may come in between.
    while got.iter().filter(|g| *g != "echo ping").count() < sent.len() {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => got.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(e) => panic!("{got:?} then {e}: {}", stop(child)),
        }
    }
    for w in sent.iter().map(|m| format!("echo {m}")) {
        assert!(got.contains(&w), "{w} missing from {got:?}");
    }
    sock.send_to(b"quit", &to).unwrap();
    let o = child.wait_with_output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("udp: recvmmsg gave ") && out.contains(" datagrams echoed\n"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A test program linked at a fixed address (`-C relocation-model=static`:
/// 4 MiB, as gcc links), built apart from the static-pie ones.
fn fixed_program(name: &str) -> PathBuf {
    cargo_in_test_programs(&[
        "rustc",
        "-q",
        "--release",
        "--target",
        "x86_64-unknown-linux-musl",
        "--target-dir",
        "target/fixed",
        "--bin",
        name,
        "--",
        "-C",
        "relocation-model=static",
    ]);
    test_programs()
        .join("target/fixed/x86_64-unknown-linux-musl/release")
        .join(name)
}

/// Fixed-address programs are not confined to a small area: one whose
/// image spans 64 MiB from 4 MiB runs when the guest has the RAM, and the
/// RAM it does not need goes back to the heap; with too little RAM the
/// loader says how much it needs.
#[test]
fn a_fixed_address_program_spanning_64_mib_runs() {
    let d = rootfs("bigfixed");
    std::fs::copy(fixed_program("linux-bigfixed"), d.join("bin/big")).unwrap();
    let (code, out) = run(&d, &["-M", "96M"], &["/bin/big"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("bigfixed: at 0x40") && out.contains(", 64 MiB, checksum 2088960\n"),
        "{out}"
    );
    // W^X by segment: its code is not writable, its data not executable.
    for (mode, what) in [
        ("write-code", "wrote"),
        ("exec-data", "executed"),
        ("protect", "wrote"),
    ] {
        let (code, out) = run(&d, &["-M", "96M"], &["/bin/big", mode]);
        assert_eq!(code, 126, "{mode}: {out}");
        assert!(
            out.contains(&format!(
                "elf: segmentation fault (SIGSEGV): the program {what} 0x"
            )) && out.contains(": the mapping does not allow it"),
            "{mode}: {out}"
        );
        assert!(
            !out.contains("bigfixed: wrote") && !out.contains("bigfixed: executed"),
            "{out}"
        );
    }
    // Built into an image whose embedded rootfs (5 MiB of it) reaches past
    // 4 MiB, where the program must go: named only at run time, more -M
    // would not help, and the message says what does.
    let app = d.join("app");
    std::fs::create_dir_all(app.join("rootfs/bin")).unwrap();
    std::fs::copy(d.join("bin/big"), app.join("rootfs/bin/big")).unwrap();
    std::fs::write(app.join("rootfs/filler"), vec![7u8; 5 << 20]).unwrap();
    let kraftfile = |cmd: &str| {
        format!(
            "spec: v0.6\nname: bigembedded\napp: {}\ntargets:\n  - qemu/x86_64\nrootfs: ./rootfs\n{cmd}",
            root().join("apps/elfloader").display()
        )
    };
    let run_app = |args: &[&str]| {
        let mut a = vec![
            "run",
            "-W",
            "-M",
            "256M",
            "--timeout",
            "120",
            app.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        support::kiln(&a)
    };
    std::fs::write(app.join("Kraftfile"), kraftfile("")).unwrap();
    let (code, out, err) = run_app(&["--", "/bin/big"]);
    assert_eq!(code, 126, "{out}{err}");
    assert!(
        out.contains("but the kernel image (with the initrd built into it) reaches 0x")
            && out.contains("kiln run --initrd DIR apps/elfloader"),
        "{out}{err}"
    );
    // Named by the Kraftfile's cmd, the build sees it and keeps the rootfs
    // beside the kernel: it runs.
    std::fs::write(app.join("Kraftfile"), kraftfile("cmd: [\"/bin/big\"]\n")).unwrap();
    let (code, out, err) = run_app(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(", 64 MiB, checksum 2088960\n"), "{out}");
    assert!(
        err.contains("the rootfs goes beside the kernel instead"),
        "{err}"
    );
    let (code, out) = run(&d, &["-M", "64M"], &["/bin/big"]);
    assert_eq!(code, 126, "{out}");
    assert!(
        out.contains("elfloader: /bin/big: linked at 0x400000..0x44")
            && out.contains("MiB more with -M"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A Kraftfile in Unikraft's own form (a dotted name, a `runtime:`,
/// `libraries:` and `unikraft:` blocks) builds and runs on Kiln's ELF
/// loader, with one note for what has no Kiln meaning.
#[test]
fn a_unikraft_kraftfile_with_a_runtime_runs_on_the_elf_loader() {
    let d = std::env::temp_dir().join(format!("kiln-ukraftfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", d.join("rootfs/bin/busybox"))
        .expect("busybox-static is installed by scripts/test");
    std::fs::write(
        d.join("Kraftfile"),
        "spec: v0.6\nname: hello1.0\nruntime: unikraft.org/base:latest\nrootfs: ./rootfs\n\
         cmd: [\"/bin/busybox\", \"echo\", \"hello from a Unikraft Kraftfile\"]\n\
         unikraft:\n  version: stable\n  kconfig:\n    CONFIG_LIBUKDEBUG_PRINTK_ERR: y\n\
         libraries:\n  lwip: stable\n  musl: stable\n  wamr: stable\ntargets:\n  - qemu/x86_64\n",
    )
    .unwrap();
    let (code, out, err) = support::kiln(&["run", "-W", "--timeout", "120", d.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("hello from a Unikraft Kraftfile"), "{out}");
    assert!(
        err.contains("runtime 'unikraft.org/base:latest': runs on Kiln's ELF loader"),
        "{err}"
    );
    assert!(
        err.contains("no Kiln meaning, left out: library wamr, CONFIG_LIBUKDEBUG_PRINTK_ERR"),
        "{err}"
    );
}

/// A program linked at fixed addresses (Debian's static busybox, at
/// 0x400000) with a rootfs large enough that the image holding it would
/// cover those addresses: the build keeps the rootfs beside the kernel,
/// `kiln run` hands it to the boot loader and the program runs; `kiln pkg`
/// carries it in an OCI image and says why another format cannot.
#[test]
fn a_fixed_address_program_with_a_large_rootfs_gets_it_beside_the_kernel() {
    let d = std::env::temp_dir().join(format!("kiln-apart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", d.join("rootfs/bin/busybox"))
        .expect("busybox-static is installed by scripts/test");
    // 6 MiB that do not compress away: the image would reach past 4 MiB.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..6 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(d.join("rootfs/big.bin"), &big).unwrap();
    std::fs::write(
        d.join("Kraftfile"),
        "spec: v0.6\nname: apart\nruntime: base:latest\nrootfs: ./rootfs\n\
         cmd: [\"/bin/busybox\", \"wc\", \"-c\", \"/big.bin\"]\ntargets:\n  - qemu/x86_64\n",
    )
    .unwrap();
    let dir = d.to_str().unwrap();
    let (code, out, err) = support::kiln(&["run", "-W", "--timeout", "120", "-M", "64M", dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{} /big.bin", 6 << 20)), "{out}");
    assert!(
        err.contains(
            "/bin/busybox is linked at 0x400000, below where the image with the rootfs ends"
        ) && err.contains("the rootfs goes beside the kernel instead"),
        "{err}"
    );
    // Built again: current, and still apart (no second compile).
    let (code, _, err) = support::kiln(&["build", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("up to date"), "{err}");
    let (code, out, err) = support::kiln(&["run", "-W", "-q", "--timeout", "120", dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{} /big.bin", 6 << 20)), "{out}");
    let o = d.join("pkg");
    let (code, _, err) = support::kiln(&[
        "pkg",
        "-q",
        "--format",
        "libvirt",
        "-o",
        o.to_str().unwrap(),
        dir,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("only an OCI image carries a separate initrd"),
        "{err}"
    );
    let (code, _, err) = support::kiln(&["pkg", "-q", "-o", o.to_str().unwrap(), dir]);
    assert_eq!(code, 0, "{err}");
    let cpio = std::fs::read(o.join("apart.initrd.cpio")).unwrap();
    assert!(cpio.len() > 6 << 20, "{}", cpio.len());
    let _ = std::fs::remove_dir_all(&d);
}

/// A C app for Unikraft's own build system (a Makefile.uk beside its C
/// files, `unikraft:` in its Kraftfile, as the catalog's
/// library/helloworld) is refused in one sentence that says why and what
/// to do instead.
#[test]
fn a_unikraft_makefile_app_is_refused_clearly() {
    let d = std::env::temp_dir().join(format!("kiln-ukmake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("Kraftfile"),
        "spec: v0.6\nname: helloworld\nunikraft: stable\ntargets:\n- qemu/x86_64\n",
    )
    .unwrap();
    std::fs::write(d.join("Makefile.uk"), "$(eval $(call addlib,apphelloworld))\nAPPHELLOWORLD_SRCS-y += $(APPHELLOWORLD_BASE)/main.c\n").unwrap();
    std::fs::write(d.join("main.c"), "int main(void) { return 0; }\n").unwrap();
    let (code, _, err) = support::kiln(&["build", d.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a C app for Unikraft's own build system (Makefile.uk): Kiln does not build Unikraft's C libraries"), "{err}");
    // An app made of Unikraft's libraries alone (the catalog's redis 7.0).
    std::fs::remove_file(d.join("Makefile.uk")).unwrap();
    std::fs::write(d.join("Kraftfile"), "spec: v0.6\nname: redis\ncmd: [\"/redis.conf\"]\nunikraft:\n  version: staging\nlibraries:\n  musl: staging\n  redis:\n    version: staging\ntargets:\n- qemu/x86_64\n").unwrap();
    let (code, _, err) = support::kiln(&["build", d.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("an app built from Unikraft's C libraries (the Kraftfile's `unikraft:`/`libraries:`): Kiln does not build Unikraft's C libraries"), "{err}");
}

/// A Rust program for Unikraft's Rust support (a `std` crate beside a
/// Kraftfile with `unikraft:` and `libraries:`, as the catalog's
/// native/helloworld-rs) is built as a static Linux program and run on
/// the ELF loader, the Kraftfile's `cmd` its arguments.
#[test]
fn a_unikraft_rust_program_runs_on_the_elf_loader() {
    let d = std::env::temp_dir().join(format!("kiln-ukrust-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::write(
        d.join("Kraftfile"),
        "spec: v0.6\nname: hello-rs\ncmd: [\"one\", \"two\"]\nunikraft:\n  version: stable\nlibraries:\n  musl: stable\ntargets:\n- qemu/x86_64\n",
    )
    .unwrap();
    std::fs::write(
        d.join("Cargo.toml"),
        "[package]\nname = \"hello-rs\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("src/main.rs"),
        "fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    println!(\"rust std on kiln: {:?}\", &args[1..]);\n    std::process::exit(3);\n}\n",
    )
    .unwrap();
    let (code, out, err) = support::kiln(&["run", "-W", "--timeout", "120", d.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("rust std on kiln: [\"one\", \"two\"]"),
        "{out}"
    );
    assert!(err.contains("a Rust program (Unikraft's Rust support): building it for Linux (x86_64-unknown-linux-musl)"), "{err}");
}
