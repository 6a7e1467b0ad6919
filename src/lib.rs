//! Helpers shared by the integration tests and benchmarks: locating the built binaries,
//! starting a standby and a protected program, and reading `remusctl status --json`.
//!
//! Every process started here is killed when its handle is dropped (with everything it
//! started: the app's `remusd primary`, the standby's restored program). Every wait has a
//! deadline and panics with the relevant logs attached.
//!
//! Environment knobs:
//! - `REMUS_TEST_PROFILE=release`: build and use `target/release` instead of `target/debug`.
//! - `REMUS_TEST_NO_BUILD=1`: do not run `cargo build`; use the binaries already there.
//! - `REMUS_KEEP_TMP=1`: keep the temporary directories (state dirs, logs) for inspection.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;
pub mod lan;
pub mod net;
pub mod netns;
pub mod wrk;
pub mod zoo;

use netns::Netns;

/// The Debian system Python (the `python3` on PATH may be a pyenv shim script, which would
/// be protected instead of the interpreter).
pub const PYTHON: &str = "/usr/bin/python3";

/// How often the waits poll.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// Locations and builds
// ---------------------------------------------------------------------------------------

/// Adds the pid under `key` in a status to `seen` (processes killed when the test ends).
fn remember_pid(seen: &Mutex<Vec<i32>>, v: &Value, key: &str) {
    if let Some(p) = n(v, key).filter(|&p| p > 0) {
        let mut seen = seen.lock().expect("lock");
        if !seen.contains(&(p as i32)) {
            seen.push(p as i32);
        }
    }
}

/// The workspace root (where this package's Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// The built shim and controller binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub lib: PathBuf,
    pub remusd: PathBuf,
    pub remusctl: PathBuf,
    pub release: bool,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Builds `libremus.so`, `remusd` and `remusctl` once per process, in the profile chosen by
/// `REMUS_TEST_PROFILE` (debug by default).
pub fn bins() -> &'static Bins {
    let release = std::env::var("REMUS_TEST_PROFILE").as_deref() == Ok("release");
    bins_for(release)
}

/// Builds (once per process and profile) and locates the binaries of one profile.
pub fn bins_for(release: bool) -> &'static Bins {
    static DEBUG: OnceLock<Bins> = OnceLock::new();
    static RELEASE: OnceLock<Bins> = OnceLock::new();
    let cell = if release { &RELEASE } else { &DEBUG };
    cell.get_or_init(|| {
        if std::env::var("REMUS_TEST_NO_BUILD").as_deref() != Ok("1") {
            let mut cmd = Command::new(cargo());
            cmd.current_dir(repo_root()).args([
                "build",
                "-p",
                "remus-shim",
                "-p",
                "remus-controller",
            ]);
            if release {
                cmd.arg("--release");
            }
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo()));
            assert!(
                out.status.success(),
                "building the shim and controller failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = target_dir().join(if release { "release" } else { "debug" });
        let bins = Bins {
            lib: dir.join("libremus.so"),
            remusd: dir.join("remusd"),
            remusctl: dir.join("remusctl"),
            release,
        };
        for p in [&bins.lib, &bins.remusd, &bins.remusctl] {
            assert!(p.exists(), "{} was not built", p.display());
        }
        bins
    })
}

/// What `.ci/run --setup-only` installs, for the messages of [`require_program`].
pub const SETUP: &str = ".ci/run --setup-only";

/// The program `name` (an absolute path, or a name looked up in `PATH`), which the Debian
/// package `package` provides. Panics, saying what to install, when it is not there: a test
/// that needs it must fail, not pass without having run.
#[track_caller]
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let found = if name.contains('/') {
        let p = PathBuf::from(name);
        p.is_file().then_some(p)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    match found {
        Some(p) => p,
        None => panic!(
            "{name} is not installed, and this test needs it: install it with \
             `apt-get install {package}` (or run `{SETUP}`, which installs everything the \
             tests need; CI does)"
        ),
    }
}

/// The thread ids of process `pid` as the process itself sees them (the innermost `NSpid` of
/// each `/proc/PID/task/TID/status`: a process restored into a new PID namespace has its own
/// numbers there), sorted; empty if it is gone.
pub fn thread_ids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let st = fs::read_to_string(e.path().join("status")).ok()?;
                st.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|l| l.split_whitespace().last()?.parse().ok())
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The test programs, compiled once per process into `target/remus-test-progs/`.
#[derive(Debug, Clone)]
pub struct Progs {
    pub dir: PathBuf,
    /// `memcheck ITERATIONS [--stop-file PATH] [--stop-action exit|abort|segv] [--sleep-us N]
    /// [--abort-at N] [--segv-at N] [--corrupt-at N]`
    pub memcheck: PathBuf,
    /// `threads ITERATIONS [--thread-at N] [--thread-file PATH] [--sleep-us N] [--block-epoch]`
    pub threads: PathBuf,
    /// `pthread_zoo ITERATIONS [--stop-file PATH] [--sleep-us N]`: threads of every kind,
    /// checked every iteration (see `tests/progs/pthread_zoo.c`).
    pub pthread_zoo: PathBuf,
    /// `python_state.py ITERATIONS [--sleep-ms N] [--corrupt-at N]` (a source file: run it
    /// with [`PYTHON`]).
    pub python_state: PathBuf,
    /// `python_threads.py ITERATIONS [--stop-file PATH] [--sleep-ms N]` (threads, a
    /// `queue.Queue`, locks and a condition, checked every iteration; run it with [`PYTHON`]).
    pub python_threads: PathBuf,
    /// `pause_app PAGES DURATION_MS [THRESHOLD_NS]` (the pause benchmark's program).
    pub pause_app: PathBuf,
    /// `sigwrite HOST:PORT [SECONDS]`: a SIGALRM handler and the main loop both write lines
    /// to one socket and to stdout (see `tests/progs/sigwrite.c`).
    pub sigwrite: PathBuf,
    /// `selfexec ITERATIONS --stop-file PATH [--exec-at N]`: execs itself with new arguments
    /// at iteration N, state checked every iteration (see `tests/progs/selfexec.c`).
    pub selfexec: PathBuf,
    /// `daemonize [--once]`: fork, parent exits, setsid, fork again, then checked work (see
    /// `tests/progs/daemonize.c`).
    pub daemonize: PathBuf,
    /// `maskwait ppoll|pselect|epoll_pwait|sigsuspend`: waits for good with every signal
    /// blocked in the wait's mask (see `tests/progs/maskwait.c`).
    pub maskwait: PathBuf,
    /// `seqprint --stop-file PATH [--sleep-us N] [--fd 1|2]`: `seq N` lines, a few thousand a
    /// second, until PATH exists, then `done N` (see `tests/progs/seqprint.c`).
    pub seqprint: PathBuf,
}

fn cc(args: &[&str], what: &str) {
    require_program("cc", "gcc libc6-dev");
    let out = Command::new("cc")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc for {what}: {e}"));
    assert!(
        out.status.success(),
        "compiling {what} failed: cc {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles `src` into `dir/name` through a temporary file and a rename, so a concurrent
/// run never sees a half-written binary.
fn compile(dir: &Path, name: &str, flags: &[&str], src: &Path, libs: &[&str]) -> PathBuf {
    let dst = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let tmp_s = tmp.to_str().expect("utf-8 path");
    let src_s = src.to_str().expect("utf-8 path");
    let mut args: Vec<&str> = vec!["-g", "-Wall", "-Wextra", "-Werror"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["-o", tmp_s, src_s]);
    args.extend_from_slice(libs);
    cc(&args, name);
    fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    dst
}

/// Compiles the C test programs once per process.
pub fn progs() -> &'static Progs {
    static PROGS: OnceLock<Progs> = OnceLock::new();
    PROGS.get_or_init(|| {
        let dir = target_dir().join("remus-test-progs");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let src = repo_root().join("tests/progs");
        let rpath = format!("-Wl,-rpath,{}", dir.display());
        let ldir = format!("-L{}", dir.display());
        compile(
            &dir,
            "libzoo.so",
            &["-O1", "-shared", "-fPIC"],
            &src.join("libzoo.c"),
            &[],
        );
        let memcheck = compile(
            &dir,
            "memcheck",
            &["-O1"],
            &src.join("memcheck.c"),
            &[&ldir, "-lzoo", &rpath],
        );
        let threads = compile(
            &dir,
            "threads",
            &["-O1", "-pthread"],
            &src.join("threads.c"),
            &[],
        );
        let pthread_zoo = compile(
            &dir,
            "pthread_zoo",
            &["-O1", "-pthread"],
            &src.join("pthread_zoo.c"),
            &[],
        );
        let pause_app = compile(
            &dir,
            "pause_app",
            &["-O2"],
            &repo_root().join("benches/pause_app.c"),
            &[],
        );
        let sigwrite = compile(&dir, "sigwrite", &["-O1"], &src.join("sigwrite.c"), &[]);
        let selfexec = compile(&dir, "selfexec", &["-O1"], &src.join("selfexec.c"), &[]);
        let daemonize = compile(&dir, "daemonize", &["-O1"], &src.join("daemonize.c"), &[]);
        let maskwait = compile(&dir, "maskwait", &["-O1"], &src.join("maskwait.c"), &[]);
        let seqprint = compile(&dir, "seqprint", &["-O1"], &src.join("seqprint.c"), &[]);
        Progs {
            dir,
            memcheck,
            threads,
            pthread_zoo,
            python_state: src.join("python_state.py"),
            python_threads: src.join("python_threads.py"),
            pause_app,
            sigwrite,
            selfexec,
            daemonize,
            maskwait,
            seqprint,
        }
    })
}

// ---------------------------------------------------------------------------------------
// Temporary directories, ports, processes
// ---------------------------------------------------------------------------------------

/// A directory removed on drop (unless `REMUS_KEEP_TMP=1`). Paths stay short: unix socket
/// paths must fit in 108 bytes.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        for _ in 0..100 {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("remus-t{}-{n}-{tag}", std::process::id()));
            if fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        panic!(
            "cannot create a temporary directory in {:?}",
            std::env::temp_dir()
        );
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("REMUS_KEEP_TMP").as_deref() == Ok("1") {
            eprintln!("keeping {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A key file for the replication link, made once per test process (32 random bytes as hex,
/// mode 0600): every [`Standby::start`] and [`Protected::start`] with a standby uses it.
pub fn test_key_file() -> &'static Path {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = target_dir().join("remus-test-keys");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let p = dir.join(format!("key-{}", std::process::id()));
        write_key_file(&p);
        p
    })
}

/// Writes a new random key (hex, mode 0600) to `path`.
pub fn write_key_file(path: &Path) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .expect("reading /dev/urandom");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .unwrap_or_else(|e| panic!("writing the key file {}: {e}", path.display()));
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Polls `poll` every 20 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` with `report()` attached when the deadline passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    report: &dyn Fn() -> String,
    mut poll: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        if let Some(v) = poll() {
            return v;
        }
        if start.elapsed() >= timeout {
            break;
        }
        thread::sleep(POLL);
    }
    panic!(
        "timed out after {:.1?} waiting for {what}\n{}",
        start.elapsed(),
        report()
    );
}

/// Sends `sig` to `pid`; false if there is no such process.
pub fn signal(pid: i32, sig: i32) -> bool {
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) takes plain integers and has no memory effects in this process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_field(&s, 0).is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Field `n` (0 = state) after the `(comm)` of a `/proc/PID/stat` line.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n)
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// All descendants of `root` (children, their children, ...), found by scanning `/proc`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(pp) = stat_field(&s, 1).and_then(|x| x.parse::<i32>().ok()) {
                    parent_of.push((pid, pp));
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    // A process tree has at most as many levels as there are processes.
    for _ in 0..=parent_of.len() {
        let Some(p) = frontier.pop() else { break };
        for &(c, pp) in &parent_of {
            if pp == p && found.insert(c) {
                frontier.push(c);
            }
        }
    }
    found.into_iter().collect()
}

/// The `remusd primary` processes started for the app `app_pid` (`--app-pid N` on their
/// command line).
pub fn controllers_of(app_pid: i32) -> Vec<i32> {
    let want = format!("--app-pid\0{app_pid}\0");
    let mut found = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if comm(pid).as_deref() != Some("remusd") {
                continue;
            }
            if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(&want) {
                    found.push(pid);
                }
            }
        }
    }
    found
}

/// SIGKILLs `child`, its process group (it was started as a group leader) and every process
/// in `extra` that is still alive, then reaps `child`.
fn kill_all(child: &mut Child, extra: &[i32]) {
    let pid = child.id() as i32;
    let mut victims = descendants(pid);
    victims.extend_from_slice(extra);
    if child.try_wait().ok().flatten().is_none() {
        signal(pid, libc::SIGKILL);
    }
    // The group outlives its leader while members remain, so its id cannot be reused yet.
    // SAFETY: kill(2) with a negative pid signals a process group; plain integers only.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    for v in victims {
        if v > 0 && alive(v) {
            signal(v, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// The exit status of our child `pid` if it has ended, without reaping it.
pub fn peek_exit(pid: i32) -> Option<ExitStatus> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, which lives for the call; WNOWAIT leaves the
    // child to be reaped by its Child handle.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: after a successful waitid, si_pid and si_status are the fields it filled in.
    let (who, code) = unsafe { (info.si_pid(), info.si_status()) };
    if rc != 0 || who != pid {
        return None;
    }
    Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::from_raw((code & 0xff) << 8),
        libc::CLD_DUMPED => ExitStatus::from_raw(code | 0x80),
        _ => ExitStatus::from_raw(code),
    })
}

/// Waits for `child` to exit, for at most `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if start.elapsed() >= timeout {
            break;
        }
        thread::sleep(POLL);
    }
    None
}

/// Runs a command to completion with a deadline; kills it when the deadline passes.
/// Returns (status, stdout, stderr); status None on timeout.
pub fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    try_run_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_with_timeout`], with an error instead of a panic when the command cannot start.
pub fn try_run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(Option<ExitStatus>, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let out = reader_thread(child.stdout.take().expect("stdout"));
    let err = reader_thread(child.stderr.take().expect("stderr"));
    let st = wait_child(&mut child, timeout);
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((st, out, err))
}

fn reader_thread(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// The last `n` lines of a file ("<missing>" if it cannot be read).
pub fn tail_file(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(b) => tail(&String::from_utf8_lossy(&b), n),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].join("\n")
}

/// Describes how a process ended: "exit 3" or "signal 9".
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------

/// `remusctl status --control SOCKET --json`, parsed. Err with remusctl's output when it
/// fails (the controller is not up, or gone) or prints something that is not JSON.
pub fn status(control: &Path) -> Result<Value, String> {
    let mut cmd = Command::new(&bins().remusctl);
    cmd.arg("status")
        .arg("--control")
        .arg(control)
        .arg("--json");
    let (st, out, err) = try_run_with_timeout(&mut cmd, Duration::from_secs(10))?;
    match st {
        None => Err(format!(
            "remusctl status --control {} hung for 10 s",
            control.display()
        )),
        Some(st) if !st.success() => Err(format!(
            "remusctl status --control {} failed ({}): {}{}",
            control.display(),
            describe_status(&st),
            out.trim(),
            err.trim()
        )),
        Some(_) => serde_json::from_str(&out).map_err(|e| {
            format!("remusctl status printed something that is not JSON ({e}): {out}")
        }),
    }
}

/// `v[key]` as a string ("" if absent or not a string).
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `v[key]` as an integer (None if absent, null or not an integer).
pub fn n(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// `v["committed_epoch"]` (None while nothing is committed).
pub fn committed_epoch(v: &Value) -> Option<u64> {
    v.get("committed_epoch").and_then(Value::as_u64)
}

/// Checks that a primary's status shows its last full image streamed while the program ran
/// (issue 5: a full image "without stopping the program for longer than one epoch's pause"):
/// complete, read from the running program in at least two batches, at least `min_pages`
/// pages of it (pages the program wrote meanwhile go out with the epochs instead, so a busy
/// program leaves fewer to read). Returns (pages read, most pages copied in a pause
/// meanwhile).
pub fn assert_streamed(v: &Value, min_pages: u64) -> (u64, u64) {
    let st = v
        .get("image_stream")
        .filter(|s| !s.is_null())
        .unwrap_or_else(|| panic!("no image_stream in the primary's status: {v}"));
    let get = |k: &str| st.get(k).and_then(Value::as_u64);
    assert!(
        get("complete_epoch").is_some(),
        "the streamed image is not complete: {st}"
    );
    let (read, batches) = (get("pages_read").unwrap_or(0), get("batches").unwrap_or(0));
    assert!(batches >= 2, "the image went in {batches} batch(es): {st}");
    assert!(
        read >= min_pages,
        "only {read} pages were read while the program ran (expected at least {min_pages}): {st}"
    );
    (read, get("max_pause_pages").unwrap_or(0))
}

// ---------------------------------------------------------------------------------------
// What a user is told
// ---------------------------------------------------------------------------------------

/// The one prefix of every line remus writes on the program's stderr.
pub const REMUS_PREFIX: &str = "remus: ";

/// The lines of `stderr` (a protected program's) that remus wrote: those that begin with
/// [`REMUS_PREFIX`]. Panics, with `report()`, if any line carries the prefix twice
/// (`remus: remus: `): the user must see it once.
#[track_caller]
pub fn remus_lines(stderr: &str, report: &dyn Fn() -> String) -> Vec<String> {
    let doubled = format!("{REMUS_PREFIX}{REMUS_PREFIX}");
    if let Some(l) = stderr.lines().find(|l| l.contains(doubled.trim_end())) {
        panic!(
            "a line on stderr carries the `{}` prefix twice: {l:?}\n{}",
            REMUS_PREFIX.trim_end(),
            report()
        );
    }
    stderr
        .lines()
        .filter(|l| l.starts_with(REMUS_PREFIX))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Output of the test programs
// ---------------------------------------------------------------------------------------

/// The N of every `iter N ok` line, in order.
pub fn iters<S: AsRef<str>>(lines: &[S]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| {
            let l = l.as_ref().trim();
            let rest = l.strip_prefix("iter ")?.strip_suffix(" ok")?;
            rest.parse().ok()
        })
        .collect()
}

/// Checks the output of a restored test program: it did not start over (no `start` line),
/// no check failed (no `MISMATCH`), its `iter` lines are consecutive, the first one is
/// above `after` (an iteration the standby's state is known to include), and it ends with
/// `done N` where N is its last iteration (and N == `target` when given).
/// Returns (first, last) iteration the restored program printed.
pub fn check_restored_output(
    out: &str,
    after: u64,
    target: Option<u64>,
) -> Result<(u64, u64), String> {
    let lines: Vec<&str> = out.lines().collect();
    if let Some(l) = lines.iter().find(|l| l.contains("MISMATCH")) {
        return Err(format!("the restored program found a difference: {l}"));
    }
    if let Some(l) = lines.iter().find(|l| l.starts_with("start ")) {
        return Err(format!(
            "the program started over instead of continuing: {l}"
        ));
    }
    let it = iters(&lines);
    let first = *it
        .first()
        .ok_or_else(|| "the restored program printed no `iter N ok` line".to_string())?;
    if first <= after {
        return Err(format!(
            "the restored program continued at iteration {first}, but the standby's state \
             already included iteration {after}: it resumed from an older state than committed"
        ));
    }
    for w in it.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(format!(
                "the restored program's iterations are not consecutive: {} then {}",
                w[0], w[1]
            ));
        }
    }
    let last = *it.last().expect("non-empty");
    if let Some(t) = target {
        if last != t {
            return Err(format!(
                "the restored program stopped at iteration {last}, not {t}"
            ));
        }
    }
    if lines.last().map(|l| l.trim()) != Some(format!("done {last}").as_str()) {
        return Err(format!(
            "the restored program's output does not end with `done {last}`"
        ));
    }
    Ok((first, last))
}

// ---------------------------------------------------------------------------------------
// Standby
// ---------------------------------------------------------------------------------------

/// A `remusd standby` on 127.0.0.1 (or inside a network namespace, on its side of a veth
/// pair: [`Standby::start_in`]), with its state, sockets and logs in a temporary dir.
pub struct Standby {
    child: Child,
    exit: Option<ExitStatus>,
    pub addr: String,
    pub timeout_ms: u64,
    pub control: PathBuf,
    pub state_dir: PathBuf,
    /// Where the restored program's stdout and stderr go.
    pub app_stdout: PathBuf,
    pub app_stderr: PathBuf,
    /// `--log-file`, and remusd's own stdout/stderr.
    pub log: PathBuf,
    pub daemon_out: PathBuf,
    pub daemon_err: PathBuf,
    /// Pids seen in its status (the restored program), killed on drop.
    seen_pids: Mutex<Vec<i32>>,
    dir: TempDir,
    /// The network namespace it runs in, if any: dropped after the standby (and deleted,
    /// with anything still running in it, when nothing else holds it).
    netns: Option<Arc<Netns>>,
}

/// The port a standby inside a network namespace listens on (the namespace is the test's
/// own: nothing else can hold it).
const NETNS_PORT: u16 = 7300;

/// Where a standby listens.
#[derive(Clone, Copy)]
enum Listen<'a> {
    /// A free port on 127.0.0.1.
    AnyLoopback,
    /// This address (in the root namespace).
    At(&'a str),
    /// The namespace's side of its veth pair, from inside it.
    In(&'a Arc<Netns>),
}

impl Standby {
    /// Starts a standby with `--timeout-ms timeout_ms` and the tests' key
    /// ([`test_key_file`]), and waits until its status answers.
    pub fn start(timeout_ms: u64) -> Standby {
        Standby::start_keyed(timeout_ms, Some(test_key_file()))
    }

    /// [`Standby::start`] with `--key-file key`, or `--insecure` when `key` is None.
    pub fn start_keyed(timeout_ms: u64, key: Option<&Path>) -> Standby {
        Standby::start_with(timeout_ms, key, &[])
    }

    /// [`Standby::start_keyed`] with more `remusd standby` arguments (e.g. `--on-takeover`).
    pub fn start_with(timeout_ms: u64, key: Option<&Path>, extra: &[&str]) -> Standby {
        let mut last_report = String::new();
        // Another test may take the port between free_port() and remusd's bind: retry then.
        for attempt in 1..=3 {
            match Standby::try_start(timeout_ms, key, extra, Listen::AnyLoopback) {
                Ok(sb) => return sb,
                Err(report) => {
                    let in_use = report.contains("in use") || report.contains("AddrInUse");
                    last_report = report;
                    if !in_use {
                        break;
                    }
                    eprintln!("standby attempt {attempt}: address in use, retrying");
                }
            }
        }
        panic!("the standby did not start:\n{last_report}");
    }

    /// A new standby (fresh state directory) listening on `addr`, e.g. the address of one
    /// that was killed (a restarted standby): retries for a while when the address is still
    /// (or again, by another test) in use.
    pub fn start_on(addr: &str, timeout_ms: u64) -> Standby {
        Standby::start_on_with(addr, timeout_ms, &[])
    }

    /// [`Standby::start_on`] with more `remusd standby` arguments.
    pub fn start_on_with(addr: &str, timeout_ms: u64, extra: &[&str]) -> Standby {
        let mut last_report = String::new();
        for attempt in 1..=20 {
            match Standby::try_start(timeout_ms, Some(test_key_file()), extra, Listen::At(addr)) {
                Ok(sb) => return sb,
                Err(report) => {
                    let in_use = report.contains("in use") || report.contains("AddrInUse");
                    last_report = report;
                    if !in_use {
                        break;
                    }
                    eprintln!("standby on {addr}, attempt {attempt}: address in use, retrying");
                    thread::sleep(Duration::from_millis(250));
                }
            }
        }
        panic!("the standby did not start on {addr}:\n{last_report}");
    }

    /// A standby inside the network namespace `ns`, listening on the namespace's side of the
    /// veth pair (`ns.ns_ip`), with the tests' key (`--insecure` is for loopback only). A
    /// primary in the root namespace reaches it across the pair; the restored program runs
    /// in the namespace too. The standby holds `ns` until it is dropped.
    pub fn start_in(ns: &Arc<Netns>, timeout_ms: u64) -> Standby {
        Standby::try_start(timeout_ms, Some(test_key_file()), &[], Listen::In(ns)).unwrap_or_else(
            |report| panic!("the standby did not start in netns {}:\n{report}", ns.name),
        )
    }

    fn try_start(
        timeout_ms: u64,
        key: Option<&Path>,
        extra: &[&str],
        listen: Listen,
    ) -> Result<Standby, String> {
        let dir = TempDir::new("sb");
        let p = dir.path().to_path_buf();
        let (addr, netns) = match listen {
            Listen::AnyLoopback => (format!("127.0.0.1:{}", free_port()), None),
            Listen::At(a) => (a.to_string(), None),
            Listen::In(ns) => (format!("{}:{NETNS_PORT}", ns.ns_ip), Some(ns.clone())),
        };
        let state_dir = p.join("state");
        fs::create_dir_all(&state_dir).expect("mkdir state");
        let daemon_out = p.join("remusd.out");
        let daemon_err = p.join("remusd.err");
        let mut cmd = match &netns {
            Some(ns) => ns.command(&bins().remusd),
            None => Command::new(&bins().remusd),
        };
        cmd.arg("standby")
            .arg("--listen")
            .arg(&addr)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--timeout-ms")
            .arg(timeout_ms.to_string())
            .arg("--stdout")
            .arg(p.join("app.out"))
            .arg("--stderr")
            .arg(p.join("app.err"))
            .arg("--control")
            .arg(p.join("standby.sock"))
            .arg("--log-file")
            .arg(p.join("standby.log"))
            // Replicated files go to a copy of their own: the primary runs on this host too.
            .arg("--file-root")
            .arg(p.join("files"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&daemon_out).expect("create remusd.out"))
            .stderr(fs::File::create(&daemon_err).expect("create remusd.err"))
            .process_group(0);
        for k in [
            "LD_PRELOAD",
            "REMUS_STANDBY",
            "REMUS_CONTROL",
            "REMUS_EPOCH_MS",
            "REMUS_ALLOW_UNPROTECTED",
        ] {
            cmd.env_remove(k);
        }
        match key {
            Some(k) => cmd.arg("--key-file").arg(k),
            None => cmd.arg("--insecure"),
        };
        cmd.args(extra);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins().remusd.display()));
        let mut sb = Standby {
            child,
            exit: None,
            addr,
            timeout_ms,
            control: p.join("standby.sock"),
            state_dir,
            app_stdout: p.join("app.out"),
            app_stderr: p.join("app.err"),
            log: p.join("standby.log"),
            daemon_out,
            daemon_err,
            seen_pids: Mutex::new(Vec::new()),
            dir,
            netns,
        };
        // Up when its status answers as a standby; failed when remusd exits first.
        let start = Instant::now();
        let timeout = Duration::from_secs(30);
        for _ in 0..timeout.as_millis() / POLL.as_millis() + 2 {
            if let Some(st) = sb.try_wait() {
                return Err(format!(
                    "remusd standby exited ({}) before answering status\n{}",
                    describe_status(&st),
                    sb.report()
                ));
            }
            if let Ok(v) = status(&sb.control) {
                if s(&v, "role") == "standby" {
                    return Ok(sb);
                }
            }
            if start.elapsed() >= timeout {
                break;
            }
            thread::sleep(POLL);
        }
        Err(format!(
            "remusd standby did not answer status as a standby within {timeout:?}\n{}",
            sb.report()
        ))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The temporary directory holding the state dir, logs and sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--file-root`: where the standby keeps its copies of the replicated files.
    pub fn file_root(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Its status (and remembers the restored program's pid, to kill it on drop).
    pub fn status(&self) -> Result<Value, String> {
        let v = status(&self.control)?;
        remember_pid(&self.seen_pids, &v, "restored_pid");
        Ok(v)
    }

    /// Waits until the status satisfies `pred`; returns it.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(
            &format!("standby: {what}"),
            timeout,
            &|| self.report(),
            || self.status().ok().filter(|v| pred(v)),
        )
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for it to exit.
    pub fn wait_exit(&mut self, what: &str, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
        for _ in 0..max_polls {
            if let Some(st) = self.try_wait() {
                return st;
            }
            if start.elapsed() >= timeout {
                break;
            }
            thread::sleep(POLL);
        }
        panic!(
            "timed out after {:.1?} waiting for the standby to exit ({what})\n{}",
            start.elapsed(),
            self.report()
        );
    }

    /// SIGKILLs the standby and everything it started (in a network namespace: everything
    /// running there).
    pub fn kill(&mut self) {
        let mut extra = self.seen_pids.lock().expect("lock").clone();
        if let Some(ns) = &self.netns {
            extra.extend(ns.pids());
        }
        kill_all(&mut self.child, &extra);
        self.exit = self.child.try_wait().ok().flatten();
    }

    /// What the restored program wrote to stdout so far.
    pub fn app_stdout_text(&self) -> String {
        let b = fs::read(&self.app_stdout).unwrap_or_default();
        let skip = (self.recovered_stdout_bytes() as usize).min(b.len());
        String::from_utf8_lossy(&b[skip..]).into_owned()
    }

    /// Where the restored program's own output starts in `app_stdout`: after the primary's
    /// committed output that the standby wrote out at the takeover (DESIGN §10:
    /// `STATE_DIR/recovered.json`); 0 before a takeover.
    pub fn recovered_stdout_bytes(&self) -> u64 {
        let v = fs::read(self.state_dir.join("recovered.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k)?.as_u64()).unwrap_or(0);
        field("stdout_at") + field("stdout")
    }

    /// Logs and status, for failure messages.
    pub fn report(&self) -> String {
        let st = match status(&self.control) {
            Ok(v) => v.to_string(),
            Err(e) => e,
        };
        let place = match &self.netns {
            Some(ns) => format!(", in netns {} via {}", ns.name, ns.host_dev()),
            None => String::new(),
        };
        format!(
            "--- standby {}{place} (pid {}, dir {}) status: {st}\n--- standby log (tail):\n{}\n\
             --- standby remusd stderr (tail):\n{}\n--- standby remusd stdout (tail):\n{}\n\
             --- restored program stdout (tail):\n{}\n--- restored program stderr (tail):\n{}\n",
            self.addr,
            self.child.id(),
            self.dir.path().display(),
            tail_file(&self.log, 40),
            tail_file(&self.daemon_err, 40),
            tail_file(&self.daemon_out, 20),
            tail_file(&self.app_stdout, 10),
            tail_file(&self.app_stderr, 20),
        )
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// Protected program
// ---------------------------------------------------------------------------------------

/// How to start a protected program.
#[derive(Debug, Clone, Default)]
pub struct ProtectedOpts {
    /// `REMUS_STANDBY`; None leaves it unset.
    pub standby: Option<String>,
    /// `REMUS_EPOCH_MS`; None leaves it unset (the default).
    pub epoch_ms: Option<u64>,
    /// `REMUS_ALLOW_UNPROTECTED=1`.
    pub allow_unprotected: bool,
    /// `REMUS_KEY_FILE`; None: the tests' key ([`test_key_file`]) when a standby is set,
    /// unless `insecure` or `no_key`.
    pub key_file: Option<PathBuf>,
    /// `REMUS_INSECURE=1` (no key).
    pub insecure: bool,
    /// Neither a key nor `REMUS_INSECURE` (to see the refusal).
    pub no_key: bool,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

/// A program started with `LD_PRELOAD=libremus.so`, its stdout and stderr captured line by
/// line, its control socket in a temporary dir.
pub struct Protected {
    child: Child,
    exit: Option<ExitStatus>,
    pub name: String,
    pub control: PathBuf,
    out: Arc<Mutex<Vec<String>>>,
    /// Its stdout byte for byte (a last line without its newline stays so).
    out_raw: Arc<Mutex<Vec<u8>>>,
    /// Its stderr byte for byte.
    err_raw: Arc<Mutex<Vec<u8>>>,
    /// The stdout and stderr readers stop reading while set (a slow reader: the pipes fill).
    out_paused: Arc<AtomicBool>,
    err: Arc<Mutex<Vec<String>>>,
    out_eof: Arc<AtomicBool>,
    err_eof: Arc<AtomicBool>,
    /// The controller's pid, once seen in a status (killed on drop).
    seen_pids: Mutex<Vec<i32>>,
    dir: TempDir,
}

/// How long a paused reader ([`Protected::pause_stdout`]) stays paused at most.
const READER_PAUSE_MAX: Duration = Duration::from_secs(120);

/// A stream's bytes as read, and the flag that pauses its reader.
type RawCapture = (Arc<Mutex<Vec<u8>>>, Arc<AtomicBool>);

fn line_reader(
    r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    raw: Option<RawCapture>,
    eof: Arc<AtomicBool>,
) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        // Bounded by the stream: read_until returns 0 at end of file.
        loop {
            if let Some((_, paused)) = &raw {
                let since = Instant::now();
                while paused.load(Ordering::SeqCst) && since.elapsed() < READER_PAUSE_MAX {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some((raw, _)) = &raw {
                        raw.lock().expect("lock").extend_from_slice(&buf);
                    }
                    let l = String::from_utf8_lossy(&buf)
                        .trim_end_matches('\n')
                        .to_string();
                    into.lock().expect("lock").push(l);
                }
            }
        }
        eof.store(true, Ordering::SeqCst);
    });
}

impl Protected {
    /// Starts `prog args...` under the shim.
    pub fn start(prog: &Path, args: &[&str], opts: &ProtectedOpts) -> Protected {
        let dir = TempDir::new("app");
        let control = dir.path().join("primary.sock");
        let b = bins();
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .env("LD_PRELOAD", &b.lib)
            .env("REMUS_CONTROL", &control)
            .env("REMUS_REMUSD", &b.remusd)
            .env_remove("REMUS_STANDBY")
            .env_remove("REMUS_EPOCH_MS")
            .env_remove("REMUS_ALLOW_UNPROTECTED")
            .env_remove("REMUS_PROTECTED_PID")
            .env_remove("REMUS_PRIMARY_ARGS")
            .env_remove("REMUS_KEY_FILE")
            .env_remove("REMUS_INSECURE")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(sb) = &opts.standby {
            cmd.env("REMUS_STANDBY", sb);
        }
        if let Some(e) = opts.epoch_ms {
            cmd.env("REMUS_EPOCH_MS", e.to_string());
        }
        if opts.allow_unprotected {
            cmd.env("REMUS_ALLOW_UNPROTECTED", "1");
        }
        if opts.insecure {
            cmd.env("REMUS_INSECURE", "1");
        }
        match &opts.key_file {
            Some(k) => {
                cmd.env("REMUS_KEY_FILE", k);
            }
            None if opts.standby.is_some() && !opts.insecure && !opts.no_key => {
                cmd.env("REMUS_KEY_FILE", test_key_file());
            }
            None => {}
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", prog.display()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let out_eof = Arc::new(AtomicBool::new(false));
        let err_eof = Arc::new(AtomicBool::new(false));
        let out_raw = Arc::new(Mutex::new(Vec::new()));
        let err_raw = Arc::new(Mutex::new(Vec::new()));
        let out_paused = Arc::new(AtomicBool::new(false));
        line_reader(
            child.stdout.take().expect("stdout"),
            out.clone(),
            Some((out_raw.clone(), out_paused.clone())),
            out_eof.clone(),
        );
        line_reader(
            child.stderr.take().expect("stderr"),
            err.clone(),
            Some((err_raw.clone(), out_paused.clone())),
            err_eof.clone(),
        );
        let name = std::iter::once(prog.display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        Protected {
            child,
            exit: None,
            name,
            control,
            out,
            out_raw,
            err_raw,
            out_paused,
            err,
            out_eof,
            err_eof,
            seen_pids: Mutex::new(Vec::new()),
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The program this handle started still runs: not exited, and not reaped (until it is
    /// reaped its pid is not reused). After a takeover on this host the restored program has
    /// the same pid (restore gives the image's ids back), so `alive(pid)` alone cannot tell
    /// the two apart.
    pub fn original_alive(&self) -> bool {
        self.exit.is_none() && peek_exit(self.pid()).is_none() && alive(self.pid())
    }

    /// The lines printed to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.out.lock().expect("lock").clone()
    }

    /// What it printed to stdout so far, byte for byte.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        self.out_raw.lock().expect("lock").clone()
    }

    /// What it printed to stderr so far, byte for byte.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.err_raw.lock().expect("lock").clone()
    }

    /// Stops (true) or resumes (false) reading the program's stdout and stderr, as a slow
    /// reader would: the pipes fill and what the primary may release waits in `remusd
    /// primary`. A paused reader resumes by itself after two minutes.
    pub fn pause_output(&self, paused: bool) {
        self.out_paused.store(paused, Ordering::SeqCst);
    }

    /// What it printed to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.err.lock().expect("lock").join("\n")
    }

    /// The highest `iter N ok` printed so far (0 if none).
    pub fn max_iter(&self) -> u64 {
        iters(&self.stdout_lines()).into_iter().max().unwrap_or(0)
    }

    /// The primary's status (and remembers the controller's pid, to kill it on drop).
    pub fn status(&self) -> Result<Value, String> {
        let v = status(&self.control)?;
        remember_pid(&self.seen_pids, &v, "controller_pid");
        Ok(v)
    }

    /// Waits until the primary's status satisfies `pred`; returns it.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut gone_polls = 0;
        wait_for(
            &format!("primary: {what}"),
            timeout,
            &|| self.report(),
            || match self.status() {
                Ok(v) => pred(&v).then_some(v),
                Err(e) => {
                    // The program is gone and nobody answers: no point in waiting longer
                    // (a few polls' grace for a controller that lingers on purpose).
                    if self.exit.is_some() || peek_exit(self.pid()).is_some() {
                        gone_polls += 1;
                        if gone_polls > 50 {
                            panic!(
                                "primary: {what}: the program has ended and its controller does \
                                 not answer ({e})\n{}",
                                self.report()
                            );
                        }
                    }
                    None
                }
            },
        )
    }

    /// Waits until the primary has committed at least epoch `epoch`; returns the status.
    pub fn wait_committed(&self, epoch: u64, timeout: Duration) -> Value {
        self.wait_status(&format!("committed_epoch >= {epoch}"), timeout, |v| {
            committed_epoch(v).is_some_and(|c| c >= epoch)
        })
    }

    /// Waits until a stdout line satisfies `pred`; returns it.
    pub fn wait_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        wait_for(
            &format!("app output: {what}"),
            timeout,
            &|| self.report(),
            || {
                self.out
                    .lock()
                    .expect("lock")
                    .iter()
                    .find(|l| pred(l))
                    .cloned()
            },
        )
    }

    /// Waits until the program printed `iter N ok` with N >= `n`.
    pub fn wait_iter(&self, n: u64, timeout: Duration) {
        wait_for(
            &format!("app output: iter >= {n}"),
            timeout,
            &|| self.report(),
            || (self.max_iter() >= n).then_some(()),
        )
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for the program to exit and for its stdout to reach end of file (at most
    /// `timeout` in all); returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        let st = match wait_child(&mut self.child, timeout) {
            Some(st) => st,
            None => panic!(
                "timed out after {timeout:?} waiting for the program to exit\n{}",
                self.report()
            ),
        };
        self.exit = Some(st);
        self.wait_eof(timeout.saturating_sub(start.elapsed()) + Duration::from_secs(2));
        st
    }

    /// Waits (bounded) until both output streams reached end of file: everything the
    /// primary side released is then in [`Protected::stdout_lines`].
    pub fn wait_eof(&self, timeout: Duration) {
        wait_for(
            "the program's stdout and stderr to close",
            timeout,
            &|| self.report(),
            || {
                (self.out_eof.load(Ordering::SeqCst) && self.err_eof.load(Ordering::SeqCst))
                    .then_some(())
            },
        )
    }

    /// Simulates the primary host dying: freezes, then SIGKILLs, the controller
    /// (`remusd primary`) and the app, the controller first so that it can tell nobody
    /// anything. Returns (app_pid, controller_pid) as read from the status.
    pub fn kill_primary_side(&mut self) -> (i32, i32) {
        let v = self.status().unwrap_or_else(|e| {
            panic!(
                "cannot read the primary's status before killing it: {e}\n{}",
                self.report()
            )
        });
        let app = n(&v, "app_pid").unwrap_or(0) as i32;
        let ctl = n(&v, "controller_pid").unwrap_or(0) as i32;
        assert_eq!(
            app,
            self.pid(),
            "status app_pid is not the program we started\nstatus: {v}\n{}",
            self.report()
        );
        assert!(
            ctl > 0 && ctl != app && comm(ctl).as_deref() == Some("remusd"),
            "status controller_pid {ctl} is not a running remusd (comm {:?})\nstatus: {v}",
            comm(ctl)
        );
        signal(ctl, libc::SIGSTOP);
        signal(app, libc::SIGSTOP);
        signal(ctl, libc::SIGKILL);
        signal(app, libc::SIGKILL);
        let st = wait_child(&mut self.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the app did not die after SIGKILL\n{}", self.report()));
        self.exit = Some(st);
        wait_for(
            "remusd primary to die after SIGKILL",
            Duration::from_secs(10),
            &|| self.report(),
            || (!alive(ctl)).then_some(()),
        );
        (app, ctl)
    }

    /// SIGKILLs the app and its controller (found in the status, or as the `remusd` whose
    /// command line names the app's pid: it runs in a session of its own).
    pub fn kill(&mut self) {
        let mut extra = self.seen_pids.lock().expect("lock").clone();
        extra.extend(controllers_of(self.pid()));
        kill_all(&mut self.child, &extra);
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
    }

    /// The log of its `remusd primary`: /tmp/remus-<uid>/primary-<app pid>.log (remusd's
    /// default; the tests do not set another).
    pub fn log_path(&self) -> PathBuf {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        PathBuf::from(format!("/tmp/remus-{uid}/primary-{}.log", self.pid()))
    }

    /// Output and status, for failure messages.
    pub fn report(&self) -> String {
        let st = match status(&self.control) {
            Ok(v) => v.to_string(),
            Err(e) => e,
        };
        let out = self.stdout_lines();
        let from = out.len().saturating_sub(10);
        let ended = match self.exit.or_else(|| peek_exit(self.pid())) {
            Some(st) => describe_status(&st),
            None => "running".to_string(),
        };
        let log = self.log_path();
        format!(
            "--- protected `{}` (pid {}, {ended}, dir {}) status: {st}\n--- its stdout ({} lines; tail):\n{}\n\
             --- its stderr (tail):\n{}\n--- remusd primary log {} (tail):\n{}\n",
            self.name,
            self.child.id(),
            self.dir.path().display(),
            out.len(),
            out[from..].join("\n"),
            tail(&self.stderr_text(), 30),
            log.display(),
            tail_file(&log, 30),
        )
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iters_parses_only_iter_lines() {
        let lines = [
            "start pid 3 iterations 9",
            "iter 4 ok",
            "iter x ok",
            "iter 5 ok",
            "done 9",
        ];
        assert_eq!(iters(&lines), vec![4, 5]);
    }

    #[test]
    fn remus_lines_keeps_ours_and_refuses_a_doubled_prefix() {
        let err = "app: hello\nremus: no standby\n  remus: indented\n";
        assert_eq!(remus_lines(err, &String::new), vec!["remus: no standby"]);
        assert!(remus_lines("", &String::new).is_empty());
        for bad in [
            "remus: remus: no standby",
            "x\nremus: WARNING: remus: remus: why",
        ] {
            let r = std::panic::catch_unwind(|| remus_lines(bad, &String::new));
            assert!(r.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn restored_output_checks() {
        let good = "iter 8 ok\niter 9 ok\niter 10 ok\ndone 10\n";
        assert_eq!(check_restored_output(good, 7, Some(10)), Ok((8, 10)));
        assert_eq!(check_restored_output(good, 7, None), Ok((8, 10)));
        assert!(
            check_restored_output(good, 8, None).is_err(),
            "8 was committed already"
        );
        assert!(
            check_restored_output(good, 7, Some(11)).is_err(),
            "not the target"
        );
        assert!(check_restored_output("iter 8 ok\niter 10 ok\ndone 10\n", 7, None).is_err());
        assert!(
            check_restored_output("start pid 1 iterations 10\niter 8 ok\ndone 8", 0, None).is_err()
        );
        assert!(check_restored_output("iter 8 ok\nMISMATCH bss at iter 9\n", 7, None).is_err());
        assert!(
            check_restored_output("iter 9 ok\niter 10 ok\n", 7, None).is_err(),
            "no done"
        );
        assert!(check_restored_output("iter 9 ok\niter 10 ok\ndone 9\n", 7, None).is_err());
        assert!(check_restored_output("", 0, None).is_err());
    }

    #[test]
    fn peek_exit_sees_code_and_signal_without_reaping() {
        let mut c = Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh");
        let st = wait_for("sh to exit", Duration::from_secs(10), &String::new, || {
            peek_exit(c.id() as i32)
        });
        assert_eq!(st.code(), Some(3));
        assert_eq!(c.wait().expect("wait").code(), Some(3), "still reapable");
        let mut c = Command::new("/bin/sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .expect("sh");
        let st = wait_for("sh to die", Duration::from_secs(10), &String::new, || {
            peek_exit(c.id() as i32)
        });
        assert_eq!(st.signal(), Some(9));
        assert_eq!(c.wait().expect("wait").signal(), Some(9));
    }

    #[test]
    fn descendants_finds_a_grandchild() {
        let mut c = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let pid = c.id() as i32;
        let found = wait_for(
            "sh to start sleep",
            Duration::from_secs(10),
            &String::new,
            || {
                let d = descendants(pid);
                (!d.is_empty()).then_some(d)
            },
        );
        assert!(found.iter().all(|&p| p != pid));
        kill_all(&mut c, &[]);
        for p in found {
            wait_for(
                "the grandchild to die",
                Duration::from_secs(10),
                &String::new,
                || (!alive(p)).then_some(()),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The failover scenario shared by the failover tests
// ---------------------------------------------------------------------------------------

/// What a failover run saw.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The primary's committed epoch just before the kill.
    pub committed_at_kill: u64,
    /// An iteration the committed state is known to include: the program had printed it
    /// before the status showed that epoch `e` was the last one taken, and the kill came
    /// after epoch `e + 2` was committed.
    pub known_committed: u64,
    /// The highest iteration whose output left the primary before it died.
    pub released: u64,
    /// The first and last iterations the restored program printed.
    pub first_restored: u64,
    pub last_restored: u64,
}

impl Failover {
    /// Iterations whose output left the primary but which the restored program did again:
    /// output released before its epoch committed. 0 when output commit works.
    pub fn output_ahead(&self) -> u64 {
        self.released
            .saturating_sub(self.first_restored.saturating_sub(1))
    }
}

/// Runs `prog args... --stop-file F` (a test program that runs until F exists) protected by
/// a fresh standby; once the primary has committed at least `after_epochs` epochs, kills the
/// primary side (app and `remusd primary`) with SIGKILL; then requires that the standby
/// takes over and that the restored program continues after the last iteration the
/// committed state is known to hold (it does not start over, and its own checks of all its
/// memory pass), runs on for `run_after` more iterations, stops when told, and that the
/// standby exits 0 with it.
///
/// No wall clock is involved: the moment of the kill is counted in committed epochs, and
/// the lower bound on the restored iteration comes from ordering alone: the lines the test
/// had read before a status said epoch `e` was the latest were printed before epoch `e + 1`
/// was even started, so a standby holding epoch `e + 2` holds them.
pub fn failover_scenario(
    prog: &Path,
    args: &[&str],
    after_epochs: u64,
    run_after: u64,
) -> Failover {
    failover_scenario_env(prog, args, after_epochs, run_after, &[])
}

/// [`failover_scenario`] with more environment variables for the protected program (e.g.
/// `REMUS_TRACKER=mprotect`).
pub fn failover_scenario_env(
    prog: &Path,
    args: &[&str],
    after_epochs: u64,
    run_after: u64,
    env: &[(&str, &str)],
) -> Failover {
    let long = Duration::from_secs(180);
    let mut standby = Standby::start(500);
    let stop = standby.dir().join("stop");
    let stop_s = stop.to_str().expect("utf-8 path").to_string();
    let mut all_args: Vec<&str> = args.to_vec();
    all_args.extend_from_slice(&["--stop-file", &stop_s]);
    let mut app = Protected::start(
        prog,
        &all_args,
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
    );
    // Waits for a committed epoch; fails at once if protection stopped (it never resumes).
    let wait_committed = |epoch: u64| -> Value {
        let both = || format!("{}{}", app.report(), standby.report());
        wait_for(
            &format!("primary: committed_epoch >= {epoch}"),
            long,
            &both,
            || {
                let v = app.status().ok()?;
                if v.get("protected") == Some(&Value::Bool(false))
                    && !matches!(s(&v, "state"), "starting" | "syncing")
                {
                    panic!(
                        "protection stopped before epoch {epoch} was committed: {}\n{}",
                        s(&v, "reason"),
                        both()
                    );
                }
                committed_epoch(&v).is_some_and(|c| c >= epoch).then_some(v)
            },
        )
    };
    wait_committed(after_epochs);
    // Committed output is written out by remusd's release thread after the ack: on a loaded
    // machine the start line can still be on its way. Kill only once the reader has it, so
    // the check below (the released output begins with it) is about order, not timing.
    app.wait_line("the start line released", long, |l| l.starts_with("start "));
    // Ordering, not time: lines read now were printed before epoch `taken + 1` started.
    let known_committed = app.max_iter();
    let v = app
        .status()
        .unwrap_or_else(|e| panic!("primary status: {e}\n{}", app.report()));
    let taken = v
        .get("epoch")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("the primary's status has no epoch number: {v}"));
    let v = wait_committed(taken + 2);
    let committed_at_kill = committed_epoch(&v).unwrap_or(0);
    app.kill_primary_side();
    // Everything the primary side let out is in the pipe: read it to the end.
    app.wait_eof(Duration::from_secs(30));
    let out = app.stdout_lines();
    if let Some(l) = out.iter().find(|l| l.contains("MISMATCH")) {
        panic!(
            "the program failed its own check before failover: {l}\n{}",
            app.report()
        );
    }
    assert!(
        out.first().is_some_and(|l| l.starts_with("start ")),
        "the program did not print its start line\n{}",
        app.report()
    );
    let released = iters(&out).into_iter().max().unwrap_or(0);

    let report = || format!("{}{}", standby.report(), app.report());
    let sv = wait_for(
        "the standby to take over (state took_over with a restored_pid)",
        long,
        &report,
        || {
            standby
                .status()
                .ok()
                .filter(|v| s(v, "state") == "took_over" && n(v, "restored_pid").is_some())
        },
    );
    let restored = n(&sv, "restored_pid").unwrap_or(0) as i32;
    // The restored program runs until told to stop: let it run `run_after` iterations.
    wait_for(
        &format!("the restored program to print {run_after} iterations"),
        long,
        &report,
        || {
            if peek_exit(standby.pid()).is_some() || (restored > 0 && !alive(restored)) {
                panic!(
                    "the restored program (pid {restored}) ended before it was told to stop\n{}",
                    report()
                );
            }
            let it = iters(&standby.app_stdout_text().lines().collect::<Vec<_>>());
            (it.len() as u64 >= run_after).then_some(())
        },
    );
    fs::write(&stop, b"stop\n").expect("write the stop file");
    let st = standby.wait_exit("the restored program to stop", long);
    let text = standby.app_stdout_text();
    let (first_restored, last_restored) = match check_restored_output(&text, known_committed, None)
    {
        Ok(f) => f,
        Err(e) => panic!(
            "{e}\n(known committed: iteration {known_committed}; released before the \
                 kill: iteration {released}; committed epoch at kill: {committed_at_kill})\n{}",
            standby.report()
        ),
    };
    assert_eq!(
        st.code(),
        Some(0),
        "the standby should exit with the restored program's exit code 0, got {}\n{}",
        describe_status(&st),
        standby.report()
    );
    Failover {
        committed_at_kill,
        known_committed,
        released,
        first_restored,
        last_restored,
    }
}
