//! Compiling C for Kiln's kernels, from a build script.
//!
//! C code in a Kiln kernel (an app's sources, a C library such as SQLite
//! or Lua, lib/libc's own start-up code) is compiled by clang for the
//! kernel's CPU with musl's headers, the headers of the C library the
//! kernel links (`LIBC`, lib/libc). The kernel's targets are
//! `x86_64-unknown-none` and `aarch64-unknown-none`; the cc crate alone
//! would compile for them with the host's gcc and the host's glibc
//! headers, which is wrong for both. So a build script asks this crate:
//!
//! ```ignore
//! // build.rs
//! fn main() {
//!     kiln_cc::compile("hello", &["main.c"]); // or kiln_cc::build()...
//! }
//! ```
//!
//! Contract:
//! - [`build`] gives a [`cc::Build`] set up for the target cargo builds
//!   for: `clang --target=<arch>-linux-musl`, musl's headers only (plus
//!   clang's own `stddef.h`, `stdarg.h`...), `-O2`, sections per function
//!   (the kernel's link drops what is not called), `-D__KILN__=1`, and
//!   every resolved Kconfig value as `-DCONFIG_<SYMBOL>=...` (`y` is 1,
//!   strings stay strings, `n` is not defined): Unikraft's `CONFIG_`
//!   convention. Kiln's own header, `kiln.h`, is on the include path.
//!   [`build_library`] is the same without the `CONFIG_` defines, for C
//!   libraries that read none (a configuration change then leaves them
//!   compiled).
//! - Host builds (unit tests) get a plain [`cc::Build`]: nothing for a
//!   kernel is compiled then.
//! - What is missing is said with the package that brings it: clang
//!   (`apt install clang`), musl's headers for the CPU (`apt install
//!   musl-dev`, or `musl-dev:arm64` for arm64 kernels). The build stops
//!   with that sentence, not with a compiler's confusion.
//! - A compile error is the compiler's own message with file:line (cc
//!   prints it; `kiln build` shows it).
//! - [`bindgen`] (feature `bindgen`) gives a bindgen builder that parses
//!   headers exactly as [`build`] compiles them.

use std::path::{Path, PathBuf};

/// The C side of a kernel target.
#[derive(Debug, Clone)]
pub struct Target {
    /// clang's target triple (`x86_64-linux-musl`).
    pub triple: String,
    /// musl's headers for that CPU.
    pub include: PathBuf,
    /// musl's libraries (`libc.a`) for that CPU.
    pub lib: PathBuf,
}

/// The folder of Kiln's own C header, `kiln.h`.
pub fn kiln_include() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("include")
}

/// Whether cargo is building for a Kiln kernel (a bare-metal target).
pub fn for_kernel() -> bool {
    std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none")
}

/// The C target for the CPU cargo builds for, found on this machine.
/// `Err` says what to install.
pub fn target() -> Result<Target, String> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (triple, debian) = match arch.as_str() {
        "x86_64" => ("x86_64-linux-musl", "musl-dev"),
        "aarch64" => (
            "aarch64-linux-musl",
            "musl-dev:arm64 (after `dpkg --add-architecture arm64 && apt update`)",
        ),
        other => return Err(format!("Kiln compiles no C for the CPU {other:?}")),
    };
    println!("cargo:rerun-if-env-changed=KILN_MUSL");
    // KILN_MUSL names a musl installation laid out as Debian's (include/,
    // lib/), for machines without the Debian package.
    let (include, lib) = match std::env::var_os("KILN_MUSL") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            (dir.join("include"), dir.join("lib"))
        }
        None => (
            PathBuf::from("/usr/include").join(triple),
            PathBuf::from("/usr/lib").join(triple),
        ),
    };
    if !include.join("stdio.h").is_file() || !lib.join("libc.a").is_file() {
        return Err(format!(
            "C code for {arch} kernels needs musl's headers and libc.a for {arch} \
             ({} and {} are missing): install {debian}",
            include.join("stdio.h").display(),
            lib.join("libc.a").display()
        ));
    }
    Ok(Target {
        triple: triple.into(),
        include,
        lib,
    })
}

/// The C compiler, checked once: `Err` says which package brings it.
fn clang() -> Result<String, String> {
    println!("cargo:rerun-if-env-changed=KILN_CLANG");
    let clang = std::env::var("KILN_CLANG").unwrap_or_else(|_| "clang".into());
    match std::process::Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(clang),
        _ => Err(format!(
            "C code for Kiln kernels is compiled with clang, and `{clang}` does not run: \
             install it (apt install clang)"
        )),
    }
}

/// Stops the build script with `msg` as cargo shows it (`kiln build`
/// repeats it at the end of its output).
pub fn fail(msg: &str) -> ! {
    // cargo prints a build script's stderr when it fails; kiln shows it.
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// The Kconfig values `kiln build` passes (KILN_CONFIG_<SYMBOL>), as
/// `CONFIG_<SYMBOL>` defines. Each one read is declared, so cargo
/// recompiles the C when a value changes.
pub fn config_defines() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| {
            let sym = k.strip_prefix("KILN_CONFIG_")?.to_string();
            println!("cargo:rerun-if-env-changed={k}");
            let value = match v.as_str() {
                "y" => "1".to_string(),
                "n" | "" => return None,
                v if v.parse::<i64>().is_ok() || v.starts_with("0x") => v.to_string(),
                v => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
            };
            Some((format!("CONFIG_{sym}"), value))
        })
        .collect();
    out.sort();
    out
}

/// Compiler arguments shared by [`build`] and [`bindgen`] (with the
/// Kconfig values as defines when `config`).
fn common_args(t: &Target, config: bool) -> Vec<String> {
    let mut a = vec![
        format!("--target={}", t.triple),
        // musl's headers and clang's own (stddef.h, stdarg.h, float.h),
        // never the host's glibc.
        "-nostdlibinc".into(),
        format!("-isystem{}", t.include.display()),
        format!("-I{}", kiln_include().display()),
        "-D__KILN__=1".into(),
    ];
    if config {
        a.extend(
            config_defines()
                .into_iter()
                .map(|(k, v)| format!("-D{k}={v}")),
        );
    }
    a
}

/// A [`cc::Build`] for the kernel cargo builds (see the module docs), with
/// the Kconfig values as `CONFIG_` defines: for an app's own C.
pub fn build() -> cc::Build {
    configured(true)
}

/// [`build`] without the `CONFIG_` defines: for a C library that reads
/// none (SQLite, Lua), so that a change to the kernel's configuration
/// does not recompile it.
pub fn build_library() -> cc::Build {
    configured(false)
}

fn configured(config: bool) -> cc::Build {
    let mut b = cc::Build::new();
    if !for_kernel() {
        return b;
    }
    let t = target().unwrap_or_else(|e| fail(&e));
    let clang = clang().unwrap_or_else(|e| fail(&e));
    b.compiler(clang)
        .no_default_flags(true)
        .flag("-O2")
        .flag("-g")
        .flag("-ffunction-sections")
        .flag("-fdata-sections")
        // The kernel is linked at a fixed address.
        .flag("-fno-pic")
        .flag("-fno-stack-protector")
        .flag("-fno-asynchronous-unwind-tables");
    for a in common_args(&t, config) {
        b.flag(a);
    }
    b
}

/// Compiles `sources` (paths relative to the package) into the static
/// library `name`, linked into the kernel; cargo recompiles when one of
/// them, or a header (`.h`) in a source's folder, changes.
pub fn compile(name: &str, sources: &[&str]) {
    if !for_kernel() {
        return;
    }
    let mut b = build();
    // Absolute paths: the compiler's messages then name the file wherever
    // they are read.
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    for s in sources {
        let path = dir.join(s);
        println!("cargo:rerun-if-changed={}", path.display());
        // Headers beside a source (not the folder: the app's build output
        // lives under it and would make every build recompile).
        if let Some(Ok(entries)) = path.parent().map(std::fs::read_dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "h") {
                    println!("cargo:rerun-if-changed={}", e.path().display());
                }
            }
        }
        b.file(path);
    }
    compile_with(&b, name);
}

/// Compiles what `b` names into the static library `name`, linked into
/// the kernel; a failure stops the build script, pointing at the
/// compiler's messages.
pub fn compile_with(b: &cc::Build, name: &str) {
    if let Err(e) = b.try_compile(name) {
        fail(&format!(
            "compiling C for {name} failed (the compiler's messages are above): {e}"
        ));
    }
}

/// The folder of a published crate's sources, as cargo downloaded them:
/// C libraries come from crates that ship them (SQLite's amalgamation in
/// `libsqlite3-sys`, Lua in `lua-src`), never copied into Kiln. The crate
/// must be in the calling package's dependency graph; a dependency on a
/// platform no target has (`[target.'cfg(any())'.dependencies]`) brings
/// its sources without building it.
pub fn crate_source(name: &str) -> PathBuf {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| fail(&format!("running cargo metadata for {name}'s sources: {e}")));
    if !out.status.success() {
        fail(&format!(
            "cargo metadata (for {name}'s sources) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| fail(&format!("cargo metadata's output: {e}")));
    let found = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["manifest_path"].as_str())
        .map(PathBuf::from);
    match found.as_ref().and_then(|p| p.parent()) {
        Some(dir) => dir.to_path_buf(),
        None => fail(&format!(
            "{name} is not among {}'s dependencies (cargo metadata)",
            manifest.display()
        )),
    }
}

/// Runs bindgen with `b` and writes the bindings to `OUT_DIR/file`, or
/// stops the build script saying which headers (`what`) it could not read.
#[cfg(feature = "bindgen")]
pub fn write_bindings(b: bindgen::Builder, file: &str, what: &str) {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join(file);
    let bindings = b
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen could not read {what}: {e}")));
    if let Err(e) = bindings.write_to_file(&out) {
        fail(&format!("writing {}: {e}", out.display()));
    }
}

/// A bindgen builder that reads headers as [`build_library`] compiles
/// them: clang's target, musl's headers, `kiln.h`'s folder; `core` types
/// (the kernel has no `std`).
#[cfg(feature = "bindgen")]
pub fn bindgen() -> bindgen::Builder {
    let mut b = bindgen::Builder::default().use_core().layout_tests(false);
    if for_kernel() {
        let t = target().unwrap_or_else(|e| fail(&e));
        b = b.clang_args(common_args(&t, false));
    } else {
        b = b.clang_arg(format!("-I{}", kiln_include().display()));
    }
    b
}
