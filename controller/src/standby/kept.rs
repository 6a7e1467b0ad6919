//! Committed output the standby keeps for a takeover (DESIGN §10).
//!
//! The primary releases an epoch's held output (stdout/stderr) only once this standby has
//! acknowledged the epoch. If the primary dies after the ack but before it wrote that output,
//! the restored program is already past it: nobody else has it. So every epoch's commit
//! carries its output ([`crate::wire::messages::EpochCommit::output`]); the standby keeps it
//! from the moment the epoch is committed, drops it once the primary's release watermark
//! (carried by its heartbeats) covers it, and at a takeover writes what is left, in order,
//! before the restored program resumes ([`KeptOutput::owed`]). At most what the primary wrote
//! after its last report is written twice; nothing is lost.
//!
//! Memory: at most what the primary holds committed and not yet written (it stops reading the
//! program's output beyond its own limit) plus what it writes in a heartbeat interval, and
//! never more than [`KEPT_LIMIT`]: beyond it the oldest is dropped, with a warning (that much
//! would be lost at a takeover).
//!
//! What is not kept: output on the program's sockets (TCP, UDP, unix). Their peers are on
//! other hosts or on the primary's host, and the restored program's connections come back
//! closed: there is nowhere to write those bytes from here (TCP will recover them itself once
//! connections are repaired, DESIGN §9: the bytes are in the restored send queue). Pipes and
//! FIFOs other than stdout/stderr are not held at all (README).

use std::collections::VecDeque;

use crate::wire::messages::{HeldOutput, OutStream, Released};

/// The most committed output bytes kept.
pub const KEPT_LIMIT: u64 = 128 << 20;

#[derive(Debug, Default)]
pub struct KeptOutput {
    /// Pieces of committed epochs not yet covered by the watermark, in the order the primary
    /// read them.
    pieces: VecDeque<HeldOutput>,
    /// The newest watermark the primary reported.
    released: Released,
    bytes: u64,
    /// Bytes dropped over the limit.
    pub dropped: u64,
}

impl KeptOutput {
    /// The output of a committed epoch.
    pub fn commit(&mut self, pieces: Vec<HeldOutput>) {
        for p in pieces {
            if p.end() <= self.released.of(p.stream) || p.data.0.is_empty() {
                continue;
            }
            self.bytes += p.data.0.len() as u64;
            self.pieces.push_back(p);
        }
        while self.bytes > KEPT_LIMIT {
            let Some(p) = self.pieces.pop_front() else {
                break;
            };
            let n = p.data.0.len() as u64;
            self.bytes -= n;
            self.dropped += n;
            tracing::warn!(
                stream = p.stream.name(),
                offset = p.offset,
                bytes = n,
                "more committed output than the standby keeps ({KEPT_LIMIT} bytes): the oldest \
                 is dropped and would be lost at a takeover"
            );
        }
    }

    /// The primary's release watermark: what it covers is out, and is dropped here.
    pub fn released(&mut self, r: &Released) {
        for &(s, n) in &r.0 {
            match self.released.0.iter_mut().find(|(t, _)| *t == s) {
                Some((_, m)) => *m = (*m).max(n),
                None => self.released.0.push((s, n)),
            }
        }
        let rel = &self.released;
        let mut freed = 0u64;
        self.pieces.retain(|p| {
            let keep = p.end() > rel.of(p.stream);
            if !keep {
                freed += p.data.0.len() as u64;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Bytes kept.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What a takeover must write, in order: each piece's part past the watermark.
    pub fn owed(&self) -> Vec<(OutStream, u64, &[u8])> {
        self.pieces
            .iter()
            .filter_map(|p| {
                let from = self.released.of(p.stream).max(p.offset);
                let skip = (from - p.offset) as usize;
                (skip < p.data.0.len()).then(|| (p.stream, from, &p.data.0[skip..]))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::PageBytes;

    fn piece(stream: OutStream, offset: u64, data: &[u8]) -> HeldOutput {
        HeldOutput {
            stream,
            offset,
            data: PageBytes(data.to_vec()),
        }
    }

    #[test]
    fn kept_until_released_then_only_the_rest_is_owed() {
        let mut k = KeptOutput::default();
        k.commit(vec![
            piece(OutStream::Stdout, 0, b"one\n"),
            piece(OutStream::Stderr, 0, b"err\n"),
        ]);
        k.commit(vec![piece(OutStream::Stdout, 4, b"two\nthree\n")]);
        assert_eq!(k.bytes(), 18);
        // The primary wrote "one\ntw" of stdout, nothing of stderr.
        k.released(&Released(vec![(OutStream::Stdout, 6)]));
        assert_eq!(k.bytes(), 14, "\"one\\n\" is out");
        let owed = k.owed();
        assert_eq!(
            owed,
            vec![
                (OutStream::Stderr, 0, &b"err\n"[..]),
                (OutStream::Stdout, 6, &b"o\nthree\n"[..])
            ]
        );
        // An older report changes nothing; a piece already covered is not kept.
        k.released(&Released(vec![(OutStream::Stdout, 2)]));
        k.commit(vec![piece(OutStream::Stdout, 0, b"one\n")]);
        assert_eq!(k.bytes(), 14);
        k.released(&Released(vec![
            (OutStream::Stdout, 14),
            (OutStream::Stderr, 4),
        ]));
        assert_eq!(k.bytes(), 0);
        assert!(k.owed().is_empty());
    }
}
