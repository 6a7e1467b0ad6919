//! Per-thread shim state: a fixed table of slots keyed by the thread pointer (`%fs:0`, which
//! glibc points at each thread's own control block), not Rust's `thread_local!` (whose lazy
//! initialisation may allocate, and a signal handler may be the first to touch it).
//!
//! A thread claims a slot the first time the shim looks for it (a hook, a signal handler):
//! lock-free, by compare-and-swap on the key, in open addressing over [`SLOTS`] entries. The
//! key stays when the thread exits: glibc reuses a dead thread's stack and control block for
//! the next thread it creates, which then finds the slot again ([`current`] renews the cached
//! thread id when it sees another). The table is part of the image like any shim static, so
//! the restored threads (same thread pointers) find their slots, resume contexts included.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use remus_abi::{ResumeContext, ThreadRecord};

use crate::kernel::sys;

/// Slots in the table: room for [`remus_abi::MAX_THREADS`] live threads with the probing kept
/// short, and for the keys of threads that have exited.
pub const SLOTS: usize = 1024;

/// One thread's shim state (`repr(C)`: a debugger or a reader of the process memory finds the
/// fields where the source says).
#[repr(C)]
pub struct Slot {
    /// The thread pointer (0: free).
    key: AtomicU64,
    /// The kernel's thread id of the thread that last used this slot.
    pub tid: AtomicI32,
    /// Depth of shim hooks the thread is inside (see `base::interpose`).
    pub depth: AtomicU32,
    /// An epoch request (the controller's signal) arrived inside a hook: the hook takes it on
    /// its way out.
    pub pending: AtomicBool,
    /// A rendezvous asked this thread to park while it was inside a hook: the generation
    /// (0: none). The hook parks on its way out if that rendezvous is still on.
    pub pending_park: AtomicU64,
    /// The app's signals held for this thread while its hook ran (bit `sig - 1`; see
    /// `base::sigview::on_app_signal`).
    pub deferred: AtomicU64,
    /// The generation of the last rendezvous this thread parked for.
    pub parked: AtomicU64,
    /// The rendezvous the thread is parking for, and the release count it saw before (its
    /// handler passes them to the park through the slot).
    pub park_for: AtomicU64,
    pub park_seen: AtomicU32,
    /// This thread ran the capture of the last epoch (restore: it finishes the process's own
    /// fix-ups and lets the others go).
    pub leader: AtomicBool,
    /// What the epoch handler records about the thread while it is parked (only the thread
    /// itself writes it, in its handler; the leader reads it while the thread is parked).
    pub rec: SlotCell,
    /// Signals pending for the thread at its checkpoint, taken out of the kernel's queue into
    /// [`Slot::caught`] (so that they are in the image) and queued again once the handler is
    /// done, on the primary and in the restored process alike (`epoch::rendezvous`).
    pub caught_n: AtomicU32,
    pub caught: CaughtCell,
    /// Bit i: entry i of [`Slot::caught`] was pending for the process, not the thread.
    pub caught_shared: AtomicU32,
}

/// How many pending signals a thread's slot keeps across a checkpoint.
pub const CAUGHT_MAX: usize = 4;

/// Room for [`CAUGHT_MAX`] kernel `siginfo_t`s (128 bytes each). Only the slot's own thread
/// touches it, from its epoch handler (which cannot nest).
pub struct CaughtCell(UnsafeCell<[[u64; 16]; CAUGHT_MAX]>);

impl CaughtCell {
    /// The `i`th siginfo (`i < CAUGHT_MAX`).
    pub fn info(&self, i: usize) -> *mut libc::siginfo_t {
        // SAFETY: i is within the array (callers check); the entries are 128 bytes, the size
        // of the kernel's siginfo, and 8-byte aligned.
        unsafe { (*self.0.get()).as_mut_ptr().add(i.min(CAUGHT_MAX - 1)) as *mut libc::siginfo_t }
    }
}

pub struct SlotCell(UnsafeCell<ThreadRecord>);

impl SlotCell {
    /// The record. Only the slot's own thread writes it, from its epoch handler (which cannot
    /// nest); the leader reads it only while that thread is parked (after it counted itself
    /// parked with release ordering).
    pub fn get(&self) -> *mut ThreadRecord {
        self.0.get()
    }

    pub fn ctx(&self) -> *mut ResumeContext {
        // SAFETY: a field of the record (see `get`).
        unsafe { core::ptr::addr_of_mut!((*self.0.get()).ctx) }
    }
}

// SAFETY: every field is an atomic, the record whose writer and readers are ordered by the
// rendezvous as `SlotCell::get` says, or the caught signals only the slot's thread touches.
unsafe impl Sync for Slot {}

const EMPTY_RECORD: ThreadRecord = ThreadRecord {
    tid: 0,
    flags: 0,
    ctx: ResumeContext {
        rbx: 0,
        rbp: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rsp: 0,
        rip: 0,
        fs_base: 0,
    },
    sigmask: 0,
    altstack_sp: 0,
    altstack_size: 0,
    altstack_flags: 0,
    _pad: 0,
    clear_child_tid: 0,
    robust_head: 0,
    robust_len: 0,
    rseq_area: 0,
    rseq_len: 0,
    _pad2: 0,
    name: [0; 16],
};

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise TABLE
const SLOT: Slot = Slot {
    key: AtomicU64::new(0),
    tid: AtomicI32::new(0),
    depth: AtomicU32::new(0),
    pending: AtomicBool::new(false),
    pending_park: AtomicU64::new(0),
    deferred: AtomicU64::new(0),
    parked: AtomicU64::new(0),
    park_for: AtomicU64::new(0),
    park_seen: AtomicU32::new(0),
    leader: AtomicBool::new(false),
    rec: SlotCell(UnsafeCell::new(EMPTY_RECORD)),
    caught_n: AtomicU32::new(0),
    caught: CaughtCell(UnsafeCell::new([[0; 16]; CAUGHT_MAX])),
    caught_shared: AtomicU32::new(0),
};

static TABLE: [Slot; SLOTS] = [SLOT; SLOTS];

/// Set when the table is full: the thread shares the last-resort slot (and the next epoch
/// refuses the program: more threads than the shim can follow).
pub static OVERFLOW: AtomicBool = AtomicBool::new(false);
static SPARE: Slot = SLOT;

/// The thread pointer (`%fs:0`: glibc's TCB points at itself there).
#[inline]
pub fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: reads one word at %fs:0, which glibc sets up for every thread before it runs any
    // code (and for the main thread before constructors run).
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

fn home(tp: u64) -> usize {
    // Control blocks are at least 64-byte aligned and usually spaced by whole stacks.
    let h = (tp >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 54) as usize % SLOTS
}

/// This thread's slot (claimed at the first call). Async-signal-safe and lock-free.
#[inline]
pub fn current() -> &'static Slot {
    let tp = thread_pointer();
    let mut i = home(tp);
    for _ in 0..SLOTS {
        let s = &TABLE[i];
        let k = s.key.load(Ordering::Acquire);
        if k == tp {
            return s;
        }
        if k == 0 {
            if s.key
                .compare_exchange(0, tp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                s.tid.store(sys::gettid(), Ordering::Relaxed);
                return s;
            }
            if s.key.load(Ordering::Acquire) == tp {
                return s; // cannot happen (one thread per pointer), but harmless
            }
        }
        i = (i + 1) % SLOTS;
    }
    OVERFLOW.store(true, Ordering::Relaxed);
    &SPARE
}

/// After `fork()` in the child: the one thread left keeps its slot (its depth is the fork
/// hook's), with the child's thread id; every other slot belongs to a thread the child does
/// not have.
pub fn after_fork_in_child() {
    let me = current();
    me.tid.store(sys::gettid(), Ordering::Relaxed);
    for s in TABLE.iter() {
        if !core::ptr::eq(s, me) && s.key.load(Ordering::Relaxed) != 0 {
            s.tid.store(0, Ordering::Relaxed);
            s.depth.store(0, Ordering::Relaxed);
            s.pending.store(false, Ordering::Relaxed);
            s.pending_park.store(0, Ordering::Relaxed);
            s.deferred.store(0, Ordering::Relaxed);
        }
    }
}

/// A new thread may have taken over the control block (and so the slot) of one that exited:
/// the rendezvous refreshes the cached thread id of every thread that parks.
pub fn refresh_tid(s: &Slot) {
    s.tid.store(sys::gettid(), Ordering::Relaxed);
}
