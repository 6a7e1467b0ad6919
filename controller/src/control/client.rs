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
    #[error("several remus controllers are running on this host; pass --control with one of: {0}")]
    Several(String),
}

/// Asks the daemon at `path` for its status.
pub fn query_status(path: &Path) -> Result<Status, QueryError> {
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

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Finds the one live control socket in `dir`.
pub fn discover(dir: &Path) -> Result<(PathBuf, Status), QueryError> {
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
}
