//! The words of the staging header a daemonizing program hands protection over with (see
//! `life::daemon` and `remus_abi::MsgKind::Handover`): shared with its children, who inherit
//! the staging mapping.

use core::sync::atomic::{AtomicU64, Ordering};

use remus_abi::{HANDOVER_CONN_OFF, HANDOVER_OFF};

use super::sockets;
use crate::base::state;

fn word(off: usize) -> Option<&'static AtomicU64> {
    let base = state::STAGING.load(Ordering::Relaxed);
    // SAFETY: the staging mapping (shared, alive for the process) holds the 8-aligned header
    // words below HEADER_SIZE; every side accesses them atomically.
    (!base.is_null()).then(|| unsafe { &*(base.add(off) as *const AtomicU64) })
}

/// The exiting program hands protection to `child`: every held socket's close goes into the
/// log first (the child registers the ones it has afresh), then the next connection number
/// and the child's pid are published.
pub fn hand_over(child: i32) {
    sockets::before_exec();
    if let (Some(pid), Some(conn)) = (word(HANDOVER_OFF), word(HANDOVER_CONN_OFF)) {
        conn.store(sockets::next_conn() as u64, Ordering::Relaxed);
        pid.store(child as u64, Ordering::Release);
    }
}

/// The pid protection was handed to, if any.
pub fn handed_to() -> Option<i32> {
    let p = word(HANDOVER_OFF)?.load(Ordering::Acquire);
    (p != 0).then_some(p as i32)
}

/// The connection number the new program carries on from.
pub fn next_conn() -> u32 {
    word(HANDOVER_CONN_OFF).map_or(1, |w| w.load(Ordering::Relaxed) as u32)
}
