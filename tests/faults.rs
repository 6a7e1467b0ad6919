//! Fault injection (issue 5): the self-checking `memcheck` program runs protected while the
//! test kills, freezes, cuts off and disturbs the pieces around it, and checks the promises:
//!
//! - the program either continues on the primary or resumes on the standby from a committed
//!   epoch (its own checks of all its memory passing, iterations consecutive);
//! - no client sees output from a lost state: the highest iteration that left the primary is
//!   below the first one the restored program prints;
//! - the program never runs on two hosts at once: after a takeover the primary's app is dead;
//! - nothing hangs: every wait has a generous deadline (no wall-clock pass/fail thresholds).
//!
//! Quick mode (plain `cargo test`): a handful of each fault. Long mode (an ignored test):
//! `cargo test --test faults -- --ignored --nocapture long_mode` runs many (500
//! kills by default; `REMUS_FAULTS_KILLS`, `REMUS_FAULTS_OTHERS` and `REMUS_FAULTS_SEED`
//! override the counts and the seed) and prints the table: fault, count, survived, skipped,
//! committed epochs lost, client-visible violations.
//!
//! The link cut is a real one: the standby runs in a network namespace of its own
//! (`remus::netns`), the primary reaches it over a veth pair, and the test sets the pair
//! down and up. That needs root (CAP_NET_ADMIN); without it the test fails and says so. The
//! out-of-space case needs root too (it mounts a tmpfs): without it it fails as skipped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use remus::netns::Netns;
use remus::{
    check_restored_output, committed_epoch, describe_status, iters, n, peek_exit, progs, s, signal,
    wait_for, Protected, ProtectedOpts, Standby, TempDir,
};
use serde_json::Value;

/// Deadline for anything that should happen (against hangs only).
const LONG: Duration = Duration::from_secs(90);
/// The standby's failure timeout.
const TIMEOUT_MS: u64 = 500;
/// Iterations the restored (or surviving) program runs after a fault before it is stopped.
const RUN_AFTER: u64 = 50;

// ---------------------------------------------------------------------------------------
// Seeded randomness (no dependency: xorshift64*)
// ---------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    std::env::var("REMUS_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_fa17)
}

// ---------------------------------------------------------------------------------------
// What one injected fault led to
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Outcome {
    /// The program survived: it continued on one side with its checks passing.
    survived: bool,
    /// The fault could not be injected here (the ENOSPC case without root): neither survived
    /// nor failed, counted apart, and never a pass.
    skipped: bool,
    /// Committed epochs lost: the restored program resumed at or below an iteration the
    /// standby's committed state was known to hold.
    lost: u64,
    /// Client-visible violations: output from a lost state left the primary, or the program
    /// ran on both sides at once.
    violations: u64,
    /// Where the program ended up ("primary", "standby").
    side: &'static str,
    note: String,
}

/// A protected memcheck with a standby (possibly behind a proxy) and a stop file.
struct Run {
    sb: Standby,
    app: Protected,
    stop: PathBuf,
    /// Holds the stop file (outlives a standby that is replaced).
    _tmp: TempDir,
}

impl Run {
    /// memcheck (`--sleep-us sleep_us` when not 0) protected by `sb`; the primary talks to
    /// the standby at `via` (its address, or a proxy's).
    fn start(sb: Standby, via: &str, sleep_us: u64) -> Run {
        let tmp = TempDir::new("faults");
        let stop = tmp.path().join("stop");
        let sleep = sleep_us.to_string();
        let mut args = vec!["0", "--stop-file", stop.to_str().expect("utf-8 path")];
        if sleep_us > 0 {
            args.extend_from_slice(&["--sleep-us", &sleep]);
        }
        let app = Protected::start(
            &progs().memcheck,
            &args,
            &ProtectedOpts {
                standby: Some(via.to_string()),
                ..Default::default()
            },
        );
        Run {
            sb,
            app,
            stop,
            _tmp: tmp,
        }
    }

    fn report(&self) -> String {
        format!("{}{}", self.app.report(), self.sb.report())
    }

    /// Waits for committed epoch `e` on the primary; panics if protection stopped first.
    fn wait_committed(&self, e: u64) -> Value {
        wait_for(
            &format!("primary: committed_epoch >= {e}"),
            LONG,
            &|| self.report(),
            || {
                let v = self.app.status().ok()?;
                if v.get("protected") == Some(&Value::Bool(false))
                    && !matches!(s(&v, "state"), "starting" | "syncing")
                {
                    panic!(
                        "protection stopped before epoch {e}: {}\n{}",
                        s(&v, "reason"),
                        self.report()
                    );
                }
                committed_epoch(&v).is_some_and(|c| c >= e).then_some(v)
            },
        )
    }

    /// An iteration the standby's committed state is known to hold (see
    /// `remus::failover_scenario`: lines read before the status said epoch `e` was the last
    /// taken were printed before epoch `e + 1` started; then wait for `e + 2` committed).
    fn known_committed(&self, after_epochs: u64) -> u64 {
        self.wait_committed(after_epochs);
        let known = self.app.max_iter();
        let v = self
            .app
            .status()
            .unwrap_or_else(|e| panic!("primary status: {e}\n{}", self.report()));
        let taken = v.get("epoch").and_then(Value::as_u64).unwrap_or(0);
        self.wait_committed(taken + 2);
        known
    }

    fn primary_released(&self) -> u64 {
        self.app.max_iter()
    }

    fn standby_took_over(&self) -> Option<Value> {
        self.sb
            .status()
            .ok()
            .filter(|v| s(v, "state") == "took_over" && n(v, "restored_pid").is_some())
    }

    /// After a takeover: the primary's app must be (or become, fenced) dead; the restored
    /// program runs on, is stopped, and its output is checked against `known`.
    fn finish_on_standby(&mut self, known: u64, mut o: Outcome) -> Outcome {
        o.side = "standby";
        let sv = self.sb.wait_status("took_over", LONG, |v| {
            s(v, "state") == "took_over" && n(v, "restored_pid").is_some()
        });
        let restored = n(&sv, "restored_pid").unwrap_or(0) as i32;
        // Never two at once: the old app dies (killed by us, or fenced by its remusd).
        let app_pid = self.app.pid();
        let dead = wait_until(Duration::from_secs(20), || !self.app.original_alive());
        if !dead {
            o.violations += 1;
            o.note += &format!(
                "BOTH RUNNING: the standby took over (restored pid {restored}) and the primary's \
                 app {app_pid} is still alive 20 s later (primary status: {}); ",
                self.app
                    .status()
                    .map(|v| format!("state {} reason {}", s(&v, "state"), s(&v, "reason")))
                    .unwrap_or_else(|e| e)
            );
            // End it so that the rest can be checked; the violation is counted.
            self.app.kill();
        }
        self.app.wait_eof(LONG);
        let released = self.primary_released();
        if let Some(l) = self
            .app
            .stdout_lines()
            .iter()
            .find(|l| l.contains("MISMATCH"))
        {
            o.note += &format!("primary failed its check before the fault: {l}; ");
            return o;
        }
        wait_for(
            &format!("the restored program to print {RUN_AFTER} iterations"),
            LONG,
            &|| self.report(),
            || {
                if peek_exit(self.sb.pid()).is_some() {
                    return Some(());
                }
                let it = iters(&self.sb.app_stdout_text().lines().collect::<Vec<_>>());
                (it.len() as u64 >= RUN_AFTER).then_some(())
            },
        );
        std::fs::write(&self.stop, b"stop\n").expect("write the stop file");
        let st = self.sb.wait_exit("the restored program to stop", LONG);
        let text = self.sb.app_stdout_text();
        match check_restored_output(&text, 0, None) {
            Err(e) => o.note += &format!("restored program: {e}; "),
            Ok((first, _last)) => {
                if first <= known {
                    o.lost += 1;
                    o.note += &format!(
                        "committed epoch lost: resumed at {first}, committed state held {known}; "
                    );
                }
                if released >= first {
                    o.violations += 1;
                    o.note += &format!(
                        "OUTPUT FROM A LOST STATE: the primary released iteration {released}, \
                         the standby resumed at {first}; "
                    );
                }
                o.survived = st.code() == Some(0);
                if !o.survived {
                    o.note += &format!("the standby ended with {}; ", describe_status(&st));
                }
            }
        }
        o
    }

    /// The program continues on the primary: it must keep going for `RUN_AFTER` more
    /// iterations, the standby must not take over meanwhile, then it stops cleanly.
    fn finish_on_primary(&mut self, mut o: Outcome) -> Outcome {
        o.side = "primary";
        let from = self.app.max_iter();
        wait_for(
            "the primary program to continue",
            LONG,
            &|| self.report(),
            || {
                if let Some(sv) = self.standby_took_over() {
                    return Some(Some(sv));
                }
                if peek_exit(self.app.pid()).is_some() {
                    return Some(None);
                }
                (self.app.max_iter() >= from + RUN_AFTER).then_some(None)
            },
        );
        // Three failure timeouts more: a standby that was going to take over has done so.
        thread::sleep(Duration::from_millis(3 * TIMEOUT_MS));
        if let Some(sv) = self.standby_took_over() {
            let restored = n(&sv, "restored_pid").unwrap_or(0) as i32;
            if self.app.original_alive() {
                o.violations += 1;
                o.note += &format!(
                    "BOTH RUNNING: the primary went on (status {}) and the standby took over \
                     too (restored pid {restored}); ",
                    self.app
                        .status()
                        .map(|v| format!("{} / {}", s(&v, "state"), s(&v, "reason")))
                        .unwrap_or_else(|e| e)
                );
                // Output the primary released beyond what the standby resumed from.
                self.app.kill();
                self.app.wait_eof(LONG);
                let released = self.primary_released();
                let first = wait_for(
                    "the restored program's first line",
                    LONG,
                    &String::new,
                    || {
                        iters(&self.sb.app_stdout_text().lines().collect::<Vec<_>>())
                            .first()
                            .copied()
                    },
                );
                if released >= first {
                    o.violations += 1;
                    o.note += &format!(
                        "OUTPUT FROM A LOST STATE: the primary released iteration {released}, \
                         the standby resumed at {first}; "
                    );
                }
                return o;
            }
            // The app died (fenced): the standby's copy is the one.
            return self.finish_on_standby(0, o);
        }
        std::fs::write(&self.stop, b"stop\n").expect("write the stop file");
        let st = self.app.wait_exit(LONG);
        let out = self.app.stdout_lines();
        let text = out.join("\n") + "\n";
        // The whole run on the primary: started once, consecutive, done, checks passed.
        let body: String = out
            .iter()
            .filter(|l| !l.starts_with("start "))
            .map(|l| format!("{l}\n"))
            .collect();
        match check_restored_output(&body, 0, None) {
            Ok(_) if st.code() == Some(0) => o.survived = true,
            Ok(_) => {
                o.note += &format!("the primary program ended with {}; ", describe_status(&st))
            }
            Err(e) => o.note += &format!("primary output: {e}\n{}; ", remus::tail(&text, 5)),
        }
        o
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// The faults
// ---------------------------------------------------------------------------------------

/// `kill -9` of the primary side (app and `remusd primary`) at a random moment.
fn fault_kill9(rng: &mut Rng) -> Outcome {
    let sb = Standby::start(TIMEOUT_MS);
    let addr = sb.addr.clone();
    let mut r = Run::start(sb, &addr, 0);
    let after = rng.range(1, 25);
    let known = r.known_committed(after);
    thread::sleep(Duration::from_millis(rng.range(0, 60)));
    r.app.kill_primary_side();
    let o = Outcome {
        note: format!("after {after} epochs; "),
        ..Default::default()
    };
    r.finish_on_standby(known, o)
}

/// `SIGSTOP` of the primary side past the failure timeout, then `SIGCONT`: the standby takes
/// over and the woken primary is fenced (kills its app, releases nothing).
fn fault_sigstop(rng: &mut Rng) -> Outcome {
    let sb = Standby::start(TIMEOUT_MS);
    let addr = sb.addr.clone();
    let mut r = Run::start(sb, &addr, 2000);
    let known = r.known_committed(rng.range(3, 15));
    let v = r.app.status().expect("primary status");
    let app = n(&v, "app_pid").unwrap_or(0) as i32;
    let ctl = n(&v, "controller_pid").unwrap_or(0) as i32;
    assert!(app > 0 && ctl > 0, "status without pids: {v}");
    signal(ctl, libc::SIGSTOP);
    signal(app, libc::SIGSTOP);
    r.sb.wait_status("the standby to take over", LONG, |v| {
        s(v, "state") == "took_over"
    });
    // Wake the app first (it runs on with its output held), then its remusd.
    signal(app, libc::SIGCONT);
    thread::sleep(Duration::from_millis(rng.range(0, 300)));
    signal(ctl, libc::SIGCONT);
    let mut o = Outcome::default();
    let st = r.app.wait_exit(LONG);
    if st.signal() != Some(libc::SIGKILL) {
        o.note += &format!(
            "the fenced app ended with {} instead of SIGKILL; ",
            describe_status(&st)
        );
    }
    let ps = r.app.status().map(|v| s(&v, "state").to_string());
    if let Ok(state) = &ps {
        if state != "superseded" {
            o.note += &format!("primary state {state}, expected superseded; ");
        }
    }
    r.finish_on_standby(known, o)
}

/// The replication link cut for real, then restored: the standby runs in a network namespace
/// of its own, across a veth pair from the primary (in the root namespace), and the root-side
/// end of the pair is set down for 3-4 s (the failure timeout is 0.5 s), then up again. No
/// byte passes either way and neither side is told anything: the standby takes over from its
/// last committed epoch; the primary finds the standby unreachable (so it may have taken
/// over), keeps everything it holds, and is told "superseded" when the link comes back.
fn fault_link_cut(rng: &mut Rng) -> Outcome {
    let ns = Arc::new(Netns::create());
    let sb = Standby::start_in(&ns, TIMEOUT_MS);
    let addr = sb.addr.clone();
    let mut r = Run::start(sb, &addr, 2000);
    let known = r.known_committed(rng.range(3, 15));
    let down_for = Duration::from_millis(rng.range(3000, 4000));
    ns.link_down();
    let cut = Instant::now();
    // Both sides give up on the other: the standby after TIMEOUT_MS; the primary after its
    // link's lost-after (then it asks the standby, and finds the network unreachable).
    let (mut took_over, mut noticed) = (None, None);
    wait_until(Duration::from_secs(15), || {
        if took_over.is_none() && r.standby_took_over().is_some() {
            took_over = Some(cut.elapsed());
        }
        if noticed.is_none()
            && r.app
                .status()
                .is_ok_and(|v| v.get("protected") == Some(&Value::Bool(false)))
        {
            noticed = Some(cut.elapsed());
        }
        took_over.is_some() && noticed.is_some()
    });
    assert!(
        took_over.is_some() || noticed.is_some(),
        "nothing happened in the 15 s after the cut\n{}",
        r.report()
    );
    let ms =
        |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{} ms", d.as_millis()));
    let mut o = Outcome {
        note: format!(
            "link down {} ms; standby took over after {}; primary noticed after {}; ",
            down_for.as_millis(),
            ms(took_over),
            ms(noticed)
        ),
        ..Default::default()
    };
    thread::sleep(down_for.saturating_sub(cut.elapsed()));
    // What the primary does while cut off: hold (it cannot know whether the standby took over).
    o.note += &format!(
        "primary while cut off: {}; ",
        r.app
            .status()
            .map(|v| format!("{} ({})", s(&v, "state"), s(&v, "reason")))
            .unwrap_or_else(|e| e)
    );
    let app_dead = || !r.app.original_alive();
    if app_dead() {
        o.note += "its app died while the link was down; ";
    }
    let back = Instant::now();
    ns.link_up();
    let Some(sv) = r.standby_took_over() else {
        return r.finish_on_primary(o);
    };
    // The restored program runs where its standby does (cleanup kills it there).
    let restored = n(&sv, "restored_pid").unwrap_or(0) as i32;
    assert!(
        ns.pids().contains(&restored),
        "the restored program (pid {restored}) is not in netns {} ({:?})\n{}",
        ns.name,
        ns.pids(),
        r.report()
    );
    // The primary must learn it was superseded (its remusd kills the app) once the link is
    // back; finish_on_standby counts an app still running 20 s on as both running.
    if wait_until(Duration::from_secs(20), app_dead) {
        let log = std::fs::read_to_string(r.app.log_path()).unwrap_or_default();
        let fenced = log.lines().any(|l| l.contains("SUPERSEDED"));
        o.note += &format!(
            "its app died {} ms after the link came back ({}); ",
            back.elapsed().as_millis(),
            if fenced {
                "fenced: its remusd logged SUPERSEDED"
            } else {
                "its remusd logged no SUPERSEDED"
            }
        );
    }
    r.finish_on_standby(known, o)
}

impl Run {
    fn finish_on_primary_or_standby(&mut self, known: u64, o: Outcome) -> Outcome {
        if !self.app.original_alive() {
            self.finish_on_standby(known, o)
        } else {
            // Still alive after the standby took over: finish_on_primary records it.
            self.finish_on_primary(o)
        }
    }
}

/// The standby killed mid-run, then a new standby started at the same address (the proxy
/// now leads there): the program keeps running on the primary, unprotected and saying so,
/// or resynchronises to the new standby (a full image, then epochs) if the primary does that.
fn fault_standby_restart(rng: &mut Rng) -> Outcome {
    let sb = Standby::start(TIMEOUT_MS);
    let proxy = Proxy::start(&sb.addr);
    let via = proxy.addr();
    let mut r = Run::start(sb, &via, 1000);
    r.known_committed(rng.range(2, 15));
    r.sb.kill();
    let mut o = Outcome::default();
    let v = r
        .app
        .wait_status("protected: false after the standby died", LONG, |v| {
            v.get("protected") == Some(&Value::Bool(false))
        });
    let reason = s(&v, "reason").to_string();
    if !reason.contains(&via) && !reason.contains("standby") {
        o.note += &format!("the reason does not name the standby: {reason}; ");
    }
    o.note += &format!("after the kill: {} ({reason}); ", s(&v, "state"));
    thread::sleep(Duration::from_millis(rng.range(0, 1000)));
    // The standby comes back at the same address.
    let sb2 = Standby::start(TIMEOUT_MS);
    *proxy.upstream.lock().expect("lock") = sb2.addr.clone();
    let old = std::mem::replace(&mut r.sb, sb2);
    drop(old);
    // Resynchronised (protected again, epochs committed on the new standby), or not: both
    // are allowed; the program must just keep running, on the primary only.
    let resynced = wait_until(Duration::from_secs(5), || {
        r.sb.status()
            .is_ok_and(|v| committed_epoch(&v).is_some_and(|c| c >= 3))
    });
    let v = r.app.status().unwrap_or_default();
    o.note += &format!(
        "after the restart: {} (resynchronised: {resynced}); ",
        s(&v, "state")
    );
    let o = if resynced {
        // Protected again: a failover to the new standby must work like the first one.
        let known = r.known_committed(committed_epoch(&v).unwrap_or(0) + 2);
        r.app.kill_primary_side();
        let mut o = r.finish_on_standby(known, o);
        o.side = "new standby";
        o
    } else {
        r.finish_on_primary(o)
    };
    drop(proxy);
    o
}

/// How the proxy disturbs the primary-to-standby stream, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mangle {
    Corrupt,
    Truncate,
    Duplicate,
    Reorder,
}

/// Frames corrupted, truncated, duplicated or reordered on the link: the standby refuses the
/// stream; the program continues on the primary (or, if the standby took over, from a
/// committed epoch with the primary fenced); never both.
fn fault_mangle(rng: &mut Rng, how: Mangle) -> Outcome {
    let sb = Standby::start(TIMEOUT_MS);
    let proxy = Proxy::start(&sb.addr);
    let via = proxy.addr();
    let mut r = Run::start(sb, &via, 1000);
    let known = r.known_committed(rng.range(2, 15));
    let committed_before = committed_epoch(&r.sb.status().expect("standby status")).unwrap_or(0);
    *proxy.mangle.lock().expect("lock") = Some(how);
    let done = wait_until(LONG, || proxy.mangled.load(Ordering::SeqCst) > 0);
    assert!(done, "the proxy never disturbed the stream\n{}", r.report());
    // The standby's committed image stays valid: its committed epoch never goes backwards,
    // and it never holds a partial one (a takeover then restores and checks it).
    let settled = wait_until(Duration::from_secs(20), || {
        r.standby_took_over().is_some()
            || r.app
                .status()
                .is_ok_and(|v| v.get("protected") == Some(&Value::Bool(false)))
            || peek_exit(r.app.pid()).is_some()
    });
    let mut o = Outcome {
        note: format!("{how:?}: "),
        ..Default::default()
    };
    if !settled {
        // The stream survived the disturbance (e.g. it hit bytes nobody checks): still fine
        // if the program is protected and continues.
        o.note += "no effect seen; ";
    }
    if let Ok(v) = r.sb.status() {
        if let Some(c) = committed_epoch(&v) {
            if c < committed_before {
                o.lost += 1;
                o.note += &format!("standby committed epoch went back {committed_before} -> {c}; ");
            }
        }
    }
    let o = if r.standby_took_over().is_some() {
        r.finish_on_primary_or_standby(known, o)
    } else {
        r.finish_on_primary(o)
    };
    drop(proxy);
    o
}

/// The standby's state directory on a full 2 MB tmpfs: a clear error, no half-written
/// committed state, and the program keeps running. Mounting the tmpfs needs root: without it
/// the case is skipped (`skipped`, not survived); as root a failed mount is a failure.
fn fault_enospc(_rng: &mut Rng) -> Outcome {
    let sb = Standby::start(TIMEOUT_MS);
    let mut o = Outcome::default();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        o.skipped = true;
        o.side = "skipped";
        o.note = "SKIPPED: mounting a tmpfs on the standby's state directory needs root \
                  (run the tests as root, or with sudo)"
            .into();
        return o;
    }
    let mnt = match Tmpfs::mount(&sb.state_dir) {
        Ok(m) => m,
        Err(e) => {
            o.note = format!("running as root, but {e}; ");
            return o;
        }
    };
    // Fill it up.
    let fill = sb.state_dir.join("filler");
    if let Ok(mut f) = std::fs::File::create(&fill) {
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let addr = sb.addr.clone();
    let mut r = Run::start(sb, &addr, 1000);
    // Replication goes on (the image is kept in memory); epochs are committed.
    let c = committed_epoch(&r.sb.status().expect("standby status")).unwrap_or(0);
    r.app.wait_committed(c + 10, LONG);
    // No half-written state file: either none, or a complete JSON document.
    for e in std::fs::read_dir(&r.sb.state_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let ok = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some();
            if !ok {
                o.lost += 1;
                o.note += &format!("half-written {}; ", p.display());
            }
        }
    }
    let log = std::fs::read_to_string(&r.sb.log).unwrap_or_default();
    let clear = log
        .lines()
        .find(|l| l.contains("No space left") || l.contains("ENOSPC"))
        .map(str::to_string);
    match clear {
        Some(l) => o.note += &format!("standby log: {}; ", l.trim()),
        None => o.note += "the standby's log does not mention the full disk; ",
    }
    let o = r.finish_on_primary(o);
    drop(r);
    drop(mnt);
    o
}

// ---------------------------------------------------------------------------------------
// A TCP proxy between primary and standby that can disturb the stream
// ---------------------------------------------------------------------------------------

struct Proxy {
    port: u16,
    /// Where new connections go (can be changed, e.g. to a restarted standby).
    upstream: Arc<Mutex<String>>,
    mangle: Arc<Mutex<Option<Mangle>>>,
    mangled: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("local_addr").port();
        let mangle = Arc::new(Mutex::new(None));
        let mangled = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(upstream.to_string()));
        let up = upstream.clone();
        let (mg, md, st) = (mangle.clone(), mangled.clone(), stop.clone());
        let accept = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let to = up.lock().expect("lock").clone();
                        let Ok(u) = TcpStream::connect(&to) else {
                            continue;
                        };
                        for (from, to, mangle) in [
                            (c.try_clone(), u.try_clone(), Some(mg.clone())),
                            (u.try_clone(), c.try_clone(), None),
                        ] {
                            let (Ok(from), Ok(to)) = (from, to) else {
                                continue;
                            };
                            let (md, st) = (md.clone(), st.clone());
                            thread::spawn(move || pump(from, to, mangle, md, st));
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            upstream,
            mangle,
            mangled,
            stop,
            accept: Some(accept),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until either end closes or the proxy stops; applies a pending
/// disturbance (once) to a chunk of at least 64 bytes.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mangle: Option<Arc<Mutex<Option<Mangle>>>>,
    mangled: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut held: Option<Vec<u8>> = None;
    while !stop.load(Ordering::SeqCst) {
        let k = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let chunk = &mut buf[..k];
        if let Some(h) = held.take() {
            // Reorder: this chunk goes first, then the one held back.
            if to.write_all(chunk).and_then(|_| to.write_all(&h)).is_err() {
                break;
            }
            continue;
        }
        let how = match &mangle {
            Some(m) if k >= 64 => m.lock().expect("lock").take(),
            _ => None,
        };
        let res = match how {
            None => to.write_all(chunk),
            Some(how) => {
                mangled.fetch_add(1, Ordering::SeqCst);
                match how {
                    Mangle::Corrupt => {
                        chunk[k / 2] ^= 0x40;
                        to.write_all(chunk)
                    }
                    Mangle::Truncate => {
                        let _ = to.write_all(&chunk[..k / 2]);
                        break;
                    }
                    Mangle::Duplicate => to.write_all(chunk).and_then(|_| to.write_all(chunk)),
                    Mangle::Reorder => {
                        held = Some(chunk.to_vec());
                        Ok(())
                    }
                }
            }
        };
        if res.is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------
// A small tmpfs for the out-of-space case
// ---------------------------------------------------------------------------------------

struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `mount -t tmpfs -o size=2m` on `at`; Err says why not (mount's own words).
    fn mount(at: &Path) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "remus-faults"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount (install util-linux's mount): {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(format!(
                "mount -t tmpfs on {} failed ({}): {}",
                at.display(),
                describe_status(&out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn assert_clean(what: &str, o: &Outcome) {
    eprintln!("{what}: {o:?}");
    assert!(
        !o.skipped,
        "{what}: the fault was not injected, so nothing was tested: {}",
        o.note
    );
    assert!(
        o.survived && o.lost == 0 && o.violations == 0,
        "{what}: survived {}, committed epochs lost {}, client-visible violations {} ({})",
        o.survived,
        o.lost,
        o.violations,
        o.note
    );
}

#[test]
fn kill9_of_the_primary_side_at_random_moments() {
    let mut rng = Rng::new(seed());
    for i in 0..5 {
        let o = fault_kill9(&mut rng);
        assert_clean(&format!("kill -9 #{i}"), &o);
    }
}

#[test]
fn sigstop_past_the_timeout_then_sigcont_is_fenced() {
    let mut rng = Rng::new(seed() ^ 1);
    let o = fault_sigstop(&mut rng);
    assert_clean("SIGSTOP/SIGCONT", &o);
    assert!(o.note.is_empty(), "{}", o.note);
}

#[test]
fn standby_killed_and_restarted_the_program_keeps_running() {
    let mut rng = Rng::new(seed() ^ 2);
    let o = fault_standby_restart(&mut rng);
    assert_clean("standby killed", &o);
    assert!(
        o.side == "primary" || o.side == "new standby",
        "ended on {}",
        o.side
    );
}

#[test]
fn frames_corrupted_duplicated_reordered() {
    let mut rng = Rng::new(seed() ^ 3);
    for how in [Mangle::Corrupt, Mangle::Duplicate, Mangle::Reorder] {
        let o = fault_mangle(&mut rng, how);
        assert_clean(&format!("{how:?}"), &o);
    }
}

/// A frame truncated and the connection closed mid-frame. The primary sees the close first
/// and asks the standby, which has not yet read the end of the broken session: "busy" must
/// not be taken as "not taken over" (before eefb590 the primary then went unprotected and
/// released its held output beside the restored program: 8 violations in 8 runs).
#[test]
fn frame_truncated_and_connection_closed() {
    let mut rng = Rng::new(seed() ^ 6);
    let o = fault_mangle(&mut rng, Mangle::Truncate);
    assert_clean("Truncate", &o);
}

/// Needs root (to mount the tmpfs): fails saying so otherwise, as a skipped case.
#[test]
fn standby_state_dir_out_of_space() {
    let mut rng = Rng::new(seed() ^ 4);
    let o = fault_enospc(&mut rng);
    assert_clean("out of space", &o);
    // The clear error: the standby's log says the disk is full.
    assert!(o.note.contains("standby log: "), "out of space: {}", o.note);
}

/// The link (a veth pair into the standby's network namespace) set down past the timeouts,
/// then up again. The standby takes over after `--timeout-ms`; the primary, which cannot ask
/// it whether it did, keeps everything it holds (the black-holed link of an earlier version
/// of this test found the primary releasing it, before bf46ecb), and is told "superseded"
/// when the link comes back: its app is killed, nothing it held escapes. Needs root
/// (CAP_NET_ADMIN): fails saying so otherwise.
#[test]
fn link_cut_and_restored() {
    let mut rng = Rng::new(seed() ^ 5);
    let o = fault_link_cut(&mut rng);
    assert_clean("link cut", &o);
}

/// Many of each, and the table: `cargo test --test faults -- --ignored --nocapture long_mode`.
#[test]
#[ignore = "long mode (500 kills and 20 of each other fault by default): run it with \
            `cargo test --test faults -- --ignored --nocapture long_mode`"]
fn long_mode() {
    let count = |var: &str, dflt: u64| {
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(dflt)
    };
    let kills = count("REMUS_FAULTS_KILLS", 500);
    let others = count("REMUS_FAULTS_OTHERS", 20);
    let mut rng = Rng::new(seed());
    type Fault = Box<dyn Fn(&mut Rng) -> Outcome>;
    let faults: Vec<(&str, u64, Fault)> = vec![
        ("kill -9 primary side", kills, Box::new(fault_kill9)),
        (
            "SIGSTOP > timeout, SIGCONT",
            others,
            Box::new(fault_sigstop),
        ),
        ("link cut and restored", others, Box::new(fault_link_cut)),
        (
            "standby killed, restarted",
            others,
            Box::new(fault_standby_restart),
        ),
        (
            "frame corrupted",
            others,
            Box::new(|r: &mut Rng| fault_mangle(r, Mangle::Corrupt)),
        ),
        (
            "frame truncated",
            others,
            Box::new(|r: &mut Rng| fault_mangle(r, Mangle::Truncate)),
        ),
        (
            "frame duplicated",
            others,
            Box::new(|r: &mut Rng| fault_mangle(r, Mangle::Duplicate)),
        ),
        (
            "frames reordered",
            others,
            Box::new(|r: &mut Rng| fault_mangle(r, Mangle::Reorder)),
        ),
        (
            "state dir out of space",
            others.min(5),
            Box::new(fault_enospc),
        ),
    ];
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, cnt, f) in &faults {
        let (mut survived, mut skipped, mut lost, mut viol) = (0u64, 0u64, 0u64, 0u64);
        let mut sides = std::collections::BTreeMap::<&str, u64>::new();
        for i in 0..*cnt {
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut rng)));
            match res {
                Ok(o) => {
                    survived += o.survived as u64;
                    skipped += o.skipped as u64;
                    lost += o.lost;
                    viol += o.violations;
                    *sides.entry(o.side).or_default() += 1;
                    if !o.survived || o.skipped || o.lost > 0 || o.violations > 0 {
                        notes.push(format!("{name} #{i}: {}", o.note));
                    }
                }
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    notes.push(format!("{name} #{i}: PANIC {}", remus::tail(&msg, 1)));
                    notes.push(msg.lines().take(3).collect::<Vec<_>>().join(" | "));
                }
            }
        }
        let sides: Vec<String> = sides.iter().map(|(k, v)| format!("{k} {v}")).collect();
        rows.push((*name, *cnt, survived, skipped, lost, viol, sides.join(", ")));
        eprintln!(
            "{name}: {cnt} run, {survived} survived, {skipped} skipped, lost {lost}, violations {viol}"
        );
    }
    println!(
        "\n{:<28} {:>6} {:>9} {:>8} {:>22} {:>27}  ended on",
        "fault",
        "count",
        "survived",
        "skipped",
        "committed epochs lost",
        "client-visible violations"
    );
    for (name, cnt, sv, sk, lost, viol, sides) in &rows {
        println!("{name:<28} {cnt:>6} {sv:>9} {sk:>8} {lost:>22} {viol:>27}  {sides}");
    }
    for nt in &notes {
        println!("  {nt}");
    }
    let bad: u64 = rows.iter().map(|r| r.4 + r.5).sum();
    let skipped: u64 = rows.iter().map(|r| r.3).sum();
    let dead: u64 = rows.iter().map(|r| r.1 - r.2 - r.3).sum();
    assert!(
        bad == 0 && dead == 0 && skipped == 0,
        "long mode: {bad} lost epochs or violations, {dead} runs that did not survive, \
         {skipped} runs skipped (their fault could not be injected here: see the notes)"
    );
}
