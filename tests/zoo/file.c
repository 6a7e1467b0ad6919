/* A regular file open at an offset, with O_APPEND on a second descriptor. */
#include "zoo.h"

int main(int argc, char **argv) {
    argc = zoo_init("file", argc, argv);
    CHECK(argc == 2, "usage: file PATH --stop-file STOP");
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, "open");
    CHECK(write(fd, "0123456789", 10) == 10, "write");
    CHECK(lseek(fd, 4, SEEK_SET) == 4, "lseek");
    int ap = open(argv[1], O_WRONLY | O_APPEND);
    CHECK(ap >= 0, "open append");
    zoo_ready();
    zoo_wait();

    CHECK(lseek(fd, 0, SEEK_CUR) == 4, "offset %ld, expected 4", (long)lseek(fd, 0, SEEK_CUR));
    char b[16] = {0};
    CHECK(read(fd, b, sizeof b) == 6 && memcmp(b, "456789", 6) == 0, "read %s", b);
    CHECK(fcntl(ap, F_GETFL) & O_APPEND, "O_APPEND lost");
    CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR, "access mode lost");
    zoo_ok();
}
