//! Issue 9, item 1: the cost the shim adds to every hooked call, beside what the other design
//! of the bracket (two `rt_sigprocmask` per call: block the app's signals on entry, restore on
//! exit) would add, measured in the same run.
//!
//! `cargo bench --bench hook_cost` (release builds of the shim and controller; under a
//! minute). `REMUS_HOOK_ROUNDS` (default 200) rounds of `REMUS_HOOK_CALLS` (default 5000)
//! calls per kind, so a million calls per kind by default.
//!
//! `benches/hook_cost.c` runs twice: bare, then under the shim protected by a standby on
//! loopback (25 ms epochs; rounds an epoch landed in are not kept). See that file for the
//! kinds. Medians per call over the rounds.

use std::process::Command;
use std::time::Duration;

use remus::{bins_for, repo_root, run_with_timeout, target_dir, Protected, ProtectedOpts, Standby};

const KINDS: [(&str, &str); 6] = [
    ("close", "`close(-1)` (EBADF: the bracket alone)"),
    ("write", "`write` 1 B to /dev/null (pass-through)"),
    ("send", "`send` 1 B on loopback TCP (held when protected)"),
    ("sigmask2", "two `rt_sigprocmask` (block all, restore)"),
    ("atomic2", "depth up + down (2 atomic RMW)"),
    ("atomic4", "depth up, down, up, down (4 atomic RMW)"),
];

#[derive(Debug, Default, Clone)]
struct Run {
    /// ns per call times 100, per kind (the order of [`KINDS`]).
    ns_x100: Vec<u64>,
    kept: Vec<u64>,
    rounds: u64,
    protected: bool,
    epochs: u64,
}

fn parse(out: &str) -> Option<Run> {
    let mut r = Run {
        ns_x100: vec![0; KINDS.len()],
        kept: vec![0; KINDS.len()],
        ..Default::default()
    };
    let mut seen = 0;
    for line in out.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("RESULT") => {
                let kv: Vec<(&str, &str)> = it.filter_map(|s| s.split_once('=')).collect();
                let get = |k: &str| kv.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
                let i = KINDS.iter().position(|(n, _)| Some(*n) == get("kind"))?;
                r.ns_x100[i] = get("ns_x100")?.parse().ok()?;
                r.kept[i] = get("kept")?.parse().ok()?;
                r.rounds = get("rounds")?.parse().ok()?;
                seen += 1;
            }
            Some("DONE") => {
                for (k, v) in it.filter_map(|s| s.split_once('=')) {
                    match k {
                        "protected" => r.protected = v == "1",
                        "epochs" => r.epochs = v.parse().ok()?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (seen == KINDS.len()).then_some(r)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ns(x100: u64) -> String {
    format!("{:.1}", x100 as f64 / 100.0)
}

fn main() {
    let rounds = env_u64("REMUS_HOOK_ROUNDS", 200).clamp(5, 10_000);
    let calls = env_u64("REMUS_HOOK_CALLS", 5000).clamp(100, 1_000_000);
    // Set before any other thread exists; the harness reads it when it builds.
    std::env::set_var("REMUS_TEST_PROFILE", "release");
    let b = bins_for(true);
    let dir = target_dir().join("remus-bench-progs");
    std::fs::create_dir_all(&dir).expect("mkdir bench progs");
    let app = dir.join("hook_cost");
    let src = repo_root().join("benches/hook_cost.c");
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&app)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc hook_cost.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "remus hook cost benchmark: {rounds} rounds x {calls} calls per kind, epoch 25 ms, \
         release build ({})",
        b.lib.display()
    );
    let args = [rounds.to_string(), calls.to_string(), "60".to_string()];
    let (st, out, err) = run_with_timeout(Command::new(&app).args(&args), Duration::from_secs(120));
    let bare = match (st, parse(&out)) {
        (Some(st), Some(r)) if st.success() && !r.protected => r,
        _ => panic!("hook_cost bare failed: {st:?}\n{out}\n{err}"),
    };

    let standby = Standby::start(500);
    let mut p = Protected::start(
        &app,
        &[&args[0], &args[1], &args[2]],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let st = p.wait_exit(Duration::from_secs(180));
    let out = p.stdout_lines().join("\n");
    let prot = match parse(&out) {
        Some(r) if st.success() && r.protected => r,
        _ => panic!("hook_cost protected failed ({st:?})\n{}", p.report()),
    };
    drop(p);
    drop(standby);

    println!();
    println!(
        "| per call | bare ns | protected ns | added by the shim ns | added / two rt_sigprocmask |"
    );
    println!("|---|---|---|---|---|");
    let mask = bare.ns_x100[3].max(1);
    for (i, (_, what)) in KINDS.iter().enumerate() {
        let (added, ratio) = if i < 3 {
            let d = prot.ns_x100[i] as i64 - bare.ns_x100[i] as i64;
            (
                format!("{:+.1}", d as f64 / 100.0),
                format!("{:.2}", d as f64 / mask as f64),
            )
        } else {
            (
                "-".into(),
                format!("{:.2}", bare.ns_x100[i] as f64 / mask as f64),
            )
        };
        println!(
            "| {what} | {} | {} | {added} | {ratio} |",
            ns(bare.ns_x100[i]),
            ns(prot.ns_x100[i]),
        );
    }
    let close_added = prot.ns_x100[0] as i64 - bare.ns_x100[0] as i64;
    println!(
        "\nThe bracket (close(-1), which the hook passes straight on) adds {} ns per hooked \
         call; two rt_sigprocmask cost {} ns on this machine: the bracket is {:.2} of the mask \
         design's added cost (its depth counter alone, 4 atomic RMW: {} ns). Medians over \
         {} rounds bare and {} protected (of which {}/{}/{} kept for close/write/send; {} epochs \
         during the protected run); the rt_sigprocmask and atomic rows' protected column is the \
         same loop in the protected process (nothing hooked).",
        ns(close_added.max(0) as u64),
        ns(bare.ns_x100[3]),
        close_added as f64 / mask as f64,
        ns(bare.ns_x100[5]),
        bare.rounds,
        prot.rounds,
        prot.kept[0],
        prot.kept[1],
        prot.kept[2],
        prot.epochs,
    );
}
