//! `remusd standby --on-takeover CMD`: the command runs before the restored program resumes,
//! and its failure stops the takeover (the program is not run on the standby).

use std::time::Duration;

use remus::{n, progs, s, test_key_file, Protected, ProtectedOpts, Standby, TempDir};

/// Only there to turn a hang into a failure.
const LONG: Duration = Duration::from_secs(60);

fn protected_memcheck(standby: &Standby) -> Protected {
    let stop = standby.dir().join("stop");
    Protected::start(
        &progs().memcheck,
        &["0", "--stop-file", stop.to_str().expect("utf-8")],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    )
}

#[test]
fn on_takeover_runs_before_the_program_resumes() {
    let marks = TempDir::new("ontk");
    let mark = marks.path().join("ran");
    // Records the epoch it was given, and whether the restored program had written anything
    // yet (the harness puts the program's stdout next to the state dir): it must not have.
    let cmd = format!(
        "out=\"$REMUS_STATE_DIR/../app.out\"; \
         if [ -s \"$out\" ]; then r=after; else r=before; fi; \
         echo \"$REMUS_EPOCH $r\" > '{}'",
        mark.display()
    );
    let mut standby = Standby::start_with(500, Some(test_key_file()), &["--on-takeover", &cmd]);
    let mut app = protected_memcheck(&standby);
    app.wait_committed(5, LONG);
    app.kill_primary_side();
    let v = standby.wait_status("state took_over", LONG, |v| s(v, "state") == "took_over");
    let epoch = n(&v, "committed_epoch").expect("committed epoch after takeover");
    let text = std::fs::read_to_string(&mark)
        .unwrap_or_else(|e| panic!("--on-takeover did not run ({e})\n{}", standby.report()));
    assert_eq!(
        text.trim(),
        format!("{epoch} before"),
        "the command must run with the restored epoch, before the program writes anything\n{}",
        standby.report()
    );
    // The program did resume after it.
    app.wait_eof(LONG);
    std::fs::write(standby.dir().join("stop"), b"stop\n").expect("stop file");
    let st = standby.wait_exit("the restored program to finish", LONG);
    assert_eq!(st.code(), Some(0), "{}", standby.report());
    assert!(
        standby.app_stdout_text().contains("done"),
        "{}",
        standby.report()
    );
}

#[test]
fn failing_on_takeover_stops_the_takeover() {
    let mut standby = Standby::start_with(500, Some(test_key_file()), &["--on-takeover", "exit 3"]);
    let mut app = protected_memcheck(&standby);
    app.wait_committed(3, LONG);
    app.kill_primary_side();
    let st = standby.wait_exit("the standby to give up the takeover", LONG);
    assert_ne!(
        st.code(),
        Some(0),
        "the standby must report the failure\n{}",
        standby.report()
    );
    let record = std::fs::read_to_string(standby.state_dir.join("takeover.json"))
        .unwrap_or_else(|e| panic!("takeover.json: {e}\n{}", standby.report()));
    assert!(
        record.contains("--on-takeover failed") && record.contains("exit status: 3"),
        "takeover.json should name the failed command: {record}"
    );
    assert_eq!(
        standby.app_stdout_text(),
        "",
        "the program must not run on the standby when --on-takeover fails\n{}",
        standby.report()
    );
}
