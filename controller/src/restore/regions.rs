//! Mapping the image's regions into the child and writing the image's pages into them.

use std::collections::HashMap;

use tracing::{debug, warn};

use super::inject::Tracee;
use super::layout::cstring;
use super::RestoreError;
use crate::image::{Image, Region, PAGE_SIZE};

/// The region's file path as it can be opened (without the " (deleted)" maps adds).
pub(crate) fn file_path(r: &Region) -> &str {
    r.path.strip_suffix(" (deleted)").unwrap_or(&r.path)
}

/// Memory that looks file-backed in maps but has no file to reopen: shared anonymous memory
/// (`/dev/zero (deleted)`), memfds, SysV shared memory.
fn is_pseudo_file(r: &Region) -> bool {
    r.path.starts_with("/memfd:")
        || r.path.starts_with("/SYSV")
        || (r.shared && r.path.ends_with(" (deleted)"))
}

/// Largest single write into /proc/<pid>/mem.
const MAX_BATCH: usize = 4 << 20;

pub(crate) fn map_all(t: &mut Tracee, image: &Image) -> Result<(), RestoreError> {
    let mut open_files: HashMap<String, i32> = HashMap::new();
    // On error the child is killed: no need to close anything then.
    map_regions(t, image, &mut open_files)?;
    for (_, fd) in open_files {
        t.close(fd);
    }
    Ok(())
}

fn map_regions(
    t: &mut Tracee,
    image: &Image,
    files: &mut HashMap<String, i32>,
) -> Result<(), RestoreError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut written = 0usize;
    for r in &image.regions {
        if r.is_special() {
            continue;
        }
        let prot = r.prot() as u64;
        let what = || {
            format!(
                "region {:#x}-{:#x} {} {:?}",
                r.start,
                r.end,
                perms(r),
                r.path
            )
        };
        let file_backed = r.is_file() && !is_pseudo_file(r);
        // A read-only shared file mapping (e.g. glibc's gconv cache) is mapped shared again:
        // its content is the file's, and nothing of it can be in the image.
        let shared_ro = file_backed && r.shared && !r.write;
        if r.shared && !shared_ro {
            warn!(
                region = %what(),
                "shared mapping restored as a private copy: whoever shared it with the app no longer does"
            );
        }
        if file_backed {
            let path = file_path(r);
            if path.len() != r.path.len() {
                warn!(region = %what(), "file was deleted on the primary; mapping the file now at that path");
            }
            let fd = match files.get(path) {
                Some(&fd) => fd,
                None => {
                    let c = cstring(path, "mapped file")?;
                    match t.open(&c, libc::O_RDONLY | libc::O_CLOEXEC)? {
                        Ok(fd) => {
                            files.insert(path.to_string(), fd);
                            fd
                        }
                        Err(errno) => {
                            return Err(RestoreError::MissingFile {
                                path: path.to_string(),
                                what: what(),
                                errno,
                            })
                        }
                    }
                }
            };
            t.sys(
                "mmap",
                libc::SYS_mmap,
                [
                    r.start,
                    r.len(),
                    prot,
                    (if shared_ro {
                        libc::MAP_SHARED
                    } else {
                        libc::MAP_PRIVATE
                    } | libc::MAP_FIXED) as u64,
                    fd as u64,
                    r.offset,
                ],
                what,
            )?;
        } else {
            if r.is_file() {
                warn!(region = %what(), "no file to reopen for this mapping; restoring its pages into anonymous memory");
            }
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
            if r.path == "[stack]" {
                flags |= libc::MAP_GROWSDOWN;
            }
            t.sys(
                "mmap",
                libc::SYS_mmap,
                [r.start, r.len(), prot, flags as u64, u64::MAX, 0],
                what,
            )?;
        }

        // The image's pages of this region, contiguous runs in one write. A page of an
        // anonymous region that is all zeros is what the fresh mapping holds already.
        if shared_ro {
            continue;
        }
        let mut run_start = 0u64;
        buf.clear();
        for (&addr, page) in image.pages.range(r.start..r.end) {
            if !file_backed && page.iter().all(|&b| b == 0) {
                continue;
            }
            if !buf.is_empty() && (run_start + buf.len() as u64 != addr || buf.len() >= MAX_BATCH) {
                t.write_mem(run_start, &buf)?;
                written += buf.len();
                buf.clear();
            }
            if buf.is_empty() {
                run_start = addr;
            }
            buf.extend_from_slice(page);
        }
        if !buf.is_empty() {
            t.write_mem(run_start, &buf)?;
            written += buf.len();
        }
    }
    debug!(pages = written as u64 / PAGE_SIZE, "wrote image pages");
    Ok(())
}

fn perms(r: &Region) -> String {
    let mut s = String::with_capacity(4);
    s.push(if r.read { 'r' } else { '-' });
    s.push(if r.write { 'w' } else { '-' });
    s.push(if r.exec { 'x' } else { '-' });
    s.push(if r.shared { 's' } else { 'p' });
    s
}
