//! POSIX calls a Linux program expects, checked one by one through musl
//! (kiln/tests/elfloader.rs compares the lines with Linux's answers):
//! SO_ACCEPTCONN, ftruncate of an unlinked open file (and to 2 GiB: sparse), RLIMIT_NOFILE,
//! getrusage, POSIX timers with signals, rt_sigtimedwait; `udp PORT`
//! echoes datagrams with recvmmsg/sendmmsg until one says "quit".
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

static TICKS: AtomicU64 = AtomicU64::new(0);
static CODE: AtomicI32 = AtomicI32::new(0);
static VALUE: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_timer(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    unsafe {
        CODE.store((*info).si_code, Ordering::SeqCst);
        VALUE.store((*info).si_value().sival_ptr as u64, Ordering::SeqCst);
        // Expirations that came while one was pending count too (si_overrun,
        // after si_tid in the timer fields at byte 16).
        let overrun = *(info as *const u8).add(20).cast::<i32>();
        TICKS.fetch_add(1 + overrun.max(0) as u64, Ordering::SeqCst);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// A timer of `clock` that signals `sig` with `value`; its id.
unsafe fn timer(clock: libc::clockid_t, notify: i32, sig: i32, value: u64) -> libc::timer_t {
    let mut ev: libc::sigevent = std::mem::zeroed();
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev.sigev_value = libc::sigval { sival_ptr: value as *mut libc::c_void };
    let mut id: libc::timer_t = std::ptr::null_mut();
    assert_eq!(libc::timer_create(clock, &mut ev, &mut id), 0, "timer_create: {}", errno());
    id
}

fn spec(value_ms: i64, interval_ms: i64) -> libc::itimerspec {
    let ts = |ms: i64| libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
    libc::itimerspec { it_interval: ts(interval_ms), it_value: ts(value_ms) }
}

fn ms(ts: libc::timespec) -> i64 {
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // SAFETY (all blocks below): libc calls with valid pointers to locals.
    if args.get(1).map(String::as_str) == Some("udp") {
        let port: u16 = args[2].parse().unwrap();
        unsafe { udp(port) };
        return;
    }
    unsafe {
        acceptconn();
        unlinked();
        nofile();
        timers();
        rusage();
        remap_fixed();
        interfaces();
    }
}

/// SIOCGIF* on a socket, as programs ask for their address and MAC.
unsafe fn interfaces() {
    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let ask = |name: &str, req: u64| -> (i32, [u8; 24]) {
        let mut r = [0u8; 40];
        r[..name.len()].copy_from_slice(name.as_bytes());
        let rc = libc::ioctl(s, req as _, r.as_mut_ptr());
        let mut out = [0u8; 24];
        out.copy_from_slice(&r[16..40]);
        (if rc < 0 { *libc::__errno_location() } else { 0 }, out)
    };
    let (_, hw) = ask("eth0", 0x8927);
    let (_, ad) = ask("eth0", 0x8915);
    let (_, nm) = ask("eth0", 0x891b);
    let (_, mtu) = ask("eth0", 0x8921);
    let (_, lo) = ask("lo", 0x8913);
    let (err, _) = ask("wlan0", 0x8927);
    let mac: Vec<String> = hw[2..8].iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "ifreq: eth0 hw {} addr {}.{}.{}.{} mask {}.{}.{}.{} mtu {}; lo loopback {}; wlan0 errno {err}",
        mac.join(":"),
        ad[4], ad[5], ad[6], ad[7],
        nm[4], nm[5], nm[6], nm[7],
        u32::from_le_bytes(mtu[..4].try_into().unwrap()),
        u16::from_le_bytes([lo[0], lo[1]]) & 8 != 0,
    );
    libc::close(s);
}

unsafe fn acceptconn() {
    let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
    let mut a: libc::sockaddr_in = std::mem::zeroed();
    a.sin_family = libc::AF_INET as u16;
    a.sin_port = 9123u16.to_be();
    assert_eq!(libc::bind(s, &a as *const _ as *const libc::sockaddr, 16), 0);
    let get = || {
        let (mut v, mut l) = (7i32, 4u32);
        libc::getsockopt(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, &mut v as *mut i32 as *mut _, &mut l);
        v
    };
    let bound = get();
    libc::listen(s, 4);
    println!("acceptconn: bound {bound}, listening {}", get());
    libc::close(s);
}

unsafe fn unlinked() {
    let path = c"/tmp-unlinked";
    let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
    libc::write(fd, b"abcdef".as_ptr() as *const _, 6);
    libc::unlink(path.as_ptr());
    let t = libc::ftruncate(fd, 3);
    let e = if t == 0 { 0 } else { errno() };
    let mut st: libc::stat = std::mem::zeroed();
    libc::fstat(fd, &mut st);
    let mut b = [0u8; 8];
    let n = libc::pread(fd, b.as_mut_ptr() as *mut _, 8, 0);
    println!(
        "unlinked: ftruncate {t} (errno {e}), size {}, links {}, reads {:?}",
        st.st_size,
        st.st_nlink,
        String::from_utf8_lossy(&b[..n.max(0) as usize])
    );
    // Sized up front: the file system keeps the size, not 2 GiB of zeros.
    let t = libc::ftruncate(fd, 2 << 30);
    libc::fstat(fd, &mut st);
    let mut z = [1u8; 16];
    let n = libc::pread(fd, z.as_mut_ptr() as *mut _, 16, 1 << 30);
    println!(
        "sparse: ftruncate {t}, size {}, blocks {}, zeros at 1 GiB {}",
        st.st_size,
        st.st_blocks,
        n == 16 && z == [0; 16]
    );
    libc::close(fd);
}

unsafe fn nofile() {
    let mut r: libc::rlimit = std::mem::zeroed();
    libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    println!("nofile: soft {} hard {}", r.rlim_cur, r.rlim_max);
    let bad = libc::rlimit { rlim_cur: 10, rlim_max: 5 };
    let e = if libc::setrlimit(libc::RLIMIT_NOFILE, &bad) == 0 { 0 } else { errno() };
    let small = libc::rlimit { rlim_cur: 16, rlim_max: r.rlim_max };
    libc::setrlimit(libc::RLIMIT_NOFILE, &small);
    let mut now: libc::rlimit = std::mem::zeroed();
    libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
    let mut fds = Vec::new();
    let stop = loop {
        let fd = libc::dup(0);
        if fd < 0 {
            break errno();
        }
        fds.push(fd);
    };
    let highest = fds.iter().max().copied().unwrap_or(-1);
    for fd in fds {
        libc::close(fd);
    }
    libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    println!("nofile: soft > hard is errno {e}; set to {}, dup stops with errno {stop} after fd {highest}", now.rlim_cur);
}

unsafe fn timers() {
    const SIGUSR1: i32 = libc::SIGUSR1;
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = on_timer as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    libc::sigaction(SIGUSR1, &sa, std::ptr::null_mut());
    // A periodic timer: first at 50 ms, then every 20 ms.
    let t = timer(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, SIGUSR1, 42);
    let started = std::time::Instant::now();
    assert_eq!(libc::timer_settime(t, 0, &spec(50, 20), std::ptr::null_mut()), 0);
    let mut cur: libc::itimerspec = std::mem::zeroed();
    libc::timer_gettime(t, &mut cur);
    let (interval, left) = (ms(cur.it_interval), ms(cur.it_value));
    for _ in 0..30 {
        sleep_ms(10);
    }
    libc::timer_delete(t);
    let el = started.elapsed().as_millis() as i64;
    let ticks = TICKS.load(Ordering::SeqCst);
    // However long the sleeps took (a loaded machine), the expirations
    // counted (with overruns) are the ones that time held.
    let want = if el >= 50 { (el - 50) / 20 + 1 } else { 0 };
    let matched = (ticks as i64 - want).abs() <= 2 && ticks >= 8;
    println!(
        "timer: interval {interval} ms, first in {} ms, {} in 300 ms or more, si_code {}, si_value {}",
        if left > 0 && left <= 50 { "<= 50" } else { "??" },
        if matched { "ticks as the time passed".to_string() } else { format!("{ticks} ticks for {el} ms") },
        CODE.load(Ordering::SeqCst),
        VALUE.load(Ordering::SeqCst)
    );
    sleep_ms(50);
    println!("timer: deleted, {} more ticks", TICKS.load(Ordering::SeqCst) - ticks);
    // SIGEV_NONE only counts down.
    let n = timer(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0);
    libc::timer_settime(n, 0, &spec(1000, 0), std::ptr::null_mut());
    sleep_ms(100);
    libc::timer_gettime(n, &mut cur);
    let left = ms(cur.it_value);
    println!("timer: SIGEV_NONE left {}", if (800..1000).contains(&left) { "about 900 ms" } else { "wrong" });
    libc::timer_delete(n);
    // An absolute CLOCK_REALTIME time; the signal blocked and taken by
    // sigtimedwait instead of a handler.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, libc::SIGUSR2);
    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    let r = timer(libc::CLOCK_REALTIME, libc::SIGEV_SIGNAL, libc::SIGUSR2, 7);
    let mut now: libc::timespec = std::mem::zeroed();
    libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
    let mut at = spec(0, 0);
    at.it_value = libc::timespec { tv_sec: now.tv_sec + (now.tv_nsec + 100_000_000) / 1_000_000_000, tv_nsec: (now.tv_nsec + 100_000_000) % 1_000_000_000 };
    libc::timer_settime(r, libc::TIMER_ABSTIME, &at, std::ptr::null_mut());
    let mut info: libc::siginfo_t = std::mem::zeroed();
    let wait = libc::timespec { tv_sec: 5, tv_nsec: 0 };
    let start = std::time::Instant::now();
    let got = libc::sigtimedwait(&set, &mut info, &wait);
    let took = start.elapsed().as_millis();
    println!(
        "sigtimedwait: signal {got} after {} ms, si_code {}, si_value {}",
        if (50..1000).contains(&took) { "about 100" } else { "wrong" },
        info.si_code,
        info.si_value().sival_ptr as u64
    );
    let short = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
    let got = libc::sigtimedwait(&set, &mut info, &short);
    println!("sigtimedwait: nothing pending gives {got} errno {}", errno());
    libc::timer_delete(r);
    println!("timer_delete of a deleted timer: {}", if libc::timer_delete(r) == 0 { "succeeds" } else { "fails" });
}

unsafe fn rusage() {
    let big = vec![1u8; 4 << 20];
    std::hint::black_box(&big);
    let mut u: libc::rusage = std::mem::zeroed();
    libc::getrusage(libc::RUSAGE_SELF, &mut u);
    println!(
        "rusage: max resident {}, page faults {}",
        if u.ru_maxrss >= 4096 { "at least 4 MiB" } else { "too small" },
        if u.ru_minflt >= 1024 { "at least 1024" } else { "too few" },
    );
}

unsafe fn udp(port: u16) {
    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let mut a: libc::sockaddr_in = std::mem::zeroed();
    a.sin_family = libc::AF_INET as u16;
    a.sin_port = port.to_be();
    assert_eq!(libc::bind(s, &a as *const _ as *const libc::sockaddr, 16), 0);
    println!("udp: listening on {port}");
    const N: usize = 8;
    let mut total = 0;
    let mut quit = false;
    while !quit {
        let mut bufs = [[0u8; 64]; N];
        let mut iov: [libc::iovec; N] = std::mem::zeroed();
        let mut names: [libc::sockaddr_in; N] = std::mem::zeroed();
        let mut msgs: [libc::mmsghdr; N] = std::mem::zeroed();
        for i in 0..N {
            iov[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr() as *mut _, iov_len: 64 };
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &mut names[i] as *mut _ as *mut _;
            msgs[i].msg_hdr.msg_namelen = 16;
        }
        let n = libc::recvmmsg(s, msgs.as_mut_ptr(), N as u32, libc::MSG_WAITFORONE as _, std::ptr::null_mut());
        assert!(n > 0, "recvmmsg: {}", errno());
        let n = n as usize;
        total += n;
        quit = (0..n).any(|i| &bufs[i][..msgs[i].msg_len as usize] == b"quit");
        // Echo every one back, prefixed, in one sendmmsg.
        let mut out: Vec<Vec<u8>> = (0..n)
            .map(|i| [b"echo ".as_slice(), &bufs[i][..msgs[i].msg_len as usize]].concat())
            .collect();
        let mut oiov: Vec<libc::iovec> = out.iter_mut().map(|o| libc::iovec { iov_base: o.as_mut_ptr() as *mut _, iov_len: o.len() }).collect();
        let mut omsgs: Vec<libc::mmsghdr> = (0..n).map(|_| std::mem::zeroed()).collect();
        for i in 0..n {
            omsgs[i].msg_hdr.msg_iov = &mut oiov[i];
            omsgs[i].msg_hdr.msg_iovlen = 1;
            omsgs[i].msg_hdr.msg_name = &mut names[i] as *mut _ as *mut _;
            omsgs[i].msg_hdr.msg_namelen = 16;
        }
        let sent = libc::sendmmsg(s, omsgs.as_mut_ptr(), n as u32, 0);
        println!("udp: recvmmsg gave {n}, sendmmsg sent {sent}");
    }
    println!("udp: {total} datagrams echoed");
}

unsafe fn remap_fixed() {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let a = libc::mmap(std::ptr::null_mut(), 2 * 4096, rw, anon, -1, 0) as *mut u8;
    *a = b'x';
    *a.add(4096) = b'y';
    let b = libc::mmap(std::ptr::null_mut(), 4 * 4096, rw, anon, -1, 0) as *mut u8;
    *b = b'z';
    let r = libc::mremap(a as *mut _, 2 * 4096, 2 * 4096, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, b as *mut libc::c_void) as *mut u8;
    // Onto a range that overlaps its own: refused.
    let onto_self = libc::mremap(b as *mut _, 2 * 4096, 2 * 4096, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, b.add(4096) as *mut libc::c_void);
    let e = errno();
    println!(
        "mremap: fixed move lands there {}, keeps both pages {}, onto itself errno {}",
        r == b,
        *b == b'x' && *b.add(4096) == b'y',
        if onto_self == libc::MAP_FAILED { e } else { 0 }
    );
}
