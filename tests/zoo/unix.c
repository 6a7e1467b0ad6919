/* A listening unix stream socket at PATH (its file is left behind by the killed primary:
 * restore removes it and binds again). After failover the test connects to PATH and gets
 * an answer holding a secret from before the failover. */
#include "zoo.h"
#include <sys/un.h>

int main(int argc, char **argv) {
    argc = zoo_init("unix", argc, argv);
    CHECK(argc == 3, "usage: unix PATH SECRET --stop-file STOP");
    unsigned long secret = strtoul(argv[2], NULL, 10);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
    unlink(argv[1]);
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0, "bind %s", argv[1]);
    CHECK(listen(l, 5) == 0, "listen");
    /* A connected pair too: one end stays, the other is closed after failover anyway. */
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) == 0, "socketpair");
    zoo_ready();
    volatile unsigned long kept = secret + 11;
    int served = zoo_serve(l, kept - 11);

    CHECK(served >= 1, "no client was served after failover");
    struct sockaddr_un b;
    socklen_t bl = sizeof b;
    CHECK(getsockname(l, (struct sockaddr *)&b, &bl) == 0 && strcmp(b.sun_path, argv[1]) == 0,
          "bound to %s", b.sun_path);
    int v = 0;
    socklen_t vl = sizeof v;
    CHECK(getsockopt(sp[0], SOL_SOCKET, SO_TYPE, &v, &vl) == 0 && v == SOCK_SEQPACKET,
          "socketpair end type %d", v);
    zoo_check_closed_peer(sp[0], "socketpair end");
    zoo_ok();
}
