//! The failover scenarios again with the second dirty-page tracker (`REMUS_TRACKER=mprotect`,
//! DESIGN §3): memcheck (every kind of memory, checked by the program itself every iteration)
//! and a Python program. The tracker must be the one in use (the controller's log says so),
//! and the restored program must find all of its memory as it was at the committed epoch.

use remus::{failover_scenario_env, progs, Failover, PYTHON};

const TRACKER: (&str, &str) = ("REMUS_TRACKER", "mprotect");

fn check(f: &Failover, after_epochs: u64, run_after: u64) {
    eprintln!(
        "mprotect tracker, failover after {after_epochs} epochs: {f:?}; output ahead of commit: {}",
        f.output_ahead()
    );
    assert!(f.committed_at_kill >= after_epochs);
    assert!(f.first_restored > f.known_committed);
    assert!(f.last_restored >= f.first_restored + run_after - 1);
    assert_eq!(
        f.output_ahead(),
        0,
        "the primary let out iterations up to {} but the restored program resumed at {}",
        f.released,
        f.first_restored
    );
}

fn memcheck(after_epochs: u64) {
    const RUN_AFTER: u64 = 200;
    let f = failover_scenario_env(
        &progs().memcheck,
        &["0"],
        after_epochs,
        RUN_AFTER,
        &[TRACKER],
    );
    check(&f, after_epochs, RUN_AFTER);
}

#[test]
fn mprotect_memcheck_failover_after_5_epochs() {
    memcheck(5);
}

#[test]
fn mprotect_memcheck_failover_after_40_epochs() {
    memcheck(40);
}

#[test]
fn mprotect_python_failover_after_20_epochs() {
    const RUN_AFTER: u64 = 100;
    let script = progs()
        .python_state
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let f = failover_scenario_env(
        std::path::Path::new(PYTHON),
        &[&script, "0"],
        20,
        RUN_AFTER,
        &[TRACKER],
    );
    check(&f, 20, RUN_AFTER);
}

/// The tracker asked for is the one running: the controller's log says so (the notice goes
/// there, not to the program's stderr), and the program's map shows the protected pieces.
#[test]
fn mprotect_tracker_is_in_use() {
    use remus::{Protected, ProtectedOpts, Standby, TempDir};
    use std::time::Duration;
    let standby = Standby::start(500);
    let dir = TempDir::new("mplog");
    let log = dir.path().join("primary.log");
    let mut app = Protected::start(
        &progs().memcheck,
        &["1000000"],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            env: vec![
                (TRACKER.0.into(), TRACKER.1.into()),
                ("REMUS_LOG_FILE".into(), log.display().to_string()),
            ],
            ..Default::default()
        },
    );
    app.wait_committed(5, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("dirty-page tracker: mprotect"),
        "the controller's log does not name the mprotect tracker:\n{text}\n{}",
        app.report()
    );
    assert!(
        !app.stderr_text().contains("tracker"),
        "the tracker notice reached the program's stderr: {}",
        app.stderr_text()
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", app.pid())).expect("maps");
    let protected_anon = maps
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1] == "r--p"
        })
        .count();
    assert!(
        protected_anon > 0,
        "no write-protected anonymous memory in the program's map:\n{maps}"
    );
    app.kill();
}

/// A tracker name that does not exist is refused with a sentence, before anything runs.
#[test]
fn unknown_tracker_is_refused() {
    use remus::{Protected, ProtectedOpts};
    use std::time::Duration;
    let mut app = Protected::start(
        &progs().memcheck,
        &["3"],
        &ProtectedOpts {
            standby: Some("127.0.0.1:9".into()),
            env: vec![("REMUS_TRACKER".into(), "softdirty".into())],
            ..Default::default()
        },
    );
    let st = app.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{}", app.report());
    assert_eq!(
        remus::remus_lines(&app.stderr_text(), &|| app.report()),
        ["remus: REMUS_TRACKER=softdirty is not a dirty-page tracker: use uffd (the default) or \
          mprotect"],
        "{}",
        app.report()
    );
}
