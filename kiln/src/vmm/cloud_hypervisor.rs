//! cloud-hypervisor (x86_64): boots Kiln's image through its PVH note,
//! with devices on virtio-pci (which the kernel polls). Configured on the
//! command line; its API socket in the run's folder is how `kiln stop`
//! presses its power button (an ACPI event the kernel polls for, see
//! plat/qemu's power.rs) and, if the guest does not stop, ends it. The
//! guest powers off through the ACPI sleep register, so its exit code
//! comes on the console ([`kiln_boot::EXIT_LINE`]).

use super::{api, RunSpec, Stderr, Vmm};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct CloudHypervisor;

/// The API socket in the run's folder.
const SOCKET: &str = "cloud-hypervisor.sock";

impl Vmm for CloudHypervisor {
    fn check(&self, spec: &RunSpec) -> Result<()> {
        super::check_kvm_vmm(spec, "cloud-hypervisor", false)
    }

    fn binary(&self, _arch: &str) -> Result<PathBuf> {
        super::built_from_source("cloud-hypervisor", "cloud-hypervisor")
    }

    fn command(&self, bin: &Path, spec: &RunSpec, dir: &Path) -> Result<Command> {
        let sock = dir.join(SOCKET);
        let _ = std::fs::remove_file(&sock);
        let mut c = Command::new(bin);
        c.args(args(spec, &sock));
        Ok(c)
    }

    /// Warnings about the host (no core scheduling), about the tap Kiln
    /// made (it has its address already) and about the kernel sizing PCI
    /// BARs (the BARs stay where they are, as they should) say nothing to
    /// the user.
    fn stderr_line(&self, line: &str) -> Stderr {
        let harmless = [
            "Kernel lacks CONFIG_SCHED_CORE",
            "IP configuration will not be overwritten",
            "Failed moving device BAR",
        ];
        if harmless.iter().any(|h| line.contains(h)) {
            Stderr::Quiet
        } else {
            Stderr::Pass
        }
    }

    /// The power button: the kernel hands the request to the app.
    fn ask_to_stop(&self, dir: &Path, _pid: u32) -> bool {
        matches!(
            api::request(&dir.join(SOCKET), "PUT", "/api/v1/vm.power-button", ""),
            Ok(200..=299)
        )
    }

    fn quit(&self, dir: &Path) -> bool {
        matches!(
            api::request(&dir.join(SOCKET), "PUT", "/api/v1/vmm.shutdown", ""),
            Ok(200..=299)
        )
    }
}

/// cloud-hypervisor's arguments for `spec`, its API on `sock`.
fn args(spec: &RunSpec, sock: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--kernel".into(),
        spec.kernel.display().to_string(),
        "--cmdline".into(),
        spec.cmdline.clone(),
        "--cpus".into(),
        "boot=1".into(),
        "--memory".into(),
        format!("size={}M", spec.memory_mib),
        // The console is the 16550 UART on the VMM's standard output.
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        format!("path={}", sock.display()),
    ];
    if let Some(i) = &spec.initrd {
        a.push("--initramfs".into());
        a.push(i.display().to_string());
    }
    if let Some(t) = &spec.tap {
        a.push("--net".into());
        a.push(format!("tap={},mac={}", t.name, t.mac));
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        let file = std::fs::canonicalize(&v.image).unwrap_or_else(|_| v.image.clone());
        a.push("--disk".into());
        a.push(format!(
            "path={},serial={}{}",
            file.display(),
            crate::volume::serial(i, v.kind),
            if v.read_only { ",readonly=on" } else { "" }
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_kernel_disks_and_tap() {
        let mut spec = super::super::tests::spec(super::super::Kind::CloudHypervisor);
        spec.volumes.push(crate::volume::Mount {
            image: "/tmp/data.img".into(),
            kind: crate::volume::Kind::Image,
            destination: "/data".into(),
            read_only: true,
        });
        spec.tap = Some(crate::network::Tap::for_test(
            "kilntap3",
            "172.30.3.2/24:172.30.3.1",
            "52:54:00:00:03:02",
        ));
        let a = args(&spec, Path::new("/run/x.sock")).join(" ");
        assert!(a.starts_with("--kernel /k --cmdline -- a --cpus boot=1 --memory size=64M --serial tty --console off"), "{a}");
        assert!(
            a.contains("--net tap=kilntap3,mac=52:54:00:00:03:02"),
            "{a}"
        );
        assert!(
            a.contains("--disk path=/tmp/data.img,serial=kiln-vol0,readonly=on"),
            "{a}"
        );
    }
}
