//! `remusd service-exec`: what `scripts/remus-run --service-addr` runs. Checks the host, puts
//! itself into a new network namespace, has the topology built around it, then execs the
//! program (which keeps this pid, as without a service address).
//!
//! The topology is owned by a keeper process that stays in the host's namespace (forked
//! twice, so that it is never the program's child): it builds the pair and announces the
//! address, tells the launcher its pid (remusd primary enters the host's namespace through
//! `/proc/<keeper>/ns/net`), then waits on the program's pidfd and tears everything down when
//! the program ends, however it ends (remusd primary's failure included). It ignores the
//! terminal's signals: it outlives the program, never the other way round.
//!
//! What the program's environment gets: `REMUS_SERVICE_ADDR`, `REMUS_SERVICE_DEV`,
//! `REMUS_SERVICE_VETH` (the host's end of the pair), `REMUS_OUTER_NETNS` (the host's
//! namespace) for remusd primary, and `REMUS_PACKET_GATE=1` for the shim (inet sockets pass
//! straight through: the gate holds their packets).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use super::checks;
use super::service::{self, ServiceAddr};
use super::topology::{Topology, TopologySpec};

pub struct ServiceExec {
    pub service: ServiceAddr,
    pub dev: Option<String>,
    /// The standby's HOST:PORT, for the default device.
    pub standby: Option<String>,
    pub prog: Vec<OsString>,
}

fn pipe() -> Result<(std::fs::File, std::fs::File), String> {
    let (r, w) = crate::sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    Ok((std::fs::File::from(r), std::fs::File::from(w)))
}

/// Runs the launcher; returns only on failure (with the message for the user).
pub fn service_exec(a: ServiceExec) -> String {
    match launch(a) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn launch(a: ServiceExec) -> Result<std::convert::Infallible, String> {
    if a.prog.is_empty() {
        return Err("no program given (after --)".into());
    }
    let dev = match (&a.dev, &a.standby) {
        (Some(d), _) => d.clone(),
        (None, Some(s)) => service::dev_towards(s).map_err(|e| {
            format!(
                "cannot find the device that routes to the standby {s} (give --service-dev): {e}"
            )
        })?,
        (None, None) => return Err("--service-addr needs --service-dev or --standby".into()),
    };
    checks::check_host(&dev).map_err(|e| e.to_string())?;
    checks::check_free(&a.service, &dev).map_err(|e| e.to_string())?;
    let me = std::process::id() as i32;
    let spec = TopologySpec {
        service: a.service,
        dev: dev.clone(),
        tag: me.to_string(),
    };
    let (go_r, mut go_w) = pipe()?;
    let (mut ready_r, ready_w) = pipe()?;
    // SAFETY: remusd has one thread here (no logging, no runtime yet); the child only forks
    // again and runs the keeper, which spawns commands (single-threaded as well).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        drop(go_w);
        drop(ready_r);
        // SAFETY: as above; the intermediate child exits at once, its child keeps.
        if unsafe { libc::fork() } != 0 {
            // SAFETY: leaving the intermediate child without running anything else.
            unsafe { libc::_exit(0) };
        }
        keeper(spec, me, go_r, ready_w);
    }
    drop(go_r);
    drop(ready_w);
    let mut st = 0;
    // SAFETY: reaping the intermediate child forked above.
    unsafe { libc::waitpid(child, &mut st, 0) };
    // SAFETY: unshare of this single-threaded process's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot create a network namespace for the program: {}",
            std::io::Error::last_os_error()
        ));
    }
    go_w.write_all(b"g")
        .map_err(|e| format!("the topology keeper is gone: {e}"))?;
    drop(go_w);
    let mut answer = String::new();
    let _ = ready_r.read_to_string(&mut answer);
    let keeper_pid = match answer.strip_prefix("ok ") {
        Some(p) => p.trim().to_string(),
        None if answer.is_empty() => {
            return Err("the topology keeper died before the program's network was up".into())
        }
        None => return Err(answer),
    };
    let mut cmd = std::process::Command::new(&a.prog[0]);
    cmd.args(&a.prog[1..])
        .env("REMUS_SERVICE_ADDR", a.service.to_string())
        .env("REMUS_SERVICE_DEV", &dev)
        .env("REMUS_SERVICE_VETH", spec_veth(me))
        .env("REMUS_OUTER_NETNS", format!("/proc/{keeper_pid}/ns/net"))
        .env("REMUS_PACKET_GATE", "1");
    let e = cmd.exec();
    Err(format!("cannot run {}: {e}", a.prog[0].to_string_lossy()))
}

fn spec_veth(tag: i32) -> String {
    format!("rmh{tag}")
}

/// The keeper (never returns).
fn keeper(spec: TopologySpec, prog: i32, mut go: std::fs::File, mut ready: std::fs::File) -> ! {
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal in this single-threaded process.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // SAFETY: setsid in the keeper: the terminal's process group signals miss it.
    unsafe { libc::setsid() };
    let _ = crate::logging::init(None);
    let mut b = [0u8; 1];
    if go.read(&mut b).unwrap_or(0) != 1 {
        // SAFETY: exiting the keeper: the launcher died before unsharing.
        unsafe { libc::_exit(1) };
    }
    let pidfd = crate::sys::pidfd_open(prog);
    let built = Topology::create(spec, prog).and_then(|mut t| t.announce().map(|()| t));
    let (mut topo, fd) = match (built, pidfd) {
        (Ok(t), Ok(fd)) => {
            let _ = writeln!(ready, "ok {}", std::process::id());
            drop(ready);
            (t, fd)
        }
        (Err(e), _) => {
            let _ = write!(ready, "{e}");
            // SAFETY: exiting the keeper; the topology was torn down by its drop.
            unsafe { libc::_exit(1) };
        }
        (_, Err(e)) => {
            let _ = write!(ready, "pidfd_open({prog}): {e}");
            // SAFETY: as above (the topology dropped at the end of the match arm).
            unsafe { libc::_exit(1) };
        }
    };
    loop {
        match crate::sys::poll_readable(&[fd.as_raw_fd()], None) {
            Ok(r) if r[0] => break,
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => break,
        }
    }
    topo.teardown();
    // SAFETY: the keeper's end.
    unsafe { libc::_exit(0) };
}
