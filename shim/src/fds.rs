//! The app's descriptor table at a checkpoint: number, kind, flags, offset and what
//! `/proc/self/fd/N` names. Raw system calls only (runs in the epoch handler).

use remus_abi::{FdKind, FdRecord, FD_PATH_MAX, SHIM_FD_BASE};

use crate::sys;

/// Fills `out` with the app's descriptors (the shim's own, at or above `SHIM_FD_BASE`, are
/// left out). Returns how many were written.
pub fn capture(out: &mut [FdRecord]) -> usize {
    let Some(dir) = crate::capture::open_dir(c"/proc/self/fd") else {
        return 0;
    };
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        // SAFETY: buf is writable for its length.
        let got = match unsafe {
            sys::raw6(
                libc::SYS_getdents64,
                dir as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
                0,
                0,
            )
        } {
            Ok(0) | Err(_) => break,
            Ok(g) => g as usize,
        };
        let mut off = 0;
        while off + 19 < got {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            off += reclen;
            let Some(fd) = parse_fd(name) else { continue };
            if fd == dir || fd >= SHIM_FD_BASE || n == out.len() {
                continue;
            }
            if record(fd, &mut out[n]) {
                n += 1;
            }
        }
    }
    sys::close(dir);
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
    // SAFETY: fcntl F_GETFL/F_GETFD take no memory arguments.
    r.flags = unsafe {
        sys::raw6(
            libc::SYS_fcntl,
            fd as usize,
            libc::F_GETFL as usize,
            0,
            0,
            0,
            0,
        )
    }
    .unwrap_or(0) as i32;
    // SAFETY: as above.
    r.fd_flags = unsafe {
        sys::raw6(
            libc::SYS_fcntl,
            fd as usize,
            libc::F_GETFD as usize,
            0,
            0,
            0,
            0,
        )
    }
    .unwrap_or(0) as i32;
    r.offset = if matches!(kind, FdKind::Regular | FdKind::Directory) {
        // SAFETY: lseek takes no memory arguments.
        unsafe {
            sys::raw6(
                libc::SYS_lseek,
                fd as usize,
                0,
                libc::SEEK_CUR as usize,
                0,
                0,
                0,
            )
        }
        .unwrap_or(-1) as i64
    } else {
        -1
    };
    let mut link = sys::Line::<32>::new();
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
    true
}
