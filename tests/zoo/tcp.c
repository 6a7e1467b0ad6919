/* A listening TCP socket (127.0.0.1:PORT, SO_REUSEADDR, O_NONBLOCK, backlog 7) and an
 * established connection to itself. After failover the test connects to the same port and
 * gets an answer holding a secret from before the failover; both ends of the established
 * connection find their peer gone. */
#include "zoo.h"
#include <arpa/inet.h>
#include <netinet/in.h>

int main(int argc, char **argv) {
    argc = zoo_init("tcp", argc, argv);
    CHECK(argc == 3, "usage: tcp PORT SECRET --stop-file STOP");
    int port = atoi(argv[1]);
    unsigned long secret = strtoul(argv[2], NULL, 10);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    CHECK(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0, "SO_REUSEADDR");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0, "bind 127.0.0.1:%d", port);
    CHECK(listen(l, 7) == 0, "listen");
    CHECK(fcntl(l, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect to self");
    struct pollfd pf = {.fd = l, .events = POLLIN};
    poll(&pf, 1, 1000);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    /* Data in flight at the checkpoint is lost with the connection. */
    CHECK(write(c, "hi", 2) == 2, "write");
    zoo_ready();
    /* The secret stays in memory only: the restored program must have it. */
    volatile unsigned long kept = secret * 3;
    int served = zoo_serve(l, kept / 3);

    CHECK(served >= 1, "no client was served after failover");
    struct sockaddr_in b;
    socklen_t bl = sizeof b;
    CHECK(getsockname(l, (struct sockaddr *)&b, &bl) == 0 && b.sin_family == AF_INET &&
              ntohs(b.sin_port) == port && b.sin_addr.s_addr == htonl(INADDR_LOOPBACK),
          "listening socket bound elsewhere");
    int v = 0;
    socklen_t vl = sizeof v;
    CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl) == 0 && v, "not listening");
    CHECK(getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, &vl) == 0 && v, "SO_REUSEADDR lost");
    CHECK(fcntl(l, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
    zoo_check_closed_peer(c, "client end");
    zoo_check_closed_peer(s, "server end");
    zoo_ok();
}
