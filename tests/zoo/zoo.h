/* Shared by the zoo programs: each sets up one kind of kernel state, says "ready", waits
 * (looping on short sleeps) until the test creates the stop file, which the test does only
 * after the primary side was killed and the standby restored the program; then it checks
 * the state from inside and prints `ZOO <name> OK` or `ZOO <name> FAIL <why>` (exit 0/1). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *zoo_name = "?";
static const char *zoo_stop = NULL;
static pid_t zoo_pid0;
static unsigned long long zoo_start0;

/* This process's start time (field 22 of /proc/self/stat, clock ticks since boot): a
 * restored program is another process with the same pid (restore gives every thread its own
 * id back), so this is how a program tells it was failed over. */
static unsigned long long zoo_starttime(void) {
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* After ") ": state is field 3; starttime is field 22. */
    p += 2;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

static void zoo_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("ZOO %s FAIL ", zoo_name);
    vprintf(fmt, ap);
    printf(" (errno %d %s)\n", errno, strerror(errno));
    va_end(ap);
    fflush(stdout);
    exit(1);
}

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond))                                                                         \
            zoo_fail(__VA_ARGS__);                                                           \
    } while (0)

/* Parses `--stop-file PATH` out of argv (anywhere); returns the remaining argc. */
static int zoo_init(const char *name, int argc, char **argv) {
    zoo_name = name;
    zoo_pid0 = getpid();
    zoo_start0 = zoo_starttime();
    int out = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--stop-file") == 0 && i + 1 < argc) {
            zoo_stop = argv[++i];
        } else {
            argv[out++] = argv[i];
        }
    }
    CHECK(zoo_stop != NULL, "usage: %s [args] --stop-file PATH", argv[0]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    return out;
}

static void zoo_ready(void) {
    printf("start ready pid %d\n", (int)getpid());
    fflush(stdout);
}

static int zoo_stopped(void) {
    return access(zoo_stop, F_OK) == 0;
}

__attribute__((unused)) static void zoo_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The program runs as another process than the one started (it was failed over), with the
 * same pid. Fails otherwise, so a check never passes on the primary by accident. */
__attribute__((unused)) static void zoo_check_restored(void) {
    CHECK(zoo_starttime() != zoo_start0,
          "stop file seen but the program was never restored (pid %d, started at tick %llu)",
          (int)getpid(), zoo_start0);
    CHECK(getpid() == zoo_pid0, "restored with pid %d instead of its own %d", (int)getpid(),
          (int)zoo_pid0);
}

/* Waits for the stop file; requires that the program now runs as another process (it was
 * failed over), so a check never passes on the primary by accident. */
__attribute__((unused)) static void zoo_wait(void) {
    while (!zoo_stopped())
        zoo_sleep_ms(5);
    zoo_check_restored();
}

static void zoo_ok(void) {
    printf("ZOO %s OK\n", zoo_name);
    fflush(stdout);
    exit(0);
}

/* The value of `key` in /proc/self/fdinfo/FD (the rest of its line), or NULL. */
__attribute__((unused)) static char *zoo_fdinfo(int fd, const char *key) {
    static char buf[65536];
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    if (f < 0)
        return NULL;
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0)
        return NULL;
    buf[n] = 0;
    char *p = strstr(buf, key);
    if (!p)
        return NULL;
    p += strlen(key);
    while (*p == ' ' || *p == '\t')
        p++;
    char *e = strchr(p, '\n');
    if (e)
        *e = 0;
    return p;
}

#include <poll.h>
#include <sys/socket.h>

/* Serves clients of the listening socket `l` until the stop file appears: reads a line and
 * answers `ZOO-ANSWER <name> <secret>`. Returns how many were served. */
__attribute__((unused)) static int zoo_serve(int l, unsigned long secret) {
    int served = 0;
    while (!zoo_stopped()) {
        struct pollfd pf = {.fd = l, .events = POLLIN};
        if (poll(&pf, 1, 10) != 1)
            continue;
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue;
        fcntl(c, F_SETFL, 0);
        char line[128];
        ssize_t n = read(c, line, sizeof line - 1);
        if (n > 0) {
            char reply[128];
            int k = snprintf(reply, sizeof reply, "ZOO-ANSWER %s %lu\n", zoo_name, secret);
            if (write(c, reply, (size_t)k) == k)
                served++;
        }
        close(c);
    }
    zoo_check_restored();
    return served;
}

/* A connected socket whose peer is gone: reads see end-of-file, writes fail with EPIPE. */
__attribute__((unused)) static void zoo_check_closed_peer(int fd, const char *what) {
    char b[8];
    fcntl(fd, F_SETFL, O_NONBLOCK);
    ssize_t n = read(fd, b, sizeof b);
    CHECK(n == 0, "%s: read gave %zd, not end-of-file", what, n);
    signal(SIGPIPE, SIG_IGN);
    n = write(fd, "x", 1);
    CHECK(n < 0 && (errno == EPIPE || errno == ECONNRESET), "%s: write gave %zd", what, n);
}
