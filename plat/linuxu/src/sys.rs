//! Linux system calls on x86_64, by number: the only way this platform
//! reaches the host. Each wrapper returns the kernel's raw result (a
//! negative errno on failure).

pub const READ: usize = 0;
pub const WRITE: usize = 1;
pub const CLOSE: usize = 3;
pub const MMAP: usize = 9;
pub const MPROTECT: usize = 10;
pub const RT_SIGACTION: usize = 13;
pub const RT_SIGPROCMASK: usize = 14;
pub const IOCTL: usize = 16;
pub const RT_SIGTIMEDWAIT: usize = 128;
pub const SIGALTSTACK: usize = 131;
pub const CLOCK_GETTIME: usize = 228;
pub const EXIT_GROUP: usize = 231;
pub const OPENAT: usize = 257;
pub const PPOLL: usize = 271;

pub const EINTR: isize = 4;
pub const EAGAIN: isize = 11;

/// Makes system call `nr` with up to six arguments.
///
/// # Safety
/// The arguments must be what call `nr` expects: pointers valid for the
/// lengths it reads or writes. Calls that change the address space or
/// signal dispositions must not invalidate memory Rust code still uses.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn call(nr: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: `syscall` clobbers rcx and r11 (declared) and the result
    // register; the caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `write(fd, bytes)`, retried until everything is written or it fails.
pub fn write_all(fd: usize, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { call(WRITE, [fd, bytes.as_ptr() as usize, bytes.len(), 0, 0, 0]) };
        match n {
            n if n > 0 => bytes = &bytes[n as usize..],
            n if n == -EINTR || n == -EAGAIN => {}
            _ => return,
        }
    }
}

/// Ends the process with `code`.
pub fn exit(code: i32) -> ! {
    loop {
        // SAFETY: exit_group takes no pointers and does not return.
        unsafe { call(EXIT_GROUP, [code as usize, 0, 0, 0, 0, 0]) };
    }
}

/// `clock_gettime(clock)` in nanoseconds.
pub fn clock_ns(clock: usize) -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a struct timespec (two 64-bit fields) we own.
    unsafe { call(CLOCK_GETTIME, [clock, ts.as_mut_ptr() as usize, 0, 0, 0, 0]) };
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

pub const CLOCK_REALTIME: usize = 0;
pub const CLOCK_MONOTONIC: usize = 1;
