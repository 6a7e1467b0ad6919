/* pthread_zoo: a multi-threaded program that checks, every iteration, what a restore with other
 * thread ids (or without each thread's own kernel registrations) would break.
 *
 *   pthread_zoo ITERATIONS [--stop-file PATH] [--sleep-us N]
 *
 * Threads: workers with TLS counters and a normal mutex; a holder of a recursive mutex that
 * relocks it; an owner of an error-checking mutex that unlocks it (EPERM if its thread id
 * changed); short threads that lock a robust mutex and die holding it (the next locker must get
 * EOWNERDEAD); a producer/consumer pair on a condition variable; a thread blocked in read() on a
 * pipe; one in epoll_wait() on an eventfd; threads created and joined every iteration;
 * pthread_kill() of a worker; sched_getcpu() (rseq) checked against getcpu after pinning; a
 * thread that keeps SIGUSR2 blocked for 40 ms after main sends it one (a signal pending at
 * almost every checkpoint: the restored thread must still get it when it unblocks); SIGHUP,
 * blocked in every thread, sent to the process and taken by a thread that sigwait()s for it
 * 40 ms later (pending for the process, not a thread, at the checkpoint).
 *
 * Prints "start pid P threads N", then "iter i ok" after every iteration's checks, "MISMATCH
 * what at iter i ..." and exit 1 on a failed check, "done N" at the end (exit 0). ITERATIONS 0
 * runs until PATH (--stop-file) exists.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 3

static uint64_t iter;
static const char *stop_file;

static void fail(const char *what, const char *detail) {
    printf("MISMATCH %s at iter %llu: %s\n", what, (unsigned long long)iter, detail);
    fflush(stdout);
    exit(1);
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits (bounded) until *word reaches want. */
static void wait_for(atomic_ullong *word, unsigned long long want, const char *what) {
    uint64_t t0 = now_ms();
    while (atomic_load(word) < want) {
        if (now_ms() - t0 > 10000) {
            char d[96];
            snprintf(d, sizeof d, "%llu < %llu after 10 s", (unsigned long long)atomic_load(word), want);
            fail(what, d);
        }
        sleep_us(200);
    }
}

/* --- workers: TLS, a normal mutex, pthread_kill --- */
static __thread uint64_t tls_count;
static __thread uint64_t tls_tag;
static pthread_mutex_t normal = PTHREAD_MUTEX_INITIALIZER;
static uint64_t shared_count, shared_twice;
static atomic_ullong worker_seen[WORKERS];
static atomic_ullong worker_signals[WORKERS];
static pthread_t worker_th[WORKERS];
static __thread int my_index = -1;

static void on_usr1(int sig) {
    (void)sig;
    if (my_index >= 0) atomic_fetch_add(&worker_signals[my_index], 1);
}

static void *worker(void *arg) {
    int i = (int)(intptr_t)arg;
    my_index = i;
    tls_tag = 0x1000 + i;
    for (;;) {
        pthread_mutex_lock(&normal);
        if (shared_twice != shared_count * 2) fail("normal-mutex", "shared pair torn");
        shared_count++;
        shared_twice += 2;
        pthread_mutex_unlock(&normal);
        tls_count++;
        if (tls_tag != (uint64_t)(0x1000 + i)) fail("tls", "a worker's TLS tag changed");
        atomic_store(&worker_seen[i], tls_count);
        sleep_us(300);
    }
    return NULL;
}

/* --- a signal pending across checkpoints: main sends SIGUSR2 to a thread that keeps it
 * blocked for 40 ms, then takes it --- */
static atomic_ullong pend_sent, pend_got;
static pthread_t pender_th;
static void on_usr2(int sig) {
    (void)sig;
    atomic_fetch_add(&pend_got, 1);
}
static void *pender(void *arg) {
    (void)arg;
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    for (;;) {
        while (atomic_load(&pend_got) == atomic_load(&pend_sent)) sleep_us(200);
        sleep_us(40000); /* pending, blocked: checkpoints happen now */
        pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
        pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    }
    return NULL;
}

/* --- a signal pending for the process: every thread blocks SIGHUP, main sends it to the
 * process, and one thread sigwait()s for it 40 ms later --- */
static atomic_ullong hup_sent, hup_got;
static void *hup_waiter(void *arg) {
    (void)arg;
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    for (;;) {
        int sig = 0;
        sleep_us(40000); /* pending for the process meanwhile */
        if (sigwait(&hup, &sig) == 0 && sig == SIGHUP) atomic_fetch_add(&hup_got, 1);
    }
    return NULL;
}

/* --- a recursive mutex held and relocked by its owner --- */
static pthread_mutex_t recursive;
static atomic_ullong rec_rounds;
static void *rec_holder(void *arg) {
    (void)arg;
    for (;;) {
        if (pthread_mutex_lock(&recursive)) fail("recursive", "lock failed");
        sleep_us(500);
        int r = pthread_mutex_trylock(&recursive); /* the owner relocks: needs its own tid */
        if (r) {
            char d[64];
            snprintf(d, sizeof d, "owner relock returned %d", r);
            fail("recursive", d);
        }
        pthread_mutex_unlock(&recursive);
        pthread_mutex_unlock(&recursive);
        atomic_fetch_add(&rec_rounds, 1);
        sleep_us(200);
    }
    return NULL;
}

/* --- an error-checking mutex: its owner unlocks it --- */
static pthread_mutex_t errcheck;
static atomic_ullong err_rounds;
static atomic_int err_held;
static void *err_owner(void *arg) {
    (void)arg;
    for (;;) {
        if (pthread_mutex_lock(&errcheck)) fail("errorcheck", "lock failed");
        atomic_store(&err_held, 1);
        sleep_us(700);
        atomic_store(&err_held, 0);
        int r = pthread_mutex_unlock(&errcheck);
        if (r) {
            char d[64];
            snprintf(d, sizeof d, "owner unlock returned %d", r);
            fail("errorcheck", d);
        }
        atomic_fetch_add(&err_rounds, 1);
        sleep_us(100);
    }
    return NULL;
}

/* --- a robust mutex whose owner dies --- */
static pthread_mutex_t robust;
static void *robust_dier(void *arg) {
    (void)arg;
    pthread_mutex_lock(&robust);
    return NULL; /* dies holding it */
}

/* --- condition variable: producer/consumer --- */
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static uint64_t q_items[64];
static int q_len;
static uint64_t q_next_put = 1;
static atomic_ullong q_taken;
static void *consumer(void *arg) {
    (void)arg;
    uint64_t want = 1;
    for (;;) {
        pthread_mutex_lock(&q_lock);
        while (q_len == 0) pthread_cond_wait(&q_cond, &q_lock);
        uint64_t v = q_items[0];
        memmove(q_items, q_items + 1, (size_t)(q_len - 1) * sizeof q_items[0]);
        q_len--;
        pthread_mutex_unlock(&q_lock);
        if (v != want) {
            char d[64];
            snprintf(d, sizeof d, "got %llu want %llu", (unsigned long long)v, (unsigned long long)want);
            fail("condvar-queue", d);
        }
        want++;
        atomic_store(&q_taken, v);
    }
    return NULL;
}

/* --- a thread blocked in read() on a pipe --- */
static int pipe_fd[2];
static atomic_ullong pipe_bytes;
static void *pipe_reader(void *arg) {
    (void)arg;
    for (;;) {
        char c;
        ssize_t n = read(pipe_fd[0], &c, 1);
        if (n == 1) {
            if (c != 'x') fail("pipe", "wrong byte");
            atomic_fetch_add(&pipe_bytes, 1);
        } else if (n < 0 && errno != EINTR) {
            fail("pipe", strerror(errno));
        }
    }
    return NULL;
}

/* --- a thread in epoll_wait() on an eventfd --- */
static int efd, epfd;
static atomic_ullong ev_count;
static void *epoller(void *arg) {
    (void)arg;
    for (;;) {
        struct epoll_event ev;
        int n = epoll_wait(epfd, &ev, 1, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll", strerror(errno));
        }
        if (n == 1) {
            if (ev.data.u64 != 0xfeed) fail("epoll", "wrong data word");
            uint64_t v;
            if (read(efd, &v, sizeof v) == sizeof v) atomic_fetch_add(&ev_count, v);
        }
    }
    return NULL;
}

/* --- short threads, created and joined --- */
static void *square(void *arg) {
    uintptr_t x = (uintptr_t)arg;
    return (void *)(x * x);
}

/* --- rseq: sched_getcpu() follows the thread when it is pinned --- */
static void check_cpu(void) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 2) return;
    for (int cpu = 0; cpu < 2; cpu++) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set)) return; /* not allowed here: nothing to check */
        int got = sched_getcpu();
        if (got != cpu) {
            char d[96];
            snprintf(d, sizeof d, "pinned to cpu %d, sched_getcpu() says %d", cpu, got);
            fail("rseq-getcpu", d);
        }
    }
    cpu_set_t all;
    CPU_ZERO(&all);
    for (int c = 0; c < ncpu && c < CPU_SETSIZE; c++) CPU_SET(c, &all);
    sched_setaffinity(0, sizeof all, &all);
}

static int count_threads(void) {
    char buf[4096];
    FILE *f = fopen("/proc/self/status", "r");
    int n = 0;
    if (!f) return 0;
    while (fgets(buf, sizeof buf, f))
        if (sscanf(buf, "Threads: %d", &n) == 1) break;
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: pthread_zoo ITERATIONS [--stop-file PATH] [--sleep-us N]\n");
        return 2;
    }
    uint64_t target = strtoull(argv[1], NULL, 10);
    long sleep = 2000;
    for (int a = 2; a < argc; a++) {
        if (a + 1 < argc && !strcmp(argv[a], "--stop-file")) stop_file = argv[++a];
        else if (a + 1 < argc && !strcmp(argv[a], "--sleep-us")) sleep = atol(argv[++a]);
        else {
            fprintf(stderr, "pthread_zoo: unknown argument %s\n", argv[a]);
            return 2;
        }
    }
    if (target == 0 && !stop_file) {
        fprintf(stderr, "pthread_zoo: ITERATIONS 0 needs --stop-file\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&recursive, &ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&errcheck, &ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_NORMAL);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&robust, &ma);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);

    if (pipe(pipe_fd)) return 1;
    efd = eventfd(0, EFD_NONBLOCK);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0xfeed};
    epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev);

    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hup, NULL); /* inherited by every thread created below */

    pthread_t t;
    for (int i = 0; i < WORKERS; i++) pthread_create(&worker_th[i], NULL, worker, (void *)(intptr_t)i);
    pthread_create(&t, NULL, rec_holder, NULL);
    pthread_create(&t, NULL, err_owner, NULL);
    pthread_create(&t, NULL, consumer, NULL);
    pthread_create(&t, NULL, pipe_reader, NULL);
    pthread_create(&t, NULL, epoller, NULL);
    pthread_create(&pender_th, NULL, pender, NULL);
    pthread_create(&t, NULL, hup_waiter, NULL);

    printf("start pid %d threads %d\n", (int)getpid(), count_threads());
    uint64_t pipe_written = 0, ev_written = 0;
    unsigned long long seen_before[WORKERS];
    for (iter = 1; target == 0 || iter <= target; iter++) {
        if (stop_file && access(stop_file, F_OK) == 0) break;
        for (int i = 0; i < WORKERS; i++) seen_before[i] = atomic_load(&worker_seen[i]);
        unsigned long long rec0 = atomic_load(&rec_rounds), err0 = atomic_load(&err_rounds);

        /* the error-checking mutex, held by its owner: anyone else's unlock is EPERM */
        if (atomic_load(&err_held)) {
            int r = pthread_mutex_unlock(&errcheck);
            if (r != EPERM && r != 0) fail("errorcheck", "a non-owner unlock did not return EPERM");
            if (r == 0 && atomic_load(&err_held)) fail("errorcheck", "a non-owner unlocked it");
        }
        /* the robust mutex: every 20 iterations an owner dies holding it */
        if (iter % 20 == 0) {
            pthread_t d;
            pthread_create(&d, NULL, robust_dier, NULL);
            pthread_join(d, NULL);
            int r = pthread_mutex_lock(&robust);
            if (r != EOWNERDEAD) {
                char dd[64];
                snprintf(dd, sizeof dd, "lock after the owner died returned %d", r);
                fail("robust", dd);
            }
            pthread_mutex_consistent(&robust);
            pthread_mutex_unlock(&robust);
        }
        /* condition variable */
        pthread_mutex_lock(&q_lock);
        if (q_len < 64) q_items[q_len++] = q_next_put++;
        pthread_cond_signal(&q_cond);
        pthread_mutex_unlock(&q_lock);
        /* the blocked reader and the epoll thread */
        if (write(pipe_fd[1], "x", 1) == 1) pipe_written++;
        uint64_t one = 1;
        if (write(efd, &one, sizeof one) == sizeof one) ev_written++;
        /* create and join */
        void *res;
        pthread_t sq;
        pthread_create(&sq, NULL, square, (void *)(uintptr_t)(iter % 1000));
        pthread_join(sq, &res);
        if ((uintptr_t)res != (iter % 1000) * (iter % 1000)) fail("join", "wrong result");
        /* pthread_kill */
        int victim = (int)(iter % WORKERS);
        unsigned long long sig0 = atomic_load(&worker_signals[victim]);
        pthread_kill(worker_th[victim], SIGUSR1);
        if (iter % 10 == 0) check_cpu();
        /* the pending signal: a new one once the last was taken; every 50 iterations, wait
         * until it is (a signal lost at a checkpoint never arrives) */
        if (atomic_load(&pend_got) == atomic_load(&pend_sent)) {
            atomic_fetch_add(&pend_sent, 1);
            pthread_kill(pender_th, SIGUSR2);
        }
        if (iter % 50 == 0) wait_for(&pend_got, atomic_load(&pend_sent), "pending-signal");
        if (atomic_load(&hup_got) == atomic_load(&hup_sent)) {
            atomic_fetch_add(&hup_sent, 1);
            kill(getpid(), SIGHUP);
        }
        if (iter % 50 == 25) wait_for(&hup_got, atomic_load(&hup_sent), "process-pending-signal");

        wait_for(&q_taken, q_next_put - 1, "condvar-queue");
        wait_for(&pipe_bytes, pipe_written, "pipe-reader");
        wait_for(&ev_count, ev_written, "epoll-thread");
        wait_for(&worker_signals[victim], sig0 + 1, "pthread_kill");
        for (int i = 0; i < WORKERS; i++) wait_for(&worker_seen[i], seen_before[i] + 1, "worker");
        wait_for(&rec_rounds, rec0 + 1, "recursive-holder");
        wait_for(&err_rounds, err0 + 1, "errorcheck-owner");
        pthread_mutex_lock(&normal);
        if (shared_twice != shared_count * 2) fail("normal-mutex", "shared pair torn");
        pthread_mutex_unlock(&normal);
        printf("iter %llu ok\n", (unsigned long long)iter);
        sleep_us(sleep);
    }
    printf("done %llu\n", (unsigned long long)(iter - 1));
    return 0;
}
