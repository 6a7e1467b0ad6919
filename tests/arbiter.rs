//! The etcd arbiter (issue 14), with a real etcd (Debian's `etcd-server`) on loopback, one per
//! test on its own ports (23790-23799) and data directory, killed at the end. Each test fails
//! when etcd is not installed.
//!
//! The primary holds `PREFIX/leader` under a lease it keeps alive; the standby takes over only
//! once it holds that key itself.

use std::path::Path;
use std::time::{Duration, Instant};

use remus::etcd::Etcd;
use remus::{
    alive, iters, n, progs, s, signal, tail_file, test_key_file, wait_for, Protected,
    ProtectedOpts, Standby,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
/// The default lease TTL (`remusd --lease-ttl-ms`), which these tests use.
const TTL_MS: u64 = 2000;

fn standby(etcd_url: &str, prefix: &str) -> Standby {
    Standby::start_with(
        500,
        Some(test_key_file()),
        &["--etcd", etcd_url, "--etcd-prefix", prefix],
    )
}

fn protected(sb: &Standby, etcd_url: &str, prefix: &str) -> Protected {
    protected_with(sb, etcd_url, prefix, vec![])
}

fn protected_with(
    sb: &Standby,
    etcd_url: &str,
    prefix: &str,
    mut env: Vec<(String, String)>,
) -> Protected {
    env.extend([
        ("REMUS_ETCD".into(), etcd_url.into()),
        ("REMUS_ETCD_PREFIX".into(), prefix.into()),
    ]);
    Protected::start(
        &progs().memcheck,
        &["100000000", "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            env,
            ..Default::default()
        },
    )
}

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("answer");
    r
}

fn arbiter<'a>(v: &'a Value, key: &str) -> &'a Value {
    &v["arbiter"][key]
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The highest iteration the program's released stdout shows.
fn released(p: &Protected) -> u64 {
    iters(&p.stdout_lines()).into_iter().max().unwrap_or(0)
}

/// The restored program's first iteration, once it printed a few; it never starts over and
/// finds no memory mismatch.
fn restored_first_iteration(sb: &Standby) -> u64 {
    wait_for(
        "the restored program to print",
        LONG,
        &|| sb.report(),
        || (iters(&sb.app_stdout_text().lines().collect::<Vec<_>>()).len() >= 3).then_some(()),
    );
    let out = sb.app_stdout_text();
    assert!(
        !out.lines()
            .any(|l| l.contains("MISMATCH") || l.starts_with("start ")),
        "the restored program is not healthy\n{}",
        sb.report()
    );
    iters(&out.lines().collect::<Vec<_>>())
        .first()
        .copied()
        .expect("restored iterations")
}

/// (1) The primary side dies: the standby takes over only after the primary's lease ended,
/// and resumes the program where the last committed epoch left it. Prints the failover time
/// (kill → restored program running) at the default TTL.
#[test]
fn killed_primary_standby_takes_over_after_the_lease() {
    let etcd = Etcd::start(23790);
    let prefix = "/remus/t-kill";
    let sb = standby(&etcd.url, prefix);
    let metrics = format!("127.0.0.1:{}", remus::free_port());
    let mut p = protected_with(
        &sb,
        &etcd.url,
        prefix,
        vec![("REMUS_PRIMARY_ARGS".into(), format!("--metrics {metrics}"))],
    );
    let v = p.wait_committed(10, LONG);
    let m = scrape(&metrics);
    assert!(
        m.contains("remus_lease_ttl_seconds 2.0") && m.contains("remus_lease_valid 1"),
        "the primary's /metrics:\n{m}"
    );
    assert_eq!(arbiter(&v, "state"), "held", "{v}");
    assert_eq!(n(&v, "lease_ttl_ms"), Some(TTL_MS as i64), "{v}");
    assert_eq!(arbiter(&v, "lease_valid"), true, "{v}");
    assert_eq!(arbiter(&v, "key"), &format!("{prefix}/leader"), "{v}");
    let released_before = released(&p);

    let t0 = Instant::now();
    p.kill_primary_side();
    let st = sb.wait_status("the standby to take over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let failover = t0.elapsed();
    let restored = n(&st, "restored_pid").expect("restored_pid") as i32;
    assert!(
        alive(restored),
        "the restored program runs\n{}",
        sb.report()
    );
    assert_eq!(
        arbiter(&st, "state"),
        "held",
        "the standby holds the key now: {st}"
    );
    let log = log_text(&sb.log);
    assert!(
        log.contains("waiting for that lease to end") && log.contains("acquired the leader key"),
        "the standby did not wait for the primary's lease:\n{}",
        tail_file(&sb.log, 30)
    );
    // The restored program carries on from the last committed epoch: healthy, not from the
    // start, and with no iteration missing after what the primary had released (its own
    // output, after the committed output the standby writes first).
    restored_first_iteration(&sb);
    p.wait_eof(LONG);
    let released_after = released(&p);
    assert!(released_after >= released_before);
    // The whole file: the committed output the standby wrote before the program resumed
    // (what the primary had not confirmed writing) and then the program's own.
    let whole = std::fs::read_to_string(&sb.app_stdout).unwrap_or_default();
    let lowest = iters(&whole.lines().collect::<Vec<_>>())
        .into_iter()
        .min()
        .unwrap_or(u64::MAX);
    assert!(
        lowest <= released_after + 1,
        "iterations missing between the primary's last released ({released_after}) and the \
         restored program's first ({lowest})\n{}",
        sb.report()
    );
    println!(
        "failover with etcd (lease TTL {TTL_MS} ms, --timeout-ms 500, loopback): kill -9 of the \
         primary side -> restored program running: {} ms",
        failover.as_millis()
    );

    // Protected again by a new standby B: the standby that took over hands the key to the
    // restored program's new primary, and B takes over in turn when that side dies.
    let b = standby(&etcd.url, prefix);
    let out = std::process::Command::new(&remus::bins().remusctl)
        .args(["protect", "--standby", &b.addr, "--control"])
        .arg(&sb.control)
        .output()
        .expect("running remusctl protect");
    assert!(
        out.status.success(),
        "remusctl protect: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let av = sb.wait_status("reprotected", LONG, |v| s(v, "state") == "reprotected");
    let pctl = std::path::PathBuf::from(s(&av, "primary_control"));
    b.wait_status("B commits epochs", LONG, |v| {
        remus::committed_epoch(v).is_some_and(|c| c >= 10)
    });
    let pv = remus::status(&pctl).unwrap_or_else(|e| panic!("{e}\n{}", sb.report()));
    assert_eq!(
        arbiter(&pv, "state"),
        "held",
        "the new primary holds the key: {pv}"
    );
    assert_ne!(arbiter(&pv, "lease"), arbiter(&st, "lease"), "{pv}");
    let ctl2 = n(&pv, "controller_pid").expect("controller_pid") as i32;
    signal(ctl2, libc::SIGKILL);
    signal(restored, libc::SIGKILL);
    let bv = b.wait_status("B to take over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let restored2 = n(&bv, "restored_pid").expect("restored_pid") as i32;
    assert!(alive(restored2), "{}", b.report());
    signal(restored2, libc::SIGKILL);
    drop(b);
    drop(sb);
    drop(etcd);
}

/// (2) The primary side frozen past the TTL: the standby takes over; the woken primary learns
/// that its lease is gone (or that it was superseded), kills its program and releases none of
/// what it held.
#[test]
fn frozen_primary_past_the_ttl_is_fenced() {
    let etcd = Etcd::start(23792);
    let prefix = "/remus/t-freeze";
    let sb = standby(&etcd.url, prefix);
    let mut p = protected(&sb, &etcd.url, prefix);
    let v = p.wait_committed(10, LONG);
    let app = n(&v, "app_pid").expect("app_pid") as i32;
    let ctl = n(&v, "controller_pid").expect("controller_pid") as i32;
    let t0 = Instant::now();
    signal(ctl, libc::SIGSTOP);
    signal(app, libc::SIGSTOP);
    let st = sb.wait_status("the standby to take over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    println!(
        "failover with etcd (lease TTL {TTL_MS} ms, --timeout-ms 500, loopback): primary side \
         frozen (silent) -> restored program running: {} ms",
        t0.elapsed().as_millis()
    );
    let restored = n(&st, "restored_pid").expect("restored_pid") as i32;
    let released_at_freeze = released(&p);

    signal(app, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(200));
    signal(ctl, libc::SIGCONT);
    let exit = p.wait_exit(LONG);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        exit.signal(),
        Some(libc::SIGKILL),
        "the fenced primary must SIGKILL its program\n{}",
        p.report()
    );
    let text = log_text(&p.log_path());
    assert!(
        text.contains("LEASE LOST") || text.contains("SUPERSEDED"),
        "the primary's log does not say it was fenced:\n{}",
        tail_file(&p.log_path(), 30)
    );
    let first = restored_first_iteration(&sb);
    let released_after = released(&p);
    assert!(
        released_after < first,
        "output escaped the fenced primary: it released iteration {released_after} (at the \
         freeze: {released_at_freeze}), the standby resumed at {first}\n{}\n{}",
        p.report(),
        sb.report()
    );
    assert!(
        alive(restored),
        "the restored program runs\n{}",
        sb.report()
    );
    signal(restored, libc::SIGKILL);
    drop(sb);
    drop(etcd);
}

/// (3) The standby host dies for good, silently (frozen: no reset, no answer): without an
/// arbiter the primary could not tell it from a standby that took over, and would hold its
/// output until a standby answers. Holding the lease proves that no takeover happened: it
/// releases what it held and the program keeps serving.
#[test]
fn lost_standby_primary_holding_the_lease_releases_and_serves() {
    let etcd = Etcd::start(23794);
    let prefix = "/remus/t-standby-gone";
    let mut sb = standby(&etcd.url, prefix);
    let mut p = protected(&sb, &etcd.url, prefix);
    p.wait_committed(10, LONG);
    signal(sb.pid(), libc::SIGSTOP);
    let at_loss = released(&p);
    let v = p.wait_status(
        "the primary to release after proving no takeover",
        LONG,
        |v| s(v, "state") == "resyncing" && s(v, "reason").contains("no takeover happened"),
    );
    assert!(alive(p.pid()), "the program keeps running\n{}", p.report());
    let text = log_text(&p.log_path());
    assert!(
        text.contains("holds the etcd lease, so it did not take over"),
        "the primary's log:\n{}",
        tail_file(&p.log_path(), 30)
    );
    // It serves on: its output flows again, well past what it had released at the loss.
    let target = at_loss + 50;
    wait_for(
        "the program's output to flow again",
        LONG,
        &|| format!("status {v}\n{}", p.report()),
        || (released(&p) >= target).then_some(()),
    );
    // A standby comes back at the same address: the primary resynchronises and is protected
    // again.
    signal(sb.pid(), libc::SIGKILL);
    sb.kill();
    let addr = sb.addr.clone();
    drop(sb);
    let sb2 = Standby::start_on_with(&addr, 500, &["--etcd", &etcd.url, "--etcd-prefix", prefix]);
    p.wait_status("protected again by the new standby", LONG, |v| {
        s(v, "state") == "protected" && v["protected"] == true
    });
    sb2.wait_status("the new standby to commit epochs", LONG, |v| {
        remus::committed_epoch(v).is_some()
    });
    // Stopped on purpose: the lease is revoked at once and the standby does not take over.
    let out = std::process::Command::new(&remus::bins().remusctl)
        .args(["stop", "--control"])
        .arg(&p.control)
        .output()
        .expect("running remusctl stop");
    assert!(
        out.status.success(),
        "remusctl stop: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the primary to revoke its lease",
        LONG,
        &|| tail_file(&p.log_path(), 20),
        || {
            log_text(&p.log_path())
                .contains("revoked the etcd lease (stopped by an operator)")
                .then_some(())
        },
    );
    let st = sb2.wait_status("the standby to be told", LONG, |v| {
        s(v, "state") == "waiting" && s(v, "reason").contains("stopped by an operator")
    });
    assert!(n(&st, "restored_pid").is_none(), "{st}");
    assert!(alive(p.pid()), "the program runs on\n{}", p.report());
    p.kill();
    drop(sb2);
    drop(etcd);
}

/// (4) Etcd is gone: the primary cannot renew and stops releasing (acks keep coming); then
/// the primary side dies, and the standby, which cannot reach etcd, never takes over.
#[test]
fn standby_cut_off_from_etcd_never_takes_over() {
    let mut etcd = Etcd::start(23796);
    let prefix = "/remus/t-no-etcd";
    let sb = standby(&etcd.url, prefix);
    let mut p = protected(&sb, &etcd.url, prefix);
    p.wait_committed(10, LONG);
    etcd.kill();
    let v = p.wait_status(
        "the primary's lease to be no longer certainly valid",
        LONG,
        |v| arbiter(v, "lease_valid") == false && arbiter(v, "state") == "renewing",
    );
    let c0 = remus::committed_epoch(&v).unwrap_or(0);
    p.wait_committed(c0 + 5, LONG);
    let held_from = released(&p);
    let v = p.wait_committed(c0 + 25, LONG);
    assert_eq!(
        released(&p),
        held_from,
        "the primary released output while its lease was not certainly valid: {v}"
    );
    assert!(n(&v, "output_held_bytes").is_some_and(|b| b > 0), "{v}");

    p.kill_primary_side();
    let st = sb.wait_status("the standby to see that it cannot reach etcd", LONG, |v| {
        arbiter(v, "state") == "unreachable"
    });
    assert!(s(&st, "reason").contains("cannot reach etcd"), "{st}");
    // Several TTLs later, still no takeover.
    std::thread::sleep(Duration::from_millis(3 * TTL_MS));
    let st = sb.status().expect("the standby's status");
    assert_ne!(s(&st, "state"), "took_over", "{st}");
    assert!(n(&st, "restored_pid").is_none(), "{st}");
    assert!(
        log_text(&sb.log).contains("NOT taking over"),
        "{}",
        tail_file(&sb.log, 20)
    );
    drop(sb);
}

/// (5) A planned switch-over (`remusctl switchover`): the primary takes a last epoch, stops
/// its program there once the standby committed it, revokes its lease and says goodbye; the
/// standby takes the key at its first try (no TTL to wait for) and resumes the program, with
/// no iteration missing between what the primary released and what the standby runs.
#[test]
fn planned_switchover_hands_over_in_about_a_round_trip() {
    let etcd = Etcd::start(23798);
    let prefix = "/remus/t-switch";
    let sb = standby(&etcd.url, prefix);
    let mut p = protected(&sb, &etcd.url, prefix);
    p.wait_committed(10, LONG);
    let t0 = Instant::now();
    let out = std::process::Command::new(&remus::bins().remusctl)
        .args(["switchover", "--control"])
        .arg(&p.control)
        .output()
        .expect("running remusctl switchover");
    let answered = t0.elapsed();
    assert!(
        out.status.success(),
        "remusctl switchover failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        p.report()
    );
    let msg = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(msg.contains("switched over at epoch"), "{msg}");
    let st = sb.wait_status("the standby to resume the program", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let switched = t0.elapsed();
    let restored = n(&st, "restored_pid").expect("restored_pid") as i32;
    let exit = p.wait_exit(LONG);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(libc::SIGKILL), "{}", p.report());
    let log = log_text(&sb.log);
    assert!(
        log.contains("acquired the leader key") && !log.contains("waiting for that lease to end"),
        "the standby should have found the key free at once (the lease revoked):\n{}",
        tail_file(&sb.log, 30)
    );
    let primary_log = log_text(&p.log_path());
    assert!(
        primary_log.contains("revoked the etcd lease (a planned switch-over)"),
        "{}",
        tail_file(&p.log_path(), 20)
    );
    let released_max = released(&p);
    restored_first_iteration(&sb);
    let restored_iters = iters(&sb.app_stdout_text().lines().collect::<Vec<_>>());
    let lowest = restored_iters.iter().copied().min().unwrap_or(u64::MAX);
    assert!(
        lowest <= released_max + 1,
        "iterations missing between the primary's last released ({released_max}) and the \
         standby's first ({lowest})\n{}",
        sb.report()
    );
    println!(
        "planned switch-over with etcd (lease TTL {TTL_MS} ms): remusctl answered in {} ms, \
         the standby ran the program {} ms after the request",
        answered.as_millis(),
        switched.as_millis()
    );
    // The restored program ends: the standby gives the key back at once.
    signal(restored, libc::SIGKILL);
    wait_for(
        "the standby to revoke its lease",
        LONG,
        &|| tail_file(&sb.log, 20),
        || {
            log_text(&sb.log)
                .contains("revoked the etcd lease (the restored program exited)")
                .then_some(())
        },
    );
    drop(sb);

    // A program that ends on its own: its primary revokes the lease at once.
    let sb = standby(&etcd.url, "/remus/t-exit");
    let mut p = Protected::start(
        &progs().memcheck,
        &["500", "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            env: vec![
                ("REMUS_ETCD".into(), etcd.url.clone()),
                ("REMUS_ETCD_PREFIX".into(), "/remus/t-exit".into()),
            ],
            ..Default::default()
        },
    );
    let st = p.wait_exit(LONG);
    assert_eq!(st.code(), Some(0), "{}", p.report());
    wait_for(
        "the primary to revoke its lease",
        LONG,
        &|| tail_file(&p.log_path(), 20),
        || {
            log_text(&p.log_path())
                .contains("revoked the etcd lease (the program exited)")
                .then_some(())
        },
    );
    sb.wait_status("the standby to know the program ended", LONG, |v| {
        s(v, "state") == "app_exited"
    });
    drop(sb);
    drop(etcd);
}

/// A primary whose etcd cannot be reached does not start the program; the program's stderr
/// and the primary's log name the endpoint. (No etcd is needed: nothing listens there.)
#[test]
fn primary_that_cannot_reach_etcd_refuses_to_start() {
    let sb = Standby::start(500);
    let dead = format!("http://127.0.0.1:{}", remus::free_port());
    let mut p = protected(&sb, &dead, "/remus/t-dead");
    let st = p.wait_exit(LONG);
    assert_eq!(st.code(), Some(1), "{}", p.report());
    let err = p.stderr_text();
    assert!(
        err.contains(&format!("refusing to start: cannot reach etcd at {dead}")),
        "the program's stderr does not name the etcd that cannot be reached:\n{err}\n{}",
        p.report()
    );
    let text = log_text(&p.log_path());
    assert!(
        text.contains(&format!("cannot reach etcd at {dead}")),
        "the primary's log does not name the etcd it cannot reach:\n{}",
        tail_file(&p.log_path(), 10)
    );
    drop(sb);
}

/// `remusctl switchover` without an arbiter: the standby takes over on the goodbye alone.
/// (No etcd is needed.)
#[test]
fn planned_switchover_without_etcd() {
    let sb = Standby::start(500);
    let mut p = Protected::start(
        &progs().memcheck,
        &["100000000", "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            ..Default::default()
        },
    );
    p.wait_committed(10, LONG);
    let t0 = Instant::now();
    let out = std::process::Command::new(&remus::bins().remusctl)
        .args(["switchover", "--control"])
        .arg(&p.control)
        .output()
        .expect("running remusctl switchover");
    assert!(
        out.status.success(),
        "remusctl switchover: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        p.report()
    );
    let st = sb.wait_status("the standby to resume the program", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    assert!(s(&st, "reason").contains("planned switch-over"), "{st}");
    let restored = n(&st, "restored_pid").expect("restored_pid") as i32;
    let switched = t0.elapsed();
    p.wait_exit(LONG);
    let released_max = released(&p);
    restored_first_iteration(&sb);
    // The whole file: the committed output the standby wrote before the program resumed
    // (what the primary had not confirmed writing) and then the program's own.
    let whole = std::fs::read_to_string(&sb.app_stdout).unwrap_or_default();
    let lowest = iters(&whole.lines().collect::<Vec<_>>())
        .into_iter()
        .min()
        .unwrap_or(u64::MAX);
    assert!(
        lowest <= released_max + 1,
        "iterations missing between {released_max} and {lowest}\n{}",
        sb.report()
    );
    println!(
        "planned switch-over without etcd: the standby ran the program {} ms after the request",
        switched.as_millis()
    );
    signal(restored, libc::SIGKILL);
    drop(sb);
}

/// The standby is only cut off (frozen here), not gone: the primary proves with its lease
/// that no takeover happened, marks the standby's image obsolete in etcd and runs on
/// unprotected. Then the primary side dies, and the standby comes back: it acquires the key
/// once the lease expires, reads the mark, and does not take over with its stale image.
#[test]
fn cut_off_standby_with_an_obsolete_image_does_not_take_over() {
    let etcd = Etcd::start(23791);
    let prefix = "/remus/t-obsolete";
    let sb = standby(&etcd.url, prefix);
    let mut p = protected(&sb, &etcd.url, prefix);
    p.wait_committed(10, LONG);
    signal(sb.pid(), libc::SIGSTOP);
    let at_loss = released(&p);
    p.wait_status(
        "the primary to release after proving no takeover",
        LONG,
        |v| s(v, "state") == "resyncing" && s(v, "reason").contains("no takeover happened"),
    );
    let target = at_loss + 50;
    wait_for(
        "the program's output to flow again",
        LONG,
        &|| p.report(),
        || (released(&p) >= target).then_some(()),
    );
    p.kill_primary_side();
    signal(sb.pid(), libc::SIGCONT);
    let st = sb.wait_status("the standby to refuse its obsolete image", LONG, |v| {
        s(v, "state") == "primary_unprotected" && s(v, "reason").contains("obsolete")
    });
    assert!(n(&st, "restored_pid").is_none(), "{st}");
    let log = log_text(&sb.log);
    assert!(
        log.contains("acquired the leader key") && log.contains("is obsolete; not taking over"),
        "{}",
        tail_file(&sb.log, 30)
    );
    assert_eq!(n(&st, "takeovers"), Some(0), "{st}");
    drop(sb);
    drop(etcd);
}

/// The lease proves nothing about a standby that does not take over by the key (here: one
/// without `--etcd`): the primary says so when it connects, and when that standby is lost
/// silently it holds its output, as without an arbiter.
#[test]
fn primary_whose_standby_ignores_etcd_does_not_release_on_its_lease() {
    let etcd = Etcd::start(23793);
    let sb = Standby::start(500);
    let mut p = protected(&sb, &etcd.url, "/remus/t-mixed");
    p.wait_committed(10, LONG);
    wait_for(
        "the primary to warn that the standby ignores the key",
        LONG,
        &|| tail_file(&p.log_path(), 20),
        || {
            log_text(&p.log_path())
                .contains("the standby does not take over by the leader key")
                .then_some(())
        },
    );
    signal(sb.pid(), libc::SIGSTOP);
    let v = p.wait_status("the primary holding after several attempts", LONG, |v| {
        s(v, "state") == "resyncing"
            && s(v, "reason").contains("stays held")
            && s(v, "reason").contains("attempt 4")
    });
    assert!(n(&v, "output_held_bytes").is_some_and(|b| b > 0), "{v}");
    assert!(
        !log_text(&p.log_path()).contains("no takeover happened"),
        "{}",
        tail_file(&p.log_path(), 20)
    );
    signal(sb.pid(), libc::SIGKILL);
    p.kill();
    drop(sb);
    drop(etcd);
}
