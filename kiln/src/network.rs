//! Bridged networking: `kiln net create NAME` makes a Linux bridge with an
//! address for the host (and allows it in QEMU's bridge helper);
//! `kiln run --network bridge:NAME` attaches the guest through a tap device
//! the helper creates (and removes with QEMU), with an address of its own on
//! the same subnet, so the guest is reachable directly (no port forwarding,
//! no user-mode network in the way). Needs root; iproute2's `ip` does the work.
//!
//! VMMs without a user network (Firecracker, cloud-hypervisor) get a [`Tap`]
//! Kiln makes itself: on a bridge, or alone with a /24 of its own
//! (172.30.N.0/24: the host is .1, the guest .2), through which `-p`
//! forwards reach the guest.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

fn ip(args: &[&str]) -> Result<String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        if err.contains("Operation not permitted") {
            bail!(
                "ip {}: not permitted: bridges and tap devices need root (run with sudo)",
                args.join(" ")
            );
        }
        bail!("ip {}: {err}", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Checks a network name (also a Linux interface name: at most 15 bytes).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("network name '{name}': use 1-15 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// Parses `A.B.C.D/P` for a bridge: the host takes the first address.
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, p) = s
        .split_once('/')
        .with_context(|| format!("subnet '{s}': expected A.B.C.D/PREFIX"))?;
    let addr: Ipv4Addr = a
        .parse()
        .with_context(|| format!("subnet '{s}': bad address"))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .with_context(|| format!("subnet '{s}': prefix must be 8-30"))?;
    let mask = u32::MAX << (32 - prefix);
    Ok((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// The bridge's address and prefix, if it exists.
pub fn bridge_addr(name: &str) -> Result<Option<(Ipv4Addr, u8)>> {
    let Ok(out) = ip(&["-4", "-o", "addr", "show", "dev", name]) else {
        return Ok(None);
    };
    for w in out.split_whitespace().collect::<Vec<_>>().windows(2) {
        if w[0] == "inet" {
            let (a, p) = w[1].split_once('/').unwrap_or((w[1], "24"));
            return Ok(Some((a.parse()?, p.parse()?)));
        }
    }
    Ok(None)
}

/// `kiln net create NAME --subnet S`.
pub fn create(name: &str, subnet: &str) -> Result<()> {
    check_name(name)?;
    let (net, prefix) = parse_subnet(subnet)?;
    if bridge_addr(name)?.is_some() || ip(&["link", "show", name]).is_ok() {
        bail!("a network interface named '{name}' exists already");
    }
    let host = Ipv4Addr::from(u32::from(net) + 1);
    ip(&["link", "add", name, "type", "bridge"])?;
    let r = ip(&["addr", "add", &format!("{host}/{prefix}"), "dev", name])
        .and_then(|_| ip(&["link", "set", name, "up"]))
        .and_then(|_| allow(name, true));
    if let Err(e) = r {
        let _ = ip(&["link", "del", name]);
        return Err(e);
    }
    println!(
        "{name}: bridge {host}/{prefix} (guests get addresses from {})",
        Ipv4Addr::from(u32::from(net) + 2)
    );
    Ok(())
}

/// `kiln net rm NAME`.
pub fn remove(name: &str) -> Result<()> {
    check_name(name)?;
    let link = ip(&["-d", "link", "show", name])
        .map_err(|_| anyhow::anyhow!("no network named '{name}'"))?;
    if !link.contains("bridge") {
        bail!("'{name}' is not a bridge made by kiln net create");
    }
    ip(&["link", "del", name])?;
    allow(name, false)
}

/// `kiln net ls`.
pub fn list() -> Result<()> {
    let out = ip(&["-o", "link", "show", "type", "bridge"])?;
    println!("{:<16} {:<20}", "NAME", "ADDRESS");
    for line in out.lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let addr = bridge_addr(name)?
            .map(|(a, p)| format!("{a}/{p}"))
            .unwrap_or_else(|| "-".into());
        println!("{name:<16} {addr:<20}");
    }
    Ok(())
}

/// QEMU's bridge helper allows only bridges listed in this file.
const BRIDGE_CONF: &str = "/etc/qemu/bridge.conf";

fn allow(name: &str, on: bool) -> Result<()> {
    let text = std::fs::read_to_string(BRIDGE_CONF).unwrap_or_default();
    let line = format!("allow {name}");
    let mut lines: Vec<&str> = text.lines().filter(|l| l.trim() != line).collect();
    if on {
        lines.push(&line);
    }
    std::fs::create_dir_all("/etc/qemu").context("creating /etc/qemu (needs root)")?;
    std::fs::write(BRIDGE_CONF, lines.join("\n") + "\n")
        .with_context(|| format!("writing {BRIDGE_CONF} (needs root)"))
}

/// A guest's place on a bridge: QEMU's bridge helper makes its tap device
/// (and removes it when QEMU ends); Kiln picks the guest's address.
pub struct Attachment {
    pub bridge: String,
    /// `netdev.ip=` for the guest: its address, prefix and the host as gateway.
    pub guest_ip: String,
    /// A MAC address of its own (QEMU gives every guest the same one),
    /// 52:54:00:00:C:D from the guest address A.B.C.D.
    pub mac: String,
}

impl Attachment {
    /// Picks the lowest address on bridge `net` that no running QEMU uses.
    pub fn new(net: &str) -> Result<Attachment> {
        check_name(net)?;
        let Some((host, prefix)) = bridge_addr(net)? else {
            bail!("no network named '{net}' (create it with: kiln net create {net})");
        };
        let base = u32::from(host) & (u32::MAX << (32 - prefix));
        let size = 1u32 << (32 - prefix);
        let mut used = vec![u32::from(host)];
        // Kiln's own taps on the bridge carry their guest's address as
        // the link's alias.
        if let Ok(links) = ip(&["-o", "link", "show", "master", net]) {
            for w in links.split_whitespace().collect::<Vec<_>>().windows(2) {
                if let ("alias", Ok(a)) = (w[0], w[1].trim_end_matches('\\').parse::<Ipv4Addr>()) {
                    used.push(u32::from(a));
                }
            }
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let c = String::from_utf8_lossy(&c);
            if !c.contains("qemu-system") || !c.contains(&format!("br={net}")) {
                continue;
            }
            if let Some(a) = c
                .split("netdev.ip=")
                .nth(1)
                .and_then(|r| r.split(['/', ' ', '\0']).next())
            {
                if let Ok(a) = a.parse::<Ipv4Addr>() {
                    used.push(u32::from(a));
                }
            }
        }
        let guest = (base + 2..base + size - 1)
            .find(|a| !used.contains(a))
            .context("no free address on this network")?;
        let o = Ipv4Addr::from(guest).octets();
        Ok(Attachment {
            bridge: net.into(),
            guest_ip: format!("{}/{prefix}:{host}", Ipv4Addr::from(guest)),
            mac: format!("52:54:00:00:{:02x}:{:02x}", o[2], o[3]),
        })
    }
}

/// A tap device Kiln made for a guest of a VMM without a user network;
/// removed with [`Tap::remove`] when the VMM has ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tap {
    pub name: String,
    /// `netdev.ip=` for the guest: address/prefix:gateway.
    pub netdev_ip: String,
    pub mac: String,
}

/// The subnet of private taps: 172.30.N.0/24 for tap N.
const TAP_NET: [u8; 2] = [172, 30];

impl Tap {
    /// The guest's address.
    pub fn guest_addr(&self) -> Ipv4Addr {
        self.netdev_ip
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Makes a tap: on `bridge` (the guest gets a free address there), or
    /// alone with a subnet of its own. Needs root.
    pub fn create(bridge: Option<&str>) -> Result<Tap> {
        let attachment = bridge.map(Attachment::new).transpose()?;
        let addrs = ip(&["-4", "-o", "addr", "show"]).unwrap_or_default();
        for n in 0..=255u8 {
            let name = format!("kilntap{n}");
            let subnet = format!(" {}.{}.{n}.", TAP_NET[0], TAP_NET[1]);
            if Path::new("/sys/class/net").join(&name).exists()
                || (attachment.is_none() && addrs.contains(&subnet))
            {
                continue;
            }
            if let Err(e) = ip(&["tuntap", "add", "dev", &name, "mode", "tap"]) {
                if Path::new("/sys/class/net").join(&name).exists() {
                    // Taken meanwhile by another run.
                    continue;
                }
                return Err(e.context("making a tap device for the guest's network"));
            }
            let (tap, r) = match &attachment {
                Some(a) => {
                    let tap = Tap {
                        name: name.clone(),
                        netdev_ip: a.guest_ip.clone(),
                        mac: a.mac.clone(),
                    };
                    let guest = tap.guest_addr().to_string();
                    let r = ip(&[
                        "link", "set", "dev", &name, "master", &a.bridge, "alias", &guest, "up",
                    ]);
                    (tap, r.map(|_| ()))
                }
                None => {
                    let tap = Tap {
                        name: name.clone(),
                        netdev_ip: format!(
                            "{0}.{1}.{n}.2/24:{0}.{1}.{n}.1",
                            TAP_NET[0], TAP_NET[1]
                        ),
                        mac: format!("52:54:00:1e:{n:02x}:02"),
                    };
                    let host = format!("{}.{}.{n}.1/24", TAP_NET[0], TAP_NET[1]);
                    let r = ip(&["addr", "add", &host, "dev", &name])
                        .and_then(|_| ip(&["link", "set", "dev", &name, "up"]));
                    (tap, r.map(|_| ()))
                }
            };
            if let Err(e) = r {
                tap.remove();
                return Err(e);
            }
            return Ok(tap);
        }
        bail!("no free tap device: kilntap0 to kilntap255 are all in use")
    }

    /// Removes the tap device.
    pub fn remove(&self) {
        let _ = ip(&["link", "del", "dev", &self.name]);
    }

    #[cfg(test)]
    pub fn for_test(name: &str, netdev_ip: &str, mac: &str) -> Tap {
        Tap {
            name: name.into(),
            netdev_ip: netdev_ip.into(),
            mac: mac.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subnets_are_checked() {
        assert!(check_name("kilnbr0").is_ok());
        assert!(check_name("a-very-long-bridge-name").is_err());
        assert!(check_name("br 0").is_err());
        assert_eq!(
            parse_subnet("10.77.0.9/24").unwrap(),
            (Ipv4Addr::new(10, 77, 0, 0), 24)
        );
        assert!(parse_subnet("10.77.0.0").is_err());
        assert!(parse_subnet("10.77.0.0/31").is_err());
        assert!(parse_subnet("nonsense/24").is_err());
    }
}
