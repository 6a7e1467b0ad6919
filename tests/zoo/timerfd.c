/* timerfds: a long one-shot-then-periodic timer keeps its setting (time left shrinks, the
 * interval stays); a fast periodic one keeps firing. */
#include "zoo.h"
#include <poll.h>
#include <sys/timerfd.h>

int main(int argc, char **argv) {
    zoo_init("timerfd", argc, argv);
    int slow = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    int fast = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    CHECK(slow >= 0 && fast >= 0, "timerfd_create");
    struct itimerspec its = {.it_interval = {7, 500}, .it_value = {3600, 0}};
    CHECK(timerfd_settime(slow, 0, &its, NULL) == 0, "settime slow");
    struct itimerspec f = {.it_interval = {0, 20000000}, .it_value = {0, 20000000}};
    CHECK(timerfd_settime(fast, 0, &f, NULL) == 0, "settime fast");
    zoo_ready();
    zoo_wait();

    struct itimerspec cur;
    CHECK(timerfd_gettime(slow, &cur) == 0, "gettime");
    CHECK(cur.it_interval.tv_sec == 7 && cur.it_interval.tv_nsec == 500,
          "interval %ld.%09ld", (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
    CHECK(cur.it_value.tv_sec > 3000 && cur.it_value.tv_sec < 3600, "time left %lds",
          (long)cur.it_value.tv_sec);
    char *clk = zoo_fdinfo(fast, "clockid:");
    CHECK(clk && atoi(clk) == CLOCK_REALTIME, "clock of the fast timer: %s", clk ? clk : "?");
    CHECK(fcntl(fast, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
    CHECK(fcntl(slow, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC lost");
    uint64_t ticks = 0;
    read(fast, &ticks, 8); /* drain what expired during failover */
    struct pollfd pf = {.fd = fast, .events = POLLIN};
    CHECK(poll(&pf, 1, 2000) == 1, "the fast timer does not fire any more");
    CHECK(read(fast, &ticks, 8) == 8 && ticks >= 1, "no ticks");
    zoo_ok();
}
