//! Output commit, the shim's part (DESIGN §4; the rest is in remusd's `primary::output`).
//!
//! Before `main`, every held output stream among fds 1 and 2 (a pipe or FIFO, a tty or other
//! character device except `/dev/null`, a socket unless it is also fd 0, as under inetd) gets a
//! pipe put in its place: remusd inherits the pipe's read end and a duplicate of the original
//! descriptor, and releases what the app wrote once the epoch that produced it is committed.
//!
//! Why a pipe and not `write` hooks: glibc's stdio (`printf`, `puts`, `fwrite`, the exit-time
//! flush) reaches the kernel through glibc-internal calls (`_IO_file_write` -> `__write`) that
//! an interposed `write` never sees; a pipe catches those, `write`, `writev`, `splice`,
//! `sendfile`, and the output of children that inherit the descriptors, with no hook at all
//! and nothing on the signal path: everything in the pipe when remusd reads it was written
//! before the next checkpoint.
//!
//! What the app can tell: `isatty(1)` is false where it was true (the shim then makes stdout
//! line-buffered, as glibc would have for a tty), `ioctl`s on a tty (window size, termios) fail
//! on fd 1/2, and `fstat(1)` shows a pipe. Regular files and `/dev/null` are left alone
//! (files are replicated state, not output).
//!
//! Start-up only (single-threaded, before `main`, or a restored process being protected again at
//! a safe point, see `rejoin.rs`); nothing here runs in the signal handler.

use remus_abi::MAX_OUTPUT_STREAMS;

use crate::kernel::sys;

/// One held stream, between [`prepare`] and [`install`].
#[derive(Clone, Copy)]
pub struct Stream {
    /// The app's descriptors it covers (1, 2, or both when they share a file description).
    pub app_fds: [bool; 3],
    /// A duplicate of the original descriptor (remusd's destination), above `SHIM_FD_BASE`.
    pub orig: i32,
    /// The pipe's read end (remusd's) and write end (the app's, once installed).
    pub rd: i32,
    pub wr: i32,
    pub tty: bool,
}

impl Stream {
    pub fn name(&self) -> &'static str {
        match (self.app_fds[1], self.app_fds[2]) {
            (true, true) => "stdout+stderr",
            (true, false) => "stdout",
            _ => "stderr",
        }
    }
}

pub struct Plan {
    pub streams: [Option<Stream>; MAX_OUTPUT_STREAMS],
}

/// Whether two descriptors of this process share one open file description.
fn same_description(a: i32, b: i32) -> bool {
    let pid = sys::getpid();
    const KCMP_FILE: usize = 0;
    // SAFETY: kcmp takes integers only.
    unsafe {
        sys::raw6(
            libc::SYS_kcmp,
            pid as usize,
            pid as usize,
            KCMP_FILE,
            a as usize,
            b as usize,
            0,
        )
    }
    .is_ok_and(|r| r == 0)
}

/// Whether output on `fd` must wait for its epoch to commit.
fn held(fd: i32) -> Option<bool> {
    let st = sys::fstat(fd)?;
    let is_tty = match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => false,
        libc::S_IFCHR => {
            // /dev/null (1, 3): nothing leaves.
            if libc::major(st.st_rdev) == 1 && libc::minor(st.st_rdev) == 3 {
                return None;
            }
            // SAFETY: isatty takes an integer.
            unsafe { libc::isatty(fd) == 1 }
        }
        // A socket that is also the app's fd 0 (inetd style) must stay a socket: the app may
        // read from, or shut down, its fd 1. Its output is not held yet (see the README).
        libc::S_IFSOCK if !same_description(0, fd) => false,
        _ => return None,
    };
    Some(is_tty)
}

fn pipe() -> Option<(i32, i32)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into p.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    let rd = sys::move_fd_high(p[0]).unwrap_or(p[0]);
    let wr = sys::move_fd_high(p[1]).unwrap_or(p[1]);
    // A larger pipe lets the app run ahead between remusd's reads (best effort).
    // SAFETY: F_SETPIPE_SZ takes an integer.
    unsafe { libc::fcntl(wr, libc::F_SETPIPE_SZ, 1 << 20) };
    Some((rd, wr))
}

fn dup_high(fd: i32) -> Option<i32> {
    // SAFETY: F_DUPFD_CLOEXEC takes integers; the new descriptor is ours.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, remus_abi::SHIM_FD_BASE) };
    (r >= 0).then_some(r)
}

/// Decides which of fds 1 and 2 are held and makes their pipes (nothing is changed for the app
/// yet: that is [`install`], once protection starts).
pub fn prepare() -> Plan {
    let mut plan = Plan {
        streams: [None; MAX_OUTPUT_STREAMS],
    };
    let mut n = 0;
    for fd in [1, 2] {
        let Some(tty) = held(fd) else { continue };
        if fd == 2 {
            if let Some(s) = plan.streams[..n]
                .iter_mut()
                .flatten()
                .find(|s| s.app_fds[1] && same_description(1, 2))
            {
                // `2>&1`: one stream keeps the order of stdout and stderr exactly.
                s.app_fds[2] = true;
                continue;
            }
        }
        let Some(orig) = dup_high(fd) else { continue };
        let Some((rd, wr)) = pipe() else {
            sys::close(orig);
            continue;
        };
        let mut app_fds = [false; 3];
        app_fds[fd as usize] = true;
        plan.streams[n] = Some(Stream {
            app_fds,
            orig,
            rd,
            wr,
            tty,
        });
        n += 1;
    }
    plan
}

/// After remusd has its copies: closes the shim's copies of the original descriptors and the
/// read ends.
pub fn forget_controller_ends(plan: &Plan) {
    for s in plan.streams.iter().flatten() {
        sys::close(s.orig);
        sys::close(s.rd);
    }
}

extern "C" {
    static mut stdout: *mut libc::FILE;
}

/// Protection starts: puts each pipe's write end in place of the app's descriptor(s), with the
/// original's `O_NONBLOCK` and close-on-exec flag. `before_main`: stdio has not written yet, so
/// stdout's buffering may still be changed (not so when a restored process is protected again).
pub fn install(plan: &Plan, before_main: bool) {
    for s in plan.streams.iter().flatten() {
        for fd in 1..3 {
            if !s.app_fds[fd] {
                continue;
            }
            let fd = fd as i32;
            // SAFETY: fcntl queries and sets flags on descriptors we own or the app's fd 1/2;
            // dup3 replaces fd 1/2 atomically (no window where the number is free).
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                let fdfl = libc::fcntl(fd, libc::F_GETFD);
                if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
                    let wfl = libc::fcntl(s.wr, libc::F_GETFL);
                    libc::fcntl(s.wr, libc::F_SETFL, wfl | libc::O_NONBLOCK);
                }
                let cloexec = if fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0 {
                    libc::O_CLOEXEC
                } else {
                    0
                };
                libc::dup3(s.wr, fd, cloexec);
            }
        }
        if s.tty && s.app_fds[1] && before_main {
            // glibc line-buffers stdout on a tty: keep that, now that fd 1 is a pipe. Before
            // main, no stdio output has happened yet, so setvbuf is allowed.
            // SAFETY: stdout is glibc's FILE pointer, valid for the life of the process.
            unsafe { libc::setvbuf(stdout, core::ptr::null_mut(), libc::_IOLBF, 0) };
        }
        sys::close(s.wr);
    }
}

/// Protection did not start: the app keeps its descriptors; remusd sees end of file.
pub fn abandon(plan: &Plan) {
    for s in plan.streams.iter().flatten() {
        sys::close(s.wr);
    }
}
