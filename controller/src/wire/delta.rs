//! How one page travels inside an [`EpochPart`](super::messages::EpochPart).
//!
//! A page is either its 4096 bytes as they are (`raw`), or a shorter encoding: one tag byte
//! then the data. The length tells them apart: an encoding is only used when it is shorter
//! than a page, so exactly [`PAGE`] bytes is always raw.
//!
//! ```text
//! tag 1  RLE    the page itself, word-run-length encoded (zero pages, sparse pages)
//! tag 2  DELTA  page XOR the version of the same page the receiver already holds (the one
//!               shipped last), word-run-length encoded
//! ```
//!
//! Word-run-length: the page as 512 little-endian 64-bit words, a sequence of runs until all
//! 512 are covered: `zeros: u16 LE` zero words, `lits: u16 LE` literal words, then the
//! `8 * lits` literal bytes. The whole frame is then `snap`-compressed by the frame layer,
//! which squeezes the literals further.
//!
//! The receiver decodes a `DELTA` against its state *in stream order*: the primary's sender
//! keeps a shadow of what it shipped, mirroring (a subset of) the receiver's image exactly.

pub const PAGE: usize = remus_abi::PAGE_SIZE;
const WORDS: usize = PAGE / 8;

pub const TAG_RLE: u8 = 1;
pub const TAG_DELTA: u8 = 2;

/// How a page was sent (for the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Rle,
    Delta,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded page of {0} bytes: neither a page nor a known encoding")]
    Bad(usize),
    #[error("unknown page encoding tag {0}")]
    Tag(u8),
    #[error("corrupt run-length data")]
    Corrupt,
    #[error("a delta page arrived for a page the receiver does not hold")]
    NoBase,
}

fn word(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(a)
}

/// Word-run-length encodes `page` (after XOR with `base` when given) after a `tag` byte into
/// `out`. Stops and returns false as soon as the encoding would not be shorter than a page.
fn rle_into(tag: u8, page: &[u8], base: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    debug_assert_eq!(page.len(), PAGE);
    let start = out.len();
    out.push(tag);
    let mut words = [0u64; WORDS];
    match base {
        Some(b) => words
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = word(page, i) ^ word(b, i)),
        None => words
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = word(page, i)),
    }
    let w = |i: usize| words[i];
    let mut i = 0;
    while i < WORDS {
        let z0 = i;
        while i < WORDS && w(i) == 0 {
            i += 1;
        }
        let zeros = i - z0;
        let l0 = i;
        // A literal run ends at the next run of at least two zero words (one zero word costs
        // less as a literal than as a new run header).
        while i < WORDS {
            if w(i) == 0 && (i + 1 == WORDS || w(i + 1) == 0) {
                break;
            }
            i += 1;
        }
        let lits = i - l0;
        if out.len() - start + 4 + lits * 8 >= PAGE {
            out.truncate(start);
            return false;
        }
        out.extend_from_slice(&(zeros as u16).to_le_bytes());
        out.extend_from_slice(&(lits as u16).to_le_bytes());
        for j in l0..l0 + lits {
            out.extend_from_slice(&w(j).to_le_bytes());
        }
    }
    true
}

/// Encodes `page` for the wire, as a delta against `base` when given (and shorter), else as
/// RLE when shorter, else raw. Returns the encoding and the bytes.
pub fn encode(page: &[u8], base: Option<&[u8]>) -> (Encoding, Vec<u8>) {
    let mut out = Vec::new();
    if let Some(b) = base {
        if rle_into(TAG_DELTA, page, Some(b), &mut out) {
            return (Encoding::Delta, out);
        }
    }
    if rle_into(TAG_RLE, page, None, &mut out) {
        return (Encoding::Rle, out);
    }
    (Encoding::Raw, page.to_vec())
}

/// Decodes one page as received. `base` is the receiver's current version of the page (only
/// needed for a delta).
pub fn decode(data: &[u8], base: Option<&[u8]>) -> Result<Box<[u8]>, DecodeError> {
    if data.len() == PAGE {
        return Ok(data.into());
    }
    if data.is_empty() || data.len() > PAGE {
        return Err(DecodeError::Bad(data.len()));
    }
    let (tag, mut rest) = (data[0], &data[1..]);
    let mut page: Box<[u8]> = match tag {
        TAG_RLE => vec![0u8; PAGE].into(),
        TAG_DELTA => {
            let b = base.ok_or(DecodeError::NoBase)?;
            if b.len() != PAGE {
                return Err(DecodeError::NoBase);
            }
            b.into()
        }
        t => return Err(DecodeError::Tag(t)),
    };
    let mut i = 0usize;
    while i < WORDS {
        if rest.len() < 4 {
            return Err(DecodeError::Corrupt);
        }
        let zeros = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let lits = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        i += zeros;
        if i + lits > WORDS || rest.len() < lits * 8 || (zeros == 0 && lits == 0) {
            return Err(DecodeError::Corrupt);
        }
        for j in 0..lits {
            let off = (i + j) * 8;
            for k in 0..8 {
                // XOR onto the base (a zero page for RLE).
                page[off + k] ^= rest[j * 8 + k];
            }
        }
        rest = &rest[lits * 8..];
        i += lits;
    }
    if !rest.is_empty() {
        return Err(DecodeError::Corrupt);
    }
    Ok(page)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small seeded generator (xorshift64*), so tests need no extra crate.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// A page that looks like program memory: mostly zero, some words, some text.
        pub fn page(&mut self) -> Vec<u8> {
            let mut p = vec![0u8; PAGE];
            match self.below(4) {
                0 => {}
                1 => p.iter_mut().for_each(|b| *b = self.next() as u8),
                _ => {
                    for _ in 0..self.below(64) {
                        let o = self.below(PAGE as u64 - 8) as usize;
                        p[o..o + 8].copy_from_slice(&self.next().to_le_bytes());
                    }
                }
            }
            p
        }
        /// `p` with a few bytes changed (what a program does to a page between epochs).
        pub fn touch(&mut self, p: &[u8]) -> Vec<u8> {
            let mut q = p.to_vec();
            for _ in 0..1 + self.below(8) {
                let o = self.below(PAGE as u64) as usize;
                q[o] = self.next() as u8;
            }
            q
        }
    }

    #[test]
    fn roundtrip_random_pages() {
        let mut r = Rng(0x5eed);
        for _ in 0..2000 {
            let base = r.page();
            let page = if r.below(2) == 0 {
                r.touch(&base)
            } else {
                r.page()
            };
            let with_base = r.below(3) != 0;
            let (enc, data) = encode(&page, with_base.then_some(&base[..]));
            assert!(data.len() <= PAGE);
            assert_eq!(data.len() == PAGE, enc == Encoding::Raw);
            let got = decode(&data, Some(&base)).unwrap();
            assert_eq!(&got[..], &page[..], "{enc:?}");
        }
    }

    #[test]
    fn small_changes_are_small() {
        let mut r = Rng(7);
        let base: Vec<u8> = (0..PAGE).map(|_| r.next() as u8).collect();
        let mut page = base.clone();
        page[100] ^= 1;
        page[3000] ^= 0x80;
        let (enc, data) = encode(&page, Some(&base));
        assert_eq!(enc, Encoding::Delta);
        assert!(data.len() < 40, "{} bytes", data.len());
        let (enc, data) = encode(&[0u8; PAGE], None);
        assert_eq!(enc, Encoding::Rle);
        assert!(data.len() <= 5, "zero page: {} bytes", data.len());
        // Same page: an empty delta.
        let (enc, data) = encode(&base, Some(&base));
        assert_eq!(enc, Encoding::Delta);
        assert_eq!(decode(&data, Some(&base)).unwrap()[..], base[..]);
        // Incompressible without a base: raw.
        assert_eq!(encode(&base, None).0, Encoding::Raw);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(&[], None), Err(DecodeError::Bad(0)));
        assert_eq!(decode(&[9, 0, 0], None), Err(DecodeError::Tag(9)));
        assert_eq!(
            decode(&[TAG_DELTA, 0, 2, 0, 0], None),
            Err(DecodeError::NoBase)
        );
        assert_eq!(decode(&[TAG_RLE, 0, 1], None), Err(DecodeError::Corrupt));
        // Runs past the end of the page.
        assert_eq!(
            decode(&[TAG_RLE, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),
            Err(DecodeError::Corrupt)
        );
        // Trailing bytes after the page is covered.
        assert_eq!(
            decode(&[TAG_RLE, 0, 2, 0, 0, 7], None),
            Err(DecodeError::Corrupt)
        );
        assert_eq!(
            decode(&vec![0; PAGE + 1], None),
            Err(DecodeError::Bad(PAGE + 1))
        );
    }
}
