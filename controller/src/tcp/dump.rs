//! Reading a connection's state through a duplicate of its socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use tracing::{debug, warn};

use super::state::{
    NegotiatedOptions, RecvQueue, RepairWindow, SendQueue, SocketOptions, TcpConnState, TcpState,
};
use super::sys::{self, Queue, Step};

/// How often the receive side's counters are read again when they moved during a dump (a
/// segment arrived: repair mode does not stop reception). Each try is five system calls (a few
/// microseconds), shorter than the time between two segments except under a flood.
const STABLE_TRIES: u32 = 16;

/// Why [`dump`] failed. The socket is left as it was found (repair off, `SO_REUSEADDR` put
/// back) in every case but [`DumpError::RepairStuck`].
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("TCP_REPAIR needs CAP_NET_ADMIN, which this process lacks (run remusd as root): {0}")]
    MissingCapability(#[source] io::Error),
    #[error("not a TCP socket over IPv4 or IPv6 ({0})")]
    NotTcp(&'static str),
    #[error("the connection is in state {0}, which is not dumped (see TcpState)")]
    Unsupported(&'static str),
    #[error("{step} failed: {source}")]
    Sys {
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error("the receive side kept moving during {STABLE_TRIES} reads (a flood arriving?)")]
    Unstable,
    #[error("the {queue:?} queue held {got} bytes, more than the {max} its size said")]
    QueueGrew {
        queue: Queue,
        got: usize,
        max: usize,
    },
    #[error("the {queue:?} queue held {got} bytes, fewer than the {want} its size said")]
    QueueShrank {
        queue: Queue,
        got: usize,
        want: usize,
    },
    #[error("turning repair mode off failed after the dump, the socket is unusable: {0}")]
    RepairStuck(#[source] io::Error),
}

fn sys_err(step: Step) -> impl FnOnce(io::Error) -> DumpError {
    move |source| DumpError::Sys { step, source }
}

/// The first bytes of `struct tcp_info`: state, options, window scales.
#[derive(Debug, Clone, Copy)]
struct InfoHead {
    state: u8,
    options: u8,
    snd_wscale: u8,
    rcv_wscale: u8,
}

fn info_head(fd: RawFd) -> io::Result<InfoHead> {
    let b: [u8; 8] = sys::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(InfoHead {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0x0f,
        rcv_wscale: b[6] >> 4,
    })
}

/// The connection's state, read through `sock` (remusd's duplicate of the app's socket) with
/// repair mode on for the duration of the call. Meant to run while the app is paused: while
/// repair is on, the app's own calls on the socket misbehave.
pub fn dump(sock: impl AsFd) -> Result<TcpConnState, DumpError> {
    let fd = sock.as_fd().as_raw_fd();
    check_kind(fd)?;
    let head = info_head(fd).map_err(sys_err(Step::TcpInfo))?;
    if TcpState::from_kernel(head.state).is_none() {
        return Err(DumpError::Unsupported(TcpState::kernel_name(head.state)));
    }
    let sockopts = socket_options(fd)?;
    if let Err(e) = sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR, 1) {
        return Err(if sys::is_permission(&e) {
            DumpError::MissingCapability(e)
        } else {
            DumpError::Sys {
                step: Step::RepairOn,
                source: e,
            }
        });
    }
    let reuse_addr = sockopts.reuse_addr;
    let r = read_repaired(fd, sockopts);
    // Whatever happened: no queue selected, repair off, SO_REUSEADDR as the app had it.
    let _ = sys::set_int(
        fd,
        libc::IPPROTO_TCP,
        sys::TCP_REPAIR_QUEUE,
        Queue::None as i32,
    );
    // Off without a window probe: a dump in every pause must not make a packet (with the
    // packet gate each one would be held for the next epoch and trigger it at once: an epoch
    // storm). Kernels before 4.19 only know 0.
    let off = sys::set_int(
        fd,
        libc::IPPROTO_TCP,
        sys::TCP_REPAIR,
        sys::TCP_REPAIR_OFF_NO_WP,
    )
    .or_else(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR, 0),
        _ => Err(e),
    });
    if let Err(e) = off {
        warn!(fd, error = %e, "TCP_REPAIR off failed after a dump");
        return Err(DumpError::RepairStuck(e));
    }
    sys::set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        i32::from(reuse_addr),
    )
    .map_err(sys_err(Step::SockOpt("SO_REUSEADDR")))?;
    r
}

fn check_kind(fd: RawFd) -> Result<(), DumpError> {
    let ty = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTSOCK) {
            DumpError::NotTcp("not a socket")
        } else {
            DumpError::Sys {
                step: Step::SocketKind,
                source: e,
            }
        }
    })?;
    let domain =
        sys::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys_err(Step::SocketKind))?;
    let proto =
        sys::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(sys_err(Step::SocketKind))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(DumpError::NotTcp("not an IPv4 or IPv6 socket"));
    }
    if ty != libc::SOCK_STREAM || proto != libc::IPPROTO_TCP {
        return Err(DumpError::NotTcp("not a stream socket of protocol TCP"));
    }
    Ok(())
}

/// The options an app commonly sets (read before repair mode changes `SO_REUSEADDR`).
pub(super) fn socket_options(fd: RawFd) -> Result<SocketOptions, DumpError> {
    let sol = |name: i32, what: &'static str| {
        sys::get_int(fd, libc::SOL_SOCKET, name).map_err(sys_err(Step::SockOpt(what)))
    };
    let tcp = |name: i32, what: &'static str| {
        sys::get_int(fd, libc::IPPROTO_TCP, name).map_err(sys_err(Step::SockOpt(what)))
    };
    let timeval = |name: i32, what: &'static str| {
        sys::getsockopt::<libc::timeval>(fd, libc::SOL_SOCKET, name)
            .map(|t| (t.tv_sec, t.tv_usec))
            .map_err(sys_err(Step::SockOpt(what)))
    };
    let linger: libc::linger = sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER)
        .map_err(sys_err(Step::SockOpt("SO_LINGER")))?;
    let v6 = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(sys_err(Step::SocketKind))?
        == libc::AF_INET6;
    let tos = if v6 {
        sys::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            .map_err(sys_err(Step::SockOpt("IPV6_TCLASS")))?
    } else {
        sys::get_int(fd, libc::IPPROTO_IP, libc::IP_TOS)
            .map_err(sys_err(Step::SockOpt("IP_TOS")))?
    };
    Ok(SocketOptions {
        reuse_addr: sol(libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
        reuse_port: sol(libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
        keepalive: sol(libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        keepalive_params: (
            tcp(libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")?,
            tcp(libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")?,
            tcp(libc::TCP_KEEPCNT, "TCP_KEEPCNT")?,
        ),
        nodelay: tcp(libc::TCP_NODELAY, "TCP_NODELAY")? != 0,
        cork: tcp(libc::TCP_CORK, "TCP_CORK")? != 0,
        sndbuf: sol(libc::SO_SNDBUF, "SO_SNDBUF")?,
        rcvbuf: sol(libc::SO_RCVBUF, "SO_RCVBUF")?,
        linger: (linger.l_onoff != 0).then_some(linger.l_linger),
        user_timeout: tcp(libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT")? as u32,
        tos,
        mark: sol(libc::SO_MARK, "SO_MARK")? as u32,
        priority: sol(libc::SO_PRIORITY, "SO_PRIORITY")?,
        rcvtimeo: timeval(libc::SO_RCVTIMEO, "SO_RCVTIMEO")?,
        sndtimeo: timeval(libc::SO_SNDTIMEO, "SO_SNDTIMEO")?,
        notsent_lowat: tcp(libc::TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT")? as u32,
        congestion: {
            let name: [u8; 16] = sys::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION)
                .map_err(sys_err(Step::SockOpt("TCP_CONGESTION")))?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        },
        nonblocking: sys::get_fl(fd).map_err(sys_err(Step::Fcntl))? & libc::O_NONBLOCK != 0,
    })
}

fn select(fd: RawFd, q: Queue) -> Result<(), DumpError> {
    sys::set_int(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR_QUEUE, q as i32)
        .map_err(sys_err(Step::SelectQueue(q)))
}

fn queue_seq(fd: RawFd, q: Queue) -> Result<u32, DumpError> {
    sys::getsockopt::<u32>(fd, libc::IPPROTO_TCP, sys::TCP_QUEUE_SEQ)
        .map_err(sys_err(Step::QueueSeq(q)))
}

/// Everything read with repair on.
fn read_repaired(fd: RawFd, sockopts: SocketOptions) -> Result<TcpConnState, DumpError> {
    let local = sys::sock_addr(fd, true)
        .map_err(sys_err(Step::LocalAddr))?
        .ok_or(DumpError::NotTcp("no local address"))?;
    let remote = match sys::sock_addr(fd, false).map_err(sys_err(Step::PeerAddr))? {
        Some(a) => a,
        // getpeername answers ENOTCONN in SYN_SENT: the kernel's own table has the peer.
        None => sys::peer_from_proc(fd)
            .map_err(sys_err(Step::PeerAddr))?
            .ok_or(DumpError::Unsupported("unconnected"))?,
    };

    // The window first: its rcv_wup and snd_wl1 are then at most the rcv_nxt dumped below,
    // which the rebuild's TCP_REPAIR_WINDOW requires.
    let window = match sys::getsockopt::<[u32; 5]>(fd, libc::IPPROTO_TCP, sys::TCP_REPAIR_WINDOW) {
        Ok(w) => Some(RepairWindow {
            snd_wl1: w[0],
            snd_wnd: w[1],
            max_window: w[2],
            rcv_wnd: w[3],
            rcv_wup: w[4],
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => None,
        Err(e) => {
            return Err(DumpError::Sys {
                step: Step::RepairWindow,
                source: e,
            })
        }
    };

    // The receive side. Segments keep arriving in repair mode, so rcv_nxt, the unread count and
    // the state are read until two reads of rcv_nxt and of the state around the count agree
    // (a few system calls: this converges even under a flood). The app is paused, so nothing
    // moves copied_seq: the first `inq` bytes of the queue are then exactly the bytes before
    // that rcv_nxt, whatever arrives later. Later bytes are not dumped, and need not be: their
    // ACKs left after the gate's cut, so the peer sends them again to the rebuilt socket.
    select(fd, Queue::Recv)?;
    let mut stable = None;
    for attempt in 0..STABLE_TRIES {
        let head = info_head(fd).map_err(sys_err(Step::TcpInfo))?;
        let rcv_nxt = queue_seq(fd, Queue::Recv)?;
        let inq = sys::ioctl_int(fd, sys::SIOCINQ).map_err(sys_err(Step::QueueLen("SIOCINQ")))?;
        let again = queue_seq(fd, Queue::Recv)?;
        let head2 = info_head(fd).map_err(sys_err(Step::TcpInfo))?;
        if again == rcv_nxt && head2.state == head.state {
            stable = Some((head, rcv_nxt, inq));
            break;
        }
        debug!(
            fd,
            attempt, rcv_nxt, again, "receive side moved during the dump"
        );
    }
    let (head, rcv_nxt, inq) = stable.ok_or(DumpError::Unstable)?;
    let state = TcpState::from_kernel(head.state)
        .ok_or(DumpError::Unsupported(TcpState::kernel_name(head.state)))?;
    let recv_bytes = sys::peek(fd, inq as usize).map_err(sys_err(Step::PeekQueue(Queue::Recv)))?;
    if recv_bytes.len() != inq as usize {
        return Err(DumpError::QueueShrank {
            queue: Queue::Recv,
            got: recv_bytes.len(),
            want: inq as usize,
        });
    }

    // The send side: the app is paused and repair mode sends nothing, so write_seq is fixed;
    // ACKs may still arrive and move snd_una, so the peek itself says how much is unacked.
    let outq = sys::ioctl_int(fd, sys::SIOCOUTQ).map_err(sys_err(Step::QueueLen("SIOCOUTQ")))?;
    let unsq =
        sys::ioctl_int(fd, sys::SIOCOUTQNSD).map_err(sys_err(Step::QueueLen("SIOCOUTQNSD")))?;
    select(fd, Queue::Send)?;
    let write_seq = queue_seq(fd, Queue::Send)?;
    let send_bytes =
        sys::peek(fd, outq as usize + 1).map_err(sys_err(Step::PeekQueue(Queue::Send)))?;
    select(fd, Queue::None)?;
    if send_bytes.len() > outq as usize {
        return Err(DumpError::QueueGrew {
            queue: Queue::Send,
            got: send_bytes.len(),
            max: outq as usize,
        });
    }
    // SIOCOUTQNSD counts a queued, unsent FIN as one byte (and only then is it non-zero with
    // no data unsent); a sent FIN is in no unsent count.
    let fin_unsent = state.fin_sent_by_us() && !state.our_fin_acked() && unsq > 0;
    let unsent_data = (unsq - u32::from(fin_unsent)).min(send_bytes.len() as u32);

    let mss = sys::get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .map_err(sys_err(Step::SockOpt("TCP_MAXSEG")))? as u32;
    let timestamp = if head.options & sys::TCPI_OPT_TIMESTAMPS != 0 {
        Some(
            sys::getsockopt::<u32>(fd, libc::IPPROTO_TCP, sys::TCP_TIMESTAMP)
                .map_err(sys_err(Step::Timestamp))?,
        )
    } else {
        None
    };
    let options = NegotiatedOptions {
        mss,
        sack: head.options & sys::TCPI_OPT_SACK != 0,
        window_scale: (head.options & sys::TCPI_OPT_WSCALE != 0)
            .then_some((head.snd_wscale, head.rcv_wscale)),
        timestamp,
    };
    Ok(TcpConnState {
        local,
        remote,
        state,
        send: SendQueue {
            seq: write_seq.wrapping_sub(u32::from(state.fin_sent_by_us())),
            bytes: send_bytes,
            unsent: unsent_data,
            fin_unsent,
        },
        recv: RecvQueue {
            seq: rcv_nxt.wrapping_sub(u32::from(state.fin_received())),
            bytes: recv_bytes,
        },
        window,
        options,
        sockopts,
    })
}
