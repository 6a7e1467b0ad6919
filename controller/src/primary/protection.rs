//! The primary's protection state: one enum, owned by the epoch loop. The status JSON's
//! `state` is derived from it ([`Protection::label`]) for display; decisions read the enum.
//!
//! ```text
//! Starting --connected--> Syncing --full image acked--> Protected
//!    |                       |                              |
//!    |                       +----------link lost-----------+--> Resyncing --full image acked--> Protected
//!    |                                                           |  (probe, then reconnect)
//!    +--no standby, allowed--> Unprotected <--gave up (any state)+--standby took over--> Superseded
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;

use super::link::LastContact;
use super::reconnect::Attempted;

/// How often a lost standby is asked again (resynchronisation).
pub const RESYNC_RETRY: Duration = Duration::from_millis(500);

/// Where the primary stands with its standby.
pub enum Protection {
    /// Before the first connection.
    Starting,
    /// Connected: the first full image is on its way; protected once the standby acks it.
    Syncing,
    /// The standby holds a committed, restorable image of the app.
    Protected,
    /// The standby was lost (and had not taken over, or may have): asking it, reconnecting,
    /// or sending it a full image again.
    Resyncing(Box<Resync>),
    /// Protection was given up for good (no standby, a second thread, unsupported state, the
    /// app exited).
    Unprotected,
    /// The standby took over the app: this primary stopped it and releases nothing.
    Superseded,
}

impl Protection {
    /// The status JSON's `state` for this state (display only).
    pub fn label(&self) -> &'static str {
        match self {
            Protection::Starting => "starting",
            Protection::Syncing => "syncing",
            Protection::Protected => "protected",
            Protection::Resyncing(_) => "resyncing",
            Protection::Unprotected => "unprotected",
            Protection::Superseded => "superseded",
        }
    }

    /// Protection stopped for good: nothing is shipped to a standby any more.
    pub fn given_up(&self) -> bool {
        matches!(self, Protection::Unprotected | Protection::Superseded)
    }

    /// A full image is on its way (or about to be): the ack that completes it protects.
    pub fn syncing(&self) -> bool {
        matches!(self, Protection::Syncing | Protection::Resyncing(_))
    }

    pub fn resync(&self) -> Option<&Resync> {
        match self {
            Protection::Resyncing(r) => Some(r),
            _ => None,
        }
    }

    pub fn resync_mut(&mut self) -> Option<&mut Resync> {
        match self {
            Protection::Resyncing(r) => Some(r),
            _ => None,
        }
    }
}

/// The standby was lost (and had not taken over): the app runs unprotected while remusd asks
/// it whether it took over, then reconnects; a new connection gets a full image, then epochs.
pub struct Resync {
    pub addr: String,
    /// Why the standby was lost.
    pub why: String,
    pub next_try: Instant,
    pub attempts: u64,
    /// The fencing probe has answered (until it does, everything held stays held).
    pub asked: bool,
    /// The full-resend request (`remus_abi::RESEND_REQ_OFF`) the next epoch must honour, once
    /// a new connection is up.
    pub request: Option<u64>,
    /// The probe or reconnection attempt under way (in a thread of its own).
    pub attempt: Option<Receiver<Attempted>>,
    /// The epoch that honoured the full-resend request (its pause is logged). Protection
    /// resumes at `Primary::complete_at`: this epoch in one-pause mode, later when streamed.
    pub full_epoch: Option<u64>,
    /// The standby could not be asked whether it took over (not yet, or unreachable):
    /// everything held is still held, and stays so until a reconnection proves it did not
    /// (then the full image's commit releases it) or shows it did (superseded: released
    /// never).
    pub held: bool,
    /// What the lost connection proved about the standby's failure detector: a later
    /// "nothing answers there" releases what is held only if it could not have taken over.
    pub contact: LastContact,
}

impl Resync {
    /// Just lost: everything held stays held until the probe (due at once) answers.
    pub fn lost(addr: String, why: String, contact: LastContact) -> Resync {
        Resync {
            addr,
            why,
            next_try: Instant::now(),
            attempts: 0,
            asked: false,
            request: None,
            attempt: None,
            full_epoch: None,
            held: true,
            contact,
        }
    }

    /// The status reason while reconnecting; `attempt` names the last attempt's outcome.
    pub fn reason(&self, attempt: Option<(u64, &dyn std::fmt::Display)>) -> String {
        let (addr, why, every) = (&self.addr, &self.why, RESYNC_RETRY.as_millis());
        let tail = match attempt {
            Some((n, e)) => format!(" (attempt {n}: {e})"),
            None => String::new(),
        };
        if !self.asked {
            format!(
                "standby {addr} lost: {why}; asking it whether it took over (output stays held \
                 until it answers), then reconnecting every {every} ms to resynchronise"
            )
        } else if self.held {
            // Fencing across a partition: the standby may be running the app from its last
            // committed epoch. Nothing this primary holds may leave until it is known not to.
            format!(
                "standby {addr} lost: {why}; it may have taken over, so output stays held until \
                 it answers; reconnecting every {every} ms to resynchronise{tail}"
            )
        } else {
            format!(
                "standby {addr} lost: {why}; running unprotected, reconnecting every {every} ms \
                 to resynchronise{tail}"
            )
        }
    }
}

/// What the link's reader thread reads when an ack arrives (it runs beside the epoch loop,
/// which alone writes this): from which epoch acks release output, and whether the first such
/// ack makes the primary protected.
pub struct AckGate {
    /// Acks of epochs before this release nothing (their images are partial); `u64::MAX`
    /// while a full image streams.
    release_from: AtomicU64,
    /// The epoch loop is in a syncing state ([`Protection::syncing`]). Written and read under
    /// the status lock, so that the status never shows a committed epoch on a primary that
    /// says it is unprotected, nor "protected" after the loop gave up.
    syncing: AtomicBool,
}

impl AckGate {
    pub fn new() -> AckGate {
        AckGate {
            release_from: AtomicU64::new(u64::MAX),
            syncing: AtomicBool::new(false),
        }
    }

    pub fn release_from(&self, epoch: u64) {
        self.release_from.store(epoch, Ordering::Release);
    }

    /// Whether an ack of `epoch` releases output (its image is complete).
    pub fn releases(&self, epoch: u64) -> bool {
        epoch >= self.release_from.load(Ordering::Acquire)
    }

    /// Under the status lock: the epoch loop entered `p`.
    pub fn entered(&self, p: &Protection) {
        self.syncing.store(p.syncing(), Ordering::Release);
    }

    /// Under the status lock, with a releasing ack: whether it protects (once per sync).
    pub fn take_sync(&self) -> bool {
        self.syncing.swap(false, Ordering::AcqRel)
    }
}

impl Default for AckGate {
    fn default() -> Self {
        AckGate::new()
    }
}
