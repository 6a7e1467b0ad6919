/* threads: a single-threaded program that, at some point, creates a second thread.
 *
 *   threads ITERATIONS [--thread-at N] [--thread-file PATH] [--sleep-us N] [--block-epoch]
 *
 * Prints "start pid P", then "iter i ok" every iteration (counter kept in .data), "thread
 * created" when pthread_create succeeds (at iteration N, or at the first iteration that finds
 * PATH existing), and "done ITERATIONS" at the end (exit 0). The second thread keeps writing
 * to its own counter until the process exits. With --block-epoch it first blocks every signal
 * with a raw rt_sigprocmask (behind the shim's back), so it never takes the epoch signal:
 * remus must name it and stop protecting, never checkpoint a half-frozen process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t counter = 0;
static volatile uint64_t worker_counter = 0;

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int block_epoch;

static void *worker(void *arg) {
    (void)arg;
    if (block_epoch) {
        uint64_t all = ~(uint64_t)0;
        syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, 8);
    }
    for (;;) {
        worker_counter++;
        sleep_us(1000);
    }
    return NULL;
}

static void usage(void) {
    fprintf(stderr, "usage: threads ITERATIONS [--thread-at N] [--thread-file PATH] [--sleep-us N] [--block-epoch]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    uint64_t target = strtoull(argv[1], NULL, 10);
    uint64_t thread_at = 0;
    const char *thread_file = NULL;
    long sleep = 3000;
    for (int a = 2; a < argc; a++) {
        if (a + 1 < argc && !strcmp(argv[a], "--thread-at")) thread_at = strtoull(argv[++a], NULL, 10);
        else if (a + 1 < argc && !strcmp(argv[a], "--thread-file")) thread_file = argv[++a];
        else if (a + 1 < argc && !strcmp(argv[a], "--sleep-us")) sleep = strtol(argv[++a], NULL, 10);
        else if (!strcmp(argv[a], "--block-epoch")) block_epoch = 1;
        else usage();
    }
    printf("start pid %d iterations %llu\n", (int)getpid(), (unsigned long long)target);
    fflush(stdout);
    int created = 0;
    while (counter < target) {
        counter++;
        if (!created && ((thread_at && counter == thread_at) ||
                         (thread_file && access(thread_file, F_OK) == 0))) {
            pthread_t t;
            int rc = pthread_create(&t, NULL, worker, NULL);
            if (rc != 0) {
                printf("pthread_create failed: %s\n", strerror(rc));
                fflush(stdout);
                return 1;
            }
            created = 1;
            printf("thread created\n");
        }
        printf("iter %llu ok\n", (unsigned long long)counter);
        fflush(stdout);
        sleep_us(sleep);
    }
    printf("done %llu\n", (unsigned long long)counter);
    fflush(stdout);
    return 0;
}
