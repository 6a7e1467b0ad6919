//! Helpers for the socket output-commit tests (`tests/output_stream.rs`, `tests/servers.rs`):
//! the `netserve` test server and TCP clients that never wait without a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{repo_root, target_dir};

/// `tests/progs/netserve.c`, compiled once per process (`netserve stream|echo PORT
/// [--stop-file F]`).
pub fn netserve() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = target_dir().join("remus-test-progs");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let dst = dir.join("netserve");
        let tmp = dir.join(format!(".netserve.{}", std::process::id()));
        crate::require_program("cc", "gcc libc6-dev");
        let out = std::process::Command::new("cc")
            .args(["-g", "-O1", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&tmp)
            .arg(repo_root().join("tests/progs/netserve.c"))
            .output()
            .expect("cc");
        assert!(
            out.status.success(),
            "compiling netserve failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &dst).expect("rename");
        dst
    })
    .clone()
}

/// Connects to 127.0.0.1:`port` with a 2 s connect timeout and `io` read/write timeouts.
pub fn connect(port: u16, io: Duration) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(io))?;
    s.set_write_timeout(Some(io))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How one HTTP request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with the expected body.
    Ok,
    /// Refused, reset, or closed before a complete answer: what a failover may cause.
    ConnError(String),
    /// No answer within the timeout: never acceptable.
    Hung(String),
    /// An answer, but not the right one.
    Wrong(String),
}

/// `GET path` with `Connection: close`; the answer must be 200 and end with `body`.
pub fn http_get(port: u16, path: &str, body: &str, timeout: Duration) -> Outcome {
    let mut s = match connect(port, timeout) {
        Ok(s) => s,
        Err(e) if is_timeout(&e) => return Outcome::Hung(format!("connect: {e}")),
        Err(e) => return Outcome::ConnError(format!("connect: {e}")),
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return if is_timeout(&e) {
            Outcome::Hung(format!("send: {e}"))
        } else {
            Outcome::ConnError(format!("send: {e}"))
        };
    }
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if is_timeout(&e) => {
            return Outcome::Hung(format!("read after {} bytes: {e}", got.len()))
        }
        Err(e) => return Outcome::ConnError(format!("read after {} bytes: {e}", got.len())),
    }
    let text = String::from_utf8_lossy(&got);
    if got.is_empty() {
        return Outcome::ConnError("closed without an answer".into());
    }
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        // A partial status line is a cut connection; a complete other status is wrong.
        return if text.contains("\r\n\r\n") {
            Outcome::Wrong(text.lines().next().unwrap_or("").to_string())
        } else {
            Outcome::ConnError(format!("cut after {} bytes", got.len()))
        };
    }
    match text.split_once("\r\n\r\n") {
        Some((_, b)) if b == body => Outcome::Ok,
        Some((_, b)) if body.starts_with(b) => {
            Outcome::ConnError(format!("body cut after {} bytes", b.len()))
        }
        _ => Outcome::Wrong(format!("unexpected answer: {}", crate::tail(&text, 5))),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Round trips of `n` one-line requests on one connection to a `netserve echo` on `port`,
/// with a pseudo-random pause of 0-5 ms before each (so that requests do not fall into step
/// with the epochs). Returns the sorted latencies.
pub fn echo_latencies(port: u16, n: usize) -> Vec<Duration> {
    let s = connect(port, Duration::from_secs(10)).expect("connect to netserve echo");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ port as u64;
    let mut out = Vec::with_capacity(n);
    let mut line = String::new();
    for i in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 5000));
        let t = Instant::now();
        w.write_all(format!("q{i}\n").as_bytes()).expect("send");
        line.clear();
        r.read_line(&mut line).expect("answer");
        out.push(t.elapsed());
        assert!(line.starts_with(&format!("q{i} ")), "bad answer {line:?}");
    }
    out.sort();
    out
}

/// p50 and p99 of sorted durations, in microseconds.
pub fn p50_p99_us(v: &[Duration]) -> (u128, u128) {
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_micros();
    (at(0.5), at(0.99))
}
