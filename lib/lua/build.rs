//! Compiles Lua 5.4 (from the lua-src crate's sources) for the kernel and
//! generates Rust bindings for its C API with bindgen.
fn main() {
    let krate = kiln_cc::crate_source("lua-src");
    let src = std::fs::read_dir(&krate)
        .expect("reading lua-src's folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lua-5.4"))
        })
        .max()
        .unwrap_or_else(|| kiln_cc::fail(&format!("no lua-5.4 sources in {}", krate.display())));
    // For apps that compile Lua's own lua.c (apps/lua): DEP_KILN_LUA_SRC.
    println!("cargo:src={}", src.display());
    kiln_cc::write_bindings(
        kiln_cc::bindgen()
            .header(src.join("lua.h").to_string_lossy())
            .header(src.join("lauxlib.h").to_string_lossy())
            .header(src.join("lualib.h").to_string_lossy())
            .allowlist_function("lua.*")
            .allowlist_var("LUA.*")
            .allowlist_type("lua.*"),
        "lua.rs",
        "Lua's headers",
    );
    if !kiln_cc::for_kernel() {
        return;
    }
    let mut b = kiln_cc::build_library();
    for e in std::fs::read_dir(&src)
        .expect("reading Lua's sources")
        .flatten()
    {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // lua.c and luac.c are programs (apps/lua compiles lua.c).
        if name.ends_with(".c") && name != "lua.c" && name != "luac.c" {
            b.file(&p);
        }
    }
    // POSIX (musl): mkstemp, popen, _setjmp; no dlopen for C modules.
    b.define("LUA_USE_POSIX", None)
        .warnings(false)
        .extra_warnings(false)
        .flag("-w");
    kiln_cc::compile_with(&b, "lua");
    println!("cargo:rerun-if-changed=build.rs");
}
