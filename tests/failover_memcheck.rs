//! Failover of memcheck (every kind of memory, checked every iteration) at several moments.
//! The moments are counted in committed epochs, not in wall-clock time.

use remus::{failover_scenario, progs, Failover};

/// Iterations the restored program must run (and check) after the failover.
const RUN_AFTER: u64 = 200;

fn run(after_epochs: u64) -> Failover {
    // ITERATIONS 0: until the scenario's stop file appears.
    let f = failover_scenario(&progs().memcheck, &["0"], after_epochs, RUN_AFTER);
    eprintln!(
        "failover after {after_epochs} epochs: {f:?}; output ahead of commit: {}",
        f.output_ahead()
    );
    assert!(f.committed_at_kill >= after_epochs);
    assert!(f.first_restored > f.known_committed);
    assert!(f.last_restored >= f.first_restored + RUN_AFTER - 1);
    // DESIGN section 4: output leaves only once its epoch is committed, so nothing the
    // primary printed is done again by the restored program.
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
fn memcheck_failover_after_5_epochs() {
    run(5);
}

#[test]
fn memcheck_failover_after_20_epochs() {
    run(20);
}

#[test]
fn memcheck_failover_after_60_epochs() {
    run(60);
}
