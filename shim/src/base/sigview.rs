//! The app's view of its own signal dispositions, and the shim's wrapper in front of every
//! handler the app installs.
//!
//! - The shim owns `EPOCH_SIGNAL` (and `SIGSEGV` under the mprotect tracker) and hides it: the
//!   app's `sigaction` on it is remembered, not installed; masks the app installs lose it.
//! - A handler the app installs is installed as [`on_app_signal`] with the app's mask and flags
//!   (less `SA_RESETHAND`, which the wrapper performs itself): inside a hook's bookkeeping the
//!   wrapper holds the signal back (see `base::interpose`), otherwise it calls the app's handler.
//! - The fatal signals the app leaves at their default are caught first to tell the controller
//!   the app is ending on its own (so the standby does not resurrect it).
//! - The restored process gets every disposition the app had set back.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use remus_abi::{MsgKind, EPOCH_SIGNAL};

use super::interpose::Real;
use super::{link, state};
use crate::kernel::sys;

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
/// glibc's `sigaction`: the shim installs its own handlers through it (the app's calls reach
/// it through the `sigaction` hook, `hooks::signals`).
static SIGACTION: Real = Real::new("sigaction\0");

pub type SigactionFn =
    unsafe extern "C" fn(i32, *const libc::sigaction, *mut libc::sigaction) -> i32;

/// glibc's `sigaction`.
pub fn real_sigaction() -> SigactionFn {
    // SAFETY: the symbol is libc's sigaction, of this signature.
    unsafe { core::mem::transmute::<usize, SigactionFn>(SIGACTION.get()) }
}

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
        // SAFETY: the app's own arguments, as it passed them.
        return unsafe { real(sig, act, old) };
    }
    // SAFETY: view(sig) is valid (sig checked above); the app's pointers are null or valid.
    unsafe {
        let previous = *view(sig);
        if !act.is_null() {
            if !owned(sig) {
                let r = apply(real, sig, &*act);
                if r != 0 {
                    return r;
                }
            }
            // The shim owns `owned(sig)`: remember what the app wanted, change nothing.
            *view(sig) = *act;
        }
        if !old.is_null() {
            *old = previous;
        }
    }
    0
}

/// Installs in the kernel what stands for the app's action `act` on `sig` (not owned): the
/// reporter for a reported signal left at its default while protected, the app's `SIG_DFL` /
/// `SIG_IGN` as they are, and [`on_app_signal`] for a handler.
fn apply(real: SigactionFn, sig: i32, act: &libc::sigaction) -> i32 {
    let protecting = state::mode() == state::MODE_PROTECTED;
    if act.sa_sigaction == libc::SIG_DFL && reported(sig) && protecting {
        install_reporter(real, sig);
        return 0;
    }
    let mut copy = *act;
    scrub_mask(&mut copy.sa_mask);
    if copy.sa_sigaction != libc::SIG_DFL && copy.sa_sigaction != libc::SIG_IGN {
        copy.sa_sigaction = on_app_signal as *const () as usize;
        copy.sa_flags = (copy.sa_flags | libc::SA_SIGINFO) & !libc::SA_RESETHAND;
    }
    // SAFETY: copy is a valid sigaction.
    unsafe { real(sig, &copy, core::ptr::null_mut()) }
}

/// Signals the kernel raises for the instruction that is running: never held (returning would
/// run the instruction again).
fn synchronous(sig: i32, info: *const libc::siginfo_t) -> bool {
    // SAFETY: info is null or the kernel's siginfo for an SA_SIGINFO handler.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } > 0;
    from_kernel
        && matches!(
            sig,
            libc::SIGSEGV
                | libc::SIGBUS
                | libc::SIGILL
                | libc::SIGFPE
                | libc::SIGTRAP
                | libc::SIGSYS
        )
}

/// The handler the kernel runs for every signal the app handles (see the module docs). Outside
/// the shim's bookkeeping it calls the app's handler; inside (hook depth above 0) it queues the
/// signal again with its siginfo, blocks it in the context it returns to and records it in
/// [`state::deferred`]: the bracket unblocks it at depth 0, and the kernel delivers it (and any
/// instance that arrived meanwhile, in order) to this handler again. Async-signal-safe: atomics
/// and raw system calls.
extern "C" fn on_app_signal(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if state::hook_depth() > 0 && !synchronous(sig, info) && !uc.is_null() && !info.is_null() {
        let saved_errno = sys::errno();
        let bit = 1u64 << (sig - 1);
        // Blocked now (SA_NODEFER would otherwise deliver the requeued signal at once) and in
        // the interrupted context, whose mask the kernel restores from `uc` on return.
        sys::sigmask(libc::SIG_BLOCK, bit);
        // SAFETY: info is the kernel's siginfo for this delivery.
        if unsafe { sys::requeue_here(sig, info) }.is_ok() {
            // SAFETY: uc points at the kernel's ucontext for this delivery; its mask's first word
            // holds signals 1..=64.
            unsafe {
                let mask = &mut (*(uc as *mut libc::ucontext_t)).uc_sigmask;
                *(mask as *mut libc::sigset_t as *mut u64) |= bit;
            }
            state::deferred().fetch_or(bit, Ordering::AcqRel);
            sys::set_errno(saved_errno);
            return;
        }
        // The queue is full (RLIMIT_SIGPENDING): deliver now rather than lose the signal.
        sys::set_errno(saved_errno);
    }
    deliver(sig, info, uc);
}

/// Calls the app's handler for `sig` as the kernel would have (its mask is already in force:
/// [`apply`] installed the wrapper with it), performing `SA_RESETHAND` first.
fn deliver(sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: view(sig) is valid for 1..NSIG (the kernel only delivers those).
    let v = unsafe { *view(sig) };
    if v.sa_sigaction == libc::SIG_DFL || v.sa_sigaction == libc::SIG_IGN {
        return; // changed since the kernel chose this handler
    }
    if v.sa_flags & libc::SA_RESETHAND != 0 {
        let mut dfl = v;
        dfl.sa_sigaction = libc::SIG_DFL;
        dfl.sa_flags &= !libc::SA_SIGINFO;
        // SAFETY: the view is written by the app's sigaction hook and here; the app asked for
        // this reset. glibc's sigaction is async-signal-safe.
        unsafe { *view(sig) = dfl };
        apply(real_sigaction(), sig, &dfl);
    }
    call_app(&v, sig, info, uc);
}

fn call_app(v: &libc::sigaction, sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
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

/// The app changed its mask (`how`, `set`: bits of signals 1..=64) with the real call: signals
/// the shim held and that the app's change now blocks or unblocks are the app's again (blocked
/// by its own wish, or already delivered). `held_before`: [`state::deferred`] before the call.
pub fn after_app_mask(how: i32, set: Option<u64>, held_before: u64) {
    let Some(set) = set else { return };
    let released = match how {
        libc::SIG_SETMASK => u64::MAX,
        _ => set,
    };
    if held_before & released != 0 {
        state::deferred().fetch_and(!released, Ordering::AcqRel);
    }
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
    SEGV_OWNED.store(false, Ordering::Release);
    for sig in 1..NSIG as i32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == EPOCH_SIGNAL {
            continue;
        }
        // SAFETY: view(sig) is valid; read-only here.
        let v = unsafe { *view(sig) };
        if v.sa_sigaction != libc::SIG_DFL || sig == libc::SIGSEGV {
            apply(real, sig, &v);
        }
    }
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
    call_app(&v, sig, info, uc);
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
