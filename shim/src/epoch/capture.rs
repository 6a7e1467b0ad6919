//! The epoch: runs inside the epoch signal handler with every other signal blocked. Reads the
//! kernel's map of the process, asks the kernel which pages were written since the last epoch
//! (re-protecting them), copies them into the staging area, records the descriptor table and
//! the resume point, and tells the controller. Nothing here allocates or takes a lock.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use remus_abi::{
    FdRecord, Msg, MsgKind, ResetRange, ResumeContext, StagingHeader, ThreadRecord, ABI_VERSION,
    ADDRS_OFF, CHUNK_PAGES, CWD_MAX, DATA_OFF, FDS_OFF, HDR_FLAG_STREAMED, MAPS_OFF, MAX_FDS,
    MAX_MAPS_BYTES, MAX_RESETS, MAX_THREADS, PAGE_SIZE, RESEND_DONE_OFF, RESEND_EPOCH_OFF,
    RESEND_REQ_OFF, RESETS_OFF, STAGING_MAGIC, STREAM_OFF, TCP_HOLD_DEADLINE_NS, TCP_HOLD_OFF,
    THREADS_OFF,
};

use super::profile::{self, Phase};
use super::{fds, files, kobj, rendezvous, stdio};
use crate::base::{link, state, statics};
use crate::kernel::line::Line;
use crate::kernel::pagemap::{self, PageRegion, Query};
use crate::kernel::procmap::{self, Vma};
use crate::kernel::sys;
use crate::track::pages::{self as tracker, How};

const MAX_TRACKED: usize = 8192;

#[derive(Clone, Copy)]
struct Tracked {
    start: u64,
    end: u64,
    perms: [u8; 4],
    offset: u64,
    inode: u64,
    how: How,
    /// Found unregistered at this epoch: ship it as new.
    stale: bool,
}

impl Tracked {
    fn region(&self) -> tracker::Region<'static> {
        tracker::Region {
            start: self.start,
            end: self.end,
            perms: self.perms,
            offset: self.offset,
            inode: self.inode,
            path: b"",
        }
    }
}

const EMPTY: Tracked = Tracked {
    start: 0,
    end: 0,
    perms: [0; 4],
    offset: 0,
    inode: 0,
    how: How::Scan,
    stale: false,
};

struct Scratch {
    tracked: [Tracked; MAX_TRACKED],
    n_tracked: usize,
    next: [Tracked; MAX_TRACKED],
    n_next: usize,
    vec: [PageRegion; 512],
    maps: [u8; MAX_MAPS_BYTES],
    /// The VMAs now and at the last epoch whose maps text is in staging.
    vmas_now: [Vma; MAX_VMAS],
    vmas_prev: [Vma; MAX_VMAS],
    n_vmas_prev: usize,
    /// Length of the maps text left in staging by the last epoch that wrote it (0: none).
    maps_out_len: usize,
    /// What the quick "map unchanged?" check saw at the last epoch: `state::MAP_HINTS` and
    /// the kernel's sizes (`statm`'s size and data, in pages).
    hints_prev: u64,
    statm_prev: Option<(u64, u64)>,
    /// Epochs in a row decided by the quick check (every [`FULL_CHECK_EVERY`]th lists anyway).
    quick_run: u32,
}

struct ScratchCell(UnsafeCell<Scratch>);
// SAFETY: used only by the epoch handler, which cannot nest and runs on the only thread.
unsafe impl Sync for ScratchCell {}

static SCRATCH: ScratchCell = ScratchCell(UnsafeCell::new(Scratch {
    tracked: [EMPTY; MAX_TRACKED],
    n_tracked: 0,
    next: [EMPTY; MAX_TRACKED],
    n_next: 0,
    vec: [PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    }; 512],
    maps: [0; MAX_MAPS_BYTES],
    vmas_now: [NO_VMA; MAX_VMAS],
    vmas_prev: [NO_VMA; MAX_VMAS],
    n_vmas_prev: 0,
    maps_out_len: 0,
    hints_prev: 0,
    statm_prev: None,
    quick_run: 0,
}));

/// Even when neither the hooks nor the kernel's sizes say the map changed, one epoch in this
/// many compares the whole VMA list (`PROCMAP_QUERY`): it bounds how long a change that keeps
/// both sizes (a raw `munmap` then `mmap` of the same length elsewhere) goes unseen.
const FULL_CHECK_EVERY: u32 = 16;

const MAX_VMAS: usize = 16384;
const NO_VMA: Vma = Vma {
    start: 0,
    end: 0,
    flags: 0,
    offset: 0,
    inode: 0,
};

/// Forgets every region followed so far (a restored process being protected again: its new
/// tracker starts empty, so the first epoch ships every region whole). Not in the signal
/// handler: at the rejoin's safe point, while the mode is passive (the handler takes no epoch).
pub fn reset() {
    // SAFETY: see ScratchCell; the epoch handler does not touch SCRATCH while passive.
    let s = unsafe { &mut *SCRATCH.0.get() };
    s.n_tracked = 0;
    s.n_next = 0;
    s.n_vmas_prev = 0;
    s.maps_out_len = 0;
    s.statm_prev = None;
}

/// One of the controller's words in the staging header area (`remus_abi::COMMITTED_OFF` and
/// after).
fn header_word(base: *mut u8, off: usize) -> &'static AtomicU64 {
    // SAFETY: `off` is one of remus_abi's 8-aligned header-area words (RESEND_*), inside the
    // page-aligned staging mapping, which stays mapped while protected; both processes access
    // these words atomically only.
    unsafe { &*(base.add(off) as *const AtomicU64) }
}

/// Why an epoch could not be taken; the shim stops protecting and tells the controller.
enum Abort {
    /// Text for the controller and `status`.
    Unsupported(&'static [u8], u64),
    Thread(u64),
    /// Threads with the mprotect tracker (its fault handling is per process).
    NeedsUffd(u64),
    /// The controller went away mid-epoch.
    Link,
    /// A replicated file could not be shipped (the text names it).
    Files(files::Fail),
}

/// Writes pages into the staging area chunk by chunk.
struct Writer {
    base: *mut u8,
    epoch: u64,
    chunk: u32,
    n: usize,
    total: u64,
}

impl Writer {
    fn header(&self) -> *mut StagingHeader {
        self.base as *mut StagingHeader
    }

    fn push_range(&mut self, start: u64, end: u64) -> Result<(), Abort> {
        let mut a = start;
        while a < end {
            if self.n == CHUNK_PAGES {
                self.flush(false)?;
            }
            // n < CHUNK_PAGES keeps ADDRS_OFF + n*8 and DATA_OFF + n*PAGE_SIZE inside staging;
            // the page was reported by PAGEMAP_SCAN in a readable region, the app is stopped.
            // SAFETY: both ranges are in bounds and valid; they do not overlap.
            unsafe {
                *(self.base.add(ADDRS_OFF) as *mut u64).add(self.n) = a;
                core::ptr::copy_nonoverlapping(
                    a as *const u8,
                    self.base.add(DATA_OFF + self.n * PAGE_SIZE),
                    PAGE_SIZE,
                );
            }
            self.n += 1;
            self.total += 1;
            a += PAGE_SIZE as u64;
        }
        Ok(())
    }

    /// Hands the filled chunk to the controller; for a non-final chunk, waits until it has
    /// been copied out.
    fn flush(&mut self, last: bool) -> Result<(), Abort> {
        // SAFETY: the header is at the start of the staging area, which we own until the
        // controller is notified.
        unsafe {
            let h = &mut *self.header();
            h.magic = STAGING_MAGIC;
            h.abi_version = ABI_VERSION;
            h.epoch = self.epoch;
            h.chunk = self.chunk;
            h.last = last as u32;
            h.n_pages = self.n as u32;
            h.epoch_pages = self.total;
        }
        link::send(&Msg::new(
            MsgKind::EpochChunk,
            self.epoch,
            self.chunk as u64,
        ))
        .map_err(|_| Abort::Link)?;
        if !last {
            loop {
                match link::recv() {
                    Ok(m) if m.kind == MsgKind::Drained as u32 => break,
                    Ok(_) => continue,
                    Err(_) => return Err(Abort::Link),
                }
            }
            self.chunk += 1;
            self.n = 0;
        }
        Ok(())
    }
}

/// Ships the pages of one region into the staging area.
struct Shipper {
    resets: *mut ResetRange,
    n_resets: usize,
    /// A streamed full image (`remus_abi::STREAM_OFF`): new regions are followed from now on
    /// but their pages are left for the controller to read while the program runs.
    streamed: bool,
    /// A streamed full resend: regions the tracker already follows stay followed (what was
    /// written since the last epoch is still reported), but each goes out with a reset, like
    /// a new one, for the controller to read whole.
    reset_known: bool,
}

impl Shipper {
    /// `known`: how the region was followed last epoch (None: new to the tracker). Returns how
    /// to follow it from now on.
    fn region(
        &mut self,
        w: &mut Writer,
        vec: &mut [PageRegion],
        r: &tracker::Region,
        known: Option<How>,
    ) -> Result<How, Abort> {
        let reset_done = known.is_some() && self.reset_known;
        if reset_done {
            self.reset(r)?;
        }
        let mut push = |a: u64, b: u64| w.push_range(a, b).map_err(|_| ());
        if let Some(how) = known {
            // Reset for a streamed resend: the tracker re-arms what was written, but the pages
            // need no copy now (the controller reads the whole region after this pause).
            let mut skip = |_: u64, _: u64| Ok(());
            let pages: &mut tracker::Push = if reset_done { &mut skip } else { &mut push };
            match tracker::known(r, how, vec, pages) {
                Ok(Some(how)) => return Ok(how),
                Ok(None) => {} // no longer followed: treat it as new
                Err(tracker::Fail::Push) => return Err(Abort::Link),
                Err(tracker::Fail::Kernel(what)) => return Err(Abort::Unsupported(what, r.start)),
            }
        }
        // New (or not trackable): the standby forgets what it had there, gets every
        // populated page, and the region is tracked from now on.
        if !reset_done {
            self.reset(r)?;
        }
        match tracker::new_region(r, vec, &mut push, self.streamed) {
            Ok(how) => Ok(how),
            Err(tracker::Fail::Push) => Err(Abort::Link),
            Err(tracker::Fail::Kernel(what)) => Err(Abort::Unsupported(what, r.start)),
        }
    }

    /// The standby forgets what it holds in `r` (applied before this epoch's pages).
    fn reset(&mut self, r: &tracker::Region) -> Result<(), Abort> {
        if self.n_resets == MAX_RESETS {
            return Err(Abort::Unsupported(
                b"too many new mappings in one epoch",
                r.start,
            ));
        }
        // SAFETY: n_resets < MAX_RESETS; the resets array lies inside staging.
        unsafe {
            *self.resets.add(self.n_resets) = ResetRange {
                start: r.start,
                end: r.end,
            }
        };
        self.n_resets += 1;
        Ok(())
    }
}

/// The epoch handler's body, called by `remus_checkpoint` after it saved `ctx` (the leader's
/// context, in its slot): brings every other thread in, captures, lets them go.
pub extern "C" fn capture_epoch(ctx: *mut ResumeContext) {
    let t0 = sys::monotonic_ns();
    // SAFETY: ctx points at the leader's context in its slot (epoch::handler).
    let ctx = unsafe { &mut *ctx };
    ctx.fs_base = crate::base::threads::thread_pointer();
    let r = match rendezvous::gather() {
        Ok(g) => {
            STUCK_RUN.store(0, Ordering::Relaxed);
            // Nobody runs app code now: what is pending for the leader goes into the image.
            rendezvous::drain_pending(crate::base::threads::current(), true);
            let r = take_epoch(ctx, t0, g);
            rendezvous::release();
            r
        }
        Err(rendezvous::Fail::Stuck(tid)) => {
            // Abandoned: everyone is released already; the controller asks again, and after
            // a few tries in a row protection stops (a thread that blocks the epoch signal
            // for good would hold every output forever).
            let run = STUCK_RUN.fetch_add(1, Ordering::Relaxed) + 1;
            let l = stuck(tid, run);
            if run >= STUCK_GIVE_UP {
                state::set_mode(state::MODE_UNPROTECTED);
                l.push(b"; replication stopped");
                link::send_text(MsgKind::Unsupported, tid as u64, 0, l.as_bytes());
            } else {
                l.push(b"; epoch abandoned, retried at the next tick");
                let epoch = state::EPOCH.load(Ordering::Relaxed) + 1;
                link::send_text(MsgKind::ThreadStuck, tid as u64, epoch, l.as_bytes());
            }
            return;
        }
        Err(rendezvous::Fail::TooMany(n)) => Err(Abort::Thread(n as u64)),
        Err(rendezvous::Fail::NoTaskList) => {
            Err(Abort::Unsupported(b"cannot list /proc/self/task", 0))
        }
    };
    match r {
        Ok(()) => {}
        Err(Abort::Thread(n)) => {
            state::set_mode(state::MODE_UNPROTECTED);
            let mut l = Line::<200>::new();
            l.push(b"the program has ")
                .num(n)
                .push(b" threads; remus protects at most ")
                .num(MAX_THREADS as u64)
                .push(b"; replication stopped");
            link::send_text(MsgKind::ThreadCreated, n, 0, l.as_bytes());
        }
        Err(Abort::NeedsUffd(n)) => {
            state::set_mode(state::MODE_UNPROTECTED);
            let mut l = Line::<300>::new();
            l.push(b"the program has ")
                .num(n)
                .push(b" threads, and multi-threaded programs need the userfaultfd write-protect tracker (Linux 6.7 or later; this kernel or REMUS_TRACKER chose mprotect); replication stopped");
            link::send_text(MsgKind::ThreadCreated, n, 0, l.as_bytes());
        }
        Err(Abort::Unsupported(what, addr)) => {
            state::set_mode(state::MODE_UNPROTECTED);
            let mut l = Line::<300>::new();
            l.push(what)
                .push(b" at ")
                .hex(addr)
                .push(b"; replication stopped");
            link::send_text(MsgKind::Unsupported, addr, 0, l.as_bytes());
        }
        Err(Abort::Link) => state::set_mode(state::MODE_UNPROTECTED),
        Err(Abort::Files(files::Fail)) => {
            state::set_mode(state::MODE_UNPROTECTED);
            let l = files::message();
            l.push(b"; replication stopped");
            link::send_text(MsgKind::Unsupported, 0, 0, l.as_bytes());
        }
    }
}

/// Epochs in a row abandoned because a thread did not come in; at [`STUCK_GIVE_UP`] the shim
/// stops protecting.
static STUCK_RUN: AtomicU32 = AtomicU32::new(0);
const STUCK_GIVE_UP: u32 = 5;

struct StuckCell(UnsafeCell<Line<500>>);
// SAFETY: used only by the leader of an epoch (one at a time).
unsafe impl Sync for StuckCell {}
static STUCK_TEXT: StuckCell = StuckCell(UnsafeCell::new(Line::new()));

/// Describes thread `tid`, which kept the epoch from being taken `run` times in a row: its name
/// and state from `/proc/self/task/TID/stat`.
fn stuck(tid: i32, run: u32) -> &'static mut Line<500> {
    let mut path = Line::<64>::new();
    path.push(b"/proc/self/task/")
        .num(tid as u64)
        .push(b"/stat\0");
    let mut buf = [0u8; 256];
    let n = sys::read_file(path.as_bytes(), &mut buf).unwrap_or(0);
    let stat = &buf[..n];
    // SAFETY: see StuckCell.
    let l = unsafe { &mut *STUCK_TEXT.0.get() };
    l.len = 0;
    l.push(b"thread ").num(tid as u64);
    // "TID (name) S ...": the name and the state letter.
    if let (Some(a), Some(b)) = (
        stat.iter().position(|&c| c == b'('),
        stat.iter().rposition(|&c| c == b')'),
    ) {
        l.push(b" ").push(&stat[a..=b]);
        if let Some(&st) = stat.get(b + 2) {
            l.push(b" in state ").push(&[st]);
        }
    }
    l.push(b" did not come into the epoch handler within ")
        .num(rendezvous::DEADLINE_NS / 1_000_000)
        .push(b" ms (")
        .num(run as u64)
        .push(b" epochs in a row): it blocks the epoch signal, is stopped, or waits in vfork");
    l
}

/// The address space's size and its private writable part (`/proc/self/statm` fields 1 and
/// 6, in pages); `None` if it cannot be read.
fn statm() -> Option<(u64, u64)> {
    let fd = sys::kept_open(&state::STATM_FD, c"/proc/self/statm", 0).ok()?;
    let mut buf = [0u8; 128];
    // SAFETY: pread writes at most buf.len() bytes into buf.
    let n = unsafe {
        sys::raw6(
            libc::SYS_pread64,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
            0,
        )
    }
    .ok()?;
    let mut fields = buf[..(n as usize).min(buf.len())]
        .split(|&c| c == b' ' || c == b'\n')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.iter().try_fold(0u64, |v, &c| {
                c.is_ascii_digit().then(|| v * 10 + (c - b'0') as u64)
            })
        });
    let size = fields.next()??;
    let data = fields.nth(4)??;
    Some((size, data))
}

fn take_epoch(ctx: &ResumeContext, t0: u64, g: &rendezvous::Gathered) -> Result<(), Abort> {
    let mut t = t0;
    let followers = g.followers().count();
    profile::mark(Phase::Threads, &mut t);
    if followers > 0 && !tracker::vma_shortcut() {
        return Err(Abort::NeedsUffd(followers as u64 + 1));
    }
    let base = state::STAGING.load(Ordering::Relaxed);
    let staging_addr = base as u64;
    let epoch = state::EPOCH.load(Ordering::Relaxed) + 1;
    // SAFETY: see ScratchCell.
    let s = unsafe { &mut *SCRATCH.0.get() };

    // A full resend asked for by the controller (a new connection to a standby that holds
    // nothing). Streamed: every region goes out with a reset and stays followed (the
    // controller reads the pages; reading the maps text again lists every region). In one
    // pause: forget every region, so that this epoch ships them all as new (populated pages
    // and resets); re-registering a region with the tracker is idempotent (uffd: the same
    // context; mprotect: its table is rebuilt every epoch). Files go whole either way.
    let streamed = header_word(base, STREAM_OFF).load(Ordering::Acquire) != 0;
    let mut reset_known = false;
    let resend = header_word(base, RESEND_REQ_OFF).load(Ordering::Acquire);
    if resend != header_word(base, RESEND_DONE_OFF).load(Ordering::Relaxed) {
        if streamed {
            reset_known = true;
        } else {
            s.n_tracked = 0;
            s.n_next = 0;
            s.n_vmas_prev = 0;
        }
        s.maps_out_len = 0;
        s.statm_prev = None;
        files::forget_known();
        header_word(base, RESEND_EPOCH_OFF).store(epoch, Ordering::Relaxed);
        header_word(base, RESEND_DONE_OFF).store(resend, Ordering::Release);
    }

    let maps_fd = sys::kept_open(&state::MAPS_FD, c"/proc/self/maps", 0)
        .map_err(|_| Abort::Unsupported(b"cannot open /proc/self/maps", 0))?;

    let mut w = Writer {
        base,
        epoch,
        chunk: 0,
        n: 0,
        total: 0,
    };
    let mut ship = Shipper {
        resets: base.wrapping_add(RESETS_OFF) as *mut ResetRange,
        n_resets: 0,
        streamed,
        reset_known,
    };

    // Has the map changed since the last epoch? First the quick check: no memory hook ran
    // (`MAP_HINTS`) and the kernel's own sizes of the address space (total and writable
    // private, `/proc/self/statm`: one short read) are the same, so no mapping was made,
    // removed, grown or made writable behind the hooks' back either (glibc's malloc, a raw
    // system call). A fresh mapping in place of a tracked one (same range, same size) is
    // caught below by the scan for unregistered memory. Otherwise ask the kernel VMA by VMA
    // (`PROCMAP_QUERY`), much cheaper than having it format the maps text, which is read
    // only when something did change.
    // (Only the uffd tracker takes these shortcuts: the mprotect tracker splits VMAs itself.)
    let hints = state::MAP_HINTS.load(Ordering::Relaxed);
    let sizes = statm();
    let quick = tracker::vma_shortcut()
        && s.maps_out_len > 0
        && s.quick_run < FULL_CHECK_EVERY
        && hints == s.hints_prev
        && sizes.is_some()
        && sizes == s.statm_prev;
    s.hints_prev = hints;
    s.statm_prev = sizes;
    let listed = if quick {
        s.quick_run += 1;
        Ok(s.n_vmas_prev)
    } else {
        s.quick_run = 0;
        procmap::list(maps_fd, &mut s.vmas_now)
    };
    tracker::begin_epoch();
    let unchanged = quick
        || (tracker::vma_shortcut()
            && matches!(listed, Ok(n) if s.maps_out_len > 0 && n == s.n_vmas_prev && s.vmas_now[..n] == s.vmas_prev[..n]));
    profile::mark(Phase::MapCheck, &mut t);

    let out_len = if unchanged {
        // Same regions as last epoch, async write-protect: two scans cover them all, instead
        // of one per region. First, which tracked regions lost their registration (unmapped
        // and mapped again behind our back: same range, fresh memory)?
        let pm = state::PAGEMAP.load(Ordering::Relaxed);
        let (lo, hi) = match (
            s.tracked[..s.n_tracked].first(),
            s.tracked[..s.n_tracked].last(),
        ) {
            (Some(f), Some(l)) => (f.start, l.end),
            _ => (0, 0), // nothing tracked: both scans below are empty
        };
        // Scanned run by run of adjacent tracked regions: a registered VMA is skipped whole by
        // the kernel, while the gaps between runs (code, mostly) would cost a walk of their
        // page tables.
        let tracked = &mut s.tracked[..s.n_tracked];
        let mut run = 0usize;
        while run < tracked.len() {
            let mut run_end = run + 1;
            while run_end < tracked.len() && tracked[run_end].start == tracked[run_end - 1].end {
                run_end += 1;
            }
            let (a0, b0) = (tracked[run].start, tracked[run_end - 1].end);
            let part = &mut tracked[run..run_end];
            let mut cursor = 0usize;
            let r = pagemap::scan(pm, a0, b0, Query::Unregistered, &mut s.vec, |a, b| {
                while cursor < part.len() && part[cursor].end <= a {
                    cursor += 1;
                }
                let mut i = cursor;
                while i < part.len() && part[i].start < b {
                    part[i].stale = true;
                    i += 1;
                }
                Ok(())
            });
            if r.is_err() {
                return Err(Abort::Unsupported(b"PAGEMAP_SCAN failed", a0));
            }
            run = run_end;
        }
        profile::mark(Phase::Unregistered, &mut t);
        // Those, and the regions the kernel would not register, are shipped as new.
        for i in 0..s.n_tracked {
            let t = s.tracked[i];
            if t.stale || t.how != How::Scan {
                s.tracked[i].stale = false;
                let r = t.region();
                s.tracked[i].how = ship.region(&mut w, &mut s.vec, &r, None)?;
            }
        }
        profile::mark(Phase::Renewed, &mut t);
        // Then every written page of every registered region, re-protected, in one pass.
        // (Regions just shipped as new are protected already and report nothing.)
        match pagemap::scan(
            pm,
            lo,
            hi,
            Query::WrittenSkipUnregistered,
            &mut s.vec,
            |a, b| w.push_range(a, b).map_err(|_| -1),
        ) {
            Ok(()) => {}
            Err(-1) => return Err(Abort::Link),
            Err(_) => return Err(Abort::Unsupported(b"PAGEMAP_SCAN failed", lo)),
        }
        s.maps_out_len
    } else {
        let maps_len = match tracker::read_maps(maps_fd, &mut s.maps) {
            Ok(n) if n < s.maps.len() => n,
            Ok(_) => {
                return Err(Abort::Unsupported(
                    b"more mappings than the shim can track (maps text over 2 MiB)",
                    0,
                ))
            }
            Err(_) => return Err(Abort::Unsupported(b"cannot read /proc/self/maps", 0)),
        };
        let mut out_len = 0usize;
        let out_maps = base.wrapping_add(MAPS_OFF);
        s.n_next = 0;
        let mut cursor = 0usize;

        let text: &[u8] = &s.maps[..maps_len];
        for line in tracker::lines(text) {
            let m = line.map;
            if m.start == staging_addr || tracker::is_own_area(m.start) {
                continue; // the staging area is the controller's, not the app's
            }
            // The tracker's logical line (its pieces merged) is never longer than the text it
            // stands for, except for its prefix, which the pieces it replaces outweigh.
            for part in [line.prefix.as_bytes(), line.rest] {
                if out_len + part.len() > MAX_MAPS_BYTES {
                    return Err(Abort::Unsupported(b"maps text too long", 0));
                }
                // SAFETY: out_len + part.len() <= MAX_MAPS_BYTES: inside the staging maps
                // section; source and destination do not overlap.
                unsafe {
                    core::ptr::copy_nonoverlapping(part.as_ptr(), out_maps.add(out_len), part.len())
                };
                out_len += part.len();
            }

            if m.is_special() || !m.readable() {
                continue; // kernel mappings, and PROT_NONE reservations hold no data to ship
            }
            if m.shared() {
                if m.writable() {
                    return Err(Abort::Unsupported(
                        b"a writable shared mapping (MAP_SHARED) cannot be replicated yet",
                        m.start,
                    ));
                }
                continue; // a read-only shared file mapping comes back from the file
            }
            if m.executable() && m.is_file() && !m.writable() {
                continue; // code comes back from the file
            }

            // Find the same region in last epoch's table (both are sorted by address).
            while cursor < s.n_tracked && s.tracked[cursor].end <= m.start {
                cursor += 1;
            }
            let known = (cursor < s.n_tracked)
                .then(|| s.tracked[cursor])
                .filter(|t| t.region().same_vma(&tracker::Region::from_line(&m)))
                .map(|t| t.how);
            let how = ship.region(&mut w, &mut s.vec, &tracker::Region::from_line(&m), known)?;
            if s.n_next == MAX_TRACKED {
                return Err(Abort::Unsupported(
                    b"more writable mappings than the shim can track",
                    m.start,
                ));
            }
            s.next[s.n_next] = Tracked {
                start: m.start,
                end: m.end,
                perms: m.perms,
                offset: m.offset,
                inode: m.inode,
                how,
                stale: false,
            };
            s.n_next += 1;
        }
        // The next epoch compares against what we saw now.
        let n = s.n_next;
        s.tracked[..n].copy_from_slice(&s.next[..n]);
        s.n_tracked = n;
        match listed {
            Ok(n) => {
                s.vmas_prev[..n].copy_from_slice(&s.vmas_now[..n]);
                s.n_vmas_prev = n;
                s.maps_out_len = out_len;
            }
            Err(_) => s.maps_out_len = 0, // no PROCMAP_QUERY: read the text every epoch
        }
        out_len
    };
    tracker::end_epoch();
    let n_resets = ship.n_resets;
    profile::mark(Phase::Pages, &mut t);

    // SAFETY: FDS_OFF .. FDS_OFF + MAX_FDS records lie inside staging.
    let fd_out =
        unsafe { core::slice::from_raw_parts_mut(base.add(FDS_OFF) as *mut FdRecord, MAX_FDS) };
    let n_fds = fds::capture(fd_out);
    profile::mark(Phase::Fds, &mut t);
    kobj::capture(base, &fd_out[..n_fds], epoch);
    profile::mark(Phase::Kobj, &mut t);
    files::capture(base, &fd_out[..n_fds], epoch).map_err(Abort::Files)?;
    profile::mark(Phase::Files, &mut t);

    // SAFETY: the header is at offset 0 of staging.
    let h = unsafe { &mut *(base as *mut StagingHeader) };
    h.n_resets = n_resets as u32;
    h.n_fds = n_fds as u32;
    h.maps_len = out_len as u32;
    h.ctx = *ctx;
    h.mm = statics::mm_fields();
    // SAFETY: brk(0) returns the current break and changes nothing.
    h.mm.brk = unsafe { sys::raw6(libc::SYS_brk, 0, 0, 0, 0, 0, 0) }.unwrap_or(0) as u64;
    // SAFETY: the leader's own record (see base::threads::SlotCell).
    h.app_sigmask = unsafe { (*crate::base::threads::current().rec.get()).sigmask };
    let ss = sys::current_altstack();
    h.altstack_sp = ss.ss_sp as u64;
    h.altstack_flags = ss.ss_flags;
    h.altstack_size = ss.ss_size as u64;
    h.tid = sys::gettid();
    // Every thread's record, the leader's first.
    let me = crate::base::threads::current();
    // SAFETY: THREADS_OFF .. + MAX_THREADS records lie in the header area of staging.
    let recs = unsafe {
        core::slice::from_raw_parts_mut(base.add(THREADS_OFF) as *mut ThreadRecord, MAX_THREADS)
    };
    // SAFETY: the leader's record is its own; each follower's was written before it parked
    // (see base::threads::SlotCell).
    recs[0] = unsafe { *me.rec.get() };
    recs[0].ctx = *ctx;
    let mut n_threads = 1usize;
    for f in g.followers() {
        if n_threads == MAX_THREADS {
            break; // gather refuses more (Fail::TooMany)
        }
        // SAFETY: as above.
        recs[n_threads] = unsafe { *f.rec.get() };
        n_threads += 1;
    }
    h.n_threads = n_threads as u32;
    h.rendezvous_ns = g.rendezvous_ns;
    rendezvous::note_followers(n_threads - 1);
    statics::fill_auxv(h);
    // SAFETY: getcwd writes at most CWD_MAX bytes into h.cwd.
    h.cwd_len = match unsafe {
        sys::raw6(
            libc::SYS_getcwd,
            h.cwd.as_mut_ptr() as usize,
            CWD_MAX,
            0,
            0,
            0,
            0,
        )
    } {
        Ok(n) => (n as u32).saturating_sub(1), // the kernel counts the NUL
        Err(_) => 0,
    };
    h.flags = if ship.streamed { HDR_FLAG_STREAMED } else { 0 };
    stdio::probe(h);
    profile::mark(Phase::Header, &mut t);
    profile::full(!quick, !unchanged, true);
    h.pause_ns = sys::monotonic_ns().saturating_sub(t0);
    w.flush(true)?;
    profile::mark(Phase::Notify, &mut t);
    hold_for_dump(base, epoch)?;
    profile::epoch_done();
    state::EPOCH.store(epoch, Ordering::Relaxed);
    Ok(())
}

/// remusd runs with a service address (`remus_abi::TCP_HOLD_OFF` set) and the program has a
/// connected TCP socket: every thread stays in the handler (the followers are still parked)
/// until remusd says it has dumped epoch `epoch`'s connections, at most
/// `TCP_HOLD_DEADLINE_NS`. Late, the program goes on and remusd is told so: it must not commit
/// an epoch whose connection state may be newer than its memory.
fn hold_for_dump(base: *mut u8, epoch: u64) -> Result<(), Abort> {
    if header_word(base, TCP_HOLD_OFF).load(Ordering::Acquire) == 0
        || !kobj::has_connected_tcp(base)
    {
        return Ok(());
    }
    let deadline = sys::monotonic_ns().saturating_add(TCP_HOLD_DEADLINE_NS);
    loop {
        match link::recv_until(deadline) {
            Ok(Some(m)) if m.kind == MsgKind::TcpDumped as u32 && m.a == epoch => {
                return link::send(&Msg::new(MsgKind::TcpHeld, epoch, 0)).map_err(|_| Abort::Link);
            }
            Ok(Some(_)) => continue, // an answer to an earlier epoch, or a stray Drained
            Ok(None) => {
                let mut l = Line::<200>::new();
                l.push(b"the connection dump of epoch ")
                    .num(epoch)
                    .push(b" did not come within ")
                    .num(TCP_HOLD_DEADLINE_NS / 1_000_000)
                    .push(b" ms; the program went on without it");
                link::send_text(MsgKind::TcpDumpLate, epoch, 0, l.as_bytes());
                return Ok(());
            }
            Err(_) => return Err(Abort::Link),
        }
    }
}
