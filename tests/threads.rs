//! Multi-threaded programs (issue 10): every thread in one consistent epoch, restored with the
//! same thread ids. `pthread_zoo` checks, every iteration, what a restore with other thread ids
//! or without each thread's own registrations would break (recursive and error-checking mutex
//! owners, a robust mutex whose owner dies, TLS, a condition variable, threads blocked in
//! `read` and `epoll_wait`, threads created and joined, `pthread_kill`, `sched_getcpu`), and is
//! failed over with `kill -9` at several moments, counted in committed epochs.

use remus::{failover_scenario, progs, Failover};

/// Iterations the restored program must run (and check) after the failover.
const RUN_AFTER: u64 = 100;

fn run(after_epochs: u64) -> Failover {
    let f = failover_scenario(&progs().pthread_zoo, &["0"], after_epochs, RUN_AFTER);
    eprintln!("pthread_zoo failover after {after_epochs} epochs: {f:?}");
    assert!(f.committed_at_kill >= after_epochs);
    assert!(f.first_restored > f.known_committed);
    assert!(f.last_restored >= f.first_restored + RUN_AFTER - 1);
    assert_eq!(
        f.output_ahead(),
        0,
        "the primary let out iterations up to {} but the restored program resumed at {}",
        f.released,
        f.first_restored
    );
    f
}

#[test]
fn pthread_zoo_failover_after_5_epochs() {
    run(5);
}

#[test]
fn pthread_zoo_failover_after_20_epochs() {
    run(20);
}

#[test]
fn pthread_zoo_failover_after_60_epochs() {
    run(60);
}
