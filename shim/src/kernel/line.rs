//! The async-signal-safe line buffer: messages built without allocating.

/// Formats `v` in decimal into `buf`, returning the digits. Allocation-free.
pub fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// A small fixed-capacity byte buffer for building messages without allocating.
pub struct Line<const N: usize> {
    pub buf: [u8; N],
    pub len: usize,
}

impl<const N: usize> Line<N> {
    pub const fn new() -> Self {
        Line {
            buf: [0; N],
            len: 0,
        }
    }
    pub fn push(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }
    pub fn num(&mut self, v: u64) -> &mut Self {
        let mut b = [0u8; 20];
        let d = fmt_u64(v, &mut b);
        let d: &[u8] = d;
        let tmp: [u8; 20] = {
            let mut t = [0u8; 20];
            t[..d.len()].copy_from_slice(d);
            t
        };
        self.push(&tmp[..d.len()])
    }
    pub fn hex(&mut self, v: u64) -> &mut Self {
        let mut t = [0u8; 16];
        let mut n = 0;
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                t[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
                n += 1;
            }
        }
        self.push(b"0x");
        self.push(&t[..n])
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
