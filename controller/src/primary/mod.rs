//! `remusd primary`: started by the shim beside the protected app. Takes epochs from the shim
//! and ships them to the standby.
//!
//! Layers, each importing only those below it:
//! - the parts: [`link`] (the connection to the standby), [`pipeline`], [`shim_link`],
//!   [`staging`], [`stream`], [`output`], [`netout`];
//! - [`reconnect`]: questions to a lost standby, each on a thread of its own, typed answers;
//! - [`protection`]: the protection state machine ([`protection::Protection`]) and the gate
//!   the link's ack callback reads;
//! - [`state`]: what the epoch loop owns ([`state::Primary`]) and the operations all layers
//!   above share (enter a state, release or hold output, open a link);
//! - [`image_sync`]: a connection's full image and the step to `Protected`;
//! - [`fencing`] (link lost, probe, reconnect, superseded, give up) and [`startup`] (the
//!   shim's hello, the first connection);
//! - [`epoch_loop`]: the loop itself; this module starts it.

mod arbiter;
pub mod conns;
mod epoch_loop;
mod fencing;
mod image_sync;
pub mod link;
pub mod netout;
pub mod output;
pub mod pipeline;
mod protection;
mod reconnect;
pub mod shim_link;
pub mod staging;
mod startup;
mod state;
pub mod stream;
mod switchover;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::control::server::ControlServer;
use crate::control::status::{SharedStatus, Status};
use output::{Output, OutputStream};
use shim_link::ShimLink;
use staging::Staging;
use state::{End, Primary};
pub use state::{PrimaryArgs, ServiceNet};

/// Runs `remusd primary`; returns the process exit code. `outputs` names the held output
/// streams the shim passed (at `remus_abi::CONTROLLER_OUTPUT_FD_BASE`, two fds each).
pub fn run(args: PrimaryArgs, outputs: Vec<String>) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let sock =
        crate::sys::take_inherited_fd(remus_abi::CONTROLLER_SHIM_SOCK_FD, "the shim's socket")?;
    let shim = ShimLink::new(sock).context("the shim's socket (fd 3)")?;
    let staging_fd =
        crate::sys::take_inherited_fd(remus_abi::CONTROLLER_STAGING_FD, "the staging memfd")?;
    let staging_file = File::from(staging_fd);
    let staging = Staging::map(&staging_file).context("mapping the staging memfd (fd 4)")?;
    let net = netout::NetLog::map(&staging_file).context("mapping the socket output log")?;
    let mut streams = Vec::new();
    for (i, name) in outputs.into_iter().enumerate() {
        let base = remus_abi::CONTROLLER_OUTPUT_FD_BASE + 2 * i as i32;
        let dest = crate::sys::take_inherited_fd(base, "an output stream's destination")?;
        let src = crate::sys::take_inherited_fd(base + 1, "an output stream's pipe")?;
        streams.push(OutputStream { name, dest, src });
    }
    run_full(args, shim, staging, stop, streams, net)
}

/// [`run_with_output`] without held output streams.
pub fn run_with(
    args: PrimaryArgs,
    shim: ShimLink,
    staging: Staging,
    stop: Arc<AtomicBool>,
) -> Result<i32> {
    run_with_output(args, shim, staging, stop, Vec::new())
}

/// [`run`] with the shim's socket, staging area and output streams given (tests pass their
/// own); `stop` is the operator-stop flag.
pub fn run_with_output(
    args: PrimaryArgs,
    shim: ShimLink,
    staging: Staging,
    stop: Arc<AtomicBool>,
    outputs: Vec<OutputStream>,
) -> Result<i32> {
    run_full(args, shim, staging, stop, outputs, None)
}

/// [`run_with_output`] with the socket output log (`net`) as well.
pub fn run_full(
    mut args: PrimaryArgs,
    shim: ShimLink,
    staging: Staging,
    stop: Arc<AtomicBool>,
    outputs: Vec<OutputStream>,
    net: Option<netout::NetLog>,
) -> Result<i32> {
    let mut st = Status::new("primary", protection::Protection::Starting.label());
    st.app_pid = Some(args.app_pid);
    st.epoch_ms = Some(args.epoch_ms);
    st.heartbeat_ms = Some(args.heartbeat_ms);
    st.standby = args.standby.clone();
    st.app_exe = std::fs::read_link(format!("/proc/{}/exe", args.app_pid))
        .ok()
        .map(|p| p.display().to_string());
    st.reason = Some("starting".into());
    let status = SharedStatus::new(st);
    let (switch_tx, switch_rx) = crossbeam::channel::bounded::<switchover::SwitchReply>(1);
    let stop_flag = stop.clone();
    let commands: crate::control::server::CommandFn = Arc::new(move |line: &str| {
        match line.trim() {
            "switchover" => {}
            "stop" => {
                // As SIGTERM: the standby is told not to take over, the lease is revoked.
                stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok("stopping remusd primary: the standby is told not to take over                            (and the etcd lease, if any, is revoked); the program runs on                            unprotected"
                    .into());
            }
            _ => {
                return Err(format!(
                    "unknown command {line:?}; a primary knows: status, switchover, stop"
                ))
            }
        }
        let (tx, rx) = crossbeam::channel::bounded(1);
        switch_tx
            .try_send(tx)
            .map_err(|_| "a switch-over is already under way".to_string())?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|e| match e {
                crossbeam::channel::RecvTimeoutError::Timeout => {
                    "the switch-over did not finish in 30 s".to_string()
                }
                crossbeam::channel::RecvTimeoutError::Disconnected => {
                    "remusd primary ended before the switch-over could start".to_string()
                }
            })?
    });
    let _control = ControlServer::start_with_commands(
        args.control.clone(),
        "primary",
        status.clone(),
        Some(commands),
    )?;
    if let Some(m) = args.metrics.take() {
        m.serve(status.clone())?;
    }
    let output = Output::new(outputs, status.clone());
    let net = match net.map(|log| netout::NetOut::start(log, status.clone())) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => bail!("cannot start the socket output release thread: {e}"),
        None => None,
    };

    let packets = match &args.service {
        Some(svc) => Some(Arc::new(start_gate(svc, args.app_pid)?)),
        None => None,
    };
    if let Some(g) = &packets {
        status.lock().packet_gate = Some(g.clone());
    }
    if let Some(cfg) = &args.arbiter {
        status.lock().status.arbiter = Some(crate::arbiter::lease::initial_status(
            cfg,
            crate::control::status::ArbiterState::Idle,
        ));
    }
    let mut p = Primary::new(args, shim, staging, status, output, net);
    p.switch_requests = Some(switch_rx);
    if packets.is_some() {
        // The program's connections survive a failover: dump them in each pause.
        p.staging.set_tcp_hold(true);
        p.tcp_hold = true;
    }
    p.packets = packets;
    let End::Exit(code) = p.main(&stop)?;
    let packets = p.packets.take();
    let net = p.net.take();
    if p.release_at_end {
        if let Some(n) = net {
            n.finish(Duration::from_secs(10));
        }
        p.output.finish();
        if let Some(g) = &packets {
            g.release_all();
        }
    }
    // Otherwise the primary side is dying: what is still held is dropped with the process
    // (the gate's queue closes with it, and the kernel drops what it held), and the rule stays
    // (the keeper removes it after the veth pair): the dead program's namespace answers its
    // clients' packets with resets, which must not pass while the standby takes over.
    if let Some(g) = &packets {
        // Not left to the last reference's drop (a link thread may outlive this function).
        if p.release_at_end {
            g.stop();
        } else {
            g.abandon();
        }
    }
    Ok(code)
}

/// The packet gate for a program in a service namespace (`--service-addr`).
fn start_gate(svc: &ServiceNet, app_pid: i32) -> Result<crate::net::gate::Gate> {
    let veth = svc.veth.as_deref().context(
        "--service-addr: the host's end of the program's veth pair is unknown ($REMUS_SERVICE_VETH \
         unset): run the program with `remus-run --service-addr ADDR/PREFIX`",
    )?;
    // Distinct per program on one host (a busy number is skipped).
    let hint = 1000 + (app_pid.unsigned_abs() % 60000) as u16;
    // The first packets belong to the first epoch (the output tag before any epoch).
    let g = crate::net::gate::Gate::start(veth, hint, 1)?;
    tracing::info!(addr = %svc.addr, veth, queue = g.queue(), "the program's packets go through the gate");
    Ok(g)
}

/// How long one request to etcd may take: well within a keepalive period (TTL/3).
pub fn request_timeout(cfg: &crate::arbiter::ArbiterConfig) -> Duration {
    (cfg.ttl() / 4).clamp(Duration::from_millis(200), Duration::from_secs(2))
}
