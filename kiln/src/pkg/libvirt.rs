//! `kiln pkg --format libvirt` writes a libvirt domain (`<name>.xml`) next to a copy
//! of the kernel (`<name>.kernel`): direct kernel boot on QEMU's `pc`
//! machine (virtio devices on PCI bus 0, which the kernel scans), the
//! console on the first serial port into a file, virtio-net on a libvirt
//! network with the address from its DHCP server, and every way the guest
//! ends (power-off, reset, crash) ending the domain.

use super::Package;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A libvirt domain for a package.
pub struct Domain<'a> {
    pub memory_mib: u64,
    /// The libvirt network the guest joins.
    pub network: &'a str,
    /// The kernel command line (Kiln's parameters, `--`, the app's arguments).
    pub cmdline: &'a str,
    /// `kvm`, or `qemu` (TCG) where KVM cannot run Kiln well.
    pub domain_type: &'a str,
    /// Where the console goes.
    pub console_log: &'a Path,
}

/// Escapes text for XML.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Writes `<out>/<name>.kernel` and the domain `<out>/<name>.xml`; returns
/// the domain's path.
pub fn write(p: &Package, d: &Domain, out: &Path) -> Result<PathBuf> {
    let kernel = out.join(format!("{}.kernel", p.name));
    std::fs::copy(p.kernel, &kernel)
        .with_context(|| format!("copying {} to {}", p.kernel.display(), kernel.display()))?;
    let kernel = std::fs::canonicalize(&kernel)?;
    let arch = if p.arch == "arm64" {
        "aarch64"
    } else {
        "x86_64"
    };
    let machine = if p.arch == "arm64" { "virt" } else { "pc" };
    let text = format!(
        "<domain type='{ty}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='{arch}' machine='{machine}'>hvm</type>
    <kernel>{kernel}</kernel>
    <cmdline>{cmdline}</cmdline>
  </os>
  <cpu mode='{cpu}'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{log}'/>
      <target port='0'/>
    </serial>
    <interface type='network'>
      <source network='{net}'/>
      <model type='virtio'/>
    </interface>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
        ty = xml(d.domain_type),
        // Everything the emulator or the host CPU offers (RDRAND for
        // lib/random, an invariant TSC).
        cpu = if d.domain_type == "kvm" {
            "host-passthrough"
        } else {
            "maximum"
        },
        name = xml(p.name),
        mem = d.memory_mib,
        kernel = xml(&kernel.display().to_string()),
        cmdline = xml(d.cmdline),
        log = xml(&d.console_log.display().to_string()),
        net = xml(d.network),
    );
    let path = out.join(format!("{}.xml", p.name));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
