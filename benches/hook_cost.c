/* hook_cost: the cost per call of a few hooked libc calls, and of what a hook bracket could be
 * made of, measured from inside the app (run bare, then under the shim, by benches/hook_cost.rs).
 *
 *   hook_cost ROUNDS CALLS_PER_ROUND [MAX_SECONDS]
 *
 * Kinds, each timed over CALLS_PER_ROUND calls per round, the kinds taking turns round after
 * round so that the machine's load drifts over all of them alike:
 *
 *   close      close(-1): fails with EBADF; the shim's hook does nothing but its bracket
 *              (descriptor -1 is never a held socket) around the real call.
 *   write      write(fd, buf, 1) on /dev/null: a pass-through call (not a regular file, not a
 *              socket), so only the hook's checks are added.
 *   send       send(fd, buf, 1, 0) on a connected loopback TCP socket: under protection the byte
 *              goes into the output log and the kernel never sees the send. The peer (the other
 *              end, in this process) is drained between rounds, outside the timing.
 *   sigmask2   two rt_sigprocmask system calls: block every signal, then put the old mask back.
 *              What the mask design of the bracket would add to every hooked call.
 *   atomic2    the bracket's own work around a call that does not open it: the hook depth up
 *              (fetch_add) and down (fetch_sub, then the two relaxed loads of the pending flags
 *              at depth 0), on globals shaped like the shim's.
 *   atomic4    the same with the real call opened inside (`real!`): down and up again around it,
 *              i.e. two more read-modify-writes, as in the close and write hooks.
 *
 * Under the shim (LD_PRELOAD names libremus), it first waits for the shim's staging area to be
 * mapped and its epoch number to reach 3 (the first images shipped), and a round during which the number changed (an epoch paused
 * the app) is not kept. Prints one line per kind:
 *   RESULT kind=K ns_x100=.. kept=.. rounds=..
 * (ns per call times 100: the median over the kept rounds) and one line
 *   DONE protected=0|1 epochs=.. seconds=..
 * The run ends after ROUNDS rounds or MAX_SECONDS (default 30), whichever comes first.
 * HOOK_COST_ONLY=KIND in the environment times that kind alone (the others print 0).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "staging.h"

enum { K_CLOSE, K_WRITE, K_SEND, K_SIGMASK2, K_ATOMIC2, K_ATOMIC4, N_KINDS };
static const char *const NAMES[N_KINDS] = {"close", "write", "send", "sigmask2", "atomic2", "atomic4"};

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The shim's staging area (see pause_app.c), or NULL. */
static const volatile unsigned char *staging;


static uint64_t read_epoch(void) { return staging_epoch(staging); }

/* Shaped like the shim's HOOK_DEPTH, PENDING and DEFERRED (base/state.rs). */
static _Atomic uint32_t depth;
static _Atomic uint32_t pending;
static _Atomic uint64_t deferred;
static uint64_t sink;

static inline void raise_depth(void) { atomic_fetch_add_explicit(&depth, 1, memory_order_acq_rel); }

static inline void lower_depth(void) {
    if (atomic_fetch_sub_explicit(&depth, 1, memory_order_acq_rel) == 1) {
        if (atomic_load_explicit(&pending, memory_order_relaxed)) sink++;
        if (atomic_load_explicit(&deferred, memory_order_relaxed)) sink++;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* A connected loopback TCP pair: *tx sends, *rx is the peer. */
static void tcp_pair(int *tx, int *rx) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &len))
        die("listen");
    *tx = socket(AF_INET, SOCK_STREAM, 0);
    if (*tx < 0 || connect(*tx, (struct sockaddr *)&a, sizeof a)) die("connect");
    *rx = accept(l, NULL, NULL);
    if (*rx < 0) die("accept");
    close(l);
}

/* Reads whatever has arrived at the peer, without waiting. */
static void drain(int rx) {
    static char buf[65536];
    for (int i = 0; i < 1024; i++) {
        if (recv(rx, buf, sizeof buf, MSG_DONTWAIT) <= 0) return;
    }
}

static void run(int kind, long n, int null_fd, int tx) {
    static char byte = 'x';
    switch (kind) {
    case K_CLOSE:
        for (long i = 0; i < n; i++) {
            if (close(-1) != -1) exit(3);
        }
        break;
    case K_WRITE:
        for (long i = 0; i < n; i++) {
            if (write(null_fd, &byte, 1) != 1) die("write /dev/null");
        }
        break;
    case K_SEND:
        for (long i = 0; i < n; i++) {
            if (send(tx, &byte, 1, 0) != 1) die("send");
        }
        break;
    case K_SIGMASK2: {
        uint64_t all = ~0ull, old = 0;
        for (long i = 0; i < n; i++) {
            if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, &old, 8) ||
                syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, 8))
                die("rt_sigprocmask");
        }
        break;
    }
    case K_ATOMIC2:
        for (long i = 0; i < n; i++) {
            raise_depth();
            lower_depth();
        }
        break;
    case K_ATOMIC4:
        for (long i = 0; i < n; i++) {
            raise_depth();
            lower_depth(); /* the real call opened */
            raise_depth();
            lower_depth();
        }
        break;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: hook_cost ROUNDS CALLS_PER_ROUND [MAX_SECONDS]\n");
        return 2;
    }
    long rounds = strtol(argv[1], NULL, 10);
    long calls = strtol(argv[2], NULL, 10);
    uint64_t max_ns = (argc > 3 ? strtoull(argv[3], NULL, 10) : 30) * 1000000000ull;
    if (rounds <= 0 || calls <= 0 || rounds > 100000) {
        fprintf(stderr, "hook_cost: ROUNDS (at most 100000) and CALLS_PER_ROUND must be positive\n");
        return 2;
    }
    int null_fd = open("/dev/null", O_WRONLY);
    if (null_fd < 0) die("open /dev/null");
    int tx, rx;
    tcp_pair(&tx, &rx);

    uint64_t t_start = now_ns();
    const char *preload = getenv("LD_PRELOAD");
    if (preload && strstr(preload, "libremus")) {
        /* Under the shim: the staging area may be set up after main starts; wait for it and
         * for the first images to be past. Bounded by the clock. */
        struct timespec ms = {0, 1000000};
        while ((!staging || read_epoch() < 3) && now_ns() - t_start < 20000000000ull) {
            if (!staging) staging = find_staging();
            nanosleep(&ms, NULL);
        }
        if (read_epoch() < 3) {
            fprintf(stderr, "hook_cost: no staging area or no third epoch within 20 s\n");
            return 4;
        }
    }
    uint64_t first_epoch = read_epoch();

    uint64_t *ns[N_KINDS];
    long kept[N_KINDS] = {0};
    for (int k = 0; k < N_KINDS; k++) {
        ns[k] = calloc((size_t)rounds, sizeof(uint64_t));
        if (!ns[k]) die("calloc");
    }
    /* Warm-up: resolve the real functions, classify the socket. */
    for (int k = 0; k < N_KINDS; k++) run(k, 100, null_fd, tx);
    drain(rx);

    /* HOOK_COST_ONLY=KIND times that kind alone (to look at it with strace or perf). */
    const char *only = getenv("HOOK_COST_ONLY");
    uint64_t t0 = now_ns();
    long r;
    /* Bounded by ROUNDS and by the clock. */
    for (r = 0; r < rounds && now_ns() - t0 < max_ns; r++) {
        for (int k = 0; k < N_KINDS; k++) {
            if (only && strcmp(only, NAMES[k]) != 0) continue;
            uint64_t e = read_epoch();
            uint64_t a = now_ns();
            run(k, calls, null_fd, tx);
            uint64_t b = now_ns();
            if (read_epoch() == e) ns[k][kept[k]++] = (b - a) * 100 / (uint64_t)calls;
        }
        drain(rx);
    }
    for (int k = 0; k < N_KINDS; k++) {
        qsort(ns[k], (size_t)kept[k], sizeof(uint64_t), cmp_u64);
        printf("RESULT kind=%s ns_x100=%llu kept=%ld rounds=%ld\n", NAMES[k],
               (unsigned long long)(kept[k] ? ns[k][kept[k] / 2] : 0), kept[k], r);
    }
    printf("DONE protected=%d epochs=%llu seconds=%.1f sink=%llu\n", staging != NULL,
           (unsigned long long)(read_epoch() - first_epoch), (double)(now_ns() - t0) / 1e9,
           (unsigned long long)sink);
    fflush(stdout);
    return 0;
}
