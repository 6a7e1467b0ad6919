//! The test programs on their own, without remus: they finish their iterations, and their
//! checks do catch a difference (a check that cannot fail would prove nothing in the
//! failover tests).

use std::process::Command;
use std::time::Duration;

use remus::{iters, progs, run_with_timeout, PYTHON};

const LONG: Duration = Duration::from_secs(120);

fn run(prog: &str, args: &[&str]) -> (Option<i32>, String) {
    let (st, out, err) = run_with_timeout(Command::new(prog).args(args), LONG);
    let st = st.unwrap_or_else(|| panic!("{prog} {args:?} did not finish\n{out}\n{err}"));
    (st.code(), out)
}

fn memcheck() -> String {
    progs().memcheck.to_str().expect("utf-8").to_string()
}

fn python_state() -> String {
    progs().python_state.to_str().expect("utf-8").to_string()
}

#[test]
fn memcheck_runs_clean() {
    // 1100 iterations: every small block is reallocated and freed at least once.
    let (code, out) = run(&memcheck(), &["1100", "--sleep-us", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("start pid "), "{out}");
    assert_eq!(
        iters(&out.lines().collect::<Vec<_>>()),
        (1..=1100).collect::<Vec<_>>()
    );
    assert!(out.ends_with("done 1100\n"), "{}", remus::tail(&out, 3));
}

#[test]
fn memcheck_catches_every_kind_of_difference() {
    // --corrupt-at N changes kind N % 8; check each kind.
    let kinds = [
        "data",
        "bss",
        "stack-a",
        "stack-b",
        "libzoo-data",
        "libzoo-bss",
        "small-malloc",
        "big-malloc",
    ];
    for k in 0..8u64 {
        let at = 16 + k;
        let (code, out) = run(
            &memcheck(),
            &["40", "--sleep-us", "0", "--corrupt-at", &at.to_string()],
        );
        let want = format!("MISMATCH {} at iter {}", kinds[k as usize], at + 1);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.lines().last().is_some_and(|l| l.starts_with(&want)),
            "expected `{want}`, got:\n{}",
            remus::tail(&out, 3)
        );
    }
}

#[test]
fn python_state_runs_clean_and_catches_differences() {
    let (code, out) = run(PYTHON, &[&python_state(), "150", "--sleep-ms", "0"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        iters(&out.lines().collect::<Vec<_>>()),
        (1..=150).collect::<Vec<_>>()
    );
    assert!(out.ends_with("done 150\n"), "{}", remus::tail(&out, 3));
    for (at, what) in [
        (8, "big-list"),
        (9, "dict"),
        (10, "list-of-lists"),
        (11, "queue"),
    ] {
        let (code, out) = run(
            PYTHON,
            &[
                &python_state(),
                "30",
                "--sleep-ms",
                "0",
                "--corrupt-at",
                &at.to_string(),
            ],
        );
        assert_eq!(code, Some(1), "{out}");
        let want = format!("MISMATCH {what} at iter {}", at + 1);
        assert!(
            out.lines().last().is_some_and(|l| l.starts_with(&want)),
            "expected `{want}`, got:\n{}",
            remus::tail(&out, 3)
        );
    }
}
