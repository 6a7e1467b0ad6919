//! The `SOCK_SEQPACKET` socket to the shim (fd 3): fixed 512-byte [`Msg`]s both ways.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
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
        })
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
        match self.sock.recv(&mut buf) {
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
        self.sock.set_nonblocking(true)?;
        let mut buf = [0u8; 1024];
        let r = match self.sock.recv(&mut buf) {
            Ok(n) => self.decode(&buf, n).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Some(FromShim::Eof)),
            Err(e) => Err(e),
        };
        self.sock.set_nonblocking(false)?;
        r
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
