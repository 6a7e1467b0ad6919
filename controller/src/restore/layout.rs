//! Address-space layout: choosing free ranges, clearing the child's inherited mappings, and
//! moving the kernel's special mappings (vvar, vvar_vclock, vdso) to the image's addresses.

use std::ffi::CString;

use tracing::debug;

use super::inject::Tracee;
use super::RestoreError;
use crate::image::{Region, PAGE_SIZE};

/// Lowest address we ever pick (above the usual mmap_min_addr).
const LOW: u64 = 0x1_0000_0000;
/// x86-64 user space with 4-level page tables ends here.
const HIGH: u64 = 0x7fff_ffff_f000;

/// The special mappings that can and must move, in the kernel's order.
const MOVABLE: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

pub(crate) fn cstring(s: &str, what: &str) -> Result<CString, RestoreError> {
    CString::new(s.as_bytes())
        .map_err(|_| RestoreError::Unsupported(format!("{what} {s:?} contains a NUL byte")))
}

/// A page-aligned range of `len` bytes in `[LOW, HIGH)` overlapping none of `busy`: the
/// middle of the largest gap, so that nothing of the image is adjacent to it.
pub(crate) fn find_free(busy: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut b: Vec<(u64, u64)> = busy
        .iter()
        .copied()
        .filter(|&(s, e)| e > LOW && s < HIGH)
        .collect();
    b.sort_unstable();
    let mut best: Option<(u64, u64)> = None; // (gap start, gap len)
    let mut cur = LOW;
    for (s, e) in b.into_iter().chain(std::iter::once((HIGH, HIGH))) {
        if s > cur {
            let gap = s - cur;
            if gap >= len && best.is_none_or(|(_, l)| gap > l) {
                best = Some((cur, gap));
            }
        }
        cur = cur.max(e);
    }
    let (start, gap) = best?;
    let mid = start + (gap - len) / 2;
    Some(mid & !(PAGE_SIZE - 1))
}

fn is_movable(r: &Region) -> bool {
    MOVABLE.contains(&r.path.as_str())
}

/// Unmaps every mapping the child inherited from the daemon except the injection area, the
/// movable special mappings and `[vsyscall]` (which cannot be unmapped).
pub(crate) fn clear_address_space(t: &mut Tracee, own: &[Region]) -> Result<(), RestoreError> {
    let inj = (t.code, t.code + t.area_len);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for r in own {
        if r.path == "[vsyscall]" || is_movable(r) || (r.start < inj.1 && inj.0 < r.end) {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => ranges.push((r.start, r.end)),
        }
    }
    for (s, e) in ranges {
        t.sys("munmap", libc::SYS_munmap, [s, e - s, 0, 0, 0, 0], || {
            format!("removing the daemon's mapping {s:#x}-{e:#x} from the restore child")
        })?;
    }
    Ok(())
}

/// Moves `[vvar]`, `[vvar_vclock]` and `[vdso]` together (relative offsets kept: the vdso
/// code reaches its data pages relative to itself) to where the image had them; unmaps them
/// if the image has none. A different layout (another kernel) is an error: the app's libc has
/// pointers into the vdso it was started with.
pub(crate) fn move_specials(
    t: &mut Tracee,
    own: &[Region],
    image: &[Region],
) -> Result<(), RestoreError> {
    let cur: Vec<&Region> = own.iter().filter(|r| is_movable(r)).collect();
    let want: Vec<&Region> = image.iter().filter(|r| is_movable(r)).collect();
    if want.is_empty() {
        for r in &cur {
            t.sys(
                "munmap",
                libc::SYS_munmap,
                [r.start, r.len(), 0, 0, 0, 0],
                || format!("removing {} (the image has none)", r.path),
            )?;
        }
        return Ok(());
    }
    let describe = |v: &[&Region]| {
        v.iter()
            .map(|r| format!("{} {:#x} bytes", r.path, r.len()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same_shape = cur.len() == want.len()
        && cur.iter().zip(&want).all(|(c, w)| {
            c.path == w.path
                && c.len() == w.len()
                && w.start.wrapping_sub(c.start) == want[0].start.wrapping_sub(cur[0].start)
        });
    if !same_shape {
        return Err(RestoreError::Unsupported(format!(
            "the image's kernel mappings ({}) do not match this kernel's ({}): was the image made on another kernel version?",
            describe(&want),
            describe(&cur)
        )));
    }
    let cur_block = (cur[0].start, cur[cur.len() - 1].end);
    let want_block = (want[0].start, want[want.len() - 1].end);
    if cur_block == want_block {
        return Ok(());
    }
    let len = cur_block.1 - cur_block.0;
    let mut from = cur_block.0;
    if want_block.0 < cur_block.1 && cur_block.0 < want_block.1 {
        // Overlapping: go through a free spot first.
        let busy = [cur_block, want_block, (t.code, t.code + t.area_len)];
        let tmp = find_free(&busy, len).ok_or(RestoreError::NoAddressSpace {
            len,
            what: "moving the vdso",
        })?;
        move_block(t, &cur, from, tmp)?;
        from = tmp;
    }
    move_block(t, &cur, from, want_block.0)?;
    debug!(
        from = format_args!("{:#x}", cur_block.0),
        to = format_args!("{:#x}", want_block.0),
        "moved vvar/vdso"
    );
    Ok(())
}

/// Moves the block of special mappings `regs` (currently starting at `from`) to `to`.
fn move_block(t: &mut Tracee, regs: &[&Region], from: u64, to: u64) -> Result<(), RestoreError> {
    let base = regs[0].start;
    for r in regs {
        let old = from + (r.start - base);
        let new = to + (r.start - base);
        let len = r.len();
        t.sys(
            "mremap",
            libc::SYS_mremap,
            [
                old,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                new,
                0,
            ],
            || format!("moving {} from {old:#x} to {new:#x}", r.path),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_free_picks_the_middle_of_the_largest_gap() {
        let busy = [(LOW, LOW + 0x10000), (0x7000_0000_0000, HIGH)];
        let a = find_free(&busy, 0x3000).unwrap();
        assert!(a > LOW + 0x10000 && a + 0x3000 < 0x7000_0000_0000);
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(find_free(&[(0, u64::MAX)], 0x1000).is_none());
    }
}
