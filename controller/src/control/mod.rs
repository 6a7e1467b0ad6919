//! The control socket every daemon serves, and the client side `remusctl` uses.
//!
//! Protocol: the client connects to the unix socket, sends one line `status\n`, and the
//! daemon replies with one JSON object ([`status::Status`]) and closes.
//!
//! Only the owning user may talk to a daemon: the socket is mode 0600, in a directory only
//! that user can write (`/tmp/remus-<uid>/`, mode 0700, checked to be ours and not a
//! symlink), and `remusctl` refuses a socket or directory that belongs to someone else.

pub mod client;
pub mod metrics;
pub mod server;
pub mod status;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `/tmp/remus-<uid>`: where daemons put their control sockets by default.
pub fn default_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/remus-{}", crate::sys::getuid()))
}

/// `/tmp/remus-<uid>/<role>-<pid>.sock`.
pub fn default_socket(role: &str) -> PathBuf {
    default_dir().join(format!("{role}-{}.sock", std::process::id()))
}

/// Creates (mode 0700) or checks the default control directory: it must be a real directory
/// (not a symlink) owned by us; a looser mode is tightened to 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "creating the control directory {}: {e}",
                dir.display()
            ))
        }
    }
    let md = fs::symlink_metadata(dir)
        .map_err(|e| format!("checking the control directory {}: {e}", dir.display()))?;
    if md.file_type().is_symlink() || !md.is_dir() {
        return Err(format!(
            "the control directory {} is not a directory of its own (a symlink or a file: someone \
             may be trying to intercept remus's control sockets); remove it, or pass --control PATH",
            dir.display()
        ));
    }
    let me = crate::sys::getuid();
    if md.uid() != me {
        return Err(format!(
            "the control directory {} belongs to uid {}, not to this user (uid {me}): someone else \
             made it; remove it (or pass --control PATH in a directory of yours)",
            dir.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "the control directory {} has mode {:04o} and cannot be made 0700: {e}",
                dir.display(),
                md.mode() & 0o7777
            )
        })?;
    }
    Ok(())
}

/// The directory holding a control socket must be ours (or root's) and writable by nobody
/// else, unless it is sticky like /tmp (others then cannot replace our socket).
pub fn check_socket_dir(dir: &Path) -> Result<(), String> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let md = fs::metadata(dir).map_err(|e| {
        format!(
            "checking the control socket's directory {}: {e}",
            dir.display()
        )
    })?;
    let me = crate::sys::getuid();
    if md.uid() != me && md.uid() != 0 {
        return Err(format!(
            "the control socket's directory {} belongs to uid {}, not to this user (uid {me}) or \
             root: refusing to use it (pass --control PATH in a directory of yours)",
            dir.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o022 != 0 && md.mode() & 0o1000 == 0 {
        return Err(format!(
            "the control socket's directory {} is writable by group or others (mode {:04o}): \
             someone else could replace the socket; run `chmod go-w {}` or use another directory",
            dir.display(),
            md.mode() & 0o7777,
            dir.display()
        ));
    }
    Ok(())
}

/// `remusctl`'s check before it talks to a socket: a socket of ours (not a symlink), in a
/// directory that passes [`check_socket_dir`].
pub fn check_socket(path: &Path) -> Result<(), String> {
    let md = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if md.file_type().is_symlink() {
        return Err(format!(
            "{} is a symlink, not a control socket: refusing to follow it",
            path.display()
        ));
    }
    if !md.file_type().is_socket() {
        return Err(format!("{} is not a unix socket", path.display()));
    }
    let me = crate::sys::getuid();
    if md.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user (uid {me}): refusing to talk to another \
             user's daemon (run remusctl as that user)",
            path.display(),
            md.uid()
        ));
    }
    check_socket_dir(path.parent().unwrap_or(Path::new(".")))
}
