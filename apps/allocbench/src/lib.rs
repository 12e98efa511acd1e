//! Benchmark app: runs kiln_alloc's shared workload (the same as the host
//! benchmark, scripts/bench/alloc) on the kernel heap and prints the ticks
//! it took. `allocbench OPS`.
#![no_std]

extern crate alloc;

use kiln_std::prelude::*;

/// Entry point.
pub fn main(args: &[&str], _env: &[(&str, &str)]) -> i32 {
    let ops: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20000);
    let p = kiln_boot::platform().expect("platform");
    let t0 = p.ticks();
    let o = kiln_alloc::workload::run(
        ops,
        1,
        false,
        // SAFETY: the layouts come from the workload and have non-zero sizes.
        &mut |l| unsafe { alloc::alloc::alloc(l) },
        // SAFETY: the workload frees only what it allocated, with its layout.
        &mut |ptr, l| unsafe { alloc::alloc::dealloc(ptr, l) },
    );
    let ticks = p.ticks().wrapping_sub(t0);
    let us = kiln_boot::ticks_to_us(ticks, p.tick_hz());
    println!(
        "allocbench: {} ops, {} failed, {ticks} ticks, {} us",
        o.ops,
        o.failures,
        us.map_or(-1, |u| u as i64)
    );
    0
}
