//! `libremus.so`: preloaded into the protected program. It tracks which pages the program
//! writes (userfaultfd async write-protect + `PAGEMAP_SCAN`, or `mprotect` + `SIGSEGV` on
//! older kernels: see [`tracker`]), takes a checkpoint in the epoch
//! signal handler (scan, copy to the staging area, notify `remusd primary`), and, in the
//! restored process on the standby, fixes what glibc cached before the program carries on.
//!
//! Nothing here writes to the program's stdout/stderr except a one-line fatal error (or the
//! loud "running unprotected" warning the user asked for with `REMUS_ALLOW_UNPROTECTED=1`).

//! # Layers
//!
//! Each layer imports only the layers below it (`tests/layers.rs` checks it):
//!
//! 0. [`kernel`]: raw system calls, userfaultfd, `PAGEMAP_SCAN`, `PROCMAP_QUERY`, the resume
//!    point, the procfs text parser, the line buffer.
//! 1. [`base`]: the mode and hook depth, the hook bracket, the app's signal dispositions, the
//!    controller socket, the fatal error, what start-up reads once.
//! 2. [`track`]: the trackers and the bookkeeping the hooks keep (dirty pages, the sockets'
//!    output log, files' dirty ranges, listen backlogs).
//! 3. [`epoch`]: everything that runs in the epoch signal handler.
//! 4. [`hooks`]: the interposed functions, by what they interpose.
//! 5. [`life`]: start-up, the held stdio streams, protecting a restored process again.

mod base;
mod epoch;
mod hooks;
mod kernel;
mod life;
mod track;

extern "C" fn remus_init() {
    // A panic must not unwind into the dynamic loader.
    base::fatal::install_panic_hook();
    base::state::set_safe_point(life::safe_point);
    if std::panic::catch_unwind(life::init::run).is_err() {
        base::fatal::refuse(b"internal error while starting protection");
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = remus_init;
