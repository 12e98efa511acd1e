//! The linuxu platform's "VMM": none. A `--plat linuxu` kernel is a Linux
//! executable (plat/linuxu), started as a child process with the kernel
//! command line as its arguments, one word each, after its own
//! `linuxu.mem=` and, with a network, `linuxu.tap=`/`linuxu.mac=` for the
//! tap Kiln made. Its console is its standard output, its exit status the
//! app's code, and SIGTERM the request to stop (`kiln stop`).

use super::{Outcome, RunSpec, Vmm};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

pub struct Linuxu;

/// Marks a linuxu process among the host's (the first word `kiln run`
/// passes).
pub const MEM_ARG: &str = "linuxu.mem=";

/// Why volumes are refused.
pub const NO_VOLUMES: &str = "volumes are virtio-blk disks, which a linuxu process has none of; run in a VM (leave out --plat linuxu)";

impl Vmm for Linuxu {
    fn check(&self, spec: &RunSpec) -> Result<()> {
        let host = std::env::consts::ARCH.replace("aarch64", "arm64");
        if spec.arch != host {
            bail!(
                "--plat linuxu runs the kernel as a process of this {host} host, not {}",
                spec.arch
            );
        }
        if !spec.volumes.is_empty() {
            bail!(NO_VOLUMES);
        }
        if spec.initrd.is_some() {
            bail!("--initrd: a linuxu kernel uses the rootfs built into it; rebuild with the Kraftfile's rootfs, or run in a VM");
        }
        Ok(())
    }

    fn binary(&self, _arch: &str) -> Result<PathBuf> {
        // The kernel is the program.
        Ok(PathBuf::from("the linuxu kernel"))
    }

    fn command(&self, _bin: &Path, spec: &RunSpec, _dir: &Path) -> Result<Command> {
        let mut c = Command::new(&spec.kernel);
        c.args(args(spec)?);
        Ok(c)
    }

    fn outcome(&self, status: ExitStatus, _exit_line: Option<i32>) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        match status.code() {
            Some(c) => Outcome::Exited(c),
            None => Outcome::Signal(status.signal().unwrap_or(0)),
        }
    }

    fn ask_to_stop(&self, _dir: &Path, pid: u32) -> bool {
        // SAFETY: kill(2) on the process this instance started (its caller
        // checked it is alive and a linuxu kernel).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) == 0 }
    }

    fn quit(&self, _dir: &Path) -> bool {
        false
    }
}

/// The process's arguments for `spec`.
fn args(spec: &RunSpec) -> Result<Vec<String>> {
    let mut a = vec![format!("{MEM_ARG}{}", spec.memory_mib)];
    if let Some(t) = &spec.tap {
        a.push(format!("linuxu.tap={}", t.name));
        a.push(format!("linuxu.mac={}", t.mac));
    }
    let words = kiln_boot::cmdline::split(&spec.cmdline)
        .map_err(|e| anyhow::anyhow!("the kernel command line: {e}"))?;
    // A word quoted on the line is an argument even when it reads `--`:
    // the process quotes such words again (plat/linuxu), so only the
    // separator may stay bare.
    let mut separated = false;
    for (w, quoted) in words {
        if w == "--" && quoted && !separated {
            bail!("the kernel command line has a quoted \"--\" before its separator");
        }
        separated |= w == "--" && !quoted;
        a.push(w);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_becomes_the_arguments() {
        let mut spec = super::super::tests::spec(super::super::Kind::Linuxu);
        spec.cmdline = r#"env.A="x y" -- "a b" c"#.into();
        spec.tap = Some(crate::network::Tap::for_test(
            "kilntap3",
            "172.30.3.2/24:172.30.3.1",
            "52:54:00:00:03:02",
        ));
        assert_eq!(
            args(&spec).unwrap(),
            [
                "linuxu.mem=64",
                "linuxu.tap=kilntap3",
                "linuxu.mac=52:54:00:00:03:02",
                "env.A=x y",
                "--",
                "a b",
                "c"
            ]
        );
    }
}
