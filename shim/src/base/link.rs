//! The shim's side of the shim<->controller socket (`SOCK_SEQPACKET`, fixed-size
//! [`remus_abi::Msg`]s), usable from the signal handler: raw `write`/`read` only.

use core::sync::atomic::Ordering;

use remus_abi::{Msg, MsgKind};

use super::state;
use crate::kernel::sys;

/// Sends one message; errors are ignored (the controller watches the app; a dead controller
/// means the app is unprotected anyway).
pub fn send(msg: &Msg) -> Result<(), i32> {
    let fd = state::SOCK.load(Ordering::Relaxed);
    if fd < 0 {
        return Err(libc::EBADF);
    }
    sys::write_all(fd, msg.as_bytes())
}

pub fn send_text(kind: MsgKind, a: u64, b: u64, text: &[u8]) {
    let _ = send(&Msg::new(kind, a, b).with_text(text));
}

/// Blocks until one message arrives. `Err(0)` on end of file.
pub fn recv() -> Result<Msg, i32> {
    let fd = state::SOCK.load(Ordering::Relaxed);
    let mut buf = [0u8; core::mem::size_of::<Msg>()];
    loop {
        // SAFETY: buf is writable for its length.
        match unsafe {
            sys::raw6(
                libc::SYS_read,
                fd as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                0,
                0,
                0,
            )
        } {
            Ok(0) => return Err(0),
            Ok(n) => return Msg::from_bytes(&buf[..n as usize]).ok_or(libc::EPROTO),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits for one message until `deadline_ns` (`CLOCK_MONOTONIC`): `Ok(None)` when the deadline
/// passed first, `Err(0)` on end of file. Signal-handler safe (raw `ppoll` and `read`).
pub fn recv_until(deadline_ns: u64) -> Result<Option<Msg>, i32> {
    let fd = state::SOCK.load(Ordering::Relaxed);
    if fd < 0 {
        return Err(libc::EBADF);
    }
    loop {
        let now = sys::monotonic_ns();
        if now >= deadline_ns {
            return Ok(None);
        }
        let left = deadline_ns - now;
        let ts = libc::timespec {
            tv_sec: (left / 1_000_000_000) as libc::time_t,
            tv_nsec: (left % 1_000_000_000) as libc::c_long,
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd and one timespec, both valid for the call; no signal mask given
        // (the handler's own mask stays).
        match unsafe {
            sys::raw6(
                libc::SYS_ppoll,
                &mut p as *mut libc::pollfd as usize,
                1,
                &ts as *const libc::timespec as usize,
                0,
                0,
                0,
            )
        } {
            Ok(0) => continue, // the loop head sees the deadline
            Ok(_) => return recv().map(Some),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
