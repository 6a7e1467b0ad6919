//! Hooks on sockets and the descriptors that may be sockets: `send`, `sendto`, `sendmsg`
//! (held in the output log until their epoch commits), `shutdown` and `close` (records in the
//! same log, after the data), `dup2`/`dup3` over a held socket (its close first), `epoll_ctl`
//! (which set a socket is in, to re-arm it after backpressure), `listen` (the backlog, for
//! restore), `accept`/`accept4` (a blocking accept is a wait for input: output waiting for the
//! next checkpoint asks for it now). The bookkeeping is `track::sockets` and `track::backlog`.

use core::ffi::{c_int, c_void};

use crate::base::interpose::{hook, real};
use crate::base::state;
use crate::track::backlog;
use crate::track::sockets::{
    addr_bytes, after_epoll_ctl, before_accept, before_close, before_replace, iov_total, iovs,
    send_call, shutdown_call, Src,
};

hook! {
    unsafe fn send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> isize => remus_send {
        state::candidate_point();
        let v = [libc::iovec { iov_base: buf as *mut c_void, iov_len: n }];
        // SAFETY: the app's arguments, passed on unchanged.
        send_call(fd, Src::Iov(&v), n, &[], flags, true, || unsafe { real!(send)(fd, buf, n, flags) })
    }
}

hook! {
    unsafe fn sendto(
        fd: c_int,
        buf: *const c_void,
        n: usize,
        flags: c_int,
        addr: *const libc::sockaddr,
        alen: libc::socklen_t
    ) -> isize => remus_sendto {
        let v = [libc::iovec { iov_base: buf as *mut c_void, iov_len: n }];
        send_call(fd, Src::Iov(&v), n, addr_bytes(addr, alen), flags, true, || {
            // SAFETY: the app's arguments, passed on unchanged.
            unsafe { real!(sendto)(fd, buf, n, flags, addr, alen) }
        })
    }
}

hook! {
    unsafe fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize => remus_sendmsg {
        // SAFETY: msg is null or a valid msghdr (as for sendmsg(2)).
        let m = unsafe { msg.as_ref() };
        let Some(m) = m.filter(|m| m.msg_controllen == 0) else {
            // Ancillary data (descriptors, credentials) cannot be deferred: see the README.
            // SAFETY: the app's arguments, passed on unchanged.
            return unsafe { real!(sendmsg)(fd, msg, flags) };
        };
        let v = iovs(m.msg_iov, m.msg_iovlen as c_int);
        let addr = addr_bytes(m.msg_name as *const libc::sockaddr, m.msg_namelen);
        // SAFETY: the app's arguments, passed on unchanged.
        send_call(fd, Src::Iov(v), iov_total(v), addr, flags, true, || unsafe { real!(sendmsg)(fd, msg, flags) })
    }
}

hook! {
    unsafe fn shutdown(fd: c_int, how: c_int) -> c_int => remus_shutdown {
        // SAFETY: integers only.
        shutdown_call(fd, how, |how| unsafe { real!(shutdown)(fd, how) })
    }
}

hook! {
    unsafe fn close(fd: c_int) -> c_int => remus_close {
        before_close(fd);
        // SAFETY: an integer argument.
        unsafe { real!(close)(fd) }
    }
}

hook! {
    unsafe fn dup2(old: c_int, new: c_int) -> c_int => remus_dup2 {
        if old != new {
            before_replace(new);
        }
        // SAFETY: integers only.
        unsafe { real!(dup2)(old, new) }
    }
}

hook! {
    unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int => remus_dup3 {
        if old != new {
            before_replace(new);
        }
        // SAFETY: integers only.
        unsafe { real!(dup3)(old, new, flags) }
    }
}

hook! {
    unsafe fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int => remus_epoll_ctl {
        // SAFETY: the app's arguments, passed on unchanged. Closed: the table is updated before
        // a checkpoint can look at it.
        let r = unsafe { real!(epoll_ctl, closed)(ep, op, fd, ev) };
        if r == 0 {
            after_epoll_ctl(ep, op, fd);
        }
        r
    }
}

hook! {
    unsafe fn listen(fd: c_int, backlog: c_int) -> c_int => remus_listen {
        // SAFETY: integers only.
        let r = unsafe { real!(listen)(fd, backlog) };
        if r == 0 {
            backlog::record(fd, backlog);
        }
        r
    }
}

hook! {
    unsafe fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int => remus_accept {
        before_accept(fd);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(accept)(fd, addr, len) }
    }
}

hook! {
    unsafe fn accept4(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int => remus_accept4 {
        before_accept(fd);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(accept4)(fd, addr, len, flags) }
    }
}
