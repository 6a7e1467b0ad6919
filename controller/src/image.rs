//! The standby's picture of the protected process: the metadata of the last committed epoch
//! and the contents of every page shipped so far. This is what `restore` turns back into a
//! running process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PAGE_SIZE: u64 = remus_abi::PAGE_SIZE as u64;

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` in the perms column (MAP_SHARED).
    pub shared: bool,
    pub offset: u64,
    /// `major:minor` as written in maps.
    pub dev: String,
    pub inode: u64,
    /// Path, `[heap]`, `[stack]`, `[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]`, or empty.
    pub path: String,
}

impl Region {
    /// Backed by a file (restore maps the file at `offset`, then writes shipped pages over it).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
    /// One of the kernel's special mappings that restore moves or leaves alone.
    pub fn is_special(&self) -> bool {
        matches!(
            self.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        )
    }
    pub fn prot(&self) -> i32 {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
            | (if self.exec { libc::PROT_EXEC } else { 0 })
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// Parses `/proc/<pid>/maps` text. Lines that do not parse are an error naming the line.
pub fn parse_maps(text: &str) -> Result<Vec<Region>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_maps_line(line).ok_or_else(|| format!("unparseable maps line: {line:?}"))?);
    }
    Ok(out)
}

fn parse_maps_line(line: &str) -> Option<Region> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode: u64 = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    Some(Region {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev,
        inode,
        path,
    })
}

/// The resume point, the mm fields and the thread records travel in the epoch metadata as
/// the shim wrote them.
pub use remus_abi::{MmFields, ResumeContext, ThreadRecord, THREAD_LEADER, THREAD_MAIN};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    Regular,
    CharDevice,
    Directory,
    Fifo,
    Socket,
    AnonInode,
    Other,
}

impl From<remus_abi::FdKind> for FdKind {
    fn from(k: remus_abi::FdKind) -> Self {
        match k {
            remus_abi::FdKind::Regular => FdKind::Regular,
            remus_abi::FdKind::CharDevice => FdKind::CharDevice,
            remus_abi::FdKind::Directory => FdKind::Directory,
            remus_abi::FdKind::Fifo => FdKind::Fifo,
            remus_abi::FdKind::Socket => FdKind::Socket,
            remus_abi::FdKind::AnonInode => FdKind::AnonInode,
            remus_abi::FdKind::Other => FdKind::Other,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    pub kind: FdKind,
    /// `fcntl(F_GETFL)`.
    pub flags: i32,
    /// `fcntl(F_GETFD)`.
    pub fd_flags: i32,
    /// Offset, or -1.
    pub offset: i64,
    /// What `/proc/self/fd/N` points at.
    pub path: String,
}

/// A socket at the checkpoint (see `remus_abi::kobj::KobjRecord`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub family: i32,
    pub sock_type: i32,
    pub protocol: i32,
    /// `SO_ACCEPTCONN`.
    pub listening: bool,
    /// The backlog the app gave `listen` (0: not seen; restore uses SOMAXCONN).
    pub backlog: i32,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
    /// `getsockname`, raw `struct sockaddr_*` bytes (empty: unknown).
    pub addr: Vec<u8>,
    /// `getpeername` when connected.
    pub peer: Option<Vec<u8>>,
}

/// One epoll registration as the kernel held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollRegistration {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// The kernel object behind a descriptor, where a path is not enough to bring it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelObject {
    Socket(SocketInfo),
    /// One end of a pipe; the ends of one pipe share `ino`. `data` (the unread bytes) is on
    /// the lowest-numbered end only.
    Pipe {
        ino: u64,
        size: u32,
        data: Vec<u8>,
        truncated: bool,
    },
    Epoll {
        regs: Vec<EpollRegistration>,
        truncated: bool,
    },
    EventFd {
        count: u64,
        semaphore: bool,
    },
    /// `value` is the time left (seconds, nanoseconds), `ticks` the expirations not read yet.
    TimerFd {
        clockid: i32,
        value: (i64, i64),
        interval: (i64, i64),
        ticks: u64,
    },
    SignalFd {
        mask: u64,
    },
}

/// Everything about the process at one epoch except page contents. Travels in each epoch's
/// commit frame (rmp-serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMeta {
    pub epoch: u64,
    /// `/proc/self/maps` of the app at the checkpoint, raw.
    pub maps: String,
    pub resets: Vec<(u64, u64)>,
    pub fds: Vec<FdEntry>,
    pub ctx: ResumeContext,
    pub mm: MmFields,
    pub auxv: Vec<u64>,
    pub cwd: String,
    pub app_sigmask: u64,
    pub altstack: (u64, i32, u64),
    pub tid: i32,
    /// Pages shipped in this epoch.
    pub pages: u64,
    /// The shim's own measure of the pause (ns).
    pub pause_ns: u64,
    /// Kernel objects behind descriptors, by descriptor number.
    #[serde(default)]
    pub kobjs: BTreeMap<i32, KernelObject>,
    /// Changes to replicated regular files in this epoch (in order; a merged epoch holds its
    /// epochs' changes one after the other). Applied to the standby's copies when the epoch
    /// commits ([`crate::files`]).
    #[serde(default)]
    pub files: Vec<FileWrite>,
    /// Paths of the replicated files the app had open for writing at the checkpoint: restore
    /// reopens these under the standby's file root.
    #[serde(default)]
    pub replicated: Vec<String>,
    /// The full image is still being streamed (`primary::stream`): some pages have not been
    /// sent yet, so this epoch cannot be restored. The first epoch without it completes the
    /// image.
    #[serde(default)]
    pub partial: bool,
    /// Every thread at the checkpoint, as the shim recorded it (`remus_abi::ThreadRecord`,
    /// ABI 6). Empty in an image from before threads; read it through
    /// [`EpochMeta::thread_records`], which then makes the one thread from `ctx` and `tid`.
    #[serde(default)]
    pub threads: Vec<ThreadRecord>,
    /// The leader's time to bring the other threads into the handler (ns; 0: one thread).
    /// Part of `pause_ns`.
    #[serde(default)]
    pub rendezvous_ns: u64,
    /// The program's connected TCP sockets at the checkpoint, by descriptor number, as
    /// `TCP_REPAIR` read them in the pause (remusd with `--service-addr`, ABI 8; empty
    /// otherwise and in older images). A standby with a service address rebuilds each at its
    /// number ([`crate::tcp::rebuild`]); without one they come back closed by the peer.
    #[serde(default)]
    pub tcp: Vec<(i32, crate::tcp::TcpConnState)>,
}

/// The record of the one thread of a single-threaded epoch: `tid` resumes at `ctx`, flagged
/// leader and main (what a shim that sends no thread records means).
pub fn single_thread(
    tid: i32,
    ctx: ResumeContext,
    sigmask: u64,
    altstack: (u64, i32, u64),
) -> ThreadRecord {
    ThreadRecord {
        tid,
        flags: THREAD_LEADER | THREAD_MAIN,
        ctx,
        sigmask,
        altstack_sp: altstack.0,
        altstack_flags: altstack.1,
        altstack_size: altstack.2,
        ..Default::default()
    }
}

impl EpochMeta {
    /// The threads to restore: `threads`, or for an image of a single-threaded epoch (a shim
    /// that sent no records) the one thread of `ctx`, `tid`, `app_sigmask` and `altstack`,
    /// flagged leader and main.
    pub fn thread_records(&self) -> Vec<ThreadRecord> {
        if !self.threads.is_empty() {
            return self.threads.clone();
        }
        vec![single_thread(
            self.tid,
            self.ctx,
            self.app_sigmask,
            self.altstack,
        )]
    }

    /// Checks the thread table restore relies on: positive, distinct TIDs, exactly one
    /// [`THREAD_MAIN`] (whose TID is the process id), at most one [`THREAD_LEADER`].
    pub fn check_threads(threads: &[ThreadRecord]) -> Result<(), String> {
        if threads.is_empty() {
            return Err("the epoch has no threads".into());
        }
        if threads.len() > remus_abi::MAX_THREADS {
            return Err(format!(
                "{} threads, the limit is {}",
                threads.len(),
                remus_abi::MAX_THREADS
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in threads {
            if t.tid <= 0 || !seen.insert(t.tid) {
                return Err(format!(
                    "bad or repeated thread id {} in the thread table",
                    t.tid
                ));
            }
        }
        let mains = threads
            .iter()
            .filter(|t| t.flags & THREAD_MAIN != 0)
            .count();
        if mains != 1 {
            return Err(format!(
                "{mains} threads are flagged as the main thread (the process id), want exactly one"
            ));
        }
        let leaders = threads
            .iter()
            .filter(|t| t.flags & THREAD_LEADER != 0)
            .count();
        if leaders > 1 {
            return Err(format!(
                "{leaders} threads are flagged as the leader, want one"
            ));
        }
        Ok(())
    }
}

/// One replicated file's change in one epoch (`remus_abi::filelog::FileRec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWrite {
    /// Absolute path on the primary.
    pub path: String,
    /// The file is new to the primary's shim: the copy is replaced (`ranges` hold it all).
    pub whole: bool,
    /// (offset, bytes) written over the copy.
    pub ranges: Vec<(u64, crate::wire::messages::PageBytes)>,
    /// The file's size at the checkpoint (the copy is truncated or extended to it).
    pub size: u64,
}

/// The ranges an epoch's maps cover, sorted: the pages an image keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout(Vec<(u64, u64)>);

impl Layout {
    pub fn of(regions: &[Region]) -> Layout {
        let mut v: Vec<(u64, u64)> = regions.iter().map(|r| (r.start, r.end)).collect();
        v.sort_unstable();
        Layout(v)
    }

    /// The layout of `maps`; unparseable maps cover nothing (the standby refuses such an
    /// epoch, so a mirror of its image keeps nothing, to be safe).
    pub fn of_maps(maps: &str) -> Layout {
        parse_maps(maps).map(|r| Layout::of(&r)).unwrap_or_default()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    pub fn contains(&self, a: u64) -> bool {
        let i = self.0.partition_point(|&(s, _)| s <= a);
        i > 0 && a < self.0[i - 1].1
    }
}

// What an epoch does to the pages of an image, written once for the standby's [`Image`] and
// for the primary's mirrors of it (`primary::pipeline`: the delta shadow and merged epochs),
// which must agree with it page for page:
// 1. [`forget_resets`]: its resets forget the pages in their ranges written before it;
// 2. its pages are stored;
// 3. [`prune_to_layout`]: pages no region of its maps covers go.

/// Step 1: removes the pages in `resets` for which `older` holds (those written before the
/// epoch), calling `dropped` with each.
pub fn forget_resets<V>(
    pages: &mut BTreeMap<u64, V>,
    resets: &[(u64, u64)],
    older: impl Fn(&V) -> bool,
    mut dropped: impl FnMut(u64, V),
) {
    for &(s, e) in resets {
        let doomed: Vec<u64> = pages
            .range(s..e.max(s))
            .filter(|(_, v)| older(v))
            .map(|(a, _)| *a)
            .collect();
        for a in doomed {
            if let Some(v) = pages.remove(&a) {
                dropped(a, v);
            }
        }
    }
}

/// Step 3: removes the pages `layout` does not cover, calling `dropped` with each; `only`:
/// look at these addresses alone (the layout is unchanged, so only the epoch's own pages can
/// be outside it).
pub fn prune_to_layout<V>(
    pages: &mut BTreeMap<u64, V>,
    layout: &Layout,
    only: Option<&[u64]>,
    mut dropped: impl FnMut(u64, V),
) {
    if let Some(only) = only {
        for &a in only {
            if !layout.contains(a) {
                if let Some(v) = pages.remove(&a) {
                    dropped(a, v);
                }
            }
        }
        return;
    }
    let mut keep = BTreeMap::new();
    for &(s, e) in layout.ranges() {
        let mut inside = pages.split_off(&s);
        let mut after = inside.split_off(&e.max(s));
        keep.append(&mut inside);
        // What is left in `pages` is below this range and above the previous one: outside.
        std::mem::swap(pages, &mut after);
        for (a, v) in after {
            dropped(a, v);
        }
    }
    for (a, v) in std::mem::replace(pages, keep) {
        dropped(a, v);
    }
}

/// The committed image on the standby.
#[derive(Default)]
pub struct Image {
    /// Metadata of the last committed epoch (None before the first full image commits).
    pub meta: Option<EpochMeta>,
    /// Regions parsed from `meta.maps`.
    pub regions: Vec<Region>,
    /// Page address -> contents. Pages outside every region of `regions` are ignored.
    pub pages: BTreeMap<u64, Box<[u8]>>,
}

impl Image {
    /// Applies one complete, verified epoch: forget the reset ranges, store the pages, prune
    /// to the regions (the rule above), take the metadata. `pages` are (address, 4096 bytes).
    pub fn apply(&mut self, meta: EpochMeta, pages: Vec<(u64, Box<[u8]>)>) -> Result<(), String> {
        // Check everything before touching the image: a bad epoch leaves it as it was.
        let regions = parse_maps(&meta.maps)?;
        if let Some((addr, data)) = pages.iter().find(|(addr, data)| {
            data.len() != remus_abi::PAGE_SIZE || !addr.is_multiple_of(PAGE_SIZE)
        }) {
            return Err(format!("bad page at {addr:#x} ({} bytes)", data.len()));
        }
        forget_resets(&mut self.pages, &meta.resets, |_| true, |_, _| {});
        let fresh: Vec<u64> = pages.iter().map(|(a, _)| *a).collect();
        for (addr, data) in pages {
            self.pages.insert(addr, data);
        }
        // When the layout is unchanged only this epoch's pages can be outside it (a full pass
        // over a large image every epoch would make the standby fall behind).
        let only = (regions == self.regions).then_some(&fresh[..]);
        prune_to_layout(&mut self.pages, &Layout::of(&regions), only, |_, _| {});
        self.regions = regions;
        self.meta = Some(meta);
        Ok(())
    }

    pub fn committed_epoch(&self) -> Option<u64> {
        self.meta.as_ref().map(|m| m.epoch)
    }

    /// The committed epoch, if its image is complete (a takeover can restore it).
    pub fn restorable_epoch(&self) -> Option<u64> {
        self.meta.as_ref().filter(|m| !m.partial).map(|m| m.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let t = "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
                 7f1c2a000000-7f1c2a028000 r--p 00000000 fe:01 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                 7ffd1c3f0000-7ffd1c3f2000 r-xp 00000000 00:00 0                          [vdso]\n";
        let r = parse_maps(t).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].path, "[heap]");
        assert!(r[0].write && !r[0].shared && !r[0].is_file());
        assert!(r[1].is_file() && !r[1].write);
        assert!(r[2].is_special() && r[2].exec);
        assert!(parse_maps("garbage").is_err());
    }

    #[test]
    fn prune_by_range_or_by_address_agree() {
        let layout = Layout(vec![(0x2000, 0x4000), (0x8000, 0x9000)]);
        let all: BTreeMap<u64, u64> = (0..12u64).map(|i| (i * 0x1000, i)).collect();
        let mut by_range = all.clone();
        let mut gone = Vec::new();
        prune_to_layout(&mut by_range, &layout, None, |a, _| gone.push(a));
        let keys: Vec<u64> = all.keys().copied().collect();
        let mut by_addr = all.clone();
        prune_to_layout(&mut by_addr, &layout, Some(&keys), |_, _| {});
        assert_eq!(by_range, by_addr);
        assert_eq!(
            by_range.keys().copied().collect::<Vec<_>>(),
            [0x2000, 0x3000, 0x8000]
        );
        assert_eq!(gone.len(), all.len() - 3);
        // A reset forgets only what `older` says was written before it; an empty or
        // backwards range forgets nothing (and does not panic).
        let mut pages = all.clone();
        forget_resets(
            &mut pages,
            &[(0x1000, 0x5000), (0x9000, 0x3000)],
            |v| *v % 2 == 1,
            |_, _| {},
        );
        assert_eq!(pages.len(), all.len() - 2);
        assert!(!pages.contains_key(&0x1000) && !pages.contains_key(&0x3000));
    }

    #[test]
    fn apply_resets_and_prunes() {
        let mut img = Image::default();
        let maps = "1000-3000 rw-p 00000000 00:00 0\n".to_string();
        let meta = EpochMeta {
            epoch: 1,
            maps: maps.clone(),
            ..Default::default()
        };
        let pg = |b: u8| vec![b; 4096].into_boxed_slice();
        img.apply(
            meta,
            vec![(0x1000, pg(1)), (0x2000, pg(2)), (0x5000, pg(5))],
        )
        .unwrap();
        assert_eq!(img.pages.len(), 2, "page outside every region is dropped");
        let meta = EpochMeta {
            epoch: 2,
            maps,
            resets: vec![(0x1000, 0x3000)],
            ..Default::default()
        };
        img.apply(meta, vec![(0x2000, pg(7))]).unwrap();
        assert_eq!(img.pages.len(), 1);
        assert_eq!(img.pages[&0x2000][0], 7);
        assert_eq!(img.committed_epoch(), Some(2));
    }

    /// Epochs of a streaming full image are committed (deltas build on them) but cannot be
    /// restored; the first complete one can, and a later partial one (a new stream on a new
    /// connection starts from an empty image, so this is the receiver's view) hides it again.
    #[test]
    fn partial_epochs_are_not_restorable() {
        let mut img = Image::default();
        let maps = "1000-3000 rw-p 00000000 00:00 0\n".to_string();
        let meta = |epoch, partial| EpochMeta {
            epoch,
            maps: maps.clone(),
            partial,
            ..Default::default()
        };
        img.apply(meta(1, true), vec![]).unwrap();
        assert_eq!(img.committed_epoch(), Some(1));
        assert_eq!(img.restorable_epoch(), None);
        img.apply(meta(2, false), vec![]).unwrap();
        assert_eq!(img.restorable_epoch(), Some(2));
        img.apply(meta(3, true), vec![]).unwrap();
        assert_eq!(img.restorable_epoch(), None);
    }
}
