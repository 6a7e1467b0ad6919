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
use core::sync::atomic::{AtomicBool, Ordering};

use remus_abi::filelog::{FileLogHeader, ENV_REPLICATE_DIRS, FILELOG_OFF};
use remus_abi::FD_PATH_MAX;

use crate::base::state;
use crate::kernel::sys;

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
pub static ACTIVE: AtomicBool = AtomicBool::new(false);

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
    let spec = match crate::base::environ::get(ENV_REPLICATE_DIRS) {
        Some(v) => v,
        None => std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    // SAFETY: see ConfigCell: nothing reads the configuration yet.
    let c = unsafe { &mut *CONFIG.0.get() };
    let mut out = Vec::new();
    for d in spec.split(':').filter(|d| !d.is_empty() && *d != "-") {
        // The kernel names open files by their canonical path: compare against the same.
        let Ok(p) = std::fs::canonicalize(d) else {
            crate::base::fatal::say(
                format!("{ENV_REPLICATE_DIRS}: {d} does not exist; not replicated").as_bytes(),
            );
            continue;
        };
        let b = p.as_os_str().as_encoded_bytes();
        if c.n == MAX_DIRS || b.len() >= FD_PATH_MAX {
            crate::base::fatal::say(
                format!("{ENV_REPLICATE_DIRS}: too many directories or too long a path: {d} not replicated").as_bytes(),
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
pub fn replicated(path: &[u8]) -> bool {
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
pub struct Dirty {
    pub used: bool,
    pub dev: u64,
    pub ino: u64,
    /// Smallest length the file was truncated to this epoch (u64::MAX: none).
    pub low: u64,
    pub n: usize,
    pub ranges: [(u64, u64); MAX_DIRTY_RANGES],
}

const CLEAN: Dirty = Dirty {
    used: false,
    dev: 0,
    ino: 0,
    low: u64::MAX,
    n: 0,
    ranges: [(0, 0); MAX_DIRTY_RANGES],
};

pub struct DirtyTable {
    pub files: [Dirty; MAX_DIRTY_FILES],
    /// More files were written this epoch than the table holds: every followed file is
    /// shipped whole.
    pub overflow: bool,
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
    regular_of(fd, &mut sys::FdStat::new(fd))
}

fn regular_of(fd: i32, st: &mut sys::FdStat) -> Option<libc::stat> {
    if !following() || fd < 0 {
        return None;
    }
    st.get()
        .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
        .copied()
}

/// Before `write`/`writev` of `n` bytes on `fd` at its offset (or at the end with O_APPEND);
/// `st` is the call's one `fstat` of `fd` (shared with `track::sockets`).
pub fn before_write(fd: i32, n: usize, st: &mut sys::FdStat) -> Option<Note> {
    if n == 0 {
        return None;
    }
    let st = regular_of(fd, st)?;
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
pub fn before_truncate(fd: i32, len: i64) -> Option<Note> {
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

/// The dirty table, for the epoch handler (which reads it and clears it each epoch) and for a
/// rejoin's reset.
///
/// # Safety
/// Only from the epoch handler, or while passive (no hook records); see DirtyCell.
pub unsafe fn dirty_table() -> &'static mut DirtyTable {
    // SAFETY: the caller guarantees no hook is recording.
    unsafe { &mut *DIRTY.0.get() }
}

/// Empties the dirty table (a rejoin's reset, while passive).
pub fn clear() {
    // SAFETY: passive: no hook records (see `dirty_table`).
    let d = unsafe { dirty_table() };
    d.files = [CLEAN; MAX_DIRTY_FILES];
    d.overflow = false;
}
