//! What `remusctl status` shows: one JSON object per daemon.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};

/// Pauses kept for the percentiles.
const PAUSE_WINDOW: usize = 1000;

/// Progress of a full image streamed while the program runs (`primary::stream`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStream {
    /// Pages in ranges still to read (present or not).
    pub pending_pages: u64,
    /// Pages read from the running program and shipped.
    pub pages_read: u64,
    /// Batches read (about one per epoch).
    pub batches: u64,
    /// The most pages the shim copied in one pause while the image streamed (its dirty
    /// pages and the regions it cannot follow): the pause stays an ordinary epoch's.
    pub max_pause_pages: u64,
    /// The longest pause while the image streamed (µs).
    pub max_pause_us: u64,
    /// The epoch that completed the image, once it did.
    pub complete_epoch: Option<u64>,
}

/// A thread that did not come into the epoch handler in time (`MsgKind::ThreadStuck`): the
/// shim abandoned that epoch and tries again at the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckThread {
    pub tid: i32,
    /// The epoch that was abandoned.
    pub epoch: u64,
    /// The shim's words: the thread's name and what it was doing.
    pub what: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseUs {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Where a daemon stands with the etcd arbiter (`--etcd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArbiterState {
    /// Not holding the leader key, not trying to (a standby with its primary connected).
    #[default]
    Idle,
    /// Holding the leader key; the lease renews.
    Held,
    /// Holding it, but the last renewal failed (see `error`); output is released only while
    /// `lease_valid`.
    Renewing,
    /// Etcd said the lease is gone: a standby may hold the key (a primary stops its program).
    Lost,
    /// Revoked at a planned exit.
    Revoked,
    /// A standby that lost its primary, waiting for the key (the primary's lease to end).
    Campaigning,
    /// A standby that lost its primary and cannot reach etcd: it does not take over.
    Unreachable,
}

impl ArbiterState {
    /// As in the status JSON.
    pub fn label(self) -> &'static str {
        match self {
            ArbiterState::Idle => "idle",
            ArbiterState::Held => "held",
            ArbiterState::Renewing => "renewing",
            ArbiterState::Lost => "lost",
            ArbiterState::Revoked => "revoked",
            ArbiterState::Campaigning => "campaigning",
            ArbiterState::Unreachable => "unreachable",
        }
    }
}

/// `--etcd`: the arbiter as this daemon sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArbiterStatus {
    /// The endpoints.
    pub etcd: String,
    /// The leader key.
    pub key: String,
    /// The lease TTL (as etcd granted it, once it did).
    pub lease_ttl_ms: u64,
    /// The lease id (hex), while one is held.
    pub lease: Option<String>,
    pub state: ArbiterState,
    /// The lease is certainly valid by this host's clock (held output may be released).
    pub lease_valid: bool,
    /// The last error talking to etcd, or who holds the key.
    pub error: Option<String>,
}

/// The status JSON. Every key is always present (null where it does not apply).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// "primary" | "standby"
    pub role: String,
    /// primary: "starting" | "syncing" (streaming the first full image) | "protected" |
    /// "resyncing" (standby lost, reconnecting or streaming a full image) | "unprotected" |
    /// "superseded";
    /// standby: "waiting" | "receiving" | "took_over" | "app_exited" | "primary_unprotected",
    /// and after a takeover "reprotecting" | "reprotected" (see `standby::reprotect`).
    pub state: String,
    pub protected: bool,
    /// Why not protected (set whenever `protected` is false).
    pub reason: Option<String>,
    /// primary: the app; standby: the restored process after a takeover.
    pub app_pid: Option<i32>,
    pub controller_pid: u32,
    /// Last epoch taken (primary) or received (standby).
    pub epoch: Option<u64>,
    /// Last epoch acknowledged (primary) or applied (standby).
    pub committed_epoch: Option<u64>,
    pub epoch_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub last_dirty_pages: Option<u64>,
    pub pause_us: PauseUs,
    /// Page bytes plus metadata, before compression.
    pub bytes_raw: u64,
    /// Bytes written to (primary) or read from (standby) the replication connection.
    pub bytes_wire: u64,
    /// "up" | "down"
    pub link: String,
    /// Milliseconds since the last frame from the peer (null if none yet).
    pub heartbeat_age_ms: Option<u64>,
    /// primary: the standby's address.
    pub standby: Option<String>,
    /// standby: the address it listens on.
    pub listen: Option<String>,
    /// standby: the address of the connected (or last) primary.
    pub peer: Option<String>,
    /// The protected program (from the primary's hello).
    pub app_exe: Option<String>,
    pub restored_pid: Option<i32>,
    /// The app's exit code (primary: from the shim; standby: from the goodbye, or of the
    /// restored process).
    pub exit_code: Option<i32>,
    pub epochs_total: u64,
    /// standby: takeovers this daemon has done (restored the program).
    #[serde(default)]
    pub takeovers: u64,
    /// primary: the app's descriptors that cannot come back on the standby (`fd N: what
    /// (path)`), as of the last epoch.
    #[serde(default)]
    pub unrestorable_fds: Vec<String>,
    /// primary with `--service-addr`: the packet gate's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_gate: Option<crate::net::gate::GateCounts>,
    /// primary with `--service-addr`: the connections dumped in the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnHold>,
    /// primary: output bytes read from the app and not yet released (output commit).
    #[serde(default)]
    pub output_held_bytes: u64,
    /// primary: output bytes released to the app's real destinations.
    #[serde(default)]
    pub output_released_bytes: u64,
    /// primary: from remusd reading output from the app to releasing it (after its epoch
    /// committed), over the last pieces released.
    #[serde(default)]
    pub commit_latency_us: PauseUs,
    /// standby after a takeover, once the restored program is protected again: the control
    /// socket of its new `remusd primary` (whose status is the program's from then on).
    #[serde(default)]
    pub primary_control: Option<String>,
    /// primary: the full image streamed to the standby while the program runs (the first
    /// image of a connection), once it started.
    #[serde(default)]
    pub image_stream: Option<ImageStream>,
    /// Threads of the program at the last epoch.
    #[serde(default)]
    pub threads: Option<u32>,
    /// Of each pause: the leader's time to bring the other threads into the handler (0 for a
    /// single thread) ...
    #[serde(default)]
    pub rendezvous_us: PauseUs,
    /// ... and the rest (the capture and copy), over the same epochs as `pause_us`.
    #[serde(default)]
    pub copy_us: PauseUs,
    /// primary: the thread that held up the last abandoned epoch, until an epoch succeeds
    /// again (protection goes on; the shim retries at the next tick).
    #[serde(default)]
    pub stuck_thread: Option<StuckThread>,
    /// primary: epochs abandoned because a thread did not come in.
    #[serde(default)]
    pub threads_stuck_total: u64,
    /// `--etcd`: the arbiter (null without one).
    #[serde(default)]
    pub arbiter: Option<ArbiterStatus>,
    /// The etcd lease TTL in ms (null without `--etcd`).
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
    /// primary: the compression and sending pipeline (delta pages, merged epochs).
    #[serde(flatten, default)]
    pub pipeline: PipelineStats,
}

/// The primary's sending pipeline (see `primary::pipeline`). Flattened into the status JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineStats {
    /// The shadow pages' memory budget (`--delta-budget-mb`).
    pub delta_budget_bytes: u64,
    /// Shipped pages for which a shadow (the last shipped version) was held.
    pub delta_hit_rate: f64,
    /// Memory held by shadow pages now.
    pub shadow_bytes: u64,
    pub shadow_evictions: u64,
    /// Pages shipped, and how: raw, run-length (of the page itself), XOR delta.
    pub pages_shipped: u64,
    pub pages_raw: u64,
    pub pages_rle: u64,
    pub pages_delta: u64,
    /// Encoded bytes per encoding, before the frame's snap.
    pub enc_bytes_raw: u64,
    pub enc_bytes_rle: u64,
    pub enc_bytes_delta: u64,
    /// Bytes of page frames on the wire (encoding + snap + framing).
    pub page_frame_bytes: u64,
    /// With `--wire-stats`: what the same page frames would have been with snap alone.
    pub snap_only_frame_bytes: Option<u64>,
    /// Epochs folded into a later one because the link was behind.
    pub merged_epochs: u64,
    /// Page bytes waiting to be sent (merged epochs), now and at most.
    pub pending_bytes: u64,
    pub max_pending_bytes: u64,
}

impl Status {
    pub fn new(role: &str, state: &str) -> Status {
        Status {
            role: role.into(),
            state: state.into(),
            protected: false,
            reason: None,
            app_pid: None,
            controller_pid: std::process::id(),
            epoch: None,
            committed_epoch: None,
            epoch_ms: None,
            heartbeat_ms: None,
            last_dirty_pages: None,
            pause_us: PauseUs::default(),
            bytes_raw: 0,
            bytes_wire: 0,
            link: "down".into(),
            heartbeat_age_ms: None,
            standby: None,
            listen: None,
            peer: None,
            app_exe: None,
            restored_pid: None,
            exit_code: None,
            epochs_total: 0,
            takeovers: 0,
            unrestorable_fds: Vec::new(),
            packet_gate: None,
            connections: None,
            output_held_bytes: 0,
            output_released_bytes: 0,
            commit_latency_us: PauseUs::default(),
            primary_control: None,
            image_stream: None,
            threads: None,
            rendezvous_us: PauseUs::default(),
            copy_us: PauseUs::default(),
            stuck_thread: None,
            threads_stuck_total: 0,
            arbiter: None,
            lease_ttl_ms: None,
            pipeline: PipelineStats::default(),
        }
    }

    /// The human form: a few aligned lines.
    pub fn human(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "{k:<12} {v}");
        };
        let prot = if self.protected {
            "yes".to_string()
        } else {
            format!("NO ({})", opt(self.reason.clone()))
        };
        line(
            "role",
            format!("{} (controller pid {})", self.role, self.controller_pid),
        );
        line("state", self.state.clone());
        line("protected", prot);
        let mut app = opt(self.app_pid.map(|p| p.to_string()));
        if let Some(exe) = &self.app_exe {
            app.push_str(&format!("  {exe}"));
        }
        line("app", app);
        if let Some(c) = &self.primary_control {
            line(
                "protected by",
                format!(
                    "standby {} (its primary: remusctl status --control {c})",
                    opt(self.standby.clone())
                ),
            );
        }
        if let Some(st) = &self.image_stream {
            line(
                "full image",
                match st.complete_epoch {
                    Some(e) => format!(
                        "complete at epoch {e} (streamed in {} batches, {} pages read; at most \
                         {} pages and {} us in a pause meanwhile)",
                        st.batches, st.pages_read, st.max_pause_pages, st.max_pause_us
                    ),
                    None => format!(
                        "streaming: {} pages read in {} batches, {} pages of ranges left",
                        st.pages_read, st.batches, st.pending_pages
                    ),
                },
            );
        }
        if !self.unrestorable_fds.is_empty() {
            line("unrestorable", self.unrestorable_fds.join("; "));
        }
        let peer = match self.role.as_str() {
            "primary" => format!("standby {}", opt(self.standby.clone())),
            _ => format!(
                "listen {}  primary {}",
                opt(self.listen.clone()),
                opt(self.peer.clone())
            ),
        };
        line(
            "link",
            format!(
                "{}  {}  last frame {}",
                self.link,
                peer,
                opt(self.heartbeat_age_ms.map(|a| format!("{a} ms ago")))
            ),
        );
        line(
            "epoch",
            format!(
                "{} (committed {})  every {}  {} epochs",
                opt(self.epoch.map(|e| e.to_string())),
                opt(self.committed_epoch.map(|e| e.to_string())),
                opt(self.epoch_ms.map(|e| format!("{e} ms"))),
                self.epochs_total
            ),
        );
        line(
            "dirty",
            format!(
                "{} pages last epoch  pause p50 {} us  p99 {} us  max {} us",
                opt(self.last_dirty_pages.map(|p| p.to_string())),
                self.pause_us.p50,
                self.pause_us.p99,
                self.pause_us.max
            ),
        );
        if let Some(n) = self.threads {
            line(
                "threads",
                format!(
                    "{n} last epoch  rendezvous p50 {} us  p99 {} us  copy p50 {} us  p99 {} us",
                    self.rendezvous_us.p50,
                    self.rendezvous_us.p99,
                    self.copy_us.p50,
                    self.copy_us.p99
                ),
            );
        }
        if let Some(st) = &self.stuck_thread {
            line(
                "stuck",
                format!(
                    "thread {} did not come in for epoch {} ({}); {} epochs abandoned, retrying",
                    st.tid, st.epoch, st.what, self.threads_stuck_total
                ),
            );
        }
        let ratio = if self.bytes_wire > 0 {
            self.bytes_raw as f64 / self.bytes_wire as f64
        } else {
            0.0
        };
        line(
            "bytes",
            format!(
                "{} raw  {} on the wire  ({ratio:.1}x)",
                human_bytes(self.bytes_raw),
                human_bytes(self.bytes_wire)
            ),
        );
        if self.role == "primary" {
            line(
                "output",
                format!(
                    "{} held  {} released  commit latency p50 {} us  p99 {} us",
                    human_bytes(self.output_held_bytes),
                    human_bytes(self.output_released_bytes),
                    self.commit_latency_us.p50,
                    self.commit_latency_us.p99
                ),
            );
        }
        if let Some(c) = &self.connections {
            line(
                "conns",
                format!(
                    "{} dumped at the last epoch  hold {} us (max {} us)  {} epochs held",
                    c.last_epoch, c.last_hold_us, c.max_hold_us, c.epochs_held
                ),
            );
        }
        if let Some(g) = &self.packet_gate {
            line(
                "gate",
                format!(
                    "{} packets held  {} released  {} passed  (queue {}, {})",
                    g.held_packets, g.released_packets, g.passed_packets, g.queue, g.veth
                ),
            );
        }
        if let Some(a) = &self.arbiter {
            line(
                "arbiter",
                format!(
                    "etcd {}  key {}  lease {} ({}, TTL {} ms{}){}",
                    a.etcd,
                    a.key,
                    opt(a.lease.clone()),
                    a.state.label(),
                    a.lease_ttl_ms,
                    match (&a.lease, a.lease_valid) {
                        (None, _) => "",
                        (Some(_), true) => ", valid",
                        (Some(_), false) => ", NOT certainly valid",
                    },
                    a.error
                        .as_ref()
                        .map(|e| format!("  last: {e}"))
                        .unwrap_or_default()
                ),
            );
        }
        if self.restored_pid.is_some() || self.exit_code.is_some() {
            line(
                "exit",
                format!(
                    "restored pid {}  exit code {}",
                    opt(self.restored_pid.map(|p| p.to_string())),
                    opt(self.exit_code.map(|c| c.to_string()))
                ),
            );
        }
        s
    }
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The live status of a daemon, shared between its threads.
/// Where a standby stands: the one place its decisions read it from (`Status.state` is its
/// label, for display).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyState {
    Waiting,
    Receiving,
    AppExited,
    PrimaryUnprotected,
    TookOver,
    Reprotecting,
    Reprotected,
}

impl StandbyState {
    pub fn label(self) -> &'static str {
        match self {
            StandbyState::Waiting => "waiting",
            StandbyState::Receiving => "receiving",
            StandbyState::AppExited => "app_exited",
            StandbyState::PrimaryUnprotected => "primary_unprotected",
            StandbyState::TookOver => "took_over",
            StandbyState::Reprotecting => "reprotecting",
            StandbyState::Reprotected => "reprotected",
        }
    }
}

pub struct Board {
    pub status: Status,
    /// A standby's state (None for a primary, whose state is its `Protection`).
    pub standby_state: Option<StandbyState>,
    pauses_ns: VecDeque<u64>,
    /// (rendezvous, rest) of the same pauses.
    splits_ns: VecDeque<(u64, u64)>,
    last_peer_frame: Option<Instant>,
    commit_latency_ns: VecDeque<u64>,
    /// Socket output (primary::netout): bytes held and released, added to the output
    /// counters of the snapshot.
    pub net_held: u64,
    pub net_released: u64,
    /// The packet gate (`--service-addr`), whose counters the snapshot shows.
    pub packet_gate: Option<Arc<crate::net::gate::Gate>>,
    /// The same pauses and commit latencies as the percentiles, as Prometheus histograms
    /// (seconds; `control::metrics`).
    pub pause_hist: Histogram,
    pub commit_latency_hist: Histogram,
    /// The rendezvous part of each pause (seconds).
    pub rendezvous_hist: Histogram,
}

impl Board {
    /// A standby's state changes: the typed value and its label together.
    pub fn set_standby_state(&mut self, s: StandbyState) {
        self.standby_state = Some(s);
        self.status.state = s.label().into();
    }

    pub fn record_pause(&mut self, ns: u64) {
        if self.pauses_ns.len() == PAUSE_WINDOW {
            self.pauses_ns.pop_front();
        }
        self.pauses_ns.push_back(ns);
        self.pause_hist.observe(ns as f64 / 1e9);
    }

    /// An epoch's threads and how its pause `pause_ns` split: `rendezvous_ns` bringing the
    /// threads in, the rest capturing and copying. Call beside [`Board::record_pause`].
    pub fn record_threads(&mut self, threads: usize, rendezvous_ns: u64, pause_ns: u64) {
        self.status.threads = Some(threads as u32);
        let r = rendezvous_ns.min(pause_ns);
        if self.splits_ns.len() == PAUSE_WINDOW {
            self.splits_ns.pop_front();
        }
        self.splits_ns.push_back((r, pause_ns - r));
        self.rendezvous_hist.observe(r as f64 / 1e9);
    }

    pub fn record_commit_latency(&mut self, ns: u64) {
        if self.commit_latency_ns.len() == PAUSE_WINDOW {
            self.commit_latency_ns.pop_front();
        }
        self.commit_latency_ns.push_back(ns);
        self.commit_latency_hist.observe(ns as f64 / 1e9);
    }

    pub fn peer_frame(&mut self) {
        self.last_peer_frame = Some(Instant::now());
    }

    pub fn forget_peer(&mut self) {
        self.last_peer_frame = None;
    }

    /// Marks the daemon unprotected with `reason` (state left to the caller).
    pub fn unprotect(&mut self, reason: impl Into<String>) {
        self.status.protected = false;
        self.status.reason = Some(reason.into());
    }

    /// The status as of now (percentiles and ages computed).
    pub fn snapshot(&self) -> Status {
        let mut s = self.status.clone();
        s.pause_us = percentiles_us(&self.pauses_ns);
        s.commit_latency_us = percentiles_us(&self.commit_latency_ns);
        s.rendezvous_us = percentiles_us(&self.splits_ns.iter().map(|p| p.0).collect());
        s.copy_us = percentiles_us(&self.splits_ns.iter().map(|p| p.1).collect());
        s.output_held_bytes += self.net_held;
        s.output_released_bytes += self.net_released;
        s.packet_gate = self.packet_gate.as_ref().map(|g| g.counts());
        s.heartbeat_age_ms = self.last_peer_frame.map(|t| t.elapsed().as_millis() as u64);
        s.lease_ttl_ms = s.arbiter.as_ref().map(|a| a.lease_ttl_ms);
        if !s.protected && s.reason.is_none() {
            s.reason = Some(format!("state {}", s.state));
        }
        s
    }
}

fn percentiles_us(ns: &VecDeque<u64>) -> PauseUs {
    if ns.is_empty() {
        return PauseUs::default();
    }
    let mut v: Vec<u64> = ns.iter().copied().collect();
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] / 1000;
    PauseUs {
        p50: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1] / 1000,
    }
}

/// Buckets from 50 µs to about 1.6 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// Shared handle to a [`Board`].
#[derive(Clone)]
pub struct SharedStatus(Arc<Mutex<Board>>);

impl SharedStatus {
    pub fn new(status: Status) -> Self {
        SharedStatus(Arc::new(Mutex::new(Board {
            status,
            standby_state: None,
            pauses_ns: VecDeque::new(),
            splits_ns: VecDeque::new(),
            last_peer_frame: None,
            commit_latency_ns: VecDeque::new(),
            net_held: 0,
            net_released: 0,
            packet_gate: None,
            pause_hist: latency_histogram(),
            commit_latency_hist: latency_histogram(),
            rendezvous_hist: latency_histogram(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic elsewhere while holding the lock leaves a status that is still readable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Status {
        self.lock().snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let sh = SharedStatus::new(Status::new("primary", "protected"));
        {
            let mut b = sh.lock();
            b.status.protected = true;
            b.status.app_pid = Some(1234);
            b.status.epoch = Some(7);
            for i in 1..=100 {
                b.record_pause(i * 1000);
                b.record_threads(4, i * 400, i * 1000);
            }
            b.peer_frame();
        }
        let v: serde_json::Value = serde_json::to_value(sh.snapshot()).unwrap();
        let o = v.as_object().unwrap();
        for k in [
            "role",
            "state",
            "protected",
            "reason",
            "app_pid",
            "controller_pid",
            "epoch",
            "committed_epoch",
            "epoch_ms",
            "last_dirty_pages",
            "pause_us",
            "bytes_raw",
            "bytes_wire",
            "link",
            "heartbeat_age_ms",
            "standby",
            "listen",
            "restored_pid",
            "exit_code",
            "output_held_bytes",
            "output_released_bytes",
            "commit_latency_us",
        ] {
            assert!(o.contains_key(k), "missing key {k}");
        }
        assert_eq!(o["role"], "primary");
        assert_eq!(o["protected"], true);
        assert!(o["reason"].is_null());
        assert!(o["committed_epoch"].is_null());
        assert_eq!(o["app_pid"], 1234);
        assert_eq!(o["pause_us"]["p50"], 51);
        assert_eq!(o["pause_us"]["p99"], 99);
        assert_eq!(o["pause_us"]["max"], 100);
        assert!(o["heartbeat_age_ms"].is_u64());
        assert_eq!(o["threads"], 4);
        assert_eq!(o["rendezvous_us"]["p50"], 20);
        assert_eq!(o["copy_us"]["p99"], 59);
        assert!(o["stuck_thread"].is_null());
        assert!(o["arbiter"].is_null() && o["lease_ttl_ms"].is_null());
        // Roundtrip, and a reason whenever unprotected.
        let mut s: Status = serde_json::from_value(v).unwrap();
        s.protected = false;
        let b = Board {
            status: s,
            standby_state: None,
            pauses_ns: VecDeque::new(),
            splits_ns: VecDeque::new(),
            last_peer_frame: None,
            commit_latency_ns: VecDeque::new(),
            net_held: 0,
            net_released: 0,
            packet_gate: None,
            pause_hist: latency_histogram(),
            commit_latency_hist: latency_histogram(),
            rendezvous_hist: latency_histogram(),
        };
        assert!(b.snapshot().reason.is_some());
        assert!(b.snapshot().human().contains("protected"));
    }

    #[test]
    fn arbiter_state_labels_match_the_json() {
        for st in [
            ArbiterState::Idle,
            ArbiterState::Held,
            ArbiterState::Renewing,
            ArbiterState::Lost,
            ArbiterState::Revoked,
            ArbiterState::Campaigning,
            ArbiterState::Unreachable,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.label());
        }
    }
}

/// The connection dump in the pause (`--service-addr`, `primary::conns`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnHold {
    /// Connections dumped at the last epoch that had any.
    pub last_epoch: u64,
    /// How long the program was held for that dump (from the last chunk to the shim's answer).
    pub last_hold_us: u64,
    pub max_hold_us: u64,
    /// Epochs the shim held for a dump.
    pub epochs_held: u64,
}
