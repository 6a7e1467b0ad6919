//! The standby's protocol state for one primary: pending parts, verification, and the
//! committed [`Image`]. Pure logic, no I/O: the session feeds it decoded messages.

use thiserror::Error;

use crate::image::{EpochMeta, Image};
use crate::wire::delta;
use crate::wire::messages::{
    EpochCommit, EpochPart, GoodbyeReason, Hello, WireMsg, PROTOCOL_VERSION,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReceiveError {
    #[error("expected Hello first, got {0}")]
    NoHello(&'static str),
    #[error("primary speaks protocol {got}, this standby speaks {PROTOCOL_VERSION}")]
    Version { got: u16 },
    #[error("unexpected {0} from the primary")]
    Unexpected(&'static str),
    #[error("epoch {got} arrived, expected epoch {want}")]
    EpochOutOfOrder { want: u64, got: u64 },
    #[error("epoch {epoch}: part {got} arrived, expected part {want}")]
    PartOutOfOrder { epoch: u64, want: u32, got: u32 },
    #[error("epoch {epoch}: commit says {said} {what}, {got} arrived")]
    Incomplete {
        epoch: u64,
        what: &'static str,
        said: u64,
        got: u64,
    },
    #[error("epoch {epoch}: commit metadata is for epoch {meta}")]
    MetaEpoch { epoch: u64, meta: u64 },
    #[error("epoch {epoch}: bad page at {addr:#x} ({len} bytes)")]
    BadPage { epoch: u64, addr: u64, len: usize },
    #[error("epoch {epoch}: page at {addr:#x}: {why}")]
    BadEncoding {
        epoch: u64,
        addr: u64,
        why: crate::wire::delta::DecodeError,
    },
    #[error("epoch {epoch} cannot be applied: {why}")]
    Apply { epoch: u64, why: String },
}

/// What the session should do after a message.
#[derive(Debug, PartialEq)]
pub enum Event {
    Nothing,
    /// Hello accepted: answer with a HelloAck.
    Hello(Hello),
    /// The epoch is applied: ack it.
    Committed {
        epoch: u64,
        pages: u64,
    },
    /// The primary says goodbye.
    Goodbye(GoodbyeReason),
}

struct Pending {
    epoch: u64,
    parts: u32,
    pages: Vec<(u64, Box<[u8]>)>,
}

#[derive(Default)]
pub struct Receiver {
    pub image: Image,
    pub hello: Option<Hello>,
    pending: Option<Pending>,
    /// Last epoch seen in a part or commit (committed or not).
    pub last_seen: Option<u64>,
    /// Page bytes and metadata received (before compression).
    pub bytes_raw: u64,
    /// Where committed file changes are written (None: nowhere; see [`crate::files`]).
    pub file_root: Option<crate::files::FileRoot>,
    /// Committed output the primary has not reported written yet (for a takeover).
    pub output: super::kept::KeptOutput,
}

impl Receiver {
    /// A receiver writing file changes under the process's file root, if one is set.
    pub fn new() -> Self {
        Receiver {
            file_root: crate::files::root(),
            ..Self::default()
        }
    }

    /// Checks the epoch of the next part or commit: the pending epoch's, or after the last
    /// committed one (the primary merges epochs while the link is behind: epoch k..m arrives as
    /// m, so numbers may jump).
    fn check_epoch(&self, got: u64) -> Result<(), ReceiveError> {
        match (&self.pending, self.image.committed_epoch()) {
            (Some(p), _) if got != p.epoch => {
                Err(ReceiveError::EpochOutOfOrder { want: p.epoch, got })
            }
            (None, Some(c)) if got <= c => Err(ReceiveError::EpochOutOfOrder { want: c + 1, got }),
            _ => Ok(()),
        }
    }

    /// Handles one message. On error the committed image is untouched (the pending epoch is
    /// dropped) and the session must end.
    pub fn handle(&mut self, msg: WireMsg) -> Result<Event, ReceiveError> {
        if self.hello.is_none() {
            return match msg {
                WireMsg::Hello(h) => {
                    if h.version != PROTOCOL_VERSION {
                        return Err(ReceiveError::Version { got: h.version });
                    }
                    self.hello = Some(h.clone());
                    Ok(Event::Hello(h))
                }
                m => Err(ReceiveError::NoHello(m.name())),
            };
        }
        let r = match msg {
            WireMsg::EpochPart(p) => self.part(p).map(|_| Event::Nothing),
            WireMsg::EpochCommit(c) => self.commit(*c),
            WireMsg::Heartbeat { released } => {
                self.output.released(&released);
                Ok(Event::Nothing)
            }
            WireMsg::Goodbye { reason } => {
                if let GoodbyeReason::Switchover { released, .. } = &reason {
                    self.output.released(released);
                }
                Ok(Event::Goodbye(reason))
            }
            m => Err(ReceiveError::Unexpected(m.name())),
        };
        if r.is_err() {
            self.pending = None;
        }
        r
    }

    fn part(&mut self, p: EpochPart) -> Result<(), ReceiveError> {
        self.check_epoch(p.epoch)?;
        self.last_seen = Some(p.epoch);
        let pend = self.pending.get_or_insert(Pending {
            epoch: p.epoch,
            parts: 0,
            pages: Vec::new(),
        });
        if p.part != pend.parts {
            return Err(ReceiveError::PartOutOfOrder {
                epoch: p.epoch,
                want: pend.parts,
                got: p.part,
            });
        }
        pend.parts += 1;
        pend.pages.reserve(p.pages.len());
        for (addr, data) in p.pages {
            if data.0.is_empty()
                || data.0.len() > remus_abi::PAGE_SIZE
                || !addr.is_multiple_of(remus_abi::PAGE_SIZE as u64)
            {
                return Err(ReceiveError::BadPage {
                    epoch: p.epoch,
                    addr,
                    len: data.0.len(),
                });
            }
            // A delta is against this page as the stream left it: the committed image (every
            // earlier epoch is applied before this one's parts arrive; a page appears once per
            // epoch).
            let page = if data.0.len() == remus_abi::PAGE_SIZE {
                data.0.into_boxed_slice()
            } else {
                delta::decode(&data.0, self.image.pages.get(&addr).map(|b| &b[..])).map_err(
                    |why| ReceiveError::BadEncoding {
                        epoch: p.epoch,
                        addr,
                        why,
                    },
                )?
            };
            self.bytes_raw += page.len() as u64;
            pend.pages.push((addr, page));
        }
        Ok(())
    }

    fn commit(&mut self, c: EpochCommit) -> Result<Event, ReceiveError> {
        self.check_epoch(c.epoch)?;
        self.last_seen = Some(c.epoch);
        let pend = self.pending.take().unwrap_or(Pending {
            epoch: c.epoch,
            parts: 0,
            pages: Vec::new(),
        });
        if c.parts != pend.parts {
            return Err(ReceiveError::Incomplete {
                epoch: c.epoch,
                what: "parts",
                said: c.parts.into(),
                got: pend.parts.into(),
            });
        }
        if c.meta.epoch != c.epoch {
            return Err(ReceiveError::MetaEpoch {
                epoch: c.epoch,
                meta: c.meta.epoch,
            });
        }
        if c.meta.pages != pend.pages.len() as u64 {
            return Err(ReceiveError::Incomplete {
                epoch: c.epoch,
                what: "pages",
                said: c.meta.pages,
                got: pend.pages.len() as u64,
            });
        }
        let pages = pend.pages.len() as u64;
        self.bytes_raw += meta_size(&c.meta);
        let output = c.output;
        let mut meta = c.meta;
        let files = std::mem::take(&mut meta.files);
        self.image
            .apply(meta, pend.pages)
            .map_err(|why| ReceiveError::Apply {
                epoch: c.epoch,
                why,
            })?;
        // The image holds the epoch: its file changes go into the copies before the ack.
        if let Some(root) = &self.file_root {
            crate::files::apply(root, &files).map_err(|e| ReceiveError::Apply {
                epoch: c.epoch,
                why: format!("replicated files: {e}"),
            })?;
        }
        // Committed: its output is owed to the world if the primary dies before writing it.
        self.output.commit(output);
        Ok(Event::Committed {
            epoch: c.epoch,
            pages,
        })
    }
}

/// Rough size of the metadata, for the bytes_raw counter.
fn meta_size(m: &EpochMeta) -> u64 {
    let files: usize = m
        .files
        .iter()
        .map(|f| f.path.len() + f.ranges.iter().map(|r| r.1 .0.len() + 8).sum::<usize>())
        .sum();
    (m.maps.len() + m.fds.len() * 64 + m.resets.len() * 16 + files + 512) as u64
}
