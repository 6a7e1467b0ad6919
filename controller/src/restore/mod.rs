//! Restore: turn the standby's committed [`Image`] back into a running process.
//!
//! ptrace-driven, in the style of CRIU's "compel": the daemon clones a child (`clone3` with
//! `set_tid`: it gets the pid of the image's main thread) that does almost nothing by itself
//! (blocks signals, maps a small injection area holding `syscall; int3`, asks to be traced
//! and stops). Everything else is done from here, in ordinary Rust, by making the stopped
//! child execute one system call at a time ([`inject::Tracee`]):
//!
//! 1. forget the daemon's per-thread kernel state the clone copied (rseq registration, robust
//!    futex list, clear-child-tid, alternate signal stack, signal dispositions);
//! 2. install the descriptor table ([`fds`]) and the working directory;
//! 3. unmap everything the child inherited from the daemon, except the injection area and the
//!    kernel's special mappings, and move `[vvar]`, `[vvar_vclock]` and `[vdso]` to where the
//!    image had them ([`layout`]);
//! 4. map every region of the image at its address with its protection and write the image's
//!    pages into it through `/proc/<pid>/mem` ([`regions`]);
//! 5. `prctl(PR_SET_MM_MAP)` ([`mm`]);
//! 6. add every other thread of the image with its own TID (an injected `clone3` with
//!    `CLONE_THREAD` and `set_tid`; traced from birth, it stops before its first instruction)
//!    and set its registers (its resume point, `rax = 1`, its `fs` base) and signal mask;
//! 7. set the main thread's signal mask, unmap the injection area (the last injected
//!    syscall; the child is caught at its syscall-exit stop, so it never returns into the
//!    unmapped page), set its registers, and detach every thread, the main one last.
//!
//! Threads come from [`crate::image::EpochMeta::thread_records`]: the record flagged
//! `THREAD_MAIN` is the process (its TID is the pid), the others are added; an image without
//! records (a single-threaded epoch) is one main thread made from `ctx` and `tid`. Each
//! thread re-registers the rest itself (robust list, rseq, clear-child-tid, name) in the
//! shim, and `rt_sigreturn` restores its mask, alternate stack and full registers.
//!
//! Ids are never replaced by others: when one is in use on this host, the process is restored
//! into a new PID namespace ([`pidns`]) where all are free, and the log says so
//! ([`RestoreOptions::pid_namespace`]).
//!
//! The restored process is a child of the calling thread's process. While `restore` runs,
//! no other thread of the caller may reap arbitrary children (`waitpid(-1, ..)`): it could
//! swallow the ptrace stops this module waits for.

mod child;
mod clone;
mod fds;
mod inject;
mod kobj;
mod layout;
mod mm;
pub mod net;
mod pidns;
mod regions;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use tracing::{debug, info, warn};

use crate::image::{Image, Region, ResumeContext, ThreadRecord, PAGE_SIZE, THREAD_MAIN};

pub use fds::unrestorable_fds;
use inject::Tracee;
pub use kobj::{BindAddr, BindMap};

/// What the standby tells restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// File the restored process's fd 1 is connected to (created if missing, appended to).
    /// `None`: the caller's own fd 1.
    pub stdout: Option<PathBuf>,
    /// Same for fd 2.
    pub stderr: Option<PathBuf>,
    /// The standby's state directory (not used by restore itself yet).
    pub state_dir: PathBuf,
    /// The dump-based path, for tests and tools: the complete register set of a process that
    /// was stopped from outside (ptrace), used instead of the shim's `ResumeContext`. With it
    /// the registers are restored exactly as given (except `orig_rax`, which is set to -1:
    /// adjust `rip`/`rax` yourself for a syscall that must restart), `fs_base` included, and
    /// the signal mask is `meta.app_sigmask` instead of "everything blocked".
    pub full_regs: Option<libc::user_regs_struct>,
    /// `--bind-map FROM=TO`: addresses the standby binds instead of the primary's.
    pub bind_map: Vec<BindMap>,
    /// `--file-root DIR`: replicated files (`EpochMeta::replicated`) are reopened under it.
    /// None: by their own path.
    pub file_root: Option<PathBuf>,
    /// What to do when a TID of the image is in use on this host.
    pub pid_namespace: PidNamespacePolicy,
    /// The dump-based path for the other threads, beside `full_regs`: the complete register
    /// set of each thread other than the main one, by TID (the image's), restored as given
    /// (`orig_rax` set to -1), with the thread record's `sigmask`.
    pub thread_regs: Vec<(i32, libc::user_regs_struct)>,
    /// `--service-addr`: the program gets a network namespace of its own with the address,
    /// its connections rebuilt ([`net`]). None: the sockets are made in the caller's
    /// namespace and connections come back closed by the peer.
    pub service: Option<net::ServiceRestore>,
}

/// When the image's process and thread ids are not all free on this host. They are never
/// replaced by other numbers (glibc, mutexes, robust futexes and timers hold them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PidNamespacePolicy {
    /// Restore into a new PID namespace (its own init, a private mount namespace with a fresh
    /// `/proc`), where every number is free; said in the log.
    #[default]
    WhenTaken,
    /// Fail with [`RestoreError::TidTaken`].
    Never,
    /// Always restore into a new PID namespace (tests).
    Always,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .field("state_dir", &self.state_dir)
            .field(
                "full_regs",
                &self.full_regs.map(|r| format!("rip={:#x}", r.rip)),
            )
            .field("bind_map", &self.bind_map)
            .field("file_root", &self.file_root)
            .field("pid_namespace", &self.pid_namespace)
            .field(
                "thread_regs",
                &self.thread_regs.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            )
            .field("service", &self.service)
            .finish()
    }
}

/// A process restore started; it runs and is a child of the caller, who must wait for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredProcess {
    /// Its pid as the caller sees it (waitpid, signals, `/proc/<pid>`).
    pub pid: i32,
    /// Its pid as it sees itself: the image's (the same as `pid` unless in a new PID
    /// namespace).
    pub own_pid: i32,
    /// Its threads' TIDs as the caller sees them, the main thread's (`pid`) first, in the
    /// order of the image's thread records otherwise.
    pub tids: Vec<i32>,
    /// Restored into a new PID namespace: the pid of its init (our child; it exits after the
    /// program).
    pub pid_namespace_init: Option<i32>,
    /// `--service-addr`: the program's network namespace with the address, torn down when
    /// the last clone is dropped: keep it while the program runs.
    pub network: Option<net::KeptNetwork>,
}

/// Why a restore failed. Each message names what failed (system call, address, path, errno).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("nothing to restore: the image has no committed epoch yet")]
    NoCommittedEpoch,
    #[error("cannot restore this image: {0}")]
    Unsupported(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{call} in the process being restored failed ({what}): {}", errno_text(*.errno))]
    Injected {
        call: &'static str,
        what: String,
        errno: i32,
    },
    #[error(
        "file {path:?} needed for {what} cannot be opened on this host: {}",
        errno_text(*.errno)
    )]
    MissingFile {
        path: String,
        what: String,
        errno: i32,
    },
    #[error("the process being restored (pid {pid}) {how} during restore ({during})")]
    ChildDied {
        pid: i32,
        how: String,
        during: String,
    },
    #[error("no free address range of {len:#x} bytes for {what}")]
    NoAddressSpace { len: u64, what: &'static str },
    #[error(
        "the image's {what} {tid} is in use on this host by {holder}; restore gives every \
         thread back its own id (the program keeps them in memory) and would not use a new \
         PID namespace here: end that process, or let restore use a PID namespace"
    )]
    TidTaken {
        tid: i32,
        what: String,
        holder: String,
    },
    #[error("cannot give the restored {what} its id {tid} (clone3 set_tid): {why}")]
    SetTid { tid: i32, what: String, why: String },
}

/// A failed `clone3` with `set_tid` = [`tid`] for `what`.
pub(crate) fn set_tid_error(tid: i32, what: &str, errno: i32) -> RestoreError {
    use clone::SetTidError;
    match SetTidError::from_errno(errno) {
        SetTidError::Taken => RestoreError::TidTaken {
            tid,
            what: what.into(),
            holder: pidns::holder(tid).unwrap_or_else(|| "another process".into()),
        },
        SetTidError::NotPermitted => RestoreError::SetTid {
            tid,
            what: what.into(),
            why: "not permitted: choosing ids needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN \
                  (run remusd standby as root)"
                .into(),
        },
        SetTidError::Other(libc::EINVAL) => RestoreError::SetTid {
            tid,
            what: what.into(),
            why: format!(
                "invalid; is it at or above this host's /proc/sys/kernel/pid_max ({})? Raise \
                 pid_max to the primary's",
                std::fs::read_to_string("/proc/sys/kernel/pid_max")
                    .unwrap_or_default()
                    .trim()
            ),
        },
        SetTidError::Other(e) => RestoreError::SetTid {
            tid,
            what: what.into(),
            why: errno_text(e),
        },
    }
}

fn errno_text(errno: i32) -> String {
    // "No such file or directory (os error 2)"
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Pages of the injection area: one of code (`syscall; int3`), the rest scratch for strings
/// and structures passed to injected system calls.
const INJ_PAGES: u64 = 3;

/// Restores `image` as a new child process of the caller and lets it run: the process with
/// the pid of the image's main thread, every other thread with its own TID
/// ([`crate::image::EpochMeta::thread_records`]), in a new PID namespace if one of them is
/// taken here ([`RestoreOptions::pid_namespace`]).
pub fn restore(image: &Image, opts: &RestoreOptions) -> Result<RestoredProcess, RestoreError> {
    let meta = image.meta.as_ref().ok_or(RestoreError::NoCommittedEpoch)?;
    let started = std::time::Instant::now();
    check_image(image)?;
    let threads = ThreadPlan::of(meta, opts)?;

    let taken = threads
        .all()
        .find_map(|t| pidns::holder(t.tid).map(|h| (t.tid, h)));
    let in_ns = match (opts.pid_namespace, &taken) {
        (PidNamespacePolicy::Always, _) => true,
        (_, None) => false,
        (PidNamespacePolicy::Never, Some((tid, holder))) => {
            return Err(RestoreError::TidTaken {
                tid: *tid,
                what: threads.what(*tid),
                holder: holder.clone(),
            })
        }
        (PidNamespacePolicy::WhenTaken, Some((tid, holder))) => {
            warn!(
                tid,
                "the image's {} {tid} is in use on this host by {holder}: restoring into a new \
                 PID namespace, where the program keeps all of its ids",
                threads.what(*tid)
            );
            true
        }
    };
    let restored = match attempt(image, meta, opts, &threads, in_ns) {
        // Taken between the look and the clone.
        Err(RestoreError::TidTaken { tid, what, holder })
            if !in_ns && opts.pid_namespace == PidNamespacePolicy::WhenTaken =>
        {
            warn!(
                tid,
                "the image's {what} {tid} was taken on this host by {holder} meanwhile: \
                 restoring into a new PID namespace, where the program keeps all of its ids"
            );
            attempt(image, meta, opts, &threads, true)?
        }
        r => r?,
    };
    info!(
        pid = restored.pid,
        own_pid = restored.own_pid,
        threads = restored.tids.len(),
        pid_namespace_init = restored.pid_namespace_init,
        epoch = meta.epoch,
        regions = image.regions.len(),
        pages = image.pages.len(),
        ms = started.elapsed().as_millis() as u64,
        "restored process is running"
    );
    Ok(restored)
}

/// The threads of the image, the main one (the process id) apart.
struct ThreadPlan {
    main: ThreadRecord,
    others: Vec<ThreadRecord>,
}

impl ThreadPlan {
    fn of(
        meta: &crate::image::EpochMeta,
        opts: &RestoreOptions,
    ) -> Result<ThreadPlan, RestoreError> {
        let all = meta.thread_records();
        crate::image::EpochMeta::check_threads(&all)
            .map_err(|e| RestoreError::Unsupported(format!("the image's threads: {e}")))?;
        let (main, others): (Vec<ThreadRecord>, Vec<ThreadRecord>) =
            all.into_iter().partition(|t| t.flags & THREAD_MAIN != 0);
        if let Some(t) = others.iter().find(|t| {
            opts.full_regs.is_some() && !opts.thread_regs.iter().any(|(tid, _)| *tid == t.tid)
        }) {
            return Err(RestoreError::Unsupported(format!(
                "full_regs is given, but no thread_regs for thread {}",
                t.tid
            )));
        }
        Ok(ThreadPlan {
            main: main[0],
            others,
        })
    }

    fn all(&self) -> impl Iterator<Item = &ThreadRecord> {
        std::iter::once(&self.main).chain(self.others.iter())
    }

    fn what(&self, tid: i32) -> String {
        if tid == self.main.tid {
            "process id (its main thread)".into()
        } else {
            "thread id".into()
        }
    }
}

/// One restore: the child (in a new PID namespace if `in_ns`), built, every thread added and
/// set, all let go.
fn attempt(
    image: &Image,
    meta: &crate::image::EpochMeta,
    opts: &RestoreOptions,
    threads: &ThreadPlan,
    in_ns: bool,
) -> Result<RestoredProcess, RestoreError> {
    // Everything that allocates or may fail on bad input is prepared before the clone.
    let fd_plan = fds::FdPlan::prepare(meta, opts)?;
    let cwd = layout::cstring(&meta.cwd, "working directory")?;
    let exe = exe_path(image);
    let rseq = child::RseqInfo::of_this_process();
    // Opened before the clone: the child has it at the same number ([`net`]).
    let self_pidfd = match &opts.service {
        Some(_) => Some(net::SelfPidfd::open()?),
        None => None,
    };
    let ns = if in_ns {
        Some(pidns::PidNamespace::create(threads.main.tid)?)
    } else {
        None
    };

    let inj_len = INJ_PAGES * PAGE_SIZE;
    let mut tracee = None;
    let mut last_err = None;
    // Another thread of the daemon may map something at the chosen address between reading
    // our maps and the clone; pick again then.
    for attempt in 0..3 {
        let own = std::fs::read_to_string("/proc/self/maps").map_err(|e| RestoreError::Os {
            what: "reading /proc/self/maps".into(),
            source: e,
        })?;
        let own = crate::image::parse_maps(&own).map_err(RestoreError::Unsupported)?;
        let mut busy: Vec<(u64, u64)> = own.iter().map(|r| (r.start, r.end)).collect();
        busy.extend(image.regions.iter().map(|r| (r.start, r.end)));
        let inj = layout::find_free(&busy, inj_len).ok_or(RestoreError::NoAddressSpace {
            len: inj_len,
            what: "the injection area",
        })?;
        let ids = child::ChildIds {
            pid: threads.main.tid,
            mntns: ns.as_ref().map(|n| n.mntns_fd()),
        };
        let spawned = match &ns {
            Some(n) => {
                let _inside = n.enter()?;
                child::spawn_stopped(inj, inj_len, ids)
            }
            None => child::spawn_stopped(inj, inj_len, ids),
        };
        match spawned {
            Ok(pid) => {
                tracee = Some(Tracee::new(pid, inj, inj_len)?);
                break;
            }
            Err(e @ (RestoreError::TidTaken { .. } | RestoreError::SetTid { .. })) => {
                return Err(e)
            }
            Err(e) => {
                debug!(attempt, error = %e, "starting the restore child failed");
                last_err = Some(e);
            }
        }
    }
    let mut t = match tracee {
        Some(t) => t,
        None => {
            return Err(last_err.unwrap_or_else(|| RestoreError::Unsupported("no attempt".into())))
        }
    };
    let pid = t.pid;
    debug!(
        pid,
        own_pid = threads.main.tid,
        inj = format_args!("{:#x}", t.code),
        "restore child stopped"
    );

    let network = build(
        &mut t,
        image,
        meta,
        opts,
        threads,
        &fd_plan,
        &cwd,
        exe.as_deref(),
        &rseq,
        self_pidfd.as_ref(),
    )?;
    drop(self_pidfd);
    drop(fd_plan); // the parent's copies of the stdio files
    let mut tids = vec![pid];
    tids.extend(t.added_threads().iter().map(|a| a.tid));
    let pid_namespace_init = ns.map(|n| {
        let init = n.init;
        n.go();
        info!(
            pid,
            own_pid = threads.main.tid,
            init,
            "the restored process runs in a new PID namespace (init pid {init}), as pid {} \
             there, {pid} here",
            threads.main.tid
        );
        init
    });
    Ok(RestoredProcess {
        pid,
        own_pid: threads.main.tid,
        tids,
        pid_namespace_init,
        network,
    })
}

/// The registers a thread of the image resumes with: its resume point (`ctx`), `rax = 1`
/// (the shim's save-context returns 1 on the restored side), its `fs` base; the rest from
/// `base` (a stopped thread of the restore child: segment registers).
fn resume_regs(base: libc::user_regs_struct, c: &ResumeContext) -> libc::user_regs_struct {
    let mut r = base;
    r.rip = c.rip;
    r.rsp = c.rsp;
    r.rbx = c.rbx;
    r.rbp = c.rbp;
    r.r12 = c.r12;
    r.r13 = c.r13;
    r.r14 = c.r14;
    r.r15 = c.r15;
    r.rax = 1;
    r.fs_base = c.fs_base;
    r.eflags = 0x202;
    r
}

/// Block everything but SIGKILL/SIGSTOP: the shim's handler returns through rt_sigreturn,
/// which restores the app's own mask from the signal frame (per thread).
const RESUME_MASK: u64 = !((1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1)));

/// Everything between the child's first stop and its detach. On error the tracee is killed
/// (and reaped) when `t` is dropped.
#[allow(clippy::too_many_arguments)]
fn build(
    t: &mut Tracee,
    image: &Image,
    meta: &crate::image::EpochMeta,
    opts: &RestoreOptions,
    threads: &ThreadPlan,
    fd_plan: &fds::FdPlan,
    cwd: &std::ffi::CString,
    exe: Option<&str>,
    rseq: &child::RseqInfo,
    self_pidfd: Option<&net::SelfPidfd>,
) -> Result<Option<net::KeptNetwork>, RestoreError> {
    child::forget_daemon_state(t, rseq)?;
    // The working directory first: a unix socket bound to a relative path binds again
    // against it.
    t.sys_path("chdir", libc::SYS_chdir, cwd, [0; 5], || {
        format!("working directory {:?}", meta.cwd)
    })?;
    // With a service address: the namespace, the address (not announced), the connections
    // rebuilt, before any socket is made.
    let network = match (&opts.service, self_pidfd) {
        (Some(svc), Some(_)) => Some(net::Network::prepare(t, svc, meta)?),
        _ => None,
    };
    let conns = match (&network, self_pidfd) {
        (Some(n), Some(p)) => Some(fds::Conns {
            pidfd: std::os::fd::AsRawFd::as_raw_fd(&p.0),
            rebuilt: &n.rebuilt,
        }),
        _ => None,
    };
    fd_plan.apply(t, conns)?;

    let own = t.read_maps()?;
    layout::clear_address_space(t, &own)?;
    layout::move_specials(t, &own, &image.regions)?;
    regions::map_all(t, image)?;
    mm::set_mm(t, meta, exe)?;

    // Every other thread, with its TID, stopped before its first instruction with its
    // registers set; they go with the main thread in `finish`.
    for th in &threads.others {
        let given = opts.thread_regs.iter().find(|(tid, _)| *tid == th.tid);
        let tls = given.map_or(th.ctx.fs_base, |(_, r)| r.fs_base);
        let tid = t.inject_thread(th.tid, tls)?;
        let base = t
            .added_threads()
            .last()
            .map(|a| a.base_regs())
            .unwrap_or_else(|| t.base_regs());
        match given {
            Some((_, r)) => t.set_thread_regs(tid, *r, th.sigmask)?,
            None => t.set_thread_regs(tid, resume_regs(base, &th.ctx), RESUME_MASK)?,
        }
    }

    let (regs, mask) = match opts.full_regs {
        Some(r) => (r, meta.app_sigmask),
        None => (resume_regs(t.base_regs(), &threads.main.ctx), RESUME_MASK),
    };
    // The address announced and every connection out of repair, just before the program
    // runs again.
    let kept = match network {
        Some(n) => Some(n.go(t.pid)?),
        None => None,
    };
    t.finish(regs, mask)?;
    Ok(kept)
}

/// Rejects images restore cannot work with before anything is forked.
fn check_image(image: &Image) -> Result<(), RestoreError> {
    let mut prev: Option<&crate::image::Region> = None;
    for r in &image.regions {
        if r.start % PAGE_SIZE != 0 || r.end % PAGE_SIZE != 0 || r.end <= r.start {
            return Err(RestoreError::Unsupported(format!(
                "region {:#x}-{:#x} {:?} is not page aligned",
                r.start, r.end, r.path
            )));
        }
        if let Some(p) = prev.filter(|p| r.start < p.end) {
            return Err(RestoreError::Unsupported(format!(
                "regions overlap or are unsorted: {:#x}-{:#x} prot {} {:?} then {:#x}-{:#x} prot {} {:?}",
                p.start,
                p.end,
                p.prot(),
                p.path,
                r.start,
                r.end,
                r.prot(),
                r.path
            )));
        }
        prev = Some(r);
    }
    if image.regions.is_empty() {
        return Err(RestoreError::Unsupported(
            "the image has no memory regions".into(),
        ));
    }
    Ok(())
}

/// The executable: the file of the region holding `mm.start_code`.
fn exe_path(image: &Image) -> Option<String> {
    let sc = image.meta.as_ref()?.mm.start_code;
    let r: &Region = image
        .regions
        .iter()
        .find(|r| r.start <= sc && sc < r.end && r.is_file())?;
    let p = regions::file_path(r);
    if p.len() != r.path.len() {
        warn!(path = %r.path, "the executable was deleted on the primary");
    }
    Some(p.to_string())
}
