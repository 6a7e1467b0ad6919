//! What the shim does in the restored process on the standby, right after the thread resumes
//! at the checkpoint and before the epoch handler returns to the app (whose registers, mask and
//! alternate stack `rt_sigreturn` then restores from the signal frame in the restored stack).
//!
//! The process is new: its pid and thread id differ, it has no userfaultfd, no controller and
//! no staging area. The shim fixes what glibc cached and runs passive (unprotected) from here,
//! until a new standby joins (`rejoin.rs`).

use core::sync::atomic::Ordering;

use super::kobj;
use crate::base::{sigview, state};
use crate::kernel::sys;
use crate::track::pages;

const RSEQ_SIG: usize = 0x5305_3053;

pub fn after_restore() {
    state::set_mode(state::MODE_PASSIVE);
    // A rejoin request (see life/rejoin.rs) can protect it again.
    state::RESTORED.store(true, Ordering::Relaxed);
    state::SOCK.store(-1, Ordering::Relaxed);
    state::UFFD.store(-1, Ordering::Relaxed);
    state::PAGEMAP.store(-1, Ordering::Relaxed);
    state::STAGING.store(core::ptr::null_mut(), Ordering::Relaxed);
    // Numbers the restored table does not have (a new staging memfd may get one of them).
    state::STAGING_FD.store(-1, Ordering::Relaxed);
    kobj::forget();
    pages::after_restore();

    let tp = sys::fs_base();
    let tid = sys::gettid();
    let off = state::TID_OFFSET.load(Ordering::Relaxed);
    if off != 0 && tp != 0 {
        let slot = (tp + off) as *mut i32;
        // SAFETY: slot is glibc's `tid` field in this thread's control block, found at start-up
        // (init::find_tid_offset) in the same TCB, which the restore put back at the same address.
        unsafe { slot.write_volatile(tid) };
        // SAFETY: tells the kernel to clear that field at thread exit, as glibc did at start.
        let _ = unsafe { sys::raw6(libc::SYS_set_tid_address, slot as usize, 0, 0, 0, 0, 0) };
    }
    let head = state::ROBUST_HEAD.load(Ordering::Relaxed);
    if head != 0 {
        // SAFETY: glibc's robust list head of this thread, in the restored TLS at the address
        // glibc registered at start-up in the original process.
        let _ = unsafe {
            sys::raw6(
                libc::SYS_set_robust_list,
                head as usize,
                state::ROBUST_LEN.load(Ordering::Relaxed) as usize,
                0,
                0,
                0,
                0,
            )
        };
    }
    let rseq_size = state::RSEQ_SIZE.load(Ordering::Relaxed);
    if rseq_size != 0 && tp != 0 {
        let area = tp.wrapping_add(state::RSEQ_OFFSET.load(Ordering::Relaxed));
        // SAFETY: registers glibc's own rseq area of this thread (it lives in the restored TLS)
        // with glibc's signature, as glibc did at start-up in the original process.
        let _ = unsafe {
            sys::raw6(
                libc::SYS_rseq,
                area as usize,
                rseq_size.max(32) as usize,
                0,
                RSEQ_SIG,
                0,
                0,
            )
        };
    }
    sigview::reinstall_app_view(sigview::real_sigaction());
    // The epoch handler puts itself back once this returns (epoch::handler).
}
