//! Parsing `/proc/self/maps` in place, without allocating (it is read in the signal handler).

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MapLine<'a> {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `rw-s` ...
    pub perms: [u8; 4],
    pub offset: u64,
    pub inode: u64,
    pub path: &'a [u8],
}

impl MapLine<'_> {
    pub fn readable(&self) -> bool {
        self.perms[0] == b'r'
    }
    pub fn writable(&self) -> bool {
        self.perms[1] == b'w'
    }
    pub fn executable(&self) -> bool {
        self.perms[2] == b'x'
    }
    pub fn shared(&self) -> bool {
        self.perms[3] == b's'
    }
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.first() == Some(&b'/')
    }
    pub fn is_special(&self) -> bool {
        matches!(
            self.path,
            b"[vdso]" | b"[vvar]" | b"[vvar_vclock]" | b"[vsyscall]"
        )
    }
}

/// Iterates the lines of a maps text, yielding each parsed line with its byte range.
pub struct Lines<'a> {
    text: &'a [u8],
    pos: usize,
}

pub fn lines(text: &[u8]) -> Lines<'_> {
    Lines { text, pos: 0 }
}

impl<'a> Iterator for Lines<'a> {
    /// The parsed line, where it starts in the text, and its length (with the newline).
    type Item = (MapLine<'a>, usize, usize);
    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.text.len() {
            let rest = &self.text[self.pos..];
            let len = rest
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(rest.len());
            let at = self.pos;
            self.pos += len;
            if let Some(m) = parse(&self.text[at..at + len]) {
                return Some((m, at, len));
            }
        }
        None
    }
}

fn hex(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    if s.is_empty() {
        return None;
    }
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(d as u64)?;
    }
    Some(v)
}

fn dec(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    if s.is_empty() {
        return None;
    }
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// Splits off the next space-separated field.
fn field(s: &[u8]) -> (&[u8], &[u8]) {
    let s = trim_start(s);
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn trim_start(s: &[u8]) -> &[u8] {
    let i = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[i..]
}

pub fn parse(line: &[u8]) -> Option<MapLine<'_>> {
    let line = match line.last() {
        Some(b'\n') => &line[..line.len() - 1],
        _ => line,
    };
    let (range, rest) = field(line);
    let (perms, rest) = field(rest);
    let (offset, rest) = field(rest);
    let (_dev, rest) = field(rest);
    let (inode, rest) = field(rest);
    let path = trim_start(rest);
    let dash = range.iter().position(|&b| b == b'-')?;
    if perms.len() != 4 {
        return None;
    }
    Some(MapLine {
        start: hex(&range[..dash])?,
        end: hex(&range[dash + 1..])?,
        perms: [perms[0], perms[1], perms[2], perms[3]],
        offset: hex(offset)?,
        inode: dec(inode)?,
        path,
    })
}
