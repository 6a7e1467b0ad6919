//! The app's descriptor table at a checkpoint: number, kind, flags, offset and what
//! `/proc/self/fd/N` names. Raw system calls only (runs in the epoch handler).

use remus_abi::{FdKind, FdRecord, FD_PATH_MAX, SHIM_FD_BASE};

use crate::base::state;
use crate::kernel::line::Line;
use crate::kernel::sys;

/// Fills `out` with the app's descriptors (the shim's own, at or above `SHIM_FD_BASE`, are
/// left out). Returns how many were written.
pub fn capture(out: &mut [FdRecord]) -> usize {
    let Ok(dir) = sys::kept_open(&state::FDDIR_FD, c"/proc/self/fd", libc::O_DIRECTORY) else {
        return 0;
    };
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let _ = sys::for_each_dirent(dir, &mut buf, |name| {
        let Some(fd) = parse_fd(name) else { return };
        if fd == dir || fd >= SHIM_FD_BASE || n == out.len() {
            return;
        }
        if record(fd, &mut out[n]) {
            n += 1;
        }
    });
    out[..n].sort_unstable_by_key(|r| r.fd);
    n
}

fn parse_fd(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 9 {
        return None;
    }
    let mut v = 0i32;
    for &c in name {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i32;
    }
    Some(v)
}

fn record(fd: i32, r: &mut FdRecord) -> bool {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat writes one struct stat.
    if unsafe {
        sys::raw6(
            libc::SYS_fstat,
            fd as usize,
            &mut st as *mut _ as usize,
            0,
            0,
            0,
            0,
        )
    }
    .is_err()
    {
        return false;
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FdKind::Regular,
        libc::S_IFCHR => FdKind::CharDevice,
        libc::S_IFDIR => FdKind::Directory,
        libc::S_IFIFO => FdKind::Fifo,
        libc::S_IFSOCK => FdKind::Socket,
        0 => FdKind::AnonInode,
        _ => FdKind::Other,
    };
    r.fd = fd;
    r.kind = kind as u32;
    r.flags = sys::fcntl_get(fd, libc::F_GETFL).unwrap_or(0);
    r.fd_flags = sys::fcntl_get(fd, libc::F_GETFD).unwrap_or(0);
    r.offset = if matches!(kind, FdKind::Regular | FdKind::Directory) {
        sys::tell(fd).map_or(-1, |o| o as i64)
    } else {
        -1
    };
    // What /proc/self/fd/N names does not change for the same socket, pipe or anonymous
    // inode: reuse last epoch's answer. Regular files are asked every time (they can be
    // renamed while open, e.g. by log rotation).
    let cacheable = !matches!(kind, FdKind::Regular | FdKind::Directory);
    if cacheable {
        if let Some(c) = path_cache(fd) {
            if c.dev == st.st_dev && c.ino == st.st_ino && c.len > 0 {
                r.path[..c.len].copy_from_slice(&c.path[..c.len]);
                r.path_len = c.len as u32;
                r.path_truncated = 0;
                return true;
            }
        }
    }
    let mut link = Line::<32>::new();
    link.push(b"/proc/self/fd/").num(fd as u64).push(b"\0");
    // SAFETY: link is NUL-terminated; readlink writes at most FD_PATH_MAX bytes into r.path.
    let len = unsafe {
        sys::raw6(
            libc::SYS_readlinkat,
            libc::AT_FDCWD as usize,
            link.as_bytes().as_ptr() as usize,
            r.path.as_mut_ptr() as usize,
            FD_PATH_MAX,
            0,
            0,
        )
    }
    .unwrap_or(0) as usize;
    r.path_len = len as u32;
    r.path_truncated = (len == FD_PATH_MAX) as u32;
    if let Some(c) = path_cache(fd) {
        c.dev = st.st_dev;
        c.ino = st.st_ino;
        c.len = if cacheable && len <= CACHED_PATH_MAX {
            len
        } else {
            0
        };
        c.path[..c.len].copy_from_slice(&r.path[..c.len]);
    }
    true
}

/// Last epoch's `/proc/self/fd/N` answer for each low fd number.
struct CachedPath {
    dev: u64,
    ino: u64,
    len: usize,
    path: [u8; CACHED_PATH_MAX],
}

const CACHED_FDS: usize = 1024;
const CACHED_PATH_MAX: usize = 64; // "socket:[123456789]", "anon_inode:[eventpoll]", ...

struct PathCache(core::cell::UnsafeCell<[CachedPath; CACHED_FDS]>);
// SAFETY: used only by the epoch handler, which cannot nest and runs on the only thread.
unsafe impl Sync for PathCache {}

static PATHS: PathCache = PathCache(core::cell::UnsafeCell::new(
    [const {
        CachedPath {
            dev: 0,
            ino: 0,
            len: 0,
            path: [0; CACHED_PATH_MAX],
        }
    }; CACHED_FDS],
));

fn path_cache(fd: i32) -> Option<&'static mut CachedPath> {
    // SAFETY: see PathCache; the index is bounds-checked.
    (0..CACHED_FDS as i32)
        .contains(&fd)
        .then(|| unsafe { &mut (*PATHS.0.get())[fd as usize] })
}
