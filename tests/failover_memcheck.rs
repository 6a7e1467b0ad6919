//! Failover of memcheck (every kind of memory, checked every iteration) at several moments.
//! The moments are counted in committed epochs, not in wall-clock time.

use remus::{failover_scenario, progs};

/// Iterations memcheck runs in all (about 4 ms each): long enough to outlive the kill
/// point and run well after the failover.
const TARGET: u64 = 2500;

fn run(after_epochs: u64) {
    let f = failover_scenario(
        &progs().memcheck,
        &[&TARGET.to_string()],
        TARGET,
        after_epochs,
    );
    eprintln!("failover after {after_epochs} epochs: {f:?}");
    assert!(f.committed_at_kill >= after_epochs);
    assert!(f.first_restored > f.released);
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
