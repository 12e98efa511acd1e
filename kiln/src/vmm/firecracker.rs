//! Firecracker. On x86_64 it boots Kiln's image through its PVH note, with
//! devices on virtio-mmio (listed by `virtio_mmio.device=` on the command
//! line Firecracker appends to). On arm64 it boots the `fc/arm64` image
//! (an arm64 Image linked for Firecracker's memory map, see
//! `Target::layout`), with its devices in the device tree; its UART
//! exists only when the command line has `console=`, which this adds.
//! Configured by a JSON file in the run's folder; its API socket there is
//! how `kiln stop` sends Ctrl-Alt-Del (x86_64); on arm64, which has none,
//! `kiln stop` writes [`kiln_boot::STOP_SEQUENCE`] to the serial port's
//! input (a FIFO in the run's folder, Firecracker's standard input). The
//! guest powers off through the i8042 reset (x86_64) or PSCI, so its exit
//! code comes on the console ([`kiln_boot::EXIT_LINE`]).

use super::{api, RunSpec, Vmm};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Firecracker;

/// Files in the run's folder.
const CONFIG: &str = "firecracker.json";
const SOCKET: &str = "firecracker.sock";
const LOG: &str = "firecracker.log";

impl Vmm for Firecracker {
    fn check(&self, spec: &RunSpec) -> Result<()> {
        super::check_kvm_vmm(spec, "Firecracker", true)
    }

    fn binary(&self, _arch: &str) -> Result<PathBuf> {
        super::built_from_source("firecracker", "Firecracker")
    }

    fn command(&self, bin: &Path, spec: &RunSpec, dir: &Path) -> Result<Command> {
        let config = config(spec);
        let path = dir.join(CONFIG);
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        // Firecracker logs to standard output, which is the console,
        // unless given a file (which must exist).
        std::fs::write(dir.join(LOG), b"")?;
        let sock = dir.join(SOCKET);
        let _ = std::fs::remove_file(&sock);
        let mut c = Command::new(bin);
        c.arg("--api-sock").arg(&sock);
        c.arg("--config-file").arg(&path);
        c.arg("--log-path").arg(dir.join(LOG));
        c.args(["--level", "Warning"]);
        Ok(c)
    }

    /// The serial port's input, through which a guest on arm64 is asked
    /// to stop.
    fn console_input(&self, dir: &Path) -> Result<Option<std::fs::File>> {
        super::console_fifo(dir).map(Some)
    }

    fn ask_to_stop(&self, dir: &Path, _pid: u32) -> bool {
        // The i8042's Ctrl-Alt-Del (x86_64), which the kernel hands to
        // the app; Firecracker refuses it on arm64, where the request
        // goes on the console's input instead.
        matches!(
            api::request(
                &dir.join(SOCKET),
                "PUT",
                "/actions",
                r#"{"action_type":"SendCtrlAltDel"}"#
            ),
            Ok(204)
        ) || super::write_console_fifo(dir, kiln_boot::STOP_SEQUENCE)
    }

    fn quit(&self, _dir: &Path) -> bool {
        // Firecracker's API has no way to end the machine: the caller
        // ends the process.
        false
    }
}

/// Firecracker's configuration for `spec`.
fn config(spec: &RunSpec) -> serde_json::Value {
    let args = if spec.arch == "arm64" {
        format!("console=ttyS0 {}", spec.cmdline)
    } else {
        spec.cmdline.clone()
    };
    let mut boot = json!({
        "kernel_image_path": spec.kernel,
        "boot_args": args,
    });
    if let Some(i) = &spec.initrd {
        boot["initrd_path"] = json!(i);
    }
    let drives: Vec<_> = spec
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "drive_id": format!("vol{i}"),
                "path_on_host": std::fs::canonicalize(&v.image).unwrap_or_else(|_| v.image.clone()),
                "is_root_device": false,
                "is_read_only": v.read_only,
            })
        })
        .collect();
    let nets: Vec<_> = spec
        .tap
        .iter()
        .map(|t| json!({ "iface_id": "eth0", "host_dev_name": t.name, "guest_mac": t.mac }))
        .collect();
    json!({
        "boot-source": boot,
        "drives": drives,
        // A virtio-rng device: the kernel's random library seeds from it
        // beside RDSEED/RDRAND and the host's seed.
        "entropy": {},
        "machine-config": { "vcpu_count": 1, "mem_size_mib": spec.memory_mib },
        "network-interfaces": nets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_names_kernel_disks_and_tap() {
        let mut spec = super::super::tests::spec(super::super::Kind::Firecracker);
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
        let c = config(&spec);
        assert_eq!(c["boot-source"]["kernel_image_path"], "/k");
        assert!(c["entropy"].is_object(), "{c}");
        assert_eq!(c["boot-source"]["boot_args"], "-- a");
        assert_eq!(c["machine-config"]["mem_size_mib"], 64);
        assert_eq!(c["drives"][0]["is_read_only"], true);
        assert_eq!(c["drives"][0]["path_on_host"], "/tmp/data.img");
        assert_eq!(c["network-interfaces"][0]["host_dev_name"], "kilntap3");
        assert_eq!(c["network-interfaces"][0]["guest_mac"], "52:54:00:00:03:02");
        // On arm64 Firecracker adds its UART only for a `console=`.
        spec.arch = "arm64".into();
        assert_eq!(
            config(&spec)["boot-source"]["boot_args"],
            "console=ttyS0 -- a"
        );
    }
}
