//! The mm's own fields (brk, code/data/stack/args/env bounds, auxv, exe file) through
//! `prctl(PR_SET_MM, PR_SET_MM_MAP)`, and the thread name.

use tracing::{debug, warn};

use super::inject::Tracee;
use super::layout::cstring;
use super::RestoreError;
use crate::image::EpochMeta;

/// `struct prctl_mm_map` from `include/uapi/linux/prctl.h`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

const _: () = assert!(std::mem::size_of::<PrctlMmMap>() == 104);

impl PrctlMmMap {
    fn as_bytes(&self) -> [u8; 104] {
        let mut out = [0u8; 104];
        let words = [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
            self.auxv,
        ];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        }
        out[96..100].copy_from_slice(&self.auxv_size.to_ne_bytes());
        out[100..104].copy_from_slice(&self.exe_fd.to_ne_bytes());
        out
    }
}

/// Sets the mm fields. Failure is logged, not fatal: the process runs, but `brk` may not
/// grow and /proc/<pid>/{cmdline,environ,auxv,exe} show the wrong thing.
pub(crate) fn set_mm(
    t: &mut Tracee,
    meta: &EpochMeta,
    exe: Option<&str>,
) -> Result<(), RestoreError> {
    let m = &meta.mm;
    let mut map = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        exe_fd: u32::MAX,
        ..Default::default()
    };
    if !meta.auxv.is_empty() {
        let bytes: Vec<u8> = meta.auxv.iter().flat_map(|w| w.to_ne_bytes()).collect();
        map.auxv = t.put_scratch(1024, &bytes)?;
        map.auxv_size = bytes.len() as u32;
    }
    let mut exe_fd = None;
    if let Some(path) = exe {
        let c = cstring(path, "executable")?;
        match t.open(&c, libc::O_RDONLY | libc::O_CLOEXEC)? {
            Ok(fd) => exe_fd = Some(fd),
            Err(errno) => warn!(path, errno, "cannot open the executable for PR_SET_MM_MAP"),
        }
    }
    let mut result = Err(0);
    for fd in [exe_fd, None] {
        map.exe_fd = fd.map_or(u32::MAX, |f| f as u32);
        let addr = t.put_scratch(512, &map.as_bytes())?;
        let r = t.raw_syscall(
            libc::SYS_prctl,
            [
                libc::PR_SET_MM as u64,
                libc::PR_SET_MM_MAP as u64,
                addr,
                104,
                0,
                0,
            ],
        )?;
        if r == 0 {
            result = Ok(fd.is_some());
            break;
        }
        result = Err(-r);
        if fd.is_some() {
            warn!(
                errno = -r,
                exe = exe.unwrap_or(""),
                "PR_SET_MM_MAP with the executable failed; retrying without (/proc/<pid>/exe will be wrong)"
            );
        } else {
            break;
        }
    }
    if let Some(fd) = exe_fd {
        t.close(fd);
    }
    match result {
        Ok(with_exe) => debug!(
            with_exe,
            brk = format_args!("{:#x}", m.brk),
            "PR_SET_MM_MAP done"
        ),
        Err(errno) => warn!(
            errno,
            error = %std::io::Error::from_raw_os_error(errno as i32),
            "PR_SET_MM_MAP failed: the restored process runs, but brk() may not grow its heap and \
             /proc/<pid>/cmdline, environ and auxv are wrong"
        ),
    }

    // The thread name: the executable's base name (the task keeps the daemon's otherwise).
    if let Some(name) = exe.and_then(|p| p.rsplit('/').next()) {
        let mut comm = [0u8; 16];
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        let addr = t.put_scratch(0, &comm)?;
        let r = t.raw_syscall(
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, addr, 0, 0, 0, 0],
        )?;
        if r != 0 {
            debug!(errno = -r, "PR_SET_NAME failed");
        }
    }
    Ok(())
}
