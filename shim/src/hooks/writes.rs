//! Hooks on the calls that write: `write`/`writev` (a held socket's bytes go to the output log,
//! a replicated file's range is noted), the positioned writes and size changes of files
//! (`pwrite*`, `pwritev*`, `ftruncate*`, `fallocate*`), and the copies into a socket
//! (`sendfile*`, `splice`). The bookkeeping is in `track::sockets` and `track::files`.

use core::ffi::{c_int, c_void};

use crate::base::interpose::{hook, real};
use crate::base::state;
use crate::kernel::sys::FdStat;
use crate::track::files::{after, before_pwrite, before_truncate, before_write};
use crate::track::sockets::{iov_total, iovs, send_call, send_call_with, Src};

hook! {
    unsafe fn write(fd: c_int, buf: *const c_void, n: usize) -> isize => remus_write {
        state::candidate_point();
        let v = [libc::iovec { iov_base: buf as *mut c_void, iov_len: n }];
        // One fstat for both checks: regular file (file log), socket (output commit).
        let mut st = FdStat::new(fd);
        let f = before_write(fd, n, &mut st);
        // SAFETY: the app's arguments, passed on unchanged.
        let r = send_call_with(fd, &mut st, Src::Iov(&v), n, &[], 0, true, || unsafe { real!(write)(fd, buf, n) });
        after(f);
        r
    }
}

hook! {
    unsafe fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize => remus_writev {
        state::candidate_point();
        let v = iovs(iov, cnt);
        let mut st = FdStat::new(fd);
        let f = before_write(fd, iov_total(v), &mut st);
        // SAFETY: the app's arguments, passed on unchanged.
        let r = send_call_with(fd, &mut st, Src::Iov(v), iov_total(v), &[], 0, true, || unsafe { real!(writev)(fd, iov, cnt) });
        after(f);
        r
    }
}

hook! {
    unsafe fn pwrite(fd: c_int, buf: *const c_void, n: usize, off: libc::off_t) -> isize => remus_pwrite {
        let w = before_pwrite(fd, off, n);
        // SAFETY: the app's arguments, passed on unchanged.
        let r = unsafe { real!(pwrite)(fd, buf, n, off) };
        after(w);
        r
    }
}

hook! {
    unsafe fn pwrite64(fd: c_int, buf: *const c_void, n: usize, off: libc::off64_t) -> isize => remus_pwrite64 {
        let w = before_pwrite(fd, off, n);
        // SAFETY: the app's arguments, passed on unchanged.
        let r = unsafe { real!(pwrite64)(fd, buf, n, off) };
        after(w);
        r
    }
}

hook! {
    unsafe fn pwritev(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: libc::off_t) -> isize => remus_pwritev {
        let w = before_pwrite(fd, off, iov_total(iovs(iov, cnt)));
        // SAFETY: the app's arguments, passed on unchanged.
        let r = unsafe { real!(pwritev)(fd, iov, cnt, off) };
        after(w);
        r
    }
}

hook! {
    unsafe fn pwritev64(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: libc::off64_t) -> isize => remus_pwritev64 {
        let w = before_pwrite(fd, off, iov_total(iovs(iov, cnt)));
        // SAFETY: the app's arguments, passed on unchanged.
        let r = unsafe { real!(pwritev64)(fd, iov, cnt, off) };
        after(w);
        r
    }
}

hook! {
    unsafe fn pwritev2(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: libc::off_t, flags: c_int) -> isize => remus_pwritev2 {
        // off == -1: at the file offset, like writev.
        let n = iov_total(iovs(iov, cnt));
        let w = if off == -1 { before_write(fd, n, &mut FdStat::new(fd)) } else { before_pwrite(fd, off, n) };
        // SAFETY: the app's arguments, passed on unchanged.
        let r = unsafe { real!(pwritev2)(fd, iov, cnt, off, flags) };
        after(w);
        r
    }
}

hook! {
    unsafe fn ftruncate(fd: c_int, len: libc::off_t) -> c_int => remus_ftruncate {
        let w = before_truncate(fd, len);
        // SAFETY: integers only.
        let r = unsafe { real!(ftruncate)(fd, len) };
        after(w);
        r
    }
}

hook! {
    unsafe fn ftruncate64(fd: c_int, len: libc::off64_t) -> c_int => remus_ftruncate64 {
        let w = before_truncate(fd, len);
        // SAFETY: integers only.
        let r = unsafe { real!(ftruncate64)(fd, len) };
        after(w);
        r
    }
}

hook! {
    unsafe fn fallocate(fd: c_int, mode: c_int, off: libc::off_t, len: libc::off_t) -> c_int => remus_fallocate {
        // Punching or zeroing a range changes its bytes; growing shows in the size.
        let w = if len > 0 { before_pwrite(fd, off, len as usize) } else { None };
        // SAFETY: integers only.
        let r = unsafe { real!(fallocate)(fd, mode, off, len) };
        after(w);
        r
    }
}

hook! {
    unsafe fn fallocate64(fd: c_int, mode: c_int, off: libc::off64_t, len: libc::off64_t) -> c_int => remus_fallocate64 {
        let w = if len > 0 { before_pwrite(fd, off, len as usize) } else { None };
        // SAFETY: integers only.
        let r = unsafe { real!(fallocate64)(fd, mode, off, len) };
        after(w);
        r
    }
}

hook! {
    unsafe fn sendfile(out: c_int, inp: c_int, off: *mut libc::off_t, n: usize) -> isize => remus_sendfile {
        // SAFETY: the app's arguments, passed on unchanged.
        send_call(out, Src::File { fd: inp, off }, n, &[], 0, true, || unsafe { real!(sendfile)(out, inp, off, n) })
    }
}

hook! {
    unsafe fn sendfile64(out: c_int, inp: c_int, off: *mut libc::off64_t, n: usize) -> isize => remus_sendfile64 {
        // SAFETY: the app's arguments, passed on unchanged.
        send_call(out, Src::File { fd: inp, off }, n, &[], 0, true, || unsafe { real!(sendfile64)(out, inp, off, n) })
    }
}

hook! {
    unsafe fn splice(
        fd_in: c_int,
        off_in: *mut libc::loff_t,
        fd_out: c_int,
        off_out: *mut libc::loff_t,
        n: usize,
        flags: libc::c_uint
    ) -> isize => remus_splice {
        if !off_in.is_null() {
            // SAFETY: the app's arguments, passed on unchanged.
            return unsafe { real!(splice)(fd_in, off_in, fd_out, off_out, n, flags) };
        }
        let nonblock = flags & libc::SPLICE_F_NONBLOCK != 0;
        send_call(fd_out, Src::Pipe { fd: fd_in, nonblock }, n, &[], 0, false, || {
            // SAFETY: the app's arguments, passed on unchanged.
            unsafe { real!(splice)(fd_in, off_in, fd_out, off_out, n, flags) }
        })
    }
}
