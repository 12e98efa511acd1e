//! ELF executables for the loader: what to map where, and the stack a
//! Linux program expects at its first instruction.
//!
//! [`Program::parse`] reads an executable with goblin and checks it can be
//! loaded: a 64-bit little-endian x86_64 or AArch64 executable (`ET_EXEC`, a
//! static non-PIE loaded at its fixed addresses, or `ET_DYN`, a PIE loaded
//! at a base the loader picks), whose loadable segments lie inside the file
//! and are page-aligned consistently. A `PT_INTERP` names the dynamic
//! loader (glibc's `ld-linux-x86-64.so.2`, musl's `ld-musl-x86_64.so.1`),
//! which the loader maps too and starts instead of the program.
//!
//! [`initial_stack`] lays out argc, argv, envp and the auxiliary vector
//! (with the strings and AT_RANDOM bytes above them) as the System V ABI
//! and Linux do, for a given stack top address.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use goblin::elf::header::{EM_AARCH64, EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::program_header::{
    PF_R, PF_W, PF_X, PT_GNU_STACK, PT_INTERP, PT_LOAD, PT_PHDR, PT_TLS,
};

/// Page size of every Kiln target.
pub const PAGE: u64 = 4096;

/// Why an executable cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not an ELF file, or a malformed one (goblin's message).
    Malformed(String),
    /// A 32-bit or big-endian file.
    NotElf64,
    /// Built for another CPU (the `e_machine` value).
    WrongMachine(u16),
    /// A shared library or object file, not an executable.
    NotExecutable(u16),
    /// No loadable segment.
    NoSegments,
    /// A segment's file range lies outside the file, its memory size is
    /// smaller than its file size, or it ends above [`USER_TOP`] (the
    /// segment's index).
    BadSegment(usize),
    /// A segment whose address and offset disagree modulo the page size.
    Misaligned(usize),
    /// PT_INTERP is not a NUL-terminated path.
    BadInterpreter,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(m) => write!(f, "not a valid ELF file: {m}"),
            Error::NotElf64 => f.write_str("not a 64-bit little-endian ELF file"),
            Error::WrongMachine(m) => write!(
                f,
                "built for another CPU (ELF machine {m}); Kiln runs x86_64 and AArch64 programs"
            ),
            Error::NotExecutable(t) => write!(
                f,
                "not an executable (ELF type {t}: a shared library or object file)"
            ),
            Error::NoSegments => f.write_str("no loadable segments"),
            Error::BadSegment(i) => write!(
                f,
                "segment {i} lies outside the file or the user address space, or is smaller in memory than in the file"
            ),
            Error::Misaligned(i) => write!(
                f,
                "segment {i}: address and file offset differ modulo the page size"
            ),
            Error::BadInterpreter => f.write_str("PT_INTERP is not a NUL-terminated path"),
        }
    }
}

/// Page permissions of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// The top of a Linux program's address space (47 bits on x86_64, and the
/// 48-bit arm64 layout is cut to the same): no segment may end above it.
pub const USER_TOP: u64 = 1 << 47;

/// One PT_LOAD segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Address before the load bias.
    pub vaddr: u64,
    /// Bytes in memory (the part past `file_size` is zero: .bss).
    pub mem_size: u64,
    /// Where its bytes are in the file.
    pub file_offset: u64,
    pub file_size: u64,
    pub perms: Perms,
}

/// How the program is linked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ET_EXEC` without an interpreter: loaded at its own addresses.
    Static,
    /// `ET_DYN` without an interpreter: relocates itself wherever loaded.
    StaticPie,
    /// Needs the dynamic loader at this path.
    Dynamic { interpreter: String, pie: bool },
}

/// A checked executable and its load plan.
#[derive(Clone, Debug)]
pub struct Program {
    pub kind: Kind,
    pub machine: u16,
    /// Entry point before the load bias.
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// The program headers' address in memory (before the bias), for AT_PHDR.
    pub phdr_vaddr: u64,
    pub phnum: u16,
    pub phent: u16,
    /// Thread-local storage template: (vaddr, file size, memory size, align).
    pub tls: Option<(u64, u64, u64, u64)>,
    /// Whether PT_GNU_STACK asks for an executable stack.
    pub exec_stack: bool,
}

impl Program {
    /// Reads and checks `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Program, Error> {
        // The ELF header and the program headers only: a full parse would
        // also read every string and symbol table (tens of MB of heap for a
        // large program such as node) that loading never needs.
        let header = goblin::elf::Elf::parse_header(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        let malformed = |e: goblin::error::Error| Error::Malformed(e.to_string());
        let container = header.container().map_err(malformed)?;
        let endian = header.endianness().map_err(malformed)?;
        if container != goblin::container::Container::Big || endian != goblin::container::Endian::Little {
            return Err(Error::NotElf64);
        }
        let h = &header;
        let table_end = (h.e_phoff as usize).checked_add(h.e_phnum as usize * h.e_phentsize as usize);
        if h.e_phentsize as usize != 56 || table_end.is_none_or(|e| e > bytes.len()) {
            return Err(Error::Malformed("the program header table lies outside the file".into()));
        }
        let program_headers = goblin::elf::ProgramHeader::parse(
            bytes,
            h.e_phoff as usize,
            h.e_phnum as usize,
            goblin::container::Ctx::new(container, endian),
        )
        .map_err(malformed)?;
        if h.e_machine != EM_X86_64 && h.e_machine != EM_AARCH64 {
            return Err(Error::WrongMachine(h.e_machine));
        }
        // ET_DYN is both a PIE and a shared library; a library has no entry
        // point (the dynamic loader, which has one, runs as a program too).
        if (h.e_type != ET_EXEC && h.e_type != ET_DYN) || (h.e_type == ET_DYN && h.e_entry == 0) {
            return Err(Error::NotExecutable(h.e_type));
        }
        let mut segments = Vec::new();
        let mut phdr_vaddr = None;
        let mut interpreter = None;
        let mut tls = None;
        let mut exec_stack = false;
        for (i, ph) in program_headers.iter().enumerate() {
            match ph.p_type {
                PT_LOAD => {
                    let end = ph.p_offset.checked_add(ph.p_filesz);
                    let top = ph.p_vaddr.checked_add(ph.p_memsz);
                    if end.is_none_or(|e| e > bytes.len() as u64)
                        || ph.p_memsz < ph.p_filesz
                        || top.is_none_or(|t| t > USER_TOP)
                    {
                        return Err(Error::BadSegment(i));
                    }
                    if ph.p_vaddr % PAGE != ph.p_offset % PAGE {
                        return Err(Error::Misaligned(i));
                    }
                    segments.push(Segment {
                        vaddr: ph.p_vaddr,
                        mem_size: ph.p_memsz,
                        file_offset: ph.p_offset,
                        file_size: ph.p_filesz,
                        perms: Perms {
                            read: ph.p_flags & PF_R != 0,
                            write: ph.p_flags & PF_W != 0,
                            exec: ph.p_flags & PF_X != 0,
                        },
                    });
                }
                PT_PHDR => phdr_vaddr = Some(ph.p_vaddr),
                PT_INTERP => {
                    let end = ph
                        .p_offset
                        .checked_add(ph.p_filesz)
                        .ok_or(Error::BadInterpreter)?;
                    let raw = bytes
                        .get(ph.p_offset as usize..end as usize)
                        .ok_or(Error::BadInterpreter)?;
                    let path = raw.strip_suffix(&[0]).ok_or(Error::BadInterpreter)?;
                    interpreter = Some(
                        core::str::from_utf8(path)
                            .map_err(|_| Error::BadInterpreter)?
                            .to_string(),
                    );
                }
                PT_TLS => tls = Some((ph.p_vaddr, ph.p_filesz, ph.p_memsz, ph.p_align.max(1))),
                PT_GNU_STACK => exec_stack = ph.p_flags & PF_X != 0,
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(Error::NoSegments);
        }
        // Without PT_PHDR, the headers are mapped where the segment holding
        // file offset e_phoff puts them.
        let phdr_vaddr = phdr_vaddr.or_else(|| {
            segments
                .iter()
                .find(|s| s.file_offset <= h.e_phoff && h.e_phoff < s.file_offset + s.file_size)
                .map(|s| s.vaddr + (h.e_phoff - s.file_offset))
        });
        let pie = h.e_type == ET_DYN;
        let kind = match (interpreter, pie) {
            (Some(interpreter), pie) => Kind::Dynamic { interpreter, pie },
            (None, true) => Kind::StaticPie,
            (None, false) => Kind::Static,
        };
        Ok(Program {
            kind,
            machine: h.e_machine,
            entry: h.e_entry,
            segments,
            phdr_vaddr: phdr_vaddr.unwrap_or(0),
            phnum: h.e_phnum,
            phent: h.e_phentsize,
            tls,
            exec_stack,
        })
    }

    /// Whether the program is position-independent (loaded at a chosen base).
    pub fn relocatable(&self) -> bool {
        matches!(self.kind, Kind::StaticPie | Kind::Dynamic { pie: true, .. })
    }

    /// The page-aligned address range its segments span, before the bias.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.vaddr).min().unwrap_or(0) & !(PAGE - 1);
        let hi = self
            .segments
            .iter()
            .map(|s| s.vaddr + s.mem_size)
            .max()
            .unwrap_or(0)
            .next_multiple_of(PAGE);
        (lo, hi)
    }

    /// The load bias for a program placed at `base`: 0 for a fixed-address
    /// executable, else what moves its lowest page to `base`.
    pub fn bias(&self, base: u64) -> u64 {
        if self.relocatable() {
            base.wrapping_sub(self.span().0)
        } else {
            0
        }
    }

    /// The interpreter's path, if dynamically linked.
    pub fn interpreter(&self) -> Option<&str> {
        match &self.kind {
            Kind::Dynamic { interpreter, .. } => Some(interpreter),
            _ => None,
        }
    }
}

/// Auxiliary vector keys (Linux `include/uapi/linux/auxvec.h`).
pub mod at {
    pub const NULL: u64 = 0;
    pub const PHDR: u64 = 3;
    pub const PHENT: u64 = 4;
    pub const PHNUM: u64 = 5;
    pub const PAGESZ: u64 = 6;
    pub const BASE: u64 = 7;
    pub const FLAGS: u64 = 8;
    pub const ENTRY: u64 = 9;
    pub const UID: u64 = 11;
    pub const EUID: u64 = 12;
    pub const GID: u64 = 13;
    pub const EGID: u64 = 14;
    pub const PLATFORM: u64 = 15;
    pub const HWCAP: u64 = 16;
    pub const CLKTCK: u64 = 17;
    pub const SECURE: u64 = 23;
    pub const RANDOM: u64 = 25;
    pub const EXECFN: u64 = 31;
    pub const SYSINFO_EHDR: u64 = 33;
}

/// What the auxiliary vector describes.
#[derive(Clone, Debug, Default)]
pub struct AuxInfo {
    /// AT_PHDR, AT_PHENT, AT_PHNUM: the program's headers in memory.
    pub phdr: u64,
    pub phent: u64,
    pub phnum: u64,
    /// AT_ENTRY: the program's entry (biased).
    pub entry: u64,
    /// AT_BASE: the interpreter's load base (0 without one).
    pub interp_base: u64,
    pub hwcap: u64,
    /// AT_SYSINFO_EHDR: a vDSO, if one is mapped.
    pub vdso: Option<u64>,
}

/// The initial process stack.
pub struct InitialStack {
    /// The bytes to place at `[sp, top)`.
    pub bytes: Vec<u8>,
    /// The stack pointer at the program's first instruction (16-aligned,
    /// pointing at argc).
    pub sp: u64,
}

/// Lays out the stack a Linux program starts with, for a stack whose
/// highest address is `top`: from `sp` up, argc, the argv pointers and a
/// null, the envp pointers and a null, the auxiliary vector ending with
/// AT_NULL, then (higher) the 16 AT_RANDOM bytes, the platform string and
/// the argument and environment strings.
pub fn initial_stack(
    top: u64,
    args: &[&str],
    env: &[&str],
    aux: &AuxInfo,
    random: [u8; 16],
    platform: &str,
) -> InitialStack {
    // Strings, from the top down.
    let mut strings: Vec<u8> = Vec::new();
    let mut offsets = Vec::new(); // offset of each string from the start of `strings`
    for s in args
        .iter()
        .chain(env.iter())
        .chain(core::iter::once(&platform))
    {
        offsets.push(strings.len() as u64);
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
    }
    let strings_len = (strings.len() as u64).next_multiple_of(16);
    let strings_at = top - strings_len;
    let random_at = strings_at - 16;
    let addr = |i: usize| strings_at + offsets[i];
    let mut auxv: Vec<(u64, u64)> = alloc::vec![
        (at::PHDR, aux.phdr),
        (at::PHENT, aux.phent),
        (at::PHNUM, aux.phnum),
        (at::PAGESZ, PAGE),
        (at::BASE, aux.interp_base),
        (at::FLAGS, 0),
        (at::ENTRY, aux.entry),
        (at::UID, 0),
        (at::EUID, 0),
        (at::GID, 0),
        (at::EGID, 0),
        (at::HWCAP, aux.hwcap),
        (at::CLKTCK, 100),
        (at::SECURE, 0),
        (at::RANDOM, random_at),
        (at::PLATFORM, addr(args.len() + env.len())),
    ];
    if !args.is_empty() {
        auxv.push((at::EXECFN, addr(0)));
    }
    if let Some(v) = aux.vdso {
        auxv.push((at::SYSINFO_EHDR, v));
    }
    auxv.push((at::NULL, 0));
    let words = 1 + args.len() + 1 + env.len() + 1 + auxv.len() * 2;
    let sp = (random_at - words as u64 * 8) & !15;
    let mut out = alloc::vec![0u8; (top - sp) as usize];
    let mut w = 0usize;
    let mut put = |v: u64, out: &mut Vec<u8>| {
        out[w..w + 8].copy_from_slice(&v.to_le_bytes());
        w += 8;
    };
    put(args.len() as u64, &mut out);
    for i in 0..args.len() {
        put(addr(i), &mut out);
    }
    put(0, &mut out);
    for i in 0..env.len() {
        put(addr(args.len() + i), &mut out);
    }
    put(0, &mut out);
    for (k, v) in auxv {
        put(k, &mut out);
        put(v, &mut out);
    }
    let r = (random_at - sp) as usize;
    out[r..r + 16].copy_from_slice(&random);
    let s = (strings_at - sp) as usize;
    out[s..s + strings.len()].copy_from_slice(&strings);
    InitialStack { bytes: out, sp }
}

#[cfg(test)]
mod tests;
