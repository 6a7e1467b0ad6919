//! `remusd standby`: receives epochs from one primary at a time, keeps the last committed
//! image, and restores it when the primary's host fails.

mod arbiter;
pub mod detector;
#[cfg(test)]
mod fuzz;
pub mod kept;
pub mod receiver;
pub mod reprotect;
#[cfg(test)]
mod tests;

use std::io::{self, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam::channel::{bounded, RecvTimeoutError};

use crate::control::server::ControlServer;
use crate::control::status::{SharedStatus, StandbyState, Status};
use crate::image::Image;
use crate::persist;
use crate::wire::auth::{self, LinkSecurity, SessionKeys};
use crate::wire::messages::{
    GoodbyeReason, HelloAck, OutStream, Refusal, WireMsg, PROTOCOL_VERSION,
};
use crate::wire::{DecodeFrameError, FrameReader, FrameWriter};
use detector::Liveness;
use receiver::{Event, Receiver};

pub struct StandbyArgs {
    pub listen: String,
    pub state_dir: PathBuf,
    pub timeout_ms: u64,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub control: Option<PathBuf>,
    /// `--bind-map FROM=TO` for the restored process's sockets.
    pub bind_map: Vec<crate::restore::BindMap>,
    /// `--on-takeover CMD`: run with `sh -c` before the restored program resumes (e.g. to move
    /// a service address here); a failure stops the takeover.
    pub on_takeover: Option<String>,
    /// The key (or `--insecure`) the link is authenticated with.
    pub security: LinkSecurity,
    /// `--key-file`, given to the restored program's new primary when it is protected again.
    pub key_file: Option<PathBuf>,
    /// `--reprotect-with ADDR`: right after a takeover, protect the restored program again
    /// with the standby at ADDR (as `remusctl protect --standby ADDR` would).
    pub reprotect_with: Option<String>,
    /// `--metrics ADDR`, bound: served once the status exists.
    pub metrics: Option<crate::control::metrics::MetricsListener>,
    /// `--etcd`: take over only after acquiring the leader key.
    pub arbiter: Option<crate::arbiter::ArbiterConfig>,
    /// `--service-addr`: the address that comes up here at a takeover (recorded; the takeover
    /// wiring uses [`crate::net::topology`]).
    pub service: Option<ServiceAddrArg>,
}

/// `--service-addr ADDR/PREFIX [--service-dev DEV]` on the standby.
#[derive(Debug, Clone)]
pub struct ServiceAddrArg {
    pub addr: crate::net::service::ServiceAddr,
    /// None: the device that routes to the primary's connection, found at takeover.
    pub dev: Option<String>,
}

/// How a session with one primary ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The primary (or its host) is gone without a goodbye: take over.
    Lost(String),
    /// The primary sent something wrong; the connection was dropped. The primary is alive, so
    /// the standby does not take over.
    Protocol(String),
    /// The primary said goodbye.
    Goodbye(GoodbyeReason),
    /// No usable hello.
    Handshake(String),
    /// The standby itself is being stopped.
    Stopped,
}

/// What a session needs from the daemon.
pub struct SessionCtx {
    pub timeout: Duration,
    pub status: SharedStatus,
    /// Where `committed.json` goes (None: nowhere, for tests).
    pub state_dir: Option<PathBuf>,
    pub stop: Arc<AtomicBool>,
    /// For [`session`], which authenticates the peer itself.
    pub security: LinkSecurity,
    /// `--etcd`: the leader key, told to the primary in the hello's answer.
    pub leader_key: Option<String>,
}

/// How long a peer may take to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `remusd standby`; returns the process exit code.
pub fn run(mut args: StandbyArgs) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| args.listen.clone());
    let mut st = Status::new("standby", StandbyState::Waiting.label());
    st.listen = Some(local.clone());
    st.reason = Some("no primary connected".into());
    let status = SharedStatus::new(st);
    status.lock().set_standby_state(StandbyState::Waiting);
    let etcd = match &args.arbiter {
        Some(cfg) => {
            status.lock().status.arbiter = Some(crate::arbiter::lease::initial_status(
                cfg,
                crate::control::status::ArbiterState::Idle,
            ));
            Some(
                crate::arbiter::Etcd::start(
                    cfg.endpoints.clone(),
                    crate::primary::request_timeout(cfg),
                )
                .context("starting the etcd client")?,
            )
        }
        None => None,
    };
    if let Some(etcd) = etcd.clone() {
        // Said at once, not only when the primary is lost.
        let status = status.clone();
        let _ = std::thread::Builder::new()
            .name("etcd-check".into())
            .spawn(move || {
                // Until it answers once (every 2 s): the status says so meanwhile.
                let mut warned = false;
                loop {
                    match etcd.ping() {
                        Ok(()) => {
                            tracing::info!("etcd at {} answers", etcd.endpoints());
                            crate::arbiter::lease::show(&status, |a| a.error = None);
                            return;
                        }
                        Err(e) => {
                            if !warned {
                                tracing::warn!(
                                    "{e}: this standby will not take over until it can reach \
                                     etcd and holds the leader key"
                                );
                                warned = true;
                            }
                            crate::arbiter::lease::show(&status, |a| a.error = Some(e.to_string()));
                        }
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
            });
    }
    if let Some(m) = args.metrics.take() {
        m.serve(status.clone())?;
    }
    let rejoin: reprotect::Slot = Arc::new(Mutex::new(None));
    let commands: crate::control::server::CommandFn = {
        let (slot, status) = (rejoin.clone(), status.clone());
        Arc::new(move |line: &str| reprotect::handle_command(line, &slot, &status))
    };
    let _control = ControlServer::start_with_commands(
        args.control.clone(),
        "standby",
        status.clone(),
        Some(commands),
    )?;
    tracing::info!(listen = %local, state_dir = %args.state_dir.display(), "standby waiting for a primary");
    crate::sys::notify_ready(&format!("waiting for a primary on {local}"));

    let busy = Arc::new(AtomicBool::new(false));
    let refusal: Arc<Mutex<Refusal>> = Arc::new(Mutex::new(Refusal::Busy));
    let (conn_tx, conn_rx) = bounded::<(TcpStream, String, SessionKeys)>(1);
    {
        let (busy, refusal, sec) = (busy.clone(), refusal.clone(), args.security.clone());
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                for s in listener.incoming() {
                    let s = match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let peer = s
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| "?".into());
                    // Each peer authenticates in a thread of its own, before it may take the
                    // session: a stranger can neither hold the standby nor learn its state.
                    let (busy, refusal, sec, conn_tx) =
                        (busy.clone(), refusal.clone(), sec.clone(), conn_tx.clone());
                    std::thread::spawn(move || {
                        let keys = match auth::handshake_tcp(&s, &sec, true, AUTH_TIMEOUT) {
                            Ok(k) => k,
                            Err(e) => {
                                tracing::error!(%peer, "refused a connection: {e}");
                                let _ = s.shutdown(Shutdown::Both);
                                return;
                            }
                        };
                        if busy.swap(true, Ordering::SeqCst) {
                            let why = refusal.lock().map(|s| s.clone()).unwrap_or(Refusal::Busy);
                            tracing::warn!(%peer, "refusing a second primary: {why}");
                            refuse(s, keys, why);
                        } else {
                            let _ = conn_tx.send((s, peer, keys));
                        }
                    });
                }
            })
            .context("starting the accept thread")?;
    }

    let ctx = SessionCtx {
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        status: status.clone(),
        state_dir: Some(args.state_dir.clone()),
        stop: stop.clone(),
        security: args.security.clone(),
        leader_key: args.arbiter.as_ref().map(|a| a.leader_key()),
    };
    // A primary that connected while the standby waited for the leader key.
    let mut pending: Option<arbiter::Conn> = None;
    loop {
        let next = match pending.take() {
            Some(c) => Ok(c),
            None => conn_rx.recv_timeout(Duration::from_millis(200)),
        };
        let (stream, peer, keys) = match next {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Relaxed) {
                    tracing::info!("standby stopped");
                    return Ok(0);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the accept thread stopped"),
        };
        tracing::info!(%peer, "primary connected");
        let (end, rx) = session_authenticated(stream, peer.clone(), keys, &ctx);
        // A partial image (a full image still streaming) cannot be restored.
        let committed = rx.image.restorable_epoch();
        // A planned switch-over is a takeover the primary asked for (it stopped the program
        // after that epoch, and revoked its lease).
        let end = match end {
            SessionEnd::Goodbye(GoodbyeReason::Switchover { epoch, .. })
                if committed.is_some_and(|c| c >= epoch) =>
            {
                SessionEnd::Lost(format!(
                    "a planned switch-over (remusctl switchover) at epoch {epoch}"
                ))
            }
            end => end,
        };
        let forget = |state: StandbyState, reason: String, exit_code: Option<i32>| {
            remove_committed(&args.state_dir);
            let mut b = status.lock();
            b.set_standby_state(state);
            b.status.link = "down".into();
            b.status.committed_epoch = None;
            b.status.exit_code = exit_code;
            b.unprotect(reason);
        };
        match end {
            SessionEnd::Stopped => return Ok(0),
            SessionEnd::Lost(why) => {
                let Some(epoch) = committed else {
                    let what = if rx.image.committed_epoch().is_some() {
                        "before the streamed full image was complete"
                    } else {
                        "before the first image was committed"
                    };
                    tracing::warn!(%peer, "primary lost ({why}) {what}; nothing to restore");
                    forget(
                        StandbyState::Waiting,
                        format!("primary {peer} lost {what} ({why})"),
                        None,
                    );
                    busy.store(false, Ordering::SeqCst);
                    continue;
                };
                let lease = match (&etcd, &args.arbiter) {
                    (Some(etcd), Some(cfg)) => {
                        let lost = arbiter::Lost {
                            peer: &peer,
                            why: &why,
                            epoch,
                            app_pid: rx.hello.as_ref().map(|h| h.app_pid),
                            primary_lease: rx.hello.as_ref().and_then(|h| h.lease),
                        };
                        let cand =
                            crate::arbiter::campaign::Candidate::new(etcd.clone(), cfg.clone());
                        match arbiter::await_key(
                            cand,
                            &lost,
                            &status,
                            &stop,
                            &conn_rx,
                            &busy,
                            cfg.ttl(),
                        ) {
                            arbiter::Verdict::TakeOver(holder) => Some(holder),
                            arbiter::Verdict::NewPrimary(c) => {
                                forget(
                                    StandbyState::Waiting,
                                    format!(
                                        "primary {peer} lost ({why}) but a primary connected before                                          this standby held the leader key: image discarded"
                                    ),
                                    None,
                                );
                                pending = Some(c);
                                continue;
                            }
                            arbiter::Verdict::NoTakeover(reason) => {
                                forget(StandbyState::PrimaryUnprotected, reason, None);
                                busy.store(false, Ordering::SeqCst);
                                continue;
                            }
                            arbiter::Verdict::Stopped => return Ok(0),
                        }
                    }
                    _ => None,
                };
                tracing::error!(%peer, epoch, "primary lost: {why}; TAKING OVER from epoch {epoch}");
                // Fencing: the old primary, if it wakes up, asks again and learns from this
                // answer that it must stop.
                *refusal.lock().unwrap_or_else(|p| p.into_inner()) = Refusal::Superseded {
                    primary: peer.clone(),
                    epoch,
                };
                return takeover(&rx, &peer, &why, &args, &status, &stop, &rejoin, lease);
            }
            SessionEnd::Protocol(why) => {
                tracing::error!(%peer, "dropped the primary after a protocol error: {why}");
                let mut b = status.lock();
                b.set_standby_state(StandbyState::Waiting);
                b.status.link = "down".into();
                b.unprotect(format!(
                    "dropped primary {peer} after a protocol error ({why}); committed image (epoch {}) left untouched; \
                     not taking over since the primary is alive",
                    committed.map_or("none".to_string(), |e| e.to_string())
                ));
            }
            SessionEnd::Goodbye(GoodbyeReason::AppExited(e)) => {
                tracing::info!(%peer, "the app {e}; image discarded, not resurrecting it");
                forget(
                    StandbyState::AppExited,
                    format!("the app {e}"),
                    e.exit_code(),
                );
            }
            SessionEnd::Goodbye(GoodbyeReason::Unprotected { reason }) => {
                tracing::warn!(%peer, "the primary is unprotected ({reason}); image discarded, no takeover");
                forget(
                    StandbyState::PrimaryUnprotected,
                    format!("the primary became unprotected: {reason}"),
                    None,
                );
            }
            SessionEnd::Goodbye(GoodbyeReason::Switchover { epoch, .. }) => {
                tracing::error!(%peer, epoch, "the primary asked for a switch-over at epoch {epoch}, but this standby has not committed it: not taking over");
                forget(
                    StandbyState::Waiting,
                    format!("primary {peer} switched over at epoch {epoch}, which this standby had not committed"),
                    None,
                );
            }
            SessionEnd::Goodbye(GoodbyeReason::OperatorStop) => {
                tracing::info!(%peer, "the primary was stopped by an operator; image discarded");
                forget(
                    StandbyState::Waiting,
                    format!("primary {peer} was stopped by an operator"),
                    None,
                );
            }
            SessionEnd::Handshake(why) => {
                tracing::warn!(%peer, "handshake failed: {why}");
                let mut b = status.lock();
                b.set_standby_state(StandbyState::Waiting);
                b.status.link = "down".into();
                b.unprotect(format!("handshake with {peer} failed: {why}"));
            }
        }
        busy.store(false, Ordering::SeqCst);
    }
}

/// Answers the hello of an (authenticated) primary this standby cannot take.
fn refuse(s: TcpStream, keys: SessionKeys, why: Refusal) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(clone) = s.try_clone() else { return };
    if let Ok(Some(WireMsg::Hello(_))) = FrameReader::new(clone, keys.recv).read_msg() {
        let ack = HelloAck {
            version: PROTOCOL_VERSION,
            standby_pid: std::process::id(),
            refused: Some(why),
            timeout_ms: None,
            leader_key: None,
        };
        let _ = FrameWriter::new(&s, keys.send).send(&WireMsg::HelloAck(ack));
    }
    let _ = s.shutdown(Shutdown::Both);
}

/// Counts bytes and signs of life on the way in.
struct Counting {
    inner: TcpStream,
    live: Liveness,
    status: SharedStatus,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.live.alive();
            let mut b = self.status.lock();
            b.peer_frame();
            b.status.bytes_wire += n as u64;
        }
        Ok(n)
    }
}

type Incoming = Result<Option<WireMsg>, DecodeFrameError>;

/// Authenticates the peer with `ctx.security`, then serves it ([`session_authenticated`]).
/// A peer that fails the authentication ends the session at once ([`SessionEnd::Handshake`]),
/// before anything it sent is looked at.
pub fn session(stream: TcpStream, peer: String, ctx: &SessionCtx) -> (SessionEnd, Receiver) {
    match auth::handshake_tcp(&stream, &ctx.security, true, AUTH_TIMEOUT) {
        Ok(keys) => session_authenticated(stream, peer, keys, ctx),
        Err(e) => {
            let _ = stream.shutdown(Shutdown::Both);
            (SessionEnd::Handshake(e.to_string()), Receiver::new())
        }
    }
}

/// Serves one authenticated primary until it says goodbye, fails, or misbehaves. Returns how
/// it ended and the receiver (with its committed image).
pub fn session_authenticated(
    stream: TcpStream,
    peer: String,
    keys: SessionKeys,
    ctx: &SessionCtx,
) -> (SessionEnd, Receiver) {
    let mut rx = Receiver::new();
    let end = match session_inner(&stream, &peer, keys, ctx, &mut rx) {
        Ok(end) => end,
        Err(e) => SessionEnd::Lost(format!("{e:#}")),
    };
    let _ = stream.shutdown(Shutdown::Both);
    (end, rx)
}

fn session_inner(
    stream: &TcpStream,
    peer: &str,
    keys: SessionKeys,
    ctx: &SessionCtx,
    rx: &mut Receiver,
) -> Result<SessionEnd> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let live = Liveness::new();
    live.alive();
    {
        let mut b = ctx.status.lock();
        b.set_standby_state(StandbyState::Receiving);
        b.status.link = "up".into();
        b.status.peer = Some(peer.into());
        b.status.epoch = None;
        b.status.committed_epoch = None;
        b.status.exit_code = None;
        b.status.restored_pid = None;
        b.status.app_pid = None;
        b.unprotect("waiting for the first committed epoch");
        b.peer_frame();
    }
    // Bounded: a standby that applies slower than the primary sends pushes back through TCP
    // (the primary then merges epochs) instead of queueing without limit and taking over late.
    let (msg_tx, msg_rx) = bounded::<Incoming>(8);
    let reader = {
        let mut r = FrameReader::new(
            Counting {
                inner: stream.try_clone()?,
                live: live.clone(),
                status: ctx.status.clone(),
            },
            keys.recv,
        );
        std::thread::Builder::new()
            .name("standby-recv".into())
            .spawn(move || loop {
                let m = r.read_msg();
                let done = !matches!(m, Ok(Some(_)));
                if msg_tx.send(m).is_err() || done {
                    return;
                }
            })?
    };
    let writer = Arc::new(Mutex::new(FrameWriter::new(stream.try_clone()?, keys.send)));
    let hb_stop = Arc::new(AtomicBool::new(false));
    let mut hb_thread = None;
    let mut write_err: Option<String> = None;
    // When the image file was last written (`persist`), and how long that took: the next
    // write waits at least ten times as long, so saving a large image costs the session at
    // most a tenth of its time (acks of the epochs behind it wait while it writes).
    let mut last_persist: Option<(Instant, Duration)> = None;
    let end = (|| -> Result<SessionEnd> {
        // Handshake: the hello must come within a few seconds.
        let hello_deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if ctx.stop.load(Ordering::Relaxed) {
                return Ok(SessionEnd::Stopped);
            }
            let wait = if rx.hello.is_none() {
                let left = hello_deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(SessionEnd::Handshake("no hello within 5 s".into()));
                }
                left.min(Duration::from_millis(50))
            } else {
                Duration::from_millis(20)
            };
            let m = match msg_rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if rx.hello.is_some() {
                        if let Some(s) = live.dead(ctx.timeout) {
                            return Ok(SessionEnd::Lost(format!(
                                "no frame from the primary for {} ms (timeout {} ms)",
                                s.as_millis(),
                                ctx.timeout.as_millis()
                            )));
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(SessionEnd::Lost("the connection reader stopped".into()))
                }
            };
            let msg = match m {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if rx.hello.is_none() {
                        return Ok(SessionEnd::Handshake(
                            "the peer closed the connection before its hello".into(),
                        ));
                    }
                    return Ok(SessionEnd::Lost(format!(
                        "the connection closed without a goodbye{}",
                        write_err
                            .as_ref()
                            .map(|e| format!(" (after: {e})"))
                            .unwrap_or_default()
                    )));
                }
                Err(e) if e.is_connection_break() => {
                    if rx.hello.is_none() {
                        return Ok(SessionEnd::Handshake(e.to_string()));
                    }
                    return Ok(SessionEnd::Lost(format!("the connection broke: {e}")));
                }
                Err(e) => {
                    if rx.hello.is_none() {
                        return Ok(SessionEnd::Handshake(e.to_string()));
                    }
                    return Ok(SessionEnd::Protocol(e.to_string()));
                }
            };
            let ev = match rx.handle(msg) {
                Ok(ev) => ev,
                Err(e) if rx.hello.is_none() => {
                    if let receiver::ReceiveError::Version { got } = e {
                        // Say why, in a form the primary can act on (a frame header of another
                        // version would not have been read this far).
                        let ack = HelloAck {
                            version: PROTOCOL_VERSION,
                            standby_pid: std::process::id(),
                            refused: Some(Refusal::Version {
                                primary: got,
                                standby: PROTOCOL_VERSION,
                            }),
                            timeout_ms: None,
                            leader_key: None,
                        };
                        let _ = writer
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .send(&WireMsg::HelloAck(ack));
                    }
                    return Ok(SessionEnd::Handshake(e.to_string()));
                }
                Err(e) => return Ok(SessionEnd::Protocol(e.to_string())),
            };
            match ev {
                Event::Nothing => {
                    let mut b = ctx.status.lock();
                    b.status.epoch = rx.last_seen;
                    b.status.output_held_bytes = rx.output.bytes();
                }
                Event::Hello(h) => {
                    tracing::info!(
                        %peer, app_pid = h.app_pid, exe = %h.exe, epoch_ms = h.epoch_ms,
                        heartbeat_ms = h.heartbeat_ms, "primary said hello"
                    );
                    let ack = HelloAck {
                        version: PROTOCOL_VERSION,
                        standby_pid: std::process::id(),
                        refused: None,
                        timeout_ms: Some(ctx.timeout.as_millis() as u64),
                        leader_key: ctx.leader_key.clone(),
                    };
                    writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(&WireMsg::HelloAck(ack))?;
                    {
                        let mut b = ctx.status.lock();
                        b.status.epoch_ms = Some(h.epoch_ms);
                        b.status.heartbeat_ms = Some(h.heartbeat_ms);
                        b.status.app_exe = Some(h.exe.clone());
                    }
                    let hb = Duration::from_millis(h.heartbeat_ms.max(1));
                    let (w, stop) = (writer.clone(), hb_stop.clone());
                    hb_thread = Some(
                        std::thread::Builder::new()
                            .name("standby-hb".into())
                            .spawn(move || {
                                while !stop.load(Ordering::Relaxed) {
                                    std::thread::sleep(hb);
                                    if stop.load(Ordering::Relaxed) {
                                        return;
                                    }
                                    if w.lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .send(&WireMsg::Heartbeat {
                                            released: Default::default(),
                                        })
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                            })?,
                    );
                }
                Event::Committed { epoch, pages } => {
                    // A failed write is not decisive: what the primary sent before it went
                    // (a goodbye, say) is still to be read; the reader reports the end.
                    let sent = writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(&WireMsg::Ack { epoch });
                    if let Err(e) = sent {
                        if write_err.is_none() {
                            tracing::warn!(epoch, "sending the ack: {e}");
                            write_err = Some(e.to_string());
                        }
                    }
                    let restorable = rx.image.restorable_epoch().is_some();
                    {
                        let mut b = ctx.status.lock();
                        b.status.epoch = Some(epoch);
                        b.status.last_dirty_pages = Some(pages);
                        b.status.epochs_total += 1;
                        b.status.bytes_raw = rx.bytes_raw;
                        b.status.output_held_bytes = rx.output.bytes();
                        if let Some(m) = &rx.image.meta {
                            b.record_pause(m.pause_ns);
                            b.record_threads(m.thread_records().len(), m.rendezvous_ns, m.pause_ns);
                        }
                        if restorable {
                            b.status.committed_epoch = Some(epoch);
                            b.status.protected = true;
                            b.status.reason = None;
                        } else {
                            b.status.committed_epoch = None;
                            b.status.protected = false;
                            b.status.reason = Some(format!(
                                "receiving a full image streamed while the program runs (epoch \
                                 {epoch}, {} pages so far); it can be restored once complete",
                                rx.image.pages.len()
                            ));
                        }
                    }
                    if !restorable {
                        tracing::debug!(
                            epoch,
                            pages,
                            "partial epoch committed (full image streaming)"
                        );
                        continue;
                    }
                    if let Some(dir) = &ctx.state_dir {
                        if let Err(e) = write_committed(dir, &rx.image, peer) {
                            tracing::warn!("writing committed.json: {e:#}");
                        }
                        if last_persist.is_none_or(|(t, took)| {
                            t.elapsed() >= persist::PERSIST_INTERVAL.max(took * 10)
                        }) {
                            let t = Instant::now();
                            if let Err(e) = persist::save(&persist::path_in(dir), &rx.image) {
                                tracing::warn!(epoch, "saving the image: {e}");
                            }
                            last_persist = Some((t, t.elapsed()));
                        }
                    }
                    tracing::debug!(epoch, pages, "epoch committed");
                }
                Event::Goodbye(reason) => return Ok(SessionEnd::Goodbye(reason)),
            }
        }
    })();
    hb_stop.store(true, Ordering::Relaxed);
    let _ = stream.shutdown(Shutdown::Both);
    // The reader may be blocked handing over a frame that nobody will take (the session
    // ended on silence while frames were still buffered, e.g. after this daemon was stopped
    // and continued): closing the channel frees it, as the shutdown frees a blocked read.
    drop(msg_rx);
    let _ = reader.join();
    if let Some(t) = hb_thread {
        let _ = t.join();
    }
    end
}

fn write_json_atomic(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn write_committed(dir: &Path, image: &Image, peer: &str) -> Result<()> {
    let Some(m) = &image.meta else { return Ok(()) };
    let v = serde_json::json!({
        "epoch": m.epoch,
        "time_ms": crate::sys::unix_ms(),
        "primary": peer,
        "regions": image.regions.len(),
        "pages": image.pages.len(),
        "fds": m.fds.len(),
        "cwd": m.cwd,
    });
    write_json_atomic(&dir.join("committed.json"), &v)
}

fn remove_committed(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("committed.json"));
    let _ = std::fs::remove_file(persist::path_in(dir));
}

/// One stream's committed output written at a takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recovered {
    stream: OutStream,
    /// The stream offset it starts at (the primary's last reported watermark).
    from: u64,
    bytes: u64,
}

/// Writes the committed output the primary had not reported written (DESIGN §10) where the
/// restored program's stdout and stderr go (`--stdout`/`--stderr`, else this daemon's own),
/// in order, before the program resumes: so it comes first there, then the program's own.
///
/// `STATE_DIR/recovered.json` says what is written, before it is: `stdout` and `stderr`, how
/// many bytes of each file are the primary's, not the restored program's, from `stdout_at`
/// and `stderr_at` (the file's size before; null for this daemon's own stdout/stderr).
fn write_recovered(kept: &kept::KeptOutput, args: &StandbyArgs) -> Vec<Recovered> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let owed = kept.owed();
    let total = |err: bool, rec: &mut dyn Iterator<Item = (OutStream, u64)>| -> u64 {
        rec.filter(|(s, _)| (*s == OutStream::Stderr) == err)
            .map(|(_, n)| n)
            .sum()
    };
    // Where in each file they start: its size before (they are appended).
    let size = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
    };
    let (out_at, err_at) = (size(&args.stdout), size(&args.stderr));
    let note = |stdout: u64, stderr: u64| {
        let v = serde_json::json!({
            "stdout": stdout, "stdout_at": out_at, "stderr": stderr, "stderr_at": err_at
        });
        if let Err(e) = write_json_atomic(&args.state_dir.join("recovered.json"), &v) {
            tracing::warn!("writing recovered.json: {e:#}");
        }
    };
    let planned = |err| total(err, &mut owed.iter().map(|(s, _, d)| (*s, d.len() as u64)));
    note(planned(false), planned(true));
    let mut dests: [Option<std::fs::File>; 2] = [None, None];
    let mut failed = [false; 2];
    let mut done: Vec<Recovered> = Vec::new();
    for (stream, from, data) in owed {
        // A shared stdout+stderr goes where the restored program's fd 1 goes.
        let i = usize::from(stream == OutStream::Stderr);
        if failed[i] {
            continue;
        }
        if dests[i].is_none() {
            let path = if i == 0 { &args.stdout } else { &args.stderr };
            let opened = match path {
                Some(p) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o644)
                        .open(p)
                        .map_err(|e| format!("{}: {e}", p.display()))
                }
                None => {
                    let own = if i == 0 {
                        io::stdout().as_fd().try_clone_to_owned()
                    } else {
                        io::stderr().as_fd().try_clone_to_owned()
                    };
                    own.map(std::fs::File::from)
                        .map_err(|e| format!("this daemon's fd {}: {e}", i + 1))
                }
            };
            match opened {
                Ok(f) => dests[i] = Some(f),
                Err(e) => {
                    tracing::error!(
                        stream = stream.name(),
                        "cannot open where the restored program's output goes ({e}): committed \
                         output of the primary is lost"
                    );
                    failed[i] = true;
                    continue;
                }
            }
        }
        let Some(f) = dests[i].as_mut() else { continue };
        if let Err(e) = f.write_all(data) {
            tracing::error!(
                stream = stream.name(),
                "writing the primary's committed output: {e}; the rest of it is lost"
            );
            failed[i] = true;
            continue;
        }
        match done.last_mut() {
            Some(r) if r.stream == stream && r.from + r.bytes == from => {
                r.bytes += data.len() as u64
            }
            _ => done.push(Recovered {
                stream,
                from,
                bytes: data.len() as u64,
            }),
        }
    }
    for r in &done {
        tracing::warn!(
            stream = r.stream.name(),
            from = r.from,
            bytes = r.bytes,
            "wrote {} bytes of committed output that the primary had not confirmed writing \
             ({} from byte {}), before the restored program resumes",
            r.bytes,
            r.stream.name(),
            r.from
        );
    }
    if failed.iter().any(|&f| f) {
        let wrote = |err| total(err, &mut done.iter().map(|r| (r.stream, r.bytes)));
        note(wrote(false), wrote(true));
    }
    if kept.dropped > 0 {
        tracing::warn!(
            bytes = kept.dropped,
            "committed output beyond the standby's limit was dropped earlier and is lost"
        );
    }
    done
}

/// Restores the image, waits for the restored process and returns its exit code.
#[allow(clippy::too_many_arguments)]
fn takeover(
    rx: &Receiver,
    peer: &str,
    why: &str,
    args: &StandbyArgs,
    status: &SharedStatus,
    stop: &AtomicBool,
    rejoin: &reprotect::Slot,
    lease: Option<crate::arbiter::LeaseHolder>,
) -> Result<i32> {
    let image = &rx.image;
    let epoch = image.committed_epoch().unwrap_or(0);
    let service = match &args.service {
        Some(svc) => match service_restore(svc, peer) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(epoch, "TAKEOVER FAILED: {e}");
                let _ = write_json_atomic(
                    &args.state_dir.join("takeover.json"),
                    &serde_json::json!({ "epoch": epoch, "error": e.clone(), "time_ms": crate::sys::unix_ms(), "primary": peer }),
                );
                let mut b = status.lock();
                b.set_standby_state(StandbyState::Waiting);
                b.unprotect(format!("takeover from epoch {epoch} failed: {e}"));
                return Err(anyhow::anyhow!("{e}; the program was not restored"));
            }
        },
        None => None,
    };
    let opts = crate::restore::RestoreOptions {
        stdout: args.stdout.clone(),
        stderr: args.stderr.clone(),
        state_dir: args.state_dir.clone(),
        bind_map: args.bind_map.clone(),
        file_root: crate::files::root().map(|r| r.root),
        service,
        ..Default::default()
    };
    let started = Instant::now();
    if let Some(cmd) = &args.on_takeover {
        if let Err(e) = run_on_takeover(cmd, epoch, peer, &args.state_dir) {
            tracing::error!(epoch, "TAKEOVER STOPPED: --on-takeover failed: {e}");
            let _ = write_json_atomic(
                &args.state_dir.join("takeover.json"),
                &serde_json::json!({ "epoch": epoch, "error": format!("--on-takeover failed: {e}"), "time_ms": crate::sys::unix_ms(), "primary": peer }),
            );
            let mut b = status.lock();
            b.set_standby_state(StandbyState::Waiting);
            b.unprotect(format!(
                "takeover from epoch {epoch} stopped: --on-takeover failed: {e}"
            ));
            return Err(anyhow::anyhow!(
                "--on-takeover `{cmd}` failed: {e}; the program was not restored"
            ));
        }
    }
    // Committed output the primary may not have written: the restored program's state is
    // past it, so it goes out now, where the program's own output will follow it.
    let recovered: Vec<serde_json::Value> = write_recovered(&rx.output, args)
        .iter()
        .map(|r| serde_json::json!({ "stream": r.stream.name(), "from": r.from, "bytes": r.bytes }))
        .collect();
    let restored = match crate::restore::restore(image, &opts) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(epoch, "TAKEOVER FAILED: restoring epoch {epoch}: {e}");
            let _ = write_json_atomic(
                &args.state_dir.join("takeover.json"),
                &serde_json::json!({ "epoch": epoch, "error": e.to_string(), "time_ms": crate::sys::unix_ms(), "primary": peer }),
            );
            let mut b = status.lock();
            b.set_standby_state(StandbyState::Waiting);
            b.unprotect(format!("takeover from epoch {epoch} failed: {e}"));
            return Err(anyhow::anyhow!("restoring epoch {epoch} failed: {e}"));
        }
    };
    let pid = restored.pid;
    let threads = restored.tids.len();
    let ns = match restored.pid_namespace_init {
        Some(init) => format!(
            " (pid {} in a new PID namespace, init {init}: a TID was taken here)",
            restored.own_pid
        ),
        None => String::new(),
    };
    tracing::warn!(
        epoch, pid, threads, restore_ms = started.elapsed().as_millis() as u64,
        "TOOK OVER: restored epoch {epoch} as pid {pid}{ns} with {threads} threads (primary {peer} lost: {why}); it runs unprotected"
    );
    {
        let mut b = status.lock();
        b.set_standby_state(StandbyState::TookOver);
        b.status.takeovers += 1;
        b.status.link = "down".into();
        b.status.app_pid = Some(pid);
        b.status.restored_pid = Some(pid);
        b.forget_peer();
        b.unprotect(format!(
            "took over from primary {peer} ({why}) at epoch {epoch}; the restored process runs unprotected"
        ));
    }
    write_json_atomic(
        &args.state_dir.join("takeover.json"),
        &serde_json::json!({ "epoch": epoch, "pid": pid, "own_pid": restored.own_pid,
            "threads": restored.tids.len(), "pid_namespace_init": restored.pid_namespace_init,
            "time_ms": crate::sys::unix_ms(), "primary": peer, "reason": why,
            "recovered_output": recovered }),
    )?;
    let target = reprotect::Target {
        pid,
        own_pid: restored.own_pid,
        state_dir: args.state_dir.clone(),
        key_file: args.key_file.clone(),
        insecure: matches!(args.security, LinkSecurity::Insecure),
        epoch_ms: status.lock().status.epoch_ms,
        lease: reprotect::LeaseSlot(Arc::new(Mutex::new(lease))),
        service: restored.network.as_ref().map(|n| reprotect::ServiceHere {
            addr: n.0.spec.service.to_string(),
            dev: n.0.spec.dev.clone(),
            veth: n.0.spec.host_veth(),
        }),
    };
    let lease = target.lease.clone();
    *rejoin.lock().unwrap_or_else(|p| p.into_inner()) = Some(target.clone());
    if let Some(addr) = &args.reprotect_with {
        match reprotect::start(&target, addr, status) {
            Ok(msg) => tracing::info!("--reprotect-with: {msg}"),
            Err(e) => tracing::error!("--reprotect-with {addr}: {e}"),
        }
    }
    // The program's network (`--service-addr`) stays up while it runs.
    let network = restored.network.clone();
    let code = wait_restored(pid, stop);
    lease.revoke("the restored program exited");
    let code = code?;
    tracing::info!(pid, code, "the restored process exited");
    drop(network);
    status.lock().status.exit_code = Some(code);
    Ok(code)
}

/// `--service-addr` at a takeover: the device is `--service-dev`, else the one that routes to
/// the lost primary (`peer`, HOST:PORT).
fn service_restore(
    svc: &ServiceAddrArg,
    peer: &str,
) -> Result<crate::restore::net::ServiceRestore, String> {
    let dev = match &svc.dev {
        Some(d) => d.clone(),
        None => crate::net::service::dev_towards(peer).map_err(|e| {
            format!(
                "--service-addr {}: cannot find the device that routes to the primary {peer} \
                 (give --service-dev): {e}",
                svc.addr
            )
        })?,
    };
    Ok(crate::restore::net::ServiceRestore {
        addr: svc.addr,
        dev,
    })
}

/// Runs the operator's `--on-takeover` command with `sh -c`, with `REMUS_EPOCH`,
/// `REMUS_PRIMARY` and `REMUS_STATE_DIR` in its environment; its output goes to the
/// standby's log.
fn run_on_takeover(cmd: &str, epoch: u64, peer: &str, state_dir: &Path) -> Result<()> {
    tracing::info!(epoch, "running --on-takeover: {cmd}");
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("REMUS_EPOCH", epoch.to_string())
        .env("REMUS_PRIMARY", peer)
        .env("REMUS_STATE_DIR", state_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run /bin/sh -c {cmd:?}"))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        tracing::info!(target: "on_takeover", "{line}");
    }
    if !out.status.success() {
        anyhow::bail!("`{cmd}` exited with {}", out.status);
    }
    Ok(())
}

/// Waits for the restored child; a stop signal to the standby is passed on to it once.
fn wait_restored(pid: i32, stop: &AtomicBool) -> Result<i32> {
    let pidfd = crate::sys::pidfd_open(pid).with_context(|| format!("pidfd_open({pid})"))?;
    let mut forwarded = false;
    use std::os::fd::AsRawFd;
    loop {
        let ready =
            crate::sys::poll_readable(&[pidfd.as_raw_fd()], Some(Duration::from_millis(200)))?;
        if ready[0] {
            break;
        }
        if stop.load(Ordering::Relaxed) && !forwarded {
            tracing::info!(pid, "passing the stop signal on to the restored process");
            let _ = crate::sys::kill(pid, libc::SIGTERM);
            forwarded = true;
        }
    }
    match crate::sys::wait_child(pid) {
        Ok(code) => Ok(code),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            tracing::warn!(
                pid,
                "the restored process is not our child; its exit code is unknown"
            );
            Ok(0)
        }
        Err(e) => Err(e).context("waitpid"),
    }
}
