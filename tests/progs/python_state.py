"""python_state: a Python program keeping its state in dicts and lists, checked every step.

    python3 python_state.py ITERATIONS [--stop-file PATH] [--sleep-ms N] [--corrupt-at N]

The state is a function of one counter (the iteration it was last written for), which is
itself kept twice, in a dict and in a module global. Iteration i (from 1): verify that every
structure holds what iteration i-1 left in it, then mutate it for iteration i and print
"iter i ok". After ITERATIONS iterations print "done ITERATIONS" and exit 0; on any
difference print "MISMATCH <what> at iter i" and exit 1. "start pid P iterations T" is
printed once at start: a process restored from a checkpoint does not start over, so it
never prints it again, and its counter continues. With --stop-file it also stops (check,
"done N", exit 0) at the first iteration that finds PATH existing; ITERATIONS 0 means no
limit but that one.

--corrupt-at N changes one entry behind the program's back at iteration N, so a test can
see that the checks do catch a difference.
"""

import os
import sys
import time

BIG = 200_000  # a big list of ints (about 7 MiB with the int objects)
STRIDE = 64  # iteration i rewrites entries k with k % STRIDE == i % STRIDE
N_KEYS = 4000
N_LISTS = 500


def last(k, s):
    """The iteration entry k was last written at, when the counter is s."""
    r = k % STRIDE
    if s < r:
        return 0
    return s - (s - r) % STRIDE


def big_value(k, it):
    return k * 1_000_003 + it * 7 + 1_000_000_000


def key_value(j, it):
    return ("v%d" % j, it, j * j)


def list_value(j, it):
    return [j, it, "x" * (j % 17), float(j) / 3.0]


def expected_text(s):
    return "state-%d-" % s + "abc" * (s % 50)


class State:
    def __init__(self):
        self.counter = {"iter": 0}
        self.big = [big_value(k, 0) for k in range(BIG)]
        self.d = {"k%d" % j: key_value(j, 0) for j in range(N_KEYS)}
        self.lists = [list_value(j, 0) for j in range(N_LISTS)]
        # a growing and shrinking list: length depends on the counter
        self.queue = []
        self.text = expected_text(0)


ITER = 0  # second copy of the counter, a module global
st = None


def mismatch(what, now, detail=""):
    print("MISMATCH %s at iter %d %s" % (what, now, detail), flush=True)
    sys.exit(1)


def check(s, now):
    if st.counter["iter"] != s or ITER != s:
        mismatch("counter", now, "dict=%r global=%r" % (st.counter["iter"], ITER))
    big = st.big
    if len(big) != BIG:
        mismatch("big-length", now)
    for r in range(STRIDE):
        lr = last(r, s)
        # entries with k % STRIDE == r were all last written at iteration lr
        # (big_value is linear in k, so the expected slice is a range: compared at C speed)
        n = len(range(r, BIG, STRIDE))
        first = big_value(r, lr)
        step = big_value(r + STRIDE, lr) - first
        want = list(range(first, first + n * step, step))
        if big[r::STRIDE] != want:
            mismatch("big-list", now, "residue %d" % r)
    if len(st.d) != N_KEYS:
        mismatch("dict-size", now)
    for j in range(N_KEYS):
        if st.d["k%d" % j] != key_value(j, last(j, s)):
            mismatch("dict", now, "key k%d" % j)
    for j in range(N_LISTS):
        if st.lists[j] != list_value(j, last(j, s)):
            mismatch("list-of-lists", now, "entry %d" % j)
    q = st.queue
    if len(q) != s % 97 or any(q[n] != s - len(q) + 1 + n for n in range(len(q))):
        mismatch("queue", now, "len %d" % len(q))
    if st.text != expected_text(s):
        mismatch("text", now)


def mutate(i):
    global ITER
    r = i % STRIDE
    for k in range(r, BIG, STRIDE):
        st.big[k] = big_value(k, i)
    for j in range(r, N_KEYS, STRIDE):
        st.d["k%d" % j] = key_value(j, i)
    for j in range(r, N_LISTS, STRIDE):
        st.lists[j] = list_value(j, i)
    if i % 97 == 0:
        st.queue.clear()
    else:
        st.queue.append(i)
    st.text = expected_text(i)
    st.counter["iter"] = i
    ITER = i


def corrupt(i):
    which = i % 4
    if which == 0:
        st.big[BIG - 1] += 1
    elif which == 1:
        st.d["k7"] = ("corrupt", 0, 0)
    elif which == 2:
        st.lists[3][1] += 1
    else:
        st.queue.append(-1)


def main():
    global st
    args = sys.argv[1:]
    if not args:
        print(
            "usage: python_state.py ITERATIONS [--stop-file PATH] [--sleep-ms N] [--corrupt-at N]",
            file=sys.stderr,
        )
        sys.exit(2)
    target = int(args[0])
    sleep_ms = 3.0
    corrupt_at = 0
    stop_file = None
    rest = args[1:]
    while rest:
        if rest[0] == "--sleep-ms" and len(rest) > 1:
            sleep_ms = float(rest[1])
        elif rest[0] == "--stop-file" and len(rest) > 1:
            stop_file = rest[1]
        elif rest[0] == "--corrupt-at" and len(rest) > 1:
            corrupt_at = int(rest[1])
        else:
            print("python_state.py: unknown argument %s" % rest[0], file=sys.stderr)
            sys.exit(2)
        rest = rest[2:]
    if target == 0 and stop_file is None:
        print("python_state.py: ITERATIONS 0 needs --stop-file", file=sys.stderr)
        sys.exit(2)
    st = State()
    print("start pid %d iterations %d" % (os.getpid(), target), flush=True)
    while target == 0 or ITER < target:
        if stop_file is not None and os.path.exists(stop_file):
            break
        s = ITER
        i = s + 1
        check(s, i)
        mutate(i)
        if i == corrupt_at:
            corrupt(i)
        print("iter %d ok" % i, flush=True)
        time.sleep(sleep_ms / 1000.0)
    check(ITER, ITER)
    print("done %d" % ITER, flush=True)


main()
