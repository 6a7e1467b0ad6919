//! Debian's `beanstalkd` (a job queue), unmodified, started through a start script of its own
//! that forks helpers and then `exec`s the server (issue 11): protected as the server it
//! becomes, jobs put by a client, `kill -9` of the primary side, and every job whose
//! `INSERTED` reply the client saw is in the restored queue on the standby. Without beanstalkd
//! the test fails, saying what to install (`.ci/run --setup-only` installs it).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use remus::{controllers_of, s, wait_for, Protected, ProtectedOpts, Standby, TempDir};

const JOBS: usize = 200;

/// One beanstalkd connection, line protocol (`\r\n`).
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Client {
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
    /// `put`: the job's id from `INSERTED id`.
    fn put(&mut self, body: &str) -> std::io::Result<u64> {
        write!(self.w, "put 0 0 120 {}\r\n{body}\r\n", body.len())?;
        let l = self.line()?;
        l.strip_prefix("INSERTED ")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("put answered {l:?}")))
    }
    /// `peek id`: the job's body, or None when the queue does not have it.
    fn peek(&mut self, id: u64) -> std::io::Result<Option<String>> {
        write!(self.w, "peek {id}\r\n")?;
        let l = self.line()?;
        if l == "NOT_FOUND" {
            return Ok(None);
        }
        if !l.starts_with("FOUND ") {
            return Err(std::io::Error::other(format!("peek answered {l:?}")));
        }
        let body = self.line()?;
        Ok(Some(body))
    }
}

#[test]
fn beanstalkd_through_a_start_script_keeps_every_acknowledged_job() {
    let bin = remus::require_program("/usr/bin/beanstalkd", "beanstalkd");
    let long = Duration::from_secs(120);
    let dir = TempDir::new("beanstalkd");
    let port = remus::free_port();
    // A service start script: helpers forked first (command substitutions), then exec.
    let script = dir.path().join("beanstalkd-start");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nhost=$(hostname)\nnow=$(date +%s)\n[ -n \"$host\" ] && [ -n \"$now\" ]\n\
             exec {} -l 127.0.0.1 -p \"$1\"\n",
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let standby = Standby::start(500);
    let port_s = port.to_string();
    let mut app = Protected::start(
        Path::new(&script),
        &[&port_s],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let report = || format!("{}{}", app.report(), standby.report());
    let mut c = wait_for("beanstalkd to answer", long, &report, || {
        Client::connect(port).ok()
    });
    // The server itself is the protected process now: same pid, one remusd.
    let st = app.wait_status("protected after the exec", long, |v| {
        v.get("protected").and_then(|p| p.as_bool()) == Some(true)
    });
    assert_eq!(
        controllers_of(app.pid()).len(),
        1,
        "exactly one remusd primary for the program: {st}\n{}",
        report()
    );
    assert!(
        remus::comm(app.pid()).is_some_and(|c| c.starts_with("beanstalkd")),
        "the protected pid runs beanstalkd now: {:?}",
        remus::comm(app.pid())
    );
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let id = c
            .put(&format!("job-{i}"))
            .unwrap_or_else(|e| panic!("put {i}: {e}\n{}", report()));
        ids.push((id, format!("job-{i}")));
    }
    // Every INSERTED reply above was released only once its epoch was committed.
    app.kill_primary_side();
    drop(c);
    let report = || format!("{}{}", app.report(), standby.report());
    wait_for("the standby to take over", long, &report, || {
        standby
            .status()
            .ok()
            .filter(|v| s(v, "state") == "took_over")
    });
    let mut c = wait_for("the restored beanstalkd to answer", long, &report, || {
        Client::connect(port).ok()
    });
    for (id, body) in &ids {
        let got = c
            .peek(*id)
            .unwrap_or_else(|e| panic!("peek {id}: {e}\n{}", report()));
        assert_eq!(
            got.as_deref(),
            Some(body.as_str()),
            "job {id} was acknowledged before the failover but the restored queue has {got:?}\n{}",
            report()
        );
    }
    // And the restored server takes new work.
    let id = c.put("after").expect("put after failover");
    assert!(id > ids.last().map(|x| x.0).unwrap_or(0), "new id {id}");
    assert_eq!(
        std::fs::read_to_string(&standby.app_stderr).unwrap_or_default(),
        "",
        "the restored program wrote nothing on stderr"
    );
}
