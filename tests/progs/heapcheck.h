/* heapcheck.h: a 4 MiB heap block and a counter whose every page holds a pattern derived from
 * the iteration, shared by the test programs that check their memory across an exec or a
 * daemonize and a failover (selfexec.c, daemonize.c). */
#ifndef HEAPCHECK_H
#define HEAPCHECK_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEAP_BYTES (4u << 20)
#define PAGE 4096

static uint64_t counter;
static uint64_t *heap;

static uint64_t pattern(uint64_t iter, size_t page) { return iter * 0x9e3779b97f4a7c15ull ^ page; }

/* Allocates the block (zeroed); 0 on failure. */
static int heap_init(void) {
    heap = malloc(HEAP_BYTES);
    if (!heap) return 0;
    memset(heap, 0, HEAP_BYTES);
    return 1;
}

static void fill(uint64_t iter) {
    for (size_t p = 0; p < HEAP_BYTES / PAGE; p++) heap[p * (PAGE / 8)] = pattern(iter, p);
    counter = iter;
}

static int check(uint64_t iter) {
    if (counter != iter) return 0;
    for (size_t p = 0; p < HEAP_BYTES / PAGE; p++)
        if (heap[p * (PAGE / 8)] != pattern(iter, p)) return 0;
    return 1;
}
#endif
