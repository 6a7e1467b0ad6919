//! Thin wrappers over the raw system calls the shim makes from places where glibc must not be
//! entered (the signal handler, the memory hooks). Each returns `Err(errno)` on failure.

use core::ffi::c_long;

/// Result of a raw system call: the value, or the positive errno.
pub type SysResult = Result<c_long, i32>;

fn check(r: c_long) -> SysResult {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

pub fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot; always valid.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e }
}

/// `syscall(2)` with up to six arguments.
///
/// # Safety
/// The caller upholds the contract of the system call `nr` for the given arguments
/// (pointers valid for the lengths the kernel will read or write).
pub unsafe fn raw6(
    nr: c_long,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> SysResult {
    // SAFETY: the caller upholds the system call's contract (see above).
    check(unsafe { libc::syscall(nr, a, b, c, d, e, f) })
}

/// `ioctl(fd, req, arg)` as a raw system call (no errno, no lock).
///
/// # Safety
/// `req` reads and writes at most the `T` at `arg` (and whatever buffers it points at, which
/// the caller keeps valid).
pub unsafe fn ioctl<T>(fd: i32, req: u64, arg: &mut T) -> SysResult {
    // SAFETY: the caller keeps what `req` reads and writes valid (see above).
    unsafe {
        raw6(
            libc::SYS_ioctl,
            fd as usize,
            req as usize,
            arg as *mut T as usize,
            0,
            0,
            0,
        )
    }
}

/// `fstat(fd)` asked at most once for the checks one hooked call makes before its real call
/// (a `write` asks "regular file?" for the file log and "socket?" for output commit).
pub struct FdStat {
    fd: i32,
    st: Option<Option<libc::stat>>,
}

impl FdStat {
    pub fn new(fd: i32) -> FdStat {
        FdStat { fd, st: None }
    }

    /// The descriptor's `fstat` (the kernel is asked the first time only); None on error.
    pub fn get(&mut self) -> Option<&libc::stat> {
        let fd = self.fd;
        self.st.get_or_insert_with(|| fstat(fd)).as_ref()
    }
}

/// `fstat(fd)` as a raw system call (glibc's wrapper may be a hooked path); None on error.
pub fn fstat(fd: i32) -> Option<libc::stat> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat writes one struct stat.
    unsafe {
        raw6(
            libc::SYS_fstat,
            fd as usize,
            &mut st as *mut _ as usize,
            0,
            0,
            0,
            0,
        )
    }
    .ok()
    .map(|_| st)
}

pub fn write_all(fd: i32, buf: &[u8]) -> Result<(), i32> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: buf[off..] is a valid readable slice.
        match unsafe {
            raw6(
                libc::SYS_write,
                fd as usize,
                buf[off..].as_ptr() as usize,
                buf.len() - off,
                0,
                0,
                0,
            )
        } {
            Ok(n) => off += n as usize,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens `path` read-only once and keeps the descriptor (moved above `SHIM_FD_BASE`) in
/// `slot`; later calls reuse it. procfs files regenerate their content on every read from
/// offset 0, so a kept descriptor saves the path walk through /proc on each epoch.
pub fn kept_open(
    slot: &core::sync::atomic::AtomicI32,
    path: &core::ffi::CStr,
    flags: i32,
) -> Result<i32, i32> {
    use core::sync::atomic::Ordering;
    let fd = slot.load(Ordering::Relaxed);
    if fd >= 0 {
        return Ok(fd);
    }
    // SAFETY: path is NUL-terminated.
    let fd = unsafe {
        raw6(
            libc::SYS_openat,
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_CLOEXEC | flags) as usize,
            0,
            0,
            0,
        )
    }? as i32;
    // SAFETY: F_DUPFD_CLOEXEC takes no memory arguments.
    let high = unsafe {
        raw6(
            libc::SYS_fcntl,
            fd as usize,
            libc::F_DUPFD_CLOEXEC as usize,
            remus_abi::SHIM_FD_BASE as usize,
            0,
            0,
            0,
        )
    };
    let fd = match high {
        Ok(h) => {
            close(fd);
            h as i32
        }
        Err(_) => fd,
    };
    slot.store(fd, Ordering::Relaxed);
    Ok(fd)
}

/// Calls `f` with the name of each entry of the directory `fd` (rewound first), using `buf`
/// for `getdents64`. Allocation-free.
pub fn for_each_dirent(fd: i32, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> Result<(), i32> {
    rewind(fd)?;
    loop {
        // SAFETY: buf is writable for its length.
        let got = match unsafe {
            raw6(
                libc::SYS_getdents64,
                fd as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
                0,
                0,
            )
        } {
            Ok(0) => return Ok(()),
            Ok(g) => g as usize,
            Err(e) => return Err(e),
        };
        // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
        let mut off = 0;
        while off + 19 < got {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > got {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            f(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]);
            off += reclen;
        }
    }
}

/// The thread's current alternate signal stack (`sigaltstack(NULL, &old)`).
pub fn current_altstack() -> libc::stack_t {
    let mut ss = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: sigaltstack with a null new stack only writes the current one into ss.
    let _ = unsafe {
        raw6(
            libc::SYS_sigaltstack,
            0,
            &mut ss as *mut _ as usize,
            0,
            0,
            0,
            0,
        )
    };
    ss
}

/// `fcntl(fd, cmd)` for the query commands that take no argument (`F_GETFL`, `F_GETFD`,
/// `F_GETPIPE_SZ`, ...).
pub fn fcntl_get(fd: i32, cmd: i32) -> Result<i32, i32> {
    // SAFETY: the query commands take no memory arguments.
    unsafe { raw6(libc::SYS_fcntl, fd as usize, cmd as usize, 0, 0, 0, 0) }.map(|v| v as i32)
}

/// The file offset of `fd` (`lseek(fd, 0, SEEK_CUR)`).
pub fn tell(fd: i32) -> Result<u64, i32> {
    // SAFETY: lseek takes no memory arguments.
    unsafe {
        raw6(
            libc::SYS_lseek,
            fd as usize,
            0,
            libc::SEEK_CUR as usize,
            0,
            0,
            0,
        )
    }
    .map(|v| v as u64)
}

/// Rewinds `fd` to offset 0.
pub fn rewind(fd: i32) -> Result<(), i32> {
    // SAFETY: lseek takes no memory arguments.
    unsafe {
        raw6(
            libc::SYS_lseek,
            fd as usize,
            0,
            libc::SEEK_SET as usize,
            0,
            0,
            0,
        )
    }
    .map(|_| ())
}

/// One `read(fd, buf)`, retried on `EINTR`.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: buf is a valid writable slice.
        match unsafe {
            raw6(
                libc::SYS_read,
                fd as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
                0,
                0,
            )
        } {
            Ok(n) => return Ok(n as usize),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens `path` (NUL-terminated) read-only, close-on-exec.
pub fn open_ro(path: &[u8]) -> Result<i32, i32> {
    debug_assert!(path.last() == Some(&0));
    // SAFETY: path is NUL-terminated.
    unsafe {
        raw6(
            libc::SYS_openat,
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_CLOEXEC) as usize,
            0,
            0,
            0,
        )
    }
    .map(|fd| fd as i32)
}

/// Reads the start of the file at `path` (NUL-terminated) into `buf`: the bytes read.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> Result<usize, i32> {
    let fd = open_ro(path)?;
    let r = read(fd, buf);
    close(fd);
    r
}

pub fn close(fd: i32) {
    // SAFETY: closing a descriptor has no memory-safety preconditions.
    let _ = unsafe { raw6(libc::SYS_close, fd as usize, 0, 0, 0, 0, 0) };
}

pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { raw6(libc::SYS_gettid, 0, 0, 0, 0, 0, 0) }.unwrap_or(0) as i32
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments.
    unsafe { raw6(libc::SYS_getpid, 0, 0, 0, 0, 0, 0) }.unwrap_or(0) as i32
}

pub fn fs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one u64 to the pointer we pass.
    let _ = unsafe {
        raw6(
            libc::SYS_arch_prctl,
            0x1003,
            &mut v as *mut u64 as usize,
            0,
            0,
            0,
            0,
        )
    };
    v
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; it is async-signal-safe (vDSO).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `tgkill(getpid(), gettid(), sig)`.
pub fn raise_here(sig: i32) {
    // SAFETY: sends a signal to this thread; no memory is passed.
    let _ = unsafe {
        raw6(
            libc::SYS_tgkill,
            getpid() as usize,
            gettid() as usize,
            sig as usize,
            0,
            0,
            0,
        )
    };
}

/// Moves `fd` to the lowest free number at or above `SHIM_FD_BASE` (close-on-exec) and closes
/// the original. Init-time only.
pub fn move_fd_high(fd: i32) -> Result<i32, i32> {
    // SAFETY: F_DUPFD_CLOEXEC has no memory arguments.
    let nfd = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, remus_abi::SHIM_FD_BASE) };
    if nfd < 0 {
        return Err(errno());
    }
    close(fd);
    Ok(nfd)
}

/// `FUTEX_WAIT` on a word of shared memory (`MAP_SHARED`: no private flag) for at most `ns`
/// nanoseconds, while it still holds `val`.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, val: u32, ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    };
    // SAFETY: FUTEX_WAIT reads the word and the timespec, both valid for the call.
    let _ = unsafe {
        raw6(
            libc::SYS_futex,
            word as *const core::sync::atomic::AtomicU32 as usize,
            libc::FUTEX_WAIT as usize,
            val as usize,
            &ts as *const libc::timespec as usize,
            0,
            0,
        )
    };
}

/// `rt_sigprocmask(how, bits)` on this thread for signals 1..=64 (bit `sig - 1`); returns the
/// previous mask.
pub fn sigmask(how: i32, bits: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads and writes one 8-byte kernel sigset.
    let _ = unsafe {
        raw6(
            libc::SYS_rt_sigprocmask,
            how as usize,
            &bits as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8,
            0,
            0,
        )
    };
    old
}

/// The signals 1..=64 pending for this thread (its own and the process's), bit `sig - 1`.
pub fn pending_signals() -> u64 {
    let mut set: u64 = 0;
    // SAFETY: rt_sigpending writes one 8-byte kernel sigset.
    let r = unsafe {
        raw6(
            libc::SYS_rt_sigpending,
            &mut set as *mut u64 as usize,
            8,
            0,
            0,
            0,
            0,
        )
    };
    if r.is_ok() {
        set
    } else {
        0
    }
}

/// Takes one pending instance of `sig` (this thread's first, then the process's) out of the
/// kernel's queue into `info`, without waiting; false when none is pending.
///
/// # Safety
/// `info` points at room for one siginfo.
pub unsafe fn take_pending(sig: i32, info: *mut libc::siginfo_t) -> bool {
    let set: u64 = 1u64 << (sig - 1);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: rt_sigtimedwait reads the set and the timespec and writes one siginfo, all
    // valid for the call (the caller's guarantee for info).
    unsafe {
        raw6(
            libc::SYS_rt_sigtimedwait,
            &set as *const u64 as usize,
            info as usize,
            &zero as *const libc::timespec as usize,
            8,
            0,
            0,
        )
    }
    .is_ok()
}

/// `rt_sigqueueinfo(getpid(), sig, info)`: queues `sig` with its original siginfo for the
/// process (any thread that does not block it takes it).
///
/// # Safety
/// `info` points at a valid siginfo.
pub unsafe fn requeue_process(sig: i32, info: *const libc::siginfo_t) -> SysResult {
    // SAFETY: the caller keeps info valid; the kernel reads one siginfo.
    unsafe {
        raw6(
            libc::SYS_rt_sigqueueinfo,
            getpid() as usize,
            sig as usize,
            info as usize,
            0,
            0,
            0,
        )
    }
}

/// `rt_tgsigqueueinfo(getpid(), gettid(), sig, info)`: queues `sig` with its original siginfo
/// for this thread (the kernel allows any `si_code` when a thread signals itself).
///
/// # Safety
/// `info` points at a valid siginfo.
pub unsafe fn requeue_here(sig: i32, info: *const libc::siginfo_t) -> SysResult {
    // SAFETY: the caller keeps info valid; the kernel reads one siginfo.
    unsafe {
        raw6(
            libc::SYS_rt_tgsigqueueinfo,
            getpid() as usize,
            gettid() as usize,
            sig as usize,
            info as usize,
            0,
            0,
        )
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: i32, on: bool) -> Result<(), i32> {
    let fl = fcntl_get(fd, libc::F_GETFD)?;
    let fl = if on {
        fl | libc::FD_CLOEXEC
    } else {
        fl & !libc::FD_CLOEXEC
    };
    // SAFETY: F_SETFD takes an integer.
    unsafe {
        raw6(
            libc::SYS_fcntl,
            fd as usize,
            libc::F_SETFD as usize,
            fl as usize,
            0,
            0,
            0,
        )
    }
    .map(|_| ())
}

/// Whether process `pid` exists (`kill(pid, 0)`).
pub fn kill0(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for the process.
    unsafe { raw6(libc::SYS_kill, pid as usize, 0, 0, 0, 0, 0) }.is_ok()
}

/// `si_code` of a signal sent with `sigqueue`/`rt_tgsigqueueinfo` (`SI_QUEUE`).
pub const SI_QUEUE: i32 = -1;

/// Queues `sig` for thread `tid` of this process with `SI_QUEUE` and `value` in `si_value`
/// (`rt_tgsigqueueinfo`). Err(ESRCH): the thread is gone.
pub fn queue_to(tid: i32, sig: i32, value: u64) -> SysResult {
    // The kernel's siginfo: signo, errno, code, then (for SI_QUEUE) pid, uid, value.
    let mut info = [0u64; 16];
    info[0] = sig as u32 as u64;
    info[1] = SI_QUEUE as u32 as u64;
    info[2] = getpid() as u32 as u64;
    info[3] = value;
    // SAFETY: the kernel reads one 128-byte siginfo from `info`.
    unsafe {
        raw6(
            libc::SYS_rt_tgsigqueueinfo,
            getpid() as usize,
            tid as usize,
            sig as usize,
            info.as_ptr() as usize,
            0,
            0,
        )
    }
}

/// [`queue_to`] this thread.
pub fn queue_here(sig: i32, value: u64) -> SysResult {
    queue_to(gettid(), sig, value)
}

/// The `si_code` and `si_value` of a delivered siginfo.
///
/// # Safety
/// `info` points at the kernel's siginfo for this delivery.
pub unsafe fn siginfo_code_value(info: *const libc::siginfo_t) -> (i32, u64) {
    let w = info as *const u64;
    // SAFETY: a siginfo is 128 bytes; words 1 and 3 hold si_code (low half) and si_value.
    unsafe {
        (
            (w.add(1).read() & 0xffff_ffff) as u32 as i32,
            w.add(3).read(),
        )
    }
}

/// Whether thread `tid` of this process still exists (`tgkill(pid, tid, 0)`).
pub fn thread_alive(tid: i32) -> bool {
    // SAFETY: signal 0 only checks for the thread.
    unsafe {
        raw6(
            libc::SYS_tgkill,
            getpid() as usize,
            tid as usize,
            0,
            0,
            0,
            0,
        )
    }
    .is_ok()
}

/// `FUTEX_WAIT_PRIVATE` on a word of this process for at most `ns` nanoseconds (0: no limit)
/// while it still holds `val`.
pub fn futex_wait_private(word: &core::sync::atomic::AtomicU32, val: u32, ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    };
    let tsp = if ns == 0 {
        0
    } else {
        &ts as *const libc::timespec as usize
    };
    // SAFETY: FUTEX_WAIT reads the word and the timespec (or none), both valid for the call.
    let _ = unsafe {
        raw6(
            libc::SYS_futex,
            word as *const core::sync::atomic::AtomicU32 as usize,
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
            val as usize,
            tsp,
            0,
            0,
        )
    };
}

/// `FUTEX_WAKE_PRIVATE`: wakes every waiter on a word of this process.
pub fn futex_wake_private(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE reads nothing but the word's address.
    let _ = unsafe {
        raw6(
            libc::SYS_futex,
            word as *const core::sync::atomic::AtomicU32 as usize,
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
            i32::MAX as usize,
            0,
            0,
            0,
        )
    };
}
