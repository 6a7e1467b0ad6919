/* An epoll set with data words: an eventfd (level-triggered) and a pipe's read end
 * (edge-triggered, modified after it was added); after failover epoll_wait reports each
 * with its own data word, and fdinfo shows exactly the two registrations. */
#include "zoo.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

#define D_EV 0xdeadbeef12345678ULL
#define D_PIPE 0x1122334455667788ULL

int main(int argc, char **argv) {
    zoo_init("epoll", argc, argv);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0, "epoll_create1");
    int ev = eventfd(0, EFD_NONBLOCK);
    int p[2];
    CHECK(ev >= 0 && pipe2(p, O_NONBLOCK) == 0, "eventfd/pipe");
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = D_EV};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0, "add eventfd");
    e.events = EPOLLIN;
    e.data.u64 = 1;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e) == 0, "add pipe");
    e.events = EPOLLIN | EPOLLET;
    e.data.u64 = D_PIPE;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &e) == 0, "mod pipe");
    /* A registration removed again must not come back. */
    int gone = eventfd(0, 0);
    e.data.u64 = 99;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, gone, &e) == 0 &&
              epoll_ctl(ep, EPOLL_CTL_DEL, gone, NULL) == 0,
          "add/del");
    close(gone);
    zoo_ready();
    zoo_wait();

    CHECK(fcntl(ep, F_GETFD) == FD_CLOEXEC, "epoll fd lost FD_CLOEXEC");
    struct epoll_event out[4];
    CHECK(epoll_wait(ep, out, 4, 0) == 0, "events before anything happened");
    uint64_t one = 1;
    CHECK(write(ev, &one, 8) == 8, "write eventfd");
    int n = epoll_wait(ep, out, 4, 1000);
    CHECK(n == 1 && out[0].data.u64 == D_EV && (out[0].events & EPOLLIN),
          "eventfd event: n=%d data=%llx", n, n > 0 ? (unsigned long long)out[0].data.u64 : 0);
    uint64_t v;
    CHECK(read(ev, &v, 8) == 8, "read eventfd");
    CHECK(write(p[1], "x", 1) == 1, "write pipe");
    n = epoll_wait(ep, out, 4, 1000);
    CHECK(n == 1 && out[0].data.u64 == D_PIPE, "pipe event: n=%d data=%llx", n,
          n > 0 ? (unsigned long long)out[0].data.u64 : 0);
    /* Edge-triggered: not reported again while nothing new arrives. */
    CHECK(epoll_wait(ep, out, 4, 50) == 0, "EPOLLET lost: pipe reported again");
    /* Exactly two registrations, with the events as set. */
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "fdinfo");
    int regs = 0, et = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned tfd, events;
        unsigned long long data;
        if (sscanf(line, "tfd: %u events: %x data: %llx", &tfd, &events, &data) == 3) {
            regs++;
            if (data == D_PIPE && (events & EPOLLET))
                et = 1;
        }
    }
    fclose(f);
    CHECK(regs == 2, "%d registrations instead of 2", regs);
    CHECK(et, "the pipe's registration lost EPOLLET");
    zoo_ok();
}
