//! `ioctl(/proc/self/maps, PROCMAP_QUERY)` (Linux 6.11+): the process's VMAs one by one,
//! without formatting the maps text. The epoch handler uses it to see, cheaply, whether the
//! map changed since the last epoch; only then does it read and parse the text.
//!
//! Layout from the kernel's `include/uapi/linux/fs.h` (not in this machine's headers).

use super::sys;

const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;
/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 =
    (3 << 30) | ((core::mem::size_of::<ProcmapQuery>() as u64) << 16) | ((b'f' as u64) << 8) | 17;

#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// What identifies a VMA for "has the map changed?".
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
    pub offset: u64,
    pub inode: u64,
}

/// Fills `out` with the VMAs in address order. `Err(ENOSPC)` if there are more than fit;
/// other errors if the kernel has no PROCMAP_QUERY (the caller then reads the text).
pub fn list(maps_fd: i32, out: &mut [Vma]) -> Result<usize, i32> {
    let mut n = 0;
    let mut addr = 0u64;
    loop {
        let mut q = ProcmapQuery {
            size: core::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
            query_addr: addr,
            ..Default::default()
        };
        // SAFETY: PROCMAP_QUERY reads and writes one ProcmapQuery; no name or build-id buffer
        // is passed (sizes 0).
        match unsafe { sys::ioctl(maps_fd, PROCMAP_QUERY, &mut q) } {
            Ok(_) => {}
            Err(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        if n == out.len() {
            return Err(libc::ENOSPC);
        }
        out[n] = Vma {
            start: q.vma_start,
            end: q.vma_end,
            flags: q.vma_flags,
            offset: q.vma_offset,
            inode: q.inode,
        };
        n += 1;
        if q.vma_end <= addr {
            return Err(libc::EIO);
        }
        addr = q.vma_end;
    }
}
