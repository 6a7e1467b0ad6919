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

use remus_abi::{MsgKind, ENV_PROTECTED_PID};

use super::init;
use crate::base::{environ, fatal, link, sigview, state};
use crate::epoch::{capture, files};
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
    state::EPOCH.store(
        init::last_epoch_in(state::STAGING.load(Ordering::Relaxed)),
        Ordering::Relaxed,
    );
    state::pending().store(false, Ordering::Release);
    state::APP_PID.store(pid, Ordering::Relaxed);
    environ::set(ENV_PROTECTED_PID, Some(&pid.to_string()));
    init::read_process_facts();
    // The epoch handler and the dispositions are the parent's, inherited at the fork.
    init::hello_again(pid, kind, notice, sigview::real_sigaction())
}
