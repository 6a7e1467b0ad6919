//! Failover of a Python program (dicts, lists, a big list, checked every iteration).

use remus::{failover_scenario, progs, PYTHON};

/// Iterations in all (about 12 ms each).
const TARGET: u64 = 900;

fn run(after_epochs: u64) {
    let script = progs()
        .python_state
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let f = failover_scenario(
        std::path::Path::new(PYTHON),
        &[&script, &TARGET.to_string()],
        TARGET,
        after_epochs,
    );
    eprintln!("failover after {after_epochs} epochs: {f:?}");
    assert!(f.committed_at_kill >= after_epochs);
    assert!(f.first_restored > f.released);
}

#[test]
fn python_failover_after_5_epochs() {
    run(5);
}

#[test]
fn python_failover_after_40_epochs() {
    run(40);
}
