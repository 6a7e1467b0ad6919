//! The few system calls the controller makes that `std` does not wrap. All of the controller's
//! `unsafe` for system calls lives here (the staging area has its own, in
//! `primary::staging`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1; no memory is
    // passed.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh descriptor returned by the kernel that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Which of the descriptors given to [`poll_readable`] are readable (or hung up).
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: pfds is a valid, exclusively borrowed array of pollfd of the length passed.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers; no memory is involved.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the child `pid`; returns its shell-style exit code (code, or 128 + signal).
pub fn wait_child(pid: i32) -> io::Result<i32> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: status is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if libc::WIFEXITED(status) {
            return Ok(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(128 + libc::WTERMSIG(status));
        }
    }
}

pub fn getuid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// Whether `fd` is an open descriptor in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// `SO_TYPE` of a socket (e.g. `libc::SOCK_SEQPACKET`).
pub fn socket_type(fd: &impl AsRawFd) -> io::Result<i32> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: ty and len are valid out-pointers of the sizes the kernel expects.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ty)
}

/// Takes ownership of an inherited descriptor after checking it is open.
pub fn take_inherited_fd(fd: RawFd, what: &str) -> io::Result<OwnedFd> {
    if !fd_is_open(fd) {
        return Err(io::Error::other(format!(
            "fd {fd} ({what}) is not open: remusd primary is started by libremus.so, not by hand"
        )));
    }
    // SAFETY: the descriptor is open, was inherited for this purpose, and this is the only
    // place that takes ownership of this number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wakes every waiter on a futex word that may live in memory shared with another process
/// (so no `FUTEX_PRIVATE_FLAG`).
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAKE only
    // uses its address as a key and reads nothing else.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}

/// Whether `pid` is still running after `grace`: false as soon as it exits (its pidfd becomes
/// readable) or if it is already gone.
pub fn still_running(pid: i32, grace: Duration) -> bool {
    match pidfd_open(pid) {
        Ok(fd) => !poll_readable(&[fd.as_raw_fd()], Some(grace))
            .map(|r| r[0])
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Whether `pid` is gone, a zombie, or on its way out (`PF_EXITING` in `/proc/PID/stat`: set
/// at the start of `do_exit`, before the kernel closes the process's descriptors). A process
/// that closed a close-on-exec socket without being in exit has exec'd.
pub fn exiting_or_gone(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let Some(close) = stat.rfind(')') else {
        return true;
    };
    // After the comm: field 3 (state) is index 0, field 9 (flags) index 6.
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let state = f.first().copied().unwrap_or("X");
    let flags: u64 = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(PF_EXITING);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Sets `O_NONBLOCK` on a descriptor.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL take integers only.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One `read(2)` on a non-blocking descriptor: `Ok(None)` when nothing is available.
pub fn read_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: buf is valid and writable for its length.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// One `write(2)`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid and readable for its length.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Waits until `fd` is writable (or in error: the next write reports it).
pub fn wait_writable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 1000) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh from pipe2 and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Tells systemd the daemon is ready (`sd_notify(0, "READY=1")` for `Type=notify` units):
/// one datagram to `$NOTIFY_SOCKET`, a path or an abstract name (`@…`). Without the variable
/// (not under systemd) it does nothing; a failure is logged, never fatal.
pub fn notify_ready(status: &str) {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("READY=1\nSTATUS={status}\n");
    let sent = (|| -> std::io::Result<()> {
        let s = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(sock.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            s.send_to(msg.as_bytes(), &sock)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("telling systemd we are ready (NOTIFY_SOCKET={sock:?}): {e}");
    }
}

#[cfg(test)]
mod tests {}
