//! Bridged networking: kiln net create makes a bridge, a guest on it gets
//! an address of its own and serves HTTP there directly; kiln net rm
//! removes it. Without root the commands say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn kiln(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln")).current_dir(root()).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_guest_on_a_bridge_serves_at_its_own_address() {
    let name = format!("kt{}", std::process::id() % 100000);
    // A subnet no interface of this host uses yet.
    let addrs = String::from_utf8(Command::new("ip").args(["-o", "-4", "addr"]).output().unwrap().stdout).unwrap();
    let third = (100..250).find(|t| !addrs.contains(&format!(" 10.{t}."))).expect("a free 10.x.0.0/24");
    let subnet = format!("10.{third}.0.0/24");
    // The bridge goes away even if an assertion fails.
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(name.clone());
    let (code, out, err) = kiln(&["net", "create", &name, "--subnet", &subnet]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("bridge 10.{third}.0.1/24")), "{out}");
    let (_, list, _) = kiln(&["net", "ls"]);
    assert!(list.contains(&name), "{list}");
    let (code, _, err) = kiln(&["net", "create", &name]);
    assert_eq!(code, 1);
    assert!(err.contains("exists already"), "{err}");

    assert_eq!(kiln(&["build", "-q", "apps/httpd"]).0, 0);
    let mut guest = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(["run", "-q", "--timeout", "120", "--network", &format!("bridge:{name}"), "apps/httpd"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://10.{third}.0.2/612.html");
    let start = Instant::now();
    let body = loop {
        let o = Command::new("curl").args(["-s", "-m", "3", "--fail", &url]).output().unwrap();
        if o.status.success() {
            break o.stdout;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the bridged guest never answered at {url}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body, std::fs::read(root().join("apps/httpd/rootfs/www/612.html")).unwrap());
    // ICMP echo: the stack answers pings.
    let ping = Command::new("ping").args(["-c", "2", "-W", "5", &format!("10.{third}.0.2")]).output().expect("ping is installed by scripts/setup");
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    // IPv6: the guest's link-local address, from its MAC 52:54:00:00:00:02.
    let v6 = format!("http://[fe80::5054:ff:fe00:2%25{name}]/612.html");
    let o = Command::new("curl").args(["-g", "-s", "-m", "10", "--fail", &v6]).output().unwrap();
    assert!(o.status.success(), "no answer over IPv6 at {v6}");
    assert_eq!(o.stdout, body);
    let _ = guest.kill();
    let _ = guest.wait();
    // QEMU's tap goes with it; then the bridge can go.
    let start = Instant::now();
    loop {
        let o = Command::new("ip").args(["-o", "link", "show", "master", &name]).output().unwrap();
        if o.stdout.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "tap device left on the bridge");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = kiln(&["net", "rm", &name]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kiln(&["net", "rm", &name]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("no network named '{name}'")), "{err}");
    let (code, _, err) = kiln(&["run", "--network", &format!("bridge:{name}"), "apps/httpd"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("no network named '{name}' (create it with: kiln net create {name})")), "{err}");
}

#[test]
fn without_root_the_network_commands_say_so() {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["net", "create", "ktnoroot"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("need root"), "{err}");
}
