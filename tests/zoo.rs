//! The zoo: one small program per kind of kernel state, each protected, failed over with
//! `kill -9` of the app and its `remusd primary`, and checked by the program itself once the
//! standby restored it (`tests/zoo/*.c`; each prints `ZOO <name> OK`).

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use remus::zoo::zoo_failover;
use remus::{free_port, wait_for, TempDir};

#[test]
fn zoo_pipe_with_unread_bytes() {
    zoo_failover("pipe", &[], |_| {});
}

#[test]
fn zoo_epoll_set_with_data_words() {
    zoo_failover("epoll", &[], |_| {});
}

#[test]
fn zoo_eventfd_counter() {
    zoo_failover("eventfd", &[], |_| {});
}

#[test]
fn zoo_timerfd_setting() {
    zoo_failover("timerfd", &[], |_| {});
}

#[test]
fn zoo_signalfd_mask() {
    zoo_failover("signalfd", &[], |_| {});
}

#[test]
fn zoo_signal_handlers_mask_altstack() {
    zoo_failover("signals", &[], |_| {});
}

#[test]
fn zoo_file_at_offset() {
    let dir = TempDir::new("zf");
    let f = dir.path().join("data");
    zoo_failover("file", &[f.to_str().unwrap()], |_| {});
}

/// Memory and a descriptor made by raw system calls (no hook sees them) between two epochs of
/// the steady state, where the handler takes its quick checks: found at the next epoch.
#[test]
fn zoo_raw_syscalls_behind_the_hooks() {
    let dir = TempDir::new("zr");
    let f = dir.path().join("data");
    zoo_failover("raw", &[f.to_str().unwrap()], |_| {});
}

/// Sends a line, returns the answer line; retries the connection until `timeout`.
fn ask<S: std::io::Read + Write>(
    what: &str,
    timeout: Duration,
    connect: impl Fn() -> std::io::Result<S>,
    report: &dyn Fn() -> String,
) -> String {
    wait_for(what, timeout, report, || {
        let mut c = connect().ok()?;
        c.write_all(b"ping\n").ok()?;
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    })
}

#[test]
fn zoo_listening_tcp_socket_answers_after_failover() {
    let port = free_port();
    let secret = 1_000_003 + std::process::id() as u64;
    let run = zoo_failover(
        "tcp",
        &[&port.to_string(), &secret.to_string()],
        |standby| {
            let got = ask(
                &format!("an answer on 127.0.0.1:{port} from the restored program"),
                Duration::from_secs(30),
                || {
                    let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    Ok(s)
                },
                &|| standby.report(),
            );
            assert_eq!(
                got,
                format!("ZOO-ANSWER tcp {secret}"),
                "{}",
                standby.report()
            );
        },
    );
    assert!(
        run.standby_log.contains("listening socket restored"),
        "the standby log does not say it restored the listening socket"
    );
}

#[test]
fn zoo_listening_unix_socket_answers_after_failover() {
    let dir = TempDir::new("zu");
    let path = dir.path().join("srv.sock");
    let secret = 7_000_001 + std::process::id() as u64;
    zoo_failover(
        "unix",
        &[path.to_str().unwrap(), &secret.to_string()],
        |standby| {
            let got = ask(
                &format!("an answer on {} from the restored program", path.display()),
                Duration::from_secs(30),
                || {
                    let s = std::os::unix::net::UnixStream::connect(&path)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    Ok(s)
                },
                &|| standby.report(),
            );
            assert_eq!(
                got,
                format!("ZOO-ANSWER unix {secret}"),
                "{}",
                standby.report()
            );
        },
    );
}

#[test]
fn zoo_unrestorable_descriptor_is_named_while_running() {
    let standby = remus::Standby::start(500);
    let dir = TempDir::new("zn");
    let stop = dir.path().join("stop");
    let app = remus::Protected::start(
        &remus::zoo::zoo_prog("unsupported"),
        &["--stop-file", stop.to_str().unwrap()],
        &remus::ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    app.wait_line("start ready", Duration::from_secs(60), |l| {
        l.starts_with("start ready")
    });
    let v = app.wait_status(
        "unrestorable_fds names the inotify descriptor",
        Duration::from_secs(60),
        |v| {
            v["unrestorable_fds"].as_array().is_some_and(|a| {
                a.iter().any(|d| {
                    d.as_str()
                        .is_some_and(|d| d.starts_with("fd 33:") && d.contains("inotify"))
                })
            })
        },
    );
    // Only that one: the shim's own descriptors and stdio are not the app's problem.
    assert_eq!(
        v["unrestorable_fds"].as_array().map(|a| a.len()),
        Some(1),
        "{v}"
    );
    assert_eq!(v["protected"], serde_json::Value::Bool(true), "{v}");
}

/// Regular files in the program's working directory (replicated by default): a stdio log and
/// a pwrite counter, written without pause across the failover. The restored program checks
/// its own files (the standby's copies) against its memory; then the copies under the
/// standby's `--file-root` must hold exactly what it said it wrote last.
#[test]
fn zoo_files_written_in_cwd_are_replicated() {
    let run = remus::zoo::zoo_failover_with(
        "files",
        &[],
        |_| {},
        |standby, out| {
            // `files final N cwd PATH`
            let fin = out
                .lines()
                .find_map(|l| l.strip_prefix("files final "))
                .unwrap_or_else(|| panic!("no 'files final' line in {out:?}"));
            let (last, cwd) = fin.split_once(" cwd ").expect("files final N cwd PATH");
            let last: u64 = last.parse().expect("a line count");
            let copy = standby.file_root().join(cwd.trim_start_matches('/'));
            let log = std::fs::read_to_string(copy.join("log.txt")).unwrap_or_else(|e| {
                panic!("the standby's copy of log.txt in {}: {e}", copy.display())
            });
            let want: String = (1..=last).map(|i| format!("line {i}\n")).collect();
            assert!(
                log == want,
                "the standby's copy of log.txt is not lines 1..={last}: {} bytes, ends {:?}",
                log.len(),
                &log[log.len().saturating_sub(40)..]
            );
            let counter = std::fs::read_to_string(copy.join("counter")).expect("counter copy");
            assert_eq!(
                counter,
                format!("{last:010}\n"),
                "the standby's copy of counter"
            );
        },
    );
    // The program wrote before the failover too (50 lines before `ready`, more until the
    // kill): the restored one carried on from the committed count, not from zero.
    assert!(run.ready.contains(" cwd /"), "ready line: {}", run.ready);
}
