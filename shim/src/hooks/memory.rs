//! Hooks on the calls that change the address space: `mmap`/`mmap64`, `munmap`, `mremap`,
//! `brk`/`sbrk`, `mprotect`, `madvise`.
//!
//! `mmap`, `munmap` and `mremap` make the system call themselves instead of calling libc's:
//! `dlsym` may call `calloc`, which may call `mmap`, so an `mmap` hook that needed `dlsym` to
//! finish first would recurse. `brk`/`sbrk` do go through glibc's own functions, because glibc
//! caches the break (`__curbrk`) and a raw `brk` would leave that cache stale.
//!
//! The memory hooks are hints: each bumps `state::MAP_HINTS`, and the epoch handler lists the
//! kernel's map only when that count or the kernel's own sizes (`/proc/self/statm`) moved,
//! because glibc's malloc maps memory through internal calls no hook sees (and a program may
//! make the system call itself).

use core::ffi::{c_int, c_void};
use core::sync::atomic::Ordering;

use crate::base::interpose::{bracket, hook, real};
use crate::base::state;
use crate::kernel::sys;
use crate::track::pages::{self, mprotect as mprotect_tracker};

fn hint() {
    state::MAP_HINTS.fetch_add(1, Ordering::Relaxed);
}

fn ptr_result(r: sys::SysResult) -> *mut c_void {
    match r {
        Ok(v) => v as *mut c_void,
        Err(e) => {
            sys::set_errno(e);
            libc::MAP_FAILED
        }
    }
}

/// # Safety
/// As for `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    bracket("mmap", || {
        hint();
        // SAFETY: the app's arguments, passed on unchanged (as for mmap(2)).
        let r = unsafe {
            sys::raw6(
                libc::SYS_mmap,
                addr as usize,
                len,
                prot as usize,
                flags as usize,
                fd as usize,
                off as usize,
            )
        };
        if let Ok(a) = r {
            pages::forget(a as u64, len as u64); // whatever was there before is gone
        }
        ptr_result(r)
    })
}

/// # Safety
/// As for `mmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the same call.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// # Safety
/// As for `munmap(2)`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    bracket("munmap", || {
        hint();
        pages::forget(addr as u64, len as u64);
        // SAFETY: the app's arguments, passed on unchanged (as for munmap(2)).
        match unsafe { sys::raw6(libc::SYS_munmap, addr as usize, len, 0, 0, 0, 0) } {
            Ok(_) => 0,
            Err(e) => {
                sys::set_errno(e);
                -1
            }
        }
    })
}

/// `mremap` is variadic in C (the fifth argument only with `MREMAP_FIXED`); on x86-64 the
/// caller passes it in `r8` either way, so a five-argument definition receives it.
///
/// # Safety
/// As for `mremap(2)`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    bracket("mremap", || {
        hint();
        pages::forget(old as u64, old_len as u64);
        if pages::is_mprotect() && new_len > old_len && flags & libc::MREMAP_MAYMOVE != 0 {
            // A region the mprotect tracker follows is several VMAs, which mremap refuses
            // (EFAULT); give the old range its protection back first... the split it keeps
            // (see track/pages/mprotect.rs) still makes mremap fail: do the move by hand.
            if let Some(p) =
                mprotect_tracker::move_by_hand(old as u64, old_len as u64, new_len as u64)
            {
                return p as *mut c_void;
            }
        }
        let new_addr = if flags & (libc::MREMAP_FIXED | 4/* MREMAP_DONTUNMAP */) != 0 {
            new_addr as usize
        } else {
            0
        };
        // SAFETY: the app's arguments, passed on unchanged (as for mremap(2)).
        ptr_result(unsafe {
            sys::raw6(
                libc::SYS_mremap,
                old as usize,
                old_len,
                new_len,
                flags as usize,
                new_addr,
                0,
            )
        })
    })
}

hook! {
    unsafe fn brk(addr: *mut c_void) -> c_int => remus_brk {
        hint();
        // SAFETY: the app's argument, passed on unchanged.
        unsafe { real!(brk)(addr) }
    }
}

hook! {
    unsafe fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int => remus_mprotect {
        // A protection change is a change of the map (the epoch's quick check, `statm`,
        // does not see one that keeps the writable size, e.g. RW to RWX).
        hint();
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(mprotect)(addr, len, prot) }
    }
}

hook! {
    unsafe fn sbrk(incr: libc::intptr_t) -> *mut c_void => remus_sbrk {
        hint();
        // SAFETY: the app's argument, passed on unchanged.
        unsafe { real!(sbrk)(incr) }
    }
}

hook! {
    unsafe fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int => remus_madvise {
        if !pages::is_mprotect() {
            // SAFETY: the app's arguments, passed on unchanged.
            return unsafe { real!(madvise)(addr, len, advice) };
        }
        // Zeroing advice counts as a write: no checkpoint between the call and the record.
        // SAFETY: the app's arguments, passed on unchanged.
        let r = unsafe { real!(madvise, closed)(addr, len, advice) };
        if r == 0
            && matches!(
                advice,
                libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE | 24 /* MADV_DONTNEED_LOCKED */
            )
        {
            mprotect_tracker::zapped(addr as u64, len as u64);
        }
        r
    }
}
