//! What the primary's epoch loop owns ([`Primary`]), and the few operations every layer
//! above uses: entering a protection state, releasing or holding output, opening links.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arbiter::LeaseHolder;

use crate::control::status::{Board, SharedStatus};
use crate::wire::auth::LinkSecurity;
use crate::wire::messages::{Hello, PROTOCOL_VERSION};

use super::link::{self, Link};
use super::netout;
use super::output::Output;
use super::protection::{AckGate, Protection};
use super::reconnect::Dialer;
use super::shim_link::ShimLink;
use super::staging::Staging;
use super::stream;

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
    /// `--metrics ADDR`, bound: served once the status exists.
    pub metrics: Option<crate::control::metrics::MetricsListener>,
    /// `--etcd`: the arbiter whose leader key this primary holds (see `primary::arbiter`).
    pub arbiter: Option<crate::arbiter::ArbiterConfig>,
    /// `--service-addr`: the program runs in its own namespace behind the packet gate.
    pub service: Option<ServiceNet>,
}

/// The program's service address and where its packets come out on this host.
#[derive(Debug, Clone)]
pub struct ServiceNet {
    pub addr: crate::net::service::ServiceAddr,
    pub dev: Option<String>,
    /// The host's end of the program's veth pair (`$REMUS_SERVICE_VETH`, set by
    /// `remusd service-exec`).
    pub veth: Option<String>,
}

/// An epoch whose chunks are arriving.
pub struct InEpoch {
    pub signalled_at: Instant,
    /// (epoch, next chunk) once the first chunk arrived.
    pub progress: Option<(u64, u32)>,
    pub pages: u64,
    pub warned: bool,
}

impl InEpoch {
    pub fn new(signalled_at: Instant) -> InEpoch {
        InEpoch {
            signalled_at,
            progress: None,
            pages: 0,
            warned: false,
        }
    }
}

/// How the primary ends.
pub enum End {
    Exit(i32),
}

pub struct Primary {
    pub args: PrimaryArgs,
    pub shim: ShimLink,
    pub staging: Arc<Staging>,
    pub status: SharedStatus,
    pub link: Option<Link>,
    /// Where the primary stands with its standby (the one place decisions read it from).
    pub protection: Protection,
    /// What the link's ack callback needs of `protection` (see [`AckGate`]).
    pub gate: Arc<AckGate>,
    pub in_epoch: Option<InEpoch>,
    pub last_epoch: Option<u64>,
    pub next_tick: Instant,
    /// An operator stopped remusd: nothing is shipped any more (the goodbye is on its way).
    pub stopping: bool,
    /// Held output streams (output commit).
    pub output: Output,
    /// The app ended on its own (or the operator stopped remusd): what it wrote is released
    /// and passed through until its streams close. False when the primary side dies.
    pub release_at_end: bool,
    /// Output held for the app's sockets (None: a shim without the output log).
    pub net: Option<netout::NetOut>,
    /// The shim asked for this epoch now (output waits for it and the app went idle).
    pub want_epoch: u64,
    /// The full image being streamed to the standby while the program runs.
    pub stream: Option<stream::Stream>,
    /// The epoch whose commit completes the streamed image: protection (re)starts when the
    /// standby acks it.
    pub complete_at: Option<u64>,
    /// The program announced an `execve` ([`remus_abi::MsgKind::Exec`]): no epoch is signalled
    /// until its new image says hello (or the exec fails).
    pub exec: Option<ExecPending>,
    /// Children of the program that said they serve (`ChildServes`): pid, when.
    pub forks: Vec<(i32, Instant)>,
    /// The packet gate (`--service-addr`): the program's packets wait for their commit.
    pub packets: Option<Arc<crate::net::gate::Gate>>,
    /// `--etcd`: the leader key held under a lease (None without an arbiter, or once revoked).
    pub lease: Option<LeaseHolder>,
    /// The newest acked epoch whose output waits for the lease to be certainly valid again
    /// (0: none).
    pub deferred: Arc<AtomicU64>,
    /// `remusctl switchover` requests from the control socket, and the one under way.
    pub switch_requests: Option<crossbeam::channel::Receiver<super::switchover::SwitchReply>>,
    pub switch: Option<super::switchover::Switchover>,
    /// The last standby said it takes over only with this primary's leader key (`--etcd` on
    /// both sides, the same prefix): only then does the lease prove that no takeover happened.
    pub standby_arbitrated: bool,
    /// `standby_arbitrated` was looked at for the current link.
    pub arbiter_checked: bool,
    /// The obsolete mark on its way to etcd (`primary::arbiter`).
    pub obsolete: Option<crossbeam::channel::Receiver<Result<(), crate::arbiter::ArbiterError>>>,
    /// `--service-addr`: the shim holds epochs with connections for their dump
    /// ([`super::conns`], `remus_abi::TCP_HOLD_OFF`).
    pub tcp_hold: bool,
    /// Messages from the shim read while waiting for its answer to a connection dump, handled
    /// by the loop next.
    pub shim_backlog: std::collections::VecDeque<super::shim_link::FromShim>,
}

/// An `execve` the program announced, or a handover to its child, waiting for the new
/// image's (or the child's) hello.
pub struct ExecPending {
    pub since: Instant,
    /// What the program did, for the log and status: "exec'd PATH", "daemonized: ...".
    pub what: String,
}

/// How long a child of the program that serves may run beside its parent before remusd calls
/// the program multi-process (a daemonizing program's parent exits sooner).
pub const FORK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a new image may take to say hello after an exec (loading it, the dynamic loader,
/// the shim's start-up) before remusd decides it will not (it does not load libremus.so).
pub const EXEC_HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Primary {
    pub fn new(
        args: PrimaryArgs,
        shim: ShimLink,
        staging: Staging,
        status: SharedStatus,
        output: Output,
        net: Option<netout::NetOut>,
    ) -> Primary {
        Primary {
            args,
            shim,
            staging: Arc::new(staging),
            status,
            link: None,
            protection: Protection::Starting,
            gate: Arc::new(AckGate::new()),
            in_epoch: None,
            last_epoch: None,
            next_tick: Instant::now(),
            stopping: false,
            output,
            release_at_end: false,
            exec: None,
            forks: Vec::new(),
            packets: None,
            tcp_hold: false,
            shim_backlog: std::collections::VecDeque::new(),
            net,
            want_epoch: 0,
            stream: None,
            complete_at: None,
            lease: None,
            deferred: Arc::new(AtomicU64::new(0)),
            obsolete: None,
            standby_arbitrated: false,
            arbiter_checked: false,
            switch_requests: None,
            switch: None,
        }
    }

    /// Enters `p`: the status shows it (with whatever `show` adds, under the same lock).
    pub fn set_protection(&mut self, p: Protection, show: impl FnOnce(&mut Board)) {
        self.protection = p;
        self.show_protection(show);
    }

    /// Writes the status's `state` from the protection state, and `show`'s changes, at once.
    pub fn show_protection(&self, show: impl FnOnce(&mut Board)) {
        let mut b = self.status.lock();
        self.gate.entered(&self.protection);
        b.status.state = self.protection.label().into();
        show(&mut b);
    }

    /// Nothing is held for a standby any more: everything held goes out, and what comes
    /// later passes straight through (all three streams: the shim's socket log, the
    /// stdout/stderr pipes, and the socket output release).
    pub fn release_all_held(&self) {
        self.staging
            .publish_committed(remus_abi::COMMITTED_UNPROTECTED);
        self.output.release_all();
        if let Some(n) = &self.net {
            n.release_all();
        }
        if let Some(g) = &self.packets {
            g.release_all();
        }
    }

    /// Output after `last` waits for acks again (all three streams of it).
    pub fn hold_output_again(&self, last: u64) {
        self.staging.hold_again(last);
        self.output.hold_again(last);
        if let Some(n) = &self.net {
            n.hold_again(last);
        }
        if let Some(g) = &self.packets {
            g.hold_again();
        }
    }

    /// The epoch whose checkpoint is certain to come after output read now: the next epoch
    /// to be signalled, or the one after it while an epoch signal is outstanding (its handler
    /// may already have run).
    pub fn output_tag(&self) -> u64 {
        let next = self.last_epoch.map_or(1, |e| e + 1);
        if self.in_epoch.is_some() {
            next + 1
        } else {
            next
        }
    }

    /// How the link to the standby at `addr` is authenticated (`--key-file` or `--insecure`).
    pub fn security(&self, addr: &str) -> Result<LinkSecurity, String> {
        LinkSecurity::resolve(
            self.args.key_file.as_deref(),
            self.args.insecure,
            addr,
            "standby (REMUS_STANDBY / --standby)",
        )
    }

    /// What a thread needs to open a link to the standby at `addr`.
    pub fn dialer(&self, addr: &str) -> Result<Dialer, String> {
        Ok(Dialer {
            addr: addr.to_string(),
            sec: self.security(addr)?,
            hello: self.hello(),
            heartbeat: Duration::from_millis(self.args.heartbeat_ms.max(1)),
            status: self.status.clone(),
            pipeline: self.args.pipeline,
            watermark: self.output.watermark(),
        })
    }

    /// The ack callback of a link that replicates: commits output, and the first ack of a
    /// complete image protects.
    pub fn on_ack(&self) -> link::OnAck {
        let st = self.staging.clone();
        let out = self.output.committer();
        let net = self.net.as_ref().map(|n| n.committer());
        let packets = self.packets.clone();
        let (gate, status) = (self.gate.clone(), self.status.clone());
        let lease = self.lease.as_ref().map(|l| l.gate());
        let deferred = self.deferred.clone();
        Arc::new(move |epoch| {
            if !gate.releases(epoch) {
                return; // a partial image: the standby could not restore it
            }
            {
                // The first restorable epoch: protected from here on (step_sync moves the
                // epoch loop's state there; both under the status lock, so a reader never
                // sees a committed epoch on an unprotected primary).
                let mut b = status.lock();
                b.status.committed_epoch = Some(epoch);
                if gate.take_sync() {
                    b.status.state = Protection::Protected.label().into();
                    b.status.protected = true;
                    b.status.reason = None;
                }
            }
            if lease.as_ref().is_some_and(|l| !l.certainly_valid()) {
                // `--etcd`: not certainly the leader now; released once the lease renews.
                deferred.fetch_max(epoch, Ordering::AcqRel);
                return;
            }
            st.publish_committed(epoch);
            out.commit(epoch);
            if let Some(n) = &net {
                n.commit(epoch);
            }
            if let Some(g) = &packets {
                g.commit(epoch);
            }
        })
    }

    /// The hello this primary says to a standby.
    pub fn hello(&self) -> Hello {
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
            lease: self.lease.as_ref().map(|l| l.lease()),
        }
    }
}
