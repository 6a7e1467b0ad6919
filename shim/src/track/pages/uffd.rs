//! The uffd tracker: regions registered with userfaultfd async write-protect, their written
//! pages read (and re-armed) with `PAGEMAP_SCAN` (the kernel interfaces are in
//! [`crate::kernel::uffd`] and [`crate::kernel::pagemap`]).

use super::{Fail, How, Push, Region};
use crate::kernel::pagemap::{self, PageRegion, Query};
use crate::kernel::uffd::{register_wp, write_protect};

/// A region registered at an earlier epoch: ship what `PAGEMAP_SCAN` says was written and
/// re-protect it in the same call.
pub fn known(
    pm: i32,
    r: &Region,
    how: How,
    vec: &mut [PageRegion],
    push: &mut Push,
) -> Result<Option<How>, Fail> {
    if how != How::Scan {
        return Ok(None); // CopyAll: shipped whole, as new, every epoch
    }
    match pagemap::scan(
        pm,
        r.start,
        r.end,
        Query::WrittenAndReprotect,
        vec,
        |a, b| push(a, b).map_err(|_| -1),
    ) {
        Ok(()) => Ok(Some(How::Scan)),
        Err(-1) => Err(Fail::Push),
        // EPERM: the range is no longer registered: it was unmapped and mapped again
        // behind our back. Treat it as new.
        Err(_) => Ok(None),
    }
}

/// A region new to the tracker: ship every populated page, then register it for tracking.
pub fn new_region(
    pm: i32,
    uffd: i32,
    r: &Region,
    vec: &mut [PageRegion],
    push: &mut Push,
    streamed: bool,
) -> Result<How, Fail> {
    // Copy before registering: write-protecting puts a marker in every unpopulated page's
    // entry (WP_UNPOPULATED), and PAGEMAP_SCAN counts markers as swapped, i.e. populated.
    if !streamed {
        populated(pm, r, vec, push)?;
    }
    if register_wp(uffd, r.start, r.end).is_ok() && write_protect(uffd, r.start, r.end).is_ok() {
        return Ok(How::Scan); // streamed: the controller reads the pages
    }
    if streamed {
        populated(pm, r, vec, push)?; // not followed: every epoch ships it whole, this one too
    }
    Ok(How::CopyAll)
}

/// Ships the populated pages of `r`.
fn populated(pm: i32, r: &Region, vec: &mut [PageRegion], push: &mut Push) -> Result<(), Fail> {
    match pagemap::scan(pm, r.start, r.end, Query::Populated, vec, |a, b| {
        push(a, b).map_err(|_| -1)
    }) {
        Ok(()) => Ok(()),
        Err(-1) => Err(Fail::Push),
        Err(_) => Err(Fail::Kernel(b"PAGEMAP_SCAN failed on a mapping")),
    }
}
