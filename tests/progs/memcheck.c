/* memcheck: writes memory of every kind and checks all of it against what it last wrote.
 *
 *   memcheck ITERATIONS [--stop-file PATH] [--stop-action exit|abort|segv] [--sleep-us N]
 *            [--abort-at N] [--segv-at N] [--corrupt-at N]
 *
 * State: one counter (the iteration the memory was last written for) kept in .data and, as a
 * second copy, in libzoo.so. Iteration i (starting at 1): verify that every kind of memory
 * holds the pattern of iteration i-1, derived from the counter, then write the pattern of
 * iteration i, set the counter to i and print "iter i ok". After ITERATIONS iterations it
 * prints "done ITERATIONS" and exits 0. On a mismatch it prints "MISMATCH <what> at iter i"
 * and exits 1. With --stop-file, it also stops (check, "done N", exit 0) at the first
 * iteration that finds PATH existing; ITERATIONS 0 means no limit but that one;
 * --stop-action abort or segv makes it crash on its own there instead. --abort-at and
 * --segv-at crash the program on its own at iteration N;
 * --corrupt-at changes one word of one kind of memory behind the program's back at iteration
 * N (which kind depends on N), so a test can see that the checks do catch a difference.
 *
 * At start it prints "start pid P iterations T" once. A process restored from a checkpoint
 * does not run main() from the top again, so a restored run prints no "start" line and its
 * first "iter" line continues from the checkpointed counter.
 *
 * Kinds of memory: a large malloc (16 MiB: glibc mmaps it itself), many small mallocs on the
 * brk heap with frees and reallocs, a .bss array, a .data array, stack arrays in main's
 * frame, and libzoo.so's .data and .bss.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

uint64_t *zoo_data_array(void);
uint64_t *zoo_bss_array(void);
size_t zoo_words(void);
uint64_t *zoo_counter(void);

#define PAGE_WORDS 512                  /* 4096 / 8 */
#define BIG_BYTES (16u << 20)           /* 16 MiB */
#define BIG_PAGES (BIG_BYTES / 4096)
#define BIG_STRIDE 128                  /* iteration i rewrites big pages p with p % 128 == i % 128 */
#define N_SMALL 1024                    /* small mallocs on the brk heap */
#define RECYC_BYTES (2u << 20)          /* 2 MiB, freed and malloc'ed again every RECYC_EVERY */
#define RECYC_PAGES (RECYC_BYTES / 4096)
#define RECYC_EVERY 8                   /* iterations; glibc maps it afresh (munmap + mmap, */
                                        /* usually at the same address) behind every hook */
#define BSS_WORDS (256 * 1024 / 8)      /* 256 KiB */
#define DATA_WORDS (32 * 1024 / 8)      /* 32 KiB */
#define STACK_WORDS (16 * 1024 / 8)     /* 16 KiB, twice */

/* .data: initialised, so these live in the executable's file-backed private mapping. */
static uint64_t g_iter_data[2] = {0x52454d5553ull, 0}; /* [1] is the counter */
static uint64_t data_arr[DATA_WORDS] = {7};
/* .bss */
static uint64_t bss_arr[BSS_WORDS];
static uint64_t *small_ptr[N_SMALL];
static size_t small_words[N_SMALL];
static uint64_t *big;
/* Reallocated every RECYC_EVERY iterations; only half of it is written, the half chosen by
 * the parity of the reallocation, so the other half must read as fresh zeroes: memory left
 * over from the previous mapping at the same address would show there. */
static uint64_t *recyc;

#define COUNTER (g_iter_data[1])

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The value of word w of object `obj` of kind `kind` written at iteration `it`. */
static inline uint64_t pat(uint64_t kind, uint64_t obj, uint64_t w, uint64_t it) {
    return mix((kind << 56) ^ (obj << 24) ^ it) + w * 0x100000001b3ull;
}

static void mismatch(const char *what, uint64_t obj, uint64_t w, uint64_t got, uint64_t want,
                     uint64_t it) {
    printf("MISMATCH %s at iter %llu (object %llu word %llu: got %016llx want %016llx)\n", what,
           (unsigned long long)it, (unsigned long long)obj, (unsigned long long)w,
           (unsigned long long)got, (unsigned long long)want);
    fflush(stdout);
    exit(1);
}

static void check_words(const char *what, uint64_t kind, uint64_t obj, const uint64_t *a,
                        size_t n, uint64_t it, uint64_t now) {
    for (size_t w = 0; w < n; w++) {
        uint64_t want = pat(kind, obj, w, it);
        if (a[w] != want) mismatch(what, obj, w, a[w], want, now);
    }
}

static void fill_words(uint64_t kind, uint64_t obj, uint64_t *a, size_t n, uint64_t it) {
    for (size_t w = 0; w < n; w++) a[w] = pat(kind, obj, w, it);
}

/* The iteration big page p was last written at, when the counter is s. */
static uint64_t big_last(uint64_t p, uint64_t s) {
    uint64_t r = p % BIG_STRIDE;
    if (s < r) return 0;
    return s - ((s - r) % BIG_STRIDE);
}

/* Size in words of small block b from iteration `it` on: block b is reallocated at the
 * iterations congruent to b modulo N_SMALL, freed and malloc'ed again at those congruent to
 * b + N_SMALL/2. */
static size_t small_size(uint64_t b, uint64_t gen) { return 2 + mix(b * 7919 + gen) % 62; }

static uint64_t small_gen(uint64_t b, uint64_t s) {
    /* number of resizes of block b up to and including iteration s */
    uint64_t n = 0;
    uint64_t r1 = b % N_SMALL, r2 = (b + N_SMALL / 2) % N_SMALL;
    if (s >= r1 && r1 > 0) n += (s - r1) / N_SMALL + 1;
    else if (r1 == 0) n += s / N_SMALL;
    if (s >= r2 && r2 > 0) n += (s - r2) / N_SMALL + 1;
    else if (r2 == 0) n += s / N_SMALL;
    return n;
}

static void check_all(uint64_t s, uint64_t now, uint64_t *stack_a, uint64_t *stack_b) {
    if (g_iter_data[0] != 0x52454d5553ull) mismatch("data-magic", 0, 0, g_iter_data[0], 0x52454d5553ull, now);
    if (*zoo_counter() != s) mismatch("libzoo-counter", 0, 0, *zoo_counter(), s, now);
    check_words("data", 1, 0, data_arr, DATA_WORDS, s, now);
    check_words("bss", 2, 0, bss_arr, BSS_WORDS, s, now);
    check_words("stack-a", 3, 0, stack_a, STACK_WORDS, s, now);
    check_words("stack-b", 4, 0, stack_b, STACK_WORDS, s, now);
    check_words("libzoo-data", 5, 0, zoo_data_array(), zoo_words(), s, now);
    check_words("libzoo-bss", 6, 0, zoo_bss_array(), zoo_words(), s, now);
    for (uint64_t b = 0; b < N_SMALL; b++) {
        size_t want_words = small_size(b, small_gen(b, s));
        if (small_words[b] != want_words) mismatch("small-size", b, 0, small_words[b], want_words, now);
        check_words("small-malloc", 7, b, small_ptr[b], small_words[b], s, now);
    }
    for (uint64_t p = 0; p < BIG_PAGES; p++)
        check_words("big-malloc", 8, p, big + p * PAGE_WORDS, PAGE_WORDS, big_last(p, s), now);
    uint64_t r = s - s % RECYC_EVERY; /* the iteration it was last reallocated and written */
    uint64_t half = (r / RECYC_EVERY) % 2;
    for (uint64_t p = 0; p < RECYC_PAGES; p++) {
        uint64_t *pg = recyc + p * PAGE_WORDS;
        if ((p < RECYC_PAGES / 2) == (half == 0)) {
            check_words("recycled-mmap", 9, p, pg, PAGE_WORDS, r, now);
        } else {
            for (uint64_t w = 0; w < PAGE_WORDS; w++)
                if (pg[w] != 0) mismatch("recycled-mmap-fresh-zero", p, w, pg[w], 0, now);
        }
    }
}

static void write_all(uint64_t i, uint64_t *stack_a, uint64_t *stack_b, int first) {
    fill_words(1, 0, data_arr, DATA_WORDS, i);
    fill_words(2, 0, bss_arr, BSS_WORDS, i);
    fill_words(3, 0, stack_a, STACK_WORDS, i);
    fill_words(4, 0, stack_b, STACK_WORDS, i);
    fill_words(5, 0, zoo_data_array(), zoo_words(), i);
    fill_words(6, 0, zoo_bss_array(), zoo_words(), i);
    for (uint64_t b = 0; b < N_SMALL; b++) {
        if (first) {
            small_words[b] = small_size(b, 0);
            small_ptr[b] = malloc(small_words[b] * 8);
        } else if (i % N_SMALL == b % N_SMALL && i > 0) {
            /* realloc */
            small_words[b] = small_size(b, small_gen(b, i));
            small_ptr[b] = realloc(small_ptr[b], small_words[b] * 8);
        } else if (i % N_SMALL == (b + N_SMALL / 2) % N_SMALL && i > 0) {
            /* free and malloc again */
            free(small_ptr[b]);
            small_words[b] = small_size(b, small_gen(b, i));
            small_ptr[b] = malloc(small_words[b] * 8);
        }
        if (!small_ptr[b]) {
            printf("MISMATCH out-of-memory at iter %llu\n", (unsigned long long)i);
            exit(1);
        }
        fill_words(7, b, small_ptr[b], small_words[b], i);
    }
    for (uint64_t p = 0; p < BIG_PAGES; p++)
        if (first || (i > 0 && p % BIG_STRIDE == i % BIG_STRIDE))
            fill_words(8, p, big + p * PAGE_WORDS, PAGE_WORDS, i);
    if (first || i % RECYC_EVERY == 0) {
        free(recyc);
        recyc = malloc(RECYC_BYTES);
        if (!recyc) {
            printf("MISMATCH out-of-memory at iter %llu\n", (unsigned long long)i);
            exit(1);
        }
        uint64_t half = (i / RECYC_EVERY) % 2;
        for (uint64_t p = 0; p < RECYC_PAGES; p++)
            if ((p < RECYC_PAGES / 2) == (half == 0)) fill_words(9, p, recyc + p * PAGE_WORDS, PAGE_WORDS, i);
    }
    *zoo_counter() = i;
    COUNTER = i;
}

/* Changes one word of one kind of memory, chosen by i, without updating the counter. */
static void corrupt(uint64_t i, uint64_t *stack_a, uint64_t *stack_b) {
    uint64_t *victims[] = {data_arr + 3,       bss_arr + BSS_WORDS - 1, stack_a + 5,
                           stack_b + 9,        zoo_data_array() + 1,    zoo_bss_array() + 2,
                           small_ptr[i % N_SMALL], big + (BIG_PAGES - 1) * PAGE_WORDS + 17};
    uint64_t *v = victims[i % (sizeof victims / sizeof victims[0])];
    *v ^= 1;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t arg_u64(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "memcheck: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    /* Stack arrays in main's frame. */
    uint64_t stack_a[STACK_WORDS];
    volatile uint64_t stack_b_storage[STACK_WORDS];
    uint64_t *stack_b = (uint64_t *)stack_b_storage;

    if (argc < 2) {
        fprintf(stderr, "usage: memcheck ITERATIONS [--stop-file PATH] [--stop-action exit|abort|segv] "
                        "[--sleep-us N] [--abort-at N] [--segv-at N] [--corrupt-at N]\n");
        return 2;
    }
    uint64_t target = arg_u64(argv[1], "ITERATIONS");
    long sleep = 3000;
    uint64_t abort_at = 0, segv_at = 0, corrupt_at = 0;
    const char *stop_file = NULL, *stop_action = "exit";
    for (int a = 2; a < argc; a++) {
        if (a + 1 < argc && !strcmp(argv[a], "--sleep-us")) sleep = (long)arg_u64(argv[++a], "--sleep-us");
        else if (a + 1 < argc && !strcmp(argv[a], "--abort-at")) abort_at = arg_u64(argv[++a], "--abort-at");
        else if (a + 1 < argc && !strcmp(argv[a], "--segv-at")) segv_at = arg_u64(argv[++a], "--segv-at");
        else if (a + 1 < argc && !strcmp(argv[a], "--corrupt-at")) corrupt_at = arg_u64(argv[++a], "--corrupt-at");
        else if (a + 1 < argc && !strcmp(argv[a], "--stop-file")) stop_file = argv[++a];
        else if (a + 1 < argc && !strcmp(argv[a], "--stop-action")) stop_action = argv[++a];
        else {
            fprintf(stderr, "memcheck: unknown argument %s\n", argv[a]);
            return 2;
        }
    }

    if (strcmp(stop_action, "exit") && strcmp(stop_action, "abort") && strcmp(stop_action, "segv")) {
        fprintf(stderr, "memcheck: --stop-action must be exit, abort or segv\n");
        return 2;
    }
    if (target == 0 && !stop_file) {
        fprintf(stderr, "memcheck: ITERATIONS 0 needs --stop-file\n");
        return 2;
    }
    /* A fixed mmap threshold: glibc would otherwise raise it when the recycled block is
     * freed, and serve the next one from the brk heap instead of a fresh mapping. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    big = malloc(BIG_BYTES);
    if (!big) {
        fprintf(stderr, "memcheck: malloc(%u) failed\n", BIG_BYTES);
        return 2;
    }
    /* glibc registers the thread's robust futex list at start; a restored thread must have the
     * same registration (a robust mutex's waiters rely on it when its owner dies). */
    void *robust0 = NULL;
    size_t robust_len = 0;
    syscall(SYS_get_robust_list, 0, &robust0, &robust_len);
    printf("start pid %d iterations %llu\n", (int)getpid(), (unsigned long long)target);
    fflush(stdout);
    write_all(0, stack_a, stack_b, 1);

    while (target == 0 || COUNTER < target) {
        if (stop_file && access(stop_file, F_OK) == 0) {
            if (!strcmp(stop_action, "abort")) abort_at = COUNTER + 1;
            else if (!strcmp(stop_action, "segv")) segv_at = COUNTER + 1;
            else break;
        }
        uint64_t s = COUNTER, i = s + 1;
        void *robust = NULL;
        syscall(SYS_get_robust_list, 0, &robust, &robust_len);
        if (robust != robust0) {
            printf("MISMATCH robust-list at iter %llu (registered %p, glibc's %p)\n",
                   (unsigned long long)i, robust, robust0);
            fflush(stdout);
            return 1;
        }
        check_all(s, i, stack_a, stack_b);
        if (abort_at && i == abort_at) {
            printf("aborting at iter %llu\n", (unsigned long long)i);
            fflush(stdout);
            abort();
        }
        if (segv_at && i == segv_at) {
            printf("segfaulting at iter %llu\n", (unsigned long long)i);
            fflush(stdout);
            *(volatile int *)(uintptr_t)8 = 1;
        }
        write_all(i, stack_a, stack_b, 0);
        if (corrupt_at && i == corrupt_at) corrupt(i, stack_a, stack_b);
        printf("iter %llu ok\n", (unsigned long long)i);
        fflush(stdout);
        sleep_us(sleep);
    }
    check_all(COUNTER, COUNTER, stack_a, stack_b);
    printf("done %llu\n", (unsigned long long)COUNTER);
    fflush(stdout);
    return 0;
}
