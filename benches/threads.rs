//! The pause per epoch of a multi-threaded program (issue 10): 1, 2, 4 and 16 threads, idle in
//! `epoll_wait` and busy, split into the rendezvous (bringing every thread into the epoch
//! handler) and the rest, beside the bare cost of signalling and parking the same threads
//! without remus (`benches/rendezvous_probe.c`) measured in the same run; then Debian's
//! `redis-server` under `redis-benchmark`, bare and protected at 25 ms epochs.
//!
//! `cargo bench --bench threads` (release builds; about a minute). `REMUS_BENCH_SECONDS` sets
//! the measured time per row (default 3).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use remus::{
    bins_for, repo_root, run_with_timeout, target_dir, wait_for, Protected, ProtectedOpts, Standby,
};
use serde_json::Value;

const THREADS: [u32; 4] = [1, 2, 4, 16];

fn cc(name: &str) -> PathBuf {
    let dir = target_dir().join("remus-bench-progs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bin = dir.join(name);
    let src = repo_root().join(format!("benches/{name}.c"));
    let out = Command::new("cc")
        .args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {name}.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn result_field(out: &str, key: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// `status[key][field]` as a number.
fn num(v: &Value, key: &str, field: &str) -> Option<f64> {
    v.get(key)?.get(field)?.as_f64()
}

fn fmt(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

struct Row {
    threads: u32,
    mode: &'static str,
    bare_p50_us: f64,
    bare_p99_us: f64,
    pause_p50: Option<f64>,
    pause_p99: Option<f64>,
    rdv_p50: Option<f64>,
    rdv_p99: Option<f64>,
    seen_threads: Option<u64>,
    protected: bool,
}

fn row(probe: &Path, app: &Path, threads: u32, mode: &'static str, seconds: u64) -> Row {
    let (st, out, err) = run_with_timeout(
        Command::new(probe).args([&threads.to_string(), mode, &seconds.to_string()]),
        Duration::from_secs(seconds + 60),
    );
    let (bare_p50, bare_p99) = match (
        st,
        result_field(&out, "p50_ns"),
        result_field(&out, "p99_ns"),
    ) {
        (Some(st), Some(a), Some(b)) if st.success() => (a, b),
        _ => panic!("rendezvous_probe {threads} {mode} failed: {st:?}\n{out}\n{err}"),
    };
    let standby = Standby::start(500);
    let secs = (seconds + 1).to_string();
    let mut p = Protected::start(
        app,
        &[&threads.to_string(), mode, &secs],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    std::thread::sleep(Duration::from_millis(500 + seconds * 1000 * 3 / 4));
    let v = p.status().unwrap_or(Value::Null);
    let _ = p.wait_exit(Duration::from_secs(seconds + 60));
    Row {
        threads,
        mode,
        bare_p50_us: bare_p50 as f64 / 1000.0,
        bare_p99_us: bare_p99 as f64 / 1000.0,
        pause_p50: num(&v, "pause_us", "p50"),
        pause_p99: num(&v, "pause_us", "p99"),
        rdv_p50: num(&v, "rendezvous_us", "p50"),
        rdv_p99: num(&v, "rendezvous_us", "p99"),
        seen_threads: v.get("threads").and_then(Value::as_u64),
        protected: v.get("protected").and_then(Value::as_bool) == Some(true),
    }
}

/// `redis-benchmark` SET and GET: (rps, p50 ms) of each, from its CSV.
fn redis_bench(port: u16) -> Vec<(String, f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-n", "20000", "-c", "10", "-t", "set,get", "--csv"])
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<String> = l
                .split(',')
                .map(|x| x.trim_matches('"').to_string())
                .collect();
            Some((
                f.first()?.clone(),
                f.get(1)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
            ))
        })
        .collect()
}

fn redis_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn main() {
    let seconds: u64 = std::env::var("REMUS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .clamp(1, 20);
    std::env::set_var("REMUS_TEST_PROFILE", "release");
    let started = Instant::now();
    let b = bins_for(true);
    let probe = cc("rendezvous_probe");
    let app = cc("threads_app");
    println!(
        "remus threads benchmark: {seconds} s per row, epoch 25 ms, release build ({})",
        b.lib.display()
    );
    let mut rows = Vec::new();
    for mode in ["idle", "busy"] {
        for n in THREADS {
            rows.push(row(&probe, &app, n, mode, seconds));
        }
    }
    println!();
    println!("| threads | workers | bare rendezvous p50 us | p99 | remus rendezvous p50 us | p99 | **rendezvous / bare** | pause p50 us | p99 | threads seen | protected |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = match (r.rdv_p50, r.threads) {
            (_, 1) => "-".to_string(),
            (Some(x), _) if r.bare_p50_us > 0.0 => format!("{:.2}", x / r.bare_p50_us),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.threads,
            r.mode,
            r.bare_p50_us,
            r.bare_p99_us,
            fmt(r.rdv_p50),
            fmt(r.rdv_p99),
            ratio,
            fmt(r.pause_p50),
            fmt(r.pause_p99),
            r.seen_threads
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            r.protected
        );
    }

    // redis-server under redis-benchmark, bare and protected.
    let redis = Path::new("/usr/bin/redis-server");
    if !redis.is_file() {
        println!("\nredis-server is not installed (apt-get install redis-server): no redis rows");
        return;
    }
    let port = remus::free_port();
    let mut bare = Command::new(redis)
        .args(redis_args(port))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_for("bare redis", Duration::from_secs(20), &String::new, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let bare_r = redis_bench(port);
    let _ = bare.kill();
    let _ = bare.wait();
    let port = remus::free_port();
    let standby = Standby::start(500);
    let args = redis_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Protected::start(
        redis,
        &args,
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    wait_for(
        "protected redis",
        Duration::from_secs(20),
        &|| p.report(),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    let prot_r = redis_bench(port);
    let v = p.status().unwrap_or(Value::Null);
    println!("\n| redis-benchmark (-n 20000 -c 10) | bare rps | protected rps | **protected / bare** | bare p50 ms | protected p50 ms | added p50 ms |");
    println!("|---|---|---|---|---|---|---|");
    for (name, rps, p50) in &bare_r {
        if let Some((_, prps, pp50)) = prot_r.iter().find(|(n, _, _)| n == name) {
            println!(
                "| {name} | {rps:.0} | {prps:.0} | {:.2} | {p50:.3} | {pp50:.3} | {:.3} |",
                prps / rps,
                pp50 - p50
            );
        }
    }
    println!(
        "\nprotected redis: {} threads, protected {}, pause p50 {} us. Rendezvous: from the \
         leader's first signal to the last thread parked (status rendezvous_us); bare: the \
         same signalling and parking without remus (rendezvous_probe.c). Total {:.0?}.",
        v.get("threads").and_then(Value::as_u64).unwrap_or(0),
        v.get("protected").and_then(Value::as_bool).unwrap_or(false),
        fmt(num(&v, "pause_us", "p50")),
        started.elapsed()
    );
}
