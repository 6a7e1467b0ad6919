//! `--etcd URL[,URL…]`, `--etcd-prefix`, `--lease-ttl-ms`: what the arbiter is and the keys
//! it uses.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default prefix of remus's keys in etcd.
pub const DEFAULT_PREFIX: &str = "/remus/default";
/// The default lease TTL. etcd counts lease TTLs in whole seconds (and raises a shorter one to
/// its minimum, 2 s with its default election timeout).
pub const DEFAULT_TTL_MS: u64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbiterConfig {
    /// `http://HOST:PORT` of each etcd member.
    pub endpoints: Vec<String>,
    /// Every key remus uses is under this (no trailing slash).
    pub prefix: String,
    /// The lease TTL asked for, in whole seconds.
    pub ttl_s: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArbiterConfigError {
    #[error("--etcd: no endpoint given; pass --etcd http://HOST:PORT[,http://HOST:PORT...]")]
    NoEndpoint,
    #[error("--etcd {0:?}: not an etcd endpoint; give http://HOST:PORT (TLS is not supported)")]
    Endpoint(String),
    #[error("--etcd-prefix {0:?}: must start with '/' and not be '/' alone (e.g. /remus/myapp)")]
    Prefix(String),
    #[error("--lease-ttl-ms {0}: must be between 1000 and 3600000 (etcd counts whole seconds)")]
    Ttl(u64),
}

impl ArbiterConfig {
    /// From the command line: `urls` comma-separated, `ttl_ms` rounded up to whole seconds.
    pub fn parse(
        urls: &str,
        prefix: Option<&str>,
        ttl_ms: Option<u64>,
    ) -> Result<ArbiterConfig, ArbiterConfigError> {
        let mut endpoints = Vec::new();
        for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let rest = u
                .strip_prefix("http://")
                .ok_or_else(|| ArbiterConfigError::Endpoint(u.into()))?;
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
                return Err(ArbiterConfigError::Endpoint(u.into()));
            }
            endpoints.push(format!("http://{hostport}"));
        }
        if endpoints.is_empty() {
            return Err(ArbiterConfigError::NoEndpoint);
        }
        let prefix = prefix.unwrap_or(DEFAULT_PREFIX).trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.is_empty() {
            return Err(ArbiterConfigError::Prefix(prefix.into()));
        }
        let ttl_ms = ttl_ms.unwrap_or(DEFAULT_TTL_MS);
        if !(1000..=3_600_000).contains(&ttl_ms) {
            return Err(ArbiterConfigError::Ttl(ttl_ms));
        }
        Ok(ArbiterConfig {
            endpoints,
            prefix: prefix.into(),
            ttl_s: ttl_ms.div_ceil(1000) as i64,
        })
    }

    /// The endpoints as the operator wrote them, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    /// The key whose holder runs the program.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// A primary that ran on without its standby (it proved, by its lease, that no takeover
    /// happened) writes here, under its own lease's id, from which epoch the standby's image
    /// is obsolete ([`Obsolete`]). The key has no lease: it outlives the primary.
    pub fn obsolete_key(&self, primary_lease: i64) -> String {
        format!("{}/obsolete/{primary_lease:x}", self.prefix)
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s as u64)
    }
}

/// How long before the end of a lease (counted by the primary from the send time of its last
/// successful keepalive) it stops trusting it: room for clock rate differences between its
/// host and etcd's, and for etcd's own expiry rounds.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100))
}

/// What the leader key's value says (JSON): who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// "primary" or "standby".
    pub role: String,
    /// The holder's remusd.
    pub controller_pid: u32,
    /// The program's pid (a primary's app; a standby: its primary's app, once it took over).
    pub app_pid: Option<i32>,
    /// The host name of the holder.
    pub host: String,
}

impl Holder {
    pub fn new(role: &str, app_pid: Option<i32>) -> Holder {
        Holder {
            role: role.into(),
            controller_pid: std::process::id(),
            app_pid,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
        }
    }

    pub fn to_value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// For messages: the holder as etcd has it.
    pub fn describe(value: &[u8]) -> String {
        match serde_json::from_slice::<Holder>(value) {
            Ok(h) => format!(
                "{} remusd pid {} on {}{}",
                h.role,
                h.controller_pid,
                h.host,
                h.app_pid
                    .map(|p| format!(" (program pid {p})"))
                    .unwrap_or_default()
            ),
            Err(_) => format!("{:?}", String::from_utf8_lossy(value)),
        }
    }
}

/// `PREFIX/obsolete/LEASE`: the primary that held the leader key with lease `LEASE` released
/// output without a standby from epoch `from_epoch` on; a standby whose image came from that
/// primary (its hello named the lease) and is at or before that epoch must not take over with
/// it (the world has seen later states). Later sessions of the same primary (after a resync)
/// have later epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Obsolete {
    pub from_epoch: u64,
}

impl Obsolete {
    /// Whether an image at `epoch` from this mark's primary is obsolete.
    pub fn covers(&self, epoch: u64) -> bool {
        epoch <= self.from_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_prefix_and_ttl() {
        let c = ArbiterConfig::parse(
            "http://127.0.0.1:2379, http://10.0.0.2:2379/",
            Some("/remus/app/"),
            Some(2500),
        )
        .unwrap();
        assert_eq!(
            c.endpoints,
            vec!["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(c.leader_key(), "/remus/app/leader");
        assert_eq!(c.ttl_s, 3);
        let d = ArbiterConfig::parse("http://h:1", None, None).unwrap();
        assert_eq!(d.prefix, DEFAULT_PREFIX);
        assert_eq!(d.ttl(), Duration::from_secs(2));
        for bad in [
            "",
            "127.0.0.1:2379",
            "https://h:1",
            "http://h",
            "http://h:1/x",
        ] {
            assert!(ArbiterConfig::parse(bad, None, None).is_err(), "{bad}");
        }
        assert!(ArbiterConfig::parse("http://h:1", Some("x"), None).is_err());
        assert!(ArbiterConfig::parse("http://h:1", None, Some(10)).is_err());
    }

    #[test]
    fn obsolete_covers_older_images_of_its_primary() {
        let o = Obsolete { from_epoch: 40 };
        assert!(o.covers(40));
        assert!(o.covers(3));
        assert!(!o.covers(41));
        let c = ArbiterConfig::parse("http://h:1", Some("/p"), None).unwrap();
        assert_eq!(c.obsolete_key(0x1f), "/p/obsolete/1f");
    }
}
