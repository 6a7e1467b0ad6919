//! The primary with `--etcd`: output is released only while its lease is certainly valid (acks
//! that come while it is not are deferred, and released once a renewal succeeds), the program
//! is stopped when etcd says the lease is gone, and a primary that lost its standby but holds
//! its lease knows that no takeover happened: it releases what it held and runs on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::arbiter::config::{Holder, Obsolete};
use crate::arbiter::lease::TakeLeaderError;
use crate::arbiter::{Etcd, LeaseHolder};

use super::protection::Protection;
use super::state::Primary;

impl Primary {
    /// Start-up with `--etcd`: takes the leader key (waiting up to about two TTLs for one
    /// held by an earlier primary's lease). Err: why not, for the operator.
    pub(super) fn take_lease(&mut self) -> Result<(), String> {
        let Some(cfg) = self.args.arbiter.clone() else {
            return Ok(());
        };
        let me = Holder::new("primary", Some(self.args.app_pid));
        let wait = cfg.ttl() * 2 + Duration::from_secs(1);
        let lease = Etcd::start(cfg.endpoints.clone(), super::request_timeout(&cfg))
            .map_err(TakeLeaderError::from)
            .and_then(|etcd| LeaseHolder::take_leader(etcd, &cfg, &me, self.status.clone(), wait))
            .map_err(|e| e.to_string())?;
        self.lease = Some(lease);
        Ok(())
    }

    /// One step of the arbiter's part of the epoch loop.
    pub(super) fn step_arbiter(&mut self) {
        let Some(lease) = &self.lease else { return };
        let gate = lease.gate();
        if let Some(why) = gate.lost() {
            if !matches!(self.protection, Protection::Superseded) && !self.stopping {
                self.lease_lost(&why);
            }
            return;
        }
        if !gate.certainly_valid() {
            return;
        }
        // Acks that came while the lease was not certainly valid.
        let deferred = self.deferred.swap(0, Ordering::AcqRel);
        if deferred > 0 {
            tracing::info!(
                epoch = deferred,
                "the etcd lease is certainly valid again: releasing the output of the epochs acknowledged meanwhile"
            );
            self.staging.publish_committed(deferred);
            self.output.committer().commit(deferred);
            if let Some(n) = &self.net {
                n.committer().commit(deferred);
            }
        }
        self.step_lease_proves_no_takeover();
    }

    /// The standby is lost and could not say whether it took over: holding the lease proves it
    /// did not (it would need the leader key). First the obsolete mark goes to etcd (so that
    /// this standby, if it is only cut off, never takes over with its image), then what was
    /// held is released and the program runs on unprotected until a standby answers.
    fn step_lease_proves_no_takeover(&mut self) {
        let from_epoch = self.last_epoch.unwrap_or(0);
        let Some(r) = self.protection.resync() else {
            self.obsolete = None;
            return;
        };
        if !r.held || !r.asked || self.link.is_some() {
            return;
        }
        let Some(lease) = &self.lease else { return };
        let Some(rx) = &self.obsolete else {
            self.obsolete = Some(lease.mark_obsolete_async(Obsolete { from_epoch }));
            return;
        };
        let answer = match rx.try_recv() {
            Ok(a) => a,
            Err(crossbeam::channel::TryRecvError::Empty) => return,
            Err(crossbeam::channel::TryRecvError::Disconnected) => {
                self.obsolete = None;
                return;
            }
        };
        self.obsolete = None;
        if let Err(e) = answer {
            tracing::warn!(
                "writing the obsolete mark to etcd: {e}; output stays held, trying again"
            );
            return;
        }
        if !lease.gate().certainly_valid() {
            return;
        }
        let Some(r) = self.protection.resync_mut() else {
            return;
        };
        r.held = false;
        r.why = format!(
            "{}; no takeover happened (this primary holds the etcd lease on {})",
            r.why,
            lease.config().leader_key()
        );
        tracing::warn!(
            standby = %r.addr, epoch = from_epoch,
            "the standby is lost, but this primary holds the etcd lease, so it did not take over: releasing the output held for it and running unprotected (its image is marked obsolete from epoch {from_epoch})"
        );
        let reason = r.reason(None);
        self.release_all_held();
        self.show_protection(|b| b.unprotect(reason));
    }

    /// Etcd says the lease is gone: a standby may hold the key and run the program. Stop it
    /// here, release nothing more.
    fn lease_lost(&mut self, why: &str) {
        let reason = format!(
            "FENCED: the etcd lease is gone ({why}); a standby may have taken the leader key \
             and the program. Stopping the program (SIGKILL) and releasing none of the output \
             still held"
        );
        tracing::error!("{reason}");
        if let Err(e) = crate::sys::kill(self.args.app_pid, libc::SIGKILL) {
            tracing::error!("killing the fenced program {}: {e}", self.args.app_pid);
        }
        self.stop_stream();
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.set_protection(Protection::Superseded, |b| {
            b.status.link = "down".into();
            b.unprotect(reason);
        });
    }

    /// A planned exit: the lease is revoked at once, so that the key is free right away.
    pub(super) fn revoke_lease(&mut self, why: &str) {
        if let Some(l) = self.lease.take() {
            l.revoke(why);
        }
    }
}
