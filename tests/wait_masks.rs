//! A program that waits with every signal blocked in the wait's own mask (`ppoll`, `pselect`,
//! `epoll_pwait`, `sigsuspend`), or waits for every signal (`sigwait`, `sigwaitinfo`,
//! `sigtimedwait`), is still checkpointed while it waits: the shim takes its epoch
//! signal out of masks the program passes there (DESIGN §8). Without that, no epoch is taken
//! until the wait ends, here never.

use std::time::Duration;

use remus::{committed_epoch, progs, Protected, ProtectedOpts, Standby};

fn epochs_commit_while_it_waits(how: &str) {
    let long = Duration::from_secs(60);
    let standby = Standby::start(500);
    let app = Protected::start(
        &progs().maskwait,
        &[how],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    // The line is released once its epoch commits: the program is in its wait by then.
    app.wait_line("the program waiting", long, |l| l == "waiting");
    let c = committed_epoch(&app.status().expect("status")).unwrap_or(0);
    // Bounded against a hang only: each of these epochs lands in the masked wait.
    let v = app.wait_committed(c + 10, long);
    assert!(committed_epoch(&v).unwrap_or(0) >= c + 10, "{how}: {v}");
    // The app's own wait never took the epoch signal (sigwait*).
    assert!(
        !app.stdout_lines()
            .iter()
            .any(|l| l.starts_with("the wait took signal")),
        "{how}: the program's wait took a signal: {:?}",
        app.stdout_lines()
    );
}

#[test]
fn ppoll_with_a_full_mask() {
    epochs_commit_while_it_waits("ppoll");
}

#[test]
fn pselect_with_a_full_mask() {
    epochs_commit_while_it_waits("pselect");
}

#[test]
fn epoll_pwait_with_a_full_mask() {
    epochs_commit_while_it_waits("epoll_pwait");
}

#[test]
fn sigsuspend_with_a_full_mask() {
    epochs_commit_while_it_waits("sigsuspend");
}

#[test]
fn sigwaitinfo_for_every_signal() {
    epochs_commit_while_it_waits("sigwaitinfo");
}

#[test]
fn sigtimedwait_for_every_signal() {
    epochs_commit_while_it_waits("sigtimedwait");
}

#[test]
fn sigwait_for_every_signal() {
    epochs_commit_while_it_waits("sigwait");
}
