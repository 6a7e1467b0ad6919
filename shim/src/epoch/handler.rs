//! The epoch signal's handler: everything that runs in it, and nothing that runs anywhere else,
//! lives in `epoch/`. The handler defers while a hook's bookkeeping runs (`base::interpose`),
//! saves the resume point and runs the capture; in the restored process it is where the thread
//! resumes ([`super::restored`]); while passive it only notes a rejoin request.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use remus_abi::{ResumeContext, EPOCH_SIGNAL};

use super::capture;
use crate::base::sigview::SigactionFn;
use crate::base::state;
use crate::kernel::{context, sys};

/// Start-up is waiting for the controller's answer: an epoch signal that comes before the
/// mode says protected is kept pending (see [`start_protection`]).
pub static STARTING: AtomicBool = AtomicBool::new(false);

/// Start-up got Ready: protection is on from here; takes a signal that came too early.
pub fn start_protection() {
    state::set_mode(state::MODE_PROTECTED);
    STARTING.store(false, Ordering::Release);
    if state::PENDING.swap(false, Ordering::AcqRel) {
        sys::raise_here(EPOCH_SIGNAL);
    }
}

/// Start-up got no protection: forget any early signal.
pub fn no_protection() {
    STARTING.store(false, Ordering::Release);
    state::PENDING.store(false, Ordering::Release);
}

/// Installs the epoch handler (it does nothing until the mode says protected).
pub fn install(real: SigactionFn) {
    // SAFETY: zeroed sigaction is valid; we fill handler, flags and a full mask so no other
    // signal handler of the app runs in the middle of a checkpoint.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_epoch as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        // A write to a page the mprotect tracker protects must still reach its handler; a
        // blocked SIGSEGV raised by a fault kills the process.
        libc::sigdelset(&mut sa.sa_mask, libc::SIGSEGV);
        real(EPOCH_SIGNAL, &sa, core::ptr::null_mut());
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, EPOCH_SIGNAL);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, core::ptr::null_mut());
    }
}

struct CtxCell(UnsafeCell<ResumeContext>);
// SAFETY: only the epoch handler touches it, and the handler cannot nest (its own signal is
// blocked while it runs).
unsafe impl Sync for CtxCell {}
static CTX: CtxCell = CtxCell(UnsafeCell::new(ResumeContext {
    rbx: 0,
    rbp: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rsp: 0,
    rip: 0,
    fs_base: 0,
}));

extern "C" fn on_epoch(_sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let saved_errno = sys::errno();
    if STARTING.load(Ordering::Acquire) && state::mode() != state::MODE_PROTECTED {
        // The controller said Ready and signalled before start-up switched protection on:
        // start-up raises it again once it has (a lost first signal would stall every epoch).
        state::PENDING.store(true, Ordering::Release);
    } else if state::mode() == state::MODE_PROTECTED {
        if state::HOOK_DEPTH.load(Ordering::Acquire) > 0 {
            // No checkpoint in the middle of a wrapper: the hook takes it on its way out.
            state::PENDING.store(true, Ordering::Release);
        } else {
            if !uc.is_null() {
                // SAFETY: for an SA_SIGINFO handler, uc points at the kernel's ucontext.
                let mask = unsafe { (*(uc as *mut libc::ucontext_t)).uc_sigmask };
                // SAFETY: sigset_t is at least 8 bytes; the first word holds signals 1..64.
                let word = unsafe { *(&mask as *const libc::sigset_t as *const u64) };
                // Signals the shim holds back for a moment are not the app's blocking.
                capture::set_app_sigmask(word & !state::DEFERRED.load(Ordering::Relaxed));
            }
            // SAFETY: CTX is only used here (see CtxCell).
            let ctx = unsafe { &mut *CTX.0.get() };
            if context::checkpoint(ctx, capture::capture_epoch) {
                super::restored::after_restore();
                install(crate::base::sigview::real_sigaction());
            }
        }
    } else if state::mode() == state::MODE_PASSIVE {
        // A restored process asked to be protected again: the work waits for a safe point
        // outside this handler (rejoin::poll).
        if state::RESTORED.load(Ordering::Relaxed) {
            state::REJOIN_REQUESTED.store(true, Ordering::Release);
        }
    }
    sys::set_errno(saved_errno);
}
