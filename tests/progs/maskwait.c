/* maskwait: blocks for good in a wait whose signal mask blocks every signal.
 *
 *   maskwait ppoll|pselect|epoll_pwait|sigsuspend|sigwaitinfo|sigtimedwait|sigwait
 *
 * (The sigwait* ones block every signal, then wait for any of them: the epoch signal must
 * still reach the shim's handler, not the app's wait.)
 *
 * Prints "waiting" and then waits on a pipe nobody writes (sigsuspend: for a signal that never
 * comes), with a mask that blocks everything. The shim must take its epoch signal out of that
 * mask, or no checkpoint is taken while the program waits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <time.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int p[2];
    if (pipe(p)) return 3;
    sigset_t all;
    sigfillset(&all);
    printf("waiting\n");
    fflush(stdout);
    for (;;) {
        if (!strcmp(argv[1], "ppoll")) {
            struct pollfd f = {.fd = p[0], .events = POLLIN};
            ppoll(&f, 1, NULL, &all);
        } else if (!strcmp(argv[1], "pselect")) {
            fd_set r;
            FD_ZERO(&r);
            FD_SET(p[0], &r);
            pselect(p[0] + 1, &r, NULL, NULL, NULL, &all);
        } else if (!strcmp(argv[1], "epoll_pwait")) {
            int ep = epoll_create1(0);
            struct epoll_event e = {.events = EPOLLIN};
            epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
            epoll_pwait(ep, &e, 1, -1, &all);
            close(ep);
        } else if (!strcmp(argv[1], "sigsuspend")) {
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &all, NULL);
            sigsuspend(&all);
        } else if (!strcmp(argv[1], "sigwaitinfo") || !strcmp(argv[1], "sigtimedwait") ||
                   !strcmp(argv[1], "sigwait")) {
            sigprocmask(SIG_SETMASK, &all, NULL);
            siginfo_t info;
            struct timespec ts = {3600, 0};
            int sig;
            /* Like epoll_wait, these return EINTR when a handled signal (the epoch's) comes. */
            if (!strcmp(argv[1], "sigwaitinfo")) sig = sigwaitinfo(&all, &info);
            else if (!strcmp(argv[1], "sigtimedwait")) sig = sigtimedwait(&all, &info, &ts);
            else sigwait(&all, &sig);
            if (sig < 0 && errno == EINTR) continue;
            printf("the wait took signal %d\n", sig);
            fflush(stdout);
        } else {
            return 2;
        }
    }
}
