//! A lease that holds the leader key, kept alive by a thread of its own, and the gate that
//! output release reads ([`LeaseGate`]).
//!
//! The lease is certainly valid until the send time of the last keepalive etcd answered, plus
//! the TTL it answered, minus a safety margin ([`super::config::safety_margin`]): etcd counts
//! the TTL from when it received the keepalive, which is later. The clock is this host's
//! monotonic one (`Instant`), never the wall clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::control::status::{ArbiterState, ArbiterStatus, SharedStatus};

use super::config::{ArbiterConfig, Holder, Obsolete};
use super::etcd::{valid_until, Acquire, ArbiterError, Etcd, Granted, Then};

/// What output release reads: whether the lease is certainly valid now, and whether etcd said
/// it is gone.
pub struct LeaseGate {
    base: Instant,
    /// Microseconds after `base` until which the lease is certainly valid (0: not at all).
    valid_until_us: AtomicU64,
    lost: Mutex<Option<String>>,
}

impl LeaseGate {
    fn new() -> LeaseGate {
        LeaseGate {
            base: Instant::now(),
            valid_until_us: AtomicU64::new(0),
            lost: Mutex::new(None),
        }
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64
    }

    /// The lease is certainly valid now (by this host's clock): held output may be released.
    pub fn certainly_valid(&self) -> bool {
        self.us(Instant::now()) < self.valid_until_us.load(Ordering::Acquire)
    }

    /// How long it stays certainly valid without another renewal.
    pub fn valid_for(&self) -> Duration {
        let until = self.valid_until_us.load(Ordering::Acquire);
        Duration::from_micros(until.saturating_sub(self.us(Instant::now())))
    }

    /// Etcd said the lease is gone (expired or revoked): a standby may hold the key now.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn extend(&self, until: Instant) {
        if self.lost().is_none() {
            self.valid_until_us
                .fetch_max(self.us(until), Ordering::AcqRel);
        }
    }

    fn lose(&self, why: String) {
        self.valid_until_us.store(0, Ordering::Release);
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

#[derive(Debug, Error)]
pub enum TakeLeaderError {
    #[error("{0}; start etcd there, or pass --etcd with reachable endpoints")]
    Etcd(#[from] ArbiterError),
    #[error(
        "the leader key {key} in etcd at {endpoints} is held by {by} (lease {lease:x}) and was \
         not released within {waited_ms} ms: another remus primary (or a standby that took \
         over) runs this program; stop it first, or use another --etcd-prefix"
    )]
    Held {
        key: String,
        endpoints: String,
        by: String,
        lease: i64,
        waited_ms: u64,
    },
}

/// The leader key held under a lease, renewed every TTL/3 by a thread of its own. Dropping it
/// stops the renewals (the lease then expires); [`LeaseHolder::revoke`] ends it at once.
pub struct LeaseHolder {
    etcd: Etcd,
    cfg: ArbiterConfig,
    granted: Granted,
    gate: Arc<LeaseGate>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    status: SharedStatus,
}

/// Writes the daemon's arbiter status.
pub fn show(status: &SharedStatus, f: impl FnOnce(&mut ArbiterStatus)) {
    let mut b = status.lock();
    if let Some(a) = b.status.arbiter.as_mut() {
        f(a);
    }
}

/// The arbiter status a daemon starts with.
pub fn initial_status(cfg: &ArbiterConfig, state: ArbiterState) -> ArbiterStatus {
    ArbiterStatus {
        etcd: cfg.endpoints_text(),
        key: cfg.leader_key(),
        lease_ttl_ms: cfg.ttl().as_millis() as u64,
        lease: None,
        state,
        lease_valid: false,
        error: None,
    }
}

impl LeaseHolder {
    /// The primary's start: grants a lease and takes the leader key with it. A key held by
    /// another lease is waited for, up to `wait` (a previous primary's lease expiring).
    pub fn take_leader(
        etcd: Etcd,
        cfg: &ArbiterConfig,
        holder: &Holder,
        status: SharedStatus,
        wait: Duration,
    ) -> Result<LeaseHolder, TakeLeaderError> {
        let start = Instant::now();
        let mut sent = Instant::now();
        let mut g = etcd.grant(cfg.ttl_s)?;
        let mut logged = false;
        loop {
            match etcd.acquire(&cfg.leader_key(), holder.to_value(), g.lease, Then::Nothing)? {
                Acquire::Won { .. } => break,
                Acquire::Held { value, lease } => {
                    let by = Holder::describe(&value);
                    if start.elapsed() >= wait {
                        let _ = etcd.revoke(g.lease);
                        return Err(TakeLeaderError::Held {
                            key: cfg.leader_key(),
                            endpoints: etcd.endpoints().into(),
                            by,
                            lease,
                            waited_ms: wait.as_millis() as u64,
                        });
                    }
                    if !logged {
                        tracing::warn!(
                            key = %cfg.leader_key(),
                            "the leader key is held by {by} (lease {lease:x}); waiting up to {} ms for it to be released",
                            wait.as_millis()
                        );
                        logged = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    sent = Instant::now();
                    g.ttl = match etcd.keep_alive(g.lease) {
                        Ok(ttl) => ttl,
                        Err(ArbiterError::LeaseGone { .. }) => {
                            g = etcd.grant(cfg.ttl_s)?;
                            g.ttl
                        }
                        Err(e) => return Err(e.into()),
                    };
                }
            }
        }
        tracing::info!(
            key = %cfg.leader_key(), lease = format!("{:x}", g.lease), ttl_ms = g.ttl.as_millis() as u64,
            "holding the leader key in etcd at {}", etcd.endpoints()
        );
        Ok(LeaseHolder::start(
            etcd,
            cfg.clone(),
            g,
            valid_until(sent, g.ttl),
            status,
        ))
    }

    /// Holds `granted` (the key is already taken with it), valid until `until`: starts the
    /// keepalive thread.
    pub(super) fn start(
        etcd: Etcd,
        cfg: ArbiterConfig,
        granted: Granted,
        until: Instant,
        status: SharedStatus,
    ) -> LeaseHolder {
        let gate = Arc::new(LeaseGate::new());
        gate.extend(until);
        let stop = Arc::new(AtomicBool::new(false));
        show(&status, |a| {
            a.lease = Some(format!("{:x}", granted.lease));
            a.lease_ttl_ms = granted.ttl.as_millis() as u64;
            a.state = ArbiterState::Held;
            a.lease_valid = true;
            a.error = None;
        });
        let thread = {
            let (etcd, gate, stop, status) =
                (etcd.clone(), gate.clone(), stop.clone(), status.clone());
            std::thread::Builder::new()
                .name("etcd-keepalive".into())
                .spawn(move || keep_alive(etcd, granted, gate, stop, status))
                .ok()
        };
        if thread.is_none() {
            tracing::error!("cannot start the lease keepalive thread: the lease will expire");
        }
        LeaseHolder {
            etcd,
            cfg,
            granted,
            gate,
            stop,
            thread,
            status,
        }
    }

    pub fn gate(&self) -> Arc<LeaseGate> {
        self.gate.clone()
    }

    pub fn lease(&self) -> i64 {
        self.granted.lease
    }

    pub fn config(&self) -> &ArbiterConfig {
        &self.cfg
    }

    /// Ends the lease at once (a planned exit): the key is free for a standby right away.
    pub fn revoke(mut self, why: &str) {
        self.stop_thread();
        self.gate.lose(format!("revoked: {why}"));
        match self.etcd.revoke(self.granted.lease) {
            Ok(()) => {
                tracing::info!(
                    lease = format!("{:x}", self.granted.lease),
                    "revoked the etcd lease ({why})"
                );
                show(&self.status, |a| {
                    a.state = ArbiterState::Revoked;
                    a.lease_valid = false;
                });
            }
            Err(e) => {
                tracing::warn!(
                    "revoking the etcd lease ({why}): {e}; it expires by itself within its TTL"
                );
                show(&self.status, |a| {
                    a.state = ArbiterState::Revoked;
                    a.lease_valid = false;
                    a.error = Some(e.to_string());
                });
            }
        }
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The keepalive thread: renews every TTL/3 (after a failure, every TTL/10), extends the gate
/// from each success's send time, and closes it for good when etcd says the lease is gone.
fn keep_alive(
    etcd: Etcd,
    granted: Granted,
    gate: Arc<LeaseGate>,
    stop: Arc<AtomicBool>,
    status: SharedStatus,
) {
    let ttl = granted.ttl.max(Duration::from_secs(1));
    let period = ttl / 3;
    let retry = (ttl / 10).max(Duration::from_millis(100));
    let mut next = Instant::now() + period;
    let mut failing = false;
    let mut expired_logged = false;
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(
                next.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20)),
            );
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        let sent = Instant::now();
        match etcd.keep_alive(granted.lease) {
            Ok(new_ttl) => {
                gate.extend(valid_until(sent, new_ttl));
                if failing {
                    tracing::info!("renewed the etcd lease again");
                }
                failing = false;
                expired_logged = false;
                show(&status, |a| {
                    a.state = ArbiterState::Held;
                    a.lease_valid = true;
                    a.error = None;
                });
                next = sent + period;
            }
            Err(e @ ArbiterError::LeaseGone { .. }) => {
                let why = e.to_string();
                tracing::error!("LEASE LOST: {why}: a standby may hold the leader key now");
                gate.lose(why.clone());
                show(&status, |a| {
                    a.state = ArbiterState::Lost;
                    a.lease_valid = false;
                    a.error = Some(why);
                });
                return;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "cannot renew the etcd lease: {e}; held output is released only for {} ms more unless a renewal succeeds",
                        gate.valid_for().as_millis()
                    );
                }
                failing = true;
                let valid = gate.certainly_valid();
                if !valid && !expired_logged {
                    tracing::error!(
                        "the etcd lease is no longer certainly valid (no renewal for its TTL less the margin): releasing nothing until etcd answers"
                    );
                    expired_logged = true;
                }
                show(&status, |a| {
                    a.state = ArbiterState::Renewing;
                    a.lease_valid = valid;
                    a.error = Some(e.to_string());
                });
                next = Instant::now() + retry;
            }
        }
    }
}

impl LeaseHolder {
    /// Writes the obsolete mark of this primary (see [`Obsolete`]) on a thread of its own; the
    /// answer (Ok once etcd has it) comes on the channel.
    pub fn mark_obsolete_async(
        &self,
        mark: Obsolete,
    ) -> crossbeam::channel::Receiver<Result<(), ArbiterError>> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let (etcd, key) = (self.etcd.clone(), self.cfg.obsolete_key(self.granted.lease));
        let spawned = std::thread::Builder::new()
            .name("etcd-obsolete".into())
            .spawn({
                let tx = tx.clone();
                move || {
                    let _ = tx.send(etcd.put(&key, serde_json::to_vec(&mark).unwrap_or_default()));
                }
            });
        if let Err(e) = spawned {
            let _ = tx.send(Err(ArbiterError::Thread(e.to_string())));
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_until_its_deadline_and_closes_for_good_when_lost() {
        let g = LeaseGate::new();
        assert!(!g.certainly_valid(), "not valid before the first grant");
        g.extend(Instant::now() + Duration::from_secs(60));
        assert!(g.certainly_valid());
        assert!(g.valid_for() > Duration::from_secs(59));
        // A late answer to an older renewal never shortens it.
        g.extend(Instant::now());
        assert!(g.certainly_valid());
        g.lose("expired".into());
        assert!(!g.certainly_valid());
        assert_eq!(g.lost().as_deref(), Some("expired"));
        g.extend(Instant::now() + Duration::from_secs(60));
        assert!(!g.certainly_valid(), "a lost lease stays lost");
    }

    #[test]
    fn a_deadline_in_the_past_is_not_valid() {
        let g = LeaseGate::new();
        let t = Instant::now();
        g.extend(t);
        assert!(!g.certainly_valid());
        // valid_until: the TTL from the send time, less the margin.
        let ttl = Duration::from_secs(2);
        assert_eq!(
            super::super::etcd::valid_until(t, ttl),
            t + Duration::from_millis(1800)
        );
    }
}
