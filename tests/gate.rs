//! The packet gate (issue 12, DESIGN §9): a program run by `scripts/remus-run --service-addr`
//! lives in a network namespace of its own behind a veth pair, at the service address, and
//! every packet it sends waits in remusd primary's NFQUEUE gate until the epoch that produced
//! it is committed by the standby.
//!
//! Three "hosts" in network namespaces on one bridge (`remus::lan`, 10.91.0.0/16, `rg-`):
//! a client, a primary (runs Debian's lighttpd, beanstalkd or a python3 UDP echo server
//! through remus-run) and a standby. Shown here:
//! the client reaches the program at the service address; with the standby frozen (SIGSTOP:
//! no acks) a reply is held in the gate and never reaches the client, and once the standby
//! runs again (SIGCONT) it arrives, for a TCP reply (lighttpd) and a UDP one (a python3 echo
//! server); a 24 MiB download through the gate arrives byte for byte;
//! the host's side (veth, rule, proxy entry) is gone when the program ends; a dead gate
//! (remusd primary killed) drops instead of passing, and the program's end removes its rule
//! too; beanstalkd works at the service address; and the start-up
//! checks refuse a missing device and an address already in use, saying so.
//!
//! Needs root, iproute2, iptables, nsenter, the kernel's NFQUEUE and lighttpd: without them
//! the tests fail saying what is missing (`.ci/run --setup-only` installs the packages).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use remus::lan::Lan;
use remus::{bins, n, repo_root, require_program, s, signal, test_key_file, wait_for, TempDir};

const PORT: u16 = 8080;
const LONG: Duration = Duration::from_secs(60);
const BODY: &str = "hello through the packet gate\n";

/// A client, a primary running lighttpd under remus-run --service-addr, and a standby.
struct Rig {
    standby: Child,
    primary: Child,
    control: PathBuf,
    service: String,
    dir: TempDir,
    /// Last: its drop kills whatever is left in the namespaces and deletes them.
    lan: Lan,
}

fn lighttpd_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{www}\"\n\
             server.bind = \"0.0.0.0\"\n\
             server.port = {PORT}\n\
             server.errorlog = \"{dir}/error.log\"\n\
             index-file.names = (\"index.html\")\n",
            www = dir.join("www").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    conf
}

fn preflight() {
    require_program("/usr/sbin/lighttpd", "lighttpd");
    require_program("iptables", "iptables");
    require_program("nsenter", "util-linux");
    require_program("ip", "iproute2");
}

impl Rig {
    fn report(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("primary.err")).unwrap_or_default();
        format!(
            "remus-run stderr:\n{}\nstandby log:\n{}\nprimary status: {:?}",
            remus::tail(&log, 30),
            remus::tail_file(&self.dir.path().join("standby.log"), 30),
            remus::status(&self.control).ok()
        )
    }

    /// Starts the standby, then lighttpd through remus-run in the primary host, and waits
    /// until it is protected.
    fn start(extra_primary: &str) -> Rig {
        Rig::start_prog(extra_primary, None)
    }

    /// [`Rig::start`] with another program than lighttpd (its argv).
    fn start_prog(extra_primary: &str, prog: Option<Vec<String>>) -> Rig {
        preflight();
        let lan = Lan::create(&["client", "primary", "standby"]);
        let dir = TempDir::new("gate");
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::write(dir.path().join("www/index.html"), BODY).unwrap();
        let conf = lighttpd_conf(dir.path());
        let prog = prog.unwrap_or_else(|| {
            vec![
                "/usr/sbin/lighttpd".into(),
                "-D".into(),
                "-f".into(),
                conf.display().to_string(),
            ]
        });
        let sb_addr = format!("{}:7000", lan.addr("standby"));
        let standby = lan
            .command("standby", &bins().remusd)
            .args(["standby", "--listen", &sb_addr, "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--key-file")
            .arg(test_key_file())
            // The standby is frozen on purpose below: it must not take over meanwhile.
            .args(["--timeout-ms", "60000", "--log-file"])
            .arg(dir.path().join("standby.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn remusd standby");
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let service = lan.spare(100);
        let control = dir.path().join("primary.sock");
        let primary = lan
            .command("primary", repo_root().join("scripts/remus-run"))
            .args(["--standby", &sb_addr, "--key-file"])
            .arg(test_key_file())
            .args(["--service-addr", &format!("{service}/24"), "--control"])
            .arg(&control)
            .arg("--")
            .args(&prog)
            .env("REMUS_LIB", &bins().lib)
            .env("REMUS_REMUSD", &bins().remusd)
            // Heartbeats every 5 s: the primary calls the standby lost only after 20 s of
            // silence, far beyond the frozen stretch below (which waits for events only).
            .env("REMUS_PRIMARY_ARGS", extra_primary)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("primary.err")).unwrap())
            .spawn()
            .expect("spawn remus-run");
        let rig = Rig {
            standby,
            primary,
            control,
            service,
            dir,
            lan,
        };
        wait_for(
            "the primary to be protected",
            LONG,
            &|| rig.report(),
            || {
                remus::status(&rig.control)
                    .ok()
                    .filter(|v| s(v, "state") == "protected")
            },
        );
        rig
    }

    /// A TCP connection from the client host to the service address.
    fn connect(&self) -> TcpStream {
        let to = format!("{}:{PORT}", self.service);
        self.lan.in_host("client", move || {
            let c = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("connecting to the service address {to}: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c
        })
    }

    /// The netfilter queues of the primary host: (packets waiting, packets queued ever).
    fn queue(&self) -> (u64, u64) {
        let out = self
            .lan
            .command("primary", "cat")
            .arg("/proc/net/netfilter/nfnetlink_queue")
            .output()
            .expect("cat nfnetlink_queue");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|w| w.parse::<u64>().unwrap_or(0))
                    .collect::<Vec<_>>()
            })
            .filter(|f| f.len() >= 8)
            .fold((0, 0), |(w, q), f| (w + f[2], q + f[7]))
    }

    fn app_pid(&self) -> i32 {
        self.primary.id() as i32
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        signal(self.standby.id() as i32, libc::SIGCONT);
        let _ = self.primary.kill();
        let _ = self.primary.wait();
        let _ = self.standby.kill();
        let _ = self.standby.wait();
    }
}

fn get(c: &mut TcpStream, path: &str) -> String {
    write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("reading the reply");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn gate_holds_a_reply_until_its_epoch_is_committed() {
    let rig = Rig::start("--heartbeat-ms 5000");
    // Reachable at the service address, from another host.
    let mut c = rig.connect();
    let reply = get(&mut c, "/index.html");
    assert!(
        reply.contains("200 OK") && reply.ends_with(BODY),
        "reply: {reply}\n{}",
        rig.report()
    );

    // The replication link is the primary host's own (outside the program's namespace, so
    // never through the gate): the standby sees it come from the host's LAN address.
    let log = std::fs::read_to_string(rig.dir.path().join("standby.log")).unwrap_or_default();
    let from = format!("primary connected peer={}:", rig.lan.addr("primary"));
    assert!(
        log.contains(&from),
        "expected '{from}' in the standby's log:\n{log}"
    );

    // Connected while the standby acks; then no acks.
    let mut c = rig.connect();
    assert!(signal(rig.standby.id() as i32, libc::SIGSTOP));
    let (_, queued_before) = rig.queue();
    write!(c, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    // lighttpd answered (its packets are in the gate), and the epoch after its answer was
    // taken and shipped: only the commit is missing.
    let st = wait_for("the reply held in the gate", LONG, &|| rig.report(), || {
        let (waiting, queued) = rig.queue();
        let st = remus::status(&rig.control).ok()?;
        let (epoch, committed) = (n(&st, "epoch")?, n(&st, "committed_epoch")?);
        (waiting > 0 && queued > queued_before && epoch > committed + 1).then_some(st)
    });
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    match c.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "the client saw the reply (or its end) before its epoch was committed: {other:?}\nstatus {st}\n{}",
            rig.report()
        ),
    }
    c.set_nonblocking(false).unwrap();
    assert!(signal(rig.standby.id() as i32, libc::SIGCONT));
    let mut out = Vec::new();
    c.read_to_end(&mut out)
        .expect("reading the reply after the commit");
    let reply = String::from_utf8_lossy(&out);
    assert!(
        reply.contains("200 OK") && reply.ends_with(BODY),
        "reply: {reply}\n{}",
        rig.report()
    );
    let st = remus::status(&rig.control).expect("status");
    assert_eq!(s(&st, "state"), "protected", "{st}");

    // The host's side goes with the program: veth, gate rule, proxy entry.
    let veth = format!("rmh{}", rig.app_pid());
    assert!(signal(rig.app_pid(), libc::SIGTERM));
    wait_for("the topology torn down", LONG, &|| rig.report(), || {
        let links = rig
            .lan
            .command("primary", "ip")
            .args(["-o", "link"])
            .output()
            .ok()?;
        let rules = rig
            .lan
            .command("primary", "iptables")
            .args(["-w", "-t", "raw", "-S", "PREROUTING"])
            .output()
            .ok()?;
        let proxy = rig
            .lan
            .command("primary", "ip")
            .args(["neigh", "show", "proxy"])
            .output()
            .ok()?;
        let gone = !String::from_utf8_lossy(&links.stdout).contains(&veth)
            && !String::from_utf8_lossy(&rules.stdout).contains("NFQUEUE")
            && !String::from_utf8_lossy(&proxy.stdout).contains(&rig.service);
        gone.then_some(())
    });
}

#[test]
fn gate_carries_a_large_download() {
    let rig = Rig::start("");
    let mut data = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(rig.dir.path().join("www/big.bin"), &data).unwrap();
    let (_, queued_before) = rig.queue();
    let mut c = rig.connect();
    let reply = {
        write!(c, "GET /big.bin HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).expect("reading the download");
        out
    };
    let body_at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or_else(|| panic!("no HTTP header in {} bytes\n{}", reply.len(), rig.report()));
    assert!(
        reply.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&reply[..body_at])
    );
    assert_eq!(
        reply.len() - body_at,
        data.len(),
        "download size\n{}",
        rig.report()
    );
    assert!(
        reply[body_at..] == data[..],
        "the download's bytes differ\n{}",
        rig.report()
    );
    let (_, queued) = rig.queue();
    assert!(
        queued > queued_before + 100,
        "the download did not cross the gate ({queued_before} -> {queued} packets queued)"
    );
    let st = remus::status(&rig.control).expect("status");
    assert_eq!(s(&st, "state"), "protected", "{st}");
    let released = st["packet_gate"]["released_packets"].as_u64().unwrap_or(0);
    assert!(released > 100, "the gate released {released} packets: {st}");
}

/// remus-run with `args` before `--` in the primary host; its exit status and stderr.
fn refused(lan: &Lan, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out: std::process::Output = lan
        .command("primary", repo_root().join("scripts/remus-run"))
        .args(args)
        .arg("--key-file")
        .arg(test_key_file())
        .args(["--", "/bin/true"])
        .env("REMUS_LIB", &bins().lib)
        .env("REMUS_REMUSD", &bins().remusd)
        .stdin(Stdio::null())
        .output()
        .expect("run remus-run");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn service_addr_start_up_checks_refuse_clearly() {
    preflight();
    let lan = Lan::create(&["client", "primary"]);
    let sb = format!("{}:7000", lan.addr("client"));
    let (st, err) = refused(
        &lan,
        &[
            "--standby",
            &sb,
            "--service-addr",
            &format!("{}/24", lan.spare(100)),
            "--service-dev",
            "nosuch0",
        ],
    );
    assert!(
        !st.success() && err.contains("nosuch0") && err.contains("no such network device"),
        "{st}: {err}"
    );
    // The client's address answers ARP: in use.
    let (st, err) = refused(
        &lan,
        &[
            "--standby",
            &sb,
            "--service-addr",
            &format!("{}/24", lan.addr("client")),
        ],
    );
    assert!(
        !st.success() && err.contains("already in use") && err.contains("answers ARP"),
        "{st}: {err}"
    );
    let (st, err) = refused(&lan, &["--standby", &sb, "--service-addr", "10.91.0.5"]);
    assert!(!st.success() && err.contains("ADDR/PREFIX"), "{st}: {err}");
    // remusd itself: the standby validates the address; the primary refuses to run a gate
    // for a program that is not in a service namespace.
    let out = std::process::Command::new(&bins().remusd)
        .args([
            "standby",
            "--listen",
            "127.0.0.1:1",
            "--state-dir",
            "/nonexistent",
            "--insecure",
        ])
        .args(["--service-addr", "10.91.0.5"])
        .env_remove("REMUS_SERVICE_ADDR")
        .output()
        .expect("remusd standby");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ADDR/PREFIX"),
        "{}: {err}",
        out.status
    );
    let out = std::process::Command::new(&bins().remusd)
        .args([
            "primary",
            "--app-pid",
            "1",
            "--service-addr",
            "10.91.0.5/24",
        ])
        .env_remove("REMUS_OUTER_NETNS")
        .output()
        .expect("remusd primary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("remus-run --service-addr"),
        "{}: {err}",
        out.status
    );
    // Nothing was left behind by the refusals.
    let links = lan
        .command("primary", "ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("rmh"),
        "{}",
        String::from_utf8_lossy(&links.stdout)
    );
}

/// A UDP echo server (python3, under the shim like any program).
const UDP_ECHO: &str = "import socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.bind(('0.0.0.0', 9090))\n\
while True:\n    d, a = s.recvfrom(2048)\n    s.sendto(b'echo ' + d, a)\n";

#[test]
fn gate_holds_udp_replies_too() {
    require_program("/usr/bin/python3", "python3");
    let rig = Rig::start_prog(
        "--heartbeat-ms 5000",
        Some(vec![
            "/usr/bin/python3".into(),
            "-c".into(),
            UDP_ECHO.into(),
        ]),
    );
    let to = format!("{}:9090", rig.service);
    let sock = rig.lan.in_host("client", || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
        u.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        u
    });
    sock.connect(&to).unwrap();
    let mut buf = [0u8; 2048];
    // The server may still be starting: ask until it answers (bounded).
    let mut answered = None;
    for _ in 0..20 {
        sock.send(b"one").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            answered = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(
        answered.as_deref(),
        Some(&b"echo one"[..]),
        "{}",
        rig.report()
    );
    // Drain late answers to the retries.
    sock.set_nonblocking(true).unwrap();
    while sock.recv(&mut buf).is_ok() {}

    assert!(signal(rig.standby.id() as i32, libc::SIGSTOP));
    let (_, queued_before) = rig.queue();
    sock.send(b"two").unwrap();
    wait_for(
        "the UDP reply held in the gate",
        LONG,
        &|| rig.report(),
        || {
            let (waiting, queued) = rig.queue();
            let st = remus::status(&rig.control).ok()?;
            let (epoch, committed) = (n(&st, "epoch")?, n(&st, "committed_epoch")?);
            (waiting > 0 && queued > queued_before && epoch > committed + 1).then_some(())
        },
    );
    match sock.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "the UDP reply left before its epoch was committed: {other:?}\n{}",
            rig.report()
        ),
    }
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert!(signal(rig.standby.id() as i32, libc::SIGCONT));
    let n = sock.recv(&mut buf).expect("the UDP reply after the commit");
    assert_eq!(&buf[..n], b"echo two", "{}", rig.report());
}

/// Reads from `c` until `want` has arrived (the read timeout bounds each read).
fn read_until(c: &mut TcpStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = c
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading (have {:?}): {e}", String::from_utf8_lossy(&got)));
        assert!(
            n > 0,
            "end of stream before {want:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn beanstalkd_at_the_service_address() {
    require_program("/usr/bin/beanstalkd", "beanstalkd");
    let rig = Rig::start_prog(
        "",
        Some(
            ["/usr/bin/beanstalkd", "-l", "0.0.0.0", "-p", "11300"]
                .map(String::from)
                .to_vec(),
        ),
    );
    let to = format!("{}:11300", rig.service);
    let mut c = rig.lan.in_host("client", move || {
        let c = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("connecting to beanstalkd at {to}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    });
    for i in 0..20 {
        let body = format!("job-{i}");
        write!(c, "put 0 0 10 {}\r\n{body}\r\n", body.len()).unwrap();
        let r = read_until(&mut c, "\r\n");
        assert!(r.starts_with("INSERTED"), "put {i}: {r}\n{}", rig.report());
    }
    for i in 0..20 {
        write!(c, "reserve\r\n").unwrap();
        let r = read_until(&mut c, &format!("job-{i}\r\n"));
        assert!(r.starts_with("RESERVED"), "{r}");
        let id: u64 = r
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("id");
        write!(c, "delete {id}\r\n").unwrap();
        assert!(read_until(&mut c, "\r\n").starts_with("DELETED"));
    }
    let st = remus::status(&rig.control).expect("status");
    assert_eq!(s(&st, "state"), "protected", "{st}");
    assert!(
        st["packet_gate"]["released_packets"].as_u64().unwrap_or(0) > 40,
        "{st}"
    );
}

/// Packets the gate's rule has matched in the primary host (the NFQUEUE rules' counters).
fn rule_packets(rig: &Rig) -> u64 {
    let out = rig
        .lan
        .command("primary", "iptables")
        .args(["-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])
        .output()
        .expect("iptables -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("NFQUEUE"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_dead_gate_drops_and_the_program_end_cleans_up() {
    let rig = Rig::start("");
    let mut c = rig.connect();
    let reply = get(&mut c, "/index.html");
    assert!(reply.ends_with(BODY), "{reply}");
    let mut c = rig.connect();
    // remusd primary dies (the gate with it): its rule stays, with nobody reading the queue.
    let ctl = remus::controllers_of(rig.app_pid());
    assert_eq!(ctl.len(), 1, "remusd primary of {}: {ctl:?}", rig.app_pid());
    assert!(signal(ctl[0], libc::SIGKILL));
    wait_for("the gate's queue to go", LONG, &|| rig.report(), || {
        (rig.queue() == (0, 0) && !remus::alive(ctl[0])).then_some(())
    });
    let before = rule_packets(&rig);
    write!(c, "GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    wait_for(
        "the program's answer to meet the rule",
        LONG,
        &|| rig.report(),
        || (rule_packets(&rig) > before).then_some(()),
    );
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    match c.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a packet passed the dead gate: {other:?}\n{}", rig.report()),
    }
    // The program ends: the keeper removes the pair, the proxy entry and the dead rule.
    let veth = format!("rmh{}", rig.app_pid());
    assert!(signal(rig.app_pid(), libc::SIGKILL));
    wait_for("the topology torn down", LONG, &|| rig.report(), || {
        let links = rig
            .lan
            .command("primary", "ip")
            .args(["-o", "link"])
            .output()
            .ok()?;
        let rules = rig
            .lan
            .command("primary", "iptables")
            .args(["-w", "-t", "raw", "-S", "PREROUTING"])
            .output()
            .ok()?;
        let gone = !String::from_utf8_lossy(&links.stdout).contains(&veth)
            && !String::from_utf8_lossy(&rules.stdout).contains("NFQUEUE");
        gone.then_some(())
    });
}
