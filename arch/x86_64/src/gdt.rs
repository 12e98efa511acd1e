//! The kernel's final GDT and TSS.
//!
//! The boot GDT from entry.S has no TSS; this one adds it so that double
//! faults, NMIs, machine checks and page faults run on their own stacks (the
//! interrupt stack table). A stack overflow into the guard page then still
//! reaches the page-fault handler with a working stack and gets reported.
//! Device and timer interrupts have their own too: they may arrive while a
//! Linux program runs in ring 0 on its own stack (whose red zone the CPU
//! would otherwise overwrite).

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT, 0-based here).
pub const IST_DOUBLE_FAULT: u16 = 0;
pub const IST_PAGE_FAULT: u16 = 1;
pub const IST_NMI_MCE: u16 = 2;
pub const IST_IRQ: u16 = 3;

const IST_SIZE: usize = 16 * 1024;
const GUARD: usize = 4096;

/// Four IST stacks, each above its own guard page (unmapped by the boot
/// page tables, `pagetable.ld`).
#[repr(C, align(4096))]
struct Stacks([[u8; GUARD + IST_SIZE]; 4]);

#[link_section = ".bss.kiln.ist"]
static mut IST_STACKS: Stacks = Stacks([[0; GUARD + IST_SIZE]; 4]);

static mut TSS: TaskStateSegment = TaskStateSegment::new();
static mut GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();

/// Builds and loads the GDT and TSS. Runs once, on the boot CPU, before
/// interrupts are enabled.
pub fn init() {
    // SAFETY: single-threaded early boot; these statics are written here once
    // and afterwards only read by the CPU.
    unsafe {
        let tss = &mut *(&raw mut TSS);
        for i in 0..4 {
            let base = (&raw mut IST_STACKS.0[i]) as u64;
            tss.interrupt_stack_table[i] = VirtAddr::new(base + (GUARD + IST_SIZE) as u64);
        }
        let gdt = &mut *(&raw mut GDT);
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(&*(&raw const TSS)));
        (&*(&raw const GDT)).load();
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
    }
}
