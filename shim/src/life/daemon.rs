//! A daemonizing program (`fork`, the parent exits, the child `setsid`s and maybe forks
//! again): protection moves to the child that carries on.
//!
//! The exiting program's shim (`hooks::process`) hands protection to its last child when that
//! child is alive and runs the same executable: it writes the child's pid to the staging
//! area's `HANDOVER_OFF` word (the mapping is shared with its children), tells remusd
//! (`MsgKind::Handover`) and exits. The child, a *candidate* since its fork (it kept the shim
//! socket and the staging memfd), sees its pid there at its next safe point (a wait, a
//! sleep, `fork`, `setsid`, `exit`) and takes over: the tracker afresh (a fork drops the
//! write protection), everything followed forgotten (the first epoch ships everything),
//! epoch and connection numbers carried on, `HelloAfterExec` with its own pid, and on `Ready`
//! protection starts.

use core::sync::atomic::Ordering;

use remus_abi::{Msg, MsgKind, ABI_VERSION, ENV_PROTECTED_PID};

use super::init;
use crate::base::{environ, fatal, link, sigview, state};
use crate::epoch::{capture, files, handler};
use crate::kernel::sys;
use crate::track::{handover, pages as tracker, sockets};

/// At a safe point of a candidate: takes protection over if it was handed to this process.
pub fn poll() {
    if !state::CANDIDATE.load(Ordering::Relaxed) || state::mode() != state::MODE_PASSIVE {
        return;
    }
    let pid = sys::getpid();
    if handover::handed_to() != Some(pid) {
        return;
    }
    state::CANDIDATE.store(false, Ordering::Relaxed);
    if let Err(why) = take_over(pid) {
        let why = format!("the program daemonized, and its child {pid} cannot be protected: {why}");
        link::send_text(MsgKind::Unsupported, 0, 0, why.as_bytes());
        fatal::say(format!("WARNING: running UNPROTECTED: {why}").as_bytes());
        state::set_mode(state::MODE_UNPROTECTED);
    }
}

fn take_over(pid: i32) -> Result<(), String> {
    let (kernel, kind, notice) = init::choose_tracker()?;
    if kind == tracker::MPROTECT {
        return Err("the mprotect tracker does not follow a daemonizing program yet".into());
    }
    init::use_kernel(&kernel);
    capture::reset();
    files::reset();
    sockets::reset();
    sockets::continue_after_exec(handover::next_conn());
    let staging = state::STAGING.load(Ordering::Relaxed);
    // SAFETY: the header is at the start of the staging mapping; the parent wrote its last
    // epoch there.
    let last = unsafe { (*(staging as *const remus_abi::StagingHeader)).epoch };
    state::EPOCH.store(last, Ordering::Relaxed);
    state::PENDING.store(false, Ordering::Release);
    state::APP_PID.store(pid, Ordering::Relaxed);
    environ::set(ENV_PROTECTED_PID, Some(&pid.to_string()));
    init::read_process_facts();
    tracker::set_kind(kind);
    handler::STARTING.store(true, Ordering::Release);
    if let Some(n) = notice {
        link::send_text(MsgKind::Log, 0, 0, n.as_bytes());
    }
    link::send(&Msg::new(
        MsgKind::HelloAfterExec,
        pid as u64,
        ABI_VERSION as u64,
    ))
    .map_err(|e| {
        format!(
            "cannot reach remusd primary ({})",
            std::io::Error::from_raw_os_error(e)
        )
    })?;
    match link::recv() {
        Ok(m) if m.kind == MsgKind::Ready as u32 => {
            handler::start_protection();
            sigview::install_reporters(sigview::real_sigaction());
            Ok(())
        }
        Ok(m) => {
            handler::no_protection();
            Err(String::from_utf8_lossy(m.text()).into_owned())
        }
        Err(e) => {
            handler::no_protection();
            Err(format!("remusd primary went away ({e})"))
        }
    }
}
