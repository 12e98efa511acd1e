//! The kernel's randomness: one ChaCha20 generator (rand_chacha), seeded
//! at boot from every source the machine offers and rekeyed as it goes.
//!
//! Contract:
//! - [`fill`] and [`u64`] never block and never fail; before [`kiln_init`]
//!   ran (or in a kernel without a source) they still work, from the
//!   timestamp counter, and [`sources`] says so.
//! - Sources, mixed together (each 32 bytes): RDSEED, then RDRAND, on
//!   x86_64 when CPUID lists them; RNDR on arm64 when ID_AA64ISAR0_EL1
//!   lists it; 32 bytes from a virtio-rng device, read once at boot
//!   (`kiln run` gives QEMU guests one); the host's seed from the kernel command line
//!   (`random.seed=` 64 hex digits, which `kiln run` passes from the
//!   host's getrandom). The timestamp counter is mixed in too, but never
//!   counts as a source.
//! - Every 64 KiB of output, and whenever a hardware source is there at a
//!   call to [`fill`] past that mark, the generator takes a fresh key from
//!   its own output mixed with new hardware bytes, so earlier output
//!   cannot be recomputed from a later state.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

struct State {
    rng: Option<ChaCha20Rng>,
    since_rekey: usize,
    sources: &'static str,
}

static STATE: spin::Mutex<State> = spin::Mutex::new(State {
    rng: None,
    since_rekey: 0,
    sources: "",
});

const REKEY_AFTER: usize = 64 << 10;

/// Mixes `more` into `seed` (a small keyed permutation: ChaCha20 over the
/// XOR of both, so no source can cancel another out).
fn mix(seed: &mut [u8; 32], more: &[u8; 32]) {
    let mut k = *seed;
    for (a, b) in k.iter_mut().zip(more) {
        *a ^= b;
    }
    ChaCha20Rng::from_seed(k).fill_bytes(seed);
}

fn counter() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no side effects.
    return unsafe { core::arch::x86_64::_rdtsc() };
    #[cfg(target_arch = "aarch64")]
    {
        let v: u64;
        // SAFETY: reading the virtual counter has no side effects.
        unsafe { core::arch::asm!("mrs {}, cntvct_el0", out(reg) v) };
        v
    }
}

/// 32 bytes from the CPU's own generator, if it has one.
fn hardware() -> Option<([u8; 32], &'static str)> {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        // SAFETY: CPUID is always available in long mode.
        let l7 = unsafe { core::arch::x86_64::__cpuid_count(7, 0) };
        // SAFETY: as above.
        let l1 = unsafe { core::arch::x86_64::__cpuid(1) };
        let (seed, rand) = (l7.ebx & (1 << 18) != 0, l1.ecx & (1 << 30) != 0);
        let mut out = [0u8; 32];
        for (name, ok) in [("rdseed", seed), ("rdrand", rand)] {
            if !ok {
                continue;
            }
            let mut good = true;
            for c in out.chunks_mut(8) {
                let mut v = 0u64;
                let mut got = false;
                for _ in 0..32 {
                    let ok: u8;
                    // SAFETY: CPUID said the instruction exists; it only
                    // writes its output register and CF.
                    unsafe {
                        if name == "rdseed" {
                            core::arch::asm!("rdseed {}", "setc {}", out(reg) v, out(reg_byte) ok, options(nomem, nostack));
                        } else {
                            core::arch::asm!("rdrand {}", "setc {}", out(reg) v, out(reg_byte) ok, options(nomem, nostack));
                        }
                    }
                    if ok == 1 {
                        got = true;
                        break;
                    }
                }
                good &= got;
                c.copy_from_slice(&v.to_le_bytes());
            }
            if good {
                return Some((out, name));
            }
        }
        None
    }
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    {
        let isar0: u64;
        // SAFETY: reading an ID register has no side effects.
        unsafe { core::arch::asm!("mrs {}, id_aa64isar0_el1", out(reg) isar0) };
        if (isar0 >> 60) & 0xf == 0 {
            return None;
        }
        let mut out = [0u8; 32];
        for c in out.chunks_mut(8) {
            let v: u64;
            // SAFETY: the ID register lists RNDR (s3_3_c2_c4_0); it only
            // writes its output register and the flags.
            unsafe { core::arch::asm!("mrs {}, s3_3_c2_c4_0", out(reg) v) };
            c.copy_from_slice(&v.to_le_bytes());
        }
        Some((out, "rndr"))
    }
    #[cfg(not(target_os = "none"))]
    None
}

/// 32 bytes from the first virtio-rng device, if the machine has one.
fn virtio_rng() -> Option<[u8; 32]> {
    use kiln_virtio::virtio_drivers::device::rng::VirtIORng;
    use kiln_virtio::virtio_drivers::transport::DeviceType;
    let t = kiln_virtio::devices(DeviceType::EntropySource)
        .into_iter()
        .next()?;
    let mut dev = VirtIORng::<kiln_virtio::KilnHal, _>::new(t).ok()?;
    // Polled: the answer is waited for, not signalled.
    dev.disable_interrupts();
    let mut out = [0u8; 32];
    let mut got = 0;
    // A device may hand out fewer bytes than asked for.
    for _ in 0..8 {
        match dev.request_entropy(&mut out[got..]) {
            Ok(n) if n > 0 => got = (got + n).min(out.len()),
            _ => break,
        }
        if got == out.len() {
            return Some(out);
        }
    }
    None
}

/// The host's seed: 64 hex digits.
fn parse_seed(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        *o = (d(hex[2 * i])? * 16 + d(hex[2 * i + 1])?) as u8;
    }
    Some(out)
}

fn counter_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&counter().to_le_bytes());
    }
    b
}

/// Seeds the generator (boot, init order 5) and logs its sources.
pub fn kiln_init() -> Result<(), alloc::string::String> {
    let mut seed = counter_bytes();
    let mut names: alloc::vec::Vec<&str> = alloc::vec::Vec::new();
    if let Some((hw, name)) = hardware() {
        mix(&mut seed, &hw);
        names.push(name);
    }
    if let Some(dev) = virtio_rng() {
        mix(&mut seed, &dev);
        names.push("virtio-rng");
    }
    match kiln_boot::param("random.seed").map(parse_seed) {
        Some(Some(host)) => {
            mix(&mut seed, &host);
            names.push("host seed");
        }
        Some(None) => kiln_console::log!(
            kiln_console::Level::Warn,
            "random: random.seed= must be 64 hex digits; ignored"
        ),
        None => {}
    }
    // Said once per boot: kept for the kernel's lifetime.
    let names: &'static str = alloc::boxed::Box::leak(names.join(", ").into_boxed_str());
    let mut s = STATE.lock();
    s.rng = Some(ChaCha20Rng::from_seed(seed));
    s.sources = names;
    drop(s);
    if names.is_empty() {
        kiln_console::log!(
            kiln_console::Level::Error,
            "random: NO SOURCE OF RANDOMNESS (no RDRAND/RDSEED/RNDR, no random.seed=): keys and address layout are predictable"
        );
    } else {
        kiln_console::log!(kiln_console::Level::Info, "random: seeded from {names}");
    }
    Ok(())
}

/// The sources the generator was seeded from ("" if none).
pub fn sources() -> &'static str {
    STATE.lock().sources
}

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    let mut s = STATE.lock();
    let s = &mut *s;
    let rng = s
        .rng
        .get_or_insert_with(|| ChaCha20Rng::from_seed(counter_bytes()));
    if s.since_rekey >= REKEY_AFTER {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        if let Some((hw, _)) = hardware() {
            mix(&mut key, &hw);
        }
        *rng = ChaCha20Rng::from_seed(key);
        s.since_rekey = 0;
    }
    rng.fill_bytes(buf);
    s.since_rekey += buf.len();
}

/// A random u64.
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_seed_is_64_hex_digits() {
        let s = parse_seed(&"0f".repeat(32)).unwrap();
        assert_eq!(s, [0x0f; 32]);
        assert!(parse_seed("abc").is_none());
        assert!(parse_seed(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn output_differs_call_to_call_and_across_a_rekey() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        fill(&mut a);
        fill(&mut b);
        assert_ne!(a, b);
        let mut big = alloc_vec(REKEY_AFTER + 100);
        fill(&mut big);
        fill(&mut a);
        assert_ne!(a, b);
        // Roughly uniform: every byte value shows up in 64 KiB.
        let mut seen = [false; 256];
        big.iter().for_each(|&x| seen[x as usize] = true);
        assert!(seen.iter().all(|&x| x));
    }

    fn alloc_vec(n: usize) -> Vec<u8> {
        vec![0; n]
    }

    #[test]
    fn mixing_cannot_cancel_a_source() {
        let mut s = [7u8; 32];
        mix(&mut s, &[7u8; 32]);
        assert_ne!(s, [0u8; 32]);
        assert_ne!(s, [7u8; 32]);
    }
}
