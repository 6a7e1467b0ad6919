//! `ioctl(/proc/self/pagemap, PAGEMAP_SCAN)`: which pages of a range were written since they
//! were last write-protected, re-protecting them in the same call.
//!
//! Layouts from the kernel's `include/uapi/linux/fs.h` (not in this machine's headers).

use super::sys;

pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((core::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// One run of pages with the same categories.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// What to ask for.
#[derive(Clone, Copy)]
pub enum Query {
    /// Pages written since the last protection; re-protect them. Fails with `EPERM` if part of
    /// the range is not registered for async write-protect.
    WrittenAndReprotect,
    /// Pages that hold data (present or swapped out); protection unchanged.
    Populated,
    /// Like `WrittenAndReprotect`, but VMAs not registered for async write-protect are skipped
    /// silently: one call covers many regions.
    WrittenSkipUnregistered,
    /// The ranges of VMAs that are *not* registered for async write-protect (no page data).
    Unregistered,
}

/// Scans `[start, end)` and calls `f` for each run, refilling `vec` as often as needed.
pub fn scan(
    pagemap: i32,
    start: u64,
    end: u64,
    q: Query,
    vec: &mut [PageRegion],
    mut f: impl FnMut(u64, u64) -> Result<(), i32>,
) -> Result<(), i32> {
    let mut from = start;
    while from < end {
        let (flags, mask, anyof, ret) = match q {
            Query::WrittenAndReprotect => (
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                PAGE_IS_WRITTEN,
                0,
                PAGE_IS_WRITTEN,
            ),
            Query::Populated => (
                0,
                0,
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ),
            Query::WrittenSkipUnregistered => {
                (PM_SCAN_WP_MATCHING, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN)
            }
            Query::Unregistered => (0, PAGE_IS_WPALLOWED, 0, PAGE_IS_WPALLOWED),
        };
        let inverted = if matches!(q, Query::Unregistered) {
            PAGE_IS_WPALLOWED
        } else {
            0
        };
        let mut arg = PmScanArg {
            size: core::mem::size_of::<PmScanArg>() as u64,
            flags,
            start: from,
            end,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            max_pages: 0,
            category_inverted: inverted,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: ret,
        };
        // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most vec_len PageRegions into `vec`.
        let n = unsafe { sys::ioctl(pagemap, PAGEMAP_SCAN, &mut arg) }? as usize;
        for r in &vec[..n.min(vec.len())] {
            f(r.start, r.end)?;
        }
        if arg.walk_end <= from {
            break;
        }
        from = arg.walk_end;
    }
    Ok(())
}
