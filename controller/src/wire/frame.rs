//! Frames: how one [`WireMsg`] travels.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "RMUS"
//!      4     2  version (u16 LE) = PROTOCOL_VERSION
//!      6     1  kind (WireMsg::kind)
//!      7     1  flags (0; reserved)
//!      8     8  seq (u64 LE): 1 for the first frame in each direction, +1 per frame
//!     16     4  payload_len (u32 LE) <= MAX_PAYLOAD
//!     20     4  crc32 of the payload (u32 LE)
//!     24     -  payload: snap (raw format) of rmp-serde(WireMsg), also <= MAX_PAYLOAD unpacked
//!      -    32  tag: HMAC-SHA256(key of this direction, header | payload)
//! ```
//!
//! [`encode_frame`] and [`decode_frame`] handle the header and payload; [`FrameWriter`] and
//! [`FrameReader`] add and check the tag, with the per-connection, per-direction keys of the
//! link authentication ([`super::auth`]). The tag covers the sequence number: a frame that
//! was changed, replayed, reordered or dropped, or comes from another connection, fails.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::auth::{FrameKey, TAG_LEN};
use super::messages::{WireMsg, PROTOCOL_VERSION};

pub const MAGIC: [u8; 4] = *b"RMUS";
pub const HEADER_LEN: usize = 24;
/// Hard limit for a payload, compressed or not.
pub const MAX_PAYLOAD: usize = 256 << 20;

#[derive(Debug, Error)]
pub enum DecodeFrameError {
    #[error("bad frame magic {got:02x?} (expected \"RMUS\"): not a remus peer, or the stream is corrupt")]
    BadMagic { got: [u8; 4] },
    #[error("peer speaks protocol version {got}, this remusd speaks {want}: run the same remus version on both hosts")]
    WrongVersion { got: u16, want: u16 },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: u64, max: u64 },
    #[error("truncated frame: the {what} needs {need} bytes, only {got} arrived")]
    Truncated {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("frame checksum mismatch: header says {want:#010x}, payload has {got:#010x}")]
    Checksum { want: u32, got: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("undecodable frame payload: {0}")]
    Payload(String),
    #[error("frame {seq} failed authentication: it was altered on the way, or its sender does not hold this connection's key")]
    BadTag { seq: u64 },
    #[error("frame out of sequence: expected seq {expected}, got {got}")]
    OutOfSequence { expected: u64, got: u64 },
    #[error("reading from the peer: {0}")]
    Io(#[from] io::Error),
}

impl DecodeFrameError {
    /// The connection broke (the peer or its host went away) rather than sent something wrong.
    pub fn is_connection_break(&self) -> bool {
        matches!(
            self,
            DecodeFrameError::Io(_) | DecodeFrameError::Truncated { .. }
        )
    }
}

#[derive(Debug, Error)]
pub enum EncodeFrameError {
    #[error("encoding a {0} message: {1}")]
    Encode(&'static str, String),
    #[error("{0} message of {1} bytes exceeds the frame limit of {MAX_PAYLOAD} bytes")]
    TooLong(&'static str, usize),
}

#[derive(Debug, Error)]
pub enum SendFrameError {
    #[error(transparent)]
    Encode(#[from] EncodeFrameError),
    #[error("writing to the peer: {0}")]
    Io(#[from] io::Error),
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub flags: u8,
    pub seq: u64,
    pub payload_len: u32,
    pub crc: u32,
}

/// Encodes `msg` as frame number `seq`.
pub fn encode_frame(seq: u64, msg: &WireMsg) -> Result<Vec<u8>, EncodeFrameError> {
    let raw =
        rmp_serde::to_vec(msg).map_err(|e| EncodeFrameError::Encode(msg.name(), e.to_string()))?;
    if raw.len() > MAX_PAYLOAD {
        return Err(EncodeFrameError::TooLong(msg.name(), raw.len()));
    }
    let packed = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .map_err(|e| EncodeFrameError::Encode(msg.name(), e.to_string()))?;
    if packed.len() > MAX_PAYLOAD {
        return Err(EncodeFrameError::TooLong(msg.name(), packed.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + packed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(msg.kind());
    out.push(0);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&packed).to_le_bytes());
    out.extend_from_slice(&packed);
    Ok(out)
}

/// Checks magic, version, length and sequence number of a header.
pub fn parse_header(
    h: &[u8; HEADER_LEN],
    expected_seq: u64,
) -> Result<FrameHeader, DecodeFrameError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(DecodeFrameError::BadMagic { got: magic });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != PROTOCOL_VERSION {
        return Err(DecodeFrameError::WrongVersion {
            got: version,
            want: PROTOCOL_VERSION,
        });
    }
    let le64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let le32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let hdr = FrameHeader {
        kind: h[6],
        flags: h[7],
        seq: le64(8),
        payload_len: le32(16),
        crc: le32(20),
    };
    if hdr.payload_len as usize > MAX_PAYLOAD {
        return Err(DecodeFrameError::TooLong {
            len: hdr.payload_len.into(),
            max: MAX_PAYLOAD as u64,
        });
    }
    if hdr.seq != expected_seq {
        return Err(DecodeFrameError::OutOfSequence {
            expected: expected_seq,
            got: hdr.seq,
        });
    }
    if !WireMsg::kind_known(hdr.kind) {
        return Err(DecodeFrameError::UnknownKind(hdr.kind));
    }
    Ok(hdr)
}

/// Checks the checksum, unpacks and decodes a payload whose header was accepted.
pub fn decode_payload(hdr: &FrameHeader, payload: &[u8]) -> Result<WireMsg, DecodeFrameError> {
    let got = crc32fast::hash(payload);
    if got != hdr.crc {
        return Err(DecodeFrameError::Checksum { want: hdr.crc, got });
    }
    let raw_len = snap::raw::decompress_len(payload)
        .map_err(|e| DecodeFrameError::Payload(format!("snap: {e}")))?;
    if raw_len > MAX_PAYLOAD {
        return Err(DecodeFrameError::TooLong {
            len: raw_len as u64,
            max: MAX_PAYLOAD as u64,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(payload)
        .map_err(|e| DecodeFrameError::Payload(format!("snap: {e}")))?;
    let msg: WireMsg = rmp_serde::from_slice(&raw)
        .map_err(|e| DecodeFrameError::Payload(format!("msgpack: {e}")))?;
    if msg.kind() != hdr.kind {
        return Err(DecodeFrameError::Payload(format!(
            "header says kind {}, payload is a {} (kind {})",
            hdr.kind,
            msg.name(),
            msg.kind()
        )));
    }
    Ok(msg)
}

/// Decodes one frame from the start of `buf`; returns the message and the bytes used.
pub fn decode_frame(buf: &[u8], expected_seq: u64) -> Result<(WireMsg, usize), DecodeFrameError> {
    let h: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeFrameError::Truncated {
            what: "header",
            need: HEADER_LEN,
            got: buf.len(),
        })?;
    let hdr = parse_header(h, expected_seq)?;
    let len = hdr.payload_len as usize;
    let payload = buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(DecodeFrameError::Truncated {
            what: "payload",
            need: len,
            got: buf.len() - HEADER_LEN,
        })?;
    Ok((decode_payload(&hdr, payload)?, HEADER_LEN + len))
}

/// Reads frames from a stream, enforcing the sequence and checking each frame's tag.
pub struct FrameReader<R> {
    inner: R,
    key: FrameKey,
    next_seq: u64,
    bytes: u64,
}

impl<R: Read> FrameReader<R> {
    /// `key`: the receiving key of this connection ([`super::auth::SessionKeys::recv`]).
    pub fn new(inner: R, key: FrameKey) -> Self {
        FrameReader {
            inner,
            key,
            next_seq: 1,
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next message, or `None` if the peer closed the stream cleanly between frames.
    pub fn read_msg(&mut self) -> Result<Option<WireMsg>, DecodeFrameError> {
        let mut h = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut h)?;
        self.bytes += got as u64;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(DecodeFrameError::Truncated {
                what: "header",
                need: HEADER_LEN,
                got,
            });
        }
        let hdr = parse_header(&h, self.next_seq)?;
        let len = hdr.payload_len as usize;
        // Payload and tag in one buffer: the payload is never unpacked before the tag checks.
        let mut body = vec![0u8; len + TAG_LEN];
        let got = read_full(&mut self.inner, &mut body)?;
        self.bytes += got as u64;
        if got < len + TAG_LEN {
            return Err(DecodeFrameError::Truncated {
                what: if got < len { "payload" } else { "tag" },
                need: len + TAG_LEN,
                got,
            });
        }
        let (payload, tag) = body.split_at(len);
        if !self.key.verify(&[&h, payload], tag) {
            return Err(DecodeFrameError::BadTag { seq: hdr.seq });
        }
        let msg = decode_payload(&hdr, payload)?;
        self.next_seq += 1;
        Ok(Some(msg))
    }
}

/// Reads until `buf` is full or end of stream; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes frames to a stream, numbering and tagging them.
pub struct FrameWriter<W> {
    inner: W,
    key: FrameKey,
    next_seq: u64,
    bytes: u64,
}

impl<W: Write> FrameWriter<W> {
    /// `key`: the sending key of this connection ([`super::auth::SessionKeys::send`]).
    pub fn new(inner: W, key: FrameKey) -> Self {
        FrameWriter {
            inner,
            key,
            next_seq: 1,
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Encodes and writes one message; returns the bytes written.
    pub fn send(&mut self, msg: &WireMsg) -> Result<usize, SendFrameError> {
        let mut frame = encode_frame(self.next_seq, msg)?;
        let tag = self.key.tag(&[&frame]);
        frame.extend_from_slice(&tag);
        self.inner.write_all(&frame)?;
        self.inner.flush()?;
        self.next_seq += 1;
        self.bytes += frame.len() as u64;
        Ok(frame.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::EpochMeta;
    use crate::wire::messages::*;

    fn key() -> FrameKey {
        FrameKey::from_bytes([7; 32])
    }

    /// A frame with its tag.
    fn tagged(mut f: Vec<u8>) -> Vec<u8> {
        let t = key().tag(&[&f]);
        f.extend_from_slice(&t);
        f
    }

    fn stream(msgs: &[WireMsg]) -> Vec<Vec<u8>> {
        let mut w = FrameWriter::new(Vec::new(), key());
        msgs.iter()
            .map(|m| {
                let before = w.inner.len();
                w.send(m).unwrap();
                w.inner[before..].to_vec()
            })
            .collect()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<WireMsg>, DecodeFrameError> {
        let mut r = FrameReader::new(bytes, key());
        let mut out = Vec::new();
        while let Some(m) = r.read_msg()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn tampered_frame_rejected() {
        let frames = stream(&[
            WireMsg::Heartbeat {
                released: Default::default(),
            },
            part(),
            WireMsg::Ack { epoch: 3 },
        ]);
        assert_eq!(read_all(&frames.concat()).unwrap().len(), 3);
        // Any flipped bit in the payload or tag, with the checksum fixed up: refused before
        // the payload is unpacked.
        let f = &frames[1];
        for i in [HEADER_LEN, HEADER_LEN + 5, f.len() - 40, f.len() - 1] {
            let mut g = f.clone();
            g[i] ^= 0x01;
            let plen = g.len() - HEADER_LEN - TAG_LEN;
            let crc = crc32fast::hash(&g[HEADER_LEN..HEADER_LEN + plen]);
            g[20..24].copy_from_slice(&crc.to_le_bytes());
            let s = [frames[0].clone(), g].concat();
            let e = read_all(&s).unwrap_err();
            assert!(
                matches!(e, DecodeFrameError::BadTag { seq: 2 }),
                "byte {i}: {e}"
            );
            assert!(!e.is_connection_break());
        }
        // A frame tagged with another key (another connection, or a stranger).
        let mut other = FrameWriter::new(Vec::new(), FrameKey::from_bytes([8; 32]));
        other
            .send(&WireMsg::Heartbeat {
                released: Default::default(),
            })
            .unwrap();
        assert!(matches!(
            read_all(&other.inner),
            Err(DecodeFrameError::BadTag { seq: 1 })
        ));
        // An untagged frame.
        let bare = encode_frame(
            1,
            &WireMsg::Heartbeat {
                released: Default::default(),
            },
        )
        .unwrap();
        assert!(matches!(
            read_all(&bare),
            Err(DecodeFrameError::Truncated { what: "tag", .. })
        ));
    }

    #[test]
    fn replayed_reordered_or_dropped_frames_rejected() {
        let f = stream(&[
            WireMsg::Heartbeat {
                released: Default::default(),
            },
            WireMsg::Ack { epoch: 1 },
            WireMsg::Ack { epoch: 2 },
        ]);
        for bad in [
            [f[0].clone(), f[0].clone()].concat(),
            [f[0].clone(), f[2].clone(), f[1].clone()].concat(),
            [f[0].clone(), f[2].clone()].concat(),
            f[1].clone(),
        ] {
            assert!(matches!(
                read_all(&bad),
                Err(DecodeFrameError::OutOfSequence { .. })
            ));
        }
        // Renumbering a frame breaks its tag.
        let mut g = f[2].clone();
        g[8..16].copy_from_slice(&2u64.to_le_bytes());
        assert!(matches!(
            read_all(&[f[0].clone(), g].concat()),
            Err(DecodeFrameError::BadTag { seq: 2 })
        ));
    }

    fn part() -> WireMsg {
        WireMsg::EpochPart(EpochPart {
            epoch: 3,
            part: 0,
            pages: vec![
                (0x1000, PageBytes(vec![7; 4096])),
                (0x3000, PageBytes((0..4096).map(|i| i as u8).collect())),
            ],
        })
    }

    #[test]
    fn roundtrip_all_kinds() {
        let msgs = vec![
            WireMsg::Hello(Hello {
                version: PROTOCOL_VERSION,
                app_pid: 42,
                exe: "/bin/app".into(),
                argv: vec!["app".into(), "-x".into()],
                cwd: "/tmp".into(),
                epoch_ms: 25,
                heartbeat_ms: 100,
                lease: None,
            }),
            WireMsg::HelloAck(HelloAck {
                version: 1,
                standby_pid: 9,
                refused: None,
                timeout_ms: Some(500),
            }),
            part(),
            WireMsg::EpochCommit(Box::new(EpochCommit {
                epoch: 3,
                parts: 1,
                output: Vec::new(),
                meta: EpochMeta {
                    epoch: 3,
                    maps: "1000-2000 rw-p 00000000 00:00 0\n".into(),
                    ..Default::default()
                },
            })),
            WireMsg::Ack { epoch: 3 },
            WireMsg::Heartbeat {
                released: Default::default(),
            },
            WireMsg::Goodbye {
                reason: GoodbyeReason::AppExited(AppExit::Signal(9)),
            },
            WireMsg::Goodbye {
                reason: GoodbyeReason::Unprotected {
                    reason: "thread".into(),
                },
            },
            WireMsg::Goodbye {
                reason: GoodbyeReason::OperatorStop,
            },
        ];
        let mut w = FrameWriter::new(Vec::new(), key());
        for m in &msgs {
            w.send(m).unwrap();
        }
        let buf = w.inner;
        let mut r = FrameReader::new(&buf[..], key());
        for m in &msgs {
            assert_eq!(r.read_msg().unwrap().as_ref(), Some(m));
        }
        assert!(r.read_msg().unwrap().is_none(), "clean end of stream");
        // The same through decode_frame.
        let (m, used) = decode_frame(&buf, 1).unwrap();
        assert_eq!(m, msgs[0]);
        assert!(used > HEADER_LEN);
    }

    #[test]
    fn pages_compress() {
        let f = encode_frame(1, &part()).unwrap();
        assert!(
            f.len() < 2 * 4096,
            "pages travel as bin, compressed: {} bytes",
            f.len()
        );
    }

    fn frame() -> Vec<u8> {
        encode_frame(1, &part()).unwrap()
    }

    #[test]
    fn bad_magic() {
        let mut f = frame();
        f[0] = b'X';
        assert!(matches!(
            decode_frame(&f, 1),
            Err(DecodeFrameError::BadMagic { .. })
        ));
    }

    #[test]
    fn wrong_version() {
        let mut f = frame();
        f[4] = 99;
        assert!(matches!(
            decode_frame(&f, 1),
            Err(DecodeFrameError::WrongVersion { got: 99, .. })
        ));
    }

    #[test]
    fn too_long() {
        let mut f = frame();
        f[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode_frame(&f, 1),
            Err(DecodeFrameError::TooLong { .. })
        ));
    }

    #[test]
    fn truncated() {
        let f = frame();
        assert!(matches!(
            decode_frame(&f[..10], 1),
            Err(DecodeFrameError::Truncated { what: "header", .. })
        ));
        assert!(matches!(
            decode_frame(&f[..f.len() - 1], 1),
            Err(DecodeFrameError::Truncated {
                what: "payload",
                ..
            })
        ));
        let mut r = FrameReader::new(&f[..f.len() - 3], key());
        let e = r.read_msg().unwrap_err();
        assert!(matches!(e, DecodeFrameError::Truncated { .. }) && e.is_connection_break());
    }

    #[test]
    fn checksum_mismatch() {
        let mut f = frame();
        let last = f.len() - 1;
        f[last] ^= 0xff;
        let e = decode_frame(&f, 1).unwrap_err();
        assert!(matches!(e, DecodeFrameError::Checksum { .. }));
        assert!(!e.is_connection_break());
    }

    #[test]
    fn undecodable_payload() {
        // A valid snap stream and checksum around bytes that are no WireMsg.
        let packed = snap::raw::Encoder::new()
            .compress_vec(&[0xc1, 0xc1, 0xc1])
            .unwrap();
        let mut f = frame()[..HEADER_LEN].to_vec();
        f[16..20].copy_from_slice(&(packed.len() as u32).to_le_bytes());
        f[20..24].copy_from_slice(&crc32fast::hash(&packed).to_le_bytes());
        f.extend_from_slice(&packed);
        assert!(matches!(
            decode_frame(&f, 1),
            Err(DecodeFrameError::Payload(_))
        ));
        // Not snap at all.
        let junk = vec![0xffu8; 16];
        let mut g = frame()[..HEADER_LEN].to_vec();
        g[16..20].copy_from_slice(&(junk.len() as u32).to_le_bytes());
        g[20..24].copy_from_slice(&crc32fast::hash(&junk).to_le_bytes());
        g.extend_from_slice(&junk);
        assert!(matches!(
            decode_frame(&g, 1),
            Err(DecodeFrameError::Payload(_))
        ));
        // Kind byte disagreeing with the payload.
        let mut h = frame();
        h[6] = WireMsg::KIND_ACK;
        assert!(matches!(
            decode_frame(&h, 1),
            Err(DecodeFrameError::Payload(_))
        ));
    }

    #[test]
    fn unknown_kind() {
        let mut f = frame();
        f[6] = 200;
        assert!(matches!(
            decode_frame(&f, 1),
            Err(DecodeFrameError::UnknownKind(200))
        ));
    }

    #[test]
    fn out_of_sequence() {
        let a = tagged(
            encode_frame(
                1,
                &WireMsg::Heartbeat {
                    released: Default::default(),
                },
            )
            .unwrap(),
        );
        let c = tagged(
            encode_frame(
                3,
                &WireMsg::Heartbeat {
                    released: Default::default(),
                },
            )
            .unwrap(),
        );
        let stream = [a, c].concat();
        let mut r = FrameReader::new(&stream[..], key());
        assert!(r.read_msg().unwrap().is_some());
        assert!(matches!(
            r.read_msg(),
            Err(DecodeFrameError::OutOfSequence {
                expected: 2,
                got: 3
            })
        ));
        assert!(matches!(
            decode_frame(&frame(), 5),
            Err(DecodeFrameError::OutOfSequence {
                expected: 5,
                got: 1
            })
        ));
    }
}
