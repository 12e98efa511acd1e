//! The configuration of one app and target: gathers the Kconfig files of the
//! chosen arch, platform, every library and the app, applies the app's saved
//! `.config` and the Kraftfile's `kconfig:` on top of the defaults, and
//! resolves them. The result is written to the build folder and decides what
//! the link crate compiles.

use crate::builder::kiln_home;
use crate::kconfig::{self, Eval, Kind, Tree, User, Values};
use crate::kraftfile::{Kraftfile, Target};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A resolved configuration.
pub struct Config {
    pub tree: Tree,
    pub user: User,
    pub values: Values,
}

impl Config {
    /// True when bool symbol `name` is `y`.
    pub fn on(&self, name: &str) -> bool {
        self.values.get(name).cloned().flatten().as_deref() == Some("y")
    }

    /// The `.config` text.
    pub fn text(&self) -> String {
        kconfig::write_config(&self.tree, &self.user)
    }

    /// Rust constants for every symbol with a value, typed by Kconfig type.
    pub fn rust_consts(&self) -> String {
        let mut out = String::new();
        for s in &self.tree.syms {
            let Some(v) = self.values.get(&s.name).cloned().flatten() else {
                continue;
            };
            let line = match s.kind {
                Kind::Bool | Kind::Tristate => {
                    format!("pub const {}: bool = {};\n", s.name, v != "n")
                }
                Kind::Int => format!(
                    "pub const {}: i64 = {};\n",
                    s.name,
                    kconfig::parse_int(&v, 10).unwrap_or(0)
                ),
                Kind::Hex => format!(
                    "pub const {}: u64 = {:#x};\n",
                    s.name,
                    kconfig::parse_int(&v, 16).unwrap_or(0)
                ),
                Kind::Str => format!("pub const {}: &str = {:?};\n", s.name, v),
                Kind::Unknown => continue,
            };
            out.push_str(&line);
        }
        out
    }
}

/// The app's saved configuration file.
pub fn saved_path(kf: &Kraftfile) -> PathBuf {
    kf.path.parent().unwrap_or(Path::new(".")).join(".config")
}

/// The top-level Kconfig of a target: the menus Architecture, Platform,
/// Libraries, Application and Build options, each sourcing the Kconfig files
/// of that part. It is a plain Kconfig file (written next to the build), so
/// any Kconfig tool can read the same tree.
pub fn top_kconfig(kf: &Kraftfile, target: &Target) -> Result<String> {
    let home = kiln_home();
    let mut libs: Vec<PathBuf> = std::fs::read_dir(home.join("lib"))
        .context("reading the lib/ folder")?
        .filter_map(|e| e.ok().map(|e| e.path().join("Kconfig")))
        .filter(|p| p.is_file())
        .collect();
    libs.sort();
    let src = |p: &Path| format!("source \"{}\"\n", p.display());
    let mut t = format!(
        "mainmenu \"Kiln: {} for {}/{}\"\n\n",
        kf.name, target.plat, target.arch
    );
    t += &format!(
        "menu \"Architecture\"\n{}endmenu\n\n",
        src(&home.join("arch").join(&target.arch).join("Kconfig"))
    );
    t += &format!(
        "menu \"Platform\"\n{}endmenu\n\n",
        src(&home.join("plat").join(&target.plat).join("Kconfig"))
    );
    t += "menu \"Libraries\"\n";
    for l in &libs {
        t += &src(l);
    }
    t += "endmenu\n\n";
    let app = std::fs::canonicalize(&kf.app_dir)
        .unwrap_or_else(|_| kf.app_dir.clone())
        .join("Kconfig");
    if app.is_file() {
        t += &format!("menu \"Application\"\n{}endmenu\n\n", src(&app));
    }
    t += &format!(
        "menu \"Build options\"\n{}endmenu\n",
        src(&home.join("kiln").join("Kconfig.build"))
    );
    Ok(t)
}

/// Where the top-level Kconfig of a target is written.
pub fn top_path(kf: &Kraftfile, target: &Target) -> PathBuf {
    kf.path
        .parent()
        .unwrap_or(Path::new("."))
        .join(".kiln")
        .join("build")
        .join(format!(
            "{}_{}-{}.Kconfig",
            kf.name, target.plat, target.arch
        ))
}

/// Loads the Kconfig tree for a target.
pub fn tree(kf: &Kraftfile, target: &Target) -> Result<Tree> {
    let text = top_kconfig(kf, target)?;
    let path = top_path(kf, target);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    vars.insert("KILN_BASE".into(), kiln_home().display().to_string());
    // Every path in the top file is absolute, so the source root is `/`.
    let t = Tree::load(&path, &text, Path::new("/"), &vars)?;
    t.check()?;
    Ok(t)
}

/// Sets one user value after checking the symbol exists and the value fits
/// its type; choosing a choice member clears its siblings.
fn set(tree: &Tree, user: &mut User, key: &str, val: &str, at: &str) -> Result<()> {
    let name = key.strip_prefix("CONFIG_").unwrap_or(key);
    let Some(sym) = tree.get(name) else {
        bail!("{at}: unknown Kconfig symbol {name}");
    };
    let val = match (sym.kind, val) {
        (Kind::Bool | Kind::Tristate, "true") => "y",
        (Kind::Bool | Kind::Tristate, "false") => "n",
        _ => val,
    };
    if let Some(why) = kconfig::invalid(sym.kind, val) {
        bail!("{at}: {name}={val}: wrong type: {why}");
    }
    // Ranges with constant bounds are checked here, so a typo is an error
    // rather than a value silently replaced by the default.
    for (lo, hi, _) in &sym.ranges {
        if let (kconfig::Expr::Const(lo), kconfig::Expr::Const(hi)) = (lo, hi) {
            if let (Some(l), Some(h), Some(v)) =
                (kconfig::num(lo), kconfig::num(hi), kconfig::num(val))
            {
                if v < l || v > h {
                    bail!("{at}: {name}={val} is outside its range {lo}..{hi}");
                }
            }
        }
    }
    if let (Some(c), "y") = (sym.choice, val) {
        for &m in &tree.choices[c].members {
            user.insert(tree.syms[m].name.clone(), "n".into());
        }
    }
    user.insert(name.to_string(), val.to_string());
    Ok(())
}

/// User values from the saved `.config` (if any), then the Kraftfile.
pub fn user_values(kf: &Kraftfile, target: &Target, tree: &Tree) -> Result<User> {
    let mut user = BTreeMap::new();
    let saved = saved_path(kf);
    if saved.is_file() {
        let text = std::fs::read_to_string(&saved)?;
        // In file order: of several members of one choice set to y, the
        // last one wins (set() turns the others off).
        let mut saved_values: Vec<_> = kconfig::read_config(&saved, &text)?.into_iter().collect();
        saved_values.sort_by_key(|(_, (_, line))| *line);
        for (k, (v, line)) in saved_values {
            // Symbols that no longer exist are dropped, as olddefconfig does.
            if tree.get(&k).is_some() {
                set(
                    tree,
                    &mut user,
                    &k,
                    &v,
                    &format!("{}:{line}", saved.display()),
                )?;
            }
        }
    }
    // A rootfs needs the initrd library (which brings ramfs and the VFS).
    if kf.rootfs.is_some() && !user.contains_key("LIBINITRD") {
        user.insert("LIBINITRD".to_string(), "y".to_string());
    }
    // Volumes need their file systems: 9pfs for folders, the disk file
    // system (which brings the block driver) for images. Both, whatever the
    // volumes are, so changing them does not change the kernel.
    if !kf.volumes.is_empty() {
        for lib in ["LIBFATFS", "LIB9PFS"] {
            user.entry(lib.to_string())
                .or_insert_with(|| "y".to_string());
        }
    }
    for (k, v, line) in kf.kconfig.iter().chain(&target.kconfig) {
        set(
            tree,
            &mut user,
            k,
            v,
            &format!("{}:{line}", kf.path.display()),
        )?;
    }
    Ok(user)
}

/// Resolves the configuration of an app for a target.
pub fn resolve(kf: &Kraftfile, target: &Target) -> Result<Config> {
    let tree = tree(kf, target)?;
    let user = user_values(kf, target, &tree)?;
    let values = kconfig::resolve(&tree, &user);
    // `select` forces a symbol on even when its own dependencies are not
    // met (as in Linux); for Kiln that means a library the target cannot
    // run, so it is an error.
    let eval = Eval::new(&tree, &user);
    for (i, sym) in tree.syms.iter().enumerate() {
        if values.get(&sym.name).cloned().flatten().as_deref() == Some("y")
            && eval.t(&sym.direct_dep) == 0
        {
            let missing: Vec<String> = kconfig::syms_of(&sym.direct_dep)
                .into_iter()
                .filter(|d| values.get(d).cloned().flatten().as_deref() != Some("y"))
                .collect();
            // The expression itself when naming what is missing would
            // mislead: a dependency the target has rules it out (`depends
            // on !PLAT_LINUXU`), or any of several would do (`||`).
            let expr = sym.direct_dep.to_string();
            let needs = if missing.is_empty() || expr.contains("||") {
                format!("`{expr}`")
            } else {
                missing.join(", ")
            };
            bail!(
                "{}: {} needs {needs}, which {target} does not support (selected by {})",
                kf.path.display(),
                sym.name,
                eval.selected_by(i).join(", ")
            );
        }
    }
    Ok(Config { tree, user, values })
}

/// `kiln config` actions.
pub enum Action {
    Show,
    Diff,
    Set(Vec<String>),
    Unset(Vec<String>),
    OldDefConfig,
    SaveDefConfig,
}

/// Runs `kiln config`.
pub fn command(kf: &Kraftfile, target: &Target, action: Action) -> Result<()> {
    let tree = tree(kf, target)?;
    let saved = saved_path(kf);
    let mut user = user_values(kf, target, &tree)?;
    let write = |user: &User| -> Result<()> {
        std::fs::write(&saved, kconfig::write_config(&tree, user))
            .with_context(|| format!("writing {}", saved.display()))?;
        eprintln!("kiln: wrote {}", saved.display());
        Ok(())
    };
    match action {
        Action::Show => print!("{}", kconfig::write_config(&tree, &user)),
        Action::Diff => {
            let defaults = kconfig::resolve(&tree, &BTreeMap::new());
            let values = kconfig::resolve(&tree, &user);
            for s in &tree.syms {
                let (d, v) = (
                    defaults.get(&s.name).cloned().flatten(),
                    values.get(&s.name).cloned().flatten(),
                );
                if d != v {
                    let show = |x: Option<String>| x.unwrap_or_else(|| "(no value)".into());
                    println!("CONFIG_{}: {} -> {}", s.name, show(d), show(v));
                }
            }
        }
        Action::Set(pairs) => {
            for p in pairs {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("--set {p}: expected SYMBOL=VALUE"))?;
                set(&tree, &mut user, k, v, "--set")?;
            }
            write(&user)?;
        }
        Action::Unset(names) => {
            for n in names {
                let name = n.strip_prefix("CONFIG_").unwrap_or(&n).to_string();
                if tree.get(&name).is_none() {
                    bail!("--unset: unknown Kconfig symbol {name}");
                }
                // Back to the default: forget the user's value.
                user.remove(&name);
            }
            write(&user)?;
        }
        Action::OldDefConfig => write(&user)?,
        Action::SaveDefConfig => print!("{}", Eval::new(&tree, &user).min_config_text("")),
    }
    Ok(())
}
