//! Dirty-page trackers: which pages of the program changed since the last epoch.
//!
//! Two implementations behind one small interface the epoch capture uses (DESIGN §3):
//!
//! - [`uffd`] (the default, `REMUS_TRACKER=uffd`): userfaultfd asynchronous write-protect and
//!   `PAGEMAP_SCAN` (Linux 6.7+). The kernel marks written pages itself; no signal, no
//!   `EFAULT` for kernel writes.
//! - [`mprotect`] (`REMUS_TRACKER=mprotect`, and automatically on kernels without async
//!   write-protect): the seed design. Tracked pages lose `PROT_WRITE`; the first write to each
//!   page per epoch raises `SIGSEGV`, the shim's handler records the page and gives the write
//!   permission back. Works on any kernel, costs a signal and a system call per first write,
//!   and a kernel write into a protected page fails with `EFAULT`: [`prefault`] touches the
//!   buffers the interposed calls hand to the kernel.
//!
//! The capture calls, in one epoch: [`begin_epoch`]; for each readable private region of the
//! (logical, see [`lines`]) map: [`known`] for a region it already followed (written pages,
//! re-armed) or, when that says no, [`new_region`] (populated pages, tracking started); then
//! [`end_epoch`]. The memory hooks call [`forget`].

pub mod mprotect;
pub mod prefault;
pub mod uffd;

use core::sync::atomic::{AtomicU8, Ordering};

use crate::base::state;
use crate::kernel::line::Line as TextLine;
use crate::kernel::sys;
use crate::kernel::text::{self as maps, MapLine};

/// Which tracker runs ([`UFFD`] or [`MPROTECT`]); 0 before start-up decided.
static KIND: AtomicU8 = AtomicU8::new(0);
pub const UFFD: u8 = 1;
pub const MPROTECT: u8 = 2;

pub fn set_kind(k: u8) {
    KIND.store(k, Ordering::Relaxed);
}

pub fn is_mprotect() -> bool {
    KIND.load(Ordering::Relaxed) == MPROTECT
}

/// How a region's pages are followed from one epoch to the next.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Tracked: ship what the tracker says was written.
    Scan,
    /// Not trackable (the kernel refused to register it; the stack under the mprotect
    /// tracker): ship all its populated pages every epoch.
    CopyAll,
}

/// A region of the map as the capture sees it (logical: the mprotect tracker's pieces are
/// already merged back).
#[derive(Clone, Copy)]
pub struct Region<'a> {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    pub inode: u64,
    pub path: &'a [u8],
}

impl Region<'_> {
    /// The same mapping as `o`: same range, protection, file offset and inode.
    pub fn same_vma(&self, o: &Region) -> bool {
        self.start == o.start
            && self.end == o.end
            && self.perms == o.perms
            && self.offset == o.offset
            && self.inode == o.inode
    }

    pub fn from_line<'a>(m: &MapLine<'a>) -> Region<'a> {
        Region {
            start: m.start,
            end: m.end,
            perms: m.perms,
            offset: m.offset,
            inode: m.inode,
            path: m.path,
        }
    }
}

/// Why the tracker could not ship a region.
pub enum Fail {
    /// The page sink failed (the controller went away).
    Push,
    /// The kernel refused what the tracker needs; the text says what.
    Kernel(&'static [u8]),
}

/// Where the tracker puts the pages it ships: `(start, end)` of a run of pages.
pub type Push<'p> = dyn FnMut(u64, u64) -> Result<(), ()> + 'p;

/// Start of an epoch (in the epoch handler).
pub fn begin_epoch() {
    if is_mprotect() {
        mprotect::begin_epoch();
    }
}

/// End of an epoch's page shipping (in the epoch handler).
pub fn end_epoch() {
    if is_mprotect() {
        mprotect::end_epoch();
    }
}

/// A region followed since an earlier epoch: ships the pages written since then and re-arms
/// them. `None`: the tracker no longer follows it (replaced behind its back, or never
/// trackable): the capture treats it as new.
pub fn known(
    r: &Region,
    how: How,
    vec: &mut [crate::kernel::pagemap::PageRegion],
    push: &mut Push,
) -> Result<Option<How>, Fail> {
    if is_mprotect() {
        mprotect::known(r, how, push)
    } else {
        uffd::known(state::PAGEMAP.load(Ordering::Relaxed), r, how, vec, push)
    }
}

/// A region new to the tracker: starts tracking it and ships its populated pages. With
/// `streamed` (a streamed full image, `remus_abi::STREAM_OFF`), a region the tracker follows
/// ships nothing now: the controller reads it while the program runs, and every write after
/// this point shows up as dirty. A region it cannot follow ships whole either way.
pub fn new_region(
    r: &Region,
    vec: &mut [crate::kernel::pagemap::PageRegion],
    push: &mut Push,
    streamed: bool,
) -> Result<How, Fail> {
    if is_mprotect() {
        mprotect::new_region(r, push, streamed)
    } else {
        uffd::new_region(
            state::PAGEMAP.load(Ordering::Relaxed),
            state::UFFD.load(Ordering::Relaxed),
            r,
            vec,
            push,
            streamed,
        )
    }
}

/// The memory hooks saw `[start, start + len)` unmapped, replaced or remapped.
pub fn forget(start: u64, len: u64) {
    if is_mprotect() {
        mprotect::forget(start, len);
    }
}

/// In the restored process: no tracker runs (restore mapped every region with the program's
/// own protection).
pub fn after_restore() {
    if is_mprotect() {
        mprotect::after_restore();
    }
    set_kind(0);
}

/// Whether the capture may decide "map unchanged" from the raw VMA list (`PROCMAP_QUERY`).
/// The mprotect tracker splits VMAs on every first write, so it always reads the text.
pub fn vma_shortcut() -> bool {
    !is_mprotect()
}

/// Whether a mapping starting at `start` is the tracker's own (never tracked, never part of the
/// image, left out of the maps text like the staging area).
pub fn is_own_area(start: u64) -> bool {
    is_mprotect() && mprotect::is_own_area(start)
}

/// One line of the map the capture works on, and its text: `prefix` (possibly empty) followed
/// by `rest`.
pub struct Line<'a> {
    pub map: MapLine<'a>,
    pub prefix: TextLine<48>,
    pub rest: &'a [u8],
}

/// The lines of a maps text as the program sees its memory: with the mprotect tracker, the
/// `r--p`/`rw-p` pieces a tracked region was split into come out as one line with the
/// program's own protection (restore maps memory by this text), and a VMA the kernel merged
/// across a tracked region's edge (a protected `.data` next to a read-only RELRO piece of the
/// same file) is cut back at the edge.
pub fn lines(text: &[u8]) -> Lines<'_> {
    Lines {
        inner: maps::lines(text),
        cur: None,
        peeked: None,
        text,
        logical: is_mprotect(),
    }
}

/// A piece of one maps line: `map` has the piece's range and offset.
#[derive(Clone, Copy)]
struct Seg<'a> {
    map: MapLine<'a>,
    whole: &'a [u8],
    /// The piece is the whole line.
    entire: bool,
    claimed: Option<mprotect::Logical>,
}

pub struct Lines<'a> {
    inner: maps::Lines<'a>,
    /// The line being cut into pieces, and how far it has been cut.
    cur: Option<(MapLine<'a>, &'a [u8], u64)>,
    peeked: Option<Seg<'a>>,
    text: &'a [u8],
    logical: bool,
}

impl<'a> Lines<'a> {
    fn segment(&mut self) -> Option<Seg<'a>> {
        if let Some(s) = self.peeked.take() {
            return Some(s);
        }
        let (m, whole, at) = match self.cur.take() {
            Some(c) => c,
            None => {
                let (m, at, len) = self.inner.next()?;
                (m, &self.text[at..at + len], m.start)
            }
        };
        let (end, claimed) = if self.logical {
            mprotect::segment(&m, at)
        } else {
            (m.end, None)
        };
        let end = end.clamp(at + 1, m.end);
        if end < m.end {
            self.cur = Some((m, whole, end));
        }
        let mut piece = m;
        piece.start = at;
        piece.end = end;
        if m.inode != 0 {
            piece.offset = m.offset + (at - m.start);
        }
        Some(Seg {
            map: piece,
            whole,
            entire: at == m.start && end == m.end,
            claimed,
        })
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;
    fn next(&mut self) -> Option<Line<'a>> {
        let first = self.segment()?;
        let mut map = first.map;
        if let Some(l) = first.claimed {
            // Merge the following pieces of the same logical region.
            while let Some(next) = self.segment() {
                if next.map.start == map.end && next.claimed.is_some_and(|k| k.start == l.start) {
                    map.end = next.map.end;
                } else {
                    self.peeked = Some(next);
                    break;
                }
            }
            map.perms = l.perms;
        } else if first.entire {
            return Some(Line {
                map,
                prefix: TextLine::new(),
                rest: first.whole,
            });
        }
        // Rewritten: "start-end perms offset" + the original " dev inode path\n".
        let mut fields = first
            .whole
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b' ')
            .map(|(i, _)| i);
        let third = fields.nth(2).unwrap_or(first.whole.len());
        let mut prefix = TextLine::new();
        hex8(&mut prefix, map.start);
        prefix.push(b"-");
        hex8(&mut prefix, map.end);
        prefix.push(b" ").push(&map.perms).push(b" ");
        hex8(&mut prefix, map.offset);
        Some(Line {
            map,
            prefix,
            rest: &first.whole[third..],
        })
    }
}

/// Lower-case hex, at least 8 digits, as `/proc/self/maps` prints addresses.
fn hex8<const N: usize>(l: &mut TextLine<N>, v: u64) {
    let mut t = [0u8; 16];
    let mut n = 0;
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        if d != 0 || n > 0 || i < 8 {
            t[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n += 1;
        }
    }
    l.push(&t[..n]);
}

/// Reads a kept-open procfs file from its start into `buf`; returns the length (a full buffer
/// means "too large"). The kernel writes `buf` (one of the shim's static buffers, which the
/// mprotect tracker may have protected): each piece is made writable first, so that only the
/// pages the text needs are dirtied.
pub fn reread(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    sys::rewind(fd)?;
    let mut len = 0;
    while len < buf.len() {
        let want = (buf.len() - len).min(64 << 10);
        if is_mprotect() {
            mprotect::touch(buf[len..].as_ptr() as u64, want as u64);
        }
        match sys::read(fd, &mut buf[len..len + want])? {
            0 => break,
            n => len += n,
        }
    }
    Ok(len)
}

/// Reads the kept-open `/proc/self/maps` into `buf` ([`reread`]), again when the text came out
/// inconsistent: under the mprotect tracker, making the next piece of `buf` writable changes
/// the map (the shim's own `.bss` is tracked) between two `read` calls of one text, and the
/// kernel goes on from an address of the old map. The first pass made those pages writable,
/// so the next one reads a still map. (Seen before this: a takeover refused "regions overlap"
/// with two anonymous lines of the shim's `.bss`, once in a full test run under load.)
pub fn read_maps(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    let mut n = reread(fd, buf)?;
    for _ in 0..3 {
        if maps::consistent(&buf[..n]) {
            break;
        }
        n = reread(fd, buf)?;
    }
    Ok(n)
}

/// Reads `/proc/self/fdinfo/<fd>` into `buf`; returns its length (a full buffer means "too
/// large").
pub fn read_fdinfo(fd: i32, buf: &mut [u8]) -> Option<usize> {
    let mut path = TextLine::<40>::new();
    path.push(b"/proc/self/fdinfo/").num(fd as u64).push(b"\0");
    let f = sys::open_ro(path.as_bytes()).ok()?;
    let n = reread(f, buf);
    sys::close(f);
    n.ok()
}
