//! Failure detection: how long the primary has been silent.
//!
//! "Silent" means no byte arrived: a large epoch part that is still streaming in counts as
//! life, so only a primary that stopped sending altogether is declared dead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared between the reading thread (which calls [`Liveness::alive`] on every byte) and the
/// session loop (which asks [`Liveness::silent_for`]).
#[derive(Clone)]
pub struct Liveness {
    base: Instant,
    /// Microseconds since `base` of the last sign of life.
    last_us: Arc<AtomicU64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            base: Instant::now(),
            last_us: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn alive(&self) {
        self.last_us
            .store(self.base.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_us.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// `Some(silence)` once the silence exceeds `timeout`.
    pub fn dead(&self, timeout: Duration) -> Option<Duration> {
        let s = self.silent_for();
        (s > timeout).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_measured_from_the_last_sign_of_life() {
        let l = Liveness::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.dead(Duration::from_millis(10)).is_some());
        l.alive();
        assert!(l.dead(Duration::from_millis(10)).is_none());
        assert!(l.silent_for() < Duration::from_millis(10));
    }
}
