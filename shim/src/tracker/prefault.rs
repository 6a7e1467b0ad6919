//! Pre-faulting for the mprotect tracker: the kernel writing into a protected page on the
//! program's behalf does not fault, the call fails with `EFAULT`. So the calls below touch
//! every tracked page of the buffer they hand to the kernel (a write of the byte's own value:
//! the `SIGSEGV` handler gives the page back and records it) and *lend* the buffer for the
//! duration of the call, so an epoch that lands inside a blocking call (and restarts it)
//! leaves those pages writable. With the uffd tracker every hook here passes straight through.
//!
//! Covered: `read`, `pread`/`pread64`, `readv`, `preadv`/`preadv64`, `recv`, `recvfrom`,
//! `recvmsg` (iovecs, name, control), the stdio reads (`fread`, `fgets`, `fgetc`, `getc`,
//! `getline`, `getdelim`, and `__uflow`/`__underflow`, the refill the `getc_unlocked` macro
//! calls: the `FILE`'s buffer, allocated first if need be, is touched and lent), `readdir`/`readdir64` (the `DIR`'s buffer), `sigaltstack` (the program's new
//! alternate stack, which the kernel writes signal frames into), and `madvise` (zeroing
//! advice counts as a write).
//!
//! Not covered, and what happens (honestly): anything glibc does internally without an
//! interposable call and without one of the entry points above: `scanf`-family reads,
//! `fstat`/`stat`/`wait4`/`poll`/`epoll_wait`/
//! `accept` out-parameters, `clock_nanosleep`'s remainder, `ioctl` out-structs. Those fail
//! with `EFAULT` when their out-buffer lies in a page that is protected at that moment. Most
//! such buffers live on the stack, which this tracker never protects, so in practice this is
//! rare; a heap-allocated `struct pollfd` array or epoll event array is the likely case (the
//! socket hooks may call [`buffer`] for those). Also not covered: raw `syscall()` and static
//! code. (`clock_gettime` is the vDSO: a user-mode write, which faults normally.)

use core::ffi::{c_char, c_int, c_void};

use redhook::{hook, real};

use super::{is_mprotect, mprotect};

/// Touches `[ptr, ptr + len)` and lends it until the returned guard drops.
pub struct Lent(Option<usize>);

impl Drop for Lent {
    fn drop(&mut self) {
        mprotect::unlend(self.0);
    }
}

/// For hooks elsewhere in the shim: make a buffer the kernel will write safe for the call.
/// Keep the guard alive across the system call.
pub fn buffer(ptr: *const c_void, len: usize) -> Option<Lent> {
    if !is_mprotect() || ptr.is_null() || len == 0 {
        return None;
    }
    // An epoch between the touch and the lend would protect the pages again.
    let _d = crate::state::HookDepth::enter();
    let slot = mprotect::lend(ptr as u64, len as u64);
    mprotect::touch(ptr as u64, len as u64);
    Some(Lent(slot))
}

/// The same for an iovec array: lends the span from the lowest to the highest byte.
///
/// # Safety
/// `iov` points at `n` iovecs (or is null).
pub unsafe fn iovecs(iov: *const libc::iovec, n: c_int) -> Option<Lent> {
    if !is_mprotect() || iov.is_null() || n <= 0 {
        return None;
    }
    let v = core::slice::from_raw_parts(iov, n as usize);
    let lo = v
        .iter()
        .filter(|i| i.iov_len > 0)
        .map(|i| i.iov_base as u64)
        .min()?;
    let hi = v
        .iter()
        .filter(|i| i.iov_len > 0)
        .map(|i| i.iov_base as u64 + i.iov_len as u64)
        .max()?;
    let _d = crate::state::HookDepth::enter();
    let slot = mprotect::lend(lo, hi - lo);
    for i in v {
        mprotect::touch(i.iov_base as u64, i.iov_len as u64);
    }
    Some(Lent(slot))
}

hook! {
    unsafe fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize => remus_read {
        let _g = buffer(buf, count);
        real!(read)(fd, buf, count)
    }
}

hook! {
    unsafe fn pread(fd: c_int, buf: *mut c_void, count: usize, off: libc::off_t) -> isize => remus_pread {
        let _g = buffer(buf, count);
        real!(pread)(fd, buf, count, off)
    }
}

hook! {
    unsafe fn pread64(fd: c_int, buf: *mut c_void, count: usize, off: libc::off64_t) -> isize => remus_pread64 {
        let _g = buffer(buf, count);
        real!(pread64)(fd, buf, count, off)
    }
}

hook! {
    unsafe fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize => remus_readv {
        let _g = iovecs(iov, n);
        real!(readv)(fd, iov, n)
    }
}

hook! {
    unsafe fn preadv(fd: c_int, iov: *const libc::iovec, n: c_int, off: libc::off_t) -> isize => remus_preadv {
        let _g = iovecs(iov, n);
        real!(preadv)(fd, iov, n, off)
    }
}

hook! {
    unsafe fn preadv64(fd: c_int, iov: *const libc::iovec, n: c_int, off: libc::off64_t) -> isize => remus_preadv64 {
        let _g = iovecs(iov, n);
        real!(preadv64)(fd, iov, n, off)
    }
}

hook! {
    unsafe fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize => remus_recv {
        let _g = buffer(buf, len);
        real!(recv)(fd, buf, len, flags)
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
        let _a = small_out(addr as *mut c_void, alen);
        real!(recvfrom)(fd, buf, len, flags, addr, alen)
    }
}

hook! {
    unsafe fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize => remus_recvmsg {
        let (_g, _n, _c, _m) = if msg.is_null() || !is_mprotect() {
            (None, None, None, None)
        } else {
            let m = &*msg;
            (
                iovecs(m.msg_iov, m.msg_iovlen as c_int),
                buffer(m.msg_name, m.msg_namelen as usize),
                buffer(m.msg_control, m.msg_controllen),
                // The kernel writes msg_flags, msg_namelen and msg_controllen back.
                buffer(msg as *const c_void, core::mem::size_of::<libc::msghdr>()),
            )
        };
        real!(recvmsg)(fd, msg, flags)
    }
}

/// `(buf, *len)` out-parameters such as a socket address.
unsafe fn small_out(buf: *mut c_void, len: *mut libc::socklen_t) -> (Option<Lent>, Option<Lent>) {
    if buf.is_null() || len.is_null() || !is_mprotect() {
        return (None, None);
    }
    (
        buffer(buf, *len as usize),
        buffer(
            len as *const c_void,
            core::mem::size_of::<libc::socklen_t>(),
        ),
    )
}

// glibc's FILE (x86-64): _IO_buf_base at 56, _IO_buf_end at 64; 216 bytes in all.
const FILE_SIZE: usize = 216;

extern "C" {
    fn _IO_doallocbuf(fp: *mut libc::FILE);
}

/// The stdio buffer of `fp` (allocated now if the stream has none yet, as the first read
/// would), touched and lent, and the FILE itself (unbuffered streams read into it).
unsafe fn file(fp: *mut libc::FILE) -> (Option<Lent>, Option<Lent>) {
    if fp.is_null() || !is_mprotect() {
        return (None, None);
    }
    let base = fp as *const u8;
    let buf_base = |b: *const u8| *(b.add(56) as *const *mut c_void);
    if buf_base(base).is_null() {
        _IO_doallocbuf(fp);
    }
    let lo = buf_base(base);
    let hi = *(base.add(64) as *const *mut c_void);
    let f = buffer(fp as *const c_void, FILE_SIZE);
    if lo.is_null() || (hi as usize) <= (lo as usize) {
        return (f, None);
    }
    (f, buffer(lo, hi as usize - lo as usize))
}

// The refill behind the `getc_unlocked` macro: a program that reads through
// it (CPython's tokenizer reads its script so) calls these, not `fgetc`.
hook! {
    unsafe fn __uflow(fp: *mut libc::FILE) -> c_int => remus_uflow {
        let _f = file(fp);
        real!(__uflow)(fp)
    }
}

hook! {
    unsafe fn __underflow(fp: *mut libc::FILE) -> c_int => remus_underflow {
        let _f = file(fp);
        real!(__underflow)(fp)
    }
}

hook! {
    unsafe fn fread(ptr: *mut c_void, size: usize, n: usize, fp: *mut libc::FILE) -> usize => remus_fread {
        let _f = file(fp);
        // Large reads bypass the stdio buffer and go straight into the caller's memory.
        let _g = buffer(ptr, size.saturating_mul(n));
        real!(fread)(ptr, size, n, fp)
    }
}

hook! {
    unsafe fn fgets(s: *mut c_char, n: c_int, fp: *mut libc::FILE) -> *mut c_char => remus_fgets {
        let _f = file(fp);
        real!(fgets)(s, n, fp)
    }
}

hook! {
    unsafe fn fgetc(fp: *mut libc::FILE) -> c_int => remus_fgetc {
        let _f = file(fp);
        real!(fgetc)(fp)
    }
}

hook! {
    unsafe fn getc(fp: *mut libc::FILE) -> c_int => remus_getc {
        let _f = file(fp);
        real!(getc)(fp)
    }
}

hook! {
    unsafe fn getline(line: *mut *mut c_char, n: *mut usize, fp: *mut libc::FILE) -> isize => remus_getline {
        let _f = file(fp);
        real!(getline)(line, n, fp)
    }
}

hook! {
    unsafe fn getdelim(line: *mut *mut c_char, n: *mut usize, delim: c_int, fp: *mut libc::FILE) -> isize => remus_getdelim {
        let _f = file(fp);
        real!(getdelim)(line, n, delim, fp)
    }
}

/// glibc's DIR: `allocation` (the size of the entry buffer) at 8, the buffer at 48.
unsafe fn dir(d: *mut libc::DIR) -> Option<Lent> {
    if d.is_null() || !is_mprotect() {
        return None;
    }
    let alloc = *((d as *const u8).add(8) as *const usize);
    buffer(d as *const c_void, 48 + alloc.min(1 << 20))
}

hook! {
    unsafe fn readdir(d: *mut libc::DIR) -> *mut libc::dirent => remus_readdir {
        let _g = dir(d);
        real!(readdir)(d)
    }
}

hook! {
    unsafe fn readdir64(d: *mut libc::DIR) -> *mut libc::dirent64 => remus_readdir64 {
        let _g = dir(d);
        real!(readdir64)(d)
    }
}

hook! {
    unsafe fn sigaltstack(ss: *const libc::stack_t, old: *mut libc::stack_t) -> c_int => remus_sigaltstack {
        let _o = buffer(old as *const c_void, core::mem::size_of::<libc::stack_t>());
        if !ss.is_null() && is_mprotect() && (*ss).ss_flags & libc::SS_DISABLE == 0 {
            // Signal frames land there; every epoch from now on pins it (never protected).
            // Until then its pages must already be writable.
            mprotect::touch((*ss).ss_sp as u64, (*ss).ss_size as u64);
        }
        real!(sigaltstack)(ss, old)
    }
}

hook! {
    unsafe fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int => remus_madvise {
        if !is_mprotect() {
            return real!(madvise)(addr, len, advice);
        }
        let _d = crate::state::HookDepth::enter();
        let r = real!(madvise)(addr, len, advice);
        if r == 0
            && matches!(
                advice,
                libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE | 24 /* MADV_DONTNEED_LOCKED */
            )
        {
            mprotect::zapped(addr as u64, len as u64);
        }
        r
    }
}
