//! Layer 4: the functions the shim interposes, grouped by what they interpose. Every one goes
//! through the one bracket (`base::interpose::hook!`), and every libc symbol has exactly one
//! owner here; the bookkeeping they do is a call into the layers below.

pub mod memory;
pub mod network;
pub mod process;
pub mod reads;
pub mod signals;
pub mod waits;
pub mod writes;
