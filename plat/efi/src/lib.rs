//! What Kiln's UEFI loader computes before it hands over, kept apart from
//! the firmware calls so the host's `cargo test` checks it:
//!
//! - [`image`]: the arm64 Image header (where the kernel goes, how much
//!   memory it takes);
//! - [`fdt`]: a copy of the firmware's device tree whose `/chosen` node
//!   carries the kernel's command line (`bootargs`), as a boot loader's
//!   `-append` would.

#![no_std]

extern crate alloc;

pub mod fdt;
pub mod image;
