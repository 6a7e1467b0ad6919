//! The epoch signal's handler: everything that runs in it, and nothing that runs anywhere else,
//! lives in `epoch/`. The handler defers while a hook's bookkeeping runs (`base::interpose`),
//! saves the resume point and runs the capture; in the restored process it is where the thread
//! resumes ([`super::restored`]); while passive it only notes a rejoin request.

use core::sync::atomic::{AtomicBool, Ordering};

use remus_abi::EPOCH_SIGNAL;

use super::{capture, rendezvous};
use crate::base::sigview::SigactionFn;
use crate::base::{state, threads};
use crate::kernel::{context, sys};

/// Start-up is waiting for the controller's answer: an epoch signal that comes before the
/// mode says protected is kept pending (see [`start_protection`]).
pub static STARTING: AtomicBool = AtomicBool::new(false);

/// Start-up got Ready: protection is on from here; takes a signal that came too early.
pub fn start_protection() {
    state::set_mode(state::MODE_PROTECTED);
    STARTING.store(false, Ordering::Release);
    if state::pending().swap(false, Ordering::AcqRel) {
        sys::raise_here(EPOCH_SIGNAL);
    }
}

/// Start-up got no protection: forget any early signal.
pub fn no_protection() {
    STARTING.store(false, Ordering::Release);
    state::pending().store(false, Ordering::Release);
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

/// A leader is running an epoch in this process.
static LEADING: AtomicBool = AtomicBool::new(false);
/// A request came while a leader was still finishing (the controller saw the epoch's last chunk
/// and asked for the next one before the leader and its followers left their handlers; the
/// signal went to the first thread out): the leader takes it when it is done.
static AGAIN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_epoch(_sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let saved_errno = sys::errno();
    let (code, value) = if info.is_null() {
        (0, 0)
    } else {
        // SAFETY: for an SA_SIGINFO handler, info points at the kernel's siginfo.
        unsafe { sys::siginfo_code_value(info) }
    };
    // A leader's call to park carries its rendezvous's generation; anything else (the
    // controller's kill, a hook's re-raise) is a request for an epoch.
    let park = code == sys::SI_QUEUE && value != 0;
    let me = threads::current();
    if STARTING.load(Ordering::Acquire) && state::mode() != state::MODE_PROTECTED {
        // The controller said Ready and signalled before start-up switched protection on:
        // start-up raises it again once it has (a lost first signal would stall every epoch).
        if !park {
            me.pending.store(true, Ordering::Release);
        }
    } else if state::mode() == state::MODE_PROTECTED {
        let app_mask = if uc.is_null() {
            0
        } else {
            // SAFETY: for an SA_SIGINFO handler, uc points at the kernel's ucontext.
            let mask = unsafe { (*(uc as *mut libc::ucontext_t)).uc_sigmask };
            // SAFETY: sigset_t is at least 8 bytes; the first word holds signals 1..64.
            let word = unsafe { *(&mask as *const libc::sigset_t as *const u64) };
            // Signals the shim holds back for a moment are not the app's blocking.
            word & !me.deferred.load(Ordering::Relaxed)
        };
        let altstack = if uc.is_null() {
            None
        } else {
            // SAFETY: as above; uc_stack is the alternate stack the kernel saved at delivery.
            Some(unsafe { (*(uc as *mut libc::ucontext_t)).uc_stack })
        };
        if me.depth.load(Ordering::Acquire) > 0 {
            // No checkpoint in the middle of a wrapper: the hook takes it on its way out.
            if park {
                me.pending_park.store(value, Ordering::Release);
            } else {
                me.pending.store(true, Ordering::Release);
            }
        } else if park {
            if rendezvous::follow(value, app_mask, altstack) {
                super::restored::follower_restored(me);
            }
            rendezvous::requeue_caught(me);
        } else {
            lead(me, app_mask, altstack);
        }
    } else if state::mode() == state::MODE_PASSIVE {
        // A restored process asked to be protected again: the work waits for a safe point
        // outside this handler (rejoin::poll).
        if state::RESTORED.load(Ordering::Relaxed) && !park {
            state::REJOIN_REQUESTED.store(true, Ordering::Release);
        }
    }
    sys::set_errno(saved_errno);
}

/// This thread takes the epoch: it saves its resume point in its slot and runs the capture,
/// which brings the other threads in first (`rendezvous`). A request that finds another leader
/// still finishing is handed to it ([`AGAIN`]), never dropped: the controller asks once per
/// epoch and waits for the answer.
fn lead(me: &'static threads::Slot, app_mask: u64, altstack: Option<libc::stack_t>) {
    if LEADING.swap(true, Ordering::SeqCst) {
        AGAIN.store(true, Ordering::SeqCst);
        if LEADING.load(Ordering::SeqCst) || !AGAIN.swap(false, Ordering::SeqCst) {
            return; // the leader (still on, or just done and it took the request) has it
        }
        if LEADING.swap(true, Ordering::SeqCst) {
            AGAIN.store(true, Ordering::SeqCst); // yet another leader: it takes it when done
            return;
        }
    }
    rendezvous::fill_record(me, app_mask, altstack, true);
    // SAFETY: the slot's context is this thread's own (see threads::SlotCell).
    let ctx = unsafe { &mut *me.rec.ctx() };
    if context::checkpoint(ctx, capture::capture_epoch) {
        super::restored::after_restore(me);
        install(crate::base::sigview::real_sigaction());
        AGAIN.store(false, Ordering::SeqCst);
    }
    rendezvous::requeue_caught(me);
    LEADING.store(false, Ordering::SeqCst);
    if AGAIN.swap(false, Ordering::SeqCst) {
        // Delivered once this handler returns (its own signal is blocked in it).
        sys::raise_here(EPOCH_SIGNAL);
    }
}
