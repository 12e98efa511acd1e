//! Kiln's UEFI loader for arm64 (`EFI/BOOT/BOOTAA64.EFI` on the disks
//! `kiln pkg` writes for arm64).
//!
//! Contract: the loader reads the kernel Image `\boot\kiln` and its command
//! line `\boot\cmdline` (one line of UTF-8; empty or missing means none)
//! from the partition it was loaded from (and puts `random.seed=` from the
//! firmware's RNG protocol in front, where the firmware has one), takes the device tree the
//! firmware publishes in its configuration table (QEMU's virt machine with
//! `acpi=off`; with ACPI tables the firmware publishes no tree and the
//! loader says so), copies the tree with `/chosen/bootargs` set, places the
//! kernel at RAM's base plus the Image's `text_offset` (the address Kiln's
//! kernel is linked at, which it claims from the firmware before touching
//! it), leaves boot services and enters the kernel as the arm64 boot
//! protocol asks: MMU and data cache off, the kernel and tree cleaned to
//! the point of coherency, interrupts masked, x0 = the tree. Errors are
//! printed on the firmware's console and returned to it as a status.

#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!(
        "kiln-efi-boot runs under UEFI firmware: kiln pkg builds it for aarch64-unknown-uefi"
    );
    std::process::exit(1);
}

#[cfg(target_os = "uefi")]
mod efi {
    extern crate alloc;

    use alloc::string::String;
    use kiln_efi_boot::{fdt, image};
    use uefi::boot::{self, AllocateType, MemoryType};
    use uefi::fs::FileSystem;
    use uefi::{cstr16, guid, println, Guid, Status};

    /// EFI_DTB_TABLE_GUID: the device tree in the configuration table.
    const DTB_GUID: Guid = guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");
    const PAGE: usize = 4096;

    #[uefi::entry]
    fn main() -> Status {
        match load() {
            Ok(never) => match never {},
            Err(msg) => {
                println!("kiln: UEFI loader: {msg}");
                Status::LOAD_ERROR
            }
        }
    }

    enum Never {}

    fn load() -> Result<Never, String> {
        let sfs = boot::get_image_file_system(boot::image_handle())
            .map_err(|e| alloc::format!("the boot partition: {e:?}"))?;
        let mut fs = FileSystem::new(sfs);
        let kernel = fs
            .read(cstr16!("\\boot\\kiln"))
            .map_err(|e| alloc::format!("reading \\boot\\kiln: {e:?}"))?;
        let cmdline: String = fs
            .read(cstr16!("\\boot\\cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches(['\n', '\r'])
                    .into()
            })
            .unwrap_or_default();
        drop(fs);
        // A seed for the kernel's CSPRNG from the firmware's RNG protocol
        // (virtio-rng, RNDR or a platform source), unless the command line
        // brings one.
        let cmdline = match firmware_seed() {
            Some(seed) if !cmdline.contains("random.seed=") => {
                alloc::format!("random.seed={seed} {cmdline}")
            }
            _ => cmdline,
        };

        let dtb = uefi::system::with_config_table(|t| t.iter().find(|e| e.guid == DTB_GUID).map(|e| e.address as *const u8))
            .ok_or("the firmware gives no device tree (it describes the machine with ACPI only); on QEMU start the machine with -machine virt,acpi=off")?;
        // SAFETY: the firmware's configuration table points at a device
        // tree blob; its header (40 bytes) gives its size, checked by
        // total_size before the whole blob is read.
        let blob = unsafe {
            let size = fdt::total_size(core::slice::from_raw_parts(dtb, 8))
                .map_err(|e| alloc::format!("the firmware's device tree: {e:?}"))?;
            core::slice::from_raw_parts(dtb, size)
        };
        let ram_base = ::fdt::Fdt::new(blob)
            .ok()
            .and_then(|t| {
                t.memory()
                    .regions()
                    .map(|r| r.starting_address as u64)
                    .min()
            })
            .ok_or("the firmware's device tree has no memory node")?;
        let tree = fdt::with_bootargs(blob, &cmdline)
            .map_err(|e| alloc::format!("the firmware's device tree: {e:?}"))?;
        let place = image::placement(&kernel, ram_base)
            .map_err(|e| alloc::format!("\\boot\\kiln is not a Kiln arm64 kernel: {e:?}"))?;

        // The kernel's own pages, claimed so no firmware data lives there.
        let pages = (place.size as usize).div_ceil(PAGE);
        let at = boot::allocate_pages(
            AllocateType::Address(place.load),
            MemoryType::LOADER_DATA,
            pages,
        )
        .map_err(|e| {
            alloc::format!(
                "the kernel's address 0x{:x} ({} KiB) is not free: {e:?}",
                place.load,
                place.size / 1024
            )
        })?;
        // The tree below 4 GiB, which the kernel maps.
        let tree_pages = tree.len().div_ceil(PAGE);
        let tree_at = boot::allocate_pages(
            AllocateType::MaxAddress(0xffff_ffff),
            MemoryType::LOADER_DATA,
            tree_pages,
        )
        .map_err(|e| alloc::format!("no memory for the device tree: {e:?}"))?;
        // SAFETY: both ranges were just allocated with these sizes, and
        // the sources are this loader's own vectors.
        unsafe {
            core::ptr::copy_nonoverlapping(kernel.as_ptr(), at.as_ptr(), kernel.len());
            core::ptr::write_bytes(
                at.as_ptr().add(kernel.len()),
                0,
                pages * PAGE - kernel.len(),
            );
            core::ptr::copy_nonoverlapping(tree.as_ptr(), tree_at.as_ptr(), tree.len());
        }
        println!(
            "kiln: UEFI loader: kernel at 0x{:x}, command line of {} bytes{}",
            place.load,
            cmdline.len(),
            if cmdline.starts_with("random.seed=") {
                " with a seed from the firmware"
            } else {
                ""
            }
        );
        let (kernel_at, kernel_len, tree_addr, tree_len) = (
            at.as_ptr() as usize,
            pages * PAGE,
            tree_at.as_ptr() as usize,
            tree.len(),
        );
        drop((kernel, tree));
        // SAFETY: nothing of the firmware's boot services is used after
        // this; the memory map it returns is left to the kernel's view
        // (the kernel takes RAM from the device tree, its own pages and
        // the tree's being reserved there).
        let _map = unsafe { boot::exit_boot_services(None) };
        // SAFETY: the kernel and tree were written above and are cleaned
        // to the point of coherency before the caches go off; `enter`
        // does not return.
        unsafe { enter(kernel_at, kernel_len, tree_addr, tree_len) }
    }

    /// 32 bytes from EFI_RNG_PROTOCOL as 64 hex digits (`random.seed=`'s
    /// form), if the firmware has the protocol.
    fn firmware_seed() -> Option<String> {
        use core::fmt::Write;
        use uefi::proto::rng::Rng;
        let h = boot::get_handle_for_protocol::<Rng>().ok()?;
        let mut rng = boot::open_protocol_exclusive::<Rng>(h).ok()?;
        let mut b = [0u8; 32];
        rng.get_rng(None, &mut b).ok()?;
        let mut hex = String::with_capacity(64);
        for x in b {
            let _ = write!(hex, "{x:02x}");
        }
        Some(hex)
    }

    /// Cleans and invalidates `[start, start + len)` to the point of
    /// coherency, line by line (the line size from CTR_EL0.DminLine).
    ///
    /// # Safety
    /// The range must be mapped.
    unsafe fn clean(start: usize, len: usize) {
        let ctr: u64;
        core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack));
        let line = 4usize << ((ctr >> 16) & 0xf);
        let mut a = start & !(line - 1);
        while a < start + len {
            core::arch::asm!("dc civac, {}", in(reg) a, options(nostack));
            a += line;
        }
        core::arch::asm!("dsb sy", options(nostack));
    }

    /// Enters the kernel at `kernel` with x0 = `tree`, MMU and caches off.
    ///
    /// # Safety
    /// `kernel` must hold an arm64 Image and `tree` a device tree, both
    /// in identity-mapped RAM, with boot services exited.
    unsafe fn enter(kernel: usize, kernel_len: usize, tree: usize, tree_len: usize) -> ! {
        clean(kernel, kernel_len);
        clean(tree, tree_len);
        // The firmware runs identity-mapped at EL1 (or EL2 with
        // virtualization): the instruction after the MMU goes off is
        // fetched from the same physical address.
        core::arch::asm!(
            "msr daifset, #0xf",
            "mrs x9, CurrentEL",
            "cmp x9, #8",
            "b.eq 2f",
            "mrs x9, sctlr_el1",
            "bic x9, x9, #1",          // M: the MMU
            "bic x9, x9, #4",          // C: the data cache
            "bic x9, x9, #0x1000",     // I: the instruction cache
            "msr sctlr_el1, x9",
            "b 3f",
            "2:",
            "mrs x9, sctlr_el2",
            "bic x9, x9, #1",
            "bic x9, x9, #4",
            "bic x9, x9, #0x1000",
            "msr sctlr_el2, x9",
            "3:",
            "isb",
            "ic iallu",
            "dsb sy",
            "isb",
            "mov x1, xzr",
            "mov x2, xzr",
            "mov x3, xzr",
            "br {entry}",
            entry = in(reg) kernel,
            in("x0") tree,
            options(noreturn),
        )
    }
}
