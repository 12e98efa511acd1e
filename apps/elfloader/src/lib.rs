//! Runs an unmodified Linux program (x86_64 or arm64, as the kernel) from
//! the rootfs, the way
//! Unikraft's app-elfloader and Nanos do: `kiln run apps/elfloader --
//! /path/to/program args`.
//!
//! The program (and, for a dynamically linked one, its PT_INTERP loader)
//! is copied into the program's virtual memory at a random base
//! (lib/syscall's `vm`), each segment with its own protection; it gets a
//! stack with argv, envp and the auxiliary vector, and runs in ring 0
//! (EL1 on arm64) on the kernel's page tables. Its system calls reach
//! lib/syscall through `syscall` (`svc` on arm64); its exit code is the
//! machine's.
//!
//! Programs linked at a fixed address (busybox-static: 4 MiB) go to their
//! own addresses: on x86_64 in the RAM the platform keeps out of the heap
//! for them, on arm64 in heap blocks mapped there.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use kiln_elf::{AuxInfo, Program};
use kiln_std::prelude::*;

/// Copies `prog`'s segments (from `bytes`) into fresh memory; returns the
/// load bias.
fn place(prog: &Program, bytes: &[u8]) -> Result<u64, String> {
    let (lo, hi) = prog.span();
    if !prog.relocatable() {
        kiln_syscall::arch::place_fixed(lo, hi)?;
        copy_segments(prog, bytes, 0);
        // W^X: code read-only, data not executable (x86_64).
        kiln_syscall::arch::protect_fixed(
            (lo, hi),
            prog.segments
                .iter()
                .map(|s| (s.vaddr, s.mem_size, s.perms.write, s.perms.exec)),
        );
        return Ok(0);
    }
    {
        // Virtual memory at a random address (ASLR): the span read-write
        // while the segments are copied in, then each segment gets its own
        // protection (W^X) and the gaps between them none.
        use kiln_syscall::vm::{PROT_EXEC, PROT_READ, PROT_WRITE};
        let paged = kiln_syscall::mem::paged::map_anon(0, hi - lo, PROT_READ | PROT_WRITE)
            .ok_or_else(|| format!("no address space for its {} KiB", (hi - lo) / 1024))?;
        let bias = prog.bias(paged);
        copy_segments(prog, bytes, bias);
        kiln_syscall::mem::paged::protect(paged, hi - lo, 0);
        for s in &prog.segments {
            let start = s.vaddr.wrapping_add(bias) & !0xfff;
            let end = (s.vaddr.wrapping_add(bias) + s.mem_size).next_multiple_of(4096);
            let prot = if s.perms.read { PROT_READ } else { 0 }
                | if s.perms.write { PROT_WRITE } else { 0 }
                | if s.perms.exec { PROT_EXEC } else { 0 };
            kiln_syscall::mem::paged::protect(start, end - start, prot);
        }
        Ok(bias)
    }
}

/// Copies each segment's file bytes to its (biased) address; the memory
/// is already zero, which makes .bss.
fn copy_segments(prog: &Program, bytes: &[u8], bias: u64) {
    for s in &prog.segments {
        let dst = s.vaddr.wrapping_add(bias);
        let src = &bytes[s.file_offset as usize..(s.file_offset + s.file_size) as usize];
        // SAFETY: dst..dst+file_size lies inside the memory placed for the
        // program (its span covers every segment).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        kiln_syscall::arch::code_written(dst, s.file_size);
    }
}

/// Reads the program at `path`: in place when the file is the initrd's
/// own bytes (no copy in the heap, which matters for large programs in
/// small guests), else a copy.
fn load(path: &str) -> Result<(alloc::borrow::Cow<'static, [u8]>, Program), String> {
    let vfs = kiln_vfs::vfs();
    let bytes = match vfs.static_file(path) {
        Some(b) => alloc::borrow::Cow::Borrowed(b),
        None => alloc::borrow::Cow::Owned(vfs.read_file(path).map_err(|e| format!("{path}: {e}"))?),
    };
    let prog = Program::parse(&bytes).map_err(|e| format!("{path}: {e}"))?;
    if prog.machine != kiln_syscall::arch::MACHINE {
        let this = kiln_syscall::arch::PLATFORM;
        return Err(format!(
            "{path}: built for another CPU (ELF machine {}); this kernel runs {this} programs",
            prog.machine
        ));
    }
    Ok((bytes, prog))
}

/// Entry point.
pub fn main(args: &[&str], env: &[(&str, &str)]) -> i32 {
    let Some(&path) = args.get(1) else {
        println!("elfloader: which program? kiln run apps/elfloader -- /path/to/program [args]");
        return 2;
    };
    match run(path, &args[1..], env) {
        Ok(never) => match never {},
        Err(e) => {
            println!("elfloader: {e}");
            126
        }
    }
}

enum Never {}

fn run(path: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<Never, String> {
    let env_strings: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env_refs: Vec<&str> = env_strings.iter().map(String::as_str).collect();
    let (entry, sp) = prepare(path, argv, &env_refs, true)?;
    kiln_syscall::install(path);
    // Programs it starts (vfork or posix_spawn, then execve) load the same way.
    kiln_syscall::process::set_loader(exec_load);
    // SAFETY: `entry` is inside the program (or loader) just placed in
    // executable memory; `sp` is its initial stack.
    unsafe { kiln_syscall::arch::enter(entry, sp) }
}

/// execve's loading: a position-independent program only (one linked at
/// a fixed address would land on its starter's memory).
fn exec_load(path: &str, argv: &[&str], env: &[&str]) -> Result<(u64, u64), (i64, String)> {
    const ENOENT: i64 = 2;
    const ENOEXEC: i64 = 8;
    prepare(path, argv, env, false).map_err(|e| {
        let missing = kiln_vfs::vfs().stat(path).is_err();
        (if missing { ENOENT } else { ENOEXEC }, e)
    })
}

/// Places the program at `path` (and its loader) in memory and builds its
/// stack: its entry point and initial stack pointer. `first`: the kernel's
/// own program (a fixed-address one may go to its addresses).
fn prepare(path: &str, argv: &[&str], env: &[&str], first: bool) -> Result<(u64, u64), String> {
    let (bytes, prog) = load(path)?;
    if !first && !prog.relocatable() {
        return Err(format!(
            "{path}: linked at a fixed address; a program started by another one must be position-independent"
        ));
    }
    // x86_64: a fixed-address program's area is made executable.
    if first {
        kiln_syscall::arch::prepare_memory(prog.relocatable(), prog.span());
    }
    let bias = place(&prog, &bytes).map_err(|e| format!("{path}: {e}"))?;
    let mut entry = prog.entry.wrapping_add(bias);
    let mut interp_base = 0;
    if let Some(interp) = prog.interpreter() {
        let (ibytes, iprog) = load(interp)
            .map_err(|e| format!("{path} needs its loader: {e} (kiln rootfs add copies it)"))?;
        let ibias = place(&iprog, &ibytes).map_err(|e| format!("{interp}: {e}"))?;
        interp_base = iprog.span().0.wrapping_add(ibias);
        entry = iprog.entry.wrapping_add(ibias);
    }
    // Where it went, for a debugger: `add-symbol-file PROGRAM -o BIAS` in
    // gdb gives the program's symbols at their load addresses.
    kiln_console::log!(
        kiln_console::Level::Info,
        "elfloader: {path} loaded with bias {bias:#x}{}",
        if interp_base != 0 {
            alloc::format!(", its loader at {interp_base:#x}")
        } else {
            String::new()
        }
    );
    let aux = AuxInfo {
        phdr: prog.phdr_vaddr.wrapping_add(bias),
        phent: prog.phent as u64,
        phnum: prog.phnum as u64,
        entry: prog.entry.wrapping_add(bias),
        interp_base,
        hwcap: kiln_syscall::arch::HWCAP,
        vdso: None,
    };
    let (stack, stack_len) = kiln_syscall::mem::program_stack()?;
    let top = stack + stack_len as u64;
    let mut random = [0u8; 16];
    kiln_random::fill(&mut random);
    let init = kiln_elf::initial_stack(
        top,
        argv,
        env,
        &aux,
        random,
        kiln_syscall::arch::PLATFORM,
    );
    // SAFETY: [sp, top) lies inside the stack allocation.
    unsafe {
        core::ptr::copy_nonoverlapping(init.bytes.as_ptr(), init.sp as *mut u8, init.bytes.len())
    };
    Ok((entry, init.sp))
}
