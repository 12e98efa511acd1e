/* kiln.h: Kiln's own API for C code in a Kiln kernel, where libc has no
 * word for it. Everything else is standard C and POSIX (musl). */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A kernel parameter from the command line (`name=value`, as `kiln run
 * -a` or a Kraftfile's `boot:` set passes it), or NULL when it is not
 * there. A parameter given without a value reads "". The string lives
 * as long as the kernel. */
const char *kiln_param(const char *name);

/* A Kconfig value as the kernel was built with it ("y", "42", a string),
 * or NULL for a symbol that is unset or n. The same values reach C code
 * at compile time as CONFIG_<SYMBOL> defines. */
const char *kiln_config(const char *symbol);

/* What the boot took and what memory the kernel has. */
struct kiln_boot_stats {
    /* Microseconds from the kernel's first instruction to the app's main
     * (0 when the platform's clock rate is unknown). */
    uint64_t boot_us;
    /* Microseconds since the kernel's first instruction. */
    uint64_t uptime_us;
    /* The kernel heap: bytes it manages, in use now, at most so far. */
    uint64_t heap_total;
    uint64_t heap_in_use;
    uint64_t heap_peak;
};

/* Fills *out; returns 0, or -1 when out is NULL. */
int kiln_boot_stats(struct kiln_boot_stats *out);

/* The platform's name ("qemu/x86_64 (microvm)"...). */
const char *kiln_platform(void);

#ifdef __cplusplus
}
#endif

#endif
