//! Issue 4, table row 2: the cost of the first write to a page per epoch, for both dirty-page
//! trackers, beside an untracked write, measured by the app itself in the same run.
//!
//! `cargo bench --bench first_write` (release builds of the shim and controller; under a
//! minute). `REMUS_BENCH_PAGES` (default 1000) pages per round, `REMUS_BENCH_ROUNDS` (default
//! 40) rounds (epochs) per tracker.
//!
//! Each round `benches/first_write_app.c` waits for an epoch, then writes one byte to each of
//! its pages (first write of the epoch: with the uffd tracker the kernel resolves a
//! write-protect fault itself; with the mprotect tracker a SIGSEGV, the shim's handler and an
//! `mprotect` per page), then writes them all again (a plain store). Medians over the rounds.

use std::process::Command;
use std::time::Duration;

use remus::{bins_for, repo_root, run_with_timeout, target_dir, Protected, ProtectedOpts, Standby};

#[derive(Debug, Default)]
struct Row {
    rounds: u64,
    first_ns: u64,
    again_ns: u64,
    protected: bool,
}

fn parse(out: &str) -> Option<Row> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    let mut r = Row::default();
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "rounds" => r.rounds = v,
            "first_ns" => r.first_ns = v,
            "again_ns" => r.again_ns = v,
            "protected" => r.protected = v == 1,
            _ => {}
        }
    }
    Some(r)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let pages = env_u64("REMUS_BENCH_PAGES", 1000).clamp(10, 100_000);
    let rounds = env_u64("REMUS_BENCH_ROUNDS", 40).clamp(5, 1000);
    // Set before any other thread exists; the harness reads it when it builds.
    std::env::set_var("REMUS_TEST_PROFILE", "release");
    let b = bins_for(true);
    let dir = target_dir().join("remus-bench-progs");
    std::fs::create_dir_all(&dir).expect("mkdir bench progs");
    let app = dir.join("first_write_app");
    let src = repo_root().join("benches/first_write_app.c");
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&app)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc first_write_app.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "remus first-write benchmark: {pages} pages x {rounds} epochs per tracker, epoch 25 ms, release build ({})",
        b.lib.display()
    );
    let args = [pages.to_string(), rounds.to_string()];
    let (st, out, err) = run_with_timeout(Command::new(&app).args(&args), Duration::from_secs(60));
    let bare = match (st, parse(&out)) {
        (Some(st), Some(r)) if st.success() => r,
        _ => panic!("first_write_app unprotected failed: {st:?}\n{out}\n{err}"),
    };
    let mut rows = vec![("none (unprotected)", bare)];
    for tracker in ["uffd", "mprotect"] {
        let standby = Standby::start(500);
        let mut p = Protected::start(
            &app,
            &[&args[0], &args[1]],
            &ProtectedOpts {
                standby: Some(standby.addr.clone()),
                env: vec![("REMUS_TRACKER".into(), tracker.into())],
                ..Default::default()
            },
        );
        let st = p.wait_exit(Duration::from_secs(120));
        let out = p.stdout_lines().join("\n");
        let r = match parse(&out) {
            Some(r) if st.success() && r.protected => r,
            _ => panic!(
                "first_write_app with {tracker} failed ({st:?})\n{}",
                p.report()
            ),
        };
        rows.push((tracker, r));
        drop(p);
        drop(standby);
    }
    println!();
    println!(
        "{:<20} {:>7} {:>16} {:>16} {:>14}",
        "tracker", "epochs", "first write ns", "rewrite ns", "first/rewrite"
    );
    for (name, r) in &rows {
        println!(
            "{:<20} {:>7} {:>16} {:>16} {:>13.0}x",
            name,
            r.rounds,
            r.first_ns,
            r.again_ns,
            r.first_ns as f64 / r.again_ns.max(1) as f64
        );
    }
    let uffd = rows[1].1.first_ns.max(1) as f64;
    let mp = rows[2].1.first_ns as f64;
    println!(
        "\nuffd first write = {:.2} of the mprotect tracker's (goal: at most 1/3). \
         Per page, median over epochs; rewrite = the same pages written again in the same \
         epoch (an untracked store).",
        uffd / mp.max(1.0)
    );
}
