//! What Kiln does with each Linux system call: the source of
//! `docs/syscalls.md` (a unit test keeps the page equal to [`markdown`];
//! `KILN_BLESS=1 cargo test -p kiln-syscall` rewrites it).

use crate::names::NAMES;
use alloc::string::String;

/// How far a call is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Does what Linux does, for the cases a single-process unikernel has.
    Yes,
    /// Works, with the limits given.
    Partial(&'static str),
    /// Accepted and answered, with nothing to do (the note says why).
    Accepted(&'static str),
    /// Returns an error on purpose (the note says which and why); not
    /// logged as unsupported.
    Refused(&'static str),
}

/// Every call Kiln answers; any other returns ENOSYS and is logged once.
pub const SUPPORT: &[(&str, Support)] = {
    use Support::*;
    &[
        ("read", Yes),
        ("write", Yes),
        ("open", Yes),
        ("openat", Yes),
        ("close", Yes),
        ("stat", Yes),
        ("fstat", Yes),
        ("lstat", Yes),
        ("newfstatat", Partial("AT_EMPTY_PATH and AT_SYMLINK_NOFOLLOW; times are the file's mtime")),
        ("statx", Partial("basic fields (STATX_BASIC_STATS); no birth time")),
        ("lseek", Partial("files; directories rewind only")),
        ("pread64", Yes),
        ("pwrite64", Yes),
        ("readv", Yes),
        ("writev", Yes),
        ("preadv", Yes),
        ("pwritev", Yes),
        ("access", Partial("existence only: the only user is root")),
        ("faccessat", Partial("existence only")),
        ("faccessat2", Partial("existence only")),
        ("fcntl", Partial("F_DUPFD(_CLOEXEC), F_GETFD/SETFD, F_GETFL/SETFL (O_NONBLOCK, O_APPEND); record locks always granted")),
        ("ioctl", Partial("FIONBIO, FIONREAD, FIOCLEX/FIONCLEX; on the console TCGETS (a cooked serial line), TCSETS*, TIOCGWINSZ (80x24), TIOCGPGRP; on sockets SIOCGIFFLAGS/ADDR/NETMASK/MTU/HWADDR/INDEX for eth0 and lo; others ENOTTY")),
        ("dup", Yes),
        ("dup2", Yes),
        ("dup3", Yes),
        ("pipe", Partial("within the program (64 KiB buffer); no SIGPIPE, EPIPE only")),
        ("pipe2", Partial("O_NONBLOCK, O_CLOEXEC; as pipe")),
        ("eventfd", Yes),
        ("eventfd2", Partial("EFD_SEMAPHORE, EFD_NONBLOCK, EFD_CLOEXEC")),
        ("getdents64", Yes),
        ("readlink", Partial("symlinks in the rootfs, and /proc/self/exe")),
        ("readlinkat", Partial("as readlink")),
        ("getcwd", Yes),
        ("chdir", Yes),
        ("fchdir", Yes),
        ("mkdir", Yes),
        ("mkdirat", Yes),
        ("unlink", Yes),
        ("unlinkat", Yes),
        ("rmdir", Yes),
        ("rename", Yes),
        ("renameat", Yes),
        ("renameat2", Partial("flags ignored")),
        ("symlink", Yes),
        ("symlinkat", Yes),
        ("link", Yes),
        ("linkat", Yes),
        ("truncate", Yes),
        ("ftruncate", Yes),
        ("chmod", Yes),
        ("fchmodat", Yes),
        ("sendfile", Partial("from a file, 64 KiB per call")),
        ("statfs", Partial("a RAM file system's figures")),
        ("fstatfs", Partial("as statfs")),
        ("fchmod", Accepted("one user")),
        ("chown", Accepted("one user")),
        ("fchown", Accepted("one user")),
        ("lchown", Accepted("one user")),
        ("fchownat", Accepted("one user")),
        ("utime", Accepted("times are not kept")),
        ("utimes", Accepted("times are not kept")),
        ("utimensat", Accepted("times are not kept")),
        ("futimesat", Accepted("times are not kept")),
        ("fsync", Partial("on a volume, a virtio-blk flush after the file system's writes (9p: the host's fsync); the in-memory rootfs has nothing to write")),
        ("fdatasync", Partial("as fsync")),
        ("sync", Partial("every mounted volume, as fsync")),
        ("syncfs", Partial("every mounted volume, as sync")),
        ("fadvise64", Accepted("advice")),
        ("flock", Accepted("one process: always granted")),
        ("fallocate", Accepted("memory is allocated on write")),
        ("sync_file_range", Partial("the whole file, as fsync")),
        ("mmap", Partial("demand-paged anonymous memory and private file copies at random addresses (an initrd file's pages lent in place, copied on write), MAP_FIXED, MAP_FIXED_NOREPLACE and MAP_GROWSDOWN anywhere in the program window; shared file mappings are private copies")),
        ("munmap", Partial("any page range, pages go back at once")),
        ("brk", Partial("demand-paged, up to 1 GiB at a random address")),
        ("mremap", Partial("grows in place or moves the pages (MREMAP_MAYMOVE), shrinks, MREMAP_FIXED; no MREMAP_DONTUNMAP")),
        ("madvise", Partial("MADV_DONTNEED and MADV_FREE give the pages back (they read as zero); other advice ignored")),
        ("mprotect", Partial("per page, PROT_NONE keeps contents, W^X as asked (a fixed-address program's own memory: on x86_64 write and execute only, PROT_NONE leaves it readable; on arm64 it stays read/write/execute)")),
        ("mlock", Accepted("memory is never paged out")),
        ("munlock", Accepted("memory is never paged out")),
        ("mlockall", Accepted("memory is never paged out")),
        ("munlockall", Accepted("memory is never paged out")),
        ("msync", Accepted("private mappings only")),
        ("membarrier", Accepted("one CPU")),
        ("socket", Partial("AF_INET, SOCK_STREAM and SOCK_DGRAM; others EAFNOSUPPORT")),
        ("socketpair", Partial("AF_UNIX stream pairs within the program (two pipes); no descriptor passing")),
        ("bind", Partial("the port; every local address")),
        ("listen", Partial("backlog capped at 32 listening sockets")),
        ("accept", Yes),
        ("accept4", Yes),
        ("connect", Partial("TCP (blocking or EINPROGRESS) and UDP")),
        ("sendto", Partial("MSG_DONTWAIT; other flags ignored")),
        ("recvfrom", Partial("MSG_DONTWAIT; MSG_PEEK on TCP (not UDP)")),
        ("sendmsg", Partial("no control data")),
        ("recvmsg", Partial("no control data")),
        ("sendmmsg", Partial("as sendmsg, for each message")),
        ("recvmmsg", Partial("as recvmsg, for each message; MSG_WAITFORONE, the timeout checked after each message")),
        ("shutdown", Partial("SHUT_WR and SHUT_RDWR close the sending side")),
        ("getsockname", Yes),
        ("getpeername", Yes),
        ("setsockopt", Accepted("addresses are always reusable, Nagle is off")),
        ("getsockopt", Partial("SO_ERROR, SO_TYPE, SO_ACCEPTCONN, buffer sizes; others read 0")),
        ("poll", Yes),
        ("ppoll", Partial("the signal mask is ignored")),
        ("select", Yes),
        ("pselect6", Partial("the signal mask is ignored")),
        ("epoll_create", Yes),
        ("epoll_create1", Yes),
        ("epoll_ctl", Partial("EPOLLET, EPOLLONESHOT; EPOLLEXCLUSIVE ignored")),
        ("epoll_wait", Yes),
        ("epoll_pwait", Partial("the signal mask is ignored")),
        ("epoll_pwait2", Partial("the signal mask is ignored")),
        ("clone", Partial("threads (CLONE_VM|CLONE_THREAD, TLS, tid words); CLONE_VM|CLONE_VFORK starts a program (posix_spawn), which runs to its end before the caller continues; fork gets ENOSYS")),
        ("clone3", Refused("ENOSYS: glibc then uses clone")),
        ("futex", Partial("WAIT, WAKE, WAIT_BITSET, WAKE_BITSET, WAKE_OP, (CMP_)REQUEUE by waking; no PI")),
        ("set_tid_address", Yes),
        ("set_robust_list", Accepted("threads end only by exiting")),
        ("rseq", Refused("ENOSYS: C libraries carry on without it")),
        ("gettid", Yes),
        ("exit", Yes),
        ("exit_group", Yes),
        ("arch_prctl", Partial("ARCH_SET_FS, ARCH_GET_FS")),
        ("getpid", Partial("1, or the id of a program another one started")),
        ("getppid", Partial("0 for the first program, its starter's id for a started one")),
        ("getuid", Partial("root")),
        ("getgid", Partial("root")),
        ("geteuid", Partial("root")),
        ("getegid", Partial("root")),
        ("getresuid", Partial("root")),
        ("getresgid", Partial("root")),
        ("getgroups", Partial("none")),
        ("setuid", Accepted("one user")),
        ("setgid", Accepted("one user")),
        ("setreuid", Accepted("one user")),
        ("setregid", Accepted("one user")),
        ("setgroups", Accepted("one user")),
        ("getpgrp", Partial("always 1")),
        ("getpgid", Partial("always 1")),
        ("getsid", Partial("always 1")),
        ("setsid", Accepted("one process")),
        ("uname", Yes),
        ("clock_gettime", Partial("CLOCK_REALTIME is the host's time at boot (`kiln run` passes it) plus the time since; the other clocks count from boot")),
        ("clock_getres", Yes),
        ("gettimeofday", Partial("as CLOCK_REALTIME")),
        ("time", Partial("as CLOCK_REALTIME")),
        ("nanosleep", Yes),
        ("clock_nanosleep", Yes),
        ("sched_yield", Yes),
        ("getrandom", Yes),
        ("getrlimit", Yes),
        ("setrlimit", Partial("every limit is kept and reported; RLIMIT_NOFILE (1024, hard 65536) is enforced")),
        ("prlimit64", Partial("for the program itself (pid 0 or 1); as setrlimit")),
        ("getrusage", Partial("user time is the time since boot; maximum resident set and page faults (x86_64)")),
        ("sched_getaffinity", Partial("one CPU")),
        ("sched_setaffinity", Accepted("one CPU")),
        ("getcpu", Partial("CPU 0")),
        ("sysinfo", Partial("uptime; memory figures are fixed")),
        ("umask", Accepted("returns 022")),
        ("prctl", Accepted("names and the like")),
        ("rt_sigaction", Partial("handlers run for signals the program sends itself, its timers' and the host's SIGTERM, when a system call returns or a program thread is preempted")),
        ("rt_sigprocmask", Yes),
        ("rt_sigpending", Yes),
        ("rt_sigreturn", Partial("from handlers Kiln entered; every register comes back")),
        ("sigaltstack", Partial("per thread; SA_ONSTACK handlers run there (x86_64); SS_AUTODISARM accepted, not applied")),
        ("rt_sigsuspend", Partial("waits for a signal from a timer or another thread")),
        ("pause", Partial("waits for a signal from a timer or another thread")),
        ("rt_sigtimedwait", Yes),
        ("timer_create", Partial("SIGEV_SIGNAL, SIGEV_NONE; SIGEV_THREAD_ID signals the process (its threads share one pending set)")),
        ("timer_settime", Yes),
        ("timer_gettime", Yes),
        ("timer_getoverrun", Yes),
        ("timer_delete", Yes),
        ("alarm", Yes),
        ("setitimer", Partial("ITIMER_REAL")),
        ("getitimer", Partial("ITIMER_REAL")),
        ("kill", Partial("to itself (pid 0, 1, -1): the handler runs, or the default action ends the program")),
        ("tkill", Partial("to its own threads: pending for that thread alone")),
        ("tgkill", Partial("to its own threads: pending for that thread alone")),
        ("wait4", Partial("children started with vfork/posix_spawn (ended by the time it is called); status, no rusage")),
        ("fork", Refused("ENOSYS: one address space; vfork and posix_spawn start programs")),
        ("execve", Partial("in a program started with vfork/posix_spawn: a position-independent program replaces it; close-on-exec descriptors close, handlers reset")),
        ("vfork", Partial("the child runs on the caller's thread with its own descriptors; the caller continues when it has ended")),
    ]
};

/// A call's name, or "?".
pub fn name(nr: u64) -> &'static str {
    NAMES
        .iter()
        .find(|&&(n, _)| n == nr)
        .map_or("?", |&(_, s)| s)
}

pub(crate) fn name_or_number(nr: u64) -> String {
    match name(nr) {
        "?" => alloc::format!("syscall_{nr}"),
        n => n.into(),
    }
}

/// What Kiln does with the call named `name` (None: ENOSYS, logged).
pub fn support(name: &str) -> Option<Support> {
    SUPPORT.iter().find(|&&(n, _)| n == name).map(|&(_, s)| s)
}

/// The table of every x86_64 system call, for `docs/syscalls.md`.
pub fn markdown() -> String {
    use core::fmt::Write;
    let count = |f: fn(&Support) -> bool| SUPPORT.iter().filter(|(_, s)| f(s)).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Linux system calls in Kiln (x86_64)\n\n\
         Generated from `lib/syscall/src/table.rs` (`KILN_BLESS=1 cargo test -p kiln-syscall` rewrites this page;\n\
         a unit test fails when it is out of date). Programs run by `apps/elfloader` make these calls; a call\n\
         marked \"no\" returns ENOSYS and is named once on the console and again in the summary at exit.\n\
         On arm64 the same calls are answered under arm64's numbers (the generic table; `lib/syscall/src/arch.rs`\n\
         maps them); calls arm64 does not have (`open`, `stat`, `fork`, `arch_prctl`, ...) do not arise there,\n\
         and the thread pointer is TPIDR_EL0, which programs set themselves.\n\n\
         {} calls do what Linux does, {} work with the limits given, {} are accepted with nothing to do,\n\
         {} are refused on purpose, and the other {} return ENOSYS.\n",
        count(|s| *s == Support::Yes),
        count(|s| matches!(s, Support::Partial(_))),
        count(|s| matches!(s, Support::Accepted(_))),
        count(|s| matches!(s, Support::Refused(_))),
        NAMES.len() - SUPPORT.len(),
    );
    let _ = writeln!(s, "| nr | call | support | notes |\n|---:|---|---|---|");
    for &(nr, n) in NAMES {
        let (what, note) = match support(n) {
            Some(Support::Yes) => ("yes", ""),
            Some(Support::Partial(w)) => ("partial", w),
            Some(Support::Accepted(w)) => ("accepted", w),
            Some(Support::Refused(w)) => ("refused", w),
            None => ("no", ""),
        };
        let _ = writeln!(s, "| {nr} | `{n}` | {what} | {note} |");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_name_is_a_real_call() {
        for (n, _) in SUPPORT {
            assert!(
                NAMES.iter().any(|&(_, m)| m == *n),
                "{n} is not an x86_64 system call"
            );
        }
    }

    #[test]
    fn docs_syscalls_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/syscalls.md");
        let want = markdown();
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/syscalls.md is out of date: run KILN_BLESS=1 cargo test -p kiln-syscall"
        );
    }
}
