//! remusctl: ask a running remusd how things are.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use remus_controller::control::{self, client};

#[derive(Parser)]
#[command(name = "remusctl", version, about = "remus operator command line")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a daemon's status (the only one on this host, or the one at --control).
    Status {
        /// The daemon's control socket.
        #[arg(long)]
        control: Option<PathBuf>,
        /// Print the raw JSON object.
        #[arg(long)]
        json: bool,
    },
    /// After a takeover: protect the restored program again with a new standby. Sent to the
    /// standby daemon that runs it (state took_over); `status` there then shows
    /// reprotecting -> reprotected, and where the new primary's control socket is.
    Protect {
        /// The new standby's HOST:PORT (a `remusd standby --listen` with the same key).
        #[arg(long, value_name = "HOST:PORT")]
        standby: String,
        /// The daemon's control socket (default: the only one on this host).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Another key file than the daemon's own.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// No key (the new standby is on this host's loopback).
        #[arg(long)]
        insecure: bool,
    },
    /// A planned switch-over, sent to a primary: take a last epoch, stop the program there
    /// once the standby committed it, and let the standby resume it (with --etcd: the lease
    /// is revoked at once, so this takes about an epoch and a round trip, not a TTL).
    Switchover {
        /// The primary's control socket (default: the only daemon on this host).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Stop a primary's remusd on purpose (as SIGTERM): the standby is told not to take over,
    /// the etcd lease is revoked at once, and the program runs on unprotected.
    Stop {
        /// The primary's control socket (default: the only daemon on this host).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Print the image a standby saved in its state directory (STATE_DIR/image.remus, or
    /// that file itself) as JSON: epoch, regions, threads, descriptors, kernel objects,
    /// files. The file is checked (magic, version, length, checksum) first.
    Inspect {
        /// The standby's --state-dir, or an image file.
        #[arg(value_name = "STATE_DIR")]
        path: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let (control, json) = match cli.cmd {
        Cmd::Status { control, json } => (control, json),
        Cmd::Protect {
            standby,
            control,
            key_file,
            insecure,
        } => protect(control, &standby, key_file, insecure),
        Cmd::Inspect { path } => inspect(&path),
        Cmd::Switchover { control } => send(control, "switchover"),
        Cmd::Stop { control } => send(control, "stop"),
    };
    let result = match &control {
        Some(p) => client::query_status(p).map(|s| (p.clone(), s)),
        None => client::discover(&control::default_dir()),
    };
    match result {
        Ok((_, status)) => {
            if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("remusctl: {e}");
                        std::process::exit(1);
                    }
                }
            } else {
                print!("{}", status.human());
            }
        }
        Err(e) => {
            eprintln!("remusctl: {e}");
            std::process::exit(1);
        }
    }
}

fn protect(
    control: Option<PathBuf>,
    standby: &str,
    key_file: Option<PathBuf>,
    insecure: bool,
) -> ! {
    let path = match control {
        Some(p) => Ok(p),
        None => client::discover(&control::default_dir()).map(|(p, _)| p),
    };
    let mut cmd = serde_json::json!({ "standby": standby, "insecure": insecure });
    if let Some(k) = key_file {
        let k = std::fs::canonicalize(&k).unwrap_or(k);
        cmd["key_file"] = serde_json::Value::String(k.display().to_string());
    }
    match path.and_then(|p| client::command(&p, &format!("protect {cmd}"))) {
        Ok(msg) => {
            println!("{msg}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("remusctl: {e}");
            std::process::exit(1);
        }
    }
}

/// Sends a one-word command to a daemon's control socket and prints its answer.
fn send(control: Option<PathBuf>, verb: &str) -> ! {
    let path = match control {
        Some(p) => Ok(p),
        None => client::discover(&control::default_dir()).map(|(p, _)| p),
    };
    match path.and_then(|p| client::command(&p, verb)) {
        Ok(msg) => {
            println!("{msg}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("remusctl {verb}: {e}");
            std::process::exit(1);
        }
    }
}

fn inspect(path: &std::path::Path) -> ! {
    use remus_controller::persist;
    let file = if path.is_dir() {
        persist::path_in(path)
    } else {
        path.to_path_buf()
    };
    match persist::load(&file, false) {
        Ok(img) => {
            match serde_json::to_string_pretty(&persist::to_json(&img)) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("remusctl inspect: {e}");
                    std::process::exit(1);
                }
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("remusctl inspect: {e}");
            std::process::exit(1);
        }
    }
}
