//! One test per error a user can meet: what they are told (the exact line, with one `remus: `
//! prefix), and what happens to the program.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use remus::{
    committed_epoch, describe_status, free_port, iters, n, progs, s, Protected, ProtectedOpts,
    Standby,
};
use serde_json::Value;

/// Generous deadlines: only there to turn a hang into a failure.
const LONG: Duration = Duration::from_secs(60);
const STANDBY_TIMEOUT_MS: u64 = 500;

fn memcheck(args: &[&str], opts: &ProtectedOpts) -> Protected {
    Protected::start(&progs().memcheck, args, opts)
}

fn protected_to(standby: &Standby) -> ProtectedOpts {
    ProtectedOpts {
        standby: Some(standby.addr.clone()),
        ..Default::default()
    }
}

/// The `remus: ...` lines the shim printed (none with the prefix twice).
fn remus_lines(p: &Protected) -> Vec<String> {
    remus::remus_lines(&p.stderr_text(), &|| p.report())
}

/// What the shim prints when the standby at `addr` cannot be reached (nobody listens there)
/// and running unprotected is not allowed.
fn unreachable_line(addr: &str) -> String {
    format!(
        "remus: cannot reach the standby: cannot connect to {addr}: Connection refused (os error \
         111). Start `remusd standby --listen {addr} --state-dir DIR` on the standby host, or set \
         REMUS_ALLOW_UNPROTECTED=1 to run without protection."
    )
}

/// Asserts that the program was refused: exit 1, never started, exactly the line `expect`
/// (one `remus: ` prefix) on stderr from remus.
fn assert_refused(p: &mut Protected, expect: &str) {
    let st = p.wait_exit(LONG);
    assert_eq!(
        st.code(),
        Some(1),
        "expected exit 1, got {}\n{}",
        describe_status(&st),
        p.report()
    );
    let out = p.stdout_lines();
    assert!(
        !out.iter().any(|l| l.starts_with("start ")),
        "the program was started although it could not be protected\n{}",
        p.report()
    );
    let lines = remus_lines(p);
    assert_eq!(
        lines,
        [expect],
        "expected exactly this one `remus: ...` line on stderr\n{}",
        p.report()
    );
}

/// Polls the standby a few timeouts long and asserts that it never takes over: it is either
/// still there and says so, or gone without having run anything.
fn assert_no_takeover(standby: &mut Standby, expect_state: &str) {
    let timeouts = 6;
    let polls = timeouts * STANDBY_TIMEOUT_MS / 50;
    for _ in 0..polls {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(st) = standby.try_wait() {
            panic!(
                "the standby exited ({}) instead of staying in {expect_state}\n{}",
                describe_status(&st),
                standby.report()
            );
        }
        let v = standby
            .status()
            .unwrap_or_else(|e| panic!("standby status: {e}\n{}", standby.report()));
        assert_eq!(
            s(&v, "state"),
            expect_state,
            "the standby left {expect_state}: {v}\n{}",
            standby.report()
        );
        assert!(
            n(&v, "restored_pid").is_none(),
            "the standby restored a process: {v}\n{}",
            standby.report()
        );
    }
    assert_eq!(
        standby.app_stdout_text(),
        "",
        "something ran on the standby\n{}",
        standby.report()
    );
}

#[test]
fn no_standby_configured_refuses_to_start() {
    let mut p = memcheck(&["100"], &ProtectedOpts::default());
    assert_refused(
        &mut p,
        "remus: REMUS_STANDBY is not set, so there is no standby to protect this program; set it \
         to the host:port a `remusd standby --listen` is listening on (or use scripts/remus-run \
         --standby ADDR), or set REMUS_ALLOW_UNPROTECTED=1 to run without protection",
    );
}

#[test]
fn unreachable_standby_refuses_to_start() {
    // Nobody listens there: the port was free a moment ago.
    let addr = format!("127.0.0.1:{}", free_port());
    let mut p = memcheck(
        &["100"],
        &ProtectedOpts {
            standby: Some(addr.clone()),
            ..Default::default()
        },
    );
    assert_refused(&mut p, &unreachable_line(&addr));
}

/// A kernel without async write-protect (simulated: this one has it): with the uffd tracker
/// asked for explicitly, the program is refused with the kernel version and what is missing.
#[test]
fn kernel_without_async_wp_refuses_the_uffd_tracker() {
    let standby = Standby::start(STANDBY_TIMEOUT_MS);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut opts = protected_to(&standby);
    opts.env = vec![
        ("REMUS_TRACKER".into(), "uffd".into()),
        ("REMUS_FAULT_PROBE".into(), "no-wp-async".into()),
    ];
    let mut p = memcheck(&["100"], &opts);
    assert_refused(
        &mut p,
        &format!(
            "remus: this kernel ({}) lacks userfaultfd UFFD_FEATURE_WP_ASYNC (Invalid argument (os \
             error 22)); remus needs Linux 6.7 or newer for asynchronous write-protect dirty \
             tracking",
            release.trim()
        ),
    );
}

/// The same kernel with the default tracker: the program is protected by the mprotect
/// tracker instead, and the controller's log says why (nothing on the program's stderr).
#[test]
fn kernel_without_async_wp_falls_back_to_mprotect() {
    let standby = Standby::start(STANDBY_TIMEOUT_MS);
    let mut opts = protected_to(&standby);
    opts.env = vec![("REMUS_FAULT_PROBE".into(), "no-wp-async".into())];
    let stop = standby.dir().join("stop");
    let mut p = memcheck(&["0", "--stop-file", stop.to_str().expect("utf-8")], &opts);
    let v = p.wait_committed(3, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    assert!(
        remus_lines(&p).is_empty(),
        "the fallback must not write to the program's stderr\n{}",
        p.report()
    );
    assert!(
        p.report().contains("mprotect") && p.report().contains("UFFD_FEATURE_WP_ASYNC"),
        "the controller's log should say the mprotect tracker is used, and why\n{}",
        p.report()
    );
    std::fs::write(&stop, b"stop\n").expect("stop file");
    let st = p.wait_exit(LONG);
    assert_eq!(st.code(), Some(0), "{}", p.report());
}

#[test]
fn allow_unprotected_runs_and_says_why() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut p = memcheck(
        &["200"],
        &ProtectedOpts {
            standby: Some(addr.clone()),
            allow_unprotected: true,
            ..Default::default()
        },
    );
    p.wait_iter(5, LONG);
    let v = p.wait_status("a status", LONG, |_| true);
    assert_eq!(s(&v, "role"), "primary", "{v}");
    assert_eq!(
        v.get("protected"),
        Some(&Value::Bool(false)),
        "an unprotected program must say protected:false: {v}"
    );
    assert_eq!(s(&v, "state"), "unprotected", "{v}");
    assert!(
        !s(&v, "reason").trim().is_empty(),
        "protected:false needs a reason: {v}"
    );
    assert!(
        s(&v, "reason").contains(&addr) || s(&v, "reason").to_lowercase().contains("standby"),
        "the reason should say the standby could not be reached: {v}"
    );
    // The warning on stderr names the problem too: one line, one `remus: ` prefix, saying
    // that it runs unprotected and why.
    let lines = remus_lines(&p);
    assert_eq!(
        lines.len(),
        1,
        "running unprotected should print one `remus: ` warning\n{}",
        p.report()
    );
    let why = format!(
        "cannot reach the standby: cannot connect to {addr}: Connection refused (os error 111)"
    );
    let l = &lines[0];
    assert!(
        l.starts_with("remus: WARNING: running UNPROTECTED") && l.ends_with(&why),
        "expected `remus: WARNING: running UNPROTECTED...: {why}`, got {l:?}\n{}",
        p.report()
    );
    assert_eq!(
        l.matches("remus:").count(),
        1,
        "one `remus:` in the warning: {l:?}\n{}",
        p.report()
    );
    let st = p.wait_exit(LONG);
    assert!(st.success(), "{}\n{}", describe_status(&st), p.report());
    assert_eq!(
        p.stdout_lines().last().map(String::as_str),
        Some("done 200"),
        "{}",
        p.report()
    );
}

#[test]
fn a_second_thread_keeps_protection_on() {
    let standby = Standby::start(STANDBY_TIMEOUT_MS);
    let go = standby.dir().join("create-thread");
    let p = Protected::start(
        &progs().threads,
        &["100000", "--thread-file", go.to_str().expect("utf-8")],
        &protected_to(&standby),
    );
    let v = p.wait_committed(3, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    std::fs::write(&go, b"go\n").expect("write the trigger file");
    p.wait_line("thread created", LONG, |l| l == "thread created");
    // Epochs go on with both threads in every one.
    let after = committed_epoch(&v).unwrap_or(0) + 20;
    let v = p.wait_committed(after, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    assert_eq!(s(&v, "state"), "protected", "{v}");
}

#[test]
fn a_thread_that_blocks_the_epoch_signal_is_named_and_protection_stops() {
    let mut standby = Standby::start(STANDBY_TIMEOUT_MS);
    let go = standby.dir().join("create-thread");
    let mut p = Protected::start(
        &progs().threads,
        &[
            "100000",
            "--thread-file",
            go.to_str().expect("utf-8"),
            "--block-epoch",
        ],
        &protected_to(&standby),
    );
    let v = p.wait_committed(3, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    std::fs::write(&go, b"go\n").expect("write the trigger file");
    p.wait_line("thread created", LONG, |l| l == "thread created");
    let v = p.wait_status("protected:false after the blocking thread", LONG, |v| {
        v.get("protected") == Some(&Value::Bool(false))
    });
    let reason = s(&v, "reason");
    assert!(
        reason.contains("did not come into the epoch handler") && reason.contains("(threads)"),
        "the primary's reason should name the thread: {v}"
    );
    assert_eq!(s(&v, "state"), "unprotected", "{v}");
    let sv = standby.wait_status("state primary_unprotected", LONG, |v| {
        s(v, "state") == "primary_unprotected"
    });
    assert!(
        s(&sv, "reason").contains("epoch handler"),
        "the standby's reason should say why: {sv}"
    );
    // The program goes on (unprotected), and no takeover follows its host's death.
    let after = p.max_iter() + 20;
    p.wait_iter(after, LONG);
    p.kill_primary_side();
    assert_no_takeover(&mut standby, "primary_unprotected");
}

#[test]
fn standby_killed_mid_run_program_keeps_running_unprotected() {
    let mut standby = Standby::start(STANDBY_TIMEOUT_MS);
    let target = 1500u64;
    let mut p = memcheck(&[&target.to_string()], &protected_to(&standby));
    let v = p.wait_committed(5, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    standby.kill();
    let v = p.wait_status("protected:false after the standby died", LONG, |v| {
        v.get("protected") == Some(&Value::Bool(false))
    });
    assert!(
        !s(&v, "reason").trim().is_empty(),
        "protected:false needs a reason: {v}"
    );
    // Keeps running and printing: output is no longer held for a standby that is gone.
    let seen = p.max_iter();
    assert!(
        seen < target - 100,
        "memcheck ran too fast for this test ({seen} of {target})"
    );
    p.wait_iter(seen + 100, LONG);
    let st = p.wait_exit(LONG * 2);
    assert!(st.success(), "{}\n{}", describe_status(&st), p.report());
    let out = p.stdout_lines();
    assert!(
        !out.iter().any(|l| l.contains("MISMATCH")),
        "{}",
        p.report()
    );
    assert_eq!(
        out.last().map(String::as_str),
        Some(format!("done {target}").as_str())
    );
    let it = iters(&out);
    assert_eq!(
        it,
        (1..=target).collect::<Vec<_>>(),
        "every iteration printed exactly once, in order"
    );
}

/// The program exits (or dies) on its own, told to by the test once protection is
/// established: the standby is told, does not take over, and keeps saying app_exited.
fn ends_on_its_own(action: &str, expect: impl Fn(&std::process::ExitStatus) -> bool) {
    let mut standby = Standby::start(STANDBY_TIMEOUT_MS);
    let stop = standby.dir().join("stop");
    let mut p = memcheck(
        &[
            "0",
            "--stop-file",
            stop.to_str().expect("utf-8"),
            "--stop-action",
            action,
        ],
        &protected_to(&standby),
    );
    let v = p.wait_committed(3, LONG);
    assert_eq!(v.get("protected"), Some(&Value::Bool(true)), "{v}");
    std::fs::write(&stop, b"stop\n").expect("write the stop file");
    let st = p.wait_exit(LONG);
    assert!(
        expect(&st),
        "unexpected end: {}\n{}",
        describe_status(&st),
        p.report()
    );
    standby.wait_status("state app_exited", LONG, |v| s(v, "state") == "app_exited");
    assert_no_takeover(&mut standby, "app_exited");
}

#[test]
fn program_exits_on_its_own_is_not_resurrected() {
    ends_on_its_own("exit", |st| st.code() == Some(0));
}

#[test]
fn program_segfaults_is_not_resurrected() {
    ends_on_its_own("segv", |st| st.signal() == Some(libc::SIGSEGV));
}

#[test]
fn program_aborts_is_not_resurrected() {
    ends_on_its_own("abort", |st| st.signal() == Some(libc::SIGABRT));
}
