//! `libremus.so`: preloaded into the protected program. It tracks which pages the program
//! writes (userfaultfd async write-protect + `PAGEMAP_SCAN`, or `mprotect` + `SIGSEGV` on
//! older kernels: see [`tracker`]), takes a checkpoint in the epoch
//! signal handler (scan, copy to the staging area, notify `remusd primary`), and, in the
//! restored process on the standby, fixes what glibc cached before the program carries on.
//!
//! Nothing here writes to the program's stdout/stderr except a one-line fatal error (or the
//! loud "running unprotected" warning the user asked for with `REMUS_ALLOW_UNPROTECTED=1`).

mod capture;
mod context;
mod fatal;
mod fds;
mod files;
mod hooks;
mod init;
mod kobj;
mod link;
mod maps;
mod netout;
mod output;
mod probe;
mod procmap;
mod rejoin;
mod restored;
mod signals;
mod state;
mod sys;
mod tracker;

extern "C" fn remus_init() {
    // A panic must not unwind into the dynamic loader.
    if std::panic::catch_unwind(init::run).is_err() {
        fatal::refuse(b"internal error while starting protection");
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = remus_init;
