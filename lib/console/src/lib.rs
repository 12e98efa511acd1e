//! The kernel console.
//!
//! The platform registers one [`Sink`] (a UART on QEMU and the Raspberry Pi)
//! early in boot; everything else prints through [`print!`]/[`println!`] or the
//! leveled [`log`] macros. Output written before a sink exists is dropped: the
//! platform registers its sink before anything has a reason to print.
#![cfg_attr(not(test), no_std)]

use core::fmt::{self, Write};

#[cfg(feature = "ns16550")]
pub mod ns16550;
#[cfg(feature = "pl011")]
pub mod pl011;
use core::sync::atomic::{AtomicU8, Ordering};
use spin::{Mutex, Once};

/// Where console bytes go. Implementations must be usable from any context,
/// including exception handlers, so they must not allocate.
pub trait Sink: Sync {
    /// Writes all of `bytes`, blocking until the device accepted them.
    fn write(&self, bytes: &[u8]);
}

static SINK: Once<&'static dyn Sink> = Once::new();
/// Serialises whole `print!` calls so lines from different contexts do not interleave.
static LOCK: Mutex<()> = Mutex::new(());

/// Registers the console device. The first registration wins; later calls are ignored
/// so that a fault during early boot cannot swap the device under a running print.
pub fn set_sink(sink: &'static dyn Sink) {
    SINK.call_once(|| sink);
}

/// True once a platform registered its console.
pub fn has_sink() -> bool {
    SINK.is_completed()
}

/// Writes raw bytes to the console (no formatting, no locking).
pub fn write_bytes(bytes: &[u8]) {
    if let Some(s) = SINK.get() {
        s.write(bytes);
    }
}

struct Writer;
impl Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = Writer.write_fmt(args);
}

/// Prints without taking the console lock: for fault and panic reports, which may
/// happen while the lock is held by the code that faulted.
pub fn print_unlocked(args: fmt::Arguments) {
    let _ = Writer.write_fmt(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

/// Prints to the console, with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Kernel message levels, most severe first (the numbering follows syslog's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level that is still printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Returns the current console level.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

impl Level {
    /// Maps 0..=4 (0 = silent) to a level; 0 maps to `Error` being filtered too, see [`enabled`].
    pub fn from_u8(v: u8) -> Level {
        match v {
            0 | 1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            _ => Level::Debug,
        }
    }
}

/// True when messages of `level` are printed.
pub fn enabled(level: Level) -> bool {
    (level as u8) <= LEVEL.load(Ordering::Relaxed)
}

/// Silences every leveled message (quiet boot); errors from faults and panics still print.
pub fn set_quiet() {
    LEVEL.store(0, Ordering::Relaxed);
}

/// Prints a kernel message at a level, prefixed with `kiln:`.
#[macro_export]
macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::enabled($lvl) {
            $crate::_print(format_args!("kiln: {}\n", format_args!($($arg)*)))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_filter() {
        set_level(Level::Warn);
        assert!(enabled(Level::Error));
        assert!(enabled(Level::Warn));
        assert!(!enabled(Level::Info));
        set_quiet();
        assert!(!enabled(Level::Error));
        set_level(Level::Info);
        assert!(enabled(Level::Info));
    }
}
