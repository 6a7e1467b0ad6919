//! The restored program's own network (`remusd standby --service-addr`, issue 12): a new
//! network namespace with the service address ([`crate::net::topology`]), its listening
//! sockets made there, and its connections rebuilt with `TCP_REPAIR` ([`crate::tcp`]) at the
//! descriptor numbers it had.
//!
//! In the stopped restore child, before its descriptor table is installed:
//!
//! 1. `unshare(CLONE_NEWNET)` (injected): every socket the child makes from here on (the
//!    listening sockets of [`super::kobj`], connected UDP sockets) lives in its own namespace;
//! 2. [`Topology::create`] for the child's namespace: the address is up inside, nothing on the
//!    network knows yet (no proxy ARP entry): nothing this side sends reaches anybody;
//! 3. each connection of [`crate::image::EpochMeta::tcp`] is [`crate::tcp::rebuild`]t by a
//!    thread of the daemon that joined the child's namespace (a socket belongs to the
//!    namespace it was made in), and the child takes it at its number with an injected
//!    `pidfd_getfd` on a pidfd of the daemon it inherited ([`super::fds`]).
//!
//! After the memory is in place, just before the threads are let go ([`Network::go`]): the
//! address is announced (proxy ARP entry, gratuitous ARP), then every
//! [`crate::tcp::Repairing::finish`] (FINs replayed, repair off: a window probe tells the
//! peer; the unsent tail is written). The daemon keeps the [`Topology`] for as long as the
//! restored program runs ([`KeptNetwork`]).
//!
//! A connection that cannot be rebuilt comes back closed by the peer, as without a service
//! address, and the log says which and why.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::inject::Tracee;
use super::RestoreError;
use crate::image::EpochMeta;
use crate::net::service::ServiceAddr;
use crate::net::topology::{Topology, TopologySpec};
use crate::tcp::{self, Repairing};

/// `--service-addr` at restore: the address and the device this host answers ARP for it on.
#[derive(Clone, Debug)]
pub struct ServiceRestore {
    pub addr: ServiceAddr,
    pub dev: String,
}

/// The restored program's network, kept by the caller while the program runs (dropping the
/// last clone tears it down).
#[derive(Clone, Debug)]
pub struct KeptNetwork(pub Arc<Topology>);

impl PartialEq for KeptNetwork {
    fn eq(&self, other: &KeptNetwork) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for KeptNetwork {}

/// The daemon's pidfd of itself, opened before the restore child is cloned (so the child
/// has it at the same number), through which the child takes the rebuilt sockets.
pub(crate) struct SelfPidfd(pub OwnedFd);

impl SelfPidfd {
    pub fn open() -> Result<SelfPidfd, RestoreError> {
        crate::sys::pidfd_open(std::process::id() as i32)
            .map(SelfPidfd)
            .map_err(|e| RestoreError::Os {
                what: "pidfd_open of remusd itself (the restored program takes its rebuilt connections through it)".into(),
                source: e,
            })
    }
}

/// Set up, the connections in repair mode; not announced yet.
pub(crate) struct Network {
    topo: Topology,
    /// The daemon's rebuilt sockets by the program's descriptor number.
    pub rebuilt: BTreeMap<i32, Repairing>,
    started: Instant,
}

/// Runs `f` on a thread that joined the network namespace of process `pid` first.
fn in_netns<T: Send>(pid: i32, f: impl FnOnce() -> T + Send) -> Result<T, RestoreError> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path).map_err(|e| RestoreError::Os {
        what: format!("opening {path}"),
        source: e,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns with a namespace descriptor we own; it changes this scoped
            // thread's network namespace only (it ends right after `f`).
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(RestoreError::Os {
                    what: format!("joining the restored program's network namespace ({path})"),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(RestoreError::Unsupported(
                "the thread rebuilding connections panicked".into(),
            ))
        })
    })
}

impl Network {
    /// Steps 1 to 3 of the module docs for the stopped child `t`.
    pub(crate) fn prepare(
        t: &mut Tracee,
        svc: &ServiceRestore,
        meta: &EpochMeta,
    ) -> Result<Network, RestoreError> {
        let started = Instant::now();
        t.sys(
            "unshare",
            libc::SYS_unshare,
            [libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0],
            || "a network namespace of its own for the restored program".into(),
        )?;
        let spec = TopologySpec {
            service: svc.addr,
            dev: svc.dev.clone(),
            tag: t.pid.to_string(),
        };
        let topo = Topology::create(spec, t.pid).map_err(|e| {
            RestoreError::Unsupported(format!("the restored program's network: {e}"))
        })?;
        let conns = meta.tcp.clone();
        let results = in_netns(t.pid, move || {
            conns
                .into_iter()
                .map(|(fd, st)| (fd, tcp::rebuild(&st).map_err(|e| (st, e))))
                .collect::<Vec<_>>()
        })?;
        let mut rebuilt = BTreeMap::new();
        for (fd, r) in results {
            match r {
                Ok(rep) => {
                    rebuilt.insert(fd, rep);
                }
                Err((st, e)) => warn!(
                    fd,
                    local = %st.local,
                    remote = %st.remote,
                    "this connection cannot be rebuilt ({e}); it comes back closed by the peer"
                ),
            }
        }
        Ok(Network {
            topo,
            rebuilt,
            started,
        })
    }

    /// Announces the address and ends every repair (the program is still stopped); returns
    /// the network to keep while it runs.
    pub(crate) fn go(self, pid: i32) -> Result<KeptNetwork, RestoreError> {
        let Network {
            mut topo,
            rebuilt,
            started,
        } = self;
        topo.announce().map_err(|e| {
            RestoreError::Unsupported(format!("announcing the service address: {e}"))
        })?;
        let n = rebuilt.len();
        let finished = in_netns(pid, move || {
            rebuilt
                .into_iter()
                .map(|(fd, rep)| {
                    let (local, remote) = (rep.state().local, rep.state().remote);
                    (fd, local, remote, rep.finish().map(drop))
                })
                .collect::<Vec<_>>()
        })?;
        let mut ok = 0usize;
        for (fd, local, remote, r) in finished {
            match r {
                Ok(()) => ok += 1,
                Err(e) => warn!(
                    fd, %local, %remote,
                    "finishing the rebuilt connection failed ({e}); it may not carry on"
                ),
            }
        }
        info!(
            addr = %topo.spec.service,
            dev = %topo.spec.dev,
            connections = ok,
            failed = n - ok,
            ms = started.elapsed().as_millis() as u64,
            "the restored program's network is up: {ok} connection(s) rebuilt, address announced"
        );
        Ok(KeptNetwork(Arc::new(topo)))
    }
}
