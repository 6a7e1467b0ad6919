//! The daemon side of the control socket.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::status::SharedStatus;

#[derive(Debug, Error)]
pub enum StartControlError {
    #[error("{0}")]
    Dir(String),
    #[error("control socket {0} is in use by another running controller")]
    InUse(PathBuf),
    #[error("binding the control socket {0}: {1}")]
    Bind(PathBuf, io::Error),
}

/// A command other than `status` (`protect {...}` on a standby that took over): gets the whole
/// line, answers a message (`{"ok": ...}`) or an error (`{"error": ...}`).
pub type CommandFn = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// A listening control socket; the socket file is removed when this is dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (or the default `/tmp/remus-<uid>/<role>-<pid>.sock`) and serves `status`
    /// from a background thread.
    pub fn start(
        path: Option<PathBuf>,
        role: &str,
        status: SharedStatus,
    ) -> Result<ControlServer, StartControlError> {
        ControlServer::start_with_commands(path, role, status, None)
    }

    /// [`ControlServer::start`], also answering other commands with `commands`.
    pub fn start_with_commands(
        path: Option<PathBuf>,
        role: &str,
        status: SharedStatus,
        commands: Option<CommandFn>,
    ) -> Result<ControlServer, StartControlError> {
        let path = match path {
            Some(p) => p,
            None => {
                super::ensure_private_dir(&super::default_dir()).map_err(StartControlError::Dir)?;
                super::default_socket(role)
            }
        };
        super::check_socket_dir(path.parent().unwrap_or(Path::new(".")))
            .map_err(StartControlError::Dir)?;
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(StartControlError::InUse(path));
            }
            let _ = fs::remove_file(&path);
        }
        let listener =
            UnixListener::bind(&path).map_err(|e| StartControlError::Bind(path.clone(), e))?;
        // The directory keeps others out meanwhile (checked above).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| StartControlError::Bind(path.clone(), e))?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(listener, status, commands))
            .map_err(|e| StartControlError::Bind(path.clone(), e))?;
        tracing::info!(socket = %path.display(), "control socket ready");
        Ok(ControlServer { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, status: SharedStatus, commands: Option<CommandFn>) {
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                if let Err(e) = answer(c, &status, commands.as_ref()) {
                    tracing::debug!("control client: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(c: UnixStream, status: &SharedStatus, commands: Option<&CommandFn>) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&c).take_line(&mut line)?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&status.snapshot()).map_err(io::Error::other)?,
        other if !other.is_empty() && commands.is_some() => {
            let run = commands.expect("checked");
            match run(other) {
                Ok(msg) => serde_json::json!({ "ok": msg }).to_string(),
                Err(e) => serde_json::json!({ "error": e }).to_string(),
            }
        }
        other => {
            serde_json::json!({ "error": format!("unknown command {other:?}; known: status") })
                .to_string()
        }
    };
    let mut w = &c;
    w.write_all(reply.as_bytes())?;
    w.write_all(b"\n")?;
    w.flush()
}

trait TakeLine {
    fn take_line(&mut self, buf: &mut String) -> io::Result<usize>;
}

impl<R: BufRead> TakeLine for R {
    /// One line of at most 4 KiB.
    fn take_line(&mut self, buf: &mut String) -> io::Result<usize> {
        io::Read::take(self, 4096).read_line(buf)
    }
}
