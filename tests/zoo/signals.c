/* Signal handlers, mask and alternate stack: after failover SIGUSR1's handler runs on the
 * alternate stack with its sa_mask, SIGUSR2 is still ignored, SIGTERM still blocked. */
#include "zoo.h"

static char altstack[64 * 1024];
static volatile int hits;
static volatile int on_alt;
static volatile int mask_ok;

static void on_usr1(int sig, siginfo_t *si, void *uc) {
    (void)si;
    (void)uc;
    char here;
    hits += sig == SIGUSR1;
    on_alt = &here >= altstack && &here < altstack + sizeof altstack;
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    mask_ok = sigismember(&cur, SIGWINCH);
}

int main(int argc, char **argv) {
    zoo_init("signals", argc, argv);
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGWINCH);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction USR1");
    signal(SIGUSR2, SIG_IGN);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGTERM);
    CHECK(sigprocmask(SIG_BLOCK, &m, NULL) == 0, "sigprocmask");
    raise(SIGUSR1);
    CHECK(hits == 1 && on_alt && mask_ok, "handler before failover");
    zoo_ready();
    zoo_wait();

    struct sigaction cur;
    CHECK(sigaction(SIGUSR1, NULL, &cur) == 0, "query USR1");
    CHECK(cur.sa_sigaction == on_usr1, "SIGUSR1 handler lost");
    CHECK((cur.sa_flags & (SA_SIGINFO | SA_ONSTACK)) == (SA_SIGINFO | SA_ONSTACK),
          "SIGUSR1 flags %#x", cur.sa_flags);
    CHECK(sigismember(&cur.sa_mask, SIGWINCH), "SIGUSR1 sa_mask lost");
    CHECK(sigaction(SIGUSR2, NULL, &cur) == 0 && cur.sa_handler == SIG_IGN, "SIGUSR2 not ignored");
    stack_t now;
    CHECK(sigaltstack(NULL, &now) == 0, "query altstack");
    CHECK(now.ss_sp == altstack && now.ss_size == sizeof altstack, "altstack %p/%zu", now.ss_sp,
          now.ss_size);
    sigset_t blocked;
    sigprocmask(SIG_BLOCK, NULL, &blocked);
    CHECK(sigismember(&blocked, SIGTERM), "SIGTERM no longer blocked");
    CHECK(!sigismember(&blocked, SIGUSR1), "SIGUSR1 blocked");
    hits = 0;
    on_alt = 0;
    mask_ok = 0;
    raise(SIGUSR2); /* ignored: must not kill us */
    raise(SIGUSR1);
    CHECK(hits == 1, "SIGUSR1 handler did not run");
    CHECK(on_alt, "SIGUSR1 handler not on the alternate stack");
    CHECK(mask_ok, "SIGWINCH not blocked inside the handler");
    zoo_ok();
}
