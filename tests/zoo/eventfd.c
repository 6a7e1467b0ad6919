/* eventfd counters: a plain one (with O_NONBLOCK) and a semaphore one. */
#include "zoo.h"
#include <sys/eventfd.h>

int main(int argc, char **argv) {
    zoo_init("eventfd", argc, argv);
    int a = eventfd(5, EFD_NONBLOCK);
    int s = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE);
    CHECK(a >= 0 && s >= 0, "eventfd");
    uint64_t v = 37;
    CHECK(write(a, &v, 8) == 8, "write a");
    v = 3;
    CHECK(write(s, &v, 8) == 8, "write s");
    zoo_ready();
    zoo_wait();

    CHECK(fcntl(a, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
    CHECK(read(a, &v, 8) == 8 && v == 42, "counter %llu, expected 42", (unsigned long long)v);
    CHECK(read(a, &v, 8) < 0 && errno == EAGAIN, "counter not reset by read");
    for (int i = 0; i < 3; i++)
        CHECK(read(s, &v, 8) == 8 && v == 1, "semaphore read %d gave %llu", i,
              (unsigned long long)v);
    CHECK(read(s, &v, 8) < 0 && errno == EAGAIN, "semaphore counter above 3");
    zoo_ok();
}
