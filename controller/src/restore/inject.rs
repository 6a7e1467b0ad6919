//! System call injection into the stopped restore child.
//!
//! The child maps an injection area whose first bytes are `syscall; int3` (0f 05 cc). To
//! make it run one system call we set its registers (rip = the area, rax = number, args in
//! rdi/rsi/rdx/r10/r8/r9), `PTRACE_CONT` it and wait for the `SIGTRAP` of the `int3`; rax
//! then holds the result. The rest of the area is scratch memory for strings and structures,
//! written through `/proc/<pid>/mem`.

use std::ffi::CStr;
use std::fs::File;
use std::os::unix::fs::FileExt;

use tracing::{debug, warn};

use super::clone::{self, CloneArgs, CLONE_ARGS_SIZE};
use super::RestoreError;
use crate::image::{parse_maps, Region, PAGE_SIZE};

/// A stopped, traced restore child. Dropping it before [`Tracee::finish`] kills and reaps it.
pub(crate) struct Tracee {
    pub pid: i32,
    /// Address of `syscall; int3`.
    pub code: u64,
    /// Whole injection area (code page + scratch).
    pub area_len: u64,
    mem: File,
    base: libc::user_regs_struct,
    /// What the last injected call was, for "died during ..." messages.
    during: String,
    done: bool,
    /// Threads added by [`Tracee::inject_thread`] (TIDs as this process sees them), each
    /// stopped before its first instruction until [`Tracee::finish`] detaches it.
    threads: Vec<AddedThread>,
}

/// A thread of the restore child other than its first.
#[derive(Clone, Copy)]
pub(crate) struct AddedThread {
    /// Its TID as the daemon sees it (ptrace, waitpid).
    pub tid: i32,
    /// Its TID as the process sees it (the image's).
    pub own_tid: i32,
    /// Its registers at its first stop.
    base: libc::user_regs_struct,
    /// Registers and signal mask to resume with (set by [`Tracee::set_thread_regs`]).
    resume: Option<(libc::user_regs_struct, u64)>,
}

impl AddedThread {
    /// Its registers at its first stop.
    pub fn base_regs(&self) -> libc::user_regs_struct {
        self.base
    }
}

/// `PTRACE_ARCH_PRCTL`-free register access helpers.
fn getregs(pid: i32) -> std::io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct to `data`, which points at one.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            &mut r as *mut libc::user_regs_struct,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn setregs(pid: i32, r: &libc::user_regs_struct) -> std::io::Result<()> {
    // SAFETY: PTRACE_SETREGS reads one user_regs_struct from `data`, which points at one.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGS,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            r as *const libc::user_regs_struct,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ptrace_simple(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> std::io::Result<()> {
    // SAFETY: requests passed here (CONT, SYSCALL, DETACH, SETOPTIONS) take integers in
    // addr/data, not pointers; the kernel validates the pid.
    let rc = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `waitpid(pid, __WALL)`, retried on EINTR. Returns the raw status.
pub(crate) fn wait_raw(pid: i32) -> std::io::Result<i32> {
    loop {
        let mut st = 0;
        // SAFETY: `st` is a valid out-pointer for the duration of the call.
        let rc = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        if rc == pid {
            return Ok(st);
        }
        let e = std::io::Error::last_os_error();
        if rc < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(e);
    }
}

pub(crate) fn describe_exit(st: i32) -> Option<String> {
    if libc::WIFEXITED(st) {
        Some(format!("exited with status {}", libc::WEXITSTATUS(st)))
    } else if libc::WIFSIGNALED(st) {
        Some(format!("was killed by signal {}", libc::WTERMSIG(st)))
    } else {
        None
    }
}

impl Tracee {
    /// Takes over a child that is in the SIGSTOP stop it raised after `PTRACE_TRACEME`.
    pub fn new(pid: i32, code: u64, area_len: u64) -> Result<Tracee, RestoreError> {
        // Kill the child if anything below fails: construct the guard first.
        let mem_path = format!("/proc/{pid}/mem");
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mem_path);
        let mem = match mem {
            Ok(m) => m,
            Err(e) => {
                kill_and_reap(pid, &[]);
                return Err(RestoreError::Os {
                    what: format!("opening {mem_path}"),
                    source: e,
                });
            }
        };
        let mut t = Tracee {
            pid,
            code,
            area_len,
            mem,
            // SAFETY: user_regs_struct is plain integers; replaced below before any use.
            base: unsafe { std::mem::zeroed() },
            during: "the first stop".into(),
            done: false,
            threads: Vec::new(),
        };
        // TRACECLONE: a thread added by an injected clone3 is traced from its creation and
        // stops before its first instruction.
        let opts =
            libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE;
        ptrace_simple(libc::PTRACE_SETOPTIONS, pid, 0, opts as usize)
            .map_err(|e| t.ptrace_err("PTRACE_SETOPTIONS", e))?;
        t.base = getregs(pid).map_err(|e| t.ptrace_err("PTRACE_GETREGS", e))?;
        Ok(t)
    }

    /// The child's registers at its first stop (the daemon's thread, forked).
    pub fn base_regs(&self) -> libc::user_regs_struct {
        self.base
    }

    /// Scratch memory: after the code page.
    pub fn scratch(&self) -> u64 {
        self.code + PAGE_SIZE
    }

    pub fn scratch_len(&self) -> usize {
        (self.area_len - PAGE_SIZE) as usize
    }

    fn ptrace_err(&self, what: &str, e: std::io::Error) -> RestoreError {
        RestoreError::Os {
            what: format!(
                "{what} on the process being restored (pid {}, during {})",
                self.pid, self.during
            ),
            source: e,
        }
    }

    /// Writes `bytes` at `addr` in the child through /proc/<pid>/mem (forces its way into
    /// read-only private mappings, like a debugger).
    pub fn write_mem(&mut self, addr: u64, bytes: &[u8]) -> Result<(), RestoreError> {
        self.mem
            .write_all_at(bytes, addr)
            .map_err(|e| RestoreError::Os {
                what: format!(
                    "writing {} bytes at {addr:#x} into the process being restored (pid {})",
                    bytes.len(),
                    self.pid
                ),
                source: e,
            })
    }

    /// Reads `buf.len()` bytes at `addr` in the child.
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<(), RestoreError> {
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|e| RestoreError::Os {
                what: format!(
                    "reading {} bytes at {addr:#x} from the process being restored (pid {})",
                    buf.len(),
                    self.pid
                ),
                source: e,
            })
    }

    /// Writes `bytes` into scratch at `off`; returns their address in the child.
    pub fn put_scratch(&mut self, off: usize, bytes: &[u8]) -> Result<u64, RestoreError> {
        if off + bytes.len() > self.scratch_len() {
            return Err(RestoreError::Unsupported(format!(
                "{} bytes do not fit the restore scratch area ({} bytes)",
                bytes.len() + off,
                self.scratch_len()
            )));
        }
        let addr = self.scratch() + off as u64;
        self.write_mem(addr, bytes)?;
        Ok(addr)
    }

    /// The child's current /proc/<pid>/maps.
    pub fn read_maps(&self) -> Result<Vec<Region>, RestoreError> {
        let p = format!("/proc/{}/maps", self.pid);
        let text = std::fs::read_to_string(&p).map_err(|e| RestoreError::Os {
            what: format!("reading {p}"),
            source: e,
        })?;
        parse_maps(&text).map_err(RestoreError::Unsupported)
    }

    /// Runs one system call in the child; returns the raw rax (negative = -errno).
    pub fn raw_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, RestoreError> {
        let mut r = self.base;
        r.rip = self.code;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX; // not in a syscall: no restart logic on resume
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.eflags &= !0x100; // no single-stepping
        setregs(self.pid, &r).map_err(|e| self.ptrace_err("PTRACE_SETREGS", e))?;
        ptrace_simple(libc::PTRACE_CONT, self.pid, 0, 0)
            .map_err(|e| self.ptrace_err("PTRACE_CONT", e))?;
        self.wait_stop(libc::SIGTRAP)?;
        let out = getregs(self.pid).map_err(|e| self.ptrace_err("PTRACE_GETREGS", e))?;
        if out.rip != self.code + 3 {
            return Err(RestoreError::Unsupported(format!(
                "injected syscall {nr} stopped at {:#x}, not after the injected int3 at {:#x}",
                out.rip,
                self.code + 2
            )));
        }
        Ok(out.rax as i64)
    }

    /// Waits for a stop with `sig` (exact value, e.g. `SIGTRAP | 0x80` for syscall stops).
    fn wait_stop(&mut self, sig: i32) -> Result<(), RestoreError> {
        let st = self.wait_any()?;
        self.expect_stop(st, sig)
    }

    /// `st` must be a stop with `sig`.
    fn expect_stop(&self, st: i32, sig: i32) -> Result<(), RestoreError> {
        if !libc::WIFSTOPPED(st) || libc::WSTOPSIG(st) != sig {
            let got = if libc::WIFSTOPPED(st) {
                libc::WSTOPSIG(st)
            } else {
                -1
            };
            let rip = getregs(self.pid).map(|r| r.rip).unwrap_or(0);
            return Err(RestoreError::ChildDied {
                pid: self.pid,
                how: format!("stopped with signal {got} at rip {rip:#x} instead of {sig}"),
                during: self.during.clone(),
            });
        }
        Ok(())
    }

    /// Runs a system call; a negative result is an [`RestoreError::Injected`] naming `call`
    /// and what it was for.
    pub fn sys(
        &mut self,
        call: &'static str,
        nr: i64,
        args: [u64; 6],
        what: impl FnOnce() -> String,
    ) -> Result<u64, RestoreError> {
        self.during = call.to_string();
        let rax = self.raw_syscall(nr, args)?;
        if (-4095..0).contains(&rax) {
            return Err(RestoreError::Injected {
                call,
                what: what(),
                errno: (-rax) as i32,
            });
        }
        Ok(rax as u64)
    }

    /// Like [`Tracee::sys`] with a path (written to scratch offset 0) as first argument.
    pub fn sys_path(
        &mut self,
        call: &'static str,
        nr: i64,
        path: &CStr,
        rest: [u64; 5],
        what: impl FnOnce() -> String,
    ) -> Result<u64, RestoreError> {
        let addr = self.put_scratch(0, path.to_bytes_with_nul())?;
        self.sys(
            call,
            nr,
            [addr, rest[0], rest[1], rest[2], rest[3], rest[4]],
            what,
        )
    }

    /// `openat(AT_FDCWD, path, flags)`; `Err(errno)` for the caller to turn into the right
    /// error (a missing file is reported differently from a failed ptrace).
    pub fn open(&mut self, path: &CStr, flags: i32) -> Result<Result<i32, i32>, RestoreError> {
        self.during = format!("open {path:?}");
        let addr = self.put_scratch(0, path.to_bytes_with_nul())?;
        let rax = self.raw_syscall(
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, addr, flags as u32 as u64, 0, 0, 0],
        )?;
        if (-4095..0).contains(&rax) {
            return Ok(Err((-rax) as i32));
        }
        Ok(Ok(rax as i32))
    }

    pub fn close(&mut self, fd: i32) {
        self.during = format!("close {fd}");
        match self.raw_syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) {
            Ok(r) if r < 0 => debug!(fd, errno = -r, "injected close failed"),
            _ => {}
        }
    }

    /// Adds a thread with TID `own_tid` (in the process's own PID namespace) and `fs` base
    /// `tls` by an injected `clone3` ([`clone::THREAD_FLAGS`], `set_tid` = [`own_tid`]). The
    /// thread is traced from birth (PTRACE_EVENT_CLONE) and left in its first stop, before
    /// it ran anything; it never runs on the stack given here (a scratch page), since its
    /// registers are set before it is let go ([`Tracee::set_thread_regs`]). Returns its TID as
    /// this process sees it. A TID in use is [`RestoreError::TidTaken`].
    pub fn inject_thread(&mut self, own_tid: i32, tls: u64) -> Result<i32, RestoreError> {
        self.during = format!("clone3 of thread {own_tid}");
        if self.scratch_len() < 2 * PAGE_SIZE as usize {
            return Err(RestoreError::Unsupported(
                "the restore scratch area is too small for a thread's clone3".into(),
            ));
        }
        // Scratch page 1: clone_args, then set_tid; page 2: the stack it is given.
        let set_tid = self.put_scratch(CLONE_ARGS_SIZE, &own_tid.to_ne_bytes())?;
        let args = CloneArgs {
            flags: clone::THREAD_FLAGS,
            stack: self.scratch() + PAGE_SIZE,
            stack_size: PAGE_SIZE,
            tls,
            set_tid,
            set_tid_size: 1,
            ..Default::default()
        };
        let addr = self.put_scratch(0, &args.to_bytes())?;
        let mut r = self.base;
        r.rip = self.code;
        r.rax = libc::SYS_clone3 as u64;
        r.orig_rax = u64::MAX;
        r.rdi = addr;
        r.rsi = CLONE_ARGS_SIZE as u64;
        r.eflags &= !0x100;
        setregs(self.pid, &r).map_err(|e| self.ptrace_err("PTRACE_SETREGS", e))?;
        ptrace_simple(libc::PTRACE_CONT, self.pid, 0, 0)
            .map_err(|e| self.ptrace_err("PTRACE_CONT", e))?;
        // Either the clone event (then the int3 after it), or the int3 alone when clone3
        // failed.
        let st = self.wait_any()?;
        let event_clone = libc::SIGTRAP | (libc::PTRACE_EVENT_CLONE << 8);
        let mut tid = None;
        if libc::WIFSTOPPED(st) && (st >> 8) == event_clone {
            let mut msg: libc::c_ulong = 0;
            // SAFETY: PTRACE_GETEVENTMSG writes one unsigned long to `data`, which points at
            // one.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_GETEVENTMSG,
                    self.pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    &mut msg as *mut libc::c_ulong,
                )
            };
            if rc < 0 {
                return Err(self.ptrace_err("PTRACE_GETEVENTMSG", std::io::Error::last_os_error()));
            }
            tid = Some(msg as i32);
            ptrace_simple(libc::PTRACE_CONT, self.pid, 0, 0)
                .map_err(|e| self.ptrace_err("PTRACE_CONT", e))?;
            let st = self.wait_any()?;
            self.expect_stop(st, libc::SIGTRAP)?;
        } else {
            self.expect_stop(st, libc::SIGTRAP)?;
        }
        let out = getregs(self.pid).map_err(|e| self.ptrace_err("PTRACE_GETREGS", e))?;
        let rax = out.rax as i64;
        let Some(tid) = tid.filter(|_| rax > 0) else {
            let errno = if (-4095..0).contains(&rax) {
                (-rax) as i32
            } else {
                libc::EIO
            };
            return Err(super::set_tid_error(own_tid, "thread", errno));
        };
        if rax as i32 != own_tid {
            warn!(
                own_tid,
                got = rax,
                "clone3 gave the thread another TID than asked"
            );
        }
        // Reap the new thread's first stop: SIGSTOP, before its first instruction.
        let st = wait_raw(tid).map_err(|e| self.ptrace_err("waitpid (new thread)", e))?;
        if !libc::WIFSTOPPED(st) || libc::WSTOPSIG(st) != libc::SIGSTOP {
            return Err(RestoreError::ChildDied {
                pid: tid,
                how: format!("reported wait status {st:#x} instead of its first stop"),
                during: self.during.clone(),
            });
        }
        let base = getregs(tid).map_err(|e| self.ptrace_err("PTRACE_GETREGS (new thread)", e))?;
        self.threads.push(AddedThread {
            tid,
            own_tid,
            base,
            resume: None,
        });
        debug!(tid, own_tid, "thread added to the restore child");
        Ok(tid)
    }

    /// The threads added so far, in order.
    pub fn added_threads(&self) -> &[AddedThread] {
        &self.threads
    }

    /// Sets the registers (`fs_base` included) and the signal mask an added thread resumes
    /// with, now, while it is stopped; it is let go by [`Tracee::finish`].
    pub fn set_thread_regs(
        &mut self,
        tid: i32,
        mut regs: libc::user_regs_struct,
        sigmask: u64,
    ) -> Result<(), RestoreError> {
        let Some(i) = self.threads.iter().position(|t| t.tid == tid) else {
            return Err(RestoreError::Unsupported(format!(
                "thread {tid} is not one restore added"
            )));
        };
        let base = self.threads[i].base;
        regs.orig_rax = u64::MAX; // not in a syscall: no restart on resume
        regs.eflags &= !0x100;
        regs.cs = base.cs;
        regs.ss = base.ss;
        self.during = format!("setting the registers of thread {tid}");
        set_sigmask(tid, sigmask).map_err(|e| self.ptrace_err("PTRACE_SETSIGMASK", e))?;
        setregs(tid, &regs).map_err(|e| self.ptrace_err("PTRACE_SETREGS (thread)", e))?;
        let check = getregs(tid).map_err(|e| self.ptrace_err("PTRACE_GETREGS", e))?;
        if check.fs_base != regs.fs_base || check.rip != regs.rip || check.rsp != regs.rsp {
            return Err(RestoreError::Unsupported(format!(
                "the kernel did not take thread {tid}'s registers: fs_base {:#x} (wanted {:#x}), rip {:#x} (wanted {:#x})",
                check.fs_base, regs.fs_base, check.rip, regs.rip
            )));
        }
        self.threads[i].resume = Some((regs, sigmask));
        Ok(())
    }

    /// Waits for the next wait status of the first thread; its exit is an error.
    fn wait_any(&mut self) -> Result<i32, RestoreError> {
        let st = wait_raw(self.pid).map_err(|e| self.ptrace_err("waitpid", e))?;
        if let Some(how) = describe_exit(st) {
            self.done = true; // already reaped (its added threads died with it)
            return Err(RestoreError::ChildDied {
                pid: self.pid,
                how,
                during: self.during.clone(),
            });
        }
        Ok(st)
    }

    /// Final step: set the signal mask, unmap the injection area as the last injected
    /// system call, and at its syscall-exit stop (the child never returns into the unmapped
    /// page) load the final registers and detach.
    pub fn finish(
        &mut self,
        mut regs: libc::user_regs_struct,
        sigmask: u64,
    ) -> Result<(), RestoreError> {
        if let Some(t) = self.threads.iter().find(|t| t.resume.is_none()) {
            return Err(RestoreError::Unsupported(format!(
                "thread {} was added but given no registers",
                t.own_tid
            )));
        }
        self.during = "PTRACE_SETSIGMASK".into();
        set_sigmask(self.pid, sigmask).map_err(|e| self.ptrace_err("PTRACE_SETSIGMASK", e))?;

        self.during = "munmap of the injection area".into();
        let mut r = self.base;
        r.rip = self.code;
        r.rax = libc::SYS_munmap as u64;
        r.orig_rax = u64::MAX;
        r.rdi = self.code;
        r.rsi = self.area_len;
        r.eflags &= !0x100;
        setregs(self.pid, &r).map_err(|e| self.ptrace_err("PTRACE_SETREGS", e))?;
        ptrace_simple(libc::PTRACE_SYSCALL, self.pid, 0, 0)
            .map_err(|e| self.ptrace_err("PTRACE_SYSCALL", e))?;
        self.wait_stop(libc::SIGTRAP | 0x80)?; // entry
        ptrace_simple(libc::PTRACE_SYSCALL, self.pid, 0, 0)
            .map_err(|e| self.ptrace_err("PTRACE_SYSCALL", e))?;
        self.wait_stop(libc::SIGTRAP | 0x80)?; // exit
        let out = getregs(self.pid).map_err(|e| self.ptrace_err("PTRACE_GETREGS", e))?;
        if out.rax != 0 {
            // Not fatal: the area sits in a hole the image does not use.
            warn!(
                pid = self.pid,
                addr = format_args!("{:#x}", self.code),
                errno = -(out.rax as i64),
                "could not unmap the restore injection area; it stays mapped"
            );
        }

        regs.orig_rax = u64::MAX;
        regs.eflags &= !0x100;
        regs.cs = self.base.cs;
        regs.ss = self.base.ss;
        self.during = "setting the final registers".into();
        setregs(self.pid, &regs).map_err(|e| self.ptrace_err("PTRACE_SETREGS (final)", e))?;
        let check = getregs(self.pid).map_err(|e| self.ptrace_err("PTRACE_GETREGS", e))?;
        if check.fs_base != regs.fs_base || check.rip != regs.rip || check.rsp != regs.rsp {
            return Err(RestoreError::Unsupported(format!(
                "the kernel did not take the final registers: fs_base {:#x} (wanted {:#x}), rip {:#x} (wanted {:#x})",
                check.fs_base, regs.fs_base, check.rip, regs.rip
            )));
        }
        // Every thread is built and set: let them all go, the first one last. (The shim's own
        // barrier keeps each from app code until all have re-registered their state.)
        for t in &self.threads {
            ptrace_simple(libc::PTRACE_DETACH, t.tid, 0, 0)
                .map_err(|e| self.ptrace_err(&format!("PTRACE_DETACH of thread {}", t.tid), e))?;
        }
        ptrace_simple(libc::PTRACE_DETACH, self.pid, 0, 0)
            .map_err(|e| self.ptrace_err("PTRACE_DETACH", e))?;
        self.done = true;
        Ok(())
    }
}

/// `PTRACE_SETSIGMASK` on the stopped thread `tid`.
fn set_sigmask(tid: i32, sigmask: u64) -> std::io::Result<()> {
    // SAFETY: PTRACE_SETSIGMASK reads `addr` (= 8, the kernel sigset size) bytes from `data`,
    // which points at a u64.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid,
            8usize as *mut libc::c_void,
            &sigmask as *const u64,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.done {
            warn!(pid = self.pid, during = %self.during, "restore failed; killing the half-built process");
            let tids: Vec<i32> = self.threads.iter().map(|t| t.tid).collect();
            kill_and_reap(self.pid, &tids);
        }
    }
}

/// Kills our child `pid` and reaps it, and first its traced threads `threads` (a traced
/// thread stays a zombie until its tracer waits for it, and the process's own exit status is
/// not reported before).
pub(crate) fn kill_and_reap(pid: i32, threads: &[i32]) {
    // SAFETY: kill and waitpid on our own child's pid and its traced threads; `st` is a valid
    // out-pointer.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        for &t in threads.iter().chain(std::iter::once(&pid)) {
            while libc::waitpid(t, &mut st, libc::__WALL) < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}
