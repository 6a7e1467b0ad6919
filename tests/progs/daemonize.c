/* daemonize: the classic daemon start, then work whose state is checked every iteration.
 *
 *   daemonize [--once | --stay] [--sleep-us U]
 *
 * --stay: not a daemon but two processes of one program: after the fork the parent keeps
 * running (sleeps in a loop) and the child serves (waits for input with poll), forever.
 *
 * fork; the parent exits 0; the child calls setsid(), forks again (unless --once) and exits;
 * the (grand)child prints "daemon pid P" and loops: iteration i checks that a 4 MiB heap block
 * and a .bss counter hold the pattern of i-1, writes the pattern of i and prints "iter i ok"
 * (or "MISMATCH heap at iter i" and exits 1), forever (the test kills it).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>

#include "heapcheck.h"

int main(int argc, char **argv) {
    int once = 0, stay = 0;
    long sleep_us = 2000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--once")) once = 1;
        else if (!strcmp(argv[i], "--stay")) stay = 1;
        else if (!strcmp(argv[i], "--sleep-us") && i + 1 < argc) sleep_us = atol(argv[++i]);
    }
    pid_t p = fork();
    if (p < 0) return 2;
    if (p > 0 && stay) {
        for (;;) usleep(100000);
    }
    if (stay) {
        int fds[2];
        if (pipe(fds)) return 6;
        struct pollfd f = {.fd = fds[0], .events = POLLIN};
        for (;;) poll(&f, 1, 100);
    }
    if (p > 0) exit(0);
    if (setsid() < 0) return 3;
    if (!once) {
        p = fork();
        if (p < 0) return 4;
        if (p > 0) exit(0);
    }
    if (!heap_init()) return 5;
    printf("daemon pid %d\n", getpid());
    fflush(stdout);
    uint64_t i = 0;
    fill(0);
    for (;;) {
        if (!check(i)) {
            printf("MISMATCH heap at iter %llu\n", (unsigned long long)(i + 1));
            fflush(stdout);
            return 1;
        }
        i++;
        fill(i);
        printf("iter %llu ok\n", (unsigned long long)i);
        fflush(stdout);
        usleep(sleep_us);
    }
}
