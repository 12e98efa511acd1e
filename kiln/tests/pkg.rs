//! `kiln pkg --format oci`: the image as OCI tools read it (skopeo, umoci,
//! containerd's `ctr`), and booted the way urunc boots a Unikraft-type
//! image: its annotations read, a tap with a static address, urunc's
//! command line, QEMU with the kernel from the image; HTTP 200 from it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::root;

fn tool(prog: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e} (scripts/test installs it)"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Packs apps/httpd into a fresh folder: (folder, layout, archive).
fn package(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    package_for(tag, "qemu")
}

/// Packs apps/httpd for `vmm` into a fresh folder: (folder, layout,
/// archive).
fn package_for(tag: &str, vmm: &str) -> (PathBuf, PathBuf, PathBuf) {
    let out = std::env::temp_dir().join(format!("kiln-pkg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (code, stdout, err) = support::kiln(&[
        "pkg",
        "-q",
        "--format",
        "oci",
        "--vmm",
        vmm,
        "-o",
        out.to_str().unwrap(),
        "apps/httpd",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    (out, PathBuf::from(lines[0]), PathBuf::from(lines[1]))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The manifest's annotations, found as urunc's shim finds them: index,
/// then manifest blob.
fn annotations(layout: &Path) -> serde_json::Value {
    let index = json(&layout.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    json(&layout.join("blobs/sha256").join(digest))["annotations"].clone()
}

#[test]
fn oci_tools_read_the_image() {
    let (out, layout, archive) = package("tools");
    let kernel = std::fs::read(root().join("apps/httpd/.kiln/build/httpd_qemu-x86_64")).unwrap();
    let a = annotations(&layout);
    assert_eq!(a["com.urunc.unikernel.unikernelType"], "unikraft");
    assert_eq!(a["com.urunc.unikernel.hypervisor"], "qemu");
    assert_eq!(a["com.urunc.unikernel.binary"], "/unikernel/kernel");
    for src in [
        format!("oci:{}:latest", layout.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let (ok, text) = tool("skopeo", &["inspect", &src]);
        assert!(ok, "{src}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Architecture"], "amd64", "{text}");
        assert_eq!(
            v["Labels"]["com.urunc.unikernel.binary"], "/unikernel/kernel",
            "{text}"
        );
        assert_eq!(v["Layers"].as_array().unwrap().len(), 1, "{text}");
    }
    // Unpacked, the root file system holds the very kernel and urunc.json.
    let bundle = out.join("bundle");
    let (ok, text) = tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    assert!(
        std::fs::read(bundle.join("rootfs/unikernel/kernel")).unwrap() == kernel,
        "the kernel in the image differs"
    );
    let u = json(&bundle.join("rootfs/urunc.json"));
    assert_eq!(u["com.urunc.unikernel.unikernelType"], "b64:dW5pa3JhZnQ=");
    // Packing again gives the same digests.
    let again = out.join("again");
    let (code, _, err) = support::kiln(&["pkg", "-q", "-o", again.to_str().unwrap(), "apps/httpd"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(layout.join("index.json")).unwrap(),
        std::fs::read(again.join("httpd-oci/index.json")).unwrap()
    );
    // Bad input.
    let (code, _, err) = support::kiln(&["pkg", "--format", "vmdk2", "apps/httpd"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid value 'vmdk2'"), "{err}");
    let (code, _, err) = support::kiln(&["pkg", "--tag", "a b", "apps/httpd"]);
    assert_eq!(code, 1);
    assert!(err.contains("--tag a b"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A containerd of the test's own imports the docker-archive tarball.
#[test]
fn containerd_imports_the_image() {
    let (out, _, archive) = package("ctr");
    let sock = out.join("containerd.sock");
    let mut d = Command::new("containerd")
        .args([
            "--address",
            sock.to_str().unwrap(),
            "--root",
            out.join("root").to_str().unwrap(),
            "--state",
            out.join("state").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("containerd (scripts/test installs it)");
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "containerd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ctr = |args: &[&str]| {
        let mut a = vec!["--address", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        tool("ctr", &a)
    };
    let (ok, text) = ctr(&["images", "import", archive.to_str().unwrap()]);
    let (_, list) = ctr(&["images", "ls", "-q"]);
    let _ = d.kill();
    let _ = d.wait();
    assert!(ok, "{text}");
    assert!(list.contains("httpd:latest"), "{list}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Deletes the tap when the test ends, however it ends.
struct Tap(String);

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// What a guest booted as urunc boots it answered: the first line and
/// body of `GET /`, and its console.
struct UruncBoot {
    status: String,
    body: String,
    log: String,
    guest: String,
    host: String,
}

impl UruncBoot {
    /// The guest answered 200 with the static address urunc's command
    /// line gave it.
    fn assert_served(&self, vmm: &str) {
        assert_eq!(self.status, "HTTP/1.1 200 OK", "{vmm}: {}", self.log);
        let net = format!("net: 52:54:00:12:34:56 {}/24 via {}", self.guest, self.host);
        assert!(self.log.contains(&net), "{vmm}: {}", self.log);
    }
}

/// Boots the image in `layout` the way urunc does: unpacks it, reads the
/// annotations, makes a tap with a static address, builds urunc's command
/// line for a Unikraft-type guest and starts the hypervisor the image
/// names with the kernel (and the initrd, when the image names one) from
/// the image (QEMU: TCG instead of KVM, no debug-exit device; Firecracker
/// from a configuration file; cloud-hypervisor from its arguments); then
/// fetches `/`.
fn boot_as_urunc(out: &Path, layout: &Path) -> UruncBoot {
    // One at a time: each makes a tap and a subnet named after the test
    // process.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let bundle = out.join("bundle");
    let (ok, text) = tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    let a = annotations(layout);
    let hypervisor = a["com.urunc.unikernel.hypervisor"].as_str().unwrap();
    let file = |key: &str| {
        a[key]
            .as_str()
            .map(|p| bundle.join("rootfs").join(p.trim_start_matches('/')))
    };
    let kernel = file("com.urunc.unikernel.binary").unwrap();
    // A tap with a static address, as urunc's network setup makes.
    let name = format!("kurunc{}", std::process::id() % 10000);
    let tap = Tap(name.clone());
    let third = 100 + std::process::id() % 100;
    let (host, guest) = (format!("172.31.{third}.1"), format!("172.31.{third}.2"));
    for args in [
        vec!["tuntap", "add", "dev", &name, "mode", "tap"],
        vec!["addr", "add", &format!("{host}/24"), "dev", &name],
        vec!["link", "set", "dev", &name, "up"],
    ] {
        let (ok, text) = tool("ip", &args);
        assert!(ok, "ip {args:?}: {text}");
    }
    let cmdline = format!(
        "Unikraft console=ttyS0 env.vars=[ PATH=/bin GREETING=hi ] netdev.ip={guest}/24:{host}:8.8.8.8 vfs.fstab=[ \"initrd0:/:extract:::\" ] -- {}",
        a["com.urunc.unikernel.cmdline"].as_str().unwrap()
    );
    let initrd = file("com.urunc.unikernel.initrd");
    const MAC: &str = "52:54:00:12:34:56";
    let mut q = match hypervisor {
        "qemu" => {
            let mut q = Command::new("qemu-system-x86_64");
            q.args([
                "-m", "256M", "-cpu", "max", "-accel", "tcg", "-display", "none", "-vga", "none",
                "-monitor", "null", "-serial", "stdio",
            ])
            .arg("-kernel")
            .arg(&kernel);
            if let Some(initrd) = &initrd {
                q.arg("-initrd").arg(initrd);
            }
            q.args([
                "-netdev",
                &format!("tap,id=net0,script=no,downscript=no,ifname={name}"),
                "-device",
                &format!("virtio-net-pci,netdev=net0,host_mtu=1500,mac={MAC}"),
            ])
            .args(["-append", &cmdline]);
            q
        }
        "firecracker" => {
            let mut boot = serde_json::json!({
                "kernel_image_path": kernel,
                "boot_args": cmdline,
            });
            if let Some(initrd) = &initrd {
                boot["initrd_path"] = serde_json::json!(initrd);
            }
            let config = out.join("firecracker.json");
            let c = serde_json::json!({
                "boot-source": boot,
                "drives": [],
                "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
                "network-interfaces": [
                    { "iface_id": "eth0", "host_dev_name": name, "guest_mac": MAC }
                ],
            });
            std::fs::write(&config, c.to_string()).unwrap();
            let mut q = Command::new("firecracker");
            q.arg("--no-api").arg("--config-file").arg(&config);
            q
        }
        "cloud-hypervisor" => {
            let mut q = Command::new("cloud-hypervisor");
            q.arg("--kernel").arg(&kernel);
            q.args([
                "--cmdline",
                &cmdline,
                "--cpus",
                "boot=1",
                "--memory",
                "size=256M",
            ]);
            q.args(["--serial", "tty", "--console", "off"]);
            q.args(["--net", &format!("tap={name},mac={MAC}")]);
            if let Some(initrd) = &initrd {
                q.arg("--initramfs").arg(initrd);
            }
            q
        }
        other => panic!("the image names hypervisor {other:?}"),
    };
    let mut q = q
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = support::read_in_background(q.stdout.take().unwrap());
    let addr: std::net::SocketAddr = format!("{guest}:80").parse().unwrap();
    let status = support::first_status(addr, Duration::from_secs(90))
        .unwrap_or_else(|| "(no answer)".into());
    let body = get_body(addr);
    let _ = q.kill();
    let _ = q.wait();
    let log = reader.join().unwrap();
    drop(tap);
    UruncBoot {
        status,
        body,
        log,
        guest,
        host,
    }
}

/// The body of `GET /` (empty when there is no answer).
fn get_body(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no side effects.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn the_image_boots_as_urunc_boots_it() {
    if !is_root() {
        eprintln!("SKIPPED the_image_boots_as_urunc_boots_it: making a tap device needs root");
        return;
    }
    let (out, layout, _) = package("urunc");
    assert!(annotations(&layout)
        .get("com.urunc.unikernel.initrd")
        .is_none());
    let b = boot_as_urunc(&out, &layout);
    assert_eq!(
        annotations(&layout)["com.urunc.unikernel.hypervisor"],
        "qemu"
    );
    b.assert_served("qemu");
    assert!(
        b.log.contains(
            "vfs.fstab: initrd0 on / (extract): the initrd is the root file system already"
        ),
        "{}",
        b.log
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `kiln pkg --initrd DIR`: the image carries the initrd beside the kernel
/// and names it (com.urunc.unikernel.initrd); booted as urunc boots it,
/// the guest serves the files of that initrd, not the embedded ones.
#[test]
fn a_separate_initrd_is_carried_named_and_used() {
    let site = std::env::temp_dir().join(format!("kiln-pkg-site-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&site);
    std::fs::create_dir_all(site.join("www")).unwrap();
    std::fs::write(
        site.join("www/index.html"),
        "<p>served from the separate initrd</p>\n",
    )
    .unwrap();
    let out = std::env::temp_dir().join(format!("kiln-pkg-initrd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (code, stdout, err) = support::kiln(&[
        "pkg",
        "-q",
        "--format",
        "oci",
        "--initrd",
        site.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "apps/httpd",
    ]);
    assert_eq!(code, 0, "{err}");
    let layout = PathBuf::from(stdout.lines().next().unwrap());
    let a = annotations(&layout);
    assert_eq!(a["com.urunc.unikernel.initrd"], "/unikernel/initrd");
    let (ok, text) = tool(
        "skopeo",
        &["inspect", &format!("oci:{}:latest", layout.display())],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("\"com.urunc.unikernel.initrd\": \"/unikernel/initrd\""),
        "{text}"
    );
    // Other formats carry no separate initrd; a missing folder is named.
    let (code, _, err) = support::kiln(&[
        "pkg",
        "-q",
        "--format",
        "libvirt",
        "--initrd",
        site.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "apps/httpd",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("only an OCI image carries a separate initrd"),
        "{err}"
    );
    let (code, _, err) =
        support::kiln(&["pkg", "-q", "--initrd", "/nonexistent/site", "apps/httpd"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--initrd /nonexistent/site: no such file or folder"),
        "{err}"
    );
    if !is_root() {
        eprintln!("SKIPPED booting a_separate_initrd_is_carried_named_and_used: making a tap device needs root");
        return;
    }
    let b = boot_as_urunc(&out, &layout);
    assert_eq!(b.status, "HTTP/1.1 200 OK", "{}", b.log);
    assert_eq!(
        b.body, "<p>served from the separate initrd</p>\n",
        "{}",
        b.log
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&site);
}

/// Starts `prog -d` unless a process of that name runs; true if started.
fn daemon(prog: &str, path: &str) -> bool {
    let running = Command::new("pgrep")
        .args(["-x", prog])
        .output()
        .is_ok_and(|o| o.status.success());
    if running {
        return false;
    }
    let ok = Command::new(path)
        .arg("-d")
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "starting {path} (scripts/test installs libvirt-daemon-system)"
    );
    true
}

/// Removes the test's domain and network, and stops the daemons it started.
struct Libvirt {
    domain: String,
    network: String,
    started: Vec<&'static str>,
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let virsh = |a: &[&str]| {
            Command::new("virsh")
                .args(["-c", "qemu:///system"])
                .args(a)
                .output()
        };
        let _ = virsh(&["destroy", &self.domain]);
        let _ = virsh(&["undefine", &self.domain]);
        let _ = virsh(&["net-destroy", &self.network]);
        for d in &self.started {
            let _ = Command::new("pkill").args(["-x", d]).status();
        }
    }
}

/// `kiln pkg --format libvirt`: Debian's libvirtd (started here) defines
/// and starts the domain on a network of the test's own; the guest gets
/// its address from the network's DHCP server, serves a page, and its
/// console is in the file the domain names.
#[test]
fn the_libvirt_domain_boots_under_debians_libvirtd() {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the_libvirt_domain_boots_under_debians_libvirtd: libvirtd's system instance needs root");
        return;
    }
    let id = std::process::id();
    let mut lv = Libvirt {
        domain: format!("kiln-web-{id}"),
        network: format!("kilnnet{}", id % 10000),
        started: Vec::new(),
    };
    if daemon("virtlogd", "/usr/sbin/virtlogd") {
        lv.started.push("virtlogd");
    }
    if daemon("libvirtd", "/usr/sbin/libvirtd") {
        lv.started.push("libvirtd");
    }
    let virsh = |a: &[&str]| {
        let mut args = vec!["-c", "qemu:///system"];
        args.extend_from_slice(a);
        // libvirtd takes a moment to answer after it starts.
        let t = Instant::now();
        loop {
            let r = tool("virsh", &args);
            if r.0
                || !r.1.contains("Failed to connect socket")
                || t.elapsed() > Duration::from_secs(20)
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let out = std::env::temp_dir().join(format!("kiln-pkg-libvirt-{id}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let third = 150 + id % 50;
    let net_xml = out.join("net.xml");
    std::fs::write(
        &net_xml,
        format!(
            "<network><name>{}</name><bridge name='kvbr{}'/><ip address='192.168.{third}.1' netmask='255.255.255.0'><dhcp><range start='192.168.{third}.10' end='192.168.{third}.99'/></dhcp></ip></network>",
            lv.network,
            id % 10000
        ),
    )
    .unwrap();
    let (ok, text) = virsh(&["net-create", net_xml.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (code, stdout, err) = support::kiln(&[
        "pkg",
        "-q",
        "--format",
        "libvirt",
        "--name",
        &lv.domain,
        "--network",
        &lv.network,
        "-M",
        "48M",
        "-o",
        out.to_str().unwrap(),
        "apps/httpd",
    ]);
    assert_eq!(code, 0, "{err}");
    let xml = stdout.trim().to_string();
    let text = std::fs::read_to_string(&xml).unwrap();
    assert!(
        text.contains("<memory unit='MiB'>48</memory>") && text.contains("netdev.ip=dhcp"),
        "{text}"
    );
    let (ok, text) = virsh(&["define", &xml]);
    assert!(ok, "{text}");
    let (ok, text) = virsh(&["start", &lv.domain]);
    assert!(ok, "{text}");
    let log = out.join(format!("{}.console.log", lv.domain));
    let t = Instant::now();
    let addr = loop {
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = console
            .split_whitespace()
            .find(|w| w.starts_with(&format!("192.168.{third}.")) && w.ends_with("/24"))
        {
            break a.trim_end_matches("/24").to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "no DHCP address in the console:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let status = support::first_status(
        format!("{addr}:80").parse().unwrap(),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|| "(no answer)".into());
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status, "HTTP/1.1 200 OK", "{console}");
    assert!(
        console.contains("(DHCP)") && console.contains("httpd: serving"),
        "{console}"
    );
    let (ok, text) = virsh(&["destroy", &lv.domain]);
    assert!(ok, "{text}");
    drop(lv);
    let _ = std::fs::remove_dir_all(&out);
}

/// `kiln pkg --vmm firecracker|cloud-hypervisor`: the image names that
/// hypervisor, and booted with it as urunc boots it, the guest serves.
#[test]
fn an_image_for_every_other_vmm_boots_as_urunc_boots_it() {
    if !is_root() {
        eprintln!("SKIPPED an_image_for_every_other_vmm_boots_as_urunc_boots_it: making a tap device needs root");
        return;
    }
    for vmm in support::other_vmms("urunc boot") {
        let (out, layout, _) = package_for(&format!("urunc-{vmm}"), vmm);
        assert_eq!(annotations(&layout)["com.urunc.unikernel.hypervisor"], vmm);
        let b = boot_as_urunc(&out, &layout);
        b.assert_served(vmm);
        let _ = std::fs::remove_dir_all(&out);
    }
}
