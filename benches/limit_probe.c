/* limit_probe: the least an epoch can cost on this machine (issue 13), no remus involved.
 *
 *   limit_probe PAGES [SPAN_MIB] [EPOCHS] [SPACING_US]
 *
 * One anonymous mapping of SPAN_MIB MiB (default 64) plus 3 x PAGES pages, populated, stands
 * for the memory the shim tracks in `pause_app PAGES` (its 64 MiB cache scrub and its three
 * PAGES-page buffers): it is registered with userfaultfd in asynchronous write-protect mode
 * and write-protected whole, as the uffd tracker does. Each epoch (EPOCHS, default 200, SPACING_US
 * apart, default 2000, spinning on the clock like pause_app), the program writes one word in each
 * of PAGES pages, then does the minimum an epoch needs, in a signal handler as the shim does:
 *
 *   signal   tgkill to its own thread (the handler runs on the way back from the system call);
 *   scan     one PAGEMAP_SCAN over the whole span: written pages, write-protected again in the
 *            same call (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC), as many calls as the
 *            output vector needs (one here: the dirty pages are one run);
 *   copy     the pages it reported, copied page by page into a shared memfd mapping (the
 *            staging area), as the shim does;
 *   notify   one 512-byte message (the size of remus_abi::Msg) on a SOCK_SEQPACKET socketpair
 *            whose other end a child process is blocked reading (remusd's place);
 *   return   sigreturn back to the interrupted code.
 *
 * total = from just before tgkill to just after it returns (the pause as the app sees it, plus
 * the tgkill call itself, which the app does not pay when remusd sends the signal). The first
 * 5 epochs are not counted. Prints one line:
 *   RESULT pages=N span_pages=S epochs=K found=F total_p50_ns=.. total_p99_ns=.. signal_p50_ns=..
 *          scan_p50_ns=.. copy_p50_ns=.. notify_p50_ns=..
 * (signal = entry + return; found = the pages the last scan reported, which must equal PAGES.)
 *
 * Layouts from the kernel's include/uapi/linux/fs.h and userfaultfd.h (not in this machine's
 * headers), as in shim/src/kernel/pagemap.rs and uffd.rs.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul

struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct page_region {
    uint64_t start, end, categories;
};
#define PAGE_IS_WRITTEN (1ull << 1)
#define PM_SCAN_WP_MATCHING (1ull << 0)
#define PM_SCAN_CHECK_WPASYNC (1ull << 1)
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

struct uffdio_api_ {
    uint64_t api, features, ioctls;
};
struct uffdio_range_ {
    uint64_t start, len;
};
struct uffdio_register_ {
    struct uffdio_range_ range;
    uint64_t mode, ioctls;
};
struct uffdio_writeprotect_ {
    struct uffdio_range_ range;
    uint64_t mode;
};
#define UFFD_USER_MODE_ONLY_ 1
#define UFFD_FEATURE_WP_UNPOPULATED_ (1ull << 13)
#define UFFD_FEATURE_WP_ASYNC_ (1ull << 15)
#define UFFDIO_API_ _IOWR(0xAA, 0x3F, struct uffdio_api_)
#define UFFDIO_REGISTER_ _IOWR(0xAA, 0x00, struct uffdio_register_)
#define UFFDIO_WRITEPROTECT_ _IOWR(0xAA, 0x06, struct uffdio_writeprotect_)
#define UFFDIO_REGISTER_MODE_WP_ (1ull << 1)
#define UFFDIO_WRITEPROTECT_MODE_WP_ (1ull << 0)

#define MSG_BYTES 512
#define VEC_LEN 512
#define SKIP 5

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* What the handler works on, set up by main. */
static int pagemap_fd, notify_fd;
static char *span, *staging;
static size_t span_bytes, staging_bytes;
static struct page_region vec[VEC_LEN];
static char msg[MSG_BYTES];
/* Times the handler takes (entry, after scan, after copy, after notify) and what it found. */
static volatile uint64_t t_in, t_scan, t_copy, t_notify;
static volatile uint64_t found, failed;

static void on_epoch(int sig) {
    (void)sig;
    t_in = now_ns();
    uint64_t from = (uint64_t)span, end = (uint64_t)span + span_bytes, pages = 0;
    size_t copied = 0;
    struct page_region got[VEC_LEN];
    size_t n_got = 0;
    /* Bounded: walk_end moves forward each call, or the loop stops. */
    while (from < end) {
        struct pm_scan_arg a = {
            .size = sizeof a,
            .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            .start = from,
            .end = end,
            .vec = (uint64_t)vec,
            .vec_len = VEC_LEN,
            .category_mask = PAGE_IS_WRITTEN,
            .return_mask = PAGE_IS_WRITTEN,
        };
        long n = ioctl(pagemap_fd, PAGEMAP_SCAN, &a);
        if (n < 0) {
            failed = 1;
            return;
        }
        for (long i = 0; i < n && n_got < VEC_LEN; i++) got[n_got++] = vec[i];
        if (a.walk_end <= from) break;
        from = a.walk_end;
    }
    t_scan = now_ns();
    /* Page by page, as the shim does (it records each page's address beside it). */
    for (size_t i = 0; i < n_got; i++) {
        for (uint64_t a = got[i].start; a < got[i].end && copied < staging_bytes; a += PAGE) {
            memcpy(staging + copied, (const void *)a, PAGE);
            copied += PAGE;
        }
        pages += (got[i].end - got[i].start) / PAGE;
    }
    t_copy = now_ns();
    if (write(notify_fd, msg, sizeof msg) != (ssize_t)sizeof msg) failed = 1;
    t_notify = now_ns();
    found = pages;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t pct(uint64_t *v, size_t n, double q) {
    qsort(v, n, sizeof v[0], cmp_u64);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: limit_probe PAGES [SPAN_MIB] [EPOCHS] [SPACING_US]\n");
        return 2;
    }
    size_t pages = strtoull(argv[1], NULL, 10);
    size_t span_mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 64;
    size_t epochs = argc > 3 ? strtoull(argv[3], NULL, 10) : 200;
    uint64_t spacing_ns = (argc > 4 ? strtoull(argv[4], NULL, 10) : 2000) * 1000ull;
    if (pages == 0 || pages > 1000000 || epochs <= SKIP || epochs > 100000) {
        fprintf(stderr, "limit_probe: PAGES in 1..1000000, EPOCHS in %d..100000\n", SKIP + 1);
        return 2;
    }

    /* The controller's end of the notify socket: a child blocked reading until end of file. */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) die("socketpair");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(sv[0]);
        char buf[MSG_BYTES];
        /* Bounded by the parent: read returns 0 once it closes its end. */
        while (read(sv[1], buf, sizeof buf) > 0) {
        }
        _exit(0);
    }
    close(sv[1]);
    notify_fd = sv[0];

    span_bytes = (span_mib << 20) + 3 * pages * PAGE;
    span = mmap(NULL, span_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (span == MAP_FAILED) die("mmap span");
    memset(span, 0x5a, span_bytes);
    staging_bytes = pages * PAGE;
    int mfd = memfd_create("probe-staging", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, (off_t)staging_bytes)) die("memfd");
    staging = mmap(NULL, staging_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (staging == MAP_FAILED) die("mmap staging");
    memset(staging, 0, staging_bytes);

    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY_);
    if (uffd < 0) die("userfaultfd");
    struct uffdio_api_ api = {.api = 0xAA,
                              .features = UFFD_FEATURE_WP_ASYNC_ | UFFD_FEATURE_WP_UNPOPULATED_};
    if (ioctl(uffd, UFFDIO_API_, &api)) die("UFFDIO_API");
    struct uffdio_register_ reg = {.range = {(uint64_t)span, span_bytes},
                                   .mode = UFFDIO_REGISTER_MODE_WP_};
    if (ioctl(uffd, UFFDIO_REGISTER_, &reg)) die("UFFDIO_REGISTER");
    struct uffdio_writeprotect_ wp = {.range = {(uint64_t)span, span_bytes},
                                      .mode = UFFDIO_WRITEPROTECT_MODE_WP_};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT_, &wp)) die("UFFDIO_WRITEPROTECT");
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap_fd < 0) die("open /proc/self/pagemap");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_epoch;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    int sig = SIGRTMIN + 1;
    if (sigaction(sig, &sa, NULL)) die("sigaction");
    pid_t pid = getpid(), tid = (pid_t)syscall(SYS_gettid);

    size_t n = epochs - SKIP;
    uint64_t *total = calloc(n, 8), *signal_ns = calloc(n, 8), *scan = calloc(n, 8),
             *copy = calloc(n, 8), *notify = calloc(n, 8);
    if (!total || !signal_ns || !scan || !copy || !notify) die("calloc");
    volatile uint64_t *words = (volatile uint64_t *)span;
    for (size_t e = 0; e < epochs; e++) {
        uint64_t until = now_ns() + spacing_ns;
        /* Bounded by the clock. */
        while (now_ns() < until) {
        }
        for (size_t p = 0; p < pages; p++) words[p * (PAGE / 8)] = e + p;
        uint64_t t0 = now_ns();
        if (syscall(SYS_tgkill, pid, tid, sig)) die("tgkill");
        uint64_t t1 = now_ns();
        if (failed) die("PAGEMAP_SCAN or notify in the handler");
        if (e < SKIP) continue;
        size_t i = e - SKIP;
        total[i] = t1 - t0;
        signal_ns[i] = (t_in - t0) + (t1 - t_notify);
        scan[i] = t_scan - t_in;
        copy[i] = t_copy - t_scan;
        notify[i] = t_notify - t_copy;
    }
    close(notify_fd);
    waitpid(child, NULL, 0);
    uint64_t t50 = pct(total, n, 0.50), t99 = pct(total, n, 0.99);
    printf("RESULT pages=%zu span_pages=%zu epochs=%zu found=%llu total_p50_ns=%llu "
           "total_p99_ns=%llu signal_p50_ns=%llu scan_p50_ns=%llu copy_p50_ns=%llu "
           "notify_p50_ns=%llu\n",
           pages, span_bytes / PAGE, n, (unsigned long long)found, (unsigned long long)t50,
           (unsigned long long)t99, (unsigned long long)pct(signal_ns, n, 0.5),
           (unsigned long long)pct(scan, n, 0.5), (unsigned long long)pct(copy, n, 0.5),
           (unsigned long long)pct(notify, n, 0.5));
    fflush(stdout);
    return found == pages ? 0 : 5;
}
