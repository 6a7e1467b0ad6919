//! A real etcd (Debian's `etcd-server`) for the arbiter tests: one member on loopback, with
//! its own data directory, killed on drop. A test that needs it fails when it is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{require_program, tail_file, wait_for, TempDir};

/// An etcd member on 127.0.0.1:`client`; its peer URL is a unix socket in its directory
/// (`unix://localhost:PORT` names a socket file `localhost:PORT` in etcd's working directory),
/// so that each test takes one TCP port.
pub struct Etcd {
    child: Option<Child>,
    pub client: u16,
    pub url: String,
    pub log: PathBuf,
    /// Its data directory, removed after etcd is killed (fields drop after `drop`).
    _dir: TempDir,
}

impl Etcd {
    /// Starts etcd with its client URL on `127.0.0.1:port` (each test picks its own in
    /// 23790-23799), and waits until `/health` says true.
    pub fn start(port: u16) -> Etcd {
        let bin = require_program("etcd", "etcd-server");
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} on 127.0.0.1 is in use: the etcd for this test cannot start there (a \
             leftover etcd? `ss -ltnp | grep {port}`)"
        );
        let dir = TempDir::new("etcd");
        let log = dir.path().join("etcd.log");
        let url = format!("http://127.0.0.1:{port}");
        let peer = format!("unix://localhost:{port}");
        let out = std::fs::File::create(&log).expect("creating etcd.log");
        let child = Command::new(&bin)
            .args(["--name", "remus-test"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("remus-test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup etcd.log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let e = Etcd {
            child: Some(child),
            client: port,
            url,
            log,
            _dir: dir,
        };
        wait_for(
            "etcd to answer /health",
            Duration::from_secs(30),
            &|| tail_file(&e.log, 20),
            || e.healthy().then_some(()),
        );
        e
    }

    /// `GET /health` answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.client).into(),
            Duration::from_millis(500),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Stops etcd for good (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn report(&self) -> String {
        format!("etcd log (last lines):\n{}", tail_file(&self.log, 15))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
