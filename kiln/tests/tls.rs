//! HTTPS from apps/httpd with APP_HTTPD_TLS=y (lib/tls): curl trusting the
//! test CA gets the site byte for byte, headless Chromium renders it
//! trusting only the server's key, HTTP keeps working beside it, a plain
//! HTTP request to the TLS port is closed without harm to the others, and
//! a missing certificate stops the server with the file's name.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::root;

fn data(name: &str) -> PathBuf {
    root().join("lib/tls/tests/data").join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// An app folder: apps/httpd's crate and site, TLS on, the test's
/// certificate and key in /etc/tls.
fn https_app(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-https-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&root().join("apps/httpd/rootfs"), &dir.join("rootfs"));
    std::fs::create_dir_all(dir.join("rootfs/etc/tls")).unwrap();
    std::fs::copy(data("server.pem"), dir.join("rootfs/etc/tls/cert.pem")).unwrap();
    std::fs::copy(data("server.key"), dir.join("rootfs/etc/tls/key.pem")).unwrap();
    std::fs::write(
        dir.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: httpsd\napp: {}\ntargets:\n  - qemu/x86_64\nrootfs: ./rootfs\nkconfig:\n  CONFIG_APP_HTTPD_TLS: y\n",
            root().join("apps/httpd").display()
        ),
    )
    .unwrap();
    dir
}

/// A running HTTPS guest; killed (and its folder removed) when dropped.
struct Https {
    child: std::process::Child,
    console: Option<std::thread::JoinHandle<String>>,
    plain: u16,
    tls: u16,
    dir: PathBuf,
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Https {
    fn start() -> Https {
        let dir = https_app("serve");
        let (code, _, err) = support::kiln(&["build", "-q", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let [plain, tls] = support::free_ports();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args([
                "run",
                "-W",
                "--timeout",
                "300",
                "-p",
                &format!("{plain}:80"),
                "-p",
                &format!("{tls}:443"),
                dir.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let console = support::read_in_background(child.stdout.take().unwrap());
        let h = Https {
            child,
            console: Some(console),
            plain,
            tls,
            dir,
        };
        let t = Instant::now();
        loop {
            let (status, body) = curl(&["--cacert", data("ca.pem").to_str().unwrap()], &h.url("/"));
            if status == "200" {
                return h;
            }
            if t.elapsed() > Duration::from_secs(120) {
                let console = h.stop();
                panic!(
                    "HTTPS never answered (last: {status} {}):\n{console}",
                    String::from_utf8_lossy(&body)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://kiln.test:{}{path}", self.tls)
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.console.take().unwrap().join().unwrap()
    }
}

/// curl with `args` on `url` (kiln.test is 127.0.0.1): (status, body).
fn curl(args: &[&str], url: &str) -> (String, Vec<u8>) {
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    let o = Command::new("curl")
        .args([
            "-s",
            "-m",
            "20",
            "--resolve",
            &format!("kiln.test:{port}:127.0.0.1"),
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let mut body = o.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[nl..]).trim().to_string();
    body.truncate(nl);
    (status, body)
}

#[test]
fn httpd_serves_https_beside_http() {
    let g = Https::start();
    let ca = data("ca.pem");
    let ca = ca.to_str().unwrap();
    let site = root().join("apps/httpd/rootfs/www");
    for (path, file) in [
        ("/", "index.html"),
        ("/game.js", "game.js"),
        ("/kiln.svg", "kiln.svg"),
    ] {
        let (status, body) = curl(&["--cacert", ca], &g.url(path));
        assert_eq!(status, "200", "{path}");
        assert!(
            body == std::fs::read(site.join(file)).unwrap(),
            "{path} differs"
        );
    }
    // TLS 1.2 too, and keep-alive: two requests on one connection.
    let (status, _) = curl(
        &["--cacert", ca, "--tlsv1.2", "--tls-max", "1.2"],
        &g.url("/"),
    );
    assert_eq!(status, "200", "TLS 1.2");
    let o = Command::new("curl")
        .args([
            "-s",
            "-v",
            "--cacert",
            ca,
            "--resolve",
            &format!("kiln.test:{}:127.0.0.1", g.tls),
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .arg(g.url("/"))
        .arg(g.url("/style.css"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("Re-using existing connection") || log.contains("Reusing existing"),
        "{log}"
    );
    assert!(log.contains("ALPN: server accepted http/1.1"), "{log}");
    // Resumption: a client that kept its session comes back without a
    // full handshake: TLS 1.3 and 1.2 with session tickets, TLS 1.2 by
    // session ID.
    let sess = g.dir.join("session.pem");
    for (version, ticket) in [("1.3", ""), ("1.2", ""), ("1.2", "-no_ticket")] {
        let s_client = |keep: &str| {
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 60 openssl s_client -connect 127.0.0.1:{} -servername kiln.test -CAfile {ca} -tls{} {ticket} {keep} {} -ign_eof",
                    g.tls,
                    version.replace('.', "_"),
                    sess.display()
                ))
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let first = s_client("-sess_out");
        assert!(
            first.contains(&format!("New, TLSv{version}")) && first.contains(" 200 OK"),
            "{version} {ticket}:\n{first}"
        );
        let again = s_client("-sess_in");
        assert!(
            again.contains(&format!("Reused, TLSv{version}")) && again.contains(" 200 OK"),
            "{version} {ticket} was not resumed:\n{again}"
        );
    }
    // Without the CA, curl refuses the certificate.
    let (status, _) = curl(&[], &g.url("/"));
    assert_eq!(status, "000");
    // Plain HTTP on its own port is unchanged.
    let (status, _) = curl(&[], &format!("http://kiln.test:{}/", g.plain));
    assert_eq!(status, "200");
    // A plain HTTP request to the TLS port: closed (after an alert), not hung.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut back = Vec::new();
    let r = s.read_to_end(&mut back);
    assert!(
        r.is_ok() || !back.is_empty(),
        "the connection was not closed: {r:?}"
    );
    assert!(
        !back.starts_with(b"HTTP/"),
        "plain HTTP was answered on the TLS port"
    );
    // Garbage in place of a ClientHello, then the others still get service.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    let (status, _) = curl(&["--cacert", ca], &g.url("/"));
    assert_eq!(status, "200");
    // A handshake that stalls (a record header promising a ClientHello
    // that never comes): the others are served meanwhile, and it is
    // closed at the idle timeout (30 s).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).unwrap();
    let t = Instant::now();
    let (status, _) = curl(&["--cacert", ca], &g.url("/"));
    assert_eq!(status, "200", "served while a handshake stalls");
    let r = s.read_to_end(&mut Vec::new());
    assert!(
        r.is_ok() && t.elapsed() < Duration::from_secs(50),
        "a stalled handshake was not closed at the idle timeout: {r:?} after {:?}",
        t.elapsed()
    );
    // Headless Chromium, trusting the test CA (and nothing else of ours).
    let dom = support::chromium_dom_trusting(
        &g.url("/"),
        &["--host-resolver-rules=MAP kiln.test 127.0.0.1"],
        &data("ca.pem"),
    );
    assert!(dom.contains(r#"data-ready="yes""#), "{dom}");
    let console = g.stop();
    assert!(console.contains("over TLS on port 443"), "{console}");
    assert!(
        console.contains("httpd: TLS: "),
        "the bad handshakes are logged:\n{console}"
    );
}

#[test]
fn a_missing_certificate_stops_httpd_with_the_files_name() {
    let dir = https_app("missing");
    // A key that is not the certificate's, for the second run.
    sh(&format!(
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {}",
        dir.join("rootfs/etc/tls/other.key").display()
    ));
    let (code, out, err) = support::kiln(&[
        "run",
        "-W",
        "-q",
        "--timeout",
        "120",
        "-e",
        "HTTPD_TLS_KEY=/etc/tls/other.key",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("httpd: TLS: ") && out.contains("/etc/tls/other.key"),
        "{out}"
    );
    let (code, out, err) = support::kiln(&[
        "run",
        "-W",
        "-q",
        "--timeout",
        "120",
        "-e",
        "HTTPD_TLS_CERT=/etc/tls/nope.pem",
        dir.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("httpd: TLS: reading the certificate /etc/tls/nope.pem"),
        "{out}"
    );
}

/// HTTPS on arm64 (QEMU virt, TCG), with a certificate chain (leaf and
/// intermediate CA, the root only in the client's trust) and its key read
/// from a host folder shared as a volume, named by HTTPD_TLS_CERT and
/// HTTPD_TLS_KEY at run time.
#[test]
fn https_on_arm64_serves_a_chain_from_a_volume() {
    let dir = https_app("arm64");
    // The Kraftfile's target becomes arm64.
    let kf = std::fs::read_to_string(dir.join("Kraftfile")).unwrap();
    std::fs::write(
        dir.join("Kraftfile"),
        kf.replace("qemu/x86_64", "qemu/arm64"),
    )
    .unwrap();
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let d = pki.display();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    sh(&format!("cd {d} && openssl req -x509 {ec} -keyout root.key -out root.pem -days 2 -subj /CN=test-root"));
    sh(&format!(
        "cd {d} && openssl req {ec} -keyout inter.key -out inter.csr -subj /CN=test-intermediate && printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > inter.ext && openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial -out inter.pem -days 2 -extfile inter.ext"
    ));
    sh(&format!(
        "cd {d} && openssl req {ec} -keyout leaf.key -out leaf.csr -subj /CN=kiln.test && printf 'subjectAltName=DNS:kiln.test\\nextendedKeyUsage=serverAuth\\n' > leaf.ext && openssl x509 -req -in leaf.csr -CA inter.pem -CAkey inter.key -CAcreateserial -out leaf.pem -days 2 -extfile leaf.ext && cat leaf.pem inter.pem > chain.pem"
    ));
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(pki.join("chain.pem"), certs.join("chain.pem")).unwrap();
    std::fs::copy(pki.join("leaf.key"), certs.join("leaf.key")).unwrap();
    let [tls] = support::free_ports();
    let vol = format!("{}:/certs:ro", certs.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-W",
            "--timeout",
            "300",
            "-p",
            &format!("{tls}:443"),
            "-v",
            &vol,
        ])
        .args([
            "-e",
            "HTTPD_TLS_CERT=/certs/chain.pem",
            "-e",
            "HTTPD_TLS_KEY=/certs/leaf.key",
        ])
        .arg(dir.to_str().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = support::read_in_background(child.stdout.take().unwrap());
    let errors = support::read_in_background(child.stderr.take().unwrap());
    let url = format!("https://kiln.test:{tls}/");
    let root_ca = pki.join("root.pem");
    let t = Instant::now();
    let (status, body) = loop {
        let (status, body) = curl(&["--cacert", root_ca.to_str().unwrap()], &url);
        if status == "200" || t.elapsed() > Duration::from_secs(180) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    let (console, errors) = (console.join().unwrap(), errors.join().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, "200", "{console}{errors}");
    assert_eq!(
        body,
        std::fs::read(root().join("apps/httpd/rootfs/www/index.html")).unwrap()
    );
    assert!(console.contains("httpsd on qemu/arm64 virt"), "{console}");
}

/// Runs a shell command (openssl), failing the test with its output.
fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and client certificates in
/// `dir`: ca.pem, server.pem/.key, client.pem/.key (CN device1, from the
/// CA) and stranger.pem/.key (CN device1 from another CA).
fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    sh(&format!(
        "cd {d} && openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"
    ));
    sh(&format!("cd {d} && openssl req -x509 {ec} -keyout other.key -out other.pem -days 2 -subj /CN=other-ca"));
    let sign = |name: &str, cn: &str, ca: &str, ext: &str| {
        sh(&format!(
            "cd {d} && openssl req {ec} -keyout {name}.key -out {name}.csr -subj /CN={cn} && printf '{ext}' > {name}.ext && openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
        ))
    };
    sign(
        "server",
        "broker",
        "ca",
        "subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n",
    );
    sign("client", "device1", "ca", "extendedKeyUsage=clientAuth\\n");
    sign(
        "stranger",
        "device1",
        "other",
        "extendedKeyUsage=clientAuth\\n",
    );
    // A client certificate from the right CA that expired in 2020 (openssl
    // ca sets past dates; x509 -req cannot).
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
    )
    .unwrap();
    sh(&format!(
        "cd {d} && : > index.txt && echo 01 > serial && openssl req {ec} -keyout expired.key -out expired.csr -subj /CN=device1 && printf 'extendedKeyUsage=clientAuth\\n' > expired.ext && openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -startdate 20200101000000Z -enddate 20200102000000Z -extfile expired.ext -notext -in expired.csr -out expired.pem 2>&1"
    ));
}

/// A mosquitto client (`tool`) against 127.0.0.1:`port` with `args`:
/// (success, output).
fn mosq(tool: &str, port: u16, args: &[&str]) -> (bool, String) {
    let o = Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// apps/mqtt with four listeners: plain 1883, TLS 8883, TLS 8884 that
/// requires client certificates and takes their name as the user, and
/// WebSockets over TLS on 8885.
#[test]
fn mqtt_over_tls_with_client_certificates() {
    let dir = std::env::temp_dir().join(format!("kiln-mqtts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = dir.join("pki");
    make_pki(&pki);
    let etc = dir.join("rootfs/etc/mqtt");
    std::fs::create_dir_all(&etc).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(pki.join(f), etc.join(f)).unwrap();
    }
    std::fs::write(
        etc.join("mqtt.conf"),
        "listener 1883\nallow_anonymous true\n\
         listener 8883\ncertfile /etc/mqtt/server.pem\nkeyfile /etc/mqtt/server.key\ntls_version tlsv1.3\n\
         listener 8884\ncertfile /etc/mqtt/server.pem\nkeyfile /etc/mqtt/server.key\ncafile /etc/mqtt/ca.pem\nrequire_certificate true\nuse_identity_as_username true\n\
         listener 8885\ncertfile /etc/mqtt/server.pem\nkeyfile /etc/mqtt/server.key\nprotocol websockets\nmax_packet_size 1000000\n\
         connect_timeout 3\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("missing.conf"),
        "listener 8883\ncertfile /etc/mqtt/nosuch.pem\nkeyfile /etc/mqtt/server.key\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: mqtts\napp: {}\ntargets:\n  - qemu/x86_64\nrootfs: ./rootfs\ncmd: [\"-c\", \"/etc/mqtt/mqtt.conf\"]\nkconfig:\n  CONFIG_APP_MQTT_TLS: y\n",
            root().join("apps/mqtt").display()
        ),
    )
    .unwrap();
    let (code, _, err) = support::kiln(&["build", "-q", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let [plain, tls, mutual, wss] = support::free_ports();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args([
            "run",
            "-W",
            "--timeout",
            "300",
            "-p",
            &format!("{plain}:1883"),
            "-p",
            &format!("{tls}:8883"),
            "-p",
            &format!("{mutual}:8884"),
            "-p",
            &format!("{wss}:8885"),
            dir.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let console = support::read_in_background(child.stdout.take().unwrap());
    let ca = pki.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let t = Instant::now();
    while !mosq(
        "mosquitto_pub",
        tls,
        &["--cafile", ca, "-t", "probe", "-m", "x"],
    )
    .0
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the TLS listener never answered"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // `tls_version tlsv1.3` on that listener: a client that speaks only
    // TLS 1.2 fails its handshake there, and completes it on 8885, which
    // has no tls_version; TLS 1.3 completes on both.
    let handshake = |port: u16, version: &str| {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                version,
                "-CAfile",
                ca,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !handshake(tls, "-tls1_2"),
        "TLS 1.2 got past tls_version tlsv1.3"
    );
    assert!(
        handshake(wss, "-tls1_2"),
        "TLS 1.2 refused without tls_version"
    );
    assert!(handshake(tls, "-tls1_3") && handshake(wss, "-tls1_3"));
    // A subscriber on TLS gets what a publisher sends in plain TCP.
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls.to_string(),
            "--cafile",
            ca,
            "-t",
            "plant/#",
            "-C",
            "1",
            "-W",
            "30",
            "-v",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (ok, o) = mosq(
        "mosquitto_pub",
        plain,
        &["-t", "plant/temp", "-m", "21.5", "-q", "1"],
    );
    assert!(ok, "{o}");
    let got = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "plant/temp 21.5"
    );
    // Without the CA the client refuses the broker's certificate.
    assert!(!mosq("mosquitto_pub", tls, &["-t", "x", "-m", "y"]).0);
    // Client certificates: required, checked, their name the user's.
    let p = |f: &str| pki.join(f).display().to_string();
    assert!(
        !mosq(
            "mosquitto_pub",
            mutual,
            &["--cafile", ca, "-t", "x", "-m", "no cert"]
        )
        .0,
        "a client without a certificate got in"
    );
    let (ok, o) = mosq(
        "mosquitto_pub",
        mutual,
        &[
            "--cafile",
            ca,
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
            "-i",
            "d1",
            "-t",
            "x",
            "-m",
            "with cert",
        ],
    );
    assert!(ok, "{o}");
    assert!(
        !mosq(
            "mosquitto_pub",
            mutual,
            &[
                "--cafile",
                ca,
                "--cert",
                &p("stranger.pem"),
                "--key",
                &p("stranger.key"),
                "-t",
                "x",
                "-m",
                "other CA"
            ]
        )
        .0,
        "a certificate from another CA got in"
    );
    assert!(
        !mosq(
            "mosquitto_pub",
            mutual,
            &[
                "--cafile",
                ca,
                "--cert",
                &p("expired.pem"),
                "--key",
                &p("expired.key"),
                "-t",
                "x",
                "-m",
                "expired"
            ]
        )
        .0,
        "an expired certificate got in"
    );
    // paho-mqtt (MQTT 5) over TLS with a client certificate.
    let o = Command::new("python3")
        .arg(root().join("kiln/tests/mqtt/tls.py"))
        .args([
            mutual.to_string(),
            ca.to_string(),
            p("client.pem"),
            p("client.key"),
        ])
        .env("PYTHONPATH", root().join("target/pydeps"))
        .output()
        .unwrap();
    let paho = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && paho.ends_with("done\n"), "{paho}");
    assert!(
        paho.contains("received paho/tls over tls") && paho.contains("cipher TLSv1.3"),
        "{paho}"
    );
    // MQTT over WebSockets over TLS (wss://) beside plain TCP.
    let o = Command::new("python3")
        .arg(root().join("kiln/tests/mqtt/websockets.py"))
        .args([wss.to_string(), plain.to_string(), ca.to_string()])
        .env("PYTHONPATH", root().join("target/pydeps"))
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.contains("MQTT 5: websockets over TLS and tcp both ways"),
        "{out}"
    );
    // Garbage on a TLS port; the broker carries on.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        .unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    assert!(
        mosq(
            "mosquitto_pub",
            tls,
            &["--cafile", ca, "-t", "x", "-m", "still"]
        )
        .0
    );
    // A handshake that stalls (a record header promising a ClientHello
    // that never comes) is closed at the connect timeout, and the others
    // are served meanwhile.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).unwrap();
    let t = Instant::now();
    assert!(
        mosq(
            "mosquitto_pub",
            tls,
            &["--cafile", ca, "-t", "x", "-m", "meanwhile"]
        )
        .0
    );
    let r = s.read_to_end(&mut Vec::new());
    assert!(
        r.is_ok() || t.elapsed() < Duration::from_secs(25),
        "a stalled handshake was never closed: {r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "a stalled handshake held on for {:?}",
        t.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = console.join().unwrap();
    // The same kernel with a configuration whose certificate file is
    // missing: the broker stops at start and names the file.
    let (code, out, err) = support::kiln(&[
        "run",
        "-W",
        "--timeout",
        "120",
        dir.to_str().unwrap(),
        "--",
        "-c",
        "/etc/mqtt/missing.conf",
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("/etc/mqtt/nosuch.pem"), "{out}{err}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(log.contains("listening on ports 1883, 8883, 8884"), "{log}");
    assert!(
        log.contains(
            "listener 8884 speaks TLS (/etc/mqtt/server.pem, client certificates required)"
        ),
        "{log}"
    );
    assert!(
        log.contains("as d1 (p2, c1, k60, u'device1')"),
        "the certificate's name is the user name:\n{log}"
    );
    assert!(
        log.contains("mqtt: TLS from"),
        "failed handshakes are logged:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("mqtt: TLS from") && l.contains("xpired")),
        "the expired certificate is named:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("mqtt: TLS from")
            && (l.contains("UnknownIssuer") || l.contains("unknown issuer"))),
        "the certificate from another CA is named:\n{log}"
    );
}
