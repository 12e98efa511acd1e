/* arm64 entry. The first 64 bytes are the arm64 Image header, so boot
 * loaders (QEMU's -kernel, U-Boot) load the image at RAM + text_offset and
 * enter at its first byte with the device tree's address in x0, at EL3,
 * EL2 or EL1, MMU off. Secondary cores (if any start here) park. The boot core
 * drops from EL3 or EL2 to EL1, enables FP/SIMD, sets the boot stack, clears .bss,
 * turns the MMU on with RAM identity-mapped as normal cacheable memory and
 * the low GiB (devices) as device memory, installs the exception vectors
 * and calls kiln_arch_start(dtb, entry ticks). */
.section .text.boot, "ax"
.global _kiln_start
_kiln_start:
    b 1f
    .long 0
    .quad 0x80000               /* text_offset */
    .quad __kernel_size         /* image_size, .bss included */
    .quad 0xa                   /* little endian, 4 KiB pages, anywhere in RAM */
    .quad 0
    .quad 0
    .quad 0
    .ascii "ARM\x64"
    .long 0
1:
    mrs x1, mpidr_el1
    and x1, x1, #0xff
    cbnz x1, 9f
    mov x19, x0
    mrs x20, cntvct_el0
    mrs x1, CurrentEL
    lsr x1, x1, #2
    cmp x1, #3
    b.ne 3f
    /* EL3 -> EL1 (secure, so a GIC with security extensions still lets EL1
     * enable its interrupts): lower levels are AArch64, EL1 may use the
     * timers. */
    mov x1, #(1 << 31)
    msr hcr_el2, x1
    mov x1, #3
    msr cnthctl_el2, x1
    msr cntvoff_el2, xzr
    mov x1, #0x430              /* SCR_EL3: RW, res1 bits 4-5, NS = 0 */
    msr scr_el3, x1
    mov x1, #0x3c5
    msr spsr_el3, x1
    adr x1, 2f
    msr elr_el3, x1
    eret
3:
    cmp x1, #2
    b.ne 2f
    /* EL2 -> EL1: EL1 is AArch64, may use the timers, runs with DAIF masked. */
    mov x1, #(1 << 31)
    msr hcr_el2, x1
    mov x1, #3
    msr cnthctl_el2, x1
    msr cntvoff_el2, xzr
    mov x1, #0x3c5
    msr spsr_el2, x1
    adr x1, 2f
    msr elr_el2, x1
    eret
2:
    mov x1, #(3 << 20)          /* CPACR_EL1.FPEN: FP/SIMD at EL1 */
    msr cpacr_el1, x1
    isb
    /* Exceptions run on their own stack (SP_EL1); the kernel and its
     * threads run on SP_EL0, so a stack overflow that hits the guard page
     * is still reported. */
    adrp x1, kiln_exc_stack_top
    add x1, x1, :lo12:kiln_exc_stack_top
    mov sp, x1
    msr spsel, #0
    adrp x1, __stack_top
    add x1, x1, :lo12:__stack_top
    mov sp, x1
    adrp x1, __bss_start
    add x1, x1, :lo12:__bss_start
    adrp x2, __bss_end
    add x2, x2, :lo12:__bss_end
3:
    cmp x1, x2
    b.hs 4f
    stp xzr, xzr, [x1], #16
    b 3b
4:
    bl kiln_mmu_on
    adrp x1, kiln_vectors
    add x1, x1, :lo12:kiln_vectors
    msr vbar_el1, x1
    isb
    mov x0, x19
    mov x1, x20
    bl kiln_arch_start
9:
    wfe
    b 9b

/* The first 4 GiB in 2 MiB blocks (four level-2 tables under the level-1
 * table; 39-bit addresses). The platform's linker script says where RAM
 * and devices are (__map_ram_start/end, __map_dev_start/end): RAM is
 * normal cacheable memory, devices are device memory and never executable,
 * everything else is unmapped (on QEMU virt that includes the first 2 MiB,
 * so null pointers fault). */
kiln_mmu_on:
    adrp x0, kiln_l1
    add x0, x0, :lo12:kiln_l1
    adrp x2, kiln_l2
    add x2, x2, :lo12:kiln_l2
    mov x4, #0
5:
    add x5, x2, x4, lsl #12
    orr x5, x5, #3              /* table descriptor */
    str x5, [x0, x4, lsl #3]
    add x4, x4, #1
    cmp x4, #4
    b.lo 5b
    ldr x6, =__map_ram_start
    ldr x7, =__map_ram_end
    ldr x10, =__map_dev_start
    ldr x11, =__map_dev_end
    ldr x9, =0x0060000000000705 /* block, AF, inner shareable, attr 1 (normal), never executable */
    ldr x12, =0x0060000000000401 /* block, AF, attr 0 (device), never executable */
    mov x4, #0
6:
    lsl x5, x4, #21
    cmp x5, x6
    b.lo 7f
    cmp x5, x7
    b.hs 7f
    orr x8, x5, x9
    b 9f
7:
    cmp x5, x10
    b.lo 8f
    cmp x5, x11
    b.hs 8f
    orr x8, x5, x12
    b 9f
8:
    mov x8, #0
9:
    str x8, [x2, x4, lsl #3]
    add x4, x4, #1
    cmp x4, #2048
    b.lo 6b
    /* W^X for the kernel image: the 2 MiB blocks it spans (up to 16 MiB)
     * become 4 KiB pages: text read-only and executable, read-only data
     * read-only, the rest (data, .bss, stacks) writable and never
     * executable; the page below the boot stack stays unmapped, and so
     * does page 0 (Raspberry Pi RAM starts at 0), so null pointers fault. */
    ldr x6, =__kernel_start
    and x6, x6, #0xffffffffffe00000
    ldr x7, =__kernel_end
    ldr x13, =0x1fffff
    add x7, x7, x13
    and x7, x7, #0xffffffffffe00000
    adrp x3, kiln_l3
    add x3, x3, :lo12:kiln_l3
    ldr x14, =__kernel_start
    ldr x15, =__rodata_start
    ldr x16, =__data_start
    ldr x17, =__stack_guard
    mov x4, #0
10:
    cmp x6, x7
    b.hs 16f
    cmp x4, #8
    b.hs 16f
    lsr x5, x6, #21
    add x8, x3, x4, lsl #12
    orr x9, x8, #3
    str x9, [x2, x5, lsl #3]
    mov x10, #0
11:
    add x11, x6, x10, lsl #12
    ldr x12, =0x0060000000000707 /* page, AF, inner shareable, normal, RW, never executable */
    cmp x11, x17
    b.eq 17f
    cbnz x11, 12f
17:
    mov x12, #0                 /* the boot stack's guard page, and page 0 where RAM starts at 0 */
    b 15f
12:
    cmp x11, x14
    b.lo 14f
    cmp x11, x15
    b.hs 13f
    ldr x12, =0x0040000000000787 /* text: read-only, executable at EL1 */
    b 14f
13:
    cmp x11, x16
    b.hs 14f
    ldr x12, =0x0060000000000787 /* read-only data */
14:
    orr x12, x12, x11
15:
    str x12, [x8, x10, lsl #3]
    add x10, x10, #1
    cmp x10, #512
    b.lo 11b
    add x6, x6, #0x200, lsl #12
    add x4, x4, #1
    b 10b
16:
    ldr x1, =0xff00             /* MAIR: attr 0 device-nGnRnE, attr 1 normal write-back */
    msr mair_el1, x1
    /* TCR: T0SZ 25, walks cacheable and inner shareable, 4 KiB granule,
     * no TTBR1 walks, 40-bit physical addresses. */
    ldr x1, =(25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32))
    msr tcr_el1, x1
    msr ttbr0_el1, x0
    isb
    tlbi vmalle1
    dsb ish
    isb
    mrs x1, sctlr_el1
    orr x1, x1, #1              /* M: MMU on */
    orr x1, x1, #(1 << 2)       /* C: data cache */
    orr x1, x1, #(1 << 12)      /* I: instruction cache */
    bic x1, x1, #(1 << 1)       /* A: unaligned accesses allowed */
    msr sctlr_el1, x1
    isb
    ret
.ltorg

.section .bss.kiln_l1, "aw", @nobits
.balign 4096
.global kiln_l1
kiln_l1:
    .space 4096
.global kiln_l2
kiln_l2:
    .space 4 * 4096
.global kiln_l3
kiln_l3:
    .space 8 * 4096
.balign 16
kiln_exc_stack:
    .space 16384
kiln_exc_stack_top:

/* Exception vectors: 16 entries of 128 bytes. Each saves x29/x30, puts its
 * index in x29 and joins the common path, which saves the other registers
 * and calls kiln_arch_exception(frame, index). The kernel runs on SP_EL0,
 * so its exceptions arrive at entries 0-3 on the exception stack (SP_EL1).
 * Interrupts and page faults a Linux program's memory serves return from
 * the handler; everything else is reported and fatal. */
.section .text.kiln_vectors, "ax"
.balign 2048
.global kiln_vectors
kiln_vectors:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
.balign 128
    stp x29, x30, [sp, #-16]!
.if \n == 0
    /* A Linux program's `svc #0` (it runs at EL1 on SP_EL0, like the kernel). */
    mrs x29, esr_el1
    lsr x29, x29, #26
    cmp x29, #0x15
    b.eq kiln_svc_entry
.endif
    mov x29, #\n
    b kiln_exc_common
.endr

/* A system call. The handler may block its thread, so it runs on the
 * thread's own kernel stack (kiln_kstack_top, on SP_EL0), neither on the
 * shared exception stack nor on the program's stack (a goroutine's may be
 * 8 KiB): x29/x30 come back off SP_EL1, x0/x1 wait there while the
 * program's SP_EL0 goes into a SyscallFrame (816 bytes: x0-x30, sp, elr,
 * spsr, tpidr_el0, q0-q31, fpcr, fpsr) at the kernel stack's top. The
 * kernel is built with FP/SIMD, so the program's vector registers are
 * saved too. kiln_svc_dispatch puts the result in the frame's x0. */
kiln_svc_entry:
    ldp x29, x30, [sp], #16
    stp x0, x1, [sp, #-16]!
    mrs x0, sp_el0
    adrp x1, kiln_kstack_top
    ldr x1, [x1, :lo12:kiln_kstack_top]
    sub x1, x1, #816
    str x0, [x1, #248]
    msr sp_el0, x1
    ldp x0, x1, [sp], #16
    msr spsel, #0
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    stp x28, x29, [sp, #224]
    str x30, [sp, #240]
    mrs x0, elr_el1
    mrs x1, spsr_el1
    stp x0, x1, [sp, #256]
    mrs x0, tpidr_el0
    str x0, [sp, #272]
    add x0, sp, #288
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    mrs x1, fpcr
    mrs x2, fpsr
    add x0, x0, #512
    stp x1, x2, [x0]
    mov x0, sp
    bl kiln_svc_dispatch
    mov x0, sp
    add x1, sp, #816
    b kiln_svc_resume

/* kiln_svc_resume(frame, kstack): continue a program with every register
 * of a SyscallFrame (after a system call, or a new thread from `clone`).
 * kstack becomes the thread's kernel stack top for its next call (0: the
 * current stack, from here up). */
.global kiln_svc_resume
kiln_svc_resume:
    cbnz x1, 1f
    mov x1, sp
    and x1, x1, #~15
1:  adrp x2, kiln_kstack_top
    str x1, [x2, :lo12:kiln_kstack_top]
    add x1, x0, #288
    add x2, x1, #512
    ldp x2, x3, [x2]
    msr fpcr, x2
    msr fpsr, x3
    ldp q0, q1, [x1, #0]
    ldp q2, q3, [x1, #32]
    ldp q4, q5, [x1, #64]
    ldp q6, q7, [x1, #96]
    ldp q8, q9, [x1, #128]
    ldp q10, q11, [x1, #160]
    ldp q12, q13, [x1, #192]
    ldp q14, q15, [x1, #224]
    ldp q16, q17, [x1, #256]
    ldp q18, q19, [x1, #288]
    ldp q20, q21, [x1, #320]
    ldp q22, q23, [x1, #352]
    ldp q24, q25, [x1, #384]
    ldp q26, q27, [x1, #416]
    ldp q28, q29, [x1, #448]
    ldp q30, q31, [x1, #480]
    ldr x1, [x0, #272]
    msr tpidr_el0, x1
    ldp x1, x2, [x0, #256]
    msr elr_el1, x1
    msr spsr_el1, x2
    ldr x1, [x0, #248]
    mov sp, x1
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x8, x9, [x0, #64]
    ldp x10, x11, [x0, #80]
    ldp x12, x13, [x0, #96]
    ldp x14, x15, [x0, #112]
    ldp x16, x17, [x0, #128]
    ldp x18, x19, [x0, #144]
    ldp x20, x21, [x0, #160]
    ldp x22, x23, [x0, #176]
    ldp x24, x25, [x0, #192]
    ldp x26, x27, [x0, #208]
    ldp x28, x29, [x0, #224]
    ldr x30, [x0, #240]
    ldp x0, x1, [x0, #0]
    eret

kiln_exc_common:
    sub sp, sp, #240
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x19, [sp, #144]
    stp x20, x21, [sp, #160]
    stp x22, x23, [sp, #176]
    stp x24, x25, [sp, #192]
    stp x26, x27, [sp, #208]
    str x28, [sp, #224]
    /* The vector registers too: a page fault a Linux program takes is
     * served by Rust code (built with FP/SIMD) and the program goes on. */
    sub sp, sp, #528
    stp q0, q1, [sp, #0]
    stp q2, q3, [sp, #32]
    stp q4, q5, [sp, #64]
    stp q6, q7, [sp, #96]
    stp q8, q9, [sp, #128]
    stp q10, q11, [sp, #160]
    stp q12, q13, [sp, #192]
    stp q14, q15, [sp, #224]
    stp q16, q17, [sp, #256]
    stp q18, q19, [sp, #288]
    stp q20, q21, [sp, #320]
    stp q22, q23, [sp, #352]
    stp q24, q25, [sp, #384]
    stp q26, q27, [sp, #416]
    stp q28, q29, [sp, #448]
    stp q30, q31, [sp, #480]
    mrs x2, fpsr
    mrs x3, fpcr
    add x0, sp, #512
    stp x2, x3, [x0]
    add x0, sp, #528
    mov x1, x29
    bl kiln_arch_exception
    cbnz x0, kiln_irq_preempt
    add x0, sp, #512
    ldp x2, x3, [x0]
    msr fpsr, x2
    msr fpcr, x3
    ldp q0, q1, [sp, #0]
    ldp q2, q3, [sp, #32]
    ldp q4, q5, [sp, #64]
    ldp q6, q7, [sp, #96]
    ldp q8, q9, [sp, #128]
    ldp q10, q11, [sp, #160]
    ldp q12, q13, [sp, #192]
    ldp q14, q15, [sp, #224]
    ldp q16, q17, [sp, #256]
    ldp q18, q19, [sp, #288]
    ldp q20, q21, [sp, #320]
    ldp q22, q23, [sp, #352]
    ldp q24, q25, [sp, #384]
    ldp q26, q27, [sp, #416]
    ldp q28, q29, [sp, #448]
    ldp q30, q31, [sp, #480]
    add sp, sp, #528
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x19, [sp, #144]
    ldp x20, x21, [sp, #160]
    ldp x22, x23, [sp, #176]
    ldp x24, x25, [sp, #192]
    ldp x26, x27, [sp, #208]
    ldr x28, [sp, #224]
    add sp, sp, #240
    ldp x29, x30, [sp], #16
    eret

/* An interrupt preempts a program (kiln_arch_exception returned 1; see
 * preempt.rs). The exception stack holds q0-q31 (0-511), fpsr and fpcr
 * (512, 520), x0-x28 (528-759) and x29/x30 (768, 776). They become a
 * SyscallFrame at the thread's kernel stack top, with SP_EL0, ELR, SPSR and
 * TPIDR_EL0; the exception stack is left empty, and `eret` goes on to
 * kiln_preempted_entry at EL1 on SP_EL0 (the frame) with every interrupt
 * masked, as kernel code runs. */
kiln_irq_preempt:
    adrp x1, kiln_kstack_top
    ldr x1, [x1, :lo12:kiln_kstack_top]
    sub x2, x1, #816
    add x3, sp, #528
    mov x4, #0
1:  ldr x5, [x3, x4]
    str x5, [x2, x4]
    add x4, x4, #8
    cmp x4, #232
    b.lo 1b
    add x7, sp, #768
    ldp x5, x6, [x7]
    stp x5, x6, [x2, #232]
    mrs x5, sp_el0
    mrs x6, elr_el1
    stp x5, x6, [x2, #248]
    mrs x5, spsr_el1
    mrs x6, tpidr_el0
    stp x5, x6, [x2, #264]
    add x3, x2, #288
    mov x4, #0
2:  add x7, sp, x4
    ldp x5, x6, [x7]
    add x7, x3, x4
    stp x5, x6, [x7]
    add x4, x4, #16
    cmp x4, #512
    b.lo 2b
    add x7, sp, #512
    ldp x5, x6, [x7]
    add x7, x2, #800
    stp x6, x5, [x7]
    add sp, sp, #784
    msr sp_el0, x2
    adr x5, kiln_preempted_entry
    msr elr_el1, x5
    mov x5, #0x3c4
    msr spsr_el1, x5
    eret

kiln_preempted_entry:
    mov x19, sp
    mov x0, x19
    bl kiln_arch_preempted
    mov x0, x19
    add x1, x19, #816
    b kiln_svc_resume

/* Thread switch for lib/sched: callee-saved x19-x30 and d8-d15. */
.section .text.kiln_context, "ax"
.global kiln_context_switch
kiln_context_switch:
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x2, sp
    str x2, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
.global kiln_context_start
kiln_context_start:
    mov x0, x20
    blr x19
    brk #1
