//! Detached instances, like `kraft run -d` / `kraft ps`: each one has a
//! folder under the state directory (`$KILN_STATE_DIR`, else
//! `$XDG_STATE_HOME/kiln/instances`, else `~/.local/state/kiln/instances`)
//! holding `instance.json` (what was started), `console.log` (the guest
//! console), `qmp.sock` (QEMU's control socket) and, once QEMU has ended,
//! `exit` (the guest's exit status). A supervisor process, started in its own
//! session, runs QEMU and records the exit, so the state stays right when
//! `kiln` itself is killed; if the supervisor dies too, `kiln ps` sees that
//! QEMU is gone and shows the instance as exited.

use crate::qemu::{self, Outcome, RunSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `instance.json` records.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Info {
    pub name: String,
    pub app: String,
    pub target: String,
    pub kernel: PathBuf,
    pub ports: Vec<String>,
    pub memory_mib: u64,
    pub started: u64,
    /// Remove the instance when it exits.
    pub remove: bool,
    /// QEMU's process ID, once started.
    pub pid: Option<u32>,
    /// The full QEMU command line.
    pub command: Vec<String>,
    /// The bridge the guest is on, if any.
    #[serde(default)]
    pub bridge: Option<(String, String)>,
    /// TCP forwards the supervisor serves (`forward`).
    #[serde(default)]
    pub relays: Vec<crate::forward::Relay>,
}

/// The state directory.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("kiln").join("instances");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local")
        .join("state")
        .join("kiln")
        .join("instances")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks an instance name: letters, digits, `-`, `_`, `.`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || name.starts_with('.') {
        bail!("instance name '{name}': use 1-64 letters, digits, '-', '_' or '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("instance name '{name}': use only letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// A free name: the app's name, then `-2`, `-3`, ...
pub fn free_name(app: &str) -> String {
    let base: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let dir = state_dir();
    if !dir.join(&base).exists() {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !dir.join(n).exists())
        .unwrap()
}

fn read_info(dir: &Path) -> Result<Info> {
    let p = dir.join("instance.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a Kiln instance record", p.display()))
}

fn write_info(dir: &Path, info: &Info) -> Result<()> {
    let tmp = dir.join("instance.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(info)?)?;
    std::fs::rename(&tmp, dir.join("instance.json"))?;
    Ok(())
}

/// Starts `spec` detached as instance `name`; returns once QEMU runs.
pub fn start(
    name: &str,
    app: &str,
    target: &str,
    spec: &RunSpec,
    ports: &[String],
    remove: bool,
) -> Result<()> {
    check_name(name)?;
    let dir = state_dir().join(name);
    if dir.exists() {
        bail!("an instance named '{name}' exists already (kiln rm {name} removes it)");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let qemu_bin = qemu::find_qemu(&spec.arch)?;
    let mut spec = spec.clone();
    spec.detached = Some((dir.join("console.log"), dir.join("qmp.sock")));
    let cmd = qemu::command(&qemu_bin, &spec);
    let command: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let info = Info {
        name: name.into(),
        app: app.into(),
        target: target.into(),
        kernel: spec.kernel.clone(),
        ports: ports.to_vec(),
        memory_mib: spec.memory_mib,
        started: now(),
        remove,
        pid: None,
        command,
        bridge: spec.bridge.clone(),
        relays: spec.relays(),
    };
    write_info(&dir, &info)?;
    // The supervisor: this program again, in a new session, so it outlives
    // the terminal and this process.
    let exe = std::env::current_exe().context("finding the kiln executable")?;
    let mut sup = Command::new(exe);
    sup.arg("__supervise")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid() is async-signal-safe and only detaches the child
    // from our session before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        sup.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    sup.spawn().context("starting the instance supervisor")?;
    // Wait until QEMU is up (pid recorded) or has already failed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(i) = read_info(&dir) {
            if i.pid.is_some() {
                return Ok(());
            }
        }
        if let Ok(code) = std::fs::read_to_string(dir.join("exit")) {
            let log = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
            bail!(
                "instance '{name}' stopped at once (exit status {}):\n{log}",
                code.trim()
            );
        }
        if std::time::Instant::now() > deadline {
            bail!("instance '{name}' did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The supervisor (`kiln __supervise DIR`): runs QEMU, records its PID and
/// the guest's exit status.
pub fn supervise(dir: &Path) -> Result<i32> {
    let mut info = read_info(dir)?;
    if let Err(e) = crate::forward::start(&info.relays) {
        let _ = std::fs::write(dir.join("console.log"), format!("kiln: {e}\n"));
        std::fs::write(dir.join("exit"), "1\n")?;
        return Ok(1);
    }
    let (prog, args) = info.command.split_first().context("empty QEMU command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    info.pid = Some(child.id());
    write_info(dir, &info)?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    let code = match qemu::decode(status) {
        Outcome::Exited(c) => c,
        Outcome::NoCode => qemu::EXIT_CRASH,
        Outcome::QemuFailed(_) => 1,
        Outcome::Signal(s) => 128 + s,
    };
    if !err.is_empty() {
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("console.log"))?;
        let _ = write!(log, "{err}");
    }
    if info.remove {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        std::fs::write(dir.join("exit"), format!("{code}\n"))?;
    }
    Ok(0)
}

/// Whether process `pid` is a live QEMU.
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
}

/// The running instance whose machine has `image` as a disk, if any.
pub fn using(image: &Path) -> Option<String> {
    let want = std::fs::canonicalize(image).ok()?;
    let needle = format!("file={},", want.display());
    std::fs::read_dir(state_dir()).ok()?.flatten().find_map(|e| {
        let i = read_info(&e.path()).ok()?;
        let running = !e.path().join("exit").exists() && i.pid.is_some_and(alive);
        (running && i.command.iter().any(|a| a.contains(&needle))).then_some(i.name)
    })
}

/// An instance's state as `kiln ps` shows it.
#[derive(Serialize, Debug, Clone)]
pub struct Row {
    pub name: String,
    pub app: String,
    pub target: String,
    pub state: String,
    pub exit_code: Option<i32>,
    pub ports: Vec<String>,
    pub memory_mib: u64,
    pub uptime_s: Option<u64>,
    pub pid: Option<u32>,
}

fn row(dir: &Path) -> Result<Row> {
    let i = read_info(dir)?;
    let exit = std::fs::read_to_string(dir.join("exit"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let running = exit.is_none() && i.pid.is_some_and(alive);
    let state = if running {
        "running".to_string()
    } else if exit.is_some() && dir.join("stopped").exists() {
        "stopped".to_string()
    } else if let Some(c) = exit {
        format!("exited ({c})")
    } else if i.pid.is_none() {
        "starting".to_string()
    } else {
        // QEMU and its supervisor are gone without a record.
        "exited (unknown)".to_string()
    };
    Ok(Row {
        name: i.name,
        app: i.app,
        target: i.target,
        state,
        exit_code: exit,
        ports: i.ports,
        memory_mib: i.memory_mib,
        uptime_s: running.then(|| now().saturating_sub(i.started)),
        // Only a live QEMU's: a dead one's number may be another program's.
        pid: i.pid.filter(|_| running),
    })
}

/// All instances, by name.
pub fn list() -> Result<Vec<Row>> {
    let dir = state_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut rows: Vec<Row> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| row(&e.path()).ok())
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

fn human(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// `kiln ps`.
pub fn ps(json: bool) -> Result<()> {
    let rows = list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<12} {:<14} {:<17} {:<16} {:>7} {:>8}",
        "NAME", "APP", "TARGET", "STATE", "PORTS", "MEMORY", "UPTIME"
    );
    for r in rows {
        println!(
            "{:<20} {:<12} {:<14} {:<17} {:<16} {:>6}M {:>8}",
            r.name,
            r.app,
            r.target,
            r.state,
            if r.ports.is_empty() {
                "-".to_string()
            } else {
                r.ports.join(",")
            },
            r.memory_mib,
            r.uptime_s.map(human).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

fn instance_dir(name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let d = state_dir().join(name);
    if !d.join("instance.json").exists() {
        bail!("no instance named '{name}' (kiln ps lists them)");
    }
    Ok(d)
}

/// `kiln logs [-f] NAME`.
pub fn logs(name: &str, follow: bool) -> Result<()> {
    let dir = instance_dir(name)?;
    let path = dir.join("console.log");
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = std::io::stdout();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut pos = f.stream_position()?;
    loop {
        let r = row(&dir)
            .map(|r| r.state.starts_with("running") || r.state == "starting")
            .unwrap_or(false);
        let mut f = std::fs::File::open(&path)?;
        f.seek(std::io::SeekFrom::Start(pos))?;
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            out.write_all(&line)?;
            pos += line.len() as u64;
            line.clear();
        }
        out.flush()?;
        if !r {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
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

/// Asks the guest to shut down: Ctrl-Alt-Del on its keyboard (x86_64)
/// and its power button (arm64 virt); the kernel hands the request to the
/// app (see `kiln_boot::on_stop`). True if either reached the machine.
fn ask_guest_to_stop(sock: &Path) -> bool {
    let Ok(mut q) = Qmp::connect(sock) else { return false };
    let key = q.execute(
        "{\"execute\":\"send-key\",\"arguments\":{\"keys\":[{\"type\":\"qcode\",\"data\":\"ctrl\"},{\"type\":\"qcode\",\"data\":\"alt\"},{\"type\":\"qcode\",\"data\":\"delete\"}]}}",
    );
    let button = q.execute("{\"execute\":\"system_powerdown\"}");
    matches!(key, Ok(true)) || matches!(button, Ok(true))
}

/// How long the guest has to shut down before QEMU is told to quit.
const GRACE: Duration = Duration::from_secs(5);

/// `kiln stop NAME`: asks the guest to shut down (the app finishes what
/// it is doing and exits); after 5 s QMP `quit`, then SIGKILL.
pub fn stop(name: &str) -> Result<()> {
    let dir = instance_dir(name)?;
    let r = row(&dir)?;
    let Some(pid) = r.pid.filter(|_| r.state == "running") else {
        bail!("instance '{name}' is not running ({})", r.state);
    };
    std::fs::write(dir.join("stopped"), b"")?;
    let sock = dir.join("qmp.sock");
    let wait = |limit: Duration| {
        let deadline = std::time::Instant::now() + limit;
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        !alive(pid)
    };
    let asked = ask_guest_to_stop(&sock);
    if asked && wait(GRACE) {
        eprintln!("kiln: {name} shut down");
    } else {
        let quit = Qmp::connect(&sock).and_then(Qmp::quit).is_ok();
        if !wait(Duration::from_secs(2)) {
            // SAFETY: kill(2) on the QEMU process this instance started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            eprintln!(
                "kiln: {name} did not stop{}; killed",
                if quit { "" } else { " (QMP unreachable)" }
            );
        } else {
            eprintln!("kiln: {name} did not shut down within {} s; stopped", GRACE.as_secs());
        }
    }
    // Give the supervisor a moment to record the exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !dir.join("exit").exists() && dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `kiln rm NAME`: removes a stopped instance (`force` stops it first).
pub fn rm(name: &str, force: bool) -> Result<()> {
    let dir = instance_dir(name)?;
    if row(&dir)?.state == "running" {
        if !force {
            bail!(
                "instance '{name}' is running; stop it first (kiln stop {name}) or use kiln rm -f"
            );
        }
        stop(name)?;
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("web-1.prod_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("../etc").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(".hidden").is_err());
        assert_eq!(human(59), "59s");
        assert_eq!(human(61), "1m1s");
        assert_eq!(human(7260), "2h1m");
    }
}
