//! The `remusctl` side of the control socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::status::Status;

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("cannot connect to {0}: {1}")]
    Connect(PathBuf, io::Error),
    #[error("talking to {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0} answered something that is not a remus status: {1}")]
    BadReply(PathBuf, String),
    #[error("no remus controller is running on this host (looked in {0})")]
    NoneRunning(PathBuf),
    #[error("refusing the control socket: {0}")]
    Unsafe(String),
    #[error("{0}")]
    Refused(String),
    #[error("several remus controllers are running on this host; pass --control with one of: {0}")]
    Several(String),
}

/// Asks the daemon at `path` for its status.
pub fn query_status(path: &Path) -> Result<Status, QueryError> {
    super::check_socket(path).map_err(QueryError::Unsafe)?;
    let mut c = UnixStream::connect(path).map_err(|e| QueryError::Connect(path.into(), e))?;
    let io_err = |e| QueryError::Io(path.into(), e);
    c.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(io_err)?;
    c.set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(io_err)?;
    c.write_all(b"status\n").map_err(io_err)?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).map_err(io_err)?;
    serde_json::from_str(reply.trim())
        .map_err(|e| QueryError::BadReply(path.into(), format!("{e}: {:?}", truncate(&reply))))
}

/// Sends one command line (`protect {...}`) to the daemon at `path`; its answer's message.
pub fn command(path: &Path, line: &str) -> Result<String, QueryError> {
    let mut c = UnixStream::connect(path).map_err(|e| QueryError::Connect(path.into(), e))?;
    let io_err = |e| QueryError::Io(path.into(), e);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err)?;
    c.set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(io_err)?;
    c.write_all(format!("{}\n", line.trim()).as_bytes())
        .map_err(io_err)?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).map_err(io_err)?;
    let v: serde_json::Value = serde_json::from_str(reply.trim())
        .map_err(|e| QueryError::BadReply(path.into(), format!("{e}: {:?}", truncate(&reply))))?;
    match (
        v.get("ok").and_then(|m| m.as_str()),
        v.get("error").and_then(|m| m.as_str()),
    ) {
        (Some(m), _) => Ok(m.to_string()),
        (_, Some(e)) => Err(QueryError::Refused(e.to_string())),
        _ => Err(QueryError::BadReply(
            path.into(),
            truncate(&reply).to_string(),
        )),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Finds the one live control socket in `dir`.
pub fn discover(dir: &Path) -> Result<(PathBuf, Status), QueryError> {
    if let Ok(md) = std::fs::symlink_metadata(dir) {
        use std::os::unix::fs::MetadataExt;
        let me = crate::sys::getuid();
        if md.file_type().is_symlink() || !md.is_dir() || md.uid() != me || md.mode() & 0o022 != 0 {
            return Err(QueryError::Unsafe(format!(
                "{} is not a private directory of this user (uid {me}): it is a symlink, not a \
                 directory, owned by uid {}, or writable by others (mode {:04o}); remove it, or \
                 pass --control SOCKET",
                dir.display(),
                md.uid(),
                md.mode() & 0o7777
            )));
        }
    }
    let mut live = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect();
        paths.sort();
        for p in paths {
            if let Ok(s) = query_status(&p) {
                live.push((p, s));
            }
        }
    }
    match live.len() {
        0 => Err(QueryError::NoneRunning(dir.into())),
        1 => Ok(live.remove(0)),
        _ => Err(QueryError::Several(
            live.iter()
                .map(|(p, s)| format!("{} ({} pid {})", p.display(), s.role, s.controller_pid))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::ControlServer;
    use crate::control::status::{SharedStatus, Status};

    #[test]
    fn serve_and_query() {
        let dir = std::env::temp_dir().join(format!("remus-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(discover(&dir), Err(QueryError::NoneRunning(_))));
        let st = SharedStatus::new(Status::new("standby", "waiting"));
        let a = ControlServer::start(Some(dir.join("a.sock")), "standby", st.clone()).unwrap();
        let (p, s) = discover(&dir).unwrap();
        assert_eq!(p, a.path());
        assert_eq!(s.role, "standby");
        assert_eq!(s.state, "waiting");
        let b = ControlServer::start(Some(dir.join("b.sock")), "primary", st).unwrap();
        assert!(matches!(discover(&dir), Err(QueryError::Several(_))));
        drop(b);
        drop(a);
        assert!(matches!(discover(&dir), Err(QueryError::NoneRunning(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_sockets_and_dirs_of_others() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        if crate::sys::getuid() != 0 {
            return; // chown needs root
        }
        let dir = std::env::temp_dir().join(format!("remus-ctl-own-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let st = SharedStatus::new(Status::new("standby", "waiting"));
        let sock = dir.join("a.sock");
        let _srv = ControlServer::start(Some(sock.clone()), "standby", st).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        query_status(&sock).unwrap();
        // Someone else's socket.
        std::os::unix::fs::chown(&sock, Some(12345), None).unwrap();
        let e = query_status(&sock).unwrap_err();
        assert!(
            matches!(&e, QueryError::Unsafe(m) if m.contains("uid 12345")),
            "{e}"
        );
        std::os::unix::fs::chown(&sock, Some(0), None).unwrap();
        // A symlink to it.
        let link = dir.join("link.sock");
        symlink(&sock, &link).unwrap();
        assert!(matches!(query_status(&link), Err(QueryError::Unsafe(_))));
        std::fs::remove_file(&link).unwrap();
        // Its directory writable by others, then owned by someone else.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = query_status(&sock).unwrap_err();
        assert!(
            matches!(&e, QueryError::Unsafe(m) if m.contains("chmod go-w")),
            "{e}"
        );
        assert!(matches!(discover(&dir), Err(QueryError::Unsafe(_))));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(12345), None).unwrap();
        let e = query_status(&sock).unwrap_err();
        assert!(
            matches!(&e, QueryError::Unsafe(m) if m.contains("uid 12345")),
            "{e}"
        );
        // And the daemon will not put its socket there.
        assert!(ControlServer::start(
            Some(dir.join("b.sock")),
            "standby",
            SharedStatus::new(Status::new("standby", "waiting"))
        )
        .is_err());
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        query_status(&sock).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn private_dir_must_be_ours_and_no_symlink() {
        use std::os::unix::fs::{symlink, MetadataExt};
        let base = std::env::temp_dir().join(format!("remus-ctl-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let d = base.join("d");
        crate::control::ensure_private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let l = base.join("l");
        symlink(&d, &l).unwrap();
        let e = crate::control::ensure_private_dir(&l).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        if crate::sys::getuid() == 0 {
            std::os::unix::fs::chown(&d, Some(12345), None).unwrap();
            let e = crate::control::ensure_private_dir(&d).unwrap_err();
            assert!(e.contains("uid 12345"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
