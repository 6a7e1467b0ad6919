/* Regular files the program writes in its working directory (replicated by default): a log
 * appended with stdio (fprintf + fflush: glibc writes through its internal __write, which no
 * hook sees) and a counter rewritten with pwrite at offset 0 of a second file, whose own
 * offset stays where a first write() left it. Writes run without pause across the failover;
 * once restored, the program checks that both files (the standby's copies, read through its
 * own descriptors) hold exactly what its memory says it wrote, and that its offsets match,
 * then goes on writing and checks again. Prints `files final N cwd PATH` (N: the last line number). */
#include "zoo.h"

#define CWIDTH 11 /* "%010d\n" */

static FILE *logf;
static int cfd;
static long n; /* lines written (and the counter's value) */

static void step(void) {
    n++;
    CHECK(fprintf(logf, "line %ld\n", n) > 0, "fprintf");
    CHECK(fflush(logf) == 0, "fflush");
    char c[CWIDTH + 1];
    snprintf(c, sizeof c, "%010ld\n", n);
    CHECK(pwrite(cfd, c, CWIDTH, 0) == CWIDTH, "pwrite");
}

/* Reads the whole file behind descriptor fd through /proc/self/fd (the same file, even on
 * the standby where the path is the copy's). */
static char *slurp(int fd, long *len) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    int r = open(p, O_RDONLY);
    CHECK(r >= 0, "open %s", p);
    struct stat st;
    CHECK(fstat(r, &st) == 0, "fstat");
    char *b = malloc((size_t)st.st_size + 1);
    CHECK(b != NULL, "malloc");
    long got = 0;
    while (got < st.st_size) {
        ssize_t k = pread(r, b + got, (size_t)(st.st_size - got), got);
        CHECK(k > 0, "pread");
        got += k;
    }
    b[got] = 0;
    close(r);
    *len = got;
    return b;
}

static void verify(const char *when) {
    long len;
    char *b = slurp(fileno(logf), &len);
    /* Every line, in order, exactly 1..n: nothing lost, nothing from the future. */
    long want = 1;
    for (char *p = b; *p;) {
        char *e = strchr(p, '\n');
        CHECK(e != NULL, "%s: log ends with a partial line after line %ld", when, want - 1);
        *e = 0;
        char exp[64];
        snprintf(exp, sizeof exp, "line %ld", want);
        CHECK(strcmp(p, exp) == 0, "%s: log line %ld is '%s'", when, want, p);
        want++;
        p = e + 1;
    }
    CHECK(want - 1 == n, "%s: the log has %ld lines, the program wrote %ld", when, want - 1, n);
    off_t at = lseek(fileno(logf), 0, SEEK_CUR);
    CHECK(at == len, "%s: log offset %ld, size %ld", when, (long)at, len);
    CHECK(ftell(logf) == len, "%s: ftell %ld, size %ld", when, ftell(logf), len);
    free(b);

    b = slurp(cfd, &len);
    CHECK(len == CWIDTH, "%s: counter file is %ld bytes", when, len);
    CHECK(atol(b) == n, "%s: counter file says %ld, the program wrote %ld", when, atol(b), n);
    free(b);
    CHECK(lseek(cfd, 0, SEEK_CUR) == CWIDTH, "%s: counter offset %ld, expected %d", when,
          (long)lseek(cfd, 0, SEEK_CUR), CWIDTH);
}

int main(int argc, char **argv) {
    argc = zoo_init("files", argc, argv);
    (void)zoo_ready; /* it says "start ready" itself, with its working directory */
    CHECK(argc == 1, "usage: files --stop-file STOP");
    logf = fopen("log.txt", "a");
    CHECK(logf != NULL, "fopen log.txt");
    cfd = open("counter", O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(cfd >= 0, "open counter");
    CHECK(write(cfd, "0000000000\n", CWIDTH) == CWIDTH, "write counter");
    for (int i = 0; i < 50; i++)
        step();
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
    printf("start ready pid %d cwd %s\n", (int)getpid(), cwd);
    fflush(stdout);
    /* Keep writing until the test says stop (it does so only after the failover). */
    while (!zoo_stopped()) {
        step();
        zoo_sleep_ms(1);
    }
    zoo_check_restored();
    verify("after failover");
    for (int i = 0; i < 100; i++)
        step();
    verify("after writing on");
    printf("files final %ld cwd %s\n", n, cwd);
    zoo_ok();
}
