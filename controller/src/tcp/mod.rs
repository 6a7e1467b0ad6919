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
//!
//! # What the caller must guarantee (found on real connections, `tests/tcp_repair.rs`)
//!
//! - **The gate cuts the epoch before the dump.** The kernel sends on its own while the app is
//!   paused (seen in the tests: one new data segment after the dump, from a tail-loss probe or
//!   a window the peer opened). A segment sent after the dump and released
//!   to the peer leaves the peer acknowledging past the rebuilt socket's `snd_nxt`: it answers
//!   with challenge ACKs and the connection is stuck. Packets sent after the cut belong to the
//!   next epoch and are never released at a failover to this one, so cutting first is safe;
//!   it also lets [`dump`] leave out bytes that arrive during it (their ACKs are held, the peer
//!   sends them again).
//! - **A route to the peer exists when [`rebuild`] runs.** `connect` in repair mode sends
//!   nothing but still looks up the route: without one (the standby's interface has no address
//!   on the client's network until the service address comes up) it fails with ENETUNREACH.
//!   The standby host's own address on that network is enough.
//! - **[`rebuild`] and [`Repairing::finish`] run in the socket's network namespace** (the
//!   injected segments go out of the calling thread's namespace).
//!
//! # Connections being set up
//!
//! `SYN_SENT` (the app's `connect` got no answer yet): dumped (the peer from the kernel's table,
//! `getpeername` refuses) and rebuilt by connecting again with the same initial sequence
//! number, which the peer takes for a retransmitted SYN. `SYN_RECV`: no descriptor exists (a
//! request socket in a listener's queue); its client retransmits the SYN if the gate held the
//! SYN-ACK, else gets a RST from the restored listener (DESIGN §9). A socket already `CLOSE`d by
//! a RST or both FINs is [`DumpError::Unsupported`]: restore it as a closed peer, as today.
//!
//! # Wiring into the epoch
//!
//! Built as planned below (`primary::conns`, `restore::net`, `tests/connections.rs`), with two
//! differences: the shim answers `TcpHeld` (or `TcpDumpLate`) so that remusd knows the dump
//! was held before it commits the epoch, and the duplicate is taken at every epoch instead of
//! cached (a kept duplicate would delay the FIN of a socket the program closed by an epoch).
//! A late dump stops protection (the epoch's pages are already out of the tracker, so it
//! cannot simply be retried).
//!
//! The shim captures the app in its epoch handler and returns without waiting for remusd, but a
//! dump needs the app held while remusd reads (repair mode breaks the app's own calls, and a
//! byte the app reads between the capture and the dump would be in neither). The smallest
//! change, additive to the ABI:
//!
//! 1. remusd sets a `tcp_hold` word in the staging header when it runs with a service address.
//! 2. The shim, in the handler, after sending the last `EpochChunk` of epoch k, and only when
//!    `tcp_hold` is set and the descriptor table it just wrote has a connected TCP socket,
//!    waits (all threads are already held in the handler) for a new controller -> shim message
//!    `TcpDumped { a = k }`, with the thread-rendezvous deadline; on timeout it goes on and
//!    says `ThreadStuck`-like `TcpDumpLate { a = k }`, and remusd abandons epoch k.
//! 3. remusd, on that last chunk (the gate has already cut epoch k when remusd sent the epoch
//!    signal): for each socket record that is TCP and connected, a duplicate by [`dup_from`]
//!    (cached per descriptor and inode, so only new sockets cost a `pidfd_getfd`), [`dump`],
//!    and the states go into `EpochMeta` as `tcp: Vec<(fd, TcpConnState)>` (serde default:
//!    older images read as none); then `TcpDumped { a = k }`.
//! 4. Restore (`restore/fds.rs`): each such descriptor is [`rebuild`]t in the app's namespace
//!    and installed at its number; the service address comes up with a gratuitous ARP
//!    (`controller/src/net/`); every [`Repairing::finish`]; then the app resumes.
//!
//! Cost: one round trip on the shim socket per epoch plus the dumps (measured here: about
//! 15 µs per idle connection, 16 µs with 64 KB queued, a few ms with megabytes), inside the
//! pause only for programs with connections.

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
