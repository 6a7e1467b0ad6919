//! Regular files the app writes are state (issue 3, DESIGN §5): the shim's part of file
//! replication. The layout is `remus_abi::filelog`; the controller turns the section into
//! `EpochMeta::files`, and the standby writes them into its copy of each file when the epoch
//! commits.
//!
//! Which files: every regular file open for writing (not fds 0-2) at a checkpoint whose path
//! is under one of the replicated directories (`REMUS_REPLICATE_DIRS=dir1:dir2`, default the
//! working directory at start).
//!
//! What is shipped, per file, read with `pread` during the pause (so it matches the memory
//! checkpoint exactly):
//! - a file seen for the first time (or under another path) is shipped whole;
//! - afterwards, the byte ranges the write hooks saw (`write`, `writev`, `pwrite*`,
//!   `pwritev*`, `ftruncate`, `fallocate`), plus `[low, size)` where `low` is the smaller of
//!   last epoch's size and any truncation length seen: that catches appends made behind the
//!   hooks (glibc's stdio writes through its internal `__write`), and the new size (a
//!   truncation) is in the record.
//!
//! The hooks record a range both before and after the call (a checkpoint between the kernel's
//! write and the hook's bookkeeping would otherwise miss it); recording is short and done with
//! the epoch deferred ([`state::HookDepth`]). A range recorded too much only costs bytes: the handler
//! ships what the file holds.
//!
//! A followed file that is no longer open at a checkpoint is looked at once more by path (same
//! inode: its last changes are shipped) and then forgotten: if it is opened again it is
//! shipped whole.
//!
//! Bounds: at most `FILE_DATA_MAX` (64 MiB) of changed bytes per epoch; an epoch that changed
//! more (a large file seen for the first time, say) stops protection with the file's name
//! rather than ship a torn file.
//!
//! Nothing here allocates on the hook or signal paths: static tables and raw system calls.

use core::cell::UnsafeCell;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

use redhook::{hook, real};
use remus_abi::filelog::{
    FileLogHeader, FileRange, FileRec, ENV_REPLICATE_DIRS, FILELOG_MAGIC, FILELOG_OFF,
    FILE_DATA_MAX, FILE_DATA_OFF, FILE_RANGES_OFF, FILE_RECS_OFF, FR_CHANGED, FR_WHOLE,
    MAX_FILE_RANGES, MAX_FILE_RECS,
};
use remus_abi::{FdKind, FdRecord, FD_PATH_MAX};

use crate::{state, sys};

// ---------------------------------------------------------------------------------------
// Configuration (written once at start-up, before the epoch handler exists)
// ---------------------------------------------------------------------------------------

const MAX_DIRS: usize = 16;

struct Config {
    dirs: [[u8; FD_PATH_MAX]; MAX_DIRS],
    lens: [usize; MAX_DIRS],
    n: usize,
}

struct ConfigCell(UnsafeCell<Config>);
// SAFETY: written only by `init` (single-threaded start-up, before the hooks record anything
// and before the epoch handler is installed), read-only afterwards.
unsafe impl Sync for ConfigCell {}

static CONFIG: ConfigCell = ConfigCell(UnsafeCell::new(Config {
    dirs: [[0; FD_PATH_MAX]; MAX_DIRS],
    lens: [0; MAX_DIRS],
    n: 0,
}));

/// Replication is on (some directory is replicated and the staging memfd has a file log).
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn config() -> &'static Config {
    // SAFETY: see ConfigCell.
    unsafe { &*CONFIG.0.get() }
}

/// Called once at start-up (single-threaded, allocation allowed) with the freshly mapped
/// staging area. Returns the directories replicated, for the log.
pub fn init(staging: *mut u8) -> Vec<String> {
    // SAFETY: staging maps at least FILELOG_END bytes (init::make_staging); nobody reads the
    // header yet.
    unsafe { (*(staging.add(FILELOG_OFF) as *mut FileLogHeader)).magic = 0 };
    let spec = match std::env::var(ENV_REPLICATE_DIRS) {
        Ok(v) => v,
        Err(_) => std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    // SAFETY: see ConfigCell: nothing reads the configuration yet.
    let c = unsafe { &mut *CONFIG.0.get() };
    let mut out = Vec::new();
    for d in spec.split(':').filter(|d| !d.is_empty() && *d != "-") {
        // The kernel names open files by their canonical path: compare against the same.
        let Ok(p) = std::fs::canonicalize(d) else {
            crate::fatal::say(
                format!("remus: {ENV_REPLICATE_DIRS}: {d} does not exist; not replicated")
                    .as_bytes(),
            );
            continue;
        };
        let b = p.as_os_str().as_encoded_bytes();
        if c.n == MAX_DIRS || b.len() >= FD_PATH_MAX {
            crate::fatal::say(
                format!("remus: {ENV_REPLICATE_DIRS}: too many directories or too long a path: {d} not replicated").as_bytes(),
            );
            continue;
        }
        c.dirs[c.n][..b.len()].copy_from_slice(b);
        c.lens[c.n] = b.len();
        c.n += 1;
        out.push(p.to_string_lossy().into_owned());
    }
    ACTIVE.store(c.n > 0, Ordering::Relaxed);
    out
}

/// `path` (absolute, canonical) is inside a replicated directory.
fn replicated(path: &[u8]) -> bool {
    let c = config();
    (0..c.n).any(|i| {
        let d = &c.dirs[i][..c.lens[i]];
        d == b"/"
            || (path.len() > d.len() && path.starts_with(d) && path[d.len()] == b'/')
            || path == d
    })
}

// ---------------------------------------------------------------------------------------
// Dirty ranges, recorded by the hooks
// ---------------------------------------------------------------------------------------

const MAX_DIRTY_FILES: usize = 64;
const MAX_DIRTY_RANGES: usize = 16;

#[derive(Clone, Copy)]
struct Dirty {
    used: bool,
    dev: u64,
    ino: u64,
    /// Smallest length the file was truncated to this epoch (u64::MAX: none).
    low: u64,
    n: usize,
    ranges: [(u64, u64); MAX_DIRTY_RANGES],
}

const CLEAN: Dirty = Dirty {
    used: false,
    dev: 0,
    ino: 0,
    low: u64::MAX,
    n: 0,
    ranges: [(0, 0); MAX_DIRTY_RANGES],
};

struct DirtyTable {
    files: [Dirty; MAX_DIRTY_FILES],
    /// More files were written this epoch than the table holds: every followed file is
    /// shipped whole.
    overflow: bool,
}

struct DirtyCell(UnsafeCell<DirtyTable>);
// SAFETY: touched by the hooks of the only protected thread with the epoch handler deferred
// (`state::HookDepth`), and by the epoch handler, which cannot run while a hook holds the depth: never
// two at once.
unsafe impl Sync for DirtyCell {}

static DIRTY: DirtyCell = DirtyCell(UnsafeCell::new(DirtyTable {
    files: [CLEAN; MAX_DIRTY_FILES],
    overflow: false,
}));

/// A write about to happen: file identity and byte range.
#[derive(Clone, Copy)]
pub struct Note {
    dev: u64,
    ino: u64,
    start: u64,
    end: u64,
    /// A truncation to `start` (end unused).
    trunc: bool,
}

fn following() -> bool {
    ACTIVE.load(Ordering::Relaxed) && state::mode() == state::MODE_PROTECTED
}

/// The identity of `fd` when it is a regular file and files are followed.
fn regular(fd: i32) -> Option<libc::stat> {
    if !following() || fd < 0 {
        return None;
    }
    sys::fstat(fd).filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

/// Before `write`/`writev` of `n` bytes on `fd` at its offset (or at the end with O_APPEND).
pub fn before_write(fd: i32, n: usize) -> Option<Note> {
    if n == 0 {
        return None;
    }
    let st = regular(fd)?;
    let fl = sys::fcntl_get(fd, libc::F_GETFL).unwrap_or(0);
    let start = if fl & libc::O_APPEND != 0 {
        st.st_size as u64
    } else {
        sys::tell(fd).ok()?
    };
    note(Note {
        dev: st.st_dev,
        ino: st.st_ino,
        start,
        end: start.saturating_add(n as u64),
        trunc: false,
    })
}

/// Before a positioned write of `n` bytes at `off`.
pub fn before_pwrite(fd: i32, off: i64, n: usize) -> Option<Note> {
    if n == 0 || off < 0 {
        return None;
    }
    let st = regular(fd)?;
    note(Note {
        dev: st.st_dev,
        ino: st.st_ino,
        start: off as u64,
        end: (off as u64).saturating_add(n as u64),
        trunc: false,
    })
}

/// Before a truncation to `len`.
fn before_truncate(fd: i32, len: i64) -> Option<Note> {
    let st = regular(fd)?;
    note(Note {
        dev: st.st_dev,
        ino: st.st_ino,
        start: len.max(0) as u64,
        end: 0,
        trunc: true,
    })
}

/// Records `n` in the dirty table; returns it, to be recorded again after the call.
fn note(n: Note) -> Option<Note> {
    let _d = state::HookDepth::enter();
    // SAFETY: see DirtyCell (the epoch handler is deferred while `_d` lives).
    let t = unsafe { &mut *DIRTY.0.get() };
    let slot = match t
        .files
        .iter()
        .position(|f| f.used && f.dev == n.dev && f.ino == n.ino)
    {
        Some(i) => i,
        None => match t.files.iter().position(|f| !f.used) {
            Some(i) => {
                t.files[i] = CLEAN;
                t.files[i].used = true;
                t.files[i].dev = n.dev;
                t.files[i].ino = n.ino;
                i
            }
            None => {
                t.overflow = true;
                return Some(n);
            }
        },
    };
    let f = &mut t.files[slot];
    if n.trunc {
        f.low = f.low.min(n.start);
        return Some(n);
    }
    // Merge with an overlapping or adjacent range; else append; when full, keep the hull.
    if let Some(r) = f.ranges[..f.n]
        .iter_mut()
        .find(|r| n.start <= r.1 && r.0 <= n.end)
    {
        r.0 = r.0.min(n.start);
        r.1 = r.1.max(n.end);
    } else if f.n < MAX_DIRTY_RANGES {
        f.ranges[f.n] = (n.start, n.end);
        f.n += 1;
    } else {
        let lo = f.ranges.iter().map(|r| r.0).min().unwrap_or(0).min(n.start);
        let hi = f.ranges.iter().map(|r| r.1).max().unwrap_or(0).max(n.end);
        f.ranges[0] = (lo, hi);
        f.n = 1;
    }
    Some(n)
}

/// After the call: records the same range again (a checkpoint may have come between the
/// first record and the kernel's write).
pub fn after(n: Option<Note>) {
    if let Some(n) = n {
        if following() {
            note(n);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hooks for positioned writes and size changes (`write`/`writev` are in `netout`, which
// calls `before_write`/`after`).
// ---------------------------------------------------------------------------------------

fn iov_sum(iov: *const libc::iovec, cnt: c_int) -> usize {
    if iov.is_null() || cnt <= 0 {
        return 0;
    }
    // SAFETY: the app passes `cnt` iovecs at `iov` (as for pwritev(2)).
    let v = unsafe { core::slice::from_raw_parts(iov, cnt as usize) };
    v.iter().fold(0usize, |a, v| a.saturating_add(v.iov_len))
}

hook! {
    unsafe fn pwrite(fd: c_int, buf: *const c_void, n: usize, off: libc::off_t) -> isize => remus_pwrite {
        let w = before_pwrite(fd, off, n);
        let r = real!(pwrite)(fd, buf, n, off);
        after(w);
        r
    }
}

hook! {
    unsafe fn pwrite64(fd: c_int, buf: *const c_void, n: usize, off: libc::off64_t) -> isize => remus_pwrite64 {
        let w = before_pwrite(fd, off, n);
        let r = real!(pwrite64)(fd, buf, n, off);
        after(w);
        r
    }
}

hook! {
    unsafe fn pwritev(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: libc::off_t) -> isize => remus_pwritev {
        let w = before_pwrite(fd, off, iov_sum(iov, cnt));
        let r = real!(pwritev)(fd, iov, cnt, off);
        after(w);
        r
    }
}

hook! {
    unsafe fn pwritev64(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: libc::off64_t) -> isize => remus_pwritev64 {
        let w = before_pwrite(fd, off, iov_sum(iov, cnt));
        let r = real!(pwritev64)(fd, iov, cnt, off);
        after(w);
        r
    }
}

hook! {
    unsafe fn pwritev2(fd: c_int, iov: *const libc::iovec, cnt: c_int, off: libc::off_t, flags: c_int) -> isize => remus_pwritev2 {
        // off == -1: at the file offset, like writev.
        let n = iov_sum(iov, cnt);
        let w = if off == -1 { before_write(fd, n) } else { before_pwrite(fd, off, n) };
        let r = real!(pwritev2)(fd, iov, cnt, off, flags);
        after(w);
        r
    }
}

hook! {
    unsafe fn ftruncate(fd: c_int, len: libc::off_t) -> c_int => remus_ftruncate {
        let w = before_truncate(fd, len);
        let r = real!(ftruncate)(fd, len);
        after(w);
        r
    }
}

hook! {
    unsafe fn ftruncate64(fd: c_int, len: libc::off64_t) -> c_int => remus_ftruncate64 {
        let w = before_truncate(fd, len);
        let r = real!(ftruncate64)(fd, len);
        after(w);
        r
    }
}

hook! {
    unsafe fn fallocate(fd: c_int, mode: c_int, off: libc::off_t, len: libc::off_t) -> c_int => remus_fallocate {
        // Punching or zeroing a range changes its bytes; growing shows in the size.
        let w = if len > 0 { before_pwrite(fd, off, len as usize) } else { None };
        let r = real!(fallocate)(fd, mode, off, len);
        after(w);
        r
    }
}

hook! {
    unsafe fn fallocate64(fd: c_int, mode: c_int, off: libc::off64_t, len: libc::off64_t) -> c_int => remus_fallocate64 {
        let w = if len > 0 { before_pwrite(fd, off, len as usize) } else { None };
        let r = real!(fallocate64)(fd, mode, off, len);
        after(w);
        r
    }
}

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
        let d = &mut *DIRTY.0.get();
        d.files = [CLEAN; MAX_DIRTY_FILES];
        d.overflow = false;
    }
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

struct MessageCell(UnsafeCell<sys::Line<700>>);
// SAFETY: written and read by the epoch handler only (it cannot nest; one thread).
unsafe impl Sync for MessageCell {}
static MESSAGE: MessageCell = MessageCell(UnsafeCell::new(sys::Line::new()));

/// The message of the last [`Fail`] (the epoch handler's).
pub fn message() -> &'static mut sys::Line<700> {
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
    let dirty = unsafe { &*DIRTY.0.get() };
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
    if !ACTIVE.load(Ordering::Relaxed) {
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
                || !replicated(path)
            {
                continue;
            }
            let mut link = sys::Line::<32>::new();
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
    let dirty = unsafe { &mut *DIRTY.0.get() };
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
