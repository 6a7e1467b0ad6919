//! The standby with `--etcd`: after it lost its primary it takes over only once it holds the
//! leader key ([`await_key`]), and never while it cannot reach etcd.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver as Chan, RecvTimeoutError};

use crate::arbiter::campaign::{Campaign, Candidate};
use crate::arbiter::config::Holder;
use crate::arbiter::lease::show;
use crate::arbiter::LeaseHolder;
use crate::control::status::{ArbiterState, SharedStatus};
use crate::wire::auth::SessionKeys;

/// A connection from a primary, authenticated.
pub type Conn = (TcpStream, String, SessionKeys);

/// What waiting for the leader key came to.
pub enum Verdict {
    /// The key is ours: take over (the holder keeps it while the restored program runs).
    TakeOver(LeaseHolder),
    /// A primary connected meanwhile (the old one, whose lease is alive, reconnecting): the
    /// campaign is abandoned and this connection is served instead.
    NewPrimary(Conn),
    /// No takeover (the image is obsolete): the reason.
    NoTakeover(String),
    /// The standby is being stopped.
    Stopped,
}

/// What the campaign knows of the lost session.
pub struct Lost<'a> {
    pub peer: &'a str,
    pub why: &'a str,
    pub epoch: u64,
    pub app_pid: Option<i32>,
    /// The lease the lost primary held the key with (its hello), if it said.
    pub primary_lease: Option<i64>,
}

/// Tries to take the leader key until it has it, a primary connects, or the standby stops.
/// `busy` is cleared meanwhile so that the accept thread hands new primaries over.
pub fn await_key(
    mut cand: Candidate,
    lost: &Lost,
    status: &SharedStatus,
    stop: &AtomicBool,
    conns: &Chan<Conn>,
    busy: &AtomicBool,
    ttl: Duration,
) -> Verdict {
    let (peer, why, epoch) = (lost.peer, lost.why, lost.epoch);
    let poll = (ttl / 20).clamp(Duration::from_millis(20), Duration::from_millis(200));
    let me = Holder::new("standby", lost.app_pid);
    tracing::warn!(
        %peer, epoch,
        "primary lost: {why}; taking over from epoch {epoch} once this standby holds the leader key in etcd at {}",
        cand.endpoints()
    );
    if lost.primary_lease.is_none() {
        tracing::warn!(
            %peer,
            "the lost primary did not say it holds an etcd lease (does it run without --etcd, \
             or with another prefix?): the leader key tells nothing about it"
        );
    }
    busy.store(false, Ordering::SeqCst);
    let mut last: Option<(bool, Instant)> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            cand.abandon();
            return Verdict::Stopped;
        }
        match cand.try_acquire(&me, lost.primary_lease, status) {
            Ok(Campaign::Won { holder, obsolete }) => {
                busy.store(true, Ordering::SeqCst);
                if let Some(o) = obsolete {
                    if o.covers(epoch) {
                        let reason = format!(
                            "primary {peer} lost ({why}), but it had run on without this standby \
                             from epoch {} (it held its etcd lease, so it knew no takeover \
                             happened) and released output from later states: this image \
                             (epoch {epoch}) is obsolete; not taking over",
                            o.from_epoch
                        );
                        tracing::warn!("{reason}");
                        holder.revoke("the image is obsolete");
                        return Verdict::NoTakeover(reason);
                    }
                }
                return Verdict::TakeOver(holder);
            }
            Ok(Campaign::Held { by }) => {
                if last.is_none_or(|(unreachable, _)| unreachable) {
                    tracing::info!(
                        %peer,
                        "the leader key is held by {by}: waiting for that lease to end before taking over"
                    );
                    last = Some((false, Instant::now()));
                }
                show(status, |a| {
                    a.state = ArbiterState::Campaigning;
                    a.error = Some(format!("the leader key is held by {by}"));
                });
                status.lock().unprotect(format!(
                    "primary {peer} lost ({why}); waiting for its etcd lease to end before taking \
                     over from epoch {epoch} (the key is held by {by})"
                ));
            }
            Err(e) => {
                if last.is_none_or(|(unreachable, at)| {
                    !unreachable || at.elapsed() > Duration::from_secs(10)
                }) {
                    tracing::error!(
                        %peer,
                        "primary lost ({why}), but {e}: NOT taking over until this standby holds the leader key"
                    );
                    last = Some((true, Instant::now()));
                }
                show(status, |a| {
                    a.state = ArbiterState::Unreachable;
                    a.error = Some(e.to_string());
                });
                status.lock().unprotect(format!(
                    "primary {peer} lost ({why}); {e}: not taking over (only a standby that holds \
                     the leader key may)"
                ));
            }
        }
        match conns.recv_timeout(poll) {
            Ok(c) => {
                tracing::info!(
                    peer = %c.1,
                    "a primary connected while this standby waited for the leader key: not taking over, serving it"
                );
                cand.abandon();
                show(status, |a| {
                    a.state = ArbiterState::Idle;
                    a.error = None;
                });
                return Verdict::NewPrimary(c);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                cand.abandon();
                return Verdict::NoTakeover("the accept thread stopped".into());
            }
        }
    }
}
