//! Open client connections survive a failover (issue 12, DESIGN §9).
//!
//! Three "hosts" in network namespaces on one bridge (`remus::lan`, 10.91.0.0/16, `rg-`): a
//! client, a primary that runs Debian's beanstalkd through `scripts/remus-run
//! --service-addr`, and a standby run with the same `--service-addr`. The client keeps one
//! TCP connection to beanstalkd and puts jobs, each acknowledged (`INSERTED`); mid-stream the
//! primary side is killed with SIGKILL (beanstalkd and remusd primary). The same connection
//! carries on (no reset, no end of file) once the standby has restored beanstalkd in a
//! network namespace of its own with the address and rebuilt the connection (`TCP_REPAIR`),
//! and every acknowledged put is on the standby exactly once: counted with `stats-tube` and
//! taken back with `reserve` on that same connection. The client's stall across the failover
//! is printed. The same with large puts (the client uploads: the primary's acknowledgements
//! are held in the gate) and a second connection opened and used just before the kill; with an
//! 8 MiB lighttpd download read slowly (every byte matches); and with Debian's mosquitto, QoS 1
//! publishes to a topic the client subscribed to on the same connection (each acknowledged
//! publish delivered exactly once).
//!
//! Needs root, iproute2, iptables, nsenter, the kernel's NFQUEUE, beanstalkd, lighttpd and
//! mosquitto: without them the test fails saying what is missing (`.ci/run --setup-only` installs the packages).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use remus::lan::Lan;
use remus::{bins, repo_root, require_program, s, signal, test_key_file, wait_for, TempDir};

const PORT: u16 = 11300;
const LONG: Duration = Duration::from_secs(60);
/// How long one request may wait for its answer before the test gives up (a hang bound, far
/// beyond any failover; the stall itself is measured and printed, not judged).
const ANSWER_BOUND: Duration = Duration::from_secs(90);

struct Rig {
    standby: Child,
    primary: Child,
    control: PathBuf,
    service: String,
    /// When the primary was protected.
    since: Instant,
    dir: TempDir,
    /// Last: its drop kills whatever is left in the namespaces and deletes them.
    lan: Lan,
}

impl Rig {
    fn report(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("primary.err")).unwrap_or_default();
        format!(
            "remus-run stderr:\n{}\nstandby log:\n{}",
            remus::tail(&log, 30),
            remus::tail_file(&self.dir.path().join("standby.log"), 40),
        )
    }

    fn start(prog: &[&str]) -> Rig {
        require_program("iptables", "iptables");
        require_program("nsenter", "util-linux");
        require_program("ip", "iproute2");
        let lan = Lan::create(&["client", "primary", "standby"]);
        let dir = TempDir::new("connections");
        let service = lan.spare(100);
        let sb_addr = format!("{}:7000", lan.addr("standby"));
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let standby = lan
            .command("standby", &bins().remusd)
            .args(["standby", "--listen", &sb_addr, "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--key-file")
            .arg(test_key_file())
            // The kill closes the replication link at once (the host's kernel lives on), which
            // the standby sees without waiting for silence; a long silence bound keeps a busy
            // machine from a takeover the test did not ask for.
            .args(["--timeout-ms", "5000"])
            .args(["--service-addr", &format!("{service}/24"), "--log-file"])
            .arg(dir.path().join("standby.log"))
            .arg("--control")
            .arg(dir.path().join("standby.sock"))
            .env("REMUS_LOG", "info,remus_controller::restore=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn remusd standby");
        let control = dir.path().join("primary.sock");
        let primary = lan
            .command("primary", repo_root().join("scripts/remus-run"))
            .args(["--standby", &sb_addr, "--key-file"])
            .arg(test_key_file())
            .args(["--service-addr", &format!("{service}/24"), "--control"])
            .arg(&control)
            .arg("--")
            .args(prog)
            .env("REMUS_LIB", &bins().lib)
            .env("REMUS_REMUSD", &bins().remusd)
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
            since: Instant::now(),
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
        let mut rig = rig;
        rig.since = Instant::now();
        rig
    }

    fn connect(&self, port: u16) -> TcpStream {
        let to = format!("{}:{port}", self.service);
        self.lan.in_host("client", move || {
            let c = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("connecting to the service address {to}: {e}"));
            c.set_read_timeout(Some(ANSWER_BOUND)).unwrap();
            c.set_nodelay(true).unwrap();
            c
        })
    }

    /// SIGKILL to the program and its remusd primary: the primary side dies at once.
    fn kill_primary_side(&self) {
        let st = remus::status(&self.control).expect("the primary's status");
        let remusd = st["controller_pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no controller_pid in the primary's status: {st}"))
            as i32;
        // The connections were dumped in the pauses (the shim held the epochs for it).
        let conns = &st["connections"];
        assert!(
            conns["epochs_held"].as_u64().unwrap_or(0) > 0
                && conns["last_epoch"].as_u64() >= Some(1),
            "the primary's status shows no connection dumped: {st}"
        );
        // For the record: epochs taken while protected, and the hold for the dump.
        eprintln!(
            "before the kill: {} epochs in {:.1} s, pause p50 {} us; {} epochs held for the dump, last hold {} us, max {} us",
            st["epochs_total"],
            self.since.elapsed().as_secs_f64(),
            st["pause_us"]["p50"],
            conns["epochs_held"],
            conns["last_hold_us"],
            conns["max_hold_us"]
        );
        let app = self.primary.id() as i32;
        assert!(signal(app, libc::SIGKILL), "kill -9 {app} (the program)");
        assert!(
            signal(remusd, libc::SIGKILL),
            "kill -9 {remusd} (remusd primary)"
        );
    }

    fn takeover(&self) -> serde_json::Value {
        wait_for("the standby's takeover", LONG, &|| self.report(), || {
            let t = std::fs::read_to_string(self.dir.path().join("state/takeover.json")).ok()?;
            serde_json::from_str::<serde_json::Value>(&t).ok()
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The restored program lives in a network namespace of its own, which the LAN's
        // sweep does not see: end it by its pid.
        if let Ok(t) = std::fs::read_to_string(self.dir.path().join("state/takeover.json")) {
            if let Some(pid) = serde_json::from_str::<serde_json::Value>(&t)
                .ok()
                .and_then(|v| v["pid"].as_i64())
                .filter(|&p| p > 0)
            {
                signal(pid as i32, libc::SIGKILL);
            }
        }
        let _ = self.primary.kill();
        let _ = self.primary.wait();
        let _ = self.standby.kill();
        let _ = self.standby.wait();
    }
}

/// Reads one beanstalkd reply: its first line and, for replies with a body (`OK n`,
/// `RESERVED id n`), the body. An end of file or a reset is a failure naming `what`.
fn reply(c: &mut TcpStream, what: &str) -> (String, Vec<u8>) {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match c.read(&mut b) {
            Ok(0) => panic!("{what}: the connection ended (EOF) after {line:?}"),
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("{what}: reading the reply: {e} (after {line:?})"),
        }
    }
    let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    let body_len = match words.as_slice() {
        ["OK", n] => n.parse::<usize>().ok(),
        ["RESERVED", _, n] => n.parse::<usize>().ok(),
        _ => None,
    };
    let mut body = Vec::new();
    if let Some(n) = body_len {
        body = vec![0u8; n + 2];
        c.read_exact(&mut body)
            .unwrap_or_else(|e| panic!("{what}: reading a {n}-byte body: {e}"));
        body.truncate(n);
    }
    (line, body)
}

fn put(c: &mut TcpStream, body: &[u8]) -> Result<u64, String> {
    c.write_all(format!("put 0 0 60 {}\r\n", body.len()).as_bytes())
        .and_then(|()| c.write_all(body))
        .and_then(|()| c.write_all(b"\r\n"))
        .map_err(|e| format!("sending a put: {e}"))?;
    let (line, _) = reply(c, "put");
    line.strip_prefix("INSERTED ")
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| format!("put answered {line:?}"))
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Puts `n` jobs (bodies `tag-i`, `size` bytes at least), each waiting for its `INSERTED`;
/// calls `mid` after `kill_at` of them. Returns the acknowledged bodies and each put's time.
fn put_loop(
    c: &mut TcpStream,
    tag: &str,
    n: usize,
    size: usize,
    kill_at: usize,
    mut mid: impl FnMut(),
) -> (Vec<Vec<u8>>, Vec<Duration>) {
    let mut acked = Vec::new();
    let mut times = Vec::new();
    for i in 0..n {
        if i == kill_at {
            mid();
        }
        let mut body = format!("{tag}-{i}-").into_bytes();
        while body.len() < size {
            body.push(b'a' + (body.len() % 26) as u8);
        }
        let t0 = Instant::now();
        match put(c, &body) {
            Ok(_) => {}
            Err(e) => panic!("put {i} of {n}: {e}"),
        }
        times.push(t0.elapsed());
        acked.push(body);
    }
    (acked, times)
}

/// Every acknowledged body is in the restored beanstalkd exactly once: `stats-tube` counts
/// them, `reserve-with-timeout 0` takes each back, on connection `c`.
fn check_jobs(c: &mut TcpStream, acked: &[Vec<u8>]) {
    c.write_all(b"stats-tube default\r\n").unwrap();
    let (line, body) = reply(c, "stats-tube");
    assert!(line.starts_with("OK"), "stats-tube answered {line:?}");
    let stats = String::from_utf8_lossy(&body).into_owned();
    let ready: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("current-jobs-ready: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no current-jobs-ready in {stats}"));
    assert_eq!(
        ready,
        acked.len(),
        "jobs ready on the standby vs acknowledged puts"
    );
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for _ in 0..acked.len() + 5 {
        c.write_all(b"reserve-with-timeout 0\r\n").unwrap();
        let (line, body) = reply(c, "reserve");
        if line == "TIMED_OUT" {
            break;
        }
        assert!(line.starts_with("RESERVED"), "reserve answered {line:?}");
        let id = line.split_whitespace().nth(1).unwrap().to_string();
        *seen.entry(body).or_default() += 1;
        c.write_all(format!("delete {id}\r\n").as_bytes()).unwrap();
        let (line, _) = reply(c, "delete");
        assert_eq!(line, "DELETED");
    }
    for b in acked {
        assert_eq!(
            seen.get(b).copied().unwrap_or(0),
            1,
            "acknowledged job {:?} reserved this many times",
            String::from_utf8_lossy(&b[..b.len().min(40)])
        );
    }
    assert_eq!(seen.len(), acked.len(), "jobs that were never acknowledged");
}

fn print_stall(what: &str, times: &mut [Duration]) {
    let max = *times.iter().max().unwrap();
    let p50 = percentile(times, 0.5);
    eprintln!(
        "{what}: {} requests, p50 {:.2} ms, max (the stall across the failover) {:.1} ms",
        times.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

#[test]
fn beanstalkd_connection_survives_kill_9_of_the_primary() {
    require_program("/usr/bin/beanstalkd", "beanstalkd");
    let rig = Rig::start(&["/usr/bin/beanstalkd", "-l", "0.0.0.0", "-p", "11300"]);
    let mut c = rig.connect(PORT);
    let first = put(&mut c, b"job-first").expect("the first put");
    assert!(first > 0);
    // For the record: epochs while the connection is open and idle (each dumps it; a dump
    // that made a packet would trigger the next epoch at once behind the gate).
    let epochs = |r: &Rig| remus::status(&r.control).expect("status")["epochs_total"].as_u64();
    let (e0, t0) = (epochs(&rig), Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    eprintln!(
        "idle with the connection open: {:?} epochs in {:.2} s (epochs every 25 ms)",
        epochs(&rig).zip(e0).map(|(a, b)| a - b),
        t0.elapsed().as_secs_f64()
    );
    let (mut acked, mut times) = put_loop(&mut c, "job", 300, 16, 150, || rig.kill_primary_side());
    acked.push(b"job-first".to_vec());
    let t = rig.takeover();
    assert!(t["pid"].as_i64().is_some(), "takeover.json: {t}");
    print_stall("one connection across kill -9", &mut times);
    check_jobs(&mut c, &acked);
    // The listening socket is the restored program's, in its namespace at the address: a new
    // client connects and is served.
    let mut n = rig.connect(PORT);
    put(&mut n, b"after-the-failover").expect("a put on a new connection after the failover");
    check_jobs(&mut n, &[b"after-the-failover".to_vec()]);
    let log = std::fs::read_to_string(rig.dir.path().join("standby.log")).unwrap_or_default();
    assert!(
        log.contains("1 connection(s) rebuilt"),
        "the standby's log names no rebuilt connection:\n{}",
        rig.report()
    );
}
#[test]
fn beanstalkd_large_puts_and_a_connection_opened_just_before_the_kill() {
    require_program("/usr/bin/beanstalkd", "beanstalkd");
    let rig = Rig::start(&[
        "/usr/bin/beanstalkd",
        "-l",
        "0.0.0.0",
        "-p",
        "11300",
        "-z",
        "1048576",
    ]);
    let mut c = rig.connect(PORT);
    let mut late: Option<TcpStream> = None;
    // 64 KiB bodies: the client uploads, the primary's ACKs are held in the gate.
    let (acked, mut times) = put_loop(&mut c, "big", 60, 64 << 10, 30, || {
        // A second connection, opened and used right before the kill.
        let mut l = rig.connect(PORT);
        put(&mut l, b"late-0").expect("put on the late connection");
        rig.kill_primary_side();
        late = Some(l);
    });
    rig.takeover();
    print_stall("64 KiB puts across kill -9", &mut times);
    let mut l = late.expect("the late connection");
    let id = put(&mut l, b"late-1").expect("put on the late connection after the failover");
    assert!(id > 0);
    let mut all = acked;
    all.push(b"late-0".to_vec());
    all.push(b"late-1".to_vec());
    check_jobs(&mut c, &all);
}

#[test]
fn lighttpd_large_file_read_slowly_across_kill_9() {
    require_program("/usr/sbin/lighttpd", "lighttpd");
    let www = TempDir::new("connections-www");
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(www.path().join("big.bin"), &data).unwrap();
    let conf = www.path().join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{w}\"\nserver.bind = \"0.0.0.0\"\nserver.port = 8080\n\
             server.errorlog = \"{w}/error.log\"\n",
            w = www.path().display()
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    let rig = Rig::start(&["/usr/sbin/lighttpd", "-D", "-f", &conf]);
    let mut c = rig.connect(8080);
    c.write_all(b"GET /big.bin HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::with_capacity(data.len() + 4096);
    let mut buf = vec![0u8; 32 << 10];
    let mut killed = false;
    let mut stall = Duration::ZERO;
    // Bounded: at most one read per 1 byte of the file and its header.
    for _ in 0..data.len() + 4096 {
        let t0 = Instant::now();
        let n = match c.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!(
                "reading the download after {} bytes (killed: {killed}): {e}\n{}",
                got.len(),
                rig.report()
            ),
        };
        stall = stall.max(t0.elapsed());
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !killed && got.len() >= 2 << 20 {
            rig.kill_primary_side();
            killed = true;
        }
        // A slow reader: the server's send queue stays full.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        killed,
        "the download ended before the kill ({} bytes)",
        got.len()
    );
    rig.takeover();
    eprintln!(
        "8 MiB download read slowly across kill -9: longest wait for a read {:.1} ms",
        stall.as_secs_f64() * 1e3
    );
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .expect("an HTTP header");
    assert!(got.starts_with(b"HTTP/1.0 200"), "{:?}", &got[..body_at]);
    assert_eq!(got.len() - body_at, data.len(), "downloaded bytes");
    assert!(
        got[body_at..] == data[..],
        "the downloaded bytes differ from the file"
    );
}

/// A minimal MQTT 3.1.1 client over one connection: packets as (first byte, body).
struct Mqtt(TcpStream);

impl Mqtt {
    fn send(&mut self, first: u8, body: &[u8]) {
        let mut p = vec![first];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            p.push(b);
            if len == 0 {
                break;
            }
        }
        p.extend_from_slice(body);
        self.0.write_all(&p).expect("sending an MQTT packet");
    }

    fn recv(&mut self, what: &str) -> (u8, Vec<u8>) {
        let mut b = [0u8; 1];
        let mut read1 = |c: &mut TcpStream| match c.read(&mut b) {
            Ok(1) => b[0],
            Ok(_) => panic!("{what}: the connection ended (EOF)"),
            Err(e) => panic!("{what}: {e}"),
        };
        let first = read1(&mut self.0);
        let (mut len, mut mult) = (0usize, 1usize);
        for _ in 0..4 {
            let d = read1(&mut self.0);
            len += (d & 0x7f) as usize * mult;
            mult *= 128;
            if d & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.0
            .read_exact(&mut body)
            .unwrap_or_else(|e| panic!("{what}: reading a {len}-byte packet: {e}"));
        (first, body)
    }
}

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

#[test]
fn mosquitto_qos1_publishes_across_kill_9() {
    require_program("/usr/sbin/mosquitto", "mosquitto");
    let cfg = TempDir::new("connections-mosquitto");
    let conf = cfg.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\nuser root\n",
    )
    .unwrap();
    let conf = conf.display().to_string();
    let rig = Rig::start(&["/usr/sbin/mosquitto", "-c", &conf]);
    let mut m = Mqtt(rig.connect(1883));
    let topic = "remus/t";
    // CONNECT: MQTT 3.1.1, clean session, no keep-alive.
    let mut body = mqtt_str("MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    body.extend_from_slice(&mqtt_str("remus-test"));
    m.send(0x10, &body);
    let (first, b) = m.recv("CONNACK");
    assert_eq!((first, b.as_slice()), (0x20, &[0u8, 0][..]), "CONNACK");
    // Subscribed to our own topic with QoS 1: every publish comes back to us.
    let mut body = vec![0, 1];
    body.extend_from_slice(&mqtt_str(topic));
    body.push(1);
    m.send(0x82, &body);
    let (first, b) = m.recv("SUBACK");
    assert_eq!((first, b.as_slice()), (0x90, &[0u8, 1, 1][..]), "SUBACK");

    const N: usize = 200;
    let mut delivered: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut times = Vec::new();
    let handle = |m: &mut Mqtt, first: u8, b: Vec<u8>, delivered: &mut HashMap<Vec<u8>, usize>| {
        // A delivery to us: topic, packet id, payload; acknowledged at once.
        assert_eq!(first & 0xf0, 0x30, "unexpected MQTT packet {first:#x}");
        let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
        let pid = [b[2 + tl], b[3 + tl]];
        *delivered.entry(b[4 + tl..].to_vec()).or_default() += 1;
        m.send(0x40, &pid);
    };
    for i in 0..N {
        if i == N / 2 {
            rig.kill_primary_side();
        }
        let pid = (i as u16 + 2).to_be_bytes();
        let mut body = mqtt_str(topic);
        body.extend_from_slice(&pid);
        body.extend_from_slice(format!("m-{i}").as_bytes());
        let t0 = Instant::now();
        m.send(0x32, &body);
        // Bounded: the PUBACK, and at most a few deliveries before it.
        for _ in 0..N + 10 {
            let (first, b) = m.recv("PUBACK");
            if first == 0x40 {
                assert_eq!(b, pid, "PUBACK for publish {i}");
                break;
            }
            handle(&mut m, first, b, &mut delivered);
        }
        times.push(t0.elapsed());
    }
    rig.takeover();
    print_stall("MQTT QoS 1 publishes across kill -9", &mut times);
    // PINGREQ: everything the broker wrote before its PINGRESP arrives first.
    m.send(0xc0, &[]);
    for _ in 0..N + 10 {
        let (first, b) = m.recv("PINGRESP");
        if first == 0xd0 {
            break;
        }
        handle(&mut m, first, b, &mut delivered);
    }
    for i in 0..N {
        assert_eq!(
            delivered
                .get(format!("m-{i}").as_bytes())
                .copied()
                .unwrap_or(0),
            1,
            "acknowledged publish m-{i} delivered this many times"
        );
    }
    assert_eq!(delivered.len(), N, "deliveries of messages never published");
}

/// After the takeover the restored program (in its namespace on the standby host, with its
/// connection) is protected again by a new standby on the old primary host, given the same
/// `--service-addr` (`remusctl protect`): its new primary runs a packet gate on the standby
/// host and dumps the connection again, so that a second `kill -9` (the restored program and
/// its new primary) moves the same connection back to the first host, every acknowledged put
/// still there exactly once.
#[test]
fn restored_program_is_protected_again_and_fails_over_a_second_time() {
    require_program("/usr/bin/beanstalkd", "beanstalkd");
    let rig = Rig::start(&["/usr/bin/beanstalkd", "-l", "0.0.0.0", "-p", "11300"]);
    let mut c = rig.connect(PORT);
    let (mut acked, _) = put_loop(&mut c, "job", 60, 16, 30, || rig.kill_primary_side());
    rig.takeover();
    let b_addr = format!("{}:7001", rig.lan.addr("primary"));
    let b_state = rig.dir.path().join("state-b");
    std::fs::create_dir_all(&b_state).unwrap();
    let mut b = rig
        .lan
        .command("primary", &bins().remusd)
        .args(["standby", "--listen", &b_addr, "--state-dir"])
        .arg(&b_state)
        .arg("--key-file")
        .arg(test_key_file())
        .args(["--timeout-ms", "5000"])
        .args(["--service-addr", &format!("{}/24", rig.service)])
        .arg("--log-file")
        .arg(rig.dir.path().join("standby-b.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the second standby");
    let a_control = rig.dir.path().join("standby.sock");
    let report = || {
        format!(
            "{}\nsecond standby log:\n{}",
            rig.report(),
            remus::tail_file(&rig.dir.path().join("standby-b.log"), 30)
        )
    };
    let mut protected = None;
    for _ in 0..100 {
        let out = std::process::Command::new(&bins().remusctl)
            .args(["protect", "--standby", &b_addr, "--control"])
            .arg(&a_control)
            .output()
            .expect("run remusctl protect");
        if out.status.success() {
            protected = Some(());
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // the second standby is starting
    }
    assert!(
        protected.is_some(),
        "remusctl protect never succeeded\n{}",
        report()
    );
    let av = wait_for(
        "the restored program protected again",
        LONG,
        &report,
        || {
            remus::status(&a_control)
                .ok()
                .filter(|v| s(v, "state") == "reprotected" && !s(v, "primary_control").is_empty())
        },
    );
    let restored = av["restored_pid"].as_i64().expect("restored_pid") as i32;
    let pctl = PathBuf::from(s(&av, "primary_control"));
    let pv = wait_for(
        "the new primary protected, behind a gate",
        LONG,
        &report,
        || {
            remus::status(&pctl).ok().filter(|v| {
                v.get("protected") == Some(&serde_json::Value::Bool(true))
                    && v.get("packet_gate").is_some_and(|g| !g.is_null())
                    && v["committed_epoch"].as_u64().is_some()
            })
        },
    );
    let remusd = pv["controller_pid"].as_i64().expect("controller_pid") as i32;
    let (more, mut times) = put_loop(&mut c, "again", 60, 16, 30, || {
        assert!(signal(restored, libc::SIGKILL), "kill -9 {restored}");
        assert!(signal(remusd, libc::SIGKILL), "kill -9 {remusd}");
    });
    acked.extend(more);
    wait_for("the second standby's takeover", LONG, &report, || {
        std::fs::read_to_string(b_state.join("takeover.json")).ok()
    });
    print_stall("the second failover, back to the first host", &mut times);
    check_jobs(&mut c, &acked);
    let log = std::fs::read_to_string(rig.dir.path().join("standby-b.log")).unwrap_or_default();
    assert!(
        log.contains("1 connection(s) rebuilt"),
        "the second standby rebuilt no connection\n{}",
        report()
    );
    let _ = b.kill();
    let _ = b.wait();
}
