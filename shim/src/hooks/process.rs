//! Hooks on the process's life: `__libc_start_main` (so that a `main` that returns is reported),
//! `exit` and `_exit` (the program ending on its own is not a host failure: the standby must
//! not resurrect it), and the `exec` family (protection follows the program
//! into its new image: same pid, same `remusd primary`, same standby; `life::init` carries on
//! in the new image).

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

use remus_abi::MsgKind;

use crate::base::interpose::{hook, real};
use crate::base::{link, state};
use crate::kernel::sys;

/// Whether this process is the program remus protects (not a child, not passive).
fn the_program() -> bool {
    state::mode() != state::MODE_PASSIVE && state::APP_PID.load(Ordering::Relaxed) == sys::getpid()
}

/// The child the program can hand protection to as it exits: its last child, alive and
/// running the same executable (the classic daemonize; a child that exec'd something else is a
/// separate program).
fn heir() -> Option<i32> {
    let child = state::LAST_CHILD.load(Ordering::Relaxed);
    if child <= 0 {
        return None;
    }
    let exe = |p: &str| {
        std::fs::metadata(p).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        })
    };
    let alive = sys::kill0(child);
    (alive
        && exe("/proc/self/exe").is_some()
        && exe(&format!("/proc/{child}/exe")) == exe("/proc/self/exe"))
    .then_some(child)
}

fn report_exit(code: c_int) {
    // A child that was handed protection takes it now, to hand it on (a double fork).
    state::safe_point();
    if !the_program() {
        return;
    }
    if state::mode() == state::MODE_PROTECTED {
        if let Some(child) = heir() {
            crate::track::handover::hand_over(child);
            link::send_text(
                MsgKind::Handover,
                child as u64,
                0,
                b"the program exits, leaving its child running the same program",
            );
            return;
        }
    }
    link::send_text(
        MsgKind::Exiting,
        code as u32 as u64,
        0,
        b"the program exited",
    );
}

hook! {
    unsafe fn exit(code: c_int) => remus_exit {
        report_exit(code);
        // SAFETY: an integer argument.
        unsafe { real!(exit)(code) }
    }
}

hook! {
    unsafe fn _exit(code: c_int) => remus_underscore_exit {
        report_exit(code);
        // SAFETY: an integer argument.
        unsafe { real!(_exit)(code) }
    }
}

type MainFn = extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
/// The program's `main`, written once by `__libc_start_main` before it calls [`remus_main`].
static APP_MAIN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn remus_main(argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) -> c_int {
    let main = APP_MAIN.load(Ordering::Acquire);
    let code = if main == 0 {
        127
    } else {
        // SAFETY: only __libc_start_main stores here, and it stores the program's main.
        let m: MainFn = unsafe { core::mem::transmute::<usize, MainFn>(main) };
        m(argc, argv, envp)
    };
    // glibc calls its internal exit() after main returns, which no hook sees: report here.
    report_exit(code);
    code
}

hook! {
    unsafe fn __libc_start_main(
        main: MainFn,
        argc: c_int,
        argv: *mut *mut c_char,
        init: *mut c_void,
        fini: *mut c_void,
        rtld_fini: *mut c_void,
        stack_end: *mut c_void
    ) -> c_int => remus_libc_start_main {
        APP_MAIN.store(main as usize, Ordering::Release);
        // SAFETY: the loader's arguments, passed on with our main in place of the program's.
        unsafe { real!(__libc_start_main)(remus_main, argc, argv, init, fini, rtld_fini, stack_end) }
    }
}

// ---------------------------------------------------------------------------------------
// fork, setsid, daemon: a daemonizing program's child carries on as the program
// ---------------------------------------------------------------------------------------

hook! {
    unsafe fn fork() -> libc::pid_t => remus_fork {
        // A child handed protection takes it before it forks again (a double fork).
        state::safe_point();
        let program = the_program() && state::mode() == state::MODE_PROTECTED;
        // SAFETY: no arguments; the child handler (life::init) runs in the child.
        let r = unsafe { real!(fork)() };
        if r > 0 && program {
            state::LAST_CHILD.store(r, Ordering::Relaxed);
            let _ = link::send(&remus_abi::Msg::new(MsgKind::Forked, r as u64, 0));
        }
        r
    }
}

hook! {
    unsafe fn setsid() -> libc::pid_t => remus_setsid {
        state::safe_point();
        // SAFETY: no arguments.
        unsafe { real!(setsid)() }
    }
}

hook! {
    unsafe fn daemon(nochdir: c_int, noclose: c_int) -> c_int => remus_daemon {
        // glibc's daemon() forks and exits through its internal calls, which no hook sees: the
        // same steps through the hooks, so that protection moves to the child.
        // SAFETY: our own fork hook (the exported symbol), no arguments.
        match unsafe { fork() } {
            -1 => return -1,
            0 => {}
            // SAFETY: our own _exit hook (reports the handover first).
            _ => unsafe { _exit(0) },
        }
        // SAFETY: our own setsid hook.
        if unsafe { setsid() } == -1 {
            return -1;
        }
        if nochdir == 0 {
            // SAFETY: a static NUL-terminated path.
            let _ = unsafe { libc::chdir(c"/".as_ptr()) };
        }
        if noclose == 0 {
            // SAFETY: open with a static path; dup2/close take integers.
            unsafe {
                let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if fd >= 0 {
                    for to in 0..3 {
                        libc::dup2(fd, to);
                    }
                    if fd > 2 {
                        libc::close(fd);
                    }
                }
            }
        }
        0
    }
}

// ---------------------------------------------------------------------------------------
// execve: protection follows the program into its new image
// ---------------------------------------------------------------------------------------

extern "C" {
    static environ: *const *const c_char;
}

/// The environment the new image gets: the program's, with the shim's own variables as this
/// process has them (`LD_PRELOAD` naming this library, every `REMUS_*`), and
/// [`remus_abi::ENV_EXEC_LINK`] naming the kept descriptors.
struct ExecEnv {
    /// NUL-terminated `NAME=value` strings (kept alive for `ptrs`).
    _vars: Vec<std::ffi::CString>,
    /// Pointers into `vars`, then null.
    ptrs: Vec<*const c_char>,
}

/// The path of this library, for `LD_PRELOAD`.
fn own_path() -> Option<std::ffi::CString> {
    // SAFETY: an all-zero Dl_info is a valid out-parameter; dladdr reads our own address.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: as above; dli_fname is a NUL-terminated string owned by the loader.
    unsafe {
        if libc::dladdr(own_path as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(info.dli_fname).to_owned())
    }
}

fn exec_env(envp: *const *const c_char, link: &str) -> ExecEnv {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    let ours: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| k.as_bytes().starts_with(b"REMUS_"))
        .filter(|(k, _)| k.as_bytes() != remus_abi::ENV_EXEC_LINK.as_bytes())
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let lib = own_path();
    let mut vars = Vec::new();
    let mut preload_seen = false;
    let mut i = 0;
    while !envp.is_null() {
        // SAFETY: envp is a null-terminated array of C strings (as for execve(2)).
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            break;
        }
        i += 1;
        // SAFETY: as above.
        let kv = unsafe { CStr::from_ptr(p) }.to_bytes();
        let name = kv.split(|&b| b == b'=').next().unwrap_or(kv);
        if name.starts_with(b"REMUS_") {
            continue; // ours, put back below as this process has them
        }
        if name == b"LD_PRELOAD" {
            preload_seen = true;
            if let Some(l) = lib.as_ref() {
                let l = l.as_bytes();
                let val = &kv[name.len() + 1..];
                if !val.split(|&b| b == b':' || b == b' ').any(|x| x == l) {
                    let mut v = b"LD_PRELOAD=".to_vec();
                    v.extend_from_slice(l);
                    if !val.is_empty() {
                        v.push(b':');
                        v.extend_from_slice(val);
                    }
                    vars.extend(CString::new(v));
                    continue;
                }
            }
        }
        // kv came from a C string: it has no NUL inside.
        vars.extend(CString::new(kv));
    }
    if !preload_seen {
        if let Some(l) = lib {
            let mut v = b"LD_PRELOAD=".to_vec();
            v.extend_from_slice(l.as_bytes());
            vars.extend(CString::new(v));
        }
    }
    for (k, v) in ours {
        let mut kv = k;
        kv.push(b'=');
        kv.extend_from_slice(&v);
        vars.extend(CString::new(kv));
    }
    vars.extend(CString::new(format!("{}={link}", remus_abi::ENV_EXEC_LINK)));
    let mut ptrs: Vec<*const c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    ptrs.push(core::ptr::null());
    ExecEnv { _vars: vars, ptrs }
}

/// What [`prepare_exec`] changed, undone by [`exec_failed`].
struct Prepared {
    env: ExecEnv,
}

/// The program (the protected process itself, not a child) is about to exec: the controller
/// is told, the shim socket and the staging memfd are kept open for the new image, the epoch
/// signal is blocked (a signal the new image gets before its handler is installed would kill
/// it; one that is pending waits for the new image), every held socket's close goes into the
/// log, and the new image's environment names what it carries on with. `None`: not ours to
/// follow (a child, a passive or unprotected process): the exec goes ahead untouched.
fn prepare_exec(what: *const c_char, envp: *const *const c_char) -> Option<Prepared> {
    if state::mode() != state::MODE_PROTECTED
        || state::APP_PID.load(Ordering::Relaxed) != sys::getpid()
    {
        return None;
    }
    let sock = state::SOCK.load(Ordering::Relaxed);
    let staging = state::STAGING_FD.load(Ordering::Relaxed);
    if sock < 0 || staging < 0 {
        return None;
    }
    crate::track::sockets::before_exec();
    sys::sigmask(libc::SIG_BLOCK, 1u64 << (remus_abi::EPOCH_SIGNAL - 1));
    for fd in [sock, staging] {
        let _ = sys::set_cloexec(fd, false);
    }
    let link = format!("{sock},{staging},{}", crate::track::sockets::next_conn());
    let path: &[u8] = if what.is_null() {
        b"(a descriptor)"
    } else {
        // SAFETY: what is the program's path argument, a C string.
        unsafe { std::ffi::CStr::from_ptr(what) }.to_bytes()
    };
    link::send_text(MsgKind::Exec, 0, 0, path);
    Some(Prepared {
        env: exec_env(envp, &link),
    })
}

/// The exec returned: it failed. The old image goes on, protected as before.
fn exec_failed(p: Prepared) {
    drop(p);
    let e = sys::errno();
    for fd in [&state::SOCK, &state::STAGING_FD] {
        let _ = sys::set_cloexec(fd.load(Ordering::Relaxed), true);
    }
    let _ = link::send(&remus_abi::Msg::new(MsgKind::ExecFailed, e as u64, 0));
    sys::sigmask(libc::SIG_UNBLOCK, 1u64 << (remus_abi::EPOCH_SIGNAL - 1));
    sys::set_errno(e);
}

/// Runs `exec` with the environment the new image needs when the program is followed, else
/// with `envp` as given.
fn follow_exec(
    what: *const c_char,
    envp: *const *const c_char,
    exec: impl FnOnce(*const *const c_char) -> c_int,
) -> c_int {
    match prepare_exec(what, envp) {
        None => exec(envp),
        Some(p) => {
            let r = exec(p.env.ptrs.as_ptr());
            exec_failed(p);
            r
        }
    }
}

fn env_now() -> *const *const c_char {
    // SAFETY: glibc's environ, read once for this call.
    unsafe { environ }
}

hook! {
    unsafe fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int => remus_execve {
        // SAFETY: the app's arguments, the environment possibly replaced by ours (valid for the call).
        follow_exec(path, envp, |env| unsafe { real!(execve)(path, argv, env) })
    }
}

hook! {
    unsafe fn execv(path: *const c_char, argv: *const *const c_char) -> c_int => remus_execv {
        // SAFETY: as for execve; execv is execve with the current environment.
        follow_exec(path, env_now(), |env| unsafe { real!(execve)(path, argv, env) })
    }
}

hook! {
    unsafe fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int => remus_execvpe {
        // SAFETY: the app's arguments, the environment possibly replaced by ours.
        follow_exec(file, envp, |env| unsafe { real!(execvpe)(file, argv, env) })
    }
}

hook! {
    unsafe fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int => remus_execvp {
        // SAFETY: as for execvpe with the current environment.
        follow_exec(file, env_now(), |env| unsafe { real!(execvpe)(file, argv, env) })
    }
}

hook! {
    unsafe fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int => remus_fexecve {
        // SAFETY: the app's arguments, the environment possibly replaced by ours.
        follow_exec(core::ptr::null(), envp, |env| unsafe { real!(fexecve)(fd, argv, env) })
    }
}

// ---------------------------------------------------------------------------------------
// execl, execlp, execle: variadic in C, so the entry points are assembly that hands the
// argument registers and the caller's stack arguments to `remus_execl_args`, which collects
// the list (up to its NULL, and execle's environment after it) and runs the hooks above.
// ---------------------------------------------------------------------------------------

macro_rules! execl_entry {
    ($name:ident, $kind:literal) => {
        /// # Safety
        /// As for the libc function of the same name (a variadic list ending with NULL).
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() -> c_int {
            core::arch::naked_asm!(
                "push rbp",
                "mov rbp, rsp",
                // The five argument registers after the path, in order, then the stack
                // arguments at [rbp + 16]: one list.
                "sub rsp, 48",
                "mov [rsp], rsi",
                "mov [rsp + 8], rdx",
                "mov [rsp + 16], rcx",
                "mov [rsp + 24], r8",
                "mov [rsp + 32], r9",
                "mov rsi, rsp",
                "lea rdx, [rbp + 16]",
                concat!("mov ecx, ", $kind),
                "call {impl_}",
                "leave",
                "ret",
                impl_ = sym remus_execl_args,
            )
        }
    };
}

execl_entry!(execl, 0);
execl_entry!(execlp, 1);
execl_entry!(execle, 2);

/// The most arguments an `execl*` call may pass (the kernel's own limit is far larger, but a
/// list this long in a variadic call is not a real program's).
const EXECL_MAX_ARGS: usize = 4096;

/// `execl` (kind 0), `execlp` (1) or `execle` (2) with `path` and the variadic list: the first
/// five words in `regs`, the rest at `stack`.
///
/// # Safety
/// Called only from the entry points above, with the caller's registers and stack as the C
/// calling convention left them for a variadic call.
unsafe extern "C" fn remus_execl_args(
    path: *const c_char,
    regs: *const *const c_char,
    stack: *const *const c_char,
    kind: c_int,
) -> c_int {
    let word = |i: usize| -> *const c_char {
        // SAFETY: words 0..5 are the saved registers, the rest the caller's stack arguments,
        // read only up to the list's NULL (and execle's envp after it), as the callee of a
        // variadic call may.
        unsafe {
            if i < 5 {
                *regs.add(i)
            } else {
                *stack.add(i - 5)
            }
        }
    };
    let mut argv: Vec<*const c_char> = Vec::new();
    let mut i = 0;
    loop {
        let a = word(i);
        argv.push(a);
        i += 1;
        if a.is_null() {
            break;
        }
        if i == EXECL_MAX_ARGS {
            sys::set_errno(libc::E2BIG);
            return -1;
        }
    }
    // SAFETY: our own exported hooks, with a NULL-terminated argv that outlives the call.
    unsafe {
        match kind {
            0 => execv(path, argv.as_ptr()),
            1 => execvp(path, argv.as_ptr()),
            _ => execve(path, argv.as_ptr(), word(i) as *const *const c_char),
        }
    }
}
