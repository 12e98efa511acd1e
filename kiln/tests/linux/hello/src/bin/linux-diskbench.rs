//! Disk throughput and fsync latency on a mounted volume, for
//! scripts/bench/disk: the same static program runs in Kiln and in a Linux
//! guest, on the same kind of image. `linux-diskbench DIR [MIB]` prints
//! `diskbench: NAME=VALUE` lines:
//! - seq_write_mbs: MIB MiB written in 1 MiB writes, then fsync;
//! - seq_read_mbs: read back in 1 MiB reads (the page cache dropped first
//!   where the kernel has one, so reads reach the device);
//! - rand_write_iops / rand_read_iops: 4 KiB at random aligned offsets in
//!   that file (writes then one fsync);
//! - fsync_us: median of 4 KiB pwrite + fdatasync pairs.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Instant;

fn drop_caches() {
    // Linux only; Kiln keeps no page cache (the write fails, harmlessly).
    let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3\n");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let path = format!("{dir}/bench.bin");
    let block = vec![0xa5u8; 1 << 20];
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("create bench.bin");
    let t = Instant::now();
    for _ in 0..mib {
        f.write_all(&block).expect("write");
    }
    f.sync_all().expect("fsync");
    let s = t.elapsed().as_secs_f64();
    println!("diskbench: seq_write_mbs={:.2}", mib as f64 / s);
    drop(f);

    drop_caches();
    let mut f = File::open(&path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n;
    }
    let s = t.elapsed().as_secs_f64();
    assert_eq!(total, mib << 20);
    println!("diskbench: seq_read_mbs={:.2}", mib as f64 / s);
    drop(f);

    let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let pages = (mib << 20) / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x as usize % pages) as u64 * 4096
    };
    let page = vec![0x3cu8; 4096];
    let n = 500;
    let t = Instant::now();
    for _ in 0..n {
        f.write_all_at(&page, next()).expect("pwrite");
    }
    f.sync_all().unwrap();
    println!("diskbench: rand_write_iops={:.0}", n as f64 / t.elapsed().as_secs_f64());
    drop_caches();
    let mut rbuf = vec![0u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        f.read_exact_at(&mut rbuf, next()).expect("pread");
    }
    println!("diskbench: rand_read_iops={:.0}", n as f64 / t.elapsed().as_secs_f64());

    let mut lat = Vec::new();
    for i in 0..100u64 {
        let t = Instant::now();
        f.write_all_at(&page, (i % pages as u64) * 4096).unwrap();
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat.sort();
    println!("diskbench: fsync_us={}", lat[lat.len() / 2]);
    drop(f);
    std::fs::remove_file(&path).unwrap();
    println!("diskbench: done");
}
