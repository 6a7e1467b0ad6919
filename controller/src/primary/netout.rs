//! Output commit for the sockets the app owns (DESIGN §4, issue 3), remusd's part; the shim's
//! is `shim/src/netout.rs`, the layout `remus_abi::netlog`.
//!
//! The shim appends what the app sends on its sockets to a ring in the staging memfd, each
//! record tagged with the epoch whose checkpoint includes the state that produced it, and
//! passes remusd a duplicate of each socket (`MsgKind::NetFd`, `SCM_RIGHTS`) the first time
//! the app uses it. A release thread here takes records out of the ring once their epoch is
//! acknowledged by the standby (all of them once protection has stopped), into per-connection
//! queues, and writes them to the duplicates in order per connection, never blocking on one
//! slow peer (`MSG_DONTWAIT` and `poll`). `shutdown` and `close` records are performed after
//! the data before them; a close drops remusd's duplicate, so the peer sees the FIN then.
//!
//! A write that fails (`EPIPE`, `ECONNRESET`, ...) breaks the connection: the rest of its data
//! is dropped and the errno is put in the log's error table for the app's descriptor, where
//! the shim returns it from the app's next call on it.
//!
//! Bounds: the ring (`NETLOG_CAPACITY`) and at most [`QUEUE_LIMIT`] bytes taken out of it and
//! not yet written; beyond that the ring fills and the shim slows the app down.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use remus_abi::netlog::{
    error_word, place, record_ok, NetEntry, NetLogHeader, MAX_NET_FDS, NETLOG_CAPACITY,
    NETLOG_DATA_OFF, NETLOG_END, NETLOG_ERRORS_OFF, NETLOG_MAGIC, NETLOG_OFF, NET_ENTRY_HDR,
    NE_CLOSE, NE_DATA, NE_PAD, NE_SHUTDOWN,
};

use crate::control::status::SharedStatus;

/// The most bytes taken out of the ring and not yet written to their sockets.
pub const QUEUE_LIMIT: usize = 64 << 20;
/// The committed value meaning "nothing is held any more".
const ALL: u64 = u64::MAX;

/// The output log, mapped from the staging memfd.
pub struct NetLog {
    map: memmap2::MmapMut,
}

impl NetLog {
    /// Maps the log if the memfd has one (a shim from before the log has a shorter memfd).
    pub fn map(file: &File) -> io::Result<Option<NetLog>> {
        if file.metadata()?.len() < NETLOG_END as u64 {
            return Ok(None);
        }
        // SAFETY: the memfd is at least NETLOG_END bytes (checked) and never shrunk; the
        // region is only accessed through atomics (header, error table) or read in the part
        // of the ring between tail and head, which the shim does not write (ABI contract).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(NETLOG_OFF as u64)
                .len(NETLOG_END - NETLOG_OFF)
                .map_mut(file)?
        };
        let log = NetLog { map };
        if log.u64_at(0).load(Ordering::Acquire) != NETLOG_MAGIC {
            return Ok(None);
        }
        Ok(Some(log))
    }

    fn base(&self) -> *const u8 {
        self.map.as_ptr()
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is an 8-aligned u64 of the header or error table, inside the mapping
        // (page aligned), shared with the shim and accessed only atomically by both.
        unsafe { &*(self.base().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as in `u64_at`, for the header's 4-aligned futex words.
        unsafe { &*(self.base().add(off) as *const AtomicU32) }
    }

    fn head(&self) -> u64 {
        self.u64_at(std::mem::offset_of!(NetLogHeader, head))
            .load(Ordering::Acquire)
    }
    fn tail(&self) -> &AtomicU64 {
        self.u64_at(std::mem::offset_of!(NetLogHeader, tail))
    }
    fn appended(&self) -> u64 {
        self.u64_at(std::mem::offset_of!(NetLogHeader, appended_bytes))
            .load(Ordering::Relaxed)
    }
    fn space_futex(&self) -> &AtomicU32 {
        self.u32_at(std::mem::offset_of!(NetLogHeader, space_futex))
    }
    fn kick_futex(&self) -> &AtomicU32 {
        self.u32_at(std::mem::offset_of!(NetLogHeader, kick_futex))
    }

    fn set_error(&self, app_fd: i32, conn: u32, errno: i32) {
        if app_fd >= 0 && (app_fd as usize) < MAX_NET_FDS {
            self.u64_at(NETLOG_ERRORS_OFF - NETLOG_OFF + app_fd as usize * 8)
                .store(error_word(conn, errno), Ordering::Release);
        }
    }

    /// The bytes of the ring at `off..off + len` (inside the ring, between tail and head).
    fn ring(&self, off: usize, len: usize) -> &[u8] {
        let start = NETLOG_DATA_OFF - NETLOG_OFF + off;
        &self.map[start..start + len]
    }
}

enum Op {
    Data {
        buf: Vec<u8>,
        sent: usize,
        addr: Vec<u8>,
        flags: i32,
        t_ns: u64,
    },
    Shutdown(i32),
    Close,
}

struct Conn {
    fd: OwnedFd,
    app_fd: i32,
    ops: VecDeque<Op>,
    /// The errno a write met: the rest of the data is dropped.
    broken: Option<i32>,
}

struct Shared {
    log: NetLog,
    committed: AtomicU64,
    /// Release everything, then end.
    finish: AtomicBool,
    /// End now (the primary side is going away).
    stop: AtomicBool,
    new_conns: Mutex<Vec<(u32, OwnedFd, i32)>>,
    wake: OwnedFd,
    status: SharedStatus,
}

impl Shared {
    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd; a full counter (EAGAIN) is as good.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The handle the link's ack callback keeps.
#[derive(Clone)]
pub struct NetCommitter(Arc<Shared>);

impl NetCommitter {
    pub fn commit(&self, epoch: u64) {
        if self.0.committed.fetch_max(epoch, Ordering::AcqRel) < epoch {
            self.0.poke();
        }
    }
}

pub struct NetOut {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl NetOut {
    pub fn start(log: NetLog, status: SharedStatus) -> io::Result<NetOut> {
        // SAFETY: eventfd takes integers; the descriptor is fresh and ours.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            log,
            committed: AtomicU64::new(0),
            finish: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            new_conns: Mutex::new(Vec::new()),
            // SAFETY: fresh descriptor from eventfd, owned by nobody else.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
            status,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("net-release".into())
            .spawn(move || release_loop(sh))?;
        tracing::info!("socket output held until its epoch commits");
        Ok(NetOut {
            shared,
            thread: Some(thread),
        })
    }

    pub fn committer(&self) -> NetCommitter {
        NetCommitter(self.shared.clone())
    }

    /// Nothing is held any more: release everything, pass through from now on.
    pub fn release_all(&self) {
        self.committer().commit(ALL);
    }

    /// Protection resumes (a new standby connection): hold again what the shim tags after
    /// `epoch` (the last epoch taken).
    pub fn hold_again(&self, epoch: u64) {
        self.shared.committed.store(epoch, Ordering::Release);
        self.shared.poke();
    }

    /// The shim passed the duplicate of the app's socket `app_fd` as connection `conn`.
    pub fn register(&self, conn: u32, fd: OwnedFd, app_fd: i32) {
        tracing::debug!(conn, app_fd, "socket output held");
        self.shared
            .new_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((conn, fd, app_fd));
        self.shared.poke();
    }

    /// The shim asked for an epoch (`MsgKind::Idle`) and remusd has acted on it.
    pub fn kick(&self) {
        let w = self.shared.log.kick_futex();
        w.fetch_add(1, Ordering::Release);
        crate::sys::futex_wake_all(w);
    }

    /// The app ended on its own (or protection ended with remusd): releases everything and
    /// waits (at most `timeout`) until it is written.
    pub fn finish(mut self, timeout: Duration) {
        self.release_all();
        self.shared.finish.store(true, Ordering::Release);
        self.shared.poke();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("socket output still not written after {timeout:?}; dropped");
                self.shared.stop.store(true, Ordering::Release);
            }
        }
    }
}

impl Drop for NetOut {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Counters for the status.
#[derive(Default)]
struct Counts {
    released: u64,
    dropped: u64,
    latencies: Vec<u64>,
}

fn release_loop(sh: Arc<Shared>) {
    let log = &sh.log;
    let mut conns: HashMap<u32, Conn> = HashMap::new();
    let mut queued = 0usize;
    let mut counts = Counts::default();
    let mut corrupt = false;
    loop {
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        for (conn, fd, app_fd) in sh
            .new_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            conns.insert(
                conn,
                Conn {
                    fd,
                    app_fd,
                    ops: VecDeque::new(),
                    broken: None,
                },
            );
        }
        let committed = sh.committed.load(Ordering::Acquire);

        // Take committed records out of the ring.
        let head = log.head();
        let mut tail = log.tail().load(Ordering::Relaxed);
        let start = tail;
        while !corrupt && tail < head && queued < QUEUE_LIMIT {
            let (off, pos) = place(tail);
            if pos != tail {
                tail = pos;
                continue;
            }
            let hdr = log.ring(off, NET_ENTRY_HDR);
            // SAFETY: hdr is NET_ENTRY_HDR bytes; NetEntry is plain integers.
            let e: NetEntry = unsafe { std::ptr::read_unaligned(hdr.as_ptr() as *const NetEntry) };
            let size = e.size as usize;
            if !record_ok(NETLOG_CAPACITY, off, &e) {
                tracing::error!(
                    pos = tail,
                    size,
                    kind = e.kind,
                    "corrupt record in the socket output log; socket output stops"
                );
                corrupt = true;
                break;
            }
            if e.kind == NE_PAD {
                tail += size as u64;
                continue;
            }
            if committed != ALL && e.epoch > committed {
                break;
            }
            let Some(c) = conns.get_mut(&e.conn) else {
                // Its descriptor is on its way (NetFd comes before any of its records).
                break;
            };
            let at = off + NET_ENTRY_HDR;
            match e.kind {
                NE_DATA => {
                    let addr = log.ring(at, e.addr_len as usize).to_vec();
                    let buf = log
                        .ring(at + e.addr_len as usize, e.data_len as usize)
                        .to_vec();
                    queued += buf.len();
                    c.ops.push_back(Op::Data {
                        buf,
                        sent: 0,
                        addr,
                        flags: e.flags as i32,
                        t_ns: e.t_ns,
                    });
                }
                NE_SHUTDOWN => c.ops.push_back(Op::Shutdown(e.flags as i32)),
                NE_CLOSE => c.ops.push_back(Op::Close),
                k => tracing::warn!(kind = k, "unknown record in the socket output log; skipped"),
            }
            tail += size as u64;
        }
        if tail != start {
            log.tail().store(tail, Ordering::Release);
            log.space_futex().fetch_add(1, Ordering::Release);
            crate::sys::futex_wake_all(log.space_futex());
        }

        // Write what can be written.
        let mut blocked: Vec<RawFd> = Vec::new();
        conns.retain(|&id, c| {
            let (keep, would_block) = pump(log, id, c, &mut queued, &mut counts);
            if would_block {
                blocked.push(c.fd.as_raw_fd());
            }
            keep
        });
        publish(&sh, &counts, queued);
        counts.latencies.clear();

        let drained = log.tail().load(Ordering::Relaxed) >= log.head();
        if sh.finish.load(Ordering::Acquire)
            && (drained || corrupt)
            && conns.values().all(|c| c.ops.is_empty())
        {
            return;
        }
        let timeout = if committed == ALL || (tail < head && queued < QUEUE_LIMIT) {
            10
        } else {
            100
        };
        wait(&sh.wake, &blocked, timeout);
    }
}

/// Writes a connection's queued operations until one would block. Returns (keep the
/// connection, it would block).
fn pump(log: &NetLog, id: u32, c: &mut Conn, queued: &mut usize, n: &mut Counts) -> (bool, bool) {
    while let Some(op) = c.ops.front_mut() {
        match op {
            Op::Data {
                buf,
                sent,
                addr,
                flags,
                t_ns,
            } => {
                if let Some(e) = c.broken {
                    n.dropped += (buf.len() - *sent) as u64;
                    *queued -= buf.len();
                    log.set_error(c.app_fd, id, e);
                    c.ops.pop_front();
                    continue;
                }
                let rest = &buf[*sent..];
                let fl = *flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: rest and addr are valid for their lengths.
                let r = unsafe {
                    if addr.is_empty() {
                        libc::send(c.fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), fl)
                    } else {
                        libc::sendto(
                            c.fd.as_raw_fd(),
                            rest.as_ptr().cast(),
                            rest.len(),
                            fl,
                            addr.as_ptr() as *const libc::sockaddr,
                            addr.len() as libc::socklen_t,
                        )
                    }
                };
                if r >= 0 {
                    *sent += r as usize;
                    n.released += r as u64;
                    if *sent >= buf.len() {
                        n.latencies.push(monotonic_ns().saturating_sub(*t_ns));
                        *queued -= buf.len();
                        c.ops.pop_front();
                    }
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error().unwrap_or(libc::EIO) {
                    libc::EINTR => continue,
                    libc::EAGAIN => return (true, true),
                    errno => {
                        tracing::debug!(conn = id, app_fd = c.app_fd, "released output: {e}");
                        c.broken = Some(errno);
                    }
                }
            }
            Op::Shutdown(how) => {
                if c.broken.is_none() {
                    // SAFETY: shutdown takes integers.
                    unsafe { libc::shutdown(c.fd.as_raw_fd(), *how) };
                }
                c.ops.pop_front();
            }
            Op::Close => {
                // Dropping the connection closes remusd's duplicate: after its data.
                let left: usize = c
                    .ops
                    .iter()
                    .map(|o| match o {
                        Op::Data { buf, .. } => buf.len(),
                        _ => 0,
                    })
                    .sum();
                *queued -= left;
                return (false, false);
            }
        }
    }
    (true, false)
}

fn publish(sh: &Shared, n: &Counts, _queued: usize) {
    let appended = sh.log.appended();
    let held = appended.saturating_sub(n.released + n.dropped);
    let mut b = sh.status.lock();
    b.net_held = held;
    b.net_released = n.released;
    for &l in &n.latencies {
        b.record_commit_latency(l);
    }
}

/// Waits for a poke, a blocked socket to become writable, or `ms`.
fn wait(wake: &OwnedFd, blocked: &[RawFd], ms: i32) {
    let mut fds = Vec::with_capacity(blocked.len() + 1);
    fds.push(libc::pollfd {
        fd: wake.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    for &fd in blocked {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        });
    }
    // SAFETY: fds is a valid array of pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if fds[0].revents != 0 {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from our non-blocking eventfd.
        unsafe { libc::read(wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}
