//! The one bracket every interposed function goes through ([`hook!`]), and the real functions
//! behind them ([`Real`]).
//!
//! A hook is a bracket: enter (the hook depth goes up), bookkeeping, the real call with the
//! bracket open again ([`real!`]: the depth goes down for the call, so a call that blocks does
//! not hold off checkpoints or the app's signals), bookkeeping, leave. While the depth is up:
//!
//! - the epoch signal only marks the checkpoint pending ("no checkpoint in the middle of a
//!   wrapper"); the hook takes it on its way out (`state::lower_depth`);
//! - the app's own asynchronous signals are held: the shim's wrapper in front of every handler
//!   the app installs (`sigview::on_app_signal`) puts the signal back in the kernel's queue,
//!   blocked, and the bracket unblocks it on the way out, so the app's handler runs then, never
//!   in the middle of the shim's bookkeeping (the output ring's reserve/publish, the file-dirty
//!   table). Nothing is paid on the fast path: no system call unless a signal arrived (see
//!   `benches/hook_cost` for the measurement that chose this over two `rt_sigprocmask` calls
//!   per hook). Faults the kernel raises for the current instruction (`SIGSEGV`, `SIGBUS`,
//!   `SIGILL`, `SIGFPE`, `SIGTRAP`, `SIGSYS`) are never held.
//! - a panic does not unwind into the app and the real function is never called a second time:
//!   the shim prints its one-line fatal error and aborts ([`bracket`], and the panic hook that
//!   `life::init` installs, which runs first in both debug and release builds).
//!
//! Why not `redhook` (the design card's interposition crate): its `hook!` catches a panic and
//! calls the real function again (a `write` logged, then repeated), resolves the real function
//! under a `std::sync::Once` (a futex wait a signal handler could deadlock on), and panics when
//! the symbol is missing. The macro here keeps redhook's shape (`hook! { unsafe fn name(..) ->
//! R => body_name { .. } }`, `real!(name)`) so a reader of redhook-based code finds their way.
//!
//! Every libc symbol has exactly one owner: the module under `hooks/` named for what it
//! interposes. The hook depth is process-wide while protected programs are single-threaded
//! (a second thread stops protection); the threads work makes it per thread.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::{fatal, state};

/// The next definition of a libc function after the shim's (`dlsym(RTLD_NEXT)`), resolved at
/// the first call and kept in an atomic (two racing first calls find the same pointer).
pub struct Real {
    /// NUL-terminated.
    name: &'static str,
    ptr: AtomicUsize,
}

impl Real {
    pub const fn new(name: &'static str) -> Real {
        Real {
            name,
            ptr: AtomicUsize::new(0),
        }
    }

    /// The function's address; a missing symbol is fatal (the shim cannot pass the call on).
    pub fn get(&self) -> usize {
        let p = self.ptr.load(Ordering::Relaxed);
        if p != 0 {
            return p;
        }
        // SAFETY: name is NUL-terminated (the macro appends "\0"); RTLD_NEXT looks the symbol up
        // in the objects loaded after this one.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) } as usize;
        if p == 0 {
            let mut l = crate::kernel::line::Line::<96>::new();
            l.push(b"cannot find libc's ")
                .push(self.name.trim_end_matches('\0').as_bytes());
            fatal::die(l.as_bytes());
        }
        self.ptr.store(p, Ordering::Relaxed);
        p
    }
}

/// Runs a hook's body inside the bracket (see the module docs).
pub fn bracket<R>(name: &'static str, body: impl FnOnce() -> R) -> R {
    state::raise_depth();
    let r = std::panic::catch_unwind(core::panic::AssertUnwindSafe(body));
    match r {
        Ok(v) => {
            state::lower_depth();
            v
        }
        Err(_) => {
            let mut l = crate::kernel::line::Line::<96>::new();
            l.push(b"internal error in the ")
                .push(name.as_bytes())
                .push(b" hook");
            fatal::die(l.as_bytes())
        }
    }
}

/// The bracket opened for the real call inside a hook (see [`real!`]): the depth goes down for
/// the call and up again after it. A no-op outside a bracket.
pub struct Outside(bool);

impl Outside {
    #[inline]
    pub fn enter() -> Outside {
        let inside = state::hook_depth() > 0;
        if inside {
            state::lower_depth();
        }
        Outside(inside)
    }
}

impl Drop for Outside {
    #[inline]
    fn drop(&mut self) {
        if self.0 {
            state::raise_depth();
        }
    }
}

/// Interposes the libc function `name`: `#[no_mangle] extern "C" fn name` runs `body` inside
/// [`bracket`]; `real!(name)` inside the body is the real function, called with the bracket
/// open. `name::REAL` is the real function for the shim's own use (no bracket change).
macro_rules! hook {
    (unsafe fn $name:ident ( $($v:ident : $t:ty),* $(,)? ) -> $r:ty => $body_fn:ident $body:block) => {
        #[allow(non_snake_case, dead_code, clippy::missing_safety_doc)]
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;
            pub static REAL: $crate::base::interpose::Real =
                $crate::base::interpose::Real::new(concat!(stringify!($name), "\0"));

            /// The real function, with the bracket open for the call.
            // clippy does not see the SAFETY comments below through the macro expansion.
            #[inline]
            #[allow(clippy::undocumented_unsafe_blocks)]
            pub unsafe fn call($($v: $t),*) -> $r {
                // SAFETY: REAL is libc's definition of this very symbol, whose C signature the
                // hook declares.
                let f: unsafe extern "C" fn($($t),*) -> $r =
                    unsafe { core::mem::transmute(REAL.get()) };
                let _open = $crate::base::interpose::Outside::enter();
                // SAFETY: the caller passes what the app passed to the hook.
                unsafe { f($($v),*) }
            }

            /// The real function, the bracket kept closed (a call that cannot block, whose
            /// bookkeeping after it must not be separated from it by a checkpoint).
            #[inline]
            #[allow(clippy::undocumented_unsafe_blocks)]
            pub unsafe fn call_closed($($v: $t),*) -> $r {
                // SAFETY: as in `call`.
                let f: unsafe extern "C" fn($($t),*) -> $r =
                    unsafe { core::mem::transmute(REAL.get()) };
                // SAFETY: as in `call`.
                unsafe { f($($v),*) }
            }
        }

        /// # Safety
        /// As for the libc function of the same name.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($v: $t),*) -> $r {
            $crate::base::interpose::bracket(stringify!($name), || $body_fn($($v),*))
        }

        #[allow(unused_unsafe)]
        fn $body_fn($($v: $t),*) -> $r $body
    };
    (unsafe fn $name:ident ( $($v:ident : $t:ty),* $(,)? ) => $body_fn:ident $body:block) => {
        $crate::base::interpose::hook! { unsafe fn $name($($v: $t),*) -> () => $body_fn $body }
    };
}

/// The real function behind hook `name`, called with the bracket open (see [`hook!`]);
/// `real!(name, closed)` keeps it closed.
macro_rules! real {
    ($name:ident) => {
        $name::call
    };
    ($name:ident, closed) => {
        $name::call_closed
    };
}

pub(crate) use {hook, real};
