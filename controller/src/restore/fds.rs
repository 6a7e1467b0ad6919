//! The restored process's descriptor table: stdio as the standby was told, the app's regular
//! files reopened at their offsets, `/dev/null` where a kind cannot be restored yet.
//!
//! Prepared in the daemon before the fork (paths, stdio files), installed by injection after
//! the child's stop: the child inherited the daemon's whole table, so the stdio sources are
//! first moved above every number in use, everything else is closed, then each target number
//! is filled.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tracing::{debug, warn};

use super::inject::Tracee;
use super::kobj::{self, BindMap, SockAddr};
use super::layout::cstring;
use super::{RestoreError, RestoreOptions};
use crate::image::{EpochMeta, FdEntry, FdKind, KernelObject, SocketInfo};

/// Character devices that are the same thing on any host and are reopened by path.
const PORTABLE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

enum Action {
    /// Reopen `path` with `flags`, seek to `offset` if >= 0.
    Open {
        path: CString,
        flags: i32,
        offset: i64,
    },
    /// `/dev/null` stands in for a descriptor we cannot restore (warned about already).
    DevNull,
    /// A kernel object recreated by injected system calls ([`super::kobj`]).
    Kobj(KernelObject),
}

struct Target {
    fd: i32,
    cloexec: bool,
    /// `F_GETFL` on the primary (status flags are set again on kernel objects).
    flags: i32,
    action: Action,
    /// For messages.
    path: String,
}

pub(crate) struct FdPlan {
    /// Sources for fds 0, 1, 2 as numbers in the daemon (= in the freshly forked child).
    stdio: [i32; 3],
    /// Files the daemon opened for stdio; kept open until the child has its copies.
    _owned: Vec<OwnedFd>,
    targets: Vec<Target>,
    bind_map: Vec<BindMap>,
}

fn open_out(p: &Path) -> Result<OwnedFd, RestoreError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| RestoreError::Os {
            what: format!("opening {} for the restored process's output", p.display()),
            source: e,
        })
}

impl FdPlan {
    pub fn prepare(meta: &EpochMeta, opts: &RestoreOptions) -> Result<FdPlan, RestoreError> {
        let mut owned = Vec::new();
        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| RestoreError::Os {
                what: "opening /dev/null".into(),
                source: e,
            })?;
        let mut stdio = [null.as_raw_fd(), 1, 2];
        for s in &mut stdio[1..] {
            // SAFETY: F_GETFD on a descriptor number only queries it.
            if unsafe { libc::fcntl(*s, libc::F_GETFD) } < 0 {
                *s = null.as_raw_fd();
            }
        }
        owned.push(null);
        for (i, p) in [(1, &opts.stdout), (2, &opts.stderr)] {
            if let Some(p) = p {
                let f = open_out(p)?;
                stdio[i] = f.as_raw_fd();
                owned.push(f);
            }
        }

        let mut targets = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in &meta.fds {
            if e.fd < 0 || !seen.insert(e.fd) {
                warn!(fd = e.fd, path = %e.path, "ignoring a bad or repeated descriptor number in the image");
                continue;
            }
            if e.fd <= 2 {
                debug!(fd = e.fd, path = %e.path, "stdio of the app replaced by the standby's");
                continue;
            }
            let mut tg = plan_one(e, meta.kobjs.get(&e.fd))?;
            if let (Action::Open { path, .. }, Some(root)) = (&mut tg.action, &opts.file_root) {
                // A replicated file: the standby's copy, which holds the committed writes.
                if meta.replicated.contains(&e.path) {
                    if let Some(copy) = crate::files::map(root, &e.path) {
                        debug!(fd = e.fd, path = %e.path, copy = %copy.display(), "replicated file reopened from the standby's copy");
                        *path = cstring(&copy.to_string_lossy(), "descriptor path")?;
                    }
                }
            }
            if let Action::Kobj(KernelObject::Socket(sk)) = &tg.action {
                remove_stale_unix_socket(tg.fd, sk, meta, &opts.bind_map);
            }
            targets.push(tg);
        }
        targets.sort_by_key(|t| t.fd);
        Ok(FdPlan {
            stdio,
            _owned: owned,
            targets,
            bind_map: opts.bind_map.clone(),
        })
    }

    /// Installs the table in the stopped child. `conns`: connections rebuilt by the daemon
    /// (`--service-addr`, [`super::net`]): the daemon's pidfd of itself (the child inherited it
    /// at this number) and the daemon's rebuilt sockets by the program's descriptor number;
    /// the child takes each with `pidfd_getfd` instead of the closed stand-in.
    pub fn apply(&self, t: &mut Tracee, conns: Option<Conns<'_>>) -> Result<(), RestoreError> {
        let max_target = self.targets.last().map_or(2, |t| t.fd.max(2));
        let above = max_target
            .max(*self.stdio.iter().max().unwrap_or(&2))
            .max(conns.as_ref().map_or(2, |c| c.pidfd))
            + 1;
        // The daemon's pidfd, out of the way too (kept until every connection is taken).
        let pidfd_high = match &conns {
            Some(c) => Some(t.sys(
                "fcntl(F_DUPFD)",
                libc::SYS_fcntl,
                [c.pidfd as u64, libc::F_DUPFD as u64, above as u64, 0, 0, 0],
                || {
                    format!(
                        "keeping remusd's pidfd (daemon fd {}) out of the way",
                        c.pidfd
                    )
                },
            )? as i32),
            None => None,
        };
        // Move the stdio sources above every target and every source number.
        let mut high = [0i32; 3];
        for (i, &src) in self.stdio.iter().enumerate() {
            high[i] = t.sys(
                "fcntl(F_DUPFD)",
                libc::SYS_fcntl,
                [src as u64, libc::F_DUPFD as u64, above as u64, 0, 0, 0],
                || format!("keeping the source of fd {i} (daemon fd {src}) out of the way"),
            )? as i32;
        }
        // Close everything else the daemon had.
        let mut keep = high.to_vec();
        keep.extend(pidfd_high);
        keep.sort_unstable();
        let mut from = 0u32;
        for &k in &keep {
            let k = k as u32;
            if k > from {
                close_range(t, from, k - 1)?;
            }
            from = k + 1;
        }
        close_range(t, from, u32::MAX)?;

        for (i, &h) in high.iter().enumerate() {
            t.sys(
                "dup3",
                libc::SYS_dup3,
                [h as u64, i as u64, 0, 0, 0, 0],
                || format!("installing fd {i}"),
            )?;
        }
        let mut pipes = kobj::Pipes::default();
        for tg in &self.targets {
            let what = || format!("fd {} ({})", tg.fd, tg.path);
            let rebuilt = match (&conns, pidfd_high) {
                (Some(c), Some(p)) => c.rebuilt.get(&tg.fd).map(|r| (p, r.as_raw_fd())),
                _ => None,
            };
            let got = match &tg.action {
                Action::Kobj(_) if rebuilt.is_some() => {
                    let (p, daemon_fd) = rebuilt.expect("checked");
                    t.sys(
                        "pidfd_getfd",
                        libc::SYS_pidfd_getfd,
                        [p as u64, daemon_fd as u64, 0, 0, 0, 0],
                        || {
                            format!(
                                "fd {}: taking its rebuilt connection (daemon fd {daemon_fd})",
                                tg.fd
                            )
                        },
                    )? as i32
                }
                Action::Kobj(obj) => {
                    kobj::create(t, tg.fd, tg.flags, obj, &self.bind_map, &mut pipes, above)?
                }
                Action::Open { path, flags, .. } => match t.open(path, *flags)? {
                    Ok(fd) => fd,
                    Err(errno) => {
                        return Err(RestoreError::MissingFile {
                            path: tg.path.clone(),
                            what: format!("descriptor {}", tg.fd),
                            errno,
                        })
                    }
                },
                Action::DevNull => match t.open(c"/dev/null", libc::O_RDWR)? {
                    Ok(fd) => fd,
                    Err(errno) => {
                        return Err(RestoreError::Injected {
                            call: "open",
                            what: "/dev/null".into(),
                            errno,
                        })
                    }
                },
            };
            let cloexec = if tg.cloexec { libc::O_CLOEXEC } else { 0 };
            if got != tg.fd {
                t.sys(
                    "dup3",
                    libc::SYS_dup3,
                    [got as u64, tg.fd as u64, cloexec as u64, 0, 0, 0],
                    what,
                )?;
                t.close(got);
            } else {
                let fdfl = if tg.cloexec { libc::FD_CLOEXEC } else { 0 };
                t.sys(
                    "fcntl(F_SETFD)",
                    libc::SYS_fcntl,
                    [got as u64, libc::F_SETFD as u64, fdfl as u64, 0, 0, 0],
                    what,
                )?;
            }
            if let Action::Kobj(_) = tg.action {
                let fl = tg.flags & !(libc::O_ACCMODE | libc::O_CLOEXEC);
                t.sys(
                    "fcntl(F_SETFL)",
                    libc::SYS_fcntl,
                    [tg.fd as u64, libc::F_SETFL as u64, fl as u64, 0, 0, 0],
                    || format!("fd {}: status flags {fl:#o}", tg.fd),
                )?;
            }
            if let Action::Open { offset, .. } = tg.action {
                if offset > 0 {
                    t.sys(
                        "lseek",
                        libc::SYS_lseek,
                        [tg.fd as u64, offset as u64, libc::SEEK_SET as u64, 0, 0, 0],
                        || format!("fd {} ({}) to offset {offset}", tg.fd, tg.path),
                    )?;
                }
            }
        }
        pipes.close_all(t);
        // Every descriptor exists now: the epoll registrations can point at them.
        for tg in &self.targets {
            if let Action::Kobj(obj @ KernelObject::Epoll { .. }) = &tg.action {
                kobj::add_epoll_registrations(t, tg.fd, obj)?;
            }
        }
        for h in high.into_iter().chain(pidfd_high) {
            t.close(h);
        }
        Ok(())
    }
}

/// Connections the daemon rebuilt, for [`FdPlan::apply`].
pub(crate) struct Conns<'a> {
    /// The daemon's pidfd of itself, at this number in the child (inherited).
    pub pidfd: i32,
    pub rebuilt: &'a std::collections::BTreeMap<i32, crate::tcp::Repairing>,
}

fn close_range(t: &mut Tracee, first: u32, last: u32) -> Result<(), RestoreError> {
    t.sys(
        "close_range",
        libc::SYS_close_range,
        [first as u64, last as u64, 0, 0, 0, 0],
        || format!("closing the daemon's descriptors {first}..={last}"),
    )?;
    Ok(())
}

fn kind_name(k: FdKind) -> &'static str {
    match k {
        FdKind::Regular => "regular file",
        FdKind::CharDevice => "character device",
        FdKind::Directory => "directory",
        FdKind::Fifo => "pipe/fifo",
        FdKind::Socket => "socket",
        FdKind::AnonInode => "anonymous inode",
        FdKind::Other => "other",
    }
}

fn plan_one(e: &FdEntry, obj: Option<&KernelObject>) -> Result<Target, RestoreError> {
    let cloexec = e.fd_flags & libc::FD_CLOEXEC != 0;
    if let Some(obj) = obj {
        if why_not(e, Some(obj)).is_none() {
            return Ok(Target {
                fd: e.fd,
                cloexec,
                flags: e.flags,
                action: Action::Kobj(obj.clone()),
                path: e.path.clone(),
            });
        }
    }
    let deleted = e.path.ends_with(" (deleted)");
    let reopenable = match e.kind {
        FdKind::Regular | FdKind::Directory => e.path.starts_with('/') && !deleted,
        FdKind::CharDevice => PORTABLE_DEVICES.contains(&e.path.as_str()),
        _ => false,
    };
    if !reopenable {
        warn!(
            fd = e.fd,
            kind = kind_name(e.kind),
            path = %e.path,
            "this descriptor cannot be restored yet; the restored process gets /dev/null at its number"
        );
        return Ok(Target {
            fd: e.fd,
            cloexec,
            flags: e.flags,
            action: Action::DevNull,
            path: e.path.clone(),
        });
    }
    let flags = (e.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC))
        | libc::O_NOCTTY;
    let path = cstring(&e.path, "descriptor path")?;
    let offset = if e.kind == FdKind::Regular {
        e.offset
    } else {
        -1
    };
    Ok(Target {
        fd: e.fd,
        cloexec,
        flags: e.flags,
        action: Action::Open {
            path,
            flags,
            offset,
        },
        path: e.path.clone(),
    })
}

/// A listening unix socket's file left behind by the dead primary would make `bind` fail:
/// remove it (only if it is a socket), resolving a relative path against the app's directory.
fn remove_stale_unix_socket(fd: i32, s: &SocketInfo, meta: &EpochMeta, maps: &[BindMap]) {
    let Some(p) = SockAddr::decode(&s.addr).mapped(maps).unix_path() else {
        return;
    };
    let full = Path::new(&meta.cwd).join(&p);
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_socket()) {
        match std::fs::remove_file(&full) {
            Ok(()) => debug!(fd, path = %full.display(), "removed the stale unix socket file"),
            Err(e) => {
                warn!(fd, path = %full.display(), error = %e, "cannot remove the stale unix socket file")
            }
        }
    }
}

/// Why the descriptor `e` (with its kernel object, if the shim described one) cannot come
/// back on the standby; `None` when it can.
pub fn why_not(e: &FdEntry, obj: Option<&KernelObject>) -> Option<String> {
    if e.fd <= 2 {
        return None; // the standby's own stdio takes their place
    }
    match obj {
        Some(KernelObject::Socket(s)) => {
            let fam = if SockAddr::decode(&s.addr).is_bound() {
                SockAddr::decode(&s.addr).family()
            } else {
                s.family
            };
            if !kobj::family_supported(fam) {
                return Some(format!("socket of address family {fam}"));
            }
            return None;
        }
        Some(KernelObject::Pipe {
            truncated: true,
            data,
            ..
        }) => {
            return Some(format!(
                "pipe whose unread bytes did not fit the checkpoint (only {} kept)",
                data.len()
            ))
        }
        Some(KernelObject::Epoll {
            truncated: true, ..
        }) => {
            return Some("epoll instance with more registrations than the checkpoint holds".into())
        }
        Some(_) => return None,
        None => {}
    }
    let deleted = e.path.ends_with(" (deleted)");
    match e.kind {
        FdKind::Regular | FdKind::Directory if e.path.starts_with('/') && !deleted => None,
        FdKind::CharDevice if PORTABLE_DEVICES.contains(&e.path.as_str()) => None,
        FdKind::Regular if deleted => Some("deleted file".into()),
        k => Some(kind_name(k).to_string()),
    }
}

/// The app's descriptors that cannot come back on the standby, as `fd N: what (path)`.
pub fn unrestorable_fds(meta: &EpochMeta) -> Vec<String> {
    meta.fds
        .iter()
        .filter_map(|e| {
            why_not(e, meta.kobjs.get(&e.fd)).map(|w| format!("fd {}: {w} ({})", e.fd, e.path))
        })
        .collect()
}
