//! The functions the shim interposes.
//!
//! Most hooks use `redhook` (`dlsym(RTLD_NEXT)` resolved once, then called). The memory hooks
//! (`mmap`, `munmap`, `mremap`) do not: `dlsym` may call `calloc`, which may call `mmap`, so an
//! `mmap` hook that needed `dlsym` to finish first would recurse. They make the system call
//! themselves. `brk`/`sbrk` do go through glibc's own functions, because glibc caches the
//! break (`__curbrk`) and a raw `brk` would leave that cache stale.
//!
//! The memory hooks are hints only: the epoch handler reads the kernel's map every epoch,
//! because glibc's malloc maps memory through internal calls no hook sees.

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::Ordering;

use redhook::{hook, real};
use remus_abi::MsgKind;

use crate::{link, signals, state, sys, tracker};

fn hint() {
    state::MAP_HINTS.fetch_add(1, Ordering::Relaxed);
}

fn ptr_result(r: sys::SysResult) -> *mut c_void {
    match r {
        Ok(v) => v as *mut c_void,
        Err(e) => {
            sys::set_errno(e);
            libc::MAP_FAILED
        }
    }
}

/// # Safety
/// As for `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    hint();
    let _d = state::HookDepth::enter();
    let r = sys::raw6(
        libc::SYS_mmap,
        addr as usize,
        len,
        prot as usize,
        flags as usize,
        fd as usize,
        off as usize,
    );
    if let Ok(a) = r {
        tracker::forget(a as u64, len as u64); // whatever was there before is gone
    }
    ptr_result(r)
}

/// # Safety
/// As for `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    mmap(addr, len, prot, flags, fd, off)
}

/// # Safety
/// As for `munmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    hint();
    let _d = state::HookDepth::enter();
    tracker::forget(addr as u64, len as u64);
    match sys::raw6(libc::SYS_munmap, addr as usize, len, 0, 0, 0, 0) {
        Ok(_) => 0,
        Err(e) => {
            sys::set_errno(e);
            -1
        }
    }
}

/// `mremap` is variadic in C (the fifth argument only with `MREMAP_FIXED`); on x86-64 the
/// caller passes it in `r8` either way, so a five-argument definition receives it.
///
/// # Safety
/// As for `mremap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    hint();
    let _d = state::HookDepth::enter();
    tracker::forget(old as u64, old_len as u64);
    if tracker::is_mprotect() && new_len > old_len && flags & libc::MREMAP_MAYMOVE != 0 {
        // A region the mprotect tracker follows is several VMAs, which mremap refuses
        // (EFAULT); give the old range its protection back first... the split it keeps
        // (see tracker/mprotect.rs) still makes mremap fail: do the move by hand.
        if let Some(p) = tracker::mprotect::move_by_hand(old as u64, old_len as u64, new_len as u64)
        {
            return p as *mut c_void;
        }
    }
    let new_addr = if flags & (libc::MREMAP_FIXED | 4/* MREMAP_DONTUNMAP */) != 0 {
        new_addr as usize
    } else {
        0
    };
    ptr_result(sys::raw6(
        libc::SYS_mremap,
        old as usize,
        old_len,
        new_len,
        flags as usize,
        new_addr,
        0,
    ))
}

hook! {
    unsafe fn brk(addr: *mut c_void) -> c_int => remus_brk {
        hint();
        real!(brk)(addr)
    }
}

hook! {
    unsafe fn sbrk(incr: libc::intptr_t) -> *mut c_void => remus_sbrk {
        hint();
        real!(sbrk)(incr)
    }
}

hook! {
    unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int => remus_sigaction {
        signals::app_sigaction(real!(sigaction), sig, act, old)
    }
}

/// glibc's `sigaction`, for the shim's own use.
pub fn real_sigaction() -> signals::SigactionFn {
    real!(sigaction)
}

hook! {
    unsafe fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t => remus_signal {
        // glibc's signal() gives BSD semantics: handler stays installed, calls restart.
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, sig);
        let mut old: libc::sigaction = core::mem::zeroed();
        if signals::app_sigaction(real!(sigaction), sig, &sa, &mut old) != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    }
}

/// Runs `real` with the epoch signal removed from `set`, and hides it from `old`.
unsafe fn masked(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
    real: impl FnOnce(*const libc::sigset_t, *mut libc::sigset_t) -> c_int,
) -> c_int {
    let r = if !set.is_null() && how != libc::SIG_UNBLOCK && state::mode() != state::MODE_PASSIVE {
        let mut copy = *set;
        signals::scrub_mask(&mut copy);
        real(&copy, old)
    } else {
        real(set, old)
    };
    if r == 0 && !old.is_null() {
        signals::scrub_mask(&mut *old);
    }
    r
}

hook! {
    unsafe fn sigprocmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int => remus_sigprocmask {
        masked(how, set, old, |s, o| real!(sigprocmask)(how, s, o))
    }
}

hook! {
    unsafe fn pthread_sigmask(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int => remus_pthread_sigmask {
        masked(how, set, old, |s, o| real!(pthread_sigmask)(how, s, o))
    }
}

hook! {
    unsafe fn pthread_create(
        thread: *mut libc::pthread_t,
        attr: *const libc::pthread_attr_t,
        start: extern "C" fn(*mut c_void) -> *mut c_void,
        arg: *mut c_void
    ) -> c_int => remus_pthread_create {
        if state::mode() == state::MODE_PROTECTED {
            // Stop before the thread exists: no checkpoint of a half-frozen process can be taken.
            state::set_mode(state::MODE_UNPROTECTED);
            link::send_text(
                MsgKind::ThreadCreated,
                2,
                0,
                b"the program created a second thread (pthread_create); remus protects single-threaded programs only; replication stopped",
            );
        }
        real!(pthread_create)(thread, attr, start, arg)
    }
}

// Safe points for a rejoin (see rejoin.rs): a restored program that sleeps between pieces of
// work picks up a request here, outside signal context.
hook! {
    unsafe fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> c_int => remus_nanosleep {
        crate::rejoin::poll();
        real!(nanosleep)(req, rem)
    }
}

hook! {
    unsafe fn clock_nanosleep(
        clock: libc::clockid_t,
        flags: c_int,
        req: *const libc::timespec,
        rem: *mut libc::timespec
    ) -> c_int => remus_clock_nanosleep {
        crate::rejoin::poll();
        real!(clock_nanosleep)(clock, flags, req, rem)
    }
}

fn report_exit(code: c_int) {
    if state::mode() != state::MODE_PASSIVE
        && state::APP_PID.load(Ordering::Relaxed) == sys::getpid()
    {
        link::send_text(
            MsgKind::Exiting,
            code as u32 as u64,
            0,
            b"the program exited",
        );
    }
}

hook! {
    unsafe fn exit(code: c_int) => remus_exit {
        report_exit(code);
        real!(exit)(code)
    }
}

hook! {
    unsafe fn _exit(code: c_int) => remus_underscore_exit {
        report_exit(code);
        real!(_exit)(code)
    }
}

type MainFn = extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
static mut APP_MAIN: Option<MainFn> = None;

extern "C" fn remus_main(argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) -> c_int {
    // SAFETY: APP_MAIN is written once by __libc_start_main before it calls us.
    let main = unsafe { APP_MAIN };
    let code = match main {
        Some(m) => m(argc, argv, envp),
        None => 127,
    };
    // glibc calls its internal exit() after main returns, which no hook sees: report here.
    report_exit(code);
    code
}

hook! {
    unsafe fn __libc_start_main(
        main: MainFn,
        argc: c_int,
        argv: *mut *mut c_char,
        init: *mut c_void,
        fini: *mut c_void,
        rtld_fini: *mut c_void,
        stack_end: *mut c_void
    ) -> c_int => remus_libc_start_main {
        APP_MAIN = Some(main);
        real!(__libc_start_main)(remus_main, argc, argv, init, fini, rtld_fini, stack_end)
    }
}
