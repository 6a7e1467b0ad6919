//! A UDP socket: bound and connected addresses and its common options. Datagrams queued in
//! either direction are not kept (UDP promises nothing about them; a release burst loses
//! some anyway, DESIGN §9).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::state::UdpSockState;
use super::sys::{self, Step};

/// Why [`dump_udp`] or [`rebuild_udp`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error(
        "rebuilding a UDP socket needs CAP_NET_ADMIN (IP_TRANSPARENT), which this process \
         lacks (run remusd as root): {0}"
    )]
    MissingCapability(#[source] io::Error),
    #[error("not a UDP socket over IPv4 or IPv6")]
    NotUdp,
    #[error("{step} failed: {source}")]
    Sys {
        step: Step,
        #[source]
        source: io::Error,
    },
}

fn sys_err(step: Step) -> impl FnOnce(io::Error) -> UdpError {
    move |source| UdpError::Sys { step, source }
}

/// A UDP socket's addresses and options, through a duplicate of it (no repair mode: nothing
/// the app can observe changes).
pub fn dump_udp(sock: impl AsFd) -> Result<UdpSockState, UdpError> {
    let fd = sock.as_fd().as_raw_fd();
    let ty = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|_| UdpError::NotUdp)?;
    let domain =
        sys::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys_err(Step::SocketKind))?;
    if ty != libc::SOCK_DGRAM || (domain != libc::AF_INET && domain != libc::AF_INET6) {
        return Err(UdpError::NotUdp);
    }
    let local = sys::sock_addr(fd, true)
        .map_err(sys_err(Step::LocalAddr))?
        .filter(|a| a.port() != 0);
    let remote = sys::sock_addr(fd, false).map_err(sys_err(Step::PeerAddr))?;
    let sol = |name: i32, what: &'static str| {
        sys::get_int(fd, libc::SOL_SOCKET, name).map_err(sys_err(Step::SockOpt(what)))
    };
    Ok(UdpSockState {
        local,
        remote,
        reuse_addr: sol(libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
        reuse_port: sol(libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
        broadcast: sol(libc::SO_BROADCAST, "SO_BROADCAST")? != 0,
        sndbuf: sol(libc::SO_SNDBUF, "SO_SNDBUF")?,
        rcvbuf: sol(libc::SO_RCVBUF, "SO_RCVBUF")?,
        nonblocking: sys::get_fl(fd).map_err(sys_err(Step::Fcntl))? & libc::O_NONBLOCK != 0,
    })
}

/// A UDP socket bound and connected as `st` says, in the calling thread's network namespace.
/// The service address need not be up yet.
pub fn rebuild_udp(st: &UdpSockState) -> Result<OwnedFd, UdpError> {
    let v4 = st.local.or(st.remote).is_none_or(|a| a.is_ipv4());
    let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    let sock =
        sys::socket(domain, libc::SOCK_DGRAM, libc::IPPROTO_UDP).map_err(sys_err(Step::Socket))?;
    let fd = sock.as_raw_fd();
    let sol = |name: i32, what: &'static str, v: i32| {
        sys::set_int(fd, libc::SOL_SOCKET, name, v).map_err(sys_err(Step::SockOpt(what)))
    };
    sol(libc::SO_REUSEADDR, "SO_REUSEADDR", i32::from(st.reuse_addr))?;
    sol(libc::SO_REUSEPORT, "SO_REUSEPORT", i32::from(st.reuse_port))?;
    sol(libc::SO_BROADCAST, "SO_BROADCAST", i32::from(st.broadcast))?;
    // getsockopt reported twice what was asked; setting half gives the same.
    sol(libc::SO_SNDBUF, "SO_SNDBUF", st.sndbuf / 2)?;
    sol(libc::SO_RCVBUF, "SO_RCVBUF", st.rcvbuf / 2)?;
    // IP_TRANSPARENT (CAP_NET_ADMIN) for bind and connect: the local address may not be up
    // yet, and a connect's route lookup from a non-local source needs it (IP_FREEBIND would
    // do for bind alone). Off again afterwards, as the app had it.
    let (level, name) = if v4 {
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
    };
    sys::set_int(fd, level, name, 1).map_err(|e| {
        if sys::is_permission(&e) {
            UdpError::MissingCapability(e)
        } else {
            sys_err(Step::SockOpt("IP_TRANSPARENT"))(e)
        }
    })?;
    if let Some(local) = st.local {
        sys::bind(fd, &local).map_err(sys_err(Step::Bind))?;
    }
    if let Some(remote) = st.remote {
        sys::connect(fd, &remote).map_err(sys_err(Step::Connect))?;
    }
    sys::set_int(fd, level, name, 0).map_err(sys_err(Step::SockOpt("IP_TRANSPARENT")))?;
    sys::set_nonblocking(fd, st.nonblocking).map_err(sys_err(Step::Fcntl))?;
    Ok(sock)
}
