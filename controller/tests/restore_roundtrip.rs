//! Restore without the shim: dump a running C program from outside (ptrace), kill it, restore
//! the dump with `remus_controller::restore`, and check that the restored program's own checks
//! pass, that it continues where the dump left it, and that it exits 0.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use remus_controller::image::{
    parse_maps, EpochMeta, FdEntry, FdKind, Image, MmFields, ResumeContext, PAGE_SIZE,
};
use remus_controller::restore::{restore, RestoreOptions};

const ROUNDS: u32 = 30;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("remus-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// The failure message for a program this test needs that is not installed.
fn not_installed(what: &str, package: &str, e: impl std::fmt::Display) -> String {
    format!(
        "{what} is not installed ({e}), and this test needs it: install it with \
         `apt-get install {package}` (or run `.ci/run --setup-only`, which installs everything \
         the tests need; CI does)"
    )
}

fn build_prog(dir: &Path, name: &str) -> PathBuf {
    build_prog_with(dir, name, &[])
}

fn build_prog_with(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/{name}.c"));
    let out = dir.join(name);
    let res = Command::new("cc")
        .args(["-O2", "-g", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags)
        .output()
        .unwrap_or_else(|e| panic!("{}", not_installed("cc", "gcc libc6-dev", e)));
    assert!(
        res.status.success(),
        "cc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

fn wait_for(path: &Path, needle: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let s = fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out waiting for {needle:?} in {}: {s:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn waitpid_stopped(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFSTOPPED(st), "not stopped: {st:#x}");
    st
}

/// What the dump produced besides the image.
struct Dump {
    image: Image,
    regs: libc::user_regs_struct,
}

/// Stops `pid` from outside and dumps it into an `Image`: the thing the shim does from inside.
fn dump(pid: i32) -> Dump {
    // SAFETY: ptrace requests with integer arguments on a process we started.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize),
            0,
            "seize"
        );
        assert_eq!(
            libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize),
            0,
            "interrupt"
        );
    }
    waitpid_stopped(pid);
    // SAFETY: all-zero is a valid user_regs_struct; GETREGS fills it.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: data points at a user_regs_struct.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0usize, &mut regs as *mut _) };
    assert_eq!(rc, 0);
    // Stopped inside a system call that will restart: make the restored process redo it.
    if (regs.orig_rax as i64) >= 0 {
        match regs.rax as i64 {
            -512 | -513 | -514 | -516 => {
                regs.rax = regs.orig_rax;
                regs.rip -= 2;
            }
            _ => {}
        }
    }
    let mut sigmask = 0u64;
    // SAFETY: addr = sizeof sigset (8), data points at a u64.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            pid,
            8usize,
            &mut sigmask as *mut u64,
        )
    };
    assert_eq!(rc, 0);

    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let regions = parse_maps(&maps).unwrap();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut pages = Vec::new();
    for r in &regions {
        if r.is_special() || !r.read {
            continue;
        }
        let n = (r.len() / PAGE_SIZE) as usize;
        let mut pm = vec![0u8; n * 8];
        pagemap
            .read_exact_at(&mut pm, r.start / PAGE_SIZE * 8)
            .unwrap();
        for i in 0..n {
            let e = u64::from_ne_bytes(pm[i * 8..i * 8 + 8].try_into().unwrap());
            let populated = e & (3 << 62) != 0;
            let file_page = e & (1 << 61) != 0;
            if !populated || (r.is_file() && file_page) {
                continue;
            }
            let addr = r.start + i as u64 * PAGE_SIZE;
            let mut page = vec![0u8; PAGE_SIZE as usize];
            mem.read_exact_at(&mut page, addr)
                .unwrap_or_else(|e| panic!("read {addr:#x}: {e}"));
            pages.push((addr, page.into_boxed_slice()));
        }
    }

    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    // Field 3 (state) is after[0]; field k is after[k - 3].
    let f: Vec<u64> = after
        .split(' ')
        .map(|s| s.trim().parse().unwrap_or(0))
        .collect();
    let field = |k: usize| f[k - 3];
    let heap_end = regions.iter().find(|r| r.path == "[heap]").map(|r| r.end);
    let mm = MmFields {
        start_code: field(26),
        end_code: field(27),
        start_stack: field(28),
        start_data: field(45),
        end_data: field(46),
        start_brk: field(47),
        brk: heap_end.unwrap_or(field(47)),
        arg_start: field(48),
        arg_end: field(49),
        env_start: field(50),
        env_end: field(51),
    };
    let mut auxv_bytes = Vec::new();
    fs::File::open(format!("/proc/{pid}/auxv"))
        .unwrap()
        .read_to_end(&mut auxv_bytes)
        .unwrap();
    let auxv = auxv_bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd"))
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let mut fds = Vec::new();
    for ent in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let ent = ent.unwrap();
        let fd: i32 = ent.file_name().to_string_lossy().parse().unwrap();
        let path = fs::read_link(ent.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let get = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let pos: i64 = get("pos:").and_then(|v| v.parse().ok()).unwrap_or(-1);
        let flags = i32::from_str_radix(&get("flags:").unwrap(), 8).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let kind = match fs::metadata(ent.path()) {
            Ok(m) if m.file_type().is_file() => FdKind::Regular,
            Ok(m) if m.file_type().is_dir() => FdKind::Directory,
            Ok(m) if m.file_type().is_char_device() => FdKind::CharDevice,
            Ok(m) if m.file_type().is_fifo() => FdKind::Fifo,
            Ok(m) if m.file_type().is_socket() => FdKind::Socket,
            _ => FdKind::Other,
        };
        fds.push(FdEntry {
            fd,
            kind,
            flags: flags & !libc::O_CLOEXEC,
            fd_flags: if flags & libc::O_CLOEXEC != 0 {
                libc::FD_CLOEXEC
            } else {
                0
            },
            offset: pos,
            path,
        });
    }

    let meta = EpochMeta {
        epoch: 1,
        maps,
        fds,
        mm,
        auxv,
        cwd,
        app_sigmask: sigmask,
        tid: pid,
        ..Default::default()
    };
    let mut image = Image::default();
    image.apply(meta, pages).unwrap();
    Dump { image, regs }
}

fn wait_exit(pid: i32, timeout: Duration) -> i32 {
    let t0 = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if rc == pid {
            return st;
        }
        assert!(rc == 0, "waitpid: {}", std::io::Error::last_os_error());
        if t0.elapsed() > timeout {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("restored process {pid} did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn last_round(out: &str) -> Option<u32> {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("round ")?.strip_suffix(" ok")?.parse().ok())
}

fn first_round(out: &str) -> Option<u32> {
    out.lines()
        .find_map(|l| l.strip_prefix("round ")?.strip_suffix(" ok")?.parse().ok())
}

#[test]
fn restore_roundtrip() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let dir = tempdir("restore");
    let prog = build_prog(&dir, "restore_prog");
    let data: Vec<u8> = (0..4096u32).map(|i| ((i * 13 + 5) % 251) as u8).collect();
    fs::write(dir.join("data"), data).unwrap();
    let mapdata: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(dir.join("mapfile"), mapdata).unwrap();
    let orig_out = dir.join("orig.out");
    let mut child = Command::new(&prog)
        .arg(ROUNDS.to_string())
        .arg(dir.join("data"))
        .arg(dir.join("mapfile"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&orig_out).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for(&orig_out, "round 3 ok", Duration::from_secs(20));

    let d = dump(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = fs::read_to_string(&orig_out).unwrap();
    let dumped_at = last_round(&before).expect("original made progress");

    let restored_out = dir.join("restored.out");
    let opts = RestoreOptions {
        stdout: Some(restored_out.clone()),
        stderr: Some(dir.join("restored.err")),
        state_dir: dir.clone(),
        full_regs: Some(d.regs),
        ..Default::default()
    };

    // A file the image maps is missing on this host: a clear error naming it, not a crash.
    let mut d = d;
    let mapfile = dir.join("mapfile").to_string_lossy().into_owned();
    let i = d
        .image
        .regions
        .iter()
        .position(|r| r.path == mapfile)
        .expect("mapfile region");
    d.image.regions[i].path = format!("{mapfile}.missing");
    let e = restore(&d.image, &opts).expect_err("restore with a missing file");
    assert!(e.to_string().contains("mapfile.missing"), "{e}");
    eprintln!("expected error: {e}");
    d.image.regions[i].path = mapfile;

    let t0 = Instant::now();
    let rp = restore(&d.image, &opts).unwrap_or_else(|e| panic!("restore failed: {e}"));
    eprintln!("restore took {:?}", t0.elapsed());

    // The restored address space matches the dump: every region at its address with its
    // protection (neighbours may merge differently).
    let maps_after = fs::read_to_string(format!("/proc/{}/maps", rp.pid)).unwrap_or_default();
    let after = parse_maps(&maps_after).unwrap();
    for r in d.image.regions.iter().filter(|r| r.path != "[vsyscall]") {
        let ok = after
            .iter()
            .any(|a| a.start <= r.start && r.end <= a.end && a.prot() == r.prot());
        assert!(
            ok || maps_after.is_empty(),
            "region {r:?} missing after restore:\n{maps_after}"
        );
    }

    // Nothing of restore's own is left behind (the injection area is unmapped).
    for a in &after {
        let known = d
            .image
            .regions
            .iter()
            .any(|r| r.start < a.end && a.start < r.end);
        assert!(
            known,
            "unexpected mapping after restore: {a:?}\n{maps_after}"
        );
    }

    let exe = fs::read_link(format!("/proc/{}/exe", rp.pid)).unwrap();
    assert_eq!(exe, prog, "/proc/<pid>/exe after PR_SET_MM_MAP");
    let comm = fs::read_to_string(format!("/proc/{}/comm", rp.pid)).unwrap();
    assert_eq!(comm.trim(), "restore_prog");

    let st = wait_exit(rp.pid, Duration::from_secs(30));
    let out = fs::read_to_string(&restored_out).unwrap_or_default();
    let err = fs::read_to_string(dir.join("restored.err")).unwrap_or_default();
    eprintln!("original:\n{before}\nrestored:\n{out}\nstderr:\n{err}");
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "restored process ended with status {st:#x}"
    );
    assert!(
        !out.contains("FAIL"),
        "restored program's checks failed:\n{out}"
    );
    assert!(
        !out.contains("ready"),
        "restored program started over:\n{out}"
    );
    assert_eq!(
        first_round(&out),
        Some(dumped_at + 1),
        "restored program did not continue where the dump was taken"
    );
    assert_eq!(last_round(&out), Some(ROUNDS - 1));
    assert!(out.ends_with("done\n"), "{out}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn restore_refuses_an_empty_image() {
    let e = restore(&Image::default(), &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no committed epoch"), "{e}");
}

/// The shim's path: the process is resumed from a `ResumeContext` saved inside a signal
/// handler (rax = 1, everything blocked), and leaves the handler through `rt_sigreturn`.
#[test]
fn restore_resumes_in_signal_handler() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let dir = tempdir("restore-handler");
    let prog = build_prog(&dir, "restore_handler_prog");
    let orig_out = dir.join("orig.out");
    let mut child = Command::new(&prog)
        .arg("8")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&orig_out).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let out = wait_for(&orig_out, "parked ", Duration::from_secs(20));
    let addr_text = out
        .lines()
        .find_map(|l| l.strip_prefix("parked 0x"))
        .unwrap();
    let ctx_addr = u64::from_str_radix(addr_text.trim(), 16).unwrap();

    let mut d = dump(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    // The original is gone: read the saved context from the image's pages.
    let mut raw = [0u8; 72];
    let page = ctx_addr & !(PAGE_SIZE - 1);
    let off = (ctx_addr - page) as usize;
    assert!(off + 72 <= PAGE_SIZE as usize, "context straddles a page");
    raw.copy_from_slice(&d.image.pages[&page][off..off + 72]);
    let w: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    let ctx = ResumeContext {
        rbx: w[0],
        rbp: w[1],
        r12: w[2],
        r13: w[3],
        r14: w[4],
        r15: w[5],
        rsp: w[6],
        rip: w[7],
        fs_base: w[8],
    };
    assert_eq!(ctx.fs_base, d.regs.fs_base);
    d.image.meta.as_mut().unwrap().ctx = ctx;

    let restored_out = dir.join("restored.out");
    let opts = RestoreOptions {
        stdout: Some(restored_out.clone()),
        stderr: Some(dir.join("restored.err")),
        state_dir: dir.clone(),
        full_regs: None,
        ..Default::default()
    };
    let rp = restore(&d.image, &opts).unwrap_or_else(|e| panic!("restore failed: {e}"));
    let st = wait_exit(rp.pid, Duration::from_secs(30));
    let out = fs::read_to_string(&restored_out).unwrap_or_default();
    eprintln!("restored:\n{out}");
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "restored process ended with status {st:#x}:\n{out}"
    );
    assert!(out.starts_with("resumed in handler\nround 3 ok\n"), "{out}");
    assert!(out.ends_with("round 7 ok\ndone\n"), "{out}");
    let _ = fs::remove_dir_all(&dir);
}

/// A real interpreter, dumped while it sleeps in `clock_nanosleep` (the restart path), with
/// many libraries, locale data and a shared read-only mapping. Fails without python3,
/// saying what to install.
#[test]
fn restore_python_sleeping() {
    // The interpreter itself (`python3` on PATH may be a wrapper script, e.g. pyenv's).
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("{}", not_installed("python3", "python3", e)));
    assert!(
        o.status.success(),
        "python3 -c 'import sys; print(sys.executable)' failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let py = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(py.is_file(), "python3 names no interpreter: {py:?}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let dir = tempdir("restore-python");
    let script = "import time, hashlib\n\
                  data = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)}\n\
                  expect = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()\n\
                  for r in range(40):\n\
                  \x20   time.sleep(0.02)\n\
                  \x20   data[r] = data[r]\n\
                  \x20   ok = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest() == expect\n\
                  \x20   print('round', r, 'ok' if ok else 'FAIL', flush=True)\n\
                  print('done', flush=True)\n";
    fs::write(dir.join("prog.py"), script).unwrap();
    let orig_out = dir.join("orig.out");
    let mut child = Command::new(&py)
        .arg(dir.join("prog.py"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&orig_out).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for(&orig_out, "round 2 ok", Duration::from_secs(30));
    let d = dump(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    let dumped_at = last_round(&fs::read_to_string(&orig_out).unwrap()).unwrap();

    let restored_out = dir.join("restored.out");
    let opts = RestoreOptions {
        stdout: Some(restored_out.clone()),
        stderr: Some(dir.join("restored.err")),
        state_dir: dir.clone(),
        full_regs: Some(d.regs),
        ..Default::default()
    };
    let rp = restore(&d.image, &opts).unwrap_or_else(|e| panic!("restore failed: {e}"));
    let st = wait_exit(rp.pid, Duration::from_secs(60));
    let out = fs::read_to_string(&restored_out).unwrap_or_default();
    let err = fs::read_to_string(dir.join("restored.err")).unwrap_or_default();
    eprintln!("restored:\n{out}\nstderr:\n{err}");
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "restored python ended with status {st:#x}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert_eq!(first_round(&out), Some(dumped_at + 1), "{out}");
    assert!(out.ends_with("round 39 ok\ndone\n"), "{out}");
    let _ = fs::remove_dir_all(&dir);
}

/// The image's pid is still taken on this host (the original runs on): restore refuses to
/// give the program another pid when told never to use a PID namespace, and by default
/// restores it into a new PID namespace, where it has its own pid again (it prints
/// `os.getpid()` each round) and runs to its end.
#[test]
fn restore_while_the_pid_is_taken_uses_a_pid_namespace() {
    use remus_controller::restore::PidNamespacePolicy;
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("{}", not_installed("python3", "python3", e)));
    assert!(o.status.success(), "python3 failed: {o:?}");
    let py = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let dir = tempdir("restore-pidns");
    let script = "import os, time\n\
                  for r in range(30):\n\
                  \x20   time.sleep(0.02)\n\
                  \x20   print('round', r, 'pid', os.getpid(), 'ok', flush=True)\n\
                  print('done', flush=True)\n";
    fs::write(dir.join("prog.py"), script).unwrap();
    let orig_out = dir.join("orig.out");
    let mut child = Command::new(&py)
        .arg(dir.join("prog.py"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&orig_out).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for(&orig_out, "round 2 ", Duration::from_secs(30));
    let d = dump(pid);
    // The original goes on (the dump stopped it: let it run), holding its pid.
    // SAFETY: PTRACE_DETACH with integer arguments on the process we seized.
    let rc = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    assert_eq!(rc, 0, "detach: {}", std::io::Error::last_os_error());

    let restored_out = dir.join("restored.out");
    let mut opts = RestoreOptions {
        stdout: Some(restored_out.clone()),
        stderr: Some(dir.join("restored.err")),
        state_dir: dir.clone(),
        full_regs: Some(d.regs),
        pid_namespace: PidNamespacePolicy::Never,
        ..Default::default()
    };
    let e = restore(&d.image, &opts).expect_err("the pid is taken");
    assert!(
        e.to_string()
            .contains(&format!("{pid} is in use on this host")),
        "{e}"
    );
    eprintln!("expected error: {e}");

    opts.pid_namespace = PidNamespacePolicy::WhenTaken;
    let rp = restore(&d.image, &opts).unwrap_or_else(|e| panic!("restore failed: {e}"));
    assert_eq!(rp.own_pid, pid);
    assert_ne!(rp.pid, pid);
    assert!(rp.pid_namespace_init.is_some(), "{rp:?}");
    let st = wait_exit(rp.pid, Duration::from_secs(60));
    let out = fs::read_to_string(&restored_out).unwrap_or_default();
    let err = fs::read_to_string(dir.join("restored.err")).unwrap_or_default();
    eprintln!("restored:\n{out}\nstderr:\n{err}");
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "restored python ended with status {st:#x}"
    );
    let rounds: Vec<&str> = out.lines().filter(|l| l.starts_with("round ")).collect();
    assert!(!rounds.is_empty(), "{out}");
    for l in &rounds {
        assert!(
            l.ends_with(&format!("pid {pid} ok")),
            "the restored program sees another pid: {l}"
        );
    }
    assert!(out.ends_with("done\n"), "{out}");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = fs::remove_dir_all(&dir);
}

/// Stops thread `tid` of a process we started (PTRACE_SEIZE + INTERRUPT) and returns its
/// registers (a system call it was in is redone after restore) and signal mask.
fn stop_thread(tid: i32) -> (libc::user_regs_struct, u64) {
    // SAFETY: ptrace requests with integer arguments on a thread of a process we started.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize),
            0,
            "seize {tid}"
        );
        assert_eq!(
            libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize),
            0,
            "interrupt {tid}"
        );
    }
    waitpid_stopped(tid);
    // SAFETY: all-zero is a valid user_regs_struct; GETREGS fills it.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: data points at a user_regs_struct.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut regs as *mut _) };
    assert_eq!(rc, 0);
    if (regs.orig_rax as i64) >= 0 && matches!(regs.rax as i64, -512 | -513 | -514 | -516) {
        regs.rax = regs.orig_rax;
        regs.rip -= 2;
    }
    let mut mask = 0u64;
    // SAFETY: addr = sizeof sigset (8), data points at a u64.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) };
    assert_eq!(rc, 0);
    (regs, mask)
}

/// A program with three threads, dumped from outside and restored: every thread comes back
/// with its own TID (the process with its pid), its registers and `fs` base, glibc's cached
/// TID still right (a recursive mutex each thread owns relocks), and all of them run on.
#[test]
fn restore_threads_with_their_tids() {
    use remus_controller::image::{ThreadRecord, THREAD_LEADER, THREAD_MAIN};
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let dir = tempdir("restore-threads");
    let prog = build_prog_with(&dir, "restore_threads_prog", &["-pthread"]);
    let orig_out = dir.join("orig.out");
    let mut child = Command::new(&prog)
        .arg("40")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&orig_out).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let text = wait_for(&orig_out, "round 3 ok", Duration::from_secs(20));
    let tids: Vec<i32> = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("start pid {pid} tids ")))
        .expect("start line")
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    let mut task: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    task.sort_unstable();
    let mut want = vec![pid, tids[0], tids[1]];
    want.sort_unstable();
    assert_eq!(task, want);
    // Every other thread stopped first, then the main one (dump): one consistent cut.
    let others: Vec<(i32, libc::user_regs_struct, u64)> = tids
        .iter()
        .map(|&t| {
            let (r, m) = stop_thread(t);
            (t, r, m)
        })
        .collect();
    let mut d = dump(pid);
    child.kill().unwrap();
    // A traced thread stays a zombie until its tracer (this thread) waits for it, and the
    // process's own exit is not reported before.
    for &(t, _, _) in &others {
        let mut st = 0;
        // SAFETY: waitpid on a traced thread with a valid out-pointer.
        unsafe { libc::waitpid(t, &mut st, libc::__WALL) };
    }
    child.wait().unwrap();
    let dumped_at = last_round(&fs::read_to_string(&orig_out).unwrap()).unwrap();

    let meta = d.image.meta.as_mut().unwrap();
    meta.threads = std::iter::once(ThreadRecord {
        tid: pid,
        flags: THREAD_MAIN | THREAD_LEADER,
        ctx: ResumeContext {
            fs_base: d.regs.fs_base,
            ..Default::default()
        },
        sigmask: meta.app_sigmask,
        ..Default::default()
    })
    .chain(others.iter().map(|&(tid, r, m)| ThreadRecord {
        tid,
        ctx: ResumeContext {
            fs_base: r.fs_base,
            ..Default::default()
        },
        sigmask: m,
        ..Default::default()
    }))
    .collect();
    let restored_out = dir.join("restored.out");
    let opts = RestoreOptions {
        stdout: Some(restored_out.clone()),
        stderr: Some(dir.join("restored.err")),
        state_dir: dir.clone(),
        full_regs: Some(d.regs),
        thread_regs: others.iter().map(|&(t, r, _)| (t, r)).collect(),
        ..Default::default()
    };
    let rp = restore(&d.image, &opts).unwrap_or_else(|e| panic!("restore failed: {e}"));
    assert_eq!((rp.pid, rp.own_pid), (pid, pid), "{rp:?}");
    assert!(rp.pid_namespace_init.is_none(), "the ids were free: {rp:?}");
    let mut back = rp.tids.clone();
    back.sort_unstable();
    assert_eq!(back, want, "{rp:?}");
    let mut task: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    task.sort_unstable();
    assert_eq!(task, want, "/proc/{pid}/task after restore");
    let st = wait_exit(rp.pid, Duration::from_secs(60));
    let out = fs::read_to_string(&restored_out).unwrap_or_default();
    let err = fs::read_to_string(dir.join("restored.err")).unwrap_or_default();
    eprintln!("restored:\n{out}\nstderr:\n{err}");
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "restored program ended with status {st:#x}:\n{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert_eq!(first_round(&out), Some(dumped_at + 1), "{out}");
    assert!(
        out.ends_with(&format!("tids {} {}\ndone\n", tids[0], tids[1])),
        "{out}"
    );
    let _ = fs::remove_dir_all(&dir);
}
