//! Layer 5: the shim's lifecycle. Start-up from the constructor (`init`: which process is
//! protected, the kernel probe, the staging area, `remusd primary`), the held stdio streams set
//! up at start (`output`), protecting a restored process again (`rejoin`), and a daemonizing
//! program's child taking protection over (`daemon`). Imports every layer below; nothing
//! imports it.

/// The work of a safe point (`base::state::safe_point`).
pub fn safe_point() {
    rejoin::poll();
    daemon::poll();
}

pub mod daemon;
pub mod init;
pub mod output;
pub mod probe;
pub mod rejoin;
