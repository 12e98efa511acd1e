//! `kiln build`: from a Kraftfile to a kernel image.
//!
//! Kiln generates a small *link crate* next to the output image. It depends
//! on the arch and platform crates of the target, `kiln-boot`, the heap
//! backend and the app, and contains only glue: the global allocator, the
//! `kiln_start` function the platform calls, and the list of library init
//! functions. Cargo builds it for the bare-metal target into one target folder
//! shared by every app (`<kiln>/target/kernel`), so a second app reuses the
//! kernel crates the first one compiled.

use crate::config::Config;
use crate::kraftfile::{Kraftfile, Target};
use crate::ui::Ui;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Kiln's own source tree is (for path dependencies and the linker script).
pub fn kiln_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KILN_HOME") {
        return PathBuf::from(h);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Rust target triple for a Kiln architecture.
pub fn rust_target(arch: &str) -> &'static str {
    match arch {
        "arm64" => "aarch64-unknown-none",
        _ => "x86_64-unknown-none",
    }
}

/// `cargo` for a nested build (a kernel, the UEFI loader, a Linux
/// program): the caller's own build settings (flags, target folder and
/// target, which `cargo test` or a user's shell may set) are left out.
pub fn nested_cargo() -> (std::ffi::OsString, Command) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(&cargo);
    c.env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    (cargo, c)
}

/// Builds Kiln's UEFI loader for arm64 disk images (plat/efi) and returns
/// the `.efi` file's path. Cargo keeps it current; the Rust target comes
/// with the toolchain file (rustup installs it on first use).
pub fn efi_loader() -> Result<PathBuf> {
    const TRIPLE: &str = "aarch64-unknown-uefi";
    let target_dir = kiln_home().join("target").join("efi");
    let (cargo, mut c) = nested_cargo();
    let o = c
        .current_dir(kiln_home())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "kiln-efi-boot",
            "--target",
            TRIPLE,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .with_context(|| format!("running {cargo:?}: is Rust (cargo) installed?"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("can't find crate for `core`")
            || err.contains("target may not be installed")
        {
            bail!("building the UEFI loader: Rust's {TRIPLE} target is missing; install it with `rustup target add {TRIPLE}`");
        }
        bail!(
            "building the UEFI loader (plat/efi) failed:\n{}",
            err.trim()
        );
    }
    let efi = target_dir
        .join(TRIPLE)
        .join("release")
        .join("kiln-efi-boot.efi");
    if !efi.is_file() {
        bail!("building the UEFI loader: cargo wrote no {}", efi.display());
    }
    Ok(efi)
}

/// Paths of one build.
pub struct BuildPaths {
    /// The kernel image: `<dir>/.kiln/build/<name>_<plat>-<arch>`.
    pub kernel: PathBuf,
    /// The generated link crate, beside the image.
    pub link_crate: PathBuf,
    /// The resolved `.config` the image was built from.
    pub config: PathBuf,
    /// The linker's map of the image: sections and symbols with sizes.
    pub map: PathBuf,
    /// The initrd packed from the Kraftfile's rootfs.
    pub initrd: PathBuf,
}

impl BuildPaths {
    /// Whether the resolved configuration last written for this build has
    /// bool symbol `name` set to y.
    pub fn config_has(&self, name: &str) -> bool {
        std::fs::read_to_string(&self.config)
            .is_ok_and(|c| c.lines().any(|l| l == format!("CONFIG_{name}=y")))
    }

    pub fn new(kf: &Kraftfile, target: &Target) -> BuildPaths {
        let dir = kf.path.parent().unwrap_or(Path::new("."));
        let base = format!("{}_{}", kf.name, target.build_name());
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let build = dir.join(".kiln").join("build");
        BuildPaths {
            kernel: build.join(&base),
            link_crate: build.join(format!("{base}.crate")),
            config: build.join(format!("{base}.config")),
            map: build.join(format!("{base}.map")),
            initrd: build.join(format!("{base}.cpio")),
        }
    }
}

/// The package name of the app crate in `dir`.
/// The app crate's manifest, read once per build: its path and contents.
struct AppManifest {
    path: PathBuf,
    doc: toml::Table,
}

impl AppManifest {
    fn read(dir: &Path, unikraft_sources: bool) -> Result<AppManifest> {
        let path = dir.join("Cargo.toml");
        if !path.exists() && dir.join("Makefile.uk").is_file() {
            bail!(
                "{}: a C app for Unikraft's own build system (Makefile.uk): Kiln does not build Unikraft's C libraries; make it a Kiln C app (its C files beside a Kraftfile, as apps/hello-c) or give its program a `runtime:` and a Dockerfile",
                dir.display()
            );
        }
        if !path.exists() && unikraft_sources {
            bail!(
                "{}: an app built from Unikraft's C libraries (the Kraftfile's `unikraft:`/`libraries:`): Kiln does not build Unikraft's C libraries; run the program on Kiln's ELF loader instead (a `runtime:` with the program in the rootfs, e.g. `programs:`)",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: the app's crate is missing (set `app:` in the Kraftfile to its folder)",
                path.display()
            )
        })?;
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("{}: not valid TOML", path.display()))?;
        Ok(AppManifest { path, doc })
    }

    /// The package's name.
    fn package(&self) -> Result<String> {
        self.doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .map(String::from)
            .with_context(|| format!("{}: no [package] name", self.path.display()))
    }

    /// A key of `[package.metadata.kiln]`.
    fn kiln(&self, key: &str) -> Option<&toml::Value> {
        self.doc
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("kiln"))
            .and_then(|k| k.get(key))
    }
}

/// RustCrypto's crates (lib/tls) pick SIMD code with CPUID at run time,
/// which the kernel's x86_64 target (no SSE, soft float) cannot compile:
/// these settings make them use their portable code. Only those crates
/// read them. (TOML strings for cargo's `--config`.)
const SOFT_CRYPTO: &[&str] = &[
    "\"--cfg\"",
    "\"aes_force_soft\"",
    "\"--cfg\"",
    "\"polyval_force_soft\"",
    "\"--cfg\"",
    "\"poly1305_force_soft\"",
    "\"--cfg\"",
    "\"chacha20_force_soft\"",
    "\"--cfg\"",
    "'curve25519_dalek_backend=\"serial\"'",
];

/// The app crate's cargo features that its Kconfig symbols turn on:
/// `[package.metadata.kiln.features]` maps a feature to a symbol (`tls =
/// "APP_HTTPD_TLS"`), so an option can bring in a library's code or leave
/// it out of the image.
fn app_features(m: &AppManifest, cfg: &Config) -> Result<Vec<String>> {
    let Some(map) = m.kiln("features") else {
        return Ok(Vec::new());
    };
    let map = map.as_table().with_context(|| {
        format!(
            "{}: [package.metadata.kiln.features] must map features to Kconfig symbols",
            m.path.display()
        )
    })?;
    let mut on = Vec::new();
    for (feature, symbol) in map {
        let symbol = symbol.as_str().with_context(|| {
            format!(
                "{}: feature {feature}: expected a Kconfig symbol name",
                m.path.display()
            )
        })?;
        if cfg.on(symbol.trim_start_matches("CONFIG_")) {
            on.push(feature.clone());
        }
    }
    Ok(on)
}

/// Whether the app's `main` is C (`[package.metadata.kiln] main = "c"`):
/// its crate re-exports `kiln_libc::c_main`, which calls the C `main`.
fn c_main(m: &AppManifest) -> Result<bool> {
    match m.kiln("main") {
        None => Ok(false),
        Some(v) => match v.as_str() {
            Some("c") => Ok(true),
            Some("rust") => Ok(false),
            _ => bail!(
                "{}: [package.metadata.kiln] main = {v}: expected \"c\" or \"rust\"",
                m.path.display()
            ),
        },
    }
}

/// Writes `content` to `path` unless it already holds exactly that, so that
/// unchanged inputs do not make cargo rebuild, and concurrent builds of the
/// same app never see a half-written file.
fn write_if_changed(path: &Path, content: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A micro-library under `lib/`, as its Cargo.toml describes it to Kiln
/// (`[package.metadata.kiln]`).
#[derive(Debug, Clone)]
pub struct Library {
    pub dir: PathBuf,
    pub package: String,
    /// Compiled into a kernel only when this symbol is y.
    pub kconfig: String,
    /// For heap backends: the backend type, in the library's crate.
    pub heap: Option<String>,
    /// Boot-time init function (a path like `kiln_ramfs::kiln_init`) and
    /// its place in the order.
    pub init: Option<(String, i64)>,
}

impl Library {
    /// The crate's name in Rust code.
    pub fn rust_name(&self) -> String {
        self.package.replace('-', "_")
    }
}

/// Reads every library's metadata.
pub fn libraries() -> Result<Vec<Library>> {
    let lib = kiln_home().join("lib");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)?;
        let doc: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{}: not valid TOML", manifest.display()))?;
        let pkg = doc.get("package").and_then(|p| p.as_table());
        let package = pkg
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let meta = pkg
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("kiln"))
            .and_then(|k| k.as_table());
        let Some(meta) = meta else {
            bail!("{}: missing [package.metadata.kiln] (kconfig = \"SYMBOL\" that enables the library)", manifest.display());
        };
        let Some(kconfig) = meta.get("kconfig").and_then(|k| k.as_str()) else {
            bail!(
                "{}: [package.metadata.kiln] needs kconfig = \"SYMBOL\"",
                manifest.display()
            );
        };
        let heap = meta
            .get("heap")
            .and_then(|h| h.as_str())
            .map(str::to_string);
        let init = meta.get("init").and_then(|h| h.as_str()).map(|f| {
            (
                f.to_string(),
                meta.get("init_order")
                    .and_then(|o| o.as_integer())
                    .unwrap_or(100),
            )
        });
        out.push(Library {
            dir,
            package,
            kconfig: kconfig.to_string(),
            heap,
            init,
        });
    }
    Ok(out)
}

/// The libraries a configuration selects, and the heap backend among them.
pub fn selected(cfg: &Config) -> Result<(Vec<Library>, Library)> {
    let mut chosen = Vec::new();
    for l in libraries()? {
        if cfg.tree.get(&l.kconfig).is_none() {
            bail!(
                "{}: kconfig symbol {} is not defined in any Kconfig file",
                l.dir.join("Cargo.toml").display(),
                l.kconfig
            );
        }
        if cfg.on(&l.kconfig) {
            chosen.push(l);
        }
    }
    for required in ["kiln-boot", "kiln-alloc"] {
        if !chosen.iter().any(|l| l.package == required) {
            bail!("the configuration turns off {required}, which every kernel needs");
        }
    }
    let heaps: Vec<&Library> = chosen.iter().filter(|l| l.heap.is_some()).collect();
    let heap = match heaps.as_slice() {
        [one] => (*one).clone(),
        [] => bail!("the configuration selects no heap backend (choose one under Libraries > Heap allocator)"),
        more => bail!(
            "the configuration selects more than one heap backend: {}",
            more.iter().map(|l| l.package.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    Ok((chosen, heap))
}

/// Generates the link crate's files.
fn generate(
    kf: &Kraftfile,
    target: &Target,
    paths: &BuildPaths,
    cfg: &Config,
    initrd: Option<(&Path, usize)>,
) -> Result<String> {
    let home = kiln_home();
    let app_dir = std::fs::canonicalize(&kf.app_dir).with_context(|| {
        format!(
            "{}: app folder {} not found",
            kf.path.display(),
            kf.app_dir.display()
        )
    })?;
    let app_manifest =
        AppManifest::read(&app_dir, kf.unikraft_sources && kf.template_app.is_none())?;
    let app_pkg = app_manifest.package()?;
    // Cargo's package names take letters, digits, '-' and '_': the
    // Kraftfile name's dots become '-', its '+' (`g++`) 'p'.
    let crate_name = format!("kiln-kernel-{}-{}", kf.name, target.build_name())
        .replace(['_', '.'], "-")
        .replace('+', "p");
    let dir = &paths.link_crate;
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;

    // The arch and plat crates go by fixed names in the glue code.
    let renamed = |name: &str, package: &str, rel: &str| {
        format!(
            "{name} = {{ package = {package:?}, path = {} }}\n",
            toml_str(&home.join(rel))
        )
    };
    let mut deps = String::new();
    deps += &renamed(
        "kiln-arch",
        &format!("kiln-arch-{}", target.arch),
        &format!("arch/{}", target.arch),
    );
    deps += &renamed(
        "kiln-plat",
        &format!("kiln-plat-{}", target.plat),
        &format!("plat/{}", target.plat),
    );
    // Only the libraries the configuration selects are compiled.
    let (libs, heap) = selected(cfg)?;
    for l in &libs {
        deps += &format!("{} = {{ path = {} }}\n", l.package, toml_str(&l.dir));
    }
    let (heap_crate, heap_type) = (heap.rust_name(), heap.heap.clone().unwrap_or_default());
    let features = app_features(&app_manifest, cfg)?;
    let c_app = c_main(&app_manifest)?;
    if c_app && !cfg.on("LIBC") {
        bail!(
            "{}: the app's main is C ([package.metadata.kiln] main = \"c\"), which needs LIBC: select it in the app's Kconfig (select LIBC)",
            app_manifest.path.display()
        );
    }
    deps += &format!(
        "app = {{ package = {app_pkg:?}, path = {}, features = [{}] }}\n",
        toml_str(&app_dir),
        features
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let manifest = format!(
        r#"# Generated by `kiln build` from {kraftfile}; edits are overwritten.
[package]
name = "{crate_name}"
version = "0.1.0"
edition = "2021"
publish = false

# Not part of any other workspace.
[workspace]

[[bin]]
name = "{crate_name}"
path = "src/main.rs"
test = false
bench = false

[dependencies]
{deps}
[profile.release]
opt-level = {opt}
lto = true
codegen-units = 1
panic = "abort"
debug = "line-tables-only"
strip = false

[profile.dev]
panic = "abort"
"#,
        kraftfile = kf.path.display(),
        opt = if cfg.on("BUILD_OPTIMIZE_SIZE") {
            "\"s\""
        } else {
            "3"
        },
    );
    // A platform may lay the kernel out itself (its RAM starts elsewhere),
    // and so may a VMM that loads the platform's image elsewhere
    // (`Target::layout`); the layout includes the arch's shared files.
    let plat_linker = home
        .join("plat")
        .join(&target.plat)
        .join(match target.layout() {
            Some(l) => format!("linker-{}-{l}.ld", target.arch),
            None => format!("linker-{}.ld", target.arch),
        });
    let arch_dir = home.join("arch").join(&target.arch);
    let linker = if plat_linker.exists() {
        plat_linker
    } else if let Some(l) = target.layout() {
        bail!(
            "{}: no kernel layout for {l} on {}",
            plat_linker.display(),
            target.arch
        );
    } else {
        arch_dir.join("linker.ld")
    };
    let build_rs = format!(
        "// Generated by `kiln build`.\nfn main() {{\n    println!(\"cargo:rerun-if-changed={l}\");\n    println!(\"cargo:rerun-if-changed={d}/pagetable.ld\");\n    println!(\"cargo:rerun-if-changed={a}/sections.ld\");\n    println!(\"cargo:rustc-link-arg=-L{d}\");\n    println!(\"cargo:rustc-link-arg=-L{a}\");\n    println!(\"cargo:rustc-link-arg=-T{l}\");\n    // The link map: every symbol that made it into the kernel, with its size.\n    // Its path comes from kiln (KILN_LINK_MAP): apps of the same name in two\n    // folders share the link crate's build outputs, and a path written here\n    // would outlive a switch between them.\n    println!(\"cargo:rerun-if-env-changed=KILN_LINK_MAP\");\n    println!(\"cargo:rustc-link-arg=--Map={{}}\", std::env::var(\"KILN_LINK_MAP\").unwrap());\n}}\n",
        l = linker.display(),
        d = linker.parent().unwrap().display(),
        a = arch_dir.display(),
    );
    let main_rs = format!(
        r#"// Generated by `kiln build`: glue between the platform, the libraries and the app.
#![no_std]
#![no_main]

use kiln_arch as _;
use kiln_plat as _;

/// The resolved Kconfig (also in `{config_file}`), as typed constants.
#[allow(dead_code)]
pub mod config {{
{consts}}}

/// The heap: the backend chosen in Kconfig behind Kiln's allocator interface.
#[global_allocator]
static HEAP: kiln_alloc::Heap<{heap_crate}::{heap_type}> = kiln_alloc::Heap::new({heap_crate}::{heap_type}::new());

/// Init functions of the selected libraries, in dependency order.
static LIBS: &[kiln_boot::LibInit] = &[{libs_init}];
{initrd_static}
static BOOT: kiln_boot::BootConfig = kiln_boot::BootConfig {{
    loglevel: config::LIBCONSOLE_LOGLEVEL as u8,
    banner: config::LIBBOOT_BANNER,
    initrd: {initrd_ref},
}};

/// Called by the platform once the CPU is up.
#[no_mangle]
pub fn kiln_start(info: &kiln_boot::BootInfo) -> ! {{
{configure}    kiln_boot::start(info, &BOOT, &HEAP, LIBS, {name:?}, main)
}}

/// The app's `main`, kept a function of its own under the symbol `{main_symbol}`
/// (LTO would otherwise inline it out of sight): `break {main_symbol}` in gdb.{libc_doc}
#[export_name = "{main_symbol}"]
#[inline(never)]
fn main(args: &[&str], env: &[(&str, &str)]) -> i32 {{
    {call_main}
}}
"#,
        // A C app's main is the C function `main`; the Rust one steps aside.
        main_symbol = if c_app { "kiln_app_main" } else { "main" },
        libc_doc = if cfg.on("LIBC") { "\n/// With LIBC, the app runs as the C runtime's main thread (lib/libc)." } else { "" },
        call_main = if cfg.on("LIBC") { "kiln_libc::run(args, env, app::main)" } else { "app::main(args, env)" },
        name = kf.name,
        configure = if target.plat == "qemu" { "    kiln_plat::configure(config::PLAT_QEMU_UART_INIT);\n" } else { "" },
        config_file = paths.config.display(),
        consts = cfg.rust_consts().lines().map(|l| format!("    {l}\n")).collect::<String>(),
        libs_init = {
            let mut inits: Vec<(i64, String, String)> = libs
                .iter()
                .filter_map(|l| l.init.as_ref().map(|(f, o)| (*o, l.package.trim_start_matches("kiln-").to_string(), f.clone())))
                .collect();
            inits.sort();
            inits.iter().map(|(_, n, f)| format!("\n    kiln_boot::LibInit {{ name: {n:?}, init: {f} }},")).collect::<String>() + if inits.is_empty() { "" } else { "\n" }
        },
        initrd_static = match initrd {
            Some((p, n)) => format!(
                "\n/// The initial RAM disk packed from the Kraftfile's rootfs, in its own\n/// section at the end of the image.\n#[link_section = \".kiln.initrd\"]\n#[used]\nstatic INITRD: [u8; {n}] = *include_bytes!({:?});\n",
                p.display().to_string()
            ),
            None => String::new(),
        },
        initrd_ref = if initrd.is_some() { "Some(&INITRD)" } else { "None" },
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest)?;
    // Start from the checkout's lockfile so kernels use the crate versions
    // Kiln is tested with; cargo drops the entries this kernel does not need.
    let lock = dir.join("Cargo.lock");
    if !lock.exists() {
        let _ = std::fs::copy(home.join("Cargo.lock"), &lock);
    }
    write_if_changed(&dir.join("build.rs"), &build_rs)?;
    write_if_changed(&dir.join("src").join("main.rs"), &main_rs)?;
    Ok(crate_name)
}

/// The kernel ELF as loaders need it: everything up to the end of the last
/// segment's file data, and a section header table with only its null
/// entry (so no symbol table).
/// Every loader Kiln's kernels meet (QEMU's, Firecracker's and
/// cloud-hypervisor's PVH loaders, GRUB's multiboot2 loader) reads program
/// headers only. The full ELF stays beside the image as `NAME.elf`.
pub fn strip_to_segments(elf: &[u8]) -> Result<Vec<u8>> {
    let e = goblin::elf::Elf::parse(elf).map_err(|e| anyhow::anyhow!("not an ELF file: {e}"))?;
    if !e.is_64 || !e.little_endian {
        bail!("not a little-endian ELF64 file");
    }
    let headers_end = e.header.e_phoff + e.header.e_phnum as u64 * e.header.e_phentsize as u64;
    let end = e
        .program_headers
        .iter()
        .map(|p| p.p_offset + p.p_filesz)
        .chain([headers_end])
        .max()
        .unwrap_or(0) as usize;
    if end > elf.len() {
        bail!("a segment runs past the end of the file");
    }
    // A section header table of one null entry: GRUB refuses a multiboot
    // ELF without one (e_shoff 0).
    let mut out = elf[..end].to_vec();
    out.resize(end.next_multiple_of(8), 0);
    let shoff = out.len() as u64;
    out.extend_from_slice(&[0u8; 64]);
    // e_shoff (8 bytes at 0x28); e_shentsize, e_shnum, e_shstrndx (2 bytes
    // each at 0x3a, 0x3c, 0x3e).
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
    out[0x3e..0x40].fill(0);
    Ok(out)
}

/// The raw image of an ELF64 (little-endian) kernel: its loadable
/// segments' file contents, placed at their physical addresses relative to
/// the lowest one (what `objcopy -O binary` makes). Segments without file
/// contents (.bss) are left out; the arm64 header gives the full size.
pub fn elf_to_image(elf: &[u8]) -> Result<Vec<u8>> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a little-endian ELF64 file");
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        bail!("truncated ELF header")
    };
    let mut segs = Vec::new();
    for i in 0..phnum {
        let h = phoff + i * phentsize;
        let (Some(kind), Some(off), Some(paddr), Some(filesz)) =
            (u32_at(h), u64_at(h + 8), u64_at(h + 0x18), u64_at(h + 0x20))
        else {
            bail!("truncated program header {i}")
        };
        if kind == 1 && filesz > 0 {
            let data = elf
                .get(off..off + filesz)
                .with_context(|| format!("segment {i} lies outside the file"))?;
            segs.push((paddr, data));
        }
    }
    let base = segs
        .iter()
        .map(|s| s.0)
        .min()
        .context("no loadable segments")?;
    let end = segs.iter().map(|s| s.0 + s.1.len()).max().unwrap_or(base);
    if end - base > 1 << 30 {
        bail!("loadable segments span more than 1 GiB");
    }
    let mut out = vec![0u8; end - base];
    for (paddr, data) in segs {
        out[paddr - base..paddr - base + data.len()].copy_from_slice(data);
    }
    Ok(out)
}

/// Builds the kernel for `target`; returns the image path.
pub fn build(kf: &Kraftfile, target: &Target, ui: &Ui) -> Result<PathBuf> {
    let paths = BuildPaths::new(kf, target);
    let cfg = crate::config::resolve(kf, target)?;
    std::fs::create_dir_all(paths.config.parent().unwrap())?;
    write_if_changed(&paths.config, &cfg.text())?;
    ui.step(
        2,
        4,
        &format!(
            "Configured ({}); generating link crate {}",
            rel(&paths.config),
            rel(&paths.link_crate)
        ),
    );
    // Host programs named in `programs:` join a copy of the rootfs folder.
    let staged = if kf.programs.is_empty() {
        None
    } else {
        let stage = paths.initrd.with_extension("rootfs");
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        if let Some(r) = &kf.rootfs {
            crate::rootfs::copy_tree(r, &stage)?;
        }
        let n = crate::rootfs::add(&stage, &kf.programs)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}:{}: programs: {e:#}",
                    kf.path.display(),
                    kf.programs_line
                )
            })?
            .len();
        ui.note(&format!(
            "{n} files of {} program(s) added to the rootfs",
            kf.programs.len()
        ));
        Some(stage)
    };
    let initrd = match staged.as_ref().or(kf.rootfs.as_ref()) {
        Some(r) if cfg.on("LIBINITRD") => {
            let n = crate::initrd::prepare(r, &paths.initrd)?;
            Some((paths.initrd.as_path(), n))
        }
        Some(r) => {
            ui.note(&format!(
                "rootfs {} is not packed: LIBINITRD is off",
                r.display()
            ));
            None
        }
        None => None,
    };
    // The rootfs lies in the image, after the kernel, unless the program
    // the app runs is linked at fixed addresses that the image would then
    // cover (a large rootfs and a non-PIE program, as the official Node.js
    // builds): then the kernel is built without it and the boot loader
    // loads it at the top of RAM (`kiln run`, `kiln pkg --format oci`).
    let fixed = match (initrd, staged.as_ref().or(kf.rootfs.as_ref())) {
        (Some(_), Some(root)) if target.arch == "x86_64" && root.is_dir() => {
            fixed_program(root, &kf.cmd)
        }
        _ => None,
    };
    let marker = apart_marker(&paths.kernel);
    let initrd_len = initrd.map_or(0, |(p, _)| std::fs::metadata(p).map_or(0, |m| m.len()));
    // Still apart when the last embedded image, with this initrd's length,
    // would still reach the program.
    let mut apart = match (&fixed, read_marker(&marker)) {
        (Some((_, lo)), Some((end, len))) => end - len.min(end) + initrd_len > *lo,
        _ => false,
    };
    if fixed.is_none() {
        let _ = std::fs::remove_file(&marker);
    }
    loop {
        let crate_name = generate(kf, target, &paths, &cfg, if apart { None } else { initrd })?;
        let kernel = compile(kf, target, &paths, &cfg, &crate_name, ui)?;
        if let (false, Some((prog, lo))) = (apart, &fixed) {
            let elf = std::fs::read(paths.kernel.with_extension("elf")).unwrap_or_default();
            match image_end(&elf) {
                Some(end) if end > *lo => {
                    ui.note(&format!(
                        "{prog} is linked at {lo:#x}, below where the image with the rootfs ends ({end:#x}): the rootfs goes beside the kernel instead ({}), loaded by the boot loader",
                        rel(&paths.initrd)
                    ));
                    std::fs::write(&marker, format!("{end} {initrd_len}\n"))
                        .with_context(|| format!("writing {}", marker.display()))?;
                    apart = true;
                    continue;
                }
                _ => {
                    let _ = std::fs::remove_file(&marker);
                }
            }
        }
        return Ok(kernel);
    }
}

/// The marker beside a kernel built without its rootfs: "END LEN", where
/// the image with the rootfs ended and the rootfs's packed length then.
fn apart_marker(kernel: &Path) -> PathBuf {
    let mut m = kernel.as_os_str().to_owned();
    m.push(".initrd-apart");
    PathBuf::from(m)
}

fn read_marker(marker: &Path) -> Option<(u64, u64)> {
    let t = std::fs::read_to_string(marker).ok()?;
    let mut w = t.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((w.next()??, w.next()??))
}

/// The packed rootfs a kernel was built without (see [`build`]), which the
/// boot loader must load beside it.
pub fn apart_initrd(kernel: &Path) -> Option<PathBuf> {
    let mut c = kernel.as_os_str().to_owned();
    c.push(".cpio");
    let c = PathBuf::from(c);
    (apart_marker(kernel).is_file() && c.is_file()).then_some(c)
}

/// The program `cmd` runs, when it is an x86_64 executable linked at fixed
/// addresses (ET_EXEC): its path and its lowest segment address.
fn fixed_program(root: &Path, cmd: &[String]) -> Option<(String, u64)> {
    use goblin::elf::{header, program_header::PT_LOAD};
    let prog = cmd.first().filter(|p| p.starts_with('/'))?;
    let mut path = root.join(prog.trim_start_matches('/'));
    // Symlinks resolve inside the rootfs, as the guest sees them.
    for _ in 0..8 {
        let Ok(t) = std::fs::read_link(&path) else {
            break;
        };
        path = match t.strip_prefix("/") {
            Ok(abs) => root.join(abs),
            Err(_) => path.parent()?.join(t),
        };
    }
    // The ELF header and program headers only (the program may be 100 MB):
    // both lie in the first page of any executable a linker made.
    let mut head = Vec::new();
    std::io::Read::read_to_end(
        &mut std::fs::File::open(&path).ok()?.take(64 << 10),
        &mut head,
    )
    .ok()?;
    let h = goblin::elf::Elf::parse_header(&head).ok()?;
    if h.e_type != header::ET_EXEC || h.e_machine != header::EM_X86_64 {
        return None;
    }
    let ctx = goblin::container::Ctx::new(
        goblin::container::Container::Big,
        goblin::container::Endian::Little,
    );
    let phs = goblin::elf::ProgramHeader::parse(&head, h.e_phoff as usize, h.e_phnum as usize, ctx)
        .ok()?;
    let lo = phs
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .map(|p| p.p_vaddr)
        .min()?;
    Some((prog.clone(), lo))
}

/// Where a kernel ELF's loaded segments end (physical addresses).
fn image_end(elf: &[u8]) -> Option<u64> {
    let e = goblin::elf::Elf::parse(elf).ok()?;
    e.program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .map(|p| p.p_paddr + p.p_memsz)
        .max()
}

/// Compiles the generated link crate into the kernel image, unless the
/// image is current; returns its path.
fn compile(
    kf: &Kraftfile,
    target: &Target,
    paths: &BuildPaths,
    cfg: &Config,
    crate_name: &str,
    ui: &Ui,
) -> Result<PathBuf> {
    // Kiln's own record of the inputs: when none changed since the last
    // build, the kernel is current without asking cargo.
    let stamp_path = paths.kernel.with_extension("stamp");
    let stamp = inputs_stamp(kf, &paths);
    let current = paths.kernel.is_file()
        && paths.kernel.with_extension("elf").is_file()
        && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if current {
        let size = std::fs::metadata(&paths.kernel)?.len();
        ui.step(
            4,
            4,
            &format!(
                "Kernel {} ({:.1} KiB; up to date)",
                rel(&paths.kernel),
                size as f64 / 1024.0
            ),
        );
        return Ok(paths.kernel.clone());
    }
    let _ = std::fs::remove_file(&stamp_path);

    ui.step(3, 4, &format!("Compiling {} for {target}", kf.name));
    let triple = rust_target(&target.arch);
    let target_dir = kiln_home().join("target").join("kernel");
    let (cargo, mut cmd) = nested_cargo();
    cmd.current_dir(&paths.link_crate)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--target",
            triple,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Kiln links the kernel at a fixed address; position-independent code
        // would need a self-relocating loader for no benefit. Frame pointers
        // give panics and faults their backtraces.
        .args([
            "--config",
            &format!("target.{triple}.rustflags=[\"-Crelocation-model=static\", \"-Cforce-unwind-tables=no\", \"-Cforce-frame-pointers=yes\"{}]", SOFT_CRYPTO.iter().map(|f| format!(", {f}")).collect::<String>()),
        ])
        .env("KILN_LINK_MAP", &paths.map)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Every resolved value also reaches crates as a compile-time environment
    // variable, KILN_CONFIG_<SYMBOL> (read with kiln-std's `kconfig_*!`
    // macros). rustc records which ones a crate reads, so cargo recompiles
    // exactly the crates whose options changed.
    for (name, v) in cfg
        .values
        .iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    {
        cmd.env(format!("KILN_CONFIG_{name}"), v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {:?}: is Rust (cargo) installed?", cargo))?;
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let progress = ui.spinner("compiling");
    let (mut artifacts, mut compiled) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        if line.contains("\"reason\":\"compiler-artifact\"") {
            artifacts += 1;
            if line.contains("\"fresh\":false") {
                compiled += 1;
            }
            let name = line
                .split("\"name\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string();
            progress.set_message(format!("{artifacts} crates, last: {name}"));
        }
    }
    let status = child.wait()?;
    progress.finish_and_clear();
    let errors = err_thread.join().unwrap_or_default();
    if !status.success() {
        eprint!("{errors}");
        // C compile errors (kiln-cc forwards the compiler's lines as cargo
        // warnings), said again at the end, where they are seen.
        let c_errors: Vec<&str> = errors
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cargo:warning="))
            .filter(|l| l.contains(": error:") || l.contains(": fatal error:"))
            .collect();
        if !c_errors.is_empty() {
            bail!("compiling C code failed:\n  {}", c_errors.join("\n  "));
        }
        // A build script's own error (what to install, a missing source),
        // cargo prints indented under `--- stderr`.
        if let Some(e) = errors.lines().find_map(|l| l.strip_prefix("  error: ")) {
            bail!("{e}");
        }
        bail!(
            "compiling the kernel failed (cargo in {})",
            paths.link_crate.display()
        );
    }
    let built = target_dir.join(triple).join("release").join(&crate_name);
    // Copy, then rename into place: a QEMU already booting the previous image
    // (another `kiln run` of the same app) has it mapped, and truncating a
    // mapped file kills that QEMU with SIGBUS.
    let tmp = paths
        .kernel
        .with_extension(format!("tmp{}", std::process::id()));
    if target.arch == "arm64" {
        // Boot loaders take a raw arm64 Image; the ELF stays beside it for
        // debuggers.
        let elf = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let image = elf_to_image(&elf)
            .with_context(|| format!("{}: making the arm64 Image", built.display()))?;
        std::fs::write(&tmp, image).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::copy(&built, paths.kernel.with_extension("elf"))
            .with_context(|| format!("copying {}", built.display()))?;
    } else {
        // The ELF with its symbol table stays beside the image (for gdb
        // and for symbolizing fault reports); the image is cut to what
        // loaders read, unless BUILD_DEBUG_SYMBOLS keeps the symbols in.
        let elf = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        // A linuxu kernel is a host executable: it keeps its symbols, for
        // gdb and perf as they are usually run.
        let image = if cfg.on("BUILD_DEBUG_SYMBOLS") || target.plat == "linuxu" {
            elf.clone()
        } else {
            strip_to_segments(&elf).with_context(|| format!("{}: stripping", built.display()))?
        };
        std::fs::write(&tmp, image).with_context(|| format!("writing {}", tmp.display()))?;
        if target.plat == "linuxu" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", tmp.display()))?;
        }
        let elf_path = paths.kernel.with_extension("elf");
        let elf_tmp = paths
            .kernel
            .with_extension(format!("elf-tmp{}", std::process::id()));
        std::fs::write(&elf_tmp, &elf).with_context(|| format!("writing {}", elf_tmp.display()))?;
        std::fs::rename(&elf_tmp, &elf_path)
            .with_context(|| format!("writing {}", elf_path.display()))?;
    }
    std::fs::rename(&tmp, &paths.kernel)
        .with_context(|| format!("writing {}", paths.kernel.display()))?;
    // The inputs as they were before cargo ran: a file changed meanwhile
    // makes the next build ask cargo again.
    std::fs::write(&stamp_path, &stamp)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    let size = std::fs::metadata(&paths.kernel)?.len();
    ui.step(
        4,
        4,
        &format!(
            "Kernel {} ({:.1} KiB; compiled {compiled} of {artifacts} crates, the rest reused)",
            rel(&paths.kernel),
            size as f64 / 1024.0
        ),
    );
    Ok(paths.kernel.clone())
}

/// What a kernel build reads, as text to compare with the last build's:
/// the path, size and modification time of every file of the libraries,
/// arch and plat crates, the app (not its rootfs folder: the packed initrd
/// stands for it), the generated link crate, the workspace's lock and
/// toolchain files and the `kiln` executable; the environment variables
/// that reach compilers; and the installed Rust toolchains. Cargo would
/// look at the same files (and a few more of the registry's, which the
/// lock file pins); this takes a few milliseconds where cargo takes tens.
fn inputs_stamp(kf: &Kraftfile, paths: &BuildPaths) -> String {
    fn walk(dir: &Path, skip: &[&Path], out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if matches!(name.to_str(), Some("target" | ".kiln" | ".git"))
                || skip.contains(&p.as_path())
            {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&p, skip, out),
                _ => out.push(file_line(&p)),
            }
        }
    }
    fn file_line(p: &Path) -> String {
        match std::fs::metadata(p) {
            Ok(m) => {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .unwrap_or_default();
                format!(
                    "{} {} {}.{:09}",
                    p.display(),
                    m.len(),
                    t.as_secs(),
                    t.subsec_nanos()
                )
            }
            Err(_) => format!("{} missing", p.display()),
        }
    }
    let home = kiln_home();
    let mut lines = Vec::new();
    let rootfs = kf
        .rootfs
        .as_ref()
        .and_then(|r| std::fs::canonicalize(r).ok());
    let skip: Vec<&Path> = rootfs.iter().map(PathBuf::as_path).collect();
    for d in ["lib", "arch", "plat"] {
        walk(&home.join(d), &[], &mut lines);
    }
    let app = std::fs::canonicalize(&kf.app_dir).unwrap_or_else(|_| kf.app_dir.clone());
    walk(&app, &skip, &mut lines);
    // Not the link crate's Cargo.lock: cargo writes it during the first
    // build, and it follows from the manifests.
    let lock = paths.link_crate.join("Cargo.lock");
    walk(&paths.link_crate, &[lock.as_path()], &mut lines);
    for f in ["Cargo.lock", "Cargo.toml", "rust-toolchain.toml"] {
        lines.push(file_line(&home.join(f)));
    }
    for f in [&kf.path, &paths.config, &paths.initrd] {
        lines.push(file_line(f));
    }
    if let Ok(exe) = std::env::current_exe() {
        lines.push(file_line(&exe));
    }
    let rustup = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")));
    if let Some(r) = rustup {
        lines.push(file_line(&r.join("toolchains")));
    }
    lines.sort();
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            ["KILN_", "CC", "CFLAGS", "RUSTC", "BINDGEN", "LIBCLANG"]
                .iter()
                .any(|p| k.starts_with(p))
                && k != "KILN_LINK_MAP"
        })
        .map(|(k, v)| format!("env {k}={v}"))
        .collect();
    env.sort();
    lines.extend(env);
    lines.join("\n") + "\n"
}

/// A path relative to the current folder when it is inside it.
pub fn rel(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    p.strip_prefix(&cwd).unwrap_or(p).display().to_string()
}
