//! Daemonizing programs (issue 11): the classic `fork`, parent exits, child `setsid`s and
//! forks again pattern leaves the daemon protected, not the parent that exited. The parent's
//! exit returns as the program's would; the status shows the daemon's pid; `kill -9` of the
//! daemon and its `remusd primary` fails it over, and the restored daemon carries on from its
//! last committed state. A fork whose child serves beside a parent that keeps running is
//! refused (a wrapper's helpers are not: see `tests/exec.rs`).

use std::time::Duration;

use remus::{
    alive, committed_epoch, describe_status, iters, n, progs, s, signal, wait_for, Protected,
    ProtectedOpts, Standby,
};

const LONG: Duration = Duration::from_secs(120);

fn daemon_fails_over(args: &[&str]) {
    let standby = Standby::start(500);
    let app = Protected::start(
        &progs().daemonize,
        args,
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let first = app.pid();
    // The program's own exit: the parent is done at once, as it would be without remus (its
    // output pipes stay open: the daemon has them).
    let st = wait_for("the parent to exit", LONG, &String::new, || {
        remus::peek_exit(first)
    });
    assert!(st.success(), "the parent: {}", describe_status(&st));
    let line = app.wait_line("the daemon's first line", LONG, |l| {
        l.starts_with("daemon pid ")
    });
    let daemon: i32 = line["daemon pid ".len()..].trim().parse().expect("a pid");
    assert_ne!(daemon, first);
    let v = app.wait_status("the daemon protected", LONG, |v| {
        n(v, "app_pid") == Some(daemon as i64)
            && v.get("protected").and_then(|p| p.as_bool()) == Some(true)
    });
    let ctl = n(&v, "controller_pid").unwrap_or(0) as i32;
    assert!(ctl > 0, "{v}");
    // Epochs of the daemon commit; lines printed now are in the state committed two epochs on.
    let known = app.max_iter();
    let taken = v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
    let v = app.wait_committed(taken + 2, LONG);
    assert!(committed_epoch(&v).is_some());
    // The daemon's host side dies.
    signal(daemon, libc::SIGKILL);
    signal(ctl, libc::SIGKILL);
    let report = || format!("{}{}", app.report(), standby.report());
    wait_for("the standby to take over", LONG, &report, || {
        standby
            .status()
            .ok()
            .filter(|v| s(v, "state") == "took_over")
    });
    let restored = wait_for("the restored daemon's output", LONG, &report, || {
        let it = iters(&standby.app_stdout_text().lines().collect::<Vec<_>>());
        (it.len() >= 20).then_some(it)
    });
    let text = standby.app_stdout_text();
    assert!(
        !text.contains("MISMATCH") && !text.contains("daemon pid"),
        "the restored daemon resumed from its checkpoint and its memory checked out:\n{text}"
    );
    assert!(
        restored[0] > known,
        "the restored daemon resumed after iteration {known}, which was committed: {restored:?}"
    );
    assert!(
        restored.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive iterations: {restored:?}"
    );
    assert!(!alive(daemon));
}

#[test]
fn fork_parent_exits_setsid_fork_again_leaves_the_daemon_protected() {
    daemon_fails_over(&[]);
}

#[test]
fn a_single_fork_daemon_is_protected_too() {
    daemon_fails_over(&["--once"]);
}

#[test]
fn a_child_that_serves_beside_a_parent_that_keeps_running_is_refused() {
    // daemonize --stay: the parent keeps running and its child serves (polls for input).
    let standby = Standby::start(500);
    let app = Protected::start(
        &progs().daemonize,
        &["--stay"],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let v = app.wait_status("protection stopped", LONG, |v| {
        v.get("protected").and_then(|p| p.as_bool()) == Some(false)
            && s(v, "reason").contains("keeps running the same program beside it")
    });
    assert!(
        s(&v, "reason").contains("multi-process"),
        "the reason says what is not supported: {v}"
    );
    let sv = standby.wait_status("the standby will not take over", LONG, |v| {
        s(v, "state") == "primary_unprotected"
    });
    assert_eq!(s(&sv, "state"), "primary_unprotected");
}
