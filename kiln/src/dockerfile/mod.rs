//! `rootfs: ./Dockerfile`: a root file system built from a Dockerfile
//! without a container daemon.
//!
//! Stages run in order (only those the last stage needs, through `FROM
//! STAGE` and `COPY --from`): `FROM` an image from a registry
//! ([`registry`]), an earlier stage or `scratch`; `COPY`/`ADD` from the
//! build context or another stage; `RUN` in the stage's folder through
//! `unshare` (new mount, PID, UTS and IPC namespaces; a user namespace too
//! when not run as root) and `chroot`, with `/dev`, `/proc` and the host's
//! `/etc/resolv.conf` mounted for the command and the host's network, and
//! BuildKit's cache mounts (`--mount=type=cache`) as folders the cache keeps;
//! `ENV`, `ARG`, `WORKDIR`, `SHELL`, `CMD` and `ENTRYPOINT` as Docker has
//! them. Instructions about a container's run time (`USER`, `EXPOSE`,
//! `LABEL`, ...) are named once in a note.
//!
//! Cache: a stage's result is kept under a key made of its base (the
//! image's digest or the earlier stage's key), each instruction's text,
//! the ARG values, and the contents of what COPY reads from the context,
//! so an unchanged Dockerfile builds instantly (keys are computed before
//! anything is built, and a cached last stage needs no other) and a
//! changed instruction rebuilds its stage from the base. Only the last
//! stage's result is kept: the stages it copies from hold whole
//! toolchains and are rebuilt (from the cached base image) when it
//! changes. The cache lives in Kiln's state
//! folder (`.dockerfile/`).

pub mod parse;
pub mod registry;

use anyhow::{bail, Context, Result};
use parse::{Command, Instruction, Op};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};

/// The built root file system and the command its image would run.
pub struct Built {
    pub rootfs: PathBuf,
    /// ENTRYPOINT then CMD (exec form; a shell form runs through the
    /// stage's shell).
    pub cmd: Vec<String>,
}

/// A stage's state between instructions (stored beside its folder).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    env: Vec<(String, String)>,
    workdir: String,
    shell: Vec<String>,
    cmd: Vec<String>,
    entrypoint: Vec<String>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a stage starts from.
enum Base {
    Scratch,
    Stage(usize),
    Image(registry::Image),
}

/// A needed stage before it is had: its base and key.
struct Plan {
    label: String,
    image: String,
    base: Base,
    key: String,
}

/// A finished stage: its folder and state.
#[derive(Clone)]
struct Done {
    root: PathBuf,
    state: State,
}

/// The cache folder in Kiln's state folder (beside `.volumes`).
pub fn cache_dir() -> PathBuf {
    crate::instance::state_dir().join(".dockerfile")
}

/// Builds `file` with `context` for `arch`; `say` prints progress.
pub fn build(file: &Path, context: &Path, arch: &str, say: &dyn Fn(&str)) -> Result<Built> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let instructions = parse::parse(&text).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|(l, m)| format!("{}:{l}: {m}", file.display()))
            .collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    let cache = cache_dir();
    std::fs::create_dir_all(cache.join("stages"))
        .with_context(|| format!("creating {}", cache.display()))?;

    // ARGs before the first FROM: usable in FROM lines, and as defaults
    // for a stage's own `ARG NAME`.
    let mut global_args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<(Option<String>, usize, &Instruction, Vec<&Instruction>)> = Vec::new();
    for i in &instructions {
        match &i.op {
            Op::Arg(n, d) if stages.is_empty() => {
                global_args.push((n.clone(), d.clone().unwrap_or_default()))
            }
            Op::From { name, .. } => stages.push((name.clone(), i.line, i, Vec::new())),
            _ => stages.last_mut().unwrap().3.push(i),
        }
    }
    let lookup = |vars: &[(String, String)], n: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let stage_index = |name: &str, before: usize| -> Option<usize> {
        stages[..before]
            .iter()
            .position(|s| s.0.as_deref() == Some(name))
            .or_else(|| name.parse::<usize>().ok().filter(|&n| n < before))
    };
    // The stages each stage builds from (its FROM stage, COPY --from's),
    // and which of them the last one needs.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
    for (s, stage) in stages.iter().enumerate() {
        if let Op::From { image, .. } = &stage.2.op {
            let image = parse::expand(image, &|n| lookup(&global_args, n));
            deps[s].extend(stage_index(&image.to_ascii_lowercase(), s));
        }
        for i in &stage.3 {
            if let Op::Copy { from: Some(f), .. } = &i.op {
                match stage_index(f, s) {
                    Some(b) => deps[s].push(b),
                    None if f.parse::<usize>().is_ok() => bail!(
                        "{}:{}: COPY --from={f}: no such earlier stage",
                        file.display(),
                        i.line
                    ),
                    // An image name: pulled when the COPY runs.
                    None => {}
                }
            }
        }
    }
    let mut needed = vec![false; stages.len()];
    needed[stages.len() - 1] = true;
    for s in (0..stages.len()).rev() {
        if needed[s] {
            for &d in &deps[s] {
                needed[d] = true;
            }
        }
    }

    // First the plan: every needed stage's base and key (an image's
    // digest, an earlier stage's key), without building anything.
    let n = stages.len();
    let at = |l: usize| format!("{}:{l}", file.display());
    let mut plans: Vec<Option<Plan>> = (0..n).map(|_| None).collect();
    for (s, (name, line, from, body)) in stages.iter().enumerate() {
        if !needed[s] {
            continue;
        }
        let Op::From { image, .. } = &from.op else {
            unreachable!()
        };
        let image = parse::expand(image, &|n| lookup(&global_args, n));
        let (base, base_key) = if image == "scratch" {
            (Base::Scratch, "scratch".to_string())
        } else if let Some(b) = stage_index(&image.to_ascii_lowercase(), s) {
            (
                Base::Stage(b),
                plans[b].as_ref().map(|p| p.key.clone()).unwrap_or_default(),
            )
        } else {
            let img = registry::pull(&image, arch, &cache, say)
                .map_err(|e| anyhow::anyhow!("{}: FROM {image}: {e:#}", at(*line)))?;
            let key = img.digest.clone();
            (Base::Image(img), key)
        };
        // The stage's key: its base, every instruction, the ARG values and
        // what COPY reads.
        let mut h = Sha256::new();
        h.update(base_key.as_bytes());
        h.update(arch.as_bytes());
        for (k, v) in &global_args {
            h.update(format!("\0{k}={v}").as_bytes());
        }
        for i in body {
            h.update(b"\0");
            h.update(i.text.as_bytes());
            if let Op::Copy { from, sources, .. } = &i.op {
                match from.as_deref().and_then(|f| stage_index(f, s)) {
                    Some(b) => h.update(
                        plans[b]
                            .as_ref()
                            .map(|p| p.key.as_str())
                            .unwrap_or("")
                            .as_bytes(),
                    ),
                    None if from.is_some() => {}
                    None => {
                        for src in sources {
                            hash_tree(&mut h, &context.join(src.trim_start_matches('/')));
                        }
                    }
                }
            }
        }
        let key = format!("{:x}", h.finalize());
        plans[s] = Some(Plan {
            label: name.clone().unwrap_or_else(|| s.to_string()),
            image,
            base,
            key,
        });
    }
    // Then what has to be had: the last stage, and what an uncached stage
    // builds from. A cached last stage needs nothing else.
    let cached = |p: &Plan| {
        cache
            .join("stages")
            .join(&p.key)
            .join("state.json")
            .is_file()
    };
    let mut want = vec![false; n];
    want[n - 1] = true;
    for s in (0..n).rev() {
        if want[s] && plans[s].as_ref().is_some_and(|p| !cached(p)) {
            for &d in &deps[s] {
                want[d] = true;
            }
        }
    }
    let mut done: Vec<Option<Done>> = vec![None; n];
    let mut built_here: Vec<PathBuf> = Vec::new();
    let mut noted: Vec<String> = Vec::new();
    for s in (0..n).filter(|&s| want[s]) {
        let plan = plans[s].take().expect("wanted stages are planned");
        let body = &stages[s].3;
        let dir = cache.join("stages").join(&plan.key);
        if cached(&plan) {
            let st: State = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
            say(&format!(
                "stage {} ({} instructions): cached",
                plan.label,
                body.len() + 1
            ));
            done[s] = Some(Done {
                root: dir.join("rootfs"),
                state: st,
            });
            continue;
        }
        let (base_root, mut state) = match plan.base {
            Base::Scratch => (None, State::default()),
            Base::Stage(b) => {
                let d = done[b].clone().expect("a stage's base is had first");
                (Some(d.root), d.state)
            }
            Base::Image(img) => {
                let st = State {
                    env: img.config.env.clone(),
                    workdir: img.config.workdir.clone(),
                    shell: Vec::new(),
                    cmd: img.config.cmd.clone(),
                    entrypoint: img.config.entrypoint.clone(),
                };
                (Some(img.rootfs), st)
            }
        };
        say(&format!("stage {}: FROM {}", plan.label, plan.image));
        let work = cache
            .join("stages")
            .join(format!(".{}-{}", plan.key, std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let root = work.join("rootfs");
        std::fs::create_dir_all(&root)?;
        if let Some(b) = &base_root {
            copy_tree(b, &root)?;
        }
        let mut args: Vec<(String, String)> = Vec::new();
        for i in body {
            // Values for $NAME: ENV wins over an ARG of the same name.
            let mut known = args.clone();
            known.extend(state.env.iter().cloned());
            let vars = |n: &str| lookup(&known, n);
            say(&format!("{}: {}", at(i.line), shorten(&i.text)));
            let r = step(
                i,
                &root,
                &mut state,
                &mut args,
                &global_args,
                context,
                &done,
                &|f| stage_index(f, s),
                arch,
                &cache,
                say,
                &vars,
            );
            if let Err(e) = r {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e.context(at(i.line)));
            }
            if let Op::Noted(n) = &i.op {
                if !noted.contains(n) {
                    noted.push(n.clone());
                }
            }
        }
        std::fs::write(work.join("state.json"), serde_json::to_vec(&state)?)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&work, &dir).with_context(|| format!("storing {}", dir.display()))?;
        if s != n - 1 {
            built_here.push(dir.clone());
        }
        done[s] = Some(Done {
            root: dir.join("rootfs"),
            state,
        });
    }
    // The stages the last one copied from are large (a whole toolchain
    // image) and needed again only when the last stage changes: they are
    // not kept.
    for d in built_here {
        let _ = std::fs::remove_dir_all(d);
    }
    if !noted.is_empty() {
        say(&format!(
            "{}: {} describe a container's run time; a unikernel's rootfs has no use for them",
            file.display(),
            noted.join(", ")
        ));
    }
    let last = done.pop().flatten().expect("the last stage ran");
    let mut cmd = last.state.entrypoint.clone();
    cmd.extend(last.state.cmd.iter().cloned());
    Ok(Built {
        rootfs: last.root,
        cmd,
    })
}

fn shorten(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 100 {
        format!("{}...", one.chars().take(97).collect::<String>())
    } else {
        one
    }
}

/// Kiln's own build outputs (`.kiln/` beside a Kraftfile), which are never
/// part of a build context: an app whose folder a COPY reads (the catalog's
/// `kraft run -K app/Kraftfile` layout) would otherwise change its own
/// context with every build and never hit the cache.
const OUTPUTS: &str = ".kiln";

/// Hashes a file or folder of the build context (paths, modes, contents),
/// leaving out Kiln's build outputs.
fn hash_tree(h: &mut Sha256, p: &Path) {
    use std::os::unix::fs::MetadataExt;
    h.update(p.to_string_lossy().as_bytes());
    let Ok(m) = std::fs::symlink_metadata(p) else {
        // Globs and missing files: the pattern's folder instead.
        if let Some(parent) = p
            .parent()
            .filter(|_| p.to_string_lossy().contains(['*', '?']))
        {
            hash_tree(h, parent);
        }
        return;
    };
    h.update(m.mode().to_le_bytes());
    if m.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for n in names.into_iter().filter(|n| !n.ends_with(OUTPUTS)) {
            hash_tree(h, &n);
        }
    } else if m.file_type().is_symlink() {
        h.update(
            std::fs::read_link(p)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default()
                .as_bytes(),
        );
    } else if let Ok(d) = std::fs::read(p) {
        h.update(&d);
    }
}

/// Copies `from`'s contents into `to` (`cp -a`: modes, owners, links).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let mut c = std::process::Command::new("cp");
    c.arg("-a").arg(format!("{}/.", from.display())).arg(to);
    copy_with(c, from, to)
}

/// Copies a folder of the build context into `to` as [`copy_tree`] does,
/// without Kiln's build outputs.
fn copy_context_tree(from: &Path, to: &Path) -> Result<()> {
    // pipefail: a failing first tar fails the copy (not only a short
    // archive the second one may or may not notice).
    let mut c = std::process::Command::new("bash");
    c.args(["-o", "pipefail", "-c"])
        .arg(format!(
            "tar -C \"$0\" --exclude={OUTPUTS} -cf - . | tar -C \"$1\" -xpf -"
        ))
        .arg(from)
        .arg(to);
    copy_with(c, from, to)
}

/// Runs the copy `c` of `from` into `to` (made first), with its
/// complaint as the error.
fn copy_with(mut c: std::process::Command, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let o = c
        .output()
        .with_context(|| format!("running {}", c.get_program().to_string_lossy()))?;
    if !o.status.success() {
        bail!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// `path` inside `root`, following symbolic links as the stage would see
/// them (absolute links from `root`, never out of it).
fn resolve_in(root: &Path, path: &str) -> PathBuf {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = path
        .split('/')
        .rev()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => {}
            ".." => {
                parts.pop();
            }
            _ => {
                let here: PathBuf = root.join(parts.join("/")).join(&c);
                match std::fs::read_link(&here) {
                    Ok(t) if hops < 40 => {
                        hops += 1;
                        let t = t.to_string_lossy().into_owned();
                        if t.starts_with('/') {
                            parts.clear();
                        }
                        todo.extend(
                            t.split('/')
                                .rev()
                                .filter(|s| !s.is_empty())
                                .map(str::to_string),
                        );
                    }
                    _ => parts.push(c),
                }
            }
        }
    }
    root.join(parts.join("/"))
}

/// Glob `*` and `?` in the last component of `pattern`, matched in its folder.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    fn matches(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => matches(&p[1..], s) || (!s.is_empty() && matches(p, &s[1..])),
            (Some('?'), Some(_)) => matches(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = name.chars().collect();
    let mut out: Vec<PathBuf> = std::fs::read_dir(pattern.parent().unwrap_or(Path::new(".")))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    matches(
                        &p,
                        &e.file_name().to_string_lossy().chars().collect::<Vec<_>>(),
                    )
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A context path: relative to the context, never above it.
fn in_context(context: &Path, src: &str) -> Result<PathBuf> {
    let p = Path::new(src.trim_start_matches('/'));
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!("{src}: outside the build context");
    }
    Ok(context.join(p))
}

/// Runs one instruction of a stage.
#[allow(clippy::too_many_arguments)]
fn step(
    i: &Instruction,
    root: &Path,
    state: &mut State,
    args: &mut Vec<(String, String)>,
    global_args: &[(String, String)],
    context: &Path,
    done: &[Option<Done>],
    stage_index: &dyn Fn(&str) -> Option<usize>,
    arch: &str,
    cache: &Path,
    say: &dyn Fn(&str),
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    let abs = |state: &State, p: &str| -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", state.workdir.trim_end_matches('/'))
        }
    };
    match &i.op {
        Op::From { .. } => unreachable!("FROM starts a stage"),
        Op::Noted(_) => {}
        Op::Arg(n, d) => {
            let v = match d {
                Some(d) => parse::expand(d, vars),
                None => global_args
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            };
            args.push((n.clone(), v));
        }
        Op::Env(pairs) => {
            for (k, v) in pairs {
                // Values from before the instruction, as Docker has it.
                let v = parse::expand(v, vars);
                state.env.retain(|(a, _)| a != k);
                state.env.push((k.clone(), v));
            }
        }
        Op::Workdir(w) => {
            let w = abs(state, &parse::expand(w, vars));
            std::fs::create_dir_all(resolve_in(root, &w))
                .with_context(|| format!("WORKDIR {w}"))?;
            state.workdir = w;
        }
        Op::Shell(w) => state.shell = w.clone(),
        Op::Cmd(c) => state.cmd = words(c, state),
        Op::Entrypoint(c) => {
            state.entrypoint = words(c, state);
            // As Docker: a new ENTRYPOINT drops the base image's CMD.
            state.cmd.clear();
        }
        Op::Copy {
            add,
            from,
            chmod,
            sources,
            dest,
        } => {
            let dest = abs(state, &parse::expand(dest, vars));
            let src_root: Option<PathBuf> = match from {
                None => None,
                Some(f) => Some(match stage_index(f) {
                    Some(b) => done[b]
                        .as_ref()
                        .map(|d| d.root.clone())
                        .context("the stage did not run")?,
                    None => {
                        registry::pull(f, arch, cache, say)
                            .map_err(|e| anyhow::anyhow!("COPY --from={f}: {e:#}"))?
                            .rootfs
                    }
                }),
            };
            let mut files: Vec<PathBuf> = Vec::new();
            for s in sources {
                let s = parse::expand(s, vars);
                if *add
                    && (s.starts_with("http://")
                        || s.starts_with("https://")
                        || s.starts_with("git@"))
                {
                    bail!("ADD {s}: remote sources are not supported; fetch them in a RUN, or COPY a local file");
                }
                let p = match &src_root {
                    Some(r) => resolve_in(r, &s),
                    None => in_context(context, &s)?,
                };
                let found = glob(&p);
                if found.is_empty() || !found.iter().any(|f| f.symlink_metadata().is_ok()) {
                    bail!(
                        "{} {s}: no such file{}",
                        if *add { "ADD" } else { "COPY" },
                        if src_root.is_none() {
                            format!(" in the build context {}", context.display())
                        } else {
                            format!(" in stage {}", from.as_deref().unwrap_or(""))
                        }
                    );
                }
                files.extend(found);
            }
            let to_dir = dest.ends_with('/') || files.len() > 1 || files.iter().any(|f| f.is_dir());
            let target = resolve_in(root, &dest);
            if to_dir {
                std::fs::create_dir_all(&target).with_context(|| format!("creating {dest}"))?;
            } else if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            for f in &files {
                let archive = *add
                    && f.is_file()
                    && [".tar", ".tar.gz", ".tgz"]
                        .iter()
                        .any(|x| f.to_string_lossy().ends_with(x));
                if archive {
                    std::fs::create_dir_all(&target)?;
                    let data = std::fs::read(f)?;
                    registry::unpack_layer(&data, &target)
                        .with_context(|| format!("ADD {}", f.display()))?;
                } else if f.is_dir() && src_root.is_none() {
                    copy_context_tree(f, &target)?;
                } else if f.is_dir() {
                    copy_tree(f, &target)?;
                } else {
                    let to = if to_dir || target.is_dir() {
                        target.join(f.file_name().unwrap_or_default())
                    } else {
                        target.clone()
                    };
                    let o = std::process::Command::new("cp")
                        .arg("-a")
                        .arg("--remove-destination")
                        .arg(f)
                        .arg(&to)
                        .output()?;
                    if !o.status.success() {
                        bail!(
                            "copying {}: {}",
                            f.display(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        );
                    }
                }
            }
            if let Some(mode) = chmod {
                let o = std::process::Command::new("chmod")
                    .arg("-R")
                    .arg(format!("{mode:o}"))
                    .arg(&target)
                    .output()?;
                if !o.status.success() {
                    bail!("--chmod: {}", String::from_utf8_lossy(&o.stderr).trim());
                }
            }
        }
        Op::Run(c, mounts) => run(c, mounts, root, state, args, cache)?,
    }
    Ok(())
}

/// A command's words: exec form as given, shell form through the shell.
fn words(c: &Command, state: &State) -> Vec<String> {
    match c {
        Command::Exec(w) => w.clone(),
        Command::Shell(s) => {
            let mut w = if state.shell.is_empty() {
                vec!["/bin/sh".to_string(), "-c".to_string()]
            } else {
                state.shell.clone()
            };
            w.push(s.clone());
            w
        }
    }
}

/// The helper RUN starts inside the new namespaces: mounts /dev, /proc
/// and resolv.conf into the stage's folder, then enters it and the
/// working folder and runs the command.
const RUN_HELPER: &str = r#"set -e
R="$1"; W="$2"; shift 2
CHROOT=$(command -v chroot)
mkdir -p "$R/dev" "$R/proc"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
if [ -f /etc/resolv.conf ] && [ -d "$R/etc" ]; then
  [ -e "$R/etc/resolv.conf" ] || : > "$R/etc/resolv.conf"
  mount --bind /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
fi
# Cache mounts: HOST<tab>TARGET lines.
printf '%s' "$KILN_RUN_MOUNTS" | while IFS="$(printf '\t')" read -r h t; do
  if [ -n "$h" ]; then mount --bind "$h" "$t"; fi
done
unset KILN_RUN_MOUNTS
# The host's tools were found with the host's PATH; the command gets the stage's.
export PATH="$KILN_RUN_PATH"
unset KILN_RUN_PATH
if [ -x "$R/bin/sh" ]; then
  exec "$CHROOT" "$R" /bin/sh -c 'cd "$0" && exec "$@"' "$W" "$@"
fi
exec "$CHROOT" "$R" "$@"
"#;

fn run(
    c: &Command,
    mounts: &[parse::CacheMount],
    root: &Path,
    state: &State,
    args: &[(String, String)],
    cache: &Path,
) -> Result<()> {
    let argv = words(c, state);
    // Cache mounts: a folder per id in the cache, bound at the target
    // (resolved inside the stage, so a link cannot lead out of it).
    let mut binds = String::new();
    for m in mounts {
        let mut h = Sha256::new();
        h.update(m.id.as_bytes());
        let host = cache.join("mounts").join(format!("{:x}", h.finalize()));
        let target = resolve_in(root, &m.target);
        std::fs::create_dir_all(&host)
            .and_then(|()| std::fs::create_dir_all(&target))
            .with_context(|| format!("cache mount {}", m.target))?;
        binds.push_str(&format!("{}\t{}\n", host.display(), target.display()));
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        "--uts",
        "--ipc",
        "--propagation",
        "private",
    ]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.arg("--map-root-user");
    }
    let workdir = if state.workdir.is_empty() {
        "/".to_string()
    } else {
        state.workdir.clone()
    };
    let had_resolv = root.join("etc/resolv.conf").exists();
    cmd.args(["--", "/bin/sh", "-c", RUN_HELPER, "kiln-run"])
        .arg(root)
        .arg(&workdir)
        .args(&argv);
    cmd.env_clear();
    // ARG values are in the environment of RUN, then ENV's (which win).
    for (k, v) in args {
        cmd.env(k, v);
    }
    for (k, v) in &state.env {
        cmd.env(k, v);
    }
    let stage_path = state
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    // As Docker's RUN: root's HOME unless the stage sets one.
    if !state.env.iter().any(|(k, _)| k == "HOME") {
        cmd.env("HOME", "/root");
    }
    cmd.env("KILN_RUN_PATH", stage_path);
    cmd.env("KILN_RUN_MOUNTS", &binds);
    cmd.env("PATH", DEFAULT_PATH);
    let o = cmd.output().context("running unshare (util-linux)")?;
    if !had_resolv {
        // The mount point made for the host's resolv.conf.
        let p = root.join("etc/resolv.conf");
        if std::fs::metadata(&p).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(p);
        }
    }
    if !o.status.success() {
        let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&o.stderr));
        let lines: Vec<&str> = out.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n  ");
        let code = o
            .status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("exit code {c}"));
        bail!("RUN failed with {code}:\n  {tail}");
    }
    Ok(())
}
