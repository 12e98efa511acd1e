//! C in the kernel (lib/libc, musl): apps/hello-c's C `main` gets its
//! arguments and environment and its return value is the exit status, on
//! x86_64 and arm64 (QEMU virt and both Raspberry Pi boards); C code
//! using threads, files and floating point, and a C TCP echo server
//! served to concurrent clients (apps/ctest); SQLite from Rust through
//! its bindgen bindings (apps/records: real SQL over HTTP); Lua scripts
//! (apps/lua); a C compile
//! error and a C app without LIBC are clear errors.
//!
//! Under TCG (-W): C code uses SSE, which some hosts' KVM (PVM) cannot
//! emulate.

mod support;
use support::{free_port, kiln, root, Guest, Net};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Builds and guests one at a time: C kernels share one cargo target
/// folder, and a TCG guest takes a whole host CPU.
static ONE: Mutex<()> = Mutex::new(());

/// `kiln run -W` of `app` for `arch` with `extra` options and the app's
/// `args`: the exit status and everything printed.
fn run(app: &str, arch: &str, extra: &[&str], args: &[&str]) -> (i32, String) {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = format!("apps/{app}");
    let mut a = vec!["run", "-W", "--timeout", "240", "--arch", arch];
    a.extend_from_slice(extra);
    a.push(&dir);
    a.push("--");
    a.extend_from_slice(args);
    let (code, out, err) = kiln(&a);
    (code, format!("{out}{err}"))
}

fn hello_c_prints_arguments_environment_and_status(arch: &str) {
    let (code, out) = run(
        "hello-c",
        arch,
        &["-e", "NAME=kiln", "-e", "exit=7"],
        &["one", "two words"],
    );
    assert_eq!(code, 7, "{out}");
    for want in [
        "Hello from C!\n",
        "argv[0] = hello-c\n",
        "argv[1] = one\n",
        "argv[2] = two words\n",
        "NAME = kiln\n",
        "sqrt(2) = 1.414214\n",
        "LIBC = y\n",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let heap = out
        .lines()
        .find(|l| l.starts_with("heap: "))
        .unwrap_or_else(|| panic!("{out}"));
    let kib: Vec<u64> = heap
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(kib.len() == 2 && kib[0] > 0 && kib[0] < kib[1], "{heap}");
}

#[test]
fn hello_c_prints_arguments_environment_and_status_on_x86_64() {
    hello_c_prints_arguments_environment_and_status("x86_64");
}

#[test]
fn hello_c_prints_arguments_environment_and_status_on_arm64() {
    hello_c_prints_arguments_environment_and_status("arm64");
}

fn c_threads_files_and_floating_point(arch: &str) {
    let (code, out) = run("ctest", arch, &[], &["threads", "files", "float"]);
    assert_eq!(code, 0, "ctest on {arch}:\n{out}");
    for want in [
        "threads: 8 threads summed 400040000\n",
        "threads: __thread kept per thread\n",
        "files: 1000 lines, last 999, 8890 bytes\n",
        "float: 3.14064 0.4794 2500 10.000\n",
    ] {
        assert!(
            out.contains(want),
            "ctest on {arch}: {want:?} missing:\n{out}"
        );
    }
}

#[test]
fn c_threads_files_and_floating_point_on_x86_64() {
    c_threads_files_and_floating_point("x86_64");
}

#[test]
fn c_threads_files_and_floating_point_on_arm64() {
    c_threads_files_and_floating_point("arm64");
}

/// Sends `n` lines on one connection and reads each back.
fn echo_client(addr: std::net::SocketAddr, id: usize, n: usize) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(20))
        .map_err(|e| format!("client {id}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for i in 0..n {
        let msg = format!("client {id} message {i} {}\n", "x".repeat(id * 37 % 300));
        s.write_all(msg.as_bytes())
            .map_err(|e| format!("client {id}: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)
            .map_err(|e| format!("client {id} message {i}: {e}"))?;
        if back != msg.as_bytes() {
            return Err(format!(
                "client {id} message {i}: got {:?}",
                String::from_utf8_lossy(&back)
            ));
        }
    }
    Ok(())
}

#[test]
fn a_c_tcp_echo_server_serves_concurrent_clients_on_x86_64() {
    c_tcp_echo_server_serves_concurrent_clients("x86_64");
}

#[test]
fn a_c_tcp_echo_server_serves_concurrent_clients_on_arm64() {
    c_tcp_echo_server_serves_concurrent_clients("arm64");
}

fn c_tcp_echo_server_serves_concurrent_clients(arch: &str) {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let ready = |addr| {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut b = [0u8; 6];
        s.write_all(b"ready\n").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ready\n"
    };
    let g = Guest::start_with_args(
        &PathBuf::from("apps/ctest"),
        Net::Forward {
            host: port,
            guest: 7007,
        },
        &["--arch", arch],
        &["echo", "7007"],
        ready,
    );
    let addr = g.addr;
    let clients: Vec<_> = (0..16)
        .map(|id| std::thread::spawn(move || echo_client(addr, id, 20)))
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err())
        .collect();
    // "quit" ends the server once it accepts again.
    let mut q = TcpStream::connect(addr).unwrap();
    q.write_all(b"quit").unwrap();
    let mut b = [0u8; 4];
    let _ = q.read_exact(&mut b);
    let _ = TcpStream::connect(addr);
    std::thread::sleep(Duration::from_secs(2));
    let out = g.stop();
    assert!(errors.is_empty(), "{errors:?}\n{out}");
    assert!(out.contains("echo: listening on 7007"), "{out}");
    assert!(
        out.contains("echo: served 19 clients") || out.contains("echo: served 18 clients"),
        "{out}"
    );
}

/// The same C app boots on both Raspberry Pis (QEMU's raspi3b and
/// raspi4b boards), without the network stack they lack.
/// LIBC brings the network stack by default (LIBSYSCALL implies LIBNET),
/// and an app that needs none leaves it out: no device probe, no network
/// line at boot, a smaller kernel.
#[test]
fn a_c_app_can_leave_the_network_out() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempApp(std::env::temp_dir().join(format!("kiln-c-nonet-{}", std::process::id())));
    std::fs::create_dir_all(d.path()).unwrap();
    let with_net = |net: &str| {
        std::fs::write(
            d.path().join("Kraftfile"),
            format!("spec: v0.6\nname: hello-c\napp: {}\ntargets: [qemu/x86_64]\nkconfig:\n  LIBNET: {net}\n", root().join("apps/hello-c").display()),
        )
        .unwrap();
        let (code, out, err) = kiln(&[
            "run",
            "-W",
            "--timeout",
            "240",
            d.path().to_str().unwrap(),
            "--",
            "one",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("Hello from C!\n") && out.contains("argv[1] = one\n"),
            "{out}"
        );
        let size = std::fs::metadata(d.path().join(".kiln/build/hello-c_qemu-x86_64"))
            .unwrap()
            .len();
        (format!("{out}{err}"), size)
    };
    let (out, without) = with_net("n");
    assert!(!out.contains("kiln: net:"), "{out}");
    let (out, with) = with_net("y");
    assert!(out.contains("kiln: net:"), "{out}");
    assert!(
        without < with,
        "without the network {without} bytes, with it {with}"
    );
}

#[test]
fn hello_c_runs_on_the_raspberry_pis() {
    for plat in ["raspi", "raspi4"] {
        let (code, out) = run(
            "hello-c",
            "arm64",
            &["--plat", plat, "-e", "NAME=pi"],
            &["one"],
        );
        assert_eq!(code, 0, "{plat}: {out}");
        for want in [
            "Hello from C!\n",
            "argv[1] = one\n",
            "NAME = pi\n",
            "sqrt(2) = 1.414214\n",
        ] {
            assert!(out.contains(want), "{plat}: {want:?} missing:\n{out}");
        }
    }
}

/// A folder removed when dropped.
struct TempApp(PathBuf);

impl TempApp {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of apps/hello-c in a temporary folder, its main.c replaced.
fn hello_c_with(main_c: &str, kconfig: Option<&str>) -> TempApp {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = TempApp(std::env::temp_dir().join(format!("kiln-c-{}-{n}", std::process::id())));
    std::fs::create_dir_all(d.path()).unwrap();
    let src = root().join("apps/hello-c");
    for f in ["Kraftfile", "Kconfig", "build.rs"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    if let Some(k) = kconfig {
        std::fs::write(d.path().join("Kconfig"), k).unwrap();
    }
    std::fs::create_dir(d.path().join("src")).unwrap();
    std::fs::copy(src.join("src/lib.rs"), d.path().join("src/lib.rs")).unwrap();
    let libc = root().join("lib/libc");
    std::fs::write(
        d.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"broken-c\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[package.metadata.kiln]\nmain = \"c\"\n\n[dependencies]\nkiln-libc = {{ path = {:?} }}\n\n[build-dependencies]\nkiln-cc = {{ path = {:?} }}\n\n[workspace]\n",
            libc.display().to_string(),
            libc.join("cc").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(d.path().join("main.c"), main_c).unwrap();
    d
}

#[test]
fn c_errors_are_clear() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    // The compiler's own message, with the file and line.
    let d = hello_c_with(
        "#include <stdio.h>\nint main(void)\n{\n    printf(\"x\\n\")\n    return 0;\n}\n",
        None,
    );
    let (code, out, err) = kiln(&["build", d.path().to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("main.c:4:"), "no file:line in:\n{err}");
    assert!(err.contains("expected ';'"), "{err}");
    // A machine without the C compiler, or without musl for the CPU.
    let d = hello_c_with("int main(void) { return 0; }\n", None);
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    let o = c
        .current_dir(root())
        .env("KILN_CLANG", "/nonexistent/clang")
        .args(["build", d.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("install it (apt install clang)"), "{err}");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    let o = c
        .current_dir(root())
        .env("KILN_MUSL", "/nonexistent")
        .args(["build", "--arch", "arm64", d.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("C code for aarch64 kernels needs musl's headers and libc.a for aarch64"),
        "{err}"
    );
    assert!(err.contains("install musl-dev:arm64"), "{err}");
    // A C main without the C library.
    let d = hello_c_with(
        "int main(void) { return 0; }\n",
        Some("config APP_HELLO_C\n\tdef_bool y\n"),
    );
    let (code, out, err) = kiln(&["build", d.path().to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("needs LIBC"), "{err}");
}

/// One HTTP/1.1 request on its own connection: status and body.
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: records\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// apps/records: a Rust app using SQLite (C) through its bindgen
/// bindings; real SQL over HTTP, checked against what SQLite must answer.
fn records_answer_real_sql(arch: &str) {
    // apps/records is built with other options (volumes) by another test:
    // one build and guest at a time.
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let g = Guest::start(
        &PathBuf::from("apps/records"),
        Net::Forward {
            host: port,
            guest: 8080,
        },
        &["--arch", arch],
        |addr| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.write_all(b"GET /kv HTTP/1.1\r\n\r\n");
                let mut b = [0u8; 12];
                s.read_exact(&mut b).is_ok() && b.starts_with(b"HTTP/1.1 200")
            })
        },
    );
    let a = g.addr;
    // Key-value.
    assert_eq!(
        http(a, "PUT", "/kv/greeting", "hello; world"),
        (201, "stored\n".into())
    );
    assert_eq!(
        http(a, "GET", "/kv/greeting", ""),
        (200, "hello; world".into())
    );
    assert_eq!(
        http(a, "PUT", "/kv/greeting", "again"),
        (201, "stored\n".into())
    );
    assert_eq!(http(a, "GET", "/kv/greeting", ""), (200, "again".into()));
    assert_eq!(http(a, "GET", "/kv/none", "").0, 404);
    assert_eq!(http(a, "PUT", "/kv/other", "x").0, 201);
    assert_eq!(http(a, "GET", "/kv", ""), (200, "greeting\nother\n".into()));
    assert_eq!(
        http(a, "DELETE", "/kv/other", ""),
        (200, "deleted\n".into())
    );
    assert_eq!(http(a, "DELETE", "/kv/other", "").0, 404);
    // SQL: 2,000 rows inserted in one transaction by a recursive CTE, an
    // index, point queries, a join and aggregates.
    let (code, body) = http(
        a,
        "POST",
        "/sql",
        "BEGIN; CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price REAL, shop INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
           INSERT INTO item SELECT i, 'item;' || i, i * 0.25, i % 7 FROM n;
         CREATE TABLE shop(id INTEGER PRIMARY KEY, city TEXT);
         INSERT INTO shop VALUES (0,'Oslo'),(1,'Lima'),(2,'Pune'),(3,'Kobe'),(4,'Graz'),(5,'Cork'),(6,'Fez');
         CREATE INDEX item_name ON item(name); COMMIT;
         SELECT count(*), sum(price), max(name) FROM item;",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "count(*)\tsum(price)\tmax(name)\n2000\t500250.0\titem;999\n"
    );
    let (code, body) = http(
        a,
        "POST",
        "/sql",
        "SELECT id, price FROM item WHERE name = 'item;1234'",
    );
    assert_eq!((code, body.as_str()), (200, "id\tprice\n1234\t308.5\n"));
    // A REAL reaches Rust as the very double SQLite computed (its bits
    // through lib/sqlite's wrappers), not SQLite's 15-digit text ("0.3").
    let (code, body) = http(
        a,
        "POST",
        "/sql",
        "SELECT 0.1 + 0.2 AS r, typeof(0.1 + 0.2) AS t",
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "r\tt\n0.30000000000000004\treal\n")
    );
    let (code, body) = http(
        a,
        "POST",
        "/sql",
        "SELECT s.city, count(*) AS n, sum(i.id) FROM item i JOIN shop s ON s.id = i.shop GROUP BY s.city ORDER BY n DESC, s.city LIMIT 3",
    );
    assert_eq!(code, 200, "{body}");
    // 2000 = 7 * 285 + 5: shops 1-5 have 286 items, 0 and 6 have 285;
    // shop 5 (Cork) sums 5, 12, ... 2000: 286 * 2005 / 2.
    assert_eq!(
        body,
        "city\tn\tsum(i.id)\nCork\t286\t286715\nGraz\t286\t286429\nKobe\t286\t286143\n"
    );
    let (code, body) = http(
        a,
        "POST",
        "/sql",
        "UPDATE item SET price = price * 2 WHERE shop = 3",
    );
    assert_eq!((code, body.as_str()), (200, "OK 286\n"));
    // SQLite's own errors come back as 400 with its message.
    let (code, body) = http(a, "POST", "/sql", "SELECT nope FROM item");
    assert_eq!(
        (code, body.as_str()),
        (400, "no such column: nope (SQLite error 1)\n")
    );
    let (code, body) = http(a, "POST", "/sql", "INSERT INTO item(id) VALUES (1)");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("UNIQUE constraint failed: item.id"), "{body}");
    let out = g.stop();
    assert!(out.contains("records: SQLite 3."), "{out}");
}

/// SQLite in the kernel keeps its database on a FAT volume (lib/blk,
/// lib/fatfs): rows written in one boot (with its journal, fsync and
/// truncation) are read back in the next, and the image passes fsck.
#[test]
fn sqlite_keeps_its_database_on_a_volume() {
    let s = support::State::new("sqlite-volume");
    let (code, _, err) = s.kiln(&["volume", "create", "recs", "--size", "16M"]);
    assert_eq!(code, 0, "{err}");
    let sql = std::env::temp_dir().join(format!("kiln-sqlite-volume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sql);
    std::fs::create_dir_all(&sql).unwrap();
    std::fs::write(
        sql.join("write.sql"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) INSERT INTO t SELECT i, 'row ' || i FROM n;\n\
         DELETE FROM t WHERE id > 400; VACUUM;\n\
         SELECT count(*) FROM t;\n",
    )
    .unwrap();
    std::fs::write(
        sql.join("read.sql"),
        "PRAGMA integrity_check; SELECT count(*), max(v) FROM t;\n",
    )
    .unwrap();
    // Both boots under one hold of the lock: the records kernel is built
    // with the volume's file systems here and without them elsewhere.
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let boot = |file: &str| {
        s.kiln(&[
            "run",
            "-W",
            "--timeout",
            "240",
            "--initrd",
            sql.to_str().unwrap(),
            "-v",
            "recs:/data",
            "-e",
            "DB=/data/records.db",
            "apps/records",
            "--",
            file,
        ])
    };
    let (code, out, err) = boot("/write.sql");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("count(*)\n400\n"), "{out}");
    let (code, out, err) = boot("/read.sql");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("count(*)\tmax(v)\n400\trow 99\n"), "{out}");
    // The host reads the volume too: a clean FAT with the database on it.
    let img = s.0.join(".volumes/recs.img");
    let o = std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = std::process::Command::new("mdir")
        .arg("-b")
        .arg("-i")
        .arg(&img)
        .arg("::/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("records.db"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let _ = std::fs::remove_dir_all(&sql);
    let _ = std::fs::remove_dir_all(&s.0);
}

#[test]
fn records_answer_real_sql_on_x86_64() {
    records_answer_real_sql("x86_64");
}

#[test]
fn records_answer_real_sql_on_arm64() {
    records_answer_real_sql("arm64");
}

/// apps/lua: Lua 5.4 (C, from the lua-src crate) runs a script from the
/// initrd with its standard libraries; errors and os.exit reach the exit
/// status.
fn lua_runs_scripts(arch: &str) {
    let (code, out) = run(
        "lua",
        arch,
        &["-e", "HOME=/home/kiln"],
        &["/hello.lua", "a", "b"],
    );
    assert_eq!(code, 0, "{out}");
    for want in [
        "Hello from Lua 5.4 in Kiln!\n",
        "arguments:\ta b\n",
        "squares:\t1,4,9,16,25,36,49,64,81,100\n",
        "pi ~ 3.141593, 2^0.5 = 1.4142\n",
        "fibonacci:\t0 1 1 2 3 5 8 13 21 34 55 89\n",
        "lines read back:\t3\n",
        "HOME is\t/home/kiln\n",
    ] {
        assert!(out.contains(want), "{arch}: {want:?} missing:\n{out}");
    }
    let (code, out) = run(
        "lua",
        arch,
        &[],
        &["-e", "print(string.rep('ab', 3)); os.exit(3)"],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("ababab\n"), "{out}");
    let (code, out) = run("lua", arch, &[], &["-e", "local t = nil; print(t.x)"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("lua: (command line):1: attempt to index a nil value (local 't')"),
        "{out}"
    );
    assert!(out.contains("stack traceback:"), "{out}");
}

#[test]
fn lua_runs_scripts_on_x86_64() {
    lua_runs_scripts("x86_64");
}

#[test]
fn lua_runs_scripts_on_arm64() {
    lua_runs_scripts("arm64");
}
