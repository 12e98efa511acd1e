//! The Raspberry Pi 4 (BCM2711): the Pi 3's platform code (plat/raspi)
//! built with its `pi4` feature, and this folder's linker script and Kconfig.
#![cfg_attr(not(test), no_std)]

pub use kiln_plat_raspi::*;
