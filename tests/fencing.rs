//! Fencing: a primary frozen for longer than the failure timeout wakes up to find that the
//! standby took over. It must stop its program (never two copies running) and release none
//! of the output it held since the last committed epoch.

use std::path::PathBuf;
use std::time::Duration;

use remus::{
    alive, check_restored_output, iters, n, progs, s, signal, tail_file, Protected, ProtectedOpts,
    Standby,
};

const LONG: Duration = Duration::from_secs(60);

/// memcheck protected by a standby with a 500 ms timeout, 10 epochs committed, then the whole
/// primary side frozen (as a stalled host would be) until the standby takes over. Returns the
/// standby, the program, its pid and its remusd's, and the restored program's pid.
fn freeze_until_takeover() -> (Standby, Protected, i32, i32, i32) {
    let sb = Standby::start(500);
    let p = Protected::start(
        &progs().memcheck,
        &["100000000", "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            ..Default::default()
        },
    );
    p.wait_committed(10, LONG);
    let v = p.status().expect("primary status");
    let app = n(&v, "app_pid").expect("app_pid") as i32;
    let ctl = n(&v, "controller_pid").expect("controller_pid") as i32;
    assert_eq!(app, p.pid());
    signal(ctl, libc::SIGSTOP);
    signal(app, libc::SIGSTOP);
    let st = sb.wait_status("the standby to take over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let restored = n(&st, "restored_pid").expect("restored_pid") as i32;
    assert!(
        alive(restored),
        "the restored program runs\n{}",
        sb.report()
    );
    (sb, p, app, ctl, restored)
}

#[test]
fn frozen_primary_is_superseded_and_releases_nothing() {
    let (mut sb, mut p, app, ctl, restored) = freeze_until_takeover();
    let released_at_freeze = iters(&p.stdout_lines()).into_iter().max().unwrap_or(0);

    // Wake it: the app first (it runs on, its output held), then remusd primary.
    signal(app, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(200));
    signal(ctl, libc::SIGCONT);

    // It learns that it was superseded and kills its app.
    let exit = p.wait_exit(LONG);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        exit.signal(),
        Some(libc::SIGKILL),
        "the superseded primary must SIGKILL its app\n{}",
        p.report()
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let log = PathBuf::from(format!("/tmp/remus-{uid}/primary-{app}.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("SUPERSEDED") && text.contains("took over"),
        "the primary's log does not say it was superseded:\n{}",
        tail_file(&log, 30)
    );
    assert!(
        alive(restored),
        "the restored program still runs\n{}",
        sb.report()
    );

    // Nothing that the restored program is going to do again left the old primary.
    let released = iters(&p.stdout_lines()).into_iter().max().unwrap_or(0);
    let out = sb.wait_status("the restored program to print", LONG, |_| {
        iters(&sb.app_stdout_text().lines().collect::<Vec<_>>()).len() >= 3
    });
    let _ = out;
    let restored_out = sb.app_stdout_text();
    let first_restored = iters(&restored_out.lines().collect::<Vec<_>>())
        .first()
        .copied()
        .expect("restored iterations");
    assert!(
        released < first_restored,
        "output escaped the fenced primary: it released iteration {released} (at the freeze: \
         {released_at_freeze}) but the standby resumed at {first_restored}\n{}\n{}",
        p.report(),
        sb.report()
    );
    // And the restored program is healthy (no MISMATCH, did not start over).
    let lines: Vec<&str> = restored_out.lines().collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("MISMATCH") || l.starts_with("start ")),
        "{}",
        sb.report()
    );
    let _ = check_restored_output; // (the full check needs the program to finish)
    sb.kill();
}

/// Fencing across a double failure: the standby takes over from the frozen primary, then its
/// daemon dies (the restored program runs on, orphaned). When the primary wakes, nothing
/// answers at the standby's address (connection refused), which on its own reads as "the
/// standby's daemon is gone, so it runs nothing". But the standby last heard from this
/// primary longer ago than its failure timeout, so it may have taken over first (it did):
/// the primary must hold everything and release none of it.
#[test]
fn frozen_primary_whose_standby_took_over_then_died_releases_nothing() {
    let (mut sb, mut p, app, ctl, restored) = freeze_until_takeover();
    let st = sb.status().expect("the standby's status");
    let daemon = n(&st, "controller_pid").expect("the standby's controller_pid") as i32;
    // The standby's daemon dies; the restored program runs on without it.
    signal(daemon, libc::SIGKILL);
    remus::wait_for(
        "the standby's daemon to be gone",
        LONG,
        &|| sb.report(),
        || (!alive(daemon)).then_some(()),
    );
    assert!(
        alive(restored),
        "the restored program runs\n{}",
        sb.report()
    );

    signal(app, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(200));
    signal(ctl, libc::SIGCONT);

    // It notices, finds nothing at the standby's address, and holds: several reconnection
    // attempts later (each one would have released), still nothing released.
    let v = p.wait_status("the primary holding after refused attempts", LONG, |v| {
        s(v, "state") == "resyncing"
            && s(v, "reason").contains("stays held")
            && s(v, "reason").contains("attempt 4")
    });
    assert!(alive(app), "the program keeps running\n{}", p.report());
    assert!(
        n(&v, "output_held_bytes").is_some_and(|b| b > 0),
        "its output is held: {v}"
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let log = PathBuf::from(format!("/tmp/remus-{uid}/primary-{app}.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("may have taken over before it died")
            && !text.contains("releasing the output"),
        "the primary's log:\n{}",
        tail_file(&log, 30)
    );
    let released = iters(&p.stdout_lines()).into_iter().max().unwrap_or(0);
    remus::wait_for(
        "the restored program to print",
        LONG,
        &|| sb.report(),
        || (iters(&sb.app_stdout_text().lines().collect::<Vec<_>>()).len() >= 3).then_some(()),
    );
    let first_restored = iters(&sb.app_stdout_text().lines().collect::<Vec<_>>())
        .first()
        .copied()
        .expect("restored iterations");
    assert!(
        released < first_restored,
        "output escaped: the primary released iteration {released}, the restored program \
         resumed at {first_restored}\n{}",
        p.report()
    );
    signal(restored, libc::SIGKILL);
    p.kill();
    sb.kill();
}
