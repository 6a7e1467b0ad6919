/* Test servers for socket output commit (tests/output_stream.rs, tests/servers.rs).
 *
 *   netserve stream PORT --stop-file F
 *     Accepts one client at a time and writes it an increasing counter, one line per
 *     write(): "N\n". The counter lives in memory and goes on across clients, so a server
 *     restored from a checkpoint resumes from the checkpoint's value.
 *   netserve echo PORT --stop-file F
 *     epoll, non-blocking: answers each line "L" with "L N\n" (N counts answers).
 *
 * Both print "ready PORT" once listening; both exit 0 once F exists.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

static const char *stop_file;
static unsigned long long counter;

static int stopped(void) { return stop_file && access(stop_file, F_OK) == 0; }

static int listen_on(int port, int nonblock) {
    int s = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) {
        perror("bind/listen");
        exit(2);
    }
    printf("ready %d\n", port);
    fflush(stdout);
    return s;
}

static int stream(int port) {
    int l = listen_on(port, 0);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (!stopped()) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue; /* timeout: look at the stop file */
        char line[32];
        for (;;) {
            if ((counter & 63) == 0 && stopped())
                break;
            int n = snprintf(line, sizeof line, "%llu\n", counter + 1);
            if (write(c, line, n) != n)
                break; /* the client went away (or the connection did not survive) */
            counter++;
            usleep(50);
        }
        close(c);
    }
    return 0;
}

struct conn {
    int fd;
    char buf[4096];
    size_t len;
};

static int echo(int port) {
    int l = listen_on(port, 1);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    while (!stopped()) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                close(c->fd);
                free(c);
                continue;
            }
            c->len += r;
            char *nl;
            while ((nl = memchr(c->buf, '\n', c->len))) {
                *nl = 0;
                char out[4200];
                int m = snprintf(out, sizeof out, "%s %llu\n", c->buf, ++counter);
                if (write(c->fd, out, m) != m) { /* EAGAIN on a full log: drop (test only) */ }
                size_t used = nl + 1 - c->buf;
                memmove(c->buf, nl + 1, c->len - used);
                c->len -= used;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: netserve stream|echo PORT [--stop-file F]\n");
        return 2;
    }
    for (int i = 3; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--stop-file"))
            stop_file = argv[i + 1];
    signal(SIGPIPE, SIG_IGN);
    int port = atoi(argv[2]);
    if (!strcmp(argv[1], "stream"))
        return stream(port);
    if (!strcmp(argv[1], "echo"))
        return echo(port);
    return 2;
}
