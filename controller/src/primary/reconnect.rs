//! Asking a lost standby again, off the epoch loop: "did you take over?" (the fencing probe)
//! and "take me back" (a reconnection), each in a thread of its own whose typed answer the
//! epoch loop picks up ([`Attempted`]). Nothing here sleeps in the epoch loop.

use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use thiserror::Error;

use crate::control::status::SharedStatus;
use crate::wire::auth::LinkSecurity;
use crate::wire::messages::{GoodbyeReason, Hello, Refusal};

use super::link::{ConnectError, LastContact, Link, OnAck, PipelineOpts, Watermark};

/// How long a lost standby that answers "busy" is asked again before the primary gives up
/// asking (fencing: it may be about to take over at the end of the lost session).
pub const BUSY_PROBE_WAIT: Duration = Duration::from_secs(5);
/// How long the fencing probe's connection may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reconnection attempt may take.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a thread needs to open a link to the standby.
#[derive(Clone)]
pub struct Dialer {
    pub addr: String,
    pub sec: LinkSecurity,
    pub hello: Hello,
    pub heartbeat: Duration,
    pub status: SharedStatus,
    pub pipeline: PipelineOpts,
    /// The held output's release watermark, for the link's heartbeats.
    pub watermark: Watermark,
}

impl Dialer {
    /// Connects, authenticates and says hello; `on_ack` is called with each acked epoch.
    pub fn connect(&self, timeout: Duration, on_ack: OnAck) -> Result<Link, ConnectError> {
        Link::connect(
            &self.addr,
            &self.sec,
            self.hello.clone(),
            self.heartbeat,
            timeout,
            self.status.clone(),
            on_ack,
            self.watermark.clone(),
            self.pipeline,
        )
    }
}

/// Why a reconnection attempt gave no link.
#[derive(Debug, Error)]
pub enum ReconnectError {
    /// Fencing: the standby took over meanwhile.
    #[error("{0}")]
    Superseded(Refusal),
    /// Nothing alive answers at the standby's address (see [`ConnectError::peer_gone`]).
    #[error("nothing answers there: {0}")]
    PeerGone(ConnectError),
    /// Anything else (a timeout, a refusal, a broken handshake).
    #[error("{0}")]
    Failed(ConnectError),
    /// The link's security cannot be set up (key file, address).
    #[error("{0}")]
    Security(String),
    #[error("cannot start a reconnection thread: {0}")]
    Thread(std::io::Error),
    #[error("the reconnection attempt ended without an answer")]
    NoAnswer,
}

impl From<ConnectError> for ReconnectError {
    fn from(e: ConnectError) -> Self {
        if let Some(r) = e.superseded() {
            ReconnectError::Superseded(r.clone())
        } else if e.peer_gone() {
            ReconnectError::PeerGone(e)
        } else {
            ReconnectError::Failed(e)
        }
    }
}

/// What asking a lost standby "did you take over?" found.
#[derive(Debug)]
pub enum Probe {
    /// It took over this primary's app: stop, release nothing.
    Superseded(Refusal),
    /// It answered and had not taken over (it was told to discard its image), or nothing
    /// listens at its address (its daemon is gone) and it had no time to take over before it
    /// died ([`LastContact`]). (A standby that took over and then lost its daemon leaves the
    /// restored app running: "gone" alone proves nothing.)
    NotTakenOver,
    /// No answer either way (timeout, unreachable network, broken handshake): it may have
    /// taken over on the far side of a partition. The text says why, for the operator.
    Unknown(String),
}

/// What a thread is asked to do.
pub enum Attempt {
    /// The fencing probe, right after the link broke.
    Probe(LastContact),
    /// A new connection whose acks go to `OnAck`.
    Reconnect(OnAck),
}

/// A thread's answer.
pub enum Attempted {
    Probe(Probe),
    Reconnect(Result<Link, ReconnectError>),
}

/// Runs `attempt` in a thread of its own; its answer arrives on the returned channel. An
/// answer dropped unread (the primary gave up meanwhile) closes its connection before any
/// epoch went over it, so the standby has nothing to take over.
pub fn spawn(dialer: Dialer, attempt: Attempt) -> std::io::Result<Receiver<Attempted>> {
    let (tx, rx) = crossbeam::channel::bounded(1);
    let name = match attempt {
        Attempt::Probe(_) => "link-probe",
        Attempt::Reconnect(_) => "link-reconnect",
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let answer = match attempt {
                Attempt::Probe(contact) => Attempted::Probe(probe(&dialer, contact)),
                Attempt::Reconnect(on_ack) => Attempted::Reconnect(
                    dialer
                        .connect(RECONNECT_TIMEOUT, on_ack)
                        .map_err(ReconnectError::from),
                ),
            };
            let _ = tx.send(answer);
        })?;
    Ok(rx)
}

/// After the link broke: asks the standby again whether it took over. When it answers that
/// it has not (it is still waiting), it is told that this primary goes on unprotected, so that
/// it discards its image.
///
/// A standby that refuses as busy may still be ending the session this primary just lost,
/// and take over at its end: it is asked again (the primary holding everything meanwhile)
/// for up to [`BUSY_PROBE_WAIT`] until it answers either way.
fn probe(dialer: &Dialer, contact: LastContact) -> Probe {
    let busy_until = Instant::now() + BUSY_PROBE_WAIT;
    let result = loop {
        let noop: OnAck = std::sync::Arc::new(|_| {});
        match dialer.connect(PROBE_TIMEOUT, noop) {
            Err(e) if e.busy() && Instant::now() < busy_until => {
                tracing::info!(
                    "asked the standby again after the link broke: {e}; asking again before \
                     releasing anything"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            r => break r,
        }
    };
    let addr = &dialer.addr;
    match result {
        Err(e) => {
            if let Some(r) = e.superseded() {
                return Probe::Superseded(r.clone());
            }
            tracing::info!("asked the standby again after the link broke: {e}");
            if e.peer_gone() && contact.too_recent_for_takeover() {
                tracing::info!(
                    "standby {addr}: its daemon is gone and {}: it cannot have taken over",
                    contact.describe()
                );
                Probe::NotTakenOver
            } else if e.peer_gone() {
                Probe::Unknown(format!(
                    "{e}; its daemon is gone, but {}: it may have taken over before it died",
                    contact.describe()
                ))
            } else {
                Probe::Unknown(e.to_string())
            }
        }
        Ok(link) => {
            link.goodbye(
                GoodbyeReason::Unprotected {
                    reason: "the link broke and this primary goes on unprotected".into(),
                },
                Duration::from_secs(2),
            );
            link.close();
            Probe::NotTakenOver
        }
    }
}
