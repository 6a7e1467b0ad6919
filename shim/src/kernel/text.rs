//! The one parser of procfs text the shim reads: `/proc/self/maps` lines and the `key: value`
//! lines of `/proc/self/fdinfo/N` (epoll registrations, eventfd, timerfd, signalfd). In place,
//! without allocating: it runs in the signal handler.

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

/// Whether the lines of a maps text are in address order without overlaps (a text read in
/// pieces while the map changed is not).
pub fn consistent(text: &[u8]) -> bool {
    let mut end = 0u64;
    for (m, _, _) in lines(text) {
        if m.start < end || m.end <= m.start {
            return false;
        }
        end = m.end;
    }
    true
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

// ---------------------------------------------------------------------------------------
// fdinfo
// ---------------------------------------------------------------------------------------

/// The value after `key` on the line of `text` that starts with it, trimmed.
pub fn fdinfo_field<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    text.split(|&c| c == b'\n')
        .find(|l| l.starts_with(key))
        .map(|l| trim(&l[key.len()..]))
}

fn trim(s: &[u8]) -> &[u8] {
    let s = trim_ws(s);
    &s[..s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1)]
}

fn trim_ws(s: &[u8]) -> &[u8] {
    &s[s.iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len())..]
}

/// Parses a leading number in `radix`; stops at the first other character.
pub fn num(s: &[u8], radix: u32) -> Option<u64> {
    let mut v: u64 = 0;
    let mut any = false;
    for &c in s {
        let Some(d) = (c as char).to_digit(radix) else {
            break;
        };
        v = v.checked_mul(radix as u64)?.checked_add(d as u64)?;
        any = true;
    }
    any.then_some(v)
}

/// The token after `key` in `line` ("events:       19" -> "19 ...").
fn after<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = line.windows(key.len()).position(|w| w == key)?;
    Some(trim_ws(&line[at + key.len()..]))
}

/// One registration of an epoll instance, as its fdinfo lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollLine {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

/// The registrations in an epoll instance's fdinfo text (`tfd: N events: HEX data: HEX ...`).
pub fn epoll_lines(text: &[u8]) -> impl Iterator<Item = EpollLine> + '_ {
    text.split(|&c| c == b'\n')
        .filter(|l| l.starts_with(b"tfd:"))
        .filter_map(|line| {
            Some(EpollLine {
                tfd: after(line, b"tfd:").and_then(|s| num(s, 10))? as i32,
                events: after(line, b"events:").and_then(|s| num(s, 16))? as u32,
                data: after(line, b"data:").and_then(|s| num(s, 16))?,
            })
        })
}
