//! The control socket every daemon serves, and the client side `remusctl` uses.
//!
//! Protocol: the client connects to the unix socket, sends one line `status\n`, and the
//! daemon replies with one JSON object ([`status::Status`]) and closes.

pub mod client;
pub mod server;
pub mod status;

use std::path::PathBuf;

/// `/tmp/remus-<uid>`: where daemons put their control sockets by default.
pub fn default_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/remus-{}", crate::sys::getuid()))
}

/// `/tmp/remus-<uid>/<role>-<pid>.sock`.
pub fn default_socket(role: &str) -> PathBuf {
    default_dir().join(format!("{role}-{}.sock", std::process::id()))
}
