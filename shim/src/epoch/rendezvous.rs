//! One epoch is one consistent cut of every thread (DESIGN §8). The thread that takes the
//! controller's request is the leader: it lists the process's threads (`/proc/self/task`, kept
//! open), sends each other thread the epoch signal with `SI_QUEUE` and this rendezvous's
//! generation in `si_value`, and waits until every one of them has parked in its epoch handler
//! (its resume point and its record saved in its slot, `base::threads`), listing again until no
//! new thread turns up. Then it runs the one capture for the whole address space and releases
//! them all. A thread that exits meanwhile is dropped; one that does not park within
//! [`DEADLINE_NS`] aborts the rendezvous (everyone is released, the controller is told which
//! thread, and asks again at its next tick). A stale signal (an older generation) is ignored.
//!
//! Signals pending at the cut: the kernel's queues are not in the image, so a signal one thread
//! sent another (or itself) before the checkpoint and that was still pending at it (blocked by
//! the app, or sent while its target was parked) would be lost by a restore from that epoch.
//! Every thread, as it parks (and the leader, once all are in, also the process's own pending
//! signals), takes its pending signals out of the kernel into its slot ([`drain_pending`]), so that they are in the captured memory,
//! and queues them again with their siginfo when its handler is done ([`requeue_caught`]),
//! on the primary and in the restored process alike. A signal the app sends while a
//! rendezvous is on (its `kill`/`pthread_kill`/... hooks call [`note_signal_sent`]) may have
//! reached a thread that already parked: that rendezvous is done again (up to
//! [`SIGNAL_RETRIES`] times; then the epoch is taken all the same, and a restore from it could
//! miss such a signal: a program would have to signal its threads without pause).
//!
//! Only atomics, raw futex calls and fixed tables: this runs in signal handlers.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use remus_abi::{ResumeContext, ThreadRecord, EPOCH_SIGNAL, MAX_THREADS, THREAD_MAIN};

use crate::base::state;
use crate::base::threads::{self, Slot, CAUGHT_MAX};
use crate::kernel::{context, sys, text};

/// How long the leader waits for the last thread to park.
pub const DEADLINE_NS: u64 = 200_000_000;

/// The generation of the last rendezvous started (the leader bumps it).
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The generation in progress, 0 when none: a follower parks only for this one.
static ACTIVE: AtomicU64 = AtomicU64::new(0);
/// Bumped (and woken) at every release: a parked follower waits while it has not moved.
static RELEASE: AtomicU32 = AtomicU32::new(0);
/// Bumped (and woken) by every follower that parks: the leader's wait word.
static ARRIVALS: AtomicU32 = AtomicU32::new(0);
/// The followers that parked for [`ACTIVE`]: `PARKED_SLOT[i]` holds the address of the slot
/// once `PARKED_GEN[i]` says which generation it parked for. Filled by `fetch_add` on [`N_PARKED`].
static N_PARKED: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the tables
const ZERO64: AtomicU64 = AtomicU64::new(0);
static PARKED_GEN: [AtomicU64; MAX_THREADS] = [ZERO64; MAX_THREADS];
static PARKED_SLOT: [AtomicU64; MAX_THREADS] = [ZERO64; MAX_THREADS];

/// Signals the app sent while a rendezvous was on (see the module docs).
static SENT: AtomicU64 = AtomicU64::new(0);
/// How many times a rendezvous is done again because the app sent a signal meanwhile.
const SIGNAL_RETRIES: u32 = 8;

/// In the restored process: how many followers the last capture had, and the barrier that keeps
/// them from running app code before the leader has put the process's own state back.
static FOLLOWERS: AtomicU32 = AtomicU32::new(0);
static RESTORED_ARRIVED: AtomicU32 = AtomicU32::new(0);
static RESTORED_GO: AtomicU32 = AtomicU32::new(0);

/// The leader's view of one rendezvous (only the leader touches it).
pub struct Gathered {
    /// Followers' thread ids as signalled, and whether each is known parked or gone.
    tids: [i32; MAX_THREADS],
    state: [u8; MAX_THREADS],
    n: usize,
    /// The parked followers' slots, in arrival order.
    slots: [*const Slot; MAX_THREADS],
    n_slots: usize,
    pub generation: u64,
    pub rendezvous_ns: u64,
}

const SIGNALLED: u8 = 0;
const PARKED: u8 = 1;
const GONE: u8 = 2;

struct GatheredCell(UnsafeCell<Gathered>);
// SAFETY: only the leader of a rendezvous uses it, and only one leader runs at a time (the
// controller asks for one epoch at a time; a second request while one runs is dropped).
unsafe impl Sync for GatheredCell {}
static GATHERED: GatheredCell = GatheredCell(UnsafeCell::new(Gathered {
    tids: [0; MAX_THREADS],
    state: [0; MAX_THREADS],
    n: 0,
    slots: [core::ptr::null(); MAX_THREADS],
    n_slots: 0,
    generation: 0,
    rendezvous_ns: 0,
}));

/// Why a rendezvous did not complete.
pub enum Fail {
    /// This thread did not park within the deadline.
    Stuck(i32),
    /// More threads than [`MAX_THREADS`].
    TooMany(usize),
    /// `/proc/self/task` cannot be read.
    NoTaskList,
}

impl Gathered {
    /// The parked followers' slots.
    pub fn followers(&self) -> impl Iterator<Item = &'static Slot> + '_ {
        // SAFETY: each pointer is into the static slot table.
        self.slots[..self.n_slots].iter().map(|&p| unsafe { &*p })
    }

    fn known(&self, tid: i32) -> bool {
        self.tids[..self.n].contains(&tid)
    }

    /// Takes in the followers that parked since the last look.
    fn collect(&mut self, seen: &mut usize, generation: u64) {
        let n = N_PARKED.load(Ordering::Acquire).min(MAX_THREADS);
        while *seen < n {
            let i = *seen;
            // Wait for the follower to finish writing its entry (it bumped N_PARKED first).
            let mut spins = 0u32;
            while PARKED_GEN[i].load(Ordering::Acquire) != generation && spins < 1_000_000 {
                core::hint::spin_loop();
                spins += 1;
            }
            *seen += 1;
            if PARKED_GEN[i].load(Ordering::Acquire) != generation {
                continue; // a late follower of an older rendezvous
            }
            // SAFETY: followers store the address of their slot in the static table.
            let slot: &'static Slot =
                unsafe { &*(PARKED_SLOT[i].load(Ordering::Acquire) as *const Slot) };
            let tid = slot.tid.load(Ordering::Relaxed);
            if let Some(j) = self.tids[..self.n].iter().position(|&t| t == tid) {
                if self.state[j] != PARKED {
                    self.state[j] = PARKED;
                    self.slots[self.n_slots] = slot;
                    self.n_slots += 1;
                }
            }
        }
    }

    fn waiting(&self) -> usize {
        self.state[..self.n]
            .iter()
            .filter(|&&s| s == SIGNALLED)
            .count()
    }
}

/// Lists the threads and signals those not signalled yet; returns how many were new.
fn signal_new(g: &mut Gathered, me: i32, generation: u64) -> Result<usize, Fail> {
    let fd = sys::kept_open(&state::TASK_FD, c"/proc/self/task", libc::O_DIRECTORY)
        .map_err(|_| Fail::NoTaskList)?;
    let mut buf = [0u8; 2048];
    let mut new = 0usize;
    let mut too_many = 0usize;
    let r = sys::for_each_dirent(fd, &mut buf, |name| {
        let Some(tid) = parse_tid(name) else { return };
        if tid == me || g.known(tid) {
            return;
        }
        if g.n == MAX_THREADS {
            too_many += 1;
            return;
        }
        g.tids[g.n] = tid;
        g.state[g.n] = match sys::queue_to(tid, EPOCH_SIGNAL, generation) {
            Ok(_) => SIGNALLED,
            Err(_) => GONE, // exited between the listing and the signal
        };
        g.n += 1;
        new += 1;
    });
    if r.is_err() {
        return Err(Fail::NoTaskList);
    }
    if too_many > 0 {
        return Err(Fail::TooMany(g.n + 1 + too_many));
    }
    Ok(new)
}

fn parse_tid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 10 {
        return None;
    }
    name.iter().try_fold(0i32, |v, &c| {
        c.is_ascii_digit()
            .then(|| v.wrapping_mul(10).wrapping_add((c - b'0') as i32))
    })
}

/// The leader brings every other thread into its handler. On success they stay parked until
/// [`release`]; on failure they have been released already.
pub fn gather() -> Result<&'static Gathered, Fail> {
    let t0 = sys::monotonic_ns();
    let mut tries = 0;
    loop {
        let sent = SENT.load(Ordering::SeqCst);
        let g = gather_once()?;
        tries += 1;
        if SENT.load(Ordering::SeqCst) == sent || tries == SIGNAL_RETRIES {
            g.rendezvous_ns = sys::monotonic_ns().saturating_sub(t0);
            return Ok(g);
        }
        release();
    }
}

/// The app sent a signal (from its `kill`, `pthread_kill`, ... hooks, after the call).
pub fn note_signal_sent() {
    if ACTIVE.load(Ordering::SeqCst) != 0 {
        SENT.fetch_add(1, Ordering::SeqCst);
    }
}

/// Takes this thread's pending signals (all but the epoch signal and the synchronous ones) out
/// of the kernel's queue into its slot, at most [`CAUGHT_MAX`]; more stay pending (and a
/// restore from this epoch does not have them). `shared`: also the process's pending signals
/// (the leader, once every thread is in); they are queued again to the process, not to this
/// thread, so that whichever thread does not block them still takes them (from a thread other
/// than the main one, a `kill()`'s siginfo comes back with `si_code` `SI_QUEUE`: the kernel
/// lets only the main thread queue one with its original code to the process).
pub fn drain_pending(me: &Slot, shared: bool) {
    let skip = bit(EPOCH_SIGNAL)
        | bit(libc::SIGSEGV)
        | bit(libc::SIGBUS)
        | bit(libc::SIGILL)
        | bit(libc::SIGFPE)
        | bit(libc::SIGTRAP)
        | bit(libc::SIGSYS)
        | bit(libc::SIGKILL)
        | bit(libc::SIGSTOP);
    let pending = sys::pending_signals() & !skip;
    if pending == 0 {
        return; // the common case: one system call
    }
    // Which queue each is in: rt_sigtimedwait takes the thread's own first, then the process's.
    let mut buf = [0u8; 2048];
    let n = sys::read_file(b"/proc/thread-self/status\0", &mut buf).unwrap_or(0);
    let text = &buf[..n];
    let field = |key: &[u8]| {
        text::fdinfo_field(text, key)
            .and_then(|v| text::num(v, 16))
            .unwrap_or(0)
    };
    let (own, process) = (field(b"SigPnd:") & pending, field(b"ShdPnd:") & pending);
    let mut n = me.caught_n.load(Ordering::Relaxed) as usize;
    let mut shared_bits = me.caught_shared.load(Ordering::Relaxed);
    let mut take = |sig: i32, max: usize, from_process: bool, n: &mut usize| {
        let mut got = 0;
        // SAFETY: caught.info(n) is room for one siginfo in this thread's own slot.
        while *n < CAUGHT_MAX && got < max && unsafe { sys::take_pending(sig, me.caught.info(*n)) }
        {
            if from_process {
                shared_bits |= 1 << *n;
            }
            *n += 1;
            got += 1;
        }
    };
    let mut bits = own;
    while bits != 0 {
        let sig = bits.trailing_zeros() as i32 + 1;
        // In both queues: the thread's own instance only (a real-time signal's own instances
        // beyond the first stay pending then).
        let max = if process & bit(sig) != 0 {
            1
        } else {
            usize::MAX
        };
        take(sig, max, false, &mut n);
        bits &= !bit(sig);
    }
    let mut bits = if shared { process } else { 0 };
    while bits != 0 {
        let sig = bits.trailing_zeros() as i32 + 1;
        take(sig, usize::MAX, true, &mut n);
        bits &= !bit(sig);
    }
    me.caught_shared.store(shared_bits, Ordering::Relaxed);
    me.caught_n.store(n as u32, Ordering::Relaxed);
}

/// Queues again, with their siginfo, the signals [`drain_pending`] took (delivered once the
/// epoch handler returns to the app, as they would have been).
pub fn requeue_caught(me: &Slot) {
    let n = (me.caught_n.swap(0, Ordering::Relaxed) as usize).min(CAUGHT_MAX);
    let shared = me.caught_shared.swap(0, Ordering::Relaxed);
    for i in 0..n {
        let info = me.caught.info(i);
        // SAFETY: drain_pending filled entry i with the kernel's siginfo.
        let sig = unsafe { (*info).si_signo };
        if shared & (1 << i) != 0 {
            // SAFETY: as above; the kernel reads one siginfo.
            if unsafe { sys::requeue_process(sig, info) } == Err(libc::EPERM) {
                // Only the main thread may queue a signal to its process with the siginfo of
                // a kill() (si_code >= 0): from any other, it goes as a sigqueue() from the
                // same sender (si_pid, si_uid and the rest are kept).
                // SAFETY: entry i is this thread's own siginfo (see above).
                unsafe { (*info).si_code = libc::SI_QUEUE };
                // SAFETY: as above.
                let _ = unsafe { sys::requeue_process(sig, info) };
            }
        } else {
            // SAFETY: as above; the kernel reads one siginfo.
            let _ = unsafe { sys::requeue_here(sig, info) };
        }
    }
}

fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn gather_once() -> Result<&'static mut Gathered, Fail> {
    let t0 = sys::monotonic_ns();
    // SAFETY: see GatheredCell.
    let g = unsafe { &mut *GATHERED.0.get() };
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    g.n = 0;
    g.n_slots = 0;
    g.generation = generation;
    g.rendezvous_ns = 0;
    N_PARKED.store(0, Ordering::SeqCst);
    ACTIVE.store(generation, Ordering::SeqCst);
    let me = sys::gettid();
    let mut seen = 0usize;
    let fail = |f: Fail| {
        release();
        Err(f)
    };
    if let Err(f) = signal_new(g, me, generation) {
        return fail(f);
    }
    let deadline = t0 + DEADLINE_NS;
    loop {
        let arrivals = ARRIVALS.load(Ordering::Acquire);
        g.collect(&mut seen, generation);
        if g.waiting() == 0 {
            if g.n == 0 {
                break; // alone: nobody else can have created a thread since the listing
            }
            // Everyone signalled is in; a thread created meanwhile shows up in a new listing.
            match signal_new(g, me, generation) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(f) => return fail(f),
            }
        }
        let now = sys::monotonic_ns();
        if now >= deadline {
            // Drop the threads that exited; name the first that is still there.
            for i in 0..g.n {
                if g.state[i] == SIGNALLED && !sys::thread_alive(g.tids[i]) {
                    g.state[i] = GONE;
                }
            }
            g.collect(&mut seen, generation);
            match (0..g.n).find(|&i| g.state[i] == SIGNALLED) {
                Some(i) => return fail(Fail::Stuck(g.tids[i])),
                None => continue,
            }
        }
        sys::futex_wait_private(&ARRIVALS, arrivals, 1_000_000.min(deadline - now));
        if sys::monotonic_ns() >= t0 + 2_000_000 {
            // Slow: a thread may have exited with the signal pending.
            for i in 0..g.n {
                if g.state[i] == SIGNALLED && !sys::thread_alive(g.tids[i]) {
                    g.state[i] = GONE;
                }
            }
        }
    }
    Ok(g)
}

/// Lets every parked follower go (the epoch is taken, or abandoned).
pub fn release() {
    ACTIVE.store(0, Ordering::SeqCst);
    RELEASE.fetch_add(1, Ordering::SeqCst);
    sys::futex_wake_private(&RELEASE);
}

/// The epoch signal reached a thread with `SI_QUEUE`: a leader's call to park for `generation`.
/// `app_mask`: the app's mask in the interrupted context. At depth 0 only. Returns true in the
/// restored process (the thread resumed at its parking place on the standby).
pub fn follow(generation: u64, app_mask: u64, altstack: Option<libc::stack_t>) -> bool {
    let me = threads::current();
    if generation == 0 || me.parked.load(Ordering::Acquire) == generation {
        return false; // a duplicate
    }
    let seen = RELEASE.load(Ordering::SeqCst);
    if ACTIVE.load(Ordering::SeqCst) != generation {
        return false; // stale: that rendezvous is over
    }
    threads::refresh_tid(me);
    fill_record(me, app_mask, altstack, false);
    drain_pending(me, false);
    // SAFETY: the slot's context is this thread's own (see threads::SlotCell).
    let ctx = unsafe { &mut *me.rec.ctx() };
    me.park_for.store(generation, Ordering::Relaxed);
    me.park_seen.store(seen, Ordering::Relaxed);
    context::checkpoint(ctx, park)
}

extern "C" fn park(_ctx: *mut ResumeContext) {
    let me = threads::current();
    let generation = me.park_for.load(Ordering::Relaxed);
    let seen = me.park_seen.load(Ordering::Relaxed);
    me.parked.store(generation, Ordering::Release);
    let at = N_PARKED.fetch_add(1, Ordering::AcqRel);
    if at < MAX_THREADS {
        PARKED_SLOT[at].store(me as *const Slot as u64, Ordering::Release);
        PARKED_GEN[at].store(generation, Ordering::Release);
    }
    ARRIVALS.fetch_add(1, Ordering::Release);
    sys::futex_wake_private(&ARRIVALS);
    while RELEASE.load(Ordering::Acquire) == seen {
        sys::futex_wait_private(&RELEASE, seen, 0);
    }
}

/// Fills the thread's record in its slot (in its own epoch handler). `altstack`: the
/// alternate stack the kernel saved in the handler's context (else asked for). Few system
/// calls: every follower makes them before it counts itself in, so they are the rendezvous's
/// cost per thread.
pub fn fill_record(me: &Slot, app_mask: u64, altstack: Option<libc::stack_t>, leader: bool) {
    if leader {
        threads::refresh_tid(me);
    }
    let tid = me.tid.load(Ordering::Relaxed);
    // SAFETY: the record is this thread's own (see threads::SlotCell).
    let r: &mut ThreadRecord = unsafe { &mut *me.rec.get() };
    r.tid = tid;
    r.flags = if tid == sys::getpid() { THREAD_MAIN } else { 0 }
        | if leader { remus_abi::THREAD_LEADER } else { 0 };
    r.sigmask = app_mask;
    let ss = altstack.unwrap_or_else(sys::current_altstack);
    r.altstack_sp = ss.ss_sp as u64;
    r.altstack_size = ss.ss_size as u64;
    r.altstack_flags = ss.ss_flags;
    let tp = threads::thread_pointer();
    r.ctx.fs_base = tp;
    let off = state::TID_OFFSET.load(Ordering::Relaxed);
    r.clear_child_tid = if off != 0 { tp + off } else { 0 };
    // glibc registers the robust list once, at the thread's start, at a place in its control
    // block (so a thread that reuses a dead one's block and slot has it at the same address):
    // asked for once per slot.
    if r.robust_head == 0 {
        let (mut head, mut len) = (0u64, 0u64);
        // SAFETY: get_robust_list(0, ...) writes this thread's head pointer and length.
        if unsafe {
            sys::raw6(
                libc::SYS_get_robust_list,
                0,
                &mut head as *mut u64 as usize,
                &mut len as *mut u64 as usize,
                0,
                0,
                0,
            )
        }
        .is_ok()
        {
            r.robust_head = head;
            r.robust_len = len;
        }
    }
    let rseq = state::RSEQ_SIZE.load(Ordering::Relaxed);
    if rseq != 0 {
        r.rseq_area = tp.wrapping_add(state::RSEQ_OFFSET.load(Ordering::Relaxed));
        r.rseq_len = rseq.max(32);
    }
    r.name = [0; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into r.name.
    let _ = unsafe {
        sys::raw6(
            libc::SYS_prctl,
            libc::PR_GET_NAME as usize,
            r.name.as_mut_ptr() as usize,
            0,
            0,
            0,
            0,
        )
    };
    me.leader.store(leader, Ordering::Relaxed);
}

/// The leader, at capture: how many followers parked (the restored process waits for as many).
pub fn note_followers(n: usize) {
    FOLLOWERS.store(n as u32, Ordering::Relaxed);
    RESTORED_ARRIVED.store(0, Ordering::Relaxed);
    RESTORED_GO.store(0, Ordering::Relaxed);
}

/// Restored process, follower: counts itself in, then waits until the leader lets everyone go.
pub fn restored_follower_wait() {
    RESTORED_ARRIVED.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake_private(&RESTORED_ARRIVED);
    while RESTORED_GO.load(Ordering::Acquire) == 0 {
        sys::futex_wait_private(&RESTORED_GO, 0, 0);
    }
}

/// Restored process, leader: waits (bounded) until every follower is back, after its own
/// fix-ups. Returns how many did not come.
pub fn restored_leader_wait() -> u32 {
    let want = FOLLOWERS.load(Ordering::Relaxed);
    let t0 = sys::monotonic_ns();
    loop {
        let n = RESTORED_ARRIVED.load(Ordering::Acquire);
        if n >= want {
            return 0;
        }
        if sys::monotonic_ns() - t0 > 5_000_000_000 {
            return want - n;
        }
        sys::futex_wait_private(&RESTORED_ARRIVED, n, 10_000_000);
    }
}

/// Restored process, leader: every thread may run the app again.
pub fn restored_go() {
    // The rendezvous that was on at the checkpoint is over in this process.
    ACTIVE.store(0, Ordering::SeqCst);
    RESTORED_GO.store(1, Ordering::Release);
    sys::futex_wake_private(&RESTORED_GO);
}
