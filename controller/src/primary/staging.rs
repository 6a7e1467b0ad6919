//! Reading the shim's staging area (layout in `remus_abi`'s crate docs).
//!
//! The shim writes the area only while the controller is not reading it (it waits for
//! `Drained` before reusing it, and the controller never signals a new epoch before the last
//! chunk of the previous one is copied out), so everything here copies the data out at once
//! and never keeps references into the mapping.

use std::fs::File;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use remus_abi::{
    FdRecord, ResetRange, StagingHeader, ThreadRecord, ABI_VERSION, ADDRS_OFF, CHUNK_PAGES,
    CWD_MAX, DATA_OFF, FDS_OFF, FD_PATH_MAX, MAPS_OFF, MAX_AUXV_WORDS, MAX_FDS, MAX_MAPS_BYTES,
    MAX_RESETS, MAX_THREADS, PAGE_SIZE, RESETS_OFF, STAGING_MAGIC, STAGING_SIZE, THREADS_OFF,
};
use thiserror::Error;

use crate::image::{EpochMeta, EpollRegistration, FdEntry, KernelObject, SocketInfo};
use crate::wire::messages::PageBytes;

#[derive(Debug, Error)]
pub enum ReadStagingError {
    #[error("staging memfd: {0}")]
    Io(#[from] std::io::Error),
    #[error("staging memfd is {got} bytes, the ABI needs {need}: the shim and remusd are from different builds")]
    TooSmall { got: u64, need: u64 },
    #[error("staging header has magic {0:#x}, expected {STAGING_MAGIC:#x}")]
    BadMagic(u64),
    #[error("staging ABI version {got}, this remusd speaks {ABI_VERSION}: the shim and remusd are from different builds")]
    AbiVersion { got: u32 },
    #[error("staging header says {n} {what}, the limit is {max}")]
    Count {
        what: &'static str,
        n: u64,
        max: u64,
    },
    #[error("staging holds epoch {got_epoch} chunk {got_chunk}, the shim announced epoch {want_epoch} chunk {want_chunk}")]
    WrongChunk {
        want_epoch: u64,
        want_chunk: u64,
        got_epoch: u64,
        got_chunk: u64,
    },
    #[error("page address {0:#x} in staging is not page aligned")]
    Unaligned(u64),
    #[error("the shim's thread table for epoch {epoch} is inconsistent: {why}")]
    Threads { epoch: u64, why: String },
}

/// The staging area, mapped shared. The controller reads it, and writes only the committed
/// epoch word (`remus_abi::COMMITTED_OFF`).
pub struct Staging {
    map: memmap2::MmapMut,
    /// The file log (`remus_abi::filelog`), when the memfd has one.
    files: Option<memmap2::Mmap>,
}

impl Staging {
    pub fn map(file: &File) -> Result<Staging, ReadStagingError> {
        let len = file.metadata()?.len();
        if len < STAGING_SIZE as u64 {
            return Err(ReadStagingError::TooSmall {
                got: len,
                need: STAGING_SIZE as u64,
            });
        }
        // SAFETY: the memfd is at least STAGING_SIZE bytes (checked above) and is never
        // shrunk; the shim writes it only while remusd is not reading it (see module docs), and
        // every read below copies the bytes out.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(STAGING_SIZE)
                .map_mut(file)?
        };
        use remus_abi::filelog::{FILELOG_END, FILELOG_OFF};
        let files = if len >= FILELOG_END as u64 {
            // SAFETY: the memfd holds the whole file log (checked), is never shrunk, and the
            // shim writes the log only in the epoch handler, before it announces the last
            // chunk and while remusd is not reading it; every read copies the bytes out.
            Some(unsafe {
                memmap2::MmapOptions::new()
                    .offset(FILELOG_OFF as u64)
                    .len(FILELOG_END - FILELOG_OFF)
                    .map(file)?
            })
        } else {
            None
        };
        Ok(Staging { map, files })
    }

    /// The file log section (offsets relative to `remus_abi::filelog::FILELOG_OFF`).
    pub fn file_log(&self) -> Option<&[u8]> {
        self.files.as_deref()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn committed_words(&self) -> (&AtomicU64, &AtomicU32) {
        let base = self.map.as_ptr();
        // The two words are inside the mapping (remus_abi's const asserts and the size check
        // in `map`) and aligned in a page-aligned mapping; the shim never writes them.
        // SAFETY: in bounds, aligned, and only ever accessed atomically by both processes.
        unsafe {
            (
                &*(base.add(remus_abi::COMMITTED_OFF) as *const AtomicU64),
                &*(base.add(remus_abi::COMMITTED_FUTEX_OFF) as *const AtomicU32),
            )
        }
    }

    /// Tells the shim that `epoch` is committed (or, with `remus_abi::COMMITTED_UNPROTECTED`,
    /// that nothing is held any more). The value only grows.
    pub fn publish_committed(&self, epoch: u64) {
        let (word, futex) = self.committed_words();
        word.fetch_max(epoch, Ordering::Release);
        futex.fetch_add(1, Ordering::Release);
        crate::sys::futex_wake_all(futex);
    }

    /// The committed word as published.
    pub fn committed(&self) -> u64 {
        self.committed_words().0.load(Ordering::Acquire)
    }

    /// Protection resumes after it had stopped (a new standby connection): the committed word
    /// goes back from `COMMITTED_UNPROTECTED` to `epoch` (the last epoch taken, which the new
    /// standby does not have), so that the shim holds new socket output again until its epoch
    /// commits. The only place the word goes down.
    pub fn hold_again(&self, epoch: u64) {
        let (word, futex) = self.committed_words();
        word.store(epoch, Ordering::Release);
        futex.fetch_add(1, Ordering::Release);
        crate::sys::futex_wake_all(futex);
    }

    fn header_word(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is one of remus_abi's controller words (RESEND_*, STREAM_OFF,
        // TCP_HOLD_OFF): 8-aligned, inside the header area of the mapping (const asserts of
        // remus_abi), accessed atomically by both sides.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Whether the next epochs stream new regions (`remus_abi::STREAM_OFF`) instead of copying
    /// them in the pause. Written before an epoch signal only.
    pub fn set_stream(&self, on: bool) {
        self.header_word(remus_abi::STREAM_OFF)
            .store(on as u64, Ordering::Release);
    }

    /// Whether the shim holds epochs with connections for remusd's dump
    /// (`remus_abi::TCP_HOLD_OFF`). Written before the first epoch signal.
    pub fn set_tcp_hold(&self, on: bool) {
        self.header_word(remus_abi::TCP_HOLD_OFF)
            .store(on as u64, Ordering::Release);
    }

    /// Asks the shim to ship everything as new at its next epoch (`remus_abi::RESEND_REQ_OFF`).
    /// Returns the request number.
    pub fn request_resend(&self) -> u64 {
        let w = self.header_word(remus_abi::RESEND_REQ_OFF);
        let req = w.load(Ordering::Relaxed) + 1;
        w.store(req, Ordering::Release);
        req
    }

    /// The last full-resend request the shim honoured and the epoch that carried it.
    pub fn resend_done(&self) -> (u64, u64) {
        let done = self
            .header_word(remus_abi::RESEND_DONE_OFF)
            .load(Ordering::Acquire);
        let epoch = self
            .header_word(remus_abi::RESEND_EPOCH_OFF)
            .load(Ordering::Relaxed);
        (done, epoch)
    }
}

/// Reads a plain-data `T` at `off` in `b`.
///
/// Only for the `#[repr(C)]` integer-and-array types of `remus_abi`, for which every bit
/// pattern is valid.
fn read_pod<T>(b: &[u8], off: usize) -> Option<T> {
    let end = off.checked_add(size_of::<T>())?;
    if end > b.len() {
        return None;
    }
    // SAFETY: off..end is inside `b` (checked above); read_unaligned has no alignment
    // requirement; callers only use types made of integers and integer arrays, so any bytes
    // form a valid value.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().add(off) as *const T) })
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn check(what: &'static str, n: u64, max: usize) -> Result<usize, ReadStagingError> {
    if n > max as u64 {
        return Err(ReadStagingError::Count {
            what,
            n,
            max: max as u64,
        });
    }
    Ok(n as usize)
}

/// Reads and checks the header. `want` = (epoch, chunk) announced by the `EpochChunk` message.
pub fn read_header(b: &[u8], want: (u64, u64)) -> Result<Box<StagingHeader>, ReadStagingError> {
    if b.len() < STAGING_SIZE {
        return Err(ReadStagingError::TooSmall {
            got: b.len() as u64,
            need: STAGING_SIZE as u64,
        });
    }
    let h: Box<StagingHeader> = Box::new(read_pod(b, 0).ok_or(ReadStagingError::TooSmall {
        got: b.len() as u64,
        need: size_of::<StagingHeader>() as u64,
    })?);
    if h.magic != STAGING_MAGIC {
        return Err(ReadStagingError::BadMagic(h.magic));
    }
    if h.abi_version != ABI_VERSION {
        return Err(ReadStagingError::AbiVersion { got: h.abi_version });
    }
    if (h.epoch, h.chunk as u64) != want {
        return Err(ReadStagingError::WrongChunk {
            want_epoch: want.0,
            want_chunk: want.1,
            got_epoch: h.epoch,
            got_chunk: h.chunk as u64,
        });
    }
    check("pages", h.n_pages.into(), CHUNK_PAGES)?;
    if h.last != 0 {
        check("reset ranges", h.n_resets.into(), MAX_RESETS)?;
        check("fds", h.n_fds.into(), MAX_FDS)?;
        check("bytes of maps", h.maps_len.into(), MAX_MAPS_BYTES)?;
        check("bytes of cwd", h.cwd_len.into(), CWD_MAX)?;
        check("auxv words", h.n_auxv.into(), MAX_AUXV_WORDS)?;
        check("threads", h.n_threads.into(), MAX_THREADS)?;
    }
    Ok(h)
}

/// Copies the chunk's pages out.
pub fn read_pages(b: &[u8], h: &StagingHeader) -> Result<Vec<(u64, PageBytes)>, ReadStagingError> {
    let n = check("pages", h.n_pages.into(), CHUNK_PAGES)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let addr = le_u64(b, ADDRS_OFF + i * 8);
        if !addr.is_multiple_of(PAGE_SIZE as u64) {
            return Err(ReadStagingError::Unaligned(addr));
        }
        let off = DATA_OFF + i * PAGE_SIZE;
        out.push((addr, PageBytes(b[off..off + PAGE_SIZE].to_vec())));
    }
    Ok(out)
}

/// Reads the epoch's metadata from the last chunk. `pages` = pages shipped in all chunks.
pub fn read_meta(b: &[u8], h: &StagingHeader, pages: u64) -> Result<EpochMeta, ReadStagingError> {
    let n_resets = check("reset ranges", h.n_resets.into(), MAX_RESETS)?;
    let n_fds = check("fds", h.n_fds.into(), MAX_FDS)?;
    let maps_len = check("bytes of maps", h.maps_len.into(), MAX_MAPS_BYTES)?;
    let cwd_len = check("bytes of cwd", h.cwd_len.into(), CWD_MAX)?;
    let n_auxv = check("auxv words", h.n_auxv.into(), MAX_AUXV_WORDS)?;
    let mut resets = Vec::with_capacity(n_resets);
    for i in 0..n_resets {
        let r: ResetRange = read_pod(b, RESETS_OFF + i * size_of::<ResetRange>()).ok_or(
            ReadStagingError::Count {
                what: "reset ranges",
                n: i as u64,
                max: MAX_RESETS as u64,
            },
        )?;
        resets.push((r.start, r.end));
    }
    let mut fds = Vec::with_capacity(n_fds);
    for i in 0..n_fds {
        let r: FdRecord =
            read_pod(b, FDS_OFF + i * size_of::<FdRecord>()).ok_or(ReadStagingError::Count {
                what: "fds",
                n: i as u64,
                max: MAX_FDS as u64,
            })?;
        let plen = (r.path_len as usize).min(FD_PATH_MAX);
        let mut path = String::from_utf8_lossy(&r.path[..plen]).into_owned();
        if r.path_truncated != 0 {
            path.push_str("...");
        }
        fds.push(FdEntry {
            fd: r.fd,
            kind: remus_abi::FdKind::from_u32(r.kind).into(),
            flags: r.flags,
            fd_flags: r.fd_flags,
            offset: r.offset,
            path,
        });
    }
    let kobjs = read_kobjs(b, h.epoch)?;
    let threads = read_threads(b, h)?;
    Ok(EpochMeta {
        tcp: Vec::new(),
        threads,
        rendezvous_ns: h.rendezvous_ns,
        files: Vec::new(),
        replicated: Vec::new(),
        kobjs,
        epoch: h.epoch,
        maps: String::from_utf8_lossy(&b[MAPS_OFF..MAPS_OFF + maps_len]).into_owned(),
        resets,
        fds,
        ctx: h.ctx,
        mm: h.mm,
        auxv: h.auxv[..n_auxv].to_vec(),
        cwd: String::from_utf8_lossy(&h.cwd[..cwd_len]).into_owned(),
        app_sigmask: h.app_sigmask,
        altstack: (h.altstack_sp, h.altstack_flags, h.altstack_size),
        tid: h.tid,
        pages,
        pause_ns: h.pause_ns,
        partial: false,
    })
}

/// Reads the thread records of the last chunk ([`THREADS_OFF`]). A shim that sends none
/// (`n_threads == 0`) took a single-thread epoch: its one thread is made from the header's
/// `ctx`, `tid`, signal mask and alternate stack, flagged leader and main. The table is
/// checked ([`EpochMeta::check_threads`]): a bad one is refused, not shipped.
pub fn read_threads(b: &[u8], h: &StagingHeader) -> Result<Vec<ThreadRecord>, ReadStagingError> {
    let n = check("threads", h.n_threads.into(), MAX_THREADS)?;
    let mut out = Vec::with_capacity(n.max(1));
    for i in 0..n {
        let r: ThreadRecord = read_pod(b, THREADS_OFF + i * size_of::<ThreadRecord>()).ok_or(
            ReadStagingError::Count {
                what: "threads",
                n: i as u64,
                max: MAX_THREADS as u64,
            },
        )?;
        out.push(r);
    }
    if out.is_empty() {
        out.push(crate::image::single_thread(
            h.tid,
            h.ctx,
            h.app_sigmask,
            (h.altstack_sp, h.altstack_flags, h.altstack_size),
        ));
    }
    EpochMeta::check_threads(&out).map_err(|why| ReadStagingError::Threads {
        epoch: h.epoch,
        why,
    })?;
    Ok(out)
}

/// Reads the kernel-object section (`remus_abi::kobj`) of the last chunk of `epoch`. A
/// section not written for this epoch (magic or epoch differ) reads as empty.
pub fn read_kobjs(
    b: &[u8],
    epoch: u64,
) -> Result<std::collections::BTreeMap<i32, KernelObject>, ReadStagingError> {
    use remus_abi::kobj::*;
    let mut out = std::collections::BTreeMap::new();
    let Some(kh) = read_pod::<KobjHeader>(b, KOBJ_OFF) else {
        return Ok(out);
    };
    if kh.magic != KOBJ_MAGIC || kh.epoch != epoch {
        return Ok(out);
    }
    let n = check("kernel objects", kh.n_objs.into(), MAX_KOBJS)?;
    let n_regs = check("epoll registrations", kh.n_epoll.into(), MAX_EPOLL_REGS)?;
    let n_data = check("bytes of pipe data", kh.pipe_bytes.into(), PIPE_DATA_MAX)?;
    let regs: Vec<EpollReg> = (0..n_regs)
        .filter_map(|i| read_pod(b, EPOLL_OFF + i * size_of::<EpollReg>()))
        .collect();
    let data = &b[PIPE_DATA_OFF..PIPE_DATA_OFF + n_data];
    let bad = |what: &'static str, v: u64| ReadStagingError::Count { what, n: v, max: 0 };
    for i in 0..n {
        let r: KobjRecord = read_pod(b, KOBJS_OFF + i * size_of::<KobjRecord>())
            .ok_or(bad("kernel objects", i as u64))?;
        let trunc = r.flags & KF_TRUNCATED != 0;
        let range = |off: u32, len: u32, max: usize, what| {
            let (o, l) = (off as usize, len as usize);
            if o.checked_add(l).is_none_or(|e| e > max) {
                Err(bad(what, o as u64 + l as u64))
            } else {
                Ok(o..o + l)
            }
        };
        let obj = match KobjKind::from_u32(r.kind) {
            Some(KobjKind::Socket) => KernelObject::Socket(SocketInfo {
                family: r.family,
                sock_type: r.sock_type,
                protocol: r.protocol,
                listening: r.flags & KF_LISTENING != 0,
                backlog: r.backlog,
                reuseaddr: r.flags & KF_REUSEADDR != 0,
                reuseport: r.flags & KF_REUSEPORT != 0,
                v6only: r.flags & KF_V6ONLY != 0,
                addr: r.addr[..(r.addr_len as usize).min(SOCKADDR_MAX)].to_vec(),
                peer: (r.flags & KF_CONNECTED != 0)
                    .then(|| r.peer[..(r.peer_len as usize).min(SOCKADDR_MAX)].to_vec()),
            }),
            Some(KobjKind::Pipe) => KernelObject::Pipe {
                ino: r.ino,
                size: r.pipe_size,
                data: data[range(r.data_off, r.data_len, n_data, "bytes of pipe data")?].to_vec(),
                truncated: trunc,
            },
            Some(KobjKind::Epoll) => KernelObject::Epoll {
                regs: regs[range(r.data_off, r.data_len, regs.len(), "epoll registrations")?]
                    .iter()
                    .map(|g| EpollRegistration {
                        fd: g.fd,
                        events: g.events,
                        data: g.data,
                    })
                    .collect(),
                truncated: trunc,
            },
            Some(KobjKind::EventFd) => KernelObject::EventFd {
                count: r.count,
                semaphore: r.flags & KF_SEMAPHORE != 0,
            },
            Some(KobjKind::TimerFd) => KernelObject::TimerFd {
                clockid: r.clockid,
                value: (r.value[0], r.value[1]),
                interval: (r.interval[0], r.interval[1]),
                ticks: r.count,
            },
            Some(KobjKind::SignalFd) => KernelObject::SignalFd { mask: r.sigmask },
            Some(KobjKind::Unsupported) | None => continue,
        };
        out.insert(r.fd, obj);
    }
    Ok(out)
}

/// Reads the file log (`remus_abi::filelog`; `b` starts at `FILELOG_OFF`) written for
/// `epoch`: the files changed, and the paths of every followed file. A log not written for
/// this epoch reads as empty.
pub fn read_files(
    b: &[u8],
    epoch: u64,
) -> Result<(Vec<crate::image::FileWrite>, Vec<String>), ReadStagingError> {
    use remus_abi::filelog::*;
    let rel = |off: usize| off - FILELOG_OFF;
    let (mut files, mut followed) = (Vec::new(), Vec::new());
    let Some(fh) = read_pod::<FileLogHeader>(b, 0) else {
        return Ok((files, followed));
    };
    if fh.magic != FILELOG_MAGIC || fh.epoch != epoch {
        return Ok((files, followed));
    }
    let n = check("replicated files", fh.n_files.into(), MAX_FILE_RECS)?;
    let n_ranges = check("file ranges", fh.n_ranges.into(), MAX_FILE_RANGES)?;
    let n_data = check("bytes of file data", fh.data_bytes, FILE_DATA_MAX)?;
    let bad = |what: &'static str, v: u64| ReadStagingError::Count { what, n: v, max: 0 };
    let data = b
        .get(rel(FILE_DATA_OFF)..rel(FILE_DATA_OFF) + n_data)
        .ok_or(bad("bytes of file data", n_data as u64))?;
    for i in 0..n {
        let r: FileRec = read_pod(b, rel(FILE_RECS_OFF) + i * size_of::<FileRec>())
            .ok_or(bad("replicated files", i as u64))?;
        let path =
            String::from_utf8_lossy(&r.path[..(r.path_len as usize).min(FD_PATH_MAX)]).into_owned();
        let (first, count) = (r.first_range as usize, r.n_ranges as usize);
        if first.checked_add(count).is_none_or(|e| e > n_ranges) {
            return Err(bad("file ranges", first as u64 + count as u64));
        }
        let mut ranges = Vec::with_capacity(count);
        for j in first..first + count {
            let g: FileRange = read_pod(b, rel(FILE_RANGES_OFF) + j * size_of::<FileRange>())
                .ok_or(bad("file ranges", j as u64))?;
            let bytes = data
                .get(g.data_off as usize..(g.data_off as usize).saturating_add(g.len as usize))
                .ok_or(bad("bytes of file data", g.data_off.saturating_add(g.len)))?;
            ranges.push((g.offset, PageBytes(bytes.to_vec())));
        }
        if r.flags & (FR_CHANGED | FR_WHOLE) != 0 {
            files.push(crate::image::FileWrite {
                path: path.clone(),
                whole: r.flags & FR_WHOLE != 0,
                ranges,
                size: r.size,
            });
        }
        followed.push(path);
    }
    Ok((files, followed))
}

/// Test helper: writes a synthetic chunk into a staging buffer, as the shim would.
#[cfg(test)]
pub mod fake {
    use super::*;

    pub struct FakeChunk<'a> {
        pub epoch: u64,
        pub chunk: u32,
        pub last: bool,
        pub pages: &'a [(u64, u8)],
        pub resets: &'a [(u64, u64)],
        pub maps: &'a str,
        pub fds: &'a [(i32, &'a str)],
        pub cwd: &'a str,
        pub pause_ns: u64,
        /// (tid, flags) of each thread record; empty: none (a single-thread epoch).
        pub threads: &'a [(i32, u32)],
        pub rendezvous_ns: u64,
    }

    fn put<T>(b: &mut [u8], off: usize, v: &T) {
        let n = size_of::<T>();
        // SAFETY: v is a plain-data value of n bytes; reading its bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(v as *const T as *const u8, n) };
        b[off..off + n].copy_from_slice(bytes);
    }

    pub fn write(b: &mut [u8], c: &FakeChunk) {
        let mut h: StagingHeader = read_pod(b, 0).unwrap();
        h.magic = STAGING_MAGIC;
        h.abi_version = ABI_VERSION;
        h.epoch = c.epoch;
        h.chunk = c.chunk;
        h.last = c.last as u32;
        h.n_pages = c.pages.len() as u32;
        h.n_resets = c.resets.len() as u32;
        h.n_fds = c.fds.len() as u32;
        h.maps_len = c.maps.len() as u32;
        h.cwd_len = c.cwd.len() as u32;
        h.cwd[..c.cwd.len()].copy_from_slice(c.cwd.as_bytes());
        h.pause_ns = c.pause_ns;
        h.n_auxv = 2;
        h.auxv[0] = 6;
        h.auxv[1] = 4096;
        h.ctx.rip = 0x401000;
        h.tid = 77;
        h.n_threads = c.threads.len() as u32;
        h.rendezvous_ns = c.rendezvous_ns;
        put(b, 0, &h);
        for (i, &(tid, flags)) in c.threads.iter().enumerate() {
            let mut r = ThreadRecord {
                tid,
                flags,
                ..Default::default()
            };
            r.ctx.rip = 0x402000 + i as u64;
            r.ctx.fs_base = 0x7000_0000 + (i as u64) * 0x1000;
            put(b, THREADS_OFF + i * size_of::<ThreadRecord>(), &r);
        }
        for (i, &(addr, fill)) in c.pages.iter().enumerate() {
            b[ADDRS_OFF + i * 8..ADDRS_OFF + i * 8 + 8].copy_from_slice(&addr.to_le_bytes());
            b[DATA_OFF + i * PAGE_SIZE..DATA_OFF + (i + 1) * PAGE_SIZE].fill(fill);
        }
        for (i, &(s, e)) in c.resets.iter().enumerate() {
            put(
                b,
                RESETS_OFF + i * size_of::<ResetRange>(),
                &ResetRange { start: s, end: e },
            );
        }
        for (i, &(fd, path)) in c.fds.iter().enumerate() {
            let mut r = FdRecord {
                fd,
                kind: 1,
                flags: 2,
                fd_flags: 0,
                offset: 5,
                path_len: path.len() as u32,
                path_truncated: 0,
                path: [0; FD_PATH_MAX],
            };
            r.path[..path.len()].copy_from_slice(path.as_bytes());
            put(b, FDS_OFF + i * size_of::<FdRecord>(), &r);
        }
        b[MAPS_OFF..MAPS_OFF + c.maps.len()].copy_from_slice(c.maps.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn reads_a_synthetic_chunk() {
        let mut b = vec![0u8; STAGING_SIZE];
        assert!(matches!(
            read_header(&b, (1, 0)),
            Err(ReadStagingError::BadMagic(0))
        ));
        let maps = "1000-3000 rw-p 00000000 00:00 0\n";
        write(
            &mut b,
            &FakeChunk {
                epoch: 1,
                chunk: 0,
                last: true,
                pages: &[(0x1000, 1), (0x2000, 2)],
                resets: &[(0x1000, 0x3000)],
                maps,
                fds: &[(0, "/dev/null")],
                cwd: "/tmp",
                pause_ns: 1500,
                threads: &[],
                rendezvous_ns: 0,
            },
        );
        assert!(matches!(
            read_header(&b, (1, 1)),
            Err(ReadStagingError::WrongChunk { .. })
        ));
        let h = read_header(&b, (1, 0)).unwrap();
        let pages = read_pages(&b, &h).unwrap();
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[1].0, 0x2000);
        assert!(pages[1].1 .0.iter().all(|&x| x == 2));
        let m = read_meta(&b, &h, 2).unwrap();
        assert_eq!(m.maps, maps);
        assert_eq!(m.resets, vec![(0x1000, 0x3000)]);
        assert_eq!(m.fds[0].path, "/dev/null");
        assert_eq!(m.fds[0].offset, 5);
        assert_eq!(m.cwd, "/tmp");
        assert_eq!(m.auxv, vec![6, 4096]);
        assert_eq!(m.ctx.rip, 0x401000);
        assert_eq!(m.tid, 77);
        assert_eq!(m.pages, 2);
        // No thread records (a single-thread epoch): the one thread is the header's.
        assert_eq!(m.threads.len(), 1);
        assert_eq!(m.threads[0].tid, 77);
        assert_eq!(m.threads[0].ctx.rip, 0x401000);
        assert_eq!(
            m.threads[0].flags,
            remus_abi::THREAD_LEADER | remus_abi::THREAD_MAIN
        );
        // Counts beyond the limits are refused, not trusted.
        b[28..32].copy_from_slice(&(CHUNK_PAGES as u32 + 1).to_le_bytes());
        assert!(matches!(
            read_header(&b, (1, 0)),
            Err(ReadStagingError::Count { what: "pages", .. })
        ));
    }

    fn threaded(threads: &[(i32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; STAGING_SIZE];
        write(
            &mut b,
            &FakeChunk {
                epoch: 3,
                chunk: 0,
                last: true,
                pages: &[],
                resets: &[],
                maps: "1000-3000 rw-p 00000000 00:00 0\n",
                fds: &[],
                cwd: "/",
                pause_ns: 900_000,
                threads,
                rendezvous_ns: 400_000,
            },
        );
        b
    }

    #[test]
    fn reads_thread_records() {
        use remus_abi::{THREAD_LEADER as L, THREAD_MAIN as M};
        let b = threaded(&[(100, M), (101, L), (102, 0)]);
        let h = read_header(&b, (3, 0)).unwrap();
        let m = read_meta(&b, &h, 0).unwrap();
        assert_eq!(
            m.threads
                .iter()
                .map(|t| (t.tid, t.flags))
                .collect::<Vec<_>>(),
            [(100, M), (101, L), (102, 0)]
        );
        assert_eq!(m.threads[2].ctx.rip, 0x402002);
        assert_eq!(m.threads[1].ctx.fs_base, 0x7000_1000);
        assert_eq!(m.rendezvous_ns, 400_000);
        assert_eq!(m.thread_records(), m.threads);
        // An inconsistent table is refused: no main thread, two mains, a repeated TID.
        for bad in [
            &[(100, L), (101, 0)][..],
            &[(100, M | L), (101, M)][..],
            &[(100, M | L), (100, 0)][..],
            &[(0, M | L)][..],
        ] {
            let b = threaded(bad);
            let h = read_header(&b, (3, 0)).unwrap();
            assert!(
                matches!(read_meta(&b, &h, 0), Err(ReadStagingError::Threads { .. })),
                "{bad:?}"
            );
        }
        // More records than MAX_THREADS is refused at the header.
        let mut b = threaded(&[(100, M | L)]);
        let off = std::mem::offset_of!(StagingHeader, n_threads);
        b[off..off + 4].copy_from_slice(&(MAX_THREADS as u32 + 1).to_le_bytes());
        assert!(matches!(
            read_header(&b, (3, 0)),
            Err(ReadStagingError::Count {
                what: "threads",
                ..
            })
        ));
    }
}
