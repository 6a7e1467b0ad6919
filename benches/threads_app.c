/* threads_app: the program the threads benchmark protects.
 *
 *   threads_app THREADS idle|busy SECONDS
 *
 * THREADS - 1 workers, "idle" (blocked in epoll_wait on an empty set) or "busy" (spinning on a
 * counter of their own, one page each); the main thread writes one page every millisecond, so
 * every epoch has a few dirty pages. Prints "ready" once the threads run, exits after SECONDS.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static int busy;
static char pages[64][4096] __attribute__((aligned(4096)));

static void *worker(void *arg) {
    (void)arg;
    if (busy) {
        volatile uint64_t *x = malloc(4096);
        for (;;) (*x)++;
    }
    int ep = epoll_create1(0);
    struct epoll_event e;
    for (;;) epoll_wait(ep, &e, 1, -1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: threads_app THREADS idle|busy SECONDS\n");
        return 2;
    }
    int n = atoi(argv[1]);
    busy = !strcmp(argv[2], "busy");
    double secs = atof(argv[3]);
    for (int i = 1; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, worker, NULL);
    }
    printf("ready\n");
    fflush(stdout);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (uint64_t i = 0;; i++) {
        pages[i % 64][0] = (char)i;
        usleep(1000);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 > secs) break;
    }
    return 0;
}
