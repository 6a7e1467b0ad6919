/* An app whose signal handler writes to the socket its main loop writes to (the libevent
 * pattern, and what many servers do on a self-pipe or socketpair), and to stdout too.
 *
 *   sigwrite HOST:PORT [SECONDS]
 *
 * Connects to HOST:PORT (IPv4). A SIGALRM handler, every 300 us (setitimer), sends the line
 * "h N\n" on the socket and writes it to stdout, N = 1, 2, 3, ... Meanwhile the main loop
 * sends "m N\n" on the socket and writes it to stdout, N = 1, 2, 3, ..., for SECONDS
 * (default 4). Then it stops the timer and sends and prints the final marker
 *
 *   end m M h H overlap O eintr E partial P
 *
 * (M and H: how many lines each wrote; O: handler runs that landed while the main loop was
 * inside its send or write; E and P: how often the main loop's calls returned EINTR or a
 * short count, and were continued), closes the socket and exits 0. A reader must see every
 * h and m line exactly once, in order per source, whole, on both the socket and stdout.
 *
 * The handler is installed without SA_RESTART, so the main loop's calls do get EINTR and
 * short counts: it continues them (a short send goes on with the rest of the line). Exit 2:
 * bad arguments or the connection failed; exit 3: a send or write failed (in the handler or
 * in the main loop), with the reason on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int sock = -1;
/* The handler's own: its line count, and the errno of a failed send or write (0: none). */
static volatile sig_atomic_t h_count;
static volatile sig_atomic_t h_failed;
static volatile sig_atomic_t h_failed_on_sock;
/* Set by the main loop around its send and write; counted by the handler. */
static volatile sig_atomic_t in_main_output;
static volatile sig_atomic_t overlap;

/* "<tag> <n>\n" into buf (at least 24 bytes), async-signal-safe; returns the length. */
static size_t format_line(char *buf, char tag, unsigned long n) {
    char digits[24];
    size_t k = 0, len = 0;
    do {
        digits[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    buf[len++] = tag;
    buf[len++] = ' ';
    while (k)
        buf[len++] = digits[--k];
    buf[len++] = '\n';
    return len;
}

/* Sends (or writes) all of p; continues after EINTR and short counts. 0, or -1 with errno.
 * Counts the EINTRs and short counts in *eintr and *partial when given. */
static int out_all(int fd, int is_sock, const char *p, size_t n, unsigned long *eintr,
                   unsigned long *partial) {
    while (n > 0) {
        ssize_t k = is_sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) {
                if (eintr)
                    (*eintr)++;
                continue;
            }
            return -1;
        }
        if ((size_t)k < n && partial)
            (*partial)++;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    if (in_main_output)
        overlap = overlap + 1;
    if (!h_failed) {
        char line[24];
        size_t n = format_line(line, 'h', (unsigned long)h_count + 1);
        if (out_all(sock, 1, line, n, NULL, NULL) != 0) {
            h_failed = errno ? errno : EIO;
            h_failed_on_sock = 1;
        } else if (out_all(1, 0, line, n, NULL, NULL) != 0) {
            h_failed = errno ? errno : EIO;
        } else {
            h_count = h_count + 1;
        }
    }
    errno = saved;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: sigwrite HOST:PORT [SECONDS]\n");
        return 2;
    }
    double seconds = argc == 3 ? atof(argv[2]) : 4.0;
    char host[64];
    const char *colon = strrchr(argv[1], ':');
    if (!colon || (size_t)(colon - argv[1]) >= sizeof host || seconds <= 0) {
        fprintf(stderr, "sigwrite: bad arguments: %s %s\n", argv[1], argc == 3 ? argv[2] : "");
        return 2;
    }
    memcpy(host, argv[1], (size_t)(colon - argv[1]));
    host[colon - argv[1]] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "sigwrite: not an IPv4 address: %s\n", host);
        return 2;
    }
    sock = socket(AF_INET, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "sigwrite: connect %s: %s\n", argv[1], strerror(errno));
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the main loop sees EINTR */
    if (sigaction(SIGALRM, &sa, NULL) != 0) {
        perror("sigwrite: sigaction");
        return 2;
    }
    struct itimerval every = {.it_interval = {0, 300}, .it_value = {0, 300}};
    if (setitimer(ITIMER_REAL, &every, NULL) != 0) {
        perror("sigwrite: setitimer");
        return 2;
    }

    unsigned long m = 0, eintr = 0, partial = 0;
    double end = now_s() + seconds;
    while (!h_failed && now_s() < end) {
        char line[24];
        size_t n = format_line(line, 'm', m + 1);
        in_main_output = 1;
        int bad = out_all(sock, 1, line, n, &eintr, &partial);
        int bad_out = bad ? 0 : out_all(1, 0, line, n, &eintr, &partial);
        in_main_output = 0;
        if (bad || bad_out) {
            fprintf(stderr, "sigwrite: main loop: %s of \"m %lu\" failed: %s\n",
                    bad ? "send" : "write to stdout", m + 1, strerror(errno));
            return 3;
        }
        m++;
        /* About 200 us between lines; a signal ends the pause early (not resumed). */
        struct timespec pause = {0, 200 * 1000};
        nanosleep(&pause, NULL);
    }

    /* Stop the handler for good before the final count. */
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    if (h_failed) {
        fprintf(stderr, "sigwrite: the handler's %s of \"h %lu\" failed: %s\n",
                h_failed_on_sock ? "send" : "write to stdout", (unsigned long)h_count + 1,
                strerror((int)h_failed));
        return 3;
    }
    char fin[160];
    int n = snprintf(fin, sizeof fin, "end m %lu h %lu overlap %lu eintr %lu partial %lu\n", m,
                     (unsigned long)h_count, (unsigned long)overlap, eintr, partial);
    if (out_all(sock, 1, fin, (size_t)n, NULL, NULL) != 0 ||
        out_all(1, 0, fin, (size_t)n, NULL, NULL) != 0) {
        fprintf(stderr, "sigwrite: the final marker failed: %s\n", strerror(errno));
        return 3;
    }
    if (close(sock) != 0) {
        fprintf(stderr, "sigwrite: close: %s\n", strerror(errno));
        return 3;
    }
    return 0;
}
