//! The held output pipes at the checkpoint: for each of the app's fds 1 and 2 that is a pipe,
//! its inode and the bytes written to it that nobody has read yet (`remus_abi::PipeProbe`).
//! remusd does not read its held pipes while an epoch signal is outstanding, so those bytes,
//! right after the ones it has read, are exactly the output the checkpoint's state has written
//! and not yet handed over: they belong to this epoch (committed output, DESIGN §10), the rest
//! to the next.
//!
//! Runs in the epoch handler: two raw `fstat`s and two `ioctl`s.

use remus_abi::{PipeProbe, StagingHeader};

use crate::kernel::sys;

/// Fills `h.stdio_pipes`.
pub fn probe(h: &mut StagingHeader) {
    for (i, fd) in [1, 2].into_iter().enumerate() {
        h.stdio_pipes[i] = probe_fd(fd);
    }
}

fn probe_fd(fd: i32) -> PipeProbe {
    let Some(st) = sys::fstat(fd) else {
        return PipeProbe::default();
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return PipeProbe::default();
    }
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; on a pipe it answers on either end.
    let valid = unsafe { sys::ioctl(fd, libc::FIONREAD, &mut unread) }.is_ok() && unread >= 0;
    PipeProbe {
        ino: st.st_ino,
        unread: if valid { unread as u32 } else { 0 },
        valid: valid as u32,
    }
}
