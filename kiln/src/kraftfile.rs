//! The Kraftfile: Unikraft's app description (spec v0.5, v0.6 and v0.7), as
//! Kiln reads it. v0.7 (the `unikraft` CLI's) adds a long `rootfs:` form
//! (`source: {path, type, dockerfile}`, `format`), `roms:`, and splits a
//! string `cmd` as a shell would; Kiln reads all three.
//!
//! Supported: `spec`, `name`, `targets`, `cmd`, `env`, `kconfig`, `rootfs`,
//! and Kiln's `ports` and `programs`.
//! Unikraft's own fields are accepted and mapped where Kiln has a meaning
//! for them (see [`unikraft_fields`]): `libraries:` names and the
//! `CONFIG_LIB*` symbols of `unikraft:`/`libraries:` `kconfig:` blocks become
//! Kiln's libraries; the ELF-loader template and runtimes make the app
//! Kiln's ELF loader; everything else is listed once in one note. Kiln's own addition: `app`, the folder of the
//! app's Rust crate relative to the Kraftfile (default: the Kraftfile's own
//! folder), which lets the repository's root Kraftfile name the default app.
//! Anything else is an error that names the file, line and field.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A scalar in `env` or `kconfig` maps: YAML gives strings, numbers or
/// booleans; Kiln keeps the text (booleans spelled `y`/`n` as in Kconfig).
#[derive(Debug, Clone)]
pub struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<Scalar, E> {
                Ok(Scalar(if b { "y" } else { "n" }.into()))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Scalar, E> {
                Ok(Scalar(s.into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `KEY: value` map or `["KEY=value", ...]` list (both allowed by the spec).
/// Deserialized by hand: serde's untagged enums buffer their input, which
/// loses the YAML scalar types and locations.
#[derive(Debug, Clone)]
enum Pairs {
    Map(Vec<(String, Scalar)>),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of KEY: value or a list of \"KEY=value\" strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Scalar>()? {
                    v.push(e);
                }
                Ok(Pairs::Map(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = s.next_element::<String>()? {
                    v.push(e);
                }
                Ok(Pairs::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or a list of strings (`cmd`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Words {
    One(String),
    Many(Vec<String>),
}

// Locations do not survive inside untagged enums (serde buffers their
// content), so `Spanned` wraps the enums from outside.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawTarget {
    Short(String),
    Long(LongTarget),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongTarget {
    #[serde(alias = "platform")]
    plat: String,
    #[serde(alias = "architecture")]
    arch: String,
    #[serde(default)]
    kconfig: Option<Pairs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(alias = "specification")]
    spec: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    app: Option<String>,
    #[serde(default)]
    targets: Vec<Spanned<RawTarget>>,
    cmd: Option<Words>,
    env: Option<Spanned<Pairs>>,
    kconfig: Option<Spanned<Pairs>>,
    rootfs: Option<Spanned<RawRootfs>>,
    /// v0.7: more read-only file systems beside the rootfs.
    roms: Option<Spanned<serde_json::Value>>,
    /// Image labels (metadata only here).
    labels: Option<serde_json::Value>,
    /// Unikraft's output folder: Kiln writes to `.kiln/`.
    outdir: Option<Spanned<String>>,
    /// Kiln extension: host programs copied into the rootfs at build time,
    /// with their libraries and loader (as `kiln rootfs add` does).
    programs: Option<Spanned<Vec<String>>>,
    /// Kiln extension: default `-p` port forwards for `kiln run`.
    ports: Option<Spanned<Vec<String>>>,
    unikraft: Option<serde_json::Value>,
    runtime: Option<serde_json::Value>,
    libraries: Option<serde_json::Value>,
    template: Option<serde_json::Value>,
    volumes: Option<Spanned<Vec<Spanned<RawVolume>>>>,
    /// Kiln extension: named boot-command sets (`kiln run --boot NAME`).
    boot: Option<std::collections::BTreeMap<String, RawBoot>>,
}

/// A rootfs built from a Dockerfile.
#[derive(Clone, Debug)]
pub struct DockerfileRootfs {
    pub file: PathBuf,
    /// The build context (COPY's sources are read from there).
    pub context: PathBuf,
    /// The Kraftfile's `rootfs:` line.
    pub line: u64,
}

/// `rootfs:`: a path (v0.5-v0.7), or v0.7's long form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawRootfs {
    Short(String),
    Long(serde_json::Value),
}

/// A `boot:` entry: the command line and environment of one boot set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    cmd: Option<Words>,
    env: Option<Pairs>,
}

/// A named boot-command set (the Kraftfile's `boot:`, after OSv's
/// `config_set`): its own command line (replacing `cmd` when given) and
/// environment (added over `env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSet {
    pub name: String,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub line: u64,
}

/// A `volumes:` entry: `SOURCE:DESTINATION[:ro]`, or the long form.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawVolume {
    Short(String),
    Long(LongVolume),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongVolume {
    source: String,
    destination: String,
    driver: Option<String>,
    #[serde(alias = "readOnly", alias = "readonly", default)]
    read_only: bool,
}

/// A volume the Kraftfile names; `kiln run` resolves the source (an image
/// file relative to the Kraftfile, or a named volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: String,
    pub destination: String,
    pub driver: Option<String>,
    pub read_only: bool,
    pub line: u64,
}

/// A build target: platform and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The kernel's platform (`qemu`, `raspi`, `raspi4`).
    pub plat: String,
    pub arch: String,
    /// The VMM a target names instead of QEMU (`fc/x86_64` and
    /// `firecracker/x86_64`: "firecracker"; `cloud-hypervisor/x86_64`:
    /// "cloud-hypervisor"): the same qemu image, booted there.
    pub vmm: Option<String>,
    /// Target-specific `kconfig:` entries, with their lines.
    pub kconfig: Vec<(String, String, u64)>,
    /// Line of the entry in the Kraftfile, for messages.
    pub line: u64,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.vmm.as_deref().unwrap_or(&self.plat),
            self.arch
        )
    }
}

impl Target {
    /// The kernel layout this target needs beyond its platform's, when a
    /// VMM loads the platform's image elsewhere: Firecracker on arm64 puts
    /// RAM at 2 GiB and its devices below (QEMU virt: RAM at 1 GiB), so
    /// `fc/arm64` is its own image, linked by
    /// `plat/qemu/linker-arm64-firecracker.ld`. On x86_64 one image boots
    /// on every VMM.
    pub fn layout(&self) -> Option<&'static str> {
        match (self.arch.as_str(), self.vmm.as_deref()) {
            ("arm64", Some("firecracker")) => Some("firecracker"),
            _ => None,
        }
    }

    /// This target booted on `vmm` (`--vmm`): the target itself, or, when
    /// the VMM needs its own layout of a qemu target's image, that target
    /// with the VMM named.
    pub fn for_vmm(&self, vmm: &str) -> Target {
        let t = Target {
            vmm: Some(vmm.to_string()),
            ..self.clone()
        };
        if self.vmm.is_none() && self.plat == "qemu" && t.layout().is_some() {
            t
        } else {
            self.clone()
        }
    }

    /// `plat-arch` (and `-layout`): how the build's files are named.
    pub fn build_name(&self) -> String {
        match self.layout() {
            Some(l) => format!("{}-{}-{l}", self.plat, self.arch),
            None => format!("{}-{}", self.plat, self.arch),
        }
    }
}

/// The VMM a target's platform names, when it is not QEMU: Unikraft's
/// `fc` (and `firecracker`), and cloud-hypervisor by its usual names.
pub fn vmm_of_plat(plat: &str) -> Option<&'static str> {
    match plat {
        "fc" | "firecracker" => Some("firecracker"),
        "cloud-hypervisor" | "cloudhypervisor" | "clh" | "chv" => Some("cloud-hypervisor"),
        _ => None,
    }
}

/// Platforms and architectures Kiln can build today.
pub const SUPPORTED: &[(&str, &str)] = &[
    ("qemu", "x86_64"),
    ("qemu", "arm64"),
    ("raspi", "arm64"),
    ("raspi4", "arm64"),
    ("linuxu", "x86_64"),
];

/// Accepted spellings of architectures, mapped to Kiln's names.
fn canonical_arch(a: &str) -> &str {
    match a {
        "x86_64" | "amd64" | "x86-64" => "x86_64",
        "arm64" | "aarch64" => "arm64",
        other => other,
    }
}

/// A parsed and checked Kraftfile.
#[derive(Debug, Clone)]
pub struct Kraftfile {
    /// Where it was read from.
    pub path: PathBuf,
    pub name: String,
    /// Folder of the app crate.
    pub app_dir: PathBuf,
    pub targets: Vec<Target>,
    pub cmd: Vec<String>,
    /// Default port forwards (`HOST:GUEST[/proto]`) for `kiln run`, with the line.
    pub ports: Vec<(String, u64)>,
    pub env: Vec<(String, String)>,
    /// `kconfig:` entries with the Kraftfile line of each.
    pub kconfig: Vec<(String, String, u64)>,
    pub rootfs: Option<PathBuf>,
    /// `rootfs:` names a Dockerfile: built into a folder (dockerfile.rs)
    /// before the kernel is, which then becomes `rootfs`.
    pub dockerfile: Option<DockerfileRootfs>,
    /// A `runtime:` that names a program (nginx, redis, ...): its full and
    /// short names.
    pub runtime_program: Option<(String, String)>,
    /// The Kraftfile has Unikraft's `unikraft:` or `libraries:` (an app
    /// built from Unikraft's sources, unless a runtime or a Kiln app
    /// crate stands for it).
    pub unikraft_sources: bool,
    /// Host programs packed into the initrd with their libraries, and the
    /// Kraftfile line that names them.
    pub programs: Vec<PathBuf>,
    pub programs_line: u64,
    /// `volumes:`, unresolved.
    pub volumes: Vec<Volume>,
    /// Things worth telling the user (ignored fields and why).
    pub notes: Vec<String>,
    /// A Kiln app the Kraftfile's `template:` or `runtime:` stands for
    /// (`elfloader`), used when it gives no `app:`.
    pub template_app: Option<&'static str>,
    /// Whether `app:` was given.
    pub app_given: bool,
    /// Named boot-command sets; `cmd` and `env` are the default one.
    pub boot: Vec<BootSet>,
}

/// A message located in a file, printed as `file:line: message`.
fn at(path: &Path, line: u64, msg: impl fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}:{}: {}", path.display(), line, msg)
}

/// The line, at or after `from`, on which `needle` first appears.
fn line_of(text: &str, from: u64, needle: &str) -> u64 {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1) as usize)
        .find(|(_, l)| l.contains(needle))
        .map_or(from, |(i, _)| i as u64 + 1)
}

/// The line of a top-level `key:` (1 when not found).
fn key_line(text: &str, key: &str) -> u64 {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map_or(1, |i| i as u64 + 1)
}

/// Problems found in a Kraftfile, each with its file and line: all are
/// reported together.
struct Problems<'a> {
    path: &'a Path,
    list: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, line: u64, msg: impl fmt::Display) {
        self.list
            .push(format!("{}:{}: {}", self.path.display(), line, msg));
    }

    fn into_result<T>(self, value: T) -> Result<T> {
        match self.list.len() {
            0 => Ok(value),
            1 => Err(anyhow::anyhow!("{}", self.list[0])),
            n => Err(anyhow::anyhow!(
                "{n} problems in {}:\n{}",
                self.path.display(),
                self.list.join("\n")
            )),
        }
    }
}

/// Turns a `KEY: value` map or a `KEY=value` list into pairs; `line` is where
/// the list starts, `text` the whole file (to point at a bad entry).
fn pairs(
    problems: &mut Problems,
    text: &str,
    what: &str,
    line: u64,
    p: Option<Pairs>,
) -> Vec<(String, String)> {
    match p {
        None => Vec::new(),
        Some(Pairs::Map(m)) => m.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        Some(Pairs::List(l)) => l
            .into_iter()
            .filter_map(|s| match s.split_once('=') {
                Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
                _ => {
                    problems.add(
                        line_of(text, line, &s),
                        format!("{what} entry '{s}' is not KEY=VALUE"),
                    );
                    None
                }
            })
            .collect(),
    }
}

fn spanned_pairs(
    problems: &mut Problems,
    text: &str,
    what: &str,
    p: Option<Spanned<Pairs>>,
) -> Vec<(String, String)> {
    match p {
        None => Vec::new(),
        Some(s) => pairs(problems, text, what, s.referenced.line(), Some(s.value)),
    }
}

/// Reads `dir/Kraftfile` (also `kraft.yaml`/`kraft.yml`, as kraft does).
pub fn load(dir: &Path) -> Result<Kraftfile> {
    let names = ["Kraftfile", "kraft.yaml", "kraft.yml"];
    let Some(path) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) else {
        if !dir.is_dir() {
            bail!("{}: no such directory", dir.display());
        }
        bail!(
            "{}: no Kraftfile here (looked for {}); give the app's folder, e.g. `kiln build apps/helloworld`",
            dir.display(),
            names.join(", ")
        );
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse(&path, &text)
}

/// Reads the Kraftfile `file` for the app folder `dir` (kraft's `-K`):
/// its relative paths (rootfs, app, volumes) are relative to `dir`.
pub fn load_file(file: &Path, dir: &Path) -> Result<Kraftfile> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    parse_in(file, &text, dir)
}

/// Parses Kraftfile text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Kraftfile> {
    parse_in(path, text, path.parent().unwrap_or(Path::new(".")))
}

/// Parses Kraftfile text read from `path`, its relative paths taken from `dir`.
fn parse_in(path: &Path, text: &str, dir: &Path) -> Result<Kraftfile> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(at(path, 1, "the Kraftfile is empty: it needs at least `spec`, `name` and `targets` (or a `runtime`)"));
    }
    // A key given twice (three of Unikraft's catalog Kraftfiles do it):
    // the last one counts, as in most YAML readers, and a note says so.
    // (A struct literal rather than 0.0.29's `options!` macro: the fuzz
    // crate's lock holds an older serde-saphyr.)
    #[allow(deprecated)]
    let options = serde_saphyr::Options {
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::LastWins,
        ..Default::default()
    };
    let raw: Raw = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        // The library's message carries its own location suffix; keep the text only.
        let msg = e.to_string();
        let msg = msg.lines().next().unwrap_or("");
        let msg = msg
            .split_once("column ")
            .and_then(|(_, r)| r.split_once(": "))
            .map_or(msg, |(_, m)| m);
        at(path, line, format!("malformed Kraftfile: {msg}"))
    })?;
    let mut notes = Vec::new();
    let mut problems = Problems {
        path,
        list: Vec::new(),
    };
    for (key, first, again) in duplicate_keys(text) {
        notes.push(format!(
            "{}:{again}: '{key}' is given again (first on line {first}); the last one counts",
            path.display()
        ));
    }

    if let Some(spec) = &raw.spec {
        let v = spec.value.trim_start_matches('v');
        if !matches!(v, "0.5" | "0.6" | "0.7") {
            problems.add(
                spec.referenced.line(),
                format!(
                    "unsupported spec '{}': Kiln reads Kraftfile spec v0.5, v0.6 and v0.7",
                    spec.value
                ),
            );
        }
    }
    let mapped = unikraft_fields(&mut problems, text, &raw, &mut notes);
    let template_app = mapped.1;

    let name = match raw.name {
        Some(n) if valid_name(&n.value) => n.value,
        Some(n) => {
            problems.add(
                n.referenced.line(),
                format!(
                    "name '{}' must be letters, digits, '.', '+', '-' or '_'",
                    n.value
                ),
            );
            String::new()
        }
        // As Unikraft's tools do: the folder's name.
        None => match dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| valid_name(n))
        {
            Some(n) => {
                notes.push(format!(
                    "{}: no 'name': using the folder's, {n}",
                    path.display()
                ));
                n.to_string()
            }
            None => {
                problems.add(1, "missing 'name'");
                String::new()
            }
        },
    };

    let mut targets = Vec::new();
    let listed_targets = raw.targets.len();
    // Where the previous target was: an entry's own line is searched from
    // there (locations inside a list of untagged values are the list's).
    let mut from = key_line(text, "targets");
    for t in raw.targets {
        let mut line = t.referenced.line().max(from);
        if let RawTarget::Short(s) = &t.value {
            line = line_of(text, line, s);
            from = line + 1;
        }
        let (plat, arch, kconfig) = match t.value {
            RawTarget::Short(s) => match s.split_once('/') {
                Some((p, a)) => (p.to_string(), a.to_string(), Vec::new()),
                None => {
                    problems.add(
                        line,
                        format!("target '{s}' must be PLAT/ARCH, e.g. qemu/x86_64"),
                    );
                    continue;
                }
            },
            RawTarget::Long(l) => {
                let kc = pairs(&mut problems, text, "kconfig", line, l.kconfig);
                (l.plat, l.arch, kc)
            }
        };
        let kconfig = kconfig
            .into_iter()
            .map(|(k, v)| {
                let l = line_of(text, line, &k);
                (k, v, l)
            })
            .collect();
        let vmm = vmm_of_plat(&plat).map(str::to_string);
        targets.push(Target {
            plat: if vmm.is_some() { "qemu".into() } else { plat },
            vmm,
            arch: canonical_arch(&arch).to_string(),
            kconfig,
            line,
        });
    }
    if listed_targets == 0 && template_app.is_some() {
        // A runtime or template Kraftfile (Unikraft's catalog) leaves the
        // target to the command line; Kiln's ELF loader builds for both.
        for arch in ["x86_64", "arm64"] {
            targets.push(Target {
                plat: "qemu".into(),
                vmm: None,
                arch: arch.into(),
                kconfig: Vec::new(),
                line: 1,
            });
        }
        notes.push(format!("{}: no 'targets': qemu/x86_64 (and qemu/arm64 with --arch arm64), as the runtime provides", path.display()));
    } else if listed_targets == 0 {
        problems.add(1, "no 'targets': add one, e.g.\ntargets:\n  - qemu/x86_64");
    }

    // Unikraft hands a runtime's `cmd` to the program through the kernel
    // command line, joined by blanks, so an item with blanks in it
    // (`["/usr/bin/php /usr/src/server.php"]`) is several arguments
    // there; the same here. Kiln's own apps get their items as written.
    let runtime_args = raw.runtime.is_some();
    let cmd = match raw.cmd {
        None => Vec::new(),
        Some(Words::Many(v)) if runtime_args => v
            .iter()
            .flat_map(|s| s.split_whitespace())
            .map(String::from)
            .collect(),
        Some(Words::Many(v)) => v,
        Some(Words::One(s)) => s.split_whitespace().map(String::from).collect(),
    };
    let env = spanned_pairs(&mut problems, text, "env", raw.env);
    let kconfig_line = key_line(text, "kconfig");
    // The symbols Unikraft's fields map to come first: the Kraftfile's own
    // `kconfig:` has the last word.
    let kconfig = mapped
        .0
        .into_iter()
        .chain(
            spanned_pairs(&mut problems, text, "kconfig", raw.kconfig)
                .into_iter()
                .map(|(k, v)| {
                    let line = line_of(text, kconfig_line, &k);
                    (k, v, line)
                }),
        )
        .collect();
    let app_given = raw.app.is_some();
    let app_dir = match raw.app {
        Some(a) => dir.join(a),
        None => dir.to_path_buf(),
    };
    let mut dockerfile_rootfs = None;
    let rootfs = match raw.rootfs {
        None => None,
        Some(r) => {
            // A long form's location is its first inner line: name `rootfs:`'s.
            let line = match r.value {
                RawRootfs::Short(_) => r.referenced.line(),
                RawRootfs::Long(_) => key_line(text, "rootfs"),
            };
            // v0.7's long form: `source:` a path (with a `type:` beside it,
            // the older way) or `{path, type, dockerfile}`, and `format:`.
            let (value, kind, dockerfile) = match r.value {
                RawRootfs::Short(v) => (v, None, None),
                RawRootfs::Long(v) => {
                    let src = &v["source"];
                    let source = src
                        .as_str()
                        .or_else(|| src["path"].as_str())
                        .unwrap_or("")
                        .to_string();
                    let kind = src["type"]
                        .as_str()
                        .or_else(|| v["type"].as_str())
                        .map(str::to_string);
                    let dockerfile = src["dockerfile"].as_str().map(str::to_string);
                    match v["format"].as_str() {
                        None | Some("cpio") => {}
                        Some(f) => notes.push(format!("{}:{line}: rootfs format '{f}': Kiln packs the rootfs as cpio (embedded in the kernel)", path.display())),
                    }
                    if source.is_empty() {
                        problems.add(line, "rootfs: the long form needs `source:` (a path, or `{path: ..., type: ...}`)");
                    }
                    (source, kind, dockerfile)
                }
            };
            // Joined lexically, so `./rootfs` reads as `DIR/rootfs` in messages.
            let p: PathBuf = dir.join(&value).components().collect();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let is_dockerfile = dockerfile.is_some()
                || kind.as_deref() == Some("dockerfile")
                || name == "Dockerfile"
                || name == "Containerfile"
                || name.ends_with(".Dockerfile")
                || name.ends_with(".dockerfile");
            if is_dockerfile {
                // The Dockerfile named in the long form (beside `path:`, the
                // build context), or the short form's file, whose folder is
                // the context.
                let (file, context) = match &dockerfile {
                    Some(d) => (dir.join(d).components().collect::<PathBuf>(), p.clone()),
                    None => (
                        p.clone(),
                        p.parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| dir.to_path_buf()),
                    ),
                };
                if !file.is_file() {
                    problems.add(
                        line,
                        format!(
                            "rootfs '{}': no such Dockerfile",
                            dockerfile.as_deref().unwrap_or(&value)
                        ),
                    );
                } else if !context.is_dir() {
                    problems.add(
                        line,
                        format!("rootfs: the build context '{value}' is not a folder"),
                    );
                }
                dockerfile_rootfs = Some(DockerfileRootfs {
                    file,
                    context,
                    line,
                });
            } else if let Some(k) = kind
                .as_deref()
                .filter(|k| !matches!(*k, "dir" | "file" | "cpio"))
            {
                problems.add(line, format!("rootfs type '{k}': Kiln reads a folder or a cpio archive (types dir, file, cpio)"));
            } else if !value.is_empty() && !p.exists() {
                problems.add(line, format!("rootfs '{value}' does not exist"));
            }
            // A Dockerfile's rootfs is the folder its build makes.
            dockerfile_rootfs.is_none().then_some(p)
        }
    };
    if let Some(roms) = raw
        .roms
        .filter(|r| r.value.as_array().is_none_or(|a| !a.is_empty()))
    {
        problems.add(roms.referenced.line(), "roms: extra read-only file systems are not supported yet; put their files in the rootfs, or mount them as volumes (`volumes:`)");
    }
    if let Some(o) = raw.outdir {
        notes.push(format!(
            "{}:{}: outdir '{}' is not used: Kiln writes its builds to .kiln/ beside the Kraftfile",
            path.display(),
            o.referenced.line(),
            o.value
        ));
    }
    let _ = raw.labels;
    let (programs, programs_line) = match raw.programs {
        None => (Vec::new(), 0),
        Some(p) => {
            let line = p.referenced.line();
            let mut v = Vec::new();
            for prog in p.value {
                let pb = PathBuf::from(&prog);
                if !pb.is_absolute() {
                    problems.add(
                        line_of(text, line, &prog),
                        format!("programs: '{prog}' is not an absolute path on this machine"),
                    );
                } else if !pb.is_file() {
                    problems.add(
                        line_of(text, line, &prog),
                        format!("programs: {prog}: no such program on this machine"),
                    );
                }
                v.push(pb);
            }
            if rootfs.as_ref().is_some_and(|r| r.is_file()) {
                problems.add(line, "programs: the rootfs is an archive; programs can only be added to a rootfs folder");
            }
            (v, line)
        }
    };
    let ports = match raw.ports {
        None => Vec::new(),
        Some(p) => {
            let line = p.referenced.line();
            p.value.into_iter().map(|v| (v, line)).collect()
        }
    };
    let mut volumes = Vec::new();
    for v in raw.volumes.map(|v| v.value).unwrap_or_default() {
        let line = v.referenced.line();
        volumes.push(match v.value {
            RawVolume::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, destination, read_only) = match parts[..] {
                    [a, b] => (a, b, false),
                    [a, b, "ro"] => (a, b, true),
                    [a, b, "rw"] => (a, b, false),
                    _ => {
                        problems.add(
                            line,
                            format!("volumes: '{s}': expected SOURCE:DESTINATION[:ro]"),
                        );
                        continue;
                    }
                };
                Volume {
                    source: source.into(),
                    destination: destination.into(),
                    driver: None,
                    read_only,
                    line,
                }
            }
            RawVolume::Long(l) => Volume {
                source: l.source,
                destination: l.destination,
                driver: l.driver,
                read_only: l.read_only,
                line,
            },
        });
    }
    let boot_line = key_line(text, "boot");
    let mut boot = Vec::new();
    for (name, b) in raw.boot.unwrap_or_default() {
        let line = line_of(text, boot_line, &format!("{name}:"));
        if name == "default" || name == "help" || !valid_name(&name) {
            problems.add(line, format!("boot: '{name}' cannot name a set (`default` is the top-level cmd and env; `help` lists the sets; use letters, digits, '.', '-', '_')"));
            continue;
        }
        let cmd = b.cmd.map(|w| match w {
            Words::Many(v) => v,
            Words::One(s) => s.split_whitespace().map(String::from).collect(),
        });
        let env = pairs(&mut problems, text, "env", line, b.env);
        boot.push(BootSet {
            name,
            cmd,
            env,
            line,
        });
    }
    let runtime_program = raw
        .runtime
        .as_ref()
        .map(runtime_names)
        .filter(|(_, s)| is_program_runtime(s))
        .map(|(n, s)| (n.to_string(), s.to_string()));
    let mut programs = programs;
    if dockerfile_rootfs.is_none() {
        match runtime_brings(
            runtime_program.as_ref(),
            rootfs.as_deref(),
            &cmd,
            &mut programs,
        ) {
            Ok(Some(note)) => notes.push(format!(
                "{}:{}: {note}",
                path.display(),
                key_line(text, "runtime")
            )),
            Ok(None) => {}
            Err(e) => problems.add(key_line(text, "cmd"), e),
        }
    }
    problems.into_result(Kraftfile {
        path: path.to_path_buf(),
        name,
        app_dir,
        targets,
        cmd,
        ports,
        env,
        kconfig,
        rootfs,
        dockerfile: dockerfile_rootfs,
        runtime_program,
        unikraft_sources: raw.unikraft.is_some() || raw.libraries.is_some(),
        programs,
        programs_line,
        volumes,
        notes,
        template_app,
        app_given,
        boot,
    })
}

/// Top-level keys given more than once: (key, first line, later line).
fn duplicate_keys(text: &str) -> Vec<(String, u64, u64)> {
    let mut seen: Vec<(&str, u64)> = Vec::new();
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.starts_with([' ', '\t', '#', '-']) || l.starts_with("---") {
            continue;
        }
        let Some((key, _)) = l.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || key.contains(' ') {
            continue;
        }
        match seen.iter().find(|(k, _)| *k == key) {
            Some(&(_, first)) => out.push((key.to_string(), first, i as u64 + 1)),
            None => seen.push((key, i as u64 + 1)),
        }
    }
    out
}

/// Names as Unikraft allows them (`nginx1.25`, `helloworld-rust1.75`).
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '+')
}

/// The Kiln library (Kconfig symbol) a Unikraft library stands for:
/// `Some(Some(sym))`, `Some(None)` when Kiln needs nothing for it (its core
/// does that job), None when Kiln has no equivalent.
fn kiln_library(lib: &str) -> Option<Option<&'static str>> {
    let lib = lib.trim_start_matches("lib").trim_start_matches('-');
    Some(match lib {
        "lwip" | "uknetdev" => Some("LIBNET"),
        "vfscore" | "ukvfs" => Some("LIBVFS"),
        "ramfs" | "ukcpio" | "cpio" => Some("LIBRAMFS"),
        "devfs" => Some("LIBDEVFS"),
        "9pfs" | "uk9p" => Some("LIB9PFS"),
        "random" | "ukrandom" => Some("LIBRANDOM"),
        "ukblkdev" | "virtio-blk" => Some("LIBBLK"),
        "elf" | "ukelf" => Some("LIBELF"),
        "musl" | "newlib" | "nolibc" | "ukalloc" | "ukallocbbuddy" | "ukallocpool" | "ukboot"
        | "ukdebug" | "uksched" | "ukschedcoop" | "uklock" | "ukmpi" | "ukbus" | "uktime"
        | "uksglist" | "uksignal" | "ukstore" | "syscall_shim" | "ukswrand" => None,
        l if l.starts_with("posix-") || l.starts_with("posix_") => None,
        _ => return None,
    })
}

/// Maps Unikraft's fields: `libraries:` (names, and their `kconfig:`
/// blocks), `unikraft:`'s `kconfig:`, `template:` and `runtime:`. Returns the
/// Kconfig entries they mean and the Kiln app the template or runtime stands
/// for; what has no Kiln meaning goes into one note.
#[allow(clippy::type_complexity)]
/// A program's runtime (`redis:7.2`) stands for Unikraft's prebuilt image
/// of that program, out of Kiln's reach; Kiln runs the program on its ELF
/// loader instead. When `cmd` names a program the rootfs folder lacks,
/// this machine's copy at the same path is packed (as `programs:` does):
/// the note that says so, or the error when there is none.
pub fn runtime_brings(
    runtime: Option<&(String, String)>,
    rootfs: Option<&Path>,
    cmd: &[String],
    programs: &mut Vec<PathBuf>,
) -> std::result::Result<Option<String>, String> {
    let (Some((name, short)), Some(root), Some(prog)) = (
        runtime,
        rootfs.filter(|r| r.is_dir()),
        cmd.first().filter(|c| c.starts_with('/')),
    ) else {
        return Ok(None);
    };
    if root
        .join(prog.trim_start_matches('/'))
        .symlink_metadata()
        .is_ok()
        || programs.iter().any(|p| p == Path::new(prog))
    {
        return Ok(None);
    }
    if Path::new(prog).is_file() {
        programs.push(PathBuf::from(prog));
        return Ok(Some(format!("runtime '{name}': {prog} comes from this machine, with its libraries (Unikraft's prebuilt {short} image is out of Kiln's reach)")));
    }
    Err(format!("cmd runs {prog}, which neither the rootfs nor this machine has: runtime '{name}' means Unikraft's prebuilt {short} image, which Kiln cannot fetch; install the program here (`programs: [{prog}]` then packs it) or build the rootfs from a Dockerfile"))
}

/// Whether a runtime's short name is a program's (nginx, redis, ...)
/// rather than the ELF loader itself (base, elfloader).
fn is_program_runtime(short: &str) -> bool {
    !(short.contains("elfloader") || short == "base" || short.is_empty())
}

/// A `runtime:` or `template:` value's full name and its short one
/// (`unikraft.org/nginx:1.15` -> nginx).
fn runtime_names(v: &serde_json::Value) -> (&str, &str) {
    let name = v
        .as_str()
        .or_else(|| v.get("name").and_then(|n| n.as_str()))
        .or_else(|| v.get("source").and_then(|n| n.as_str()))
        .unwrap_or("");
    let short = name
        .rsplit('/')
        .next()
        .unwrap_or(name)
        .split(':')
        .next()
        .unwrap_or("");
    (name, short)
}

fn unikraft_fields(
    problems: &mut Problems,
    text: &str,
    raw: &Raw,
    notes: &mut Vec<String>,
) -> (Vec<(String, String, u64)>, Option<&'static str>) {
    let path = problems.path;
    let mut kconfig = Vec::new();
    let mut left: Vec<String> = Vec::new();
    let symbols = |block: &serde_json::Value,
                   line: u64,
                   kconfig: &mut Vec<(String, String, u64)>,
                   left: &mut Vec<String>| {
        let entries: Vec<(String, String)> = match block {
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|e| e.as_str())
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            _ => Vec::new(),
        };
        for (k, v) in entries {
            let lib = k
                .trim_start_matches("CONFIG_")
                .strip_prefix("LIB")
                .map(str::to_ascii_lowercase);
            match lib.as_deref().and_then(kiln_library) {
                Some(Some(sym)) if v == "y" => kconfig.push((
                    format!("CONFIG_{sym}"),
                    "y".to_string(),
                    line_of(text, line, &k),
                )),
                Some(None) if v == "y" => {}
                _ => left.push(k),
            }
        }
    };
    if let Some(libs) = &raw.libraries {
        let line = key_line(text, "libraries");
        if let serde_json::Value::Object(m) = libs {
            for (lib, spec) in m {
                match kiln_library(lib) {
                    Some(Some(sym)) => kconfig.push((
                        format!("CONFIG_{sym}"),
                        "y".to_string(),
                        line_of(text, line, lib),
                    )),
                    Some(None) => {}
                    None => left.push(format!("library {lib}")),
                }
                if let Some(block) = spec.get("kconfig") {
                    symbols(block, line, &mut kconfig, &mut left);
                }
            }
        }
    }
    if let Some(block) = raw.unikraft.as_ref().and_then(|u| u.get("kconfig")) {
        symbols(block, key_line(text, "unikraft"), &mut kconfig, &mut left);
    }
    let mut app = None;
    for (field, val) in [("template", &raw.template), ("runtime", &raw.runtime)] {
        let Some(v) = val else { continue };
        let (name, short) = runtime_names(v);
        let line = key_line(text, field);
        if field == "template" && !short.contains("elfloader") {
            problems.add(line, format!("template '{name}': Kiln knows only the ELF loader's (app-elfloader), which its apps/elfloader stands for"));
            continue;
        }
        let program = is_program_runtime(short);
        // A Dockerfile may give the command (CMD); a folder or archive
        // cannot, and then only Unikraft's prebuilt image knew it.
        let dockerfile = match raw.rootfs.as_ref().map(|r| &r.value) {
            Some(RawRootfs::Short(v)) => v.to_ascii_lowercase().contains("dockerfile"),
            Some(RawRootfs::Long(_)) => true,
            None => false,
        };
        if field == "runtime" && program && raw.cmd.is_none() && !dockerfile {
            problems.add(line, format!("runtime '{name}': Unikraft's prebuilt {short} image brings the program and its command, and Kiln cannot fetch it; put {short} in the rootfs (a Dockerfile, or `programs:`) and give `cmd:` (e.g. cmd: [\"/usr/bin/{short}\", ...])"));
            continue;
        }
        app = Some("elfloader");
        notes.push(format!(
            "{}:{line}: {field} '{name}': runs on Kiln's ELF loader (apps/elfloader){}",
            path.display(),
            if !program {
                String::new()
            } else {
                format!("; the {short} program comes from the rootfs")
            }
        ));
    }
    if !left.is_empty() {
        notes.push(format!(
            "{}: Unikraft settings with no Kiln meaning, left out: {}",
            path.display(),
            left.join(", ")
        ));
    }
    (kconfig, app)
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Bool(true) => "y".into(),
        serde_json::Value::Bool(false) => "n".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Kraftfile {
    /// The command line and environment of the named boot sets, applied
    /// left to right over the default (`cmd`, `env`): each set's `env` adds
    /// to (or overrides) the variables so far, and its `cmd`, when given,
    /// replaces the command line. `default` names the Kraftfile's own.
    pub fn boot_with(&self, names: &[String]) -> Result<(Vec<String>, Vec<(String, String)>)> {
        let (mut cmd, mut env) = (self.cmd.clone(), self.env.clone());
        for n in names {
            if n == "default" {
                continue;
            }
            let Some(b) = self.boot.iter().find(|b| &b.name == n) else {
                bail!(
                    "--boot {n}: {} has no such boot set ({}); `--boot help` lists them",
                    self.path.display(),
                    self.boot_names().join(", ")
                );
            };
            if let Some(c) = &b.cmd {
                cmd = c.clone();
            }
            for (k, v) in &b.env {
                env.retain(|(ek, _)| ek != k);
                env.push((k.clone(), v.clone()));
            }
        }
        Ok((cmd, env))
    }

    /// Every boot set's name, `default` first.
    pub fn boot_names(&self) -> Vec<String> {
        std::iter::once("default".to_string())
            .chain(self.boot.iter().map(|b| b.name.clone()))
            .collect()
    }

    /// `--boot help`: each set with its command line and environment.
    pub fn boot_listing(&self) -> String {
        let show = |cmd: &[String], env: &[(String, String)]| {
            let mut s = format!(
                "cmd: {}",
                if cmd.is_empty() {
                    "(none)".to_string()
                } else {
                    cmd.join(" ")
                }
            );
            if !env.is_empty() {
                s.push_str("; env: ");
                s.push_str(
                    &env.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            s
        };
        let mut out = format!(
            "Boot sets of {} (kiln run --boot NAME, repeatable):\n  default  {}\n",
            self.path.display(),
            show(&self.cmd, &self.env)
        );
        for b in &self.boot {
            let (cmd, env) = self
                .boot_with(std::slice::from_ref(&b.name))
                .unwrap_or_default();
            out.push_str(&format!("  {}  {}\n", b.name, show(&cmd, &env)));
        }
        out
    }

    /// Picks the target to build: the one matching `plat`/`arch` when given
    /// (either may be left out), else the first one Kiln can build (see
    /// [`Kraftfile::unbuildable`] for the others).
    pub fn select_target(&self, plat: Option<&str>, arch: Option<&str>) -> Result<Target> {
        if plat.is_none() && arch.is_none() {
            if let Some(t) = self.targets.iter().find(|t| self.buildable(t).is_ok()) {
                return Ok(t.clone());
            }
            let why: Vec<String> = self
                .targets
                .iter()
                .filter_map(|t| self.buildable(t).err())
                .map(|e| e.to_string())
                .collect();
            bail!("{}", why.join("\n"));
        }
        let arch = arch.map(canonical_arch);
        let wanted_vmm = plat.and_then(vmm_of_plat);
        let matches = |t: &&Target| {
            let plat_ok = match (plat, wanted_vmm) {
                (None, _) => true,
                (Some(_), Some(v)) => t.vmm.as_deref() == Some(v),
                (Some(p), None) => p == t.plat && (t.vmm.is_none() || p != "qemu"),
            };
            plat_ok && arch.is_none_or(|a| a == t.arch)
        };
        // `--plat fc` on a Kraftfile that lists only qemu targets: the
        // qemu image, booted on that VMM. `--plat linuxu`: the app of a
        // qemu target, built as a host executable.
        let found = self.targets.iter().find(matches).cloned().or_else(|| {
            let from_qemu = |arch: Option<&str>| {
                self.targets
                    .iter()
                    .find(|t| t.plat == "qemu" && arch.is_none_or(|a| a == t.arch))
            };
            if plat == Some("linuxu") {
                let host = std::env::consts::ARCH.replace("aarch64", "arm64");
                let t = from_qemu(Some(arch.unwrap_or(&host)))?;
                return Some(Target {
                    plat: "linuxu".into(),
                    vmm: None,
                    ..t.clone()
                });
            }
            let v = wanted_vmm?;
            let t = from_qemu(arch)?;
            Some(Target {
                vmm: Some(v.to_string()),
                ..t.clone()
            })
        });
        let t = match found {
            Some(t) => t,
            None => {
                let listed: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
                bail!(
                    "{}: no target matches {}/{} (the Kraftfile lists: {})",
                    self.path.display(),
                    plat.unwrap_or("*"),
                    arch.unwrap_or("*"),
                    listed.join(", ")
                );
            }
        };
        self.buildable(&t)?;
        Ok(t)
    }

    /// Why Kiln cannot build a target, if it cannot.
    fn buildable(&self, t: &Target) -> Result<()> {
        if let (Some(v), "arm64") = (&t.vmm, t.arch.as_str()) {
            if t.layout().is_none() {
                return Err(at(
                    &self.path,
                    t.line,
                    format!("target '{t}': Kiln runs on {v} on x86_64 only (on arm64 {v} gives its devices on PCI only, which Kiln's arm64 kernel does not drive yet); use qemu/arm64 or fc/arm64"),
                ));
            }
        }
        if !SUPPORTED.contains(&(t.plat.as_str(), t.arch.as_str())) {
            let mut ok: Vec<String> = SUPPORTED.iter().map(|(p, a)| format!("{p}/{a}")).collect();
            ok.extend([
                "fc/x86_64".to_string(),
                "fc/arm64".to_string(),
                "cloud-hypervisor/x86_64".to_string(),
            ]);
            return Err(at(
                &self.path,
                t.line,
                format!("unknown target '{t}': Kiln builds {}", ok.join(", ")),
            ));
        }
        Ok(())
    }

    /// The listed targets Kiln cannot build (`xen/x86_64`, `fc/arm64`...),
    /// named for a note when another one is built.
    pub fn unbuildable(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| self.buildable(t).is_err())
            .map(|t| t.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Kraftfile> {
        parse(Path::new("/tmp/app/Kraftfile"), text)
    }

    fn err(text: &str) -> String {
        format!("{:#}", p(text).unwrap_err())
    }

    #[test]
    fn full_file() {
        let k = p(r#"
spec: v0.6
name: hello
unikraft: stable
targets:
  - qemu/x86_64
  - plat: qemu
    arch: arm64
    kconfig:
      CONFIG_X: y
cmd: ["a", "b c"]
env:
  FOO: bar
  N: 3
kconfig:
  - CONFIG_LIBFOO=y
"#)
        .unwrap();
        assert_eq!(k.name, "hello");
        assert_eq!(k.targets.len(), 2);
        assert_eq!(k.targets[0].to_string(), "qemu/x86_64");
        assert_eq!(
            k.targets[1].kconfig,
            vec![("CONFIG_X".to_string(), "y".to_string(), 10)]
        );
        assert_eq!(k.cmd, ["a", "b c"]);
        assert_eq!(
            k.env,
            vec![("FOO".into(), "bar".into()), ("N".into(), "3".into())]
        );
        assert_eq!(k.kconfig, vec![("CONFIG_LIBFOO".into(), "y".into(), 16)]);
        assert_eq!(k.app_dir, Path::new("/tmp/app"));
        assert!(k.notes.is_empty(), "{:?}", k.notes);
    }

    #[test]
    fn unikrafts_fields_are_mapped_or_listed() {
        let k = p(r#"spec: v0.6
name: nginx1.25
runtime: unikraft.org/nginx:1.25
cmd: ["/usr/bin/nginx", "-g", "daemon off;"]
unikraft:
  source: https://github.com/unikraft/unikraft.git
  kconfig:
    CONFIG_LIBUKDEBUG_PRINTK_ERR: y
    CONFIG_LIBVFSCORE: y
libraries:
  lwip: stable
  musl: stable
  libelf:
    version: stable
  wamr: stable
  ramfs:
    kconfig:
      - CONFIG_LIBRAMFS=y
targets:
  - fc/x86_64
"#)
        .unwrap();
        assert_eq!(k.name, "nginx1.25");
        assert_eq!(k.template_app, Some("elfloader"));
        assert!(!k.app_given);
        let syms: Vec<&str> = k.kconfig.iter().map(|(s, _, _)| s.as_str()).collect();
        for want in [
            "CONFIG_LIBNET",
            "CONFIG_LIBELF",
            "CONFIG_LIBRAMFS",
            "CONFIG_LIBVFS",
        ] {
            assert!(syms.contains(&want), "{syms:?}");
        }
        assert!(
            k.notes.iter().any(|n| n
                .contains("runtime 'unikraft.org/nginx:1.25': runs on Kiln's ELF loader")
                && n.contains("the nginx program comes from the rootfs")),
            "{:?}",
            k.notes
        );
        let left = k
            .notes
            .iter()
            .find(|n| n.contains("no Kiln meaning"))
            .unwrap();
        assert!(
            left.contains("library wamr") && left.contains("CONFIG_LIBUKDEBUG_PRINTK_ERR"),
            "{left}"
        );
        assert_eq!(
            k.select_target(None, None).unwrap().vmm.as_deref(),
            Some("firecracker")
        );
        let k = p("name: hello\ntemplate:\n  source: https://github.com/unikraft/app-elfloader.git\ntargets: [qemu/x86_64]\n").unwrap();
        assert_eq!(k.template_app, Some("elfloader"));
    }

    /// The catalog's newer Kraftfiles: a runtime, no targets (the command
    /// line picks), names with '+', and one with no name at all.
    #[test]
    fn catalog_runtime_kraftfiles() {
        let k = p(
            "spec: v0.6\nname: httpserver-g++13.2\nruntime: base:latest\ncmd: [\"/http_server\"]\n",
        )
        .unwrap();
        assert_eq!(k.name, "httpserver-g++13.2");
        let t: Vec<String> = k
            .targets
            .iter()
            .map(|t| format!("{}/{}", t.plat, t.arch))
            .collect();
        assert_eq!(t, ["qemu/x86_64", "qemu/arm64"]);
        assert!(k.notes.iter().any(|n| n.contains("no 'targets': qemu/x86_64 (and qemu/arm64 with --arch arm64)")), "{:?}", k.notes);
        let k = p("spec: v0.6\nruntime: base:latest\n").unwrap();
        assert_eq!(k.name, "app");
        assert!(
            k.notes
                .iter()
                .any(|n| n.contains("no 'name': using the folder's, app")),
            "{:?}",
            k.notes
        );
        // Without a runtime, a Kraftfile still has to say what it builds for.
        assert!(err("name: x\n").contains("no 'targets'"));
        // A program's runtime with neither a command nor a Dockerfile: only
        // Unikraft's prebuilt image knew what to run.
        assert!(err("spec: v0.6\nname: c\nruntime: caddy:2.10\nrootfs: ./rootfs\n").contains(":3: runtime 'caddy:2.10': Unikraft's prebuilt caddy image brings the program and its command"));
        // With a command, the program has to be in the rootfs folder.
        let d = std::env::temp_dir().join(format!("kiln-kf-rt-{}", std::process::id()));
        std::fs::create_dir_all(d.join("rootfs/app")).unwrap();
        let at = |t: &str| parse(&d.join("Kraftfile"), t);
        let e = format!("{:#}", at("spec: v0.6\nname: n\nruntime: nosuch:1\nrootfs: ./rootfs\ncmd: [\"/opt/nosuch/server\", \"/app/x\"]\n").unwrap_err());
        assert!(e.contains(":5: cmd runs /opt/nosuch/server, which neither the rootfs nor this machine has: runtime 'nosuch:1' means Unikraft's prebuilt nosuch image"), "{e}");
        // This machine's program at the same path is packed, with a note.
        let k = at("spec: v0.6\nname: n\nruntime: sh:1\nrootfs: ./rootfs\ncmd: [\"/bin/sh\", \"-c\", \"true\"]\n").unwrap();
        assert_eq!(k.programs, [PathBuf::from("/bin/sh")]);
        assert!(
            k.notes
                .iter()
                .any(|n| n.contains(":3: runtime 'sh:1': /bin/sh comes from this machine")),
            "{:?}",
            k.notes
        );
        std::fs::create_dir_all(d.join("rootfs/opt/nosuch")).unwrap();
        std::fs::write(d.join("rootfs/opt/nosuch/server"), "").unwrap();
        assert!(at("spec: v0.6\nname: n\nruntime: nosuch:1\nrootfs: ./rootfs\ncmd: [\"/opt/nosuch/server\"]\n").is_ok());
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(err("\n# nothing\n"), "/tmp/app/Kraftfile:1: the Kraftfile is empty: it needs at least `spec`, `name` and `targets` (or a `runtime`)");
    }

    /// kraft's -K: a Kraftfile read for another folder takes its paths
    /// from that folder.
    #[test]
    fn kraftfile_for_another_folder() {
        let d = std::env::temp_dir().join(format!("kiln-kf-k-{}", std::process::id()));
        std::fs::create_dir_all(d.join("app")).unwrap();
        std::fs::write(d.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(
            d.join("app/Kraftfile"),
            "spec: v0.6\nruntime: base:latest\nrootfs: ./Dockerfile\ncmd: [\"/app\"]\n",
        )
        .unwrap();
        assert!(format!("{:#}", load(&d.join("app")).unwrap_err())
            .contains("rootfs './Dockerfile': no such Dockerfile"));
        let k = load_file(&d.join("app/Kraftfile"), &d).unwrap();
        let df = k.dockerfile.unwrap();
        assert_eq!((df.file, df.context), (d.join("Dockerfile"), d.clone()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_runtimes_cmd_items_split_on_blanks_as_in_unikraft() {
        let k = p("spec: v0.6\nruntime: base:latest\ncmd: [\"/usr/bin/php /usr/src/server.php\", \"-x\"]\n").unwrap();
        assert_eq!(k.cmd, ["/usr/bin/php", "/usr/src/server.php", "-x"]);
        let k = p("spec: v0.6\nname: x\ntargets: [qemu/x86_64]\ncmd: [\"a\", \"b c\"]\n").unwrap();
        assert_eq!(k.cmd, ["a", "b c"]);
    }

    #[test]
    fn cmd_string_and_app_field() {
        let k = p("name: x\napp: ../src\ntargets: [qemu/amd64]\ncmd: -v  --port 80\n").unwrap();
        assert_eq!(k.cmd, ["-v", "--port", "80"]);
        assert_eq!(k.app_dir, Path::new("/tmp/app/../src"));
        assert_eq!(k.targets[0].arch, "x86_64");
    }

    #[test]
    fn spec_v07_forms() {
        let d = std::env::temp_dir().join(format!("kiln-kf07-{}", std::process::id()));
        std::fs::create_dir_all(d.join("rootfs")).unwrap();
        let at = |text: &str| parse(&d.join("Kraftfile"), text);
        let k = at("spec: v0.7\nname: x\ntargets: [qemu/x86_64]\ncmd: -c /x.conf\nrootfs:\n  source:\n    path: ./rootfs\n    type: dir\n  format: erofs\nlabels:\n  org.x/y: z\noutdir: out\n").unwrap();
        assert_eq!(k.cmd, ["-c", "/x.conf"]);
        assert_eq!(k.rootfs.as_deref(), Some(d.join("rootfs").as_path()));
        assert!(
            k.notes
                .iter()
                .any(|n| n.contains(":5: rootfs format 'erofs': Kiln packs the rootfs as cpio")),
            "{:?}",
            k.notes
        );
        assert!(
            k.notes
                .iter()
                .any(|n| n.contains("outdir 'out' is not used")),
            "{:?}",
            k.notes
        );
        // The older flat long form, the Dockerfile forms, other types, roms.
        let k = at("specification: v0.7\nname: x\ntargets: [qemu/x86_64]\nrootfs:\n  source: ./rootfs\n  type: dir\n").unwrap();
        assert!(k.rootfs.is_some());
        let e = format!("{:#}", at("spec: v0.7\nname: x\ntargets: [qemu/x86_64]\nrootfs:\n  source: {path: ., dockerfile: ./x/Dockerfile}\nroms: [./extra]\n").unwrap_err());
        assert!(
            e.contains(":4: rootfs './x/Dockerfile': no such Dockerfile")
                && e.contains(":6: roms: extra read-only file systems are not supported yet"),
            "{e}"
        );
        // A Dockerfile that exists: built before the kernel, from its context.
        std::fs::create_dir_all(d.join("x")).unwrap();
        std::fs::write(d.join("x/Dockerfile"), "FROM scratch\n").unwrap();
        let k = at("spec: v0.7\nname: x\ntargets: [qemu/x86_64]\nrootfs:\n  source: {path: ./rootfs, dockerfile: ./x/Dockerfile}\n").unwrap();
        let df = k.dockerfile.expect("a Dockerfile rootfs");
        assert_eq!(
            (df.file.as_path(), df.context.as_path(), df.line),
            (
                d.join("x/Dockerfile").as_path(),
                d.join("rootfs").as_path(),
                4
            )
        );
        assert!(k.rootfs.is_none());
        let k =
            at("spec: v0.6\nname: x\ntargets: [qemu/x86_64]\nrootfs: ./x/Dockerfile\n").unwrap();
        assert_eq!(k.dockerfile.map(|d| d.context), Some(d.join("x")));
        let e = format!("{:#}", at("spec: v0.7\nname: x\ntargets: [qemu/x86_64]\nrootfs: {source: {path: img.tar, type: tarball}}\n").unwrap_err());
        assert!(e.contains(":4: rootfs type 'tarball'"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn boot_sets() {
        let k = p("name: x\ntargets: [qemu/x86_64]\ncmd: [serve, /www]\nenv: {LOG: info, PORT: 80}\nboot:\n  debug:\n    env: {LOG: debug}\n  bench:\n    cmd: serve --no-log /www\n").unwrap();
        assert_eq!(k.boot_names(), ["default", "bench", "debug"]);
        let (cmd, env) = k.boot_with(&["debug".into()]).unwrap();
        assert_eq!(cmd, ["serve", "/www"]);
        assert_eq!(
            env,
            [
                ("PORT".to_string(), "80".to_string()),
                ("LOG".to_string(), "debug".to_string())
            ]
        );
        let (cmd, env) = k.boot_with(&["debug".into(), "bench".into()]).unwrap();
        assert_eq!(cmd, ["serve", "--no-log", "/www"]);
        assert!(env.contains(&("LOG".to_string(), "debug".to_string())));
        assert_eq!(k.boot_with(&[]).unwrap(), (k.cmd.clone(), k.env.clone()));
        let e = format!("{:#}", k.boot_with(&["nope".into()]).unwrap_err());
        assert!(
            e.contains("--boot nope") && e.contains("default, bench, debug"),
            "{e}"
        );
        assert!(
            k.boot_listing()
                .contains("  debug  cmd: serve /www; env: PORT=80 LOG=debug\n"),
            "{}",
            k.boot_listing()
        );
        let e = err("name: x\ntargets: [qemu/x86_64]\nboot:\n  default:\n    cmd: a\n  ok:\n    env: [BAD]\n");
        assert!(
            e.contains(":4: boot: 'default' cannot name a set")
                && e.contains(":7: env entry 'BAD' is not KEY=VALUE"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = err("spec: v0.4\nname: 'a b'\ntargets:\n  - qemu\nenv:\n  - NOEQ\nkconfig: [X=y, ALSO]\ntemplate: app-wamr\nrootfs: ./none\nvolumes: ['only-one']\n");
        for line in [
            "Kraftfile:1: unsupported spec 'v0.4'",
            "Kraftfile:2: name 'a b' must be",
            "Kraftfile:4: target 'qemu' must be PLAT/ARCH",
            "Kraftfile:6: env entry 'NOEQ' is not KEY=VALUE",
            "Kraftfile:7: kconfig entry 'ALSO' is not KEY=VALUE",
            "Kraftfile:8: template 'app-wamr'",
            "Kraftfile:9: rootfs './none' does not exist",
            "Kraftfile:10: volumes: 'only-one'",
        ] {
            assert!(e.contains(line), "{line} missing from:\n{e}");
        }
        assert!(e.starts_with("8 problems in /tmp/app/Kraftfile:\n"), "{e}");
        assert!(
            err("name: x\ntargets: [qemu/x86_64]\nrootfs: ./Dockerfile\n")
                .contains(":3: rootfs './Dockerfile': no such Dockerfile")
        );
        // A key given twice: the last counts, with a note.
        let k = p("name: a\ntargets: [qemu/x86_64]\nname: b\n").unwrap();
        assert_eq!(k.name, "b");
        assert!(
            k.notes
                .iter()
                .any(|n| n.contains(":3: 'name' is given again (first on line 1)")),
            "{:?}",
            k.notes
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(
            err("name: x\ntargets:\n  - qemu\n"),
            "/tmp/app/Kraftfile:3: target 'qemu' must be PLAT/ARCH, e.g. qemu/x86_64"
        );
        assert!(
            err("name: x\ntargets: [qemu/x86_64]\nfoo: 1\n")
                .starts_with("/tmp/app/Kraftfile:3: malformed Kraftfile: "),
            "{}",
            err("name: x\ntargets: [qemu/x86_64]\nfoo: 1\n")
        );
        assert!(err("name: x\n  targets: [\n").starts_with("/tmp/app/Kraftfile:"));
        assert_eq!(err("spec: v0.4\nname: x\ntargets: [qemu/x86_64]\n"), "/tmp/app/Kraftfile:1: unsupported spec 'v0.4': Kiln reads Kraftfile spec v0.5, v0.6 and v0.7");
        // No name: the folder's (the catalog's library/base has none).
        assert_eq!(p("targets: [qemu/x86_64]\n").unwrap().name, "app");
        assert_eq!(
            err("name: 'a b'\ntargets: [qemu/x86_64]\n"),
            "/tmp/app/Kraftfile:1: name 'a b' must be letters, digits, '.', '+', '-' or '_'"
        );
        assert!(
            err("name: x\ntargets: [qemu/x86_64]\ntemplate: app-wamr\n").starts_with(
                "/tmp/app/Kraftfile:3: template 'app-wamr': Kiln knows only the ELF loader's"
            )
        );
        assert_eq!(
            err("name: x\ntargets: [qemu/x86_64]\nkconfig:\n  - NOEQUALS\n"),
            "/tmp/app/Kraftfile:4: kconfig entry 'NOEQUALS' is not KEY=VALUE"
        );
        assert!(err("name: x\n").contains("no 'targets'"));
        assert_eq!(
            err("name: x\ntargets: [qemu/x86_64]\nprograms:\n  - sbin/nginx\n"),
            "/tmp/app/Kraftfile:4: programs: 'sbin/nginx' is not an absolute path on this machine"
        );
        assert_eq!(
            err("name: x\ntargets: [qemu/x86_64]\nprograms: [/no/such/program]\n"),
            "/tmp/app/Kraftfile:3: programs: /no/such/program: no such program on this machine"
        );
    }

    #[test]
    fn target_selection() {
        let k = p("name: x\ntargets:\n  - qemu/x86_64\n  - fc/x86_64\n").unwrap();
        assert_eq!(k.select_target(None, None).unwrap().plat, "qemu");
        assert_eq!(k.select_target(None, None).unwrap().vmm, None);
        assert_eq!(k.select_target(None, Some("amd64")).unwrap().plat, "qemu");
        // fc/x86_64 is the qemu image on Firecracker.
        let fc = k.select_target(Some("fc"), None).unwrap();
        assert_eq!(
            (fc.plat.as_str(), fc.vmm.as_deref(), fc.to_string().as_str()),
            ("qemu", Some("firecracker"), "firecracker/x86_64")
        );
        assert_eq!(k.select_target(Some("qemu"), None).unwrap().vmm, None);
        // A VMM named on the command line boots the qemu target there.
        let ch = k.select_target(Some("cloud-hypervisor"), None).unwrap();
        assert_eq!(
            (ch.plat.as_str(), ch.vmm.as_deref()),
            ("qemu", Some("cloud-hypervisor"))
        );
        // fc/arm64 is an image of its own (Firecracker's memory map);
        // cloud-hypervisor on arm64 is refused.
        let k = p("name: x\ntargets:\n  - fc/arm64\n  - cloud-hypervisor/arm64\n").unwrap();
        let fc = k.select_target(Some("fc"), None).unwrap();
        assert_eq!(
            (fc.layout(), fc.build_name().as_str()),
            (Some("firecracker"), "qemu-arm64-firecracker")
        );
        let e = format!("{:#}", k.select_target(Some("clh"), None).unwrap_err());
        assert!(
            e.contains("Kiln runs on cloud-hypervisor on x86_64 only"),
            "{e}"
        );
        let e = format!("{:#}", k.select_target(Some("xen"), None).unwrap_err());
        // Unikraft's catalog lists targets Kiln cannot build beside ones
        // it can: the first buildable one is picked, the rest named.
        let k = p(
            "name: x\ntargets:\n  - xen/x86_64\n  - chv/arm64\n  - qemu/arm64\n  - qemu/x86_64\n",
        )
        .unwrap();
        assert_eq!(
            k.select_target(None, None).unwrap().to_string(),
            "qemu/arm64"
        );
        assert_eq!(k.unbuildable(), ["xen/x86_64", "cloud-hypervisor/arm64"]);
        let k = p("name: x\ntargets:\n  - xen/x86_64\n  - chv/arm64\n").unwrap();
        let all = format!("{:#}", k.select_target(None, None).unwrap_err());
        assert!(
            all.contains(":3: unknown target 'xen/x86_64'")
                && all.contains(
                    ":4: target 'cloud-hypervisor/arm64': Kiln runs on cloud-hypervisor on x86_64 only"
                ),
            "{all}"
        );
        assert!(e.contains("no target matches xen/*"), "{e}");
    }
}
