/* Kiln x86_64 entry.
 *
 * The boot loader (QEMU's PVH loader, or GRUB's multiboot2 loader when the
 * kernel boots from a disk image; see plat/qemu) jumps to _kiln_entry32 in
 * 32-bit protected mode with paging off, flat segments, and EBX holding the
 * physical address of the boot information (EAX holds multiboot2's magic;
 * it is kept in kiln_entry_eax so the platform can tell the two apart).
 * This code:
 *   1. reads the TSC (the reference point for boot-time measurement);
 *   2. links the identity page tables: 0-1 GiB with 2 MiB pages, except the
 *      first 4 MiB, mapped with 4 KiB pages. These tables are final: the
 *      linker computes every entry of the 4 KiB table (pagetable.ld), so the
 *      kernel is W^X from the first instruction (text read-only and
 *      executable, rodata read-only, everything else not executable, the
 *      stack guard pages unmapped) without a loop at boot;
 *   3. enables PAE, SSE state, long mode, no-execute and write protection;
 *   4. enters 64-bit mode and calls kiln_arch_start64(boot_arg) on the boot stack.
 * 1 GiB pages are avoided: they fault under KVM's default CPU model. */
.section .text.boot, "ax"
.code32
.global _kiln_entry32
_kiln_entry32:
    cli
    cld
    mov %eax, kiln_entry_eax
    rdtsc
    mov %eax, kiln_entry_tsc
    mov %edx, kiln_entry_tsc+4
    mov %ebx, %esi

    /* PML4[0] -> PDPT -> PD. The PD and the PTs for the first 4 MiB are
     * built by the assembler (below), so boot runs no loop here: on
     * hypervisors that emulate a non-paravirtual guest instruction by
     * instruction, every instruction before main counts. */
    movl $(kiln_pdpt + 0x3), kiln_pml4
    movl $(kiln_pd + 0x3), kiln_pdpt

    mov $kiln_pml4, %eax
    mov %eax, %cr3
    /* CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10). */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    /* EFER: LME (8), NXE (11). */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x900, %eax
    wrmsr
    /* CR0: PG (31), WP (16), MP (1); clear EM (2) so SSE works, and clear
     * CD (30) and NW (29): a loader may leave the caches disabled, which
     * makes every instruction fetch and memory access uncached (100x slower). */
    mov %cr0, %eax
    and $0x9FFFFFFB, %eax
    or $0x80010002, %eax
    mov %eax, %cr0

    lgdt kiln_boot_gdtr
    ljmp $0x08, $kiln_entry64

.code64
kiln_entry64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $__stack_top, %rsp
    mov %esi, %edi
    xor %ebp, %ebp
    call kiln_arch_start64
    ud2

.section .rodata.kiln_boot_gdt, "a"
.balign 16
kiln_boot_gdt:
    .quad 0
    /* The accessed bits are preset: this table is in a read-only page, and
     * the CPU would otherwise write them when loading the segments. */
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: data */
kiln_boot_gdtr:
    .word kiln_boot_gdtr - kiln_boot_gdt - 1
    .long kiln_boot_gdt

.section .bss.kiln.pagetables, "aw", @nobits
.balign 4096
.global kiln_pml4
kiln_pml4: .skip 4096
.global kiln_pdpt
kiln_pdpt: .skip 4096

/* PD: the first GiB in 2 MiB pages (present, writable, large, not
 * executable), except entries 0 and 1, which point to the 4 KiB page tables
 * of the first 4 MiB (kiln_pt, two tables, in pagetable.ld). */
.section .data.kiln.pagetables, "aw"
.balign 4096
.global kiln_pd
kiln_pd:
    .quad kiln_pt + 0x3
    .quad kiln_pt + 0x1000 + 0x3
    .set kiln_i, 2
    .rept 510
    .quad (kiln_i << 21) | 0x83 | 0x8000000000000000
    .set kiln_i, kiln_i + 1
    .endr

.section .data.kiln_entry_tsc, "aw"
.balign 8
.global kiln_entry_tsc
kiln_entry_tsc: .quad 0

.section .data.kiln_entry_eax, "aw"
.balign 4
.global kiln_entry_eax
kiln_entry_eax: .long 0
