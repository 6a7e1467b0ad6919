//! Hooks on the calls that read into the program's memory: the kernel writes their buffers,
//! which the mprotect tracker must make writable first (`track::pages::prefault`; with the uffd
//! tracker each passes straight through). `read`, `pread*`, `readv`, `preadv*`, `recv`,
//! `recvfrom`, `recvmsg`, the stdio reads and their refills, `readdir*`.

use core::ffi::{c_char, c_int, c_void};

use crate::base::interpose::{hook, real};
use crate::track::pages::is_mprotect;
use crate::track::pages::prefault::{buffer, dir, file, iovecs, small_out};

hook! {
    unsafe fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize => remus_read {
        let _g = buffer(buf, count);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(read)(fd, buf, count) }
    }
}

hook! {
    unsafe fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize => remus_pread {
        let _g = buffer(buf, count);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(pread)(fd, buf, count, off) }
    }
}

hook! {
    unsafe fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize => remus_pread64 {
        let _g = buffer(buf, count);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(pread64)(fd, buf, count, off) }
    }
}

hook! {
    unsafe fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize => remus_readv {
        // SAFETY: the app passes n iovecs at iov (as for readv(2)).
        let _g = unsafe { iovecs(iov, n) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(readv)(fd, iov, n) }
    }
}

hook! {
    unsafe fn preadv(fd: c_int, iov: *const libc::iovec, n: c_int, off: libc::off_t) -> isize => remus_preadv {
        // SAFETY: the app passes n iovecs at iov (as for preadv(2)).
        let _g = unsafe { iovecs(iov, n) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(preadv)(fd, iov, n, off) }
    }
}

hook! {
    unsafe fn preadv64(fd: c_int, iov: *const libc::iovec, n: c_int, off: libc::off64_t) -> isize => remus_preadv64 {
        // SAFETY: the app passes n iovecs at iov (as for preadv(2)).
        let _g = unsafe { iovecs(iov, n) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(preadv64)(fd, iov, n, off) }
    }
}

hook! {
    unsafe fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize => remus_recv {
        let _g = buffer(buf, len);
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(recv)(fd, buf, len, flags) }
    }
}

hook! {
    unsafe fn recvfrom(
        fd: c_int,
        buf: *mut c_void,
        len: usize,
        flags: c_int,
        addr: *mut libc::sockaddr,
        alen: *mut libc::socklen_t
    ) -> isize => remus_recvfrom {
        let _g = buffer(buf, len);
        // SAFETY: addr/alen are null or valid, as for recvfrom(2).
        let _a = unsafe { small_out(addr as *mut c_void, alen) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(recvfrom)(fd, buf, len, flags, addr, alen) }
    }
}

hook! {
    unsafe fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize => remus_recvmsg {
        let (_g, _n, _c, _m) = if msg.is_null() || !is_mprotect() {
            (None, None, None, None)
        } else {
            // SAFETY: msg is a valid msghdr (as for recvmsg(2)), its iovecs with it.
            let m = unsafe { &*msg };
            (
                // SAFETY: as above.
                unsafe { iovecs(m.msg_iov, m.msg_iovlen as c_int) },
                buffer(m.msg_name, m.msg_namelen as usize),
                buffer(m.msg_control, m.msg_controllen),
                // The kernel writes msg_flags, msg_namelen and msg_controllen back.
                buffer(msg as *const c_void, core::mem::size_of::<libc::msghdr>()),
            )
        };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(recvmsg)(fd, msg, flags) }
    }
}

// The refill behind the `getc_unlocked` macro: a program that reads through
// it (CPython's tokenizer reads its script so) calls these, not `fgetc`.

hook! {
    unsafe fn __uflow(fp: *mut libc::FILE) -> c_int => remus_uflow {
        // SAFETY: fp is the app's FILE (as for the stdio call).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(__uflow)(fp) }
    }
}

hook! {
    unsafe fn __underflow(fp: *mut libc::FILE) -> c_int => remus_underflow {
        // SAFETY: fp is the app's FILE (as for the stdio call).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(__underflow)(fp) }
    }
}

hook! {
    unsafe fn fread(ptr: *mut c_void, size: usize, n: usize, fp: *mut libc::FILE) -> usize => remus_fread {
        // SAFETY: fp is the app's FILE (as for fread(3)).
        let _f = unsafe { file(fp) };
        // Large reads bypass the stdio buffer and go straight into the caller's memory.
        let _g = buffer(ptr, size.saturating_mul(n));
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(fread)(ptr, size, n, fp) }
    }
}

hook! {
    unsafe fn fgets(s: *mut c_char, n: c_int, fp: *mut libc::FILE) -> *mut c_char => remus_fgets {
        // SAFETY: fp is the app's FILE (as for fgets(3)).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(fgets)(s, n, fp) }
    }
}

hook! {
    unsafe fn fgetc(fp: *mut libc::FILE) -> c_int => remus_fgetc {
        // SAFETY: fp is the app's FILE (as for fgetc(3)).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(fgetc)(fp) }
    }
}

hook! {
    unsafe fn getc(fp: *mut libc::FILE) -> c_int => remus_getc {
        // SAFETY: fp is the app's FILE (as for getc(3)).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(getc)(fp) }
    }
}

hook! {
    unsafe fn getline(line: *mut *mut c_char, n: *mut usize, fp: *mut libc::FILE) -> isize => remus_getline {
        // SAFETY: fp is the app's FILE (as for getline(3)).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(getline)(line, n, fp) }
    }
}

hook! {
    unsafe fn getdelim(line: *mut *mut c_char, n: *mut usize, delim: c_int, fp: *mut libc::FILE) -> isize => remus_getdelim {
        // SAFETY: fp is the app's FILE (as for getdelim(3)).
        let _f = unsafe { file(fp) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(getdelim)(line, n, delim, fp) }
    }
}

hook! {
    unsafe fn readdir(d: *mut libc::DIR) -> *mut libc::dirent => remus_readdir {
        // SAFETY: d is the app's DIR (as for readdir(3)).
        let _g = unsafe { dir(d) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(readdir)(d) }
    }
}

hook! {
    unsafe fn readdir64(d: *mut libc::DIR) -> *mut libc::dirent64 => remus_readdir64 {
        // SAFETY: d is the app's DIR (as for readdir(3)).
        let _g = unsafe { dir(d) };
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(readdir64)(d) }
    }
}
