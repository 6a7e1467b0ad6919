//! The kernel objects behind the app's descriptors, described at each checkpoint for the
//! standby (layout in `remus_abi::kobj`): sockets (family, type, bound address, listening,
//! options), pipes (inode, size, unread bytes copied with `tee()` so the app still reads
//! them), epoll registrations (from the kernel's own list in `/proc/self/fdinfo/N`: every
//! `tfd`, `events` and `data` exactly as the app set them, whoever made the `epoll_ctl`
//! call), eventfd counters, timerfd settings, signalfd masks.
//!
//! Runs in the epoch handler: raw system calls and static buffers only. The backlog each
//! listening socket was given comes from `track::backlog` (the `listen` hook records it).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, Ordering};

use remus_abi::kobj::{
    EpollReg, KobjHeader, KobjKind, KobjRecord, EPOLL_OFF, KF_CONNECTED, KF_LISTENING,
    KF_REUSEADDR, KF_REUSEPORT, KF_SEMAPHORE, KF_TRUNCATED, KF_V6ONLY, KOBJS_OFF, KOBJ_MAGIC,
    KOBJ_OFF, MAX_EPOLL_REGS, MAX_KOBJS, PIPE_DATA_MAX, PIPE_DATA_OFF, SOCKADDR_MAX,
};
use remus_abi::{FdKind, FdRecord, SHIM_FD_BASE};

use crate::kernel::line::Line;
use crate::kernel::sys;
use crate::kernel::text::{self, fdinfo_field, num, EpollLine};
use crate::track::{backlog, pages};

/// The shim's scratch pipe for `tee()` (read end, write end), above `SHIM_FD_BASE`.
static SCRATCH_R: AtomicI32 = AtomicI32::new(-1);
static SCRATCH_W: AtomicI32 = AtomicI32::new(-1);

/// Forgets the scratch pipe (the restored process does not have it).
pub fn forget() {
    SCRATCH_R.store(-1, Ordering::Relaxed);
    SCRATCH_W.store(-1, Ordering::Relaxed);
}

const FDINFO_MAX: usize = 1 << 20;
struct Buf(UnsafeCell<[u8; FDINFO_MAX]>);
// SAFETY: used only by the epoch handler, which cannot nest and runs on the only thread.
unsafe impl Sync for Buf {}
static FDINFO: Buf = Buf(UnsafeCell::new([0; FDINFO_MAX]));

/// Raw syscall shorthand for calls without memory arguments.
fn call(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> sys::SysResult {
    // SAFETY: used only for calls whose arguments are integers (fcntl, close, tee, ...), or
    // whose pointers the caller made valid (noted at each use).
    unsafe { sys::raw6(nr, a, b, c, d, 0, 0) }
}

/// Describes the kernel objects of `fds` (the table just captured) into the staging area at
/// `base`.
pub fn capture(base: *mut u8, fds: &[FdRecord], epoch: u64) {
    // SAFETY: the kobj section lies inside staging (STAGING_SIZE = KOBJ_END), which the
    // handler owns until it notifies the controller; the three arrays do not overlap.
    let (hdr, recs, regs, data) = unsafe {
        (
            &mut *(base.add(KOBJ_OFF) as *mut KobjHeader),
            core::slice::from_raw_parts_mut(base.add(KOBJS_OFF) as *mut KobjRecord, MAX_KOBJS),
            core::slice::from_raw_parts_mut(base.add(EPOLL_OFF) as *mut EpollReg, MAX_EPOLL_REGS),
            core::slice::from_raw_parts_mut(base.add(PIPE_DATA_OFF), PIPE_DATA_MAX),
        )
    };
    let mut n = 0usize;
    let mut n_regs = 0usize;
    let mut n_data = 0usize;
    for f in fds {
        // fds 0..2 are replaced by the standby's own stdio at restore.
        if f.fd <= 2 || n == MAX_KOBJS {
            continue;
        }
        let path = &f.path[..(f.path_len as usize).min(f.path.len())];
        let kind = FdKind::from_u32(f.kind);
        let is_pipe = kind == FdKind::Fifo && path.starts_with(b"pipe:[");
        let first = is_pipe
            && !recs[..n]
                .iter()
                .any(|p| p.kind == KobjKind::Pipe as u32 && p.ino == bracket_num(path));
        let r = &mut recs[n];
        *r = KobjRecord::ZERO;
        r.fd = f.fd;
        let ok = match kind {
            FdKind::Socket => socket(f.fd, r),
            FdKind::Fifo if is_pipe => pipe(f, path, r, first, data, &mut n_data),
            FdKind::AnonInode => match path {
                b"anon_inode:[eventpoll]" => epoll(f.fd, r, regs, &mut n_regs),
                b"anon_inode:[eventfd]" => eventfd(f.fd, r),
                b"anon_inode:[timerfd]" => timerfd(f.fd, r),
                b"anon_inode:[signalfd]" => signalfd(f.fd, r),
                _ => false,
            },
            _ => false,
        };
        if ok {
            n += 1;
        }
    }
    *hdr = KobjHeader {
        magic: KOBJ_MAGIC,
        epoch,
        n_objs: n as u32,
        n_epoll: n_regs as u32,
        pipe_bytes: n_data as u32,
        _pad: 0,
    };
}

/// `N` of `pipe:[N]`.
fn bracket_num(path: &[u8]) -> u64 {
    let mut v = 0u64;
    for &c in path.iter().skip_while(|&&c| c != b'[').skip(1) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    v
}

fn getsockopt_int(fd: i32, level: i32, opt: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len: u32 = 4;
    // SAFETY: getsockopt writes at most `len` (4) bytes into v and updates len.
    unsafe {
        sys::raw6(
            libc::SYS_getsockopt,
            fd as usize,
            level as usize,
            opt as usize,
            &mut v as *mut i32 as usize,
            &mut len as *mut u32 as usize,
            0,
        )
    }
    .ok()
    .map(|_| v)
}

fn sockname(nr: libc::c_long, fd: i32, out: &mut [u8; SOCKADDR_MAX]) -> Option<u32> {
    let mut len: u32 = SOCKADDR_MAX as u32;
    // SAFETY: the kernel writes at most `len` bytes into out and updates len.
    unsafe {
        sys::raw6(
            nr,
            fd as usize,
            out.as_mut_ptr() as usize,
            &mut len as *mut u32 as usize,
            0,
            0,
            0,
        )
    }
    .ok()
    .map(|_| len.min(SOCKADDR_MAX as u32))
}

fn socket(fd: i32, r: &mut KobjRecord) -> bool {
    r.kind = KobjKind::Socket as u32;
    r.family = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(0);
    r.sock_type = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(0);
    r.protocol = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let on = |level, opt| getsockopt_int(fd, level, opt).unwrap_or(0) != 0;
    if on(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) {
        r.flags |= KF_LISTENING;
    }
    if on(libc::SOL_SOCKET, libc::SO_REUSEADDR) {
        r.flags |= KF_REUSEADDR;
    }
    if on(libc::SOL_SOCKET, libc::SO_REUSEPORT) {
        r.flags |= KF_REUSEPORT;
    }
    if r.family == libc::AF_INET6 && on(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) {
        r.flags |= KF_V6ONLY;
    }
    r.backlog = backlog::get(fd);
    r.addr_len = sockname(libc::SYS_getsockname, fd, &mut r.addr).unwrap_or(0);
    if let Some(l) = sockname(libc::SYS_getpeername, fd, &mut r.peer) {
        r.peer_len = l;
        r.flags |= KF_CONNECTED;
    }
    true
}

fn scratch_pipe() -> Option<(i32, i32)> {
    let (r, w) = (
        SCRATCH_R.load(Ordering::Relaxed),
        SCRATCH_W.load(Ordering::Relaxed),
    );
    if r >= 0 {
        return Some((r, w));
    }
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two ints into p.
    unsafe {
        sys::raw6(
            libc::SYS_pipe2,
            p.as_mut_ptr() as usize,
            (libc::O_CLOEXEC | libc::O_NONBLOCK) as usize,
            0,
            0,
            0,
            0,
        )
    }
    .ok()?;
    let mut high = [-1i32; 2];
    for i in 0..2 {
        let h = call(
            libc::SYS_fcntl,
            p[i] as usize,
            libc::F_DUPFD_CLOEXEC as usize,
            SHIM_FD_BASE as usize,
            0,
        );
        sys::close(p[i]);
        high[i] = h.map(|h| h as i32).unwrap_or(-1);
    }
    if high[0] < 0 || high[1] < 0 {
        high.iter()
            .filter(|&&h| h >= 0)
            .for_each(|&h| sys::close(h));
        return None;
    }
    SCRATCH_R.store(high[0], Ordering::Relaxed);
    SCRATCH_W.store(high[1], Ordering::Relaxed);
    Some((high[0], high[1]))
}

/// Copies the unread bytes of the pipe behind `src` (a read end) into `out` without
/// consuming them. Returns (bytes copied, complete).
fn tee_pipe(src: i32, size: usize, out: &mut [u8]) -> (usize, bool) {
    let mut avail: i32 = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { sys::ioctl(src, libc::FIONREAD, &mut avail) }.is_err() {
        return (0, false);
    }
    let avail = avail.max(0) as usize;
    if avail == 0 {
        return (0, true);
    }
    let Some((sr, sw)) = scratch_pipe() else {
        return (0, false);
    };
    // The scratch pipe must hold as much as the source.
    let _ = call(
        libc::SYS_fcntl,
        sw as usize,
        libc::F_SETPIPE_SZ as usize,
        size.max(avail),
        0,
    );
    let max = out.len().min(avail);
    // One tee only: it does not consume, so a second call would copy the same bytes again.
    let teed = match call(
        libc::SYS_tee,
        src as usize,
        sw as usize,
        max,
        libc::SPLICE_F_NONBLOCK as usize,
    ) {
        Ok(t) => t as usize,
        Err(_) => return (0, false),
    };
    let mut got = 0;
    while got < teed {
        // SAFETY: out[got..teed] is writable (teed <= max <= out.len()).
        match unsafe {
            sys::raw6(
                libc::SYS_read,
                sr as usize,
                out[got..].as_mut_ptr() as usize,
                teed - got,
                0,
                0,
                0,
            )
        } {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k as usize,
        }
    }
    // Leave the scratch pipe empty whatever happened.
    let mut sink = [0u8; 512];
    // SAFETY: sink is writable for its length.
    while let Ok(k) = unsafe {
        sys::raw6(
            libc::SYS_read,
            sr as usize,
            sink.as_mut_ptr() as usize,
            sink.len(),
            0,
            0,
            0,
        )
    } {
        if k == 0 {
            break;
        }
    }
    (got, got == avail)
}

fn pipe(
    f: &FdRecord,
    path: &[u8],
    r: &mut KobjRecord,
    first: bool,
    data: &mut [u8],
    n_data: &mut usize,
) -> bool {
    r.kind = KobjKind::Pipe as u32;
    r.ino = bracket_num(path);
    r.pipe_size = call(
        libc::SYS_fcntl,
        f.fd as usize,
        libc::F_GETPIPE_SZ as usize,
        0,
        0,
    )
    .unwrap_or(65536) as u32;
    if !first {
        return true; // the first record of this pipe carries its bytes
    }
    // tee() needs a read end: the app's own, or one opened through /proc for a write end.
    // That open walks /proc every epoch; an empty pipe (the common case) needs none: FIONREAD
    // answers on either end (the kernel's pipe_ioctl serves both).
    if f.flags & libc::O_ACCMODE == libc::O_WRONLY {
        let mut avail: i32 = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { sys::ioctl(f.fd, libc::FIONREAD, &mut avail) }.is_ok() && avail <= 0 {
            r.data_off = *n_data as u32;
            r.data_len = 0;
            return true;
        }
    }
    let (src, opened) = if f.flags & libc::O_ACCMODE == libc::O_WRONLY {
        let mut l = Line::<40>::new();
        l.push(b"/proc/self/fd/").num(f.fd as u64).push(b"\0");
        // SAFETY: l is NUL-terminated.
        match unsafe {
            sys::raw6(
                libc::SYS_openat,
                libc::AT_FDCWD as usize,
                l.as_bytes().as_ptr() as usize,
                (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as usize,
                0,
                0,
                0,
            )
        } {
            Ok(fd) => (fd as i32, true),
            Err(_) => {
                r.flags |= KF_TRUNCATED;
                return true;
            }
        }
    } else {
        (f.fd, false)
    };
    let space = &mut data[*n_data..];
    let (got, complete) = tee_pipe(src, r.pipe_size as usize, space);
    if opened {
        sys::close(src);
    }
    r.data_off = *n_data as u32;
    r.data_len = got as u32;
    if !complete {
        r.flags |= KF_TRUNCATED;
    }
    *n_data += got;
    true
}

/// Reads `/proc/self/fdinfo/<fd>` into the static buffer.
fn fdinfo(fd: i32) -> Option<&'static [u8]> {
    // SAFETY: FDINFO is used only here, by the epoch handler (see Buf).
    let buf = unsafe { &mut *FDINFO.0.get() };
    let n = pages::read_fdinfo(fd, buf)?;
    Some(&buf[..n])
}

fn epoll(fd: i32, r: &mut KobjRecord, regs: &mut [EpollReg], n_regs: &mut usize) -> bool {
    r.kind = KobjKind::Epoll as u32;
    r.data_off = *n_regs as u32;
    let Some(text) = fdinfo(fd) else {
        r.flags |= KF_TRUNCATED;
        return true;
    };
    if text.len() == FDINFO_MAX {
        r.flags |= KF_TRUNCATED;
    }
    for EpollLine { tfd, events, data } in text::epoll_lines(text) {
        if *n_regs == regs.len() {
            r.flags |= KF_TRUNCATED;
            break;
        }
        regs[*n_regs] = EpollReg {
            epfd: fd,
            fd: tfd,
            events,
            _pad: 0,
            data,
        };
        *n_regs += 1;
    }
    r.data_len = *n_regs as u32 - r.data_off;
    true
}

fn eventfd(fd: i32, r: &mut KobjRecord) -> bool {
    r.kind = KobjKind::EventFd as u32;
    let Some(text) = fdinfo(fd) else { return false };
    r.count = fdinfo_field(text, b"eventfd-count:")
        .and_then(|s| num(s, 16))
        .unwrap_or(0);
    if fdinfo_field(text, b"eventfd-semaphore:").and_then(|s| num(s, 10)) == Some(1) {
        r.flags |= KF_SEMAPHORE;
    }
    true
}

fn timerfd(fd: i32, r: &mut KobjRecord) -> bool {
    r.kind = KobjKind::TimerFd as u32;
    let Some(text) = fdinfo(fd) else { return false };
    r.clockid = fdinfo_field(text, b"clockid:")
        .and_then(|s| num(s, 10))
        .unwrap_or(libc::CLOCK_MONOTONIC as u64) as i32;
    r.count = fdinfo_field(text, b"ticks:")
        .and_then(|s| num(s, 10))
        .unwrap_or(0);
    // SAFETY: an all-zero itimerspec is valid.
    let mut its: libc::itimerspec = unsafe { core::mem::zeroed() };
    // SAFETY: timerfd_gettime writes one itimerspec.
    if unsafe {
        sys::raw6(
            libc::SYS_timerfd_gettime,
            fd as usize,
            &mut its as *mut libc::itimerspec as usize,
            0,
            0,
            0,
            0,
        )
    }
    .is_ok()
    {
        r.value = [its.it_value.tv_sec, its.it_value.tv_nsec];
        r.interval = [its.it_interval.tv_sec, its.it_interval.tv_nsec];
    }
    true
}

fn signalfd(fd: i32, r: &mut KobjRecord) -> bool {
    r.kind = KobjKind::SignalFd as u32;
    let Some(text) = fdinfo(fd) else { return false };
    r.sigmask = fdinfo_field(text, b"sigmask:")
        .and_then(|s| num(s, 16))
        .unwrap_or(0);
    true
}

/// Whether the kernel objects just written at `base` (this epoch's, by [`capture`]) include a
/// connected TCP socket over IPv4 or IPv6: what remusd dumps in the pause
/// (`remus_abi::TCP_HOLD_OFF`).
pub fn has_connected_tcp(base: *mut u8) -> bool {
    // SAFETY: the kobj section lies inside staging (see `capture`), written just now by
    // `capture` in this handler; only read here.
    let (hdr, recs) = unsafe {
        (
            &*(base.add(KOBJ_OFF) as *const KobjHeader),
            core::slice::from_raw_parts(base.add(KOBJS_OFF) as *const KobjRecord, MAX_KOBJS),
        )
    };
    let n = (hdr.n_objs as usize).min(MAX_KOBJS);
    recs[..n].iter().any(|r| {
        r.kind == KobjKind::Socket as u32
            && (r.family == libc::AF_INET || r.family == libc::AF_INET6)
            && r.sock_type == libc::SOCK_STREAM
            && r.flags & KF_CONNECTED != 0
            && r.flags & KF_LISTENING == 0
    })
}
