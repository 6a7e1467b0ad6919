//! `remusd --metrics ADDR`: both roles serve `GET /metrics` in the Prometheus text format,
//! and the values follow the daemon (epochs go up, the role and state labels are right, a
//! takeover is counted).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use remus::{free_port, progs, test_key_file, Protected, ProtectedOpts, Standby};

/// Only there to turn a hang into a failure.
const LONG: Duration = Duration::from_secs(60);

/// The body of `GET /metrics` at `addr`, or why not.
fn scrape(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| e.to_string())?;
    let (head, body) = r.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {head}"));
    }
    Ok(body.to_string())
}

/// The value of one series (`name{labels}` exactly as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every line is a comment or `name{labels} value`, and the text ends with `# EOF`.
fn assert_parses(text: &str) {
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("line {l:?}"));
        assert!(name.starts_with("remus_"), "line {l:?}");
        assert!(v.parse::<f64>().is_ok(), "value in {l:?}");
    }
}

fn wait_scrape(addr: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + LONG;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match scrape(addr) {
            Ok(t) if pred(&t) => return t,
            Ok(t) => last = t,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("metrics at {addr}: {what} did not happen; last scrape:\n{last}");
}

#[test]
fn both_roles_serve_metrics_that_move() {
    let sb_metrics = format!("127.0.0.1:{}", free_port());
    let standby = Standby::start_with(500, Some(test_key_file()), &["--metrics", &sb_metrics]);
    let t = scrape(&sb_metrics).unwrap_or_else(|e| panic!("{e}\n{}", standby.report()));
    assert_parses(&t);
    assert_eq!(value(&t, "remus_role{role=\"standby\"}"), Some(1.0), "{t}");
    assert_eq!(
        value(&t, "remus_state{state=\"waiting\"}"),
        Some(1.0),
        "{t}"
    );

    let pr_metrics = format!("127.0.0.1:{}", free_port());
    let stop = standby.dir().join("stop");
    let mut app = Protected::start(
        &progs().memcheck,
        &["0", "--stop-file", stop.to_str().expect("utf-8")],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            env: vec![(
                "REMUS_PRIMARY_ARGS".into(),
                format!("--metrics {pr_metrics}"),
            )],
            ..Default::default()
        },
    );
    app.wait_committed(3, LONG);
    let first = wait_scrape(&pr_metrics, "epochs on the primary", |t| {
        value(t, "remus_epochs_total").is_some_and(|v| v >= 3.0)
    });
    assert_parses(&first);
    assert_eq!(value(&first, "remus_role{role=\"primary\"}"), Some(1.0));
    assert_eq!(value(&first, "remus_role{role=\"standby\"}"), Some(0.0));
    assert_eq!(
        value(&first, "remus_state{state=\"protected\"}"),
        Some(1.0),
        "{first}"
    );
    assert_eq!(value(&first, "remus_protected"), Some(1.0));
    assert_eq!(value(&first, "remus_link_up"), Some(1.0));
    assert!(value(&first, "remus_pause_seconds_count").is_some_and(|v| v >= 1.0));
    assert!(value(&first, "remus_bytes_wire_total").is_some_and(|v| v > 0.0));
    let e1 = value(&first, "remus_epochs_total").expect("epochs");
    let later = wait_scrape(&pr_metrics, "more epochs on the primary", |t| {
        value(t, "remus_epochs_total").is_some_and(|v| v > e1 + 2.0)
    });
    assert!(value(&later, "remus_committed_epoch").is_some_and(|v| v > 0.0));

    let sb = wait_scrape(&sb_metrics, "epochs on the standby", |t| {
        value(t, "remus_epochs_total").is_some_and(|v| v >= 3.0)
    });
    assert_eq!(
        value(&sb, "remus_state{state=\"receiving\"}"),
        Some(1.0),
        "{sb}"
    );
    assert_eq!(value(&sb, "remus_state{state=\"waiting\"}"), Some(0.0));
    assert_eq!(value(&sb, "remus_link_up"), Some(1.0));
    assert_eq!(value(&sb, "remus_takeovers_total"), Some(0.0));
    let c1 = value(&sb, "remus_committed_epoch").expect("committed epoch");
    wait_scrape(&sb_metrics, "the standby's committed epoch to move", |t| {
        value(t, "remus_committed_epoch").is_some_and(|v| v > c1)
    });

    // A takeover shows on the standby.
    app.kill_primary_side();
    let t = wait_scrape(&sb_metrics, "the takeover", |t| {
        value(t, "remus_takeovers_total") == Some(1.0)
    });
    assert_eq!(
        value(&t, "remus_state{state=\"took_over\"}"),
        Some(1.0),
        "{t}"
    );
    assert_eq!(value(&t, "remus_protected"), Some(0.0));
    assert_eq!(value(&t, "remus_link_up"), Some(0.0));
    std::fs::write(&stop, b"stop\n").expect("stop file");
}

#[test]
fn a_bad_metrics_address_is_a_clear_error() {
    let out = std::process::Command::new(&remus::bins().remusd)
        .args([
            "standby",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--state-dir",
            std::env::temp_dir()
                .join("remus-metrics-bad")
                .to_str()
                .unwrap(),
            "--metrics",
            "nowhere:notaport",
        ])
        .output()
        .expect("remusd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics nowhere:notaport") && err.contains("HOST:PORT"),
        "{err}"
    );
}
