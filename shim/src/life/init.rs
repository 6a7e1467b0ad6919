//! Start-up, from the library's constructor: decide whether this process is the one to
//! protect, probe the kernel, create the staging area, start `remusd primary`, and wait for it
//! to say the standby is there. Runs before `main`, single-threaded; allocation is fine here.

use core::sync::atomic::Ordering;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

use remus_abi::{
    Msg, MsgKind, ABI_VERSION, CONTROLLER_OUTPUT_FD_BASE, CONTROLLER_SHIM_SOCK_FD,
    CONTROLLER_STAGING_FD, ENV_ALLOW_UNPROTECTED, ENV_CONTROL, ENV_EPOCH_MS, ENV_PRIMARY_ARGS,
    ENV_PROTECTED_PID, ENV_REMUSD, ENV_STANDBY, MAX_AUXV_WORDS, STAGING_SIZE,
};

use super::{output, probe};
use crate::base::sigview::{self as signals, SigactionFn};
use crate::base::{environ, fatal, link, state, statics};
use crate::epoch::handler;
use crate::kernel::sys;
use crate::track::{files, pages as tracker, sockets};

pub(crate) fn env(name: &str) -> Option<String> {
    environ::get(name).filter(|v| !v.is_empty())
}

fn flag(name: &str) -> bool {
    env(name).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The library constructor's body.
pub fn run() {
    let pid = sys::getpid();
    if let Some(owner) = env(ENV_PROTECTED_PID) {
        if owner != pid.to_string() {
            return; // a child of the protected program: not ours to replicate
        }
    }
    let allow = flag(ENV_ALLOW_UNPROTECTED);
    if let Some(link) = env(remus_abi::ENV_EXEC_LINK) {
        // The program exec'd: this image carries on with the old one's remusd and standby.
        environ::set(remus_abi::ENV_EXEC_LINK, None);
        if env(ENV_PROTECTED_PID).is_some() {
            if let Err(why) = carry_on_after_exec(pid, &link) {
                let why =
                    format!("the program exec'd, and its new image cannot be protected: {why}");
                link::send_text(MsgKind::Unsupported, 0, 0, why.as_bytes());
                if allow {
                    fatal::say(format!("WARNING: running UNPROTECTED: {why}").as_bytes());
                    state::set_mode(state::MODE_UNPROTECTED);
                    return;
                }
                fatal::refuse(why.as_bytes());
            }
            return;
        }
    }
    let standby = env(ENV_STANDBY);
    if standby.is_none() && !allow {
        fatal::refuse(
            format!("{ENV_STANDBY} is not set, so there is no standby to protect this program; set it to the host:port a `remusd standby --listen` is listening on (or use scripts/remus-run --standby ADDR), or set {ENV_ALLOW_UNPROTECTED}=1 to run without protection")
                .as_bytes(),
        );
    }
    if let Some(every) = env("REMUS_PAUSE_PROFILE").and_then(|v| v.parse::<u64>().ok()) {
        crate::epoch::profile::enable(every);
    }
    let (kernel, kind, notice) = match choose_tracker() {
        Ok(k) => k,
        Err(why) => {
            if allow {
                fatal::say(
                    format!("WARNING: running UNPROTECTED ({ENV_ALLOW_UNPROTECTED}=1): {why}")
                        .as_bytes(),
                );
                return;
            }
            fatal::refuse(why.as_bytes());
        }
    };
    use_kernel(&kernel);
    state::APP_PID.store(pid, Ordering::Relaxed);
    read_process_facts();
    environ::set(ENV_PROTECTED_PID, Some(&pid.to_string()));

    let log_file = env("REMUS_LOG_FILE").unwrap_or_else(|| {
        // SAFETY: getuid has no preconditions.
        let dir = format!("/tmp/remus-{}", unsafe { libc::getuid() });
        let _ = std::fs::create_dir_all(&dir);
        format!("{dir}/primary-{pid}.log")
    });
    let launch = Launch {
        pid,
        standby,
        allow,
        control: env(ENV_CONTROL),
        key_file: env(remus_abi::ENV_KEY_FILE),
        insecure: flag(remus_abi::ENV_INSECURE),
        epoch_ms: env(ENV_EPOCH_MS),
        log_file,
        before_main: true,
    };
    let answer = connect(&launch, kind, notice, |_| {
        // SAFETY: registering a fork handler with no parent/prepare hooks.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        let real = signals::real_sigaction();
        signals::install(real);
        handler::install(real);
    });
    match answer {
        Ok(Answer::Ready) => {}
        Ok(Answer::Unprotected(text)) => {
            fatal::say(&[b"WARNING: running UNPROTECTED: ".as_slice(), &text].concat());
            state::set_mode(state::MODE_UNPROTECTED);
        }
        Ok(Answer::Refused(text)) => fatal::refuse(&text),
        Err(e) => fatal::refuse(e.as_bytes()),
    }
}

/// The dirty-page tracker: `REMUS_TRACKER=uffd` (the default) or `mprotect`; without async
/// write-protect the default falls back to mprotect, with a notice for the controller's log.
pub(crate) fn choose_tracker() -> Result<(probe::Kernel, u8, Option<String>), String> {
    let choice = env("REMUS_TRACKER");
    let mut notice: Option<String> = None;
    let probed = match choice.as_deref() {
        Some("mprotect") => {
            notice = Some("dirty-page tracker: mprotect (REMUS_TRACKER=mprotect)".into());
            probe::probe_mprotect().map(|k| (k, tracker::MPROTECT))
        }
        Some("uffd") => probe::probe().map(|k| (k, tracker::UFFD)),
        None => match probe::probe() {
            Ok(k) => Ok((k, tracker::UFFD)),
            Err(why) => {
                notice = Some(format!(
                    "dirty-page tracker: mprotect, because the default (uffd) is not available: {why}"
                ));
                probe::probe_mprotect().map(|k| (k, tracker::MPROTECT))
            }
        },
        Some(other) => Err(format!(
            "REMUS_TRACKER={other} is not a dirty-page tracker: use uffd (the default) or mprotect"
        )),
    };
    probed.map(|(k, kind)| (k, kind, notice))
}

/// Keeps the probed kernel objects (userfaultfd, pagemap) above the app's descriptors.
pub(crate) fn use_kernel(kernel: &probe::Kernel) {
    let uffd = if kernel.uffd >= 0 {
        sys::move_fd_high(kernel.uffd).unwrap_or(kernel.uffd)
    } else {
        -1
    };
    let pagemap = sys::move_fd_high(kernel.pagemap).unwrap_or(kernel.pagemap);
    state::UFFD.store(uffd, Ordering::Relaxed);
    state::PAGEMAP.store(pagemap, Ordering::Relaxed);
}

/// How to start a `remusd primary` for this process: at start-up (from the environment) or
/// when the restored process is protected again (from the rejoin request, see `rejoin.rs`).
pub(crate) struct Launch {
    pub pid: i32,
    pub standby: Option<String>,
    pub allow: bool,
    pub control: Option<String>,
    pub key_file: Option<String>,
    pub insecure: bool,
    pub epoch_ms: Option<String>,
    pub log_file: String,
    /// Before `main` (start-up): stdio buffering may still be changed.
    pub before_main: bool,
}

/// What `remusd primary` answered the shim's hello.
pub(crate) enum Answer {
    /// Protection is on.
    Ready,
    /// No standby, and the user allowed running without one: the text says why.
    Unprotected(Vec<u8>),
    /// It refused (standby unreachable, bad key, ...): the text says why. Nothing of the
    /// shim's was switched on; the staging area and socket are still set up.
    Refused(Vec<u8>),
}

/// The part of start-up that a restored process repeats to be protected again: a new staging
/// area, a new `remusd primary` for this pid, hello, and its answer. The tracker's kernel
/// objects must be in place ([`use_kernel`]). `before_hello` runs once remusd exists and
/// before the hello (start-up installs the epoch handler there: the first signal must find it).
pub(crate) fn connect(
    l: &Launch,
    kind: u8,
    notice: Option<String>,
    before_hello: impl FnOnce(SigactionFn),
) -> Result<Answer, String> {
    let (staging_fd, staging) = make_staging().map_err(|e| {
        format!(
            "cannot create the staging area ({} MiB shared memory): {e}",
            STAGING_SIZE >> 20
        )
    })?;
    state::STAGING.store(staging, Ordering::Relaxed);
    sockets::init(staging);
    files::init(staging);

    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into sv.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(format!(
            "cannot create the controller socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let ours = sys::move_fd_high(sv[0]).unwrap_or(sv[0]);
    let theirs = sys::move_fd_high(sv[1]).unwrap_or(sv[1]);
    state::SOCK.store(ours, Ordering::Relaxed);

    // Output commit: pipes for the held output streams, handed to remusd now, put in place
    // of fds 1/2 once protection starts.
    let outputs = output::prepare();
    let spawned = spawn_controller(l, theirs, staging_fd, &outputs);
    sys::close(theirs);
    state::STAGING_FD.store(staging_fd, Ordering::Relaxed);
    output::forget_controller_ends(&outputs);
    if let Err(e) = spawned {
        output::abandon(&outputs);
        return Err(e);
    }

    let real = signals::real_sigaction();
    before_hello(real);
    if kind == tracker::MPROTECT {
        if let Err(e) = tracker::mprotect::start(real) {
            output::abandon(&outputs);
            return Err(e);
        }
    }
    tracker::set_kind(kind);
    handler::STARTING.store(true, Ordering::Release);
    if let Some(n) = notice {
        link::send_text(MsgKind::Log, 0, 0, n.as_bytes());
    }
    let _ = link::send(&Msg::new(MsgKind::Hello, l.pid as u64, ABI_VERSION as u64));
    let answer = match link::recv() {
        Ok(m) if m.kind == MsgKind::Ready as u32 => {
            output::install(&outputs, l.before_main);
            handler::start_protection();
            signals::install_reporters(real);
            return Ok(Answer::Ready);
        }
        Ok(m) if m.kind == MsgKind::RunUnprotected as u32 => {
            Ok(Answer::Unprotected(m.text().to_vec()))
        }
        Ok(m) if m.kind == MsgKind::Refuse as u32 => Ok(Answer::Refused(m.text().to_vec())),
        Ok(m) => Err(format!(
            "remusd primary answered with an unexpected message (kind {})",
            m.kind
        )),
        Err(e) => Err(format!(
            "remusd primary exited before answering ({}); see its log {}",
            if e == 0 {
                "end of file".to_string()
            } else {
                std::io::Error::from_raw_os_error(e).to_string()
            },
            l.log_file
        )),
    };
    output::abandon(&outputs);
    handler::no_protection();
    answer
}

extern "C" fn after_fork_in_child() {
    // A forked child is not the protected process: it must not take checkpoints nor talk to
    // the controller as if it were the app (its copies of our descriptors are closed).
    // A child of the protected program itself may be handed protection when the program
    // exits (life::daemon): it keeps the shim socket and the staging memfd for that.
    // Only the forking thread is left: its slot carries on (with the child's thread id), and
    // the shim's lock is held exactly if that thread's hook depth says so.
    crate::base::threads::after_fork_in_child();
    crate::base::lock::after_fork_in_child(state::hook_depth() > 0);
    let candidate = state::mode() == state::MODE_PROTECTED;
    state::CANDIDATE.store(candidate, Ordering::Relaxed);
    state::LAST_CHILD.store(0, Ordering::Relaxed);
    state::set_mode(state::MODE_PASSIVE);
    if !candidate {
        for fd in [&state::SOCK, &state::STAGING_FD] {
            let v = fd.swap(-1, Ordering::Relaxed);
            if v >= 0 {
                sys::close(v);
            }
        }
    }
    // Descriptors of the parent's own /proc and tracker are of no use here.
    for fd in [
        &state::UFFD,
        &state::PAGEMAP,
        &state::MAPS_FD,
        &state::TASK_FD,
        &state::FDDIR_FD,
        &state::STATM_FD,
    ] {
        let v = fd.swap(-1, Ordering::Relaxed);
        if v >= 0 {
            sys::close(v);
        }
    }
    // The shim's own variables are the protected program's: a child keeps only the one that
    // tells it (and whatever it execs under the same LD_PRELOAD) that it is not the program.
    let ours: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("REMUS_") && k != ENV_PROTECTED_PID)
        .collect();
    for k in ours {
        environ::set(&k, None);
    }
}

/// Start-up of the image a protected program `execve`d into (`link`: the kept shim socket,
/// staging memfd and next connection number, see `remus_abi::ENV_EXEC_LINK`): the same pid, the
/// same `remusd primary` and standby, the staging area mapped again with its sockets' log
/// (whose records are still to be released) and its epoch numbers; held stdio is already in
/// place (fds 1/2 are remusd's pipes). Everything else starts afresh: the first epoch ships
/// every region and file whole.
fn carry_on_after_exec(pid: i32, link: &str) -> Result<(), String> {
    let parts: Vec<&str> = link.split(',').collect();
    let num = |i: usize| parts.get(i).and_then(|v| v.parse::<i64>().ok());
    let (Some(sock), Some(staging_fd), Some(next_conn)) = (num(0), num(1), num(2)) else {
        return Err(format!(
            "{}={link:?} is not SOCK,STAGING,NEXT_CONN",
            remus_abi::ENV_EXEC_LINK
        ));
    };
    let (sock, staging_fd) = (sock as i32, staging_fd as i32);
    let is =
        |fd: i32, kind: u32| sys::fstat(fd).is_some_and(|st| st.st_mode & libc::S_IFMT == kind);
    if !is(sock, libc::S_IFSOCK) || !is(staging_fd, libc::S_IFREG) {
        return Err(format!("descriptors {sock} and {staging_fd} are not the shim's socket and staging memfd any more"));
    }
    state::SOCK.store(sock, Ordering::Relaxed);
    for fd in [sock, staging_fd] {
        let _ = sys::set_cloexec(fd, true);
    }
    let (kernel, kind, notice) = choose_tracker()?;
    use_kernel(&kernel);
    state::APP_PID.store(pid, Ordering::Relaxed);
    read_process_facts();
    // SAFETY: a shared mapping of the staging memfd (MAPPED_SIZE bytes, as remusd maps it) at
    // a kernel-chosen address.
    let staging = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            MAPPED_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            staging_fd,
            0,
        )
    };
    if staging == libc::MAP_FAILED {
        return Err(format!(
            "cannot map the staging area again: {}",
            std::io::Error::last_os_error()
        ));
    }
    let staging = staging as *mut u8;
    state::STAGING.store(staging, Ordering::Relaxed);
    state::STAGING_FD.store(staging_fd, Ordering::Relaxed);
    sockets::continue_after_exec(next_conn as u32);
    files::init(staging);
    state::EPOCH.store(last_epoch_in(staging), Ordering::Relaxed);

    // SAFETY: registering a fork handler with no parent/prepare hooks.
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    let real = signals::real_sigaction();
    signals::install(real);
    // The epoch signal the old image blocked is pending, or comes soon: it must find the
    // handler, which keeps it until protection is on.
    handler::STARTING.store(true, Ordering::Release);
    // An epoch signal the old image had blocked is void (remusd forgot it when it heard of the
    // exec): ignoring it while it is pending discards it.
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask; SIG_IGN set on it.
    unsafe {
        let mut ign: libc::sigaction = core::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        real(remus_abi::EPOCH_SIGNAL, &ign, core::ptr::null_mut());
    }
    handler::install(real);
    if kind == tracker::MPROTECT {
        tracker::mprotect::start(real)?;
    }
    hello_again(pid, kind, notice, real)
}

/// The last epoch the staging area's previous owner (the image before an exec, or the parent
/// that handed protection over) took: this process's epochs carry on from it.
pub(crate) fn last_epoch_in(staging: *const u8) -> u64 {
    // SAFETY: the staging mapping starts with its header, which the previous owner's capture
    // wrote (plain integers).
    unsafe { (*(staging as *const remus_abi::StagingHeader)).epoch }
}

/// The hello of a process that carries on with a kept shim socket and staging area (a new
/// image after an exec, a daemon's child): the tracker `kind` switched on, the epoch handler
/// told to keep an early signal, `HelloAfterExec`, and remusd's answer.
pub(crate) fn hello_again(
    pid: i32,
    kind: u8,
    notice: Option<String>,
    real: SigactionFn,
) -> Result<(), String> {
    tracker::set_kind(kind);
    handler::STARTING.store(true, Ordering::Release);
    if let Some(n) = notice {
        link::send_text(MsgKind::Log, 0, 0, n.as_bytes());
    }
    link::send(&Msg::new(
        MsgKind::HelloAfterExec,
        pid as u64,
        ABI_VERSION as u64,
    ))
    .map_err(|e| {
        format!(
            "cannot reach remusd primary ({})",
            std::io::Error::from_raw_os_error(e)
        )
    })?;
    match link::recv() {
        Ok(m) if m.kind == MsgKind::Ready as u32 => {
            handler::start_protection();
            signals::install_reporters(real);
            Ok(())
        }
        Ok(m) if m.kind == MsgKind::RunUnprotected as u32 => {
            handler::no_protection();
            fatal::say(&[b"WARNING: running UNPROTECTED: ".as_slice(), m.text()].concat());
            state::set_mode(state::MODE_UNPROTECTED);
            Ok(())
        }
        Ok(m) if m.kind == MsgKind::Refuse as u32 => {
            handler::no_protection();
            Err(String::from_utf8_lossy(m.text()).into_owned())
        }
        Ok(m) => {
            handler::no_protection();
            Err(format!(
                "remusd primary answered with an unexpected message (kind {})",
                m.kind
            ))
        }
        Err(e) => {
            handler::no_protection();
            Err(format!(
                "remusd primary went away ({})",
                if e == 0 {
                    "end of file".to_string()
                } else {
                    std::io::Error::from_raw_os_error(e).to_string()
                }
            ))
        }
    }
}

/// The staging memfd holds the staging area and, after it, the sockets' output log
/// (`remus_abi::netlog`) and the file log (`remus_abi::filelog`), mapped as one region (capture skips it by its start address).
pub(crate) const MAPPED_SIZE: usize = remus_abi::filelog::FILELOG_END;

fn make_staging() -> Result<(i32, *mut u8), std::io::Error> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"remus-staging".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = sys::move_fd_high(fd).unwrap_or(fd);
    // SAFETY: sizing our own memfd.
    if unsafe { libc::ftruncate(fd, MAPPED_SIZE as libc::off_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a shared mapping of the memfd at a kernel-chosen address; it lives as long as the
    // process (the restored process never uses it).
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            MAPPED_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fd, p as *mut u8))
}

fn find_remusd() -> Result<std::path::PathBuf, String> {
    if let Some(p) = env(ENV_REMUSD) {
        return Ok(p.into());
    }
    // Next to libremus.so.
    // SAFETY: dladdr on one of our own functions fills `info` with static strings.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::dladdr(find_remusd as *const core::ffi::c_void, &mut info) } != 0
        && !info.dli_fname.is_null()
    {
        // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader.
        let lib = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes(),
        ));
        if let Some(dir) = lib.parent() {
            let cand = dir.join("remusd");
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    if let Some(path) = environ::get("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("remusd");
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    Err(format!("cannot find remusd (not next to libremus.so, not on PATH); set {ENV_REMUSD}=/path/to/remusd"))
}

fn spawn_controller(
    l: &Launch,
    sock: i32,
    staging: i32,
    outputs: &output::Plan,
) -> Result<(), String> {
    let remusd = find_remusd()?;
    let mut args: Vec<String> = vec![
        remusd.display().to_string(),
        "primary".into(),
        "--app-pid".into(),
        l.pid.to_string(),
    ];
    if let Some(s) = &l.standby {
        args.extend(["--standby".into(), s.clone()]);
    }
    if let Some(ms) = &l.epoch_ms {
        args.extend(["--epoch-ms".into(), ms.clone()]);
    }
    if let Some(c) = &l.control {
        args.extend(["--control".into(), c.clone()]);
    }
    if l.allow {
        args.push("--allow-unprotected".into());
    }
    if let Some(k) = &l.key_file {
        args.extend(["--key-file".into(), k.clone()]);
    }
    if l.insecure {
        args.push("--insecure".into());
    }
    args.extend(["--log-file".into(), l.log_file.clone()]);
    let streams: Vec<output::Stream> = outputs.streams.iter().flatten().copied().collect();
    for st in &streams {
        args.extend(["--output".into(), st.name().into()]);
    }
    if let Some(extra) = env(ENV_PRIMARY_ARGS) {
        args.extend(extra.split_whitespace().map(String::from));
    }
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let envv: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "LD_PRELOAD" && k != ENV_PROTECTED_PID)
        .map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).unwrap_or_default())
        .collect();
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(core::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envv.iter().map(|a| a.as_ptr()).collect();
    envp.push(core::ptr::null());
    let path = argv[0].clone();

    // SAFETY: fork with one thread (before main, or at a rejoin's safe point outside any
    // signal handler and hook). The child only makes system calls, then execs or exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!(
            "cannot fork remusd primary: {}",
            std::io::Error::last_os_error()
        ));
    }
    if child == 0 {
        // SAFETY: in the child: detach (double fork so the app never has remusd as a child it
        // could reap or wait for), wire fds 3 and 4, stdio to /dev/null, exec.
        unsafe {
            libc::setsid();
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            libc::dup2(sock, CONTROLLER_SHIM_SOCK_FD);
            libc::dup2(staging, CONTROLLER_STAGING_FD);
            let mut next = CONTROLLER_OUTPUT_FD_BASE;
            for st in &streams {
                libc::dup2(st.orig, next);
                libc::dup2(st.rd, next + 1);
                next += 2;
            }
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::dup2(null, 2);
            }
            libc::syscall(libc::SYS_close_range, next as u32, u32::MAX, 0u32);
            libc::execve(path.as_ptr(), argp.as_ptr(), envp.as_ptr());
            let msg = Msg::new(MsgKind::Refuse, 0, 0).with_text(
                format!(
                    "cannot run {}: {}",
                    remusd.display(),
                    std::io::Error::last_os_error()
                )
                .as_bytes(),
            );
            let _ = sys::write_all(CONTROLLER_SHIM_SOCK_FD, msg.as_bytes());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: reaping the intermediate child we just forked.
    unsafe { libc::waitpid(child, &mut status, 0) };
    Ok(())
}

/// What the capture needs of this process that only start-up reads: the mm fields and auxv,
/// glibc's cached thread id offset, its rseq area.
pub(crate) fn read_process_facts() {
    read_statics();
    find_tid_offset();
    find_rseq();
}

fn read_statics() {
    // SAFETY: start-up, single-threaded (see base::statics).
    let s = unsafe { statics::for_start_up() };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let Some(close) = stat.rfind(')') {
            // Fields after the comm; field 3 (state) is index 0.
            let f: Vec<u64> = stat[close + 2..]
                .split_whitespace()
                .map(|x| x.parse::<i64>().unwrap_or(0) as u64)
                .collect();
            let at = |n: usize| f.get(n - 3).copied().unwrap_or(0);
            s.mm.start_code = at(26);
            s.mm.end_code = at(27);
            s.mm.start_stack = at(28);
            s.mm.start_data = at(45);
            s.mm.end_data = at(46);
            s.mm.start_brk = at(47);
            s.mm.arg_start = at(48);
            s.mm.arg_end = at(49);
            s.mm.env_start = at(50);
            s.mm.env_end = at(51);
        }
    }
    if let Ok(aux) = std::fs::read("/proc/self/auxv") {
        let words: Vec<u64> = aux
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let n = words.len().min(MAX_AUXV_WORDS);
        s.auxv[..n].copy_from_slice(&words[..n]);
        s.n_auxv = n;
    }
}

/// glibc keeps the thread id in the thread control block (`raise`, `pthread_kill` and mutexes
/// read it). glibc 2.36 on x86-64 has it at 0x2d0; check there first, then look around.
fn find_tid_offset() {
    let tp = sys::fs_base();
    let tid = sys::gettid();
    if tp == 0 {
        return;
    }
    let probe = |off: u64| {
        // SAFETY: the TCB (glibc's struct pthread) is at least 0x900 bytes and readable.
        unsafe { ((tp + off) as *const i32).read_volatile() == tid }
    };
    if probe(0x2d0) {
        state::TID_OFFSET.store(0x2d0, Ordering::Relaxed);
        return;
    }
    for off in (0x100..0x800).step_by(4) {
        if probe(off) {
            state::TID_OFFSET.store(off, Ordering::Relaxed);
            return;
        }
    }
}

fn find_rseq() {
    // SAFETY: dlsym with static names; the symbols, if present, are glibc's read-only exports.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if !off.is_null() && !size.is_null() && *size != 0 {
            state::RSEQ_OFFSET.store(*off as u64, Ordering::Relaxed);
            state::RSEQ_SIZE.store(*size, Ordering::Relaxed);
        }
    }
}
