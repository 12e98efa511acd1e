//! Kiln's Kconfig evaluator against kconfiglib, the reference implementation
//! (Debian's python3-kconfiglib, run by /usr/bin/python3): for every tree in
//! `tests/kconfig/` and every `.config` next to it, both must write the same
//! `.config` and the same minimal config (savedefconfig), byte for byte. The
//! project's own tree is compared the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kconfig")
}

/// Runs kconfiglib and Kiln on one tree and input; returns both outputs.
fn both(dir: &Path, top: &Path, config: Option<&Path>, min: bool) -> (String, String) {
    let out = std::env::temp_dir().join(format!(
        "kiln-kconfiglib-{}-{}.out",
        std::process::id(),
        rand_suffix()
    ));
    let mut py = Command::new("/usr/bin/python3");
    py.arg(cases().join("kconfiglib_resolve.py")).arg(top);
    py.arg(config.map_or(PathBuf::from("-"), Path::to_path_buf))
        .arg(&out);
    if min {
        py.arg("--min");
    }
    // `source "$(KILN_TEST_EXTRA)/Kconfig"` in tests/kconfig/sources.
    let r = py
        .current_dir(dir)
        .env("srctree", dir)
        .env("KILN_TEST_EXTRA", "extra")
        .output()
        .expect("running /usr/bin/python3");
    assert!(
        r.status.success(),
        "kconfiglib failed on {}: {}",
        top.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    let reference = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);

    let mut k = Command::new(env!("CARGO_BIN_EXE_kiln"));
    k.arg("kconfig").arg(top);
    if let Some(c) = config {
        k.arg("--config").arg(c);
    }
    if min {
        k.arg("--savedefconfig");
    }
    let r = k
        .current_dir(dir)
        .env("srctree", dir)
        .env("KILN_TEST_EXTRA", "extra")
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "kiln kconfig failed on {}: {}",
        top.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    (reference, String::from_utf8(r.stdout).unwrap())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn compare_tree(dir: &Path, top: &Path, configs: &[Option<PathBuf>]) -> usize {
    let mut compared = 0;
    for c in configs {
        for min in [false, true] {
            let (reference, ours) = both(dir, top, c.as_deref(), min);
            let what = format!(
                "{} with {} ({})",
                top.display(),
                c.as_ref()
                    .map_or("defaults".into(), |p| p.display().to_string()),
                if min { "savedefconfig" } else { ".config" }
            );
            if !min {
                assert!(
                    reference.contains("CONFIG_"),
                    "kconfiglib wrote no symbols for {what}:\n{reference}"
                );
            }
            assert_eq!(ours, reference, "Kiln and kconfiglib disagree on {what}");
            compared += 1;
        }
    }
    compared
}

#[test]
fn synthetic_trees_resolve_exactly_like_kconfiglib() {
    let mut total = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 8,
        "expected the synthetic trees in {}",
        cases().display()
    );
    for d in &dirs {
        let mut configs: Vec<Option<PathBuf>> = vec![None];
        let mut found: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "config"))
            .collect();
        found.sort();
        assert!(
            !found.is_empty(),
            "{}: each tree needs at least one .config input",
            d.display()
        );
        configs.extend(found.into_iter().map(Some));
        total += compare_tree(d, &d.join("Kconfig"), &configs);
    }
    assert!(total >= 40, "only {total} comparisons");
}

#[test]
fn kilns_own_tree_resolves_exactly_like_kconfiglib() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let app = root.join("apps/helloworld");
    // `kiln config --show` writes the top-level Kconfig of the target next to the build.
    let r = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["config", "--show"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let top = app.join(".kiln/build/helloworld_qemu-x86_64.Kconfig");
    assert!(top.is_file());
    let dir = std::env::temp_dir().join(format!("kiln-kconfiglib-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let region = dir.join("region.config");
    std::fs::write(&region, "CONFIG_LIBALLOC_REGION=y\n# CONFIG_LIBBOOT_BANNER is not set\nCONFIG_LIBCONSOLE_LOGLEVEL=9\n").unwrap();
    let n = compare_tree(Path::new("/"), &top, &[None, Some(region)]);
    assert_eq!(n, 4);
}

/// Trees with a dependency loop (through depends, select, defaults, ranges,
/// prompt conditions, or a symbol on itself) have no configuration: both
/// tools refuse them.
#[test]
fn dependency_loops_are_refused_like_kconfiglib() {
    let dir = std::env::temp_dir().join(format!("kiln-kconfiglib-loops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let top = dir.join("Kconfig");
    let trees = [
        "config A\n\tbool \"a\"\n\tdepends on B\nconfig B\n\tbool \"b\"\n\tdepends on A\n",
        "config A\n\tbool \"a\"\n\tdepends on A\n",
        "config A\n\tbool \"a\"\n\tdepends on B\n\tselect B\nconfig B\n\tbool \"b\"\n",
        "config A\n\tbool\n\tdefault B\nconfig B\n\tbool\n\tdefault A\n",
        "config A\n\tint \"a\"\n\trange 0 B\nconfig B\n\tint\n\tdefault A\n",
        "config A\n\tbool \"a\" if B\nconfig B\n\tbool\n\tdefault y if A\n",
    ];
    for text in trees {
        std::fs::write(&top, text).unwrap();
        let out = dir.join("out");
        let py = Command::new("/usr/bin/python3")
            .arg(cases().join("kconfiglib_resolve.py"))
            .arg(&top)
            .arg("-")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            !py.status.success() && String::from_utf8_lossy(&py.stderr).contains("Dependency loop"),
            "kconfiglib accepted:\n{text}"
        );
        let k = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("kconfig")
            .arg(&top)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&k.stderr);
        assert!(
            !k.status.success()
                && err.contains(&format!("{}:1: dependency loop: A -> ", top.display())),
            "kiln kconfig on:\n{text}\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// kconfiglib's own test trees (the `tests/K*` files of its source, which
/// `scripts/kconfiglib-trees` fetches; `scripts/test` runs it): for each,
/// with no input and with 10 random configurations (tristates and `m`
/// included), Kiln writes the same `.config` and minimal config as
/// kconfiglib, byte for byte; a tree kconfiglib refuses (dependency loops,
/// missing sources, recursive macros) Kiln refuses too.
#[test]
fn kconfiglibs_own_test_trees_resolve_exactly_like_kconfiglib() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kconfiglib-src");
    let tests = src.join("tests");
    assert!(
        tests.is_dir(),
        "{} is missing: run scripts/kconfiglib-trees (scripts/test does)",
        tests.display()
    );
    let mut trees: Vec<PathBuf> = std::fs::read_dir(&tests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('K'))
        .collect();
    trees.sort();
    assert!(trees.len() >= 40, "only {} trees", trees.len());
    let (mut compared, mut refused) = (0, 0);
    for tree in &trees {
        let rel = tree.strip_prefix(&src).unwrap();
        let out = std::env::temp_dir().join(format!(
            "kiln-kconfiglib-trees-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&out).unwrap();
        let py = Command::new("/usr/bin/python3")
            .arg(cases().join("kconfiglib_trees.py"))
            .arg(rel)
            .arg(&out)
            .args(["10", "1"])
            .current_dir(&src)
            .env("srctree", &src)
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "kconfiglib on {}: {}",
            rel.display(),
            String::from_utf8_lossy(&py.stderr)
        );
        let kiln = |args: &[&std::ffi::OsStr]| {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .arg("kconfig")
                .arg(rel)
                .args(args)
                .current_dir(&src)
                .env("srctree", &src)
                .output()
                .unwrap()
        };
        if let Ok(why) = std::fs::read_to_string(out.join("refused")) {
            let k = kiln(&[]);
            assert!(
                !k.status.success(),
                "{}: kconfiglib refuses it ({}) and Kiln does not",
                rel.display(),
                why.trim()
            );
            refused += 1;
        } else {
            let mut inputs: Vec<(String, Option<PathBuf>)> = vec![("alldef".into(), None)];
            inputs.extend((0..10).map(|i| {
                (
                    format!("random-{i}"),
                    Some(out.join(format!("random-{i}.config"))),
                )
            }));
            for (name, config) in inputs {
                for (ext, min) in [("out", false), ("min", true)] {
                    let mut args: Vec<&std::ffi::OsStr> = Vec::new();
                    if let Some(c) = &config {
                        args.extend([std::ffi::OsStr::new("--config"), c.as_os_str()]);
                    }
                    if min {
                        args.push(std::ffi::OsStr::new("--savedefconfig"));
                    }
                    let k = kiln(&args);
                    assert!(
                        k.status.success(),
                        "kiln kconfig on {} ({name}): {}",
                        rel.display(),
                        String::from_utf8_lossy(&k.stderr)
                    );
                    let want = std::fs::read_to_string(out.join(format!("{name}.{ext}"))).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&k.stdout),
                        want,
                        "{} ({name}, {ext})",
                        rel.display()
                    );
                    compared += 1;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    assert!(
        compared >= 600 && refused >= 10,
        "{compared} compared, {refused} refused"
    );
}
