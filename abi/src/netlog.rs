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
    place_in(NETLOG_CAPACITY, pos)
}

/// [`place`] in a ring of `cap` bytes (a multiple of 8; tests use small rings).
pub const fn place_in(cap: usize, pos: u64) -> (usize, u64) {
    let off = (pos % cap as u64) as usize;
    if cap - off < NET_ENTRY_HDR {
        (0, pos + (cap - off) as u64)
    } else {
        (off, pos)
    }
}

/// Room for one record of `need` bytes ([`NetEntry::record_size`]), as the writer finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Byte position of the record.
    pub pos: u64,
    /// Its offset in the ring.
    pub off: usize,
    /// A [`NE_PAD`] record to write first: (offset, size).
    pub pad: Option<(usize, usize)>,
    /// The head once the record is published.
    pub next_head: u64,
}

/// Where the writer puts the next record of `need` bytes, with the ring at `head` (appended)
/// and `tail` (consumed): `None` when it is too full. A record never wraps: a tail too short
/// for a header is skipped by both sides ([`place_in`]), a longer one that is too short for the
/// record is covered by a pad record.
pub const fn reserve_in(cap: usize, head: u64, tail: u64, need: usize) -> Option<Reservation> {
    if need > cap {
        return None;
    }
    let (off, pos) = place_in(cap, head);
    let r = if cap - off < need {
        let skip = cap - off;
        let at = pos + skip as u64;
        Reservation {
            pos: at,
            off: 0,
            pad: Some((off, skip)),
            next_head: at + need as u64,
        }
    } else {
        Reservation {
            pos,
            off,
            pad: None,
            next_head: pos + need as u64,
        }
    };
    if r.next_head.wrapping_sub(tail) <= cap as u64 {
        Some(r)
    } else {
        None
    }
}

/// [`reserve_in`] for the real ring.
pub const fn reserve(head: u64, tail: u64, need: usize) -> Option<Reservation> {
    reserve_in(NETLOG_CAPACITY, head, tail, need)
}

/// Whether `e`, read at offset `off` of a ring of `cap` bytes, is a well-formed record (the
/// reader's check: a torn or foreign record stops the log rather than send garbage).
pub const fn record_ok(cap: usize, off: usize, e: &NetEntry) -> bool {
    let size = e.size as usize;
    let body = e.addr_len as usize + e.data_len as usize;
    size >= NET_ENTRY_HDR
        && size.is_multiple_of(8)
        && size <= cap - off
        && (e.kind == NE_PAD || NetEntry::record_size(0, body) == size)
}

/// A deferred error word: the connection it belongs to and the errno.
pub const fn error_word(conn: u32, errno: i32) -> u64 {
    ((conn as u64) << 32) | (errno as u32 as u64)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A ring of `cap` bytes with the writer's and the reader's logic, as the shim and remusd
    /// run them (records of `sizes` data bytes appended; the reader consumes when told).
    struct Model {
        cap: usize,
        ring: Vec<u8>,
        head: u64,
        tail: u64,
        next_id: u32,
    }

    impl Model {
        fn new(cap: usize) -> Model {
            Model {
                cap,
                ring: std::vec![0; cap],
                head: 0,
                tail: 0,
                next_id: 1,
            }
        }
        fn put(&mut self, off: usize, e: &NetEntry) {
            // SAFETY: off + NET_ENTRY_HDR <= cap (reserve and place guarantee it), in `ring`.
            unsafe {
                core::ptr::write_unaligned(self.ring.as_mut_ptr().add(off) as *mut NetEntry, *e)
            };
        }
        fn get(&self, off: usize) -> NetEntry {
            // SAFETY: as in `put`.
            unsafe { core::ptr::read_unaligned(self.ring.as_ptr().add(off) as *const NetEntry) }
        }
        /// Appends a record of `len` data bytes (each byte its id's low byte); false if full.
        fn append(&mut self, len: usize) -> bool {
            let need = NetEntry::record_size(0, len);
            let Some(r) = reserve_in(self.cap, self.head, self.tail, need) else {
                return false;
            };
            assert!(r.off + need <= self.cap, "a record never wraps");
            if let Some((off, size)) = r.pad {
                assert_eq!(off + size, self.cap, "a pad covers the rest of the ring");
                self.put(
                    off,
                    &NetEntry {
                        size: size as u32,
                        kind: NE_PAD,
                        ..NetEntry::default()
                    },
                );
            }
            let id = self.next_id;
            self.next_id += 1;
            for b in &mut self.ring[r.off + NET_ENTRY_HDR..r.off + NET_ENTRY_HDR + len] {
                *b = id as u8;
            }
            self.put(
                r.off,
                &NetEntry {
                    size: need as u32,
                    kind: NE_DATA,
                    conn: id,
                    data_len: len as u32,
                    ..NetEntry::default()
                },
            );
            self.head = r.next_head;
            true
        }
        /// Consumes up to `n` data records; returns their (id, len).
        fn consume(&mut self, n: usize) -> Vec<(u32, usize)> {
            let mut out = Vec::new();
            while self.tail < self.head && out.len() < n {
                let (off, pos) = place_in(self.cap, self.tail);
                if pos != self.tail {
                    self.tail = pos;
                    continue;
                }
                let e = self.get(off);
                assert!(
                    record_ok(self.cap, off, &e),
                    "a well-formed record at {off}: {e:?}"
                );
                if e.kind == NE_DATA {
                    let data =
                        &self.ring[off + NET_ENTRY_HDR..off + NET_ENTRY_HDR + e.data_len as usize];
                    assert!(
                        data.iter().all(|&b| b == e.conn as u8),
                        "record {} intact",
                        e.conn
                    );
                    out.push((e.conn, e.data_len as usize));
                }
                self.tail += e.size as u64;
            }
            out
        }
    }

    /// A small deterministic generator (no dependency): xorshift.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn every_record_comes_out_once_in_order_whatever_the_sizes() {
        for cap in [256usize, 264, 1000, 4096] {
            let cap = cap / 8 * 8;
            let mut seed = 0x9e37_79b9_7f4a_7c15 ^ cap as u64;
            let mut m = Model::new(cap);
            let (mut sent, mut got) = (Vec::new(), Vec::new());
            for _ in 0..20_000 {
                let r = rng(&mut seed);
                if r.is_multiple_of(3) {
                    got.extend(m.consume((r >> 8) as usize % 4 + 1));
                } else {
                    let len = (r >> 16) as usize % (cap / 2);
                    let id = m.next_id;
                    if m.append(len) {
                        sent.push((id, len));
                    }
                }
                assert!(
                    m.head - m.tail <= cap as u64,
                    "never more than the ring holds"
                );
            }
            got.extend(m.consume(usize::MAX));
            assert_eq!(got, sent, "cap {cap}");
            assert!(sent.len() > 1000, "the test exercised the ring (cap {cap})");
        }
    }

    #[test]
    fn a_full_ring_refuses_and_a_record_larger_than_the_ring_never_fits() {
        let mut m = Model::new(256);
        assert!(!m.append(256), "larger than the ring");
        let mut n = 0;
        while m.append(8) {
            n += 1;
        }
        assert_eq!(n, 256 / NetEntry::record_size(0, 8));
        assert_eq!(m.consume(1).len(), 1);
        assert!(m.append(8), "room again after one record was consumed");
    }

    #[test]
    fn a_torn_record_is_not_ok() {
        let e = NetEntry {
            size: 12,
            kind: NE_DATA,
            data_len: 4,
            ..NetEntry::default()
        };
        assert!(!record_ok(4096, 0, &e), "size not a multiple of 8");
        let e = NetEntry {
            size: 4096,
            kind: NE_DATA,
            data_len: 8,
            ..NetEntry::default()
        };
        assert!(!record_ok(4096, 8, &e), "runs past the end");
        let e = NetEntry {
            size: NetEntry::record_size(0, 8) as u32,
            kind: NE_DATA,
            data_len: 8,
            ..NetEntry::default()
        };
        assert!(record_ok(4096, 0, &e));
    }
}
