/* A pipe with unread bytes (more than a default pipe holds), part of them already read;
 * after failover both ends are the same pipe, the unread bytes come in order, then EOF. */
#include "zoo.h"

#define TOTAL 120000
#define READ_BEFORE 20000

static unsigned char pat(size_t i) { return (unsigned char)(i * 7 + i / 251); }

int main(int argc, char **argv) {
    zoo_init("pipe", argc, argv);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    /* Put the ends at distinctive numbers. */
    CHECK(dup2(p[0], 20) == 20 && dup2(p[1], 21) == 21, "dup2");
    close(p[0]);
    close(p[1]);
    CHECK(fcntl(21, F_SETPIPE_SZ, 256 * 1024) >= TOTAL, "F_SETPIPE_SZ");
    static unsigned char buf[TOTAL];
    for (size_t i = 0; i < TOTAL; i++)
        buf[i] = pat(i);
    CHECK(write(21, buf, TOTAL) == TOTAL, "write");
    CHECK(read(20, buf, READ_BEFORE) == READ_BEFORE, "read before");
    zoo_ready();
    zoo_wait();

    struct stat a, b;
    CHECK(fstat(20, &a) == 0 && fstat(21, &b) == 0, "fstat");
    CHECK(S_ISFIFO(a.st_mode) && S_ISFIFO(b.st_mode), "fds 20/21 are not pipes");
    CHECK(a.st_ino == b.st_ino, "fds 20 and 21 are different pipes (%lu, %lu)",
          (unsigned long)a.st_ino, (unsigned long)b.st_ino);
    CHECK((fcntl(20, F_GETFL) & O_ACCMODE) == O_RDONLY, "fd 20 is not the read end");
    CHECK((fcntl(21, F_GETFL) & O_ACCMODE) == O_WRONLY, "fd 21 is not the write end");
    size_t got = 0;
    memset(buf, 0, sizeof buf);
    fcntl(20, F_SETFL, O_NONBLOCK);
    while (got < TOTAL - READ_BEFORE) {
        ssize_t n = read(20, buf + got, TOTAL - READ_BEFORE - got);
        CHECK(n > 0, "only %zu of %d unread bytes came back", got, TOTAL - READ_BEFORE);
        got += (size_t)n;
    }
    for (size_t i = 0; i < got; i++)
        CHECK(buf[i] == pat(i + READ_BEFORE), "byte %zu differs", i);
    CHECK(read(20, buf, 1) < 0 && errno == EAGAIN, "more bytes than were unread");
    /* The ends are connected, and nobody else holds the write end. */
    CHECK(write(21, "z", 1) == 1, "write after restore");
    CHECK(read(20, buf, 1) == 1 && buf[0] == 'z', "read back after restore");
    close(21);
    fcntl(20, F_SETFL, 0);
    CHECK(read(20, buf, 1) == 0, "no EOF after closing the only write end");
    zoo_ok();
}
