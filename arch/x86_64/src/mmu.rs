//! Changes to the boot page tables.

/// Unmaps page 0 so that null pointer accesses fault. Call once the boot
/// loader's data in low memory has been copied.
#[cfg(target_os = "none")]
pub fn unmap_null_page() {
    extern "C" {
        static mut kiln_pt: [u64; 512];
    }
    // SAFETY: kiln_pt is the page table entry.S built for the first 2 MiB;
    // entry 0 maps page 0, which nothing in Kiln uses once the platform has
    // copied the boot information. The TLB entry is flushed right after.
    unsafe {
        core::ptr::write_volatile(&raw mut kiln_pt[0], 0);
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(0));
    }
}
