//! Where the pause goes: with `REMUS_PAUSE_PROFILE=N` (N > 0) the capture adds the
//! `CLOCK_MONOTONIC` time of each of its phases into static counters and, every N epochs,
//! writes one line of averages (ns per epoch) to the program's standard error, then starts
//! over. Off (the default), each mark is one relaxed load. No allocation, no lock: the line is
//! built in a stack buffer and written with one raw `write`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::line::Line;
use crate::kernel::sys;

/// The capture's phases, in the order they run.
#[derive(Clone, Copy)]
pub enum Phase {
    Threads = 0,
    MapCheck,
    Pages,
    Fds,
    Kobj,
    Files,
    Header,
    Notify,
    /// (Inside `Pages`, map unchanged: the scan for tracked memory no longer registered.)
    Unregistered,
    /// (Likewise: regions shipped whole again.)
    Renewed,
}

const NAMES: [&[u8]; 10] = [
    b"threads",
    b"map_check",
    b"pages",
    b"fds",
    b"kobj",
    b"files",
    b"header",
    b"notify",
    b"unregistered",
    b"renewed",
];

/// Epochs between two lines (0: off).
static EVERY: AtomicU64 = AtomicU64::new(0);
static SUMS: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];

static EPOCHS: AtomicU64 = AtomicU64::new(0);
/// Epochs in this window that asked the kernel for the VMA list, that read the maps text,
/// that listed the descriptor table.
static LISTED_VMAS: AtomicU64 = AtomicU64::new(0);
static FULL_MAPS: AtomicU64 = AtomicU64::new(0);
static FULL_FDS: AtomicU64 = AtomicU64::new(0);

/// Start-up: a line every `every` epochs.
pub fn enable(every: u64) {
    EVERY.store(every, Ordering::Relaxed);
}

/// Whether marks are being taken.
#[inline]
pub fn on() -> bool {
    EVERY.load(Ordering::Relaxed) != 0
}

/// A phase that began at `*t` ends now; `*t` becomes now (the next phase's start).
#[inline]
pub fn mark(p: Phase, t: &mut u64) {
    if !on() {
        return;
    }
    let now = sys::monotonic_ns();
    SUMS[p as usize].fetch_add(now.saturating_sub(*t), Ordering::Relaxed);
    *t = now;
}

/// What this epoch listed: the VMAs, the maps text, the descriptor table.
pub fn full(vmas: bool, maps: bool, fds: bool) {
    if !on() {
        return;
    }
    LISTED_VMAS.fetch_add(vmas as u64, Ordering::Relaxed);
    FULL_MAPS.fetch_add(maps as u64, Ordering::Relaxed);
    FULL_FDS.fetch_add(fds as u64, Ordering::Relaxed);
}

/// End of an epoch: every N, the line.
pub fn epoch_done() {
    let every = EVERY.load(Ordering::Relaxed);
    if every == 0 {
        return;
    }
    let n = EPOCHS.fetch_add(1, Ordering::Relaxed) + 1;
    if n < every {
        return;
    }
    let mut l = Line::<512>::new();
    l.push(b"remus pause profile: epochs=").num(n);
    let mut total = 0;
    for (i, s) in SUMS.iter().enumerate() {
        let v = s.swap(0, Ordering::Relaxed) / n;
        total += v;
        l.push(b" ").push(NAMES[i]).push(b"=").num(v);
    }
    l.push(b" total=").num(total);
    l.push(b" listed_vmas=")
        .num(LISTED_VMAS.swap(0, Ordering::Relaxed))
        .push(b" full_maps=")
        .num(FULL_MAPS.swap(0, Ordering::Relaxed))
        .push(b" full_fds=")
        .num(FULL_FDS.swap(0, Ordering::Relaxed))
        .push(b"\n");
    EPOCHS.store(0, Ordering::Relaxed);
    let _ = sys::write_all(2, l.as_bytes());
}
