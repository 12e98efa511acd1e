/* Exception entry stubs: one per CPU exception vector (0-31).
 * Each pushes a zero in place of the error code when the CPU pushes none, so
 * every exception reaches kiln_exc_common with the same frame layout:
 * vector, error code, then the CPU's interrupt frame. The common path saves
 * the general registers and calls kiln_arch_exception with a pointer to the
 * whole frame. Vectors 8, 10-14, 17, 21, 29 and
 * 30 have a CPU-pushed error code. */
.section .text.kiln_exc, "ax"
.code64
kiln_exc_0:
    push $0
    push $0
    jmp kiln_exc_common
kiln_exc_1:
    push $0
    push $1
    jmp kiln_exc_common
kiln_exc_2:
    push $0
    push $2
    jmp kiln_exc_common
kiln_exc_3:
    push $0
    push $3
    jmp kiln_exc_common
kiln_exc_4:
    push $0
    push $4
    jmp kiln_exc_common
kiln_exc_5:
    push $0
    push $5
    jmp kiln_exc_common
kiln_exc_6:
    push $0
    push $6
    jmp kiln_exc_common
kiln_exc_7:
    push $0
    push $7
    jmp kiln_exc_common
kiln_exc_8:
    push $8
    jmp kiln_exc_common
kiln_exc_9:
    push $0
    push $9
    jmp kiln_exc_common
kiln_exc_10:
    push $10
    jmp kiln_exc_common
kiln_exc_11:
    push $11
    jmp kiln_exc_common
kiln_exc_12:
    push $12
    jmp kiln_exc_common
kiln_exc_13:
    push $13
    jmp kiln_exc_common
kiln_exc_14:
    push $14
    jmp kiln_exc_common
kiln_exc_15:
    push $0
    push $15
    jmp kiln_exc_common
kiln_exc_16:
    push $0
    push $16
    jmp kiln_exc_common
kiln_exc_17:
    push $17
    jmp kiln_exc_common
kiln_exc_18:
    push $0
    push $18
    jmp kiln_exc_common
kiln_exc_19:
    push $0
    push $19
    jmp kiln_exc_common
kiln_exc_20:
    push $0
    push $20
    jmp kiln_exc_common
kiln_exc_21:
    push $21
    jmp kiln_exc_common
kiln_exc_22:
    push $0
    push $22
    jmp kiln_exc_common
kiln_exc_23:
    push $0
    push $23
    jmp kiln_exc_common
kiln_exc_24:
    push $0
    push $24
    jmp kiln_exc_common
kiln_exc_25:
    push $0
    push $25
    jmp kiln_exc_common
kiln_exc_26:
    push $0
    push $26
    jmp kiln_exc_common
kiln_exc_27:
    push $0
    push $27
    jmp kiln_exc_common
kiln_exc_28:
    push $0
    push $28
    jmp kiln_exc_common
kiln_exc_29:
    push $29
    jmp kiln_exc_common
kiln_exc_30:
    push $30
    jmp kiln_exc_common
kiln_exc_31:
    push $0
    push $31
    jmp kiln_exc_common

kiln_exc_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rbx
    mov %rsp, %rdi
    cld
    and $-16, %rsp
    call kiln_arch_exception
    /* Resolved (a program's page brought in): retry the instruction. */
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

.section .rodata.kiln_exc_table, "a"
.balign 8
.global kiln_exc_table
kiln_exc_table:
    .quad kiln_exc_0
    .quad kiln_exc_1
    .quad kiln_exc_2
    .quad kiln_exc_3
    .quad kiln_exc_4
    .quad kiln_exc_5
    .quad kiln_exc_6
    .quad kiln_exc_7
    .quad kiln_exc_8
    .quad kiln_exc_9
    .quad kiln_exc_10
    .quad kiln_exc_11
    .quad kiln_exc_12
    .quad kiln_exc_13
    .quad kiln_exc_14
    .quad kiln_exc_15
    .quad kiln_exc_16
    .quad kiln_exc_17
    .quad kiln_exc_18
    .quad kiln_exc_19
    .quad kiln_exc_20
    .quad kiln_exc_21
    .quad kiln_exc_22
    .quad kiln_exc_23
    .quad kiln_exc_24
    .quad kiln_exc_25
    .quad kiln_exc_26
    .quad kiln_exc_27
    .quad kiln_exc_28
    .quad kiln_exc_29
    .quad kiln_exc_30
    .quad kiln_exc_31
