//! After a takeover: protecting the restored program again with a new standby
//! (`remusctl protect --standby ADDR` on this daemon's control socket, or
//! `remusd standby --reprotect-with ADDR` right after the takeover; both come here).
//!
//! The restored program's shim is passive and cannot be told anything but by a signal. So:
//! 1. this daemon writes the request, `/tmp/remus-<uid>/rejoin-<pid>` (mode 0600 in the private
//!    control directory): the new standby's address, this daemon's key file (or `insecure`),
//!    the new primary's control socket and log file (in the state directory);
//! 2. it sends the shim's epoch signal, on which the passive shim only records "asked";
//! 3. at its next safe point (a hook the program calls while idle, outside signal context)
//!    the shim reads the request and starts protection as at start-up: a new tracker, a new
//!    staging area, a new `remusd primary` for the pid; the first epoch ships a full image;
//! 4. the shim writes the outcome to `/tmp/remus-<uid>/rejoin-<pid>.result`, which a thread
//!    here reads: `state` goes `took_over` -> `reprotecting` -> `reprotected` (the new
//!    primary's control socket in `primary_control`, its `protected` and epochs mirrored), or
//!    back to `took_over` with the reason when it failed (the program runs on, unprotected).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::control::status::{SharedStatus, StandbyState};

/// How long the program may take to reach a safe point and hear from its new standby.
const PICKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a takeover leaves for a later `protect`: the restored program and how this daemon
/// authenticates its link (the new primary uses the same key).
#[derive(Clone, Debug)]
pub struct Target {
    /// The restored program's pid here (signals, `/proc`).
    pub pid: i32,
    /// Its pid as it sees itself (different in a new PID namespace): the name of the rejoin
    /// files its shim reads and writes.
    pub own_pid: i32,
    pub state_dir: PathBuf,
    pub key_file: Option<PathBuf>,
    pub insecure: bool,
    pub epoch_ms: Option<u64>,
    /// `--etcd`: the leader key this daemon holds for the restored program. Revoked when
    /// protection starts again, so that the program's new primary takes the key at once.
    pub lease: LeaseSlot,
    /// `--service-addr`: the restored program's network here, passed to its new primary so
    /// that it runs behind a packet gate on this host and its connections are dumped again.
    pub service: Option<ServiceHere>,
}

/// Where the restored program's packets leave it on this host (its [`crate::net::topology`]).
#[derive(Clone, Debug)]
pub struct ServiceHere {
    pub addr: String,
    pub dev: String,
    /// This host's end of the program's veth pair (the gate's `-i`).
    pub veth: String,
}

/// The lease a standby holds after a takeover (see [`Target::lease`]).
#[derive(Clone, Default)]
pub struct LeaseSlot(pub Arc<Mutex<Option<crate::arbiter::LeaseHolder>>>);

impl LeaseSlot {
    /// Revokes the lease held, if any.
    pub fn revoke(&self, why: &str) {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(l) = held {
            l.revoke(why);
        }
    }
}

impl std::fmt::Debug for LeaseSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lease = self
            .0
            .lock()
            .map(|l| l.as_ref().map(|l| l.lease()))
            .unwrap_or(None);
        write!(f, "LeaseSlot({lease:x?})")
    }
}

/// Set by the takeover; read by the control socket's `protect` command.
pub type Slot = Arc<Mutex<Option<Target>>>;

/// `protect {json}` on the control socket.
#[derive(Debug, Deserialize)]
pub struct ProtectCmd {
    pub standby: String,
    /// Overrides this daemon's own key file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

/// The control socket's command handler: `protect {"standby": "HOST:PORT", ...}`.
pub fn handle_command(line: &str, slot: &Slot, status: &SharedStatus) -> Result<String, String> {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    if verb != "protect" {
        return Err(format!("unknown command {verb:?}; known: status, protect"));
    }
    let cmd: ProtectCmd = serde_json::from_str(rest)
        .map_err(|e| format!("protect: expected {{\"standby\": \"HOST:PORT\"}}: {e}"))?;
    let Some(mut target) = slot.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        let st = status.lock().status.state.clone();
        return Err(format!(
            "nothing to protect: this standby runs no restored program (state {st}); protect \
             applies after a takeover"
        ));
    };
    if cmd.key_file.is_some() || cmd.insecure {
        target.key_file = cmd.key_file;
        target.insecure = cmd.insecure && target.key_file.is_none();
    }
    start(&target, &cmd.standby, status)
}

fn rejoin_paths(pid: i32) -> (PathBuf, PathBuf) {
    let dir = crate::control::default_dir();
    (
        dir.join(format!("rejoin-{pid}")),
        dir.join(format!("rejoin-{pid}.result")),
    )
}

/// Asks the restored program `t.pid` to be protected by the standby at `standby`; a thread
/// follows the outcome into `status`. Returns at once with what was done.
pub fn start(t: &Target, standby: &str, status: &SharedStatus) -> Result<String, String> {
    let standby = standby.trim();
    if standby.is_empty() || !standby.contains(':') {
        return Err(format!("protect: {standby:?} is not HOST:PORT"));
    }
    {
        let b = status.lock();
        match b.standby_state {
            Some(StandbyState::TookOver) => {}
            Some(s @ (StandbyState::Reprotecting | StandbyState::Reprotected)) => {
                return Err(format!(
                    "the restored program (pid {}) is already {} (standby {})",
                    t.pid,
                    s.label(),
                    b.status.standby.as_deref().unwrap_or("?")
                ))
            }
            _ => {
                return Err(format!(
                    "nothing to protect: the restored program is not running (state {})",
                    b.status.state
                ))
            }
        }
    }
    if !alive(t.pid) {
        return Err(format!(
            "the restored program (pid {}) is not running",
            t.pid
        ));
    }
    crate::control::ensure_private_dir(&crate::control::default_dir())?;
    let (req_path, result_path) = rejoin_paths(t.own_pid);
    let _ = std::fs::remove_file(&result_path);
    let control = control_path(t);
    let log = t.state_dir.join(format!("primary-{}.log", t.pid));
    let mut text = format!(
        "standby={standby}\ncontrol={}\nlog={}\n",
        control.display(),
        log.display()
    );
    match (&t.key_file, t.insecure) {
        (Some(k), _) => {
            let k = std::fs::canonicalize(k).unwrap_or_else(|_| k.clone());
            text.push_str(&format!("key_file={}\n", k.display()));
        }
        (None, true) => text.push_str("insecure=1\n"),
        (None, false) => {}
    }
    if let Some(ms) = t.epoch_ms {
        text.push_str(&format!("epoch_ms={ms}\n"));
    }
    if let Some(svc) = &t.service {
        // The new primary enters this host's network namespace for its gate and link: this
        // daemon's, or, when the program was restored into a PID namespace of its own (where
        // this daemon has no /proc entry), that namespace's init's, which lives in it too.
        let outer = if t.own_pid != t.pid {
            "/proc/1/ns/net".to_string()
        } else {
            format!("/proc/{}/ns/net", std::process::id())
        };
        text.push_str(&format!(
            "service_addr={}\nservice_dev={}\nservice_veth={}\nouter_netns={outer}\n",
            svc.addr, svc.dev, svc.veth
        ));
    }
    write_private(&req_path, &text)
        .map_err(|e| format!("writing the request {}: {e}", req_path.display()))?;
    // The new primary takes the leader key (it waits for a held one for only about a TTL).
    t.lease
        .revoke("the restored program is protected again: its new primary takes the key");
    if let Err(e) = crate::sys::kill(t.pid, remus_abi::EPOCH_SIGNAL) {
        let _ = std::fs::remove_file(&req_path);
        return Err(format!(
            "signalling the restored program (pid {}): {e}",
            t.pid
        ));
    }
    {
        let mut b = status.lock();
        b.set_standby_state(StandbyState::Reprotecting);
        b.status.standby = Some(standby.into());
        b.status.primary_control = None;
        b.unprotect(format!(
            "protecting the restored program (pid {}) again with standby {standby}: waiting for \
             it to start its new primary",
            t.pid
        ));
    }
    tracing::info!(pid = t.pid, %standby, control = %control.display(), log = %log.display(),
        "asked the restored program to be protected again");
    let (t2, status2, standby2) = (t.clone(), status.clone(), standby.to_string());
    std::thread::Builder::new()
        .name("reprotect".into())
        .spawn(move || {
            follow(
                &t2,
                &standby2,
                &control,
                &log,
                &req_path,
                &result_path,
                &status2,
            )
        })
        .map_err(|e| format!("starting the reprotect thread: {e}"))?;
    Ok(format!(
        "asked the restored program (pid {}) to be protected by standby {standby}; see \
         `remusctl status` here for the phases, then its new primary's status at {}",
        t.pid,
        control_path(t).display()
    ))
}

/// The new primary's control socket: in the state directory, unless that path is too long
/// for a unix socket address.
fn control_path(t: &Target) -> PathBuf {
    let c = t.state_dir.join(format!("primary-{}.sock", t.pid));
    if c.as_os_str().len() > 100 {
        crate::control::default_dir().join(format!("primary-app{}.sock", t.pid))
    } else {
        c
    }
}

/// Running (a zombie, not yet reaped by the takeover's wait, is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn failed(status: &SharedStatus, pid: i32, standby: &str, why: &str) {
    tracing::error!(pid, %standby, "protecting the restored program again failed: {why}; it runs on UNPROTECTED");
    let mut b = status.lock();
    b.set_standby_state(StandbyState::TookOver);
    b.status.primary_control = None;
    b.unprotect(format!(
        "protecting the restored program again with standby {standby} failed: {why}; it runs \
         unprotected (ask again with remusctl protect)"
    ));
}

/// Follows one request: the shim's outcome, then the new primary's status.
fn follow(
    t: &Target,
    standby: &str,
    control: &Path,
    log: &Path,
    req: &Path,
    result: &Path,
    status: &SharedStatus,
) {
    let asked = Instant::now();
    let outcome = loop {
        if let Ok(text) = std::fs::read_to_string(result) {
            let _ = std::fs::remove_file(result);
            break text.trim().to_string();
        }
        if !alive(t.pid) {
            let _ = std::fs::remove_file(req);
            return; // the takeover's wait reports the exit
        }
        if asked.elapsed() > PICKUP_TIMEOUT {
            let picked = !req.exists();
            let _ = std::fs::remove_file(req);
            let why = if picked {
                format!(
                    "no outcome within {} s (its new primary's log: {})",
                    PICKUP_TIMEOUT.as_secs(),
                    log.display()
                )
            } else {
                format!(
                    "the program did not pick up the request within {} s (it picks it up in \
                     nanosleep, clock_nanosleep, poll, epoll_wait or select)",
                    PICKUP_TIMEOUT.as_secs()
                )
            };
            failed(status, t.pid, standby, &why);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(why) = outcome.strip_prefix("failed: ") {
        failed(status, t.pid, standby, why);
        return;
    }
    tracing::info!(pid = t.pid, %standby, control = %control.display(),
        "the restored program is protected again: its new primary's status is at {}", control.display());
    {
        let mut b = status.lock();
        b.set_standby_state(StandbyState::Reprotected);
        b.status.primary_control = Some(control.display().to_string());
        b.unprotect(format!(
            "the restored program is protected by standby {standby} through its new primary \
             (remusctl status --control {})",
            control.display()
        ));
    }
    // Mirror the new primary's view until the program ends.
    while alive(t.pid) {
        if let Ok(p) = crate::control::client::query_status(control) {
            let mut b = status.lock();
            b.status.protected = p.protected;
            b.status.reason = if p.protected {
                None
            } else {
                Some(format!(
                    "its new primary says: {}",
                    p.reason.unwrap_or_else(|| p.state.clone())
                ))
            };
            b.status.epoch = p.epoch;
            b.status.committed_epoch = p.committed_epoch;
            b.status.image_stream = p.image_stream;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
