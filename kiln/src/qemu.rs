//! `kiln run`: boot a kernel image in QEMU and turn the guest's exit into
//! `kiln`'s exit status.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status of `kiln run` when `--timeout` expired (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the guest crashed without reporting a code (triple fault / reset).
pub const EXIT_CRASH: i32 = kiln_boot::EXIT_FAULT;

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

/// What to boot and how.
#[derive(Clone)]
pub struct RunSpec {
    pub kernel: PathBuf,
    pub arch: String,
    /// The platform: `qemu`, `raspi` (QEMU's raspi3b board) or `raspi4` (raspi4b).
    pub plat: String,
    pub machine: Machine,
    pub memory_mib: u64,
    pub kvm: bool,
    pub cmdline: String,
    pub timeout: Option<Duration>,
    /// An initrd (cpio) QEMU loads next to the kernel.
    pub initrd: Option<PathBuf>,
    /// A virtio-net device on QEMU's user network, with these port
    /// forwards; `None` for no network.
    pub net: Option<Vec<PortForward>>,
    /// Instead of the user network: this bridge (QEMU's bridge helper
    /// makes the tap device) and the guest's MAC address.
    pub bridge: Option<(String, String)>,
    /// Detached: the console goes to this file and QMP listens on this
    /// socket, instead of the terminal.
    pub detached: Option<(PathBuf, PathBuf)>,
    /// Volumes: each image becomes a virtio-blk disk with the serial
    /// number `vfs.fstab=` names it by (see `volume`).
    pub volumes: Vec<crate::volume::Mount>,
}

/// `-p HOST:GUEST[/tcp|udp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub udp: bool,
    pub host: u16,
    pub guest: u16,
    /// TCP: the loopback port QEMU forwards instead of `host`, which Kiln
    /// serves itself (see `forward`); None: QEMU listens on `host`.
    pub via: Option<u16>,
}

impl RunSpec {
    /// The TCP forwards Kiln serves itself (those with a loopback port).
    pub fn relays(&self) -> Vec<crate::forward::Relay> {
        self.net
            .iter()
            .flatten()
            .filter_map(|f| f.via.filter(|_| !f.udp).map(|via| crate::forward::Relay { host: f.host, via }))
            .collect()
    }
}

/// Parses `HOST:GUEST[/tcp|udp]` (or just `PORT` for the same port on both).
pub fn parse_port(s: &str) -> Result<PortForward> {
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto),
        None => (s, "tcp"),
    };
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        other => bail!("-p {s}: protocol '{other}' is not tcp or udp"),
    };
    let num = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0);
    let (host, guest) = match ports.split_once(':') {
        Some((h, g)) => (num(h), num(g)),
        None => (num(ports), num(ports)),
    };
    match (host, guest) {
        (Some(host), Some(guest)) => Ok(PortForward { udp, host, guest, via: None }),
        _ => bail!("-p {s}: expected HOST:GUEST with ports 1-65535, like 8080:80"),
    }
}

/// The QEMU binary for an architecture.
pub fn qemu_binary(arch: &str) -> &'static str {
    match arch {
        "arm64" => "qemu-system-aarch64",
        _ => "qemu-system-x86_64",
    }
}

/// Finds `name` in PATH, or explains how to install it.
pub fn find_qemu(arch: &str) -> Result<PathBuf> {
    let name = qemu_binary(arch);
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let pkg = if arch == "arm64" {
        "qemu-system-arm"
    } else {
        "qemu-system-x86"
    };
    bail!(
        "{name} not found in PATH. Install QEMU with `scripts/setup` (Debian 12: QEMU 10 from \
         bookworm-backports), or `apt-get install {pkg}`"
    )
}

/// Which accelerator `kiln run` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it can run Kiln well, else TCG.
    Auto,
    /// KVM, or an error.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

/// Whether KVM can be used, and if not, why.
pub fn kvm_usable() -> std::result::Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("/dev/kvm: {e}")),
    }
}

/// Whether this host's KVM runs a Kiln guest at hardware speed. PVM
/// (the `kvm_pvm` module, KVM for hosts that are themselves VMs without
/// nested virtualisation) runs only guests built for it: others it
/// emulates instruction by instruction (about 1 µs each) and without SSE,
/// which Linux programs need. TCG is faster there.
pub fn kvm_runs_kiln_well() -> std::result::Result<(), String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("this host's KVM is PVM (kvm_pvm), which emulates a guest not built for it one instruction at a time and without SSE (--accel kvm uses it anyway)".into());
    }
    Ok(())
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
    let r = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_SUPPORTED_CPUID, buf.as_mut_ptr()) };
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

/// Parses a memory size like `64M`, `1G`, `512Mi`, `2048` (MiB) into MiB.
pub fn parse_memory(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix('B')
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1.0 / 1024.0),
        Some('M' | 'm') => (&t[..t.len() - 1], 1.0),
        Some('G' | 'g') => (&t[..t.len() - 1], 1024.0),
        Some('T' | 't') => (&t[..t.len() - 1], 1024.0 * 1024.0),
        _ => (t, 1.0),
    };
    let n: f64 = num.trim().parse().with_context(|| {
        format!("memory size '{s}': expected a number with an optional K, M or G suffix")
    })?;
    let mib = (n * mult).ceil() as u64;
    if !(1..=1024 * 1024).contains(&mib) {
        bail!("memory size '{s}' is out of range (1M to 1T)");
    }
    Ok(mib)
}

/// The QEMU command line for a run.
pub fn command(qemu: &Path, spec: &RunSpec) -> Command {
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
        Machine::Microvm => c.args(["-M", "microvm,acpi=off,pit=off,pic=off,rtc=off", "-device", "i8042"]),
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
    // One stdio chardev for the serial console and QEMU's monitor (Ctrl-A C),
    // with Ctrl-C still stopping QEMU.
    match &spec.detached {
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
        Some((log, qmp)) => {
            c.arg("-chardev")
                .arg(format!("file,id=con,path={}", log.display()));
            c.args(["-serial", "chardev:con"]);
            c.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()));
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
                Some(via) if !f.udp => format!(",hostfwd=tcp:127.0.0.1:{via}-:{}", f.guest),
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
                c.arg("-drive").arg(format!("file={file},if=none,id=vol{i},format=raw,cache=writeback{ro}"));
                let blk = if pci { "virtio-blk-pci,disable-legacy=on" } else { "virtio-blk-device" };
                c.arg("-device").arg(format!("{blk},drive=vol{i},serial={tag}"));
            }
            crate::volume::Kind::Folder => {
                // security_model=none: files are the host user's, with the
                // modes the guest gives them.
                c.arg("-fsdev").arg(format!("local,id=vol{i},path={file},security_model=none{ro}"));
                let dev = if pci { "virtio-9p-pci,disable-legacy=on" } else { "virtio-9p-device" };
                c.arg("-device").arg(format!("{dev},fsdev=vol{i},mount_tag={tag}"));
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
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok().filter(|&n| n > 0 && n < 65)
}

/// "SIGTERM" for 15 and the like.
pub fn signal_name(sig: i32) -> String {
    match sig {
        1 => "SIGHUP".into(),
        2 => "SIGINT (Ctrl-C)".into(),
        3 => "SIGQUIT".into(),
        9 => "SIGKILL".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// How the guest ended, decoded from QEMU's exit status.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reported this exit code through isa-debug-exit.
    Exited(i32),
    /// QEMU stopped without a guest exit code (reset, triple fault, monitor `quit`).
    NoCode,
    /// QEMU itself failed with this status.
    QemuFailed(i32),
    /// QEMU was killed by this signal.
    Signal(i32),
}

/// Decodes QEMU's status: the guest writes `code + 1` to isa-debug-exit, and
/// QEMU exits with `(value << 1) | 1`, so guest codes give odd statuses >= 3.
/// (arm64 guests pass that same status to semihosting's exit call.)
pub fn decode(status: ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(0) => Outcome::NoCode,
        Some(s) if s >= 3 && s % 2 == 1 => Outcome::Exited((s - 1) / 2 - 1),
        Some(s) => Outcome::QemuFailed(s),
        None => Outcome::Signal(status.signal().unwrap_or(0)),
    }
}

/// Boots the kernel and returns the exit status `kiln run` should have.
pub fn run(spec: &RunSpec) -> Result<i32> {
    let qemu = find_qemu(&spec.arch)?;
    crate::forward::start(&spec.relays())?;
    let mut cmd = command(&qemu, spec);
    // QEMU dies with `kiln run`: a killed kiln must not leave a guest running.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only changes
    // this child's own parent-death signal before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    // Ctrl-C reaches QEMU (same process group), which stops the guest and
    // says so; `kiln run` waits for that and reports it once.
    // SAFETY: setting a signal disposition to SIG_IGN has no handler to
    // run; QEMU is already started with its own.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    // QEMU's messages pass through; one of them tells a guest stopped by a
    // signal from outside from one that reset itself.
    let stopped_by = Arc::new(std::sync::atomic::AtomicI32::new(0));
    // QEMU pauses a guest after an internal error (a KVM emulation failure
    // prints a register dump and waits forever): `kiln run` ends it.
    let internal = Arc::new(AtomicBool::new(false));
    let relay = child.stderr.take().map(|err| {
        let (stopped_by, internal) = (stopped_by.clone(), internal.clone());
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(sig) = terminating_signal(&line) {
                    stopped_by.store(sig, Ordering::SeqCst);
                    continue;
                }
                if internal_error(&line) && !internal.swap(true, Ordering::SeqCst) {
                    // The register dump follows; then QEMU goes.
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(300));
                        // SAFETY: kill(2) on our own child; if it has been
                        // reaped meanwhile, the pid is not reused yet (we
                        // have not returned from run).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    });
                }
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        })
    });
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(t) = spec.timeout {
        let (done, timed_out) = (done.clone(), timed_out.clone());
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            std::thread::sleep(t);
            if !done.load(Ordering::SeqCst) {
                timed_out.store(true, Ordering::SeqCst);
                // SAFETY: plain kill(2) on our own child, which has not been
                // reaped yet (`done` is still false).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
    }
    let status = child.wait()?;
    done.store(true, Ordering::SeqCst);
    if let Some(r) = relay {
        let _ = r.join();
    }
    // SAFETY: as above; the default disposition again.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    if internal.load(Ordering::SeqCst) {
        eprintln!(
            "kiln: QEMU stopped the guest after an internal error (message and registers above); it was ended (exit status {EXIT_CRASH})"
        );
        return Ok(EXIT_CRASH);
    }
    if timed_out.load(Ordering::SeqCst) {
        eprintln!(
            "kiln: the guest did not finish within {:?}; QEMU was stopped (exit status {EXIT_TIMEOUT})",
            spec.timeout.unwrap()
        );
        return Ok(EXIT_TIMEOUT);
    }
    Ok(match decode(status) {
        Outcome::Exited(code) => code,
        Outcome::NoCode if stopped_by.load(Ordering::SeqCst) != 0 => {
            let sig = stopped_by.load(Ordering::SeqCst);
            if sig == libc::SIGINT {
                eprintln!("kiln: interrupted (Ctrl-C); the guest was stopped");
            } else {
                eprintln!("kiln: the guest was stopped by {} from outside", signal_name(sig));
            }
            128 + sig
        }
        Outcome::NoCode => {
            eprintln!(
                "kiln: the guest stopped without reporting an exit code (reset or triple fault)"
            );
            EXIT_CRASH
        }
        Outcome::QemuFailed(s) => {
            eprintln!("kiln: QEMU failed (exit status {s}); its message is above");
            1
        }
        Outcome::Signal(sig) => {
            eprintln!("kiln: QEMU was killed by {} from outside", signal_name(sig));
            128 + sig
        }
    })
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
        assert!(!internal_error("qemu-system-x86_64: terminating on signal 15 from pid 7"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64M").unwrap(), 64);
        assert_eq!(parse_memory("64Mi").unwrap(), 64);
        assert_eq!(parse_memory("64MiB").unwrap(), 64);
        assert_eq!(parse_memory("1G").unwrap(), 1024);
        assert_eq!(parse_memory("2048").unwrap(), 2048);
        assert_eq!(parse_memory("512k").unwrap(), 1);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("0").is_err());
    }

    #[test]
    fn exit_status_decoding() {
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(decode(st(3)), Outcome::Exited(0));
        assert_eq!(decode(st(9)), Outcome::Exited(3));
        assert_eq!(decode(st(255)), Outcome::Exited(126));
        assert_eq!(decode(st(0)), Outcome::NoCode);
        assert_eq!(decode(st(1)), Outcome::QemuFailed(1));
        assert_eq!(decode(ExitStatus::from_raw(9)), Outcome::Signal(9));
    }
}
