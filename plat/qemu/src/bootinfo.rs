//! The boot information a loader leaves in EBX, in either of the two forms
//! Kiln's x86_64 kernel accepts:
//!
//! - the Xen PVH start info block (`hvm_start_info`, version 1): QEMU's,
//!   Firecracker's and cloud-hypervisor's direct kernel boot;
//! - the multiboot2 information structure (EAX = [`MULTIBOOT2_MAGIC`]):
//!   GRUB, when the kernel boots from a disk image made by `kiln pkg`
//!   (legacy BIOS or UEFI; GRUB enters the kernel in 32-bit protected
//!   mode in both cases, as PVH does).
//!
//! Both are reduced to [`Start`], copied into the kernel's own memory.

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
    /// Where the ACPI RSDP is, when the loader said (PVH's `rsdp_paddr`,
    /// or multiboot2's copy of it, kept in [`RSDP_COPY`]).
    pub rsdp: Option<usize>,
}

/// Multiboot2 hands over a copy of the RSDP (UEFI's, which firmware
/// tables alone do not lead to); it is kept here, identity-mapped.
#[repr(C, align(16))]
struct RsdpCopy([u8; 64]);
static mut RSDP_COPY: RsdpCopy = RsdpCopy([0; 64]);

#[repr(C)]
#[derive(Clone, Copy)]
struct ModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

const MEMMAP_MAX: usize = 128;
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
    Multiboot2(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic(m) => write!(
                f,
                "no PVH start info (magic 0x{m:08x}) and no multiboot2 information; boot this kernel with -kernel or from a disk image made by kiln pkg"
            ),
            Error::Multiboot2(why) => write!(f, "multiboot2 information: {why}"),
            Error::OldVersion(v) => write!(f, "PVH start info version {v} has no memory map"),
            Error::CmdlineTooLong(n) => {
                write!(f, "kernel command line of {n} bytes exceeds {CMDLINE_MAX}")
            }
        }
    }
}

const CMDLINE_MAX: usize = 8192;
static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

/// Copies the command line into the kernel's own memory.
fn keep_cmdline(bytes: &[u8]) -> Result<&'static str, Error> {
    if bytes.len() > CMDLINE_MAX {
        return Err(Error::CmdlineTooLong(bytes.len()));
    }
    // SAFETY: runs once during single-threaded boot; CMDLINE is only read
    // afterwards, through the &'static str returned here.
    let buf = unsafe { &mut *(&raw mut CMDLINE) };
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(core::str::from_utf8(&buf[..bytes.len()]).unwrap_or(""))
}

/// Reads the boot information at physical address `addr`: a PVH start
/// info block, or multiboot2 information when `eax` holds its magic.
///
/// # Safety
/// `addr` and `eax` must be the values the loader left in EBX and EAX
/// (the address identity-mapped), and this must run once, while page 0 is
/// still mapped.
pub unsafe fn parse(addr: usize, eax: u32) -> Result<Start, Error> {
    if eax == MULTIBOOT2_MAGIC {
        // SAFETY: as the caller promises.
        return unsafe { parse_multiboot2(addr) };
    }
    // SAFETY: as the caller promises.
    unsafe { parse_pvh(addr) }
}

/// Reads a PVH start info block.
///
/// # Safety
/// As for [`parse`].
unsafe fn parse_pvh(addr: usize) -> Result<Start, Error> {
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
        cmdline = keep_cmdline(c.to_bytes())?;
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
        rsdp: (si.rsdp_paddr != 0).then_some(si.rsdp_paddr as usize),
    })
}

/// What a multiboot2 loader leaves in EAX.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// Multiboot2 tag types Kiln reads.
const MB2_END: u32 = 0;
const MB2_CMDLINE: u32 = 1;
const MB2_MODULE: u32 = 3;
const MB2_MMAP: u32 = 6;
const MB2_ACPI_OLD: u32 = 14;
const MB2_ACPI_NEW: u32 = 15;
/// The information must lie in the first GiB, which the boot page tables map.
const MB2_LIMIT: usize = 1 << 30;

/// Reads multiboot2 information: the command line (tag 1), the memory map
/// (tag 6, whose entries have the PVH map's layout) and the first module
/// (tag 3). Other tags are skipped.
///
/// # Safety
/// As for [`parse`].
unsafe fn parse_multiboot2(addr: usize) -> Result<Start, Error> {
    if addr == 0 || addr % 8 != 0 || addr + 8 > MB2_LIMIT {
        return Err(Error::Multiboot2(
            "not at an 8-byte aligned address in the first GiB",
        ));
    }
    // SAFETY: the loader's structure starts with its total size.
    let total = unsafe { *(addr as *const u32) } as usize;
    if total < 16 || addr + total > MB2_LIMIT {
        return Err(Error::Multiboot2("its size runs past the first GiB"));
    }
    // SAFETY: `total` bytes from `addr` are the loader's information,
    // inside the identity-mapped first GiB (checked above).
    let info = unsafe { core::slice::from_raw_parts(addr as *const u8, total) };
    let u32_at = |o: usize| u32::from_le_bytes(info[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(info[o..o + 8].try_into().unwrap());
    // SAFETY: runs once during single-threaded boot, as for PVH.
    let memmap = unsafe { &mut *(&raw mut MEMMAP) };
    let mut entries = 0;
    let mut cmdline = "";
    let mut module = None;
    let mut rsdp = None;
    let mut at = 8;
    while at + 8 <= total {
        let (kind, size) = (u32_at(at), u32_at(at + 4) as usize);
        if size < 8 || at + size > total {
            return Err(Error::Multiboot2("a tag runs past the end"));
        }
        let body = &info[at + 8..at + size];
        match kind {
            MB2_END => break,
            MB2_CMDLINE => {
                let s = body.split(|&b| b == 0).next().unwrap_or(&[]);
                cmdline = keep_cmdline(s)?;
            }
            MB2_MODULE if body.len() >= 8 && module.is_none() => {
                let (s, e) = (u32_at(at + 8) as usize, u32_at(at + 12) as usize);
                if e > s {
                    module = Some((s, e - s));
                }
            }
            MB2_MMAP if body.len() >= 8 => {
                let entry_size = u32_at(at + 8) as usize;
                if entry_size < 24 {
                    return Err(Error::Multiboot2(
                        "memory map entries shorter than 24 bytes",
                    ));
                }
                let mut e = at + 16;
                while e + entry_size <= at + size && entries < MEMMAP_MAX {
                    memmap[entries] = MemmapEntry {
                        addr: u64_at(e),
                        size: u64_at(e + 8),
                        kind: u32_at(e + 16),
                        reserved: 0,
                    };
                    entries += 1;
                    e += entry_size;
                }
            }
            // The newer RSDP (ACPI 2.0+) wins over the older one.
            MB2_ACPI_OLD | MB2_ACPI_NEW
                if body.len() >= 20 && (kind == MB2_ACPI_NEW || rsdp.is_none()) =>
            {
                // SAFETY: single-threaded boot; the copy is read only
                // through the address returned in Start.
                let copy = unsafe { &mut *(&raw mut RSDP_COPY) };
                let n = body.len().min(copy.0.len());
                copy.0[..n].copy_from_slice(&body[..n]);
                rsdp = Some(copy.0.as_ptr() as usize);
            }
            _ => {}
        }
        at += size.next_multiple_of(8);
    }
    if entries == 0 {
        return Err(Error::Multiboot2("no memory map"));
    }
    Ok(Start {
        cmdline,
        memmap: &memmap[..entries],
        module,
        rsdp,
    })
}
