/* Test program for restore_roundtrip.rs: memory of several kinds holds a pattern that
 * changes every round; each round checks the previous pattern, reads the next 16 bytes of a
 * data file (checking the offset survived), and prints "round N ok". Busy-loops between
 * rounds (clock_gettime through the vdso, no sleeping system call), so a stop from outside
 * lands in user space most of the time.
 *
 * usage: restore_prog ROUNDS DATAFILE MAPFILE */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096
#define BIG (8u << 20)
#define SMALL 3000
#define GLOB (5 * PG)

static unsigned char glob[GLOB];              /* .bss */
static unsigned long data_word = 0x12345678;  /* .data */
static __thread unsigned long tls_word = 7;   /* TLS: needs fs_base */

static unsigned char pat(unsigned long i, unsigned long round, unsigned salt) {
    return (unsigned char)(i * 131 + round * 7 + salt);
}

static void fill(unsigned char *p, unsigned long n, unsigned long round, unsigned salt) {
    for (unsigned long i = 0; i < n; i++) p[i] = pat(i, round, salt);
}

static int check(const unsigned char *p, unsigned long n, unsigned long round, unsigned salt,
                 const char *what) {
    for (unsigned long i = 0; i < n; i++) {
        if (p[i] != pat(i, round, salt)) {
            printf("FAIL %s round %lu byte %lu: %u != %u\n", what, round, i, p[i],
                   pat(i, round, salt));
            fflush(stdout);
            return 0;
        }
    }
    return 1;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    unsigned long rounds = strtoul(argv[1], 0, 10);
    int fd = open(argv[2], O_RDONLY);
    int mfd = open(argv[3], O_RDONLY);
    if (fd < 0 || mfd < 0) { perror("open"); return 2; }
    unsigned char *map = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 2; }
    close(mfd);
    unsigned char *big = malloc(BIG);    /* above the mmap threshold: its own mapping */
    unsigned char *small = malloc(SMALL); /* brk heap */
    volatile unsigned char stackbuf[3 * PG];
    if (!big || !small) return 2;

    unsigned long r = 0;
    fill(big, BIG, r, 1);
    fill(small, SMALL, r, 2);
    fill(glob, GLOB, r, 3);
    fill((unsigned char *)stackbuf, sizeof stackbuf, r, 4);
    fill(map + PG, PG, r, 5);
    printf("ready\n");
    fflush(stdout);

    for (r = 0; r < rounds; r++) {
        double t0 = now();
        while (now() - t0 < 0.02) {
            for (volatile int k = 0; k < 1000; k++) {}
        }
        int ok = check(big, BIG, r, 1, "big") && check(small, SMALL, r, 2, "small") &&
                 check(glob, GLOB, r, 3, "glob") &&
                 check((unsigned char *)stackbuf, sizeof stackbuf, r, 4, "stack") &&
                 check(map + PG, PG, r, 5, "map page 1");
        if (!ok) return 3;
        for (int i = 0; i < 3 * PG; i++) {
            if (i >= PG && i < 2 * PG) continue;
            if (map[i] != (unsigned char)(i * 7 + 3)) {
                printf("FAIL map file byte %d\n", i);
                fflush(stdout);
                return 3;
            }
        }
        if (tls_word != 7 + r || data_word != 0x12345678 + r) {
            printf("FAIL tls %lu data %lx round %lu\n", tls_word, data_word, r);
            fflush(stdout);
            return 3;
        }
        unsigned char buf[16];
        off_t off = lseek(fd, 0, SEEK_CUR);
        if (off != (off_t)(r * 16) || read(fd, buf, 16) != 16) {
            printf("FAIL data file offset %ld round %lu\n", (long)off, r);
            fflush(stdout);
            return 3;
        }
        for (int i = 0; i < 16; i++) {
            if (buf[i] != (unsigned char)(((r * 16 + i) * 13 + 5) % 251)) {
                printf("FAIL data file content round %lu\n", r);
                fflush(stdout);
                return 3;
            }
        }
        fill(big, BIG, r + 1, 1);
        fill(small, SMALL, r + 1, 2);
        fill(glob, GLOB, r + 1, 3);
        fill((unsigned char *)stackbuf, sizeof stackbuf, r + 1, 4);
        fill(map + PG, PG, r + 1, 5);
        tls_word++;
        data_word++;
        printf("round %lu ok\n", r);
        fflush(stdout);
    }
    printf("done\n");
    fflush(stdout);
    return 0;
}
