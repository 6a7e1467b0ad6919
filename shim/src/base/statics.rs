//! What the process's kernel state says once and for all (the mm fields of `/proc/self/stat`,
//! the auxiliary vector): read by start-up (`life::init`), put in every epoch by the capture.

use core::cell::UnsafeCell;

use remus_abi::{StagingHeader, MAX_AUXV_WORDS};

pub struct Statics {
    pub mm: remus_abi::MmFields,
    pub auxv: [u64; MAX_AUXV_WORDS],
    pub n_auxv: usize,
}

struct StaticsCell(UnsafeCell<Statics>);
// SAFETY: written once during start-up (single-threaded, before the epoch handler exists),
// read-only afterwards.
unsafe impl Sync for StaticsCell {}

static STATICS: StaticsCell = StaticsCell(UnsafeCell::new(Statics {
    mm: remus_abi::MmFields {
        start_code: 0,
        end_code: 0,
        start_data: 0,
        end_data: 0,
        start_brk: 0,
        brk: 0,
        start_stack: 0,
        arg_start: 0,
        arg_end: 0,
        env_start: 0,
        env_end: 0,
    },
    auxv: [0; MAX_AUXV_WORDS],
    n_auxv: 0,
}));

/// The mm fields, for the capture.
pub fn mm_fields() -> remus_abi::MmFields {
    // SAFETY: read-only after start-up (see StaticsCell).
    unsafe { (*STATICS.0.get()).mm }
}

/// The auxiliary vector into the staging header, for the capture.
pub fn fill_auxv(h: &mut StagingHeader) {
    // SAFETY: read-only after start-up.
    let s = unsafe { &*STATICS.0.get() };
    h.auxv[..s.n_auxv].copy_from_slice(&s.auxv[..s.n_auxv]);
    h.n_auxv = s.n_auxv as u32;
}

/// The table, for start-up to fill.
///
/// # Safety
/// Only during start-up, single-threaded, before the epoch handler is installed.
pub unsafe fn for_start_up() -> &'static mut Statics {
    // SAFETY: the caller guarantees nobody else reads or writes it now.
    unsafe { &mut *STATICS.0.get() }
}
