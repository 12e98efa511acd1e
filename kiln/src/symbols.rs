//! Fault reports with names: the kernel prints the instruction pointer of
//! a CPU exception (`  instruction pointer 0x...`); `kiln run` looks it up
//! in the unstripped kernel ELF kept beside the image (`NAME.elf`, built
//! with line tables) and prints the function and source line under it:
//!
//! ```text
//!   instruction pointer 0x0000000000101e41
//!   in read_volatile<u64> at library/core/src/ptr/mod.rs:2091, inlined into main at apps/crashtest/src/lib.rs:45
//! ```
//!
//! The backtrace that follows a fault or a panic (`  #1  return address
//! 0x...`) gets a line under each address the same way.
//!
//! Inlined calls are listed innermost first (`inlined into ...`), each
//! with the name its debug information gives (kernels carry line tables
//! only, so names are short: `main` is the app's). An
//! address the ELF does not cover (a Linux program's code, under the ELF
//! loader) gets no line. Lookups use the addr2line crate (gimli).

use std::path::Path;

/// The kernel's symbols and line tables.
pub struct Symbols {
    loader: addr2line::Loader,
    /// The executable segments' address ranges: an address outside them
    /// is not the kernel's (the nearest symbol would still be found).
    code: Vec<(u64, u64)>,
}

/// What the console says before the address.
const MARKER: &str = "instruction pointer 0x";
/// ... and before each address of a backtrace (lib/boot's print_backtrace).
const RETURN: &str = "return address 0x";

impl Symbols {
    /// The ELF beside `image` (`image.elf`), or `image` itself when it is
    /// an ELF with symbols; `None` when neither can be read.
    pub fn for_image(image: &Path) -> Option<Symbols> {
        let elf = image.with_extension("elf");
        let path = if elf.is_file() {
            elf
        } else {
            image.to_path_buf()
        };
        let code = std::fs::read(&path)
            .ok()
            .and_then(|b| {
                let e = goblin::elf::Elf::parse_header(&b).ok()?;
                let ctx = goblin::container::Ctx::new(
                    goblin::container::Container::Big,
                    goblin::container::Endian::Little,
                );
                let phs = goblin::elf::ProgramHeader::parse(
                    &b,
                    e.e_phoff as usize,
                    e.e_phnum as usize,
                    ctx,
                )
                .ok()?;
                Some(
                    phs.iter()
                        .filter(|p| {
                            p.p_type == goblin::elf::program_header::PT_LOAD && p.is_executable()
                        })
                        .map(|p| (p.p_vaddr, p.p_vaddr + p.p_memsz))
                        .collect(),
                )
            })
            .unwrap_or_default();
        addr2line::Loader::new(&path)
            .ok()
            .map(|loader| Symbols { loader, code })
    }

    /// `function at file:line` for `addr` (and the functions it was inlined
    /// into), or `None` when the kernel has no code there.
    pub fn describe(&self, addr: u64) -> Option<String> {
        if !self.code.iter().any(|&(lo, hi)| addr >= lo && addr < hi) {
            return None;
        }
        let mut parts = Vec::new();
        if let Ok(mut frames) = self.loader.find_frames(addr) {
            while let Ok(Some(f)) = frames.next() {
                let name = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok().map(|d| strip_hash(&d).to_string()))
                    .filter(|n| !n.is_empty())
                    // An outermost frame without a name in the line tables
                    // takes its symbol's.
                    .or_else(|| {
                        (parts.is_empty())
                            .then(|| self.loader.find_symbol(addr))
                            .flatten()
                            .map(|sym| {
                                strip_hash(&rustc_demangle::demangle(sym).to_string()).to_string()
                            })
                    });
                let at = f
                    .location
                    .as_ref()
                    .and_then(|l| Some(format!("{}:{}", short(l.file?), l.line?)));
                match (name, at) {
                    (Some(n), Some(a)) => parts.push(format!("{n} at {a}")),
                    (Some(n), None) => parts.push(n),
                    (None, Some(a)) => parts.push(format!("at {a}")),
                    (None, None) => {}
                }
            }
        }
        if parts.is_empty() {
            let sym = self.loader.find_symbol(addr)?;
            parts.push(strip_hash(&rustc_demangle::demangle(sym).to_string()).to_string());
        }
        Some(parts.join(", inlined into "))
    }

    /// The line to print after a console line, if it reports an
    /// instruction pointer or a backtrace's return address the kernel has
    /// code at. A return address is looked up one byte back: the call
    /// instruction, not what follows it.
    pub fn annotate(&self, line: &str) -> Option<String> {
        let (at, back, indent) = match line.find(MARKER) {
            Some(i) => (i + MARKER.len(), 0, "  "),
            None => (line.find(RETURN)? + RETURN.len(), 1, "      "),
        };
        let hex: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        let addr = u64::from_str_radix(&hex, 16).ok()?;
        Some(format!(
            "{indent}in {}",
            self.describe(addr.checked_sub(back)?)?
        ))
    }
}

/// A Rust symbol without its trailing hash (`::h0123456789abcdef`).
fn strip_hash(s: &str) -> &str {
    match s.rfind("::h") {
        Some(i) if s.len() - i == 19 && s[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => {
            &s[..i]
        }
        _ => s,
    }
}

/// A source path as a reader wants it: inside the checkout or the cargo
/// registry, from there on.
fn short(file: &str) -> String {
    let home = crate::builder::kiln_home();
    if let Ok(rel) = Path::new(file).strip_prefix(&home) {
        return rel.display().to_string();
    }
    // Rust's own library, compiled in from /rustc/<commit>/library/...
    if let Some(i) = file
        .find("/library/")
        .filter(|_| file.starts_with("/rustc/"))
    {
        return file[i + 1..].to_string();
    }
    match file.find("/registry/src/") {
        Some(i) => file[i + "/registry/src/".len()..]
            .split_once('/')
            .map_or(file, |(_, r)| r)
            .to_string(),
        None => file.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stripped() {
        assert_eq!(
            strip_hash("crashtest::main::h0123456789abcdef"),
            "crashtest::main"
        );
        assert_eq!(strip_hash("crashtest::main"), "crashtest::main");
        assert_eq!(strip_hash("a::hello"), "a::hello");
    }

    #[test]
    fn the_test_binary_describes_its_own_code() {
        // This test binary is an ELF with line tables: its own function
        // is found at this file.
        let exe = std::env::current_exe().unwrap();
        let s = Symbols::for_image(&exe).expect("the test binary has symbols");
        let addr = the_test_binary_describes_its_own_code as fn() as usize as u64;
        // The running binary may be position-independent: the loader's
        // addresses are the file's, so look up the file address.
        let base = {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let exe_s = exe.display().to_string();
            maps.lines()
                .filter(|l| l.ends_with(&exe_s))
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let range = f.next()?;
                    let offset = u64::from_str_radix(f.nth(1)?, 16).ok()?;
                    let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
                    Some(start - offset)
                })
                .min()
                .unwrap()
        };
        let d = s.describe(addr - base).expect("found");
        assert!(d.contains("the_test_binary_describes_its_own_code"), "{d}");
        assert!(d.contains("symbols.rs:"), "{d}");
        let line = format!("  instruction pointer 0x{:016x}", addr - base);
        assert!(s.annotate(&line).unwrap().starts_with("  in "), "{line}");
        assert_eq!(s.annotate("  stack pointer 0x1234"), None);
    }
}
