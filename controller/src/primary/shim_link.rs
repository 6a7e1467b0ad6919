//! The `SOCK_SEQPACKET` socket to the shim (fd 3): fixed 512-byte [`Msg`]s both ways.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

use remus_abi::{Msg, MsgKind};

/// One message from the shim, or the end of the conversation.
pub enum FromShim {
    Msg(Box<Msg>),
    /// The shim's end is closed (the app is gone).
    Eof,
}

pub struct ShimLink {
    // A seqpacket socket: recv/send on it keep message boundaries, which is all UnixDatagram's
    // recv/send do.
    sock: UnixDatagram,
    /// Descriptors that came with messages (`SCM_RIGHTS`, [`MsgKind::NetFd`]), in order.
    fds: Mutex<VecDeque<OwnedFd>>,
}

impl ShimLink {
    /// Takes the inherited socket, checking that it is a `SOCK_SEQPACKET` socket.
    pub fn new(fd: OwnedFd) -> io::Result<ShimLink> {
        let ty = crate::sys::socket_type(&fd)?;
        if ty != libc::SOCK_SEQPACKET {
            return Err(io::Error::other(format!(
                "fd {} is a socket of type {ty}, expected SOCK_SEQPACKET from libremus.so",
                fd.as_raw_fd()
            )));
        }
        Ok(ShimLink {
            sock: UnixDatagram::from(fd),
            fds: Mutex::new(VecDeque::new()),
        })
    }

    /// The descriptor that came with the last [`MsgKind::NetFd`] message.
    pub fn take_fd(&self) -> Option<OwnedFd> {
        self.fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// `recv`, keeping any descriptors passed with the message (`recv` would close them).
    fn recv_msg(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        #[repr(C, align(8))]
        struct Cmsg([u8; 64]);
        let mut cbuf = Cmsg([0; 64]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; it points at our iovec and control buffer, which
        // outlive the call.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        mh.msg_controllen = cbuf.0.len();
        // SAFETY: recvmsg writes at most the buffers' lengths.
        let n = unsafe {
            libc::recvmsg(
                self.sock.as_raw_fd(),
                &mut mh,
                flags | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: walking the control messages the kernel wrote into cbuf, with the CMSG_*
        // helpers and bounds from mh.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const i32;
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    let mut q = self.fds.lock().unwrap_or_else(|p| p.into_inner());
                    for i in 0..count {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        if fd >= 0 {
                            q.push_back(OwnedFd::from_raw_fd(fd));
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        Ok(n as usize)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn decode(&self, buf: &[u8], n: usize) -> io::Result<FromShim> {
        if n == 0 {
            return Ok(FromShim::Eof);
        }
        Msg::from_bytes(&buf[..n])
            .map(|m| FromShim::Msg(Box::new(m)))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "shim sent a {n}-byte message, expected {}",
                    size_of::<Msg>()
                ))
            })
    }

    /// Waits up to `timeout` for a message.
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Option<FromShim>> {
        self.sock.set_nonblocking(false)?;
        self.sock.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 1024];
        match self.recv_msg(&mut buf, 0) {
            Ok(n) => self.decode(&buf, n).map(Some),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Some(FromShim::Eof)),
            Err(e) => Err(e),
        }
    }

    /// A message if one is queued, without waiting.
    pub fn try_recv(&self) -> io::Result<Option<FromShim>> {
        let mut buf = [0u8; 1024];
        match self.recv_msg(&mut buf, libc::MSG_DONTWAIT) {
            Ok(n) => self.decode(&buf, n).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Some(FromShim::Eof)),
            Err(e) => Err(e),
        }
    }

    pub fn send(&self, kind: MsgKind, a: u64, b: u64, text: &str) -> io::Result<()> {
        let m = Msg::new(kind, a, b).with_text(text.as_bytes());
        self.sock.set_write_timeout(Some(Duration::from_secs(5)))?;
        let n = self.sock.send(m.as_bytes())?;
        if n != size_of::<Msg>() {
            return Err(io::Error::other(format!(
                "short send to the shim: {n} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid out-array of two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors are fresh from socketpair and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn messages_both_ways_and_eof() {
        let (a, b) = seqpacket_pair();
        let ctl = ShimLink::new(a).unwrap();
        let shim = ShimLink::new(b).unwrap();
        shim.send(MsgKind::Hello, 42, remus_abi::ABI_VERSION as u64, "")
            .unwrap();
        match ctl.recv_timeout(Duration::from_secs(1)).unwrap() {
            Some(FromShim::Msg(m)) => assert_eq!((m.kind, m.a), (MsgKind::Hello as u32, 42)),
            _ => panic!("expected hello"),
        }
        assert!(ctl.try_recv().unwrap().is_none());
        ctl.send(MsgKind::Refuse, 0, 0, "no standby").unwrap();
        match shim.recv_timeout(Duration::from_secs(1)).unwrap() {
            Some(FromShim::Msg(m)) => assert_eq!(m.text(), b"no standby"),
            _ => panic!("expected refuse"),
        }
        drop(shim);
        assert!(matches!(
            ctl.recv_timeout(Duration::from_secs(1)).unwrap(),
            Some(FromShim::Eof)
        ));
    }
}
