//! Signals: the epoch handler, the app's view of its own signal dispositions (the shim owns
//! `EPOCH_SIGNAL` and hides it; it also reports fatal signals the app leaves at their default),
//! and re-installing the app's dispositions in the restored process.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use remus_abi::{MsgKind, ResumeContext, EPOCH_SIGNAL};

use crate::{capture, context, link, restored, state, sys};

const NSIG: usize = 65;

/// Signals whose default action ends the process: while the app leaves one at `SIG_DFL`, the
/// shim catches it first to tell the controller the app is ending on its own (so the standby
/// does not resurrect it), then lets the default action happen.
const REPORTED: [i32; 17] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGUSR1,
    libc::SIGSEGV,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSYS,
];

struct Table(UnsafeCell<[libc::sigaction; NSIG]>);
// SAFETY: the process is single-threaded while protected (a second thread switches the shim
// off); the table is written by hooks and read by hooks and the restored path, never
// concurrently with itself.
unsafe impl Sync for Table {}

/// What the app believes each signal's disposition is.
static APP_VIEW: Table = Table(UnsafeCell::new(
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
    unsafe { core::mem::zeroed() },
));
static VIEW_READY: AtomicBool = AtomicBool::new(false);
/// The mprotect tracker owns `SIGSEGV` (see tracker/mprotect.rs): the app's disposition is
/// kept in the view only, and reached through [`chain_to_app`].
static SEGV_OWNED: AtomicBool = AtomicBool::new(false);

pub fn own_segv() {
    SEGV_OWNED.store(true, Ordering::Release);
}

fn owned(sig: i32) -> bool {
    sig == EPOCH_SIGNAL || (sig == libc::SIGSEGV && SEGV_OWNED.load(Ordering::Acquire))
}
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

/// glibc's `sigaction`, found with `dlsym(RTLD_NEXT)` by the hook module.
pub type SigactionFn =
    unsafe extern "C" fn(i32, *const libc::sigaction, *mut libc::sigaction) -> i32;

fn view(sig: i32) -> *mut libc::sigaction {
    // SAFETY: sig is checked by callers to be in 1..NSIG; the pointer is into the static array.
    unsafe { (*APP_VIEW.0.get()).as_mut_ptr().add(sig as usize) }
}

fn reported(sig: i32) -> bool {
    REPORTED.contains(&sig)
}

/// Records the dispositions the process starts with and installs the epoch handler (which
/// does nothing until the mode says protected). Init time, single-threaded, before the
/// controller is told we exist: its first epoch signal must find the handler in place.
pub fn install(real: SigactionFn) {
    for sig in 1..NSIG as i32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: querying with a null new action writes one sigaction into our table slot.
        unsafe { real(sig, core::ptr::null(), view(sig)) };
    }
    VIEW_READY.store(true, Ordering::Release);
    install_epoch_handler(real);
}

/// Catches the fatal signals the app leaves at their default, to tell the controller the app
/// is ending on its own. Once protection has started.
pub fn install_reporters(real: SigactionFn) {
    for &sig in &REPORTED {
        // SAFETY: view(sig) is valid.
        if !owned(sig) && unsafe { (*view(sig)).sa_sigaction } == libc::SIG_DFL {
            install_reporter(real, sig);
        }
    }
}

pub fn install_epoch_handler(real: SigactionFn) {
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

fn install_reporter(real: SigactionFn, sig: i32) {
    // SAFETY: as above; SA_RESETHAND puts the default back as the handler starts.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_fatal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        real(sig, &sa, core::ptr::null_mut());
    }
}

/// The `sigaction` the app calls. Keeps the app's view, hides the epoch signal, keeps the
/// reporter in place of `SIG_DFL`.
///
/// # Safety
/// `act`/`old` are null or valid, as for `sigaction(2)`.
pub unsafe fn app_sigaction(
    real: SigactionFn,
    sig: i32,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> i32 {
    if sig <= 0 || sig as usize >= NSIG || !VIEW_READY.load(Ordering::Acquire) {
        return real(sig, act, old);
    }
    let previous = *view(sig);
    if owned(sig) {
        // The shim owns this signal: remember what the app wanted, change nothing.
        if !act.is_null() {
            *view(sig) = *act;
        }
    } else if !act.is_null() {
        let protecting = state::mode() == state::MODE_PROTECTED;
        if (*act).sa_sigaction == libc::SIG_DFL && reported(sig) && protecting {
            install_reporter(real, sig);
        } else {
            let mut copy = *act;
            scrub_mask(&mut copy.sa_mask);
            let r = real(sig, &copy, core::ptr::null_mut());
            if r != 0 {
                return r;
            }
        }
        *view(sig) = *act;
    }
    if !old.is_null() {
        *old = previous;
    }
    0
}

/// Removes the epoch signal from a mask the app is about to install.
pub fn scrub_mask(set: &mut libc::sigset_t) {
    // SAFETY: set is a valid sigset.
    unsafe { libc::sigdelset(set, EPOCH_SIGNAL) };
    if SEGV_OWNED.load(Ordering::Acquire) {
        // SAFETY: as above. A blocked SIGSEGV at a tracked write would kill the process.
        unsafe { libc::sigdelset(set, libc::SIGSEGV) };
    }
}

/// Puts back, in the restored process, every disposition the app had set.
pub fn reinstall_app_view(real: SigactionFn) {
    for sig in 1..NSIG as i32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == EPOCH_SIGNAL {
            continue;
        }
        // SAFETY: view(sig) is valid; installing the app's own recorded action.
        unsafe {
            let v = *view(sig);
            if v.sa_sigaction != libc::SIG_DFL || owned(sig) {
                real(sig, &v, core::ptr::null_mut());
            }
        }
    }
    SEGV_OWNED.store(false, Ordering::Release);
}

/// A `SIGSEGV` the mprotect tracker's handler found is not its own: what would have happened
/// without the shim. The app's handler is called as the kernel would have (with its mask);
/// the default action (or `SIG_IGN`, which the kernel overrides for a fault) is taken by
/// putting `SIG_DFL` back and letting the fault happen again, reported first like any fatal
/// signal the app leaves at its default.
pub extern "C" fn chain_to_app(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: view(sig) is valid; read-only here.
    let v = unsafe { *view(sig) };
    // SAFETY: info is valid for an SA_SIGINFO handler.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } > 0;
    if v.sa_sigaction == libc::SIG_IGN && !from_kernel {
        return; // a sent SIGSEGV the app ignores
    }
    if v.sa_sigaction == libc::SIG_DFL || v.sa_sigaction == libc::SIG_IGN {
        // struct kernel_sigaction all zero: SIG_DFL, no flags, empty mask.
        let dfl = [0u64; 4];
        // SAFETY: rt_sigaction reads one kernel_sigaction (32 bytes with an 8-byte mask).
        let _ = unsafe {
            sys::raw6(
                libc::SYS_rt_sigaction,
                sig as usize,
                dfl.as_ptr() as usize,
                0,
                8,
                0,
                0,
            )
        };
        on_fatal(sig, info, uc);
        return;
    }
    // The app's handler, with the mask it would have run with.
    let mut mask = v.sa_mask;
    if !uc.is_null() {
        // SAFETY: uc points at the kernel's ucontext; its mask is what the app had.
        let at_fault = unsafe { (*(uc as *const libc::ucontext_t)).uc_sigmask };
        for s in 1..NSIG as i32 {
            // SAFETY: valid sigsets.
            if unsafe { libc::sigismember(&at_fault, s) } == 1 {
                // SAFETY: valid sigset.
                unsafe { libc::sigaddset(&mut mask, s) };
            }
        }
    }
    if v.sa_flags & libc::SA_NODEFER == 0 {
        // SAFETY: valid sigset.
        unsafe { libc::sigaddset(&mut mask, sig) };
    }
    scrub_mask(&mut mask);
    // SAFETY: rt_sigprocmask reads an 8-byte mask; the previous one is put back by sigreturn
    // when our handler returns.
    let _ = unsafe {
        sys::raw6(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            &mask as *const _ as usize,
            0,
            8,
            0,
            0,
        )
    };
    if v.sa_flags & libc::SA_RESETHAND != 0 {
        // SAFETY: the view is only written by hooks and here; the app asked for this reset.
        unsafe { (*view(sig)).sa_sigaction = libc::SIG_DFL };
    }
    if v.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the app installed this as an SA_SIGINFO handler.
        let h: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(v.sa_sigaction) };
        h(sig, info, uc);
    } else {
        // SAFETY: the app installed this as a plain handler.
        let h: extern "C" fn(i32) = unsafe { core::mem::transmute(v.sa_sigaction) };
        h(sig);
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
                capture::set_app_sigmask(unsafe {
                    *(&mask as *const libc::sigset_t as *const u64)
                });
            }
            // SAFETY: CTX is only used here (see CtxCell).
            let ctx = unsafe { &mut *CTX.0.get() };
            if context::checkpoint(ctx, capture::capture_epoch) {
                restored::after_restore();
            }
        }
    } else if state::mode() == state::MODE_PASSIVE {
        // A restored process asked to be protected again: the work waits for a safe point
        // outside this handler (rejoin::poll).
        crate::rejoin::on_signal();
    }
    sys::set_errno(saved_errno);
}

extern "C" fn on_fatal(sig: i32, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    if state::mode() == state::MODE_PROTECTED {
        link::send_text(
            MsgKind::Exiting,
            sig as u64,
            1,
            b"killed by a signal it did not handle",
        );
    }
    // SA_RESETHAND restored the default. A fault raised by the kernel happens again when we
    // return; anything else is sent again and delivered once this handler returns.
    // SAFETY: info is valid for an SA_SIGINFO handler.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } > 0;
    let fault = matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
    );
    if !(fault && from_kernel) {
        sys::raise_here(sig);
    }
}
