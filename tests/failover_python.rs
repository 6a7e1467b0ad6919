//! Failover of a Python program (dicts, lists, a big list, checked every iteration).

use remus::{failover_scenario, progs, PYTHON};

/// Iterations the restored program must run (and check) after the failover.
const RUN_AFTER: u64 = 100;

fn run(after_epochs: u64) {
    run_script(&progs().python_state, after_epochs);
}

fn run_script(script: &std::path::Path, after_epochs: u64) {
    let script = script.to_str().expect("utf-8 path").to_string();
    // ITERATIONS 0: until the scenario's stop file appears.
    let f = failover_scenario(
        std::path::Path::new(PYTHON),
        &[&script, "0"],
        after_epochs,
        RUN_AFTER,
    );
    eprintln!(
        "failover after {after_epochs} epochs: {f:?}; output ahead of commit: {}",
        f.output_ahead()
    );
    assert!(f.committed_at_kill >= after_epochs);
    assert!(f.first_restored > f.known_committed);
    assert!(f.last_restored >= f.first_restored + RUN_AFTER - 1);
    // DESIGN section 4: output leaves only once its epoch is committed.
    assert_eq!(
        f.output_ahead(),
        0,
        "the primary let out iterations up to {} but the restored program resumed at {}",
        f.released,
        f.first_restored
    );
}

#[test]
fn python_failover_after_5_epochs() {
    run(5);
}

#[test]
fn python_failover_after_40_epochs() {
    run(40);
}

/// Threads (`threading`, `queue.Queue`, a lock and a condition), checked after the failover.
#[test]
fn python_threads_failover_after_10_epochs() {
    run_script(&progs().python_threads, 10);
}
