//! `rootfs: ./Dockerfile`: a root file system built from a Dockerfile with
//! no container daemon. A local registry (Debian's `docker-registry`,
//! started here) holds a base image the test makes from Debian's
//! busybox-static with umoci and pushes with skopeo, so no outside network
//! is needed. The built rootfs is served by httpd in a booted guest; a
//! second build with the registry stopped comes from the cache; bad
//! Dockerfiles, images and registries get clear errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The local registry, stopped when dropped.
struct Registry {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("kiln-dockerfile-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts `docker-registry` on a free port with its storage in a
/// temporary folder, and pushes `kiln-test/busybox:1` (busybox-static and
/// a few applet links, PATH=/bin) into it.
fn registry() -> Registry {
    let dir = TempDir::new("registry");
    let port = support::free_port();
    let config = dir.0.join("config.yml");
    std::fs::write(
        &config,
        format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.0.join("data").display()),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/test installs Debian's docker-registry)");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The base image: an OCI layout made with umoci.
    let layout = dir.0.join("layout");
    let bundle = dir.0.join("bundle");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox (scripts/test installs busybox-static)");
    for applet in [
        "sh", "mkdir", "echo", "cat", "ls", "pwd", "env", "printf", "wc",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    // After repack, which writes the bundle's own configuration.
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/bin:/opt/kiln-test",
        "--config.cmd",
        "/bin/sh",
    ]));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://127.0.0.1:{port}/kiln-test/busybox:1")));
    Registry {
        child,
        port,
        _dir: dir,
    }
}

/// An app folder: a Kraftfile running apps/httpd with `rootfs:
/// ./Dockerfile`, the Dockerfile, and `page.txt` in its context.
fn app(dir: &Path, dockerfile: &str) {
    std::fs::write(
        dir.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: dockerweb\napp: {}\ntargets: [qemu/x86_64]\nrootfs: ./Dockerfile\n",
            support::root().join("apps/httpd").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    let text = String::from_utf8_lossy(&v).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// All tests here share one state folder (the build cache) of their own.
fn state() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-dockerfile-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // SAFETY (edition 2021: set_var is safe): set before any kiln runs.
        std::env::set_var("KILN_STATE_DIR", &d);
        d
    })
    .clone()
}

/// Multi-stage build: a busybox stage from the local registry with ARG,
/// ENV, WORKDIR, COPY from the context and RUN, then `FROM scratch` with
/// `COPY --from`; httpd serves what RUN wrote. Then, with the registry
/// gone, the same build comes from the cache, and a changed context file
/// rebuilds the stage from the cached base image.
#[test]
fn dockerfile_rootfs_builds_and_serves() {
    state();
    let reg = registry();
    let dir = TempDir::new("app");
    std::fs::write(dir.0.join("page.txt"), "from the build context\n").unwrap();
    app(
        &dir.0,
        &format!(
            "# A two-stage build.\nFROM 127.0.0.1:{}/kiln-test/busybox:1 AS build\nARG GREETING=hello\nENV WHO=kiln \\\n    WHERE=\"a stage\"\nWORKDIR /src\nCOPY page.txt ./\nRUN mkdir -p /out/www && echo \"$GREETING from $WHO in $WHERE at $(pwd)\" > /out/www/index.html \\\n && cat page.txt >> /out/www/index.html && echo \"$PATH\" > /out/www/path.txt\nRUN --mount=type=cache,target=/cache echo run >> /cache/runs && wc -l < /cache/runs > /out/www/runs.txt\nEXPOSE 80\n\nFROM scratch\nCOPY --from=build /out/www /www\n",
            reg.port
        ),
    );
    let d = dir.0.to_str().unwrap();
    let (code, _, err) = support::kiln(&["build", d]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "pulling 127.0.0.1:{}/kiln-test/busybox:1",
            reg.port
        )),
        "{err}"
    );
    assert!(err.contains("Dockerfile:8: RUN mkdir -p /out/www"), "{err}");
    assert!(
        err.contains("EXPOSE describe a container's run time"),
        "{err}"
    );
    let port = support::free_port();
    let g = support::Guest::start(
        &dir.0,
        support::Net::Forward {
            host: port,
            guest: 80,
        },
        &[],
        |a| http_get(a, "/").is_some(),
    );
    let page = http_get(g.addr, "/index.html").unwrap();
    assert!(
        page.ends_with("hello from kiln in a stage at /src\nfrom the build context\n"),
        "{page}"
    );
    // The base image's configuration (its PATH) reached RUN.
    let path = http_get(g.addr, "/path.txt").unwrap();
    assert!(path.ends_with("\r\n\r\n/bin:/opt/kiln-test\n"), "{path}");
    g.stop();

    // The registry stops: the second build needs nothing from it.
    drop(reg);
    let (code, _, err) = support::kiln(&["build", d]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stage 1 (2 instructions): cached"), "{err}");
    // A cached last stage needs nothing else: the build stage is not even looked at.
    assert!(!err.contains("stage build"), "{err}");
    assert!(!err.contains("pulling"), "{err}");
    // A changed input rebuilds its stage (from the cached base image).
    std::fs::write(dir.0.join("page.txt"), "changed\n").unwrap();
    let (code, _, err) = support::kiln(&["build", d]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("stage build: FROM") && err.contains("Dockerfile:8: RUN"),
        "{err}"
    );
    let rootfs = std::fs::read_dir(state().join(".dockerfile/stages"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs/www/index.html"))
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>();
    assert!(
        rootfs.iter().any(|t| t.ends_with("\nchanged\n")),
        "{rootfs:?}"
    );
    // The cache mount outlived the first build: the second RUN found its
    // line and added one.
    let runs: Vec<String> = std::fs::read_dir(state().join(".dockerfile/stages"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs/www/runs.txt"))
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string())
        .collect();
    assert!(
        runs.contains(&"1".to_string()) && runs.contains(&"2".to_string()),
        "{runs:?}"
    );
}

/// `COPY .` of a folder Kiln builds in: its build outputs (`.kiln/`) are
/// not part of the context, so the second build is cached and the rootfs
/// holds only the user's files.
#[test]
fn kilns_own_outputs_are_not_part_of_the_build_context() {
    state();
    let dir = TempDir::new("ctx");
    std::fs::write(dir.0.join("page.txt"), "mine\n").unwrap();
    app(&dir.0, "FROM scratch\nCOPY . /www/\n");
    let d = dir.0.to_str().unwrap();
    let (code, _, err) = support::kiln(&["build", d]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.0.join(".kiln/build").is_dir());
    let (code, _, err) = support::kiln(&["build", d]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stage 0 (2 instructions): cached"), "{err}");
    let built: Vec<PathBuf> = std::fs::read_dir(state().join(".dockerfile/stages"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs/www"))
        .filter(|p| p.join("page.txt").is_file() && p.join("Dockerfile").is_file())
        .collect();
    assert!(!built.is_empty());
    assert!(built.iter().all(|p| !p.join(".kiln").exists()), "{built:?}");
}

/// Bad input: a syntax error (every one, with file:line), a base image the
/// registry does not have (its answer quoted), a RUN that fails (its
/// output and exit code), a registry nobody listens on (said at once).
#[test]
fn bad_dockerfiles_images_and_registries_are_reported() {
    state();
    let reg = registry();
    let dir = TempDir::new("bad");
    let d = dir.0.to_str().unwrap();
    let build = |dockerfile: &str| {
        app(&dir.0, dockerfile);
        let (code, _, err) = support::kiln(&["build", d]);
        assert_eq!(code, 1, "{err}");
        err
    };
    let err =
        build("FROM scratch\nCOPY onlyone\nFROBNICATE now\nRUN --mount=type=secret,id=k true\n");
    assert!(
        err.contains("Dockerfile:2: COPY takes SOURCE... DEST"),
        "{err}"
    );
    assert!(
        err.contains("Dockerfile:3: unknown instruction FROBNICATE"),
        "{err}"
    );
    assert!(err.contains("Dockerfile:4: RUN --mount"), "{err}");
    assert!(err.contains("Kraftfile:5"), "{err}");

    let err = build(&format!(
        "FROM 127.0.0.1:{}/kiln-test/nothing-here:1\n",
        reg.port
    ));
    assert!(err.contains("Dockerfile:1: FROM 127.0.0.1:"), "{err}");
    assert!(
        err.contains("answered") && err.to_lowercase().contains("unknown"),
        "{err}"
    );

    let err = build(&format!(
        "FROM 127.0.0.1:{}/kiln-test/busybox:1\nRUN echo about to fail && exit 3\n",
        reg.port
    ));
    assert!(
        err.contains("Dockerfile:2")
            && err.contains("RUN failed with exit code 3")
            && err.contains("about to fail"),
        "{err}"
    );

    let t = Instant::now();
    let closed = support::free_port();
    let err = build(&format!("FROM 127.0.0.1:{closed}/kiln-test/busybox:1\n"));
    assert!(
        err.contains(&format!("cannot reach the registry 127.0.0.1:{closed}")),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));

    let err = build("FROM scratch\nCOPY missing.txt /\n");
    assert!(
        err.contains("Dockerfile:2")
            && err.contains("COPY missing.txt: no such file in the build context"),
        "{err}"
    );
    let err = build("FROM scratch\nCOPY ../outside /\n");
    assert!(
        err.contains("../outside: outside the build context"),
        "{err}"
    );
}
