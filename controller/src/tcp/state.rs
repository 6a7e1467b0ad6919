//! What a dump holds: plain serde types, no descriptors, no kernel pointers.
//!
//! Sequence numbers are normalised so that a FIN never counts: `send.seq` is the sequence
//! number just after the last *data* byte the app wrote (the kernel's `write_seq`, less one
//! when our FIN is queued), `recv.seq` the one just after the last data byte received
//! (`rcv_nxt`, less one when the peer's FIN was received). Which FINs exist is a function of
//! [`TcpState`] alone (see its methods), so the image never carries a second, possibly
//! contradicting, description of them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The states a dumped connection can be in (the kernel's `TCP_*` numbers in `tcp_states.h`).
///
/// `SYN_RECV` is absent on purpose: such a connection is a request socket in a listener's
/// accept queue, not a descriptor the app holds, so there is nothing to dump (DESIGN §9: its
/// client gets a RST at failover, or retransmits its SYN if the gate held the SYN-ACK).
/// `TIME_WAIT` and `CLOSE` are absent too: a socket the app still holds leaves `FIN_WAIT2` for
/// `CLOSE` (the time-wait part is a separate kernel object no descriptor refers to), and a
/// closed socket carries no connection state; [`super::DumpError::Unsupported`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TcpState {
    Established,
    /// Our `connect` sent a SYN and no answer came yet. Rebuilt by connecting again from the
    /// same local address with the same initial sequence number (CRIU's way): the new SYN is
    /// a retransmission of the old one as far as the peer can tell.
    SynSent,
    /// We shut down writing; our FIN is queued or sent, not acknowledged.
    FinWait1,
    /// Our FIN was acknowledged; the peer may still send.
    FinWait2,
    /// The peer's FIN was received; we may still send.
    CloseWait,
    /// Both FINs; ours (sent after the peer's) is not acknowledged yet.
    LastAck,
    /// Both FINs crossed; ours is not acknowledged yet.
    Closing,
}

impl TcpState {
    /// From the kernel's state number (`tcpi_state`); None for the states a descriptor cannot
    /// be dumped in (`LISTEN`, `SYN_RECV`, `TIME_WAIT`, `CLOSE`, unknown).
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        Some(match n {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            11 => TcpState::Closing,
            _ => return None,
        })
    }

    /// The kernel's name for state number `n`, for error messages.
    pub fn kernel_name(n: u8) -> &'static str {
        match n {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            7 => "CLOSE",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            _ => "unknown",
        }
    }

    /// Our FIN is in the send sequence space (queued, sent, or acknowledged).
    pub fn fin_sent_by_us(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::LastAck | TcpState::Closing
        )
    }

    /// The peer acknowledged our FIN.
    pub fn our_fin_acked(self) -> bool {
        self == TcpState::FinWait2
    }

    /// The peer's FIN was received (and acknowledged by us).
    pub fn fin_received(self) -> bool {
        matches!(
            self,
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
        )
    }
}

/// The send side: what the app wrote and the peer has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendQueue {
    /// The sequence number after the last data byte (FIN not counted).
    pub seq: u32,
    /// Unacknowledged bytes, oldest first: the already-sent part then the unsent tail.
    #[serde(with = "serde_bytes_vec")]
    pub bytes: Vec<u8>,
    /// How many of `bytes`, at the end, were never sent (`SIOCOUTQNSD`, FIN not counted).
    pub unsent: u32,
    /// Our FIN was queued but not yet sent (only in [`TcpState::FinWait1`]).
    pub fin_unsent: bool,
}

impl SendQueue {
    /// The already-sent, unacknowledged part: restored in repair mode.
    pub fn sent_part(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - self.unsent as usize]
    }
    /// The unsent tail: written normally once repair mode is off.
    pub fn unsent_part(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - self.unsent as usize..]
    }
}

/// The receive side: bytes the kernel acknowledged and the app has not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecvQueue {
    /// The sequence number after the last data byte received (FIN not counted).
    pub seq: u32,
    #[serde(with = "serde_bytes_vec")]
    pub bytes: Vec<u8>,
}

/// `TCP_REPAIR_WINDOW` (`struct tcp_repair_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// The options negotiated in the handshake (`TCP_INFO`'s `tcpi_options`, `TCP_MAXSEG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiatedOptions {
    /// The MSS clamp (`TCP_MAXSEG`).
    pub mss: u32,
    pub sack: bool,
    /// (send shift, receive shift), when window scaling was negotiated.
    pub window_scale: Option<(u8, u8)>,
    /// `TCP_TIMESTAMP` (our clock plus its offset) when timestamps were negotiated: the
    /// rebuilt socket's clock continues from it, so the peer's PAWS check keeps passing.
    pub timestamp: Option<u32>,
}

/// Socket options an app commonly sets, read back and set again on the rebuilt socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOptions {
    /// Read before repair mode is turned on (turning it on and off changes it).
    pub reuse_addr: bool,
    pub reuse_port: bool,
    pub keepalive: bool,
    /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT` (seconds, seconds, count).
    pub keepalive_params: (i32, i32, i32),
    pub nodelay: bool,
    pub cork: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` as `getsockopt` reports them (twice what was asked).
    pub sndbuf: i32,
    pub rcvbuf: i32,
    /// `SO_LINGER`: Some(seconds) when on.
    pub linger: Option<i32>,
    /// `TCP_USER_TIMEOUT` in ms (0: the default).
    pub user_timeout: u32,
    /// `IP_TOS` (IPv4) or `IPV6_TCLASS` (IPv6).
    pub tos: i32,
    pub mark: u32,
    pub priority: i32,
    /// `SO_RCVTIMEO` and `SO_SNDTIMEO` as (seconds, microseconds); (0, 0) is none.
    pub rcvtimeo: (i64, i64),
    pub sndtimeo: (i64, i64),
    /// `TCP_NOTSENT_LOWAT` (0: unset).
    pub notsent_lowat: u32,
    /// `TCP_CONGESTION`: the algorithm's kernel name (`cubic`, `bbr`, ...).
    pub congestion: String,
    /// The descriptor's `O_NONBLOCK` (a property of the open file, shared by duplicates).
    pub nonblocking: bool,
}

/// One TCP connection as `TCP_REPAIR` exposes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnState {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub send: SendQueue,
    pub recv: RecvQueue,
    /// None only on a kernel without `TCP_REPAIR_WINDOW` (before 4.8).
    pub window: Option<RepairWindow>,
    pub options: NegotiatedOptions,
    pub sockopts: SocketOptions,
}

/// A UDP socket: its addresses and common options (datagrams in flight are not kept: UDP
/// promises nothing about them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSockState {
    /// None when the socket was never bound (nor used to send).
    pub local: Option<SocketAddr>,
    /// Some when the socket is connected.
    pub remote: Option<SocketAddr>,
    pub reuse_addr: bool,
    pub reuse_port: bool,
    pub broadcast: bool,
    pub sndbuf: i32,
    pub rcvbuf: i32,
    pub nonblocking: bool,
}

/// Byte vectors as one serde `bytes` value instead of a sequence of numbers (MessagePack
/// then stores them as one bin field; a multi-megabyte queue stays compact).
mod serde_bytes_vec {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
