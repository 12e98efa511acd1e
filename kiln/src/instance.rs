//! Detached instances, like `kraft run -d` / `kraft ps`: each one has a
//! folder under the state directory (`$KILN_STATE_DIR`, else
//! `$XDG_STATE_HOME/kiln/instances`, else `~/.local/state/kiln/instances`)
//! holding `instance.json` (what was started), `console.log` (the guest
//! console), the VMM's control socket (and configuration) and, once the VMM
//! has ended, `exit` (the guest's exit status). A supervisor process,
//! started in its own session, runs the VMM, copies its console when the
//! VMM writes it on standard output, records the exit and removes the tap
//! device Kiln made for it, so the state stays right when `kiln` itself is
//! killed; if the supervisor dies too, `kiln ps` sees that the VMM is gone
//! and shows the instance as exited.

use crate::vmm::{self, RunSpec};
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
    /// The VMM's process ID, once started.
    pub pid: Option<u32>,
    /// The full VMM command line.
    pub command: Vec<String>,
    /// The VMM.
    #[serde(default)]
    pub vmm: vmm::Kind,
    /// The tap device Kiln made for the guest, removed when it ends.
    #[serde(default)]
    pub tap: Option<crate::network::Tap>,
    /// The volumes' image files (canonical paths).
    #[serde(default)]
    pub volumes: Vec<PathBuf>,
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

/// Starts `spec` detached as instance `name`; returns once the VMM runs.
/// The instance owns `spec.tap` from here on (its supervisor removes it).
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
    let v = spec.vmm.vmm();
    v.check(spec)?;
    let bin = v.binary(&spec.arch)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut spec = spec.clone();
    spec.detached = Some(dir.clone());
    let cmd = match v.command(&bin, &spec, &dir) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
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
        vmm: spec.vmm,
        tap: spec.tap.clone(),
        volumes: spec
            .volumes
            .iter()
            .filter_map(|v| std::fs::canonicalize(&v.image).ok())
            .collect(),
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
    // Wait until the VMM is up (pid recorded) or has already failed.
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

/// The supervisor (`kiln __supervise DIR`): runs the VMM, records its PID
/// and the guest's exit status, and removes the instance's tap device.
pub fn supervise(dir: &Path) -> Result<i32> {
    let mut info = read_info(dir)?;
    let r = supervise_vmm(dir, &mut info);
    if let Some(t) = &info.tap {
        t.remove();
    }
    r
}

fn supervise_vmm(dir: &Path, info: &mut Info) -> Result<i32> {
    if let Err(e) = crate::forward::start(&info.relays) {
        let _ = std::fs::write(dir.join("console.log"), format!("kiln: {e}\n"));
        std::fs::write(dir.join("exit"), "1\n")?;
        return Ok(1);
    }
    let v = info.vmm.vmm();
    let (prog, args) = info.command.split_first().context("empty VMM command")?;
    let mut cmd = Command::new(prog);
    cmd.args(args).stderr(Stdio::piped());
    match v.console_input(dir)? {
        Some(input) => cmd.stdin(input),
        None => cmd.stdin(Stdio::null()),
    };
    // A VMM that writes the console on its standard output has it copied
    // into the log (without the exit line, whose code is kept).
    let console = if v.console_on_stdout() {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("console.log"))?;
        cmd.stdout(Stdio::piped());
        Some(log)
    } else {
        cmd.stdout(Stdio::null());
        None
    };
    let mut child = cmd.spawn()?;
    info.pid = Some(child.id());
    if let Err(e) = write_info(dir, info) {
        // The instance was removed while it started (`kiln rm -f`): no one
        // could stop this VMM any more.
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let copier = match (console, child.stdout.take()) {
        (Some(log), Some(out)) => Some(vmm::copy_console(out, log, Some(info.kernel.clone()))),
        _ => None,
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    let exit_line = copier.and_then(|c| c.join().ok()).flatten();
    let code = v.outcome(status, exit_line).status();
    let err: String = err
        .lines()
        .filter(|l| !matches!(v.stderr_line(l), vmm::Stderr::Quiet))
        .map(|l| format!("{l}\n"))
        .collect();
    if !err.is_empty() {
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("console.log"))?;
        let _ = write!(log, "{err}");
    }
    // The tap goes before the exit status is written: `kiln rm` and `kiln
    // stop` take the status as the sign that everything is cleaned up.
    if let Some(t) = info.tap.take() {
        t.remove();
    }
    if info.remove {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        std::fs::write(dir.join("exit"), format!("{code}\n"))?;
    }
    Ok(0)
}

/// Whether process `pid` is a live VMM of kind `vmm`.
fn alive(pid: u32, vmm: vmm::Kind) -> bool {
    let program = vmm.process_marker();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(program))
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
}

/// The running instance whose machine has `image` as a disk, if any.
pub fn using(image: &Path) -> Option<String> {
    let want = std::fs::canonicalize(image).ok()?;
    let needle = format!("file={},", want.display());
    std::fs::read_dir(state_dir())
        .ok()?
        .flatten()
        .find_map(|e| {
            let i = read_info(&e.path()).ok()?;
            let running = !e.path().join("exit").exists() && i.pid.is_some_and(|p| alive(p, i.vmm));
            let uses = i.volumes.contains(&want) || i.command.iter().any(|a| a.contains(&needle));
            (running && uses).then_some(i.name)
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
    let running = exit.is_none() && i.pid.is_some_and(|p| alive(p, i.vmm));
    let state = if running {
        "running".to_string()
    } else if exit.is_some() && dir.join("stopped").exists() {
        "stopped".to_string()
    } else if let Some(c) = exit {
        format!("exited ({c})")
    } else if i.pid.is_none() {
        "starting".to_string()
    } else {
        // The VMM and its supervisor are gone without a record.
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
        // Only a live VMM's: a dead one's number may be another program's.
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
        "{:<20} {:<12} {:<18} {:<17} {:<16} {:>7} {:>8}",
        "NAME", "APP", "TARGET", "STATE", "PORTS", "MEMORY", "UPTIME"
    );
    for r in rows {
        println!(
            "{:<20} {:<12} {:<18} {:<17} {:<16} {:>6}M {:>8}",
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

/// How long the guest has to shut down before the VMM is told to quit.
const GRACE: Duration = Duration::from_secs(5);

/// `kiln stop NAME`: asks the guest to shut down (the app finishes what
/// it is doing and exits); after 5 s the VMM is told to quit, then killed.
pub fn stop(name: &str) -> Result<()> {
    let dir = instance_dir(name)?;
    let r = started(&dir)?;
    let Some(pid) = r.pid.filter(|_| r.state == "running") else {
        bail!("instance '{name}' is not running ({})", r.state);
    };
    let kind = read_info(&dir)?.vmm;
    let v = kind.vmm();
    std::fs::write(dir.join("stopped"), b"")?;
    let wait = |limit: Duration| {
        let deadline = std::time::Instant::now() + limit;
        while alive(pid, kind) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        !alive(pid, kind)
    };
    let asked = v.ask_to_stop(&dir, pid);
    if asked && wait(GRACE) {
        eprintln!("kiln: {name} shut down");
    } else {
        let why = if asked {
            format!("did not shut down within {} s", GRACE.as_secs())
        } else if kind == vmm::Kind::Qemu {
            "could not be asked to shut down (QMP unreachable)".to_string()
        } else {
            format!("cannot be asked to shut down on {}", kind.name())
        };
        if v.quit(&dir) && wait(Duration::from_secs(2)) {
            eprintln!("kiln: {name} {why}; stopped");
        } else {
            // SAFETY: kill(2) on the VMM process this instance started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            eprintln!("kiln: {name} {why}; killed");
            let _ = wait(Duration::from_secs(2));
        }
    }
    // Give the supervisor a moment to record the exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !dir.join("exit").exists() && dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The instance's row once it is past "starting" (its VMM started, or it
/// failed to), waiting up to 10 s: stopping or removing an instance whose
/// VMM is about to start would leave that VMM running with no one to stop
/// it.
fn started(dir: &Path) -> Result<Row> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = row(dir)?;
        if r.state != "starting" || std::time::Instant::now() >= deadline {
            return Ok(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kiln rm NAME`: removes a stopped instance (`force` stops it first).
pub fn rm(name: &str, force: bool) -> Result<()> {
    let dir = instance_dir(name)?;
    let state = if force {
        started(&dir)?.state
    } else {
        row(&dir)?.state
    };
    if state == "running" || state == "starting" {
        if !force {
            bail!(
                "instance '{name}' is running; stop it first (kiln stop {name}) or use kiln rm -f"
            );
        }
        stop(name)?;
    }
    // A VMM that has just died: its supervisor is still writing the exit
    // status (and the console's last lines) into the folder; wait for it
    // (a little), or the removal races with those writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !dir.join("exit").exists()
        && read_info(&dir).is_ok_and(|i| i.pid.is_some())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut r = std::fs::remove_dir_all(&dir);
    if r.is_err() && dir.exists() {
        // Something was still being written: once more.
        std::thread::sleep(Duration::from_millis(100));
        r = std::fs::remove_dir_all(&dir);
    }
    r.with_context(|| format!("removing {}", dir.display()))?;
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
