/* threads: a single-threaded program that, at iteration THREAD_AT, creates a second thread.
 *
 *   threads ITERATIONS THREAD_AT [--sleep-us N]
 *
 * Prints "start pid P", then "iter i ok" every iteration (counter kept in .data), "thread
 * created" when pthread_create succeeds, and "done ITERATIONS" at the end (exit 0). The second
 * thread keeps writing to its own counter until the process exits. Remus protects one thread
 * only: once the second thread exists, replication must stop and say why.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t counter = 0;
static volatile uint64_t worker_counter = 0;

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        worker_counter++;
        sleep_us(1000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: threads ITERATIONS THREAD_AT [--sleep-us N]\n");
        return 2;
    }
    uint64_t target = strtoull(argv[1], NULL, 10);
    uint64_t thread_at = strtoull(argv[2], NULL, 10);
    long sleep = 3000;
    if (argc >= 5 && !strcmp(argv[3], "--sleep-us")) sleep = strtol(argv[4], NULL, 10);
    printf("start pid %d iterations %llu\n", (int)getpid(), (unsigned long long)target);
    fflush(stdout);
    while (counter < target) {
        counter++;
        if (counter == thread_at) {
            pthread_t t;
            int rc = pthread_create(&t, NULL, worker, NULL);
            if (rc != 0) {
                printf("pthread_create failed: %s\n", strerror(rc));
                fflush(stdout);
                return 1;
            }
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
