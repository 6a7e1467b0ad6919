/* rendezvous_probe: the bare cost of bringing N threads into a signal handler and parking them
 * there, the way remus's epoch rendezvous does (DESIGN §8), without remus.
 *
 *   rendezvous_probe THREADS idle|busy SECONDS
 *
 * The main thread is the leader: each round it sends every other thread a real-time signal
 * with rt_tgsigqueueinfo, waits on a futex until all of them have counted themselves in from
 * their handler, then releases them (they wait on a second futex in the handler) and waits
 * ~2 ms for them to go back to what they were doing. Workers are "idle" (blocked in
 * epoll_wait on an empty set) or "busy" (spinning). Prints
 * "RESULT rounds=R p50_ns=X p99_ns=Y" for the time from the first signal to the last arrival.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SIG 40
#define MAXT 256

static atomic_uint arrived, released;
static pid_t tids[MAXT];
static atomic_int ready;
static int busy;

static void futex_wait(atomic_uint *w, unsigned v) {
    syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}
static void futex_wake(atomic_uint *w) { syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, MAXT, NULL, NULL, 0); }

static void on_sig(int sig, siginfo_t *info, void *uc) {
    (void)sig, (void)info, (void)uc;
    unsigned seen = atomic_load(&released);
    atomic_fetch_add(&arrived, 1);
    futex_wake(&arrived);
    while (atomic_load(&released) == seen) futex_wait(&released, seen);
}

static void *worker(void *arg) {
    int i = (int)(intptr_t)arg;
    tids[i] = (pid_t)syscall(SYS_gettid);
    atomic_fetch_add(&ready, 1);
    if (busy) {
        volatile uint64_t x = 0;
        for (;;) x++;
    }
    int ep = epoll_create1(0);
    struct epoll_event e;
    for (;;) epoll_wait(ep, &e, 1, -1);
    return NULL;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: rendezvous_probe THREADS idle|busy SECONDS\n");
        return 2;
    }
    int n = atoi(argv[1]);
    busy = !strcmp(argv[2], "busy");
    double secs = atof(argv[3]);
    if (n < 1 || n > MAXT) return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sig;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    sigaction(SIG, &sa, NULL);
    for (int i = 1; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, (void *)(intptr_t)i);
    }
    while (atomic_load(&ready) < n - 1) usleep(1000);
    usleep(20000);
    static uint64_t samples[100000];
    size_t k = 0;
    uint64_t end = now_ns() + (uint64_t)(secs * 1e9);
    pid_t pid = getpid();
    while (now_ns() < end && k < sizeof samples / sizeof samples[0]) {
        atomic_store(&arrived, 0);
        uint64_t t0 = now_ns();
        for (int i = 1; i < n; i++) {
            siginfo_t si;
            memset(&si, 0, sizeof si);
            si.si_signo = SIG;
            si.si_code = SI_QUEUE;
            si.si_pid = pid;
            si.si_value.sival_ptr = (void *)(uintptr_t)(k + 1);
            syscall(SYS_rt_tgsigqueueinfo, pid, tids[i], SIG, &si);
        }
        unsigned a;
        while ((a = atomic_load(&arrived)) < (unsigned)(n - 1)) futex_wait(&arrived, a);
        samples[k++] = now_ns() - t0;
        atomic_fetch_add(&released, 1);
        futex_wake(&released);
        usleep(2000);
    }
    qsort(samples, k, sizeof samples[0], cmp);
    printf("RESULT rounds=%zu p50_ns=%llu p99_ns=%llu\n", k, (unsigned long long)samples[k / 2],
           (unsigned long long)samples[k * 99 / 100]);
    return 0;
}
