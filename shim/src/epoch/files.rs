//! Replicated files, the epoch handler's part (the hooks' part and the layout are described in
//! `track::files`): per followed file, what changed since the last epoch, read with `pread`
//! during the pause so it matches the memory checkpoint exactly.

use core::cell::UnsafeCell;
use core::sync::atomic::Ordering;

use remus_abi::filelog::{
    FileLogHeader, FileRange, FileRec, FILELOG_MAGIC, FILELOG_OFF, FILE_DATA_MAX, FILE_DATA_OFF,
    FILE_RANGES_OFF, FILE_RECS_OFF, FR_CHANGED, FR_WHOLE, MAX_FILE_RANGES, MAX_FILE_RECS,
};
use remus_abi::{FdKind, FdRecord, FD_PATH_MAX};

use crate::kernel::line::Line;
use crate::kernel::sys;
use crate::track::files;

// ---------------------------------------------------------------------------------------
// The epoch handler's part
// ---------------------------------------------------------------------------------------

/// A file followed since an earlier checkpoint.
#[derive(Clone, Copy)]
struct Known {
    used: bool,
    dev: u64,
    ino: u64,
    size: u64,
    /// Epoch it was last seen open.
    seen: u64,
    path_len: usize,
    path: [u8; FD_PATH_MAX],
}

const UNKNOWN: Known = Known {
    used: false,
    dev: 0,
    ino: 0,
    size: 0,
    seen: 0,
    path_len: 0,
    path: [0; FD_PATH_MAX],
};

struct KnownCell(UnsafeCell<[Known; MAX_FILE_RECS]>);
// SAFETY: used only by the epoch handler, which cannot nest and runs on the only thread.
unsafe impl Sync for KnownCell {}
static KNOWN: KnownCell = KnownCell(UnsafeCell::new([UNKNOWN; MAX_FILE_RECS]));

/// Forgets every followed file and recorded range (a restored process being protected again:
/// its new standby has none of them, so each is shipped whole at first sight). Called at the
/// rejoin's safe point while passive (no hook records, the handler takes no epoch).
pub fn reset() {
    // SAFETY: see KnownCell and DirtyCell: nothing else uses them while the mode is passive.
    unsafe {
        *KNOWN.0.get() = [UNKNOWN; MAX_FILE_RECS];
    }
    files::clear();
}

/// Forgets every followed file (a full resend for a new standby connection: each file open
/// for writing is shipped whole at its next sight). From the epoch handler: no allocation, no
/// lock; the hooks' recorded ranges are kept (they are shipped as usual).
pub fn forget_known() {
    // SAFETY: see KnownCell: the epoch handler is the only user.
    let known = unsafe { &mut *KNOWN.0.get() };
    for k in known.iter_mut() {
        k.used = false;
    }
}

/// The file section could not be written; [`message`] says why and names the file.
pub struct Fail;

struct MessageCell(UnsafeCell<Line<700>>);
// SAFETY: written and read by the epoch handler only (it cannot nest; one thread).
unsafe impl Sync for MessageCell {}
static MESSAGE: MessageCell = MessageCell(UnsafeCell::new(Line::new()));

/// The message of the last [`Fail`] (the epoch handler's).
pub fn message() -> &'static mut Line<700> {
    // SAFETY: see MessageCell.
    unsafe { &mut *MESSAGE.0.get() }
}

fn fail(what: &[u8], path: &[u8]) -> Fail {
    let l = message();
    l.len = 0;
    l.push(what).push(b": ").push(path);
    Fail
}

struct Out {
    base: *mut u8,
    n_recs: usize,
    n_ranges: usize,
    data: usize,
    epoch: u64,
}

impl Out {
    fn rec(&mut self, i: usize) -> *mut FileRec {
        self.base
            .wrapping_add(FILE_RECS_OFF + i * core::mem::size_of::<FileRec>())
            as *mut FileRec
    }

    /// Copies `[start, end)` of `rfd` into the data area as one range of the current record.
    fn range(&mut self, rfd: i32, start: u64, end: u64, path: &[u8]) -> Result<(), Fail> {
        if end <= start {
            return Ok(());
        }
        let len = (end - start) as usize;
        if self.n_ranges == MAX_FILE_RANGES {
            return Err(fail(b"too many changed ranges in one epoch", path));
        }
        if self.data + len > FILE_DATA_MAX {
            let l = message();
            l.len = 0;
            l.push(b"files changed by more than ")
                .num((FILE_DATA_MAX >> 20) as u64)
                .push(
                    b" MiB in one epoch (the file log's bound; a file is never shipped torn), at ",
                )
                .push(path);
            return Err(Fail);
        }
        let dst = self.base.wrapping_add(FILE_DATA_OFF + self.data);
        let mut got = 0usize;
        while got < len {
            // SAFETY: dst..dst+len lies inside the data area (bounded by FILE_DATA_MAX above).
            let r = unsafe {
                sys::raw6(
                    libc::SYS_pread64,
                    rfd as usize,
                    dst.wrapping_add(got) as usize,
                    len - got,
                    (start as usize) + got,
                    0,
                    0,
                )
            };
            match r {
                Ok(0) => break, // shorter than its size said: the rest reads as cut
                Ok(n) => got += n as usize,
                Err(libc::EINTR) => continue,
                Err(_) => return Err(fail(b"cannot read a replicated file", path)),
            }
        }
        // SAFETY: n_ranges < MAX_FILE_RANGES; the range table lies inside the section.
        unsafe {
            *(self.base.wrapping_add(FILE_RANGES_OFF) as *mut FileRange).add(self.n_ranges) =
                FileRange {
                    offset: start,
                    len: got as u64,
                    data_off: self.data as u64,
                }
        };
        self.n_ranges += 1;
        self.data += got.next_multiple_of(8);
        Ok(())
    }
}

/// Opens `path` read-only; `nofollow` refuses a symbolic link (not for `/proc/self/fd/N`,
/// which is one by design).
fn open_ro(path: &[u8], nofollow: bool) -> Option<i32> {
    let mut p = [0u8; FD_PATH_MAX + 1];
    if path.len() > FD_PATH_MAX {
        return None;
    }
    p[..path.len()].copy_from_slice(path);
    // SAFETY: p is NUL-terminated.
    unsafe {
        sys::raw6(
            libc::SYS_openat,
            libc::AT_FDCWD as usize,
            p.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_CLOEXEC | if nofollow { libc::O_NOFOLLOW } else { 0 })
                as usize,
            0,
            0,
            0,
        )
    }
    .ok()
    .map(|fd| fd as i32)
}

/// Ships one followed file (open read-only as `rfd`) into the section.
fn one(out: &mut Out, rfd: i32, path: &[u8], known: &mut [Known]) -> Result<(), Fail> {
    let Some(st) = sys::fstat(rfd) else {
        return Ok(());
    };
    let (dev, ino, size) = (st.st_dev, st.st_ino, st.st_size.max(0) as u64);
    // One record per file, however many descriptors it has.
    for i in 0..out.n_recs {
        // SAFETY: records below n_recs were written this epoch.
        let r = unsafe { &*out.rec(i) };
        if &r.path[..r.path_len as usize] == path {
            return Ok(());
        }
    }
    if out.n_recs == MAX_FILE_RECS {
        return Err(fail(
            b"more replicated files open for writing than the shim follows (256)",
            path,
        ));
    }
    // SAFETY: see DirtyCell: we are the epoch handler.
    let dirty = unsafe { files::dirty_table() };
    let k = known
        .iter()
        .position(|k| k.used && k.dev == dev && k.ino == ino && &k.path[..k.path_len] == path);
    let first_range = out.n_ranges;
    let mut flags = 0;
    match k {
        None => {
            flags |= FR_WHOLE | FR_CHANGED;
            out.range(rfd, 0, size, path)?;
        }
        Some(i) => {
            let d = dirty
                .files
                .iter()
                .find(|f| f.used && f.dev == dev && f.ino == ino);
            if dirty.overflow {
                out.range(rfd, 0, size, path)?;
            } else {
                let low = d.map_or(u64::MAX, |d| d.low).min(known[i].size);
                out.range(rfd, low.min(size), size, path)?;
                if let Some(d) = d {
                    for &(s, e) in &d.ranges[..d.n] {
                        out.range(rfd, s.min(size), e.min(size), path)?;
                    }
                }
            }
            if out.n_ranges > first_range
                || size != known[i].size
                || d.is_some_and(|d| d.low != u64::MAX)
            {
                flags |= FR_CHANGED;
            }
        }
    }
    let i = match k {
        Some(i) => i,
        None => match known.iter().position(|k| !k.used) {
            Some(i) => i,
            None => {
                return Err(fail(
                    b"more replicated files than the shim follows (256)",
                    path,
                ))
            }
        },
    };
    known[i] = Known {
        used: true,
        dev,
        ino,
        size,
        seen: out.epoch,
        path_len: path.len(),
        path: known[i].path,
    };
    known[i].path[..path.len()].copy_from_slice(path);
    // SAFETY: n_recs < MAX_FILE_RECS; the record lies inside the section.
    let r = unsafe { &mut *out.rec(out.n_recs) };
    r.size = size;
    r.flags = flags;
    r.path_len = path.len() as u32;
    r.path[..path.len()].copy_from_slice(path);
    r.first_range = first_range as u32;
    r.n_ranges = (out.n_ranges - first_range) as u32;
    out.n_recs += 1;
    Ok(())
}

/// Writes the file section for `epoch` from the descriptor table just captured.
pub fn capture(base: *mut u8, fds: &[FdRecord], epoch: u64) -> Result<(), Fail> {
    let hdr = base.wrapping_add(FILELOG_OFF) as *mut FileLogHeader;
    if !files::ACTIVE.load(Ordering::Relaxed) {
        return Ok(());
    }
    // SAFETY: the header lies inside staging, which the handler owns until it notifies.
    unsafe { (*hdr).magic = 0 };
    // SAFETY: see KnownCell.
    let known = unsafe { &mut *KNOWN.0.get() };
    let mut out = Out {
        base,
        n_recs: 0,
        n_ranges: 0,
        data: 0,
        epoch,
    };
    let res = (|| {
        for r in fds {
            let path = &r.path[..(r.path_len as usize).min(FD_PATH_MAX)];
            if r.fd <= 2
                || FdKind::from_u32(r.kind) != FdKind::Regular
                || r.flags & libc::O_ACCMODE == libc::O_RDONLY
                || r.path_truncated != 0
                || path.first() != Some(&b'/')
                || path.ends_with(b" (deleted)")
                || !files::replicated(path)
            {
                continue;
            }
            let mut link = Line::<32>::new();
            link.push(b"/proc/self/fd/").num(r.fd as u64).push(b"\0");
            let Some(rfd) = open_ro(&link.as_bytes()[..link.len - 1], false) else {
                return Err(fail(b"cannot open a replicated file for reading", path));
            };
            let res = one(&mut out, rfd, path, known);
            sys::close(rfd);
            res?;
        }
        // Followed files no longer open: their last changes, then they are forgotten.
        for i in 0..known.len() {
            if !known[i].used || known[i].seen == epoch {
                continue;
            }
            let k = known[i];
            let path = &k.path[..k.path_len];
            if let Some(rfd) = open_ro(path, true) {
                if sys::fstat(rfd).is_some_and(|st| st.st_dev == k.dev && st.st_ino == k.ino) {
                    let res = one(&mut out, rfd, path, known);
                    sys::close(rfd);
                    res?;
                } else {
                    sys::close(rfd);
                }
            }
            known[i].used = false;
        }
        Ok(())
    })();
    // SAFETY: see DirtyCell: we are the epoch handler.
    let dirty = unsafe { files::dirty_table() };
    dirty.overflow = false;
    for f in dirty.files.iter_mut() {
        f.used = false;
    }
    res?;
    // SAFETY: as above.
    unsafe {
        (*hdr).epoch = epoch;
        (*hdr).n_files = out.n_recs as u32;
        (*hdr).n_ranges = out.n_ranges as u32;
        (*hdr).data_bytes = out.data as u64;
        (*hdr).magic = FILELOG_MAGIC;
    }
    Ok(())
}
