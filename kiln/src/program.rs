//! A Rust program for Unikraft's Rust support: a `std` crate beside a
//! Kraftfile that builds it from Unikraft's sources (`unikraft:`,
//! `libraries:`; the catalog's native/helloworld-rs, http-rs,
//! http-rs-axum). Kiln does not build Unikraft's libraries, but the
//! program needs none of them: it is built as a static Linux program
//! (musl, the target's architecture) and run on Kiln's ELF loader, its
//! binary at `/NAME` in the rootfs (beside the Kraftfile's rootfs files)
//! and the Kraftfile's `cmd` as its arguments.

use anyhow::{bail, Context, Result};

use crate::kraftfile::{Kraftfile, Target};

/// Whether the Kraftfile's app is such a program: a Cargo package that is
/// not a Kiln app (no `[package.metadata.kiln]`) in a Kraftfile with
/// Unikraft's fields and no runtime.
pub fn is_std_program(kf: &Kraftfile) -> Option<String> {
    if !kf.unikraft_sources || kf.template_app.is_some() {
        return None;
    }
    let text = std::fs::read_to_string(kf.app_dir.join("Cargo.toml")).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    let package = doc.get("package")?.as_table()?;
    if package
        .get("metadata")
        .and_then(|m| m.get("kiln"))
        .is_some()
    {
        return None;
    }
    package.get("name")?.as_str().map(str::to_string)
}

/// Builds the program for `target` and turns `kf` into an ELF loader app
/// that runs it.
pub fn prepare(kf: &mut Kraftfile, target: &Target, name: &str, say: &dyn Fn(&str)) -> Result<()> {
    let triple = match target.arch.as_str() {
        "x86_64" => "x86_64-unknown-linux-musl",
        "arm64" => "aarch64-unknown-linux-musl",
        a => bail!(
            "{}: a Rust program for {a} is not supported",
            kf.path.display()
        ),
    };
    let dir =
        std::fs::canonicalize(&kf.app_dir).with_context(|| format!("{}", kf.app_dir.display()))?;
    let out = dir.join(".kiln").join("program");
    say(&format!("{}: a Rust program (Unikraft's Rust support): building it for Linux ({triple}) to run on Kiln's ELF loader", dir.display()));
    let (cargo, mut c) = crate::builder::nested_cargo();
    let o = c
        .current_dir(&dir)
        .args(["build", "--release", "--quiet", "--target", triple])
        .arg("--target-dir")
        .arg(out.join("target"))
        // No cross C toolchain for arm64: Rust's own linker and musl's
        // objects from the Rust target.
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .output()
        .with_context(|| format!("running {cargo:?}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("target may not be installed") {
            bail!("building {}: Rust's {triple} target is missing; install it with `rustup target add {triple}`", dir.display());
        }
        bail!(
            "building the Rust program in {} for {triple} failed:\n{}",
            dir.display(),
            err.trim()
        );
    }
    let bin = out.join("target").join(triple).join("release").join(name);
    if !bin.is_file() {
        bail!(
            "building {}: cargo made no {}",
            dir.display(),
            bin.display()
        );
    }
    // The rootfs: the Kraftfile's own files, then the program.
    let stage = out.join("rootfs");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    if let Some(r) = kf.rootfs.as_ref().filter(|r| r.is_dir()) {
        crate::dockerfile::copy_tree(r, &stage)?;
    }
    let inside = format!("/{name}");
    std::fs::copy(&bin, stage.join(name)).with_context(|| format!("copying {}", bin.display()))?;
    kf.rootfs = Some(stage);
    kf.cmd.insert(0, inside);
    kf.app_dir = crate::builder::kiln_home().join("apps").join("elfloader");
    kf.template_app = Some("elfloader");
    Ok(())
}
