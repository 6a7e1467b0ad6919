//! `remusd primary`: started by the shim beside the protected app. Takes epochs from the shim
//! and ships them to the standby.

pub mod link;
pub mod netout;
pub mod output;
pub mod pipeline;
pub mod shim_link;
pub mod staging;
pub mod stream;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use remus_abi::{Msg, MsgKind};

use crate::control::server::ControlServer;
use crate::control::status::{SharedStatus, Status};
use crate::wire::messages::{AppExit, GoodbyeReason, Hello, PROTOCOL_VERSION};
use link::{Link, Outbound};
use output::{Output, OutputStream};
use shim_link::{FromShim, ShimLink};
use staging::Staging;

pub struct PrimaryArgs {
    pub app_pid: i32,
    pub standby: Option<String>,
    pub epoch_ms: u64,
    pub control: Option<PathBuf>,
    pub heartbeat_ms: u64,
    pub allow_unprotected: bool,
    /// `--key-file`: the key shared with the standby.
    pub key_file: Option<PathBuf>,
    /// `--insecure`: no key (a loopback standby only).
    pub insecure: bool,
    /// Full images stream while the program runs (`stream`); false: in one pause.
    pub stream_images: bool,
    /// Pages read per epoch while a full image streams.
    pub stream_batch_pages: usize,
    /// Delta compression and wire measurement.
    pub pipeline: link::PipelineOpts,
}

/// An epoch whose chunks are arriving.
struct InEpoch {
    signalled_at: Instant,
    /// (epoch, next chunk) once the first chunk arrived.
    progress: Option<(u64, u32)>,
    pages: u64,
    warned: bool,
}

struct Primary {
    args: PrimaryArgs,
    shim: ShimLink,
    staging: Arc<Staging>,
    status: SharedStatus,
    link: Option<Link>,
    in_epoch: Option<InEpoch>,
    last_epoch: Option<u64>,
    next_tick: Instant,
    /// Protection was given up for good (second thread, unsupported state, standby lost).
    given_up: bool,
    /// Held output streams (output commit).
    output: Output,
    /// The app ended on its own (or the operator stopped remusd): what it wrote is released
    /// and passed through until its streams close. False when the primary side dies.
    release_at_end: bool,
    /// Output held for the app's sockets (None: a shim without the output log).
    net: Option<netout::NetOut>,
    /// The shim asked for this epoch now (output waits for it and the app went idle).
    want_epoch: u64,
    /// The standby was lost; reconnecting or sending the full image.
    resync: Option<Resync>,
    /// The full image being streamed to the standby while the program runs.
    stream: Option<stream::Stream>,
    /// The epoch whose commit completes the streamed image: protection (re)starts when the
    /// standby acks it.
    complete_at: Option<u64>,
    /// Acks of epochs before this release nothing (their images are partial); `u64::MAX`
    /// while a full image streams.
    release_from: Arc<AtomicU64>,
}

/// How often a lost standby is asked again (resynchronisation).
const RESYNC_RETRY: Duration = Duration::from_millis(500);
/// How long one reconnection attempt may take (the epoch loop waits for it).
const RESYNC_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The standby was lost (and had not taken over): the app runs unprotected while remusd
/// reconnects; a new connection gets a full image, then epochs.
struct Resync {
    addr: String,
    /// Why the standby was lost.
    why: String,
    next_try: Instant,
    attempts: u64,
    /// The full-resend request (`remus_abi::RESEND_REQ_OFF`) the next epoch must honour, once
    /// a new connection is up.
    request: Option<u64>,
    /// The reconnection attempt under way (in a thread of its own).
    attempt: Option<crossbeam::channel::Receiver<Result<Link, String>>>,
    /// The epoch that honoured the full-resend request (its pause is logged). Protection
    /// resumes at `Primary::complete_at`: this epoch in one-pause mode, later when streamed.
    full_epoch: Option<u64>,
    /// The standby could not be asked whether it took over (unreachable): everything held is
    /// still held, and stays so until a reconnection proves it did not (then the full image's
    /// commit releases it) or shows it did (superseded: released never).
    held: bool,
    /// What the lost connection proved about the standby's failure detector: a later
    /// "nothing answers there" releases what is held only if it could not have taken over.
    contact: link::LastContact,
}

/// What asking a lost standby "did you take over?" found.
enum Probe {
    /// It took over this primary's app: stop, release nothing.
    Superseded(String),
    /// It answered and had not taken over (it was told to discard its image), or nothing
    /// listens at its address (its daemon is gone) and it had no time to take over before it
    /// died (`link::LastContact`). (A standby that took over and then lost its daemon leaves
    /// the restored app running: "gone" alone proves nothing.)
    NotTakenOver,
    /// No answer either way (timeout, unreachable network, broken handshake): it may have
    /// taken over on the far side of a partition.
    Unknown(String),
}

/// Marks a reconnection attempt that found nothing alive at the standby's address.
const PEER_GONE: &str = "nothing answers there: ";

/// The standby's host answered, but no daemon does (refused, or reset/closed while its
/// process dies): that daemon is gone (whether it took over first is for `LastContact` to
/// say). A silent address (timeout, unreachable network) proves nothing: across a partition
/// the standby may have taken over.
fn peer_gone(e: &link::ConnectError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionRefused, ConnectionReset};
    match e {
        link::ConnectError::Connect(_, io) => {
            matches!(io.kind(), ConnectionRefused | ConnectionReset)
        }
        link::ConnectError::Auth(_, crate::wire::auth::AuthError::Io(io)) => {
            matches!(io.kind(), ConnectionRefused | ConnectionReset | BrokenPipe)
        }
        link::ConnectError::Auth(_, crate::wire::auth::AuthError::Closed(_)) => true,
        link::ConnectError::Closed(_) => true,
        _ => false,
    }
}

/// How long a lost standby that answers "busy" is asked again before the primary releases
/// what it holds (fencing: it may be about to take over at the end of the lost session).
const BUSY_PROBE_WAIT: Duration = Duration::from_secs(5);

/// How the primary ends.
enum End {
    Exit(i32),
}

/// Runs `remusd primary`; returns the process exit code. `outputs` names the held output
/// streams the shim passed (at `remus_abi::CONTROLLER_OUTPUT_FD_BASE`, two fds each).
pub fn run(args: PrimaryArgs, outputs: Vec<String>) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let sock =
        crate::sys::take_inherited_fd(remus_abi::CONTROLLER_SHIM_SOCK_FD, "the shim's socket")?;
    let shim = ShimLink::new(sock).context("the shim's socket (fd 3)")?;
    let staging_fd =
        crate::sys::take_inherited_fd(remus_abi::CONTROLLER_STAGING_FD, "the staging memfd")?;
    let staging_file = File::from(staging_fd);
    let staging = Staging::map(&staging_file).context("mapping the staging memfd (fd 4)")?;
    let net = netout::NetLog::map(&staging_file).context("mapping the socket output log")?;
    let mut streams = Vec::new();
    for (i, name) in outputs.into_iter().enumerate() {
        let base = remus_abi::CONTROLLER_OUTPUT_FD_BASE + 2 * i as i32;
        let dest = crate::sys::take_inherited_fd(base, "an output stream's destination")?;
        let src = crate::sys::take_inherited_fd(base + 1, "an output stream's pipe")?;
        streams.push(OutputStream { name, dest, src });
    }
    run_full(args, shim, staging, stop, streams, net)
}

/// [`run_with_output`] without held output streams.
pub fn run_with(
    args: PrimaryArgs,
    shim: ShimLink,
    staging: Staging,
    stop: Arc<AtomicBool>,
) -> Result<i32> {
    run_with_output(args, shim, staging, stop, Vec::new())
}

/// [`run`] with the shim's socket, staging area and output streams given (tests pass their
/// own); `stop` is the operator-stop flag.
pub fn run_with_output(
    args: PrimaryArgs,
    shim: ShimLink,
    staging: Staging,
    stop: Arc<AtomicBool>,
    outputs: Vec<OutputStream>,
) -> Result<i32> {
    run_full(args, shim, staging, stop, outputs, None)
}

/// [`run_with_output`] with the socket output log (`net`) as well.
pub fn run_full(
    args: PrimaryArgs,
    shim: ShimLink,
    staging: Staging,
    stop: Arc<AtomicBool>,
    outputs: Vec<OutputStream>,
    net: Option<netout::NetLog>,
) -> Result<i32> {
    let mut st = Status::new("primary", "starting");
    st.app_pid = Some(args.app_pid);
    st.epoch_ms = Some(args.epoch_ms);
    st.heartbeat_ms = Some(args.heartbeat_ms);
    st.standby = args.standby.clone();
    st.app_exe = std::fs::read_link(format!("/proc/{}/exe", args.app_pid))
        .ok()
        .map(|p| p.display().to_string());
    st.reason = Some("starting".into());
    let status = SharedStatus::new(st);
    let _control = ControlServer::start(args.control.clone(), "primary", status.clone())?;
    let output = Output::new(outputs, status.clone());
    let net = match net.map(|log| netout::NetOut::start(log, status.clone())) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => bail!("cannot start the socket output release thread: {e}"),
        None => None,
    };

    let mut p = Primary {
        args,
        shim,
        staging: Arc::new(staging),
        status,
        link: None,
        in_epoch: None,
        last_epoch: None,
        next_tick: Instant::now(),
        given_up: false,
        output,
        release_at_end: false,
        net,
        want_epoch: 0,
        resync: None,
        stream: None,
        complete_at: None,
        release_from: Arc::new(AtomicU64::new(u64::MAX)),
    };
    let End::Exit(code) = p.main(&stop)?;
    let net = p.net.take();
    if p.release_at_end {
        if let Some(n) = net {
            n.finish(Duration::from_secs(10));
        }
        p.output.finish();
    }
    // Otherwise the primary side is dying: what is still held is dropped with the process.
    Ok(code)
}

impl Primary {
    fn main(&mut self, stop: &AtomicBool) -> Result<End> {
        self.await_hello()?;
        if let Some(end) = self.connect()? {
            return Ok(end);
        }
        let pidfd = crate::sys::pidfd_open(self.args.app_pid)
            .with_context(|| format!("pidfd_open({}) for the app", self.args.app_pid))?;
        let epoch = Duration::from_millis(self.args.epoch_ms.max(1));
        self.next_tick = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(self.operator_stop());
            }
            let now = Instant::now();
            let timeout = if self.can_signal() && self.idle_wanted() {
                Duration::ZERO
            } else if self.can_signal() {
                self.next_tick
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            } else if self.in_epoch.is_none() && !self.given_up && self.link.is_some() {
                // Only the sender's queue is in the way (it drains in a moment; nothing wakes
                // this poll when it does): look again soon, or the epochs (and the output
                // waiting for them) slip to this poll's 50 ms.
                Duration::from_millis(1)
            } else {
                Duration::from_millis(50)
            };
            let mut fds = vec![self.shim.raw_fd(), pidfd.as_raw_fd()];
            fds.extend(self.output.poll_fds());
            let ready = crate::sys::poll_readable(&fds, Some(timeout)).context("poll")?;
            if ready[2..].iter().any(|&r| r) {
                self.output.pump(self.output_tag());
            }
            if ready[0] {
                while let Some(m) = self.shim.try_recv().context("receiving from the shim")? {
                    if let Some(end) = self.on_shim(m)? {
                        return Ok(end);
                    }
                }
            }
            if ready[1] {
                // Anything the shim said before dying is already queued: read it first.
                while let Some(m) = self.shim.try_recv().context("receiving from the shim")? {
                    if let Some(end) = self.on_shim(m)? {
                        return Ok(end);
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok(self.operator_stop());
                }
                return Ok(self.app_vanished("the app died without saying goodbye (killed?)"));
            }
            self.check_link();
            self.step_resync();
            self.step_sync();
            if let Some(e) = &mut self.in_epoch {
                if !e.warned && e.signalled_at.elapsed() > Duration::from_secs(10) {
                    e.warned = true;
                    tracing::warn!(
                        "the app has not answered the epoch signal for 10 s (signal blocked, or stopped?)"
                    );
                }
            }
            if self.can_signal() && (Instant::now() >= self.next_tick || self.idle_wanted()) {
                self.signal_epoch(epoch)?;
            }
        }
    }

    /// The epoch whose checkpoint is certain to come after output read now: the next epoch
    /// to be signalled, or the one after it while an epoch signal is outstanding (its handler
    /// may already have run).
    fn output_tag(&self) -> u64 {
        let next = self.last_epoch.map_or(1, |e| e + 1);
        if self.in_epoch.is_some() {
            next + 1
        } else {
            next
        }
    }

    /// The shim asked for an epoch that has not been signalled yet.
    fn idle_wanted(&self) -> bool {
        self.in_epoch.is_none() && self.want_epoch > self.last_epoch.unwrap_or(0)
    }

    /// Output-triggered epochs: the app is going idle while output waits for epoch `want`.
    fn on_idle(&mut self, want: u64) -> Result<()> {
        self.want_epoch = self.want_epoch.max(want);
        if self.can_signal() && self.idle_wanted() {
            self.signal_epoch(Duration::from_millis(self.args.epoch_ms.max(1)))?;
        }
        // The shim waits briefly for this: the signal (if sent) is already on its way.
        if let Some(n) = &self.net {
            n.kick();
        }
        Ok(())
    }

    fn can_signal(&self) -> bool {
        self.in_epoch.is_none()
            && !self.given_up
            && self
                .link
                .as_ref()
                .is_some_and(|l| l.backlog() < 2 && l.lost().is_none())
    }

    fn signal_epoch(&mut self, epoch: Duration) -> Result<()> {
        let now = Instant::now();
        // The shim installs its epoch handler before it says hello, and keeps a signal that
        // comes before Ready pending (shim/src/signals.rs): no need to look before signalling.
        // Everything written so far precedes this epoch's checkpoint: tag it with this epoch
        // (output_tag() is this epoch's number while no signal is outstanding).
        self.output.pump(self.output_tag());
        self.stream_batch();
        if let Err(e) = crate::sys::kill(self.args.app_pid, remus_abi::EPOCH_SIGNAL) {
            tracing::warn!("sending the epoch signal to {}: {e}", self.args.app_pid);
            // The pidfd tells us if the app is gone; try again next tick.
            self.next_tick = now + epoch;
            return Ok(());
        }
        self.in_epoch = Some(InEpoch {
            signalled_at: now,
            progress: None,
            pages: 0,
            warned: false,
        });
        // The next epoch is due one period after this one started (or at once if late).
        self.next_tick = now + epoch;
        Ok(())
    }

    fn await_hello(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the shim did not say hello within 10 s");
            }
            match self
                .shim
                .recv_timeout(left)
                .context("waiting for the shim's hello")?
            {
                Some(FromShim::Msg(m)) if m.kind == MsgKind::Hello as u32 => {
                    if m.b != remus_abi::ABI_VERSION as u64 {
                        let text = format!(
                            "remus: the shim speaks ABI {} and remusd speaks ABI {}: install matching libremus.so and remusd",
                            m.b,
                            remus_abi::ABI_VERSION
                        );
                        let _ = self.shim.send(MsgKind::Refuse, 0, 0, &text);
                        bail!("{text}");
                    }
                    if m.a as i32 != self.args.app_pid {
                        tracing::warn!(
                            hello_pid = m.a,
                            app_pid = self.args.app_pid,
                            "the shim's hello names another pid"
                        );
                    }
                    tracing::info!(app_pid = self.args.app_pid, "shim said hello");
                    return Ok(());
                }
                Some(FromShim::Msg(m)) if m.kind == MsgKind::Log as u32 => {
                    tracing::info!(target: "shim", "{}", String::from_utf8_lossy(m.text()));
                }
                Some(FromShim::Msg(m)) => tracing::warn!(
                    kind = m.kind,
                    "unexpected message from the shim before hello"
                ),
                Some(FromShim::Eof) => bail!("the shim closed its socket before saying hello"),
                None => {}
            }
        }
    }

    fn hello(&self) -> Hello {
        let pid = self.args.app_pid;
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let link = |what: &str| {
            std::fs::read_link(format!("/proc/{pid}/{what}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        Hello {
            version: PROTOCOL_VERSION,
            app_pid: pid,
            exe: link("exe"),
            argv,
            cwd: link("cwd"),
            epoch_ms: self.args.epoch_ms,
            heartbeat_ms: self.args.heartbeat_ms,
        }
    }

    /// Connects to the standby and tells the shim. `Some(end)` if remusd must stop here.
    /// How the link to the standby at `addr` is authenticated (`--key-file` or `--insecure`).
    fn security(&self, addr: &str) -> Result<crate::wire::auth::LinkSecurity, String> {
        crate::wire::auth::LinkSecurity::resolve(
            self.args.key_file.as_deref(),
            self.args.insecure,
            addr,
            "standby (REMUS_STANDBY / --standby)",
        )
    }

    /// Connects to the standby at `addr` with the ack callback that commits output.
    fn open_link(
        &self,
        addr: &str,
        sec: &crate::wire::auth::LinkSecurity,
        timeout: Duration,
    ) -> Result<Link, link::ConnectError> {
        self.link_opener(addr, sec, timeout)()
    }

    /// [`Self::open_link`], to be run later (in another thread).
    fn link_opener(
        &self,
        addr: &str,
        sec: &crate::wire::auth::LinkSecurity,
        timeout: Duration,
    ) -> impl FnOnce() -> Result<Link, link::ConnectError> + Send + 'static {
        let hb = Duration::from_millis(self.args.heartbeat_ms.max(1));
        let st = self.staging.clone();
        let out = self.output.committer();
        let net = self.net.as_ref().map(|n| n.committer());
        let (floor, status) = (self.release_from.clone(), self.status.clone());
        let on_ack: link::OnAck = Arc::new(move |epoch| {
            if epoch < floor.load(Ordering::Acquire) {
                return; // a partial image: the standby could not restore it
            }
            {
                // The first restorable epoch: protected from here on (step_sync finishes the
                // resync in the epoch loop; both under the status lock, so a reader never
                // sees a committed epoch on an unprotected primary).
                let mut b = status.lock();
                b.status.committed_epoch = Some(epoch);
                if !b.status.protected && matches!(b.status.state.as_str(), "syncing" | "resyncing")
                {
                    b.status.state = "protected".into();
                    b.status.protected = true;
                    b.status.reason = None;
                }
            }
            st.publish_committed(epoch);
            out.commit(epoch);
            if let Some(n) = &net {
                n.commit(epoch);
            }
        });
        let (addr, sec, hello) = (addr.to_string(), sec.clone(), self.hello());
        let (status, pipeline) = (self.status.clone(), self.args.pipeline);
        move || Link::connect(&addr, &sec, hello, hb, timeout, status, on_ack, pipeline)
    }

    fn connect(&mut self) -> Result<Option<End>> {
        let why = match self.args.standby.clone() {
            None => "no standby is configured (set REMUS_STANDBY=HOST:PORT or pass --standby)"
                .to_string(),
            Some(addr) => {
                let sec = match self.security(&addr) {
                    Ok(s) => s,
                    Err(e) => {
                        let text = format!("remus: refusing to start: {e}");
                        tracing::error!("{text}");
                        let _ = self.shim.send(MsgKind::Refuse, 0, 0, &text);
                        return Ok(Some(End::Exit(1)));
                    }
                };
                match self.open_link(&addr, &sec, Duration::from_secs(3)) {
                    Ok(link) => {
                        tracing::info!(standby = %addr, "connected to the standby; streaming the first full image");
                        self.link = Some(link);
                        self.start_stream();
                        {
                            let mut b = self.status.lock();
                            b.status.state = "syncing".into();
                            b.status.reason = Some(format!(
                                "sending the first full image to {addr} while the program runs; \
                                 protected once the standby has all of it"
                            ));
                        }
                        self.shim
                            .send(MsgKind::Ready, 0, 0, "")
                            .context("telling the shim we are ready")?;
                        return Ok(None);
                    }
                    Err(e) => format!("cannot reach the standby: {e}"),
                }
            }
        };
        let listen = self
            .args
            .standby
            .clone()
            .unwrap_or_else(|| "HOST:PORT".into());
        if self.args.allow_unprotected {
            tracing::warn!("running UNPROTECTED: {why}");
            self.given_up = true;
            self.staging
                .publish_committed(remus_abi::COMMITTED_UNPROTECTED);
            self.output.release_all();
            if let Some(n) = &self.net {
                n.release_all();
            }
            {
                let mut b = self.status.lock();
                b.status.state = "unprotected".into();
                b.unprotect(why.clone());
            }
            self.shim
                .send(
                    MsgKind::RunUnprotected,
                    0,
                    0,
                    &format!("remus: running unprotected: {why}"),
                )
                .context("telling the shim to run unprotected")?;
            Ok(None)
        } else {
            let text = format!(
                "remus: {why}. Start `remusd standby --listen {listen} --state-dir DIR` on the standby host, \
                 or set REMUS_ALLOW_UNPROTECTED=1 to run without protection."
            );
            tracing::error!("{text}");
            let _ = self.shim.send(MsgKind::Refuse, 0, 0, &text);
            Ok(Some(End::Exit(1)))
        }
    }

    /// Gives up protection for good: tells the standby (when `goodbye`) and drops the link.
    fn unprotect(&mut self, reason: String, goodbye: bool) {
        if !self.given_up {
            tracing::warn!("protection stops: {reason}");
        }
        self.given_up = true;
        self.resync = None;
        self.stop_stream();
        if let Some(link) = self.link.take() {
            if goodbye {
                link.goodbye(
                    GoodbyeReason::Unprotected {
                        reason: reason.clone(),
                    },
                    Duration::from_secs(2),
                );
            }
            link.close();
        }
        // Nothing is held for a standby any more.
        self.staging
            .publish_committed(remus_abi::COMMITTED_UNPROTECTED);
        self.output.release_all();
        if let Some(n) = &self.net {
            n.release_all();
        }
        let mut b = self.status.lock();
        b.status.state = "unprotected".into();
        b.status.link = "down".into();
        b.unprotect(reason);
    }

    fn check_link(&mut self) {
        let Some(link) = &self.link else { return };
        if let Some(why) = link.lost() {
            let addr = link.addr.clone();
            // Fencing: before anything held is released, make sure the standby has not taken
            // over meanwhile (this primary may have been frozen or cut off for longer than its
            // failure timeout). A standby that did answers any new connection "superseded".
            let contact = link.last_contact();
            if let Some(link) = self.link.take() {
                link.close();
            }
            self.stop_stream();
            match self.probe_superseded(&addr, contact) {
                Probe::Superseded(text) => {
                    self.superseded(&addr, &why, &text);
                }
                Probe::NotTakenOver => {
                    tracing::error!(
                        "standby {addr} lost: {why}; the app keeps running unprotected while remusd reconnects (every {} ms) to resynchronise",
                        RESYNC_RETRY.as_millis()
                    );
                    self.lose_standby(addr, why, false, contact);
                }
                Probe::Unknown(err) => {
                    tracing::error!(
                        "standby {addr} lost: {why}; it cannot be asked whether it took over ({err}): \
                         the app keeps running but everything it sends out stays HELD until the standby \
                         answers (asked every {} ms); if that standby is gone for good, start a new one \
                         at {addr}",
                        RESYNC_RETRY.as_millis()
                    );
                    self.lose_standby(
                        addr,
                        format!("{why}; unreachable since: {err}"),
                        true,
                        contact,
                    );
                }
            }
        }
    }

    /// The standby is lost and has not taken over (the fencing check said so, or it is
    /// unreachable): nothing is held for it any more, as when protection stops; but remusd
    /// keeps asking it (or its successor at the same address) again, to resynchronise.
    fn lose_standby(&mut self, addr: String, why: String, held: bool, contact: link::LastContact) {
        let reason = if held {
            // Fencing across a partition: the standby may be running the app from its last
            // committed epoch. Nothing this primary holds may leave until it is known not to.
            format!(
                "standby {addr} lost: {why}; it may have taken over, so output stays held until \
                 it answers (reconnecting every {} ms to resynchronise)",
                RESYNC_RETRY.as_millis()
            )
        } else {
            self.staging
                .publish_committed(remus_abi::COMMITTED_UNPROTECTED);
            self.output.release_all();
            if let Some(n) = &self.net {
                n.release_all();
            }
            format!(
                "standby {addr} lost: {why}; running unprotected, reconnecting every {} ms to \
                 resynchronise",
                RESYNC_RETRY.as_millis()
            )
        };
        {
            let mut b = self.status.lock();
            b.status.state = "resyncing".into();
            b.status.link = "down".into();
            b.unprotect(reason);
        }
        self.resync = Some(Resync {
            addr,
            why,
            next_try: Instant::now() + RESYNC_RETRY,
            attempts: 0,
            request: None,
            full_epoch: None,
            attempt: None,
            held,
            contact,
        });
    }

    /// Starts streaming a full image (a new connection): the next epoch registers every
    /// region it does not follow yet without copying it, and acks release nothing until the
    /// image is complete.
    fn start_stream(&mut self) {
        if !self.args.stream_images {
            // The full image goes in the next epoch's pause (the baseline): its ack releases
            // and protects.
            self.release_from.store(0, Ordering::Release);
            self.complete_at = Some(self.last_epoch.map_or(1, |e| e + 1));
            return;
        }
        self.release_from.store(u64::MAX, Ordering::Release);
        self.complete_at = None;
        self.stream = Some(stream::Stream::new(
            self.args.app_pid,
            self.args.stream_batch_pages,
        ));
        self.staging.set_stream(true);
    }

    /// Output after `last` waits for acks again (all three streams of it: the shim's socket
    /// log, the stdout/stderr pipes, and the socket output release).
    fn hold_output_again(&self, last: u64) {
        self.staging.hold_again(last);
        self.output.hold_again(last);
        if let Some(n) = &self.net {
            n.hold_again(last);
        }
    }

    /// The connection the stream was for is gone.
    fn stop_stream(&mut self) {
        self.stream = None;
        self.complete_at = None;
        self.staging.set_stream(false);
    }

    /// Before an epoch signal: reads the next batch of the streamed image (the pages belong to
    /// the epoch about to be taken). When nothing is left to read after it, that epoch
    /// completes the image. When the program's memory cannot be read, the image is taken in
    /// that epoch's pause instead.
    fn stream_batch(&mut self) {
        let Some(st) = &mut self.stream else { return };
        let epoch = self.last_epoch.map_or(1, |e| e + 1);
        // Only the epoch that starts the stream leaves its regions' pages to remusd: regions
        // new in later epochs ship in their pause, as at any time, so what is left to read only
        // shrinks and the stream ends whatever the program maps meanwhile.
        self.staging.set_stream(st.first_epoch.is_none());
        let last_batch = match st.read_batch(epoch) {
            Ok(more) => !more,
            Err(e) => {
                tracing::warn!(
                    "cannot stream the full image ({e}); taking it in one pause instead (the \
                     program stops for as long as the copy takes)"
                );
                let unheld = st.unheld;
                *st = stream::Stream::new(self.args.app_pid, self.args.stream_batch_pages);
                st.unheld = unheld;
                self.staging.set_stream(false);
                self.staging.request_resend();
                true
            }
        };
        if last_batch && st.unheld {
            // The epoch about to be taken completes the image: its output, and all after
            // it, waits for acks again.
            st.unheld = false;
            let last = self.last_epoch.unwrap_or(0);
            tracing::info!(
                epoch,
                "the next epoch completes the streamed image; output is held again from it on"
            );
            self.hold_output_again(last);
        }
        let Some(st) = &self.stream else { return };
        let s = st.progress(None);
        self.status.lock().status.image_stream = Some(s);
    }

    /// An epoch of a streamed image ended: the batch pages that go out with it, and whether
    /// it completes the image (`meta.partial` false): from its ack on, acks release output.
    fn stream_commit(
        &mut self,
        epoch: u64,
        meta: &mut crate::image::EpochMeta,
        streamed: bool,
        shim_pages: u64,
    ) -> Vec<(u64, crate::wire::messages::PageBytes)> {
        let Some(st) = &mut self.stream else {
            return Vec::new();
        };
        let read = st.commit(epoch, meta, streamed, shim_pages);
        if !meta.partial {
            tracing::info!(
                epoch,
                batches = st.batches,
                pages_read = st.pages_shipped,
                pages_dropped = st.pages_dropped,
                pages_zero = st.pages_zero,
                max_pause_pages = st.max_pause_pages,
                max_pause_us = st.max_pause_ns / 1000,
                "the streamed full image is complete with this epoch"
            );
            let mut b = self.status.lock();
            b.status.image_stream = Some(st.progress(Some(epoch)));
            drop(b);
            self.release_from.store(epoch, Ordering::Release);
            self.complete_at = Some(epoch);
            self.stream = None;
            self.staging.set_stream(false);
        }
        read
    }

    /// Protection (re)starts once the standby acked the epoch that completed the streamed
    /// image.
    fn step_sync(&mut self) {
        let Some(e) = self.complete_at else { return };
        let committed = self.staging.committed();
        if committed == remus_abi::COMMITTED_UNPROTECTED || committed < e {
            return;
        }
        self.complete_at = None;
        // (The status turned `protected` in the ack callback, with the committed epoch.)
        if let Some(r) = self.resync.take() {
            tracing::info!(standby = %r.addr, epoch = e, "the standby committed the full image; protection resumes");
        } else {
            tracing::info!(epoch = e, "the standby committed the full image; protected");
        }
    }

    /// Resynchronisation: reconnects when due (never while an epoch is in flight: its chunks
    /// would reach the new standby without the full image); once connected, `step_sync` sees
    /// the full image committed.
    fn step_resync(&mut self) {
        if self.given_up {
            self.resync = None;
            return;
        }
        let Some(r) = &mut self.resync else { return };
        if self.link.is_some() {
            // Connected: protection resumes once the standby commits the streamed full image
            // (step_sync).
            return;
        }
        // An attempt runs in a thread of its own: the epoch loop goes on pumping output (a
        // standby host that drops packets makes each attempt last the whole timeout).
        if let Some(rx) = &r.attempt {
            let result = match rx.try_recv() {
                Ok(res) => res,
                Err(crossbeam::channel::TryRecvError::Empty) => return,
                Err(crossbeam::channel::TryRecvError::Disconnected) => {
                    Err("the reconnection attempt ended without an answer".into())
                }
            };
            r.attempt = None;
            let (addr, attempts) = (r.addr.clone(), r.attempts);
            self.resync_attempted(addr, attempts, result);
            return;
        }
        if Instant::now() < r.next_try || self.in_epoch.is_some() {
            return;
        }
        r.attempts += 1;
        let (addr, attempts) = (r.addr.clone(), r.attempts);
        let open = match self.security(&addr) {
            Ok(sec) => self.link_opener(&addr, &sec, RESYNC_CONNECT_TIMEOUT),
            Err(e) => return self.resync_attempted(addr, attempts, Err(e)),
        };
        let (tx, rx) = crossbeam::channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("link-reconnect".into())
            .spawn(move || {
                let result = open().map_err(|e| match e.superseded() {
                    // Fencing: the standby took over meanwhile.
                    Some(text) => format!("{}{text}", link::SUPERSEDED),
                    None if peer_gone(&e) => format!("{PEER_GONE}{e}"),
                    None => e.to_string(),
                });
                // Dropped unanswered (the primary gave up meanwhile): the connection closes
                // before any epoch went over it, so the standby has nothing to take over.
                let _ = tx.send(result);
            });
        match spawned {
            Ok(_) => {
                if let Some(r) = &mut self.resync {
                    r.attempt = Some(rx);
                }
            }
            Err(e) => self.resync_attempted(
                addr,
                attempts,
                Err(format!("cannot start a reconnection thread: {e}")),
            ),
        }
    }

    /// The outcome of reconnection attempt number `attempts` to `addr`.
    fn resync_attempted(&mut self, addr: String, attempts: u64, result: Result<Link, String>) {
        if self.given_up || self.resync.is_none() {
            if let Ok(link) = result {
                link.close();
            }
            return;
        }
        match result {
            Err(e) if e.starts_with(link::SUPERSEDED) => {
                let why = self.resync.take().map(|r| r.why).unwrap_or_default();
                let text = e[link::SUPERSEDED.len()..].to_string();
                self.superseded(&addr, &why, &text);
            }
            Err(e) => {
                let Some(r) = &mut self.resync else { return };
                r.next_try = Instant::now() + RESYNC_RETRY;
                if r.held && e.starts_with(PEER_GONE) && r.contact.too_recent_for_takeover() {
                    // The standby's daemon is gone, and it had not heard from this primary
                    // for long enough to take over: it is not running the app, so what was
                    // held for it may go now, as when a standby dies in plain sight.
                    r.held = false;
                    tracing::warn!(standby = %addr, "{e}: the standby is gone; releasing the output held for it and running unprotected");
                    self.staging
                        .publish_committed(remus_abi::COMMITTED_UNPROTECTED);
                    self.output.release_all();
                    if let Some(n) = &self.net {
                        n.release_all();
                    }
                }
                let Some(r) = &mut self.resync else { return };
                if attempts == 1 || attempts.is_multiple_of(20) {
                    tracing::info!(standby = %addr, attempts, "reconnecting to resynchronise: {e}");
                } else {
                    tracing::debug!(standby = %addr, attempts, "reconnecting to resynchronise: {e}");
                }
                let reason = if r.held {
                    format!(
                        "standby {addr} lost: {}; it may have taken over, so output stays held \
                         until it answers; reconnecting every {} ms to resynchronise (attempt \
                         {attempts}: {e})",
                        r.why,
                        RESYNC_RETRY.as_millis()
                    )
                } else {
                    format!(
                        "standby {addr} lost: {}; running unprotected, reconnecting every {} ms to \
                         resynchronise (attempt {attempts}: {e})",
                        r.why,
                        RESYNC_RETRY.as_millis()
                    )
                };
                let mut b = self.status.lock();
                b.status.reason = Some(reason);
            }
            Ok(link) => self.resume(link),
        }
    }

    /// A new connection after the standby was lost: hold output again, ask the shim for a
    /// full image at the next epoch (taken at once), and send epochs from there. The new
    /// link's sending pipeline starts with an empty delta shadow (it belongs to the
    /// connection), and the standby's session starts from an empty image.
    fn resume(&mut self, link: Link) {
        let Some(r) = &mut self.resync else { return };
        let last = self.last_epoch.unwrap_or(0);
        // Output: if it was released while the standby was gone, it keeps flowing while the
        // image streams (the standby cannot restore a partial image, so nothing can run it
        // twice), and is held again from the epoch that completes the image (stream_batch).
        // If it was never released (the standby was unreachable), it stays held at the last
        // committed epoch: epochs after that were never acked.
        let unheld = !r.held;
        let req = self.staging.request_resend();
        r.request = Some(req);
        r.full_epoch = None;
        tracing::info!(
            standby = %link.addr,
            attempts = r.attempts,
            last_epoch = last,
            "reconnected to the standby; sending a full image, then epochs"
        );
        let reason = format!(
            "standby {} reconnected after it was lost ({}); streaming a full image while the \
             program runs ({}); protected once it has all of it",
            link.addr,
            r.why,
            if unheld {
                "output flows unprotected until the last batch, then is held again"
            } else {
                "output stays held"
            }
        );
        self.link = Some(link);
        self.want_epoch = self.want_epoch.max(last + 1);
        self.next_tick = Instant::now();
        self.start_stream();
        match &mut self.stream {
            Some(st) => st.unheld = unheld,
            None if unheld => self.hold_output_again(last), // the full image goes in one pause
            None => {}
        }
        let mut b = self.status.lock();
        b.status.state = "resyncing".into();
        b.status.link = "up".into();
        b.status.reason = Some(reason);
    }

    /// The first chunk of an epoch on a resynchronising link: it must carry the full image
    /// asked for. `Err(reason)` when the shim did not honour the request.
    fn check_full_resend(&mut self, epoch: u64) -> Result<(), String> {
        let Some(r) = &mut self.resync else {
            return Ok(());
        };
        let Some(req) = r.request else { return Ok(()) };
        let (done, full) = self.staging.resend_done();
        if done != req || full != epoch {
            return Err(format!(
                "the shim did not ship a full image for the reconnected standby (request {req}, \
                 honoured {done} in epoch {full}, epoch {epoch} arrived)"
            ));
        }
        r.request = None;
        r.full_epoch = Some(epoch);
        tracing::info!(
            epoch,
            "the full image for the reconnected standby is on its way"
        );
        Ok(())
    }

    /// After the link broke: asks the standby again. `Some(answer)` when it says this primary
    /// was superseded (it took over the app); None when it is unreachable or still waiting
    /// (then told that this primary goes on unprotected, so that it discards its image).
    ///
    /// A standby that refuses for another reason ("already protecting another primary") may
    /// still be ending the session this primary just lost, and take over at its end: it is
    /// asked again (holding everything) for up to [`BUSY_PROBE_WAIT`] until it answers
    /// either way.
    fn probe_superseded(&mut self, addr: &str, contact: link::LastContact) -> Probe {
        let sec = match self.security(addr) {
            Ok(sec) => sec,
            Err(e) => return Probe::Unknown(e.to_string()),
        };
        let hb = Duration::from_millis(self.args.heartbeat_ms.max(1));
        let busy_until = Instant::now() + BUSY_PROBE_WAIT;
        let result = loop {
            let noop: link::OnAck = Arc::new(|_| {});
            let r = Link::connect(
                addr,
                &sec,
                self.hello(),
                hb,
                Duration::from_secs(2),
                self.status.clone(),
                noop,
                self.args.pipeline,
            );
            match &r {
                Err(e @ link::ConnectError::Refused(..))
                    if e.superseded().is_none() && Instant::now() < busy_until =>
                {
                    tracing::info!(
                        "asked the standby again after the link broke: {e}; asking again before \
                         releasing anything"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break r,
            }
        };
        match result {
            Err(e) => {
                if let Some(text) = e.superseded() {
                    return Probe::Superseded(text.to_string());
                }
                tracing::info!("asked the standby again after the link broke: {e}");
                if peer_gone(&e) && contact.too_recent_for_takeover() {
                    tracing::info!(
                        "standby {addr}: its daemon is gone and {}: it cannot have taken over",
                        contact.describe()
                    );
                    Probe::NotTakenOver
                } else if peer_gone(&e) {
                    Probe::Unknown(format!(
                        "{e}; its daemon is gone, but {}: it may have taken over before it died",
                        contact.describe()
                    ))
                } else {
                    Probe::Unknown(e.to_string())
                }
            }
            Ok(link) => {
                link.goodbye(
                    GoodbyeReason::Unprotected {
                        reason: "the link broke and this primary goes on unprotected".into(),
                    },
                    Duration::from_secs(2),
                );
                link.close();
                Probe::NotTakenOver
            }
        }
    }

    /// The standby took over: this primary must never run the app beside the restored one,
    /// nor release anything it holds (all of it is from epochs the standby does not have).
    fn superseded(&mut self, addr: &str, why: &str, answer: &str) {
        let reason = format!(
            "SUPERSEDED: the standby {addr} took over the app while this primary was cut off or \
             frozen ({why}); it answered: {answer}. Stopping the app (SIGKILL) and releasing \
             none of the output held since the last committed epoch"
        );
        tracing::error!("{reason}");
        self.given_up = true;
        if let Err(e) = crate::sys::kill(self.args.app_pid, libc::SIGKILL) {
            tracing::error!("killing the superseded app {}: {e}", self.args.app_pid);
        }
        let mut b = self.status.lock();
        b.status.state = "superseded".into();
        b.status.link = "down".into();
        b.unprotect(reason);
    }

    fn on_shim(&mut self, m: FromShim) -> Result<Option<End>> {
        let m: Msg = match m {
            FromShim::Msg(m) => *m,
            FromShim::Eof => {
                // Not exiting right now (checked first: an exec'd image that fails at once,
                // e.g. refused by the busy standby, is gone within the grace period, and its
                // error message is in the output this remusd holds).
                if !crate::sys::exiting_or_gone(self.args.app_pid)
                    || crate::sys::still_running(self.args.app_pid, Duration::from_millis(300))
                {
                    // The socket is close-on-exec: a live app that closed it has replaced
                    // itself with execve (the new image, if preloaded, is protected afresh by
                    // its own remusd). This image's checkpoints must never be resurrected.
                    self.unprotect(
                        "the app replaced itself (execve) or closed remus's socket; this remusd's image is obsolete".into(),
                        true,
                    );
                    // The new image still writes to the pipes this remusd reads: pass its
                    // output through until it closes them.
                    self.release_at_end = true;
                    return Ok(Some(End::Exit(0)));
                }
                return Ok(Some(
                    self.app_vanished("the shim's socket closed without an exit message"),
                ));
            }
        };
        let text = String::from_utf8_lossy(m.text()).into_owned();
        match MsgKind::from_u32(m.kind) {
            Some(MsgKind::EpochChunk) => self.on_chunk(m.a, m.b)?,
            Some(MsgKind::ThreadCreated) => {
                // The shim's text says it all; anything terser gets the context added once.
                let reason = if text.contains("second thread") || text.contains("threads") {
                    text
                } else {
                    format!("the app created a second thread ({text}); remus protects single-threaded processes only")
                };
                self.unprotect(reason, true)
            }
            Some(MsgKind::Unsupported) => self.unprotect(
                format!("the app uses state remus cannot replicate: {text}"),
                true,
            ),
            Some(MsgKind::Exiting) => {
                let exit = AppExit::from_shim(m.a, m.b);
                tracing::info!("the app {exit}");
                {
                    let mut b = self.status.lock();
                    b.status.exit_code = exit.exit_code();
                    b.status.state = "unprotected".into();
                    b.unprotect(format!("the app {exit}"));
                }
                if let Some(link) = self.link.take() {
                    if !link.goodbye(GoodbyeReason::AppExited(exit), Duration::from_secs(3)) {
                        tracing::warn!("could not deliver the goodbye to the standby");
                    }
                    link.close();
                }
                // The standby will not take over: the app's last words may leave.
                self.release_at_end = true;
                return Ok(Some(End::Exit(0)));
            }
            Some(MsgKind::Log) => tracing::info!(target: "shim", "{text}"),
            Some(MsgKind::NetFd) => match (&self.net, self.shim.take_fd()) {
                (Some(n), Some(fd)) => n.register(m.a as u32, fd, m.b as i32),
                _ => tracing::warn!(
                    conn = m.a,
                    app_fd = m.b,
                    "the shim passed a socket without a descriptor or an output log"
                ),
            },
            Some(MsgKind::Idle) => self.on_idle(m.a)?,
            Some(MsgKind::Hello) => tracing::warn!("the shim said hello twice; ignored"),
            _ => tracing::warn!(kind = m.kind, "unexpected message from the shim; ignored"),
        }
        Ok(None)
    }

    fn on_chunk(&mut self, epoch: u64, chunk: u64) -> Result<()> {
        let staging = self.staging.clone();
        let bytes = staging.bytes();
        let hdr = staging::read_header(bytes, (epoch, chunk));
        let last = hdr.as_ref().map(|h| h.last != 0).unwrap_or(false);
        let drain = |shim: &ShimLink| -> Result<()> {
            if !last {
                shim.send(MsgKind::Drained, epoch, chunk, "")
                    .context("telling the shim the chunk is drained")?;
            }
            Ok(())
        };
        if self.given_up || self.link.is_none() {
            drain(&self.shim)?;
            if last {
                self.in_epoch = None;
                // Dropped (the standby was lost mid-epoch): the next epoch follows this one.
                self.last_epoch = Some(epoch);
            }
            return Ok(());
        }
        let h = match hdr {
            Ok(h) => h,
            Err(e) => {
                drain(&self.shim)?;
                self.in_epoch = None;
                self.unprotect(
                    format!("bad epoch {epoch} chunk {chunk} from the shim: {e}"),
                    true,
                );
                return Ok(());
            }
        };
        // Chunks arrive in order, epochs are consecutive.
        let expect = match self.in_epoch.as_ref().and_then(|e| e.progress) {
            Some((e, c)) => Some((e, c as u64)),
            None => self.last_epoch.map(|e| (e + 1, 0)),
        };
        if let Some(want) = expect {
            if (epoch, chunk) != want {
                drain(&self.shim)?;
                self.in_epoch = None;
                self.unprotect(
                    format!(
                        "the shim sent epoch {epoch} chunk {chunk}, expected epoch {} chunk {}",
                        want.0, want.1
                    ),
                    true,
                );
                return Ok(());
            }
        } else if chunk != 0 {
            drain(&self.shim)?;
            self.unprotect(
                format!("the shim's first chunk is epoch {epoch} chunk {chunk}, expected chunk 0"),
                true,
            );
            return Ok(());
        }
        if chunk == 0 {
            if let Err(reason) = self.check_full_resend(epoch) {
                drain(&self.shim)?;
                self.in_epoch = None;
                self.unprotect(reason, true);
                return Ok(());
            }
        }
        let pages = staging::read_pages(bytes, &h);
        let meta = if last {
            let total = self.in_epoch.as_ref().map_or(0, |e| e.pages) + h.n_pages as u64;
            Some(staging::read_meta(bytes, &h, total).and_then(|mut m| {
                if let Some(fb) = self.staging.file_log() {
                    (m.files, m.replicated) = staging::read_files(fb, epoch)?;
                }
                Ok(m)
            }))
        } else {
            None
        };
        // The staging area is copied out: let the shim go on.
        drain(&self.shim)?;
        let (pages, meta) = match (pages, meta.transpose()) {
            (Ok(p), Ok(m)) => (p, m),
            (Err(e), _) | (_, Err(e)) => {
                self.in_epoch = None;
                self.unprotect(
                    format!("bad epoch {epoch} chunk {chunk} from the shim: {e}"),
                    true,
                );
                return Ok(());
            }
        };
        let ie = self.in_epoch.get_or_insert(InEpoch {
            signalled_at: Instant::now(),
            progress: None,
            pages: 0,
            warned: false,
        });
        ie.progress = Some((epoch, chunk as u32 + 1));
        ie.pages += pages.len() as u64;
        let shim_pages = ie.pages;
        if let Some(st) = &mut self.stream {
            st.shipped_by_shim(epoch, pages.iter().map(|(a, _)| a));
        }
        let link = self.link.as_ref().expect("checked above");
        let mut ok = pages.is_empty() || link.ship(Outbound::Pages { epoch, pages });
        if let Some(mut meta) = meta {
            if meta.pages != h.epoch_pages {
                tracing::warn!(
                    epoch,
                    shipped = meta.pages,
                    header = h.epoch_pages,
                    "page count differs from the shim's"
                );
            }
            if h.flags & remus_abi::HDR_FLAG_UNSUPPORTED != 0 {
                self.in_epoch = None;
                self.unprotect(
                    format!("epoch {epoch} is flagged unsupported by the shim"),
                    true,
                );
                return Ok(());
            }
            let (n, pause) = (meta.pages, meta.pause_ns);
            let unrestorable = crate::restore::unrestorable_fds(&meta);
            let streamed = h.flags & remus_abi::HDR_FLAG_STREAMED != 0;
            let read = self.stream_commit(epoch, &mut meta, streamed, shim_pages);
            let link = self.link.as_ref().expect("checked above");
            ok = ok && (read.is_empty() || link.ship(Outbound::Pages { epoch, pages: read }));
            ok = ok
                && link.ship(Outbound::Commit {
                    epoch,
                    meta: Box::new(meta),
                });
            self.in_epoch = None;
            self.last_epoch = Some(epoch);
            let mut b = self.status.lock();
            b.status.epoch = Some(epoch);
            b.status.last_dirty_pages = Some(n);
            b.status.epochs_total += 1;
            b.record_pause(pause);
            if unrestorable != b.status.unrestorable_fds {
                // Named when the app creates it (seen at the next checkpoint), not at failover.
                for d in unrestorable
                    .iter()
                    .filter(|d| !b.status.unrestorable_fds.contains(d))
                {
                    tracing::warn!(
                        epoch,
                        "this descriptor cannot come back on the standby: {d}"
                    );
                }
                b.status.unrestorable_fds = unrestorable;
            }
            tracing::debug!(epoch, pages = n, pause_us = pause / 1000, "epoch taken");
            if self.resync.as_ref().and_then(|r| r.full_epoch) == Some(epoch) {
                tracing::info!(
                    epoch,
                    pages = n,
                    pause_us = pause / 1000,
                    "full image for the reconnected standby taken"
                );
            }
        }
        if !ok {
            self.check_link();
        }
        Ok(())
    }

    /// The app died without an exit message (killed), or the shim's socket closed: drop the
    /// connection without a goodbye, as a dying host would.
    fn app_vanished(&mut self, why: &str) -> End {
        tracing::warn!("{why}; dropping the standby connection without a goodbye");
        if let Some(link) = self.link.take() {
            link.close();
        }
        End::Exit(0)
    }

    fn operator_stop(&mut self) -> End {
        tracing::info!("stopped by a signal; telling the standby not to take over");
        // The app may be dying from the same Ctrl-C: give its exit message a moment.
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            match self.shim.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(FromShim::Msg(m))) if m.kind == MsgKind::Exiting as u32 => {
                    if let Ok(Some(end)) = self.on_shim(FromShim::Msg(m)) {
                        return end;
                    }
                }
                Ok(Some(FromShim::Msg(m))) if m.kind == MsgKind::EpochChunk as u32 => {
                    // Never leave the shim blocked on a chunk; nothing is shipped any more.
                    self.given_up = true;
                    let _ = self.on_chunk(m.a, m.b);
                }
                Ok(Some(FromShim::Eof)) | Err(_) => break,
                _ => {}
            }
        }
        if let Some(link) = self.link.take() {
            link.goodbye(GoodbyeReason::OperatorStop, Duration::from_secs(2));
            link.close();
        }
        // The app may run on: its output passes through until it closes its streams.
        self.release_at_end = true;
        End::Exit(0)
    }
}
