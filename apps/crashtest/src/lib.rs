//! Does what its first argument says, so tests can check how the kernel and
//! `kiln run` report each way a program can end:
//!
//! - `exit N`: return N from main
//! - `process-exit N`: call `process::exit(N)` from a nested function
//! - `panic`: a Rust panic
//! - `null`: read through a null pointer (page fault)
//! - `write-null`: write through a null pointer
//! - `ud`: an invalid instruction
//! - `overflow`: unbounded recursion into the stack guard page
//! - `hang`: spin forever (for `kiln run --timeout`)
//! - `env KEY`: print the value of an environment variable
#![no_std]

use kiln_std::prelude::*;

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, buf: &mut [u8; 64]) -> u64 {
    let mut local = [0u8; 512];
    local[depth as usize % 512] = buf[0].wrapping_add(1);
    // black_box keeps the frame and the recursion from being optimised away.
    core::hint::black_box(&mut local);
    recurse(depth + 1, buf) + local[3] as u64
}

/// Entry point.
pub fn main(args: &[&str], _env: &[(&str, &str)]) -> i32 {
    let what = args.get(1).copied().unwrap_or("");
    let num = || args.get(2).and_then(|s| s.parse::<i32>().ok()).unwrap_or(0);
    println!("crashtest: {what}");
    match what {
        "exit" => num(),
        "process-exit" => kiln_std::process::exit(num()),
        "panic" => panic!(
            "{}",
            kiln_std::kconfig_str!(
                "APP_CRASHTEST_PANIC_MESSAGE",
                "crashtest was asked to panic"
            )
        ),
        "null" => {
            let p: *const u64 = core::hint::black_box(core::ptr::null());
            // SAFETY: none: this read is meant to fault.
            unsafe { core::ptr::read_volatile(p) as i32 }
        }
        "write-null" => {
            let p: *mut u64 = core::hint::black_box(core::ptr::null_mut());
            // SAFETY: none: this write is meant to fault.
            unsafe { core::ptr::write_volatile(p.wrapping_add(0x10), 1) };
            0
        }
        "ud" => {
            // SAFETY: none: ud2 is meant to raise #UD.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                core::arch::asm!("ud2")
            };
            #[cfg(target_arch = "aarch64")]
            unsafe {
                core::arch::asm!("udf #0")
            };
            0
        }
        "overflow" => recurse(0, &mut [0; 64]) as i32,
        "write-text" => {
            // Kernel code is mapped read-only.
            let f: fn(&[&str], &[(&str, &str)]) -> i32 = main;
            let p = core::hint::black_box(f as usize as *mut u8);
            // SAFETY: none: this write is meant to fault.
            unsafe { core::ptr::write_volatile(p, 0xc3) };
            0
        }
        "write-rodata" => {
            static CONSTANT: [u8; 8] = *b"constant";
            let p = core::hint::black_box(CONSTANT.as_ptr() as *mut u8);
            // SAFETY: none: this write is meant to fault.
            unsafe { core::ptr::write_volatile(p, b'C') };
            0
        }
        "exec-heap" => {
            // A `ret` instruction on the heap: data is never executable.
            let code = kiln_std::boxed::Box::new([0xc3u8; 16]);
            let p = core::hint::black_box(code.as_ptr());
            // SAFETY: none: the call is meant to fault on the instruction fetch.
            let f: extern "C" fn() = unsafe { core::mem::transmute(p) };
            f();
            0
        }
        "exec-stack" => {
            let code = [0xc3u8; 16];
            let p = core::hint::black_box(code.as_ptr());
            // SAFETY: none: the call is meant to fault on the instruction fetch.
            let f: extern "C" fn() = unsafe { core::mem::transmute(p) };
            f();
            0
        }
        "oom" => {
            // Far more than any test guest has: the heap reports, then the
            // allocation error becomes a panic.
            let v: kiln_std::vec::Vec<u8> =
                kiln_std::vec::Vec::with_capacity(core::hint::black_box(1 << 40));
            v.capacity() as i32
        }
        "idle" => {
            // Sleeps 300 ms through the platform's idle and reports how long it took.
            let p = kiln_boot::platform().expect("platform");
            let t0 = kiln_std::time::micros();
            for _ in 0..300 {
                p.idle(1000);
            }
            println!("crashtest: idled {} us", kiln_std::time::micros() - t0);
            0
        }
        "hang" => loop {
            core::hint::spin_loop();
        },
        "env" => {
            let key = args.get(2).copied().unwrap_or("");
            println!("{key}={}", kiln_std::env::var(key).unwrap_or("<unset>"));
            0
        }
        other => {
            println!("crashtest: unknown request '{other}'");
            2
        }
    }
}
