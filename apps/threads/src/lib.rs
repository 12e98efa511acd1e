//! Threads on Kiln, the way std code uses them.
//!
//! With no arguments it runs a tour and prints what happened: workers
//! joined with their results, sleepers waking in deadline order, a
//! producer and a consumer handing items over through a Mutex and a
//! Condvar, and a timed wait that times out. `echo` serves TCP echo on
//! port 7 with one thread per connection (blocking sockets); `resolve
//! NAME...` prints the addresses DNS gives; `deadlock` blocks every
//! thread, which the kernel reports instead of hanging; `overflow` runs a
//! thread named `deep` into the guard page below its stack.
#![no_std]

use kiln_std::net::{dns, TcpListener, TcpStream};
use kiln_std::prelude::*;
use kiln_std::sync::{Arc, Condvar, Mutex};
use kiln_std::thread;
use kiln_std::time::{micros, Duration};

fn tour() -> i32 {
    // Workers with results.
    let total = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (1..=4u64)
        .map(|n| {
            let total = total.clone();
            thread::Builder::new()
                .name(format!("worker-{n}"))
                .spawn(move || {
                    let mut sum = 0;
                    for i in 0..=n * 1000 {
                        sum += i;
                        if i % 500 == 0 {
                            thread::yield_now();
                        }
                    }
                    total.lock().push(thread::current_name());
                    sum
                })
        })
        .collect();
    let sums: Vec<u64> = workers.into_iter().map(|h| h.join()).collect();
    println!(
        "threads: joined 4 workers: sums {sums:?}, finished {:?}",
        total.lock()
    );

    // Sleepers wake in deadline order.
    let order = Arc::new(Mutex::new(Vec::new()));
    let t0 = micros();
    let sleepers: Vec<_> = [300u64, 100, 200]
        .into_iter()
        .map(|ms| {
            let order = order.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(ms));
                order.lock().push(ms);
            })
        })
        .collect();
    for s in sleepers {
        s.join();
    }
    let took = (micros() - t0) / 1000;
    println!(
        "threads: sleepers woke in order {:?} after {} ms (at least 300: {})",
        order.lock(),
        took,
        took >= 300
    );

    // Producer and consumer.
    let queue = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let q2 = queue.clone();
    let consumer = thread::Builder::new()
        .name("consumer".to_string())
        .spawn(move || {
            let (m, cv) = &*q2;
            let (mut got, mut sum) = (0u64, 0u64);
            while got < 1000 {
                let mut items = cv.wait_while(m.lock(), |q: &mut Vec<u64>| q.is_empty());
                got += items.len() as u64;
                sum += items.drain(..).sum::<u64>();
            }
            (got, sum)
        });
    for i in 1..=1000u64 {
        let (m, cv) = &*queue;
        m.lock().push(i);
        cv.notify_one();
        if i % 100 == 0 {
            thread::yield_now();
        }
    }
    let (got, sum) = consumer.join();
    println!("threads: consumer got {got} items, sum {sum}");

    // A timed wait that nobody ends.
    let (m, cv) = (Mutex::new(()), Condvar::new());
    let t0 = micros();
    let (_g, timed_out) = cv.wait_timeout(m.lock(), Duration::from_millis(50));
    let took = (micros() - t0) / 1000;
    println!(
        "threads: timed wait timed out: {timed_out}, after at least 50 ms: {}",
        took >= 50
    );
    0
}

fn echo() -> i32 {
    let mut l = match TcpListener::bind(7, 16) {
        Ok(l) => l,
        Err(e) => {
            println!("threads: port 7: {e}");
            return 1;
        }
    };
    println!("threads: echo on port 7, a thread per connection");
    let mut n = 0;
    loop {
        let Ok(s) = l.accept() else { continue };
        n += 1;
        thread::Builder::new()
            .name(format!("conn-{n}"))
            .spawn(move || serve(s, n));
    }
}

/// Echoes lines back; `bye` closes, `quit` powers the machine off.
fn serve(mut s: TcpStream, n: u32) {
    let who = thread::current_name();
    println!("threads: connection {n} served by {who}");
    let mut buf = [0u8; 1024];
    loop {
        let k = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => k,
        };
        let line = &buf[..k];
        if line.starts_with(b"quit") {
            let _ = s.write_all(b"bye\n");
            kiln_std::process::exit(0);
        }
        let mut reply = format!("{who}: ").into_bytes();
        reply.extend_from_slice(line);
        if s.write_all(&reply).is_err() || line.starts_with(b"bye") {
            return;
        }
    }
}

fn resolve(names: &[&str]) -> i32 {
    println!("threads: DNS servers {:?}", dns::servers());
    let mut code = 0;
    for name in names {
        match dns::resolve(name) {
            Ok(a) => println!(
                "threads: {name} has address {}",
                a.iter()
                    .map(|a| format!("{a}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(e) => {
                println!("threads: {name}: {e}");
                code = 2;
            }
        }
    }
    code
}

fn deadlock() -> i32 {
    let a = Arc::new(Mutex::new(0));
    let held = a.lock();
    let a2 = a.clone();
    let h = thread::Builder::new()
        .name("stuck".to_string())
        .spawn(move || *a2.lock() += 1);
    // Main waits for the thread, which waits for the lock main holds.
    h.join();
    drop(held);
    0
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut local = [0u8; 256];
    local[depth as usize % 256] = depth as u8;
    // black_box keeps the frame and the recursion from being optimised away.
    core::hint::black_box(&mut local);
    recurse(depth + 1) + local[7] as u64
}

fn overflow() -> i32 {
    let h = thread::Builder::new()
        .name("deep".to_string())
        .stack_size(64 * 1024)
        .spawn(|| recurse(0));
    h.join() as i32
}

/// Entry point.
pub fn main(args: &[&str], _env: &[(&str, &str)]) -> i32 {
    match args.get(1).copied() {
        None | Some("tour") => tour(),
        Some("echo") => echo(),
        Some("resolve") => resolve(&args[2..]),
        Some("deadlock") => deadlock(),
        Some("overflow") => overflow(),
        Some(other) => {
            println!("threads: unknown mode {other}: tour, echo, resolve NAME..., deadlock, overflow");
            2
        }
    }
}
