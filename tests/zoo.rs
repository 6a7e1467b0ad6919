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
