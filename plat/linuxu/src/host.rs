//! The executable's entry and the [`Platform`] over host system calls
//! (the contract is in the crate's documentation).

use crate::args::{arg_value, parse_mac};
use crate::sys::{self, call};
use core::sync::atomic::{AtomicIsize, Ordering};
use kiln_arch_x86_64 as arch;
use kiln_boot::{BootInfo, MemRegion, NetDevice, Platform};

core::arch::global_asm!(
    ".section .text.kiln_linuxu_entry, \"ax\"",
    ".global kiln_linuxu_entry",
    // Linux starts a static executable with argc, argv[], NULL, envp[] at
    // the stack pointer; the frame chain ends here (rbp 0).
    "kiln_linuxu_entry:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call kiln_linuxu_main",
    "ud2",
    // What a returning signal handler would come back through (the fault
    // handler never returns; Linux wants SA_RESTORER all the same).
    ".global kiln_linuxu_restorer",
    "kiln_linuxu_restorer:",
    "mov eax, 15",
    "syscall",
    "ud2",
);

extern "C" {
    fn kiln_linuxu_restorer();
}

extern "Rust" {
    /// The generated link crate's start function (boot sequence + app).
    fn kiln_start(info: &BootInfo) -> !;
}

/// The arch crate's PVH entry calls this in a VM; in a process it is
/// never reached.
#[no_mangle]
pub fn kiln_plat_main(_boot_arg: usize, _entry_tsc: u64) -> ! {
    sys::exit(kiln_boot::EXIT_MAX)
}

struct Stdout;

impl kiln_console::Sink for Stdout {
    fn write(&self, bytes: &[u8]) {
        sys::write_all(1, bytes)
    }
}

static STDOUT: Stdout = Stdout;

/// The tap device's descriptor (-1: none) and MAC address.
static TAP_FD: AtomicIsize = AtomicIsize::new(-1);
static TAP: Tap = Tap;
static mut MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Tap;

impl NetDevice for Tap {
    fn mac(&self) -> [u8; 6] {
        // SAFETY: written once in kiln_linuxu_main before anything runs
        // that could read it.
        unsafe { *(&raw const MAC) }
    }

    fn receive(&self, buf: &mut [u8]) -> Option<usize> {
        let fd = TAP_FD.load(Ordering::Relaxed) as usize;
        // SAFETY: the buffer is valid for its length; the descriptor is
        // non-blocking, so read returns at once.
        let n = unsafe {
            call(
                sys::READ,
                [fd, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
            )
        };
        (n > 0).then_some(n as usize)
    }

    fn send(&self, frame: &[u8]) -> bool {
        let fd = TAP_FD.load(Ordering::Relaxed) as usize;
        // SAFETY: the frame is valid for its length.
        let n = unsafe {
            call(
                sys::WRITE,
                [fd, frame.as_ptr() as usize, frame.len(), 0, 0, 0],
            )
        };
        n == frame.len() as isize
    }
}

/// The signals read as a request to stop: SIGHUP, SIGINT, SIGTERM.
const STOP_SIGNALS: u64 = 1 << (1 - 1) | 1 << (2 - 1) | 1 << (15 - 1);

struct Linuxu;

impl Platform for Linuxu {
    fn name(&self) -> &'static str {
        "linuxu/x86_64"
    }

    fn exit(&self, code: i32) -> ! {
        sys::exit(code)
    }

    fn ticks(&self) -> u64 {
        sys::clock_ns(sys::CLOCK_MONOTONIC)
    }

    fn tick_hz(&self) -> Option<u64> {
        Some(1_000_000_000)
    }

    fn backtrace(&self, out: &mut [usize]) -> usize {
        let (fp, sp) = arch::frames::here();
        // SAFETY: walk_frames reads only this thread's own frame chain,
        // above its stack pointer.
        kiln_boot::walk_frames(fp, sp, |a| unsafe { arch::frames::read_word(a) }, out)
    }

    fn idle(&self, us: u64) {
        let ts = [(us / 1_000_000) as i64, (us % 1_000_000 * 1000) as i64];
        let fd = TAP_FD.load(Ordering::Relaxed);
        // struct pollfd: fd, events (POLLIN), revents.
        let mut pfd = [(fd as i32 as u32 as u64) | (1u64 << 32)];
        let (fds, n) = if fd >= 0 {
            (pfd.as_mut_ptr() as usize, 1)
        } else {
            (0, 0)
        };
        // SAFETY: one pollfd and one timespec, both ours; no signal mask.
        unsafe { call(sys::PPOLL, [fds, n, ts.as_ptr() as usize, 0, 8, 0]) };
    }

    fn device_wakes(&self) -> bool {
        TAP_FD.load(Ordering::Relaxed) >= 0
    }

    fn stop_requested(&self) -> bool {
        let set = STOP_SIGNALS;
        let zero = [0i64; 2];
        // SAFETY: the set and the zero timeout are ours; no siginfo wanted.
        let sig = unsafe {
            call(
                sys::RT_SIGTIMEDWAIT,
                [
                    &set as *const u64 as usize,
                    0,
                    zero.as_ptr() as usize,
                    8,
                    0,
                    0,
                ],
            )
        };
        sig > 0
    }

    fn net_device(&self) -> Option<&'static dyn NetDevice> {
        (TAP_FD.load(Ordering::Relaxed) >= 0).then_some(&TAP as &dyn NetDevice)
    }

    fn guard_page(&self, page: usize) -> bool {
        // SAFETY: the caller owns the page (heap memory of our mapping).
        unsafe { call(sys::MPROTECT, [page, 4096, 0, 0, 0, 0]) == 0 }
    }

    fn unguard_page(&self, page: usize) {
        // SAFETY: as above; read and write again.
        unsafe { call(sys::MPROTECT, [page, 4096, 3, 0, 0, 0]) };
    }
}

static LINUXU: Linuxu = Linuxu;

fn fail(what: core::fmt::Arguments) -> ! {
    kiln_console::println!("kiln: linuxu: {what}");
    sys::exit(kiln_boot::EXIT_MAX)
}

/// Attaches to tap `name` (IFF_TAP | IFF_NO_PI), non-blocking.
fn open_tap(name: &[u8]) -> Result<isize, isize> {
    const AT_FDCWD: isize = -100;
    const O_RDWR_NONBLOCK_CLOEXEC: usize = 2 | 0o4000 | 0o2000000;
    const TUNSETIFF: usize = 0x4004_54ca;
    if name.is_empty() || name.len() > 15 {
        return Err(22);
    }
    // SAFETY: a NUL-terminated path we own.
    let fd = unsafe {
        call(
            sys::OPENAT,
            [
                AT_FDCWD as usize,
                c"/dev/net/tun".as_ptr() as usize,
                O_RDWR_NONBLOCK_CLOEXEC,
                0,
                0,
                0,
            ],
        )
    };
    if fd < 0 {
        return Err(-fd);
    }
    // struct ifreq: the name (16 bytes, NUL-padded), then the flags.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name);
    ifr[16..18].copy_from_slice(&(0x0002u16 | 0x1000).to_le_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which is ours.
    let r = unsafe {
        call(
            sys::IOCTL,
            [fd as usize, TUNSETIFF, ifr.as_mut_ptr() as usize, 0, 0, 0],
        )
    };
    if r < 0 {
        // SAFETY: closing the descriptor opened above.
        unsafe { call(sys::CLOSE, [fd as usize, 0, 0, 0, 0, 0]) };
        return Err(-r);
    }
    Ok(fd)
}

/// The alternate stack fault reports run on (a thread's stack may be what
/// overflowed).
static mut FAULT_STACK: [u8; 64 * 1024] = [0; 64 * 1024];

/// Reports a fatal signal as the VM kernel reports a CPU exception (the
/// instruction pointer and return addresses `kiln run` names), then exits
/// with EXIT_FAULT.
extern "C" fn on_fault(sig: i32, info: *const u8, uctx: *const u8) {
    // SAFETY: Linux passes a siginfo_t (si_addr at offset 16) and a
    // ucontext_t (general registers from offset 40: rbp is the 11th, rsp
    // the 16th, rip the 17th) for an SA_SIGINFO handler.
    let (addr, rbp, rsp, rip) = unsafe {
        let g = |i: usize| core::ptr::read_unaligned(uctx.add(40 + 8 * i) as *const usize);
        (
            core::ptr::read_unaligned(info.add(16) as *const usize),
            g(10),
            g(15),
            g(16),
        )
    };
    let name = match sig {
        4 => "SIGILL",
        7 => "SIGBUS",
        8 => "SIGFPE",
        _ => "SIGSEGV",
    };
    kiln_console::print_unlocked(format_args!(
        "kiln: fault: {name} (the host's report of a CPU exception)\n  fault address       0x{addr:016x}\n  instruction pointer 0x{rip:016x}\n  stack pointer       0x{rsp:016x}\n"
    ));
    kiln_boot::explain_fault(addr);
    let mut frames = [0usize; 24];
    // SAFETY: walk_frames reads only along the faulting code's frame chain
    // within 1 MiB above its stack pointer, memory of this process.
    let n = kiln_boot::walk_frames(
        rbp,
        rsp,
        |a| unsafe { arch::frames::read_word(a) },
        &mut frames,
    );
    kiln_boot::print_backtrace(&frames[..n]);
    sys::exit(kiln_boot::EXIT_FAULT)
}

fn install_fault_handler() {
    const SA_SIGINFO: u64 = 4;
    const SA_ONSTACK: u64 = 0x0800_0000;
    const SA_RESTORER: u64 = 0x0400_0000;
    // stack_t: ss_sp, ss_flags (int, padded), ss_size.
    let stack = [&raw mut FAULT_STACK as usize, 0, 64 * 1024];
    // SAFETY: the alternate stack is a static nothing else uses.
    unsafe { call(sys::SIGALTSTACK, [stack.as_ptr() as usize, 0, 0, 0, 0, 0]) };
    // struct kernel_sigaction: handler, flags, restorer, mask.
    let act = [
        on_fault as usize as u64,
        SA_SIGINFO | SA_ONSTACK | SA_RESTORER,
        kiln_linuxu_restorer as usize as u64,
        0,
    ];
    for sig in [4usize, 7, 8, 11] {
        // SAFETY: `act` is a valid kernel_sigaction; the handler never
        // returns into the faulting code.
        unsafe { call(sys::RT_SIGACTION, [sig, act.as_ptr() as usize, 0, 8, 0, 0]) };
    }
}

/// The command line, built from the arguments.
static mut CMDLINE: [u8; 64 * 1024] = [0; 64 * 1024];

/// Called by the entry with the stack pointer Linux started the process with.
#[no_mangle]
extern "C" fn kiln_linuxu_main(sp: *const usize) -> ! {
    let entry = sys::clock_ns(sys::CLOCK_MONOTONIC);
    kiln_console::set_sink(&STDOUT);
    kiln_boot::set_platform(&LINUXU);
    install_fault_handler();
    // SAFETY: Linux put argc and then argc pointers to NUL-terminated
    // strings at the entry stack pointer; they live as long as the process.
    let argv: &[*const u8] = unsafe {
        let argc = *sp;
        core::slice::from_raw_parts(sp.add(1) as *const *const u8, argc)
    };
    let mut words: [&[u8]; 512] = [&[]; 512];
    let n = argv.len().saturating_sub(1);
    if n > words.len() {
        fail(format_args!("more than {} arguments", words.len()));
    }
    for (w, &p) in words.iter_mut().zip(argv.iter().skip(1)) {
        // SAFETY: as above: a NUL-terminated string.
        *w = unsafe { core::ffi::CStr::from_ptr(p as *const core::ffi::c_char) }.to_bytes();
    }
    let words = &words[..n];
    let epoch = sys::clock_ns(sys::CLOCK_REALTIME) / 1_000_000_000;
    // SAFETY: CMDLINE is written once, here, before anything reads it.
    let buf = unsafe { &mut *(&raw mut CMDLINE) };
    let Some(cmdline) = crate::args::command_line(buf, epoch, words.iter().copied()) else {
        fail(format_args!("the command line is longer than 64 KiB"))
    };

    // Stop requests are read (and waited for) instead of delivered.
    let stop = STOP_SIGNALS;
    // SAFETY: blocking signals with a set we own.
    unsafe {
        call(
            sys::RT_SIGPROCMASK,
            [0, &stop as *const u64 as usize, 0, 8, 0, 0],
        )
    };

    let mib = match arg_value(words, b"linuxu.mem") {
        None => 64,
        Some(v) => match core::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim_end_matches(['M', 'm']).parse::<usize>().ok())
        {
            Some(m) if m >= 2 => m,
            _ => fail(format_args!("linuxu.mem: expected MiB (2 or more)")),
        },
    };
    const PROT_RW: usize = 3;
    const MAP_PRIVATE_ANON_NORESERVE: usize = 0x02 | 0x20 | 0x4000;
    // SAFETY: a fresh anonymous mapping, which nothing else refers to.
    let heap = unsafe {
        call(
            sys::MMAP,
            [
                0,
                mib << 20,
                PROT_RW,
                MAP_PRIVATE_ANON_NORESERVE,
                usize::MAX,
                0,
            ],
        )
    };
    if heap < 0 {
        fail(format_args!(
            "mapping {mib} MiB for the heap failed (errno {})",
            -heap
        ));
    }

    if let Some(m) = arg_value(words, b"linuxu.mac") {
        match parse_mac(m) {
            // SAFETY: nothing reads MAC yet (the network starts in kiln_start).
            Some(mac) => unsafe { *(&raw mut MAC) = mac },
            None => fail(format_args!(
                "linuxu.mac: expected six hex bytes, like 52:54:00:12:34:56"
            )),
        }
    }
    if let Some(name) = arg_value(words, b"linuxu.tap") {
        match open_tap(name) {
            Ok(fd) => TAP_FD.store(fd, Ordering::Relaxed),
            Err(e) => fail(format_args!(
                "tap {}: cannot attach (errno {e}{})",
                core::str::from_utf8(name).unwrap_or("?"),
                match e {
                    1 => ": it belongs to another user, or this process lacks CAP_NET_ADMIN",
                    2 | 19 =>
                        ": /dev/net/tun or the device is missing (ip tuntap add dev NAME mode tap)",
                    16 => ": another process has it open",
                    22 => ": a name of 1 to 15 bytes, of a tap device",
                    _ => "",
                }
            )),
        }
    }

    let memory = [MemRegion {
        start: heap as usize,
        size: mib << 20,
    }];
    let info = BootInfo {
        platform: &LINUXU,
        cmdline,
        memory: &memory,
        entry_ticks: entry,
        initrd: None,
        virtio_mmio: &[],
    };
    // SAFETY: the link crate of every kernel defines `kiln_start`.
    unsafe { kiln_start(&info) }
}
