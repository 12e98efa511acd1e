//! The virtual machine monitors `kiln run` boots an image on, behind one
//! interface ([`Vmm`]): QEMU (the default), Firecracker and
//! cloud-hypervisor. Each module builds its VMM's command line (or
//! configuration file), says what it cannot boot, decodes how the guest
//! ended and asks a running guest to stop; the rest (starting, the console,
//! timeouts, signals, exit statuses, instances) is shared.
//!
//! Exit codes: QEMU carries the guest's code in its own exit status (the
//! debug-exit device, semihosting on arm64). The others have no such
//! channel: the kernel prints [`kiln_boot::EXIT_LINE`] and the code as the
//! console's last line before it powers off, and Kiln, which reads the
//! console from the VMM's standard output, takes the code from that line
//! and does not pass the line on ([`ConsoleFilter`]).

pub mod api;
pub mod cloud_hypervisor;
pub mod firecracker;
pub mod linuxu;
pub mod qemu;

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use qemu::Machine;

/// Exit status of `kiln run` when `--timeout` expired (as `timeout(1)`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the guest crashed without reporting a code (triple fault / reset).
pub const EXIT_CRASH: i32 = kiln_boot::EXIT_FAULT;

/// The VMMs Kiln runs on.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// QEMU (microvm or q35 on x86_64, virt or the Raspberry Pi boards on arm64)
    #[default]
    Qemu,
    /// Firecracker (x86_64; boots the image through its PVH note)
    Firecracker,
    /// cloud-hypervisor (x86_64; boots the image through its PVH note)
    CloudHypervisor,
    /// None: a `--plat linuxu` kernel is a host process (chosen by the
    /// platform, not by `--vmm`)
    #[value(skip)]
    Linuxu,
}

impl Kind {
    /// Whether the VMM gives disks the serial numbers volumes are found by
    /// (Firecracker does not: its disks go by name, vda, vdb, ...).
    pub fn disk_serials(self) -> bool {
        self != Kind::Firecracker
    }

    /// The name users type (`--vmm`, a Kraftfile target's platform).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Qemu => "qemu",
            Kind::Firecracker => "firecracker",
            Kind::CloudHypervisor => "cloud-hypervisor",
            Kind::Linuxu => "linuxu",
        }
    }

    /// The name in messages (`Firecracker`, as its project writes it).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Qemu => "QEMU",
            Kind::Firecracker => "Firecracker",
            Kind::CloudHypervisor => "cloud-hypervisor",
            Kind::Linuxu => "linuxu",
        }
    }

    /// What the command line of this kind's process contains (to tell a
    /// live instance from a reused process id).
    pub fn process_marker(self) -> &'static str {
        match self {
            Kind::Qemu => "qemu-system",
            Kind::Firecracker => "firecracker",
            Kind::CloudHypervisor => "cloud-hypervisor",
            Kind::Linuxu => linuxu::MEM_ARG,
        }
    }

    /// The VMM for a platform name as Kraftfiles and urunc write it
    /// (`fc`, `firecracker`, `cloud-hypervisor`, `clh`), if it is one.
    pub fn from_plat(p: &str) -> Option<Kind> {
        match p {
            "qemu" => Some(Kind::Qemu),
            "fc" | "firecracker" => Some(Kind::Firecracker),
            "cloud-hypervisor" | "cloudhypervisor" | "clh" | "chv" => Some(Kind::CloudHypervisor),
            _ => None,
        }
    }

    /// This kind's implementation.
    pub fn vmm(self) -> &'static dyn Vmm {
        match self {
            Kind::Qemu => &qemu::Qemu,
            Kind::Firecracker => &firecracker::Firecracker,
            Kind::CloudHypervisor => &cloud_hypervisor::CloudHypervisor,
            Kind::Linuxu => &linuxu::Linuxu,
        }
    }
}

/// What to boot and how.
#[derive(Clone)]
pub struct RunSpec {
    pub vmm: Kind,
    pub kernel: PathBuf,
    pub arch: String,
    /// The platform: `qemu`, `raspi` (QEMU's raspi3b board) or `raspi4` (raspi4b).
    pub plat: String,
    pub machine: Machine,
    pub memory_mib: u64,
    pub kvm: bool,
    pub cmdline: String,
    pub timeout: Option<Duration>,
    /// An initrd (cpio) the VMM loads next to the kernel.
    pub initrd: Option<PathBuf>,
    /// A virtio-net device on QEMU's user network, with these port
    /// forwards; `None` for no network.
    pub net: Option<Vec<PortForward>>,
    /// Instead of the user network: this bridge (QEMU's bridge helper
    /// makes the tap device) and the guest's MAC address.
    pub bridge: Option<(String, String)>,
    /// The tap device Kiln made for a VMM without a user network
    /// (Firecracker, cloud-hypervisor).
    pub tap: Option<crate::network::Tap>,
    /// Detached: the instance's folder, where the console log and the
    /// VMM's control socket go, instead of the terminal.
    pub detached: Option<PathBuf>,
    /// Volumes: each image becomes a virtio-blk disk (see `volume`).
    pub volumes: Vec<crate::volume::Mount>,
    /// QEMU's gdb stub on this port, the guest stopped until gdb continues it.
    pub gdb: Option<u16>,
}

/// `-p HOST:GUEST[/tcp|udp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub udp: bool,
    pub host: u16,
    pub guest: u16,
    /// TCP: where Kiln's own listener on `host` hands clients to (QEMU's
    /// forward on a loopback port, or the guest's address on a tap); None:
    /// the VMM listens on `host` itself.
    pub via: Option<std::net::SocketAddrV4>,
}

impl RunSpec {
    /// The TCP forwards Kiln serves itself.
    pub fn relays(&self) -> Vec<crate::forward::Relay> {
        self.net
            .iter()
            .flatten()
            .filter_map(|f| {
                f.via
                    .filter(|_| !f.udp)
                    .map(|to| crate::forward::Relay { host: f.host, to })
            })
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
        (Some(host), Some(guest)) => Ok(PortForward {
            udp,
            host,
            guest,
            via: None,
        }),
        _ => bail!("-p {s}: expected HOST:GUEST with ports 1-65535, like 8080:80"),
    }
}

/// Finds program `name` in PATH; the error says how to get it.
pub fn find_program(name: &str, how_to_get: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found in PATH. {how_to_get}")
}

/// A VMM that is not a Debian package (Firecracker, cloud-hypervisor):
/// `program` in PATH, or how to get it.
fn built_from_source(program: &str, name: &str) -> Result<PathBuf> {
    find_program(
        program,
        &format!("{name} is not packaged by Debian: build it from its source (README, \"Firecracker and cloud-hypervisor\") and put `{program}` in PATH, or run on QEMU (leave out --vmm)"),
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

/// How the guest ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reported this exit code.
    Exited(i32),
    /// The VMM stopped without a guest exit code (reset, triple fault, a `quit`).
    NoCode,
    /// The VMM itself failed with this status.
    VmmFailed(i32),
    /// The VMM was killed by this signal.
    Signal(i32),
}

impl Outcome {
    /// The exit status `kiln` reports for it (an instance's `exit` file).
    pub fn status(&self) -> i32 {
        match *self {
            Outcome::Exited(c) => c,
            Outcome::NoCode => EXIT_CRASH,
            Outcome::VmmFailed(_) => 1,
            Outcome::Signal(s) => 128 + s,
        }
    }
}

/// What a line the VMM writes on its standard error means.
pub enum Stderr {
    /// Nothing special: passed on.
    Pass,
    /// A known, harmless warning: not passed on.
    Quiet,
    /// The VMM says it is stopping because of this signal (not passed on).
    Stopping(i32),
    /// The VMM paused the guest after an internal error and will not exit
    /// by itself (passed on; Kiln ends it).
    InternalError,
}

/// One VMM.
pub trait Vmm: Sync {
    /// Refuses what this VMM cannot boot, naming what to do instead.
    fn check(&self, spec: &RunSpec) -> Result<()>;
    /// The VMM's program for `arch`, or how to install it.
    fn binary(&self, arch: &str) -> Result<PathBuf>;
    /// The command that boots `spec`. Files it needs (a configuration,
    /// the control socket) go in `dir`, which exists: the instance's folder
    /// for a detached run, a scratch folder otherwise.
    fn command(&self, bin: &Path, spec: &RunSpec, dir: &Path) -> Result<Command>;
    /// Whether the guest's console is the VMM's standard output (Kiln then
    /// copies it through a [`ConsoleFilter`]); QEMU serves its own console.
    fn console_on_stdout(&self) -> bool {
        true
    }
    /// What the VMM reads as the guest's console input (its standard
    /// input), opened in the run's folder `dir`: a FIFO there, through
    /// which `ask_to_stop` reaches a guest with no other way to be asked;
    /// None: nothing (standard input is /dev/null).
    fn console_input(&self, _dir: &Path) -> Result<Option<std::fs::File>> {
        Ok(None)
    }
    /// How the guest ended, from the VMM's exit status and the code on
    /// the console's exit line, if one came.
    fn outcome(&self, status: ExitStatus, exit_line: Option<i32>) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), exit_line) {
            (Some(0), Some(c)) => Outcome::Exited(c),
            (Some(0), None) => Outcome::NoCode,
            (Some(s), _) => Outcome::VmmFailed(s),
            (None, _) => Outcome::Signal(status.signal().unwrap_or(0)),
        }
    }
    /// What a line of the VMM's standard error means.
    fn stderr_line(&self, _line: &str) -> Stderr {
        Stderr::Pass
    }
    /// Asks the guest of the instance in `dir` to shut down; true when the
    /// request reached the machine.
    fn ask_to_stop(&self, dir: &Path, pid: u32) -> bool;
    /// Tells the VMM of the instance in `dir` to end the machine now; true
    /// when it was told.
    fn quit(&self, dir: &Path) -> bool;
}

/// Refuses a guest of another architecture than the host's for a VMM
/// that runs guests on KVM only (`name`); checked before building too.
pub fn host_arch_only(name: &str, arch: &str) -> Result<()> {
    let host = std::env::consts::ARCH.replace("aarch64", "arm64");
    if arch != host {
        bail!(
            "{name} runs guests of its host's architecture (with KVM), and this host is {host}: run the {arch} image on an {arch} host, or here on QEMU (leave out --vmm)"
        );
    }
    Ok(())
}

/// What Firecracker and cloud-hypervisor share: KVM on the host's own
/// architecture, the qemu platform's image, no QEMU-only options. `arm64`:
/// whether this VMM boots Kiln on arm64 (Firecracker: the `fc/arm64`
/// image, laid out for its memory map).
fn check_kvm_vmm(spec: &RunSpec, name: &str, arm64: bool) -> Result<()> {
    if spec.arch != "x86_64" && !arm64 {
        bail!(
            "{name} runs Kiln's x86_64 image only: on arm64 it gives its devices on PCI only, which Kiln's arm64 kernel does not drive yet; run it on QEMU (leave out --vmm) or Firecracker"
        );
    }
    host_arch_only(name, &spec.arch)?;
    if spec.plat != "qemu" {
        bail!("{name} cannot boot the {}/{} target (an image for a Raspberry Pi board); build the qemu/x86_64 target", spec.plat, spec.arch);
    }
    if spec.machine != Machine::Microvm {
        bail!("--machine chooses QEMU's machine model; {name} has its own (leave out --machine)");
    }
    if let Some(v) = spec
        .volumes
        .iter()
        .find(|v| v.kind == crate::volume::Kind::Folder)
    {
        bail!(
            "volume {}: {name} has no virtio-9p device to share a host folder; use an image volume (kiln volume create NAME --size 64M) or run on QEMU (leave out --vmm)",
            v.image.display()
        );
    }
    if let Some(f) = spec.net.iter().flatten().find(|f| f.udp) {
        bail!(
            "-p {}:{}/udp: {name} has no user network and Kiln forwards TCP ports only; reach the guest at its own address{}",
            f.host,
            f.guest,
            spec.tap.as_ref().map(|t| format!(" ({})", t.guest_addr())).unwrap_or_default()
        );
    }
    if let Err(why) = kvm_usable() {
        bail!("{name} needs KVM, which is unusable here ({why}); QEMU runs without it (leave out --vmm)");
    }
    Ok(())
}

/// The FIFO `console.in` in `dir` (made if missing), opened for reading
/// and writing: the VMM never sees its end, whoever writes to it.
pub fn console_fifo(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.join(CONSOLE_FIFO);
    if !path.exists() {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: mkfifo(3) with a NUL-terminated path; no memory is shared.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("making {}", path.display()));
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Writes `bytes` to the console FIFO in `dir` (see [`console_fifo`]),
/// if the VMM holds it open; true when they were written.
pub fn write_console_fifo(dir: &Path, bytes: &[u8]) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.join(CONSOLE_FIFO))
        .and_then(|mut f| f.write_all(bytes))
        .is_ok()
}

/// The console FIFO's name in a run's folder.
const CONSOLE_FIFO: &str = "console.in";

/// Copies the guest's console to `out`, keeping back the kernel's exit
/// line (and the blank line it starts with) and remembering its code.
pub struct ConsoleFilter<W: Write> {
    out: W,
    /// The held start of the current line.
    line: Vec<u8>,
    /// Part of the current line has been written out: it is not the exit
    /// line nor blank.
    started: bool,
    blank_held: bool,
    code: Option<i32>,
    /// The kernel's symbols, to name the function of a fault report's
    /// instruction pointer, and the whole current line for that.
    symbols: Option<crate::symbols::Symbols>,
    text: Vec<u8>,
}

impl<W: Write> ConsoleFilter<W> {
    pub fn new(out: W) -> Self {
        ConsoleFilter {
            out,
            line: Vec::new(),
            started: false,
            blank_held: false,
            code: None,
            symbols: None,
            text: Vec::new(),
        }
    }

    /// Names functions in fault reports from these symbols.
    pub fn with_symbols(mut self, symbols: Option<crate::symbols::Symbols>) -> Self {
        self.symbols = symbols;
        self
    }

    /// After a complete line: the function a fault report's instruction
    /// pointer is in, on a line of its own.
    fn annotate(&mut self) -> std::io::Result<()> {
        let text = std::mem::take(&mut self.text);
        if let Some(s) = &self.symbols {
            if let Some(note) = std::str::from_utf8(&text)
                .ok()
                .and_then(|l| s.annotate(l.trim_end_matches('\r')))
            {
                self.out.write_all(note.as_bytes())?;
                self.out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// The code of the last exit line seen.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// Passes `bytes` on. Bytes that may begin an exit line are held
    /// until their line ends; everything else goes out at once, so an
    /// interactive console is not delayed.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let marker = kiln_boot::EXIT_LINE.as_bytes();
        for &b in bytes {
            if b != b'\n' && self.symbols.is_some() && self.text.len() < 512 {
                self.text.push(b);
            }
            if b == b'\n' && std::mem::take(&mut self.started) {
                self.out.write_all(&std::mem::take(&mut self.line))?;
                self.out.write_all(b"\n")?;
                self.annotate()?;
                continue;
            }
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let code = line
                    .strip_prefix(marker)
                    .and_then(|r| std::str::from_utf8(r).ok())
                    .and_then(|r| r.trim_end_matches('\r').parse::<i32>().ok());
                match code {
                    Some(c) => {
                        self.code = Some(c);
                        self.blank_held = false;
                    }
                    None if line.is_empty() || line == b"\r" => {
                        if std::mem::replace(&mut self.blank_held, true) {
                            self.out.write_all(b"\n")?;
                        }
                    }
                    None => {
                        self.release_blank()?;
                        self.out.write_all(&line)?;
                        self.out.write_all(b"\n")?;
                    }
                }
                self.annotate()?;
                continue;
            }
            self.line.push(b);
            // Still possibly the exit line (or a blank line before it):
            // hold it.
            let n = self.line.len().min(marker.len());
            if !self.started && (self.line[..n] == marker[..n] || self.line == b"\r") {
                continue;
            }
            self.release_blank()?;
            self.out.write_all(&std::mem::take(&mut self.line))?;
            self.started = true;
        }
        self.out.flush()
    }

    fn release_blank(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.blank_held) {
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Writes what is still held (the console ended mid-line).
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.release_blank()?;
        self.started = false;
        let rest = std::mem::take(&mut self.line);
        self.out.write_all(&rest)?;
        self.out.flush()
    }
}

/// Copies `from` (a VMM's standard output) through a console filter into
/// `to` on a thread; the thread's result is the exit line's code.
pub fn copy_console<R: Read + Send + 'static, W: Write + Send + 'static>(
    mut from: R,
    to: W,
    kernel: Option<PathBuf>,
) -> std::thread::JoinHandle<Option<i32>> {
    std::thread::spawn(move || {
        let symbols = kernel
            .as_deref()
            .and_then(crate::symbols::Symbols::for_image);
        let mut f = ConsoleFilter::new(to).with_symbols(symbols);
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // The terminal may be gone; keep reading for the code.
                    let _ = f.write(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = f.finish();
        f.code()
    })
}

/// A scratch folder for one foreground run's VMM files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(vmm: Kind) -> Result<Scratch> {
        let d = std::env::temp_dir().join(format!("kiln-{}-{}", vmm.name(), std::process::id()));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Set when Ctrl-C reached `kiln run` (and its VMM) while a guest ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Boots the kernel in the foreground and returns the exit status
/// `kiln run` should have.
pub fn run(spec: &RunSpec) -> Result<i32> {
    let vmm = spec.vmm.vmm();
    vmm.check(spec)?;
    let bin = vmm.binary(&spec.arch)?;
    let scratch = Scratch::new(spec.vmm)?;
    crate::forward::start(&spec.relays())?;
    let mut cmd = vmm.command(&bin, spec, &scratch.0)?;
    // The VMM dies with `kiln run`: a killed kiln must not leave a guest running.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only changes
    // this child's own parent-death signal before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stderr(Stdio::piped());
    if let Some(input) = vmm.console_input(&scratch.0)? {
        cmd.stdin(input);
    } else if vmm.console_on_stdout() {
        // The console is output only: a VMM reading a terminal would put
        // it in raw mode and take Ctrl-C for the guest.
        cmd.stdin(Stdio::null());
    }
    // The console comes through Kiln on its way to the terminal, so that
    // fault reports get their function names (QEMU keeps reading the
    // terminal for the guest's input).
    cmd.stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // Ctrl-C reaches the VMM (same process group), which stops; `kiln run`
    // waits for that, notes it and reports it once.
    // SAFETY: the handler only stores to an atomic (async-signal-safe); the
    // VMM is already started with its own dispositions.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let console = child
        .stdout
        .take()
        .map(|o| copy_console(o, std::io::stdout(), Some(spec.kernel.clone())));
    let stopped_by = Arc::new(AtomicI32::new(0));
    let internal = Arc::new(AtomicBool::new(false));
    let relay = child.stderr.take().map(|err| {
        let (stopped_by, internal) = (stopped_by.clone(), internal.clone());
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                match vmm.stderr_line(&line) {
                    Stderr::Stopping(sig) => {
                        stopped_by.store(sig, Ordering::SeqCst);
                        continue;
                    }
                    Stderr::Quiet => continue,
                    Stderr::InternalError if !internal.swap(true, Ordering::SeqCst) => {
                        // A register dump follows; then the VMM goes.
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(300));
                            // SAFETY: kill(2) on our own child; if it has been
                            // reaped meanwhile, the pid is not reused yet (we
                            // have not returned from run).
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        });
                    }
                    _ => {}
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
    let exit_line = console.and_then(|c| c.join().ok()).flatten();
    // SAFETY: as above; the default disposition again.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let name = spec.vmm.name();
    if internal.load(Ordering::SeqCst) {
        eprintln!(
            "kiln: {name} stopped the guest after an internal error (message and registers above); it was ended (exit status {EXIT_CRASH}). An \"emulation failure\" means the host's KVM could not run an instruction of the guest: `kiln run -W` runs it under TCG instead"
        );
        return Ok(EXIT_CRASH);
    }
    if timed_out.load(Ordering::SeqCst) {
        eprintln!(
            "kiln: the guest did not finish within {:?}; {name} was stopped (exit status {EXIT_TIMEOUT})",
            spec.timeout.unwrap()
        );
        return Ok(EXIT_TIMEOUT);
    }
    Ok(match vmm.outcome(status, exit_line) {
        Outcome::Exited(code) => code,
        // A VMM that ends cleanly on SIGINT (cloud-hypervisor).
        Outcome::NoCode
            if INTERRUPTED.load(Ordering::SeqCst) && stopped_by.load(Ordering::SeqCst) == 0 =>
        {
            eprintln!("kiln: interrupted (Ctrl-C); the guest was stopped");
            128 + libc::SIGINT
        }
        Outcome::NoCode if stopped_by.load(Ordering::SeqCst) != 0 => {
            let sig = stopped_by.load(Ordering::SeqCst);
            if sig == libc::SIGINT {
                eprintln!("kiln: interrupted (Ctrl-C); the guest was stopped");
            } else {
                eprintln!(
                    "kiln: the guest was stopped by {} from outside",
                    signal_name(sig)
                );
            }
            128 + sig
        }
        Outcome::NoCode => {
            eprintln!(
                "kiln: the guest stopped without reporting an exit code (reset or triple fault)"
            );
            EXIT_CRASH
        }
        Outcome::VmmFailed(s) => {
            eprintln!("kiln: {name} failed (exit status {s}); its message is above");
            1
        }
        Outcome::Signal(libc::SIGINT) => {
            eprintln!("kiln: interrupted (Ctrl-C); the guest was stopped");
            128 + libc::SIGINT
        }
        Outcome::Signal(sig) => {
            eprintln!(
                "kiln: {name} was killed by {} from outside",
                signal_name(sig)
            );
            128 + sig
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A console sink the test can look into.
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn filtered(chunks: &[&str]) -> (String, Option<i32>) {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let mut f = ConsoleFilter::new(Shared(sink.clone()));
        for c in chunks {
            f.write(c.as_bytes()).unwrap();
        }
        f.finish().unwrap();
        let out = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        (out, f.code())
    }

    /// A run of kernel `/k` with arguments `a` on `vmm`.
    pub(super) fn spec(vmm: Kind) -> RunSpec {
        RunSpec {
            vmm,
            kernel: "/k".into(),
            arch: "x86_64".into(),
            plat: "qemu".into(),
            machine: Machine::Microvm,
            memory_mib: 64,
            kvm: true,
            cmdline: "-- a".into(),
            timeout: None,
            initrd: None,
            net: None,
            bridge: None,
            tap: None,
            detached: None,
            volumes: Vec::new(),
            gdb: None,
        }
    }

    #[test]
    fn the_exit_line_is_taken_out_of_the_console() {
        let (out, code) = filtered(&["Hello\n", "\nkiln: exit ", "status 3\n"]);
        assert_eq!((out.as_str(), code), ("Hello\n", Some(3)));
        // Blank lines of the app's own stay, and so do lines that only
        // look like the start of the exit line.
        let (out, code) = filtered(&["a\n\n\nkiln: exit soon\n", "b"]);
        assert_eq!((out.as_str(), code), ("a\n\n\nkiln: exit soon\nb", None));
        let (out, code) = filtered(&["x\r\n\r\nkiln: exit status 0\r\n"]);
        assert_eq!((out.as_str(), code), ("x\r\n", Some(0)));
        // Bytes that cannot be the exit line are not held back.
        let sink = Arc::new(Mutex::new(Vec::new()));
        let mut f = ConsoleFilter::new(Shared(sink.clone()));
        f.write(b"prompt> ").unwrap();
        assert_eq!(&sink.lock().unwrap()[..], b"prompt> ");
    }

    #[test]
    fn vmm_names() {
        assert_eq!(Kind::from_plat("fc"), Some(Kind::Firecracker));
        assert_eq!(
            Kind::from_plat("cloud-hypervisor"),
            Some(Kind::CloudHypervisor)
        );
        assert_eq!(Kind::from_plat("xen"), None);
        for k in [Kind::Qemu, Kind::Firecracker, Kind::CloudHypervisor] {
            assert_eq!(Kind::from_plat(k.name()), Some(k));
        }
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
    fn default_outcomes() {
        use std::os::unix::process::ExitStatusExt;
        let v = Kind::Firecracker.vmm();
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(v.outcome(st(0), Some(7)), Outcome::Exited(7));
        assert_eq!(v.outcome(st(0), None), Outcome::NoCode);
        assert_eq!(v.outcome(st(1), None), Outcome::VmmFailed(1));
        assert_eq!(
            v.outcome(ExitStatus::from_raw(15), None),
            Outcome::Signal(15)
        );
    }
}
