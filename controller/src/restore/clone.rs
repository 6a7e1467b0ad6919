//! `clone3(2)` with `set_tid`: how restore gets the image's process and thread ids back.
//!
//! Used twice: by the daemon, to create the restore child with the program's pid (and, when a
//! number is taken here, the init of a new PID namespace, [`super::pidns`]); and injected into
//! the stopped restore child, to add each further thread with its own TID
//! ([`super::inject::Tracee::inject_thread`]).

/// `struct clone_args` of `<linux/sched.h>` (size 88, `CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    /// Address of a `pid_t` array: `set_tid[0]` is the id in the innermost PID namespace,
    /// the next in its parent, ...; fewer entries than levels leave the outer ones free.
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

pub(crate) const CLONE_ARGS_SIZE: usize = std::mem::size_of::<CloneArgs>();
const _: () = assert!(CLONE_ARGS_SIZE == 88);

impl CloneArgs {
    /// The bytes to write into the tracee.
    pub fn to_bytes(self) -> [u8; CLONE_ARGS_SIZE] {
        let words = [
            self.flags,
            self.pidfd,
            self.child_tid,
            self.parent_tid,
            self.exit_signal,
            self.stack,
            self.stack_size,
            self.tls,
            self.set_tid,
            self.set_tid_size,
            self.cgroup,
        ];
        let mut out = [0u8; CLONE_ARGS_SIZE];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// The flags of a thread added to the restore child: what `pthread_create` uses, without
/// `CLONE_PARENT_SETTID`/`CLONE_CHILD_CLEARTID` (the kernel writes into glibc's
/// `struct pthread` for those; the restored thread re-registers its `clear_child_tid` itself,
/// and the TID is ours already: `set_tid`).
pub(crate) const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS) as u64;

/// What a failed `clone3` with `set_tid` means for restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetTidError {
    /// The number is in use on this host (EEXIST).
    Taken,
    /// Not allowed to choose ids (EPERM): needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN.
    NotPermitted,
    /// Anything else (errno); EINVAL: at or above `pid_max`.
    Other(i32),
}

impl SetTidError {
    pub fn from_errno(errno: i32) -> SetTidError {
        match errno {
            libc::EEXIST => SetTidError::Taken,
            libc::EPERM => SetTidError::NotPermitted,
            e => SetTidError::Other(e),
        }
    }
}

/// Runs `clone3(args)` in this process. The child returns 0 in the same place, as after
/// `fork`, with a copy of the caller's memory unless `CLONE_VM`.
///
/// # Safety
/// As for `fork` in a multi-threaded process: in the child (return value 0) the caller may
/// only make async-signal-safe raw system calls and must never return into code that expects
/// the parent's threads or locks. `args.set_tid`, when non-zero, points at `set_tid_size`
/// live `pid_t`s.
pub(crate) unsafe fn clone3(args: &CloneArgs) -> Result<i32, i32> {
    // SAFETY: `args` is a valid clone_args of CLONE_ARGS_SIZE bytes for the duration of the
    // call; the caller upholds the fork-like contract above.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args as *const CloneArgs, CLONE_ARGS_SIZE) };
    if r < 0 {
        // SAFETY: reading errno right after the failed call.
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(r as i32)
}
