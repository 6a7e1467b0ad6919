/* staging.h: finding the shim's staging area from inside a benchmark program (the shared
 * mapping of the memfd "remus-staging", abi/src/lib.rs), and the epoch number in its header,
 * for the benchmark programs that count epochs (pause_app.c, first_write_app.c, hook_cost.c). */
#ifndef REMUS_BENCH_STAGING_H
#define REMUS_BENCH_STAGING_H
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The shim's staging area, mapped in this process, or NULL (unprotected, or not yet set up). */
static const volatile unsigned char *find_staging(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return NULL;
    char line[512];
    unsigned long start = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "/memfd:remus-staging") && sscanf(line, "%lx-", &start) == 1) break;
        start = 0;
    }
    fclose(f);
    if (!start || memcmp((const void *)start, "REMUSSTG", 8) != 0) return NULL;
    return (const volatile unsigned char *)start;
}

/* The last epoch the shim took (0 without a staging area). */
static uint64_t staging_epoch(const volatile unsigned char *st) {
    return st ? *(const volatile uint64_t *)(st + 16) : 0;
}
#endif
