//! Resource limits: getrlimit, setrlimit, prlimit64 (for the program
//! itself: pid 0 or 1) and getrusage.
//!
//! Every limit can be read and set as on Linux (the soft limit at most the
//! hard one; a hard limit may be lowered, and raised up to Kiln's ceiling).
//! RLIMIT_NOFILE is enforced: a descriptor at or above the soft limit is
//! EMFILE. The others are recorded and reported, not enforced (a program
//! that limits its own address space or stack sees the value it set).

use crate::{errno, get_u64, put, Sys};

const INF: u64 = u64::MAX;
/// RLIMIT_NOFILE.
const NOFILE: usize = 7;
/// The most descriptors a program may ask for (the hard limit's ceiling).
pub(crate) const NOFILE_CEILING: u64 = 65536;

/// (soft, hard) for each of Linux's 16 resources, as a Debian shell starts.
static LIMITS: spin::Mutex<[(u64, u64); 16]> = spin::Mutex::new([
    (INF, INF),             // CPU
    (INF, INF),             // FSIZE
    (INF, INF),             // DATA
    (8 << 20, INF),         // STACK
    (0, INF),               // CORE
    (INF, INF),             // RSS
    (INF, INF),             // NPROC
    (1024, NOFILE_CEILING), // NOFILE
    (8 << 20, 8 << 20),     // MEMLOCK
    (INF, INF),             // AS
    (INF, INF),             // LOCKS
    (INF, INF),             // SIGPENDING
    (819_200, 819_200),     // MSGQUEUE
    (0, 0),                 // NICE
    (0, 0),                 // RTPRIO
    (INF, INF),             // RTTIME
]);

/// The soft RLIMIT_NOFILE: descriptors are numbered below it.
pub(crate) fn nofile() -> usize {
    LIMITS.lock()[NOFILE].0 as usize
}

fn resource(r: u64) -> Result<usize, i64> {
    usize::try_from(r)
        .ok()
        .filter(|&r| r < 16)
        .ok_or(errno::EINVAL)
}

/// prlimit64 for the program itself; getrlimit and setrlimit are its
/// halves.
fn prlimit(pid: u64, res: u64, new: u64, old: u64) -> Sys {
    if !matches!(pid, 0 | 1) {
        return Err(3); // ESRCH: there is one process
    }
    let r = resource(res)?;
    let set = if new != 0 {
        // SAFETY: see `crate::bytes`.
        let v = unsafe { (get_u64(new)?, get_u64(new + 8)?) };
        if v.0 > v.1 {
            return Err(errno::EINVAL);
        }
        if r == NOFILE && v.1 > NOFILE_CEILING {
            return Err(errno::EPERM);
        }
        Some(v)
    } else {
        None
    };
    let mut l = LIMITS.lock();
    if old != 0 {
        // SAFETY: see `crate::bytes`.
        unsafe {
            put(old, &l[r].0.to_le_bytes())?;
            put(old + 8, &l[r].1.to_le_bytes())?;
        }
    }
    if let Some(v) = set {
        l[r] = v;
    }
    Ok(0)
}

/// getrusage: the program's CPU time (all of the time since boot counts
/// as user time: Kiln runs nothing else), its peak resident memory and its
/// page faults.
fn getrusage(who: u64, out: u64) -> Sys {
    // RUSAGE_SELF, RUSAGE_THREAD; RUSAGE_CHILDREN has nothing to count.
    let children = match who as i64 {
        0 | 1 => false,
        -1 => true,
        _ => return Err(errno::EINVAL),
    };
    let mut b = [0u8; 144];
    if !children {
        let us = crate::now_us();
        b[..8].copy_from_slice(&(us / 1_000_000).to_le_bytes());
        b[8..16].copy_from_slice(&(us % 1_000_000).to_le_bytes());
        let (peak_kib, faults) = crate::mem::usage();
        b[32..40].copy_from_slice(&peak_kib.to_le_bytes());
        b[64..72].copy_from_slice(&faults.to_le_bytes());
    }
    // SAFETY: see `crate::bytes`.
    unsafe { put(out, &b) }?;
    Ok(0)
}

/// The limit calls; None if `nr` is not one.
pub(crate) fn call(nr: u64, a: [u64; 6]) -> Option<Sys> {
    Some(match nr {
        97 => prlimit(0, a[0], 0, a[1]),
        160 => prlimit(0, a[0], a[1], 0),
        302 => prlimit(a[0], a[1], a[2], a[3]),
        98 => getrusage(a[0], a[1]),
        _ => return None,
    })
}
