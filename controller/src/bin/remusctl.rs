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
}

fn main() {
    let cli = Cli::parse();
    let Cmd::Status { control, json } = cli.cmd;
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
