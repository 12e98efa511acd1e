/* A C app for Kiln: prints its greeting (a Kconfig value), its arguments
 * and environment, and a little of what kiln.h tells; exits with the
 * status given as `exit=N` in the environment. */
#include <kiln.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    printf("%s\n", CONFIG_APP_HELLO_C_GREETING);
    for (int i = 0; i < argc; i++)
        printf("argv[%d] = %s\n", i, argv[i]);
    const char *name = getenv("NAME");
    printf("NAME = %s\n", name ? name : "(unset)");

    /* Floating point, through musl's libm. */
    printf("sqrt(2) = %.6f\n", sqrt(2.0));

    struct kiln_boot_stats s;
    if (kiln_boot_stats(&s) == 0)
        printf("heap: %llu KiB in use of %llu KiB\n",
               (unsigned long long)(s.heap_in_use / 1024),
               (unsigned long long)(s.heap_total / 1024));
    const char *libc = kiln_config("LIBC");
    printf("LIBC = %s\n", libc ? libc : "(unset)");

    const char *status = getenv("exit");
    return status ? atoi(status) : 0;
}
