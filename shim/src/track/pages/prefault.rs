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

use core::ffi::{c_int, c_void};

use super::{is_mprotect, mprotect};
use crate::base::state;

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
    let _d = state::HookDepth::enter();
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
    // SAFETY: the caller passes n valid iovecs at iov.
    let v = unsafe { core::slice::from_raw_parts(iov, n as usize) };
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
    let _d = state::HookDepth::enter();
    let slot = mprotect::lend(lo, hi - lo);
    for i in v {
        mprotect::touch(i.iov_base as u64, i.iov_len as u64);
    }
    Some(Lent(slot))
}

/// `(buf, *len)` out-parameters such as a socket address.
pub unsafe fn small_out(
    buf: *mut c_void,
    len: *mut libc::socklen_t,
) -> (Option<Lent>, Option<Lent>) {
    if buf.is_null() || len.is_null() || !is_mprotect() {
        return (None, None);
    }
    (
        // SAFETY: len is valid (as for the call it is passed to).
        buffer(buf, unsafe { *len } as usize),
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
pub unsafe fn file(fp: *mut libc::FILE) -> (Option<Lent>, Option<Lent>) {
    if fp.is_null() || !is_mprotect() {
        return (None, None);
    }
    let base = fp as *const u8;
    // SAFETY: fp is a glibc FILE (216 bytes), whose buffer pointers are at 56 and 64.
    let buf_base = |b: *const u8| unsafe { *(b.add(56) as *const *mut c_void) };
    if buf_base(base).is_null() {
        // SAFETY: glibc's own allocation of a stream's buffer, as its first read would do.
        unsafe { _IO_doallocbuf(fp) };
    }
    let lo = buf_base(base);
    // SAFETY: as for buf_base.
    let hi = unsafe { *(base.add(64) as *const *mut c_void) };
    let f = buffer(fp as *const c_void, FILE_SIZE);
    if lo.is_null() || (hi as usize) <= (lo as usize) {
        return (f, None);
    }
    (f, buffer(lo, hi as usize - lo as usize))
}

// The refill behind the `getc_unlocked` macro: a program that reads through
// it (CPython's tokenizer reads its script so) calls these, not `fgetc`.

/// glibc's DIR: `allocation` (the size of the entry buffer) at 8, the buffer at 48.
pub unsafe fn dir(d: *mut libc::DIR) -> Option<Lent> {
    if d.is_null() || !is_mprotect() {
        return None;
    }
    // SAFETY: d is a glibc DIR, whose buffer size is at 8.
    let alloc = unsafe { *((d as *const u8).add(8) as *const usize) };
    buffer(d as *const c_void, 48 + alloc.min(1 << 20))
}
