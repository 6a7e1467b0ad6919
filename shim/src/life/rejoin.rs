//! Protecting a restored process again (DESIGN §6, "after failover"): the daemon that runs the
//! restored program (`remusd standby` after a takeover, asked by `remusctl protect` or
//! `--reprotect-with`) writes a request file and sends the epoch signal.
//!
//! The request: `/tmp/remus-<uid>/rejoin-<pid>` (the daemon's private control directory), one
//! `key=value` per line: `standby=HOST:PORT` (required), `control=PATH` (the new primary's
//! control socket), `log=PATH`, `key_file=PATH` or `insecure=1`, `epoch_ms=N`. It must be a
//! regular file of this user, not writable by group or others, in a directory of this user
//! that nobody else can write: it tells the program where to send its memory.
//!
//! In the restored process the shim is passive: the epoch handler only records that a rejoin
//! was asked for ([`on_signal`]: one atomic store, nothing allocated, no lock). The work is
//! done at a safe point outside signal context, where allocation and fork are allowed: the
//! entry of a hook the program calls while idle ([`poll`], from `nanosleep`,
//! `clock_nanosleep` and the wait hooks `epoll_wait`/`poll`/`select`...), at hook depth 0. It
//! is start-up again, minus what the restored image already has (dispositions, statics, the
//! fork handler): the tracker is probed, every followed region/file/socket forgotten (the
//! first epoch ships everything whole), a new staging area and a new `remusd primary` for
//! this pid (`init::connect`), hello, ready.
//!
//! The outcome goes to `/tmp/remus-<uid>/rejoin-<pid>.result` (`protected`, or `failed: why`),
//! which the daemon reads for its status and log. On failure the program carries on
//! unprotected, passive as before, and may be asked again.

use core::sync::atomic::Ordering;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use super::init::{self, Answer, Launch};
use crate::base::{fatal, state};
use crate::epoch::{capture, files};
use crate::kernel::sys;
use crate::track::{pages as tracker, sockets};

/// The safe point's work (registered with `state::set_safe_point` at start-up): a safe point is
/// a hook entry the program makes while idle (`nanosleep`, `clock_nanosleep`, the wait hooks),
/// inside that hook's bracket and no other shim bookkeeping.
pub fn poll() {
    if state::mode() != state::MODE_PASSIVE
        || !state::RESTORED.load(Ordering::Relaxed)
        || !state::REJOIN_REQUESTED.load(Ordering::Acquire)
    {
        return;
    }
    state::REJOIN_REQUESTED.store(false, Ordering::Release);
    // A panic must not unwind into the program's C frames.
    let _ = std::panic::catch_unwind(run);
}

fn dir() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    PathBuf::from(format!("/tmp/remus-{}", unsafe { libc::getuid() }))
}

struct Request {
    standby: String,
    control: Option<String>,
    log: Option<String>,
    key_file: Option<String>,
    insecure: bool,
    epoch_ms: Option<String>,
    /// `--service-addr` on the standby that restored the program: (address, device, that
    /// host's end of the program's veth pair, that host's network namespace).
    service: [Option<String>; 4],
}

/// Reads and removes the request. `Ok(None)`: there is none (a stray signal).
fn take_request(pid: i32) -> Result<Option<Request>, String> {
    let dir = dir();
    let path = dir.join(format!("rejoin-{pid}"));
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open the request {}: {e}", path.display())),
    };
    let _ = std::fs::remove_file(&path);
    let md = f.metadata().map_err(|e| e.to_string())?;
    let dmd = std::fs::symlink_metadata(&dir).map_err(|e| e.to_string())?;
    if !md.is_file()
        || md.uid() != me
        || md.mode() & 0o022 != 0
        || !dmd.is_dir()
        || dmd.uid() != me
        || dmd.mode() & 0o022 != 0
    {
        return Err(format!(
            "refused the request {}: it must be a file of uid {me}, writable only by it, in a \
             directory of its own",
            path.display()
        ));
    }
    let text = std::io::read_to_string(f).map_err(|e| e.to_string())?;
    let mut r = Request {
        standby: String::new(),
        control: None,
        log: None,
        key_file: None,
        insecure: false,
        epoch_ms: None,
        service: [None, None, None, None],
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "standby" => r.standby = v,
            "control" => r.control = Some(v),
            "log" => r.log = Some(v),
            "key_file" => r.key_file = Some(v),
            "insecure" => r.insecure = v == "1",
            "epoch_ms" => r.epoch_ms = Some(v),
            "service_addr" => r.service[0] = Some(v),
            "service_dev" => r.service[1] = Some(v),
            "service_veth" => r.service[2] = Some(v),
            "outer_netns" => r.service[3] = Some(v),
            _ => {}
        }
    }
    if r.standby.is_empty() {
        return Err(format!("the request {} names no standby", path.display()));
    }
    Ok(Some(r))
}

fn report(pid: i32, outcome: &str) {
    let dir = dir();
    let tmp = dir.join(format!(".rejoin-{pid}.result"));
    let dst = dir.join(format!("rejoin-{pid}.result"));
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{outcome}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &dst));
    if ok.is_err() {
        fatal::say(format!("rejoin: {outcome}").as_bytes());
    }
}

fn run() {
    let pid = sys::getpid();
    let req = match take_request(pid) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            report(pid, &format!("failed: {e}"));
            return;
        }
    };
    match protect(pid, &req) {
        Ok(()) => report(pid, "protected"),
        Err(e) => {
            undo();
            report(pid, &format!("failed: {}", e.replace('\n', " ")));
        }
    }
}

fn protect(pid: i32, req: &Request) -> Result<(), String> {
    let (kernel, kind, notice) = init::choose_tracker()?;
    // What the image remembers of the old primary side is gone or stale: descriptors kept
    // open by the handler (the numbers are not in the restored table), regions, files and
    // sockets followed, epoch numbers. The new standby starts from nothing.
    for fd in [
        &state::MAPS_FD,
        &state::TASK_FD,
        &state::FDDIR_FD,
        &state::STATM_FD,
    ] {
        fd.store(-1, Ordering::Relaxed);
    }
    init::use_kernel(&kernel);
    capture::reset();
    files::reset();
    sockets::reset();
    // The program's network on this host. With a service address (the standby restored it into
    // a namespace of its own), its new primary runs a packet gate here and dumps its
    // connections again: the variables `remusd service-exec` set on the old host are replaced
    // by this host's. Without, there is no gate: its sockets' output goes back to the log.
    const SERVICE_VARS: [&str; 4] = [
        "REMUS_SERVICE_ADDR",
        "REMUS_SERVICE_DEV",
        "REMUS_SERVICE_VETH",
        "REMUS_OUTER_NETNS",
    ];
    if req.service.iter().all(Option::is_some) {
        for (name, v) in SERVICE_VARS.iter().zip(&req.service) {
            crate::base::environ::set(name, v.as_deref());
        }
        crate::base::environ::set("REMUS_PACKET_GATE", Some("1"));
    } else {
        sockets::leave_gate();
        for name in SERVICE_VARS.iter().chain(&["REMUS_PACKET_GATE"]) {
            crate::base::environ::set(name, None);
        }
    }
    state::EPOCH.store(0, Ordering::Relaxed);
    state::pending().store(false, Ordering::Release);
    state::APP_PID.store(pid, Ordering::Relaxed);
    crate::base::environ::set(remus_abi::ENV_PROTECTED_PID, Some(&pid.to_string()));

    let log_file = req.log.clone().unwrap_or_else(|| {
        dir()
            .join(format!("primary-{pid}.log"))
            .display()
            .to_string()
    });
    let launch = Launch {
        pid,
        standby: Some(req.standby.clone()),
        allow: false,
        control: req.control.clone(),
        key_file: req.key_file.clone(),
        insecure: req.insecure,
        epoch_ms: req
            .epoch_ms
            .clone()
            .or_else(|| init::env(remus_abi::ENV_EPOCH_MS)),
        log_file: log_file.clone(),
        before_main: false,
    };
    // The epoch handler and the app's dispositions are in place since the restore.
    match init::connect(&launch, kind, notice, |_| {})? {
        Answer::Ready => Ok(()),
        Answer::Unprotected(t) | Answer::Refused(t) => Err(format!(
            "remusd primary refused: {} (its log: {log_file})",
            String::from_utf8_lossy(&t)
        )),
    }
}

/// A failed attempt: back to passive, nothing of it kept.
fn undo() {
    state::set_mode(state::MODE_PASSIVE);
    tracker::set_kind(0);
    for fd in [
        &state::SOCK,
        &state::UFFD,
        &state::PAGEMAP,
        &state::STAGING_FD,
    ] {
        let v = fd.swap(-1, Ordering::Relaxed);
        if v >= 0 {
            sys::close(v);
        }
    }
    let staging = state::STAGING.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !staging.is_null() {
        // SAFETY: the staging area this attempt mapped (init::make_staging), used by nothing
        // now that the mode is passive and STAGING is null.
        unsafe { libc::munmap(staging as *mut libc::c_void, init::MAPPED_SIZE) };
    }
}
