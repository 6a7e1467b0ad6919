//! A full image streamed while the program runs (the first image of a connection, a resync,
//! a rejoin): the pause ships no page contents of the regions it starts following, and remusd
//! reads them from the running program between epochs, a bounded batch at a time.
//!
//! ```text
//! epoch e (streamed): the shim registers every region with the tracker and ships its reset
//!                     range; those ranges become `pending`
//! before signalling e+1: read up to BATCH_PAGES present pages of `pending` (pagemap, then
//!                     process_vm_readv); they belong to epoch e+1
//! epoch e+1 arrives:  batch pages the shim shipped itself (written since e) are dropped:
//!                     the shim's copy is newer; so are pages under a reset of e+1 or outside
//!                     its regions (the memory changed); the rest go out with e+1
//! ```
//!
//! Only epoch e streams: a region new in a later epoch ships whole in its pause, as it would
//! at any time. So `pending` only shrinks (by at least one batch an epoch, or by what the
//! program unmaps), and the stream ends however fast the program maps and unmaps memory.
//!
//! Why a batch page belongs to epoch e+1: it was read after the pause of epoch e re-armed the
//! tracker and before the pause of e+1. If the program wrote the page in between (before or
//! after the read), the tracker reports it at e+1 and the shim's copy replaces the batch's;
//! if not, the page held the same bytes from the read to the checkpoint of e+1. So every epoch
//! on the standby is a consistent mix of "complete" and "not yet sent" pages, and the first
//! epoch at which nothing is pending (`EpochMeta::partial == false`) is a complete image.
//!
//! While anything is pending the standby cannot restore the image, so the acks of partial
//! epochs release no output (`Primary::release_from`).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::image::EpochMeta;
use crate::wire::messages::PageBytes;

const PAGE: u64 = remus_abi::PAGE_SIZE as u64;

/// Pages read per epoch interval by default (8 MiB): the encoder compresses them on its own
/// thread while the program runs; the epoch loop spends a few milliseconds reading them.
pub const BATCH_PAGES: usize = 2048;
/// Pagemap entries looked at per batch, per page of the batch (sparse regions: most pages
/// are not present).
const SCAN_PER_PAGE: u64 = 64;
/// A page that could not be read this many batches in a row, while its region stayed
/// mapped, ends streaming (the image is then taken in one pause).
const MAX_FAILURES: u32 = 3;

/// Why streaming cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot open /proc/{pid}/pagemap: {err}")]
    Pagemap { pid: i32, err: std::io::Error },
    #[error(
        "reading the program's memory at {addr:#x} failed {times} times in a row (last: {err})"
    )]
    Read {
        addr: u64,
        times: u32,
        err: std::io::Error,
    },
    #[error("process_vm_readv is not permitted on pid {pid}: {err}")]
    NotPermitted { pid: i32, err: std::io::Error },
}

/// Pages read for one epoch, not yet shipped.
struct Batch {
    epoch: u64,
    pages: BTreeMap<u64, Vec<u8>>,
}

/// One streamed full image.
pub struct Stream {
    pid: i32,
    /// Pages read per batch at most.
    batch_pages: usize,
    pagemap: Option<File>,
    /// Page ranges not read yet: sorted, disjoint, page-aligned.
    pending: Vec<(u64, u64)>,
    batch: Option<Batch>,
    /// The first page that failed to read, and how many batches in a row it did.
    failing: Option<(u64, u32)>,
    /// Pages read and shipped with an epoch (not dropped).
    pub pages_shipped: u64,
    /// Pages read and dropped (written again, or their memory changed).
    pub pages_dropped: u64,
    /// Pages read as zeros (not sent: see `read_batch`).
    pub pages_zero: u64,
    /// Batches read.
    pub batches: u64,
    /// The epoch whose pause started the stream (its resets are the first pending ranges).
    pub first_epoch: Option<u64>,
    /// The largest number of pages the shim copied in one pause while streaming, and the
    /// longest pause (the shim's own measure).
    pub max_pause_pages: u64,
    pub max_pause_ns: u64,
    /// Output flows unprotected while the image streams (a resync after the standby was
    /// declared gone); held again from the epoch that completes it.
    pub unheld: bool,
}

impl Stream {
    pub fn new(pid: i32, batch_pages: usize) -> Stream {
        Stream {
            pid,
            batch_pages: batch_pages.max(1),
            pagemap: None,
            pending: Vec::new(),
            batch: None,
            failing: None,
            pages_shipped: 0,
            pages_dropped: 0,
            pages_zero: 0,
            batches: 0,
            first_epoch: None,
            max_pause_pages: 0,
            max_pause_ns: 0,
            unheld: false,
        }
    }

    /// Pages in ranges not read yet (present or not).
    pub fn pending_pages(&self) -> u64 {
        self.pending.iter().map(|(s, e)| (e - s) / PAGE).sum()
    }

    /// The status's view: `complete` is the epoch that completed the image, once one did.
    pub fn progress(&self, complete: Option<u64>) -> crate::control::status::ImageStream {
        crate::control::status::ImageStream {
            pending_pages: self.pending_pages(),
            pages_read: self.pages_shipped,
            batches: self.batches,
            max_pause_pages: self.max_pause_pages,
            max_pause_us: self.max_pause_ns / 1000,
            complete_epoch: complete,
        }
    }

    /// Whether everything was read and shipped.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty() && self.batch.is_none()
    }

    /// Reads the next batch for `epoch` (the epoch about to be signalled), unless one is
    /// waiting already. Returns whether anything is still pending after it (when not, the
    /// epoch about to be taken can be an ordinary one: its new regions ship in the pause).
    pub fn read_batch(&mut self, epoch: u64) -> Result<bool, StreamError> {
        if self.first_epoch.is_none() {
            return Ok(true); // the epoch that starts the stream: nothing to read yet
        }
        if self.batch.is_some() || self.pending.is_empty() {
            return Ok(!self.pending.is_empty());
        }
        if self.pagemap.is_none() {
            let path = format!("/proc/{}/pagemap", self.pid);
            self.pagemap =
                Some(File::open(&path).map_err(|err| StreamError::Pagemap { pid: self.pid, err })?);
        }
        let pm = self.pagemap.as_ref().expect("opened above");
        // Which pages to read: present (or swapped) ones, from the front of `pending`.
        let (max, scan_max) = (self.batch_pages, SCAN_PER_PAGE * self.batch_pages as u64);
        let mut want: Vec<u64> = Vec::with_capacity(max);
        let mut scanned = 0u64;
        let mut entries = vec![0u8; 512 * 8];
        while want.len() < max && scanned < scan_max {
            let Some(&(s, e)) = self.pending.first() else {
                break;
            };
            let n = ((e - s) / PAGE).min(512).min(scan_max - scanned);
            let buf = &mut entries[..n as usize * 8];
            let ok = pm.read_exact_at(buf, s / PAGE * 8).is_ok();
            let mut taken = 0u64;
            for (i, w) in buf.chunks_exact(8).enumerate() {
                if want.len() == max {
                    break;
                }
                let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
                // Bit 63: present; bit 62: swapped, which includes the tracker's write-protect
                // markers on pages never populated (they read as zeros, dropped below). A page
                // that cannot be listed is read anyway (a failed read comes back to
                // `pending`).
                if !ok || v & (3 << 62) != 0 {
                    want.push(s + i as u64 * PAGE);
                }
                taken += 1;
            }
            scanned += taken;
            let cut = s + taken * PAGE;
            if cut >= e {
                self.pending.remove(0);
            } else {
                self.pending[0].0 = cut;
            }
        }
        self.batches += 1;
        let mut pages = BTreeMap::new();
        let mut failed: Option<(u64, std::io::Error)> = None;
        for run in runs(&want) {
            let (start, n) = run;
            let mut buf = vec![0u8; n as usize * PAGE as usize];
            match read_remote(self.pid, start, &mut buf) {
                Ok(got) => {
                    let whole = got / PAGE as usize;
                    for (i, page) in buf.chunks_exact(PAGE as usize).take(whole).enumerate() {
                        // A page of zeros need not go: the standby forgot the range (reset)
                        // and holds either nothing there (zeros at restore) or the copy of
                        // the last epoch that found the page written, which is its content
                        // now unless the program wrote it again, and then this epoch's own
                        // copy replaces the batch's anyway.
                        if page.iter().all(|&b| b == 0) {
                            self.pages_zero += 1;
                            continue;
                        }
                        pages.insert(start + i as u64 * PAGE, page.to_vec());
                    }
                    if (whole as u64) < n {
                        let at = start + whole as u64 * PAGE;
                        failed.get_or_insert((at, std::io::Error::from_raw_os_error(libc::EFAULT)));
                        self.give_back(at, start + n * PAGE);
                    }
                }
                Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
                    return Err(StreamError::NotPermitted { pid: self.pid, err });
                }
                Err(err) => {
                    failed.get_or_insert((start, err));
                    self.give_back(start, start + n * PAGE);
                }
            }
        }
        match failed {
            None => self.failing = None,
            Some((addr, err)) => {
                let times = match self.failing {
                    Some((a, t)) if a == addr => t + 1,
                    _ => 1,
                };
                if times >= MAX_FAILURES {
                    return Err(StreamError::Read { addr, times, err });
                }
                self.failing = Some((addr, times));
            }
        }
        self.batch = Some(Batch { epoch, pages });
        Ok(!self.pending.is_empty())
    }

    /// Puts `[s, e)` back into `pending` (a read that failed is tried again next batch, unless
    /// the next epoch shows its memory gone).
    fn give_back(&mut self, s: u64, e: u64) {
        let i = self.pending.partition_point(|r| r.0 < s);
        self.pending.insert(i, (s, e));
        self.pending = merge(std::mem::take(&mut self.pending));
    }

    /// The shim shipped these pages of `epoch` itself: its copies are the newer ones.
    pub fn shipped_by_shim<'a>(&mut self, epoch: u64, addrs: impl Iterator<Item = &'a u64>) {
        if let Some(b) = self.batch.as_mut().filter(|b| b.epoch == epoch) {
            for a in addrs {
                if b.pages.remove(a).is_some() {
                    self.pages_dropped += 1;
                }
            }
        }
    }

    /// `epoch` ended (its metadata is `meta`; `streamed`: the shim took it with
    /// `remus_abi::STREAM_OFF` set, `shim_pages`: pages it copied in the pause). Returns the
    /// batch pages that go out with it and sets `meta.partial`.
    pub fn commit(
        &mut self,
        epoch: u64,
        meta: &mut EpochMeta,
        streamed: bool,
        shim_pages: u64,
    ) -> Vec<(u64, PageBytes)> {
        self.first_epoch.get_or_insert(epoch);
        self.max_pause_pages = self.max_pause_pages.max(shim_pages);
        self.max_pause_ns = self.max_pause_ns.max(meta.pause_ns);
        let mut regions: Vec<(u64, u64)> = crate::image::parse_maps(&meta.maps)
            .map(|r| r.iter().map(|r| (r.start, r.end)).collect())
            .unwrap_or_default();
        regions.sort_unstable();
        let regions = merge(regions);
        let resets = merge({
            let mut r = meta.resets.clone();
            r.sort_unstable();
            r
        });
        let batch = self.batch.take();
        let mut out = Vec::new();
        if let Some(b) = batch {
            if b.epoch == epoch {
                for (a, p) in b.pages {
                    if inside(&regions, a) && !inside(&resets, a) {
                        out.push((a, PageBytes(p)));
                    } else {
                        self.pages_dropped += 1;
                    }
                }
            } else {
                // Read for an epoch that never came (dropped): read again.
                self.pages_dropped += b.pages.len() as u64;
                for a in b.pages.keys() {
                    self.give_back(*a, *a + PAGE);
                }
            }
        }
        self.pages_shipped += out.len() as u64;
        // What is still to be read: not reset (shipped whole, or pending again below), and
        // still mapped.
        let pending = subtract(&std::mem::take(&mut self.pending), &resets);
        self.pending = intersect(&pending, &regions);
        if streamed {
            let mut p = std::mem::take(&mut self.pending);
            p.extend(intersect(&resets, &regions));
            p.sort_unstable();
            self.pending = merge(p);
        }
        meta.partial = !self.pending.is_empty();
        out
    }
}

/// Runs of consecutive pages in a sorted address list: (first page, count).
fn runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &a in pages {
        match out.last_mut() {
            Some((s, n)) if *s + *n * PAGE == a => *n += 1,
            _ => out.push((a, 1)),
        }
    }
    out
}

/// Sorted ranges with overlapping or touching ones joined.
fn merge(sorted: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (s, e) in sorted {
        if s >= e {
            continue;
        }
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn inside(ranges: &[(u64, u64)], a: u64) -> bool {
    let i = ranges.partition_point(|r| r.0 <= a);
    i > 0 && a < ranges[i - 1].1
}

/// `a` minus `b` (both sorted and disjoint).
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut s, e) in a {
        for &(bs, be) in b.iter().skip(b.partition_point(|r| r.1 <= s)) {
            if bs >= e {
                break;
            }
            if bs > s {
                out.push((s, bs));
            }
            s = s.max(be);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// `a` within `b` (both sorted and disjoint).
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Reads `buf.len()` bytes of the program's memory at `addr`. Returns how many were read
/// (short when a page is gone).
fn read_remote(pid: i32, addr: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which we own mutably for the call; `remote` is only
    // dereferenced by the kernel, in the other process, with its own checks.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        let a = vec![(0, 100), (200, 300)];
        assert_eq!(
            subtract(&a, &[(50, 60), (250, 400)]),
            vec![(0, 50), (60, 100), (200, 250)]
        );
        assert_eq!(subtract(&a, &[]), a);
        assert_eq!(subtract(&a, &[(0, 1000)]), vec![]);
        assert_eq!(intersect(&a, &[(50, 250)]), vec![(50, 100), (200, 250)]);
        assert_eq!(
            merge(vec![(0, 10), (10, 20), (15, 18), (30, 40)]),
            vec![(0, 20), (30, 40)]
        );
        assert_eq!(runs(&[0, PAGE, 3 * PAGE]), vec![(0, 2), (3 * PAGE, 1)]);
        assert!(inside(&a, 0) && inside(&a, 299) && !inside(&a, 100) && !inside(&a, 150));
    }

    fn meta(maps: &str, resets: Vec<(u64, u64)>) -> EpochMeta {
        EpochMeta {
            maps: maps.into(),
            resets,
            ..Default::default()
        }
    }

    /// Streams this test process's own memory: a buffer written before the stream starts
    /// arrives through the batches; a page the "shim" shipped itself in the next epoch is not
    /// sent twice; the image is complete once nothing is pending.
    #[test]
    fn streams_own_memory_in_batches() {
        let n = BATCH_PAGES * 2 + 10;
        let mut buf = vec![0u8; n * PAGE as usize + PAGE as usize];
        let off = (PAGE as usize - (buf.as_ptr() as usize % PAGE as usize)) % PAGE as usize;
        let base = buf.as_ptr() as u64 + off as u64;
        // Every 7th page is written with zeros: present, but not worth sending.
        let value = |i: usize| if i % 7 == 3 { 0 } else { (i % 251) as u8 + 1 };
        for i in 0..n {
            // SAFETY: in bounds; a volatile write so that the zero store faults the page in.
            unsafe {
                std::ptr::write_volatile(buf.as_mut_ptr().add(off + i * PAGE as usize), value(i))
            };
        }
        let zeros = (0..n).filter(|&i| value(i) == 0).count();
        let end = base + n as u64 * PAGE;
        let maps = format!("{base:x}-{end:x} rw-p 00000000 00:00 0\n");
        let mut st = Stream::new(std::process::id() as i32, BATCH_PAGES);
        // Epoch 1: the region is new and streamed.
        let mut m1 = meta(&maps, vec![(base, end)]);
        assert!(st.commit(1, &mut m1, true, 0).is_empty());
        assert!(m1.partial);
        assert_eq!(st.pending_pages(), n as u64);
        let mut got = BTreeMap::new();
        let mut epoch = 2;
        loop {
            let more = st.read_batch(epoch).expect("read");
            // The "shim" reports page 0 written in every epoch.
            st.shipped_by_shim(epoch, [base].iter());
            let mut m = meta(&maps, vec![]);
            let out = st.commit(epoch, &mut m, more, 1);
            assert!(out.len() <= BATCH_PAGES);
            for (a, p) in out {
                assert!(got.insert(a, p.0).is_none(), "page {a:#x} sent twice");
            }
            assert_eq!(m.partial, more, "epoch {epoch}");
            if !more {
                break;
            }
            epoch += 1;
            assert!(epoch < 10, "the stream never ended");
        }
        assert!(st.is_done());
        assert_eq!(
            got.len(),
            n - 1 - zeros,
            "every page but the one the shim shipped and the zero ones"
        );
        assert_eq!(st.pages_zero, zeros as u64);
        for (a, p) in &got {
            let i = ((a - base) / PAGE) as usize;
            assert_eq!(p[0], value(i), "page {i}");
        }
    }

    /// Batch pages under a reset of their epoch, or outside its regions, are not sent; a
    /// reset region of a streamed epoch is pending again.
    #[test]
    fn drops_pages_whose_memory_changed() {
        let mut buf = vec![1u8; 8 * PAGE as usize];
        let off = (PAGE as usize - (buf.as_ptr() as usize % PAGE as usize)) % PAGE as usize;
        buf[off..].fill(7);
        let base = buf.as_ptr() as u64 + off as u64;
        let end = base + 4 * PAGE;
        let maps = format!("{base:x}-{end:x} rw-p 00000000 00:00 0\n");
        let mut st = Stream::new(std::process::id() as i32, BATCH_PAGES);
        st.commit(1, &mut meta(&maps, vec![(base, end)]), true, 0);
        st.read_batch(2).expect("read");
        // Epoch 2: the first page was mapped again (reset), the last is unmapped.
        let maps2 = format!("{base:x}-{:x} rw-p 00000000 00:00 0\n", end - PAGE);
        let mut m2 = meta(&maps2, vec![(base, base + PAGE)]);
        let out = st.commit(2, &mut m2, true, 0);
        let addrs: Vec<u64> = out.iter().map(|(a, _)| *a).collect();
        assert_eq!(addrs, vec![base + PAGE, base + 2 * PAGE]);
        assert!(out.iter().all(|(_, p)| p.0.iter().all(|&b| b == 7)));
        assert!(m2.partial, "the reset page is pending again");
        assert_eq!(st.pending_pages(), 1);
    }
}
