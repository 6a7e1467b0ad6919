/* first_write_app: the cost of the first write to a page in an epoch, as the app sees it.
 *
 *   first_write_app PAGES ROUNDS
 *
 * Maps PAGES pages and writes them all once (so no write below allocates a page). Then, ROUNDS
 * times: waits until the epoch number in the shim's staging area changes (every tracked page
 * is clean again: write-protected by the tracker), then times one write to each page (the
 * first write of the epoch: what dirty tracking costs) and right after a second write to each
 * page (already written: a plain store, the untracked baseline). A round during which the
 * epoch number changed is discarded. Unprotected (no staging area) it waits 25 ms instead.
 *
 * Prints: RESULT pages=N rounds=K first_ns=<median ns per page> again_ns=<median ns per page>
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "staging.h"

#define PAGE 4096

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}


static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: first_write_app PAGES ROUNDS\n");
        return 2;
    }
    size_t pages = strtoul(argv[1], NULL, 10), rounds = strtoul(argv[2], NULL, 10);
    volatile unsigned char *p =
        mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    for (size_t i = 0; i < pages; i++) p[i * PAGE] = 1;
    uint64_t *first = calloc(rounds, 8), *again = calloc(rounds, 8);
    /* The staging area appears once protection has started (before main, or never). */
    const volatile unsigned char *st = find_staging();
    size_t kept = 0, tries = 0;
    while (kept < rounds && tries < rounds * 4) {
        tries++;
        if (st) {
            uint64_t e = staging_epoch(st);
            uint64_t give_up = now_ns() + 2000000000ull;
            while (staging_epoch(st) == e && now_ns() < give_up) {
            }
        } else {
            usleep(25000);
        }
        uint64_t e0 = staging_epoch(st);
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < pages; i++) p[i * PAGE] = (unsigned char)(tries + i);
        uint64_t t1 = now_ns();
        for (size_t i = 0; i < pages; i++) p[i * PAGE] = (unsigned char)(tries + i + 1);
        uint64_t t2 = now_ns();
        if (st && staging_epoch(st) != e0) continue; /* an epoch landed in the middle */
        first[kept] = (t1 - t0) / pages;
        again[kept] = (t2 - t1) / pages;
        kept++;
    }
    qsort(first, kept, 8, cmp_u64);
    qsort(again, kept, 8, cmp_u64);
    printf("RESULT pages=%zu rounds=%zu first_ns=%llu again_ns=%llu protected=%d\n", pages, kept,
           kept ? (unsigned long long)first[kept / 2] : 0ull,
           kept ? (unsigned long long)again[kept / 2] : 0ull, st != NULL);
    return kept ? 0 : 1;
}
