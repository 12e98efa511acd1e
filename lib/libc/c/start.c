/* The C runtime's entry in a Kiln kernel.
 *
 * lib/libc enters kiln_libc_start as the ELF loader enters a program: on
 * a stack holding argc, argv, envp and the auxiliary vector. musl's
 * __libc_start_main sets up the runtime (thread pointer, stdio, the
 * stack protector's canary, constructors), calls kiln_libc_main (Rust:
 * the app's main) and exits with what it returns, flushing stdio. */

int __libc_start_main(int (*main)(int, char **, char **), int argc, char **argv,
                      void (*init)(void), void (*fini)(void), void (*ldso)(void));
int kiln_libc_main(int argc, char **argv, char **envp);

__attribute__((noreturn, used)) void kiln_libc_start_c(long *sp)
{
    __libc_start_main(kiln_libc_main, (int)sp[0], (char **)(sp + 1), 0, 0, 0);
    __builtin_unreachable();
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".global kiln_libc_start\n"
        ".type kiln_libc_start, @function\n"
        "kiln_libc_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call kiln_libc_start_c\n"
        "  ud2\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".global kiln_libc_start\n"
        ".type kiln_libc_start, %function\n"
        "kiln_libc_start:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  mov x0, sp\n"
        "  and x1, x0, #-16\n"
        "  mov sp, x1\n"
        "  bl kiln_libc_start_c\n"
        "  udf #0\n");
#else
#error "Kiln's C runtime supports x86_64 and aarch64"
#endif
