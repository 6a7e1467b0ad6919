//! Debian's `memcached -t 4` (a listener, four workers and its maintenance threads),
//! unmodified, protected with every thread in each epoch: sets acknowledged (`STORED`) before
//! a `kill -9` of the primary side are all readable from the restored server. Without memcached
//! the test fails, saying what to install (`.ci/run --setup-only` installs it).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use remus::{s, wait_for, Protected, ProtectedOpts, Standby};

const KEYS: usize = 300;

struct Memcached {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Memcached {
    fn connect(port: u16) -> std::io::Result<Memcached> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_read_timeout(Some(Duration::from_secs(20)))?;
        // write! sends a command in pieces: without this, Nagle and delayed ACKs add 40 ms each.
        w.set_nodelay(true)?;
        Ok(Memcached {
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }
    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end().to_string())
    }
    fn set(&mut self, k: &str, v: &str) -> std::io::Result<String> {
        write!(self.w, "set {k} 0 0 {}\r\n{v}\r\n", v.len())?;
        self.line()
    }
    fn get(&mut self, k: &str) -> std::io::Result<Option<String>> {
        write!(self.w, "get {k}\r\n")?;
        let l = self.line()?;
        if l == "END" {
            return Ok(None);
        }
        if !l.starts_with("VALUE ") {
            return Err(std::io::Error::other(format!("get answered {l:?}")));
        }
        let v = self.line()?;
        let end = self.line()?;
        if end != "END" {
            return Err(std::io::Error::other(format!("get ended with {end:?}")));
        }
        Ok(Some(v))
    }
}

#[test]
fn memcached_with_4_threads_keeps_every_acknowledged_set() {
    let bin = remus::require_program("/usr/bin/memcached", "memcached");
    let long = Duration::from_secs(120);
    let port = remus::free_port();
    let port_s = port.to_string();
    let standby = Standby::start(500);
    let mut app = Protected::start(
        Path::new(&bin),
        &[
            "-t",
            "4",
            "-l",
            "127.0.0.1",
            "-p",
            &port_s,
            "-U",
            "0",
            "-u",
            "root",
            "-m",
            "64",
        ],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let report = || format!("{}{}", app.report(), standby.report());
    let mut clients: Vec<Memcached> = (0..4)
        .map(|_| {
            wait_for("memcached to answer", long, &report, || {
                Memcached::connect(port).ok()
            })
        })
        .collect();
    app.wait_status("protected", long, |v| {
        v.get("protected").and_then(|p| p.as_bool()) == Some(true)
    });
    let tids = remus::thread_ids(app.pid());
    let threads = tids.len();
    assert!(
        threads >= 5,
        "memcached -t 4 runs its threads ({threads} found)"
    );
    // Four connections: memcached hands each to a worker thread in turn.
    for i in 0..KEYS {
        let c = &mut clients[i % 4];
        let r = c
            .set(&format!("key{i}"), &format!("value-{i}"))
            .unwrap_or_else(|e| panic!("set {i}: {e}\n{}", report()));
        assert_eq!(r, "STORED", "set {i}\n{}", report());
    }
    let v = app.status().unwrap_or_else(|e| panic!("status: {e}"));
    assert_eq!(
        v.get("protected").and_then(|p| p.as_bool()),
        Some(true),
        "still protected after the sets: {v}\n{}",
        report()
    );
    // The threads at the kill (an idle server creates none meanwhile).
    let tids = remus::thread_ids(app.pid());
    app.kill_primary_side();
    drop(clients);
    let report = || format!("{}{}", app.report(), standby.report());
    let sv = wait_for("the standby to take over", long, &report, || {
        standby
            .status()
            .ok()
            .filter(|v| s(v, "state") == "took_over")
    });
    // Every thread came back, with its own thread id.
    let restored = sv
        .get("restored_pid")
        .and_then(|p| p.as_i64())
        .unwrap_or_else(|| panic!("no restored_pid in {sv}"));
    assert_eq!(
        remus::thread_ids(restored as i32),
        tids,
        "the restored process has the threads the primary had\n{}",
        report()
    );
    let mut c = wait_for("the restored memcached to answer", long, &report, || {
        Memcached::connect(port).ok()
    });
    for i in 0..KEYS {
        let got = c
            .get(&format!("key{i}"))
            .unwrap_or_else(|e| panic!("get {i}: {e}\n{}", report()));
        assert_eq!(
            got.as_deref(),
            Some(format!("value-{i}").as_str()),
            "key{i} was stored before the failover\n{}",
            report()
        );
    }
    assert_eq!(c.set("after", "x").expect("set after"), "STORED");
}
