//! The restore child, cloned from the daemon with the program's pid: what it does by itself
//! (very little, async-signal-safe), and the per-thread kernel state inherited from the
//! daemon that is cleared by injection.

use std::os::fd::RawFd;

use tracing::debug;

use super::clone::{clone3, CloneArgs};
use super::inject::{describe_exit, kill_and_reap, wait_raw, Tracee};
use super::RestoreError;

/// `syscall; int3`.
const CODE: [u8; 3] = [0x0f, 0x05, 0xcc];

/// Exit codes of the child when it fails before its stop (it cannot log).
const EXIT_MMAP: i32 = 120;
const EXIT_TRACEME: i32 = 121;
const EXIT_RESUMED: i32 = 122;
const EXIT_SETNS: i32 = 123;

/// Who the restore child is to be.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChildIds {
    /// Its pid: the image's main thread's TID (`clone3` `set_tid`, in the innermost PID
    /// namespace of the calling thread's children).
    pub pid: i32,
    /// A mount namespace to join first (a descriptor of `/proc/<init>/ns/mnt`, inherited).
    pub mntns: Option<RawFd>,
}

/// Creates the restore child with `clone3` and `set_tid` = [`ChildIds::pid`] (like a fork,
/// with a chosen pid). The child joins `mntns` if given, blocks all signals, maps the
/// injection area at `inj` (MAP_FIXED_NOREPLACE) with `syscall; int3` at its start, calls
/// PTRACE_TRACEME and stops itself with SIGSTOP. Returns its pid as this process sees it once
/// it is in that stop. A pid in use here is [`RestoreError::TidTaken`].
pub(crate) fn spawn_stopped(inj: u64, len: u64, ids: ChildIds) -> Result<i32, RestoreError> {
    let set_tid: [libc::pid_t; 1] = [ids.pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let mntns = ids.mntns.unwrap_or(-1);
    // A fork-like clone3 in a multi-threaded process: the child only runs `child_main`, which
    // makes raw system calls and writes to memory it has just mapped; no allocation, no locks,
    // no return into Rust code of the parent.
    // SAFETY: as above; `set_tid` outlives the call.
    let cloned = unsafe { clone3(&args) };
    let pid = match cloned {
        Ok(0) => {
            // SAFETY: we are the freshly created child; see child_main's contract.
            unsafe { child_main(inj, len, mntns) }
        }
        Ok(pid) => pid,
        Err(errno) => {
            return Err(super::set_tid_error(
                ids.pid,
                "process id (its main thread)",
                errno,
            ))
        }
    };
    let st = match wait_raw(pid) {
        Ok(st) => st,
        Err(e) => {
            kill_and_reap(pid, &[]);
            return Err(RestoreError::Os {
                what: format!("waiting for the restore child {pid}"),
                source: e,
            });
        }
    };
    if let Some(how) = describe_exit(st) {
        let why = match libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st)) {
            Some(EXIT_MMAP) => format!(" (could not map the injection area at {inj:#x})"),
            Some(EXIT_TRACEME) => " (PTRACE_TRACEME failed)".to_string(),
            Some(EXIT_SETNS) => " (could not join the new mount namespace)".to_string(),
            _ => String::new(),
        };
        return Err(RestoreError::ChildDied {
            pid,
            how: format!("{how}{why}"),
            during: "its setup before the first stop".into(),
        });
    }
    if !libc::WIFSTOPPED(st) || libc::WSTOPSIG(st) != libc::SIGSTOP {
        kill_and_reap(pid, &[]);
        return Err(RestoreError::ChildDied {
            pid,
            how: format!("reported wait status {st:#x} instead of its SIGSTOP"),
            during: "its setup before the first stop".into(),
        });
    }
    Ok(pid)
}

/// The child side of the clone. Only raw system calls (async-signal-safe).
///
/// # Safety
/// Must only be called in the child of a fork-like clone, once.
unsafe fn child_main(inj: u64, len: u64, mntns: RawFd) -> ! {
    let all: u64 = !0;
    // SAFETY: (whole function) raw system calls with valid arguments; `all` outlives the
    // call; the mapping is written only after the kernel mapped it at exactly `inj`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        );
        if mntns >= 0 {
            if libc::syscall(libc::SYS_setns, mntns, libc::CLONE_NEWNS) != 0 {
                libc::syscall(libc::SYS_exit_group, EXIT_SETNS);
            }
            libc::syscall(libc::SYS_close, mntns);
        }
        let p = libc::syscall(
            libc::SYS_mmap,
            inj,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1i64,
            0i64,
        );
        if p as u64 != inj {
            libc::syscall(libc::SYS_exit_group, EXIT_MMAP);
        }
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), inj as *mut u8, CODE.len());
        if libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
            libc::syscall(libc::SYS_exit_group, EXIT_TRACEME);
        }
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        // The tracer never lets us return here; if it detached without setting registers,
        // leave quietly.
        libc::syscall(libc::SYS_exit_group, EXIT_RESUMED);
        libc::abort()
    }
}

/// glibc's rseq registration of the cloning thread, which the kernel copies to the child.
/// Read before the clone (dlsym may allocate).
pub(crate) struct RseqInfo {
    /// `__rseq_offset`: the area's offset from the thread pointer.
    offset: Option<isize>,
    /// `__rseq_size` (0 = glibc did not register rseq).
    size: u32,
}

/// glibc's RSEQ_SIG on x86.
const RSEQ_SIG: u64 = 0x5305_3053;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

impl RseqInfo {
    pub fn of_this_process() -> RseqInfo {
        // SAFETY: dlsym with NUL-terminated names; the symbols, when present, are glibc's
        // read-only `ptrdiff_t __rseq_offset` and `unsigned int __rseq_size` (glibc >= 2.35).
        unsafe {
            let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
            let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
            if off.is_null() || size.is_null() {
                return RseqInfo {
                    offset: None,
                    size: 0,
                };
            }
            RseqInfo {
                offset: Some(*(off as *const isize)),
                size: *(size as *const u32),
            }
        }
    }
}

/// Clears per-thread kernel state the clone copied from the daemon's thread, before the
/// daemon's memory disappears from the child:
/// - rseq: the kernel would keep writing cpu ids at the daemon's TCB address, which becomes
///   app memory (or unmapped: SIGSEGV);
/// - clear-child-tid (none after our clone3, but cleared all the same): the kernel writes there
///   at exit;
/// - the robust futex list, the alternate signal stack, and every signal disposition (the
///   daemon's handlers point into code that is about to vanish; Rust ignores SIGPIPE).
pub(crate) fn forget_daemon_state(t: &mut Tracee, rseq: &RseqInfo) -> Result<(), RestoreError> {
    if let (Some(off), true) = (rseq.offset, rseq.size > 0) {
        let area = (t.base_regs().fs_base as i64 + off as i64) as u64;
        // glibc 2.35-2.39 registers 32 bytes whatever __rseq_size says; newer ones register
        // __rseq_size rounded up. Try what the kernel may hold.
        let mut last = 0;
        let mut ok = false;
        for len in [rseq.size as u64, 32, rseq.size.div_ceil(32) as u64 * 32] {
            let r = t.raw_syscall(
                libc::SYS_rseq,
                [area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG, 0, 0],
            )?;
            if r == 0 {
                ok = true;
                break;
            }
            last = -r;
        }
        if !ok {
            return Err(RestoreError::Injected {
                call: "rseq(UNREGISTER)",
                what: format!("glibc's rseq area at {area:#x} inherited from the daemon"),
                errno: last as i32,
            });
        }
        debug!(
            area = format_args!("{area:#x}"),
            "unregistered the inherited rseq area"
        );
    }
    t.sys("set_tid_address", libc::SYS_set_tid_address, [0; 6], || {
        "clearing the inherited clear-child-tid".into()
    })?;
    // struct robust_list_head is 24 bytes on x86-64; the kernel insists on that length.
    t.sys(
        "set_robust_list",
        libc::SYS_set_robust_list,
        [0, 24, 0, 0, 0, 0],
        || "clearing the robust futex list".into(),
    )?;
    // stack_t { ss_sp, ss_flags, ss_size } with SS_DISABLE.
    let mut ss = [0u8; 24];
    ss[8..12].copy_from_slice(&libc::SS_DISABLE.to_ne_bytes());
    let ss_addr = t.put_scratch(0, &ss)?;
    t.sys(
        "sigaltstack",
        libc::SYS_sigaltstack,
        [ss_addr, 0, 0, 0, 0, 0],
        || "disabling the alternate signal stack".into(),
    )?;
    // struct kernel_sigaction { handler, flags, restorer, mask } all zero = SIG_DFL.
    let act = t.put_scratch(0, &[0u8; 32])?;
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        t.sys(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig, act, 0, 8, 0, 0],
            || format!("resetting signal {sig} to its default action"),
        )?;
    }
    Ok(())
}
