//! What differs between x86_64 and arm64 programs: how a call arrives
//! (registers, numbers), the layout of a few structures, thread pointers,
//! and how a program starts. lib/syscall's handlers use x86_64 numbers and
//! argument orders; arm64 calls are translated to them here.

#[cfg(target_arch = "aarch64")]
pub use kiln_arch_arm64::syscall::Frame;
#[cfg(target_arch = "x86_64")]
pub use kiln_arch_x86_64::syscall::Frame;

/// The call a frame holds: its number as x86_64 names it (None: a number
/// this architecture has that Kiln does not know), the number as the
/// program gave it, and the arguments in x86_64's order.
#[cfg(target_arch = "x86_64")]
pub fn call_of(f: &Frame) -> (Option<u64>, u64, [u64; 6]) {
    (Some(f.nr), f.nr, f.a)
}

#[cfg(target_arch = "aarch64")]
pub fn call_of(f: &Frame) -> (Option<u64>, u64, [u64; 6]) {
    let raw = f.x[8];
    let mut a = [f.x[0], f.x[1], f.x[2], f.x[3], f.x[4], f.x[5]];
    let nr = arm64_to_x86(raw);
    if nr == Some(56) {
        // clone(flags, stack, ptid, tls, ctid) on arm64; x86_64 has
        // (flags, stack, ptid, ctid, tls).
        a.swap(3, 4);
    }
    (nr, raw, a)
}

/// arm64's (the generic table's) numbers for the calls Kiln answers.
#[cfg(any(target_arch = "aarch64", test))]
pub fn arm64_to_x86(nr: u64) -> Option<u64> {
    const MAP: &[(u64, u64)] = &[
        (17, 79),
        (19, 290),
        (20, 291),
        (21, 233),
        (22, 281),
        (23, 32),
        (24, 292),
        (25, 72),
        (29, 16),
        (32, 73),
        (34, 258),
        (35, 263),
        (36, 266),
        (37, 265),
        (38, 264),
        (43, 137),
        (44, 138),
        (45, 76),
        (46, 77),
        (47, 285),
        (48, 269),
        (49, 80),
        (50, 81),
        (52, 91),
        (53, 268),
        (54, 260),
        (55, 93),
        (56, 257),
        (57, 3),
        (59, 293),
        (61, 217),
        (62, 8),
        (63, 0),
        (64, 1),
        (65, 19),
        (66, 20),
        (67, 17),
        (68, 18),
        (69, 295),
        (70, 296),
        (71, 40),
        (72, 270),
        (73, 271),
        (78, 267),
        (79, 262),
        (80, 5),
        (81, 162),
        (82, 74),
        (83, 75),
        (88, 280),
        (93, 60),
        (94, 231),
        (96, 218),
        (98, 202),
        (99, 273),
        (101, 35),
        (102, 36),
        (103, 38),
        (107, 222),
        (108, 224),
        (109, 225),
        (110, 223),
        (111, 226),
        (113, 228),
        (114, 229),
        (115, 230),
        (122, 203),
        (123, 204),
        (124, 24),
        (129, 62),
        (130, 200),
        (131, 234),
        (132, 131),
        (133, 130),
        (134, 13),
        (135, 14),
        (136, 127),
        (137, 128),
        (139, 15),
        (143, 114),
        (144, 106),
        (145, 113),
        (146, 105),
        (148, 118),
        (150, 120),
        (155, 121),
        (156, 124),
        (157, 112),
        (158, 115),
        (159, 116),
        (160, 63),
        (163, 97),
        (164, 160),
        (165, 98),
        (166, 95),
        (167, 157),
        (168, 309),
        (169, 96),
        (172, 39),
        (173, 110),
        (174, 102),
        (175, 107),
        (176, 104),
        (177, 108),
        (178, 186),
        (179, 99),
        (198, 41),
        (199, 53),
        (200, 49),
        (201, 50),
        (202, 43),
        (203, 42),
        (204, 51),
        (205, 52),
        (206, 44),
        (207, 45),
        (208, 54),
        (209, 55),
        (210, 48),
        (211, 46),
        (212, 47),
        (214, 12),
        (215, 11),
        (216, 25),
        (220, 56),
        (221, 59),
        (222, 9),
        (223, 221),
        (226, 10),
        (227, 26),
        (228, 149),
        (229, 150),
        (230, 151),
        (231, 152),
        (233, 28),
        (242, 288),
        (243, 299),
        (260, 61),
        (261, 302),
        (269, 307),
        (276, 316),
        (278, 318),
        (283, 324),
        (291, 332),
        (293, 334),
        (435, 435),
        (439, 439),
        (441, 441),
    ];
    MAP.iter().find(|&&(a, _)| a == nr).map(|&(_, x)| x)
}

/// The program's stack pointer at the call.
pub fn stack_pointer(f: &Frame) -> u64 {
    #[cfg(target_arch = "x86_64")]
    return f.rsp;
    #[cfg(target_arch = "aarch64")]
    return f.sp;
}

/// Sets the value a system call returns in `f`.
pub fn set_result(f: &mut Frame, v: i64) {
    #[cfg(target_arch = "x86_64")]
    {
        f.nr = v as u64;
    }
    #[cfg(target_arch = "aarch64")]
    {
        f.x[0] = v as u64;
    }
}

/// The calling thread's kernel stack top (read during a system call).
pub fn kernel_stack() -> u64 {
    #[cfg(target_arch = "x86_64")]
    return kiln_arch_x86_64::syscall::kernel_stack();
    #[cfg(target_arch = "aarch64")]
    return kiln_arch_arm64::syscall::kernel_stack();
}

/// A new thread's registers: the parent's at its `clone`, returning 0, on
/// `stack`, with thread pointer `tls` when given.
pub fn child_frame(f: &Frame, stack: u64, tls: Option<u64>) -> Frame {
    let mut c = *f;
    #[cfg(target_arch = "x86_64")]
    {
        c.nr = 0;
        c.rsp = stack;
        let _ = tls;
    }
    #[cfg(target_arch = "aarch64")]
    {
        c.x[0] = 0;
        c.sp = stack;
        if let Some(t) = tls {
            c.tpidr = t;
        }
    }
    c
}

/// Starts a thread made by `clone` (on the kernel thread spawned for it).
pub fn start_thread(f: &Frame, fs_base: u64) -> ! {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        kiln_arch_x86_64::syscall::set_fs_base(fs_base);
        // SAFETY: the frame is the parent's at its `clone` with the stack the
        // program gave the thread; rip is the program's code.
        unsafe { kiln_arch_x86_64::syscall::resume(f, None) }
    }
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    {
        let _ = fs_base;
        // SAFETY: as above (elr is the program's code).
        unsafe { kiln_arch_arm64::syscall::resume(f, None) }
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = (f, fs_base);
        unreachable!("programs run only in a kernel")
    }
}

/// Linux `struct stat` for (ino, st_mode, size, nlink, mtime, blocks): 144 bytes
/// on x86_64, the generic 128-byte layout on arm64.
pub fn stat_bytes(
    ino: u64,
    mode: u32,
    size: u64,
    nlink: u64,
    mtime: u64,
    blocks: u64,
) -> alloc::vec::Vec<u8> {
    let mut b = alloc::vec![0u8; if cfg!(target_arch = "aarch64") { 128 } else { 144 }];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(0, &1u64.to_le_bytes());
    put(8, &ino.to_le_bytes());
    if cfg!(target_arch = "aarch64") {
        put(16, &mode.to_le_bytes());
        put(20, &(nlink as u32).to_le_bytes());
        put(56, &4096u32.to_le_bytes());
    } else {
        put(16, &nlink.to_le_bytes());
        put(24, &mode.to_le_bytes());
        put(56, &4096u64.to_le_bytes());
    }
    put(48, &size.to_le_bytes());
    put(64, &blocks.to_le_bytes());
    for at in [72, 88, 104] {
        put(at, &mtime.to_le_bytes());
    }
    b
}

/// Size of `struct epoll_event`: packed (12 bytes) on x86_64, 16 on arm64.
pub const EPOLL_EVENT: usize = if cfg!(target_arch = "aarch64") {
    16
} else {
    12
};
/// Where the data word sits in `struct epoll_event`.
pub const EPOLL_DATA: usize = if cfg!(target_arch = "aarch64") { 8 } else { 4 };

/// Installs the system call entry.
pub fn install(handler: fn(&mut Frame) -> i64) {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        kiln_arch_x86_64::syscall::set_handler(handler);
        kiln_arch_x86_64::syscall::init();
    }
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    kiln_arch_arm64::syscall::set_handler(handler);
    #[cfg(not(target_os = "none"))]
    let _ = handler;
}

/// The ELF machine this kernel runs programs for.
pub const MACHINE: u16 = if cfg!(target_arch = "aarch64") {
    183
} else {
    62
};
/// AT_PLATFORM's string.
pub const PLATFORM: &str = if cfg!(target_arch = "aarch64") {
    "aarch64"
} else {
    "x86_64"
};
/// AT_HWCAP: on arm64, FP and ASIMD (the kernel enables both).
pub const HWCAP: u64 = if cfg!(target_arch = "aarch64") {
    0b11
} else {
    0
};

/// `mprotect` on a fixed-address program's own identity-mapped memory
/// (x86_64): the pages' write and execute permissions.
pub fn protect_range(addr: u64, len: u64, write: bool, exec: bool) {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    kiln_arch_x86_64::mmu::protect_4k(addr, len, write, exec, kiln_boot::page_table_page);
    #[cfg(not(all(target_arch = "x86_64", target_os = "none")))]
    let _ = (addr, len, write, exec);
}

/// W^X for a fixed-address program copied into its area: `segments` are
/// (address, size, writable, executable). The 2 MiB blocks around the span
/// become read-write and not executable (the rest of the area goes back to
/// the heap), then each segment's pages get its own permissions, by 4 KiB
/// page, later segments winning a shared page as with Linux's mappings.
pub fn protect_fixed(span: (u64, u64), segments: impl Iterator<Item = (u64, u64, bool, bool)>) {
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    {
        use kiln_arch_x86_64::mmu::protect_4k;
        let table = kiln_boot::page_table_page;
        let (lo, hi) = (span.0 & !((2 << 20) - 1), span.1.next_multiple_of(2 << 20));
        protect_4k(lo, hi - lo, true, false, table);
        for (va, size, w, x) in segments {
            let (s, e) = (va & !0xfff, (va + size).next_multiple_of(4096));
            protect_4k(s, e - s, w, x, table);
        }
    }
    // arm64: the blocks mapped for the program, by 4 KiB page.
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    {
        use kiln_arch_arm64::mmu::protect_pages;
        let table = || kiln_boot::page_table_page().map(|p| p as u64);
        let (lo, hi) = (span.0 & !((2 << 20) - 1), span.1.next_multiple_of(2 << 20));
        protect_pages(lo, hi - lo, true, false, table);
        for (va, size, w, x) in segments {
            let (s, e) = (va & !0xfff, (va + size).next_multiple_of(4096));
            protect_pages(s, e - s, w, x, table);
        }
    }
    #[cfg(not(target_os = "none"))]
    let _ = (span, segments.count());
}

/// Makes memory executable before a program is copied into it: on
/// x86_64 a fixed-address program's area (`relocatable` false, linked at
/// `span`); nothing on arm64, whose fixed-address blocks are mapped
/// executable.
pub fn prepare_memory(relocatable: bool, span: (u64, u64)) {
    // x86_64: a position-independent program goes into virtual memory
    // with its own protections; a fixed-address one runs in the area the
    // platform keeps for it, made executable by 2 MiB pages.
    #[cfg(all(target_arch = "x86_64", target_os = "none"))]
    if !relocatable {
        let (lo, hi) = span;
        let start = lo & !((2 << 20) - 1);
        kiln_arch_x86_64::mmu::set_executable(start, hi - start);
    } else {
        // The RAM kept for a fixed-address program goes to the heap.
        kiln_boot::release_fixed_area(0);
    }
    let _ = (relocatable, span);
    // arm64: a fixed-address program runs in heap blocks mapped at its
    // own addresses (those mappings get its segments' permissions, see
    // protect_fixed), a position-independent one in virtual memory: the
    // heap's own mapping stays never executable.
}

/// Makes code just copied to [start, start + len) safe to execute (arm64:
/// the instruction cache does not see data writes by itself).
pub fn code_written(start: u64, len: u64) {
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    kiln_arch_arm64::mmu::sync_icache(start, len);
    let _ = (start, len);
}

/// Starts a program at `entry` with its initial stack at `sp`.
///
/// # Safety
/// `entry` must be the program's code, placed in executable memory, and
/// `sp` its initial stack.
pub unsafe fn enter(entry: u64, sp: u64) -> ! {
    crate::preempt::install();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: per the contract.
    unsafe {
        kiln_arch_x86_64::syscall::enter(entry, sp)
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: per the contract.
    unsafe {
        kiln_arch_arm64::syscall::enter(entry, sp)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn arm64_numbers_reach_the_calls_of_the_same_name() {
        // Spot checks against the generic table (asm-generic/unistd.h).
        for (arm, x86) in [
            (63, 0),
            (64, 1),
            (56, 257),
            (57, 3),
            (222, 9),
            (220, 56),
            (94, 231),
            (98, 202),
            (198, 41),
            (22, 281),
        ] {
            assert_eq!(super::arm64_to_x86(arm), Some(x86));
        }
        assert_eq!(super::arm64_to_x86(1000), None);
    }
}

/// Readies [lo, hi) for a program linked at those fixed addresses, zeroed.
/// x86_64: the range must lie in the RAM the platform keeps out of the heap
/// at boot (with LIBELF_FIXED_AREA: 4 MiB up to what the kernel keeps for
/// itself near the end of RAM) and not overlap the initrd; the rest of that RAM then goes to the
/// heap. arm64: 2 MiB blocks of
/// heap memory are mapped at those addresses, which must be unused (below
/// RAM on QEMU virt: 0x200000 and 0x400000 are where linkers put them).
pub fn place_fixed(lo: u64, hi: u64) -> Result<(), alloc::string::String> {
    #[cfg(target_arch = "x86_64")]
    {
        if option_env!("KILN_CONFIG_LIBELF_FIXED_AREA") != Some("y") {
            return Err(alloc::format!("linked at {lo:#x}..{hi:#x}, and this kernel keeps no memory for fixed-address programs (set CONFIG_LIBELF_FIXED_AREA=y)"));
        }
        let Some((start, end)) = kiln_boot::fixed_area().map(|(s, e)| (s as u64, e as u64)) else {
            return Err(alloc::format!(
                "linked at {lo:#x}..{hi:#x}; this machine has no RAM to spare there (give it more with -M)"
            ));
        };
        if lo < 0x40_0000 {
            return Err(alloc::format!(
                "linked at {lo:#x}..{hi:#x}: below 4 MiB lies the kernel; fixed-address programs must start at 0x400000 or above (or be position-independent)"
            ));
        }
        if lo < start {
            // More memory does not move the kernel image: it ends above
            // the program's first address (a large embedded initrd).
            return Err(alloc::format!(
                "linked at {lo:#x}..{hi:#x}, but the kernel image (with the initrd built into it) reaches {start:#x}: leave the rootfs out of the image and give it at run time (`kiln run --initrd DIR apps/elfloader -- PROGRAM`: the boot loader puts it at the top of RAM), or build the program position-independent"
            ));
        }
        if hi > end {
            let more = (hi.saturating_sub(end) + (2 << 20)).div_ceil(1 << 20);
            return Err(alloc::format!(
                "linked at {lo:#x}..{hi:#x}; fixed-address programs must lie within {start:#x}..{end:#x} here (the RAM above the kernel image, less the 8 MiB the kernel keeps for itself and the initrd): give the guest {more} MiB more with -M"
            ));
        }
        // The initrd (whose files the ramfs reads in place) must not be there.
        if let Some(i) = kiln_boot::initrd() {
            let (s, e) = (i.as_ptr() as u64, i.as_ptr() as u64 + i.len() as u64);
            if s < hi && e > lo {
                return Err(alloc::format!(
                    "linked at {lo:#x}..{hi:#x}, where the initrd lies ({s:#x}..{e:#x})"
                ));
            }
        }
        // SAFETY: [lo, hi) is identity-mapped RAM that the platform kept out
        // of the heap for fixed-address programs, and nothing else uses it.
        unsafe { core::ptr::write_bytes(lo as *mut u8, 0, (hi - lo) as usize) };
        // What the program does not need goes to the heap (from the next
        // 2 MiB page: the program's pages are executable).
        kiln_boot::release_fixed_area(hi.next_multiple_of(2 << 20) as usize);
        Ok(())
    }
    #[cfg(target_arch = "aarch64")]
    {
        const BLOCK: u64 = 2 << 20;
        let mut va = lo & !(BLOCK - 1);
        while va < hi {
            let layout =
                core::alloc::Layout::from_size_align(BLOCK as usize, BLOCK as usize).unwrap();
            // SAFETY: a zeroed allocation of a non-zero size.
            let pa = unsafe { alloc::alloc::alloc_zeroed(layout) } as u64;
            if pa == 0 {
                return Err(alloc::string::String::from(
                    "no memory for its fixed-address blocks",
                ));
            }
            #[cfg(target_os = "none")]
            let mapped = kiln_arch_arm64::mmu::map_block(va, pa);
            #[cfg(not(target_os = "none"))]
            let mapped = false;
            if !mapped {
                return Err(alloc::format!(
                    "linked at {lo:#x}..{hi:#x}, where this machine already has memory or devices"
                ));
            }
            va += BLOCK;
        }
        Ok(())
    }
}
