//! Any text as a Kconfig file: parsing gives a tree or an error, never a
//! panic or a stack overflow; a tree evaluates to a `.config` (defaults,
//! then every symbol set to y), and that `.config` reads back.
#![no_main]

use kiln::kconfig::{read_config, resolve, write_config, Tree};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Sourced files are looked up in an empty folder (as `kiln kconfig`
    // does, the source root exists).
    let root = std::env::temp_dir().join("kiln-fuzz-kconfig");
    let _ = std::fs::create_dir(&root);
    let Ok(tree) = Tree::load(&root.join("Kconfig"), text, &root, &HashMap::new()) else { return };
    let _ = tree.problems();
    let _ = resolve(&tree, &BTreeMap::new());
    let config = write_config(&tree, &BTreeMap::new());
    read_config(Path::new(".config"), &config).expect("own .config reads back");
    let mut all_y = BTreeMap::new();
    for sym in &tree.syms {
        all_y.insert(sym.name.clone(), "y".to_string());
    }
    let _ = write_config(&tree, &all_y);
});
