//! System call cost and a compute workload, printed as `sysbench: name=value`
//! lines; scripts/bench/elfloader runs the same binary on the host, in a
//! Linux guest and in Kiln.
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// Nanoseconds per call of `f`, over `n` calls (after 1000 to warm up).
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    // getpid: the cheapest call there is (musl does not cache it).
    let mut sink = 0u64;
    let getpid = per_call(n, || sink = sink.wrapping_add(std::process::id() as u64));
    // pread of one byte from a file in the in-memory file system.
    let path = std::env::temp_dir().join("sysbench.dat");
    std::fs::write(&path, b"kiln").unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut b = [0u8; 1];
    let pread = per_call(n, || {
        f.read_at(&mut b, 1).unwrap();
        sink = sink.wrapping_add(b[0] as u64)
    });
    // Compute: sort two million pseudo-random numbers and fold them.
    let t = Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v: Vec<u64> = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    v.sort_unstable();
    let fold = v.iter().enumerate().fold(0u64, |a, (i, &y)| a.rotate_left(5) ^ y.wrapping_mul(i as u64 + 1));
    let compute = t.elapsed().as_secs_f64() * 1000.0;
    println!("sysbench: getpid_ns={getpid:.1}");
    println!("sysbench: pread1_ns={pread:.1}");
    println!("sysbench: compute_ms={compute:.1}");
    println!("sysbench: check={:x}", fold ^ (sink & 0));
    std::io::stdout().flush().unwrap();
}
