//! Making a socket from a [`TcpConnState`], in two halves around the service address coming up.
//!
//! [`rebuild`], with the service address not up yet (DESIGN §9's order; each state is
//! exercised on real connections in `tests/tcp_repair.rs`):
//! 1. a TCP socket in repair mode with `IP_TRANSPARENT` (the address it binds is not local);
//! 2. `SO_SNDBUFFORCE` / `SO_RCVBUFFORCE` at least twice the app's sizes and the queues
//!    (else restoring a large queue blocks), then the app's other options;
//! 3. `bind` to the dumped local address;
//! 4. `TCP_MAXSEG` (the repair connect sizes segments from it), both sequence numbers
//!    (`TCP_QUEUE_SEQ`): the dumped ones less the queue lengths, since writing a queue in
//!    repair mode advances them;
//! 5. `connect` (in repair mode: no SYN, straight to ESTABLISHED; it still needs a route to
//!    the peer, [`RebuildError::NoRoute`]);
//! 6. `TCP_REPAIR_OPTIONS` (MSS, SACK, window scale, timestamps) and `TCP_TIMESTAMP`;
//! 7. the receive queue and the *already-sent* part of the send queue, in repair mode (sending
//!    that part again as new data deadlocks the connection);
//! 8. `TCP_REPAIR_WINDOW`;
//! 9. our FIN, when it had been sent before the peer's arrived (`FIN_WAIT1` with the FIN sent,
//!    `FIN_WAIT2`, `CLOSING`): `shutdown` with the send queue selected, so it counts as sent.
//!
//! [`Repairing::finish`], once the caller has brought the address up and announced it:
//! 10. the peer's FIN (`CLOSE_WAIT`, `LAST_ACK`, `CLOSING`), injected; then our FIN for
//!     `LAST_ACK` (sent after the peer's); the peer's ACK of our FIN for `FIN_WAIT2`;
//! 11. repair off (a window probe goes out, telling the peer where we are), `SO_REUSEADDR`
//!     and `IP_TRANSPARENT` as the app had them;
//! 12. the unsent tail written normally, then our FIN when it had not been sent yet;
//! 13. the app's buffer sizes, `TCP_CORK` and `O_NONBLOCK` as the app had them.
//!
//! `SYN_SENT`: steps 1-4 with the send sequence one before the dumped one (the SYN's), and at
//! step 11 a plain `connect`, which keeps that initial sequence number: the peer sees the SYN
//! again. The rebuilt socket's `connect` is non-blocking (`O_NONBLOCK` is then set as the app
//! had it); what an app that was blocked in `connect` sees after a restore is not tested.
//!
//! Known difference: forcing the buffer sizes locks them (`SOCK_SNDBUF_LOCK`), so the
//! rebuilt socket keeps the sizes its buffers had at the dump and no longer autotunes them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tracing::debug;

use super::inject::{self, Segment, FLAG_ACK, FLAG_FIN};
use super::state::{TcpConnState, TcpState};
use super::sys::{self, Queue, Step};

/// How long writing the unsent tail may wait for room in the send buffer (it fitted in the
/// app's buffer, and the rebuilt one is at least as large, so waiting means a broken socket).
const UNSENT_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// Why [`rebuild`] failed; no socket is left behind.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(
        "rebuilding a TCP connection needs CAP_NET_ADMIN (TCP_REPAIR, IP_TRANSPARENT, \
         SO_*BUFFORCE), which this process lacks (run remusd as root): {0}"
    )]
    MissingCapability(#[source] io::Error),
    #[error("rebuilding {local} -> {remote}: {step} failed: {source}")]
    Sys {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error(
        "rebuilding {local} -> {remote}: no route to {remote} in this network namespace \
         (connect needs one even in repair mode: give the standby an address on the client's \
         network, or a route, before the service address comes up)"
    )]
    NoRoute {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    },
    #[error("the dump is inconsistent: {0}")]
    BadState(&'static str),
}

/// Why [`Repairing::finish`] failed (the socket is closed; the peer sees nothing more from it
/// unless repair mode was already off, in which case it may see a RST).
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("finishing {local} -> {remote}: {step} failed: {source}")]
    Sys {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error("the peer's FIN of {local} -> {remote} must be injected, which is done for IPv4 only")]
    NotIpv4 {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    },
    #[error("writing the unsent tail of {0}: no room in the send buffer for {1:?}")]
    UnsentStuck(std::net::SocketAddr, Duration),
}

/// A rebuilt socket still in repair mode: nothing it does reaches the peer yet. Bring the
/// service address up (and announce it), then call [`Repairing::finish`]. Dropping it closes
/// the socket silently (a socket in repair mode sends no RST on close).
#[derive(Debug)]
pub struct Repairing {
    sock: OwnedFd,
    st: TcpConnState,
}

/// Rebuilds `st` as a socket in repair mode (steps 1-9 above), in the calling thread's network
/// namespace. The local address need not be up yet (and should not be: see the module docs).
pub fn rebuild(st: &TcpConnState) -> Result<Repairing, RebuildError> {
    if st.send.unsent as usize > st.send.bytes.len() {
        return Err(RebuildError::BadState(
            "more unsent bytes than bytes in the send queue",
        ));
    }
    if st.local.is_ipv4() != st.remote.is_ipv4() {
        return Err(RebuildError::BadState(
            "local and remote addresses of different families",
        ));
    }
    let err = |step: Step| {
        move |source: io::Error| RebuildError::Sys {
            local: st.local,
            remote: st.remote,
            step,
            source,
        }
    };
    let domain = if st.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let sock =
        sys::socket(domain, libc::SOCK_STREAM, libc::IPPROTO_TCP).map_err(err(Step::Socket))?;
    let fd = sock.as_raw_fd();
    if let Err(e) = sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR, 1) {
        return Err(if sys::is_permission(&e) {
            RebuildError::MissingCapability(e)
        } else {
            err(Step::RepairOn)(e)
        });
    }
    let (tlevel, tname) = if st.local.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
    };
    sys::set_int(fd, tlevel, tname, 1).map_err(|e| {
        if sys::is_permission(&e) {
            RebuildError::MissingCapability(e)
        } else {
            err(Step::SockOpt("IP_TRANSPARENT"))(e)
        }
    })?;
    buffers_and_options(fd, st).map_err(|(step, e)| {
        if sys::is_permission(&e) {
            RebuildError::MissingCapability(e)
        } else {
            err(step)(e)
        }
    })?;
    sys::bind(fd, &st.local).map_err(err(Step::Bind))?;

    let select = |q: Queue| {
        sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR_QUEUE, q as i32)
            .map_err(err(Step::SelectQueue(q)))
    };
    let set_seq = |q: Queue, seq: u32| {
        select(q)?;
        sys::setsockopt::<u32>(fd, libc::IPPROTO_TCP, sys::TCP_QUEUE_SEQ, seq)
            .map_err(err(Step::QueueSeq(q)))
    };
    let recv_len = st.recv.bytes.len() as u32;
    let send_len = st.send.bytes.len() as u32;
    if st.state == TcpState::SynSent {
        // write_seq is the SYN's sequence number + 1: connect sends the SYN at seq - 1 again.
        set_seq(Queue::Send, st.send.seq.wrapping_sub(1))?;
        select(Queue::None)?;
        return Ok(Repairing {
            sock,
            st: st.clone(),
        });
    }
    // The MSS before connect: the repair-mode connect computes the segment size from the
    // clamp it has then (536 by default, so 524-byte segments for the rest of the connection
    // if the MSS is only set afterwards with TCP_REPAIR_OPTIONS, which does not recompute it).
    sys::set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_MAXSEG,
        st.options.mss as i32,
    )
    .map_err(err(Step::SockOpt("TCP_MAXSEG")))?;
    set_seq(Queue::Recv, st.recv.seq.wrapping_sub(recv_len))?;
    set_seq(Queue::Send, st.send.seq.wrapping_sub(send_len))?;
    select(Queue::None)?;
    sys::connect(fd, &st.remote).map_err(|e| {
        if matches!(
            e.raw_os_error(),
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
        ) {
            RebuildError::NoRoute {
                local: st.local,
                remote: st.remote,
            }
        } else {
            err(Step::Connect)(e)
        }
    })?;

    let o = &st.options;
    let mut opts: Vec<[u32; 2]> = Vec::with_capacity(4);
    if o.sack {
        opts.push([sys::TCPOPT_SACK_PERM, 0]);
    }
    if let Some((snd, rcv)) = o.window_scale {
        opts.push([sys::TCPOPT_WINDOW, u32::from(snd) | (u32::from(rcv) << 16)]);
    }
    if o.timestamp.is_some() {
        opts.push([sys::TCPOPT_TIMESTAMP, 0]);
    }
    opts.push([sys::TCPOPT_MAXSEG, o.mss]);
    sys::setsockopt_slice(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR_OPTIONS, &opts)
        .map_err(err(Step::Options))?;
    if let Some(ts) = o.timestamp {
        sys::setsockopt::<u32>(fd, libc::IPPROTO_TCP, sys::TCP_TIMESTAMP, ts)
            .map_err(err(Step::Timestamp))?;
    }

    if !st.recv.bytes.is_empty() {
        select(Queue::Recv)?;
        write_repair_queue(fd, &st.recv.bytes).map_err(err(Step::WriteQueue(Queue::Recv)))?;
    }
    let sent = st.send.sent_part();
    if !sent.is_empty() {
        select(Queue::Send)?;
        write_repair_queue(fd, sent).map_err(err(Step::WriteQueue(Queue::Send)))?;
    }
    select(Queue::None)?;

    if let Some(w) = st.window {
        let mut v = [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup];
        if st.state.fin_received() {
            // rcv_nxt is one short of the dump's until the peer's FIN is injected.
            v[4] = v[4].wrapping_sub(1);
            v[3] = v[3].wrapping_add(1);
        }
        sys::setsockopt(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR_WINDOW, v)
            .map_err(err(Step::RepairWindow))?;
    }

    // Our FIN, when it went out before the peer's (or the peer's never came).
    let fin_first = matches!(
        st.state,
        TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing
    );
    if fin_first && !st.send.fin_unsent {
        select(Queue::Send)?;
        sys::shutdown_write(fd).map_err(err(Step::Shutdown))?;
        select(Queue::None)?;
    }
    debug!(local = %st.local, remote = %st.remote, state = ?st.state,
        recv = recv_len, send = send_len, unsent = st.send.unsent, "rebuilt in repair mode");
    Ok(Repairing {
        sock,
        st: st.clone(),
    })
}

/// The forced buffer sizes and the app's options (step 2).
fn buffers_and_options(fd: RawFd, st: &TcpConnState) -> Result<(), (Step, io::Error)> {
    let o = &st.sockopts;
    let at = |step: Step| move |e: io::Error| (step, e);
    // getsockopt reported twice what was asked, and the kernel doubles what is forced: the
    // reported value forced gives twice the app's room, and never less than twice a queue.
    let snd = o.sndbuf.max(2 * st.send.bytes.len() as i32).max(4096);
    let rcv = o.rcvbuf.max(2 * st.recv.bytes.len() as i32).max(4096);
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd)
        .map_err(at(Step::SockOpt("SO_SNDBUFFORCE")))?;
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv)
        .map_err(at(Step::SockOpt("SO_RCVBUFFORCE")))?;
    let sol = |name: i32, what: &'static str, v: i32| {
        sys::set_int(fd, libc::SOL_SOCKET, name, v).map_err(at(Step::SockOpt(what)))
    };
    let tcp = |name: i32, what: &'static str, v: i32| {
        sys::set_int(fd, libc::IPPROTO_TCP, name, v).map_err(at(Step::SockOpt(what)))
    };
    sol(libc::SO_REUSEPORT, "SO_REUSEPORT", i32::from(o.reuse_port))?;
    sol(libc::SO_KEEPALIVE, "SO_KEEPALIVE", i32::from(o.keepalive))?;
    let (idle, intvl, cnt) = o.keepalive_params;
    tcp(libc::TCP_KEEPIDLE, "TCP_KEEPIDLE", idle)?;
    tcp(libc::TCP_KEEPINTVL, "TCP_KEEPINTVL", intvl)?;
    tcp(libc::TCP_KEEPCNT, "TCP_KEEPCNT", cnt)?;
    tcp(libc::TCP_NODELAY, "TCP_NODELAY", i32::from(o.nodelay))?;
    tcp(
        libc::TCP_USER_TIMEOUT,
        "TCP_USER_TIMEOUT",
        o.user_timeout as i32,
    )?;
    if let Some(secs) = o.linger {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: secs,
        };
        sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, l)
            .map_err(at(Step::SockOpt("SO_LINGER")))?;
    }
    if st.local.is_ipv4() {
        sys::set_int(fd, libc::IPPROTO_IP, libc::IP_TOS, o.tos)
            .map_err(at(Step::SockOpt("IP_TOS")))?;
    } else {
        sys::set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, o.tos)
            .map_err(at(Step::SockOpt("IPV6_TCLASS")))?;
    }
    if o.mark != 0 {
        sol(libc::SO_MARK, "SO_MARK", o.mark as i32)?;
    }
    if o.priority != 0 {
        sol(libc::SO_PRIORITY, "SO_PRIORITY", o.priority)?;
    }
    for (name, what, (sec, usec)) in [
        (libc::SO_RCVTIMEO, "SO_RCVTIMEO", o.rcvtimeo),
        (libc::SO_SNDTIMEO, "SO_SNDTIMEO", o.sndtimeo),
    ] {
        let tv = libc::timeval {
            tv_sec: sec,
            tv_usec: usec,
        };
        sys::setsockopt(fd, libc::SOL_SOCKET, name, tv).map_err(at(Step::SockOpt(what)))?;
    }
    if o.notsent_lowat != 0 {
        tcp(
            libc::TCP_NOTSENT_LOWAT,
            "TCP_NOTSENT_LOWAT",
            o.notsent_lowat as i32,
        )?;
    }
    if !o.congestion.is_empty() {
        sys::setsockopt_slice(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            o.congestion.as_bytes(),
        )
        .map_err(at(Step::SockOpt("TCP_CONGESTION")))?;
    }
    Ok(())
}

/// Writes `bytes` into the selected queue in repair mode. The kernel builds one linear buffer
/// per call, so a large chunk can fail with ENOMEM: halve it then (as soccr does).
fn write_repair_queue(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let mut off = 0;
    let mut chunk = bytes.len();
    while off < bytes.len() {
        let end = (off + chunk).min(bytes.len());
        match sys::send(fd, &bytes[off..end], 0) {
            Ok(0) => return Err(io::Error::other("the kernel accepted 0 bytes")),
            Ok(n) => off += n,
            Err(e)
                if chunk > 1024
                    && matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EAGAIN)) =>
            {
                chunk /= 2
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Repairing {
    /// The rebuilt socket (still in repair mode), e.g. to `dup2` it to the app's descriptor
    /// number before finishing.
    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The state this socket was rebuilt from.
    pub fn state(&self) -> &TcpConnState {
        &self.st
    }

    /// Steps 10-13 (module docs). Call with the connection's local address up in this
    /// thread's network namespace (the injected segments are routed to it).
    pub fn finish(self) -> Result<OwnedFd, FinishError> {
        let Repairing { sock, st } = self;
        let fd = sock.as_raw_fd();
        let err = |step: Step| {
            move |source: io::Error| FinishError::Sys {
                local: st.local,
                remote: st.remote,
                step,
                source,
            }
        };
        let select = |q: Queue| {
            sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR_QUEUE, q as i32)
                .map_err(err(Step::SelectQueue(q)))
        };
        let needs_injection = st.state.fin_received() || st.state.our_fin_acked();
        if needs_injection {
            let (local, remote) =
                inject::v4_pair(st.local, st.remote).ok_or(FinishError::NotIpv4 {
                    local: st.local,
                    remote: st.remote,
                })?;
            let wscale = st.options.window_scale.map_or(0, |(snd, _)| snd);
            let window = st
                .window
                .map_or(65535, |w| (w.snd_wnd >> wscale).min(65535) as u16);
            let snd_una = st.send.seq.wrapping_sub(st.send.bytes.len() as u32);
            if st.state.fin_received() {
                inject::send(&Segment {
                    from: remote,
                    to: local,
                    seq: st.recv.seq,
                    ack: snd_una,
                    flags: FLAG_FIN | FLAG_ACK,
                    window,
                })
                .map_err(err(Step::InjectSegment))?;
            }
            if st.state == TcpState::LastAck && !st.send.fin_unsent {
                select(Queue::Send)?;
                sys::shutdown_write(fd).map_err(err(Step::Shutdown))?;
                select(Queue::None)?;
            }
            if st.state.our_fin_acked() {
                inject::send(&Segment {
                    from: remote,
                    to: local,
                    seq: st.recv.seq,
                    ack: st.send.seq.wrapping_add(1),
                    flags: FLAG_ACK,
                    window,
                })
                .map_err(err(Step::InjectSegment))?;
            }
        }
        if st.state == TcpState::SynSent {
            // A non-blocking connect keeps the write_seq set in repair mode as the ISN.
            sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR, 0)
                .map_err(err(Step::RepairOff))?;
            sys::set_nonblocking(fd, true).map_err(err(Step::Fcntl))?;
            sys::connect(fd, &st.remote).map_err(err(Step::Connect))?;
        } else {
            sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR, 0)
                .map_err(err(Step::RepairOff))?;
        }
        sys::set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            i32::from(st.sockopts.reuse_addr),
        )
        .map_err(err(Step::SockOpt("SO_REUSEADDR")))?;
        let (tlevel, tname) = if st.local.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
        };
        sys::set_int(fd, tlevel, tname, 0).map_err(err(Step::SockOpt("IP_TRANSPARENT")))?;

        let unsent = st.send.unsent_part();
        if !unsent.is_empty() {
            write_all_bounded(fd, unsent).map_err(|e| match e {
                None => FinishError::UnsentStuck(st.remote, UNSENT_WRITE_LIMIT),
                Some(e) => err(Step::WriteUnsent)(e),
            })?;
        }
        if st.send.fin_unsent {
            sys::shutdown_write(fd).map_err(err(Step::Shutdown))?;
        }
        // The app's buffer sizes again, now that the queues are in (getsockopt reported twice
        // what was asked, the kernel doubles what is set: half gives the same report).
        for (name, what, v) in [
            (libc::SO_SNDBUFFORCE, "SO_SNDBUFFORCE", st.sockopts.sndbuf),
            (libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE", st.sockopts.rcvbuf),
        ] {
            sys::set_int(fd, libc::SOL_SOCKET, name, v / 2).map_err(err(Step::SockOpt(what)))?;
        }
        if st.sockopts.cork {
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_CORK, 1)
                .map_err(err(Step::SockOpt("TCP_CORK")))?;
        }
        sys::set_nonblocking(fd, st.sockopts.nonblocking).map_err(err(Step::Fcntl))?;
        debug!(local = %st.local, remote = %st.remote, state = ?st.state, "repair off");
        Ok(sock)
    }
}

/// Writes all of `bytes` without blocking forever: Err(None) when no room came within
/// [`UNSENT_WRITE_LIMIT`].
fn write_all_bounded(fd: RawFd, bytes: &[u8]) -> Result<(), Option<io::Error>> {
    let start = Instant::now();
    let mut off = 0;
    while off < bytes.len() {
        match sys::send(fd, &bytes[off..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = UNSENT_WRITE_LIMIT.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(None);
                }
                sys::wait_writable(fd, left.as_millis().min(1000) as i32).map_err(Some)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(())
}
