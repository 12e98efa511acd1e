//! Kiln's boot sequence and the contract between platform, libraries and app.
//!
//! The platform (after its arch entry) fills a [`BootInfo`] and the generated
//! link crate calls [`start`] with the chosen heap, the init functions of the
//! selected libraries (in dependency order) and the app's `main`. [`start`]
//! never returns: the app's exit code goes to the platform's power-off.
//!
//! Exit codes the host sees (`kiln run` returns them unchanged):
//! the app's own code in `0..=126`, [`EXIT_PANIC`] for a Rust panic and
//! [`EXIT_FAULT`] for a CPU exception.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;

use alloc::string::String;
use alloc::vec::Vec;
use kiln_alloc::HeapControl;
use kiln_console::{log, Level};
use spin::Once;

/// Exit code after a Rust panic (the same code Rust's std uses).
pub const EXIT_PANIC: i32 = 101;
/// Exit code when every thread waits and nothing can wake them (lib/sched).
pub const EXIT_DEADLOCK: i32 = 123;
/// Exit code after a fatal CPU exception.
pub const EXIT_FAULT: i32 = 125;
/// Largest exit code that reaches the host unchanged (QEMU's exit status
/// encodes the guest code in 7 bits, see `plat/qemu`).
pub const EXIT_MAX: i32 = 126;
/// On machines whose power-off carries no code (Firecracker,
/// cloud-hypervisor, a QEMU without the debug-exit device) the platform
/// prints this, the code and a newline on the console as its last line
/// before powering off; `kiln run` reads the code from it.
pub const EXIT_LINE: &str = "kiln: exit status ";

/// What the host writes on the console's input to ask the machine to stop
/// where the VMM has no other way (Firecracker on arm64, which has no
/// Ctrl-Alt-Del and no power button): an operating-system command escape
/// (ESC `]` ... BEL) that no terminal shows and no one types.
pub const STOP_SEQUENCE: &[u8] = b"\x1b]kiln;stop\x07";

/// Finds [`STOP_SEQUENCE`] in console input fed one byte at a time (for
/// platforms whose console can read).
pub struct StopMatcher(core::sync::atomic::AtomicUsize);

impl StopMatcher {
    pub const fn new() -> StopMatcher {
        StopMatcher(core::sync::atomic::AtomicUsize::new(0))
    }

    /// Takes the next input byte; true when it completes the sequence.
    pub fn feed(&self, b: u8) -> bool {
        use core::sync::atomic::Ordering::Relaxed;
        let at = self.0.load(Relaxed);
        // The sequence's first byte occurs only at its start, so a
        // mismatch restarts the match at this byte.
        let next = if STOP_SEQUENCE[at] == b {
            at + 1
        } else {
            usize::from(STOP_SEQUENCE[0] == b)
        };
        if next == STOP_SEQUENCE.len() {
            self.0.store(0, Relaxed);
            return true;
        }
        self.0.store(next, Relaxed);
        false
    }
}

impl Default for StopMatcher {
    fn default() -> Self {
        Self::new()
    }
}

/// Prints [`EXIT_LINE`] with `code` (on a line of its own) without taking
/// the console's lock: the platform's last words before powering off.
pub fn print_exit_line(code: i32) {
    kiln_console::print_unlocked(format_args!("\n{EXIT_LINE}{code}\n"));
}

/// Services every platform provides.
pub trait Platform: Sync {
    /// Platform and machine name for the boot banner (`"qemu/x86_64 microvm"`).
    fn name(&self) -> &'static str;
    /// Powers the machine off, reporting `code` to the host.
    fn exit(&self, code: i32) -> !;
    /// A monotonic counter (TSC on x86_64, the generic timer on arm64).
    fn ticks(&self) -> u64;
    /// Frequency of [`Platform::ticks`] in Hz, when the platform knows it.
    fn tick_hz(&self) -> Option<u64>;
    /// Maps device memory (a PCI BAR) uncached; false if it cannot.
    fn map_device(&self, _addr: usize, _len: usize) -> bool {
        false
    }
    /// Return addresses of the calls that led here, innermost first, into
    /// `out` (see [`walk_frames`]); how many. The default knows none.
    fn backtrace(&self, _out: &mut [usize]) -> usize {
        0
    }
    /// Sleeps until an interrupt or `us` microseconds pass, to stop burning
    /// the host CPU when there is nothing to do. The default returns at once.
    fn idle(&self, _us: u64) {}
    /// Whether device interrupts end an [`Platform::idle`] early, so a
    /// driver may wait for them instead of polling on a timer.
    fn device_wakes(&self) -> bool {
        false
    }
    /// Re-arms device interrupts. A device interrupt masks them (it only
    /// wakes the CPU); a driver calls this after acknowledging it at the
    /// device, so the next one wakes the CPU again.
    fn device_irq_done(&self) {}
    /// The MSI/MSI-X message (address, data) that raises the device
    /// interrupt, which wakes [`Platform::idle`] as a routed line does; None
    /// where the platform takes no message interrupts. Asking turns the
    /// interrupt on, so only ask for a device that will be given it.
    fn msi_message(&self) -> Option<(u64, u32)> {
        None
    }
    /// Whether PCI configuration space is reachable through ports
    /// 0xCF8/0xCFC (x86 PC machines).
    fn has_pci_ports(&self) -> bool {
        false
    }
    /// Bus 0's PCIe configuration space (ECAM), mapped, at this address;
    /// None where the machine has none (or does not say where), and the
    /// ports serve.
    fn pci_ecam(&self) -> Option<usize> {
        None
    }
    /// Routes the legacy INTx line of a PCI function that has no MSI-X:
    /// `irq` is its Interrupt Line register, the ISA IRQ firmware routed
    /// its pin to. Masked and unmasked as routed lines are (see
    /// [`Platform::device_irq_done`]); false where it cannot be routed.
    fn route_pci_intx(&self, irq: u8) -> bool {
        let _ = irq;
        false
    }
    /// Whether the host has asked the machine to shut down since the last
    /// call: the power button (QEMU's `system_powerdown`) or Ctrl-Alt-Del
    /// on the virtual keyboard (QMP `send-key`, Firecracker's
    /// SendCtrlAltDel). Polled by [`poll_stop`]; the default never does.
    fn stop_requested(&self) -> bool {
        false
    }
    /// A network device the platform drives itself (a host tap device
    /// under plat/linuxu), which lib/net uses instead of looking for
    /// virtio-net. Its frames wake [`Platform::idle`] when
    /// [`Platform::device_wakes`] says so.
    fn net_device(&self) -> Option<&'static dyn NetDevice> {
        None
    }
    /// Unmaps the 4 KiB page at `page` (aligned, RAM the caller owns) so
    /// that touching it faults; false where the platform cannot. Callers
    /// use [`guard_page`].
    fn guard_page(&self, _page: usize) -> bool {
        false
    }
    /// Maps a page [`Platform::guard_page`] unmapped again.
    fn unguard_page(&self, _page: usize) {}
}

/// A zeroed, 4 KiB-aligned page of heap memory, never freed: a page table
/// a platform adds (splitting a large page for a guard page).
pub fn page_table_page() -> Option<u64> {
    let l = core::alloc::Layout::from_size_align(4096, 4096).ok()?;
    // SAFETY: a non-zero-sized layout.
    let t = unsafe { alloc::alloc::alloc_zeroed(l) };
    (!t.is_null()).then_some(t as u64)
}

/// Guard pages and what each guards, for fault reports.
static GUARDS: spin::Mutex<alloc::collections::BTreeMap<usize, String>> =
    spin::Mutex::new(alloc::collections::BTreeMap::new());

/// Makes the 4 KiB page at `page` (aligned, owned by the caller, who must
/// call [`unguard_page`] before freeing it) fault when touched, and
/// remembers that it guards `what` (`"thread 'worker'"`), which a fault
/// report then names. False where the platform cannot (the page is then
/// left as it was).
pub fn guard_page(page: usize, what: &str) -> bool {
    let Some(p) = platform() else { return false };
    if !p.guard_page(page) {
        return false;
    }
    GUARDS.lock().insert(page, String::from(what));
    true
}

/// Maps a page [`guard_page`] guarded again.
pub fn unguard_page(page: usize) {
    if GUARDS.lock().remove(&page).is_some() {
        if let Some(p) = platform() {
            p.unguard_page(page);
        }
    }
}

/// What the guard page holding `addr` guards, if it is one (for fault
/// reports; None too when the list is busy).
pub fn guarded_by(addr: usize) -> Option<String> {
    GUARDS.try_lock()?.get(&(addr & !0xfff)).cloned()
}

/// Says on the console, after a fault report, when the faulting address
/// is a guard page: a stack overflow, and whose.
pub fn explain_fault(addr: usize) {
    // No allocation: the fault may have come from inside the allocator.
    let Some(guards) = GUARDS.try_lock() else {
        return;
    };
    if let Some(what) = guards.get(&(addr & !0xfff)) {
        kiln_console::print_unlocked(format_args!(
            "kiln: {addr:#x} is the guard page below the stack of {what}: it overflowed its stack\n"
        ));
    }
}

/// An Ethernet device a platform provides (see [`Platform::net_device`]).
pub trait NetDevice: Sync {
    /// Its MAC address.
    fn mac(&self) -> [u8; 6];
    /// Takes one received frame into `buf` (1514 bytes hold any): its
    /// length, or None when none is waiting. Never blocks.
    fn receive(&self, buf: &mut [u8]) -> Option<usize>;
    /// Sends one frame; false when it was dropped (TCP sends it again).
    fn send(&self, frame: &[u8]) -> bool;
}

/// Whether the host asked to stop (and the handler ran).
static STOP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// What runs when the host asks to stop (None: the default, exit 0).
static STOP_HANDLER: spin::Mutex<Option<fn()>> = spin::Mutex::new(None);

/// Makes `f` what happens when the host asks the machine to stop (`kiln
/// stop`), instead of the default: an exit with code 0 at once. `f` runs
/// once, from the scheduler's wait loop; it should only note the request
/// and wake the app (the app then finishes its work and exits), not block.
pub fn on_stop(f: fn()) {
    *STOP_HANDLER.lock() = Some(f);
}

/// Whether the host has asked the machine to stop (see [`on_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(core::sync::atomic::Ordering::Acquire)
}

/// Asks the platform whether the host wants the machine to stop and, the
/// first time it does, says so on the console and runs the handler (or
/// exits 0). Called by the scheduler whenever it looks for work, so a
/// request is seen within its longest wait (one second).
pub fn poll_stop() {
    if stop_requested() {
        return;
    }
    let Some(p) = platform() else { return };
    // At most every 10 ms: asking may trap to the hypervisor.
    static LAST: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let now = p.ticks();
    let gap = p.tick_hz().map_or(0, |hz| hz / 100);
    let last = LAST.load(core::sync::atomic::Ordering::Relaxed);
    if last != 0 && now.wrapping_sub(last) < gap {
        return;
    }
    LAST.store(now, core::sync::atomic::Ordering::Relaxed);
    if !p.stop_requested() {
        return;
    }
    STOP.store(true, core::sync::atomic::Ordering::Release);
    let handler = *STOP_HANDLER.lock();
    match handler {
        Some(f) => {
            kiln_console::println!("kiln: stopping at the host's request");
            f()
        }
        None => {
            kiln_console::println!("kiln: stopped at the host's request");
            exit(0)
        }
    }
}

/// A range of free RAM the heap may use.
#[derive(Clone, Copy, Debug)]
pub struct MemRegion {
    /// Physical (= virtual: Kiln identity-maps) start address.
    pub start: usize,
    /// Size in bytes.
    pub size: usize,
}

/// What the platform found at boot.
pub struct BootInfo<'a> {
    /// The platform's services.
    pub platform: &'static dyn Platform,
    /// The kernel command line (`kernel-params -- app args`).
    pub cmdline: &'a str,
    /// Free RAM, outside the kernel image and boot structures.
    pub memory: &'a [MemRegion],
    /// [`Platform::ticks`] at the kernel's first instruction.
    pub entry_ticks: u64,
    /// An initial RAM disk the boot loader passed (`kiln run --initrd`); it
    /// takes the place of the one embedded in the image.
    pub initrd: Option<&'static [u8]>,
    /// virtio-mmio devices the platform found: (base address, size), mapped
    /// uncached.
    pub virtio_mmio: &'a [(usize, usize)],
}

static VIRTIO_MMIO: spin::Once<Vec<(usize, usize)>> = spin::Once::new();
static PARAMS: spin::Once<Vec<(String, Option<String>)>> = spin::Once::new();

/// The value of kernel parameter `name` (before `--` on the command line),
/// for libraries (`netdev.ip=...`).
pub fn param(name: &str) -> Option<&'static str> {
    PARAMS
        .get()?
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The virtio-mmio devices the platform found (lib/virtio probes them).
pub fn virtio_mmio() -> &'static [(usize, usize)] {
    VIRTIO_MMIO.get().map_or(&[], |v| v.as_slice())
}

/// A selected library's init function, run once before the app starts.
pub struct LibInit {
    /// The library's name for boot messages.
    pub name: &'static str,
    /// The init function; an error stops the boot with a message.
    pub init: fn() -> Result<(), String>,
}

/// Boot options from the resolved Kconfig (`CONFIG_LIBCONSOLE_LOGLEVEL`,
/// `CONFIG_LIBBOOT_BANNER`), passed in by the generated link crate.
pub struct BootConfig {
    /// Initial console level, 0 (silent) to 4 (debug); `kiln.loglevel` overrides it.
    pub loglevel: u8,
    /// Print the boot banner.
    pub banner: bool,
    /// The initial RAM disk embedded in the image (the Kraftfile's `rootfs`).
    pub initrd: Option<&'static [u8]>,
}

static INITRD: spin::Once<Option<&'static [u8]>> = spin::Once::new();

/// The initial RAM disk for this boot: the boot loader's, else the embedded
/// one. Libraries (lib/initrd) read it during their init.
pub fn initrd() -> Option<&'static [u8]> {
    INITRD.get().copied().flatten()
}

/// The app's entry point: arguments (the app name first, like `argv`) and environment.
pub type AppMain = fn(args: &[&str], env: &[(&str, &str)]) -> i32;

static PLATFORM: Once<&'static dyn Platform> = Once::new();
static ARGS: Once<Vec<String>> = Once::new();
static ENV: Once<Vec<(String, String)>> = Once::new();

/// The running platform; `None` before the platform reached [`start`] or [`set_platform`].
pub fn platform() -> Option<&'static dyn Platform> {
    PLATFORM.get().copied()
}

/// Registers the platform early (before [`start`]) so panics during platform
/// init can already power off with a code.
pub fn set_platform(p: &'static dyn Platform) {
    PLATFORM.call_once(|| p);
}

/// The app's arguments (the app name first).
pub fn args() -> &'static [String] {
    ARGS.get().map_or(&[], |v| v.as_slice())
}

/// The app's environment.
pub fn env() -> &'static [(String, String)] {
    ENV.get().map_or(&[], |v| v.as_slice())
}

static AT_EXIT: spin::Mutex<Vec<fn()>> = spin::Mutex::new(Vec::new());

/// Registers `f` to run once when the kernel exits through [`exit`] (a
/// disk file system writes what it holds). Hooks must not block on
/// anything the exiting thread may hold: they use `try_lock`.
pub fn at_exit(f: fn()) {
    AT_EXIT.lock().push(f);
}

/// Powers off with `code`; spins if no platform registered yet. The
/// [`at_exit`] hooks run first (once: an exit from inside a hook skips
/// them).
pub fn exit(code: i32) -> ! {
    static EXITING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !EXITING.swap(true, core::sync::atomic::Ordering::SeqCst) {
        let hooks: Vec<fn()> = AT_EXIT.try_lock().map(|h| h.clone()).unwrap_or_default();
        for h in hooks {
            h();
        }
    }
    // Larger codes do not fit the platforms' exit status.
    let code = if (0..=EXIT_MAX).contains(&code) {
        code
    } else {
        kiln_console::println!(
            "kiln: exit code {code} is outside 0..={EXIT_MAX}; reporting {EXIT_MAX}"
        );
        EXIT_MAX
    };
    match platform() {
        Some(p) => p.exit(code),
        None => loop {
            core::hint::spin_loop();
        },
    }
}

/// Converts a tick difference into microseconds, when the frequency is known.
pub fn ticks_to_us(ticks: u64, hz: Option<u64>) -> Option<u64> {
    hz.filter(|&h| h > 0)
        .map(|h| (ticks as u128 * 1_000_000 / h as u128) as u64)
}

static HEAP: spin::Once<&'static dyn HeapControl> = spin::Once::new();

/// RAM the platform kept out of the heap for a program linked at fixed
/// addresses (x86_64, LIBELF_FIXED_AREA): [start, end), identity-mapped;
/// (0, 0) when there is none or it was handed on.
static FIXED_AREA: spin::Mutex<(usize, usize)> = spin::Mutex::new((0, 0));

/// Records the RAM kept for a fixed-address program (platform code, before
/// [`start`]).
pub fn set_fixed_area(start: usize, end: usize) {
    *FIXED_AREA.lock() = (start, end);
}

/// The RAM kept for a fixed-address program, if any is still kept.
pub fn fixed_area() -> Option<(usize, usize)> {
    Some(*FIXED_AREA.lock()).filter(|&(s, e)| e > s)
}

/// Gives the fixed-address area from `from` (page-aligned) to its end to
/// the heap; the part below `from` stays the program's. Returns the bytes
/// the heap took. The ELF loader calls this once it knows what the program
/// needs (a position-independent program needs none of it).
pub fn release_fixed_area(from: usize) -> usize {
    let mut a = FIXED_AREA.lock();
    let (start, end) = *a;
    let from = from.clamp(start, end);
    if from >= end {
        return 0;
    }
    *a = (start, from);
    drop(a);
    match HEAP.get() {
        // SAFETY: the platform kept [start, end) out of the heap and only
        // the program below `from` uses it; it is RAM, mapped read-write.
        Some(h) => unsafe { h.add_region(from, end - from) },
        None => 0,
    }
}

static TIMES: spin::Once<(u64, u64)> = spin::Once::new();

/// Microseconds from the kernel's entry to the app's `main`, once main has
/// been called (`None` before, or when the platform's clock rate is
/// unknown).
pub fn boot_us() -> Option<u64> {
    let (entry, main) = *TIMES.get()?;
    ticks_to_us(main.wrapping_sub(entry), platform()?.tick_hz())
}

/// Microseconds since the kernel's entry (`None` before main, or when the
/// platform's clock rate is unknown).
pub fn uptime_us() -> Option<u64> {
    let (entry, _) = *TIMES.get()?;
    let p = platform()?;
    ticks_to_us(p.ticks().wrapping_sub(entry), p.tick_hz())
}

/// The heap's statistics (total, in use, peak), once the kernel has booted.
pub fn heap_stats() -> Option<kiln_alloc::Stats> {
    HEAP.get().map(|h| h.stats())
}

static RAM_TOP: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The end of the highest RAM the platform gave the kernel (free memory or
/// the boot loader's initrd): memory below it is the kernel's one-to-one
/// map. 0 before boot (and on hosts).
pub fn ram_top() -> usize {
    RAM_TOP.load(core::sync::atomic::Ordering::Relaxed)
}

/// Runs the boot sequence and the app; never returns.
pub fn start(
    info: &BootInfo,
    cfg: &BootConfig,
    heap: &'static dyn HeapControl,
    libs: &[LibInit],
    app_name: &str,
    main: AppMain,
) -> ! {
    set_platform(info.platform);
    HEAP.call_once(|| heap);
    let top = info
        .memory
        .iter()
        .map(|r| r.start + r.size)
        .chain(info.initrd.map(|i| i.as_ptr() as usize + i.len()))
        .max()
        .unwrap_or(0);
    RAM_TOP.store(top, core::sync::atomic::Ordering::Relaxed);
    for r in info.memory {
        // SAFETY: the platform lists only free RAM outside the image and boot
        // structures, never handed to anyone else.
        unsafe { heap.add_region(r.start, r.size) };
    }
    kiln_alloc::set_oom_hook(|layout, backend, stats| {
        kiln_console::print_unlocked(format_args!(
            "kiln: out of memory: {} bytes (align {}) from the {backend} heap; {stats}\n",
            layout.size(),
            layout.align()
        ));
    });

    let cmd = match cmdline::parse(info.cmdline) {
        Ok(c) => c,
        Err(e) => {
            kiln_console::println!("kiln: bad command line: {e}: {}", info.cmdline);
            exit(EXIT_MAX)
        }
    };
    let level = cmd
        .param("kiln.loglevel")
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(cfg.loglevel);
    if cmd.flag("kiln.quiet") || level == 0 {
        kiln_console::set_quiet();
    } else {
        kiln_console::set_level(Level::from_u8(level));
    }
    let p = info.platform;
    if cfg.banner {
        log!(
            Level::Info,
            "{} on {}, heap {} ({})",
            app_name,
            p.name(),
            heap.backend(),
            heap.stats()
        );
    }

    INITRD.call_once(|| info.initrd.or(cfg.initrd));
    PARAMS.call_once(|| cmd.params.clone());
    VIRTIO_MMIO.call_once(|| info.virtio_mmio.to_vec());
    for lib in libs {
        log!(Level::Debug, "init {}", lib.name);
        if let Err(e) = (lib.init)() {
            // Libraries' messages mostly name the library already.
            if e.starts_with(lib.name) && e[lib.name.len()..].starts_with(": ") {
                kiln_console::println!("kiln: {e}");
            } else {
                kiln_console::println!("kiln: {}: {e}", lib.name);
            }
            exit(EXIT_MAX)
        }
    }

    let mut args: Vec<String> = Vec::with_capacity(cmd.args.len() + 1);
    args.push(app_name.into());
    args.extend(cmd.args.iter().cloned());
    let env: Vec<(String, String)> = cmd
        .env()
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let args = ARGS.call_once(|| args);
    let env = ENV.call_once(|| env);
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let envp: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let main_ticks = p.ticks();
    TIMES.call_once(|| (info.entry_ticks, main_ticks));
    if cmd.flag("kiln.bootstats") {
        let t = main_ticks.wrapping_sub(info.entry_ticks);
        match ticks_to_us(t, p.tick_hz()) {
            Some(us) => kiln_console::println!("kiln: boot {t} ticks, {us} us from entry to main"),
            None => kiln_console::println!("kiln: boot {t} ticks from entry to main"),
        }
    }
    let code = main(&argv, &envp);
    log!(Level::Debug, "app exited with {code}; {}", heap.stats());
    exit(code)
}

/// How far above the stack pointer a frame may lie (a frame chain that
/// leaves this span is corrupt, and the walk stops).
const STACK_SPAN: usize = 1 << 20;

/// Walks a frame-pointer chain (kernels are built with frame pointers: on
/// x86_64 and arm64 each frame begins with the caller's frame pointer, then
/// the return address). `fp` and `sp` are the frame and stack pointers
/// where the walk starts; `read(addr)` reads one word of the stack. Stops
/// at a null return address, a frame outside `sp..sp + 1 MiB`, a
/// misaligned one, or one that does not lie above the last. Writes the
/// return addresses, innermost first, into `out` and returns how many.
pub fn walk_frames(
    fp: usize,
    sp: usize,
    read: impl Fn(usize) -> usize,
    out: &mut [usize],
) -> usize {
    let top = sp.saturating_add(STACK_SPAN);
    let (mut fp, mut n) = (fp, 0);
    while n < out.len() && fp >= sp && fp < top - 16 && fp % 8 == 0 {
        let ret = read(fp + 8);
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        let next = read(fp);
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

/// Prints a backtrace of return addresses in the form `kiln run`
/// annotates with function names and lines.
pub fn print_backtrace(addrs: &[usize]) {
    if addrs.is_empty() {
        return;
    }
    kiln_console::print_unlocked(format_args!("kiln: backtrace, most recent call first:\n"));
    for (i, a) in addrs.iter().enumerate() {
        kiln_console::print_unlocked(format_args!("  #{i:<2} return address 0x{a:016x}\n"));
    }
}

/// The kernel's panic handler: message and location, then [`EXIT_PANIC`].
#[cfg(all(not(test), target_os = "none"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let msg = info.message();
    match info.location() {
        Some(l) => kiln_console::print_unlocked(format_args!(
            "kiln: panic at {}:{}:{}: {msg}\n",
            l.file(),
            l.line(),
            l.column()
        )),
        None => kiln_console::print_unlocked(format_args!("kiln: panic: {msg}\n")),
    }
    let mut frames = [0usize; 24];
    let n = platform().map_or(0, |p| p.backtrace(&mut frames));
    // The first return address is into this handler.
    print_backtrace(frames[..n].get(1..).unwrap_or(&[]));
    exit(EXIT_PANIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_sequence_is_found_in_console_input() {
        let m = StopMatcher::new();
        let feed = |bytes: &[u8]| bytes.iter().filter(|&&b| m.feed(b)).count();
        assert_eq!(feed(STOP_SEQUENCE), 1);
        // Anywhere in other input, after a false start, twice in a row.
        assert_eq!(feed(b"ls\r\x1b]ki\x1b]kiln;stop\x07x"), 1);
        assert_eq!(feed(&[STOP_SEQUENCE, STOP_SEQUENCE].concat()), 2);
        // Not a prefix, not with a byte missing.
        assert_eq!(feed(b"\x1b]kiln;stop"), 0);
        assert_eq!(feed(b"\x1b]kiln;sop\x07"), 0);
    }

    #[test]
    fn frame_chains_are_walked_within_the_stack() {
        // A stack of words at 0x1000..: frames at 0x1000 -> 0x1040 -> 0x1080.
        let mut mem = [0usize; 64];
        let base = 0x1000;
        let mut put = |addr: usize, v: usize| mem[(addr - base) / 8] = v;
        put(0x1000, 0x1040);
        put(0x1008, 0xaaaa);
        put(0x1040, 0x1080);
        put(0x1048, 0xbbbb);
        put(0x1080, 0x0800); // a chain that goes down ends the walk
        put(0x1088, 0xcccc);
        let read = |a: usize| mem[(a - base) / 8];
        let mut out = [0; 8];
        assert_eq!(walk_frames(0x1000, 0x1000, read, &mut out), 3);
        assert_eq!(out[..3], [0xaaaa, 0xbbbb, 0xcccc]);
        // Below the stack pointer, misaligned, or a full buffer.
        assert_eq!(walk_frames(0x1000, 0x1008, read, &mut out), 0);
        assert_eq!(walk_frames(0x1004, 0x1000, read, &mut out), 0);
        assert_eq!(walk_frames(0x1000, 0x1000, read, &mut out[..2]), 2);
    }

    #[test]
    fn ticks_convert() {
        assert_eq!(ticks_to_us(3_000, Some(3_000_000_000)), Some(1));
        assert_eq!(ticks_to_us(5, None), None);
        assert_eq!(ticks_to_us(5, Some(0)), None);
    }
}

/// Memory-map arithmetic shared by the platforms.
pub mod mem {
    use super::MemRegion;

    /// Collects the free parts of `ram` (half-open `[start, end)` ranges) into
    /// `out`, leaving out every `reserved` range and everything below `floor`
    /// and at or above `ceiling`. Pieces smaller than a page are dropped.
    /// Returns how many regions were written; when there are more pieces
    /// than `out` holds, the largest are kept (a firmware's map may list
    /// many small ranges before the one that holds most of the RAM).
    pub fn carve(
        ram: impl Iterator<Item = (usize, usize)>,
        reserved: &[(usize, usize)],
        floor: usize,
        ceiling: usize,
        out: &mut [MemRegion],
    ) -> usize {
        let mut n = 0;
        for (s, e) in ram {
            let mut work = [(0usize, 0usize); 16];
            let mut w = 0;
            let (a, b) = (s.max(floor), e.min(ceiling));
            if a < b {
                work[0] = (a, b);
                w = 1;
            }
            for &(rs, re) in reserved {
                let mut next: [(usize, usize); 16] = [(0, 0); 16];
                let mut m = 0;
                for &(a, b) in &work[..w] {
                    for piece in [(a, b.min(rs)), (a.max(re), b)] {
                        if piece.0 < piece.1 && m < next.len() {
                            next[m] = piece;
                            m += 1;
                        }
                    }
                }
                work = next;
                w = m;
            }
            for &(a, b) in &work[..w] {
                let a = (a + 4095) & !4095;
                let b = b & !4095;
                if a >= b {
                    continue;
                }
                let piece = MemRegion {
                    start: a,
                    size: b - a,
                };
                if n < out.len() {
                    out[n] = piece;
                    n += 1;
                } else if let Some(smallest) = out.iter_mut().min_by_key(|r| r.size) {
                    if smallest.size < piece.size {
                        *smallest = piece;
                    }
                }
            }
        }
        n
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn carves_out_reserved_and_clips() {
            let mut out = [MemRegion { start: 0, size: 0 }; 8];
            let ram = [(0, 0x9fc00), (0x10_0000, 0x800_0000)];
            let n = carve(
                ram.into_iter(),
                &[(0x10_0000, 0x12_3456)],
                0x10_0000,
                0x400_0000,
                &mut out,
            );
            assert_eq!(n, 1);
            assert_eq!(out[0].start, 0x12_4000);
            assert_eq!(out[0].start + out[0].size, 0x400_0000);
            // a hole in the middle splits the region
            let n = carve(
                [(0, 0x10000)].into_iter(),
                &[(0x4000, 0x5000)],
                0,
                usize::MAX,
                &mut out,
            );
            assert_eq!(n, 2);
            assert_eq!(
                (out[0].start, out[0].size, out[1].start, out[1].size),
                (0, 0x4000, 0x5000, 0xb000)
            );
            // More pieces than room: the largest are kept.
            let mut two = [MemRegion { start: 0, size: 0 }; 2];
            let ram = [
                (0x1000, 0x2000),
                (0x3000, 0x5000),
                (0x8000, 0x9000),
                (0x10_0000, 0x80_0000),
            ];
            let n = carve(ram.into_iter(), &[], 0, usize::MAX, &mut two);
            let mut kept: Vec<(usize, usize)> =
                two[..n].iter().map(|r| (r.start, r.size)).collect();
            kept.sort();
            assert_eq!(kept, [(0x3000, 0x2000), (0x10_0000, 0x70_0000)]);
        }
    }
}
