//! A multi-threaded Linux program (std threads, musl): workers share a
//! Mutex-protected counter, report over a channel, wait at a Barrier, and
//! hand results back through join; a Condvar wakes a waiting thread.
use std::sync::{mpsc, Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let workers = 4;
    let counter = Arc::new(Mutex::new(0u64));
    let barrier = Arc::new(Barrier::new(workers + 1));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for i in 0..workers {
        let (counter, barrier, tx) = (counter.clone(), barrier.clone(), tx.clone());
        let h = thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                for k in 0..1000u64 {
                    *counter.lock().unwrap() += k;
                    if k % 250 == 0 {
                        // Give the others a turn while holding nothing.
                        thread::yield_now();
                    }
                }
                tx.send((i, thread::current().name().unwrap().to_string())).unwrap();
                barrier.wait();
                // A different result per thread, returned through join.
                (i as u64 + 1) * 100
            })
            .unwrap();
        handles.push(h);
    }
    drop(tx);
    let mut seen: Vec<(usize, String)> = rx.iter().take(workers).collect();
    seen.sort();
    for (i, name) in &seen {
        println!("threads: {name} (worker {i}) reported");
    }
    barrier.wait();
    let joined: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!("threads: counter = {}", *counter.lock().unwrap());
    println!("threads: joined sum = {joined}");

    // A thread sleeps, then signals a condition another waits on.
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let p2 = pair.clone();
    let start = Instant::now();
    let sleeper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        *p2.0.lock().unwrap() = true;
        p2.1.notify_one();
    });
    let mut ready = pair.0.lock().unwrap();
    while !*ready {
        ready = pair.1.wait(ready).unwrap();
    }
    drop(ready);
    sleeper.join().unwrap();
    println!("threads: condvar woke after {} ms or more", if start.elapsed() >= Duration::from_millis(50) { 50 } else { 0 });
    // Scoped threads borrow from the stack.
    let data = vec![1u64, 2, 3, 4, 5, 6, 7, 8];
    let total: u64 = thread::scope(|s| {
        let hs: Vec<_> = data.chunks(2).map(|c| s.spawn(move || c.iter().sum::<u64>())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    println!("threads: scoped sum = {total}");
}
