//! Runs Kiln's allocation workload (kiln_alloc::workload) against each heap
//! backend on the host, in an arena like the kernel's heap, and prints a
//! Markdown table: throughput (median of runs) and fragmentation (how much
//! of a 1 MiB arena the workload could fill before the first failure).
//!
//! Usage: cargo run --release -p kiln-bench-alloc -- [RUNS]

use kiln_alloc::workload;
use kiln_alloc::Backend;
use std::ptr::NonNull;
use std::time::Instant;

fn arena(size: usize) -> (Vec<u64>, NonNull<u8>) {
    let mut v = vec![0u64; size / 8 + 512];
    let base = (v.as_mut_ptr() as usize).next_multiple_of(4096);
    (v, NonNull::new(base as *mut u8).unwrap())
}

fn measure<B: Backend>(make: fn() -> B, runs: usize) -> (f64, f64, u64) {
    const OPS: u64 = 200_000;
    let mut rates = Vec::new();
    let mut failures = 0;
    for r in 0..runs {
        let (_keep, base) = arena(64 << 20);
        let mut b = make();
        // SAFETY: the arena is ours and outlives the backend.
        unsafe { b.add_region(base, 64 << 20) };
        let b = std::cell::RefCell::new(b);
        let t = Instant::now();
        let o = workload::run(
            OPS,
            r as u64 + 1,
            false,
            &mut |l| {
                b.borrow_mut()
                    .alloc(l)
                    .map_or(std::ptr::null_mut(), |p| p.as_ptr())
            },
            // SAFETY: the workload frees only what it allocated, with its layout.
            &mut |p, l| unsafe { b.borrow_mut().dealloc(NonNull::new(p).unwrap(), l) },
        );
        rates.push(o.ops as f64 / t.elapsed().as_secs_f64() / 1e6);
        failures += o.failures;
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Fragmentation probe: fill a 1 MiB arena.
    let (_keep, base) = arena(1 << 20);
    let mut b = make();
    // SAFETY: as above.
    let total = unsafe { b.add_region(base, 1 << 20) };
    let b = std::cell::RefCell::new(b);
    let o = workload::run(
        1_000_000,
        7,
        true,
        &mut |l| {
            b.borrow_mut()
                .alloc(l)
                .map_or(std::ptr::null_mut(), |p| p.as_ptr())
        },
        // SAFETY: as above.
        &mut |p, l| unsafe { b.borrow_mut().dealloc(NonNull::new(p).unwrap(), l) },
    );
    let used = if o.failures > 0 {
        o.live_at_first_failure
    } else {
        o.peak_live
    };
    (
        rates[rates.len() / 2],
        used as f64 / total as f64 * 100.0,
        failures,
    )
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    println!("| backend | Mops/s (median of {runs}) | usable share of a 1 MiB arena | failed allocations in the 64 MiB runs |");
    println!("|---|---|---|---|");
    let row = |name: &str, (rate, usable, fails): (f64, f64, u64)| {
        println!("| {name} | {rate:.1} | {usable:.0}% | {fails} |")
    };
    row("tlsf", measure(kiln_alloc_tlsf::Tlsf::new, runs));
    row("buddy", measure(kiln_alloc_buddy::Buddy::new, runs));
    row("region", measure(kiln_alloc_region::Region::new, runs));
}
