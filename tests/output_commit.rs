//! Output commit (DESIGN §4): what the protected program prints reaches its reader only after
//! the epoch that produced it is committed by the standby. Freezing the standby (SIGSTOP)
//! withholds its acks: no new output may reach the reader meanwhile, although the program
//! keeps running and printing; once the standby runs again, everything arrives, in order.

use std::time::{Duration, Instant};

use remus::{committed_epoch, iters, n, progs, signal, Protected, ProtectedOpts, Standby};

#[test]
fn output_waits_for_the_standbys_ack() {
    // The standby must not take over while it is frozen and then resumed (long timeout), and
    // the primary must not give up on a standby silent for a couple of seconds (heartbeat
    // 1000 ms: lost after 4 s).
    let standby = Standby::start(20_000);
    let dir = std::env::temp_dir().join(format!("remus-oc-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let stop = dir.join("stop");
    let _ = std::fs::remove_file(&stop);
    let stop_s = stop.to_str().expect("utf-8 path").to_string();
    let mut app = Protected::start(
        &progs().memcheck,
        &["0", "--stop-file", &stop_s, "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            env: vec![("REMUS_PRIMARY_ARGS".into(), "--heartbeat-ms 1000".into())],
            ..Default::default()
        },
    );
    app.wait_committed(5, Duration::from_secs(60));
    app.wait_iter(20, Duration::from_secs(60));

    // Withhold acks. Acks already on their way may still release a little: let them land.
    assert!(
        signal(standby.pid(), libc::SIGSTOP),
        "cannot stop the standby"
    );
    std::thread::sleep(Duration::from_millis(400));
    let before = app.stdout_lines().len();
    let status_before = app.status().expect("primary status");
    let committed_before = committed_epoch(&status_before);
    std::thread::sleep(Duration::from_millis(1500));
    let during = app.stdout_lines().len();
    let st = app.status().expect("primary status");
    let held = n(&st, "output_held_bytes").unwrap_or(0);
    let committed_during = committed_epoch(&st);
    assert!(
        signal(standby.pid(), libc::SIGCONT),
        "cannot resume the standby"
    );

    assert_eq!(
        st.get("protected").and_then(|v| v.as_bool()),
        Some(true),
        "the primary gave up on the frozen standby: the test means nothing\n{st}"
    );
    assert_eq!(
        committed_during, committed_before,
        "an epoch was committed while the standby was frozen"
    );
    assert_eq!(
        during,
        before,
        "output reached the reader while the standby's acks were withheld:\n{}",
        app.stdout_lines()[before..].join("\n")
    );
    assert!(
        held > 0,
        "the program kept printing while the standby was frozen, so output must be held: {st}"
    );

    // Acks flow again: the held output arrives, and more after it.
    let max_before = iters(&app.stdout_lines()).into_iter().max().unwrap_or(0);
    let t = Instant::now();
    app.wait_iter(max_before + 100, Duration::from_secs(60));
    eprintln!(
        "held {held} bytes while the standby was frozen; released {:?} after it resumed",
        t.elapsed()
    );

    std::fs::write(&stop, b"").expect("create the stop file");
    let st = app.wait_exit(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "{}", app.report());
    let lines = app.stdout_lines();
    let it = iters(&lines);
    assert!(
        lines.first().is_some_and(|l| l.starts_with("start ")),
        "{}",
        app.report()
    );
    assert_eq!(it.first(), Some(&1), "{}", app.report());
    for w in it.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "output out of order or lost: {} then {}",
            w[0],
            w[1]
        );
    }
    assert!(
        lines.iter().all(|l| !l.contains("MISMATCH")),
        "{}",
        app.report()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
