//! The one thing the shim ever writes to the app's stderr: a single line saying why it
//! refuses to run the program (or that it runs unprotected, or that the shim itself failed),
//! then, for a refusal, `_exit(1)`, and for an internal error, `abort()`. The `remus: ` prefix is
//! added here and only here.

use crate::kernel::line::Line;
use crate::kernel::sys;

/// Prints `remus: <msg>` on stderr.
pub fn say(msg: &[u8]) {
    let mut line = Line::<1024>::new();
    line.push(b"remus: ").push(msg).push(b"\n");
    let _ = sys::write_all(2, line.as_bytes());
}

/// Prints `remus: <msg>` and exits 1 without running the program.
pub fn refuse(msg: &[u8]) -> ! {
    say(msg);
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(1) }
}

/// The shim failed inside the program (a panic, a missing libc symbol): prints `remus: <msg>`
/// and aborts. Never unwinds into the program and never retries the call it was making.
pub fn die(msg: &[u8]) -> ! {
    say(msg);
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// The panic hook for the shim's copy of std: one line (where it happened, no allocation) and
/// abort, the same in debug builds (which would unwind) and release builds (which abort).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let mut l = Line::<256>::new();
        l.push(b"internal error (panic)");
        if let Some(loc) = info.location() {
            l.push(b" at ")
                .push(loc.file().as_bytes())
                .push(b":")
                .num(loc.line() as u64);
        }
        die(l.as_bytes())
    }));
}
