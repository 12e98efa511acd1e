//! The C test app: ctest.c is the app.
#![no_std]

pub use kiln_libc::c_main as main;
