//! The one thing the shim ever writes to the app's stderr: a single line saying why it
//! refuses to run the program (or that it runs unprotected), then, for a refusal, `_exit(1)`.

use crate::sys;

/// Prints `remus: <msg>` on stderr.
pub fn say(msg: &[u8]) {
    let mut line = sys::Line::<1024>::new();
    line.push(b"remus: ").push(msg).push(b"\n");
    let _ = sys::write_all(2, line.as_bytes());
}

/// Prints `remus: <msg>` and exits 1 without running the program.
pub fn refuse(msg: &[u8]) -> ! {
    say(msg);
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(1) }
}
