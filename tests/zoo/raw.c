/* Memory and a descriptor made behind the shim's hooks: after the program has run long enough
 * for the epochs to be in their steady state (map and descriptor table unchanged, so the
 * handler takes its quick checks), it makes raw system calls that no hook sees: an anonymous
 * mapping (`syscall(SYS_mmap)`), a fresh mapping in place of one it had (`SYS_munmap` then
 * `SYS_mmap` at the same address, same size: the kernel's sizes do not move), a protection
 * change (`SYS_mprotect`), and an `SYS_openat` of a file at an offset (`SYS_lseek`); then it
 * says ready at once, so the failover comes a couple of epochs later. The restored program
 * must have all of them, with their contents. */
#include "zoo.h"
#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGES 16
#define PG 4096

static void fill(unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(seed + i * 7 + i / PG);
}

static int same(const unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++)
        if (p[i] != (unsigned char)(seed + i * 7 + i / PG))
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    argc = zoo_init("raw", argc, argv);
    CHECK(argc == 2, "usage: raw PATH --stop-file STOP");
    /* A file to open raw later, and a mapping (through the hooks) to replace raw later. */
    int w = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(w >= 0, "create %s", argv[1]);
    CHECK(write(w, "abcdefghijklmnop", 16) == 16, "write");
    close(w);
    unsigned char *old = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(old != MAP_FAILED, "mmap");
    fill(old, PAGES * PG, 1);
    unsigned char *ro = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(ro != MAP_FAILED, "mmap ro");
    fill(ro, PAGES * PG, 5);
    /* Steady state: epochs (25 ms) with nothing changing. Not a multiple of 16 epochs: the
     * handler compares the whole VMA list one epoch in 16 anyway, and the changes below must
     * be found by the epoch right after them, not by that one. */
    zoo_sleep_ms(230);

    unsigned char *fresh = (unsigned char *)syscall(SYS_mmap, NULL, PAGES * PG,
                                                    PROT_READ | PROT_WRITE,
                                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(fresh != MAP_FAILED, "raw mmap");
    fill(fresh, PAGES * PG, 2);
    CHECK(syscall(SYS_munmap, old, PAGES * PG) == 0, "raw munmap");
    unsigned char *again = (unsigned char *)syscall(SYS_mmap, old, PAGES * PG,
                                                    PROT_READ | PROT_WRITE,
                                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                                                    -1, 0);
    CHECK(again == old, "raw mmap in place");
    fill(again, PAGES * PG / 2, 3); /* half written: the rest must come back as zeros */
    CHECK(syscall(SYS_mprotect, ro, PAGES * PG, PROT_READ) == 0, "raw mprotect");
    int fd = (int)syscall(SYS_openat, AT_FDCWD, argv[1], O_RDONLY, 0);
    CHECK(fd >= 0, "raw openat");
    CHECK(syscall(SYS_lseek, fd, 5, SEEK_SET) == 5, "raw lseek");
    zoo_ready();
    zoo_wait();

    CHECK(same(fresh, PAGES * PG, 2), "the raw mapping's contents were lost");
    CHECK(same(again, PAGES * PG / 2, 3), "the mapping made in place's contents were lost");
    for (size_t i = PAGES * PG / 2; i < PAGES * PG; i++)
        CHECK(again[i] == 0, "the replaced mapping kept old contents at byte %zu", i);
    CHECK(same(ro, PAGES * PG, 5), "the read-only mapping's contents were lost");
    FILE *maps = fopen("/proc/self/maps", "r");
    CHECK(maps != NULL, "open maps");
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3 && a <= (unsigned long)ro &&
            (unsigned long)ro < b) {
            found = 1;
            CHECK(perms[1] == '-', "the raw mprotect was lost: %s", line);
        }
    }
    fclose(maps);
    CHECK(found, "the read-only mapping is gone");
    CHECK(lseek(fd, 0, SEEK_CUR) == 5, "raw fd offset %ld, expected 5",
          (long)lseek(fd, 0, SEEK_CUR));
    char b[16] = {0};
    CHECK(read(fd, b, sizeof b) == 11 && memcmp(b, "fghijklmnop", 11) == 0, "read %s", b);
    zoo_ok();
}
