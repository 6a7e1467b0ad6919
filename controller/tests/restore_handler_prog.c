/* Test program for the shim-style resume path of restore (ResumeContext, not full registers).
 * Like the shim, a signal handler saves a resume context (callee-saved registers, stack
 * pointer after return, return address, fs base) with save_ctx(), which returns 0 here and 1
 * on the restored side. The handler then parks (spins) so the test can dump the process;
 * the restored process returns from the handler through rt_sigreturn, which must bring back
 * main's own signal mask (SIGUSR2 blocked), and main carries on with its checks.
 *
 * usage: restore_handler_prog ROUNDS */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <asm/prctl.h>

struct ctx {
    unsigned long rbx, rbp, r12, r13, r14, r15, rsp, rip, fs_base;
};
struct ctx saved_ctx;
static volatile int restored;
static __thread unsigned long tls_word = 11;

unsigned long save_ctx(struct ctx *c);
__asm__(".text\n"
        ".globl save_ctx\n"
        ".type save_ctx,@function\n"
        "save_ctx:\n"
        "  mov %rbx, 0(%rdi)\n"
        "  mov %rbp, 8(%rdi)\n"
        "  mov %r12, 16(%rdi)\n"
        "  mov %r13, 24(%rdi)\n"
        "  mov %r14, 32(%rdi)\n"
        "  mov %r15, 40(%rdi)\n"
        "  lea 8(%rsp), %rax\n"
        "  mov %rax, 48(%rdi)\n"
        "  mov (%rsp), %rax\n"
        "  mov %rax, 56(%rdi)\n"
        "  xor %eax, %eax\n"
        "  ret\n"
        ".size save_ctx, .-save_ctx\n");

static void handler(int sig) {
    (void)sig;
    if (save_ctx(&saved_ctx)) {
        restored = 1;
        return;
    }
    unsigned long fs = 0;
    syscall(SYS_arch_prctl, ARCH_GET_FS, &fs);
    saved_ctx.fs_base = fs;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "parked %p\n", (void *)&saved_ctx);
    write(1, msg, n);
    for (;;) {
        __asm__ volatile("pause");
    }
}

static unsigned char pat(unsigned long i, unsigned long round) {
    return (unsigned char)(i * 29 + round * 3 + 1);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    unsigned long rounds = strtoul(argv[1], 0, 10);
    size_t len = 4u << 20;
    unsigned char *big = malloc(len);
    if (!big) return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, 0);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    sigprocmask(SIG_BLOCK, &m, 0);

    for (unsigned long r = 0; r < rounds; r++) {
        for (size_t i = 0; i < len; i++) big[i] = pat(i, r);
        if (r == 3) {
            syscall(SYS_kill, getpid(), SIGUSR1); /* parks in the handler */
            if (!restored) { printf("FAIL handler returned without a restore\n"); return 3; }
            sigset_t cur;
            sigprocmask(SIG_BLOCK, 0, &cur);
            if (!sigismember(&cur, SIGUSR2) || sigismember(&cur, SIGUSR1)) {
                printf("FAIL signal mask after restore\n");
                return 3;
            }
            printf("resumed in handler\n");
        }
        for (size_t i = 0; i < len; i++) {
            if (big[i] != pat(i, r)) { printf("FAIL big round %lu\n", r); return 3; }
        }
        if (tls_word != 11 + r) { printf("FAIL tls\n"); return 3; }
        tls_word++;
        printf("round %lu ok\n", r);
        fflush(stdout);
    }
    printf("done\n");
    return 0;
}
