/* Prints a sequence number per line, fast, until told to stop.
 *
 *   seqprint --stop-file PATH [--sleep-us N] [--fd 1|2]
 *
 * Writes "seq N\n" to stdout (or to fd 2 with --fd 2) for N = 1, 2, 3, ..., one write(2) per line (nothing waits in a
 * stdio buffer), sleeping N microseconds between lines (default 250: a few thousand lines a
 * second). Every 64 lines it looks for PATH; once it exists it writes "done N" (N: the last
 * line written) and exits 0. Exit 2: bad arguments; exit 3: a write failed.
 *
 * The committed-output test (tests/committed_output.rs) kills the primary side of this
 * program and checks that what the primary released followed by what the standby wrote holds
 * every line from 1 to N, with no gap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int out_fd = 1;

static void write_line(const char *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(out_fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "seqprint: write: %s\n", n < 0 ? strerror(errno) : "wrote nothing");
            exit(3);
        }
        done += (size_t)n;
    }
}

int main(int argc, char **argv)
{
    const char *stop_file = NULL;
    long sleep_us = 250;
    for (int a = 1; a < argc; a++) {
        if (a + 1 < argc && !strcmp(argv[a], "--stop-file"))
            stop_file = argv[++a];
        else if (a + 1 < argc && !strcmp(argv[a], "--sleep-us"))
            sleep_us = atol(argv[++a]);
        else if (a + 1 < argc && !strcmp(argv[a], "--fd"))
            out_fd = atoi(argv[++a]);
        else {
            fprintf(stderr, "usage: seqprint --stop-file PATH [--sleep-us N] [--fd 1|2]\n");
            return 2;
        }
    }
    if (!stop_file || sleep_us < 0 || (out_fd != 1 && out_fd != 2)) {
        fprintf(stderr, "usage: seqprint --stop-file PATH [--sleep-us N] [--fd 1|2]\n");
        return 2;
    }
    char buf[64];
    for (unsigned long n = 1;; n++) {
        int len = snprintf(buf, sizeof buf, "seq %lu\n", n);
        write_line(buf, (size_t)len);
        if (n % 64 == 0 && access(stop_file, F_OK) == 0) {
            len = snprintf(buf, sizeof buf, "done %lu\n", n);
            write_line(buf, (size_t)len);
            return 0;
        }
        if (sleep_us > 0) {
            struct timespec ts = {sleep_us / 1000000, (sleep_us % 1000000) * 1000};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
        }
    }
}
