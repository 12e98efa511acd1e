// The app's main is main.c, Kiln's Lua front end, compiled against the Lua
// headers of the sources lib/lua builds (DEP_KILN_LUA_SRC).
fn main() {
    if !kiln_cc::for_kernel() {
        return;
    }
    println!("cargo:rerun-if-changed=main.c");
    let lua = std::env::var("DEP_KILN_LUA_SRC").expect("lib/lua names Lua's sources");
    let mut b = kiln_cc::build();
    b.file("main.c").include(lua);
    kiln_cc::compile_with(&b, "lua_main");
}
