/* A signalfd with its mask: SIGUSR1 and SIGUSR2 blocked, the signalfd reads SIGUSR1. */
#include "zoo.h"
#include <sys/signalfd.h>

int main(int argc, char **argv) {
    zoo_init("signalfd", argc, argv);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGUSR2);
    CHECK(sigprocmask(SIG_BLOCK, &m, NULL) == 0, "sigprocmask");
    sigdelset(&m, SIGUSR2);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    CHECK(sfd >= 0, "signalfd");
    zoo_ready();
    zoo_wait();

    char *mask = zoo_fdinfo(sfd, "sigmask:");
    unsigned long long want = 1ULL << (SIGUSR1 - 1);
    CHECK(mask && strtoull(mask, NULL, 16) == want, "mask %s", mask ? mask : "?");
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) < 0 && errno == EAGAIN, "a signal is already pending");
    CHECK(kill(getpid(), SIGUSR1) == 0, "kill");
    CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1,
          "signalfd did not read SIGUSR1");
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    CHECK(sigismember(&cur, SIGUSR1) && sigismember(&cur, SIGUSR2), "signal mask lost");
    zoo_ok();
}
