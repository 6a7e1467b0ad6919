//! The shim's process-wide state. Everything the signal handler reads is an atomic or is
//! written only before the handler is installed.

use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};

use super::{lock, threads};

/// Not initialised, or a process we do not protect (a child, the restored process): hooks
/// pass through, the epoch handler returns at once.
pub const MODE_PASSIVE: u8 = 0;
/// Replicating: the epoch handler takes checkpoints.
pub const MODE_PROTECTED: u8 = 1;
/// Running without protection (a second thread, unsupported state, or allowed by the user);
/// the controller knows why.
pub const MODE_UNPROTECTED: u8 = 2;

pub static MODE: AtomicU8 = AtomicU8::new(MODE_PASSIVE);
pub static SOCK: AtomicI32 = AtomicI32::new(-1);
pub static UFFD: AtomicI32 = AtomicI32::new(-1);
pub static PAGEMAP: AtomicI32 = AtomicI32::new(-1);
/// `/proc/self/maps` and `/proc/self/task`, kept open by the epoch handler.
pub static MAPS_FD: AtomicI32 = AtomicI32::new(-1);
pub static TASK_FD: AtomicI32 = AtomicI32::new(-1);
/// `/proc/self/fd`, kept open by the epoch handler.
pub static FDDIR_FD: AtomicI32 = AtomicI32::new(-1);
/// `/proc/self/statm`, kept open by the epoch handler.
pub static STATM_FD: AtomicI32 = AtomicI32::new(-1);
pub static STAGING: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
/// The staging memfd, kept open (close-on-exec, above `SHIM_FD_BASE`) so that an `execve`'s
/// new image can map it again.
pub static STAGING_FD: AtomicI32 = AtomicI32::new(-1);
/// Last epoch number shipped.
pub static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Bumped by the mmap/munmap/mremap/mprotect/brk hooks: the map changed. The epoch handler
/// lists the kernel's map when this moved, or when the kernel's sizes (`/proc/self/statm`)
/// did (glibc maps memory without calling `mmap`; a raw system call bypasses every hook).
pub static MAP_HINTS: AtomicU64 = AtomicU64::new(0);
/// The app's pid when protection started (the restored process has another).
pub static APP_PID: AtomicI32 = AtomicI32::new(0);
/// Offset of glibc's cached thread id inside the thread control block, or 0 if unknown.
pub static TID_OFFSET: AtomicU64 = AtomicU64::new(0);
/// glibc's `__rseq_offset` / `__rseq_size` (0 size: rseq not used).
pub static RSEQ_OFFSET: AtomicU64 = AtomicU64::new(0);
pub static RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);

pub fn mode() -> u8 {
    MODE.load(Ordering::Acquire)
}

pub fn set_mode(m: u8) {
    MODE.store(m, Ordering::Release)
}

/// This is a restored process (set by `epoch::restored`; `life::rejoin` may protect it again).
pub static RESTORED: AtomicBool = AtomicBool::new(false);
/// A fork child of the protected program, which may be handed protection when the program
/// exits (the classic daemonize; `life::daemon`). It keeps the shim socket and the staging
/// memfd open, and looks at the staging's `HANDOVER_OFF` word at its safe points.
pub static CANDIDATE: AtomicBool = AtomicBool::new(false);
/// This candidate told remusd it serves (`remus_abi::MsgKind::ChildServes`).
pub static SERVES_REPORTED: AtomicBool = AtomicBool::new(false);
/// The last child the protected program forked (0: none), for a handover at its exit.
pub static LAST_CHILD: AtomicI32 = AtomicI32::new(0);
/// A restored process was asked to be protected again (`life::rejoin`): set by the epoch
/// handler, taken at the next safe point ([`safe_point`]).
pub static REJOIN_REQUESTED: AtomicBool = AtomicBool::new(false);
/// What a safe point runs when a rejoin was requested (`life::rejoin::run`, registered at
/// start-up): upper layers register, lower layers call.
static SAFE_POINT: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Depth of shim hooks this thread is inside; the epoch handler and the app's own signal
/// handlers defer while it is non-zero (see `base::interpose`).
pub fn hook_depth() -> u32 {
    threads::current().depth.load(Ordering::Acquire)
}

/// The shim's bookkeeping begins (see `base::interpose::bracket`): from depth 0, the shim's lock
/// is taken (`base::lock`).
#[inline]
pub fn raise_depth() {
    if threads::current().depth.fetch_add(1, Ordering::AcqRel) == 0 {
        lock::lock();
    }
}

/// The shim's bookkeeping ends: at depth 0 the lock is given back, a checkpoint that came
/// meanwhile is taken (a request, or a rendezvous this thread must park for) and the app's
/// held signals are let in.
#[inline]
pub fn lower_depth() {
    let me = threads::current();
    // The lock goes back before the depth reaches 0: at depth 0 the app's handlers run, and
    // one that calls a hook must find the lock free (at depth 1 without the lock, a signal is
    // still held; another thread may take the lock, our bookkeeping is done).
    if me.depth.load(Ordering::Relaxed) == 1 {
        lock::unlock();
    }
    if me.depth.fetch_sub(1, Ordering::AcqRel) == 1 {
        // What follows makes system calls only when something is waiting; none may change
        // the errno the app reads after the hook.
        let saved = crate::kernel::sys::errno();
        if me.pending.load(Ordering::Relaxed) && me.pending.swap(false, Ordering::AcqRel) {
            crate::kernel::sys::raise_here(remus_abi::EPOCH_SIGNAL);
        }
        if me.pending_park.load(Ordering::Relaxed) != 0 {
            let generation = me.pending_park.swap(0, Ordering::AcqRel);
            if generation != 0 {
                let _ = crate::kernel::sys::queue_here(remus_abi::EPOCH_SIGNAL, generation);
            }
        }
        if me.deferred.load(Ordering::Relaxed) != 0 {
            let bits = me.deferred.swap(0, Ordering::AcqRel);
            crate::kernel::sys::sigmask(libc::SIG_UNBLOCK, bits);
        }
        crate::kernel::sys::set_errno(saved);
    }
}

/// The app's signals the shim held for this thread while a hook's bookkeeping ran (bit
/// `sig - 1`): queued again in the kernel and blocked in the interrupted context;
/// [`lower_depth`] unblocks them when the depth returns to 0 (see
/// `base::sigview::on_app_signal`).
pub fn deferred() -> &'static AtomicU64 {
    &threads::current().deferred
}

/// An epoch request for this thread, taken when its depth returns to 0.
pub fn pending() -> &'static AtomicBool {
    &threads::current().pending
}

/// A point where a daemonizing program's child looks whether protection was handed to it
/// (the output hooks: a daemon prints or logs long before it waits). One relaxed load for
/// every other process.
#[inline]
pub fn candidate_point() {
    if CANDIDATE.load(Ordering::Relaxed) {
        safe_point();
    }
}

/// Registers what [`safe_point`] runs when a rejoin was requested.
pub fn set_safe_point(f: fn()) {
    SAFE_POINT.store(f as *mut (), Ordering::Release);
}

/// A safe point (a hook entry where the program waits: sleeps, epoll, poll, select): outside
/// signal context, allocation and fork allowed, inside that hook's own bracket and no other
/// bookkeeping (depth 1). Runs the registered work if a rejoin was asked or this process may be
/// handed protection (a fork child of the program).
pub fn safe_point() {
    let wanted = REJOIN_REQUESTED.load(Ordering::Acquire) || CANDIDATE.load(Ordering::Relaxed);
    if !wanted || hook_depth() > 1 {
        return;
    }
    let f = SAFE_POINT.load(Ordering::Acquire);
    if !f.is_null() {
        // SAFETY: only `set_safe_point` stores here, and it stores a `fn()`.
        let f: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(f) };
        f();
    }
}

/// A bracket by hand, for shim code that must keep checkpoints and the app's signals out while
/// it runs and may be reached outside a hook (nesting is fine: the depth counts).
pub struct HookDepth;

impl HookDepth {
    pub fn enter() -> HookDepth {
        raise_depth();
        HookDepth
    }
}

impl Drop for HookDepth {
    fn drop(&mut self) {
        lower_depth();
    }
}
