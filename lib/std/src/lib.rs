//! The API Kiln apps are written against. It mirrors the parts of Rust's std
//! that make sense in a unikernel, so app code reads like ordinary Rust:
//! `println!`, `String`, `Vec`, `format!`, `env::args()`, `process::exit()`.
//!
//! An app is a library crate with
//! `pub fn main(args: &[&str], env: &[(&str, &str)]) -> i32`; `kiln build`
//! links it with the kernel and calls it after boot.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub use alloc::{borrow, boxed, collections, fmt, format, rc, string, sync, vec};
pub use kiln_console::{print, println};

/// Prints to the console (there is one console; stderr is stdout).
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => { $crate::println!($($arg)*) };
}

/// What most apps want in scope.
pub mod prelude {
    pub use crate::{eprintln, print, println};
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::format;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec;
    pub use alloc::vec::Vec;
}

/// Arguments and environment.
pub mod env {
    /// The app's arguments, the app name first.
    pub fn args() -> impl Iterator<Item = &'static str> {
        kiln_boot::args().iter().map(|s| s.as_str())
    }

    /// The value of environment variable `key` (the last one wins).
    pub fn var(key: &str) -> Option<&'static str> {
        kiln_boot::env().iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// All environment variables, in the order given.
    pub fn vars() -> impl Iterator<Item = (&'static str, &'static str)> {
        kiln_boot::env().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Ending the program.
pub mod process {
    /// Powers the machine off with `code`, which `kiln run` returns.
    pub fn exit(code: i32) -> ! {
        kiln_boot::exit(code)
    }

    /// Ends the program with a panic-style report and the panic exit code.
    pub fn abort() -> ! {
        kiln_boot::exit(kiln_boot::EXIT_PANIC)
    }
}
