//! The program's connections, dumped in the pause (`--service-addr`, DESIGN §9, issue 12).
//!
//! With a service address the shim holds the program in its epoch handler after the last
//! chunk of an epoch whose descriptor table has a connected TCP socket
//! (`remus_abi::TCP_HOLD_OFF`). remusd reads each such socket with `TCP_REPAIR`
//! ([`crate::tcp::dump`]) through a duplicate it takes with `pidfd_getfd`
//! ([`crate::tcp::dup_from`]), puts the states in the epoch's [`EpochMeta::tcp`], and says
//! `TcpDumped`; the shim answers `TcpHeld` (or `TcpDumpLate`, past its deadline) and the
//! program goes on. The packet gate cut the epoch when remusd sent the epoch signal (the tag
//! moves before the signal, `Primary::signal_epoch`): whatever the kernel sends on these
//! sockets after the checkpoint is tagged with the next epoch and never released for this
//! one, so the peer cannot have acknowledged past the dumped `snd_nxt` at a failover.
//!
//! The duplicate is taken again at every epoch and closed right after the dump, not kept: a
//! kept duplicate would keep a socket the program closed open (its FIN would leave only when
//! remusd notices the close at the next epoch). `pidfd_getfd` costs about a microsecond.

use std::collections::BTreeMap;

use crate::image::{EpochMeta, KernelObject, SocketInfo};
use crate::tcp::{self, DumpError, TcpConnState};

/// Whether the descriptor's socket is one the shim holds the epoch for: a connected
/// (`getpeername` answered), non-listening TCP socket over IPv4 or IPv6. The same test as the
/// shim's `epoch::kobj::has_connected_tcp`, on the same records.
pub fn is_connected_tcp(s: &SocketInfo) -> bool {
    (s.family == libc::AF_INET || s.family == libc::AF_INET6)
        && s.sock_type == libc::SOCK_STREAM
        && s.peer.is_some()
        && !s.listening
}

/// The connected TCP sockets of an epoch, by descriptor number.
pub fn connected_tcp(kobjs: &BTreeMap<i32, KernelObject>) -> Vec<i32> {
    kobjs
        .iter()
        .filter_map(|(fd, o)| match o {
            KernelObject::Socket(s) if is_connected_tcp(s) => Some(*fd),
            _ => None,
        })
        .collect()
}

/// Whether the shim holds this epoch for a dump.
pub fn held_for_dump(meta: &EpochMeta) -> bool {
    !connected_tcp(&meta.kobjs).is_empty()
}

/// A dump that failed in a way that leaves the epoch without a consistent connection state.
#[derive(Debug, thiserror::Error)]
pub enum ConnDumpError {
    #[error("taking a duplicate of the program's fd {fd} ({step}): {source}")]
    Dup {
        fd: i32,
        step: tcp::Step,
        #[source]
        source: std::io::Error,
    },
    #[error("dumping the connection on the program's fd {fd}: {source}")]
    Dump {
        fd: i32,
        #[source]
        source: DumpError,
    },
}

/// What one epoch's dump found.
#[derive(Debug, Default)]
pub struct Dumped {
    pub conns: Vec<(i32, TcpConnState)>,
    /// Descriptors whose socket is in a state that is not dumped (closed by a RST or both
    /// FINs): they come back closed by the peer, as without a service address.
    pub skipped: Vec<(i32, &'static str)>,
}

/// Dumps every connected TCP socket of the epoch `meta` describes, reading the program `pid`'s
/// descriptors (the program is held in its epoch handler).
pub fn dump_all(pid: i32, meta: &EpochMeta) -> Result<Dumped, ConnDumpError> {
    let mut out = Dumped::default();
    for fd in connected_tcp(&meta.kobjs) {
        let dup = tcp::dup_from(pid, fd).map_err(|(step, source)| ConnDumpError::Dup {
            fd,
            step,
            source,
        })?;
        match tcp::dump(&dup) {
            Ok(st) => out.conns.push((fd, st)),
            Err(DumpError::Unsupported(state)) => out.skipped.push((fd, state)),
            Err(source) => return Err(ConnDumpError::Dump { fd, source }),
        }
    }
    Ok(out)
}
