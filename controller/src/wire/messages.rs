//! The messages of the replication protocol (see the module docs of [`crate::wire`]).

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::image::EpochMeta;

/// Protocol version carried in every frame header and in [`Hello`]. 3: the standby's refusal
/// of a hello is a [`Refusal`] (it was free text). 4: an [`EpochCommit`] carries the epoch's
/// held output ([`HeldOutput`]) and the primary's heartbeats its release watermark
/// ([`Released`]); [`EpochMeta`] carries every thread (`threads`, `rendezvous_ns`). 5:
/// [`EpochMeta`] carries the connections dumped in the pause (`tcp`). 6: the etcd
/// arbiter and the planned switch-over (`Goodbye::Switchover`, `Hello::lease`,
/// `HelloAck::leader_key`).
pub const PROTOCOL_VERSION: u16 = 6;

/// One message on the wire. The frame header's `kind` byte is [`WireMsg::kind`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireMsg {
    Hello(Hello),
    HelloAck(HelloAck),
    EpochPart(EpochPart),
    EpochCommit(Box<EpochCommit>),
    Ack {
        epoch: u64,
    },
    /// Either way when idle; the primary's also every heartbeat interval while its release
    /// watermark moves (the standby's is empty).
    Heartbeat {
        released: Released,
    },
    Goodbye {
        reason: GoodbyeReason,
    },
}

impl WireMsg {
    pub const KIND_HELLO: u8 = 1;
    pub const KIND_HELLO_ACK: u8 = 2;
    pub const KIND_EPOCH_PART: u8 = 3;
    pub const KIND_EPOCH_COMMIT: u8 = 4;
    pub const KIND_ACK: u8 = 5;
    pub const KIND_HEARTBEAT: u8 = 6;
    pub const KIND_GOODBYE: u8 = 7;

    pub fn kind(&self) -> u8 {
        match self {
            WireMsg::Hello(_) => Self::KIND_HELLO,
            WireMsg::HelloAck(_) => Self::KIND_HELLO_ACK,
            WireMsg::EpochPart(_) => Self::KIND_EPOCH_PART,
            WireMsg::EpochCommit(_) => Self::KIND_EPOCH_COMMIT,
            WireMsg::Ack { .. } => Self::KIND_ACK,
            WireMsg::Heartbeat { .. } => Self::KIND_HEARTBEAT,
            WireMsg::Goodbye { .. } => Self::KIND_GOODBYE,
        }
    }

    pub fn kind_known(kind: u8) -> bool {
        (Self::KIND_HELLO..=Self::KIND_GOODBYE).contains(&kind)
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            WireMsg::Hello(_) => "Hello",
            WireMsg::HelloAck(_) => "HelloAck",
            WireMsg::EpochPart(_) => "EpochPart",
            WireMsg::EpochCommit(_) => "EpochCommit",
            WireMsg::Ack { .. } => "Ack",
            WireMsg::Heartbeat { .. } => "Heartbeat",
            WireMsg::Goodbye { .. } => "Goodbye",
        }
    }
}

/// First message, primary -> standby: who is being protected and at what pace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub app_pid: i32,
    pub exe: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub epoch_ms: u64,
    pub heartbeat_ms: u64,
    /// `--etcd`: the lease this primary holds the leader key with. It names the primary in
    /// the obsolete mark (`arbiter::config::Obsolete`) that the standby checks before it
    /// takes over.
    pub lease: Option<i64>,
}

/// The standby's answer to [`Hello`]. `refused` says why the standby will not take this
/// primary; the primary decides what to do from the variant, never from its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: u16,
    pub standby_pid: u32,
    pub refused: Option<Refusal>,
    /// The standby's failure timeout (`--timeout-ms`): it takes over only after hearing
    /// nothing from the primary for this long. The primary uses it to tell "its daemon is
    /// gone" from "it may have taken over, then died" (`primary::link::Link::lost_for`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `--etcd`: the leader key this standby must hold before it takes over. A primary whose
    /// own key is not this one cannot prove by its lease that no takeover happened.
    #[serde(default)]
    pub leader_key: Option<String>,
}

/// Why a standby refuses a primary's hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// It is protecting another primary (or still ending the session of one): ask again.
    #[error("this standby is already protecting another primary")]
    Busy,
    /// It took over the app of `primary` from `epoch` (fencing: a primary that asks again
    /// learns from this that it must stop, and release nothing it holds).
    #[error(
        "superseded: this standby took over the app from primary {primary} at epoch {epoch} \
         and cannot protect a new primary"
    )]
    Superseded { primary: String, epoch: u64 },
    /// The hello speaks another protocol version.
    #[error("the primary speaks protocol {primary}, this standby speaks {standby}")]
    Version { primary: u16, standby: u16 },
}

/// Some of the pages of one epoch. Parts of an epoch are numbered from 0, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochPart {
    pub epoch: u64,
    pub part: u32,
    /// (page address, 4096 bytes).
    pub pages: Vec<(u64, PageBytes)>,
}

/// Closes an epoch: `parts` parts were sent; `meta.pages` pages in all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCommit {
    pub epoch: u64,
    pub parts: u32,
    pub meta: EpochMeta,
    /// The output the app wrote to its held streams up to this epoch's checkpoint and not
    /// shipped before, in the order the primary read it (across streams too). The primary
    /// releases it once the standby acks this epoch; the standby keeps it until the primary
    /// reports it released, and writes out what is left at a takeover (DESIGN §10).
    pub output: Vec<HeldOutput>,
}

/// One of the app's held output streams (the shim's names: `stdout`, `stderr`, and
/// `stdout+stderr` when fds 1 and 2 share one open file, as with `2>&1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OutStream {
    Stdout,
    Stderr,
    /// Both fds on one stream: at a takeover it goes where the restored program's fd 1 goes.
    Both,
}

impl OutStream {
    /// From the shim's name of the stream (`remusd primary --output NAME`).
    pub fn from_name(name: &str) -> Option<OutStream> {
        match name {
            "stdout" => Some(OutStream::Stdout),
            "stderr" => Some(OutStream::Stderr),
            "stdout+stderr" => Some(OutStream::Both),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OutStream::Stdout => "stdout",
            OutStream::Stderr => "stderr",
            OutStream::Both => "stdout+stderr",
        }
    }
}

/// Bytes of one held stream: `data` is the stream's bytes from `offset` on (offsets count
/// from the first byte the primary read from that stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOutput {
    pub stream: OutStream,
    pub offset: u64,
    pub data: PageBytes,
}

impl HeldOutput {
    /// The stream offset just past this piece.
    pub fn end(&self) -> u64 {
        self.offset + self.data.0.len() as u64
    }
}

/// The primary's release watermark: for each held stream, how many of its bytes (from its
/// first) the primary has written out to their destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released(pub Vec<(OutStream, u64)>);

impl Released {
    pub fn of(&self, stream: OutStream) -> u64 {
        self.0
            .iter()
            .find(|(s, _)| *s == stream)
            .map_or(0, |&(_, n)| n)
    }
}

/// Why the primary is going away. Only a connection that breaks *without* one of these is a
/// failure the standby takes over from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// The app ended on its own: do not resurrect it.
    AppExited(AppExit),
    /// The primary can no longer replicate the app (e.g. it created a second thread): the
    /// standby discards its image and does not take over.
    Unprotected { reason: String },
    /// An operator stopped the primary controller.
    OperatorStop,
    /// A planned switch-over (`remusctl switchover`): the program is stopped on the primary
    /// right after epoch `epoch`, which the standby acknowledged; the standby resumes it from
    /// there. `released` is the primary's final release watermark.
    Switchover { epoch: u64, released: Released },
}

impl fmt::Display for GoodbyeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoodbyeReason::AppExited(e) => write!(f, "the app {e}"),
            GoodbyeReason::Unprotected { reason } => {
                write!(f, "the primary is unprotected: {reason}")
            }
            GoodbyeReason::OperatorStop => write!(f, "an operator stopped the primary controller"),
            GoodbyeReason::Switchover { epoch, .. } => {
                write!(f, "a planned switch-over at epoch {epoch}")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppExit {
    Code(i32),
    Signal(i32),
    Execve,
}

impl AppExit {
    /// From the shim's `Exiting` message: b = 0 exit, 1 killed by signal a, 2 execve.
    pub fn from_shim(a: u64, b: u64) -> AppExit {
        match b {
            1 => AppExit::Signal(a as i32),
            2 => AppExit::Execve,
            _ => AppExit::Code(a as i32),
        }
    }

    /// Shell-style exit code: the code, or 128 + signal.
    pub fn exit_code(&self) -> Option<i32> {
        match *self {
            AppExit::Code(c) => Some(c),
            AppExit::Signal(s) => Some(128 + s),
            AppExit::Execve => None,
        }
    }
}

impl fmt::Display for AppExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppExit::Code(c) => write!(f, "exited with code {c}"),
            AppExit::Signal(s) => write!(f, "was killed by signal {s}"),
            AppExit::Execve => write!(f, "called execve (the new program is protected afresh)"),
        }
    }
}

/// Page contents, serialized as a msgpack `bin` (not an array of integers).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PageBytes(pub Vec<u8>);

impl fmt::Debug for PageBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageBytes({} bytes)", self.0.len())
    }
}

impl Serialize for PageBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for PageBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PageBytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("page bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PageBytes, E> {
                Ok(PageBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<PageBytes, E> {
                Ok(PageBytes(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PageBytes, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(PageBytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
