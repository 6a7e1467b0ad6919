/* A descriptor kind restore cannot bring back (inotify): remus must name it while the
 * program runs, not at failover. */
#include "zoo.h"
#include <sys/inotify.h>

int main(int argc, char **argv) {
    zoo_init("unsupported", argc, argv);
    int in = inotify_init1(IN_CLOEXEC);
    CHECK(in >= 0, "inotify_init1");
    CHECK(dup2(in, 33) == 33, "dup2");
    close(in);
    zoo_ready();
    while (!zoo_stopped())
        zoo_sleep_ms(5);
    zoo_ok();
}
