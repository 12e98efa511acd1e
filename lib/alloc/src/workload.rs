//! A mixed allocation workload for benchmarks, the same on the host and in a
//! guest: a deterministic stream of allocations (mostly small, some pages,
//! a few large) and frees of random live objects, with a bounded live set.

use core::alloc::Layout;

/// Results of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Allocations and frees done.
    pub ops: u64,
    /// Allocations that failed.
    pub failures: u64,
    /// Bytes live at the first failure (0 if none failed).
    pub live_at_first_failure: usize,
    /// Most bytes live at once.
    pub peak_live: usize,
}

/// Live objects kept at most.
pub const SLOTS: usize = 512;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The size of the next allocation: 70% 16-256 bytes, 25% 256 B-4 KiB,
/// 5% 4-64 KiB; alignment 8, or 4096 for page-sized requests.
fn next_layout(r: &mut Rng) -> Layout {
    let x = r.next();
    let size = match x % 100 {
        0..=69 => 16 + (x >> 8) as usize % 240,
        70..=94 => 256 + (x >> 8) as usize % 3840,
        _ => 4096 + (x >> 8) as usize % 61440,
    };
    let align = if size % 4096 == 0 || (x >> 40) % 16 == 0 {
        4096
    } else {
        8
    };
    Layout::from_size_align(size, align).unwrap()
}

/// Runs `ops` operations. `alloc` returns null on failure. With `fill`,
/// the live set grows until the first failure (a fragmentation probe);
/// otherwise it stays around half of [`SLOTS`].
pub fn run(
    ops: u64,
    seed: u64,
    fill: bool,
    alloc: &mut dyn FnMut(Layout) -> *mut u8,
    free: &mut dyn FnMut(*mut u8, Layout),
) -> Outcome {
    let mut r = Rng(seed | 1);
    let mut slots: [(*mut u8, Layout); SLOTS] =
        [(core::ptr::null_mut(), Layout::new::<u8>()); SLOTS];
    let mut live = 0usize;
    let mut out = Outcome::default();
    for _ in 0..ops {
        let i = (r.next() % SLOTS as u64) as usize;
        let grow = fill || r.next() % 2 == 0;
        if !slots[i].0.is_null() && !(fill && grow && slots.iter().any(|s| s.0.is_null())) {
            free(slots[i].0, slots[i].1);
            live -= slots[i].1.size();
            slots[i].0 = core::ptr::null_mut();
            out.ops += 1;
            continue;
        }
        let slot = if slots[i].0.is_null() {
            i
        } else {
            slots.iter().position(|s| s.0.is_null()).unwrap()
        };
        let l = next_layout(&mut r);
        let p = alloc(l);
        out.ops += 1;
        if p.is_null() {
            out.failures += 1;
            if out.live_at_first_failure == 0 {
                out.live_at_first_failure = live;
            }
            if fill {
                break;
            }
            continue;
        }
        // Touch the memory like a program would.
        // SAFETY: p points to at least l.size() >= 16 writable bytes.
        unsafe {
            p.write(1);
            p.add(l.size() - 1).write(2);
        }
        slots[slot] = (p, l);
        live += l.size();
        out.peak_live = out.peak_live.max(live);
    }
    for s in slots.iter().filter(|s| !s.0.is_null()) {
        free(s.0, s.1);
    }
    out
}
