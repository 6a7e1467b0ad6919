//! Hooks on the process's life: `__libc_start_main` (so that a `main` that returns is reported),
//! `exit` and `_exit` (the program ending on its own is not a host failure: the standby must
//! not resurrect it), and `pthread_create` (a second thread stops protection: no checkpoint of
//! a half-frozen process is ever taken).

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

use remus_abi::MsgKind;

use crate::base::interpose::{hook, real};
use crate::base::{link, state};
use crate::kernel::sys;

hook! {
    unsafe fn pthread_create(
        thread: *mut libc::pthread_t,
        attr: *const libc::pthread_attr_t,
        start: extern "C" fn(*mut c_void) -> *mut c_void,
        arg: *mut c_void
    ) -> c_int => remus_pthread_create {
        if state::mode() == state::MODE_PROTECTED {
            // Stop before the thread exists: no checkpoint of a half-frozen process can be taken.
            state::set_mode(state::MODE_UNPROTECTED);
            link::send_text(
                MsgKind::ThreadCreated,
                2,
                0,
                b"the program created a second thread (pthread_create); remus protects single-threaded programs only; replication stopped",
            );
        }
        // SAFETY: the app's arguments, passed on unchanged.
        unsafe { real!(pthread_create)(thread, attr, start, arg) }
    }
}

fn report_exit(code: c_int) {
    if state::mode() != state::MODE_PASSIVE
        && state::APP_PID.load(Ordering::Relaxed) == sys::getpid()
    {
        link::send_text(
            MsgKind::Exiting,
            code as u32 as u64,
            0,
            b"the program exited",
        );
    }
}

hook! {
    unsafe fn exit(code: c_int) => remus_exit {
        report_exit(code);
        // SAFETY: an integer argument.
        unsafe { real!(exit)(code) }
    }
}

hook! {
    unsafe fn _exit(code: c_int) => remus_underscore_exit {
        report_exit(code);
        // SAFETY: an integer argument.
        unsafe { real!(_exit)(code) }
    }
}

type MainFn = extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
/// The program's `main`, written once by `__libc_start_main` before it calls [`remus_main`].
static APP_MAIN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn remus_main(argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) -> c_int {
    let main = APP_MAIN.load(Ordering::Acquire);
    let code = if main == 0 {
        127
    } else {
        // SAFETY: only __libc_start_main stores here, and it stores the program's main.
        let m: MainFn = unsafe { core::mem::transmute::<usize, MainFn>(main) };
        m(argc, argv, envp)
    };
    // glibc calls its internal exit() after main returns, which no hook sees: report here.
    report_exit(code);
    code
}

hook! {
    unsafe fn __libc_start_main(
        main: MainFn,
        argc: c_int,
        argv: *mut *mut c_char,
        init: *mut c_void,
        fini: *mut c_void,
        rtld_fini: *mut c_void,
        stack_end: *mut c_void
    ) -> c_int => remus_libc_start_main {
        APP_MAIN.store(main as usize, Ordering::Release);
        // SAFETY: the loader's arguments, passed on with our main in place of the program's.
        unsafe { real!(__libc_start_main)(remus_main, argc, argv, init, fini, rtld_fini, stack_end) }
    }
}
