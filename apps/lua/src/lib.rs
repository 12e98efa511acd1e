//! Lua 5.4 as a unikernel: the app is main.c, a small front end in C
//! over lib/lua (`kiln run apps/lua -- /script.lua args`, `-e CODE`, `-v`).
#![no_std]

pub use kiln_libc::c_main as main;
// lib/lua's C (the interpreter and its libraries) is linked in.
use kiln_lua as _;
