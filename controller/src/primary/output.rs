//! Output commit (DESIGN §4): what the app writes to its held output streams (stdout/stderr
//! when they are pipes, ttys, sockets or devices) leaves the primary only once the epoch whose
//! state produced it is committed by the standby.
//!
//! The shim interposes a pipe on each held stream before `main`: the app's fd 1 (and 2) is the
//! write end of a pipe whose read end remusd holds, and remusd holds a duplicate of the app's
//! original descriptor (both inherited at `remus_abi::CONTROLLER_OUTPUT_FD_BASE`). This covers
//! stdio (glibc's `printf`/`fwrite` reach the kernel through internal calls no `write` hook
//! sees), `write`, `writev`, `splice` and `sendfile` alike, and the app's children that inherit
//! the descriptors, with no hook at all.
//!
//! The split point. The main thread reads the pipes whenever they are readable and tags what
//! it reads with the epoch whose checkpoint is certain to come after the read: the epoch of
//! the next epoch signal. It reads everything available just before it sends each signal, and
//! nothing while the signal is outstanding; in the pause the shim notes how many bytes are
//! still unread in each pipe (`remus_abi::PipeProbe`), so when the epoch's last chunk arrives
//! exactly those bytes are read and tagged k ([`Output::checkpoint`]): the bytes written before
//! checkpoint k are tagged k, those after it k+1. (Without a usable probe, or when an epoch
//! takes longer than [`READ_PAUSE_MAX`] and the pipes are read meanwhile, bytes read while the
//! signal is outstanding are tagged k+1: later than necessary, never too early.)
//!
//! Committed output (DESIGN §10). Each piece goes to the standby with the commit of the first
//! epoch whose number is at least its tag ([`Output::ship`], inside the epoch frame the
//! standby acks), with its stream offset; the release thread counts, per stream, the bytes it
//! has written out ([`Output::watermark`], carried by the link's heartbeats). At a takeover the
//! standby writes what it holds past that watermark: output of committed epochs that this
//! primary died before writing is not lost, and at most what was written after the last report
//! is written twice.
//!
//! Release. A release thread writes, in the order read (across streams too), every queued piece
//! whose tag is at most the committed epoch (set from the link's ack callback), so a slow
//! reader of the app's output never stalls acks or heartbeats. Once protection stops (standby
//! lost, second thread, the app exiting on its own), everything is released and the streams
//! pass through. When the primary side dies, what is still held here is gone, but what was
//! committed is with the standby (below).
//!
//! Backpressure. At most [`HELD_LIMIT`] bytes are held; beyond it remusd stops reading the
//! pipes and the app blocks on a full pipe (or gets `EAGAIN` if its descriptor was
//! non-blocking) until acks release some. When the destination is a broken pipe, remusd closes
//! its read end of the interposed pipe, so the app's next write fails with `EPIPE` (and
//! `SIGPIPE`) as it would have without remus.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use remus_abi::PipeProbe;

use crate::control::status::SharedStatus;
use crate::wire::messages::{HeldOutput, OutStream, PageBytes, Released};

use super::link::Watermark;

/// The most output bytes held for the standby before the app is made to wait.
pub const HELD_LIMIT: u64 = 64 << 20;
/// The committed value meaning "nothing is held any more".
const ALL: u64 = u64::MAX;
const READ_CHUNK: usize = 64 << 10;
/// Pieces merged in the queue stay below this (fewer, larger writes at release).
const MERGE_LIMIT: usize = 1 << 20;
/// The pipes are not read while an epoch signal is outstanding, for at most this long (an app
/// that does not answer the signal must not block on a full pipe for good).
pub const READ_PAUSE_MAX: Duration = Duration::from_secs(1);

/// One held stream as inherited from the shim.
pub struct OutputStream {
    /// "stdout", "stderr", "stdout+stderr": for logs.
    pub name: String,
    /// The app's original descriptor (where released output goes).
    pub dest: OwnedFd,
    /// The read end of the pipe interposed on the app's descriptor(s).
    pub src: OwnedFd,
}

struct Piece {
    stream: usize,
    tag: u64,
    /// Where `data` starts in its stream (bytes read from it before).
    off: u64,
    data: Vec<u8>,
    /// End of the stream: close the destination once everything before it is written.
    eof: bool,
    read_at: Instant,
    /// Sent to the standby (with an epoch's commit) on the current link.
    shipped: bool,
}

struct Inner {
    committed: u64,
    queue: VecDeque<Piece>,
    held: u64,
    released: u64,
    /// The release thread ends once the queue is empty.
    finish: bool,
    /// Writing to the stream's destination failed for good.
    broken: Vec<bool>,
    /// Pieces taken off the queue's front so far: `queue[0]` is piece number `popped`.
    popped: u64,
    /// The first piece (by number) that may not be shipped on this link yet; every one before
    /// it was shipped or released.
    ship_from: u64,
}

struct Shared {
    m: Mutex<Inner>,
    cv: Condvar,
    status: SharedStatus,
    /// Which stream each index is (for the standby).
    ids: Vec<OutStream>,
    /// Per stream: the bytes from its start that are written out (or dropped with a broken
    /// destination): the release watermark.
    written: Vec<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle the link's ack callback keeps: marks epochs committed.
#[derive(Clone)]
pub struct Committer(Arc<Shared>);

impl Committer {
    /// Epoch `epoch` is committed: everything tagged up to it may leave.
    pub fn commit(&self, epoch: u64) {
        let mut g = self.0.lock();
        if epoch > g.committed {
            g.committed = epoch;
            self.0.cv.notify_all();
        }
    }
}

pub struct Output {
    names: Vec<String>,
    /// Read ends, `None` once at end of file (or closed because the destination broke).
    srcs: Vec<Option<OwnedFd>>,
    /// The inode of each stream's pipe (matched with the shim's [`PipeProbe`]s).
    inos: Vec<u64>,
    /// Bytes read from each stream so far.
    read_off: Vec<u64>,
    /// Bytes read from all streams when the last epoch signal went out.
    read_at_signal: Option<u64>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    buf: Vec<u8>,
}

impl Output {
    pub fn new(streams: Vec<OutputStream>, status: SharedStatus) -> Output {
        let mut names = Vec::new();
        let mut srcs = Vec::new();
        let mut dests = Vec::new();
        let mut ids = Vec::new();
        let mut inos = Vec::new();
        for s in streams {
            if let Err(e) = crate::sys::set_nonblocking(s.src.as_raw_fd()) {
                tracing::warn!(stream = %s.name, "cannot make the output pipe non-blocking: {e}");
            }
            tracing::info!(stream = %s.name, "output held until its epoch commits");
            ids.push(OutStream::from_name(&s.name).unwrap_or_else(|| {
                tracing::warn!(stream = %s.name, "unknown output stream name; counted as stdout");
                OutStream::Stdout
            }));
            inos.push(pipe_ino(&s.src));
            names.push(s.name);
            srcs.push(Some(s.src));
            dests.push(Some(s.dest));
        }
        let shared = Arc::new(Shared {
            m: Mutex::new(Inner {
                committed: 0,
                queue: VecDeque::new(),
                held: 0,
                released: 0,
                finish: false,
                broken: vec![false; names.len()],
                popped: 0,
                ship_from: 0,
            }),
            cv: Condvar::new(),
            status,
            written: ids.iter().map(|_| AtomicU64::new(0)).collect(),
            ids,
        });
        let thread = if names.is_empty() {
            None
        } else {
            let sh = shared.clone();
            let nm = names.clone();
            std::thread::Builder::new()
                .name("output-release".into())
                .spawn(move || release_loop(sh, dests, nm))
                .map_err(|e| tracing::error!("cannot start the output release thread: {e}"))
                .ok()
        };
        Output {
            read_off: vec![0; names.len()],
            names,
            srcs,
            inos,
            read_at_signal: None,
            shared,
            thread,
            buf: vec![0; READ_CHUNK],
        }
    }

    /// The release watermark: per stream, the bytes written out so far.
    pub fn watermark(&self) -> Watermark {
        let sh = self.shared.clone();
        Arc::new(move || {
            Released(
                sh.ids
                    .iter()
                    .zip(&sh.written)
                    .map(|(&id, w)| (id, w.load(Ordering::Acquire)))
                    .collect(),
            )
        })
    }

    /// The held output that goes with the commit of `epoch`: every piece not shipped on this
    /// link yet, up to the last one tagged `epoch` or earlier (a piece read before one that
    /// precedes checkpoint `epoch` precedes it too), in the order read. They are retagged
    /// `epoch` where they were tagged later: the standby that acks `epoch` holds them.
    pub fn ship(&self, epoch: u64) -> Vec<HeldOutput> {
        let mut g = self.shared.lock();
        let start = g.ship_from.saturating_sub(g.popped) as usize;
        let Some(last) = (start..g.queue.len())
            .rev()
            .find(|&i| g.queue[i].tag <= epoch)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in g.queue.range_mut(start..=last) {
            if p.shipped {
                continue;
            }
            p.shipped = true;
            p.tag = p.tag.min(epoch);
            if !p.data.is_empty() {
                out.push(HeldOutput {
                    stream: self.shared.ids[p.stream],
                    offset: p.off,
                    data: PageBytes(p.data.clone()),
                });
            }
        }
        g.ship_from = g.popped + last as u64 + 1;
        out
    }

    /// A new link to a standby (a new, empty one): everything still queued goes to it again,
    /// with the next commit.
    pub fn new_link(&self) {
        let mut g = self.shared.lock();
        g.ship_from = g.popped;
        for p in g.queue.iter_mut() {
            p.shipped = false;
        }
    }

    /// The epoch signal is about to go out (everything available was just read): the pipes
    /// are not read again until the epoch's checkpoint arrives.
    pub fn signal_sent(&mut self) {
        self.read_at_signal = Some(self.read_off.iter().sum());
    }

    /// The checkpoint of `epoch` arrived with the shim's view of the pipes: reads exactly the
    /// bytes the app wrote before it and tags them `epoch`. Nothing is done when the pipes were
    /// read while the signal was outstanding (what was read then is tagged later already).
    pub fn checkpoint(&mut self, epoch: u64, probes: &[PipeProbe]) {
        let Some(at_signal) = self.read_at_signal.take() else {
            return;
        };
        if self.read_off.iter().sum::<u64>() != at_signal {
            return;
        }
        for i in 0..self.srcs.len() {
            let ino = self.inos[i];
            let Some(p) = probes
                .iter()
                .find(|p| ino != 0 && p.ino == ino && p.valid != 0)
            else {
                continue;
            };
            tracing::trace!(
                epoch,
                stream = %self.names[i],
                bytes = p.unread,
                "output split at the checkpoint"
            );
            self.read_stream(i, epoch, Some(p.unread as usize));
        }
    }

    /// The epoch signal is no longer outstanding without a checkpoint (an exec, a handover,
    /// a dropped epoch): the pipes are read again.
    pub fn epoch_abandoned(&mut self) {
        self.read_at_signal = None;
    }

    pub fn committer(&self) -> Committer {
        Committer(self.shared.clone())
    }

    /// Nothing is held any more: release everything queued, pass through from now on.
    pub fn release_all(&self) {
        Committer(self.shared.clone()).commit(ALL);
    }

    /// Protection resumes (a new standby connection): hold again what is tagged after
    /// `epoch` (the last epoch taken; what was read meanwhile is tagged later and waits for
    /// the new standby's first commit).
    pub fn hold_again(&self, epoch: u64) {
        let mut g = self.shared.lock();
        g.committed = epoch;
        self.shared.cv.notify_all();
    }

    /// The read ends to poll (none while the held bytes are at the limit: backpressure).
    pub fn poll_fds(&mut self) -> Vec<RawFd> {
        self.close_broken();
        let g = self.shared.lock();
        if g.held >= HELD_LIMIT && g.committed != ALL {
            return Vec::new();
        }
        drop(g);
        self.srcs.iter().flatten().map(|f| f.as_raw_fd()).collect()
    }

    /// True when every stream reached end of file.
    pub fn all_closed(&self) -> bool {
        self.srcs.iter().all(Option::is_none)
    }

    /// Reads everything available on every stream (without waiting) and queues it with `tag`:
    /// an epoch whose checkpoint is certain to come after this read.
    pub fn pump(&mut self, tag: u64) {
        self.close_broken();
        for i in 0..self.srcs.len() {
            if !self.read_stream(i, tag, None) {
                return;
            }
        }
    }

    /// Reads what is available on stream `i` (at most `limit` bytes), queued with `tag`.
    /// False when the held bytes reached their limit.
    fn read_stream(&mut self, i: usize, tag: u64, limit: Option<usize>) -> bool {
        let mut left = limit.unwrap_or(usize::MAX);
        while let Some(fd) = self.srcs[i].as_ref() {
            if left == 0 {
                break;
            }
            {
                let g = self.shared.lock();
                if g.held >= HELD_LIMIT && g.committed != ALL {
                    return false;
                }
            }
            let want = self.buf.len().min(left);
            match crate::sys::read_nonblocking(fd.as_raw_fd(), &mut self.buf[..want]) {
                Ok(Some(0)) | Err(_) => {
                    // End of file (every writer closed it), or an error no read will fix.
                    self.srcs[i] = None;
                    self.push(i, tag, Vec::new(), true);
                    tracing::debug!(stream = %self.names[i], "output stream closed by the app");
                    break;
                }
                Ok(Some(n)) => {
                    let data = self.buf[..n].to_vec();
                    self.push(i, tag, data, false);
                    left -= n;
                    if n < want {
                        break;
                    }
                }
                Ok(None) => break, // nothing more for now
            }
        }
        true
    }

    fn push(&mut self, stream: usize, tag: u64, data: Vec<u8>, eof: bool) {
        let off = self.read_off[stream];
        self.read_off[stream] += data.len() as u64;
        let mut g = self.shared.lock();
        g.held += data.len() as u64;
        let merged = match g.queue.back_mut() {
            Some(last)
                if !eof
                    && !last.eof
                    && !last.shipped
                    && last.stream == stream
                    && last.tag == tag
                    && last.data.len() + data.len() <= MERGE_LIMIT =>
            {
                last.data.extend_from_slice(&data);
                true
            }
            _ => false,
        };
        if !merged {
            g.queue.push_back(Piece {
                stream,
                tag,
                off,
                data,
                eof,
                read_at: Instant::now(),
                shipped: false,
            });
        }
        let (held, committed) = (g.held, g.committed);
        drop(g);
        self.shared.status.lock().status.output_held_bytes = held;
        if tag <= committed {
            self.shared.cv.notify_all();
        }
    }

    /// Drops the read end of a stream whose destination broke: the app's next write to it
    /// fails with `EPIPE`, as it would have without remus.
    fn close_broken(&mut self) {
        let broken = self.shared.lock().broken.clone();
        for (i, b) in broken.into_iter().enumerate() {
            if b && self.srcs[i].take().is_some() {
                tracing::info!(stream = %self.names[i], "destination closed; closing the app's output pipe");
            }
        }
    }

    /// The app ended on its own, or protection ended with remusd: releases everything and
    /// keeps passing output through until every stream is closed by its writers (the app
    /// and any child that inherited the descriptors), then waits until all of it is written.
    pub fn finish(mut self) {
        self.release_all();
        while !self.all_closed() {
            let fds = self.poll_fds();
            if fds.is_empty() {
                // At the limit (cannot be: everything is released) or all broken.
                self.close_broken();
                if self.all_closed() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match crate::sys::poll_readable(&fds, Some(Duration::from_millis(100))) {
                Ok(_) => self.pump(ALL),
                Err(e) => {
                    tracing::warn!("polling the output pipes: {e}");
                    break;
                }
            }
        }
        self.shared.lock().finish = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The release thread: writes out, in order, every piece whose epoch is committed.
fn release_loop(sh: Arc<Shared>, mut dests: Vec<Option<OwnedFd>>, names: Vec<String>) {
    loop {
        let piece = {
            let mut g = sh.lock();
            loop {
                if g.queue.front().is_some_and(|p| p.tag <= g.committed) {
                    g.popped += 1;
                    break g.queue.pop_front();
                }
                if g.finish && g.queue.is_empty() {
                    break None;
                }
                g = sh.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some(p) = piece else { return };
        let len = p.data.len() as u64;
        let written = &sh.written[p.stream];
        if let Some(dest) = dests[p.stream].as_ref() {
            if !p.data.is_empty() {
                if let Err(e) = write_all(dest.as_raw_fd(), &p.data, written) {
                    tracing::warn!(stream = %names[p.stream], "writing released output: {e}; dropping the rest of this stream");
                    dests[p.stream] = None;
                    sh.lock().broken[p.stream] = true;
                }
            }
        }
        // Written, or dropped for good: the standby need not write it either.
        written.fetch_max(p.off + len, Ordering::AcqRel);
        if p.eof {
            dests[p.stream] = None; // the app closed it: close our copy, after its data
        }
        let latency = p.read_at.elapsed().as_nanos() as u64;
        let (held, released) = {
            let mut g = sh.lock();
            g.held -= len;
            g.released += len;
            (g.held, g.released)
        };
        let mut b = sh.status.lock();
        b.status.output_held_bytes = held;
        b.status.output_released_bytes = released;
        if len > 0 {
            b.record_commit_latency(latency);
        }
    }
}

/// The inode of a pipe's read end (0 if unknown).
fn pipe_ino(fd: &OwnedFd) -> u64 {
    // SAFETY: an all-zero stat is a valid out-parameter; fstat writes one struct stat.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) == 0 {
            st.st_ino
        } else {
            0
        }
    }
}

/// Writes all of `data`, waiting for room when the destination is non-blocking; `written`
/// counts each write's bytes as it returns (the release watermark moves with partial writes).
fn write_all(fd: RawFd, mut data: &[u8], written: &AtomicU64) -> io::Result<()> {
    while !data.is_empty() {
        match crate::sys::write(fd, data) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                written.fetch_add(n as u64, Ordering::AcqRel);
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => crate::sys::wait_writable(fd)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::Status;
    use std::io::{Read, Write};

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = crate::sys::pipe().unwrap();
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    fn held(offset: u64, data: &[u8]) -> HeldOutput {
        HeldOutput {
            stream: OutStream::Stdout,
            offset,
            data: PageBytes(data.to_vec()),
        }
    }

    #[test]
    fn split_at_the_checkpoint_shipped_with_its_commit_and_counted_when_written() {
        let (app_r, mut app_w) = pipe();
        let (mut out_r, out_w) = pipe();
        let ino = {
            use std::os::unix::fs::MetadataExt;
            app_r.metadata().unwrap().ino()
        };
        let probe = |unread| {
            [
                PipeProbe {
                    ino,
                    unread,
                    valid: 1,
                },
                PipeProbe::default(),
            ]
        };
        let status = SharedStatus::new(Status::new("primary", "protected"));
        let mut o = Output::new(
            vec![OutputStream {
                name: "stdout".into(),
                dest: out_w.into(),
                src: app_r.into(),
            }],
            status,
        );
        let mark = o.watermark();
        // Read before epoch 1's signal; written before its checkpoint; written after it.
        app_w.write_all(b"a\n").unwrap();
        o.pump(1);
        o.signal_sent();
        app_w.write_all(b"b\n").unwrap();
        app_w.write_all(b"c\n").unwrap();
        o.checkpoint(1, &probe(2));
        assert_eq!(
            o.ship(1),
            vec![held(0, b"a\nb\n")],
            "exactly what precedes checkpoint 1"
        );
        assert_eq!(o.ship(1), vec![], "shipped once per link");
        o.pump(2);
        assert_eq!(o.ship(2), vec![held(4, b"c\n")]);
        assert_eq!(mark(), Released(vec![(OutStream::Stdout, 0)]));
        o.committer().commit(1);
        crate::sys::set_nonblocking(out_r.as_raw_fd()).unwrap();
        let mut buf = [0u8; 64];
        let got = wait_read(&mut out_r, &mut buf);
        assert_eq!(got, b"a\nb\n");
        // The thread counts a write once it returned (bounded wait: 5 s).
        let want = Released(vec![(OutStream::Stdout, 4)]);
        for _ in 0..500 {
            if mark() == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(mark(), want);
        // A new standby gets what is still held with its first commit.
        o.new_link();
        assert_eq!(o.ship(5), vec![held(4, b"c\n")]);
        // Reads while the signal is outstanding (an epoch past READ_PAUSE_MAX): no split,
        // those bytes wait for the next epoch.
        o.signal_sent();
        app_w.write_all(b"d\n").unwrap();
        o.pump(4);
        app_w.write_all(b"e\n").unwrap();
        o.checkpoint(3, &probe(2));
        assert_eq!(o.ship(3), vec![], "nothing tagged 3");
        drop(app_w);
        o.finish();
    }

    /// Reads what the release thread writes (bounded: 5 s).
    fn wait_read(r: &mut std::fs::File, buf: &mut [u8]) -> Vec<u8> {
        for _ in 0..500 {
            if let Ok(n) = r.read(buf) {
                return buf[..n].to_vec();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nothing released within 5 s");
    }

    #[test]
    fn held_until_committed_then_in_order() {
        let (app_r, mut app_w) = pipe();
        let (mut out_r, out_w) = pipe();
        let status = SharedStatus::new(Status::new("primary", "protected"));
        let mut o = Output::new(
            vec![OutputStream {
                name: "stdout".into(),
                dest: out_w.into(),
                src: app_r.into(),
            }],
            status.clone(),
        );
        app_w.write_all(b"one\n").unwrap();
        o.pump(1);
        app_w.write_all(b"two\n").unwrap();
        o.pump(2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(status.snapshot().output_held_bytes, 8);
        assert_eq!(status.snapshot().output_released_bytes, 0);
        crate::sys::set_nonblocking(out_r.as_raw_fd()).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            out_r.read(&mut buf).is_err(),
            "nothing may leave before a commit"
        );
        o.committer().commit(1);
        std::thread::sleep(Duration::from_millis(50));
        let n = out_r.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one\n");
        drop(app_w);
        o.finish();
        let n = out_r.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two\n");
        assert_eq!(
            out_r.read(&mut buf).unwrap(),
            0,
            "closed after the app closed it"
        );
        let s = status.snapshot();
        assert_eq!((s.output_held_bytes, s.output_released_bytes), (0, 8));
    }
}
