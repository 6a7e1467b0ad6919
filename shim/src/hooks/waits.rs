//! Hooks on the calls where the program waits: `epoll_wait`/`epoll_pwait`, `poll`/`ppoll`,
//! `select`/`pselect` (output waiting for the next checkpoint asks for it now, starved
//! descriptors are re-armed: `track::sockets::before_wait`), and the sleeps (`nanosleep`,
//! `clock_nanosleep`, `usleep`, `sleep`: glibc's own reach the kernel through internal calls).
//! Each is also a safe point where a restored program picks up a rejoin request, and a
//! daemonizing program's child the protection handed to it (`base::state::safe_point`).

use core::ffi::c_int;

use crate::base::interpose::{hook, real};
use crate::base::{sigview, state};
use crate::track::sockets::{before_wait, ts_nonzero};

/// The app's wait mask without the signals the shim owns (the epoch signal must reach the
/// program while it waits, or no checkpoint is taken until the wait ends). `None`: no mask.
fn scrubbed(mask: *const libc::sigset_t) -> Option<libc::sigset_t> {
    // SAFETY: mask is null or a valid sigset (as for ppoll(2), pselect(2), epoll_pwait(2)).
    let mut m = unsafe { mask.as_ref() }.copied()?;
    sigview::scrub_mask(&mut m);
    Some(m)
}

fn mask_ptr(m: &Option<libc::sigset_t>) -> *const libc::sigset_t {
    m.as_ref()
        .map_or(core::ptr::null(), |m| m as *const libc::sigset_t)
}

hook! {
    unsafe fn epoll_wait(ep: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int => remus_epoll_wait {
        before_wait(timeout != 0, ep);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(epoll_wait)(ep, ev, max, timeout) }
    }
}

hook! {
    unsafe fn epoll_pwait(
        ep: c_int,
        ev: *mut libc::epoll_event,
        max: c_int,
        timeout: c_int,
        mask: *const libc::sigset_t
    ) -> c_int => remus_epoll_pwait {
        before_wait(timeout != 0, ep);
        let m = scrubbed(mask);
        // SAFETY: the app's arguments, its mask less the shim's signals.
        unsafe { real!(epoll_pwait)(ep, ev, max, timeout, mask_ptr(&m)) }
    }
}

hook! {
    unsafe fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int => remus_poll {
        before_wait(timeout != 0, -1);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(poll)(fds, n, timeout) }
    }
}

hook! {
    unsafe fn __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, len: usize) -> c_int => remus_poll_chk {
        before_wait(timeout != 0, -1);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(__poll_chk)(fds, n, timeout, len) }
    }
}

hook! {
    unsafe fn ppoll(
        fds: *mut libc::pollfd,
        n: libc::nfds_t,
        ts: *const libc::timespec,
        mask: *const libc::sigset_t
    ) -> c_int => remus_ppoll {
        before_wait(ts_nonzero(ts), -1);
        let m = scrubbed(mask);
        // SAFETY: the app's arguments, its mask less the shim's signals.
        unsafe { real!(ppoll)(fds, n, ts, mask_ptr(&m)) }
    }
}

hook! {
    unsafe fn select(
        n: c_int,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
        tv: *mut libc::timeval
    ) -> c_int => remus_select {
        // SAFETY: tv is null or a valid timeval (as for select(2)).
        let blocking = tv.is_null() || unsafe { (*tv).tv_sec != 0 || (*tv).tv_usec != 0 };
        before_wait(blocking, -1);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(select)(n, r, w, e, tv) }
    }
}

hook! {
    unsafe fn pselect(
        n: c_int,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
        ts: *const libc::timespec,
        mask: *const libc::sigset_t
    ) -> c_int => remus_pselect {
        before_wait(ts_nonzero(ts), -1);
        let m = scrubbed(mask);
        // SAFETY: the app's arguments, its mask less the shim's signals.
        unsafe { real!(pselect)(n, r, w, e, ts, mask_ptr(&m)) }
    }
}

hook! {
    unsafe fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> c_int => remus_nanosleep {
        state::safe_point();
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(nanosleep)(req, rem) }
    }
}

hook! {
    unsafe fn usleep(us: libc::useconds_t) -> c_int => remus_usleep {
        state::safe_point();
        // SAFETY: an integer argument.
        unsafe { real!(usleep)(us) }
    }
}

hook! {
    unsafe fn sleep(s: libc::c_uint) -> libc::c_uint => remus_sleep {
        state::safe_point();
        // SAFETY: an integer argument.
        unsafe { real!(sleep)(s) }
    }
}

hook! {
    unsafe fn clock_nanosleep(
        clock: libc::clockid_t,
        flags: c_int,
        req: *const libc::timespec,
        rem: *mut libc::timespec
    ) -> c_int => remus_clock_nanosleep {
        state::safe_point();
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(clock_nanosleep)(clock, flags, req, rem) }
    }
}
