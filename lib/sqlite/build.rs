//! Compiles SQLite's amalgamation (from the libsqlite3-sys crate's
//! sources) for the kernel and generates its Rust bindings with bindgen.
fn main() {
    let src = kiln_cc::crate_source("libsqlite3-sys").join("sqlite3");
    kiln_cc::write_bindings(
        kiln_cc::bindgen()
            .header(src.join("sqlite3.h").to_string_lossy())
            .allowlist_function("sqlite3_.*")
            .allowlist_var("SQLITE_.*")
            .allowlist_type("sqlite3.*"),
        "sqlite3.rs",
        "sqlite3.h",
    );
    if !kiln_cc::for_kernel() {
        return;
    }
    let mut b = kiln_cc::build_library();
    b.file(src.join("sqlite3.c"))
        // Serialized threading over musl's pthreads; no shared libraries
        // to load extensions from; memory statistics off (a lock less per
        // malloc); double-quoted strings are strings, not identifiers.
        .define("SQLITE_THREADSAFE", "1")
        .define("SQLITE_OMIT_LOAD_EXTENSION", "1")
        .define("SQLITE_DEFAULT_MEMSTATUS", "0")
        .define("SQLITE_DQS", "0")
        .define("SQLITE_TEMP_STORE", "3")
        .define("SQLITE_DEFAULT_FOREIGN_KEYS", "1")
        // The amalgamation is not ours to clean up.
        .warnings(false)
        .extra_warnings(false)
        .flag("-w");
    kiln_cc::compile_with(&b, "sqlite3");
    // REAL values as their bits (c/real.c says why).
    let mut r = kiln_cc::build_library();
    r.file("c/real.c").include(&src);
    kiln_cc::compile_with(&r, "kiln_sqlite_real");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=c/real.c");
}
