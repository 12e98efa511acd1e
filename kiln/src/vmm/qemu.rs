//! QEMU: microvm (the default) and q35 on x86_64, virt and the Raspberry
//! Pi boards on arm64. The guest's exit code comes in QEMU's exit status
//! (isa-debug-exit, semihosting on arm64); a detached instance's console
//! goes to a file and QEMU listens for QMP on the instance's `qmp.sock`.

use super::{find_program, Outcome, RunSpec, Stderr, Vmm};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// QEMU machine models for x86_64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    /// QEMU's minimal machine: no firmware, no PCI; boots in milliseconds.
    Microvm,
    /// A modern PC (PCIe, SeaBIOS firmware); about a second slower to boot.
    Q35,
}

impl Machine {
    /// QEMU's name for the machine.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// The QEMU binary for an architecture.
pub fn qemu_binary(arch: &str) -> &'static str {
    match arch {
        "arm64" => "qemu-system-aarch64",
        _ => "qemu-system-x86_64",
    }
}

/// Finds QEMU for `arch` in PATH, or explains how to install it.
pub fn find_qemu(arch: &str) -> Result<PathBuf> {
    let pkg = if arch == "arm64" {
        "qemu-system-arm"
    } else {
        "qemu-system-x86"
    };
    find_program(
        qemu_binary(arch),
        &format!("Install QEMU with `scripts/setup` (Debian 12: QEMU 10 from bookworm-backports), or `apt-get install {pkg}`"),
    )
}

/// KVM's supported CPUID (KVM_GET_SUPPORTED_CPUID): (function, eax, ebx,
/// ecx, edx) per leaf. The host CPU having a feature is not enough: some
/// hypervisors (PVM, for one) do not pass all of them on.
fn kvm_supported_cpuid() -> Vec<[u32; 5]> {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return Vec::new();
    };
    const NENT: usize = 256;
    // struct kvm_cpuid2 { u32 nent; u32 padding; struct kvm_cpuid_entry2 entries[]; }
    // struct kvm_cpuid_entry2 { u32 function, index, flags, eax, ebx, ecx, edx, padding[3]; }
    let mut buf = vec![0u32; 2 + NENT * 10];
    buf[0] = NENT as u32;
    const KVM_GET_SUPPORTED_CPUID: libc::c_ulong = 0xC008_AE05;
    // SAFETY: the buffer holds the header and NENT entries, as the ioctl
    // expects; the kernel writes at most nent entries and updates nent.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            KVM_GET_SUPPORTED_CPUID as _,
            buf.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Vec::new();
    }
    let n = (buf[0] as usize).min(NENT);
    (0..n)
        .map(|i| &buf[2 + i * 10..2 + (i + 1) * 10])
        .map(|e| [e[0], e[3], e[4], e[5], e[6]])
        .collect()
}

/// The CPU model for KVM: the baseline qemu64 plus an invariant TSC, and 1
/// GiB pages when KVM offers them; SSE3 (pni) is dropped when KVM lacks it,
/// so QEMU does not warn about it on every run.
pub fn kvm_cpu_model() -> String {
    let cpuid = kvm_supported_cpuid();
    let has = |leaf: u32, reg: usize, bit: u32| {
        cpuid
            .iter()
            .any(|e| e[0] == leaf && e[reg] & (1 << bit) != 0)
    };
    let mut m = String::from("qemu64,+invtsc");
    if has(0x8000_0001, 4, 26) {
        m += ",+pdpe1gb";
    }
    if !cpuid.is_empty() && !has(1, 3, 0) {
        m += ",-pni";
    }
    m
}

/// The QEMU command line for a run.
pub fn command(qemu: &Path, spec: &RunSpec) -> Command {
    let dir = spec.detached.as_deref();
    let mut c = Command::new(qemu);
    let arm = spec.arch == "arm64";
    let raspi = spec.plat.starts_with("raspi");
    let pi4 = spec.plat == "raspi4";
    match spec.machine {
        // The Raspberry Pi 4 Model B (BCM2711) and 3 Model B (BCM2837), as
        // the boards boot kernel8.img.
        _ if pi4 => c.args(["-M", "raspi4b"]),
        _ if raspi => c.args(["-M", "raspi3b"]),
        // arm64: QEMU's virt board (GIC, PL011, virtio-mmio, PSCI).
        _ if arm => c.args(["-M", "virt"]),
        // Without ACPI, legacy timers and the PIC, microvm comes up fastest;
        // Kiln needs none of them.
        // The i8042 is how `kiln stop` asks the guest to shut down
        // (Ctrl-Alt-Del), as on PC machines and Firecracker.
        Machine::Microvm => c.args([
            "-M",
            "microvm,acpi=off,pit=off,pic=off,rtc=off",
            "-device",
            "i8042",
        ]),
        Machine::Q35 => c.args(["-M", "q35"]),
    };
    // Under KVM, the baseline model plus an invariant TSC (QEMU then reports
    // the TSC frequency in CPUID leaf 0x40000010, which the kernel uses for
    // time) and 1 GiB pages (mapping memory then costs one entry per GiB). Under TCG, everything the emulator offers.
    if raspi {
        // The board's own Cortex-A53s.
    } else if arm {
        // A Cortex-A72, like the Raspberry Pi 4's.
        c.args(["-accel", "tcg", "-cpu", "cortex-a72"]);
    } else if spec.kvm {
        c.args(["-accel", "kvm", "-cpu", &kvm_cpu_model()]);
    } else {
        c.args(["-accel", "tcg", "-cpu", "max"]);
    }
    // The boards' memory is fixed: 1 GiB (Pi 3), 2 GiB (QEMU's Pi 4).
    c.args([
        "-m",
        &if pi4 {
            "2G".to_string()
        } else if raspi {
            "1G".to_string()
        } else {
            format!("{}M", spec.memory_mib)
        },
    ]);
    c.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // gdb: the stub on a loopback port, the CPU stopped until gdb says go.
    if let Some(port) = spec.gdb {
        c.args(["-gdb", &format!("tcp:127.0.0.1:{port}"), "-S"]);
    }
    // One stdio chardev for the serial console and QEMU's monitor (Ctrl-A C),
    // with Ctrl-C still stopping QEMU.
    match dir {
        None => {
            c.args([
                "-chardev",
                "stdio,id=con,mux=on,signal=on",
                "-serial",
                "chardev:con",
                "-mon",
                "chardev=con",
            ]);
        }
        Some(dir) => {
            c.arg("-chardev").arg(format!(
                "file,id=con,path={}",
                dir.join("console.log").display()
            ));
            c.args(["-serial", "chardev:con"]);
            c.arg("-qmp").arg(format!(
                "unix:{},server=on,wait=off",
                dir.join(QMP_SOCKET).display()
            ));
        }
    }
    if arm {
        // The guest's exit code travels through semihosting's exit call.
        c.args(["-semihosting-config", "enable=on,target=native"]);
    } else {
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    }
    c.arg("-kernel").arg(&spec.kernel);
    if raspi {
        // QEMU's raspi3b passes no device tree of its own; give it a minimal
        // one to put the command line (and an initrd) in, as the firmware does.
        let dtb = spec.kernel.with_extension("dtb");
        let tree = if pi4 {
            crate::fdt::minimal(
                &["raspberrypi,4-model-b", "brcm,bcm2711"],
                "Raspberry Pi 4 Model B",
                0x3c00_0000,
            )
        } else {
            crate::fdt::minimal(
                &["raspberrypi,3-model-b", "brcm,bcm2837"],
                "Raspberry Pi 3 Model B",
                0x3c00_0000,
            )
        };
        if std::fs::read(&dtb).ok().as_deref() != Some(&tree[..]) {
            let _ = std::fs::write(&dtb, &tree);
        }
        c.arg("-dtb").arg(dtb);
    }
    // A source of randomness from the host's for lib/random (a kernel
    // without it never looks for the device). QEMU's Raspberry Pi boards
    // have no virtio.
    if !raspi {
        c.arg("-device")
            .arg(if spec.machine == Machine::Q35 && !arm {
                "virtio-rng-pci,disable-legacy=on"
            } else {
                "virtio-rng-device"
            });
    }
    // microvm and virt have virtio-mmio slots; q35 has PCI.
    let nic = match spec.machine {
        _ if arm => "virtio-net-device,netdev=n0",
        Machine::Microvm => "virtio-net-device,netdev=n0",
        Machine::Q35 => "virtio-net-pci,netdev=n0,disable-legacy=on",
    };
    if let Some((br, mac)) = &spec.bridge {
        c.arg("-netdev").arg(format!("bridge,id=n0,br={br}"));
        c.arg("-device").arg(format!("{nic},mac={mac}"));
    } else if let Some(fwd) = &spec.net {
        let mut netdev = String::from("user,id=n0");
        for f in fwd {
            netdev += &match f.via {
                Some(via) if !f.udp => {
                    format!(",hostfwd=tcp:127.0.0.1:{}-:{}", via.port(), f.guest)
                }
                _ => format!(
                    ",hostfwd={}::{}-:{}",
                    if f.udp { "udp" } else { "tcp" },
                    f.host,
                    f.guest
                ),
            };
        }
        c.args(["-netdev", &netdev, "-device", nic]);
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        // QEMU's option syntax doubles commas inside a value.
        let file = std::fs::canonicalize(&v.image).unwrap_or_else(|_| v.image.clone());
        let file = file.display().to_string().replace(',', ",,");
        let ro = if v.read_only { ",readonly=on" } else { "" };
        let tag = crate::volume::serial(i, v.kind);
        let pci = spec.machine == Machine::Q35 && !arm;
        match v.kind {
            crate::volume::Kind::Image => {
                c.arg("-drive").arg(format!(
                    "file={file},if=none,id=vol{i},format=raw,cache=writeback{ro}"
                ));
                let blk = if pci {
                    "virtio-blk-pci,disable-legacy=on"
                } else {
                    "virtio-blk-device"
                };
                c.arg("-device")
                    .arg(format!("{blk},drive=vol{i},serial={tag}"));
            }
            crate::volume::Kind::Folder => {
                // security_model=none: files are the host user's, with the
                // modes the guest gives them.
                c.arg("-fsdev").arg(format!(
                    "local,id=vol{i},path={file},security_model=none{ro}"
                ));
                let dev = if pci {
                    "virtio-9p-pci,disable-legacy=on"
                } else {
                    "virtio-9p-device"
                };
                c.arg("-device")
                    .arg(format!("{dev},fsdev=vol{i},mount_tag={tag}"));
            }
        }
    }
    if let Some(i) = &spec.initrd {
        c.arg("-initrd").arg(i);
    }
    c.args(["-append", &spec.cmdline]);
    c
}

/// The signal in QEMU's "terminating on signal N" message, if `line` is
/// that message.
pub fn terminating_signal(line: &str) -> Option<i32> {
    let rest = line.split_once("terminating on signal ")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
        .filter(|&n| n > 0 && n < 65)
}

/// Decodes QEMU's status: the guest writes `code + 1` to isa-debug-exit, and
/// QEMU exits with `(value << 1) | 1`, so guest codes give odd statuses >= 3.
/// (arm64 guests pass that same status to semihosting's exit call.)
pub fn decode(status: ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(0) => Outcome::NoCode,
        Some(s) if s >= 3 && s % 2 == 1 => Outcome::Exited((s - 1) / 2 - 1),
        Some(s) => Outcome::VmmFailed(s),
        None => Outcome::Signal(status.signal().unwrap_or(0)),
    }
}

/// The QMP socket in a detached instance's folder.
const QMP_SOCKET: &str = "qmp.sock";

/// QEMU behind the VMM interface.
pub struct Qemu;

impl Vmm for Qemu {
    fn check(&self, _spec: &RunSpec) -> Result<()> {
        Ok(())
    }

    fn binary(&self, arch: &str) -> Result<PathBuf> {
        find_qemu(arch)
    }

    fn command(&self, bin: &Path, spec: &RunSpec, _dir: &Path) -> Result<Command> {
        Ok(command(bin, spec))
    }

    fn console_on_stdout(&self) -> bool {
        false
    }

    fn outcome(&self, status: ExitStatus, _exit_line: Option<i32>) -> Outcome {
        decode(status)
    }

    fn stderr_line(&self, line: &str) -> Stderr {
        if let Some(sig) = terminating_signal(line) {
            Stderr::Stopping(sig)
        } else if internal_error(line) {
            Stderr::InternalError
        } else {
            Stderr::Pass
        }
    }

    /// Ctrl-Alt-Del on the guest's keyboard (x86_64) and its power button
    /// (arm64 virt); the kernel hands the request to the app (see
    /// `kiln_boot::on_stop`).
    fn ask_to_stop(&self, dir: &Path, _pid: u32) -> bool {
        let Ok(mut q) = Qmp::connect(&dir.join(QMP_SOCKET)) else {
            return false;
        };
        let key = q.execute(
            "{\"execute\":\"send-key\",\"arguments\":{\"keys\":[{\"type\":\"qcode\",\"data\":\"ctrl\"},{\"type\":\"qcode\",\"data\":\"alt\"},{\"type\":\"qcode\",\"data\":\"delete\"}]}}",
        );
        let button = q.execute("{\"execute\":\"system_powerdown\"}");
        matches!(key, Ok(true)) || matches!(button, Ok(true))
    }

    fn quit(&self, dir: &Path) -> bool {
        Qmp::connect(&dir.join(QMP_SOCKET))
            .and_then(Qmp::quit)
            .is_ok()
    }
}

/// A QMP session on an instance's control socket, past the handshake.
struct Qmp {
    s: std::os::unix::net::UnixStream,
    r: BufReader<std::os::unix::net::UnixStream>,
}

impl Qmp {
    fn connect(sock: &Path) -> Result<Qmp> {
        let s = std::os::unix::net::UnixStream::connect(sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let r = BufReader::new(s.try_clone()?);
        let mut q = Qmp { s, r };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting)?;
        q.execute("{\"execute\":\"qmp_capabilities\"}")?;
        Ok(q)
    }

    /// Sends one command and waits for its answer (events in between are
    /// skipped); Ok(false) when QEMU answered with an error.
    fn execute(&mut self, command: &str) -> Result<bool> {
        self.s.write_all(command.as_bytes())?;
        self.s.write_all(b"\n")?;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                bail!("QEMU closed its control socket");
            }
            if line.contains("\"return\"") {
                return Ok(true);
            }
            if line.contains("\"error\"") {
                return Ok(false);
            }
        }
    }

    /// Sends `quit` and waits for QEMU to act on it (it closes the socket
    /// as it exits): closing first can make QEMU drop the command unread.
    fn quit(mut self) -> Result<()> {
        self.s.write_all(b"{\"execute\":\"quit\"}\n")?;
        let mut line = String::new();
        while self.r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            line.clear();
        }
        Ok(())
    }
}

/// Whether QEMU's stderr `line` says it stopped the guest after an
/// internal error (it then pauses the VM instead of exiting).
fn internal_error(line: &str) -> bool {
    line.starts_with("KVM internal error")
        || line.starts_with("error: kvm run failed")
        || line.contains("emulation failure")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn internal_errors_are_recognised() {
        assert!(internal_error("KVM internal error. Suberror: 1"));
        assert!(internal_error("emulation failure"));
        assert!(internal_error("error: kvm run failed Bad address"));
        assert!(!internal_error(
            "qemu-system-x86_64: terminating on signal 15 from pid 7"
        ));
    }

    #[test]
    fn exit_status_decoding() {
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(decode(st(3)), Outcome::Exited(0));
        assert_eq!(decode(st(9)), Outcome::Exited(3));
        assert_eq!(decode(st(255)), Outcome::Exited(126));
        assert_eq!(decode(st(0)), Outcome::NoCode);
        assert_eq!(decode(st(1)), Outcome::VmmFailed(1));
        assert_eq!(decode(ExitStatus::from_raw(9)), Outcome::Signal(9));
    }
}
