//! Log setup for the daemons: `tracing` to stderr or to a file, never to fd 1 (which may be
//! the protected app's stdout).

use std::path::Path;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Logs go to `file` (appended) or stderr, with colour codes only on a terminal. `REMUS_LOG` (or `RUST_LOG`) sets the filter;
/// default `info`.
pub fn init(file: Option<&Path>) -> Result<()> {
    let filter = std::env::var("REMUS_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the log file {}", p.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        // Colour only for a terminal: stderr is often a file or a pipe (the program's own, when
        // `remusd service-exec` logs before it execs the program).
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init()
        }
    }
    Ok(())
}
