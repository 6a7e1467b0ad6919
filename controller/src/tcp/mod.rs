//! TCP connection state, dumped and rebuilt with `TCP_REPAIR` (DESIGN §9, issue 12).
//!
//! - [`dump`] reads one connection through remusd's own duplicate of the app's socket
//!   (`pidfd_getfd`, [`dup_from`], or one the shim passed), meant to run while the app is
//!   paused: while repair mode is on, the app's `recv` fails and its `send` would land in the
//!   selected queue. It turns repair on, reads, selects no queue, turns repair off and puts
//!   `SO_REUSEADDR` back (repair on/off rewrites it).
//! - [`rebuild`] makes a socket in repair mode with the dumped state, in DESIGN §9's order,
//!   while the service address is not up yet (so nothing this side sends can reach the peer
//!   and no RST can be provoked); it returns a [`Repairing`]. The caller brings the service
//!   address up (with a gratuitous ARP), then [`Repairing::finish`] replays the FINs that need
//!   a packet from the peer, turns repair off (a window probe goes out) and writes the unsent
//!   tail normally.
//! - [`dump_udp`] / [`rebuild_udp`]: a UDP socket's bound and connected addresses.
//!
//! Half-closed connections follow CRIU's soccr: our own FIN is put back with `shutdown` (in
//! repair mode with the send queue selected when it had been sent, so it counts as sent; after
//! the unsent tail otherwise), the peer's FIN by injecting a FIN segment from the peer's
//! address into the rebuilt socket through a raw socket ([`inject`]), and an acknowledged FIN
//! of ours by injecting the peer's ACK. Both injections need the service address to be local,
//! which is why they happen in [`Repairing::finish`]. Injection is IPv4 only.
//!
//! Everything here needs `CAP_NET_ADMIN`; its absence is [`DumpError::MissingCapability`] /
//! [`RebuildError::MissingCapability`], never a half-made socket.

mod dump;
pub mod inject;
mod rebuild;
pub mod state;
mod sys;
mod udp;

pub use dump::{dump, DumpError};
pub use rebuild::{rebuild, FinishError, RebuildError, Repairing};
pub use state::{
    NegotiatedOptions, RecvQueue, RepairWindow, SendQueue, SocketOptions, TcpConnState, TcpState,
    UdpSockState,
};
pub use sys::{dup_from, Step};
pub use udp::{dump_udp, rebuild_udp, UdpError};

#[cfg(test)]
mod tests;
