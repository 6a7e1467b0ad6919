/* mem_server: a program holding SIZE_MB of state that answers on a TCP port.
 *
 *   mem_server SIZE_MB PORT
 *
 * Fills SIZE_MB MiB with a pattern that depends on the page (so pages are distinct, and
 * compress about as well as program data does), prints "ready", then serves: each accepted
 * connection gets one line "ok <counter>\n" and is closed; every answer also rewrites one word
 * in 16 pages of the state (a little dirtying per epoch). Used by the benchmark table for
 * failover time and the first full synchronisation.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: mem_server SIZE_MB PORT\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20;
    int port = atoi(argv[2]);
    uint64_t *mem = malloc(size);
    if (!mem) return 1;
    size_t words = size / 8;
    for (size_t i = 0; i < words; i++) {
        /* Half of each page is a counter sequence, half zero: about 2:1 under snap. */
        mem[i] = (i % 512) < 256 ? (i * 0x9e3779b97f4a7c15ull) >> 40 : 0;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128)) {
        perror("bind/listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    uint64_t counter = 0;
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        counter++;
        for (int k = 0; k < 16; k++) mem[((counter * 16 + k) * 512) % words] = counter;
        char buf[64];
        int n = snprintf(buf, sizeof buf, "ok %llu\n", (unsigned long long)counter);
        if (write(c, buf, n) < 0) perror("write");
        close(c);
    }
}
