//! Output commit for sockets the app owns (issue 3, DESIGN §4): the output log, a ring in the
//! staging memfd past [`crate::STAGING_SIZE`] (additive: a memfd shorter than [`NETLOG_END`]
//! has no log, and such a shim sends no [`crate::MsgKind::NetFd`]).
//!
//! ```text
//! +------------------+ NETLOG_OFF (page aligned, after the staging area)
//! | NetLogHeader     |   head/tail positions, futex words
//! +------------------+ NETLOG_ERRORS_OFF
//! | [u64; MAX_NET_FDS] | deferred errors per app fd: (conn << 32) | errno
//! +------------------+ NETLOG_DATA_OFF
//! | ring             |   NETLOG_CAPACITY bytes of [`NetEntry`] records
//! +------------------+ NETLOG_END
//! ```
//!
//! The shim appends records at `head` (a byte position that only grows; the offset in the ring
//! is `pos % NETLOG_CAPACITY`) and publishes the new head with release ordering. A record never
//! wraps: when fewer than [`NET_ENTRY_HDR`] bytes are left before the end of the ring both
//! sides skip to the start; when more are left but not enough for the record, the shim writes a
//! [`NE_PAD`] record covering the rest. The controller consumes records from `tail` whose
//! `epoch` is committed (all of them once protection stopped), advances `tail` (release), bumps
//! `space_futex` and wakes it (shared futex). Records are 8-byte aligned.

use crate::{PAGE_SIZE, STAGING_SIZE};

pub const NETLOG_MAGIC: u64 = u64::from_le_bytes(*b"REMUSNET");

/// Descriptors the shim tracks (fds at or above this pass straight through).
pub const MAX_NET_FDS: usize = 4096;
/// Data bytes the ring holds (backpressure beyond that).
pub const NETLOG_CAPACITY: usize = 32 << 20;
/// The most data bytes in one record (a datagram must fit in one).
pub const NET_ENTRY_MAX_DATA: usize = 256 << 10;
/// Size of a [`NetEntry`] header.
pub const NET_ENTRY_HDR: usize = core::mem::size_of::<NetEntry>();

pub const NETLOG_OFF: usize = STAGING_SIZE.div_ceil(PAGE_SIZE) * PAGE_SIZE;
pub const NETLOG_ERRORS_OFF: usize = NETLOG_OFF + PAGE_SIZE;
pub const NETLOG_DATA_OFF: usize = NETLOG_ERRORS_OFF + MAX_NET_FDS * 8;
pub const NETLOG_END: usize = NETLOG_DATA_OFF + NETLOG_CAPACITY;

const _: () = assert!(core::mem::size_of::<NetLogHeader>() <= PAGE_SIZE);
const _: () = assert!(NET_ENTRY_HDR.is_multiple_of(8));
const _: () = assert!(NETLOG_DATA_OFF.is_multiple_of(PAGE_SIZE));

/// The log's header. Every field is accessed atomically by both sides (the shim writes
/// `magic`, `head`, `requested`; the controller writes `tail`, `space_futex`, `kick_futex`).
#[repr(C)]
pub struct NetLogHeader {
    /// [`NETLOG_MAGIC`] once the shim set the log up.
    pub magic: u64,
    /// Bytes appended (shim).
    pub head: u64,
    /// Bytes consumed (controller).
    pub tail: u64,
    /// Bumped by the controller after `tail` moved (shim waits for room on it).
    pub space_futex: u32,
    /// Bumped by the controller once it has handled an [`crate::MsgKind::Idle`] request
    /// (signalled the epoch, or found it cannot yet): the shim waits on it, briefly.
    pub kick_futex: u32,
    /// Data bytes appended (shim), for statistics.
    pub appended_bytes: u64,
}

/// Kinds of [`NetEntry`].
pub const NE_DATA: u16 = 1;
/// `shutdown(fd, flags)` after the data before it.
pub const NE_SHUTDOWN: u16 = 2;
/// The app closed its descriptor: the controller closes its duplicate after the data.
pub const NE_CLOSE: u16 = 3;
/// Filler up to the end of the ring.
pub const NE_PAD: u16 = 4;

/// One record of the log: header, then `addr_len` bytes of destination address (datagrams
/// sent with an address), then `data_len` bytes, then padding to a multiple of 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEntry {
    /// Bytes of the whole record, header included (a multiple of 8).
    pub size: u32,
    pub kind: u16,
    /// [`NE_DATA`]: the `send` flags to use (`MSG_OOB`, `MSG_MORE`, `MSG_EOR`);
    /// [`NE_SHUTDOWN`]: `how`.
    pub flags: u16,
    /// The connection: the number the shim gave the socket in its [`crate::MsgKind::NetFd`].
    pub conn: u32,
    pub addr_len: u32,
    /// The epoch whose checkpoint includes the state that produced this record.
    pub epoch: u64,
    pub data_len: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC when the app made the call (commit latency).
    pub t_ns: u64,
}

impl NetEntry {
    /// The record size for `addr_len` + `data_len` bytes.
    pub const fn record_size(addr_len: usize, data_len: usize) -> usize {
        (NET_ENTRY_HDR + addr_len + data_len).div_ceil(8) * 8
    }
}

/// Where in the ring a record starting at byte position `pos` goes: the offset, and the
/// position once skipped past a tail too short for a header.
pub const fn place(pos: u64) -> (usize, u64) {
    let off = (pos % NETLOG_CAPACITY as u64) as usize;
    if NETLOG_CAPACITY - off < NET_ENTRY_HDR {
        (0, pos + (NETLOG_CAPACITY - off) as u64)
    } else {
        (off, pos)
    }
}

/// A deferred error word: the connection it belongs to and the errno.
pub const fn error_word(conn: u32, errno: i32) -> u64 {
    ((conn as u64) << 32) | (errno as u32 as u64)
}
