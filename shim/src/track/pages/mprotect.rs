//! The mprotect tracker (the seed design, DESIGN §3): works on any kernel.
//!
//! A tracked region (a *logical* region: what the program mapped, e.g. `rw-p`) loses
//! `PROT_WRITE`. The first write to a page raises `SIGSEGV`; [`on_segv`] (on the shim's own
//! alternate stack) finds the page in a tracked region, appends it to a static dirty list,
//! gives the page its write permission back with a raw `mprotect` and returns, so the write is
//! retried and succeeds. At the epoch, the recorded pages are protected again, then copied.
//! A fault that is not ours goes where it went before ([`crate::base::sigview::chain_to_app`]).
//!
//! Things this has to get right:
//!
//! - `mprotect` of single pages splits VMAs: `/proc/self/maps` shows a tracked region as many
//!   `r--p`/`rw-p` pieces. [`claim`] recognises the pieces of the regions the tracker
//!   protected, so the capture (and the maps text the restore reads) sees one line with the
//!   program's protection. A `rw-p` piece must consist of pages the tracker gave back (dirty
//!   list, pinned): otherwise the memory was replaced behind our back (glibc's malloc unmaps
//!   and maps through internal calls no hook sees) and the region is shipped whole again.
//! - glibc's `realloc` moves big chunks with an internal `mremap`. A region whose every page
//!   is protected is one `r--p` VMA that `mremap` would move to an address the tracker does
//!   not know, read-only. So the first page of each anonymous region gets `MADV_NOHUGEPAGE`:
//!   the region is always at least two VMAs, `mremap` fails with `EFAULT` and glibc falls back
//!   to malloc + copy + free (slower, correct).
//! - Memory the kernel writes on its own: signal frames (the stack is never protected: it is
//!   shipped whole every epoch, [`How::CopyAll`]), the shim's alternate stack (never
//!   protected, never shipped: its content does not matter), the program's alternate stack,
//!   the thread's TLS page (errno) and rseq area (the kernel updates it on every preemption)
//!   are *pinned*: never protected, shipped every epoch. System call out-buffers are
//!   pre-faulted by the hooks in [`super::prefault`], which *lend* the buffer for the call so
//!   an epoch that lands inside it leaves those pages writable.
//! - The signal path allocates nothing, takes no lock, and writes only to [`Area`] (a private
//!   mapping of its own, never tracked, never part of the image; guard pages keep the kernel
//!   from merging it with the program's memory) and to its stack. System calls there go
//!   through inline `syscall` (no errno write).
//! - `SIGSEGV` must never be blocked, or the kernel kills the process at the first tracked
//!   write: the shim removes it from the masks the program installs (see signals.rs).

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::{Fail, How, Push, Region};
use crate::base::{sigview as signals, state};
use crate::kernel::sys;
use crate::kernel::text::MapLine;

const PAGE: u64 = 4096;
/// First writes one epoch can record (8 MiB of list; 4 GiB of pages).
const MAX_DIRTY: usize = 1 << 20;
const MAX_LOGICAL: usize = 8192;
const PM_ENTRIES: usize = 8192;
const MAX_PINNED: usize = 16;
const MAX_LENT: usize = 8;
const SEGV_ACCERR: i32 = 2;
/// A pinned range larger than this is not re-listed page by page: next epoch resends all.
const MAX_PINNED_PAGES: u64 = 1 << 16;

/// A region the tracker protected, with the program's own protection.
#[derive(Clone, Copy)]
pub struct Logical {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    /// The program's `PROT_*`.
    prot: u32,
    /// Set when the region was seen replaced or unmapped: the capture ships it whole again.
    reset: u32,
    /// The maps offset at `start` (file-backed regions).
    offset: u64,
    inode: u64,
}

#[derive(Clone, Copy)]
struct Pinned {
    start: u64,
    end: u64,
    ship: bool,
}

/// Everything the fault handler writes, and the epoch's working lists. All-zero is the
/// initial state.
#[repr(C)]
struct Area {
    n_dirty: AtomicUsize,
    overflow: AtomicBool,
    /// Which of `tables` the fault handler searches; the other is being built this epoch.
    active: AtomicUsize,
    n_table: [AtomicUsize; 2],
    /// Buffers lent to a system call by a hook (not re-protected by an epoch inside it).
    n_lent: AtomicUsize,
    lent: [(AtomicU64, AtomicU64); MAX_LENT],
    // Epoch-only state (the epoch handler runs once at a time).
    snap: usize,
    overflow_now: bool,
    sp: u64,
    n_pinned: usize,
    pinned: [Pinned; MAX_PINNED],
    dirty: [AtomicU64; MAX_DIRTY],
    tables: [[Logical; MAX_LOGICAL]; 2],
    pm: [u64; PM_ENTRIES],
}

static AREA: AtomicPtr<Area> = AtomicPtr::new(core::ptr::null_mut());

#[repr(C, align(4096))]
struct AltStack([u8; ALTSTACK_SIZE]);
const ALTSTACK_SIZE: usize = 64 << 10;
/// The fault handler's stack, in the shim's .bss (so the restored process, whose signal frame
/// names it as the alternate stack, has it mapped). Pinned: never protected, never shipped.
static mut ALTSTACK: AltStack = AltStack([0; ALTSTACK_SIZE]);

fn area() -> Option<&'static Area> {
    let p = AREA.load(Ordering::Acquire);
    // SAFETY: set once by `start` to a mapping that lives as long as the process; every field
    // the fault handler writes concurrently with other code is atomic, and the epoch-only
    // fields are written through `area_mut` by the epoch handler alone.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// # Safety
/// Only the epoch handler (which does not nest) and start-up call this; the fields it hands
/// out mutably are never touched by the fault handler (which runs nested inside it).
unsafe fn area_mut() -> &'static mut Area {
    // SAFETY: AREA is set at start-up before any caller; the caller keeps the access exclusive.
    unsafe { &mut *AREA.load(Ordering::Acquire) }
}

fn altstack_range() -> (u64, u64) {
    // SAFETY: only the address is taken.
    let p = core::ptr::addr_of!(ALTSTACK) as u64;
    (p, p + ALTSTACK_SIZE as u64)
}

/// A raw system call without errno (safe in the fault handler, whose TLS page might be
/// protected... it never is, but the handler does not depend on that).
///
/// # Safety
/// As for the system call `nr` with these arguments.
#[inline(always)]
unsafe fn sc(nr: i64, a: u64, b: u64, c: u64, d: u64) -> i64 {
    let ret: i64;
    // SAFETY: a `syscall` instruction; the kernel clobbers only rcx and r11; the caller
    // upholds the system call's contract.
    unsafe {
        core::arch::asm!(
        "syscall",
        inlateout("rax") nr => ret,
        in("rdi") a,
        in("rsi") b,
        in("rdx") c,
        in("r10") d,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack)
        )
    };
    ret
}

fn mprotect_raw(start: u64, len: u64, prot: u32) -> i64 {
    // SAFETY: mprotect changes protection of our own mappings in a range the tracker follows;
    // it passes no memory to the kernel.
    unsafe { sc(libc::SYS_mprotect, start, len, prot as u64, 0) }
}

fn prot_of(perms: &[u8; 4]) -> u32 {
    let mut p = 0;
    if perms[0] == b'r' {
        p |= libc::PROT_READ;
    }
    if perms[1] == b'w' {
        p |= libc::PROT_WRITE;
    }
    if perms[2] == b'x' {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

fn ro(prot: u32) -> u32 {
    prot & !(libc::PROT_WRITE as u32)
}

/// Start-up: maps the area, installs the alternate stack and the `SIGSEGV` handler, and takes
/// `SIGSEGV` over from the program (its own disposition is kept in the app view).
pub fn start(real: signals::SigactionFn) -> Result<(), String> {
    let size = (core::mem::size_of::<Area>() as u64).div_ceil(PAGE) * PAGE;
    // SAFETY: a fresh private anonymous reservation with a guard page on each side.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            (size + 2 * PAGE) as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "cannot map the mprotect tracker's tables: {}",
            std::io::Error::last_os_error()
        ));
    }
    let inner = p as u64 + PAGE;
    // SAFETY: making the inside of our own reservation readable and writable.
    if unsafe {
        libc::mprotect(
            inner as *mut c_void,
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    } != 0
    {
        return Err(format!(
            "cannot map the mprotect tracker's tables: {}",
            std::io::Error::last_os_error()
        ));
    }
    AREA.store(inner as *mut Area, Ordering::Release);

    // The handler's own stack, unless something before us installed one.
    // SAFETY: querying the current alternate stack into a zeroed stack_t.
    let mut cur: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigaltstack(core::ptr::null(), &mut cur) };
    if cur.ss_flags & libc::SS_DISABLE != 0 {
        let (lo, _) = altstack_range();
        let ss = libc::stack_t {
            ss_sp: lo as *mut c_void,
            ss_flags: 0,
            ss_size: ALTSTACK_SIZE,
        };
        // SAFETY: ALTSTACK is a static buffer of ALTSTACK_SIZE bytes used only as this stack.
        if unsafe { libc::sigaltstack(&ss, core::ptr::null_mut()) } != 0 {
            return Err(format!(
                "cannot install the mprotect tracker's signal stack: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: a zeroed sigaction with our handler; the mask blocks everything but the
    // synchronous fault signals (a fault inside the handler must not be blocked: the kernel
    // would kill the process silently).
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut sa.sa_mask, s);
        }
        if real(libc::SIGSEGV, &sa, core::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot install the mprotect tracker's SIGSEGV handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    signals::own_segv();
    Ok(())
}

/// In the restored process: nothing is protected any more and the area does not exist.
pub fn after_restore() {
    AREA.store(core::ptr::null_mut(), Ordering::Release);
}

pub fn is_own_area(start: u64) -> bool {
    AREA.load(Ordering::Relaxed) as u64 == start && start != 0
}

/// Binary search of a sorted table prefix for the region containing `addr`.
fn find(t: &[Logical], addr: u64) -> Option<usize> {
    let i = t.partition_point(|l| l.end <= addr);
    (i < t.len() && t[i].start <= addr).then_some(i)
}

/// The tracked region holding `addr`: the active table, then what this epoch has added.
fn lookup(a: &Area, addr: u64) -> Option<Logical> {
    let act = a.active.load(Ordering::Acquire) & 1;
    for t in [act, act ^ 1] {
        let n = a.n_table[t].load(Ordering::Acquire).min(MAX_LOGICAL);
        if let Some(i) = find(&a.tables[t][..n], addr) {
            return Some(a.tables[t][i]);
        }
    }
    None
}

fn record(a: &Area, page: u64) {
    let n = a.n_dirty.load(Ordering::Relaxed);
    if n < MAX_DIRTY {
        a.dirty[n].store(page, Ordering::Relaxed);
        a.n_dirty.store(n + 1, Ordering::Release);
    } else {
        a.overflow.store(true, Ordering::Release);
    }
}

/// The `SIGSEGV` handler: a first write to a tracked page, or somebody else's fault.
extern "C" fn on_segv(sig: i32, info: *mut libc::siginfo_t, uc: *mut c_void) {
    if let Some(a) = area() {
        // SAFETY: for an SA_SIGINFO handler info and uc point at the kernel's siginfo and
        // ucontext; si_addr is valid for SIGSEGV.
        let (code, addr, err) = unsafe {
            (
                (*info).si_code,
                (*info).si_addr() as u64,
                if uc.is_null() {
                    0
                } else {
                    (*(uc as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize]
                },
            )
        };
        // x86 page-fault error code: bit 1 = write, bit 4 = instruction fetch.
        if code == SEGV_ACCERR && err & 2 != 0 && err & 16 == 0 {
            if let Some(l) = lookup(a, addr) {
                if l.prot & libc::PROT_WRITE as u32 != 0 {
                    let page = addr & !(PAGE - 1);
                    if mprotect_raw(page, PAGE, l.prot) == 0 {
                        record(a, page);
                        return;
                    }
                    // Out of VMAs (vm.max_map_count): open the whole region and resend
                    // everything next epoch.
                    if mprotect_raw(l.start, l.end - l.start, l.prot) == 0 {
                        a.overflow.store(true, Ordering::Release);
                        return;
                    }
                }
            }
        }
    }
    signals::chain_to_app(sig, info, uc);
}

/// Pages of `[start, end)` that are in the dirty list snapshot (sorted `dirty[..snap]`), the
/// pages recorded since (unsorted), or pinned.
fn all_given_back(a: &Area, start: u64, end: u64) -> bool {
    let snap = a.snap;
    let n = a.n_dirty.load(Ordering::Acquire).min(MAX_DIRTY);
    // SAFETY: AtomicU64 has the layout of u64; reading a snapshot prefix nobody writes now.
    let sorted = unsafe { core::slice::from_raw_parts(a.dirty.as_ptr() as *const u64, snap) };
    let mut p = start;
    'pages: while p < end {
        for pin in &a.pinned[..a.n_pinned] {
            if pin.start <= p && p < pin.end {
                p = pin.end.min(end).max(p + PAGE);
                continue 'pages;
            }
        }
        if sorted.binary_search(&p).is_err()
            && !(snap..n).any(|i| a.dirty[i].load(Ordering::Relaxed) == p)
        {
            return false;
        }
        p += PAGE;
    }
    true
}

/// Cuts the maps line `m` at `at`: returns where the piece starting there ends, and the
/// tracked region it belongs to (`None`: not a piece of one; it ends where the next tracked
/// region starts, or with the line). A `rw-p` piece that holds pages the tracker did not give
/// back marks its region for a full resend: the memory was replaced behind our back.
pub fn segment(m: &MapLine, at: u64) -> (u64, Option<Logical>) {
    let Some(a) = area() else {
        return (m.end, None);
    };
    let act = a.active.load(Ordering::Acquire) & 1;
    let n = a.n_table[act].load(Ordering::Acquire).min(MAX_LOGICAL);
    let t = &a.tables[act][..n];
    let Some(i) = find(t, at) else {
        let next = t.partition_point(|l| l.start <= at);
        return (t.get(next).map_or(m.end, |l| l.start.min(m.end)), None);
    };
    let l = t[i];
    let end = m.end.min(l.end);
    let same_perms = m.perms[0] == l.perms[0]
        && m.perms[2] == l.perms[2]
        && m.perms[3] == l.perms[3]
        && (m.perms[1] == l.perms[1] || m.perms[1] == b'-');
    let same_backing = m.inode == l.inode
        && (l.inode == 0 || m.offset + (at - m.start) == l.offset + (at - l.start));
    if !same_perms || !same_backing {
        return (end, None);
    }
    if m.perms[1] == b'w' && !all_given_back(a, at, end) {
        // SAFETY: epoch handler only (the capture's line walk); the fault handler only reads
        // this table.
        unsafe { area_mut() }.tables[act][i].reset = 1;
    }
    (end, Some(l))
}

/// Start of an epoch: snapshot and sort the dirty list, work out the pinned ranges.
pub fn begin_epoch() {
    let Some(a) = area() else { return };
    // SAFETY: epoch handler (see area_mut).
    let am = unsafe { area_mut() };
    let n = a.n_dirty.load(Ordering::Acquire).min(MAX_DIRTY);
    // SAFETY: AtomicU64 has the layout of u64; no fault can be taken while sorting (the
    // area is never protected and the stack is not), so nothing appends meanwhile.
    let list = unsafe { core::slice::from_raw_parts_mut(a.dirty.as_ptr() as *mut u64, n) };
    list.sort_unstable();
    let mut k = 0;
    for i in 0..n {
        if k == 0 || list[i] != list[k - 1] {
            list[k] = list[i];
            k += 1;
        }
    }
    a.n_dirty.store(k, Ordering::Release);
    am.snap = k;
    am.overflow_now = a.overflow.swap(false, Ordering::AcqRel);
    let here = 0u8;
    am.sp = &here as *const u8 as u64;
    let build = (a.active.load(Ordering::Acquire) & 1) ^ 1;
    a.n_table[build].store(0, Ordering::Release);

    // Pinned ranges.
    am.n_pinned = 0;
    let (lo, hi) = altstack_range();
    pin(am, lo, hi, false);
    let ss = sys::current_altstack();
    if ss.ss_flags & libc::SS_DISABLE == 0 && ss.ss_sp as u64 != lo {
        pin(
            am,
            ss.ss_sp as u64,
            ss.ss_sp as u64 + ss.ss_size as u64,
            true,
        );
    }
    let tp = sys::fs_base();
    pin(am, tp, tp + 8, true);
    // SAFETY: __errno_location has no preconditions.
    let e = unsafe { libc::__errno_location() } as u64;
    pin(am, e, e + 4, true);
    let rs = state::RSEQ_SIZE.load(Ordering::Relaxed) as u64;
    if rs != 0 {
        let r = tp.wrapping_add(state::RSEQ_OFFSET.load(Ordering::Relaxed));
        pin(am, r, r + rs.max(32), true);
    }
    let nl = a.n_lent.load(Ordering::Acquire).min(MAX_LENT);
    for i in 0..nl {
        let (s, e) = (&a.lent[i].0, &a.lent[i].1);
        pin(
            am,
            s.load(Ordering::Relaxed),
            e.load(Ordering::Relaxed),
            true,
        );
    }
}

fn pin(am: &mut Area, start: u64, end: u64, ship: bool) {
    if end <= start || am.n_pinned == MAX_PINNED {
        return;
    }
    am.pinned[am.n_pinned] = Pinned {
        start: start & !(PAGE - 1),
        end: end.div_ceil(PAGE) * PAGE,
        ship,
    };
    am.n_pinned += 1;
}

/// Adds `l` to the table being built (the fault handler sees it at once).
fn publish(a: &Area, l: Logical) -> bool {
    let build = (a.active.load(Ordering::Acquire) & 1) ^ 1;
    let n = a.n_table[build].load(Ordering::Acquire);
    if n == MAX_LOGICAL {
        return false;
    }
    // SAFETY: epoch handler; entry n is not yet visible to the fault handler (it reads below
    // n_table), and is published by the release store after it is written.
    unsafe { area_mut() }.tables[build][n] = l;
    a.n_table[build].store(n + 1, Ordering::Release);
    true
}

/// Protects `[start, end)` read-only (the program's protection without write), leaving the
/// pinned pages alone.
fn protect(a: &Area, start: u64, end: u64, prot: u32) -> bool {
    let mut from = start;
    while from < end {
        // The first pinned range that starts before `end` and ends after `from`.
        let mut next: Option<Pinned> = None;
        for p in &a.pinned[..a.n_pinned] {
            if p.end > from && p.start < end && next.is_none_or(|n| p.start < n.start) {
                next = Some(*p);
            }
        }
        let stop = next.map_or(end, |p| p.start.max(from));
        if stop > from && mprotect_raw(from, stop - from, ro(prot)) != 0 {
            return false;
        }
        from = next.map_or(end, |p| p.end.max(stop));
    }
    true
}

/// Ships the populated pages (present or swapped out) of `[start, end)`, read from
/// `/proc/self/pagemap` in chunks (no `PAGEMAP_SCAN` on 5.x kernels).
fn populated(_a: &Area, start: u64, end: u64, push: &mut Push) -> Result<(), Fail> {
    let pm = state::PAGEMAP.load(Ordering::Relaxed);
    // SAFETY: epoch handler (see area_mut); pm is only used here.
    let buf = &mut unsafe { area_mut() }.pm;
    let mut page = start;
    let mut run: Option<u64> = None;
    while page < end {
        let n = (((end - page) / PAGE) as usize).min(PM_ENTRIES);
        // SAFETY: buf holds PM_ENTRIES u64s; pread writes at most n * 8 bytes.
        let got = unsafe {
            sys::raw6(
                libc::SYS_pread64,
                pm as usize,
                buf.as_mut_ptr() as usize,
                n * 8,
                ((page / PAGE) * 8) as usize,
                0,
                0,
            )
        }
        .map_err(|_| Fail::Kernel(b"cannot read /proc/self/pagemap"))? as usize
            / 8;
        if got == 0 {
            return Err(Fail::Kernel(b"short read of /proc/self/pagemap"));
        }
        for e in &buf[..got] {
            let has_data = e & (3 << 62) != 0; // present (63) or swapped (62)
            match (has_data, run) {
                (true, None) => run = Some(page),
                (false, Some(s)) => {
                    push(s, page).map_err(|_| Fail::Push)?;
                    run = None;
                }
                _ => {}
            }
            page += PAGE;
        }
    }
    if let Some(s) = run {
        push(s, end).map_err(|_| Fail::Push)?;
    }
    Ok(())
}

fn is_stack(a: &Area, r: &Region) -> bool {
    r.path == b"[stack]" || (r.start <= a.sp && a.sp < r.end)
}

/// A region new to the tracker.
pub fn new_region(r: &Region, push: &mut Push, streamed: bool) -> Result<How, Fail> {
    let Some(a) = area() else {
        return Err(Fail::Kernel(b"the mprotect tracker is not running"));
    };
    if r.perms[1] != b'w' {
        // Nothing can write it without changing its protection (a new region then).
        if !streamed {
            populated(a, r.start, r.end, push)?;
        }
        return Ok(How::Scan);
    }
    if is_stack(a, r) {
        // Signal frames are written here by the kernel: never protected, shipped whole.
        populated(a, r.start, r.end, push)?;
        return Ok(How::CopyAll);
    }
    let l = Logical {
        start: r.start,
        end: r.end,
        perms: r.perms,
        prot: prot_of(&r.perms),
        reset: 0,
        offset: r.offset,
        inode: r.inode,
    };
    if !publish(a, l) {
        populated(a, r.start, r.end, push)?;
        return Ok(How::CopyAll);
    }
    // Protect first, then copy: a write after the protection is caught for next epoch.
    if !protect(a, r.start, r.end, l.prot) {
        // Out of VMAs: leave it writable, ship it whole every epoch.
        mprotect_raw(r.start, r.end - r.start, l.prot);
        let build = (a.active.load(Ordering::Acquire) & 1) ^ 1;
        a.n_table[build].fetch_sub(1, Ordering::AcqRel);
        populated(a, r.start, r.end, push)?;
        return Ok(How::CopyAll);
    }
    mark(r);
    if !streamed {
        populated(a, r.start, r.end, push)?;
    }
    Ok(How::Scan)
}

/// Splits an anonymous region's first page off (`MADV_NOHUGEPAGE`), so the region is never a
/// single VMA glibc's internal `mremap` could move (see the module notes).
fn mark(r: &Region) {
    if r.inode == 0 && r.path.is_empty() && r.end - r.start > PAGE {
        // SAFETY: madvise with a hint that changes no contents.
        let _ = unsafe {
            sc(
                libc::SYS_madvise,
                r.start,
                PAGE,
                libc::MADV_NOHUGEPAGE as u64,
                0,
            )
        };
    }
}

/// A region the tracker protected at an earlier epoch: ship the pages written since, protect
/// them again.
pub fn known(r: &Region, how: How, push: &mut Push) -> Result<Option<How>, Fail> {
    let Some(a) = area() else {
        return Ok(None);
    };
    if r.perms[1] != b'w' {
        return Ok(Some(How::Scan));
    }
    if how != How::Scan || a.overflow_now {
        return Ok(None);
    }
    let act = a.active.load(Ordering::Acquire) & 1;
    let n = a.n_table[act].load(Ordering::Acquire).min(MAX_LOGICAL);
    let Some(i) = find(&a.tables[act][..n], r.start) else {
        return Ok(None);
    };
    let l = a.tables[act][i];
    if l.start != r.start || l.end != r.end || l.reset != 0 || l.perms != r.perms {
        return Ok(None);
    }
    if !publish(a, l) {
        return Ok(None);
    }
    // SAFETY: as in all_given_back.
    let sorted = unsafe { core::slice::from_raw_parts(a.dirty.as_ptr() as *const u64, a.snap) };
    let mut i = sorted.partition_point(|&p| p < r.start);
    let mut first_dirty = false;
    while i < sorted.len() && sorted[i] < r.end {
        let s = sorted[i];
        let mut e = s + PAGE;
        i += 1;
        while i < sorted.len() && sorted[i] == e && e < r.end {
            e += PAGE;
            i += 1;
        }
        if s == r.start {
            first_dirty = true;
        }
        if !protect(a, s, e, l.prot) {
            // Out of VMAs: give the region back and resend it next epoch.
            mprotect_raw(r.start, r.end - r.start, l.prot);
            a.overflow.store(true, Ordering::Release);
        }
        push(s, e).map_err(|_| Fail::Push)?;
    }
    if first_dirty {
        mark(r);
    }
    Ok(Some(How::Scan))
}

/// End of the epoch's shipping: the table built this epoch becomes the one the fault handler
/// searches; pages recorded during the handler, and the pinned pages, are dirty for the next
/// epoch.
pub fn end_epoch() {
    let Some(a) = area() else { return };
    // SAFETY: epoch handler (see area_mut).
    let am = unsafe { area_mut() };
    let n = a.n_dirty.load(Ordering::Acquire).min(MAX_DIRTY);
    let snap = am.snap.min(n);
    let mut k = 0;
    for i in snap..n {
        let v = a.dirty[i].load(Ordering::Relaxed);
        a.dirty[k].store(v, Ordering::Relaxed);
        k += 1;
    }
    a.n_dirty.store(k, Ordering::Release);
    am.snap = 0;
    for j in 0..am.n_pinned {
        let p = am.pinned[j];
        if !p.ship {
            continue;
        }
        if (p.end - p.start) / PAGE > MAX_PINNED_PAGES {
            a.overflow.store(true, Ordering::Release);
            continue;
        }
        let mut q = p.start;
        while q < p.end {
            record(a, q);
            q += PAGE;
        }
    }
    let old = a.active.load(Ordering::Acquire) & 1;
    a.active.store(old ^ 1, Ordering::Release);
    a.n_table[old].store(0, Ordering::Release);
}

/// A hook saw `[start, start + len)` unmapped or replaced: the regions there are shipped
/// whole at the next epoch.
pub fn forget(start: u64, len: u64) {
    let Some(a) = area() else { return };
    let end = start.saturating_add(len);
    let act = a.active.load(Ordering::Acquire) & 1;
    for t in [act, act ^ 1] {
        let n = a.n_table[t].load(Ordering::Acquire).min(MAX_LOGICAL);
        let from = a.tables[t][..n].partition_point(|l| l.end <= start);
        for i in from..n {
            if a.tables[t][i].start >= end {
                break;
            }
            // SAFETY: a single word store into the table, from a hook (the epoch handler is
            // deferred around it by the caller, see state::HookDepth).
            unsafe { area_mut() }.tables[t][i].reset = 1;
        }
    }
}

/// A hook zeroed `[start, start + len)` (`MADV_DONTNEED` and friends): the pages count as
/// written.
pub fn zapped(start: u64, len: u64) {
    let Some(a) = area() else { return };
    let end = start.saturating_add(len).div_ceil(PAGE) * PAGE;
    let mut p = start & !(PAGE - 1);
    if (end - p) / PAGE > MAX_PINNED_PAGES {
        forget(start, len);
        return;
    }
    while p < end {
        if lookup(a, p).is_some() {
            record(a, p);
        }
        p += PAGE;
    }
}

/// Makes every tracked page of `[start, start + len)` writable now by writing each page's
/// own value back (the fault handler unprotects and records it), so the kernel can write
/// there. Pages outside tracked regions are not touched (an invalid buffer still gets
/// `EFAULT` from the kernel, not a `SIGSEGV` from us).
pub fn touch(start: u64, len: u64) {
    let Some(a) = area() else { return };
    if len == 0 {
        return;
    }
    let end = start.saturating_add(len);
    let mut p = start;
    while p < end {
        let Some(l) = lookup(a, p) else {
            p = (p & !(PAGE - 1)) + PAGE;
            continue;
        };
        let stop = end.min(l.end);
        while p < stop {
            let b = p as *mut u8;
            // SAFETY: p lies in a tracked region, which is mapped readable and logically
            // writable; writing back the byte just read changes nothing the program can see.
            unsafe { b.write_volatile(b.read_volatile()) };
            p = (p & !(PAGE - 1)) + PAGE;
        }
    }
}

/// Lends `[start, start + len)` to a system call: an epoch inside the call leaves it
/// writable. Returns the slot to give back to [`unlend`].
pub fn lend(start: u64, len: u64) -> Option<usize> {
    let a = area()?;
    let n = a.n_lent.load(Ordering::Acquire);
    if n >= MAX_LENT {
        return None;
    }
    a.lent[n].0.store(start, Ordering::Relaxed);
    a.lent[n]
        .1
        .store(start.saturating_add(len), Ordering::Relaxed);
    a.n_lent.store(n + 1, Ordering::Release);
    Some(n)
}

pub fn unlend(slot: Option<usize>) {
    if let (Some(a), Some(n)) = (area(), slot) {
        // Guards may drop in either order (a tuple drops front to back): keep the lowest.
        a.n_lent.fetch_min(n, Ordering::AcqRel);
    }
}

/// The program's own `mremap(MREMAP_MAYMOVE)` growing a tracked anonymous range: the range is
/// several VMAs (see the module notes), which the kernel refuses with `EFAULT`, so move it by
/// hand: map, copy, unmap. `None`: not a tracked anonymous range; let the kernel do it.
pub fn move_by_hand(old: u64, old_len: u64, new_len: u64) -> Option<u64> {
    let a = area()?;
    let l = lookup(a, old)?;
    if l.inode != 0 || old.checked_add(old_len)? > l.end || old_len == 0 {
        return None;
    }
    // SAFETY: a fresh private anonymous mapping at a kernel-chosen address.
    let new = unsafe {
        sys::raw6(
            libc::SYS_mmap,
            0,
            new_len as usize,
            l.prot as usize,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as usize,
            usize::MAX,
            0,
        )
    }
    .ok()? as u64;
    // SAFETY: old..old+old_len is mapped readable (inside a tracked region); new is a fresh
    // writable mapping at least old_len long; they do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(old as *const u8, new as *mut u8, old_len as usize) };
    // SAFETY: unmapping the program's old range, as mremap would have.
    let _ = unsafe { sys::raw6(libc::SYS_munmap, old as usize, old_len as usize, 0, 0, 0, 0) };
    Some(new)
}
