//! The backlog the app gave `listen` for each descriptor (restore listens with the same; 0: not
//! seen, restore uses `SOMAXCONN`). Written by the `listen` hook, read by the epoch capture.

use core::sync::atomic::{AtomicI32, Ordering};

const MAX_BACKLOG_FDS: usize = 4096;
static BACKLOGS: [AtomicI32; MAX_BACKLOG_FDS] = [const { AtomicI32::new(0) }; MAX_BACKLOG_FDS];

/// `listen(fd, backlog)` succeeded.
pub fn record(fd: i32, backlog: i32) {
    if fd >= 0 && (fd as usize) < MAX_BACKLOG_FDS {
        BACKLOGS[fd as usize].store(backlog.max(1), Ordering::Relaxed);
    }
}

/// The backlog recorded for `fd` (0: none).
pub fn get(fd: i32) -> i32 {
    if fd >= 0 && (fd as usize) < MAX_BACKLOG_FDS {
        BACKLOGS[fd as usize].load(Ordering::Relaxed)
    } else {
        0
    }
}
