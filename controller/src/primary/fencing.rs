//! When the standby is lost: fencing (before anything held is released, make sure the standby
//! has not taken over meanwhile), reconnection and resynchronisation, and the two ways
//! protection ends (given up, or superseded by a standby that took over).
//!
//! Every question to the standby runs on a thread of its own ([`super::reconnect`]); the
//! epoch loop only starts it and picks up its typed answer ([`Primary::step_resync`]).

use std::time::{Duration, Instant};

use crate::wire::messages::{GoodbyeReason, Refusal};

use super::link::Link;
use super::protection::{Protection, Resync, RESYNC_RETRY};
use super::reconnect::{self, Attempt, Attempted, Probe, ReconnectError};
use super::state::Primary;

impl Primary {
    /// Gives up protection for good: tells the standby (when `goodbye`) and drops the link.
    pub(super) fn unprotect(&mut self, reason: String, goodbye: bool) {
        if !self.protection.given_up() {
            tracing::warn!("protection stops: {reason}");
        }
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
        self.release_all_held();
        self.set_protection(Protection::Unprotected, |b| {
            b.status.link = "down".into();
            b.unprotect(reason);
        });
    }

    /// The standby took over: this primary must never run the app beside the restored one,
    /// nor release anything it holds (all of it is from epochs the standby does not have).
    pub(super) fn superseded(&mut self, addr: &str, why: &str, answer: &Refusal) {
        let reason = format!(
            "SUPERSEDED: the standby {addr} took over the app while this primary was cut off or \
             frozen ({why}); it answered: {answer}. Stopping the app (SIGKILL) and releasing \
             none of the output held since the last committed epoch"
        );
        tracing::error!("{reason}");
        if let Err(e) = crate::sys::kill(self.args.app_pid, libc::SIGKILL) {
            tracing::error!("killing the superseded app {}: {e}", self.args.app_pid);
        }
        self.set_protection(Protection::Superseded, |b| {
            b.status.link = "down".into();
            b.unprotect(reason);
        });
    }

    /// Whether the link to the standby broke; if so, everything held stays held and the
    /// standby is asked (off this loop) whether it took over.
    pub(super) fn check_link(&mut self) {
        let Some(link) = &self.link else { return };
        let Some(why) = link.lost() else { return };
        let addr = link.addr.clone();
        // Fencing: before anything held is released, make sure the standby has not taken
        // over meanwhile (this primary may have been frozen or cut off for longer than its
        // failure timeout). A standby that did answers any new connection "superseded".
        let contact = link.last_contact();
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.stop_stream();
        tracing::warn!(
            "standby {addr} lost: {why}; asking it whether it took over before releasing anything"
        );
        let r = Resync::lost(addr, why, contact);
        let reason = r.reason(None);
        self.set_protection(Protection::Resyncing(Box::new(r)), |b| {
            b.status.link = "down".into();
            b.unprotect(reason);
        });
    }

    /// The fencing probe answered.
    fn probed(&mut self, answer: Probe) {
        let Some(r) = self.protection.resync_mut() else {
            return;
        };
        r.asked = true;
        r.next_try = Instant::now() + RESYNC_RETRY;
        let (addr, why) = (r.addr.clone(), r.why.clone());
        match answer {
            Probe::Superseded(answer) => self.superseded(&addr, &why, &answer),
            Probe::NotTakenOver => {
                tracing::error!(
                    "standby {addr} lost: {why}; the app keeps running unprotected while remusd reconnects (every {} ms) to resynchronise",
                    RESYNC_RETRY.as_millis()
                );
                r.held = false;
                let reason = r.reason(None);
                self.release_all_held();
                self.show_protection(|b| b.unprotect(reason));
            }
            Probe::Unknown(err) => {
                tracing::error!(
                    "standby {addr} lost: {why}; it cannot be asked whether it took over ({err}): \
                     the app keeps running but everything it sends out stays HELD until the standby \
                     answers (asked every {} ms); if that standby is gone for good, start a new one \
                     at {addr}",
                    RESYNC_RETRY.as_millis()
                );
                r.held = true;
                r.why = format!("{why}; unreachable since: {err}");
                let reason = r.reason(None);
                self.show_protection(|b| b.unprotect(reason));
            }
        }
    }

    /// Resynchronisation: asks the lost standby whether it took over, then reconnects when
    /// due (never while an epoch is in flight: its chunks would reach the new standby without
    /// the full image); once connected, `step_sync` sees the full image committed.
    pub(super) fn step_resync(&mut self) {
        let in_epoch = self.in_epoch.is_some();
        let Some(r) = self.protection.resync_mut() else {
            return;
        };
        if self.link.is_some() {
            // Connected: protection resumes once the standby commits the streamed full image
            // (step_sync).
            return;
        }
        // An attempt runs in a thread of its own: the epoch loop goes on pumping output (a
        // standby host that drops packets makes each attempt last the whole timeout).
        if let Some(rx) = &r.attempt {
            let answer = match rx.try_recv() {
                Ok(a) => a,
                Err(crossbeam::channel::TryRecvError::Empty) => return,
                Err(crossbeam::channel::TryRecvError::Disconnected) if !r.asked => {
                    Attempted::Probe(Probe::Unknown(
                        "the question ended without an answer".into(),
                    ))
                }
                Err(crossbeam::channel::TryRecvError::Disconnected) => {
                    Attempted::Reconnect(Err(ReconnectError::NoAnswer))
                }
            };
            r.attempt = None;
            let attempts = r.attempts;
            match answer {
                Attempted::Probe(p) => self.probed(p),
                Attempted::Reconnect(result) => self.resync_attempted(attempts, result),
            }
            return;
        }
        if Instant::now() < r.next_try || (r.asked && in_epoch) {
            return;
        }
        let addr = r.addr.clone();
        let attempt = if r.asked {
            r.attempts += 1;
            Attempt::Reconnect(self.on_ack())
        } else {
            Attempt::Probe(r.contact)
        };
        let asked = matches!(attempt, Attempt::Reconnect(_));
        let spawned = self
            .dialer(&addr)
            .map_err(ReconnectError::Security)
            .and_then(|d| reconnect::spawn(d, attempt).map_err(ReconnectError::Thread));
        match spawned {
            Ok(rx) => {
                if let Some(r) = self.protection.resync_mut() {
                    r.attempt = Some(rx);
                }
            }
            Err(e) if !asked => self.probed(Probe::Unknown(e.to_string())),
            Err(e) => {
                let attempts = self.protection.resync().map_or(0, |r| r.attempts);
                self.resync_attempted(attempts, Err(e));
            }
        }
    }

    /// The outcome of reconnection attempt number `attempts`.
    fn resync_attempted(&mut self, attempts: u64, result: Result<Link, ReconnectError>) {
        let Some(r) = self.protection.resync_mut() else {
            if let Ok(link) = result {
                link.close();
            }
            return;
        };
        let addr = r.addr.clone();
        match result {
            Err(ReconnectError::Superseded(answer)) => {
                let why = r.why.clone();
                self.superseded(&addr, &why, &answer);
            }
            Err(e) => {
                r.next_try = Instant::now() + RESYNC_RETRY;
                let release = r.held
                    && matches!(e, ReconnectError::PeerGone(_))
                    && r.contact.too_recent_for_takeover();
                if release {
                    // The standby's daemon is gone, and it had not heard from this primary
                    // for long enough to take over: it is not running the app, so what was
                    // held for it may go now, as when a standby dies in plain sight.
                    r.held = false;
                    tracing::warn!(standby = %addr, "{e}: the standby is gone; releasing the output held for it and running unprotected");
                }
                if attempts == 1 || attempts.is_multiple_of(20) {
                    tracing::info!(standby = %addr, attempts, "reconnecting to resynchronise: {e}");
                } else {
                    tracing::debug!(standby = %addr, attempts, "reconnecting to resynchronise: {e}");
                }
                let reason = r.reason(Some((attempts, &e)));
                if release {
                    self.release_all_held();
                }
                self.status.lock().status.reason = Some(reason);
            }
            Ok(link) => self.resume(link),
        }
    }

    /// A new connection after the standby was lost: hold output again, ask the shim for a
    /// full image at the next epoch (taken at once), and send epochs from there. The new
    /// link's sending pipeline starts with an empty delta shadow (it belongs to the
    /// connection), and the standby's session starts from an empty image.
    fn resume(&mut self, link: Link) {
        if self.protection.resync().is_none() {
            link.close();
            return;
        }
        let last = self.last_epoch.unwrap_or(0);
        let req = self.staging.request_resend();
        let Some(r) = self.protection.resync_mut() else {
            return;
        };
        // Output: if it was released while the standby was gone, it keeps flowing while the
        // image streams (the standby cannot restore a partial image, so nothing can run it
        // twice), and is held again from the epoch that completes the image (stream_batch).
        // If it was never released (the standby was unreachable), it stays held at the last
        // committed epoch: epochs after that were never acked.
        let unheld = !r.held;
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
        self.output.new_link();
        self.want_epoch = self.want_epoch.max(last + 1);
        self.next_tick = Instant::now();
        self.start_stream();
        match &mut self.stream {
            Some(st) => st.unheld = unheld,
            None if unheld => self.hold_output_again(last), // the full image goes in one pause
            None => {}
        }
        self.show_protection(|b| {
            b.status.link = "up".into();
            b.status.reason = Some(reason);
        });
    }
}
