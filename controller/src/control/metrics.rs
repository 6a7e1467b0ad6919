//! `--metrics ADDR`: the daemon's status as Prometheus metrics, `GET /metrics` in the text
//! exposition format (prometheus-client).
//!
//! Every value is derived from one [`Status`] snapshot at scrape time ([`encode`]), so the
//! metrics say exactly what `remusctl status` says; the pause and commit-latency histograms
//! are fed where the status records its percentiles ([`super::status::Board`]).
//!
//! The responder is a plain thread on a std `TcpListener`: one request per connection,
//! answered and closed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::status::{SharedStatus, Status};

/// The primary's protection states and the standby's states, each exported as a
/// `remus_state{state="…"}` series (1 for the current one).
const STATES: &[&str] = &[
    "starting",
    "syncing",
    "protected",
    "resyncing",
    "unprotected",
    "superseded",
    "waiting",
    "receiving",
    "took_over",
    "app_exited",
    "primary_unprotected",
    "reprotecting",
    "reprotected",
];

#[derive(Debug, thiserror::Error)]
pub enum ServeMetricsError {
    #[error(
        "--metrics {addr}: not an address to listen on ({why}); give HOST:PORT, e.g. \
         127.0.0.1:9464"
    )]
    Address { addr: String, why: String },
    #[error(
        "--metrics {addr}: cannot listen there ({source}); pick a free port on an address of \
         this host"
    )]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--metrics {addr}: cannot start the metrics thread ({source})")]
    Thread {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound metrics listener, before the daemon has a status to serve.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr` (HOST:PORT); a bad address or a port in use is an error naming it.
    pub fn bind(addr: &str) -> Result<MetricsListener, ServeMetricsError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| ServeMetricsError::Address {
                addr: addr.into(),
                why: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ServeMetricsError::Address {
                addr: addr.into(),
                why: "it resolves to nothing".into(),
            });
        }
        let listener = TcpListener::bind(&addrs[..]).map_err(|source| ServeMetricsError::Bind {
            addr: addr.into(),
            source,
        })?;
        Ok(MetricsListener { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `status` on a thread for the rest of the process's life.
    pub fn serve(self, status: SharedStatus) -> Result<(), ServeMetricsError> {
        let addr = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        std::thread::Builder::new()
            .name("remus-metrics".into())
            .spawn(move || {
                for conn in self.listener.incoming() {
                    match conn {
                        Ok(s) => {
                            if let Err(e) = respond(s, &status) {
                                tracing::debug!("metrics request: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("metrics listener: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map(|_| ())
            .map_err(|source| ServeMetricsError::Thread { addr, source })
    }
}

/// Answers one HTTP/1.x request: `GET /metrics` (or `/`) with the metrics, anything else 404.
fn respond(mut s: TcpStream, status: &SharedStatus) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(&status.snapshot(), status),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    write!(
        s,
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn labeled(reg: &mut Registry, name: &str, help: &str, label: &str, values: &[(&str, bool)]) {
    let f: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (v, on) in values {
        f.get_or_create(&vec![(label.to_string(), v.to_string())])
            .set(i64::from(*on));
    }
    reg.register(name, help, f);
}

/// The metrics text for `s` (a snapshot of `live`, whose histograms are read as they are).
pub fn encode(s: &Status, live: &SharedStatus) -> String {
    let mut reg = Registry::with_prefix("remus");
    labeled(
        &mut reg,
        "role",
        "This daemon's role (1 for the one it has)",
        "role",
        &[
            ("primary", s.role == "primary"),
            ("standby", s.role == "standby"),
        ],
    );
    let mut states: Vec<(&str, bool)> = STATES.iter().map(|st| (*st, s.state == *st)).collect();
    if !STATES.contains(&s.state.as_str()) {
        states.push((s.state.as_str(), true));
    }
    labeled(
        &mut reg,
        "state",
        "The protection state (primary) or the standby's state (1 for the current one)",
        "state",
        &states,
    );
    gauge(
        &mut reg,
        "protected",
        "1 when the program is protected (a takeover would restore the committed epoch)",
        i64::from(s.protected),
    );
    gauge(
        &mut reg,
        "link_up",
        "1 when the replication link to the peer is up",
        i64::from(s.link == "up"),
    );
    counter(
        &mut reg,
        "epochs",
        "Epochs taken (primary) or committed (standby)",
        s.epochs_total,
    );
    gauge(
        &mut reg,
        "committed_epoch",
        "The last epoch acknowledged (primary) or applied (standby); -1 before the first",
        s.committed_epoch.map_or(-1, |e| e as i64),
    );
    gauge(
        &mut reg,
        "epoch",
        "The last epoch taken (primary) or received (standby); -1 before the first",
        s.epoch.map_or(-1, |e| e as i64),
    );
    counter(
        &mut reg,
        "bytes_raw",
        "Page bytes plus metadata replicated, before compression",
        s.bytes_raw,
    );
    counter(
        &mut reg,
        "bytes_wire",
        "Bytes written to (primary) or read from (standby) the replication connection",
        s.bytes_wire,
    );
    gauge(
        &mut reg,
        "output_held_bytes",
        "Output read from the program and not yet released (its epoch not yet committed)",
        s.output_held_bytes as i64,
    );
    counter(
        &mut reg,
        "output_released_bytes",
        "Output released to the program's real destinations",
        s.output_released_bytes,
    );
    if let Some(g) = &s.packet_gate {
        gauge(
            &mut reg,
            "gate_held_packets",
            "Packets from the program waiting in the packet gate for their epoch's commit",
            g.held_packets as i64,
        );
        counter(
            &mut reg,
            "gate_released_packets",
            "Packets the packet gate released after their epoch committed",
            g.released_packets,
        );
        counter(
            &mut reg,
            "gate_passed_packets",
            "Packets the packet gate passed at once (protection stopped)",
            g.passed_packets,
        );
    }
    counter(
        &mut reg,
        "takeovers",
        "Takeovers this standby has done",
        s.takeovers,
    );
    if let Some(a) = &s.arbiter {
        let ttl: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        ttl.set(a.lease_ttl_ms as f64 / 1000.0);
        reg.register(
            "lease_ttl_seconds",
            "The etcd lease TTL (--lease-ttl-ms, as etcd granted it)",
            ttl,
        );
        gauge(
            &mut reg,
            "lease_valid",
            "1 while this daemon holds the leader key under a lease that is certainly valid by its own clock",
            i64::from(a.lease_valid),
        );
    }
    gauge(
        &mut reg,
        "threads",
        "Threads of the program at the last epoch; -1 before the first",
        s.threads.map_or(-1, i64::from),
    );
    counter(
        &mut reg,
        "thread_stuck_epochs",
        "Epochs abandoned because a thread did not come into the epoch handler in time",
        s.threads_stuck_total,
    );
    gauge(
        &mut reg,
        "stuck_thread",
        "The thread that held up the last abandoned epoch, until an epoch succeeds again; 0 for none",
        s.stuck_thread.as_ref().map_or(0, |t| i64::from(t.tid)),
    );
    {
        let b = live.lock();
        reg.register(
            "rendezvous_seconds",
            "Of each pause, the time to bring every other thread into the epoch handler",
            b.rendezvous_hist.clone(),
        );
        reg.register(
            "pause_seconds",
            "How long the program was paused for each checkpoint",
            b.pause_hist.clone(),
        );
        reg.register(
            "commit_latency_seconds",
            "From reading the program's output to releasing it after its epoch committed",
            b.commit_latency_hist.clone(),
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_follow_the_status() {
        let live = SharedStatus::new(Status::new("standby", "waiting"));
        let t = encode(&live.snapshot(), &live);
        assert_eq!(value(&t, "remus_role{role=\"standby\"}"), Some(1.0), "{t}");
        assert_eq!(value(&t, "remus_role{role=\"primary\"}"), Some(0.0));
        assert_eq!(value(&t, "remus_state{state=\"waiting\"}"), Some(1.0));
        assert_eq!(value(&t, "remus_epochs_total"), Some(0.0));
        assert_eq!(value(&t, "remus_committed_epoch"), Some(-1.0));
        assert_eq!(value(&t, "remus_pause_seconds_count"), Some(0.0));
        {
            let mut b = live.lock();
            b.status.state = "receiving".into();
            b.status.protected = true;
            b.status.link = "up".into();
            b.status.epochs_total = 7;
            b.status.committed_epoch = Some(7);
            b.status.bytes_wire = 4096;
            b.record_pause(200_000);
            b.record_pause(3_000_000);
            b.record_threads(1, 0, 200_000);
            b.record_threads(3, 1_000_000, 3_000_000);
        }
        let t = encode(&live.snapshot(), &live);
        assert_eq!(value(&t, "remus_state{state=\"waiting\"}"), Some(0.0));
        assert_eq!(value(&t, "remus_state{state=\"receiving\"}"), Some(1.0));
        assert_eq!(value(&t, "remus_protected"), Some(1.0));
        assert_eq!(value(&t, "remus_link_up"), Some(1.0));
        assert_eq!(value(&t, "remus_epochs_total"), Some(7.0));
        assert_eq!(value(&t, "remus_committed_epoch"), Some(7.0));
        assert_eq!(value(&t, "remus_bytes_wire_total"), Some(4096.0));
        assert_eq!(value(&t, "remus_pause_seconds_count"), Some(2.0));
        assert_eq!(value(&t, "remus_threads"), Some(3.0), "{t}");
        assert_eq!(value(&t, "remus_rendezvous_seconds_count"), Some(2.0));
        assert_eq!(
            value(&t, "remus_rendezvous_seconds_bucket{le=\"0.0001\"}"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(value(&t, "remus_stuck_thread"), Some(0.0));
        assert_eq!(
            value(&t, "remus_pause_seconds_bucket{le=\"0.0004\"}"),
            Some(1.0),
            "{t}"
        );
        assert!(t.trim_end().ends_with("# EOF"), "{t}");
    }

    #[test]
    fn serves_get_metrics_over_http() {
        let live = SharedStatus::new(Status::new("primary", "protected"));
        let l = MetricsListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.serve(live).unwrap();
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        };
        let r = get("/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("remus_role{role=\"primary\"} 1"), "{r}");
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn a_bad_address_is_named() {
        let e = MetricsListener::bind("not an address").err().unwrap();
        assert!(e.to_string().contains("--metrics not an address"), "{e}");
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = MetricsListener::bind(&addr).err().unwrap();
        assert!(matches!(e, ServeMetricsError::Bind { .. }), "{e}");
    }
}
