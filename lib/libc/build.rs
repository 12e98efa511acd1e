//! Links musl's libc.a into the kernel, compiles the C runtime's entry
//! (c/start.c), generates Rust's view of kiln.h with bindgen, and records
//! the kernel's Kconfig values for `kiln_config()`.
use std::path::PathBuf;

fn main() {
    let include = kiln_cc::kiln_include();
    println!(
        "cargo:rerun-if-changed={}",
        include.join("kiln.h").display()
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());

    // kiln.h as Rust: its types, and its functions (which src/lib.rs
    // implements and checks against these declarations).
    kiln_cc::write_bindings(
        kiln_cc::bindgen()
            .header(include.join("kiln.h").to_string_lossy())
            .allowlist_item("kiln_.*"),
        "kiln_h.rs",
        "kiln.h",
    );

    // The Kconfig values, for kiln_config() at run time.
    let mut table = String::from("static CONFIG: &[(&str, &core::ffi::CStr)] = &[\n");
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| Some((k.strip_prefix("KILN_CONFIG_")?.to_string(), v)))
        .collect();
    vars.sort();
    for (k, v) in &vars {
        println!("cargo:rerun-if-env-changed=KILN_CONFIG_{k}");
        if v != "n" && !v.contains('\0') {
            table += &format!("    ({k:?}, c{v:?}),\n");
        }
    }
    table += "];\n";
    std::fs::write(out.join("config.rs"), table).expect("writing config.rs");

    if !kiln_cc::for_kernel() {
        return;
    }
    let t = kiln_cc::target().unwrap_or_else(|e| kiln_cc::fail(&format!("LIBC: {e}")));
    println!("cargo:rerun-if-changed=c/start.c");
    kiln_cc::compile_with(
        kiln_cc::build_library().file("c/start.c"),
        "kiln_libc_start",
    );
    println!("cargo:rustc-link-search=native={}", t.lib.display());
    println!("cargo:rustc-link-lib=static=c");
}
