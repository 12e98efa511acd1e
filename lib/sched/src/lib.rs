//! Threads for apps and libraries, on one CPU, scheduled cooperatively.
//!
//! A thread runs until it blocks: it waits on a [`WaitQueue`] (directly, or
//! through [`Mutex`], [`Condvar`], [`JoinHandle::join`] or a blocking
//! socket), sleeps, yields or ends. The scheduler then resumes the first
//! ready thread (round robin, FIFO). Nothing preempts a running thread, so
//! code between two blocking calls runs atomically with respect to other
//! threads, and a thread that computes without blocking keeps the CPU.
//!
//! When no thread is ready, the scheduler runs the registered pollers (the
//! network stack registers one: it polls the device and wakes the threads
//! waiting for packets) and, if they found nothing to do, halts the CPU
//! until the earliest of: the next sleeping thread's deadline, the pollers'
//! next deadline, or a device interrupt. The platform's timer interrupt ends
//! that halt, so sleeps and timeouts cost no CPU. If every thread waits with
//! no deadline and nothing could wake them, the kernel reports a deadlock
//! naming the blocked threads and exits instead of hanging.
//!
//! The boot thread (the app's `main`) becomes thread 0 the first time it
//! uses the scheduler; when it returns, the kernel powers off, whatever
//! other threads are doing (as a process ends when its `main` returns).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod stack;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::cmp::Reverse;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

#[cfg(target_arch = "aarch64")]
use kiln_arch_arm64::context;
#[cfg(target_arch = "x86_64")]
use kiln_arch_x86_64::context;

/// Default stack size of a spawned thread (`CONFIG_LIBSCHED_STACK_SIZE`).
pub const DEFAULT_STACK: usize = match option_env!("KILN_CONFIG_LIBSCHED_STACK_SIZE") {
    Some(s) => parse_usize(s),
    None => 64 * 1024,
};

const fn parse_usize(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    v
}

/// Longest single halt when something could still wake a thread (a safety
/// net for a missed device interrupt).
const MAX_IDLE_US: u64 = 1_000_000;

/// A thread's identifier (0 is the boot thread).
pub type ThreadId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Ready,
    Blocked,
    Exited,
}

struct Thread {
    name: String,
    /// Saved stack pointer while not running.
    sp: usize,
    /// None for the boot thread, which runs on the boot stack.
    stack: Option<stack::Stack>,
    state: State,
    /// Bumped every time the thread blocks; wake-ups and timers carry the
    /// value they were armed with, so stale ones are ignored.
    seq: u64,
    timed_out: bool,
    /// While blocked: whether something other than another thread can wake
    /// it (a deadline, or a queue that devices wake).
    wakeable: bool,
    entry: Option<Box<dyn FnOnce() + Send>>,
}

impl Thread {
    fn canary_ok(&self) -> bool {
        self.stack.as_ref().is_none_or(|s| s.canary_ok())
    }
}

struct Sched {
    threads: BTreeMap<ThreadId, Box<Thread>>,
    ready: VecDeque<ThreadId>,
    current: ThreadId,
    /// (deadline in µs, thread, seq) of sleeping or timed waits.
    timers: BinaryHeap<Reverse<(u64, ThreadId, u64)>>,
    next_id: ThreadId,
    /// Time of the last poller run, so busy threads do not starve devices.
    last_poll: u64,
}

impl Sched {
    fn new() -> Sched {
        let boot = Thread {
            name: "main".into(),
            sp: 0,
            stack: None,
            state: State::Running,
            seq: 0,
            timed_out: false,
            wakeable: false,
            entry: None,
        };
        let mut threads = BTreeMap::new();
        threads.insert(0, Box::new(boot));
        Sched {
            threads,
            ready: VecDeque::new(),
            current: 0,
            timers: BinaryHeap::new(),
            next_id: 1,
            last_poll: 0,
        }
    }

    fn cur(&mut self) -> &mut Thread {
        let id = self.current;
        self.threads
            .get_mut(&id)
            .expect("the current thread exists")
    }

    /// Makes `id` ready if it is still blocked in wait number `seq`.
    fn wake(&mut self, id: ThreadId, seq: u64, timed_out: bool) -> bool {
        match self.threads.get_mut(&id) {
            Some(t) if t.state == State::Blocked && t.seq == seq => {
                t.state = State::Ready;
                t.timed_out = timed_out;
                self.ready.push_back(id);
                true
            }
            _ => false,
        }
    }

    /// Wakes the threads whose deadline has passed; returns the next deadline.
    fn fire_timers(&mut self, now: u64) -> Option<u64> {
        while let Some(&Reverse((at, id, seq))) = self.timers.peek() {
            if at > now {
                return Some(at);
            }
            self.timers.pop();
            self.wake(id, seq, true);
        }
        None
    }

    /// Marks the current thread blocked (optionally until `deadline`) and
    /// returns its wait number.
    fn block_current(&mut self, deadline: Option<u64>, device: bool) -> u64 {
        let id = self.current;
        let t = self.cur();
        t.seq += 1;
        t.state = State::Blocked;
        t.timed_out = false;
        t.wakeable = device || deadline.is_some();
        let seq = t.seq;
        if let Some(at) = deadline {
            self.timers.push(Reverse((at, id, seq)));
        }
        seq
    }

    /// Frees the stacks of threads that ended (never the running one's).
    fn reap(&mut self) {
        let cur = self.current;
        self.threads
            .retain(|&id, t| id == cur || t.state != State::Exited);
    }
}

static SCHED: spin::Mutex<Option<Sched>> = spin::Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Sched) -> R) -> R {
    let mut g = SCHED.lock();
    f(g.get_or_insert_with(Sched::new))
}

/// Microseconds since boot.
#[cfg(not(test))]
fn now_us() -> u64 {
    let p = kiln_boot::platform();
    let ticks = p.map_or(0, |p| p.ticks());
    let hz = p.and_then(|p| p.tick_hz()).unwrap_or(1_000_000_000);
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

#[cfg(test)]
fn now_us() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// What a poller found.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollOutcome {
    /// It did something (and may have woken threads).
    pub active: bool,
    /// It must run again within this many µs (None: only when a device
    /// interrupt or a thread asks).
    pub within_us: Option<u64>,
}

/// A device or stack the scheduler drives while threads wait.
pub type Poller = fn() -> PollOutcome;

static POLLERS: spin::Mutex<Vec<Poller>> = spin::Mutex::new(Vec::new());

/// Registers `p`: the scheduler calls it when no thread is ready, and at
/// least every millisecond while threads keep the CPU busy but block now
/// and then.
pub fn add_poller(p: Poller) {
    POLLERS.lock().push(p);
}

fn run_pollers() -> PollOutcome {
    // A stop request from the host is looked for here too.
    kiln_boot::poll_stop();
    let list: Vec<Poller> = POLLERS.lock().clone();
    let mut out = PollOutcome::default();
    for p in list {
        let o = p();
        out.active |= o.active;
        out.within_us = match (out.within_us, o.within_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    out
}

/// Interval at which pollers run even while threads are ready.
const POLL_PERIOD_US: u64 = 1000;

/// Switches to the next ready thread, idling while there is none. The
/// caller has already queued the current thread (yield), blocked it or
/// ended it; this returns when the current thread runs again.
fn reschedule() {
    loop {
        let now = now_us();
        let due_poll = with(|s| now.saturating_sub(s.last_poll) >= POLL_PERIOD_US);
        if due_poll {
            with(|s| s.last_poll = now);
            run_pollers();
        }
        let mut g = SCHED.lock();
        let s = g.get_or_insert_with(Sched::new);
        let next_deadline = s.fire_timers(now_us());
        if let Some(next) = s.ready.pop_front() {
            let cur = s.current;
            s.threads.get_mut(&next).expect("ready threads exist").state = State::Running;
            if next == cur {
                return;
            }
            let old = s.threads.get_mut(&cur).expect("the current thread exists");
            if !old.canary_ok() {
                let name = old.name.clone();
                drop(g);
                panic!("thread '{name}' overflowed its stack");
            }
            let save = &mut old.sp as *mut usize;
            let resume = s.threads[&next].sp;
            s.current = next;
            drop(g);
            // SAFETY: `save` points into the old thread's boxed Thread, which
            // is only freed by `reap` after it has exited and another thread
            // runs; `resume` is the saved (or prepared) stack pointer of a
            // thread that is not running, whose stack is still allocated.
            unsafe { switch(save, resume) };
            with(Sched::reap);
            return;
        }
        // Nothing is ready. If no blocked thread can be woken from outside
        // (a deadline, a device), none ever will be.
        let stuck = !s
            .threads
            .values()
            .any(|t| t.state == State::Blocked && t.wakeable);
        let blocked: Vec<String> = if stuck {
            s.threads
                .values()
                .filter(|t| t.state == State::Blocked)
                .map(|t| t.name.clone())
                .collect()
        } else {
            Vec::new()
        };
        drop(g);
        if stuck {
            deadlock(&blocked);
        }
        let polled = run_pollers();
        with(|s| s.last_poll = now_us());
        if polled.active {
            continue;
        }
        let now = now_us();
        let wait = [
            next_deadline.map(|d| d.saturating_sub(now)),
            polled.within_us,
        ]
        .into_iter()
        .flatten()
        .min();
        let wait = wait.map_or(MAX_IDLE_US, |us| us.min(MAX_IDLE_US));
        idle(wait);
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn switch(save: *mut usize, resume: usize) {
    // SAFETY: forwarded contract (see reschedule).
    unsafe { context::switch(save, resume) }
}

#[cfg(not(test))]
fn idle(us: u64) {
    if let Some(p) = kiln_boot::platform() {
        p.idle(us);
    }
}

#[cfg(test)]
fn idle(us: u64) {
    std::thread::sleep(Duration::from_micros(us.min(1000)));
}

#[cfg(not(test))]
fn deadlock(blocked: &[String]) -> ! {
    kiln_console::println!(
        "kiln: deadlock: every thread is waiting and nothing can wake them: {}",
        blocked.join(", ")
    );
    kiln_boot::exit(kiln_boot::EXIT_DEADLOCK)
}

#[cfg(test)]
fn deadlock(blocked: &[String]) -> ! {
    panic!("deadlock: {}", blocked.join(", "))
}

/// The running thread's id.
pub fn current() -> ThreadId {
    with(|s| s.current)
}

/// The running thread's name.
pub fn current_name() -> String {
    with(|s| s.cur().name.clone())
}

/// Number of threads that have not ended (the boot thread included).
pub fn thread_count() -> usize {
    with(|s| {
        s.threads
            .values()
            .filter(|t| t.state != State::Exited)
            .count()
    })
}

/// Lets the other ready threads run first.
pub fn yield_now() {
    with(|s| {
        let id = s.current;
        s.cur().state = State::Ready;
        s.ready.push_back(id);
    });
    reschedule();
}

/// Blocks the running thread for `d` (at least; then it waits its turn).
pub fn sleep(d: Duration) {
    let at = now_us().saturating_add(d.as_micros() as u64);
    with(|s| s.block_current(Some(at), false));
    reschedule();
}

/// A queue of threads waiting for something. Waking is explicit; a waiter
/// must check its condition again when it wakes.
pub struct WaitQueue {
    waiters: spin::Mutex<VecDeque<(ThreadId, u64)>>,
    /// Woken by a poller (a device), not only by other threads.
    device: bool,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    pub const fn new() -> WaitQueue {
        WaitQueue {
            waiters: spin::Mutex::new(VecDeque::new()),
            device: false,
        }
    }

    /// A queue that a poller wakes (a device's): its waiters never count as
    /// deadlocked.
    pub const fn for_device() -> WaitQueue {
        WaitQueue {
            waiters: spin::Mutex::new(VecDeque::new()),
            device: true,
        }
    }

    /// Blocks until woken.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Blocks until woken (true) or until `timeout` passes (false).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(now_us().saturating_add(timeout.as_micros() as u64)))
    }

    fn wait_until(&self, deadline: Option<u64>) -> bool {
        let (id, seq) = with(|s| (s.current, s.block_current(deadline, self.device)));
        {
            let mut w = self.waiters.lock();
            // Entries left by timed-out waits are dropped now and then.
            if w.len() >= 64 {
                w.retain(|&(i, q)| {
                    with(|s| {
                        s.threads
                            .get(&i)
                            .is_some_and(|t| t.state == State::Blocked && t.seq == q)
                    })
                });
            }
            w.push_back((id, seq));
        }
        reschedule();
        !with(|s| s.cur().timed_out)
    }

    /// Wakes the longest waiter; false if nobody waited.
    pub fn wake_one(&self) -> bool {
        loop {
            let Some((id, seq)) = self.waiters.lock().pop_front() else {
                return false;
            };
            if with(|s| s.wake(id, seq, false)) {
                return true;
            }
        }
    }

    /// Wakes every waiter; returns how many.
    pub fn wake_all(&self) -> usize {
        let all: Vec<_> = self.waiters.lock().drain(..).collect();
        with(|s| {
            all.into_iter()
                .filter(|&(id, seq)| s.wake(id, seq, false))
                .count()
        })
    }

    /// Whether any thread is (or may be) waiting.
    pub fn has_waiters(&self) -> bool {
        !self.waiters.lock().is_empty()
    }
}

/// Thread options, like std's `thread::Builder`.
pub struct Builder {
    name: Option<String>,
    stack: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            name: None,
            stack: DEFAULT_STACK,
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Stack size in bytes (at least 4 KiB).
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack = bytes.max(4096);
        self
    }

    /// Starts `f` on a new thread; it runs when the spawner next blocks or
    /// yields.
    pub fn spawn<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let packet = Arc::new(Packet {
            value: spin::Mutex::new(None),
            done: WaitQueue::new(),
            finished: AtomicBool::new(false),
        });
        let p2 = packet.clone();
        let entry: Box<dyn FnOnce() + Send> = Box::new(move || {
            let v = f();
            *p2.value.lock() = Some(v);
            p2.finished.store(true, Ordering::Release);
            p2.done.wake_all();
        });
        let id = with(|s| {
            let id = s.next_id;
            s.next_id += 1;
            id
        });
        let name = self.name.unwrap_or_else(|| alloc::format!("thread-{id}"));
        let mut stack = stack::Stack::new(self.stack, &alloc::format!("thread '{name}'"));
        // SAFETY: the stack is a live, 16-byte aligned allocation owned by the
        // Thread, which is only freed after the thread has exited.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        let sp = unsafe { context::prepare(stack.usable(), thread_start, id as usize) };
        let t = Thread {
            name,
            sp,
            stack: Some(stack),
            state: State::Ready,
            seq: 0,
            timed_out: false,
            wakeable: false,
            entry: Some(entry),
        };
        with(|s| {
            s.threads.insert(id, Box::new(t));
            s.ready.push_back(id);
        });
        JoinHandle { id, packet }
    }
}

/// Where every spawned thread starts.
extern "C" fn thread_start(id: usize) -> ! {
    with(Sched::reap);
    let entry = with(|s| {
        s.threads
            .get_mut(&(id as ThreadId))
            .and_then(|t| t.entry.take())
    });
    if let Some(f) = entry {
        f();
    }
    with(|s| s.cur().state = State::Exited);
    reschedule();
    unreachable!("an exited thread was resumed");
}

/// Ends the running thread here, without returning to its entry function
/// (a Linux program's thread calling `exit`). Its stack is freed once
/// another thread runs; nothing on it is dropped. The boot thread cannot
/// end this way: the kernel would have nothing left to return to.
pub fn exit_current() -> ! {
    let id = current();
    assert!(id != 0, "the boot thread cannot exit_current");
    with(|s| s.cur().state = State::Exited);
    reschedule();
    unreachable!("an exited thread was resumed");
}

/// Starts `f` on a new thread with the default options.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    Builder::new().spawn(f)
}

struct Packet<T> {
    value: spin::Mutex<Option<T>>,
    done: WaitQueue,
    finished: AtomicBool,
}

/// Owns a spawned thread's result.
pub struct JoinHandle<T> {
    id: ThreadId,
    packet: Arc<Packet<T>>,
}

impl<T> JoinHandle<T> {
    /// The thread's id.
    pub fn id(&self) -> ThreadId {
        self.id
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.packet.finished.load(Ordering::Acquire)
    }

    /// Waits for the thread to end and returns what it returned.
    pub fn join(self) -> T {
        loop {
            if let Some(v) = self.packet.value.lock().take() {
                return v;
            }
            self.packet.done.wait();
        }
    }
}

/// A mutual-exclusion lock whose waiters block (and let other threads run)
/// instead of spinning.
pub struct Mutex<T: ?Sized> {
    locked: AtomicBool,
    waiters: WaitQueue,
    value: UnsafeCell<T>,
}

// SAFETY: the lock gives one thread at a time access to the value, which may
// move between threads, as with std's Mutex.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            locked: AtomicBool::new(false),
            waiters: WaitQueue::new(),
            value: UnsafeCell::new(value),
        }
    }

    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Takes the lock, blocking while another thread holds it.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            self.waiters.wait();
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        (!self.locked.swap(true, Ordering::Acquire)).then(|| MutexGuard { m: self })
    }

    fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
        self.waiters.wake_one();
    }
}

/// Access to a [`Mutex`]'s value; unlocks when dropped.
pub struct MutexGuard<'a, T: ?Sized> {
    m: &'a Mutex<T>,
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread holds the lock.
        unsafe { &*self.m.value.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves this thread holds the lock.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T: ?Sized + core::fmt::Debug> core::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.m.unlock();
    }
}

/// A condition variable for [`Mutex`].
#[derive(Default)]
pub struct Condvar {
    waiters: WaitQueue,
}

impl Condvar {
    pub const fn new() -> Condvar {
        Condvar {
            waiters: WaitQueue::new(),
        }
    }

    /// Unlocks, waits for a notification, locks again.
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let m = guard.m;
        drop(guard);
        // No thread runs between the unlock and the wait (nothing
        // preempts), so a notification cannot slip in between.
        self.waiters.wait();
        m.lock()
    }

    /// Like [`Condvar::wait`], giving up after `timeout`; the bool is true
    /// when it timed out.
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, bool) {
        let m = guard.m;
        drop(guard);
        let woken = self.waiters.wait_timeout(timeout);
        (m.lock(), !woken)
    }

    /// Waits until `condition` is false.
    pub fn wait_while<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        while condition(&mut *guard) {
            guard = self.wait(guard);
        }
        guard
    }

    pub fn notify_one(&self) {
        self.waiters.wake_one();
    }

    pub fn notify_all(&self) {
        self.waiters.wake_all();
    }
}

#[cfg(test)]
mod tests;
