//! The zoo: one small C program per kind of kernel state (`tests/zoo/*.c`), each protected,
//! failed over with `kill -9` of the app and its `remusd primary`, and checked by the program
//! itself once restored (it prints `ZOO <name> OK` or `ZOO <name> FAIL <why>`).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::{
    describe_status, n, repo_root, s, tail, target_dir, wait_for, Protected, ProtectedOpts, Standby,
};

/// Compiles `tests/zoo/<name>.c` once per process; returns the binary.
pub fn zoo_prog(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .expect("lock");
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let dir = target_dir().join("remus-zoo");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let src = repo_root().join("tests/zoo").join(format!("{name}.c"));
    let dst = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    crate::require_program("cc", "gcc libc6-dev");
    let out = Command::new("cc")
        .args(["-g", "-O1", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc for {name}: {e}"));
    assert!(
        out.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    built.insert(name.to_string(), dst.clone());
    dst
}

/// What a zoo run saw.
pub struct ZooRun {
    /// The primary's `start ready ...` line.
    pub ready: String,
    /// What the restored program printed.
    pub restored_out: String,
    /// The standby's log.
    pub standby_log: String,
}

/// Runs zoo program `name args... --stop-file F` protected by a fresh standby. Once it said
/// `start ready` and two more epochs committed, kills the app and its `remusd primary` with
/// SIGKILL, waits for the standby to restore it, calls `after_takeover` (e.g. to talk to a
/// restored server), creates F, and requires `ZOO <name> OK` and exit code 0 from the
/// restored program.
pub fn zoo_failover(name: &str, args: &[&str], after_takeover: impl FnOnce(&Standby)) -> ZooRun {
    zoo_failover_with(name, args, after_takeover, |_, _| {})
}

/// [`zoo_failover`], then `after_exit(standby, restored stdout)` once the restored program
/// passed (the standby's directory, its file root included, still exists).
pub fn zoo_failover_with(
    name: &str,
    args: &[&str],
    after_takeover: impl FnOnce(&Standby),
    after_exit: impl FnOnce(&Standby, &str),
) -> ZooRun {
    let long = Duration::from_secs(120);
    let prog = zoo_prog(name);
    let mut standby = Standby::start(500);
    let stop = standby.dir().join("stop");
    let stop_s = stop.to_str().expect("utf-8 path").to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--stop-file", &stop_s]);
    let mut app = Protected::start(
        &prog,
        &all,
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let ready = app.wait_line("start ready", long, |l| {
        l.starts_with("start ready") || l.starts_with("ZOO ")
    });
    assert!(
        ready.starts_with("start ready"),
        "zoo {name} failed before failover: {ready}\n{}",
        app.report()
    );
    // Ordering, not time: the state was set up before `ready` was printed, so before the
    // epoch after the one the status shows now; two more committed epochs hold it.
    let v = app.wait_status("protected", long, |v| {
        v.get("protected") == Some(&serde_json::Value::Bool(true))
    });
    let taken = v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
    app.wait_committed(taken + 2, long);
    app.kill_primary_side();

    let report = || format!("{}{}", standby.report(), app.report());
    wait_for(
        "the standby to take over (state took_over with a restored_pid)",
        long,
        &report,
        || {
            standby
                .status()
                .ok()
                .filter(|v| s(v, "state") == "took_over" && n(v, "restored_pid").is_some())
        },
    );
    after_takeover(&standby);
    fs::write(&stop, b"stop\n").expect("write the stop file");
    let st = standby.wait_exit(&format!("the restored zoo program {name} to finish"), long);
    let out = standby.app_stdout_text();
    let log = fs::read_to_string(&standby.log).unwrap_or_default();
    let verdict = out
        .lines()
        .find(|l| l.starts_with(&format!("ZOO {name} ")))
        .unwrap_or("");
    assert_eq!(
        verdict,
        format!("ZOO {name} OK"),
        "zoo {name}: the restored program's verdict\n{}{}",
        standby.report(),
        app.report()
    );
    assert_eq!(
        st.code(),
        Some(0),
        "zoo {name}: the standby should exit with the restored program's code 0, got {}\n{}",
        describe_status(&st),
        tail(&log, 30)
    );
    after_exit(&standby, &out);
    ZooRun {
        ready,
        restored_out: out,
        standby_log: log,
    }
}
