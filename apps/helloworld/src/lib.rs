//! The smallest Kiln app: greets, then prints the arguments it got. What it
//! prints is configured in Kconfig (apps/helloworld/Kconfig).
#![no_std]

use kiln_std::prelude::*;
use kiln_std::{kconfig_bool, kconfig_int, kconfig_str};

const GREETING: &str = kconfig_str!("APP_HELLOWORLD_GREETING", "Hello, world!");
const REPEAT: i64 = kconfig_int!("APP_HELLOWORLD_REPEAT", 1);
const PRINT_ARGS: bool = kconfig_bool!("APP_HELLOWORLD_ARGS");

/// Entry point, called by the kernel after boot.
pub fn main(args: &[&str], _env: &[(&str, &str)]) -> i32 {
    for _ in 0..REPEAT {
        println!("{GREETING}");
    }
    if PRINT_ARGS {
        for (i, a) in args.iter().enumerate().skip(1) {
            println!("arg {i}: {a}");
        }
    }
    0
}
