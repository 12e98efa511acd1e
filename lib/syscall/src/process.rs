//! Running another program in the same kernel: `vfork`,
//! `clone(CLONE_VM | CLONE_VFORK)` (how musl's and glibc's `posix_spawn`,
//! `system()`, Python's `subprocess` and Go's `os/exec` start programs),
//! `execve` and `wait4`. `fork` stays refused: a Kiln program has one
//! address space.
//!
//! The contract:
//! - The child runs on the calling thread, in the same address space, with
//!   its own copy of the descriptor table, working folder and program path
//!   (`fd::push_context`), a pid of its own, and (after `execve`) its own
//!   `brk` and default signal actions. Until it calls `execve` it shares the
//!   parent's memory, as after `vfork`.
//! - **The parent waits until the child ends** (not only until it execs,
//!   as Linux's vfork does): its thread is the child's. Its other threads
//!   run on. So a pipeline runs one stage after the other: a stage that
//!   writes more than a pipe holds (64 KiB) before the next one reads
//!   waits for ever (the kernel reports the deadlock).
//! - `execve` loads a position-independent program (the ELF loader's code,
//!   registered with [`set_loader`]) where the space has room (above its
//!   random mmap base), with a break of its own; descriptors
//!   marked close-on-exec close, handlers go back to their defaults. A
//!   program linked at a fixed address cannot be started (it would land on
//!   its starter's memory): ENOEXEC, said on the console.
//! - When the child calls `exit_group` (or dies of a signal), its memory,
//!   descriptors and context go, its status waits for `wait4`, SIGCHLD is
//!   sent, and the parent continues from its call with the child's pid.
//! - A started program may not make threads (EAGAIN, said once): they
//!   would outlive it. A segmentation fault in it still ends the machine,
//!   as in the first program. Signal actions are one table: while a child
//!   runs, its parent's other threads see the child's (the parent's come
//!   back when it ends).
//! - `execve` from the first program (replacing it) is refused (ENOSYS,
//!   said on the console).

use crate::{errno, Frame, Sys};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use kiln_sched::ThreadId;

/// What a program that forks is told (once).
pub(crate) const NO_FORK: &str = "elf: fork (clone without CLONE_VM) is not supported: a Kiln program has one address space; vfork and posix_spawn (clone with CLONE_VM|CLONE_VFORK) start programs";

/// Loads a program for `execve`: (path, argv, environment strings) to
/// (entry, initial stack pointer), or an errno and what was wrong.
pub type Loader = fn(&str, &[&str], &[&str]) -> Result<(u64, u64), (i64, String)>;

static LOADER: spin::Mutex<Option<Loader>> = spin::Mutex::new(None);

/// The ELF loader registers how it loads programs.
pub fn set_loader(f: Loader) {
    *LOADER.lock() = Some(f);
}

/// A running child and what its parent continues with.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
struct Child {
    pid: u32,
    /// The parent's registers at its call (it gets the pid back in them).
    frame: Frame,
    kstack: u64,
    #[cfg(target_arch = "x86_64")]
    fp: alloc::boxed::Box<kiln_arch_x86_64::syscall::FpState>,
    #[cfg(target_arch = "x86_64")]
    fs: u64,
    /// The child's own break, once it has exec'd.
    brk: Option<(u64, u64)>,
    signals: crate::signal::Saved,
}

static CHILDREN: spin::Mutex<BTreeMap<ThreadId, Vec<Child>>> = spin::Mutex::new(BTreeMap::new());
static ANY: AtomicBool = AtomicBool::new(false);
/// Ended children not yet waited for: (parent pid, pid, wait status).
static ZOMBIES: spin::Mutex<Vec<(u32, u32, i32)>> = spin::Mutex::new(Vec::new());

fn with_mine<R>(f: impl FnOnce(&mut Child) -> R) -> Option<R> {
    if !ANY.load(Ordering::Relaxed) {
        return None;
    }
    CHILDREN
        .lock()
        .get_mut(&kiln_sched::current())
        .and_then(|v| v.last_mut())
        .map(f)
}

/// The calling thread's process id: 1, or a started program's.
pub(crate) fn pid() -> u32 {
    with_mine(|c| c.pid).unwrap_or(1)
}

/// Its parent's (0 for the first program).
pub(crate) fn parent_pid() -> u32 {
    if !ANY.load(Ordering::Relaxed) {
        return 0;
    }
    let c = CHILDREN.lock();
    match c.get(&kiln_sched::current()).map(|v| v.as_slice()) {
        Some([.., p, _]) => p.pid,
        Some([_]) => 1,
        _ => 0,
    }
}

/// Whether the calling thread runs a started program.
pub(crate) fn in_child() -> bool {
    with_mine(|_| ()).is_some()
}

/// The started program's own break (None: use the space's).
pub(crate) fn brk() -> Option<(u64, u64)> {
    with_mine(|c| c.brk).flatten()
}

pub(crate) fn set_brk(b: (u64, u64)) {
    with_mine(|c| c.brk = Some(b));
}

/// vfork, or clone with CLONE_VM|CLONE_VFORK (and no CLONE_THREAD): the
/// child continues on this thread, on `stack` (0: the caller's, as vfork).
pub(crate) fn spawn(f: &Frame, stack: u64) -> Sys {
    let pid = crate::thread::new_tid();
    let mut frame = *f;
    crate::arch::set_result(&mut frame, pid as i64);
    #[cfg(target_arch = "x86_64")]
    let (fp, fs) = {
        #[allow(unused_mut)]
        let mut fp = alloc::boxed::Box::new(kiln_arch_x86_64::syscall::FpState::new());
        #[cfg(target_os = "none")]
        fp.save();
        #[cfg(target_os = "none")]
        let fs = kiln_arch_x86_64::syscall::fs_base();
        #[cfg(not(target_os = "none"))]
        let fs = 0;
        (fp, fs)
    };
    let child = Child {
        pid,
        frame,
        kstack: crate::arch::kernel_stack(),
        #[cfg(target_arch = "x86_64")]
        fp,
        #[cfg(target_arch = "x86_64")]
        fs,
        brk: None,
        signals: crate::signal::save(),
    };
    crate::fd::push_context();
    CHILDREN
        .lock()
        .entry(kiln_sched::current())
        .or_default()
        .push(child);
    ANY.store(true, Ordering::Relaxed);
    if stack == 0 {
        return Ok(0);
    }
    // On the stack the caller gave, returning 0, as a new thread would.
    let c = crate::arch::child_frame(f, stack, None);
    crate::resume_at(&c, crate::arch::kernel_stack())
}

/// execve: only returns with an error.
pub(crate) fn execve(path: &str, argv: Vec<String>, envp: Vec<String>) -> Sys {
    let Some(load) = *LOADER.lock() else {
        return Err(errno::ENOSYS);
    };
    if !in_child() {
        kiln_console::log!(
            kiln_console::Level::Warn,
            "elf: execve({path}) from the first program is not supported: start it with vfork or posix_spawn"
        );
        return Err(errno::ENOSYS);
    }
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let env: Vec<&str> = envp.iter().map(String::as_str).collect();
    // Its own break, somewhere free.
    if brk().is_none() {
        let at = crate::mem::paged::fresh_room(1 << 30).ok_or(errno::ENOMEM)?;
        set_brk((at, at));
    }
    let (entry, sp) = load(path, &args, &env).map_err(|(e, why)| {
        kiln_console::log!(kiln_console::Level::Info, "elf: execve({path}): {why}");
        e
    })?;
    crate::fd::close_on_exec();
    crate::fd::set_exe(path);
    crate::signal::reset_on_exec();
    // SAFETY: the loader placed the program and its stack in this
    // process's memory; nothing on this call's stack is needed again.
    unsafe { crate::arch::enter(entry, sp) }
}

/// The started program on this thread ended with wait status `status`:
/// its memory, descriptors and context go, and its parent continues.
pub(crate) fn child_exit(status: i32) -> ! {
    let child = {
        let mut c = CHILDREN.lock();
        let id = kiln_sched::current();
        let child = c.get_mut(&id).and_then(|v| v.pop());
        if c.get(&id).is_some_and(|v| v.is_empty()) {
            c.remove(&id);
        }
        ANY.store(!c.is_empty(), Ordering::Relaxed);
        child
    };
    let Some(child) = child else {
        crate::exit(status as i64 >> 8)
    };
    crate::fd::pop_context();
    crate::mem::paged::forget_process(child.pid);
    crate::signal::restore(child.signals);
    ZOMBIES.lock().push((pid(), child.pid, status));
    crate::signal::child_ended();
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        child.fp.restore();
        kiln_arch_x86_64::syscall::set_fs_base(child.fs);
    }
    crate::resume_at(&child.frame, child.kstack)
}

/// wait4(pid, status, options): an ended child of the caller's (children
/// always end before their parent runs again).
pub(crate) fn wait4(want: i64, status: u64) -> Sys {
    let me = pid();
    let mut z = ZOMBIES.lock();
    let Some(i) = z
        .iter()
        .position(|&(parent, p, _)| parent == me && (want <= 0 || want == p as i64))
    else {
        return Err(errno::ECHILD);
    };
    let (_, p, st) = z.remove(i);
    drop(z);
    if status != 0 {
        // SAFETY: see `crate::bytes`.
        unsafe { crate::put(status, &st.to_le_bytes()) }?;
    }
    Ok(p as i64)
}
