//! The benchmark table of issue 4 (all but the pause rows, which `benches/pause.rs` prints):
//! wire bytes per dirty page, web servers under `wrk`, failover time, first full sync.
//!
//! `cargo bench --bench table` (release builds; a few minutes). `benches/run` runs this and
//! the pause benchmark. `REMUS_TABLE=wire,servers,failover` picks sections;
//! `REMUS_TABLE_SECONDS` sets each `wrk` run (default 5).
//!
//! Every row measures bare and protected side by side in the same run, on loopback, with a
//! standby on the same host: ratios are what to read, the machine is shared and noisy.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use remus::wrk::Wrk;
use remus::{bins_for, free_port, progs, Bins, TempDir};
use serde_json::Value;

fn secs() -> u64 {
    std::env::var("REMUS_TABLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn section(name: &str) -> bool {
    std::env::var("REMUS_TABLE").map_or(true, |v| v.split(',').any(|s| s == name))
}

/// Does this remusd want `--insecure` for a loopback link without a key?
fn insecure_flag(b: &Bins) -> bool {
    Command::new(&b.remusd)
        .args(["standby", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--insecure"))
        .unwrap_or(false)
}

struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lock").push(line);
            }
        });
        Proc { child, lines }
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn wait_line(&self, what: &str, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.lines.lock().expect("lock").iter().any(|l| l == what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group; no memory is touched.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a pid we read from a status; no memory is touched.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

struct Standby {
    _p: Proc,
    addr: String,
    control: PathBuf,
    log: PathBuf,
}

impl Standby {
    fn start(b: &Bins, dir: &Path, tag: &str, timeout_ms: u64, insecure: bool) -> Standby {
        let addr = format!("127.0.0.1:{}", free_port());
        Standby::start_at(b, dir, tag, timeout_ms, insecure, addr)
    }

    /// A standby listening at `addr` (a restarted one takes its predecessor's address).
    fn start_at(
        b: &Bins,
        dir: &Path,
        tag: &str,
        timeout_ms: u64,
        insecure: bool,
        addr: String,
    ) -> Standby {
        let control = dir.join(format!("{tag}-sb.sock"));
        let log = dir.join(format!("{tag}-sb.log"));
        let state = dir.join(format!("{tag}-state"));
        fs::create_dir_all(&state).expect("mkdir");
        let mut cmd = Command::new(&b.remusd);
        cmd.arg("standby")
            .args(["--listen", &addr, "--timeout-ms", &timeout_ms.to_string()])
            .arg("--state-dir")
            .arg(&state)
            .arg("--control")
            .arg(&control)
            .arg("--log-file")
            .arg(&log)
            .arg("--file-root")
            .arg(dir.join(format!("{tag}-files")))
            .arg("--stdout")
            .arg(dir.join(format!("{tag}-restored.out")))
            .env_remove("LD_PRELOAD");
        if insecure {
            cmd.arg("--insecure");
        }
        let p = Proc::spawn(&mut cmd);
        let t = Instant::now();
        while remus::status(&control).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "standby did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Standby {
            _p: p,
            addr,
            control,
            log,
        }
    }
}

/// Starts `cmd` protected (epoch `epoch_ms`, extra `remusd primary` arguments).
fn protect(
    b: &Bins,
    cmd: &mut Command,
    sb: &Standby,
    dir: &Path,
    tag: &str,
    epoch_ms: u64,
    primary_args: &str,
) -> (Proc, PathBuf) {
    let control = dir.join(format!("{tag}-p.sock"));
    cmd.env("LD_PRELOAD", &b.lib)
        .env("REMUS_STANDBY", &sb.addr)
        .env("REMUS_CONTROL", &control)
        .env("REMUS_REMUSD", &b.remusd)
        .env("REMUS_LOG_FILE", dir.join(format!("{tag}-p.log")))
        .env("REMUS_EPOCH_MS", epoch_ms.to_string())
        .env("REMUS_PRIMARY_ARGS", primary_args);
    let p = Proc::spawn(cmd);
    let t = Instant::now();
    loop {
        if let Ok(v) = remus::status(&control) {
            if v["protected"] == true {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{tag}: not protected after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, control)
}

fn wait_port(port: u16) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "port {port} not up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wrk(port: u16, conns: u32, secs: u64) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("wrk");
    remus::wrk::parse(&String::from_utf8_lossy(&out.stdout))
}

/// A web server to run bare and protected.
struct Server {
    name: &'static str,
    port: u16,
    cmd: Box<dyn Fn() -> Command>,
}

fn www(dir: &Path) -> PathBuf {
    let d = dir.join("www");
    fs::create_dir_all(&d).expect("mkdir www");
    // A 4 KiB page of text.
    let body: String = (0..64)
        .map(|i| format!("line {i:03} of the remus benchmark page, padded to sixty-four b\n"))
        .collect();
    fs::write(d.join("index.html"), body).expect("index.html");
    d
}

fn lighttpd(dir: &Path) -> Server {
    let port = free_port();
    let conf = dir.join(format!("lighttpd-{port}.conf"));
    fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.port = {port}\nserver.bind = \"127.0.0.1\"\n\
             server.errorlog = \"{}\"\nindex-file.names = (\"index.html\")\n\
             server.max-keep-alive-requests = 100000\n",
            www(dir).display(),
            dir.join(format!("lighttpd-{port}.err")).display()
        ),
    )
    .expect("lighttpd conf");
    Server {
        name: "lighttpd",
        port,
        cmd: Box::new(move || {
            let mut c = Command::new("lighttpd");
            c.arg("-D").arg("-f").arg(&conf);
            c
        }),
    }
}

fn nginx(dir: &Path) -> Server {
    let port = free_port();
    let d = dir.join(format!("nginx-{port}"));
    fs::create_dir_all(d.join("logs")).expect("mkdir nginx");
    let conf = d.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             keepalive_requests 100000;\n\
             server {{ listen 127.0.0.1:{port}; root {www}; }} }}\n",
            d = d.display(),
            www = www(dir).display()
        ),
    )
    .expect("nginx conf");
    Server {
        name: "nginx",
        port,
        cmd: Box::new(move || {
            let mut c = Command::new("nginx");
            c.arg("-p").arg(&d).arg("-c").arg(&conf);
            c
        }),
    }
}

fn status_f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Page counters of a primary's status.
#[derive(Clone, Copy, Default, Debug)]
struct PageCounters {
    pages: f64,
    frames: f64,
    snap_only: f64,
}

fn counters(v: &Value) -> PageCounters {
    PageCounters {
        pages: status_f(v, "pages_shipped"),
        frames: status_f(v, "page_frame_bytes"),
        snap_only: status_f(v, "snap_only_frame_bytes"),
    }
}

fn per_page(a: PageCounters, b: PageCounters) -> (f64, f64, f64) {
    let n = (b.pages - a.pages).max(1.0);
    (
        n,
        (b.snap_only - a.snap_only) / n,
        (b.frames - a.frames) / n,
    )
}

fn main() {
    std::env::set_var("REMUS_TEST_PROFILE", "release");
    let started = Instant::now();
    let b = bins_for(true);
    let insecure = insecure_flag(b);
    let primary_base = if insecure { "--insecure" } else { "" };
    let tmp = TempDir::new("table");
    let dir = tmp.path().to_path_buf();
    let secs = secs();
    let mut out = String::new();
    let mut say = |s: String| {
        println!("{s}");
        out.push_str(&s);
        out.push('\n');
    };
    say(format!(
        "remus benchmark table ({} s per wrk run, release build, standby on loopback)\n",
        secs
    ));

    if section("wire") {
        say("### Wire bytes per dirty page (steady state, after the first full image)\n".into());
        say("| workload | pages | raw B/page | snap alone B/page | XOR delta + RLE + snap B/page | delta vs raw | delta vs snap |".into());
        say("|---|---|---|---|---|---|---|".into());
        let args = format!("{primary_base} --wire-stats");
        // python3: dicts and lists rewritten every step.
        {
            let sb = Standby::start(b, &dir, "wire-py", 1000, insecure);
            let mut cmd = Command::new(remus::PYTHON);
            cmd.arg(&progs().python_state)
                .args(["0", "--sleep-ms", "1", "--stop-file"])
                .arg(dir.join("no-such-stop-file"));
            let (_p, ctl) = protect(b, &mut cmd, &sb, &dir, "wire-py", 25, &args);
            std::thread::sleep(Duration::from_secs(2));
            let a = counters(&remus::status(&ctl).expect("status"));
            std::thread::sleep(Duration::from_secs(secs));
            let z = counters(&remus::status(&ctl).expect("status"));
            let (n, snap, delta) = per_page(a, z);
            say(format!(
                "| python3 python_state.py | {n:.0} | 4096 | {snap:.0} | {delta:.0} | 1/{:.1} | 1/{:.1} |",
                4096.0 / delta,
                snap / delta
            ));
        }
        {
            let sv = lighttpd(&dir);
            let sb = Standby::start(b, &dir, "wire-lt", 1000, insecure);
            let (_p, ctl) = protect(b, &mut (sv.cmd)(), &sb, &dir, "wire-lt", 25, &args);
            wait_port(sv.port);
            wrk(sv.port, 8, 1);
            let a = counters(&remus::status(&ctl).expect("status"));
            let w = wrk(sv.port, 32, secs);
            let z = counters(&remus::status(&ctl).expect("status"));
            let (n, snap, delta) = per_page(a, z);
            say(format!(
                "| lighttpd under wrk -c32 ({:.0} req/s) | {n:.0} | 4096 | {snap:.0} | {delta:.0} | 1/{:.1} | 1/{:.1} |",
                w.rps,
                4096.0 / delta,
                snap / delta
            ));
        }
        say(String::new());
    }

    if section("servers") {
        say("### Web servers under wrk on loopback: bare vs protected\n".into());
        say("| server | load | epoch | req/s | ratio | p50 ms | p99 ms | added p50 ms | output held (B) |".into());
        say("|---|---|---|---|---|---|---|---|---|".into());
        for mk in [lighttpd as fn(&Path) -> Server, nginx] {
            let sv = mk(&dir);
            for (load, conns) in [("saturating -c64", 64u32), ("light -c1", 1)] {
                let bare = {
                    let _p = Proc::spawn(&mut (sv.cmd)());
                    wait_port(sv.port);
                    wrk(sv.port, conns, 1);
                    wrk(sv.port, conns, secs)
                };
                say(format!(
                    "| {} | {load} | bare | {:.0} | 1.00 | {:.2} | {:.2} | - | - |",
                    sv.name, bare.rps, bare.p50_ms, bare.p99_ms
                ));
                for epoch in [25u64, 100] {
                    let tag = format!("{}-{conns}-{epoch}", sv.name);
                    let sb = Standby::start(b, &dir, &tag, 1000, insecure);
                    let (_p, ctl) =
                        protect(b, &mut (sv.cmd)(), &sb, &dir, &tag, epoch, primary_base);
                    wait_port(sv.port);
                    wrk(sv.port, conns, 1);
                    let w = wrk(sv.port, conns, secs);
                    let st = remus::status(&ctl).unwrap_or_default();
                    let prot = st["protected"] == true;
                    say(format!(
                        "| {} | {load} | {epoch} ms{} | {:.0} | {:.2} | {:.2} | {:.2} | {:+.2} | {} |",
                        sv.name,
                        if prot { "" } else { " (NOT protected)" },
                        w.rps,
                        w.rps / bare.rps.max(1.0),
                        w.p50_ms,
                        w.p99_ms,
                        w.p50_ms - bare.p50_ms,
                        status_f(&st, "output_released_bytes") as u64
                    ));
                }
            }
        }
        say(String::new());
    }

    if section("failover") {
        let server = compile_mem_server(&dir);
        say("### Failover (kill -9 of the app and remusd primary; standby --timeout-ms 500) and first full sync\n".into());
        say("| program | bare: start→ready s | protected: start→ready released s | page bytes on wire | wire/raw | detection ms | restore ms | kill→first answer ms |".into());
        say("|---|---|---|---|---|---|---|---|".into());
        for mb in [64u64, 1024] {
            let port = free_port();
            let bare_s = {
                let t = Instant::now();
                let p = Proc::spawn(Command::new(&server).args([mb.to_string(), port.to_string()]));
                assert!(
                    p.wait_line("ready", Duration::from_secs(300)),
                    "bare mem_server"
                );
                t.elapsed().as_secs_f64()
            };
            let tag = format!("fo-{mb}");
            let sb = Standby::start(b, &dir, &tag, 500, insecure);
            let mut cmd = Command::new(&server);
            cmd.args([mb.to_string(), port.to_string()]);
            // The fill runs protected; "ready" is released once an epoch after it commits.
            // (Timed from the start: protection itself starts after the first image.)
            let t_start = Instant::now();
            let (p, ctl) = protect(b, &mut cmd, &sb, &dir, &tag, 25, primary_base);
            assert!(
                p.wait_line("ready", Duration::from_secs(300)),
                "{tag}: no ready line"
            );
            let sync_s = t_start.elapsed().as_secs_f64();
            let st = remus::status(&ctl).expect("status");
            let wire = status_f(&st, "page_frame_bytes");
            let raw = status_f(&st, "pages_shipped") * 4096.0;
            // Serve a little, then let an epoch commit.
            for _ in 0..20 {
                let _ = ask(port);
            }
            std::thread::sleep(Duration::from_millis(300));
            let app = p.pid();
            let primary = remus::status(&ctl)
                .ok()
                .and_then(|v| v["controller_pid"].as_i64())
                .unwrap_or(0) as i32;
            let killed_at = SystemTime::now();
            let t0 = Instant::now();
            kill(app);
            kill(primary);
            let mut answered = None;
            while t0.elapsed() < Duration::from_secs(120) {
                if ask(port).is_some_and(|l| l.starts_with("ok ")) {
                    answered = Some(t0.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let log = fs::read_to_string(&sb.log).unwrap_or_default();
            let at = |needle: &str| log.lines().find(|l| l.contains(needle)).and_then(log_time);
            let ms = |t: Option<SystemTime>| {
                t.and_then(|t| t.duration_since(killed_at).ok())
                    .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "?".into())
            };
            let restore = log
                .lines()
                .find(|l| l.contains("TOOK OVER"))
                .and_then(|l| l.split("restore_ms=").nth(1))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            say(format!(
                "| {mb} MiB | {bare_s:.2} | {sync_s:.2} | {:.1} MiB | {:.2} | {} | {restore} | {} |",
                wire / 1048576.0,
                wire / raw.max(1.0),
                ms(at("TAKING OVER")),
                answered
                    .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "no answer".into())
            ));
            if let Ok(v) = remus::status(&sb.control) {
                kill(v["restored_pid"].as_i64().unwrap_or(0) as i32);
            }
        }
        say(String::new());
    }
    if section("resync") {
        resync_rows(b, &dir, insecure, primary_base, &mut say);
    }
    say(format!("Total time {:.0?}.", started.elapsed()));
    if let Ok(path) = std::env::var("REMUS_TABLE_OUT") {
        let _ = fs::write(path, &out);
    }
}

/// Resynchronisation after a standby restart: the full image in one pause (the baseline,
/// `--full-image-in-pause`) against streamed while the program runs, same program, same run.
fn resync_rows(
    b: &Bins,
    dir: &Path,
    insecure: bool,
    primary_base: &str,
    say: &mut impl FnMut(String),
) {
    let server = compile_mem_server(dir);
    say(
        "### Resynchronisation after a standby restart: full image in one pause vs streamed\n"
            .into(),
    );
    say(
        "Standby killed, then restarted at its address; a client asks every 10 ms meanwhile. \
         resync = restart until the primary is protected again; longest pause = the shim's \
         own measure over the resync's epochs; longest client wait = the slowest answer during \
         the resync.\n"
            .into(),
    );
    say("| program | full image | resync s | longest pause ms | pages in that pause (most) | longest client wait ms | answers ok / failed | pause vs one-pause |".into());
    say("|---|---|---|---|---|---|---|---|".into());
    for mb in [256u64, 1024] {
        let mut baseline_pause = None;
        for (mode, extra) in [("one pause", "--full-image-in-pause"), ("streamed", "")] {
            let tag = format!("rs-{mb}-{}", extra.is_empty() as u8);
            let port = free_port();
            let a = Standby::start(b, dir, &format!("{tag}-a"), 1000, insecure);
            let addr = a.addr.clone();
            let mut cmd = Command::new(&server);
            cmd.args([mb.to_string(), port.to_string()]);
            let args = format!("{primary_base} {extra}");
            let (p, ctl) = protect(b, &mut cmd, &a, dir, &tag, 25, args.trim());
            assert!(
                p.wait_line("ready", Duration::from_secs(300)),
                "{tag}: no ready line"
            );
            std::thread::sleep(Duration::from_millis(500));
            drop(a); // killed
            let t = Instant::now();
            while remus::status(&ctl).map_or(true, |v| v["state"] != "resyncing") {
                assert!(t.elapsed() < Duration::from_secs(60), "{tag}: no resync");
                std::thread::sleep(Duration::from_millis(20));
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let pinger = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut worst, mut ok, mut failed) = (Duration::ZERO, 0u32, 0u32);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let t = Instant::now();
                        match ask_within(port, Duration::from_secs(60)) {
                            Some(l) if l.starts_with("ok ") => ok += 1,
                            _ => failed += 1,
                        }
                        worst = worst.max(t.elapsed());
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    (worst, ok, failed)
                })
            };
            let sb = Standby::start_at(b, dir, &format!("{tag}-b"), 1000, insecure, addr);
            let t0 = Instant::now();
            let st = loop {
                let v = remus::status(&ctl).unwrap_or_default();
                if v["protected"] == true && v["state"] == "protected" {
                    break v;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(300),
                    "{tag}: not protected again"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            let resync_s = t0.elapsed().as_secs_f64();
            // A few more answers after protection resumed, then stop the client.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (worst, answers, failed) = pinger.join().unwrap_or_default();
            let log = fs::read_to_string(dir.join(format!("{tag}-p.log"))).unwrap_or_default();
            let field = |line: &str, key: &str| -> Option<u64> {
                line.split(&format!("{key}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            // The epoch that honoured the full resend (the whole image in one-pause mode).
            let resend = log
                .lines()
                .rfind(|l| l.contains("full image for the reconnected standby taken"));
            let mut pause_us = resend.and_then(|l| field(l, "pause_us")).unwrap_or(0);
            let mut pages = resend.and_then(|l| field(l, "pages")).unwrap_or(0);
            if let Some(is) = st.get("image_stream").filter(|v| !v.is_null()) {
                pause_us = pause_us.max(is["max_pause_us"].as_u64().unwrap_or(0));
                pages = pages.max(is["max_pause_pages"].as_u64().unwrap_or(0));
            }
            let ratio = match baseline_pause {
                None => {
                    baseline_pause = Some(pause_us.max(1));
                    "1.00".to_string()
                }
                Some(base) => format!("{:.4}", pause_us as f64 / base as f64),
            };
            say(format!(
                "| {mb} MiB | {mode} | {resync_s:.2} | {:.1} | {pages} | {:.0} | {answers} / {failed} | {ratio} |",
                pause_us as f64 / 1000.0,
                worst.as_secs_f64() * 1000.0
            ));
            drop(sb); // before the program: no takeover
            drop(p);
        }
    }
    say(String::new());
}

/// One request with a deadline for the whole answer.
fn ask_within(port: u16, timeout: Duration) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    // Nothing is sent: mem_server never reads, and a close with unread bytes resets the
    // connection (the answer lost).
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf.trim().to_string())
}

fn compile_mem_server(dir: &Path) -> PathBuf {
    let dst = dir.join("mem_server");
    let src = remus::repo_root().join("benches/mem_server.c");
    let st = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&dst)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling mem_server failed");
    dst
}

/// One request to a mem_server: its answer line.
fn ask(port: u16) -> Option<String> {
    ask_within(port, Duration::from_millis(500))
}

/// The timestamp at the start of a remusd log line (RFC 3339, UTC).
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    // 2026-11-26T00:38:39.263961Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - (d[1] <= 2) as i64, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(nanos))
}
