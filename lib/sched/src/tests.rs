//! Host tests: the same context switch as in the kernel, on heap stacks
//! inside the test process. Tests share the scheduler, so they run one at a
//! time, each ending with only the boot thread left.

use super::*;
use std::sync::Mutex as StdMutex;

static SERIAL: StdMutex<()> = StdMutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A test thread of the harness becomes the boot thread.
    *SCHED.lock() = None;
    g
}

fn big() -> Builder {
    Builder::new().stack_size(256 * 1024)
}

#[test]
fn spawn_join_returns_values_in_order() {
    let _g = serial();
    let log = Arc::new(Mutex::new(Vec::new()));
    let hs: Vec<_> = (0..5)
        .map(|i| {
            let log = log.clone();
            big().name(format!("w{i}")).spawn(move || {
                log.lock().push(i);
                yield_now();
                log.lock().push(10 + i);
                i * i
            })
        })
        .collect();
    let results: Vec<_> = hs.into_iter().map(|h| h.join()).collect();
    assert_eq!(results, [0, 1, 4, 9, 16]);
    // Round robin: every thread ran its first half before any second half.
    assert_eq!(*log.lock(), [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
    assert_eq!(thread_count(), 1);
}

#[test]
fn sleepers_wake_in_deadline_order() {
    let _g = serial();
    let order = Arc::new(Mutex::new(Vec::new()));
    let hs: Vec<_> = [30u64, 10, 20]
        .into_iter()
        .map(|ms| {
            let order = order.clone();
            big().spawn(move || {
                sleep(Duration::from_millis(ms));
                order.lock().push(ms);
            })
        })
        .collect();
    let t0 = std::time::Instant::now();
    for h in hs {
        h.join();
    }
    assert_eq!(*order.lock(), [10, 20, 30]);
    assert!(t0.elapsed() >= Duration::from_millis(30));
}

#[test]
fn mutex_and_condvar_hand_items_over() {
    let _g = serial();
    let q = Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
    let q2 = q.clone();
    let consumer = big().name("consumer").spawn(move || {
        let mut got = Vec::new();
        while got.len() < 100 {
            let (m, cv) = &*q2;
            let mut g = cv.wait_while(m.lock(), |q| q.is_empty());
            got.extend(g.drain(..));
        }
        got
    });
    for i in 0..100 {
        let (m, cv) = &*q;
        m.lock().push_back(i);
        cv.notify_one();
        if i % 7 == 0 {
            yield_now();
        }
    }
    assert_eq!(consumer.join(), (0..100).collect::<Vec<_>>());
}

#[test]
fn contended_mutex_blocks_instead_of_spinning() {
    let _g = serial();
    let m = Arc::new(Mutex::new(0u32));
    let g = m.lock();
    let m2 = m.clone();
    let h = big().spawn(move || {
        *m2.lock() += 1;
    });
    yield_now(); // the thread runs and blocks on the lock
    assert!(!h.is_finished());
    assert!(m.try_lock().is_none());
    drop(g); // wakes it
    h.join();
    assert_eq!(*m.lock(), 1);
}

#[test]
fn timed_waits_time_out_and_wakes_are_not_lost() {
    let _g = serial();
    let wq = Arc::new(WaitQueue::new());
    assert!(
        !wq.wait_timeout(Duration::from_millis(5)),
        "nobody wakes: timeout"
    );
    let wq2 = wq.clone();
    let h = big().spawn(move || wq2.wait_timeout(Duration::from_secs(10)));
    yield_now();
    assert_eq!(wq.wake_all(), 1);
    assert!(h.join(), "woken before the deadline");
    // A stale timer of the earlier wait does not wake a later one.
    let cv = Condvar::new();
    let m = Mutex::new(());
    let (_, timed_out) = cv.wait_timeout(m.lock(), Duration::from_millis(2));
    assert!(timed_out);
}

#[test]
fn a_clobbered_canary_is_seen() {
    let _g = serial();
    let h = big().spawn(|| {
        let ok = with(|s| s.cur().canary_ok());
        with(|s| s.cur().stack.as_mut().unwrap().usable()[..8].fill(0));
        let clobbered = !with(|s| s.cur().canary_ok());
        // Restore it, or the switch away would report an overflow.
        with(|s| {
            s.cur().stack.as_mut().unwrap().usable()[..8]
                .copy_from_slice(&crate::stack::CANARY.to_ne_bytes())
        });
        (ok, clobbered)
    });
    assert_eq!(h.join(), (true, true));
}

#[test]
fn deadlock_is_reported_not_hung() {
    let _g = serial();
    let r = std::panic::catch_unwind(|| WaitQueue::new().wait());
    let msg = r.unwrap_err();
    assert!(msg
        .downcast_ref::<String>()
        .unwrap()
        .contains("deadlock: main"));
    *SCHED.lock() = None;
}
