//! Kernel objects behind the app's descriptors (issue 3): sockets, pipes with their unread
//! bytes, epoll registrations, eventfd, timerfd, signalfd. An additive section of the staging
//! area, appended after the page data (the layout before [`KOBJ_OFF`] is unchanged):
//!
//! ```text
//! +------------------+ KOBJ_OFF (= the old end of staging)
//! | KobjHeader       |   counts
//! +------------------+ KOBJS_OFF
//! | [KobjRecord]     |   one per descriptor that has a kernel object worth describing
//! +------------------+ EPOLL_OFF
//! | [EpollReg]       |   every registration of every epoll instance, from its fdinfo
//! +------------------+ PIPE_DATA_OFF
//! | bytes            |   unread pipe contents (copied with tee(), not consumed)
//! +------------------+ STAGING_SIZE
//! ```
//!
//! Valid in the last chunk of an epoch only, like the descriptor table.

use crate::PAGE_SIZE;

pub const KOBJ_MAGIC: u64 = u64::from_le_bytes(*b"REMUSKOB");

pub const MAX_KOBJS: usize = 1024;
pub const MAX_EPOLL_REGS: usize = 16384;
/// Unread pipe bytes per epoch, all pipes together.
pub const PIPE_DATA_MAX: usize = 4 << 20;
pub const SOCKADDR_MAX: usize = 128;
pub const KOBJ_WHAT_MAX: usize = 64;

pub const KOBJ_OFF: usize = crate::DATA_OFF + crate::CHUNK_PAGES * PAGE_SIZE;
pub const KOBJS_OFF: usize = KOBJ_OFF + PAGE_SIZE;
pub const EPOLL_OFF: usize = KOBJS_OFF + MAX_KOBJS * core::mem::size_of::<KobjRecord>();
pub const PIPE_DATA_OFF: usize =
    (EPOLL_OFF + MAX_EPOLL_REGS * core::mem::size_of::<EpollReg>()).div_ceil(PAGE_SIZE) * PAGE_SIZE;
pub const KOBJ_END: usize = PIPE_DATA_OFF + PIPE_DATA_MAX;

const _: () = assert!(core::mem::size_of::<KobjHeader>() <= PAGE_SIZE);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KobjHeader {
    /// [`KOBJ_MAGIC`] when the section was written for `epoch`.
    pub magic: u64,
    pub epoch: u64,
    pub n_objs: u32,
    pub n_epoll: u32,
    pub pipe_bytes: u32,
    pub _pad: u32,
}

/// What a [`KobjRecord`] describes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KobjKind {
    Socket = 1,
    Pipe = 2,
    Epoll = 3,
    EventFd = 4,
    TimerFd = 5,
    SignalFd = 6,
    /// Something the standby cannot recreate; `what` names it.
    Unsupported = 7,
}

impl KobjKind {
    pub fn from_u32(v: u32) -> Option<KobjKind> {
        Some(match v {
            1 => KobjKind::Socket,
            2 => KobjKind::Pipe,
            3 => KobjKind::Epoll,
            4 => KobjKind::EventFd,
            5 => KobjKind::TimerFd,
            6 => KobjKind::SignalFd,
            7 => KobjKind::Unsupported,
            _ => return None,
        })
    }
}

/// Socket: `SO_ACCEPTCONN`.
pub const KF_LISTENING: u32 = 1;
pub const KF_REUSEADDR: u32 = 2;
pub const KF_REUSEPORT: u32 = 4;
pub const KF_V6ONLY: u32 = 8;
/// Socket: `getpeername` succeeded.
pub const KF_CONNECTED: u32 = 16;
/// Pipe: the unread bytes did not fit [`PIPE_DATA_MAX`] (or could not be read); `data_len`
/// holds what was copied.
pub const KF_TRUNCATED: u32 = 32;
/// eventfd: `EFD_SEMAPHORE`.
pub const KF_SEMAPHORE: u32 = 64;

/// One descriptor's kernel object. Fields not used by `kind` are zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KobjRecord {
    pub fd: i32,
    /// [`KobjKind`] as u32.
    pub kind: u32,
    /// `KF_*` bits.
    pub flags: u32,
    // Socket: SO_DOMAIN, SO_TYPE, SO_PROTOCOL, the backlog given to listen() (0: unknown).
    pub family: i32,
    pub sock_type: i32,
    pub protocol: i32,
    pub backlog: i32,
    pub addr_len: u32,
    pub peer_len: u32,
    pub _pad0: u32,
    /// `getsockname`, `getpeername` (raw `struct sockaddr_*`).
    pub addr: [u8; SOCKADDR_MAX],
    pub peer: [u8; SOCKADDR_MAX],
    /// Pipe: inode (the two ends of one pipe share it); `F_GETPIPE_SZ`.
    pub ino: u64,
    pub pipe_size: u32,
    /// Pipe: offset and length of its unread bytes in the pipe data area (only on the first
    /// record of each inode). Epoll: index and count of its registrations in [`EpollReg`]s.
    pub data_off: u32,
    pub data_len: u32,
    pub _pad1: u32,
    /// eventfd: counter. timerfd: expirations not yet read (`ticks`).
    pub count: u64,
    /// timerfd: clock id, and the setting from `timerfd_gettime` (remaining time, interval)
    /// as seconds and nanoseconds.
    pub clockid: i32,
    pub _pad2: i32,
    pub value: [i64; 2],
    pub interval: [i64; 2],
    /// signalfd: the mask (signals 1..64).
    pub sigmask: u64,
    /// Unsupported: what it is (e.g. `anon_inode:inotify`).
    pub what_len: u32,
    pub what: [u8; KOBJ_WHAT_MAX],
    pub _pad3: u32,
}

impl KobjRecord {
    pub const ZERO: KobjRecord = KobjRecord {
        fd: 0,
        kind: 0,
        flags: 0,
        family: 0,
        sock_type: 0,
        protocol: 0,
        backlog: 0,
        addr_len: 0,
        peer_len: 0,
        _pad0: 0,
        addr: [0; SOCKADDR_MAX],
        peer: [0; SOCKADDR_MAX],
        ino: 0,
        pipe_size: 0,
        data_off: 0,
        data_len: 0,
        _pad1: 0,
        count: 0,
        clockid: 0,
        _pad2: 0,
        value: [0; 2],
        interval: [0; 2],
        sigmask: 0,
        what_len: 0,
        what: [0; KOBJ_WHAT_MAX],
        _pad3: 0,
    };
}

/// One registration of an epoll instance, as the kernel holds it (`/proc/self/fdinfo/EPFD`:
/// `tfd`, `events`, `data`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollReg {
    pub epfd: i32,
    pub fd: i32,
    pub events: u32,
    pub _pad: u32,
    pub data: u64,
}
