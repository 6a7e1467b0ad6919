//! Restore into a new PID namespace, for when a TID of the image is taken on this host.
//!
//! The program's threads must come back with the TIDs they had (glibc caches them; mutexes,
//! robust futexes and timers hold them), so restore never gives them other numbers. When one
//! is in use here, a new PID namespace frees every number (DESIGN §8):
//!
//! 1. an init is cloned with `CLONE_NEWPID | CLONE_NEWNS` (it is pid 1 there); it makes its
//!    mount tree private, mounts a fresh `/proc` for the namespace (so that the program's
//!    `/proc/self`, `/proc/self/task` name its own ids), ignores `SIGCHLD` (orphans are reaped
//!    by the kernel) and says "ready" on a socket;
//! 2. the restore child is cloned by the daemon's restoring thread after
//!    `setns(CLONE_NEWPID)` into the init's namespace (this thread's children only, undone
//!    right after), with `set_tid` = [the image's pid] (the innermost level; the host picks
//!    the outer number), and joins the init's mount namespace itself before its stop;
//! 3. once the restore succeeded the daemon says "go": the init waits for the program
//!    (`pidfd_open` of its pid in the namespace) and exits after it (which ends whatever the
//!    program left in the namespace). If the restore fails the daemon just closes the
//!    socket; the init exits and the namespace goes with it.
//!
//! The daemon sees the program under its outer pid (ptrace, waitpid, signals); the program
//! sees its own.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tracing::{debug, error};

use super::clone::{clone3, CloneArgs};
use super::RestoreError;

/// How long the init may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

const MSG_READY: u8 = b'R';
const MSG_GO: u8 = b'G';
/// The init's failures before "ready" (it cannot log): the byte it sends instead.
const FAIL_PRIVATE: u8 = b'M';
const FAIL_PROC: u8 = b'P';

/// A new PID (and mount) namespace with its init running, ready for the restore child.
pub(crate) struct PidNamespace {
    /// The init's pid as this process sees it.
    pub init: i32,
    sock: Option<UnixStream>,
    pidns: File,
    mntns: File,
}

/// The restoring thread's children go into the namespace while this lives.
pub(crate) struct Entered {
    back: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(self.back.as_raw_fd(), libc::CLONE_NEWPID) {
            // Its later children (e.g. an --on-takeover command) would land in the namespace.
            error!("could not take the restoring thread back out of the new PID namespace: {e}");
        }
    }
}

fn setns(fd: RawFd, nstype: i32) -> std::io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; no memory is passed.
    if unsafe { libc::setns(fd, nstype) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_ns(path: String) -> Result<File, RestoreError> {
    File::open(&path).map_err(|e| RestoreError::Os {
        what: format!("opening {path}"),
        source: e,
    })
}

impl PidNamespace {
    /// Starts the init of a new namespace in which `app_pid` will be the program's pid.
    pub fn create(app_pid: i32) -> Result<PidNamespace, RestoreError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| RestoreError::Os {
            what: "socketpair for the new PID namespace's init".into(),
            source: e,
        })?;
        let root = CString::new("/").expect("no NUL");
        let proc_ = CString::new("/proc").expect("no NUL");
        let proc_type = CString::new("proc").expect("no NUL");
        let strings = InitStrings {
            root: root.as_ptr(),
            proc_: proc_.as_ptr(),
            proc_type: proc_type.as_ptr(),
        };
        let args = CloneArgs {
            flags: (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        let sock = theirs.as_raw_fd();
        // SAFETY: fork-like clone3: the child only runs `init_main` (raw system calls on
        // memory it owns: the C strings above, copied with its address space); it never returns.
        let cloned = unsafe { clone3(&args) };
        let init =
            match cloned {
                // SAFETY: we are the freshly cloned init; see init_main's contract.
                Ok(0) => unsafe { init_main(sock, app_pid, &strings) },
                Ok(pid) => pid,
                Err(errno) => return Err(RestoreError::Os {
                    what:
                        "creating the init of a new PID namespace (clone3 CLONE_NEWPID|CLONE_NEWNS)"
                            .into(),
                    source: std::io::Error::from_raw_os_error(errno),
                }),
            };
        drop(theirs);
        // Reap the init whenever it ends (it is our child; it waits for the program). Only
        // its own pid is waited for, never "any child".
        let _ = std::thread::Builder::new()
            .name(format!("remus-pidns-{init}"))
            .spawn(move || {
                let mut st = 0;
                // SAFETY: waitpid on our own child's pid with a valid out-pointer.
                while unsafe { libc::waitpid(init, &mut st, 0) } < 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                debug!(init, status = st, "the PID namespace's init ended");
            });
        let mut ns = PidNamespace {
            init,
            sock: Some(ours),
            pidns: open_ns(format!("/proc/{init}/ns/pid"))?,
            mntns: open_ns(format!("/proc/{init}/ns/mnt"))?,
        };
        let sock = ns.sock.as_mut().expect("just set");
        let _ = sock.set_read_timeout(Some(READY_TIMEOUT));
        let mut b = [0u8; 1];
        let why = match sock.read(&mut b) {
            Ok(1) if b[0] == MSG_READY => return Ok(ns),
            Ok(1) if b[0] == FAIL_PRIVATE => "it could not make its mount tree private".into(),
            Ok(1) if b[0] == FAIL_PROC => "it could not mount a fresh /proc".into(),
            Ok(_) => "it ended before it was ready".into(),
            Err(e) => format!("it did not say it was ready ({e})"),
        };
        Err(RestoreError::Unsupported(format!(
            "the init of the new PID namespace (pid {init}) failed: {why}"
        )))
    }

    /// The namespace's mount namespace, for the restore child to join.
    pub fn mntns_fd(&self) -> RawFd {
        self.mntns.as_raw_fd()
    }

    /// Makes the calling thread's children be born in the namespace until the guard drops.
    pub fn enter(&self) -> Result<Entered, RestoreError> {
        let back = open_ns("/proc/thread-self/ns/pid_for_children".into())?;
        setns(self.pidns.as_raw_fd(), libc::CLONE_NEWPID).map_err(|e| RestoreError::Os {
            what: format!("entering the new PID namespace of init {}", self.init),
            source: e,
        })?;
        Ok(Entered { back })
    }

    /// The restore succeeded: the init waits for the program from now on.
    pub fn go(mut self) {
        if let Some(mut s) = self.sock.take() {
            if let Err(e) = s.write_all(&[MSG_GO]) {
                error!(
                    init = self.init,
                    "telling the PID namespace's init to go on: {e}"
                );
            }
        }
    }
}

/// Pointers the init uses; valid in its copy of the daemon's memory.
struct InitStrings {
    root: *const libc::c_char,
    proc_: *const libc::c_char,
    proc_type: *const libc::c_char,
}

/// The init of the new namespace. Only raw system calls (async-signal-safe).
///
/// # Safety
/// Must only be called in the child of the fork-like clone in [`PidNamespace::create`], once;
/// `s` points at strings of the parent's address space, which the child has a copy of.
unsafe fn init_main(sock: RawFd, app_pid: i32, s: &InitStrings) -> ! {
    // SAFETY: (whole function) raw system calls with valid arguments: NUL-terminated strings
    // and small buffers owned by this frame.
    unsafe {
        let say = |b: u8| {
            libc::syscall(libc::SYS_write, sock, &b as *const u8, 1usize);
        };
        // Keep nothing of the daemon's but the socket.
        if sock > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (sock - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (sock + 1) as u32, u32::MAX, 0u32);
        let none: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            0usize,
            8usize,
        );
        // struct kernel_sigaction { handler = SIG_IGN, flags, restorer, mask }.
        let ign: [u64; 4] = [libc::SIG_IGN as u64, 0, 0, 0];
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::SIGCHLD,
            ign.as_ptr(),
            0usize,
            8usize,
        );
        if libc::syscall(
            libc::SYS_mount,
            std::ptr::null::<libc::c_char>(),
            s.root,
            std::ptr::null::<libc::c_char>(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null::<libc::c_void>(),
        ) != 0
        {
            say(FAIL_PRIVATE);
            libc::syscall(libc::SYS_exit_group, 1);
        }
        if libc::syscall(
            libc::SYS_mount,
            s.proc_type,
            s.proc_,
            s.proc_type,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null::<libc::c_void>(),
        ) != 0
        {
            say(FAIL_PROC);
            libc::syscall(libc::SYS_exit_group, 1);
        }
        say(MSG_READY);
        let mut b = 0u8;
        let n = loop {
            let n = libc::syscall(libc::SYS_read, sock, &mut b as *mut u8, 1usize);
            if n >= 0 || *libc::__errno_location() != libc::EINTR {
                break n;
            }
        };
        if n == 1 && b == MSG_GO {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, app_pid, 0);
            if pidfd >= 0 {
                let mut p = libc::pollfd {
                    fd: pidfd as i32,
                    events: libc::POLLIN,
                    revents: 0,
                };
                loop {
                    let r = libc::syscall(libc::SYS_poll, &mut p as *mut libc::pollfd, 1usize, -1);
                    if r > 0 || (r < 0 && *libc::__errno_location() != libc::EINTR) {
                        break;
                    }
                }
            }
        }
        libc::syscall(libc::SYS_exit_group, 0);
        libc::abort()
    }
}

/// Who holds `tid` on this host, for messages: `pid 123 (redis-server)`, or None if free.
pub(crate) fn holder(tid: i32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let (name, tgid) = (field("Name:"), field("Tgid:"));
    Some(if tgid == tid.to_string() {
        format!("process {tid} ({name})")
    } else {
        format!("thread {tid} ({name}) of process {tgid}")
    })
}
