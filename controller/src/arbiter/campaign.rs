//! The standby's side: after it lost its primary, it tries to take the leader key under a
//! lease of its own, and takes over only once it has it.

use std::time::Instant;

use crate::control::status::SharedStatus;

use super::config::{ArbiterConfig, Holder, Obsolete};
use super::etcd::{valid_until, Acquire, ArbiterError, Etcd, Granted, Then};
use super::lease::LeaseHolder;

/// One attempt's outcome.
pub enum Campaign {
    /// The key is ours: take over, unless `obsolete` covers the image (see [`Obsolete`]).
    Won {
        holder: LeaseHolder,
        obsolete: Option<Obsolete>,
    },
    /// Someone (the primary, its lease still alive) holds it.
    Held { by: String },
}

/// A standby trying to become the leader.
pub struct Candidate {
    etcd: Etcd,
    cfg: ArbiterConfig,
    /// Its own lease, granted at the first attempt and renewed at each.
    lease: Option<Granted>,
}

impl Candidate {
    pub fn new(etcd: Etcd, cfg: ArbiterConfig) -> Candidate {
        Candidate {
            etcd,
            cfg,
            lease: None,
        }
    }

    pub fn endpoints(&self) -> &str {
        self.etcd.endpoints()
    }

    /// One attempt: renews (or grants) its lease, then takes the key if it is free, reading
    /// the obsolete mark of the lost primary (its lease, from its hello) in the same
    /// transaction.
    pub fn try_acquire(
        &mut self,
        me: &Holder,
        primary_lease: Option<i64>,
        status: &SharedStatus,
    ) -> Result<Campaign, ArbiterError> {
        let sent = Instant::now();
        let g = match self.lease {
            Some(g) => match self.etcd.keep_alive(g.lease) {
                Ok(ttl) => Granted {
                    lease: g.lease,
                    ttl,
                },
                Err(ArbiterError::LeaseGone { .. }) => self.etcd.grant(self.cfg.ttl_s)?,
                Err(e) => return Err(e),
            },
            None => self.etcd.grant(self.cfg.ttl_s)?,
        };
        self.lease = Some(g);
        match self.etcd.acquire(
            &self.cfg.leader_key(),
            me.to_value(),
            g.lease,
            primary_lease.map_or(Then::Nothing, |l| Then::Get(self.cfg.obsolete_key(l))),
        )? {
            Acquire::Won { extra } => {
                self.lease = None;
                let obsolete = extra.and_then(|v| serde_json::from_slice::<Obsolete>(&v).ok());
                tracing::info!(
                    key = %self.cfg.leader_key(), lease = format!("{:x}", g.lease),
                    "acquired the leader key in etcd at {}", self.etcd.endpoints()
                );
                let holder = LeaseHolder::start(
                    self.etcd.clone(),
                    self.cfg.clone(),
                    g,
                    valid_until(sent, g.ttl),
                    status.clone(),
                );
                Ok(Campaign::Won { holder, obsolete })
            }
            Acquire::Held { value, .. } => Ok(Campaign::Held {
                by: Holder::describe(&value),
            }),
        }
    }

    /// Gives up (the primary came back): its lease, if any, is revoked.
    pub fn abandon(self) {
        if let Some(g) = self.lease {
            if let Err(e) = self.etcd.revoke(g.lease) {
                tracing::debug!("revoking the candidate lease: {e}");
            }
        }
    }
}
