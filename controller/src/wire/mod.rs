//! The replication protocol between `remusd primary` and `remusd standby`, over one TCP
//! connection.
//!
//! ```text
//! primary                                   standby
//!   Hello ------------------------------------>
//!   <------------------------------------ HelloAck (refused: None)
//!   EpochPart{epoch 1, part 0} ---------------->   pending
//!   EpochPart{epoch 1, part 1} ---------------->   pending
//!   EpochCommit{epoch 1, parts 2, meta} ------->   verify, Image::apply
//!   <------------------------------------------ Ack{epoch 1}
//!   Heartbeat <-------------------------------> Heartbeat   (whenever idle)
//!   Goodbye{reason} --------------------------->   no takeover
//! ```
//!
//! Each message travels in one [`frame`]: a fixed header (magic, version, kind, sequence
//! number, length, checksum), a snap-compressed rmp-serde payload and an HMAC tag. Before the
//! first frame the two daemons authenticate each other with a shared key ([`auth`]).

pub mod auth;
pub mod delta;
pub mod frame;
pub mod messages;

pub use frame::{DecodeFrameError, FrameReader, FrameWriter};
pub use messages::WireMsg;
