/* pause_app: measures, from inside the app, how long each epoch pauses it.
 *
 *   pause_app PAGES DURATION_MS [THRESHOLD_NS] [WARMUP_MS]
 *
 * The app spins reading CLOCK_MONOTONIC. A gap between two consecutive readings longer than
 * THRESHOLD_NS (default 5000) is a pause: the app was not running (the epoch handler, or the
 * kernel, or another process on its core). Right after each pause it writes one word in each
 * of PAGES pages, so every epoch finds PAGES dirty pages; the clock is read between those
 * writes too, so a pause that lands while it is dirtying is seen as well.
 *
 * Not every gap is an epoch: on a virtual machine the timer tick alone costs tens of
 * microseconds, hundreds of times a second. So after each gap the app reads the epoch number
 * in the shim's staging area (the shared mapping of the memfd "remus-staging", found in
 * /proc/self/maps at start; remus-abi's StagingHeader: magic at 0, epoch at 16): a gap
 * after which the number changed is an epoch pause. Only those are counted as pauses; `gaps`
 * counts all. When there is no staging area (run unprotected), the line says
 * `attributed=0` and the percentiles are over all gaps.
 *
 * In the same run, before measuring pauses, it times memcpy of PAGES pages (median of 21
 * copies between two buffers it has written before, so in the cache when they fit), the floor
 * any checkpoint of those pages has to pay, and the same copy with the source evicted from the
 * cache first (`memcpy_cold_ns`): the pages the app dirties are written one word per page, so
 * a checkpoint reads the rest of each page from memory, not from the cache.
 *
 * Prints one line:
 *   RESULT pages=N attributed=1 pauses=K gaps=G p50_ns=.. p99_ns=.. max_ns=.. memcpy_ns=..
 *          measured_ms=..
 * Pauses in the first WARMUP_MS (default 300) are not counted (the first epochs ship the
 * whole image).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "staging.h"

#define PAGE 4096
#define MAX_GAPS 200000

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t gaps[MAX_GAPS];   /* every gap */
static size_t n_gaps;
static uint64_t pauses[MAX_GAPS]; /* gaps during which the process read a file */
static size_t n_pauses;
static const volatile unsigned char *staging;
static uint64_t last_epoch;


/* The epoch number in the staging header (0 if there is none). */
static uint64_t read_epoch(void) { return staging_epoch(staging); }

/* Records a gap that ended at t; returns the time after the bookkeeping. */
static uint64_t record_gap(uint64_t gap, uint64_t t, uint64_t counted_from) {
    uint64_t e = read_epoch();
    int epoch = e != last_epoch;
    last_epoch = e;
    if (t >= counted_from && n_gaps < MAX_GAPS) {
        gaps[n_gaps++] = gap;
        if (epoch) pauses[n_pauses++] = gap;
    }
    return now_ns();
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void *map(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(p, 0x5a, bytes);
    return p;
}

static uint64_t percentile(const uint64_t *sorted, size_t n, double q) {
    if (n == 0) return 0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: pause_app PAGES DURATION_MS [THRESHOLD_NS] [WARMUP_MS]\n");
        return 2;
    }
    size_t pages = strtoull(argv[1], NULL, 10);
    uint64_t duration_ns = strtoull(argv[2], NULL, 10) * 1000000ull;
    uint64_t threshold = argc > 3 ? strtoull(argv[3], NULL, 10) : 5000;
    uint64_t warmup_ns = (argc > 4 ? strtoull(argv[4], NULL, 10) : 300) * 1000000ull;
    if (pages == 0 || duration_ns == 0) {
        fprintf(stderr, "pause_app: PAGES and DURATION_MS must be positive\n");
        return 2;
    }
    size_t bytes = pages * PAGE;

    /* memcpy of the same bytes. */
    char *src = map(bytes), *dst = map(bytes);
    uint64_t copies[21];
    for (int k = 0; k < 21; k++) {
        src[(size_t)k * PAGE % bytes] = (char)k;
        uint64_t t0 = now_ns();
        memcpy(dst, src, bytes);
        copies[k] = now_ns() - t0;
    }
    qsort(copies, 21, sizeof copies[0], cmp_u64);
    uint64_t memcpy_ns = copies[10];
    if (dst[0] != src[0]) return 3; /* keep the copies */

    /* The same copy from pages that are not in the cache: the pages the app dirties below get
     * one word written per page per epoch, so the rest of each page comes from DRAM when the
     * handler copies it. Between copies, 64 MiB elsewhere are read (not written: dirty lines
     * would make the copy pay their write-back) to evict src. */
    size_t scrub_bytes = 64u << 20;
    volatile char *scrub = map(scrub_bytes);
    for (size_t i = 0; i < scrub_bytes; i += 4096) scrub[i] = 1; /* populate once */
    uint64_t cold[21];
    uint64_t sink = 0;
    for (int k = 0; k < 21; k++) {
        for (size_t i = 0; i < scrub_bytes; i += 64) sink += (unsigned char)scrub[i];
        for (size_t pg = 0; pg < pages; pg++) src[pg * PAGE] = (char)(k + pg); /* one word/page, as below */
        uint64_t t0 = now_ns();
        memcpy(dst, src, bytes);
        cold[k] = now_ns() - t0;
    }
    qsort(cold, 21, sizeof cold[0], cmp_u64);
    uint64_t memcpy_cold_ns = cold[10];
    if (dst[0] != src[0] || sink == 42) return 3;

    staging = find_staging();
    last_epoch = read_epoch();
    volatile uint64_t *buf = map(bytes);
    uint64_t gen = 0;
    uint64_t start = now_ns();
    uint64_t end = start + warmup_ns + duration_ns;
    uint64_t counted_from = start + warmup_ns;
    uint64_t prev = now_ns();
    int dirty = 1;
    /* Bounded by the clock: the loop ends at `end`. */
    while (prev < end) {
        if (dirty) {
            gen++;
            for (size_t p = 0; p < pages; p++) {
                buf[p * (PAGE / 8)] = gen + p;
                uint64_t t = now_ns();
                if (t - prev > threshold) t = record_gap(t - prev, t, counted_from);
                prev = t;
            }
            dirty = 0;
        }
        uint64_t t = now_ns();
        if (t - prev > threshold) {
            t = record_gap(t - prev, t, counted_from);
            dirty = 1;
        }
        prev = t;
    }
    qsort(gaps, n_gaps, sizeof gaps[0], cmp_u64);
    qsort(pauses, n_pauses, sizeof pauses[0], cmp_u64);
    int attributed = n_pauses > 0;
    const uint64_t *v = attributed ? pauses : gaps;
    size_t n = attributed ? n_pauses : n_gaps;
    printf("RESULT pages=%zu attributed=%d pauses=%zu gaps=%zu p50_ns=%llu p99_ns=%llu "
           "max_ns=%llu memcpy_ns=%llu memcpy_cold_ns=%llu measured_ms=%llu\n",
           pages, attributed, n_pauses, n_gaps, (unsigned long long)percentile(v, n, 0.50),
           (unsigned long long)percentile(v, n, 0.99), (unsigned long long)(n ? v[n - 1] : 0),
           (unsigned long long)memcpy_ns, (unsigned long long)memcpy_cold_ns,
           (unsigned long long)(duration_ns / 1000000ull));
    fflush(stdout);
    return 0;
}
