//! A server that shuts down cleanly on SIGTERM, as `kiln stop` sends it:
//! it waits in poll() on a listening socket; its handler notes the
//! signal, poll() returns EINTR, and it "saves its state" and exits 0.
use std::sync::atomic::{AtomicBool, Ordering};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {
    TERM.store(true, Ordering::SeqCst);
}

fn main() {
    let l = std::net::TcpListener::bind("0.0.0.0:7000").expect("bind");
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    println!("term: waiting");
    let mut fds = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&l), events: libc::POLLIN, revents: 0 }];
    loop {
        // SAFETY: one valid pollfd, no timeout.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
        let interrupted = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if TERM.load(Ordering::SeqCst) {
            println!("term: got SIGTERM (poll {}), state saved", if interrupted { "interrupted" } else { "returned" });
            std::process::exit(0);
        }
        if r > 0 {
            let _ = l.accept();
        }
    }
}
