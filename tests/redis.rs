//! Debian's `redis-server` (four helper threads even when idle: `bio_close_file`,
//! `bio_aof_fsync`, `bio_lazy_free`, `jemalloc_bg_thd`), unmodified, protected with every
//! thread in each epoch: a client writes keys and counters, each write acknowledged, the
//! primary side is killed with `kill -9`, and every write the client saw acknowledged is there
//! in the restored server on the standby. The same with `appendonly yes` (its AOF in the
//! program's working directory, which remus replicates). Without redis-server the test fails,
//! saying what to install (`.ci/run --setup-only` installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use remus::{s, wait_for, Protected, ProtectedOpts, Standby};

const KEYS: usize = 300;

/// One RESP connection.
struct Redis {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// A RESP reply (what the tests use of it).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Error(String),
}

impl Redis {
    fn connect(port: u16) -> std::io::Result<Redis> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Redis {
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }

    fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.w.write_all(out.as_bytes())?;
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = l.trim_end();
        let (kind, rest) = l.split_at(1.min(l.len()));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().map_err(std::io::Error::other)?),
            "$" => {
                let n: i64 = rest.parse().map_err(std::io::Error::other)?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            _ => return Err(std::io::Error::other(format!("unexpected reply {l:?}"))),
        })
    }
}

fn failover(appendonly: bool) {
    let bin = remus::require_program("/usr/bin/redis-server", "redis-server");
    let long = Duration::from_secs(120);
    let port = remus::free_port();
    let port_s = port.to_string();
    let standby = Standby::start(500);
    let aof = if appendonly { "yes" } else { "no" };
    let mut app = Protected::start(
        Path::new(&bin),
        &[
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--dir",
            ".",
            "--save",
            "",
            "--appendonly",
            aof,
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let report = || format!("{}{}", app.report(), standby.report());
    let mut c = wait_for("redis to answer", long, &report, || {
        Redis::connect(port).ok()
    });
    let st = app.wait_status("protected", long, |v| {
        v.get("protected").and_then(|p| p.as_bool()) == Some(true)
    });
    let tids = remus::thread_ids(app.pid());
    let threads = tids.len();
    assert!(
        threads >= 4,
        "redis-server runs its helper threads ({threads} found): {st}"
    );
    for i in 0..KEYS {
        let r = c
            .cmd(&["SET", &format!("key:{i}"), &format!("value-{i}")])
            .unwrap_or_else(|e| panic!("SET {i}: {e}\n{}", report()));
        assert_eq!(r, Reply::Status("OK".into()), "SET {i}");
        let r = c
            .cmd(&["INCR", "counter"])
            .unwrap_or_else(|e| panic!("INCR {i}: {e}\n{}", report()));
        assert_eq!(r, Reply::Int(i as i64 + 1), "INCR {i}");
    }
    let v = app.status().unwrap_or_else(|e| panic!("status: {e}"));
    assert_eq!(
        v.get("protected").and_then(|p| p.as_bool()),
        Some(true),
        "still protected after the writes: {v}\n{}",
        report()
    );
    // Every reply above was released only once its epoch was committed.
    // The threads at the kill (an idle server creates none meanwhile).
    let tids = remus::thread_ids(app.pid());
    app.kill_primary_side();
    drop(c);
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
    let mut c = wait_for("the restored redis to answer", long, &report, || {
        Redis::connect(port).ok()
    });
    for i in 0..KEYS {
        let got = c
            .cmd(&["GET", &format!("key:{i}")])
            .unwrap_or_else(|e| panic!("GET {i}: {e}\n{}", report()));
        assert_eq!(
            got,
            Reply::Bulk(Some(format!("value-{i}").into_bytes())),
            "key:{i} was acknowledged before the failover\n{}",
            report()
        );
    }
    assert_eq!(
        c.cmd(&["GET", "counter"]).expect("GET counter"),
        Reply::Bulk(Some(KEYS.to_string().into_bytes())),
        "the counter holds every acknowledged INCR\n{}",
        report()
    );
    // The restored server takes new writes, through its threads (an AOF write and fsync).
    assert_eq!(
        c.cmd(&["INCR", "counter"]).expect("INCR after"),
        Reply::Int(KEYS as i64 + 1)
    );
    if appendonly {
        assert_eq!(
            c.cmd(&["BGREWRITEAOF"])
                .map(|r| matches!(r, Reply::Status(_)))
                .ok(),
            Some(true),
            "the restored server rewrites its AOF"
        );
    }
}

#[test]
fn redis_failover_keeps_every_acknowledged_write() {
    failover(false);
}

#[test]
fn redis_with_appendonly_failover_keeps_every_acknowledged_write() {
    failover(true);
}
