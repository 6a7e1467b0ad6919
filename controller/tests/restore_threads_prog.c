/* Test program for restore_roundtrip.rs: the main thread and two more, each checking its own
 * identity as the kernel and glibc see it, and that the others keep running.
 *
 * Each added thread records gettid() at its start and takes a recursive mutex once (glibc
 * stores the owner's TID, as cached in the thread's control block); then it loops: it checks
 * that gettid() is still the recorded TID, that its thread-local word (fs_base) holds, that
 * it can re-lock and unlock its recursive mutex (trylock says EBUSY, unlock EPERM, when the
 * cached TID is not the owner's), counts, and sleeps 1 ms. The main thread busy-loops
 * (clock_gettime, no sleeping system call) and prints "round N ok" every 10 ms; after ROUNDS
 * rounds it waits (at most 10 s) until both threads have counted on, prints their TIDs and
 * "done", and exits with _exit (no pthread_join: a thread restored without the shim has no
 * clear_child_tid).
 *
 * usage: restore_threads_prog ROUNDS */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NT 2

static pthread_mutex_t mtx[NT];
static atomic_ulong count[NT];
static atomic_int tids[NT];
static atomic_int failed;
static char why[256];
static __thread unsigned long tls_word;

static void fail(const char *what, int i, long v) {
    if (atomic_exchange(&failed, 1) == 0)
        snprintf(why, sizeof why, "thread %d: %s (%ld)", i, what, v);
}

static void *worker(void *arg) {
    int i = (int)(long)arg;
    int me = (int)syscall(SYS_gettid);
    tls_word = 0xabc0 + (unsigned long)i;
    pthread_mutex_lock(&mtx[i]);
    atomic_store(&tids[i], me);
    for (;;) {
        long now = syscall(SYS_gettid);
        if (now != me)
            fail("gettid changed", i, now);
        if (tls_word != 0xabc0 + (unsigned long)i)
            fail("thread-local word lost", i, (long)tls_word);
        int rc = pthread_mutex_trylock(&mtx[i]);
        if (rc != 0)
            fail("recursive relock failed", i, rc);
        else if ((rc = pthread_mutex_unlock(&mtx[i])) != 0)
            fail("recursive unlock failed", i, rc);
        atomic_fetch_add(&count[i], 1);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 40;
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    for (int i = 0; i < NT; i++) {
        pthread_mutex_init(&mtx[i], &a);
        pthread_t t;
        if (pthread_create(&t, NULL, worker, (void *)(long)i) != 0) {
            printf("FAIL pthread_create\n");
            return 1;
        }
    }
    while (atomic_load(&tids[0]) == 0 || atomic_load(&tids[1]) == 0)
        ;
    printf("start pid %d tids %d %d\n", getpid(), tids[0], tids[1]);
    for (int r = 0; r < rounds; r++) {
        double until = now() + 0.01;
        while (now() < until)
            ;
        if (atomic_load(&failed)) {
            printf("FAIL %s\n", why);
            _exit(1);
        }
        printf("round %d ok\n", r);
    }
    unsigned long before[NT];
    for (int i = 0; i < NT; i++)
        before[i] = atomic_load(&count[i]);
    double deadline = now() + 10;
    for (int i = 0; i < NT; i++) {
        while (atomic_load(&count[i]) < before[i] + 5 && now() < deadline)
            ;
        if (atomic_load(&count[i]) < before[i] + 5) {
            printf("FAIL thread %d does not run\n", i);
            _exit(1);
        }
    }
    if (atomic_load(&failed)) {
        printf("FAIL %s\n", why);
        _exit(1);
    }
    printf("tids %d %d\ndone\n", tids[0], tids[1]);
    _exit(0);
}
