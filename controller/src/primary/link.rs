//! The primary's connection to the standby: handshake, a sender thread (epoch parts, commits,
//! heartbeats, goodbye) and a reader thread (acks, heartbeats).

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use thiserror::Error;

use crate::control::status::SharedStatus;
use crate::image::EpochMeta;
use crate::wire::auth::{self, AuthError, LinkSecurity};
use crate::wire::frame::SendFrameError;
use crate::wire::messages::{GoodbyeReason, Hello, Refusal, Released, WireMsg};

use super::pipeline::{encode_loop, ToSender};
pub use super::pipeline::{Outbound, PART_PAGES};
use crate::wire::{DecodeFrameError, FrameReader, FrameWriter};

/// Epoch items the encoder may have queued before the epoch loop waits (the encoder takes
/// them at once, merging while the link is behind).
pub const QUEUE: usize = 8;
/// Default memory budget of the shadow pages (`--delta-budget-mb`).
pub const DEFAULT_DELTA_BUDGET_MB: u64 = 256;

/// How the sending pipeline compresses.
#[derive(Clone, Copy, Debug)]
pub struct PipelineOpts {
    /// Memory for shadow pages (the last shipped version of each page); 0: no deltas.
    pub delta_budget: u64,
    /// Also measure what each page frame would have been with snap alone (costs CPU).
    pub wire_stats: bool,
}

impl Default for PipelineOpts {
    fn default() -> Self {
        PipelineOpts {
            delta_budget: DEFAULT_DELTA_BUDGET_MB << 20,
            wire_stats: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("handshake with {0} failed: {1}")]
    Send(String, SendFrameError),
    #[error("handshake with {0} failed: {1}")]
    Recv(String, DecodeFrameError),
    #[error("{0} closed the connection during the handshake")]
    Closed(String),
    #[error("{0} answered the hello with a {1}, expected HelloAck")]
    Unexpected(String, &'static str),
    #[error("the standby at {0} refused: {1}")]
    Refused(String, Refusal),
    #[error("authenticating the link to the standby at {0} failed: {1}")]
    Auth(String, AuthError),
}

impl ConnectError {
    /// The standby refused because it has taken over this primary's app: this primary is
    /// superseded and must stop.
    pub fn superseded(&self) -> Option<&Refusal> {
        match self {
            ConnectError::Refused(_, r @ Refusal::Superseded { .. }) => Some(r),
            _ => None,
        }
    }

    /// The standby is busy with another session (perhaps the one this primary just lost).
    pub fn busy(&self) -> bool {
        matches!(self, ConnectError::Refused(_, Refusal::Busy))
    }

    /// The standby's host answered, but no daemon does (refused, or reset/closed while its
    /// process dies): that daemon is gone (whether it took over first is for [`LastContact`]
    /// to say). A silent address (timeout, unreachable network) proves nothing: across a
    /// partition the standby may have taken over.
    pub fn peer_gone(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionRefused, ConnectionReset};
        match self {
            ConnectError::Connect(_, io) => {
                matches!(io.kind(), ConnectionRefused | ConnectionReset)
            }
            ConnectError::Auth(_, AuthError::Io(io)) => {
                matches!(io.kind(), ConnectionRefused | ConnectionReset | BrokenPipe)
            }
            ConnectError::Auth(_, AuthError::Closed(_)) => true,
            ConnectError::Closed(_) => true,
            _ => false,
        }
    }
}

/// Called (from the link's reader thread) with each epoch the standby acknowledges.
pub type OnAck = Arc<dyn Fn(u64) + Send + Sync>;

/// Asked (by the link's sender thread) for the release watermark of the held output streams,
/// which the heartbeats carry to the standby (DESIGN §10).
pub type Watermark = Arc<dyn Fn() -> Released + Send + Sync>;

/// Why the link is down (first reason wins), and what the acks prove.
#[derive(Default)]
struct Health {
    down: Mutex<Option<String>>,
    last_rx: Mutex<Option<Instant>>,
    /// (epoch, when its commit frame started out), oldest first, not yet acked.
    commits_sent: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    /// When the newest acked commit frame started out: the standby has heard from this
    /// primary at that moment or later.
    heard_at: Mutex<Option<Instant>>,
}

impl Health {
    fn fail(&self, why: String) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(why);
        }
    }
    fn rx(&self) {
        *self.last_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
    fn commit_sent(&self, epoch: u64, at: Instant) {
        let mut q = self.commits_sent.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((epoch, at));
        if q.len() > 256 {
            q.pop_front(); // acks stopped coming: the link is about to be declared lost
        }
    }
    fn acked(&self, epoch: u64) {
        let mut q = self.commits_sent.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = None;
        while q.front().is_some_and(|&(e, _)| e <= epoch) {
            at = q.pop_front().map(|(_, t)| t);
        }
        if at.is_some() {
            *self.heard_at.lock().unwrap_or_else(|p| p.into_inner()) = at;
        }
    }
}

pub struct Link {
    pub addr: String,
    tx: Sender<Outbound>,
    health: Arc<Health>,
    stream: TcpStream,
    lost_after: Duration,
    threads: Vec<JoinHandle<()>>,
    /// Disconnected when the reader thread ends (the standby closed its side).
    reader_gone: Receiver<()>,
    /// The standby's failure timeout, as its hello said.
    standby_timeout: Option<Duration>,
    /// `--etcd` on the standby: the leader key it must hold to take over, as its hello said.
    standby_leader_key: Option<String>,
}

/// What a lost link proves about the standby's failure detector: it last heard from this
/// primary no earlier than `heard_at` (the newest acked commit frame started out then), and it
/// takes over only after `timeout` of silence.
#[derive(Clone, Copy, Debug)]
pub struct LastContact {
    pub heard_at: Option<Instant>,
    pub timeout: Option<Duration>,
}

impl LastContact {
    /// Whether the standby cannot have taken over by now: it heard from us less than its
    /// failure timeout ago (with a tenth of it to spare). Unknown counts as "it may have".
    pub fn too_recent_for_takeover(&self) -> bool {
        match (self.heard_at, self.timeout) {
            (Some(h), Some(t)) => h.elapsed() < t - t / 10,
            _ => false,
        }
    }

    /// How long ago the standby last heard from us, for messages.
    pub fn describe(&self) -> String {
        match (self.heard_at, self.timeout) {
            (Some(h), Some(t)) => format!(
                "it last heard from this primary {} ms ago and takes over after {} ms of silence",
                h.elapsed().as_millis(),
                t.as_millis()
            ),
            (None, _) => "it never acknowledged an epoch on this connection".into(),
            (_, None) => "its failure timeout is unknown".into(),
        }
    }
}

/// The standby is declared lost after this much silence: 4 heartbeats, at least 1 s.
pub fn lost_after(heartbeat: Duration) -> Duration {
    (heartbeat * 4).max(Duration::from_secs(1))
}

impl Link {
    /// Connects to `addr`, authenticates (both ways), says hello and waits for the standby's
    /// answer.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        addr: &str,
        sec: &LinkSecurity,
        hello: Hello,
        heartbeat: Duration,
        timeout: Duration,
        status: SharedStatus,
        on_ack: OnAck,
        watermark: Watermark,
        pipe: PipelineOpts,
    ) -> Result<Link, ConnectError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| ConnectError::Resolve(addr.into(), e))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| ConnectError::Connect(addr.into(), last))?;
        let conn = |e: io::Error| ConnectError::Connect(addr.into(), e);
        stream.set_nodelay(true).map_err(conn)?;
        let keys = auth::handshake_tcp(&stream, sec, false, timeout)
            .map_err(|e| ConnectError::Auth(addr.into(), e))?;
        let lost = lost_after(heartbeat);
        stream
            .set_write_timeout(Some(lost.max(timeout)))
            .map_err(conn)?;
        stream.set_read_timeout(Some(timeout)).map_err(conn)?;
        let mut writer = FrameWriter::new(stream.try_clone().map_err(conn)?, keys.send);
        writer
            .send(&WireMsg::Hello(hello))
            .map_err(|e| ConnectError::Send(addr.into(), e))?;
        let health = Arc::new(Health::default());
        let mut reader = FrameReader::new(
            Counting {
                inner: stream.try_clone().map_err(conn)?,
                status: status.clone(),
            },
            keys.recv,
        );
        let (standby_timeout, standby_leader_key);
        match reader.read_msg() {
            Ok(Some(WireMsg::HelloAck(ack))) => {
                if let Some(why) = ack.refused {
                    return Err(ConnectError::Refused(addr.into(), why));
                }
                standby_timeout = ack.timeout_ms.map(Duration::from_millis);
                standby_leader_key = ack.leader_key;
                tracing::info!(
                    standby = addr,
                    standby_pid = ack.standby_pid,
                    "standby accepted the hello"
                );
            }
            Ok(Some(m)) => return Err(ConnectError::Unexpected(addr.into(), m.name())),
            Ok(None) => return Err(ConnectError::Closed(addr.into())),
            Err(e) => return Err(ConnectError::Recv(addr.into(), e)),
        }
        stream.set_read_timeout(None).map_err(conn)?;
        health.rx();
        {
            let mut b = status.lock();
            b.peer_frame();
            b.status.link = "up".into();
            b.status.bytes_wire = writer.bytes();
        }
        let (tx, rx) = bounded(QUEUE);
        let (frame_tx, frame_rx) = unbounded();
        let (written_tx, written_rx) = unbounded();
        let mut threads = Vec::new();
        let st = status.clone();
        threads.push(
            std::thread::Builder::new()
                .name("link-encode".into())
                .spawn(move || {
                    encode_loop(
                        rx,
                        frame_tx,
                        written_rx,
                        pipe.delta_budget,
                        pipe.wire_stats,
                        st,
                    )
                })
                .map_err(conn)?,
        );
        let (h, st, a) = (health.clone(), status.clone(), addr.to_string());
        threads.push(
            std::thread::Builder::new()
                .name("link-send".into())
                .spawn(move || {
                    let beat = Beat {
                        every: heartbeat,
                        watermark,
                    };
                    send_loop(writer, frame_rx, written_tx, beat, h, st, a)
                })
                .map_err(conn)?,
        );
        let (h, a) = (health.clone(), addr.to_string());
        let (gone_tx, reader_gone) = bounded::<()>(0);
        threads.push(
            std::thread::Builder::new()
                .name("link-recv".into())
                .spawn(move || {
                    recv_loop(reader, h, a, on_ack);
                    drop(gone_tx);
                })
                .map_err(conn)?,
        );
        Ok(Link {
            addr: addr.into(),
            tx,
            health,
            stream,
            lost_after: lost,
            threads,
            reader_gone,
            standby_timeout,
            standby_leader_key,
        })
    }

    /// The leader key the standby must hold before it takes over (None: it does not use an
    /// arbiter).
    pub fn standby_leader_key(&self) -> Option<&str> {
        self.standby_leader_key.as_deref()
    }

    /// What the acks of this connection prove about the standby's failure detector.
    pub fn last_contact(&self) -> LastContact {
        LastContact {
            heard_at: *self
                .health
                .heard_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            timeout: self.standby_timeout,
        }
    }

    /// `Some(reason)` once the standby is lost: the connection failed, or it has been silent
    /// longer than [`lost_after`].
    pub fn lost(&self) -> Option<String> {
        if let Some(why) = self
            .health
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(why);
        }
        let last = *self
            .health
            .last_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match last {
            Some(t) if t.elapsed() > self.lost_after => Some(format!(
                "no heartbeat or ack for {} ms (limit {} ms)",
                t.elapsed().as_millis(),
                self.lost_after.as_millis()
            )),
            _ => None,
        }
    }

    /// Items queued for the sender.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    /// Queues `item`, waiting while the queue is full; gives up (returning false) if the link
    /// is lost meanwhile.
    pub fn ship(&self, item: Outbound) -> bool {
        let mut item = item;
        loop {
            match self.tx.send_timeout(item, Duration::from_millis(50)) {
                Ok(()) => return true,
                Err(crossbeam::channel::SendTimeoutError::Timeout(it)) => {
                    if self.lost().is_some() {
                        return false;
                    }
                    item = it;
                }
                Err(crossbeam::channel::SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Sends a goodbye after everything queued, and waits (at most `wait`) until it is written.
    pub fn goodbye(&self, reason: GoodbyeReason, wait: Duration) -> bool {
        let (done_tx, done_rx) = bounded(1);
        if !self.ship(Outbound::Goodbye {
            reason,
            done: done_tx,
        }) {
            return false;
        }
        let started = Instant::now();
        if done_rx.recv_timeout(wait).is_err() {
            return false;
        }
        // Let the standby read the goodbye and close first: closing with its heartbeats unread
        // would reset the connection, and a reset may destroy the goodbye in flight.
        let _ = self
            .reader_gone
            .recv_timeout(wait.saturating_sub(started.elapsed()));
        true
    }

    /// Drops the connection (without a goodbye) and stops the threads.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Counts bytes read from the standby into the status (and nothing else).
struct Counting {
    inner: TcpStream,
    status: SharedStatus,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.status.lock().peer_frame();
        }
        Ok(n)
    }
}

/// When the sender sends heartbeats, and what they carry.
struct Beat {
    every: Duration,
    watermark: Watermark,
}

fn send_loop(
    mut w: FrameWriter<TcpStream>,
    rx: Receiver<ToSender>,
    written: Sender<()>,
    beat: Beat,
    health: Arc<Health>,
    status: SharedStatus,
    addr: String,
) {
    let heartbeat = beat.every;
    let mut last_tx = Instant::now();
    // The watermark the standby last heard, and when: a heartbeat goes out every interval
    // while it moves, even when epochs keep the link busy (they are no heartbeats).
    let mut reported = Released::default();
    let mut last_report = Instant::now();
    loop {
        let mark = (beat.watermark)();
        let moved = mark != reported;
        if moved && last_report.elapsed() >= heartbeat {
            if !send_heartbeat(&mut w, mark.clone(), &health, &status) {
                return;
            }
            (last_tx, last_report, reported) = (Instant::now(), Instant::now(), mark);
            continue;
        }
        let mut wait = heartbeat.saturating_sub(last_tx.elapsed());
        if moved {
            wait = wait.min(heartbeat.saturating_sub(last_report.elapsed()));
        }
        let item = match rx.recv_timeout(wait) {
            Ok(i) => i,
            Err(RecvTimeoutError::Timeout) => {
                if last_tx.elapsed() < heartbeat {
                    continue; // the watermark's turn: sent at the top of the loop
                }
                let mark = (beat.watermark)();
                if !send_heartbeat(&mut w, mark.clone(), &health, &status) {
                    return;
                }
                (last_tx, last_report, reported) = (Instant::now(), Instant::now(), mark);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let result = match item {
            ToSender::Frame {
                msg,
                pages,
                snap_only,
            } => {
                let raw = match &msg {
                    WireMsg::EpochCommit(c) => {
                        // Before the write: the standby reads it no earlier than this.
                        health.commit_sent(c.epoch, Instant::now());
                        meta_raw_bytes(&c.meta)
                    }
                    _ => pages * remus_abi::PAGE_SIZE as u64,
                };
                let r = w.send(&msg);
                if let Ok(n) = r {
                    let mut b = status.lock();
                    b.status.bytes_raw += raw;
                    b.status.bytes_wire = w.bytes();
                    if pages > 0 {
                        let p = &mut b.status.pipeline;
                        p.page_frame_bytes += n as u64;
                        if let Some(s) = snap_only {
                            *p.snap_only_frame_bytes.get_or_insert(0) += s;
                        }
                    }
                }
                // The encoder may hand over the next frame.
                let _ = written.send(());
                r.map(|_| ())
            }
            ToSender::Goodbye { reason, done } => {
                tracing::info!(standby = %addr, %reason, "saying goodbye to the standby");
                let r = w.send(&WireMsg::Goodbye { reason });
                let _ = w.get_ref().shutdown(Shutdown::Write);
                let _ = done.send(());
                if let Err(e) = r {
                    tracing::warn!("goodbye to {addr} not delivered: {e}");
                }
                return;
            }
        };
        if let Err(e) = result {
            health.fail(format!("sending to the standby: {e}"));
            return;
        }
        last_tx = Instant::now();
    }
}

/// Sends a heartbeat carrying `released`; false (the link marked failed) if it cannot.
fn send_heartbeat(
    w: &mut FrameWriter<TcpStream>,
    released: Released,
    health: &Health,
    status: &SharedStatus,
) -> bool {
    if let Err(e) = w.send(&WireMsg::Heartbeat { released }) {
        health.fail(format!("sending a heartbeat: {e}"));
        return false;
    }
    status.lock().status.bytes_wire = w.bytes();
    true
}

/// Rough size of an epoch's metadata, for the bytes_raw counter.
fn meta_raw_bytes(meta: &EpochMeta) -> u64 {
    (meta.maps.len() + meta.fds.len() * 64 + meta.resets.len() * 16 + 512) as u64
}

fn recv_loop(mut r: FrameReader<Counting>, health: Arc<Health>, addr: String, on_ack: OnAck) {
    loop {
        match r.read_msg() {
            Ok(Some(WireMsg::Ack { epoch })) => {
                health.rx();
                health.acked(epoch);
                on_ack(epoch);
                tracing::trace!(epoch, "standby acked");
            }
            Ok(Some(WireMsg::Heartbeat { .. })) => health.rx(),
            Ok(Some(WireMsg::Goodbye { reason })) => {
                health.fail(format!("the standby said goodbye: {reason}"));
                return;
            }
            Ok(Some(m)) => {
                health.fail(format!("the standby sent an unexpected {}", m.name()));
                return;
            }
            Ok(None) => {
                health.fail("the standby closed the connection".into());
                return;
            }
            Err(e) => {
                health.fail(format!("{e}"));
                return;
            }
        }
        let _ = &addr;
    }
}
