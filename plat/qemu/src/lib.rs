//! The QEMU platform: `microvm` and `q35` on x86_64 (`x86.rs`), `virt` on
//! arm64 (`virt.rs`). The link crate calls [`configure`] and the arch entry
//! calls `kiln_plat_main`.
#![cfg_attr(not(test), no_std)]
// Much of this crate only runs on the bare-metal targets; host builds exist for unit tests.
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub use x86::*;

#[cfg(target_arch = "aarch64")]
mod virt;
#[cfg(target_arch = "aarch64")]
pub use virt::*;
