//! A standby that restarts resynchronises from a full image (issue 5, "fencing and roles"):
//! memcheck protected by standby A; A is SIGKILLed mid-run; the primary keeps the program
//! running (unprotected, `state: resyncing`, with the reason) and keeps reconnecting; a new
//! standby B is started on A's address (a restarted standby: empty state); the primary
//! reconnects, ships a full image, then epochs, and is protected again (output held again).
//! Then the primary side is killed: B takes over and the program continues from a state at
//! least as new as what B had committed, its own checks of all its memory passing, and no
//! output the primary released is repeated (output commit resumed with protection).

use std::time::Duration;

use remus::{
    assert_streamed, check_restored_output, committed_epoch, iters, n, progs, s, wait_for,
    Protected, ProtectedOpts, Standby,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(180);
/// Iterations the program must run on B after the takeover.
const RUN_AFTER: u64 = 50;

#[test]
fn restarted_standby_resynchronises_then_takes_over() {
    scenario(&[]);
}

/// The mprotect tracker re-registers every region at the full resend too.
#[test]
fn restarted_standby_resynchronises_mprotect_tracker() {
    scenario(&[("REMUS_TRACKER", "mprotect")]);
}

/// The baseline (and remusd's fallback when it may not read the program's memory): the full
/// image in one pause.
#[test]
fn restarted_standby_resynchronises_full_image_in_one_pause() {
    scenario(&[("REMUS_FULL_IMAGE", "pause")]);
}

fn primary_log(app: &Protected) -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::fs::read_to_string(format!("/tmp/remus-{uid}/primary-{}.log", app.pid()))
        .unwrap_or_default()
}

/// Standby A (500 ms timeout) and memcheck protected by it, running until A's `stop` file
/// exists, with `env` added to its environment. Returns A, its address, the stop file and the
/// program.
fn start_on_a(env: &[(&str, &str)]) -> (Standby, String, std::path::PathBuf, Protected) {
    let a = Standby::start(500);
    let addr = a.addr.clone();
    let stop = a.dir().join("stop");
    let stop_s = stop.to_str().expect("utf-8").to_string();
    let app = Protected::start(
        &progs().memcheck,
        &["0", "--stop-file", &stop_s],
        &ProtectedOpts {
            standby: Some(addr.clone()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
    );
    (a, addr, stop, app)
}

fn scenario(env: &[(&str, &str)]) {
    let (mut a, addr, stop, mut app) = start_on_a(env);
    let v = app.wait_committed(5, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    let c1 = committed_epoch(&v).unwrap_or(0);

    // The standby dies: the primary goes on unprotected and says it is resynchronising.
    a.kill();
    let v = app.wait_status("state resyncing, protected:false", LONG, |v| {
        s(v, "state") == "resyncing" && v.get("protected") == Some(&Value::Bool(false))
    });
    let reason = s(&v, "reason").to_string();
    assert!(
        reason.contains(&addr) && reason.contains("resynchronise"),
        "the reason should name the lost standby and the resynchronisation: {v}"
    );
    // The program keeps running (its output is not held for a standby that is gone).
    let seen = app.max_iter();
    app.wait_iter(seen + 20, LONG);
    // Still resyncing, and it keeps trying (the reason counts attempts).
    let v = app.wait_status("reconnection attempts", LONG, |v| {
        s(v, "state") == "resyncing" && s(v, "reason").contains("attempt")
    });
    assert_eq!(v.get("protected"), Some(&Value::Bool(false)), "{v}");

    // A restarted standby: a new process, empty state, same address.
    let b = Standby::start_on(&addr, 500);
    let both = || format!("{}{}", app.report(), b.report());
    let v = wait_for(
        "the primary to be protected again with new committed epochs",
        LONG,
        &both,
        || {
            let v = app.status().ok()?;
            (v.get("protected") == Some(&Value::Bool(true))
                && s(&v, "state") == "protected"
                && committed_epoch(&v).is_some_and(|c| c > c1 + 3))
            .then_some(v)
        },
    );
    assert_eq!(s(&v, "link"), "up", "{v}");
    let in_pause = env.contains(&("REMUS_FULL_IMAGE", "pause"));
    let (read, max_pause) = if in_pause {
        assert!(
            v.get("image_stream").is_none_or(Value::is_null),
            "nothing streams with REMUS_FULL_IMAGE=pause: {v}"
        );
        (0, 0)
    } else {
        // The full image was streamed while the program ran (below: the resend epoch did not
        // copy memcheck's 16 MiB block in its pause).
        assert_streamed(&v, 1)
    };
    let bv = b.wait_status("B committed epochs", LONG, |v| {
        s(v, "state") == "receiving" && committed_epoch(v).is_some_and(|c| c > c1)
    });
    assert_eq!(bv.get("protected"), Some(&Value::Bool(true)), "{bv}");
    let log = std::fs::read_to_string(&b.log).unwrap_or_default();
    assert!(
        !log.contains("TAKING OVER"),
        "B must not take over while the primary lives:\n{log}"
    );
    // The shim honoured the full-resend request, and B committed the image.
    let plog = primary_log(&app);
    assert!(
        plog.contains("the full image for the reconnected standby is on its way")
            && plog.contains("protection resumes"),
        "the primary's log does not show the full image:\n{}",
        both()
    );
    // In one pause, the resend epoch itself copied the 16 MiB block.
    let resend_pages = plog
        .lines()
        .rfind(|l| l.contains("full image for the reconnected standby taken"))
        .and_then(|l| {
            l.split("pages=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no resend epoch in the primary's log:\n{plog}"));
    if in_pause {
        assert!(
            resend_pages >= 4096,
            "the resend epoch copied {resend_pages} pages"
        );
    } else {
        assert!(
            resend_pages < 4096,
            "the streamed resend epoch copied {resend_pages} pages in its pause"
        );
    }

    // Ordering, as in failover_scenario: lines read now were printed before epoch
    // `taken + 1` started, so B holds them once `taken + 2` is committed.
    let known = app.max_iter();
    let taken = app
        .status()
        .ok()
        .and_then(|v| v.get("epoch").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("the primary's status has no epoch\n{}", both()));
    wait_for(
        &format!("committed_epoch >= {}", taken + 2),
        LONG,
        &both,
        || {
            let v = app.status().ok()?;
            assert_eq!(
                v.get("protected"),
                Some(&Value::Bool(true)),
                "protection stopped again: {v}\n{}",
                both()
            );
            committed_epoch(&v)
                .is_some_and(|c| c >= taken + 2)
                .then_some(())
        },
    );

    // The primary's host dies.
    app.kill_primary_side();
    app.wait_eof(Duration::from_secs(30));
    let out = app.stdout_lines();
    assert!(
        !out.iter().any(|l| l.contains("MISMATCH")),
        "the program failed its own check before failover\n{}",
        app.report()
    );
    let released = iters(&out).into_iter().max().unwrap_or(0);

    let sv = b.wait_status("B took over", LONG, |v| {
        s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
    });
    let restored = n(&sv, "restored_pid").unwrap_or(0) as i32;
    assert!(restored > 0, "{sv}");
    wait_for(
        &format!("the program to run {RUN_AFTER} iterations on B"),
        LONG,
        &|| b.report(),
        || {
            let it = iters(&b.app_stdout_text().lines().collect::<Vec<_>>());
            (it.len() as u64 >= RUN_AFTER).then_some(())
        },
    );
    std::fs::write(&stop, b"stop\n").expect("write the stop file");
    let mut b = b;
    let st = b.wait_exit("the program to stop on B", LONG);
    assert_eq!(st.code(), Some(0), "{}", b.report());
    let (first, last) = check_restored_output(&b.app_stdout_text(), known, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", b.report()));
    // Output commit resumed with protection: nothing the primary let out is done again.
    assert!(
        first > released,
        "the primary released iteration {released} but B resumed at {first}: output from a \
         lost state escaped after the resynchronisation\n{}",
        b.report()
    );
    eprintln!(
        "resync: committed {c1} before the standby died; on B: iterations {first}..={last} \
         (known: {known}, released: {released}); full image streamed: {read} pages read, at \
         most {max_pause} pages in a pause"
    );
}

/// The primary side dies while the full image for a restarted standby is still streaming:
/// the standby holds only a partial image, which it cannot restore, so it does not take over
/// and says why (and the primary had released nothing from an epoch the standby committed:
/// partial epochs release nothing). Small batches (16 pages an epoch) keep the image
/// streaming for seconds.
#[test]
fn primary_lost_while_the_image_streams_no_takeover() {
    let (mut a, addr, _stop, mut app) = start_on_a(&[("REMUS_STREAM_BATCH_PAGES", "16")]);
    app.wait_committed(3, LONG);
    a.kill();
    app.wait_status("state resyncing", LONG, |v| s(v, "state") == "resyncing");
    let b = Standby::start_on(&addr, 500);
    let both = || format!("{}{}", app.report(), b.report());
    // Streaming: some pages read, not complete.
    let v = wait_for("the full image streaming to B", LONG, &both, || {
        let v = app.status().ok()?;
        let st = v.get("image_stream")?;
        (s(&v, "state") == "resyncing"
            && st.get("complete_epoch").is_some_and(Value::is_null)
            && st
                .get("pages_read")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0)
            && st
                .get("pending_pages")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 1000))
        .then_some(v)
    });
    assert_eq!(v.get("protected"), Some(&Value::Bool(false)), "{v}");
    // B has received (and acked) partial epochs, none of them restorable.
    let bv = b.wait_status("B receives partial epochs", LONG, |v| {
        s(v, "state") == "receiving" && v.get("epoch").and_then(Value::as_u64).is_some()
    });
    assert_eq!(
        committed_epoch(&bv),
        None,
        "a partial epoch counted as committed: {bv}"
    );
    assert_eq!(bv.get("protected"), Some(&Value::Bool(false)), "{bv}");

    app.kill_primary_side();
    app.wait_eof(Duration::from_secs(30));
    let bv = b.wait_status("B gives up the partial image", LONG, |v| {
        s(v, "state") == "waiting" && s(v, "reason").contains("streamed full image")
    });
    assert!(
        n(&bv, "restored_pid").is_none(),
        "B restored something: {bv}"
    );
    let log = std::fs::read_to_string(&b.log).unwrap_or_default();
    assert!(
        !log.contains("TAKING OVER") && log.contains("before the streamed full image was complete"),
        "B must not take over from a partial image:\n{log}"
    );
}
