//! The smallest Kiln app: greets, then prints the arguments it got.
#![no_std]

use kiln_std::prelude::*;

/// Entry point, called by the kernel after boot.
pub fn main(args: &[&str], _env: &[(&str, &str)]) -> i32 {
    println!("Hello, world!");
    for (i, a) in args.iter().enumerate().skip(1) {
        println!("arg {i}: {a}");
    }
    0
}
