//! A C app: `main.c` is the app. Its `main(argc, argv, envp)` runs as the
//! C runtime's main thread (lib/libc); this crate only hands over to it.
#![no_std]

pub use kiln_libc::c_main as main;
