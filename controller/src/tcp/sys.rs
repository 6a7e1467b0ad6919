//! The system calls the TCP repair code needs, wrapped: socket options as typed values, the
//! queue-size ioctls, and `pidfd_getfd`. Every failure names the [`Step`] that failed.

use std::fmt;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const TCP_REPAIR: i32 = 19;
/// `TCP_REPAIR` value: off without the window probe `TCP_REPAIR_OFF` (0) sends (Linux 4.19).
pub const TCP_REPAIR_OFF_NO_WP: i32 = -1;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;

/// `TCP_REPAIR_QUEUE` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    None = 0,
    Recv = 1,
    Send = 2,
}

pub const SIOCINQ: libc::c_ulong = 0x541B;
pub const SIOCOUTQ: libc::c_ulong = 0x5411;
pub const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// `tcpi_options` bits.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

/// `TCP_REPAIR_OPTIONS` codes (`TCPOPT_*`).
pub const TCPOPT_MAXSEG: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;

/// One step of a dump or rebuild, named in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    PidfdOpen,
    PidfdGetfd,
    SocketKind,
    TcpInfo,
    RepairOn,
    RepairOff,
    SelectQueue(Queue),
    QueueSeq(Queue),
    QueueLen(&'static str),
    PeekQueue(Queue),
    RepairWindow,
    Options,
    Timestamp,
    SockOpt(&'static str),
    Fcntl,
    LocalAddr,
    PeerAddr,
    Socket,
    Bind,
    Connect,
    WriteQueue(Queue),
    WriteUnsent,
    Shutdown,
    InjectSegment,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::PidfdOpen => f.write_str("pidfd_open"),
            Step::PidfdGetfd => f.write_str("pidfd_getfd"),
            Step::SocketKind => f.write_str("reading the socket's type (SO_TYPE/SO_DOMAIN)"),
            Step::TcpInfo => f.write_str("getsockopt(TCP_INFO)"),
            Step::RepairOn => f.write_str("setsockopt(TCP_REPAIR, 1)"),
            Step::RepairOff => f.write_str("setsockopt(TCP_REPAIR, 0)"),
            Step::SelectQueue(q) => write!(f, "setsockopt(TCP_REPAIR_QUEUE, {q:?})"),
            Step::QueueSeq(q) => write!(f, "TCP_QUEUE_SEQ of the {q:?} queue"),
            Step::QueueLen(what) => write!(f, "ioctl({what})"),
            Step::PeekQueue(q) => write!(f, "peeking the {q:?} queue (recv MSG_PEEK)"),
            Step::RepairWindow => f.write_str("TCP_REPAIR_WINDOW"),
            Step::Options => f.write_str("setsockopt(TCP_REPAIR_OPTIONS)"),
            Step::Timestamp => f.write_str("TCP_TIMESTAMP"),
            Step::SockOpt(name) => write!(f, "socket option {name}"),
            Step::Fcntl => f.write_str("fcntl(F_GETFL/F_SETFL)"),
            Step::LocalAddr => f.write_str("getsockname"),
            Step::PeerAddr => f.write_str("getpeername"),
            Step::Socket => f.write_str("socket"),
            Step::Bind => f.write_str("bind"),
            Step::Connect => f.write_str("connect"),
            Step::WriteQueue(q) => write!(f, "restoring the {q:?} queue's bytes in repair mode"),
            Step::WriteUnsent => f.write_str("writing the unsent tail of the send queue"),
            Step::Shutdown => f.write_str("shutdown(SHUT_WR) to put our FIN back"),
            Step::InjectSegment => f.write_str("injecting the peer's segment (raw socket)"),
        }
    }
}

/// `r` as a Result, with errno when it is -1.
fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `getsockopt` of a plain-old-data value.
pub fn getsockopt<T: Copy>(fd: RawFd, level: i32, name: i32) -> io::Result<T> {
    let mut v = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: v is valid writable storage of `len` bytes for the duration of the call, and
    // it was zeroed, so a shorter answer still leaves every byte initialised; T is Copy
    // plain data (integers and structs of integers) for which every bit pattern is valid.
    check(unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: zeroed and possibly partly overwritten by the kernel: initialised (see above).
    Ok(unsafe { v.assume_init() })
}

/// `setsockopt` of a plain-old-data value (or a slice of them, through [`setsockopt_slice`]).
pub fn setsockopt<T: Copy>(fd: RawFd, level: i32, name: i32, v: T) -> io::Result<()> {
    setsockopt_slice(fd, level, name, std::slice::from_ref(&v))
}

pub fn setsockopt_slice<T: Copy>(fd: RawFd, level: i32, name: i32, v: &[T]) -> io::Result<()> {
    let len = std::mem::size_of_val(v) as libc::socklen_t;
    // SAFETY: v points to `len` readable bytes for the duration of the call.
    check(unsafe { libc::setsockopt(fd, level, name, v.as_ptr().cast(), len) }).map(drop)
}

pub fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    getsockopt::<libc::c_int>(fd, level, name)
}

pub fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    setsockopt::<libc::c_int>(fd, level, name, v)
}

/// One of the queue-size ioctls (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`).
pub fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int through the pointer, which is valid.
    check(unsafe { libc::ioctl(fd, req as _, &mut v) })?;
    Ok(v as u32)
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` of up to `max` bytes.
pub fn peek(fd: RawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: buf is valid writable storage of its length.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        // An empty queue in repair mode answers EAGAIN.
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `send(flags)` once; the count written.
pub fn send(fd: RawFd, buf: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is valid readable storage of its length.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A socket address in the kernel's layout.
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(a: &SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for
                // sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and suitably aligned for
                // sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

/// `storage` as a SocketAddr (None for families other than IPv4/IPv6, or AF_UNSPEC).
fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned
            // for it.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `getsockname` (local) or `getpeername` (!local); Ok(None) for an unbound/unconnected one.
pub fn sock_addr(fd: RawFd, local: bool) -> io::Result<Option<SocketAddr>> {
    // SAFETY: plain data; zeroes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: p points to writable storage of `len` bytes.
    let r = unsafe {
        if local {
            libc::getsockname(fd, p, &mut len)
        } else {
            libc::getpeername(fd, p, &mut len)
        }
    };
    match check(r) {
        Ok(_) => Ok(from_storage(&storage)),
        Err(e) if !local && e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn bind(fd: RawFd, a: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(a);
    // SAFETY: raw is a valid address of raw.len bytes.
    check(unsafe { libc::bind(fd, raw.as_ptr(), raw.len) }).map(drop)
}

/// `connect`; EINPROGRESS counts as success (a non-blocking SYN_SENT rebuild).
pub fn connect(fd: RawFd, a: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(a);
    // SAFETY: raw is a valid address of raw.len bytes.
    match check(unsafe { libc::connect(fd, raw.as_ptr(), raw.len) }) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        r => r.map(drop),
    }
}

/// A new socket of `domain` and `ty` (close-on-exec).
pub fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers only.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn get_fl(fd: RawFd) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no pointer.
    check(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    let fl = get_fl(fd)?;
    let fl = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an integer.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, fl) }).map(drop)
}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes integers.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// Waits at most `ms` for `fd` to be writable; false on timeout.
pub fn wait_writable(fd: RawFd, ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    let n = check(unsafe { libc::poll(&mut p, 1, ms) })?;
    Ok(n > 0)
}

/// A duplicate, in this process, of descriptor `fd` of process `pid` (`pidfd_getfd`, Linux
/// 5.6; needs ptrace access to `pid`, which root has). The duplicate shares the open file
/// (and so the socket and its `O_NONBLOCK`) with the app's descriptor.
pub fn dup_from(pid: i32, fd: RawFd) -> Result<OwnedFd, (Step, io::Error)> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err((Step::PidfdOpen, io::Error::last_os_error()));
    }
    // SAFETY: pidfd is a fresh descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes three integers and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err((Step::PidfdGetfd, io::Error::last_os_error()));
    }
    // SAFETY: r is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// EPERM / EACCES: the caller lacks a capability (CAP_NET_ADMIN for repair mode).
pub fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// `SIOCGSKNS`: a descriptor of the network namespace a socket lives in.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The peer address of a socket that `getpeername` will not give (a `SYN_SENT` one answers
/// ENOTCONN): its row in `/proc/thread-self/net/tcp{,6}`, read by a thread that joined the
/// socket's network namespace, found by the socket's inode. Ok(None) when it has no row.
pub fn peer_from_proc(fd: RawFd) -> io::Result<Option<SocketAddr>> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor or -1.
    let ns = check(unsafe { libc::ioctl(fd, SIOCGSKNS as _) })?;
    // SAFETY: ns is a fresh descriptor that nothing else owns.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    // SAFETY: st is a valid out-pointer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open descriptor and st a valid out-pointer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    let inode = st.st_ino;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns changes only this (scoped, short-lived) thread's network namespace.
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            for file in ["tcp", "tcp6"] {
                let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
                if let Some(a) = text.lines().skip(1).find_map(|l| proc_row_peer(l, inode)) {
                    return Ok(Some(a));
                }
            }
            Ok(None)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the /proc/net/tcp reader panicked")))
    })
}

/// The remote address of a `/proc/net/tcp{,6}` row if its inode is `inode`.
fn proc_row_peer(line: &str, inode: u64) -> Option<SocketAddr> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(9)?.parse::<u64>().ok()? != inode {
        return None;
    }
    let (addr, port) = f.get(2)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 32-bit word is printed as the host-order value of network-order bytes.
    let word = |i: usize| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok();
    match addr.len() {
        8 => Some(SocketAddr::from((
            Ipv4Addr::from(word(0)?.to_ne_bytes()),
            port,
        ))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_ne_bytes());
            }
            Some(SocketAddr::from((Ipv6Addr::from(b), port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::proc_row_peer;

    #[test]
    fn proc_net_tcp_rows() {
        let v4 = "   3: 645C5C0A:1B58 015C5C0A:2378 02 00000000:00000000 01:00000166 00000002     0        0 81234 1 0000000000000000 1000 0 0 10 -1";
        assert_eq!(
            proc_row_peer(v4, 81234),
            Some("10.92.92.1:9080".parse().unwrap())
        );
        assert_eq!(proc_row_peer(v4, 81235), None);
        let v6 = "   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:0050 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            proc_row_peer(v6, 777),
            Some("[::ffff:127.0.0.1]:80".parse().unwrap())
        );
    }
}
