//! After a failover the restored program can be protected again (issue 5, "fencing and
//! roles"): memcheck protected by standby A; its primary side is killed; A takes over; a new
//! standby B is asked for (`remusctl protect` on A's control socket); B receives a full image
//! and then epochs; then the restored program's host "dies" too and B takes over in turn, and
//! the program carries on from a state at least as new as what B had committed, its checks
//! passing.
//!
//! How the second host death is simulated: the restored program and its new `remusd primary`
//! are frozen, then SIGKILLed (as `kill_primary_side` does for the first). Standby A's daemon
//! is left alone: it is the restored program's parent, and it cannot resurrect it (its image
//! was used up by the takeover; it never restores twice), so it just reports the exit and ends,
//! which the test checks. Killing A's daemon as well would change nothing for B.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use remus::{
    assert_streamed, bins, check_restored_output, committed_epoch, describe_status, iters, n,
    progs, s, signal, status, wait_for, Protected, ProtectedOpts, Standby,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(180);
/// Iterations the program must run on B after the second takeover.
const RUN_AFTER: u64 = 100;

fn restored_iters(sb: &Standby) -> Vec<u64> {
    iters(&sb.app_stdout_text().lines().collect::<Vec<_>>())
}

fn remusctl_protect(control: &Path, standby: &str) -> (bool, String) {
    let out = Command::new(&bins().remusctl)
        .arg("protect")
        .arg("--standby")
        .arg(standby)
        .arg("--control")
        .arg(control)
        .output()
        .expect("run remusctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// memcheck protected by A, A takes over; returns (A, the app handle, the stop file, restored pid).
fn first_failover() -> (Standby, Protected, std::path::PathBuf, i32) {
    let a = Standby::start(500);
    let stop = a.dir().join("stop");
    let stop_s = stop.to_str().expect("utf-8").to_string();
    let mut app = Protected::start(
        &progs().memcheck,
        &["0", "--stop-file", &stop_s],
        &ProtectedOpts {
            standby: Some(a.addr.clone()),
            ..Default::default()
        },
    );
    app.wait_committed(10, LONG);
    app.kill_primary_side();
    let sv = a.wait_status("took over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let pid = n(&sv, "restored_pid").unwrap_or(0) as i32;
    wait_for(
        "the restored program to run on A",
        LONG,
        &|| a.report(),
        || (restored_iters(&a).len() >= 20).then_some(()),
    );
    (a, app, stop, pid)
}

#[test]
fn rejoin_new_standby_then_second_failover() {
    let (mut a, app, stop, restored) = first_failover();
    let original_pid = app.pid();
    let mut b = Standby::start(500);
    let both = || format!("{}{}", a.report(), b.report());

    // Not before a takeover: B (waiting) has nothing to protect.
    let (ok, text) = remusctl_protect(&b.control, &a.addr);
    assert!(!ok && text.contains("nothing to protect"), "{text}");

    let (ok, text) = remusctl_protect(&a.control, &b.addr);
    assert!(ok, "remusctl protect failed: {text}\n{}", both());
    // A second request while the first is under way is refused.
    let (ok2, text2) = remusctl_protect(&a.control, &b.addr);
    assert!(!ok2 && text2.contains("already"), "{text2}");

    let av = a.wait_status("reprotected", LONG, |v| s(v, "state") == "reprotected");
    let pctl = s(&av, "primary_control").to_string();
    assert!(!pctl.is_empty(), "no primary_control in A's status: {av}");
    assert_eq!(s(&av, "standby"), b.addr, "{av}");

    // B gets the full image, then epochs.
    b.wait_status("B commits epochs", LONG, |v| {
        committed_epoch(v).is_some_and(|c| c >= 10)
    });
    let pv: Value = status(Path::new(&pctl)).unwrap_or_else(|e| panic!("{e}\n{}", both()));
    assert_eq!(s(&pv, "role"), "primary", "{pv}");
    // The new primary names the program as it sees itself: its own pid (the host's `restored`
    // unless it was restored into a new PID namespace).
    assert_eq!(n(&pv, "app_pid"), Some(i64::from(original_pid)), "{pv}");
    assert_eq!(pv.get("protected"), Some(&Value::Bool(true)), "{pv}");
    // The restored program's full image was streamed while it ran.
    assert_streamed(&pv, 1);
    let ctl = n(&pv, "controller_pid").unwrap_or(0) as i32;
    assert!(ctl > 0);
    // A mirrors the new primary's view.
    a.wait_status("A shows the program protected", LONG, |v| {
        v.get("protected") == Some(&Value::Bool(true)) && committed_epoch(v).is_some()
    });

    // Ordering, as in failover_scenario: lines on A's output now were printed before the
    // epoch after `taken` started, so B's state includes them once `taken + 2` is committed.
    let known = restored_iters(&a).into_iter().max().unwrap_or(0);
    let taken = status(Path::new(&pctl))
        .ok()
        .and_then(|v| v.get("epoch").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no epoch from the new primary\n{}", both()));
    let bv = b.wait_status("B commits past the known iteration", LONG, |v| {
        committed_epoch(v).is_some_and(|c| c >= taken + 2)
    });
    eprintln!(
        "B committed epoch {:?}; known iteration {known}",
        committed_epoch(&bv)
    );

    // The restored program's host dies: its new primary and the program, frozen first.
    signal(ctl, libc::SIGSTOP);
    signal(restored, libc::SIGSTOP);
    signal(ctl, libc::SIGKILL);
    signal(restored, libc::SIGKILL);
    // A does not bring it back: it reports the exit and ends.
    let st = a.wait_exit("standby A to end with its restored program", LONG);
    assert!(!st.success(), "A: {}", describe_status(&st));

    let sv = b.wait_status("B took over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let second = n(&sv, "restored_pid").unwrap_or(0) as i32;
    assert!(second > 0, "{sv}");
    // Restore gives the program its own ids back, through both failovers: it is the pid the
    // program started with (the host may show it under another one in a new PID namespace,
    // when that number was still taken here).
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(b.state_dir.join("takeover.json")).expect("B's takeover.json"),
    )
    .expect("takeover.json is JSON");
    assert_eq!(
        n(&record, "own_pid"),
        Some(i64::from(original_pid)),
        "{record}"
    );
    wait_for(
        &format!("the program to run {RUN_AFTER} iterations on B"),
        LONG,
        &|| b.report(),
        || (restored_iters(&b).len() as u64 >= RUN_AFTER).then_some(()),
    );
    std::fs::write(&stop, b"stop\n").expect("write the stop file");
    let st = b.wait_exit("the program to stop on B", LONG);
    assert_eq!(
        st.code(),
        Some(0),
        "{}\n{}",
        describe_status(&st),
        b.report()
    );
    let (first, last) = check_restored_output(&b.app_stdout_text(), known, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", b.report()));
    eprintln!("on B: iterations {first}..={last} (known before the second failover: {known})");
}

#[test]
fn rejoin_unreachable_standby_keeps_running_unprotected() {
    let (mut a, _app, stop, _restored) = first_failover();
    // Nothing listens there.
    let nowhere = format!("127.0.0.1:{}", remus::free_port());
    let (ok, text) = remusctl_protect(&a.control, &nowhere);
    assert!(ok, "remusctl protect: {text}\n{}", a.report());
    let av = a.wait_status("the failure reported", LONG, |v| {
        s(v, "state") == "took_over" && s(v, "reason").contains("failed")
    });
    assert!(s(&av, "reason").contains(&nowhere), "{av}");
    assert_eq!(av.get("protected"), Some(&Value::Bool(false)), "{av}");
    // The program runs on.
    let before = restored_iters(&a).len();
    wait_for(
        "the restored program to keep running",
        LONG,
        &|| a.report(),
        || (restored_iters(&a).len() >= before + 20).then_some(()),
    );
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(
        log.contains("UNPROTECTED"),
        "A's log says nothing of it:\n{log}"
    );
    std::fs::write(&stop, b"stop\n").expect("write the stop file");
    let st = a.wait_exit("the program to stop on A", LONG);
    assert_eq!(
        st.code(),
        Some(0),
        "{}\n{}",
        describe_status(&st),
        a.report()
    );
    check_restored_output(&a.app_stdout_text(), 0, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", a.report()));
}
