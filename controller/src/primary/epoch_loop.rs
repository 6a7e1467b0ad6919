//! The epoch loop: waits on the shim's socket, the app's pidfd and the output pipes; signals
//! epochs, takes the shim's chunks and ships them, and steps the fencing and resync state
//! (every question to the standby runs off this loop).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use remus_abi::{Msg, MsgKind};

use crate::wire::messages::{AppExit, GoodbyeReason};

use super::link::Outbound;
use super::protection::Protection;
use super::shim_link::{FromShim, ShimLink};
use super::staging;
use super::state::{End, ExecPending, InEpoch, Primary, EXEC_HELLO_TIMEOUT, FORK_GRACE};

/// How long packets wait in the gate for an epoch not signalled yet before the controller
/// signals one itself (the shim's output-triggered epochs do not see them: their sockets pass
/// straight through the shim when the gate is on). Measured with `benches/gate.rs` (lighttpd,
/// wrk, debug build): 1 ms gave 479 req/s on one connection, 200 us 1,085, none 1,861, and
/// none was also best with 32 connections: a burst split across two epochs costs less than
/// waiting for its end.
const GATE_EPOCH_DELAY: Duration = Duration::ZERO;

/// How a connection dump in the pause went.
#[derive(Debug)]
pub(super) enum DumpOutcome {
    /// Dumped while the program was held (or nothing to dump): the epoch commits.
    Taken,
    /// The epoch cannot be taken whole: protection stops with this reason.
    Abandoned(String),
    /// The shim went away meanwhile: the epoch is not committed.
    ShimGone,
}

impl Primary {
    pub(super) fn main(&mut self, stop: &AtomicBool) -> Result<End> {
        self.await_hello()?;
        if let Some(end) = self.connect()? {
            return Ok(end);
        }
        let mut pidfd_pid = self.args.app_pid;
        let mut pidfd = crate::sys::pidfd_open(pidfd_pid)
            .with_context(|| format!("pidfd_open({pidfd_pid}) for the app"))?;
        let epoch = Duration::from_millis(self.args.epoch_ms.max(1));
        self.next_tick = Instant::now();
        loop {
            // What the shim said while remusd waited for its answer to a connection dump.
            while let Some(m) = self.shim_backlog.pop_front() {
                if let Some(end) = self.on_shim(m)? {
                    return Ok(end);
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(self.operator_stop());
            }
            let now = Instant::now();
            let gate_due = self.gate_epoch_due(now);
            let timeout = if self.can_signal()
                && (self.idle_wanted() || gate_due == Some(Duration::ZERO))
            {
                Duration::ZERO
            } else if let (true, Some(d)) = (self.can_signal(), gate_due) {
                d
            } else if self.can_signal() {
                self.next_tick
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            } else if self.in_epoch.is_none() && !self.shipping_stopped() && self.link.is_some() {
                // Only the sender's queue is in the way (it drains in a moment; nothing wakes
                // this poll when it does): look again soon, or the epochs (and the output
                // waiting for them) slip to this poll's 50 ms.
                Duration::from_millis(1)
            } else {
                Duration::from_millis(50)
            };
            let mut fds = vec![self.shim.raw_fd(), pidfd.as_raw_fd()];
            // Not while an epoch signal is outstanding (for at most READ_PAUSE_MAX): its
            // checkpoint says how much of what waits in the pipes precedes it.
            let waiting_for_checkpoint = self
                .in_epoch
                .as_ref()
                .is_some_and(|e| e.signalled_at.elapsed() < super::output::READ_PAUSE_MAX);
            if !waiting_for_checkpoint {
                fds.extend(self.output.poll_fds());
            }
            let n_out = fds.len();
            if let Some(g) = &self.packets {
                fds.push(g.wake_fd());
            }
            let ready = crate::sys::poll_readable(&fds, Some(timeout)).context("poll")?;
            if ready[2..n_out].iter().any(|&r| r) {
                self.output.pump(self.output_tag());
            }
            if ready.len() > n_out && ready[n_out] {
                if let Some(g) = &self.packets {
                    g.clear_wake();
                }
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
                if self.args.app_pid != pidfd_pid {
                    // The program handed protection to its child and exited (a daemon).
                    pidfd_pid = self.args.app_pid;
                    match crate::sys::pidfd_open(pidfd_pid) {
                        Ok(fd) => {
                            pidfd = fd;
                            continue;
                        }
                        Err(_) => {
                            return Ok(self.app_vanished(
                                "the program's child it handed protection to is gone",
                            ))
                        }
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok(self.operator_stop());
                }
                return Ok(self.app_vanished("the app died without saying goodbye (killed?)"));
            }
            self.check_link();
            self.check_exec();
            self.check_forks();
            self.step_resync();
            self.step_arbiter();
            if let Some(end) = self.step_switchover() {
                return Ok(end);
            }
            self.step_sync();
            if let Some(e) = &mut self.in_epoch {
                if !e.warned && e.signalled_at.elapsed() > Duration::from_secs(10) {
                    e.warned = true;
                    tracing::warn!(
                        "the app has not answered the epoch signal for 10 s (signal blocked, or stopped?)"
                    );
                }
            }
            if self.can_signal()
                && (Instant::now() >= self.next_tick
                    || self.idle_wanted()
                    || self.gate_epoch_due(Instant::now()) == Some(Duration::ZERO))
            {
                self.signal_epoch(epoch)?;
            }
        }
    }

    /// The shim abandoned epoch `epoch` because thread `tid` did not come into the epoch
    /// handler within its deadline. Protection goes on: the epoch signalled is answered (no
    /// chunk comes for it) and the next tick signals again; the shim reuses the epoch number.
    fn on_thread_stuck(&mut self, tid: i32, epoch: u64, what: String) {
        tracing::warn!(
            tid,
            epoch,
            "epoch {epoch} abandoned, retrying at the next tick: {what}"
        );
        // Chunks of an epoch already coming are not this epoch's: leave them be.
        if self.in_epoch.as_ref().is_some_and(|e| e.progress.is_none()) {
            self.in_epoch = None;
        }
        let mut b = self.status.lock();
        b.status.threads_stuck_total += 1;
        b.status.stuck_thread = Some(crate::control::status::StuckThread { tid, epoch, what });
    }

    /// Output-triggered epochs for the packet gate: packets wait for an epoch not signalled
    /// yet; `Some(ZERO)` once they have waited [`GATE_EPOCH_DELAY`] (a burst the program is
    /// still writing goes with the same epoch), else how long until then.
    fn gate_epoch_due(&self, now: Instant) -> Option<Duration> {
        let since = self.packets.as_ref()?.waiting_since(self.output_tag())?;
        Some(GATE_EPOCH_DELAY.saturating_sub(now.saturating_duration_since(since)))
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

    /// The program is about to exec: its old image takes no more epochs (one signalled and not
    /// yet taken never will be: the shim blocked the signal, and the new image discards it).
    fn on_exec(&mut self, path: String) {
        tracing::info!(
            "the program execs {path}: protection follows it into the new image (same pid, same standby)"
        );
        self.in_epoch = None;
        self.output.epoch_abandoned();
        self.exec = Some(ExecPending {
            since: Instant::now(),
            what: format!("exec'd {path}"),
        });
    }

    /// The new image of an exec said hello: it is protected from its start, with a new full
    /// image (streamed, as at start-up; the standby keeps the old image's last committed state
    /// until the new one is complete).
    fn on_hello_after_exec(&mut self, m: &Msg) -> Result<Option<End>> {
        let what = match self.exec.take() {
            Some(x) => x.what,
            None => {
                tracing::warn!("a new image said hello without an exec announced before it");
                "exec'd (unannounced)".into()
            }
        };
        if let Err(e) = self.check_hello(m) {
            let _ = self.shim.send(MsgKind::Refuse, 0, 0, &e);
            self.unprotect(format!("the program {what}, and its new image: {e}"), true);
            return Ok(None);
        }
        if self.shipping_stopped() || self.link.is_none() {
            // Unprotected (given up) or fenced: the new image runs as the old one did.
            let why = self.status.lock().status.reason.clone().unwrap_or_default();
            self.shim
                .send(MsgKind::RunUnprotected, 0, 0, &why)
                .context("telling the new image to run unprotected")?;
            return Ok(None);
        }
        tracing::info!("the program {what}; the new image said hello; streaming its full image");
        self.stop_stream();
        self.start_stream();
        self.set_protection(Protection::Syncing, |b| {
            b.status.reason = Some(format!(
                "the program {what}: sending the new image to the standby while it runs; \
                 protected once the standby has all of it"
            ));
        });
        self.shim
            .send(MsgKind::Ready, 0, 0, "")
            .context("telling the new image we are ready")?;
        Ok(None)
    }

    /// The program exits and hands protection to its child (a daemon): the child is the
    /// program from here (epoch signals, status, the pid remusd watches) once it says hello.
    fn on_handover(&mut self, child: i32) {
        tracing::info!(
            old = self.args.app_pid,
            new = child,
            "the program exits leaving its child running the same program (it daemonized): protection moves to the child"
        );
        self.in_epoch = None;
        self.output.epoch_abandoned();
        self.exec = Some(ExecPending {
            since: Instant::now(),
            what: format!("daemonized: its child {child} carries on as the program"),
        });
        self.forks.clear();
        self.args.app_pid = child;
        self.status.lock().status.app_pid = Some(child);
    }

    /// A child of the program that serves (waits for input as a worker does) still runs the
    /// same program beside it after [`FORK_GRACE`]: the multi-process case, which remus does
    /// not protect.
    fn check_forks(&mut self) {
        if self.forks.is_empty() || self.shipping_stopped() {
            return;
        }
        let app = self.args.app_pid;
        let exe = |pid: i32| {
            std::fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
        };
        let app_exe = exe(app);
        self.forks
            .retain(|&(pid, _)| crate::sys::still_running(pid, Duration::ZERO));
        let Some(&(pid, _)) = self.forks.iter().find(|(pid, at)| {
            at.elapsed() >= FORK_GRACE && exe(*pid).is_some() && exe(*pid) == app_exe
        }) else {
            // Children that ran another program (exec) are separate programs, not replicated.
            self.forks
                .retain(|(pid, at)| at.elapsed() < FORK_GRACE || exe(*pid) == app_exe);
            return;
        };
        self.forks.clear();
        self.unprotect(
            format!(
                "the program forked pid {pid}, which keeps running the same program beside it: \
                 remus protects one process (multi-process programs are not supported yet); \
                 replication stopped"
            ),
            true,
        );
    }

    /// An exec whose new image has not said hello in time: it does not load the shim.
    fn check_exec(&mut self) {
        let Some(x) = &self.exec else { return };
        if x.since.elapsed() < EXEC_HELLO_TIMEOUT {
            return;
        }
        let reason = format!(
            "the program {} and its new image did not say hello within {} s: it does not load \
             libremus.so (a static or setuid program?) or could not take over; it runs unprotected",
            x.what,
            EXEC_HELLO_TIMEOUT.as_secs()
        );
        self.exec = None;
        self.unprotect(reason, true);
    }

    /// Nothing is shipped any more: protection was given up, or remusd is stopping.
    fn shipping_stopped(&self) -> bool {
        self.stopping || self.protection.given_up()
    }

    fn can_signal(&self) -> bool {
        self.in_epoch.is_none()
            && self.exec.is_none()
            && !self.shipping_stopped()
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
        self.output.signal_sent();
        // Packets read from here on may come from after the pause: the next epoch's.
        if let Some(g) = &self.packets {
            g.set_tag(self.output_tag() + 1);
        }
        if let Err(e) = crate::sys::kill(self.args.app_pid, remus_abi::EPOCH_SIGNAL) {
            self.output.epoch_abandoned();
            tracing::warn!("sending the epoch signal to {}: {e}", self.args.app_pid);
            // The pidfd tells us if the app is gone; try again next tick.
            self.next_tick = now + epoch;
            return Ok(());
        }
        self.in_epoch = Some(InEpoch::new(now));
        // The next epoch is due one period after this one started (or at once if late).
        self.next_tick = now + epoch;
        Ok(())
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
                    // A live app closed remus's socket: a daemon closing every descriptor, or
                    // an exec the shim did not see (the shim keeps the socket across the execs
                    // it follows). This image's checkpoints must never be resurrected.
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
                // Only past MAX_THREADS now. The shim's text says it all; anything terser gets
                // the context added once.
                let reason = if text.contains("threads") {
                    text
                } else {
                    format!(
                        "the app created more threads than remus protects ({}; {text})",
                        remus_abi::MAX_THREADS
                    )
                };
                self.unprotect(reason, true)
            }
            Some(MsgKind::ThreadStuck) => self.on_thread_stuck(m.a as i32, m.b, text),
            Some(MsgKind::TcpHeld) => {
                tracing::debug!(epoch = m.a, "the shim's answer to a dump not waited for")
            }
            Some(MsgKind::TcpDumpLate) => tracing::warn!(epoch = m.a, "{text}"),
            Some(MsgKind::Unsupported) => self.unprotect(
                format!("the app uses state remus cannot replicate: {text}"),
                true,
            ),
            Some(MsgKind::Exiting) => {
                let exit = AppExit::from_shim(m.a, m.b);
                tracing::info!("the app {exit}");
                self.set_protection(Protection::Unprotected, |b| {
                    b.status.exit_code = exit.exit_code();
                    b.unprotect(format!("the app {exit}"));
                });
                if let Some(link) = self.link.take() {
                    if !link.goodbye(GoodbyeReason::AppExited(exit), Duration::from_secs(3)) {
                        tracing::warn!("could not deliver the goodbye to the standby");
                    }
                    link.close();
                }
                self.revoke_lease("the program exited");
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
            Some(MsgKind::Exec) => self.on_exec(text),
            Some(MsgKind::ExecFailed) => {
                let e = std::io::Error::from_raw_os_error(m.a as i32);
                match self.exec.take() {
                    Some(x) => tracing::warn!(
                        "the program {} but the exec failed ({e}); its old image goes on, protected",
                        x.what
                    ),
                    None => {
                        tracing::warn!("the shim reported a failed exec that it had not announced")
                    }
                }
            }
            Some(MsgKind::HelloAfterExec) => return self.on_hello_after_exec(&m),
            Some(MsgKind::Forked) => tracing::debug!(child = m.a, "the program forked"),
            Some(MsgKind::ChildServes) => self.forks.push((m.a as i32, Instant::now())),
            Some(MsgKind::Handover) => self.on_handover(m.a as i32),
            _ => tracing::warn!(kind = m.kind, "unexpected message from the shim; ignored"),
        }
        Ok(None)
    }

    fn on_chunk(&mut self, epoch: u64, chunk: u64) -> Result<()> {
        let staging = self.staging.clone();
        let bytes = staging.bytes();
        let hdr = staging::read_header(bytes, (epoch, chunk));
        let last = hdr.as_ref().map(|h| h.last != 0).unwrap_or(false);
        let tcp_hold = self.tcp_hold;
        // Drains a chunk that is not taken (and lets a shim holding the epoch for a connection
        // dump go on: no dump is made for an epoch that is not committed).
        let drain = |shim: &ShimLink| -> Result<()> {
            if !last {
                shim.send(MsgKind::Drained, epoch, chunk, "")
                    .context("telling the shim the chunk is drained")?;
            } else if tcp_hold {
                shim.send(MsgKind::TcpDumped, epoch, 0, "")
                    .context("letting the shim go on (no connection dump)")?;
            }
            Ok(())
        };
        if self.shipping_stopped() || self.link.is_none() {
            drain(&self.shim)?;
            if last {
                if let Ok(h) = &hdr {
                    self.output.checkpoint(epoch, &h.stdio_pipes);
                }
                self.output.epoch_abandoned();
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
        // The staging area is copied out: let the shim go on (a last chunk's hold for the
        // connection dump ends below).
        if !last {
            drain(&self.shim)?;
        }
        let (pages, mut meta) = match (pages, meta.transpose()) {
            (Ok(p), Ok(m)) => (p, m),
            (Err(e), _) | (_, Err(e)) => {
                if last {
                    drain(&self.shim)?;
                }
                self.in_epoch = None;
                self.unprotect(
                    format!("bad epoch {epoch} chunk {chunk} from the shim: {e}"),
                    true,
                );
                return Ok(());
            }
        };
        if let (Some(m), true) = (meta.as_mut(), self.tcp_hold) {
            match self.dump_conns(epoch, m) {
                DumpOutcome::Taken => {}
                DumpOutcome::Abandoned(reason) => {
                    self.in_epoch = None;
                    self.unprotect(reason, true);
                    return Ok(());
                }
                DumpOutcome::ShimGone => {
                    // Not committed: the standby keeps the epoch before (the loop sees the
                    // end of the shim's socket next).
                    self.in_epoch = None;
                    return Ok(());
                }
            }
        }
        let ie = self
            .in_epoch
            .get_or_insert_with(|| InEpoch::new(Instant::now()));
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
            // The output written before this checkpoint, exactly, goes with its commit.
            self.output.checkpoint(epoch, &h.stdio_pipes);
            let output = self.output.ship(epoch);
            let (n, pause) = (meta.pages, meta.pause_ns);
            let (threads, rendezvous) = (meta.threads.len(), meta.rendezvous_ns);
            let unrestorable = crate::restore::unrestorable_fds(&meta);
            let streamed = h.flags & remus_abi::HDR_FLAG_STREAMED != 0;
            let read = self.stream_commit(epoch, &mut meta, streamed, shim_pages);
            let link = self.link.as_ref().expect("checked above");
            ok = ok && (read.is_empty() || link.ship(Outbound::Pages { epoch, pages: read }));
            ok = ok
                && link.ship(Outbound::Commit {
                    epoch,
                    meta: Box::new(meta),
                    output,
                });
            self.in_epoch = None;
            self.last_epoch = Some(epoch);
            let mut b = self.status.lock();
            b.status.epoch = Some(epoch);
            b.status.last_dirty_pages = Some(n);
            b.status.epochs_total += 1;
            b.record_pause(pause);
            b.record_threads(threads, rendezvous, pause);
            if b.status.stuck_thread.take().is_some() {
                tracing::info!(epoch, threads, "every thread came in again");
            }
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
            if self.protection.resync().and_then(|r| r.full_epoch) == Some(epoch) {
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

    /// Dumps the connections of epoch `epoch` while the shim holds the program
    /// ([`super::conns`]); on [`DumpOutcome::Taken`] they are in `meta.tcp`.
    pub(super) fn dump_conns(
        &mut self,
        epoch: u64,
        meta: &mut crate::image::EpochMeta,
    ) -> DumpOutcome {
        if !super::conns::held_for_dump(meta) {
            return DumpOutcome::Taken;
        }
        let t0 = Instant::now();
        let dumped = super::conns::dump_all(self.args.app_pid, meta);
        let dump_us = t0.elapsed().as_micros() as u64;
        // The shim goes on in any case.
        if let Err(e) = self.shim.send(MsgKind::TcpDumped, epoch, 0, "") {
            tracing::warn!(epoch, "telling the shim the connections are dumped: {e}");
            return DumpOutcome::ShimGone;
        }
        let dumped = match dumped {
            Ok(d) => d,
            Err(e) => {
                return DumpOutcome::Abandoned(format!(
                    "epoch {epoch} abandoned: {e}; the program's connections would not survive a failover"
                ))
            }
        };
        // The shim's verdict comes next: TcpHeld (it waited for us) or TcpDumpLate.
        let deadline = Instant::now()
            + Duration::from_nanos(remus_abi::TCP_HOLD_DEADLINE_NS)
            + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return DumpOutcome::Abandoned(format!(
                    "epoch {epoch} abandoned: the shim did not answer the connection dump within {} ms",
                    (remus_abi::TCP_HOLD_DEADLINE_NS / 1_000_000) + 2000
                ));
            }
            match self.shim.recv_timeout(left) {
                Ok(Some(FromShim::Msg(m))) if m.kind == MsgKind::TcpHeld as u32 && m.a == epoch => {
                    break
                }
                Ok(Some(FromShim::Msg(m)))
                    if m.kind == MsgKind::TcpDumpLate as u32 && m.a == epoch =>
                {
                    return DumpOutcome::Abandoned(format!(
                        "epoch {epoch} abandoned: {} (the dump took {dump_us} us); its connection \
                         state may be newer than its memory",
                        String::from_utf8_lossy(m.text())
                    ));
                }
                Ok(Some(FromShim::Eof)) => {
                    self.shim_backlog.push_back(FromShim::Eof);
                    return DumpOutcome::ShimGone;
                }
                Ok(Some(other)) => self.shim_backlog.push_back(other),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(epoch, "waiting for the shim after the connection dump: {e}");
                    return DumpOutcome::ShimGone;
                }
            }
        }
        for (fd, state) in &dumped.skipped {
            tracing::debug!(
                epoch,
                fd,
                state,
                "connection not dumped (already closed): it comes back closed"
            );
        }
        tracing::debug!(
            epoch,
            conns = dumped.conns.len(),
            dump_us,
            hold_us = t0.elapsed().as_micros() as u64,
            "connections dumped in the pause"
        );
        let hold_us = t0.elapsed().as_micros() as u64;
        {
            let mut b = self.status.lock();
            let c = b.status.connections.get_or_insert_with(Default::default);
            c.last_epoch = dumped.conns.len() as u64;
            c.last_hold_us = hold_us;
            c.max_hold_us = c.max_hold_us.max(hold_us);
            c.epochs_held += 1;
        }
        meta.tcp = dumped.conns;
        DumpOutcome::Taken
    }

    /// The app died without an exit message (killed), or the shim's socket closed: drop the
    /// connection without a goodbye, as a dying host would.
    fn app_vanished(&mut self, why: &str) -> End {
        tracing::warn!("{why}; dropping the standby connection without a goodbye");
        if let Some(link) = self.link.take() {
            link.close();
        }
        // Nothing runs here any more: the standby may take the key (and the program) now.
        self.revoke_lease("the program is gone");
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
                    self.stopping = true;
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
        self.revoke_lease("stopped by an operator");
        // The app may run on: its output passes through until it closes its streams.
        self.release_at_end = true;
        End::Exit(0)
    }
}
