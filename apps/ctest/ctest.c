/* C code in a Kiln kernel, as a test sees it: `ctest threads files float`
 * (any of them, in one boot), `ctest echo PORT` (a TCP echo server, a
 * thread per client, until a client sends "quit"). Each prints what it
 * found; the exit status is 0 when everything held. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            printf("FAILED %s:%d: %s (errno %d: %s)\n", __FILE__, __LINE__,   \
                   #c, errno, strerror(errno));                               \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long total;
/* Thread-local: initialised (.tdata) and zeroed (.tbss), one copy each. */
static __thread long mine = 7;
static __thread long counted;
static __thread char scratch[100];

static void *adder(void *arg)
{
    long n = (long)arg;
    CHECK(mine == 7 && counted == 0 && scratch[99] == 0);
    snprintf(scratch, sizeof scratch, "thread %p", (void *)&mine);
    for (long i = 1; i <= n; i++) {
        pthread_mutex_lock(&lock);
        total += i;
        pthread_mutex_unlock(&lock);
        mine++;
        counted++;
        if (i % 1000 == 0)
            sched_yield();
    }
    /* Other threads ran in between: this thread's copies are its own. */
    char want[100];
    snprintf(want, sizeof want, "thread %p", (void *)&mine);
    CHECK(mine == 7 + n && counted == n && strcmp(scratch, want) == 0);
    return (void *)(n * 2);
}

static int threads(void)
{
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
        CHECK(pthread_create(&t[i], NULL, adder, (void *)10000) == 0);
    for (int i = 0; i < 8; i++) {
        void *r;
        CHECK(pthread_join(t[i], &r) == 0);
        CHECK((long)r == 20000);
    }
    printf("threads: 8 threads summed %ld\n", total);
    CHECK(total == 8L * 10000 * 10001 / 2);
    /* The main thread's thread-locals are untouched by the others'. */
    CHECK(mine == 7 && counted == 0 && scratch[0] == 0);
    printf("threads: __thread kept per thread\n");
    return 0;
}

static int files(void)
{
    mkdir("/tmp", 0755);
    FILE *f = fopen("/tmp/c.txt", "w");
    CHECK(f != NULL);
    for (int i = 0; i < 1000; i++)
        fprintf(f, "line %d\n", i);
    CHECK(fclose(f) == 0);
    struct stat st;
    CHECK(stat("/tmp/c.txt", &st) == 0);
    CHECK(rename("/tmp/c.txt", "/tmp/d.txt") == 0);
    CHECK(access("/tmp/c.txt", F_OK) != 0 && errno == ENOENT);
    f = fopen("/tmp/d.txt", "r");
    CHECK(f != NULL);
    char line[64];
    int n = 0, last = -1;
    while (fgets(line, sizeof line, f)) {
        CHECK(sscanf(line, "line %d", &last) == 1);
        n++;
    }
    fclose(f);
    int fd = open("/tmp/d.txt", O_RDWR | O_APPEND);
    CHECK(fd >= 0);
    CHECK(write(fd, "end\n", 4) == 4);
    CHECK(lseek(fd, 0, SEEK_END) == st.st_size + 4);
    close(fd);
    printf("files: %d lines, last %d, %lld bytes\n", n, last, (long long)st.st_size);
    CHECK(n == 1000 && last == 999);
    return 0;
}

static volatile double sink;

static int fp(void)
{
    double x = 0;
    for (int i = 1; i <= 1000; i++)
        x += 1.0 / ((double)i * i);
    sink = x;
    double pi = sqrt(6 * sink);
    float f = sinf(0.5f);
    char buf[64];
    snprintf(buf, sizeof buf, "%.5f %.4f %g", pi, f, strtod("2.5e3", NULL));
    printf("float: %s %.3f\n", buf, exp(log(10.0)));
    CHECK(strcmp(buf, "3.14064 0.4794 2500") == 0);
    CHECK(fabs(exp(log(10.0)) - 10.0) < 1e-9);
    return 0;
}

static volatile int quit;

static void *serve(void *arg)
{
    int c = (int)(long)arg;
    char buf[512];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) {
        if (n >= 4 && memcmp(buf, "quit", 4) == 0)
            quit = 1;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, n - off);
            if (w <= 0)
                goto done;
            off += w;
        }
    }
done:
    close(c);
    return NULL;
}

static int echo(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(s >= 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(s, 64) == 0);
    printf("echo: listening on %d\n", port);
    fflush(stdout);
    int clients = 0;
    while (!quit) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int c = accept(s, (struct sockaddr *)&peer, &len);
        CHECK(c >= 0);
        clients++;
        pthread_t t;
        CHECK(pthread_create(&t, NULL, serve, (void *)(long)c) == 0);
        pthread_detach(t);
    }
    printf("echo: served %d clients\n", clients);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: ctest [threads] [files] [float] | ctest echo PORT\n");
        return 2;
    }
    if (!strcmp(argv[1], "echo") && argc > 2)
        return echo(atoi(argv[2]));
    /* Any of the others, in the order given, in one boot. */
    for (int i = 1; i < argc; i++) {
        int r;
        if (!strcmp(argv[i], "threads"))
            r = threads();
        else if (!strcmp(argv[i], "files"))
            r = files();
        else if (!strcmp(argv[i], "float"))
            r = fp();
        else {
            printf("ctest: unknown test %s\n", argv[i]);
            return 2;
        }
        if (r != 0)
            return r;
    }
    return 0;
}
