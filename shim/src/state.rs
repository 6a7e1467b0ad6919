//! The shim's process-wide state. Everything the signal handler reads is an atomic or is
//! written only before the handler is installed.

use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};

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
pub static STAGING: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
/// Last epoch number shipped.
pub static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Depth of shim hooks the thread is inside; the epoch handler defers while it is non-zero
/// (see [`HookDepth`]).
pub static HOOK_DEPTH: AtomicU32 = AtomicU32::new(0);
/// An epoch signal arrived inside a hook; the hook raises it again on its way out.
pub static PENDING: AtomicBool = AtomicBool::new(false);
/// Bumped by the mmap/munmap/mremap/brk hooks: a hint that the map changed. The handler reads
/// the kernel's map every epoch regardless (glibc maps memory without calling `mmap`).
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

/// The bracket around a hook's bookkeeping (output log, file ranges, pre-faulted buffers):
/// while one is alive the epoch handler only marks the checkpoint pending, and the last one
/// to drop takes it ("no checkpoint in the middle of a wrapper").
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

/// [`HookDepth`] by hand, for code that must open the bracket for a while (e.g. to let a
/// checkpoint in during a wait) and close it again.
pub fn raise_depth() {
    HOOK_DEPTH.fetch_add(1, Ordering::AcqRel);
}

pub fn lower_depth() {
    if HOOK_DEPTH.fetch_sub(1, Ordering::AcqRel) == 1 && PENDING.swap(false, Ordering::AcqRel) {
        crate::sys::raise_here(remus_abi::EPOCH_SIGNAL);
    }
}
