//! The contract between the shim (`libremus.so`, inside the app) and `remusd primary`.
//!
//! Everything here is plain `#[repr(C)]` data with no dependencies, so the shim can write it
//! from a signal handler and the controller can read it from the shared staging area.
//!
//! ```text
//! staging memfd (created by the shim, inherited by remusd primary, MAP_SHARED in both)
//! +------------------+ 0
//! | StagingHeader    |   epoch, chunk, counts, resume context, mm fields, cwd, auxv
//! +------------------+ RESETS_OFF
//! | [ResetRange]     |   ranges whose old contents the standby must forget (new regions)
//! +------------------+ FDS_OFF
//! | [FdRecord]       |   the app's descriptor table (shim-owned fds excluded)
//! +------------------+ MAPS_OFF
//! | maps text        |   /proc/self/maps as read in the handler
//! +------------------+ ADDRS_OFF
//! | [u64]            |   address of each page in this chunk
//! +------------------+ DATA_OFF (page aligned)
//! | page data        |   n_pages * 4096 bytes, same order as the addresses
//! +------------------+ KOBJ_OFF
//! | kernel objects   |   sockets, pipes, epoll, eventfd, timerfd, signalfd ([`kobj`])
//! +------------------+ STAGING_SIZE
//! | sockets' log     |   ([`netlog`])
//! | files' log       |   ([`filelog`])
//! +------------------+
//! ```
//!
//! The whole table, and the check that ties it to [`ABI_VERSION`], is [`layout`].
//!
//! One epoch is one or more chunks. The handler fills the staging area, sends
//! [`MsgKind::EpochChunk`]; if that chunk is not the last, it waits for
//! [`MsgKind::Drained`] before reusing the area. Resets, fds, maps and the resume
//! context are valid in the last chunk only. The controller never signals a new epoch
//! before it has drained the last chunk of the previous one.

#![no_std]

pub mod filelog;
pub mod kobj;
pub mod layout;
pub mod netlog;

pub const PAGE_SIZE: usize = 4096;

/// The real-time signal the controller sends to ask for a checkpoint. glibc's SIGRTMAX is 64;
/// glibc reserves 32 and 33. The shim hides this signal from the app's sigaction/sigprocmask.
pub const EPOCH_SIGNAL: i32 = 63;

/// Descriptors the shim owns are moved to numbers at or above this, so they stay out of the
/// app's way and out of the image's descriptor table.
pub const SHIM_FD_BASE: i32 = 1000;
/// The shim's end of the shim<->controller socket, as seen by `remusd primary` (fd number in
/// the controller process after exec).
pub const CONTROLLER_SHIM_SOCK_FD: i32 = 3;
/// The staging memfd, as seen by `remusd primary`.
pub const CONTROLLER_STAGING_FD: i32 = 4;
/// Output commit: for the i-th held output stream (named by the i-th `--output` argument of
/// `remusd primary`), remusd inherits the app's original descriptor at
/// `CONTROLLER_OUTPUT_FD_BASE + 2i` and the read end of the pipe the shim put in its place at
/// `CONTROLLER_OUTPUT_FD_BASE + 2i + 1`.
pub const CONTROLLER_OUTPUT_FD_BASE: i32 = 5;
/// At most this many held output streams (stdout, stderr).
pub const MAX_OUTPUT_STREAMS: usize = 2;

// Environment variables the shim reads.
pub const ENV_STANDBY: &str = "REMUS_STANDBY";
pub const ENV_EPOCH_MS: &str = "REMUS_EPOCH_MS";
pub const ENV_CONTROL: &str = "REMUS_CONTROL";
pub const ENV_ALLOW_UNPROTECTED: &str = "REMUS_ALLOW_UNPROTECTED";
/// The key file that authenticates the replication link (`remusd primary --key-file`).
pub const ENV_KEY_FILE: &str = "REMUS_KEY_FILE";
/// `1`: no key, for a standby on a loopback address only (`remusd primary --insecure`).
pub const ENV_INSECURE: &str = "REMUS_INSECURE";
/// Path of the `remusd` binary; default: `remusd` next to `libremus.so`, then `$PATH`.
pub const ENV_REMUSD: &str = "REMUS_REMUSD";
/// Set by the shim in the protected process: a child that inherits the shim sees a different
/// pid here and stays passive.
pub const ENV_PROTECTED_PID: &str = "REMUS_PROTECTED_PID";
/// Extra arguments for `remusd primary` (whitespace separated), e.g. `--heartbeat-ms 50`.
pub const ENV_PRIMARY_ARGS: &str = "REMUS_PRIMARY_ARGS";
/// Set by the shim in the environment of the image a protected program `execve`s into:
/// `SOCK,STAGING,NEXT_CONN` (the kept shim socket and staging memfd, and the next socket
/// connection number). The new image's shim carries on with them instead of starting a new
/// `remusd primary`, and removes the variable.
pub const ENV_EXEC_LINK: &str = "REMUS_EXEC_LINK";

pub const STAGING_MAGIC: u64 = u64::from_le_bytes(*b"REMUSSTG");
/// The staging layout's version: the shim's hello carries it and remusd refuses another. Bump it
/// with every change to [`layout::LAYOUT`] (the build fails until you do; see [`layout`]).
/// 2: the sockets' and files' logs and the controller's words in the header (1 had neither).
/// 3: [`MsgKind::Exec`], [`MsgKind::ExecFailed`], [`MsgKind::HelloAfterExec`].
/// 4: [`MsgKind::Forked`], [`MsgKind::Handover`], [`HANDOVER_OFF`], [`HANDOVER_CONN_OFF`].
/// 5: [`MsgKind::ChildServes`].
/// 6: threads: [`ThreadRecord`]s at [`THREADS_OFF`], `n_threads` and `rendezvous_ns` in the
///    header, [`MsgKind::ThreadStuck`].
/// 7: `stdio_pipes` in the header ([`PipeProbe`]: the held output pipes' unread bytes at the
///    checkpoint).
/// 8: connections dumped in the pause: [`TCP_HOLD_OFF`], [`MsgKind::TcpDumped`],
///    [`MsgKind::TcpHeld`], [`MsgKind::TcpDumpLate`].
pub const ABI_VERSION: u32 = 8;

pub const MAX_RESETS: usize = 8192;
pub const MAX_FDS: usize = 1024;
pub const FD_PATH_MAX: usize = 512;
pub const MAX_MAPS_BYTES: usize = 2 << 20;
/// Pages per chunk: 16384 pages = 64 MiB.
pub const CHUNK_PAGES: usize = 16384;
pub const MAX_AUXV_WORDS: usize = 128;
pub const CWD_MAX: usize = 4096;

pub const HEADER_SIZE: usize = 64 << 10;
pub const RESETS_OFF: usize = HEADER_SIZE;
pub const FDS_OFF: usize = RESETS_OFF + MAX_RESETS * core::mem::size_of::<ResetRange>();
pub const MAPS_OFF: usize = FDS_OFF + MAX_FDS * core::mem::size_of::<FdRecord>();
pub const ADDRS_OFF: usize = MAPS_OFF + MAX_MAPS_BYTES;
pub const DATA_OFF: usize = round_up(ADDRS_OFF + CHUNK_PAGES * 8, PAGE_SIZE);
/// The staging area ends after the kernel-object section ([`kobj`]), which follows the page
/// data.
pub const STAGING_SIZE: usize = kobj::KOBJ_END;

const fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

const _: () = assert!(core::mem::size_of::<StagingHeader>() <= HEADER_SIZE);

/// Where the restored thread resumes: the callee-saved registers, stack pointer and return
/// address saved by the shim's `remus_save_context` inside the epoch handler. Restoring means
/// setting these registers, `rax = 1`, and `fs_base`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ResumeContext {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
    pub fs_base: u64,
}

/// The mm fields `prctl(PR_SET_MM_MAP)` wants, read from `/proc/self/stat` (and `brk(0)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// A range whose contents the standby must forget before applying this epoch's pages: a
/// region the tracker had not registered (new, replaced, or changed protection). Its populated
/// pages are all in this epoch; a page of the range that is not shipped is zero (anonymous) or
/// the file's content (file-backed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetRange {
    pub start: u64,
    pub end: u64,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    Regular = 1,
    CharDevice = 2,
    Directory = 3,
    Fifo = 4,
    Socket = 5,
    /// `anon_inode:[eventpoll]`, `[eventfd]`, `[timerfd]`, `[signalfd]`, ...; the path says which.
    AnonInode = 6,
    Other = 7,
}

impl FdKind {
    pub fn from_u32(v: u32) -> FdKind {
        match v {
            1 => FdKind::Regular,
            2 => FdKind::CharDevice,
            3 => FdKind::Directory,
            4 => FdKind::Fifo,
            5 => FdKind::Socket,
            6 => FdKind::AnonInode,
            _ => FdKind::Other,
        }
    }
}

/// One entry of the app's descriptor table at the checkpoint.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FdRecord {
    pub fd: i32,
    /// [`FdKind`] as u32.
    pub kind: u32,
    /// `fcntl(F_GETFL)`: access mode and status flags.
    pub flags: i32,
    /// `fcntl(F_GETFD)`: `FD_CLOEXEC`.
    pub fd_flags: i32,
    /// `lseek(fd, 0, SEEK_CUR)`, or -1 where the kind has no offset.
    pub offset: i64,
    /// `readlink(/proc/self/fd/N)`; longer than [`FD_PATH_MAX`] sets `path_truncated`.
    pub path_len: u32,
    pub path_truncated: u32,
    pub path: [u8; FD_PATH_MAX],
}

/// The first bytes of the staging area. Fields past `n_pages` are meaningful in the last chunk
/// of an epoch only.
#[repr(C)]
pub struct StagingHeader {
    pub magic: u64,
    pub abi_version: u32,
    pub chunk: u32,
    pub epoch: u64,
    /// 1 when this chunk completes the epoch.
    pub last: u32,
    pub n_pages: u32,
    pub n_resets: u32,
    pub n_fds: u32,
    pub maps_len: u32,
    pub cwd_len: u32,
    /// Time spent in the handler so far, measured by the shim (CLOCK_MONOTONIC).
    pub pause_ns: u64,
    /// Pages shipped in this whole epoch (all chunks).
    pub epoch_pages: u64,
    pub ctx: ResumeContext,
    pub mm: MmFields,
    /// Signal mask the app had when the epoch signal arrived (also in the signal frame).
    pub app_sigmask: u64,
    /// `sigaltstack` at the checkpoint: sp, flags, size.
    pub altstack_sp: u64,
    pub altstack_flags: i32,
    pub _pad0: i32,
    pub altstack_size: u64,
    /// The app's thread id at the checkpoint (glibc caches it in the TCB).
    pub tid: i32,
    pub n_auxv: u32,
    pub auxv: [u64; MAX_AUXV_WORDS],
    pub cwd: [u8; CWD_MAX],
    /// Flags: [`HDR_FLAG_UNSUPPORTED`], [`HDR_FLAG_STREAMED`].
    pub flags: u32,
    /// Threads at the checkpoint: this many [`ThreadRecord`]s at [`THREADS_OFF`] (the leader's
    /// is also `ctx`, `tid`, `app_sigmask` and the alternate stack above).
    pub n_threads: u32,
    /// Time the leader spent bringing every other thread into the handler (0: one thread).
    pub rendezvous_ns: u64,
    /// The app's fds 1 and 2 at the checkpoint (index 0: fd 1), where they are pipes: what
    /// remusd needs to split a held output stream exactly at the checkpoint.
    pub stdio_pipes: [PipeProbe; 2],
}

/// One of the app's fds 1 and 2 at a checkpoint. Where it is a pipe (the one the shim put in
/// place of a held output stream, whose read end remusd holds), `ino` is the pipe's inode and
/// `unread` the bytes written to it that nobody has read yet (`FIONREAD`): remusd, which does
/// not read its held pipes while an epoch signal is outstanding, tags exactly that many of the
/// bytes after those it has read with this epoch. `ino` 0: not a pipe, or not known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipeProbe {
    pub ino: u64,
    pub unread: u32,
    /// 1 when `unread` was read (`FIONREAD` answered).
    pub valid: u32,
}

/// The per-thread records of the last chunk of an epoch, inside the header area.
pub const THREADS_OFF: usize = 16 << 10;
/// At most this many threads are protected; a program with more is refused.
pub const MAX_THREADS: usize = 256;
const _: () = assert!(core::mem::size_of::<StagingHeader>() <= THREADS_OFF);
const _: () =
    assert!(THREADS_OFF + MAX_THREADS * core::mem::size_of::<ThreadRecord>() <= COMMITTED_OFF);

/// [`ThreadRecord::flags`]: this thread ran the capture (it has the resume point in `ctx` of
/// the header too).
pub const THREAD_LEADER: u32 = 1;
/// [`ThreadRecord::flags`]: the thread group leader (its TID is the process id).
pub const THREAD_MAIN: u32 = 2;

/// One thread at the checkpoint, parked in the epoch handler. Restore brings it back with
/// the same TID, the registers of `ctx` (`rax = 1`) and `ctx.fs_base`; the thread itself then
/// re-registers the rest (its robust list, rseq area, `clear_child_tid`, name) from the shim's
/// own table, and `rt_sigreturn` restores its signal mask, alternate stack and full register
/// state from the signal frame on its stack. The other fields are for the image's reader
/// (`remusctl inspect`, checks at restore).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ThreadRecord {
    pub tid: i32,
    /// [`THREAD_LEADER`], [`THREAD_MAIN`].
    pub flags: u32,
    pub ctx: ResumeContext,
    /// The thread's signal mask when the epoch signal arrived (bit `sig - 1`).
    pub sigmask: u64,
    pub altstack_sp: u64,
    pub altstack_size: u64,
    pub altstack_flags: i32,
    pub _pad: i32,
    /// glibc's `clear_child_tid` slot (`set_tid_address`), 0 if unknown.
    pub clear_child_tid: u64,
    /// `get_robust_list`: head and length (0: none).
    pub robust_head: u64,
    pub robust_len: u64,
    /// The rseq area registered for the thread (0: none) and its length.
    pub rseq_area: u64,
    pub rseq_len: u32,
    pub _pad2: u32,
    /// `PR_GET_NAME`, NUL-padded.
    pub name: [u8; 16],
}

/// The epoch saw state the shim cannot replicate (the controller should have been told with
/// an [`MsgKind::Unsupported`] message; this is belt and braces).
pub const HDR_FLAG_UNSUPPORTED: u32 = 1;
/// The epoch was taken with [`STREAM_OFF`] set: of the ranges it resets, it carries only the
/// pages of regions the tracker cannot follow; the rest of their contents is the controller's
/// to read while the program runs.
pub const HDR_FLAG_STREAMED: u32 = 2;

/// Kinds of [`Msg`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    // shim -> controller
    /// First message: a = app pid, b = ABI_VERSION.
    Hello = 1,
    /// A chunk is in staging: a = epoch, b = chunk index.
    EpochChunk = 2,
    /// The app created a second thread (text says how); replication must stop.
    ThreadCreated = 3,
    /// The app is exiting on its own: a = code or signal, b = 0 exit / 1 killed by signal a.
    Exiting = 4,
    /// The app has state the shim cannot replicate (text names it); replication must stop.
    Unsupported = 5,
    /// A line for the controller's log.
    Log = 6,
    /// Output commit for sockets: the first time the app sends on a socket, the shim passes a
    /// duplicate of it (`SCM_RIGHTS`, one descriptor) with a = connection number (as in
    /// [`netlog::NetEntry::conn`]), b = the app's fd number.
    NetFd = 7,
    /// The app is about to wait for input (epoll/poll/select) while output of epoch a waits
    /// for its checkpoint: take that epoch now rather than at the end of the interval.
    Idle = 8,
    /// The program is about to `execve` (text: the path). Same pid; the shim socket and the
    /// staging memfd are kept open across the exec. Until [`MsgKind::HelloAfterExec`] (or
    /// [`MsgKind::ExecFailed`]) the controller sends no epoch signal (the shim has blocked it:
    /// one that is pending is taken by the new image). Every held socket's close is already in
    /// the output log: the new image registers the sockets it still has afresh.
    Exec = 9,
    /// The `execve` announced by [`MsgKind::Exec`] failed: a = errno. The old image goes on,
    /// protected as before.
    ExecFailed = 10,
    /// The first message of the new image after an [`MsgKind::Exec`]: a = pid, b = ABI_VERSION.
    /// Its first epoch ships everything (every region new, every file whole), as at start-up;
    /// its epoch numbers continue from the staging header's.
    HelloAfterExec = 11,
    /// The program forked: a = the child's pid (a child that keeps running the same program
    /// beside it is the multi-process case, which remusd refuses).
    Forked = 12,
    /// The program exits, leaving its child a running the same program (the classic
    /// daemonize): protection moves to the child, which says [`MsgKind::HelloAfterExec`] with
    /// its own pid once it has taken over. The shim has written a to [`HANDOVER_OFF`] and the
    /// next connection number to [`HANDOVER_CONN_OFF`]; every held socket's close is in the log.
    Handover = 13,
    /// From a child of the program that still runs the same program (it did not exec): it
    /// waits for input on descriptors (epoll, poll, select, a blocking accept) as a server's
    /// worker does: a = its pid. Beside a parent that keeps running, that is the
    /// multi-process case. (A shell's subshell only waits for its own children.)
    ChildServes = 14,
    /// An epoch was abandoned because thread a did not come into the epoch handler within
    /// the deadline (it blocks the epoch signal, or is stopped): a = TID, b = epoch tried.
    /// Text: its name and what it was doing. The controller retries at the next tick.
    ThreadStuck = 15,
    /// The shim held epoch a (every thread in the handler) for the connection dump and got
    /// [`MsgKind::TcpDumped`] for it within [`TCP_HOLD_DEADLINE_NS`]: the dump is consistent
    /// with the checkpoint; the program resumes now.
    TcpHeld = 16,
    /// The shim held epoch a for the connection dump and got no [`MsgKind::TcpDumped`] within
    /// [`TCP_HOLD_DEADLINE_NS`]: the program resumed, so whatever remusd dumped for epoch a
    /// may be newer than its checkpoint; the controller must not commit that epoch.
    TcpDumpLate = 17,

    // controller -> shim
    /// The standby is connected; protection starts.
    Ready = 100,
    /// Refused: text says why. The shim prints it and exits 1, unless
    /// `REMUS_ALLOW_UNPROTECTED=1`, in which case the controller sends `RunUnprotected`.
    Refuse = 101,
    /// Run without protection (allowed by REMUS_ALLOW_UNPROTECTED); text says why.
    RunUnprotected = 102,
    /// The chunk a = epoch, b = chunk was copied out; the staging area is free.
    Drained = 103,
    /// Epoch a's connections are dumped (sent after the last chunk of an epoch the shim holds
    /// for it, see [`TCP_HOLD_OFF`]): the shim answers [`MsgKind::TcpHeld`] and lets the
    /// program go on. One that arrives when the shim is not waiting for it is ignored.
    TcpDumped = 104,
}

impl MsgKind {
    pub fn from_u32(v: u32) -> Option<MsgKind> {
        Some(match v {
            1 => MsgKind::Hello,
            2 => MsgKind::EpochChunk,
            3 => MsgKind::ThreadCreated,
            4 => MsgKind::Exiting,
            5 => MsgKind::Unsupported,
            6 => MsgKind::Log,
            7 => MsgKind::NetFd,
            8 => MsgKind::Idle,
            9 => MsgKind::Exec,
            10 => MsgKind::ExecFailed,
            11 => MsgKind::HelloAfterExec,
            12 => MsgKind::Forked,
            13 => MsgKind::Handover,
            14 => MsgKind::ChildServes,
            15 => MsgKind::ThreadStuck,
            16 => MsgKind::TcpHeld,
            17 => MsgKind::TcpDumpLate,
            100 => MsgKind::Ready,
            101 => MsgKind::Refuse,
            102 => MsgKind::RunUnprotected,
            103 => MsgKind::Drained,
            104 => MsgKind::TcpDumped,
            _ => return None,
        })
    }
}

pub const MSG_TEXT: usize = 488;

/// A fixed-size message on the shim<->controller `SOCK_SEQPACKET` socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Msg {
    pub kind: u32,
    pub text_len: u32,
    pub a: u64,
    pub b: u64,
    pub text: [u8; MSG_TEXT],
}

impl Msg {
    pub const fn new(kind: MsgKind, a: u64, b: u64) -> Msg {
        Msg {
            kind: kind as u32,
            text_len: 0,
            a,
            b,
            text: [0; MSG_TEXT],
        }
    }

    /// Copies as much of `s` as fits.
    pub fn with_text(mut self, s: &[u8]) -> Msg {
        let n = s.len().min(MSG_TEXT);
        self.text[..n].copy_from_slice(&s[..n]);
        self.text_len = n as u32;
        self
    }

    pub fn text(&self) -> &[u8] {
        &self.text[..(self.text_len as usize).min(MSG_TEXT)]
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: Msg is repr(C), made of integers and a byte array with no padding holes
        // (4+4+8+8+488 = 512 bytes), so every byte is initialised.
        unsafe {
            core::slice::from_raw_parts(
                self as *const Msg as *const u8,
                core::mem::size_of::<Msg>(),
            )
        }
    }

    /// Reads a message from bytes received on the socket; `None` if the size is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Msg> {
        if b.len() != core::mem::size_of::<Msg>() {
            return None;
        }
        let mut m = Msg::new(MsgKind::Log, 0, 0);
        // SAFETY: the sizes match and every bit pattern is a valid Msg (integers and bytes).
        unsafe {
            core::ptr::copy_nonoverlapping(b.as_ptr(), &mut m as *mut Msg as *mut u8, b.len());
        }
        Some(m)
    }
}

const _: () = assert!(core::mem::size_of::<Msg>() == 512);

/// Output commit support (added by the controller; additive, the layout above is unchanged).
///
/// The controller publishes, inside the unused tail of the header area of the staging memfd,
/// the last epoch the standby has acknowledged: a `u64` at [`COMMITTED_OFF`] (0 = none yet;
/// [`COMMITTED_UNPROTECTED`] = protection has stopped, release everything), written with
/// release ordering *before* the `u32` futex word at [`COMMITTED_FUTEX_OFF`] is incremented
/// and woken (`FUTEX_WAKE`, shared — not `FUTEX_PRIVATE_FLAG` — since it is a shared mapping).
/// The shim may hold output produced in epoch k until `committed >= k` (or unprotected),
/// reading the word with an atomic load and sleeping with `FUTEX_WAIT` on the futex word.
/// The shim must not write these 16 bytes.
pub const COMMITTED_OFF: usize = HEADER_SIZE - 64;
pub const COMMITTED_FUTEX_OFF: usize = COMMITTED_OFF + 8;
/// The value of the committed word once protection has stopped (standby lost, second thread,
/// unsupported state): nothing is held any more.
pub const COMMITTED_UNPROTECTED: u64 = u64::MAX;

const _: () = assert!(core::mem::size_of::<StagingHeader>() <= COMMITTED_OFF);
const _: () = assert!(COMMITTED_OFF.is_multiple_of(8));

/// Full resend (resynchronising a new standby connection; additive, like [`COMMITTED_OFF`]).
///
/// When the controller has a new connection to a standby that holds nothing of this app (a
/// restarted standby, a link that came back), it asks the shim for a full image: it stores a
/// new, non-zero request number in the `u64` at [`RESEND_REQ_OFF`] (release ordering) before
/// it sends the next epoch signal. The epoch handler compares it with the last request it
/// honoured, the `u64` at [`RESEND_DONE_OFF`]; when they differ it ships a reset of every
/// region's range and every replicated file whole. With [`STREAM_OFF`] set it keeps following
/// the regions (their pages written since the last epoch go out as usual; the controller reads
/// the rest); without, it forgets them, so that this epoch ships every region as new (its
/// populated pages after its reset). Then it stores the epoch number at
/// [`RESEND_EPOCH_OFF`] and the request number at [`RESEND_DONE_OFF`] (release ordering),
/// before the epoch's first chunk is announced. The controller writes only the request word;
/// the shim writes only the other two.
pub const RESEND_REQ_OFF: usize = COMMITTED_OFF + 16;
pub const RESEND_DONE_OFF: usize = COMMITTED_OFF + 24;
pub const RESEND_EPOCH_OFF: usize = COMMITTED_OFF + 32;

/// Streamed full images (additive, like [`COMMITTED_OFF`]). When the `u64` at [`STREAM_OFF`]
/// is non-zero at an epoch (the controller sets it for the epoch that starts a full image,
/// before its signal), the epoch handler starts following each region new to it without
/// copying its pages in the pause (its reset goes out as usual); in a full resend
/// ([`RESEND_REQ_OFF`]) it also resets every region it already follows, re-arming the
/// tracker without copying what was written. It flags the epoch [`HDR_FLAG_STREAMED`]. The
/// controller then reads those ranges from the running program between epochs, a bounded
/// batch at a time: a page the program writes after the pause shows up in a later epoch's
/// dirty pages, which win over the controller's copy. The shim only reads this word.
pub const STREAM_OFF: usize = COMMITTED_OFF + 40;

/// Daemonizing programs (see [`MsgKind::Handover`]): the pid of the child the program hands
/// protection to (0: none), written by the exiting program's shim and read by its children's
/// shims (the staging mapping is shared with them), then the next socket connection number.
/// The controller only reads them.
pub const HANDOVER_OFF: usize = COMMITTED_OFF + 48;
pub const HANDOVER_CONN_OFF: usize = COMMITTED_OFF + 56;

const _: () = assert!(STREAM_OFF + 8 <= HEADER_SIZE);
const _: () = assert!(HANDOVER_CONN_OFF + 8 <= HEADER_SIZE);
const _: () = assert!(RESEND_EPOCH_OFF + 8 <= HEADER_SIZE);
const _: () = assert!(RESEND_REQ_OFF.is_multiple_of(8));

/// Connections dumped in the pause (ABI 8; a controller word like [`COMMITTED_OFF`], just below
/// it). remusd, when it runs with a service address (its program's connections come back at a
/// failover), stores 1 in the `u64` at [`TCP_HOLD_OFF`] before its first epoch signal. The
/// epoch handler then, after announcing the last chunk of an epoch whose descriptor table has
/// a connected TCP socket (IPv4 or IPv6), keeps every thread in the handler until remusd says
/// [`MsgKind::TcpDumped`] for that epoch (remusd reads each connection with `TCP_REPAIR` while
/// nothing of the program runs), at most [`TCP_HOLD_DEADLINE_NS`]; it answers
/// [`MsgKind::TcpHeld`], or [`MsgKind::TcpDumpLate`] when the deadline passed. The shim only
/// reads this word.
pub const TCP_HOLD_OFF: usize = COMMITTED_OFF - 8;
/// How long the epoch handler waits for [`MsgKind::TcpDumped`] (the thread rendezvous has
/// 200 ms; a dump costs microseconds per idle connection, milliseconds with megabytes queued).
pub const TCP_HOLD_DEADLINE_NS: u64 = 500_000_000;

const _: () = assert!(TCP_HOLD_OFF.is_multiple_of(8));
const _: () =
    assert!(THREADS_OFF + MAX_THREADS * core::mem::size_of::<ThreadRecord>() <= TCP_HOLD_OFF);
