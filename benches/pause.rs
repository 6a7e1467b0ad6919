//! The app's pause per epoch, as the app itself sees it, for 10 to 10,000 dirty pages per
//! epoch, beside a `memcpy` of the same bytes measured in the same run.
//!
//! `cargo bench --bench pause` (release builds of the shim and controller; about a minute).
//! `REMUS_BENCH_SECONDS` sets the measured time per size (default 4).
//!
//! Each size runs `benches/pause_app.c` protected by a standby on loopback with the default
//! epoch (25 ms); see that file for how a pause is measured and told apart from the noise
//! of the machine. The same program is also run unprotected for a second, to show how often
//! the machine alone stops it (`noise/s`).
//!
//! In the same run, for each size, `benches/limit_probe.c` measures the least an epoch can
//! cost here (issue 13): a signal to the thread, one `PAGEMAP_SCAN` that re-protects the same
//! tracked span (`pause_app`'s 64 MiB scrub plus its three buffers), a copy of the same dirty
//! pages into a shared mapping, one notify on a `SOCK_SEQPACKET` socket to a blocked reader.
//! The pause is reported as a ratio to it (`p50/limit`).

use std::time::{Duration, Instant};

use remus::{
    bins_for, progs, repo_root, run_with_timeout, target_dir, Protected, ProtectedOpts, Standby,
};
use serde_json::Value;

const SIZES: [u64; 4] = [10, 100, 1_000, 10_000];

#[derive(Debug, Default)]
struct Result {
    attributed: bool,
    pauses: u64,
    gaps: u64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
    memcpy_ns: u64,
    memcpy_cold_ns: u64,
}

fn parse(out: &str) -> Option<Result> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    let mut r = Result::default();
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "attributed" => r.attributed = v == 1,
            "pauses" => r.pauses = v,
            "gaps" => r.gaps = v,
            "p50_ns" => r.p50_ns = v,
            "p99_ns" => r.p99_ns = v,
            "max_ns" => r.max_ns = v,
            "memcpy_ns" => r.memcpy_ns = v,
            "memcpy_cold_ns" => r.memcpy_cold_ns = v,
            _ => {}
        }
    }
    Some(r)
}

/// What `limit_probe` measured for one size (ns, medians unless said).
#[derive(Debug, Default)]
struct Limit {
    total_p50: u64,
    total_p99: u64,
    signal: u64,
    scan: u64,
    copy: u64,
    notify: u64,
}

fn parse_limit(out: &str) -> Option<Limit> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    let mut r = Limit::default();
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "total_p50_ns" => r.total_p50 = v,
            "total_p99_ns" => r.total_p99 = v,
            "signal_p50_ns" => r.signal = v,
            "scan_p50_ns" => r.scan = v,
            "copy_p50_ns" => r.copy = v,
            "notify_p50_ns" => r.notify = v,
            _ => {}
        }
    }
    Some(r)
}

/// Compiles `benches/limit_probe.c`.
fn limit_probe() -> std::path::PathBuf {
    let dir = target_dir().join("remus-bench-progs");
    std::fs::create_dir_all(&dir).expect("mkdir bench progs");
    let bin = dir.join("limit_probe");
    let out = std::process::Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(repo_root().join("benches/limit_probe.c"))
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc limit_probe.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}x", a as f64 / b as f64)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let seconds: u64 = std::env::var("REMUS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .clamp(1, 20);
    // Set before any other thread exists; the harness reads it when it builds.
    std::env::set_var("REMUS_TEST_PROFILE", "release");
    let started = Instant::now();
    let b = bins_for(true);
    let app = &progs().pause_app;
    let probe = limit_probe();
    println!(
        "remus pause benchmark: {} s per size, epoch 25 ms, release build ({})",
        seconds,
        b.lib.display()
    );

    let mut rows = Vec::new();
    for pages in SIZES {
        // The machine's own noise: the same program, unprotected, for one second.
        let (st, out, err) = run_with_timeout(
            std::process::Command::new(app).args([&pages.to_string(), "1000", "5000", "100"]),
            Duration::from_secs(30),
        );
        let noise = match (st, parse(&out)) {
            (Some(st), Some(r)) if st.success() => r.gaps,
            _ => panic!("pause_app unprotected failed: {st:?}\n{out}\n{err}"),
        };
        // The least an epoch of this size can cost (200 epochs, 2 ms apart).
        let (st, out, err) = run_with_timeout(
            std::process::Command::new(&probe).arg(pages.to_string()),
            Duration::from_secs(60),
        );
        let limit = match (st, parse_limit(&out)) {
            (Some(st), Some(l)) if st.success() => l,
            _ => panic!("limit_probe {pages} failed: {st:?}\n{out}\n{err}"),
        };

        let standby = Standby::start(500);
        let ms = (seconds * 1000).to_string();
        let mut p = Protected::start(
            app,
            &[&pages.to_string(), &ms, "5000", "300"],
            &ProtectedOpts {
                standby: Some(standby.addr.clone()),
                ..Default::default()
            },
        );
        // The shim's own measure of its handler, read while the app runs.
        std::thread::sleep(Duration::from_millis(300 + seconds * 1000 * 3 / 4));
        let shim: Option<Value> = p.status().ok();
        let st = p.wait_exit(Duration::from_secs(seconds + 60));
        let out = p.stdout_lines().join("\n");
        let r = match parse(&out) {
            Some(r) if st.success() => r,
            _ => panic!("pause_app protected failed ({st:?})\n{}", p.report()),
        };
        let shim_p50 = shim
            .as_ref()
            .and_then(|v| v.get("pause_us")?.get("p50")?.as_f64())
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "-".into());
        let protected = shim
            .as_ref()
            .and_then(|v| v.get("protected")?.as_bool())
            .unwrap_or(false);
        rows.push((pages, r, noise, shim_p50, protected, limit));
        drop(p);
        drop(standby);
    }

    println!();
    println!(
        "{:>6} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "pages",
        "pauses",
        "p50 us",
        "p99 us",
        "max us",
        "memcpy us",
        "p50/memcpy",
        "p99/memcpy",
        "cold cp us",
        "p50/cold",
        "shim p50",
        "noise/s",
        "protected"
    );
    let mut notes = Vec::new();
    for (pages, r, noise, shim_p50, protected, _) in &rows {
        println!(
            "{:>6} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}",
            pages,
            r.pauses,
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.max_ns),
            us(r.memcpy_ns),
            ratio(r.p50_ns, r.memcpy_ns),
            ratio(r.p99_ns, r.memcpy_ns),
            us(r.memcpy_cold_ns),
            ratio(r.p50_ns, r.memcpy_cold_ns),
            shim_p50,
            noise,
            protected
        );
        if !r.attributed {
            notes.push(format!(
                "{pages} pages: no gap could be attributed to an epoch; the percentiles are \
                 over all {} gaps, noise included",
                r.gaps
            ));
        }
        if !protected {
            notes.push(format!("{pages} pages: the status did not say protected"));
        }
    }
    for n in notes {
        println!("note: {n}");
    }

    println!("\nLimit probe (benches/limit_probe.c, same run): the least an epoch costs here\n");
    println!(
        "| dirty pages | limit p50 us | limit p99 us | signal us | PAGEMAP_SCAN us | copy us | notify us | pause p50 us | **p50 / limit** | p99 / limit p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (pages, r, _, _, _, l) in &rows {
        println!(
            "| {pages} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            us(l.total_p50),
            us(l.total_p99),
            us(l.signal),
            us(l.scan),
            us(l.copy),
            us(l.notify),
            us(r.p50_ns),
            ratio(r.p50_ns, l.total_p50),
            ratio(r.p99_ns, l.total_p99),
        );
    }
    println!(
        "\npauses: gaps the app saw during which the epoch handler ran; noise/s: gaps of more \
         than 5 us per second with no remus at all; shim p50: the handler's own measure \
         (status pause_us); cold cp: the same memcpy with its source evicted from the cache \
         first (the app writes one word per dirty page, so the handler reads the rest of \
         each page from memory). Limit: tgkill to its own thread, one PAGEMAP_SCAN with \
         write-protect over the same span, the same pages copied, one 512-byte notify to a \
         blocked reader, sigreturn (components are medians). Total time {:.0?}.",
        started.elapsed()
    );
}
