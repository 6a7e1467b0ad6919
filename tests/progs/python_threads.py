"""python_threads: a Python program whose state is kept by threads, checked every iteration.

    python3 python_threads.py ITERATIONS [--stop-file PATH] [--sleep-ms N]

The main thread puts numbered jobs on a queue.Queue; WORKERS threads take them, add each job's
number to a shared total and record it in a per-worker list under a threading.Lock, and put an
acknowledgement on a second queue; a threading.Condition wakes a watcher thread, which keeps
its own count. Iteration i puts job i, waits (bounded) for its acknowledgement, then checks
that the total is 1 + ... + i, that every job was done exactly once, that the watcher saw i
wake-ups and that each thread's threading.local value is still its own, and prints
"iter i ok". "start pid P" is printed once (a restored process does not start over); any
difference prints "MISMATCH <what> at iter i" and exits 1; "done N" at the end.
"""

import os
import queue
import sys
import threading
import time

WORKERS = 3

jobs = queue.Queue()
acks = queue.Queue()
lock = threading.Lock()
cond = threading.Condition()
total = 0
done_by = [[] for _ in range(WORKERS)]
local = threading.local()
woken = 0
posted = 0
problems = []


def worker(k):
    global total
    local.who = ("worker", k)
    while True:
        n = jobs.get()
        with lock:
            total += n
            done_by[k].append(n)
        if local.who != ("worker", k):
            problems.append("threading.local of worker %d changed" % k)
        acks.put(n)


def watcher():
    global woken
    local.who = ("watcher",)
    seen = 0
    while True:
        with cond:
            while posted == seen:
                cond.wait()
            seen = posted
            woken = seen
        if local.who != ("watcher",):
            problems.append("threading.local of the watcher changed")


def mismatch(what, i):
    print("MISMATCH %s at iter %d" % (what, i), flush=True)
    sys.exit(1)


def main():
    global posted
    args = sys.argv[1:]
    if not args:
        print("usage: python_threads.py ITERATIONS [--stop-file PATH] [--sleep-ms N]", file=sys.stderr)
        sys.exit(2)
    target = int(args[0])
    stop_file = None
    sleep_ms = 2
    rest = args[1:]
    while rest:
        if rest[0] == "--stop-file" and len(rest) > 1:
            stop_file = rest[1]
            rest = rest[2:]
        elif rest[0] == "--sleep-ms" and len(rest) > 1:
            sleep_ms = int(rest[1])
            rest = rest[2:]
        else:
            print("python_threads: unknown argument %s" % rest[0], file=sys.stderr)
            sys.exit(2)
    for k in range(WORKERS):
        threading.Thread(target=worker, args=(k,), daemon=True).start()
    threading.Thread(target=watcher, daemon=True).start()
    local.who = ("main",)
    print("start pid %d threads %d" % (os.getpid(), threading.active_count()), flush=True)
    i = 0
    while target == 0 or i < target:
        if stop_file and os.path.exists(stop_file):
            break
        i += 1
        jobs.put(i)
        try:
            got = acks.get(timeout=10)
        except queue.Empty:
            mismatch("no acknowledgement for job %d within 10 s" % i, i)
        if got != i:
            mismatch("acknowledged job %d instead of %d" % (got, i), i)
        with cond:
            posted = i
            cond.notify()
        deadline = time.monotonic() + 10
        while woken < i:
            if time.monotonic() > deadline:
                mismatch("the watcher saw %d wake-ups, not %d" % (woken, i), i)
            time.sleep(0.0005)
        with lock:
            if total != i * (i + 1) // 2:
                mismatch("total %d" % total, i)
            n_done = sum(len(d) for d in done_by)
            if n_done != i:
                mismatch("%d jobs done" % n_done, i)
        if local.who != ("main",):
            mismatch("threading.local of the main thread", i)
        if problems:
            mismatch(problems[0], i)
        print("iter %d ok" % i, flush=True)
        time.sleep(sleep_ms / 1000)
    print("done %d" % i, flush=True)


main()
