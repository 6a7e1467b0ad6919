//! Hooks on the app's signal calls: `sigaction` and `signal` (the app's view of its
//! dispositions and the wrapper in front of its handlers are `base::sigview`), `sigprocmask`
//! and `pthread_sigmask` (the epoch signal is never blocked; signals the shim holds back for a
//! moment are not shown as the app's), `sigsuspend` (the epoch signal is taken out of its
//! mask), `sigaltstack` (the kernel writes signal frames there:
//! the mprotect tracker must never protect it).

use core::ffi::{c_int, c_void};
use core::sync::atomic::Ordering;

use crate::base::interpose::{hook, real};
use crate::base::{sigview, state};
use crate::epoch::rendezvous;
use crate::track::pages::prefault::buffer;
use crate::track::pages::{is_mprotect, mprotect};

hook! {
    unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int => remus_sigaction {
        // SAFETY: act/old are null or valid, as the app passes them to sigaction(2).
        unsafe { sigview::app_sigaction(sigview::real_sigaction(), sig, act, old) }
    }
}

hook! {
    unsafe fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t => remus_signal {
        // glibc's signal() gives BSD semantics: handler stays installed, calls restart.
        // SAFETY: an all-zero sigaction is valid; the sigset calls get valid pointers.
        let (sa, mut old) = unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaddset(&mut sa.sa_mask, sig);
            (sa, core::mem::zeroed::<libc::sigaction>())
        };
        // SAFETY: both pointers are to locals.
        if unsafe { sigview::app_sigaction(sigview::real_sigaction(), sig, &sa, &mut old) } != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    }
}

fn mask_bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: a sigset_t is at least 8 bytes; the first word holds signals 1..=64.
    unsafe { *(set as *const libc::sigset_t as *const u64) }
}

/// Runs `real` with the epoch signal removed from `set`, and hides it (and the signals the shim
/// holds back) from `old`.
fn masked(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
    real: impl FnOnce(*const libc::sigset_t, *mut libc::sigset_t) -> c_int,
) -> c_int {
    let held_before = state::deferred().load(Ordering::Acquire);
    // SAFETY: set is null or a valid sigset (as for sigprocmask(2)).
    let app_set = (!set.is_null()).then(|| unsafe { *set });
    let r = match app_set {
        Some(mut copy) if how != libc::SIG_UNBLOCK && state::mode() != state::MODE_PASSIVE => {
            sigview::scrub_mask(&mut copy);
            real(&copy, old)
        }
        _ => real(set, old),
    };
    if r == 0 {
        sigview::after_app_mask(how, app_set.as_ref().map(mask_bits), held_before);
        if !old.is_null() {
            // SAFETY: the real call wrote a valid sigset to old.
            let old = unsafe { &mut *old };
            sigview::scrub_mask(old);
            for sig in 1..=64 {
                if held_before & (1u64 << (sig - 1)) != 0 {
                    // SAFETY: valid sigset.
                    unsafe { libc::sigdelset(old, sig) };
                }
            }
        }
    }
    r
}

hook! {
    unsafe fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int => remus_sigprocmask {
        // SAFETY: how and old as the app passed them; s is the app's set or a scrubbed copy.
        masked(how, set, old, |s, o| unsafe { real!(sigprocmask)(how, s, o) })
    }
}

hook! {
    unsafe fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int => remus_pthread_sigmask {
        // SAFETY: as for sigprocmask.
        masked(how, set, old, |s, o| unsafe { real!(pthread_sigmask)(how, s, o) })
    }
}

hook! {
    unsafe fn sigsuspend(mask: *const libc::sigset_t) -> c_int => remus_sigsuspend {
        state::safe_point();
        if mask.is_null() {
            // SAFETY: the app's argument (the kernel answers EFAULT).
            return unsafe { real!(sigsuspend)(mask) };
        }
        // SAFETY: mask is a valid sigset (as for sigsuspend(2)).
        let mut m = unsafe { *mask };
        // The epoch signal must reach the program while it waits.
        sigview::scrub_mask(&mut m);
        // SAFETY: the app's mask less the shim's signals.
        unsafe { real!(sigsuspend)(&m) }
    }
}

/// The set a `sigwait*` call waits for, without the epoch signal (which would otherwise be
/// taken by the app's wait instead of the shim's handler: no checkpoint, a stalled epoch).
fn wait_set(set: *const libc::sigset_t) -> Option<libc::sigset_t> {
    if set.is_null() {
        return None;
    }
    // SAFETY: set is a valid sigset (as for sigwait(3)).
    let mut m = unsafe { *set };
    // SAFETY: m is a valid sigset.
    unsafe { libc::sigdelset(&mut m, remus_abi::EPOCH_SIGNAL) };
    Some(m)
}

hook! {
    unsafe fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int => remus_sigwait {
        state::safe_point();
        let m = wait_set(set);
        let p = m.as_ref().map_or(set, |m| m as *const libc::sigset_t);
        // SAFETY: the app's set less the epoch signal, its output pointer.
        unsafe { real!(sigwait)(p, sig) }
    }
}

hook! {
    unsafe fn sigwaitinfo(set: *const libc::sigset_t, info: *mut libc::siginfo_t) -> c_int => remus_sigwaitinfo {
        state::safe_point();
        let m = wait_set(set);
        let p = m.as_ref().map_or(set, |m| m as *const libc::sigset_t);
        // SAFETY: as for sigwait.
        unsafe { real!(sigwaitinfo)(p, info) }
    }
}

hook! {
    unsafe fn sigtimedwait(
        set: *const libc::sigset_t,
        info: *mut libc::siginfo_t,
        timeout: *const libc::timespec
    ) -> c_int => remus_sigtimedwait {
        state::safe_point();
        let m = wait_set(set);
        let p = m.as_ref().map_or(set, |m| m as *const libc::sigset_t);
        // SAFETY: as for sigwait, and the app's timeout.
        unsafe { real!(sigtimedwait)(p, info, timeout) }
    }
}

hook! {
    unsafe fn sigaltstack(ss: *const libc::stack_t, old: *mut libc::stack_t) -> c_int => remus_sigaltstack {
        let _o = buffer(old as *const c_void, core::mem::size_of::<libc::stack_t>());
        // SAFETY: ss is null or a valid stack_t (as for sigaltstack(2)).
        let new = (!ss.is_null()).then(|| unsafe { *ss });
        if let Some(n) = new.filter(|n| is_mprotect() && n.ss_flags & libc::SS_DISABLE == 0) {
            // Signal frames land there; every epoch from now on pins it (never protected).
            // Until then its pages must already be writable.
            mprotect::touch(n.ss_sp as u64, n.ss_size as u64);
        }
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(sigaltstack)(ss, old) }
    }
}

// The app signalling its own threads: a signal that reaches a thread already parked in an
// epoch's rendezvous makes that rendezvous start again (`epoch::rendezvous`, "Signals pending
// at the cut"). Each hook calls the real function, then says so.
macro_rules! sends_a_signal {
    ($( $name:ident ( $($v:ident : $t:ty),* ) => $body_fn:ident; )*) => {$(
        hook! {
            unsafe fn $name($($v: $t),*) -> c_int => $body_fn {
                // SAFETY: the app's arguments, passed on unchanged.
                let r = unsafe { real!($name)($($v),*) };
                rendezvous::note_signal_sent();
                r
            }
        }
    )*};
}

sends_a_signal! {
    pthread_kill(thread: libc::pthread_t, sig: c_int) => remus_pthread_kill;
    pthread_sigqueue(thread: libc::pthread_t, sig: c_int, value: libc::sigval) => remus_pthread_sigqueue;
    raise(sig: c_int) => remus_raise;
    kill(pid: libc::pid_t, sig: c_int) => remus_kill;
    tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: c_int) => remus_tgkill;
    sigqueue(pid: libc::pid_t, sig: c_int, value: libc::sigval) => remus_sigqueue;
}
