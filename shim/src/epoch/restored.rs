//! What the shim does in the restored process on the standby, right after each thread resumes
//! at its checkpoint and before its epoch handler returns to the app (whose registers, mask and
//! alternate stack `rt_sigreturn` then restores from the signal frame in the restored stack).
//!
//! The process is new: it has no userfaultfd, no controller and no staging area; its threads
//! have their own thread ids again (the controller created them with `clone3` `set_tid`), but
//! none of what a thread registers with the kernel for itself. Every thread puts that back from
//! its record in its slot (`clear_child_tid`, robust list, rseq area, name); the leader of the
//! captured epoch also fixes the process's own state and, once every thread is back, reinstalls
//! the app's signal dispositions and lets them all run. The process runs passive (unprotected)
//! from here, until a new standby joins (`life::rejoin`).

use core::sync::atomic::Ordering;

use super::{kobj, rendezvous};
use crate::base::threads::Slot;
use crate::base::{sigview, state};
use crate::kernel::sys;
use crate::track::pages;

const RSEQ_SIG: usize = 0x5305_3053;

/// The leader of the captured epoch, restored.
pub fn after_restore(me: &Slot) {
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
    thread_fixups(me);
    // The controller created every thread of the image before letting any run, so they all
    // come; the wait is bounded only so that a broken restore cannot hang the program (the
    // controller reports a thread it could not create and does not start the process).
    let _ = rendezvous::restored_leader_wait();
    sigview::reinstall_app_view(sigview::real_sigaction());
    rendezvous::restored_go();
    // The epoch handler puts itself back once this returns (epoch::handler).
}

/// A follower, restored: its own registrations, then it waits for the leader.
pub fn follower_restored(me: &Slot) {
    thread_fixups(me);
    rendezvous::restored_follower_wait();
}

/// What each thread registers with the kernel for itself.
fn thread_fixups(me: &Slot) {
    // SAFETY: the record is this thread's own, written by its handler before the checkpoint.
    let r = unsafe { *me.rec.get() };
    let tid = sys::gettid();
    me.tid.store(tid, Ordering::Relaxed);
    if r.clear_child_tid != 0 {
        let slot = r.clear_child_tid as *mut i32;
        // SAFETY: glibc's `tid` field in this thread's control block (the thread pointer plus
        // the offset found at start-up), which the restore put back at the same address. With
        // the same thread id this writes what is there already.
        unsafe { slot.write_volatile(tid) };
        // SAFETY: tells the kernel to clear that field at thread exit, as glibc did at start.
        let _ = unsafe { sys::raw6(libc::SYS_set_tid_address, slot as usize, 0, 0, 0, 0, 0) };
    }
    if r.robust_head != 0 {
        // SAFETY: glibc's robust list head of this thread, in the restored TLS at the address
        // the kernel reported for it at the checkpoint.
        let _ = unsafe {
            sys::raw6(
                libc::SYS_set_robust_list,
                r.robust_head as usize,
                r.robust_len as usize,
                0,
                0,
                0,
                0,
            )
        };
    }
    if r.rseq_area != 0 {
        // SAFETY: registers glibc's own rseq area of this thread (it lives in the restored TLS)
        // with glibc's signature, as glibc did when the thread started.
        let _ = unsafe {
            sys::raw6(
                libc::SYS_rseq,
                r.rseq_area as usize,
                r.rseq_len as usize,
                0,
                RSEQ_SIG,
                0,
                0,
            )
        };
    }
    if r.name[0] != 0 {
        // SAFETY: PR_SET_NAME reads at most 16 bytes (NUL-padded) from r.name.
        let _ = unsafe {
            sys::raw6(
                libc::SYS_prctl,
                libc::PR_SET_NAME as usize,
                r.name.as_ptr() as usize,
                0,
                0,
                0,
                0,
            )
        };
    }
}
