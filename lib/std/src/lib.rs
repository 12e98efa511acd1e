//! The API Kiln apps are written against. It mirrors the parts of Rust's std
//! that make sense in a unikernel, so app code reads like ordinary Rust:
//! `println!`, `String`, `Vec`, `format!`, `env::args()`, `process::exit()`.
//!
//! An app is a library crate with
//! `pub fn main(args: &[&str], env: &[(&str, &str)]) -> i32`; `kiln build`
//! links it with the kernel and calls it after boot.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub use alloc::{borrow, boxed, collections, fmt, format, rc, string, vec};
pub use kiln_console::{print, println};

/// Prints to the console (there is one console; stderr is stdout).
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => { $crate::println!($($arg)*) };
}

#[cfg(feature = "fs")]
pub mod fs;

/// TCP and UDP sockets and DNS over the kernel's network stack (kiln-std's
/// `net` feature; the app's Kconfig selects LIBNET). Blocking calls block
/// the calling thread and let others run; event loops use non-blocking
/// sockets, [`net::poll`] and [`net::idle`].
#[cfg(feature = "net")]
pub mod net {
    pub use crate::stream::Stream;
    pub use kiln_net::{
        available, dns, flush, idle, interrupts, poll, wake_waiters, Error, IpAddress, Ipv4Address,
        Result, TcpListener, TcpStream, UdpSocket,
    };
}

#[cfg(feature = "net")]
mod stream;

/// TLS for servers (kiln-std's `tls` feature; the app's Kconfig selects
/// LIBTLS): `tls::server_config` from PEM files, and
/// [`net::Stream::Tls`] for the connections.
#[cfg(feature = "tls")]
pub mod tls {
    pub use kiln_tls::{
        common_name, server_config, server_config_with, Options, ServerConfig, Session, TlsStream,
    };
}

/// Threads (kiln-std's `thread` feature; the app's Kconfig selects
/// LIBSCHED). Scheduling is cooperative on one CPU: a thread runs until it
/// blocks, sleeps or yields.
#[cfg(feature = "thread")]
pub mod thread {
    pub use kiln_sched::{current_name, spawn, yield_now, Builder, JoinHandle, ThreadId};

    /// Blocks the calling thread for at least `d`; the CPU halts if no other
    /// thread is ready.
    pub fn sleep(d: core::time::Duration) {
        kiln_sched::sleep(d)
    }
}

/// Shared ownership (`Arc`) and, with the `thread` feature, locks whose
/// waiters block: `Mutex`, `Condvar`, `WaitQueue`.
pub mod sync {
    pub use alloc::sync::*;
    #[cfg(feature = "thread")]
    pub use kiln_sched::{Condvar, Mutex, MutexGuard, WaitQueue};
}

/// The heap's statistics: `total` bytes, `in_use`, `peak` (None before boot).
pub use kiln_boot::heap_stats;

/// Time since boot.
pub mod time {
    pub use core::time::Duration;

    /// Microseconds since boot (1 GHz assumed when the clock rate is unknown).
    pub fn micros() -> u64 {
        let p = kiln_boot::platform();
        let ticks = p.map_or(0, |p| p.ticks());
        let hz = p.and_then(|p| p.tick_hz()).unwrap_or(1_000_000_000);
        (ticks as u128 * 1_000_000 / hz as u128) as u64
    }
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

/// Kconfig options of the kernel being built, read at compile time.
///
/// `kiln build` hands every resolved symbol to the compiler as the
/// environment variable `KILN_CONFIG_<SYMBOL>`; these macros read one and
/// give a typed constant, or the default when the crate is compiled outside
/// a kernel build (host tests). Changing the option recompiles exactly the
/// crates that read it.
pub mod kconfig {
    /// True for a bool option's `y` (usable in constants).
    pub const fn is_y(s: Option<&str>) -> bool {
        matches!(s, Some(v) if v.len() == 1 && v.as_bytes()[0] == b'y')
    }

    /// Parses a decimal or 0x-prefixed integer in a const context.
    pub const fn parse_int(s: Option<&str>, default: i64) -> i64 {
        let Some(s) = s else { return default };
        let b = s.as_bytes();
        let (neg, mut i) = if !b.is_empty() && b[0] == b'-' {
            (true, 1)
        } else {
            (false, 0)
        };
        let radix = if b.len() > i + 1 && b[i] == b'0' && (b[i + 1] == b'x' || b[i + 1] == b'X') {
            i += 2;
            16
        } else {
            10
        };
        if i >= b.len() {
            return default;
        }
        let mut v: i64 = 0;
        while i < b.len() {
            let d = match b[i] {
                c @ b'0'..=b'9' => (c - b'0') as i64,
                c @ b'a'..=b'f' if radix == 16 => (c - b'a' + 10) as i64,
                c @ b'A'..=b'F' if radix == 16 => (c - b'A' + 10) as i64,
                _ => return default,
            };
            v = v * radix + d;
            i += 1;
        }
        if neg {
            -v
        } else {
            v
        }
    }
}

/// A string Kconfig option: `kconfig_str!("APP_GREETING", "Hello")`.
#[macro_export]
macro_rules! kconfig_str {
    ($name:literal, $default:expr) => {
        match option_env!(concat!("KILN_CONFIG_", $name)) {
            Some(v) => v,
            None => $default,
        }
    };
}

/// A bool Kconfig option (`y` is true; unset or `n` is false).
#[macro_export]
macro_rules! kconfig_bool {
    ($name:literal) => {
        $crate::kconfig::is_y(option_env!(concat!("KILN_CONFIG_", $name)))
    };
}

/// An int or hex Kconfig option: `kconfig_int!("APP_REPEAT", 1)`.
#[macro_export]
macro_rules! kconfig_int {
    ($name:literal, $default:expr) => {
        $crate::kconfig::parse_int(option_env!(concat!("KILN_CONFIG_", $name)), $default)
    };
}

/// Arguments and environment.
pub mod env {
    /// The app's arguments, the app name first.
    pub fn args() -> impl Iterator<Item = &'static str> {
        kiln_boot::args().iter().map(|s| s.as_str())
    }

    /// The value of environment variable `key` (the last one wins).
    pub fn var(key: &str) -> Option<&'static str> {
        kiln_boot::env()
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All environment variables, in the order given.
    pub fn vars() -> impl Iterator<Item = (&'static str, &'static str)> {
        kiln_boot::env()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
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

    /// Makes a stop request from the host (`kiln stop`: the power button or
    /// Ctrl-Alt-Del) something the app handles itself: `wake` runs once
    /// when the request arrives (an event loop passes `net::wake_waiters`),
    /// and the app sees it with [`stop_requested`], finishes its work and
    /// exits. Without this, a stop request ends the app at once (exit 0).
    pub fn on_stop(wake: fn()) {
        kiln_boot::on_stop(wake)
    }

    /// Whether the host has asked the app to stop (see [`on_stop`]).
    pub fn stop_requested() -> bool {
        kiln_boot::stop_requested()
    }
}

#[cfg(test)]
mod kconfig_tests {
    use super::kconfig::parse_int;

    #[test]
    fn parses_kconfig_integers() {
        assert_eq!(parse_int(Some("42"), 0), 42);
        assert_eq!(parse_int(Some("-7"), 0), -7);
        assert_eq!(parse_int(Some("0x1F"), 0), 31);
        assert_eq!(parse_int(Some("12a"), 5), 5);
        assert_eq!(parse_int(Some(""), 5), 5);
        assert_eq!(parse_int(None, 9), 9);
        assert!(!kconfig_bool!("SURELY_NOT_SET_IN_TESTS"));
        assert_eq!(kconfig_str!("SURELY_NOT_SET_IN_TESTS", "d"), "d");
    }
}
