//! The shim's one lock: it serialises the hooks' bookkeeping across the program's threads (the
//! sockets' output ring, the descriptor tables, the files' dirty table, the epoll
//! registrations). A thread holds it exactly while its hook depth is above zero
//! (`state::raise_depth` takes it on the way from 0 to 1, `state::lower_depth` gives it back
//! on the way to 0), so:
//!
//! - the real function of a hook runs without it (`real!` lowers the depth for the call), and
//!   so does every wait that needs an epoch to end (`state::lower_depth` around it);
//! - a thread parked in the epoch handler never holds it (threads park at depth 0 only), and
//!   the capture, which runs while every thread is parked, never takes it;
//! - the app's signal handlers, held while the depth is up (`base::sigview`), never run on a
//!   thread that holds it.
//!
//! A futex word, private to the process: 0 free, 1 held, 2 held with waiters. Uncontended it is
//! one compare-and-swap each way. In the restored process the word comes back as it was: the
//! threads that were waiting are back in their wait (their call restarts), the holder carries on
//! from its bookkeeping; a stale waiter flag costs one spurious wake.

use core::sync::atomic::{AtomicU32, Ordering};

static WORD: AtomicU32 = AtomicU32::new(0);

#[inline]
pub fn lock() {
    if WORD
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return;
    }
    contended();
}

#[cold]
fn contended() {
    loop {
        if WORD.swap(2, Ordering::Acquire) == 0 {
            return;
        }
        futex(libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, 2);
    }
}

#[inline]
pub fn unlock() {
    if WORD.swap(0, Ordering::Release) == 2 {
        futex(libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

/// After `fork()` in the child: only the forking thread is left; it holds the lock if its hook
/// depth is up (`held`), and nobody else holds it or waits for it.
pub fn after_fork_in_child(held: bool) {
    WORD.store(held as u32, Ordering::Relaxed);
}

/// The futex call, keeping the app's `errno` (the bracket runs around the real call, whose
/// `errno` the app reads next: a wait that finds the word changed fails with EAGAIN).
fn futex(op: i32, val: u32) {
    let saved = crate::kernel::sys::errno();
    // SAFETY: FUTEX_WAIT/WAKE on a word of our own static; no timeout, no second word.
    let _ = unsafe {
        crate::kernel::sys::raw6(
            libc::SYS_futex,
            &WORD as *const AtomicU32 as usize,
            op as usize,
            val as usize,
            0,
            0,
            0,
        )
    };
    crate::kernel::sys::set_errno(saved);
}
