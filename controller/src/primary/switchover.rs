//! A planned switch-over (`remusctl switchover`): take a last epoch, stop the program right
//! after its checkpoint, wait for the standby to commit it, then (with `--etcd`) revoke the
//! lease and say goodbye: the standby resumes the program from that epoch. With etcd it takes
//! about one round trip more than an epoch, not a TTL.
//!
//! ```text
//! request -> epoch N signalled -> N's checkpoint in: SIGSTOP the program -> N acked
//!         -> output of N written out (briefly) -> SIGKILL, revoke, Goodbye::Switchover{N}
//! ```

use std::time::{Duration, Instant};

use crossbeam::channel::Sender;

use crate::wire::messages::GoodbyeReason;

use super::protection::Protection;
use super::state::{End, Primary};

/// The answer to `remusctl switchover`: a message, or why not.
pub type SwitchReply = Sender<Result<String, String>>;

/// How long a switch-over may take before it is abandoned (the program runs on).
const SWITCH_TIMEOUT: Duration = Duration::from_secs(8);
/// After the last epoch committed: time for its output to be written out.
const FLUSH: Duration = Duration::from_millis(100);

pub struct Switchover {
    reply: SwitchReply,
    since: Instant,
    /// The last epoch: the program stops right after its checkpoint.
    target: u64,
    frozen: bool,
    committed_at: Option<Instant>,
}

impl Primary {
    /// One step of a switch-over (and a new request, if one came).
    pub(super) fn step_switchover(&mut self) -> Option<End> {
        if self.switch.is_none() {
            let reply = self.switch_requests.as_ref()?.try_recv().ok()?;
            if !matches!(self.protection, Protection::Protected)
                || self.link.is_none()
                || self.exec.is_some()
                || self.stopping
            {
                let why = self
                    .status
                    .lock()
                    .status
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("state {}", self.protection.label()));
                let _ = reply.send(Err(format!(
                    "not switching over: the program is not protected ({why})"
                )));
                return None;
            }
            let target = self.last_epoch.unwrap_or(0) + 1;
            tracing::info!(
                epoch = target,
                "switch-over requested: taking a last epoch, then the standby resumes the program"
            );
            self.want_epoch = self.want_epoch.max(target);
            self.switch = Some(Switchover {
                reply,
                since: Instant::now(),
                target,
                frozen: false,
                committed_at: None,
            });
            return None;
        }
        let sw = self.switch.as_mut()?;
        let app = self.args.app_pid;
        if sw.since.elapsed() > SWITCH_TIMEOUT
            || !matches!(self.protection, Protection::Protected)
            || self.link.is_none()
        {
            let sw = self.switch.take()?;
            if sw.frozen {
                let _ = crate::sys::kill(app, libc::SIGCONT);
            }
            let why = format!(
                "switch-over abandoned: epoch {} was not committed within {} s (state {}); the \
                 program runs on here",
                sw.target,
                SWITCH_TIMEOUT.as_secs(),
                self.protection.label()
            );
            tracing::warn!("{why}");
            let _ = sw.reply.send(Err(why));
            return None;
        }
        if !sw.frozen && self.last_epoch.is_some_and(|e| e >= sw.target) {
            // Its checkpoint is in: nothing the program does from here will be kept.
            if let Err(e) = crate::sys::kill(app, libc::SIGSTOP) {
                tracing::warn!("stopping the program for the switch-over: {e}");
            }
            sw.frozen = true;
        }
        let committed = self.status.lock().status.committed_epoch;
        if !sw.frozen || committed.is_none_or(|c| c < sw.target) {
            return None;
        }
        let at = *sw.committed_at.get_or_insert_with(Instant::now);
        if at.elapsed() < FLUSH {
            return None;
        }
        let sw = self.switch.take()?;
        let epoch = sw.target;
        if let Err(e) = crate::sys::kill(app, libc::SIGKILL) {
            tracing::warn!("ending the program for the switch-over: {e}");
        }
        // The key is free before the standby hears of it: it takes it at its first try.
        self.revoke_lease("a planned switch-over");
        let released = (self.output.watermark())();
        let said = self
            .link
            .take()
            .map(|link| {
                let ok = link.goodbye(
                    GoodbyeReason::Switchover { epoch, released },
                    Duration::from_secs(3),
                );
                link.close();
                ok
            })
            .unwrap_or(false);
        let msg = format!(
            "switched over at epoch {epoch}: the program was stopped here and the standby \
             resumes it from that epoch{}",
            if said {
                ""
            } else {
                " (the goodbye was not confirmed: the standby takes over when it sees the link gone)"
            }
        );
        tracing::warn!("{msg}");
        self.set_protection(Protection::Unprotected, |b| {
            b.status.link = "down".into();
            b.unprotect(msg.clone());
        });
        let _ = sw.reply.send(Ok(msg));
        Some(End::Exit(0))
    }
}
