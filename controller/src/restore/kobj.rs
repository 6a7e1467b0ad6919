//! Recreating the kernel objects behind descriptors in the stopped restore child: sockets,
//! pipes with their unread bytes, epoll instances (registrations are added once every
//! descriptor exists, by [`add_epoll_registrations`]), eventfd, timerfd, signalfd.
//!
//! Each `create` returns a descriptor in the child at the lowest free number; the caller
//! moves it to its number (`dup3`) and sets its status flags (`F_SETFL`: `O_NONBLOCK`...).
//!
//! Established connections come back as closed by the peer: one end of a fresh
//! `socketpair(AF_UNIX)` whose other end is closed at once, so reads return end-of-file and
//! writes fail with `EPIPE`. For a TCP connection this is an honest stand-in, not the real
//! thing: its family is `AF_UNIX` now (a `getpeername` says so), because a TCP socket cannot
//! be "closed by its peer" without a peer, and the primary's peer never spoke to this host.
//! Clients reconnect to the listening socket, which is listening again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracing::{info, warn};

use super::inject::Tracee;
use super::RestoreError;
use crate::image::{KernelObject, SocketInfo};

/// One `--bind-map FROM=TO`: where a socket bound to FROM on the primary binds on the
/// standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMap {
    pub from: BindAddr,
    pub to: BindAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddr {
    /// `IP:PORT` (`[v6]:PORT`).
    Sock(SocketAddr),
    /// `IP`: any port, kept.
    Ip(IpAddr),
    /// A unix socket path (`@name` for the abstract namespace).
    Unix(String),
}

impl std::str::FromStr for BindAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<BindAddr, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(BindAddr::Sock(a));
        }
        if let Ok(a) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            return Ok(BindAddr::Ip(a));
        }
        if s.starts_with('/') || s.starts_with('@') || s.starts_with('.') {
            return Ok(BindAddr::Unix(s.to_string()));
        }
        Err(format!(
            "{s:?} is not IP:PORT, IP, or a unix socket path (/path or @abstract)"
        ))
    }
}

impl std::str::FromStr for BindMap {
    type Err = String;
    fn from_str(s: &str) -> Result<BindMap, String> {
        let (f, t) = s
            .split_once('=')
            .ok_or_else(|| format!("--bind-map {s:?}: expected FROM=TO"))?;
        let m = BindMap {
            from: f.parse()?,
            to: t.parse()?,
        };
        match (&m.from, &m.to) {
            (BindAddr::Unix(_), BindAddr::Unix(_))
            | (BindAddr::Sock(_) | BindAddr::Ip(_), BindAddr::Sock(_) | BindAddr::Ip(_)) => Ok(m),
            _ => Err(format!(
                "--bind-map {s:?}: a unix path maps to a unix path, an IP address to an IP address"
            )),
        }
    }
}

/// A socket address decoded from the raw bytes of `getsockname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SockAddr {
    Inet(SocketAddr),
    /// Path bytes (abstract: leading NUL); empty = unnamed.
    Unix(Vec<u8>),
    Other(i32),
}

impl SockAddr {
    pub fn decode(b: &[u8]) -> SockAddr {
        if b.len() < 2 {
            return SockAddr::Unix(Vec::new());
        }
        let fam = u16::from_ne_bytes([b[0], b[1]]) as i32;
        match fam {
            libc::AF_INET if b.len() >= 8 => SockAddr::Inet(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])),
                u16::from_be_bytes([b[2], b[3]]),
            )),
            libc::AF_INET6 if b.len() >= 24 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[8..24]);
                SockAddr::Inet(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a)),
                    u16::from_be_bytes([b[2], b[3]]),
                ))
            }
            libc::AF_UNIX => {
                let mut p = b[2..].to_vec();
                // A pathname is NUL-terminated within the length; an abstract name is not.
                if p.first() != Some(&0) {
                    if let Some(z) = p.iter().position(|&c| c == 0) {
                        p.truncate(z);
                    }
                }
                SockAddr::Unix(p)
            }
            f => SockAddr::Other(f),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            SockAddr::Inet(SocketAddr::V4(a)) => {
                let mut b = vec![0u8; 16];
                b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.ip().octets());
                b
            }
            SockAddr::Inet(SocketAddr::V6(a)) => {
                let mut b = vec![0u8; 28];
                b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                b[8..24].copy_from_slice(&a.ip().octets());
                b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                b
            }
            SockAddr::Unix(p) => {
                let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
                b.extend_from_slice(p);
                if p.first() != Some(&0) && !p.is_empty() {
                    b.push(0);
                }
                b
            }
            SockAddr::Other(f) => (*f as u16).to_ne_bytes().to_vec(),
        }
    }

    pub fn family(&self) -> i32 {
        match self {
            SockAddr::Inet(SocketAddr::V4(_)) => libc::AF_INET,
            SockAddr::Inet(SocketAddr::V6(_)) => libc::AF_INET6,
            SockAddr::Unix(_) => libc::AF_UNIX,
            SockAddr::Other(f) => *f,
        }
    }

    /// Bound to something worth binding again (a port, a name).
    pub fn is_bound(&self) -> bool {
        match self {
            SockAddr::Inet(a) => a.port() != 0,
            SockAddr::Unix(p) => !p.is_empty(),
            SockAddr::Other(_) => false,
        }
    }

    /// A filesystem path (not abstract, not unnamed).
    pub fn unix_path(&self) -> Option<String> {
        match self {
            SockAddr::Unix(p) if !p.is_empty() && p[0] != 0 => {
                Some(String::from_utf8_lossy(p).into_owned())
            }
            _ => None,
        }
    }

    /// Applies the first matching `--bind-map`.
    pub fn mapped(&self, maps: &[BindMap]) -> SockAddr {
        for m in maps {
            match (self, &m.from, &m.to) {
                (SockAddr::Inet(a), BindAddr::Sock(f), to) if a == f => {
                    return SockAddr::Inet(match to {
                        BindAddr::Sock(t) => *t,
                        BindAddr::Ip(ip) => SocketAddr::new(*ip, a.port()),
                        BindAddr::Unix(_) => unreachable!("checked when parsed"),
                    })
                }
                (SockAddr::Inet(a), BindAddr::Ip(f), to) if a.ip() == *f => {
                    return SockAddr::Inet(match to {
                        BindAddr::Sock(t) => *t,
                        BindAddr::Ip(ip) => SocketAddr::new(*ip, a.port()),
                        BindAddr::Unix(_) => unreachable!("checked when parsed"),
                    })
                }
                (SockAddr::Unix(p), BindAddr::Unix(f), BindAddr::Unix(t))
                    if *p == unix_bytes(f) =>
                {
                    return SockAddr::Unix(unix_bytes(t))
                }
                _ => {}
            }
        }
        self.clone()
    }
}

fn unix_bytes(s: &str) -> Vec<u8> {
    match s.strip_prefix('@') {
        Some(abs) => std::iter::once(0).chain(abs.bytes()).collect(),
        None => s.as_bytes().to_vec(),
    }
}

impl std::fmt::Display for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SockAddr::Inet(a) => write!(f, "{a}"),
            SockAddr::Unix(p) if p.is_empty() => write!(f, "unix (unnamed)"),
            SockAddr::Unix(p) if p[0] == 0 => {
                write!(f, "unix @{}", String::from_utf8_lossy(&p[1..]))
            }
            SockAddr::Unix(p) => write!(f, "unix {}", String::from_utf8_lossy(p)),
            SockAddr::Other(fam) => write!(f, "family {fam}"),
        }
    }
}

/// Families restore knows how to bring back.
pub fn family_supported(f: i32) -> bool {
    matches!(f, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
}

/// Pipes created so far, by inode: (read end, write end), parked above every target.
#[derive(Default)]
pub(crate) struct Pipes {
    ends: HashMap<u64, (i32, i32)>,
}

impl Pipes {
    /// Closes the parked ends.
    pub fn close_all(&mut self, t: &mut Tracee) {
        for (_, (r, w)) in self.ends.drain() {
            t.close(r);
            t.close(w);
        }
    }
}

/// Scratch offsets (offset 0 is used by path-taking calls).
const SCR_ARG: usize = 1024;
const SCR_DATA: usize = 2048;

fn put_int(t: &mut Tracee, v: i32) -> Result<u64, RestoreError> {
    t.put_scratch(SCR_ARG, &v.to_ne_bytes())
}

/// Creates the object for descriptor `fd` (flags = its `F_GETFL`). `above`: a number above
/// every target, where pipe ends wait for their second number.
pub(crate) fn create(
    t: &mut Tracee,
    fd: i32,
    flags: i32,
    obj: &KernelObject,
    maps: &[BindMap],
    pipes: &mut Pipes,
    above: i32,
) -> Result<i32, RestoreError> {
    match obj {
        KernelObject::Socket(s) => socket(t, fd, s, maps),
        KernelObject::Pipe {
            ino,
            size,
            data,
            truncated,
        } => {
            let (r, w) = match pipes.ends.get(ino) {
                Some(&e) => e,
                None => {
                    let e = new_pipe(t, fd, *size, data, above)?;
                    if *truncated {
                        warn!(fd, ino, "the pipe had more unread bytes than the checkpoint could hold; only {} come back", data.len());
                    }
                    info!(
                        fd,
                        ino,
                        unread = data.len(),
                        "pipe recreated with its unread bytes"
                    );
                    pipes.ends.insert(*ino, e);
                    e
                }
            };
            let end = if flags & libc::O_ACCMODE == libc::O_WRONLY {
                w
            } else {
                r
            };
            Ok(t.sys(
                "fcntl(F_DUPFD)",
                libc::SYS_fcntl,
                [end as u64, libc::F_DUPFD as u64, 0, 0, 0, 0],
                || format!("fd {fd}: a copy of the pipe end"),
            )? as i32)
        }
        KernelObject::Epoll { .. } => {
            Ok(t.sys("epoll_create1", libc::SYS_epoll_create1, [0; 6], || {
                format!("fd {fd}: epoll instance")
            })? as i32)
        }
        KernelObject::EventFd { count, semaphore } => {
            let fl = if *semaphore { libc::EFD_SEMAPHORE } else { 0 };
            let e = t.sys(
                "eventfd2",
                libc::SYS_eventfd2,
                [0, fl as u64, 0, 0, 0, 0],
                || format!("fd {fd}: eventfd"),
            )? as i32;
            if *count > 0 {
                let a = t.put_scratch(SCR_ARG, &count.to_ne_bytes())?;
                t.sys("write", libc::SYS_write, [e as u64, a, 8, 0, 0, 0], || {
                    format!("fd {fd}: eventfd counter {count}")
                })?;
            }
            Ok(e)
        }
        KernelObject::TimerFd {
            clockid,
            value,
            interval,
            ticks,
        } => {
            let tf = t.sys(
                "timerfd_create",
                libc::SYS_timerfd_create,
                [*clockid as u64, 0, 0, 0, 0, 0],
                || format!("fd {fd}: timerfd on clock {clockid}"),
            )? as i32;
            // Expirations the app had not read yet: TFD_IOC_SET_TICKS where the kernel has
            // it (CONFIG_CHECKPOINT_RESTORE); else the timer fires at once instead.
            let mut value = *value;
            if *ticks > 0 {
                const TFD_IOC_SET_TICKS: u64 = 0x4008_5400; // _IOW('T', 0, u64)
                let a = t.put_scratch(SCR_ARG, &ticks.to_ne_bytes())?;
                let r =
                    t.raw_syscall(libc::SYS_ioctl, [tf as u64, TFD_IOC_SET_TICKS, a, 0, 0, 0])?;
                if r < 0 && value == (0, 0) {
                    value = (0, 1);
                }
            }
            if value != (0, 0) || *interval != (0, 0) {
                let its: [i64; 4] = [interval.0, interval.1, value.0, value.1];
                let bytes: Vec<u8> = its.iter().flat_map(|v| v.to_ne_bytes()).collect();
                let a = t.put_scratch(SCR_ARG, &bytes)?;
                t.sys(
                    "timerfd_settime",
                    libc::SYS_timerfd_settime,
                    [tf as u64, 0, a, 0, 0, 0],
                    || format!("fd {fd}: timerfd setting"),
                )?;
            }
            Ok(tf)
        }
        KernelObject::SignalFd { mask } => {
            let a = t.put_scratch(SCR_ARG, &mask.to_ne_bytes())?;
            Ok(t.sys(
                "signalfd4",
                libc::SYS_signalfd4,
                [u64::MAX, a, 8, 0, 0, 0],
                || format!("fd {fd}: signalfd with mask {mask:#x}"),
            )? as i32)
        }
    }
}

fn pair(t: &mut Tracee, domain: i32, ty: i32, what: &str) -> Result<(i32, i32), RestoreError> {
    let a = t.put_scratch(SCR_ARG, &[0u8; 8])?;
    t.sys(
        "socketpair",
        libc::SYS_socketpair,
        [domain as u64, ty as u64, 0, a, 0, 0],
        || what.to_string(),
    )?;
    let mut b = [0u8; 8];
    t.read_mem(a, &mut b)?;
    Ok((
        i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

fn new_pipe(
    t: &mut Tracee,
    fd: i32,
    size: u32,
    data: &[u8],
    above: i32,
) -> Result<(i32, i32), RestoreError> {
    let a = t.put_scratch(SCR_ARG, &[0u8; 8])?;
    t.sys("pipe2", libc::SYS_pipe2, [a, 0, 0, 0, 0, 0], || {
        format!("fd {fd}: pipe")
    })?;
    let mut b = [0u8; 8];
    t.read_mem(a, &mut b)?;
    let (r, w) = (
        i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    );
    let want = (size as usize).max(data.len());
    if want > 65536 {
        let _ = t.raw_syscall(
            libc::SYS_fcntl,
            [w as u64, libc::F_SETPIPE_SZ as u64, want as u64, 0, 0, 0],
        )?;
    }
    let chunk = t.scratch_len() - SCR_DATA;
    for piece in data.chunks(chunk) {
        let at = t.put_scratch(SCR_DATA, piece)?;
        let mut off = 0;
        while off < piece.len() {
            let n = t.sys(
                "write",
                libc::SYS_write,
                [
                    w as u64,
                    at + off as u64,
                    (piece.len() - off) as u64,
                    0,
                    0,
                    0,
                ],
                || format!("fd {fd}: the pipe's {} unread bytes", data.len()),
            )?;
            off += n as usize;
        }
    }
    let park = |t: &mut Tracee, e: i32| -> Result<i32, RestoreError> {
        let h = t.sys(
            "fcntl(F_DUPFD)",
            libc::SYS_fcntl,
            [e as u64, libc::F_DUPFD as u64, above as u64, 0, 0, 0],
            || format!("fd {fd}: keeping a pipe end out of the way"),
        )? as i32;
        t.close(e);
        Ok(h)
    };
    let r = park(t, r)?;
    let w = park(t, w)?;
    Ok((r, w))
}

fn setsockopt_int(
    t: &mut Tracee,
    s: i32,
    level: i32,
    opt: i32,
    v: i32,
    what: impl FnOnce() -> String,
) -> Result<(), RestoreError> {
    let a = put_int(t, v)?;
    t.sys(
        "setsockopt",
        libc::SYS_setsockopt,
        [s as u64, level as u64, opt as u64, a, 4, 0],
        what,
    )?;
    Ok(())
}

fn socket(t: &mut Tracee, fd: i32, s: &SocketInfo, maps: &[BindMap]) -> Result<i32, RestoreError> {
    let stream = s.sock_type == libc::SOCK_STREAM || s.sock_type == libc::SOCK_SEQPACKET;
    if s.peer.is_some() && stream && !s.listening {
        // Established: closed by the peer (see the module docs).
        let (mine, theirs) = pair(
            t,
            libc::AF_UNIX,
            s.sock_type,
            &format!("fd {fd}: stand-in for an established connection"),
        )?;
        t.close(theirs);
        info!(
            fd,
            was = %SockAddr::decode(s.peer.as_deref().unwrap_or_default()),
            "established connection restored as closed by the peer"
        );
        return Ok(mine);
    }
    let orig = SockAddr::decode(&s.addr);
    let addr = orig.mapped(maps);
    let family = if orig.is_bound() {
        addr.family()
    } else {
        s.family
    };
    if !family_supported(family) {
        return Err(RestoreError::Unsupported(format!(
            "fd {fd}: a socket of family {family} cannot be restored"
        )));
    }
    let sk = t.sys(
        "socket",
        libc::SYS_socket,
        [
            family as u64,
            s.sock_type as u64,
            s.protocol as u64,
            0,
            0,
            0,
        ],
        || format!("fd {fd}: socket (family {family}, type {})", s.sock_type),
    )? as i32;
    if s.reuseaddr {
        setsockopt_int(t, sk, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, || {
            format!("fd {fd}: SO_REUSEADDR")
        })?;
    }
    if s.reuseport {
        setsockopt_int(t, sk, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, || {
            format!("fd {fd}: SO_REUSEPORT")
        })?;
    }
    if family == libc::AF_INET6 {
        setsockopt_int(
            t,
            sk,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            s.v6only as i32,
            || format!("fd {fd}: IPV6_V6ONLY"),
        )?;
    }
    if orig.is_bound() {
        let raw = addr.encode();
        let a = t.put_scratch(SCR_DATA, &raw)?;
        let mut r = t.raw_syscall(libc::SYS_bind, [sk as u64, a, raw.len() as u64, 0, 0, 0])?;
        if r == -(libc::EADDRINUSE as i64) && !s.reuseaddr && family != libc::AF_UNIX {
            // Connections of the dead primary may linger in TIME_WAIT on this host: bind
            // with SO_REUSEADDR, then put the option back as the app had it.
            setsockopt_int(t, sk, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, || {
                format!("fd {fd}: SO_REUSEADDR")
            })?;
            r = t.raw_syscall(libc::SYS_bind, [sk as u64, a, raw.len() as u64, 0, 0, 0])?;
            setsockopt_int(t, sk, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0, || {
                format!("fd {fd}: SO_REUSEADDR")
            })?;
        }
        if r == -(libc::EADDRINUSE as i64)
            && !s.listening
            && s.sock_type == libc::SOCK_STREAM
            && family != libc::AF_UNIX
        {
            // A connection the peer already ended (state CLOSE: no peer address any more,
            // still bound to the server's port): it comes back like an established one.
            t.close(sk);
            let (mine, theirs) = pair(
                t,
                libc::AF_UNIX,
                s.sock_type,
                &format!("fd {fd}: stand-in for an ended connection"),
            )?;
            t.close(theirs);
            info!(fd, was = %orig, "ended connection restored as closed by the peer");
            return Ok(mine);
        }
        if r < 0 {
            let hint = if addr == orig {
                " (an address this host does not own needs `remusd standby --bind-map FROM=TO`)"
            } else {
                ""
            };
            return Err(RestoreError::Injected {
                call: "bind",
                what: format!(
                    "fd {fd}: socket bound to {orig} on the primary, binding {addr}{hint}"
                ),
                errno: (-r) as i32,
            });
        }
    }
    if s.listening {
        let backlog = if s.backlog > 0 {
            s.backlog
        } else {
            libc::SOMAXCONN
        };
        t.sys(
            "listen",
            libc::SYS_listen,
            [sk as u64, backlog as u64, 0, 0, 0, 0],
            || format!("fd {fd}: listening on {addr}"),
        )?;
        info!(fd, addr = %addr, was = %orig, backlog, "listening socket restored");
    } else if let Some(peer) = &s.peer {
        // A connected datagram socket: connect it again (there is no connection to lose).
        let raw = SockAddr::decode(peer).encode();
        let a = t.put_scratch(SCR_DATA, &raw)?;
        let r = t.raw_syscall(libc::SYS_connect, [sk as u64, a, raw.len() as u64, 0, 0, 0])?;
        if r < 0 {
            warn!(fd, peer = %SockAddr::decode(peer), errno = -r, "could not connect the datagram socket again");
        }
    }
    Ok(sk)
}

/// Adds every registration of the restored epoll instances, once all descriptors exist. A
/// registration whose target cannot be added (it came back as `/dev/null`, say) is warned
/// about and left out.
pub(crate) fn add_epoll_registrations(
    t: &mut Tracee,
    epfd: i32,
    obj: &KernelObject,
) -> Result<(), RestoreError> {
    let KernelObject::Epoll { regs, truncated } = obj else {
        return Ok(());
    };
    if *truncated {
        warn!(
            epfd,
            "the epoll instance had more registrations than the checkpoint could hold"
        );
    }
    for g in regs {
        // struct epoll_event is packed on x86-64: u32 events, u64 data.
        let mut ev = [0u8; 12];
        ev[..4].copy_from_slice(&g.events.to_ne_bytes());
        ev[4..].copy_from_slice(&g.data.to_ne_bytes());
        let a = t.put_scratch(SCR_ARG, &ev)?;
        let r = t.raw_syscall(
            libc::SYS_epoll_ctl,
            [
                epfd as u64,
                libc::EPOLL_CTL_ADD as u64,
                g.fd as u64,
                a,
                0,
                0,
            ],
        )?;
        if r < 0 {
            warn!(
                epfd,
                fd = g.fd,
                events = format_args!("{:#x}", g.events),
                data = format_args!("{:#x}", g.data),
                errno = -r,
                "could not add an epoll registration back"
            );
        }
    }
    info!(epfd, registrations = regs.len(), "epoll instance restored");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip_and_bind_map() {
        let a = SockAddr::Inet("10.0.0.5:80".parse().unwrap());
        assert_eq!(SockAddr::decode(&a.encode()), a);
        let six = SockAddr::Inet("[::1]:8080".parse().unwrap());
        assert_eq!(SockAddr::decode(&six.encode()), six);
        let u = SockAddr::Unix(b"/tmp/x.sock".to_vec());
        assert_eq!(SockAddr::decode(&u.encode()), u);
        assert_eq!(u.unix_path().as_deref(), Some("/tmp/x.sock"));
        let maps: Vec<BindMap> = ["10.0.0.5=127.0.0.1", "/tmp/x.sock=/tmp/y.sock"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            a.mapped(&maps),
            SockAddr::Inet("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(u.mapped(&maps), SockAddr::Unix(b"/tmp/y.sock".to_vec()));
        let exact: BindMap = "10.0.0.5:80=0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            a.mapped(&[exact]),
            SockAddr::Inet("0.0.0.0:8080".parse().unwrap())
        );
        assert!("10.0.0.5=/tmp/x".parse::<BindMap>().is_err());
        assert!("nonsense".parse::<BindMap>().is_err());
    }
}
