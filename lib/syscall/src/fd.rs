//! The program's file descriptors and the calls on them: the console,
//! VFS files and directories, pipes and eventfds (sockets and epoll sets
//! live in their own modules but share this table).

use crate::{bytes, bytes_mut, cstr, errno, get_u64, iovecs, note_missing, put, vfs_err, Sys};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use kiln_vfs::{vfs, DirEntry, FileType, Whence};

pub(crate) const O_NONBLOCK: u32 = 0o4000;
const O_CLOEXEC: u32 = 0o2000000;
const O_DIRECTORY: u32 = 0o200000;
const AT_FDCWD: i64 = -100;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_EMPTY_PATH: u64 = 0x1000;

/// poll/epoll readiness bits (the same values in both).
pub(crate) const POLLIN: u32 = 0x1;
pub(crate) const POLLOUT: u32 = 0x4;
pub(crate) const POLLERR: u32 = 0x8;
pub(crate) const POLLHUP: u32 = 0x10;
pub(crate) const POLLRDHUP: u32 = 0x2000;

/// What a descriptor refers to.
pub(crate) enum Kind {
    /// The serial console: writes print, reads see end of file.
    Console,
    File(VfsFile),
    Dir(DirFile),
    Pipe(PipeEnd),
    /// One end of a socketpair: reads one pipe, writes the other.
    Pair(PipeEnd, PipeEnd),
    EventFd(EventFd),
    Epoll(crate::poll::Epoll),
    Socket(crate::net::Socket),
}

/// An open file description, shared by descriptors made with dup.
pub(crate) struct Desc {
    pub kind: Kind,
    /// Status flags as fcntl(F_GETFL) shows them (O_NONBLOCK, O_APPEND,
    /// access mode).
    pub flags: AtomicU32,
    /// Bumped whenever the description stops being readable (resp.
    /// writable) after a call on it: edge-triggered epoll reports it again
    /// only after such a change.
    pub rx_edge: AtomicU64,
    pub tx_edge: AtomicU64,
}

impl Desc {
    pub fn new(kind: Kind, flags: u32) -> Desc {
        Desc {
            kind,
            flags: AtomicU32::new(flags & !O_CLOEXEC),
            rx_edge: AtomicU64::new(0),
            tx_edge: AtomicU64::new(0),
        }
    }

    pub fn nonblocking(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & O_NONBLOCK != 0
    }

    /// Readiness: POLLIN, POLLOUT, POLLHUP, POLLERR, POLLRDHUP bits.
    pub fn readiness(&self) -> u32 {
        match &self.kind {
            Kind::Console | Kind::File(_) | Kind::Dir(_) => POLLIN | POLLOUT,
            Kind::Pipe(p) => p.readiness(),
            Kind::Pair(r, w) => {
                let (r, w) = (r.readiness(), w.readiness());
                // The peer closing shows as readable end of file.
                let rd = if r & POLLHUP != 0 {
                    POLLIN | POLLRDHUP
                } else {
                    r
                };
                rd | w
                    | if r & POLLHUP != 0 && w & POLLERR != 0 {
                        POLLHUP
                    } else {
                        0
                    }
            }
            Kind::EventFd(e) => {
                POLLOUT
                    | if e.count.load(Ordering::Relaxed) > 0 {
                        POLLIN
                    } else {
                        0
                    }
            }
            Kind::Epoll(e) => {
                if e.any_ready() {
                    POLLIN
                } else {
                    0
                }
            }
            Kind::Socket(s) => s.readiness(),
        }
    }

    /// Records that a call may have drained the description (see `rx_edge`).
    pub fn after_io(&self) {
        if matches!(self.kind, Kind::Console | Kind::File(_) | Kind::Dir(_)) {
            return;
        }
        let r = self.readiness();
        if r & POLLIN == 0 {
            self.rx_edge.fetch_add(1, Ordering::Relaxed);
        }
        if r & POLLOUT == 0 {
            self.tx_edge.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A VFS descriptor, closed when the last description using it goes.
pub(crate) struct VfsFile(pub i32);

impl Drop for VfsFile {
    fn drop(&mut self) {
        let _ = vfs().close(self.0);
    }
}

/// An open directory: its path and, once read, its entries.
pub(crate) struct DirFile {
    file: VfsFile,
    pub path: String,
    pos: spin::Mutex<(usize, Option<Vec<DirEntry>>)>,
}

/// A pipe's buffer and how many ends of each kind are open.
pub(crate) struct Pipe {
    buf: spin::Mutex<VecDeque<u8>>,
    readers: AtomicUsize,
    writers: AtomicUsize,
}

/// Bytes a pipe holds before writers wait (as Linux's default).
const PIPE_CAP: usize = 65536;

pub(crate) struct PipeEnd {
    pipe: Arc<Pipe>,
    write: bool,
}

impl PipeEnd {
    fn readiness(&self) -> u32 {
        let len = self.pipe.buf.lock().len();
        if self.write {
            if self.pipe.readers.load(Ordering::Relaxed) == 0 {
                POLLERR | POLLOUT
            } else if len < PIPE_CAP {
                POLLOUT
            } else {
                0
            }
        } else {
            let hup = if self.pipe.writers.load(Ordering::Relaxed) == 0 {
                POLLHUP
            } else {
                0
            };
            hup | if len > 0 { POLLIN } else { 0 }
        }
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        let n = if self.write {
            &self.pipe.writers
        } else {
            &self.pipe.readers
        };
        n.fetch_sub(1, Ordering::Relaxed);
        notify();
    }
}

pub(crate) struct EventFd {
    count: AtomicU64,
    semaphore: bool,
}

#[derive(Clone)]
struct Slot {
    desc: Arc<Desc>,
    cloexec: bool,
}

static TABLE: spin::Mutex<Vec<Option<Slot>>> = spin::Mutex::new(Vec::new());
static CWD: spin::Mutex<String> = spin::Mutex::new(String::new());
static EXE: spin::Mutex<String> = spin::Mutex::new(String::new());

/// A program another one started (crate::process) has its own copy of the
/// table, working folder and program path, on the thread it runs on (the
/// starting program's other threads keep theirs); innermost last.
struct Context {
    table: Vec<Option<Slot>>,
    cwd: String,
    exe: String,
}

static CONTEXTS: spin::Mutex<alloc::collections::BTreeMap<kiln_sched::ThreadId, Vec<Context>>> =
    spin::Mutex::new(alloc::collections::BTreeMap::new());
static ANY_CONTEXT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Runs `f` on the calling thread's context, if it has one.
fn in_context<R>(f: impl FnOnce(&mut Context) -> R) -> Option<R> {
    if !ANY_CONTEXT.load(core::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let mut c = CONTEXTS.lock();
    c.get_mut(&kiln_sched::current())
        .and_then(|v| v.last_mut())
        .map(f)
}

/// A started program gets a copy of its starter's descriptors (shared
/// descriptions, as after fork), folder and path.
pub(crate) fn push_context() {
    let ctx = in_context(|c| Context {
        table: c.table.clone(),
        cwd: c.cwd.clone(),
        exe: c.exe.clone(),
    })
    .unwrap_or_else(|| Context {
        table: with_table(|t| t.clone()),
        cwd: CWD.lock().clone(),
        exe: EXE.lock().clone(),
    });
    CONTEXTS
        .lock()
        .entry(kiln_sched::current())
        .or_default()
        .push(ctx);
    ANY_CONTEXT.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// The started program ended: its descriptors close (a pipe's writer
/// among them, so its reader sees the end).
pub(crate) fn pop_context() {
    let gone = {
        let mut c = CONTEXTS.lock();
        let id = kiln_sched::current();
        let gone = c.get_mut(&id).and_then(|v| v.pop());
        if c.get(&id).is_some_and(|v| v.is_empty()) {
            c.remove(&id);
        }
        ANY_CONTEXT.store(!c.is_empty(), core::sync::atomic::Ordering::Relaxed);
        gone
    };
    drop(gone);
}

/// execve: descriptors marked close-on-exec close.
pub(crate) fn close_on_exec() {
    let gone: Vec<Slot> = with_table(|t| {
        let mut gone = Vec::new();
        for s in t.iter_mut() {
            if s.as_ref().is_some_and(|s| s.cloexec) {
                gone.extend(s.take());
            }
        }
        gone
    });
    drop(gone);
}

pub(crate) fn set_exe(path: &str) {
    if in_context(|c| c.exe = path.into()).is_none() {
        *EXE.lock() = path.into();
    }
}

fn with_table<R>(f: impl FnOnce(&mut Vec<Option<Slot>>) -> R) -> R {
    if ANY_CONTEXT.load(core::sync::atomic::Ordering::Relaxed) {
        let mut c = CONTEXTS.lock();
        if let Some(ctx) = c.get_mut(&kiln_sched::current()).and_then(|v| v.last_mut()) {
            return f(&mut ctx.table);
        }
    }
    let mut t = TABLE.lock();
    if t.is_empty() {
        for _ in 0..3 {
            t.push(Some(Slot {
                desc: Arc::new(Desc::new(Kind::Console, 2)),
                cloexec: false,
            }));
        }
    }
    f(&mut t)
}

/// The description behind `fd`.
pub(crate) fn get(fd: i64) -> Result<Arc<Desc>, i64> {
    let i = usize::try_from(fd).map_err(|_| errno::EBADF)?;
    with_table(|t| t.get(i).and_then(|s| s.as_ref()).map(|s| s.desc.clone())).ok_or(errno::EBADF)
}

/// Installs `desc` at the lowest free number at or above `min`.
pub(crate) fn install_at_least(desc: Arc<Desc>, cloexec: bool, min: usize) -> Sys {
    with_table(|t| {
        let i = (min..crate::limits::nofile())
            .find(|&i| t.get(i).is_none_or(|s| s.is_none()))
            .ok_or(errno::EMFILE)?;
        if t.len() <= i {
            t.resize_with(i + 1, || None);
        }
        t[i] = Some(Slot { desc, cloexec });
        Ok(i as i64)
    })
}

/// Installs a new description at the lowest free number.
pub(crate) fn install(kind: Kind, flags: u32) -> Sys {
    install_at_least(Arc::new(Desc::new(kind, flags)), flags & O_CLOEXEC != 0, 0)
}

fn close(fd: i64) -> Sys {
    let i = usize::try_from(fd).map_err(|_| errno::EBADF)?;
    // The description (and what it holds) is dropped outside the lock.
    let slot = with_table(|t| t.get_mut(i).and_then(Option::take)).ok_or(errno::EBADF)?;
    drop(slot);
    Ok(0)
}

fn dup3(old: i64, new: i64, flags: u64) -> Sys {
    let d = get(old)?;
    let n = usize::try_from(new)
        .ok()
        .filter(|&n| n < crate::limits::nofile())
        .ok_or(errno::EBADF)?;
    if old == new {
        return Ok(new);
    }
    let prev = with_table(|t| {
        if t.len() <= n {
            t.resize_with(n + 1, || None);
        }
        t[n].replace(Slot {
            desc: d,
            cloexec: flags & O_CLOEXEC as u64 != 0,
        })
    });
    drop(prev);
    Ok(new)
}

/// Threads waiting for a pipe, an eventfd or a poll set to change when no
/// network stack runs (with one, they wait on its activity queue, which
/// [`notify`] also wakes).
static CHANGED: kiln_sched::WaitQueue = kiln_sched::WaitQueue::new();

/// Wakes every thread waiting in [`wait`]: something they may be waiting
/// for changed.
pub(crate) fn notify() {
    CHANGED.wake_all();
    if kiln_net::available() {
        kiln_net::wake_waiters();
    }
}

/// Blocks the calling thread until something may have changed (a packet,
/// a pipe, an eventfd) or `deadline` (µs since boot) passes; runs the
/// network stack first, returning at once if it made progress.
pub(crate) fn wait(deadline: Option<u64>) {
    let left = deadline.map(|d| d.saturating_sub(crate::now_us()));
    if left == Some(0) {
        return;
    }
    if kiln_net::available() {
        if !kiln_net::poll() {
            kiln_net::idle(left.unwrap_or(1_000_000).min(1_000_000));
        }
    } else {
        match left {
            Some(us) => {
                CHANGED.wait_timeout(core::time::Duration::from_micros(us));
            }
            None => CHANGED.wait(),
        }
    }
}

/// Runs `attempt` until it has a result; a non-blocking description gets
/// EAGAIN instead of waiting.
pub(crate) fn block(d: &Desc, attempt: impl FnMut() -> Option<Sys>) -> Sys {
    block_with(d.nonblocking(), attempt)
}

/// Runs `attempt` until it has a result, waiting between tries (EAGAIN at
/// once when `nonblocking`).
pub(crate) fn block_with<T>(
    nonblocking: bool,
    mut attempt: impl FnMut() -> Option<Result<T, i64>>,
) -> Result<T, i64> {
    loop {
        if let Some(r) = attempt() {
            return r;
        }
        if nonblocking {
            return Err(errno::EAGAIN);
        }
        if crate::signal::interrupted() {
            return Err(errno::EINTR);
        }
        wait(None);
    }
}

pub(crate) fn read_desc(d: &Desc, buf: &mut [u8]) -> Sys {
    let r = match &d.kind {
        Kind::Console => Ok(0),
        Kind::File(f) => vfs().read(f.0, buf).map(|n| n as i64).map_err(vfs_err),
        Kind::Dir(_) => Err(21), // EISDIR
        Kind::Pipe(p) if p.write => Err(errno::EBADF),
        Kind::Pipe(p) | Kind::Pair(p, _) => block(d, || {
            let mut b = p.pipe.buf.lock();
            if b.is_empty() {
                return (p.pipe.writers.load(Ordering::Relaxed) == 0).then_some(Ok(0));
            }
            let n = buf.len().min(b.len());
            for (dst, src) in buf.iter_mut().zip(b.drain(..n)) {
                *dst = src;
            }
            drop(b);
            notify();
            Some(Ok(n as i64))
        }),
        Kind::EventFd(e) => {
            if buf.len() < 8 {
                return Err(errno::EINVAL);
            }
            block(d, || {
                let c = e.count.load(Ordering::Relaxed);
                if c == 0 {
                    return None;
                }
                let take = if e.semaphore { 1 } else { c };
                e.count.fetch_sub(take, Ordering::Relaxed);
                buf[..8].copy_from_slice(&take.to_le_bytes());
                notify();
                Some(Ok(8))
            })
        }
        Kind::Epoll(_) => Err(errno::EINVAL),
        Kind::Socket(s) => s.recv(d, buf, 0).map(|(n, _)| n),
    };
    d.after_io();
    r
}

pub(crate) fn write_desc(d: &Desc, buf: &[u8]) -> Sys {
    let r = match &d.kind {
        Kind::Console => {
            kiln_console::write_bytes(buf);
            Ok(buf.len() as i64)
        }
        Kind::File(f) => vfs().write(f.0, buf).map(|n| n as i64).map_err(vfs_err),
        Kind::Dir(_) => Err(errno::EBADF),
        Kind::Pipe(p) if !p.write => Err(errno::EBADF),
        Kind::Pipe(p) | Kind::Pair(_, p) => block(d, || {
            if p.pipe.readers.load(Ordering::Relaxed) == 0 {
                return Some(Err(errno::EPIPE));
            }
            let mut b = p.pipe.buf.lock();
            let n = buf.len().min(PIPE_CAP - b.len());
            if n == 0 && !buf.is_empty() {
                return None;
            }
            b.extend(&buf[..n]);
            drop(b);
            notify();
            Some(Ok(n as i64))
        }),
        Kind::EventFd(e) => {
            let Some(v) = buf
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            else {
                return Err(errno::EINVAL);
            };
            if v == u64::MAX {
                return Err(errno::EINVAL);
            }
            e.count.fetch_add(v, Ordering::Relaxed);
            notify();
            Ok(8)
        }
        Kind::Epoll(_) => Err(errno::EINVAL),
        Kind::Socket(s) => s.send(d, buf, None),
    };
    d.after_io();
    r
}

/// What stat reports: (ino, st_mode, size, nlink, mtime, 512-byte blocks).
type StatFields = (u64, u32, u64, u64, u64, u64);

fn stat_fields(s: &kiln_vfs::Stat) -> StatFields {
    (
        s.ino,
        s.st_mode(),
        s.size,
        s.nlink as u64,
        s.mtime,
        s.blocks,
    )
}

/// The stat fields of a description.
fn desc_stat(d: &Desc) -> Result<StatFields, i64> {
    let vst = |fd: i32| vfs().fstat(fd).map(|s| stat_fields(&s)).map_err(vfs_err);
    match &d.kind {
        Kind::Console => Ok((1, 0o020620, 0, 1, 0, 0)),
        Kind::File(f) => vst(f.0),
        Kind::Dir(f) => vst(f.file.0),
        Kind::Pipe(_) => Ok((2, 0o010600, 0, 1, 0, 0)),
        Kind::Pair(..) => Ok((3, 0o140777, 0, 1, 0, 0)),
        Kind::Socket(_) => Ok((3, 0o140777, 0, 1, 0, 0)),
        Kind::EventFd(_) | Kind::Epoll(_) => Ok((4, 0o600, 0, 1, 0, 0)),
    }
}

fn path_stat(path: &str, follow: bool) -> Result<StatFields, i64> {
    let r = if follow {
        vfs().stat(path)
    } else {
        vfs().lstat(path)
    };
    match r {
        Ok(s) => Ok(stat_fields(&s)),
        Err(e) => {
            note_missing(path, e);
            Err(vfs_err(e))
        }
    }
}

/// Linux `struct statx` (256 bytes) with the basic fields.
fn statx_bytes((ino, mode, size, nlink, mtime, blocks): StatFields) -> [u8; 256] {
    let mut b = [0u8; 256];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(0, &0x7ffu32.to_le_bytes()); // STATX_BASIC_STATS
    put(4, &4096u32.to_le_bytes());
    put(16, &(nlink as u32).to_le_bytes());
    put(28, &(mode as u16).to_le_bytes());
    put(32, &ino.to_le_bytes());
    put(40, &size.to_le_bytes());
    put(48, &blocks.to_le_bytes());
    for at in [64, 80, 96, 112] {
        put(at, &mtime.to_le_bytes());
    }
    b
}

/// The absolute path `path` names, relative to `dirfd` (or the working
/// directory).
pub(crate) fn resolve(dirfd: i64, path: &str) -> Result<String, i64> {
    if path.is_empty() {
        return Err(errno::ENOENT);
    }
    if path.starts_with('/') {
        return Ok(path.into());
    }
    let base = if dirfd == AT_FDCWD || dirfd as i32 == AT_FDCWD as i32 {
        cwd()
    } else {
        match &get(dirfd)?.kind {
            Kind::Dir(d) => d.path.clone(),
            _ => return Err(errno::ENOTDIR),
        }
    };
    Ok(if base == "/" {
        alloc::format!("/{path}")
    } else {
        alloc::format!("{base}/{path}")
    })
}

fn cwd() -> String {
    if let Some(c) = in_context(|c| c.cwd.clone()) {
        return if c.is_empty() { "/".into() } else { c };
    }
    let c = CWD.lock();
    if c.is_empty() {
        "/".into()
    } else {
        c.clone()
    }
}

fn set_cwd(p: String) {
    if let Err(p) = in_context(|c| c.cwd = p.clone()).ok_or(p.clone()) {
        *CWD.lock() = p;
    }
}

/// Cleans `.` and `..` out of an absolute path.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return "/".into();
    }
    parts.iter().fold(String::new(), |mut s, p| {
        s.push('/');
        s.push_str(p);
        s
    })
}

fn open(dirfd: i64, path: &str, flags: u32, mode: u32) -> Sys {
    let path = normalize(&resolve(dirfd, path)?);
    let vfd = match vfs().open(&path, flags & !(O_NONBLOCK | O_CLOEXEC), mode) {
        Ok(v) => VfsFile(v),
        Err(e) => {
            note_missing(&path, e);
            return Err(vfs_err(e));
        }
    };
    let is_dir = vfs().fstat(vfd.0).is_ok_and(|s| s.kind == FileType::Dir);
    let kind = if is_dir || flags & O_DIRECTORY != 0 {
        Kind::Dir(DirFile {
            file: vfd,
            path,
            pos: spin::Mutex::new((0, None)),
        })
    } else {
        Kind::File(vfd)
    };
    install(kind, flags)
}

/// getdents64: fills `buf` with `struct linux_dirent64` records.
fn getdents64(d: &Desc, buf: &mut [u8]) -> Sys {
    let Kind::Dir(dir) = &d.kind else {
        return Err(errno::ENOTDIR);
    };
    let mut pos = dir.pos.lock();
    if pos.1.is_none() {
        let mut v = alloc::vec![
            DirEntry {
                name: ".".into(),
                ino: 1,
                kind: FileType::Dir
            },
            DirEntry {
                name: "..".into(),
                ino: 1,
                kind: FileType::Dir
            },
        ];
        v.extend(vfs().readdir(&dir.path).map_err(vfs_err)?);
        pos.1 = Some(v);
    }
    let (mut i, entries) = (pos.0, pos.1.take().unwrap());
    let mut at = 0;
    while let Some(e) = entries.get(i) {
        let reclen = (19 + e.name.len() + 1).next_multiple_of(8);
        if at + reclen > buf.len() {
            break;
        }
        let rec = &mut buf[at..at + reclen];
        rec.fill(0);
        rec[..8].copy_from_slice(&e.ino.to_le_bytes());
        rec[8..16].copy_from_slice(&((i + 1) as u64).to_le_bytes());
        rec[16..18].copy_from_slice(&(reclen as u16).to_le_bytes());
        rec[18] = match e.kind {
            FileType::File => 8,
            FileType::Dir => 4,
            FileType::Symlink => 10,
            FileType::CharDevice => 2,
        };
        rec[19..19 + e.name.len()].copy_from_slice(e.name.as_bytes());
        at += reclen;
        i += 1;
    }
    if at == 0 && i < entries.len() {
        pos.1 = Some(entries);
        return Err(errno::EINVAL);
    }
    *pos = (i, Some(entries));
    Ok(at as i64)
}

fn lseek(d: &Desc, off: i64, whence: u64) -> Sys {
    let whence = match whence {
        0 => Whence::Set,
        1 => Whence::Cur,
        2 => Whence::End,
        _ => return Err(errno::EINVAL),
    };
    match &d.kind {
        Kind::File(f) => vfs()
            .lseek(f.0, off, whence)
            .map(|o| o as i64)
            .map_err(vfs_err),
        Kind::Dir(dir) => {
            // Only rewinding is meaningful for a directory.
            *dir.pos.lock() = (off.max(0) as usize, None);
            Ok(off.max(0))
        }
        _ => Err(errno::ESPIPE),
    }
}

fn pread(d: &Desc, buf: &mut [u8], off: u64) -> Sys {
    match &d.kind {
        Kind::File(f) => vfs()
            .pread(f.0, buf, off)
            .map(|n| n as i64)
            .map_err(vfs_err),
        _ => Err(errno::ESPIPE),
    }
}

fn pwrite(d: &Desc, buf: &[u8], off: u64) -> Sys {
    match &d.kind {
        Kind::File(f) => vfs()
            .pwrite(f.0, buf, off)
            .map(|n| n as i64)
            .map_err(vfs_err),
        _ => Err(errno::ESPIPE),
    }
}

/// readv/writev (and their p- forms when `off` is given).
fn rw_vec(fd: i64, iov: u64, n: u64, write: bool, off: Option<u64>) -> Sys {
    let d = get(fd)?;
    // SAFETY: see `bytes`.
    let v = unsafe { iovecs(iov, n) }?;
    if write && off.is_none() {
        if let Kind::Socket(s) = &d.kind {
            // One send for the whole vector (a response's header and body).
            let mut all = Vec::new();
            for &(base, len) in &v {
                // SAFETY: see `bytes`.
                all.extend_from_slice(unsafe { bytes(base, len) }?);
            }
            let r = s.send(&d, &all, None);
            d.after_io();
            return r;
        }
    }
    let mut total = 0i64;
    for (base, len) in v {
        if len == 0 {
            continue;
        }
        let at = off.map(|o| o + total as u64);
        // SAFETY: see `bytes`.
        let r = unsafe {
            match (write, at) {
                (true, None) => write_desc(&d, bytes(base, len)?),
                (true, Some(o)) => pwrite(&d, bytes(base, len)?, o),
                (false, None) => read_desc(&d, bytes_mut(base, len)?),
                (false, Some(o)) => pread(&d, bytes_mut(base, len)?, o),
            }
        };
        match r {
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
            Ok(k) => {
                total += k;
                if (k as u64) < len {
                    break;
                }
            }
        }
    }
    Ok(total)
}

fn fcntl(fd: i64, cmd: u64, arg: u64) -> Sys {
    const SETTABLE: u32 = O_NONBLOCK | 0o2000; // O_APPEND
    let d = get(fd)?;
    match cmd {
        0 | 1030 => install_at_least(d, cmd == 1030, arg as usize),
        1 => with_table(|t| Ok(t[fd as usize].as_ref().map_or(0, |s| s.cloexec as i64))),
        2 => with_table(|t| {
            if let Some(s) = t[fd as usize].as_mut() {
                s.cloexec = arg & 1 != 0;
            }
            Ok(0)
        }),
        3 => Ok(d.flags.load(Ordering::Relaxed) as i64),
        4 => {
            let old = d.flags.load(Ordering::Relaxed);
            d.flags.store(
                (old & !SETTABLE) | (arg as u32 & SETTABLE),
                Ordering::Relaxed,
            );
            Ok(0)
        }
        // Record locks: one process, so every lock is granted.
        5..=7 | 36..=38 => {
            if cmd == 5 || cmd == 36 {
                // F_GETLK: nothing would block it (l_type = F_UNLCK).
                // SAFETY: see `bytes`.
                unsafe { put(arg, &2u16.to_le_bytes()) }?;
            }
            Ok(0)
        }
        // F_SETPIPE_SZ/F_GETPIPE_SZ
        1031 | 1032 => Ok(PIPE_CAP as i64),
        _ => Err(errno::EINVAL),
    }
}

fn ioctl(fd: i64, req: u64, arg: u64) -> Sys {
    let d = get(fd)?;
    match req {
        // FIONBIO
        0x5421 => {
            // SAFETY: see `bytes`.
            let on = unsafe { crate::get_u32(arg) }? != 0;
            if on {
                d.flags.fetch_or(O_NONBLOCK, Ordering::Relaxed);
            } else {
                d.flags.fetch_and(!O_NONBLOCK, Ordering::Relaxed);
            }
            Ok(0)
        }
        // FIONREAD: bytes waiting.
        0x541b => {
            let n = match &d.kind {
                Kind::Pipe(p) | Kind::Pair(p, _) => p.pipe.buf.lock().len(),
                Kind::Socket(s) => s.pending(),
                _ => 0,
            };
            // SAFETY: see `bytes`.
            unsafe { put(arg, &(n as u32).to_le_bytes()) }?;
            Ok(0)
        }
        // FIOCLEX, FIONCLEX
        0x5451 | 0x5450 => fcntl(fd, 2, (req == 0x5451) as u64),
        // What a program asks a socket about a network interface, by name
        // (`struct ifreq`: the name, then the answer at offset 16).
        0x8913 | 0x8915 | 0x891b | 0x8921 | 0x8927 | 0x8933
            if matches!(d.kind, Kind::Socket(_)) =>
        {
            // SAFETY: see `bytes`.
            let name = unsafe { crate::bytes(arg, 16) }?;
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(16)];
            interface_ioctl(name, req, arg)
        }
        // The console is a terminal (a serial line): TCGETS gives settings
        // of a cooked 115200-baud line, TCSETS* are accepted, TIOCGWINSZ
        // says 80x24, the foreground group is the program. isatty() is
        // true, so C libraries flush output by line.
        0x5401 | 0x5402..=0x5404 | 0x5413 | 0x540f | 0x5410 if matches!(d.kind, Kind::Console) => {
            // SAFETY (of `put`): see `bytes`.
            match req {
                0x5401 => {
                    // The kernel's struct termios (36 bytes): iflag ICRNL|IXON, oflag OPOST|ONLCR,
                    // cflag B115200|CS8|CREAD, lflag ISIG|ICANON|ECHO|ECHOE|ECHOK|IEXTEN.
                    let mut t = [0u8; 36];
                    t[0..4].copy_from_slice(&0o2400u32.to_le_bytes());
                    t[4..8].copy_from_slice(&0o5u32.to_le_bytes());
                    t[8..12].copy_from_slice(&(0o10002 | 0o60 | 0o200u32).to_le_bytes());
                    t[12..16].copy_from_slice(&0o100073u32.to_le_bytes());
                    unsafe { put(arg, &t) }?;
                }
                0x5413 => {
                    let mut w = [0u8; 8];
                    w[0..2].copy_from_slice(&24u16.to_le_bytes());
                    w[2..4].copy_from_slice(&80u16.to_le_bytes());
                    unsafe { put(arg, &w) }?;
                }
                0x540f => unsafe { put(arg, &1u32.to_le_bytes()) }?,
                _ => {}
            }
            Ok(0)
        }
        _ => Err(errno::ENOTTY),
    }
}

/// `SIOCGIF*` for interface `name` (`lo`, or `eth0` when the network is
/// up): flags, address, netmask, MTU, hardware address, index; ENODEV for
/// any other name.
fn interface_ioctl(name: &[u8], req: u64, arg: u64) -> Sys {
    const IFF_UP: u16 = 1;
    const IFF_BROADCAST: u16 = 2;
    const IFF_LOOPBACK: u16 = 8;
    const IFF_RUNNING: u16 = 0x40;
    const IFF_MULTICAST: u16 = 0x1000;
    // (flags, ipv4, prefix, mtu, mac, index)
    let (flags, ip, prefix, mtu, mac, index): (u16, [u8; 4], u8, u32, [u8; 6], u32) = match name {
        b"lo" => (
            IFF_UP | IFF_LOOPBACK | IFF_RUNNING,
            [127, 0, 0, 1],
            8,
            65536,
            [0; 6],
            1,
        ),
        b"eth0" => {
            let i = kiln_net::interface().ok_or(errno::ENODEV)?;
            let (a, p) = i.ipv4.map_or(([0; 4], 0), |(a, p)| (a.octets(), p));
            (
                IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_MULTICAST,
                a,
                p,
                i.mtu as u32,
                i.mac,
                2,
            )
        }
        _ => return Err(errno::ENODEV),
    };
    // A sockaddr_in (family AF_INET) or sockaddr with an ARPHRD family.
    let sockaddr_in = |a: [u8; 4]| {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&2u16.to_le_bytes());
        b[4..8].copy_from_slice(&a);
        b
    };
    let answer: alloc::vec::Vec<u8> = match req {
        0x8913 => flags.to_le_bytes().to_vec(),
        0x8915 => sockaddr_in(ip).to_vec(),
        0x891b => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            sockaddr_in(m.to_be_bytes()).to_vec()
        }
        0x8921 => mtu.to_le_bytes().to_vec(),
        0x8927 => {
            let mut b = [0u8; 16];
            // ARPHRD_ETHER, or ARPHRD_LOOPBACK for lo.
            let family: u16 = if name == b"lo" { 772 } else { 1 };
            b[0..2].copy_from_slice(&family.to_le_bytes());
            b[2..8].copy_from_slice(&mac);
            b.to_vec()
        }
        _ => index.to_le_bytes().to_vec(),
    };
    // SAFETY: see `bytes`.
    unsafe { put(arg + 16, &answer) }?;
    Ok(0)
}

/// A new pipe's (read end, write end).
fn new_pipe() -> (PipeEnd, PipeEnd) {
    let pipe = Arc::new(Pipe {
        buf: spin::Mutex::new(VecDeque::new()),
        readers: AtomicUsize::new(1),
        writers: AtomicUsize::new(1),
    });
    (
        PipeEnd {
            pipe: pipe.clone(),
            write: false,
        },
        PipeEnd { pipe, write: true },
    )
}

fn pipe2(out: u64, flags: u64) -> Sys {
    let (rd, wr) = new_pipe();
    pair_install(
        out,
        Kind::Pipe(rd),
        Kind::Pipe(wr),
        flags as u32 & (O_NONBLOCK | O_CLOEXEC),
        1,
    )
}

/// socketpair(AF_UNIX, SOCK_STREAM): two ends joined by two pipes.
pub(crate) fn socketpair(domain: u64, ty: u64, out: u64) -> Sys {
    if domain != 1 || ty & 0xf != 1 {
        return Err(crate::errno::EAFNOSUPPORT);
    }
    let (r1, w1) = new_pipe();
    let (r2, w2) = new_pipe();
    pair_install(
        out,
        Kind::Pair(r1, w2),
        Kind::Pair(r2, w1),
        ty as u32 & (O_NONBLOCK | O_CLOEXEC),
        2,
    )
}

/// Installs two new descriptors and writes their numbers to `out`.
fn pair_install(out: u64, a: Kind, b: Kind, f: u32, access_b: u32) -> Sys {
    let r = install(a, f | if access_b == 2 { 2 } else { 0 })?;
    let w = match install(b, f | access_b) {
        Ok(w) => w,
        Err(e) => {
            let _ = close(r);
            return Err(e);
        }
    };
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(r as i32).to_le_bytes());
    buf[4..].copy_from_slice(&(w as i32).to_le_bytes());
    // SAFETY: see `bytes`.
    unsafe { put(out, &buf) }?;
    Ok(0)
}

fn readlink(path: &str, buf: u64, len: u64) -> Sys {
    let target = if path == "/proc/self/exe" {
        in_context(|c| c.exe.clone()).unwrap_or_else(|| EXE.lock().clone())
    } else {
        vfs().readlink(path).map_err(|e| {
            note_missing(path, e);
            vfs_err(e)
        })?
    };
    let n = target.len().min(len as usize);
    // SAFETY: see `bytes`.
    unsafe { put(buf, &target.as_bytes()[..n]) }?;
    Ok(n as i64)
}

fn sendfile(out: i64, inp: i64, off_ptr: u64, count: u64) -> Sys {
    let (o, i) = (get(out)?, get(inp)?);
    let Kind::File(f) = &i.kind else {
        return Err(errno::EINVAL);
    };
    let mut buf = alloc::vec![0u8; count.min(65536) as usize];
    let n = if off_ptr != 0 {
        // SAFETY: see `bytes`.
        let off = unsafe { get_u64(off_ptr) }?;
        let n = vfs().pread(f.0, &mut buf, off).map_err(vfs_err)?;
        buf.truncate(n);
        let w = write_desc(&o, &buf)?;
        // SAFETY: see `bytes`.
        unsafe { put(off_ptr, &(off + w as u64).to_le_bytes()) }?;
        return Ok(w);
    } else {
        vfs().read(f.0, &mut buf).map_err(vfs_err)?
    };
    buf.truncate(n);
    let w = write_desc(&o, &buf)?;
    if (w as usize) < n {
        // Put back what the destination did not take.
        let _ = vfs().lseek(f.0, w - n as i64, Whence::Cur);
    }
    Ok(w)
}

fn path_arg(dirfd: i64, ptr: u64) -> Result<String, i64> {
    // SAFETY: see `bytes`.
    let p = unsafe { cstr(ptr) }?;
    Ok(normalize(&resolve(dirfd, p)?))
}

fn stat_at(dirfd: i64, ptr: u64, flags: u64) -> Result<StatFields, i64> {
    // SAFETY: see `bytes`.
    if flags & AT_EMPTY_PATH != 0 && unsafe { cstr(ptr) }?.is_empty() {
        return desc_stat(&*get(dirfd)?);
    }
    path_stat(&path_arg(dirfd, ptr)?, flags & AT_SYMLINK_NOFOLLOW == 0)
}

fn put_stat(out: u64, s: StatFields) -> Sys {
    // SAFETY: see `bytes`.
    unsafe { put(out, &crate::arch::stat_bytes(s.0, s.1, s.2, s.3, s.4, s.5)) }?;
    Ok(0)
}

fn vfs_call(r: kiln_vfs::Result<()>) -> Sys {
    r.map(|_| 0).map_err(vfs_err)
}

/// The file calls; None if `nr` is not one.
pub(crate) fn call(nr: u64, a: [u64; 6]) -> Option<Sys> {
    crate::mine(file_call(nr, a))
}

fn file_call(nr: u64, a: [u64; 6]) -> Sys {
    let fd = a[0] as i64;
    // SAFETY (of the pointer helpers below): see `bytes`.
    unsafe {
        match nr {
            0 => get(fd).and_then(|d| read_desc(&d, bytes_mut(a[1], a[2])?)),
            1 => get(fd).and_then(|d| write_desc(&d, bytes(a[1], a[2])?)),
            2 => cstr(a[0]).and_then(|p| open(AT_FDCWD, p, a[1] as u32, a[2] as u32)),
            257 => cstr(a[1]).and_then(|p| open(a[0] as i64, p, a[2] as u32, a[3] as u32)),
            3 => close(fd),
            4 => path_arg(AT_FDCWD, a[0]).and_then(|p| put_stat(a[1], path_stat(&p, true)?)),
            6 => path_arg(AT_FDCWD, a[0]).and_then(|p| put_stat(a[1], path_stat(&p, false)?)),
            5 => get(fd).and_then(|d| put_stat(a[1], desc_stat(&d)?)),
            262 => stat_at(fd, a[1], a[3]).and_then(|s| put_stat(a[2], s)),
            332 => stat_at(fd, a[1], a[2]).and_then(|s| put(a[4], &statx_bytes(s)).map(|_| 0)),
            8 => get(fd).and_then(|d| lseek(&d, a[1] as i64, a[2])),
            17 => get(fd).and_then(|d| pread(&d, bytes_mut(a[1], a[2])?, a[3])),
            18 => get(fd).and_then(|d| pwrite(&d, bytes(a[1], a[2])?, a[3])),
            19 => rw_vec(fd, a[1], a[2], false, None),
            20 => rw_vec(fd, a[1], a[2], true, None),
            295 => rw_vec(fd, a[1], a[2], false, Some(a[3])),
            296 => rw_vec(fd, a[1], a[2], true, Some(a[3])),
            21 => path_arg(AT_FDCWD, a[0]).and_then(|p| path_stat(&p, true).map(|_| 0)),
            269 | 439 => path_arg(fd, a[1]).and_then(|p| path_stat(&p, true).map(|_| 0)),
            72 => fcntl(fd, a[1], a[2]),
            16 => ioctl(fd, a[1], a[2]),
            32 => get(fd).and_then(|d| install_at_least(d, false, 0)),
            33 => dup3(fd, a[1] as i64, 0),
            292 if a[0] == a[1] => Err(errno::EINVAL),
            292 => dup3(fd, a[1] as i64, a[2]),
            22 => pipe2(a[0], 0),
            293 => pipe2(a[0], a[1]),
            284 | 290 => {
                let flags = if nr == 290 { a[1] as u32 } else { 0 };
                let e = EventFd {
                    count: AtomicU64::new(a[0]),
                    semaphore: flags & 1 != 0,
                };
                install(Kind::EventFd(e), (flags & (O_NONBLOCK | O_CLOEXEC)) | 2)
            }
            217 => get(fd).and_then(|d| getdents64(&d, bytes_mut(a[1], a[2])?)),
            89 => path_arg(AT_FDCWD, a[0]).and_then(|p| readlink(&p, a[1], a[2])),
            267 => path_arg(fd, a[1]).and_then(|p| readlink(&p, a[2], a[3])),
            79 => {
                let c = cwd();
                if (a[1] as usize) < c.len() + 1 {
                    Err(crate::errno::ERANGE)
                } else {
                    put(a[0], c.as_bytes())
                        .and_then(|_| put(a[0] + c.len() as u64, &[0]))
                        .map(|_| a[0] as i64)
                }
            }
            80 => path_arg(AT_FDCWD, a[0]).and_then(|p| match vfs().stat(&p) {
                Ok(s) if s.kind == FileType::Dir => {
                    set_cwd(p);
                    Ok(0)
                }
                Ok(_) => Err(errno::ENOTDIR),
                Err(e) => Err(vfs_err(e)),
            }),
            81 => get(fd).and_then(|d| match &d.kind {
                Kind::Dir(dir) => {
                    set_cwd(dir.path.clone());
                    Ok(0)
                }
                _ => Err(errno::ENOTDIR),
            }),
            83 => path_arg(AT_FDCWD, a[0]).and_then(|p| vfs_call(vfs().mkdir(&p, a[1] as u32))),
            258 => path_arg(fd, a[1]).and_then(|p| vfs_call(vfs().mkdir(&p, a[2] as u32))),
            87 => path_arg(AT_FDCWD, a[0]).and_then(|p| vfs_call(vfs().unlink(&p))),
            84 => path_arg(AT_FDCWD, a[0]).and_then(|p| vfs_call(vfs().rmdir(&p))),
            263 => path_arg(fd, a[1]).and_then(|p| {
                vfs_call(if a[2] & AT_REMOVEDIR != 0 {
                    vfs().rmdir(&p)
                } else {
                    vfs().unlink(&p)
                })
            }),
            82 => path_arg(AT_FDCWD, a[0])
                .and_then(|f| vfs_call(vfs().rename(&f, &path_arg(AT_FDCWD, a[1])?))),
            264 | 316 => path_arg(fd, a[1])
                .and_then(|f| vfs_call(vfs().rename(&f, &path_arg(a[2] as i64, a[3])?))),
            88 => path_arg(AT_FDCWD, a[1]).and_then(|p| vfs_call(vfs().symlink(cstr(a[0])?, &p))),
            266 => {
                path_arg(a[1] as i64, a[2]).and_then(|p| vfs_call(vfs().symlink(cstr(a[0])?, &p)))
            }
            86 => path_arg(AT_FDCWD, a[0])
                .and_then(|o| vfs_call(vfs().link(&o, &path_arg(AT_FDCWD, a[1])?))),
            265 => path_arg(fd, a[1])
                .and_then(|o| vfs_call(vfs().link(&o, &path_arg(a[2] as i64, a[3])?))),
            76 => path_arg(AT_FDCWD, a[0]).and_then(|p| vfs_call(vfs().truncate(&p, a[1]))),
            77 => get(fd).and_then(|d| match &d.kind {
                Kind::File(f) => vfs_call(vfs().ftruncate(f.0, a[1])),
                _ => Err(errno::EINVAL),
            }),
            90 => path_arg(AT_FDCWD, a[0]).and_then(|p| vfs_call(vfs().chmod(&p, a[1] as u32))),
            268 => path_arg(fd, a[1]).and_then(|p| vfs_call(vfs().chmod(&p, a[2] as u32))),
            // fchmod, ownership, times, advice, flock: nothing to keep (one
            // user).
            91 | 92 | 93 | 94 | 260 | 132 | 235 | 280 | 261 | 221 | 285 | 73 => Ok(0),
            // fsync, fdatasync, sync_file_range: the file's file system
            // makes it durable (a disk's flushes the device); other
            // descriptors have nothing to keep.
            74 | 75 | 277 => get(fd).and_then(|d| match &d.kind {
                Kind::File(f) => vfs_call(vfs().fsync(f.0)),
                _ => Ok(0),
            }),
            // sync, syncfs: every file system.
            162 | 306 => vfs_call(vfs().sync_all()),
            40 => sendfile(fd, a[1] as i64, a[2], a[3]),
            137 => path_arg(AT_FDCWD, a[0]).and_then(|p| {
                let st = vfs().statfs(&p).map_err(|e| -(e.errno() as i64))?;
                put_statfs(a[1], &st)
            }),
            138 => get(fd).and_then(|d| match &d.kind {
                Kind::File(f) => {
                    let st = vfs().fstatfs(f.0).map_err(|e| -(e.errno() as i64))?;
                    put_statfs(a[1], &st)
                }
                _ => put_statfs(a[1], &kiln_vfs::StatFs::IN_MEMORY),
            }),
            _ => Err(crate::NOT_MINE),
        }
    }
}

/// Writes Linux's `struct statfs` (120 bytes, 64-bit) at `addr`.
///
/// # Safety
/// As for [`bytes_mut`]: `addr` is the program's pointer argument.
unsafe fn put_statfs(addr: u64, st: &kiln_vfs::StatFs) -> Result<i64, i64> {
    // SAFETY: forwarded contract.
    let b = unsafe { bytes_mut(addr, 120)? };
    b.fill(0);
    let mut put = |at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put(0, st.magic);
    put(8, st.block_size);
    put(16, st.blocks);
    put(24, st.free);
    put(32, st.free); // f_bavail: no blocks are reserved
    put(40, st.files);
    put(48, st.free_files);
    put(64, st.name_max);
    put(72, st.block_size); // f_frsize
    put(80, if st.read_only { 1 } else { 0 }); // f_flags: ST_RDONLY
    Ok(0)
}

/// The size of the file open as `fd` (None if it is not a file).
pub(crate) fn file_size(fd: i64) -> Option<u64> {
    let d = get(fd).ok()?;
    match &d.kind {
        Kind::File(f) => vfs().fstat(f.0).ok().map(|s| s.size),
        _ => None,
    }
}

/// The contents of an open file kept in memory that lives as long as the
/// kernel (see `Vfs::static_data`), for mappings made in place.
pub(crate) fn static_data(fd: i64) -> Option<&'static [u8]> {
    let d = get(fd).ok()?;
    match &d.kind {
        Kind::File(f) => vfs().static_data(f.0),
        _ => None,
    }
}
