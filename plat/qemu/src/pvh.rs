//! The Xen PVH start info block (`hvm_start_info`, version 1).

use core::fmt;

const MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// What Kiln takes from the start info, copied into the kernel's own memory
/// (the loader's copy may sit in page 0, which Kiln unmaps).
pub struct Start {
    /// The kernel command line.
    pub cmdline: &'static str,
    memmap: &'static [MemmapEntry],
    /// The first boot module (QEMU's `-initrd`): physical address and size.
    pub module: Option<(usize, usize)>,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

const MEMMAP_MAX: usize = 64;
static mut MEMMAP: [MemmapEntry; MEMMAP_MAX] = [MemmapEntry {
    addr: 0,
    size: 0,
    kind: 0,
    reserved: 0,
}; MEMMAP_MAX];

impl Start {
    /// RAM ranges as half-open `(start, end)` pairs.
    pub fn ram(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.memmap
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| (e.addr as usize, (e.addr + e.size) as usize))
    }
}

/// Why the boot information was unusable.
pub enum Error {
    BadMagic(u32),
    OldVersion(u32),
    CmdlineTooLong(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic(m) => write!(
                f,
                "no PVH start info (magic 0x{m:08x}); boot this kernel with QEMU's -kernel"
            ),
            Error::OldVersion(v) => write!(f, "PVH start info version {v} has no memory map"),
            Error::CmdlineTooLong(n) => {
                write!(f, "kernel command line of {n} bytes exceeds {CMDLINE_MAX}")
            }
        }
    }
}

const CMDLINE_MAX: usize = 8192;
static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

/// Reads the start info at physical address `addr`.
///
/// # Safety
/// `addr` must be the value the PVH loader left in EBX (identity-mapped), and
/// this must run once, while page 0 is still mapped.
pub unsafe fn parse(addr: usize) -> Result<Start, Error> {
    // SAFETY: the caller passes the loader's pointer; the magic is checked
    // before any other field is trusted.
    let si = unsafe { &*(addr as *const StartInfo) };
    if si.magic != MAGIC {
        return Err(Error::BadMagic(si.magic));
    }
    if si.version < 1 {
        return Err(Error::OldVersion(si.version));
    }
    // SAFETY: version >= 1 guarantees the memory map fields; the loader keeps
    // the array in memory Kiln never hands to its heap (below 1 MiB).
    let loader_map = unsafe {
        core::slice::from_raw_parts(
            si.memmap_paddr as *const MemmapEntry,
            (si.memmap_entries as usize).min(MEMMAP_MAX),
        )
    };
    // SAFETY: runs once during single-threaded boot; MEMMAP is only read
    // afterwards, through the slice returned here.
    let memmap = unsafe { &mut *(&raw mut MEMMAP) };
    memmap[..loader_map.len()].copy_from_slice(loader_map);
    let memmap = &memmap[..loader_map.len()];
    let mut cmdline = "";
    if si.cmdline_paddr != 0 {
        // SAFETY: the loader stores a NUL-terminated string there.
        let c = unsafe { core::ffi::CStr::from_ptr(si.cmdline_paddr as *const core::ffi::c_char) };
        let bytes = c.to_bytes();
        if bytes.len() > CMDLINE_MAX {
            return Err(Error::CmdlineTooLong(bytes.len()));
        }
        // SAFETY: runs once during single-threaded boot; CMDLINE is only read
        // afterwards, through the &'static str returned here.
        let buf = unsafe { &mut *(&raw mut CMDLINE) };
        buf[..bytes.len()].copy_from_slice(bytes);
        cmdline = core::str::from_utf8(&buf[..bytes.len()]).unwrap_or("");
    }
    let mut module = None;
    if si.nr_modules > 0 && si.modlist_paddr != 0 {
        // SAFETY: the loader says nr_modules entries sit at modlist_paddr.
        let m = unsafe { *(si.modlist_paddr as *const ModlistEntry) };
        if m.size > 0 {
            module = Some((m.paddr as usize, m.size as usize));
        }
    }
    Ok(Start {
        cmdline,
        memmap,
        module,
    })
}
