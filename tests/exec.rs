//! Programs started the way services start (issue 11): through wrapper scripts that `exec` the
//! real program, after forking helpers, and programs that `exec` themselves. Protection
//! follows the process `remus-run` started into whatever it finally becomes (same pid, same
//! `remusd primary`, same standby); the helpers a wrapper forks run unprotected and quietly.
//! Each case is failed over with `kill -9` of the primary side and its state checked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use remus::{failover_scenario, progs, Failover, TempDir, PYTHON};

/// Iterations the restored program must run (and check) after the failover.
const RUN_AFTER: u64 = 50;

/// Writes an executable script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write the script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn checked(what: &str, f: Failover) {
    eprintln!(
        "{what}: {f:?}; output ahead of commit: {}",
        f.output_ahead()
    );
    assert!(f.first_restored > f.known_committed, "{what}: {f:?}");
    assert!(
        f.last_restored >= f.first_restored + RUN_AFTER - 1,
        "{what}: {f:?}"
    );
    assert_eq!(
        f.output_ahead(),
        0,
        "{what}: the primary let out iterations up to {} but the restored program resumed at {}",
        f.released,
        f.first_restored
    );
}

#[test]
fn sh_wrapper_that_execs_the_program() {
    let dir = TempDir::new("exec-sh");
    let memcheck = progs().memcheck.display().to_string();
    let w = script(
        dir.path(),
        "start.sh",
        &format!("#!/bin/sh\nexec {memcheck} \"$@\"\n"),
    );
    checked("sh wrapper", failover_scenario(&w, &["0"], 10, RUN_AFTER));
}

#[test]
fn bash_wrapper_that_forks_helpers_before_its_exec() {
    let dir = TempDir::new("exec-bash");
    let memcheck = progs().memcheck.display().to_string();
    // Command substitutions and a pipeline: children of the protected shell, each with the
    // shim preloaded; none may start a controller or print a remus line.
    let w = script(
        dir.path(),
        "start.bash",
        &format!(
            "#!/bin/bash\nset -e\nkernel=$(uname -s)\nn=$(echo a b c | wc -w)\n\
             [ \"$kernel\" = Linux ] && [ \"$n\" = 3 ] || exit 9\nexec {memcheck} \"$@\"\n"
        ),
    );
    checked("bash wrapper", failover_scenario(&w, &["0"], 10, RUN_AFTER));
}

#[test]
fn a_wrapper_whose_subshell_outlives_the_fork_grace_stays_protected() {
    // `$(sleep 7; echo ok)` keeps a bash subshell (the same program as the wrapper) alive
    // beside it for longer than remusd's multi-process grace, while the wrapper waits for it:
    // a helper, not a second process of the program.
    let dir = TempDir::new("exec-slow");
    let memcheck = progs().memcheck.display().to_string();
    let w = script(
        dir.path(),
        "start.bash",
        &format!(
            "#!/bin/bash\nset -e\nx=$(sleep 7; echo ok)\n[ \"$x\" = ok ] || exit 9\nexec {memcheck} \"$@\"\n"
        ),
    );
    checked(
        "slow subshell",
        failover_scenario(&w, &["0"], 10, RUN_AFTER),
    );
}

#[test]
fn python_through_a_pyenv_style_shim() {
    // pyenv's shim: a bash script that exports a few variables and execs `pyenv exec`, itself a
    // bash script that runs helpers (its version lookup) and execs the real interpreter.
    let dir = TempDir::new("exec-pyenv");
    let root = dir.path();
    std::fs::create_dir_all(root.join("shims")).expect("mkdir");
    std::fs::create_dir_all(root.join("libexec")).expect("mkdir");
    std::fs::write(root.join("version"), "3-system\n").expect("write");
    script(
        &root.join("libexec"),
        "pyenv",
        &format!(
            "#!/usr/bin/env bash\nset -e\n[ \"$1\" = exec ] || exit 2\nshift\nprogram=$1\nshift\n\
             version=$(cat \"$PYENV_ROOT/version\")\n[ -n \"$version\" ] || exit 3\n\
             case \"$program\" in python3) exec {PYTHON} \"$@\" ;; *) exit 4 ;; esac\n"
        ),
    );
    let shim = script(
        &root.join("shims"),
        "python3",
        &format!(
            "#!/usr/bin/env bash\nset -e\nprogram=\"${{0##*/}}\"\nexport PYENV_ROOT=\"{}\"\n\
             exec \"$PYENV_ROOT/libexec/pyenv\" exec \"$program\" \"$@\"\n",
            root.display()
        ),
    );
    let py = progs().python_state.display().to_string();
    checked(
        "pyenv-style python3",
        failover_scenario(&shim, &[&py, "0"], 10, RUN_AFTER),
    );
}

#[test]
fn the_execl_family_is_followed_too() {
    // Variadic: the shim's entry points collect the list from registers and the stack.
    for via in ["execl", "execlp", "execle"] {
        let f = failover_scenario(
            &progs().selfexec,
            &["0", "--exec-at", "5", "--via", via],
            20,
            RUN_AFTER,
        );
        assert!(
            f.known_committed > 5,
            "{via}: the committed state is from after the exec: {f:?}"
        );
        checked(via, f);
    }
}

#[test]
fn a_program_that_execs_itself_with_new_arguments() {
    // selfexec execs itself at iteration 5; the failover comes 20 committed epochs later, so
    // the committed state is the new image's (its iteration count is past the exec).
    let f = failover_scenario(&progs().selfexec, &["0", "--exec-at", "5"], 20, RUN_AFTER);
    assert!(
        f.known_committed > 5,
        "the committed state is from after the exec: {f:?}"
    );
    checked("selfexec", f);
}
