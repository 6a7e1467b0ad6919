/* selfexec: a program that execs itself with new arguments in the middle of its run.
 *
 *   selfexec ITERATIONS --stop-file PATH [--exec-at N] [--resumed-at N] [--sleep-us U]
 *            [--via execv|execl|execlp|execle]
 *
 * State: a counter in .bss and a 4 MiB heap block whose every page holds a pattern derived
 * from the counter. Iteration i checks that the memory holds the pattern of i-1, writes the
 * pattern of i, and prints "iter i ok" (or "MISMATCH heap at iter i" and exits 1). At
 * iteration --exec-at N (default 10) the first image flushes stdout and execs itself with
 * "--resumed-at N" (and the other arguments): the new image builds the pattern of N from
 * its arguments and carries on at N+1, printing no start line. --via picks the exec call
 * (default execv; the execl family passes the list as variadic arguments, eight of them, so
 * that some go on the stack). The first image prints
 * "start pid P iterations T" once. With --stop-file it prints "done i" and exits 0 at the
 * first iteration that finds PATH; ITERATIONS 0: no other limit.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heapcheck.h"

int main(int argc, char **argv) {
    uint64_t iterations = argc > 1 ? strtoull(argv[1], 0, 10) : 0;
    const char *stop = NULL;
    long exec_at = 10, resumed_at = -1, sleep_us = 2000;
    const char *via = "execv";
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--stop-file")) stop = argv[i + 1];
        else if (!strcmp(argv[i], "--exec-at")) exec_at = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--resumed-at")) resumed_at = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--sleep-us")) sleep_us = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--via")) via = argv[i + 1];
    }
    if (!heap_init()) return 2;
    uint64_t i = 0;
    if (resumed_at >= 0) {
        i = (uint64_t)resumed_at;
    } else {
        printf("start pid %d iterations %llu\n", getpid(), (unsigned long long)iterations);
        fflush(stdout);
    }
    fill(i);
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
        if ((iterations && i >= iterations) || (stop && access(stop, F_OK) == 0)) {
            printf("done %llu\n", (unsigned long long)i);
            return 0;
        }
        if (resumed_at < 0 && (long)i == exec_at) {
            char at[32];
            snprintf(at, sizeof at, "%ld", exec_at);
            char *nargv[argc + 3];
            int n = 0;
            for (int k = 0; k < argc; k++) nargv[n++] = argv[k];
            nargv[n++] = "--resumed-at";
            nargv[n++] = at;
            nargv[n] = NULL;
            char sl[32];
            snprintf(sl, sizeof sl, "%ld", sleep_us);
            const char *sf = stop ? stop : "/nonexistent";
            extern char **environ;
            if (!strcmp(via, "execl"))
                execl("/proc/self/exe", argv[0], argv[1], "--stop-file", sf, "--resumed-at", at,
                      "--sleep-us", sl, (char *)NULL);
            else if (!strcmp(via, "execlp"))
                execlp("/proc/self/exe", argv[0], argv[1], "--stop-file", sf, "--resumed-at", at,
                       "--sleep-us", sl, (char *)NULL);
            else if (!strcmp(via, "execle"))
                execle("/proc/self/exe", argv[0], argv[1], "--stop-file", sf, "--resumed-at", at,
                       "--sleep-us", sl, (char *)NULL, environ);
            else
                execv("/proc/self/exe", nargv);
            perror("execv");
            return 3;
        }
        usleep(sleep_us);
    }
}
