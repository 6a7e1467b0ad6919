//! Output commit for the sockets the app owns (DESIGN §4, issue 3), the shim's part; the
//! controller's is `remusd`'s `primary::netout`, the layout is `remus_abi::netlog`.
//!
//! What the app sends on a socket (`write`, `writev`, `send`, `sendto`, `sendmsg` without
//! ancillary data, `sendfile`, `splice` into a socket) is not given to the kernel: it is
//! appended to the output log, a ring in the shared staging memfd, tagged with the epoch whose
//! checkpoint will include the state that produced it (the next one), and the call returns as
//! the kernel would have. `shutdown(SHUT_WR)` and `close` are records in the same log; `close`
//! closes the app's descriptor at once, but remusd holds a duplicate of the socket (passed over
//! the shim socket with `SCM_RIGHTS` the first time the app uses it) and performs the writes,
//! the shutdown and the close only once the epoch is committed: the peer sees nothing (not
//! even a FIN) that the standby could not stand behind.
//!
//! No checkpoint comes between "appended" and "tagged": the hooks raise their thread's hook
//! depth and the epoch handler defers to their way out. Nothing here allocates; the threads of
//! the program append one at a time under the shim's lock (`base::lock`, held while a hook's
//! depth is up); static tables, atomics and raw system calls only.
//!
//! Backpressure: when the ring is full, a blocking call waits (futex on a word remusd bumps
//! when it frees room; epochs go on meanwhile) and a non-blocking one gets `EAGAIN`. An app
//! waiting for `EPOLLOUT` after that `EAGAIN` would wait for an edge the kernel never makes
//! (its socket was never full): the wait hooks first wait for room, then re-arm the starved
//! descriptors in the epoll set (`EPOLL_CTL_MOD` with the registration read from fdinfo).
//!
//! Errors: a deferred write that fails (`EPIPE`, `ECONNRESET`) is recorded by remusd in the
//! log's error table; the app's next call on that descriptor returns it. Like the kernel, an
//! `EPIPE` returned from `write`/`send` without `MSG_NOSIGNAL` also raises `SIGPIPE`.
//!
//! Output-triggered epochs (issue 4): when the app is about to wait for input (epoll, poll,
//! select, a blocking accept) while output waits for the next checkpoint, the shim asks remusd
//! for that epoch now (`MsgKind::Idle`) and waits briefly for the signal, so that the app's
//! own wait is not interrupted by it.
//!
//! When protection stops, the hooks wait (bounded) until remusd drained the log, then pass
//! straight through; in the restored process (passive) everything passes straight through.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use remus_abi::netlog::{
    self, NetEntry, NetLogHeader, Reservation, MAX_NET_FDS, NETLOG_DATA_OFF, NETLOG_ERRORS_OFF,
    NETLOG_MAGIC, NETLOG_OFF, NET_ENTRY_HDR, NET_ENTRY_MAX_DATA, NE_CLOSE, NE_DATA, NE_PAD,
    NE_SHUTDOWN,
};
use remus_abi::{Msg, MsgKind, COMMITTED_OFF, COMMITTED_UNPROTECTED};

use crate::base::{link, state};
use crate::kernel::sys;
use crate::kernel::text::{self, EpollLine};
use crate::track::pages;

// ---------------------------------------------------------------------------------------
// Per-descriptor table
// ---------------------------------------------------------------------------------------

/// What the shim knows about the socket at one descriptor number: its inode (0: nothing),
/// the connection number given to remusd (0: not held, passes through), flags.
struct Slot {
    ino: AtomicU64,
    conn: AtomicU32,
    flags: AtomicU32,
    /// The epoll instance the app registered this descriptor with (-1: none seen).
    epfd: AtomicI32,
    /// The app got EAGAIN from a full log on this descriptor.
    starved: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise SLOTS
const SLOT: Slot = Slot {
    ino: AtomicU64::new(0),
    conn: AtomicU32::new(0),
    flags: AtomicU32::new(0),
    epfd: AtomicI32::new(-1),
    starved: AtomicBool::new(false),
};
static SLOTS: [Slot; MAX_NET_FDS] = [SLOT; MAX_NET_FDS];
/// Slot flag: a datagram socket (one record per message, never split).
const F_DGRAM: u32 = 1;

static NEXT_CONN: AtomicU32 = AtomicU32::new(1);
/// The tag of the last record appended (output waits for that epoch's checkpoint).
static LAST_TAG: AtomicU64 = AtomicU64::new(0);
/// The epoch last asked for with an Idle message.
static IDLE_ASKED: AtomicU64 = AtomicU64::new(0);
/// Some descriptor is starved (see [`Slot::starved`]).
static ANY_STARVED: AtomicBool = AtomicBool::new(false);

/// Output-triggered epochs are on (`REMUS_IDLE_EPOCHS=0` turns them off, to measure them).
static IDLE_EPOCHS: AtomicBool = AtomicBool::new(true);

/// The program's packets cross remusd's packet gate (`REMUS_PACKET_GATE=1`, set by `remusd
/// service-exec`): TCP and UDP sockets pass straight through (held once, by the gate; a byte
/// in the log would also be missing from the socket's send queue that TCP_REPAIR dumps);
/// unix sockets keep the log.
static PACKET_GATE: AtomicBool = AtomicBool::new(false);

/// Called once at start-up (single-threaded) on the freshly mapped staging area.
pub fn init(staging: *mut u8) {
    if crate::base::environ::get("REMUS_IDLE_EPOCHS").is_some_and(|v| v == "0") {
        IDLE_EPOCHS.store(false, Ordering::Relaxed);
    }
    if crate::base::environ::get("REMUS_PACKET_GATE").is_some_and(|v| v == "1") {
        PACKET_GATE.store(true, Ordering::Relaxed);
    }
    // SAFETY: staging maps at least NETLOG_END bytes (init::make_staging); the header is
    // 8-aligned inside it and nobody else uses it yet.
    unsafe {
        let h = staging.add(NETLOG_OFF) as *mut NetLogHeader;
        (*h).head = 0;
        (*h).tail = 0;
        (*h).magic = NETLOG_MAGIC;
    }
}

/// The program is about to `execve`: every held socket's close goes into the log (after its
/// data), and the table forgets them. Whether the exec succeeds or not, the sockets the
/// program still has are registered afresh at their next use, under new connection numbers
/// (remusd closes its old duplicates once their data is out: a socket the exec closed
/// (`O_CLOEXEC`) then sends its FIN after its committed data, one the program keeps stays
/// open through the new duplicate). Inside a hook's bracket.
pub fn before_exec() {
    let Some(log) = Log::get() else { return };
    if state::mode() != state::MODE_PROTECTED || log.committed() == COMMITTED_UNPROTECTED {
        return;
    }
    // The program's epoll registrations stay as they are: they are its own, and an exec that
    // fails leaves the program with the same sets.
    for s in SLOTS.iter() {
        retire(&log, s);
    }
}

/// The next connection number (the new image of an `execve` carries on from it).
pub fn next_conn() -> u32 {
    NEXT_CONN.load(Ordering::Relaxed)
}

/// The new image of an `execve`: the log in the kept staging area is the old image's (its
/// records are still to be released), and connection numbers carry on from `next`.
pub fn continue_after_exec(next: u32) {
    NEXT_CONN.store(next.max(1), Ordering::Relaxed);
}

/// Forgets every socket held for the previous `remusd primary` (a restored process being
/// protected again: the new remusd has none of them; each is passed again at its next use).
/// Called at the rejoin's safe point while passive (every hook passes through).
/// A restored program being protected again (`life::rejoin`): no packet gate stands in front
/// of it on this host (the takeover brought up its namespace and address, not a gate), so its
/// TCP and UDP sockets go back to the log, which holds their output until each epoch commits.
/// Its connections are then not dumped: they come back closed at a later failover.
pub fn leave_gate() {
    PACKET_GATE.store(false, Ordering::Relaxed);
}

pub fn reset() {
    for s in SLOTS.iter() {
        s.ino.store(0, Ordering::Relaxed);
        s.conn.store(0, Ordering::Relaxed);
        s.flags.store(0, Ordering::Relaxed);
        s.epfd.store(-1, Ordering::Relaxed);
        s.starved.store(false, Ordering::Relaxed);
    }
    LAST_TAG.store(0, Ordering::Relaxed);
    IDLE_ASKED.store(0, Ordering::Relaxed);
    ANY_STARVED.store(false, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------

struct Log {
    base: *mut u8,
}

impl Log {
    /// The log, when this process is protected and has one.
    fn get() -> Option<Log> {
        let base = state::STAGING.load(Ordering::Relaxed);
        if base.is_null() {
            return None;
        }
        let l = Log { base };
        (l.u64_at(NETLOG_OFF).load(Ordering::Relaxed) == NETLOG_MAGIC).then_some(l)
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: every offset used is an 8-aligned u64 inside the mapped staging area
        // (NETLOG_END bytes, alive for the life of the process), shared with remusd and
        // accessed only atomically.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as in `u64_at`, for the 4-aligned futex words of the header.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    fn head(&self) -> &AtomicU64 {
        self.u64_at(NETLOG_OFF + core::mem::offset_of!(NetLogHeader, head))
    }
    fn tail(&self) -> &AtomicU64 {
        self.u64_at(NETLOG_OFF + core::mem::offset_of!(NetLogHeader, tail))
    }
    fn appended(&self) -> &AtomicU64 {
        self.u64_at(NETLOG_OFF + core::mem::offset_of!(NetLogHeader, appended_bytes))
    }
    fn space_futex(&self) -> &AtomicU32 {
        self.u32_at(NETLOG_OFF + core::mem::offset_of!(NetLogHeader, space_futex))
    }
    fn kick_futex(&self) -> &AtomicU32 {
        self.u32_at(NETLOG_OFF + core::mem::offset_of!(NetLogHeader, kick_futex))
    }
    fn error_word(&self, fd: i32) -> &AtomicU64 {
        self.u64_at(NETLOG_ERRORS_OFF + fd as usize * 8)
    }
    fn committed(&self) -> u64 {
        self.u64_at(COMMITTED_OFF).load(Ordering::Acquire)
    }
    fn drained(&self) -> bool {
        self.tail().load(Ordering::Acquire) == self.head().load(Ordering::Relaxed)
    }
    fn data(&self, off: usize) -> *mut u8 {
        self.base.wrapping_add(NETLOG_DATA_OFF + off)
    }
}

/// Room for one record in the log (the ring's arithmetic is `remus_abi::netlog::reserve`).
fn reserve(log: &Log, addr_len: usize, data_len: usize) -> Option<Reservation> {
    let head = log.head().load(Ordering::Relaxed);
    let tail = log.tail().load(Ordering::Acquire);
    netlog::reserve(head, tail, NetEntry::record_size(addr_len, data_len))
}

fn write_entry(log: &Log, off: usize, e: &NetEntry) {
    // SAFETY: off + NET_ENTRY_HDR <= NETLOG_CAPACITY (reserve/place guarantee it); the bytes
    // lie in the ring, which only this thread writes between tail and the next head.
    unsafe { core::ptr::write_unaligned(log.data(off) as *mut NetEntry, *e) };
}

/// Writes the record's header (and the pad before it) and publishes it.
#[allow(clippy::too_many_arguments)]
fn publish(
    log: &Log,
    r: &Reservation,
    kind: u16,
    flags: u16,
    conn: u32,
    addr_len: usize,
    data_len: usize,
    t_ns: u64,
) {
    if let Some((off, size)) = r.pad {
        write_entry(
            log,
            off,
            &NetEntry {
                size: size as u32,
                kind: NE_PAD,
                ..NetEntry::default()
            },
        );
    }
    let committed = log.committed();
    let tag = if committed == COMMITTED_UNPROTECTED {
        0
    } else {
        state::EPOCH.load(Ordering::Relaxed) + 1
    };
    let size = NetEntry::record_size(addr_len, data_len);
    write_entry(
        log,
        r.off,
        &NetEntry {
            size: size as u32,
            kind,
            flags,
            conn,
            addr_len: addr_len as u32,
            epoch: tag,
            data_len: data_len as u32,
            _pad: 0,
            t_ns,
        },
    );
    log.appended().fetch_add(data_len as u64, Ordering::Relaxed);
    log.head().store(r.next_head, Ordering::Release);
    LAST_TAG.store(tag, Ordering::Relaxed);
}

/// Appends a record without data (shutdown, close), waiting for room if need be.
fn append_control(log: &Log, kind: u16, flags: u16, conn: u32) {
    loop {
        if let Some(r) = reserve(log, 0, 0) {
            publish(log, &r, kind, flags, conn, 0, 0, sys::monotonic_ns());
            return;
        }
        if !wait_room(log) {
            return; // not protected any more: nothing is held
        }
    }
}

// ---------------------------------------------------------------------------------------
// The hook bracket
// ---------------------------------------------------------------------------------------

/// Waits for room in the log with checkpoints allowed (the log only drains after a commit,
/// and a commit needs a checkpoint). Called inside a [`state::HookDepth`]. Returns false when protection
/// ended meanwhile (the caller passes through).
fn wait_room(log: &Log) -> bool {
    let seen = log.space_futex().load(Ordering::Acquire);
    ask_epoch(log, false);
    open_wait(|| sys::futex_wait(log.space_futex(), seen, 50_000_000));
    state::mode() == state::MODE_PROTECTED && log.committed() != COMMITTED_UNPROTECTED
}

/// Runs a wait that an epoch may have to end with the bracket open: the depth goes down for it
/// (the epoch handler runs during the wait, and other threads' hooks get the shim's lock) and
/// up again after. Called inside a hook, where nothing is half-done.
fn open_wait(wait: impl FnOnce()) {
    state::lower_depth();
    wait();
    state::raise_depth();
}

/// Asks remusd for the next epoch now, once per epoch, when output waits for it. With
/// `wait`, waits briefly for remusd to act (its signal ends the wait).
fn ask_epoch(log: &Log, wait: bool) {
    let next = state::EPOCH.load(Ordering::Relaxed) + 1;
    if !IDLE_EPOCHS.load(Ordering::Relaxed)
        || LAST_TAG.load(Ordering::Relaxed) != next
        || IDLE_ASKED.load(Ordering::Relaxed) == next
    {
        return;
    }
    IDLE_ASKED.store(next, Ordering::Relaxed);
    let seen = log.kick_futex().load(Ordering::Acquire);
    if link::send(&Msg::new(MsgKind::Idle, next, 0)).is_err() {
        return;
    }
    if wait && state::EPOCH.load(Ordering::Relaxed) < next {
        // remusd bumps the kick word once it has sent the signal (which interrupts this
        // wait) or found that it cannot signal yet. Bounded in case it is gone.
        open_wait(|| sys::futex_wait(log.kick_futex(), seen, 20_000_000));
    }
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

fn sockopt(fd: i32, opt: i32) -> Option<i32> {
    let mut v: c_int = 0;
    let mut len = core::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into v.
    unsafe {
        sys::raw6(
            libc::SYS_getsockopt,
            fd as usize,
            libc::SOL_SOCKET as usize,
            opt as usize,
            &mut v as *mut c_int as usize,
            &mut len as *mut libc::socklen_t as usize,
            0,
        )
    }
    .ok()
    .map(|_| v)
}

fn connected(fd: i32) -> bool {
    // SAFETY: an all-zero sockaddr_storage is a valid out-parameter.
    let mut sa: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into sa.
    unsafe {
        sys::raw6(
            libc::SYS_getpeername,
            fd as usize,
            &mut sa as *mut _ as usize,
            &mut len as *mut libc::socklen_t as usize,
            0,
            0,
            0,
        )
    }
    .is_ok()
}

fn nonblocking(fd: i32) -> bool {
    sys::fcntl_get(fd, libc::F_GETFL).is_ok_and(|fl| fl & libc::O_NONBLOCK != 0)
}

/// Passes a duplicate of `fd` to remusd as connection `conn`.
fn send_fd(fd: i32, conn: u32) -> bool {
    let sock = state::SOCK.load(Ordering::Relaxed);
    if sock < 0 {
        return false;
    }
    let msg = Msg::new(MsgKind::NetFd, conn as u64, fd as u64);
    let bytes = msg.as_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut c_void,
        iov_len: bytes.len(),
    };
    #[repr(C, align(8))]
    struct Cmsg([u8; 24]);
    let mut cbuf = Cmsg([0; 24]);
    // SAFETY: a zeroed msghdr is valid; we point it at our iovec and control buffer, which
    // outlive the call; CMSG_* compute offsets inside cbuf (24 bytes = CMSG_SPACE(4)).
    unsafe {
        let mut mh: libc::msghdr = core::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.0.as_mut_ptr() as *mut c_void;
        mh.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&mh);
        if c.is_null() {
            return false;
        }
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        core::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, fd);
        sys::raw6(
            libc::SYS_sendmsg,
            sock as usize,
            &mh as *const libc::msghdr as usize,
            libc::MSG_NOSIGNAL as usize,
            0,
            0,
            0,
        )
        .is_ok_and(|n| n as usize == bytes.len())
    }
}

/// A held socket: its connection number and whether it carries datagrams.
#[derive(Clone, Copy)]
struct Held {
    conn: u32,
    dgram: bool,
}

fn slot(fd: i32) -> Option<&'static Slot> {
    (fd >= 0 && (fd as usize) < MAX_NET_FDS).then(|| &SLOTS[fd as usize])
}

/// Forgets the socket at `slot`; if it was held, its close goes into the log (the app closed
/// it behind the shim's back: `dup2` over it, or a glibc-internal close).
fn retire(log: &Log, s: &Slot) {
    let conn = s.conn.swap(0, Ordering::Relaxed);
    s.ino.store(0, Ordering::Relaxed);
    s.flags.store(0, Ordering::Relaxed);
    s.starved.store(false, Ordering::Relaxed);
    if conn != 0 {
        append_control(log, NE_CLOSE, 0, conn);
    }
}

/// Whether output on `fd` is held; registers the socket with remusd the first time. Inside a
/// [`state::HookDepth`], with the log present and protection on.
fn classify(log: &Log, fd: i32, st: &mut sys::FdStat) -> Option<Held> {
    let s = slot(fd)?;
    let st = *st.get()?;
    let ino = st.st_ino;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        if s.ino.load(Ordering::Relaxed) != 0 {
            retire(log, s);
        }
        return None;
    }
    if s.ino.load(Ordering::Relaxed) == ino {
        let conn = s.conn.load(Ordering::Relaxed);
        return (conn != 0).then(|| Held {
            conn,
            dgram: s.flags.load(Ordering::Relaxed) & F_DGRAM != 0,
        });
    }
    if s.ino.load(Ordering::Relaxed) != 0 {
        retire(log, s);
    }
    let domain = sockopt(fd, libc::SO_DOMAIN)?;
    let ty = sockopt(fd, libc::SO_TYPE)?;
    let listening = sockopt(fd, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    let dgram = ty == libc::SOCK_DGRAM;
    let inet = matches!(domain, libc::AF_INET | libc::AF_INET6);
    let ours = ((inet && !PACKET_GATE.load(Ordering::Relaxed)) || domain == libc::AF_UNIX)
        && matches!(
            ty,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        )
        && !listening;
    if ours && !dgram && !connected(fd) {
        // Not connected yet (or a connect in progress): the kernel answers; ask again later.
        return None;
    }
    let conn = if ours {
        let c = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        if send_fd(fd, c) {
            c
        } else {
            0
        }
    } else {
        0
    };
    s.flags
        .store(if dgram { F_DGRAM } else { 0 }, Ordering::Relaxed);
    s.conn.store(conn, Ordering::Relaxed);
    s.starved.store(false, Ordering::Relaxed);
    s.ino.store(ino, Ordering::Relaxed);
    (conn != 0).then_some(Held { conn, dgram })
}

/// What a hook does with a call.
enum Route {
    /// Give it to the kernel.
    Pass,
    /// Hold it in the log.
    Hold(Log, Held),
}

/// Decides, inside a [`state::HookDepth`], where a call on `fd` goes. When protection has stopped,
/// waits (bounded) until the log drained, so that direct output comes after held output.
fn route(fd: i32, st: &mut sys::FdStat) -> Route {
    if state::mode() == state::MODE_PASSIVE || fd < 0 || fd as usize >= MAX_NET_FDS {
        return Route::Pass;
    }
    let Some(log) = Log::get() else {
        return Route::Pass;
    };
    if state::mode() != state::MODE_PROTECTED || log.committed() == COMMITTED_UNPROTECTED {
        drain(&log);
        return Route::Pass;
    }
    match classify(&log, fd, st) {
        Some(h) => Route::Hold(log, h),
        None => Route::Pass,
    }
}

/// Waits until remusd has released everything in the log (at most about 5 s).
fn drain(log: &Log) {
    for _ in 0..100 {
        if log.drained() {
            return;
        }
        let seen = log.space_futex().load(Ordering::Acquire);
        if log.drained() {
            return;
        }
        sys::futex_wait(log.space_futex(), seen, 50_000_000);
    }
}

/// A deferred error for `fd` (connection `conn`), taken.
fn take_error(log: &Log, fd: i32, conn: u32) -> Option<i32> {
    let w = log.error_word(fd);
    let v = w.load(Ordering::Acquire);
    if v == 0 || (v >> 32) as u32 != conn {
        return None;
    }
    let e = (v & 0xffff_ffff) as i32;
    (w.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
        && e != 0)
        .then_some(e)
}

// ---------------------------------------------------------------------------------------
// Holding a send
// ---------------------------------------------------------------------------------------

/// Where the data of a held send comes from.
pub enum Src<'a> {
    Iov(&'a [libc::iovec]),
    /// `sendfile`: read from a file, at `*off` (then advanced) or at its offset.
    File {
        fd: i32,
        off: *mut libc::off_t,
    },
    /// `splice`: read from a pipe.
    Pipe {
        fd: i32,
        nonblock: bool,
    },
}

/// Copies up to `n` bytes of `src` (skipping `done` already taken) to `dst`. Returns the
/// bytes copied or an errno.
fn fill(src: &Src, done: usize, dst: *mut u8, n: usize) -> Result<usize, i32> {
    match src {
        Src::Iov(iov) => {
            let mut skip = done;
            let mut got = 0;
            for v in iov.iter() {
                if got == n {
                    break;
                }
                if skip >= v.iov_len {
                    skip -= v.iov_len;
                    continue;
                }
                let take = (v.iov_len - skip).min(n - got);
                // SAFETY: the app's iovec is readable for iov_len bytes (as for writev(2));
                // dst has room for n bytes (reserved in the ring); they do not overlap.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        (v.iov_base as *const u8).add(skip),
                        dst.add(got),
                        take,
                    )
                };
                got += take;
                skip = 0;
            }
            Ok(got)
        }
        Src::File { fd, off } => {
            // SAFETY: reading into the reserved ring space (n bytes); `off` is the app's
            // pointer as given to sendfile(2), valid when not null.
            unsafe {
                if off.is_null() {
                    sys::raw6(libc::SYS_read, *fd as usize, dst as usize, n, 0, 0, 0)
                        .map(|r| r as usize)
                } else {
                    let r = sys::raw6(
                        libc::SYS_pread64,
                        *fd as usize,
                        dst as usize,
                        n,
                        **off as usize,
                        0,
                        0,
                    )?;
                    **off += r as libc::off_t;
                    Ok(r as usize)
                }
            }
        }
        Src::Pipe { fd, nonblock } => {
            if *nonblock {
                let mut p = libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads/writes one pollfd.
                let r =
                    unsafe { sys::raw6(libc::SYS_poll, &mut p as *mut _ as usize, 1, 0, 0, 0, 0) };
                if r == Ok(0) {
                    return Err(libc::EAGAIN);
                }
            }
            // SAFETY: reading into the reserved ring space (n bytes).
            unsafe { sys::raw6(libc::SYS_read, *fd as usize, dst as usize, n, 0, 0, 0) }
                .map(|r| r as usize)
        }
    }
}

/// The outcome of a held send.
enum Sent {
    Done(usize),
    Err(i32),
    /// Protection ended while waiting for room: give the rest to the kernel.
    Pass,
}

/// Appends `total` bytes from `src` for `h` (with `addr` for datagrams).
#[allow(clippy::too_many_arguments)]
fn hold_send(
    log: &Log,
    fd: i32,
    h: Held,
    src: &Src,
    total: usize,
    addr: &[u8],
    flags: c_int,
    nonblock: bool,
) -> Sent {
    let t_ns = sys::monotonic_ns();
    let send_flags = (flags & (libc::MSG_OOB | libc::MSG_MORE | libc::MSG_EOR)) as u16;
    if h.dgram && total > NET_ENTRY_MAX_DATA {
        return Sent::Err(libc::EMSGSIZE);
    }
    if total == 0 && !h.dgram {
        return Sent::Done(0);
    }
    let addr = if h.dgram { addr } else { &[][..] };
    let mut done = 0usize;
    loop {
        let want = (total - done).min(NET_ENTRY_MAX_DATA);
        match reserve(log, addr.len(), want) {
            Some(r) => {
                let at = log.data(r.off + NET_ENTRY_HDR);
                if !addr.is_empty() {
                    // SAFETY: the record has room for addr.len() bytes after its header.
                    unsafe { core::ptr::copy_nonoverlapping(addr.as_ptr(), at, addr.len()) };
                }
                let got = if want == 0 {
                    0
                } else {
                    match fill(src, done, at.wrapping_add(addr.len()), want) {
                        Ok(g) => g,
                        Err(e) if done == 0 => return Sent::Err(e),
                        Err(_) => return Sent::Done(done),
                    }
                };
                if got == 0 && want > 0 {
                    return Sent::Done(done); // the source ran dry (sendfile at end of file)
                }
                publish(log, &r, NE_DATA, send_flags, h.conn, addr.len(), got, t_ns);
                done += got;
                if done >= total || got < want {
                    return Sent::Done(done);
                }
            }
            None => {
                if nonblock {
                    if done > 0 {
                        return Sent::Done(done);
                    }
                    if let Some(s) = slot(fd) {
                        s.starved.store(true, Ordering::Relaxed);
                        ANY_STARVED.store(true, Ordering::Relaxed);
                    }
                    return Sent::Err(libc::EAGAIN);
                }
                if !wait_room(log) {
                    return if done > 0 {
                        Sent::Done(done)
                    } else {
                        Sent::Pass
                    };
                }
            }
        }
    }
}

/// Runs a send-like call, inside a hook's bracket: held in the log, or given to the kernel
/// with `pass` (the real call, which opens the bracket for itself).
pub fn send_call(
    fd: i32,
    src: Src,
    total: usize,
    addr: &[u8],
    flags: c_int,
    signals: bool,
    pass: impl FnOnce() -> isize,
) -> isize {
    send_call_with(
        fd,
        &mut sys::FdStat::new(fd),
        src,
        total,
        addr,
        flags,
        signals,
        pass,
    )
}

/// [`send_call`] with the call's one `fstat` of `fd`, shared with the other checks the hook
/// makes before its real call (`track::files::before_write`).
#[allow(clippy::too_many_arguments)]
pub fn send_call_with(
    fd: i32,
    st: &mut sys::FdStat,
    src: Src,
    total: usize,
    addr: &[u8],
    flags: c_int,
    signals: bool,
    pass: impl FnOnce() -> isize,
) -> isize {
    let (log, h) = match route(fd, st) {
        Route::Pass => return pass(),
        Route::Hold(l, h) => (l, h),
    };
    if let Some(e) = take_error(&log, fd, h.conn) {
        if e == libc::EPIPE && signals && flags & libc::MSG_NOSIGNAL == 0 {
            // Delivered as the bracket closes, as the kernel would before the call returns.
            sys::raise_here(libc::SIGPIPE);
        }
        sys::set_errno(e);
        return -1;
    }
    let nonblock = flags & libc::MSG_DONTWAIT != 0 || nonblocking(fd);
    match hold_send(&log, fd, h, &src, total, addr, flags, nonblock) {
        Sent::Done(n) => n as isize,
        Sent::Err(e) => {
            sys::set_errno(e);
            -1
        }
        Sent::Pass => pass(),
    }
}

/// `shutdown(fd, how)` inside a hook's bracket; `real` is the real call.
pub fn shutdown_call(fd: i32, how: c_int, real: impl Fn(c_int) -> c_int) -> c_int {
    let (log, h) = match route(fd, &mut sys::FdStat::new(fd)) {
        Route::Pass => return real(how),
        Route::Hold(l, h) => (l, h),
    };
    if how != libc::SHUT_RD && how != libc::SHUT_WR && how != libc::SHUT_RDWR {
        sys::set_errno(libc::EINVAL);
        return -1;
    }
    // Shutting down reading shows nothing to the peer: at once. Writing: in order.
    if how != libc::SHUT_WR {
        let r = real(libc::SHUT_RD);
        if r != 0 {
            return r;
        }
    }
    if how != libc::SHUT_RD {
        append_control(&log, NE_SHUTDOWN, libc::SHUT_WR as u16, h.conn);
    }
    0
}

/// The app closes `fd` (inside a hook's bracket, before the real close): a held socket's close
/// goes into the log, after its data.
pub fn before_close(fd: i32) {
    if let Route::Hold(log, h) = route(fd, &mut sys::FdStat::new(fd)) {
        if let Some(s) = slot(fd) {
            forget_epoll(fd, s);
            s.conn.store(0, Ordering::Relaxed);
            s.ino.store(0, Ordering::Relaxed);
            s.starved.store(false, Ordering::Relaxed);
        }
        append_control(&log, NE_CLOSE, 0, h.conn);
    } else if let Some(s) = slot(fd) {
        s.ino.store(0, Ordering::Relaxed);
        s.conn.store(0, Ordering::Relaxed);
        s.epfd.store(-1, Ordering::Relaxed);
    }
}

/// A successful `epoll_ctl(ep, op, fd)`: which epoll set a descriptor is in.
pub fn after_epoll_ctl(ep: i32, op: c_int, fd: i32) {
    if let Some(s) = slot(fd) {
        match op {
            libc::EPOLL_CTL_ADD => s.epfd.store(ep, Ordering::Relaxed),
            libc::EPOLL_CTL_DEL => {
                let _ = s
                    .epfd
                    .compare_exchange(ep, -1, Ordering::Relaxed, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

pub fn addr_bytes<'a>(addr: *const libc::sockaddr, len: libc::socklen_t) -> &'a [u8] {
    if addr.is_null() || len == 0 {
        return &[];
    }
    let n = (len as usize).min(core::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: the app passes `len` readable bytes at `addr` (as for sendto(2)).
    unsafe { core::slice::from_raw_parts(addr as *const u8, n) }
}

pub fn iov_total(iov: &[libc::iovec]) -> usize {
    iov.iter().fold(0usize, |a, v| a.saturating_add(v.iov_len))
}

pub fn iovs<'a>(iov: *const libc::iovec, n: c_int) -> &'a [libc::iovec] {
    if iov.is_null() || n <= 0 {
        return &[];
    }
    // SAFETY: the app passes `n` iovecs at `iov` (as for writev(2)).
    unsafe { core::slice::from_raw_parts(iov, n as usize) }
}

// ---------------------------------------------------------------------------------------
// The hooks: output
// ---------------------------------------------------------------------------------------

/// Takes the app's descriptor `fd` out of the epoll set it was registered with: while remusd
/// keeps the socket open, the kernel would otherwise keep reporting it to the app.
fn forget_epoll(fd: i32, s: &Slot) {
    let ep = s.epfd.swap(-1, Ordering::Relaxed);
    if ep >= 0 {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null is allowed since 2.6.9).
        let _ = unsafe {
            sys::raw6(
                libc::SYS_epoll_ctl,
                ep as usize,
                libc::EPOLL_CTL_DEL as usize,
                fd as usize,
                0,
                0,
                0,
            )
        };
    }
}

/// `dup2`/`dup3` onto a held socket closes it: that close goes into the log first.
pub fn before_replace(newfd: i32) {
    if state::mode() != state::MODE_PROTECTED {
        return;
    }
    let Some(s) = slot(newfd) else { return };
    if s.conn.load(Ordering::Relaxed) == 0 {
        s.ino.store(0, Ordering::Relaxed);
        return;
    }
    let _d = state::HookDepth::enter();
    if let Some(log) = Log::get() {
        forget_epoll(newfd, s);
        retire(&log, s);
    }
}

// ---------------------------------------------------------------------------------------
// The hooks: waiting for input
// ---------------------------------------------------------------------------------------

/// The app is about to wait (`blocking`: with a non-zero timeout). Re-arms starved
/// descriptors of `epfd` once the log has room, and asks for the pending epoch now.
pub fn before_wait(blocking: bool, epfd: i32) {
    state::safe_point();
    if blocking && state::CANDIDATE.load(Ordering::Relaxed) {
        // A child of the program that waits for input as a server's worker does: remusd
        // decides whether that is a second process of the program (it is, beside a parent
        // that keeps running).
        if !state::SERVES_REPORTED.swap(true, Ordering::Relaxed) {
            let _ = link::send(&Msg::new(MsgKind::ChildServes, sys::getpid() as u64, 0));
        }
    }
    if !blocking || state::mode() != state::MODE_PROTECTED {
        return;
    }
    let Some(log) = Log::get() else { return };
    if ANY_STARVED.load(Ordering::Relaxed) {
        unstarve(&log, epfd);
    }
    ask_epoch(&log, true);
}

/// Waits (bounded) for room in the log, then makes the kernel report the starved descriptors
/// as writable again (an edge-triggered app waits for a new edge).
fn unstarve(log: &Log, epfd: i32) {
    ask_epoch(log, false);
    for _ in 0..20 {
        if reserve(log, 0, NET_ENTRY_MAX_DATA).is_some() {
            break;
        }
        let seen = log.space_futex().load(Ordering::Acquire);
        if reserve(log, 0, NET_ENTRY_MAX_DATA).is_some() {
            break;
        }
        open_wait(|| sys::futex_wait(log.space_futex(), seen, 50_000_000));
    }
    ANY_STARVED.store(false, Ordering::Relaxed);
    if epfd >= 0 {
        rearm(epfd);
    }
    for s in SLOTS.iter() {
        s.starved.store(false, Ordering::Relaxed);
    }
}

const FDINFO_MAX: usize = 64 << 10;
struct FdinfoBuf(core::cell::UnsafeCell<[u8; FDINFO_MAX]>);
// SAFETY: used by the wait hooks of the only protected thread, never re-entrantly (nothing
// in `rearm` calls back into a wait hook).
unsafe impl Sync for FdinfoBuf {}
static FDINFO: FdinfoBuf = FdinfoBuf(core::cell::UnsafeCell::new([0; FDINFO_MAX]));

/// `EPOLL_CTL_MOD` with the same events and data for each starved descriptor of `epfd`.
fn rearm(epfd: i32) {
    // SAFETY: see FdinfoBuf.
    let buf = unsafe { &mut *FDINFO.0.get() };
    let Some(n) = pages::read_fdinfo(epfd, buf) else {
        return;
    };
    for EpollLine { tfd, events, data } in text::epoll_lines(&buf[..n]) {
        let Some(s) = slot(tfd) else { continue };
        if !s.starved.load(Ordering::Relaxed) {
            continue;
        }
        let mut e = libc::epoll_event { events, u64: data };
        // SAFETY: epoll_ctl reads one epoll_event.
        let _ = unsafe {
            sys::raw6(
                libc::SYS_epoll_ctl,
                epfd as usize,
                libc::EPOLL_CTL_MOD as usize,
                tfd as usize,
                &mut e as *mut libc::epoll_event as usize,
                0,
                0,
            )
        };
    }
}

/// A `ppoll`/`pselect` timeout that lets the call block.
pub fn ts_nonzero(ts: *const libc::timespec) -> bool {
    // SAFETY: the app passes a valid timespec or null (as for ppoll(2)).
    ts.is_null() || unsafe { (*ts).tv_sec != 0 || (*ts).tv_nsec != 0 }
}

/// A blocking `accept` is a wait for input too (cheap test first: is output waiting?).
pub fn before_accept(fd: i32) {
    let output_waits = state::mode() == state::MODE_PROTECTED
        && LAST_TAG.load(Ordering::Relaxed) == state::EPOCH.load(Ordering::Relaxed) + 1;
    if (output_waits || state::CANDIDATE.load(Ordering::Relaxed)) && !nonblocking(fd) {
        before_wait(true, -1);
    }
}
