//! remusd: the remus daemon, as `primary` (beside the protected app, started by the shim) or
//! `standby` (on the standby host).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use remus_controller::control::metrics::MetricsListener;
use remus_controller::{logging, primary, standby};

#[derive(Parser)]
#[command(name = "remusd", version, about = "remus replication daemon")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Replicate one app to a standby (started by libremus.so; inherits fd 3 = the shim's
    /// socket and fd 4 = the staging memfd).
    Primary {
        /// The protected process.
        #[arg(long)]
        app_pid: i32,
        /// The standby's HOST:PORT.
        #[arg(long)]
        standby: Option<String>,
        /// Milliseconds between checkpoints.
        #[arg(long, default_value_t = 25)]
        epoch_ms: u64,
        /// Control socket (default /tmp/remus-<uid>/primary-<pid>.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Milliseconds between heartbeats when idle; the standby is lost after 4 missed
        /// (at least 1 s).
        #[arg(long, default_value_t = 100)]
        heartbeat_ms: u64,
        /// Run the app without protection when no standby can be reached.
        #[arg(long)]
        allow_unprotected: bool,
        /// Log to this file instead of stderr.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// A held output stream passed by the shim (repeated, in order: the i-th one's
        /// destination and pipe are fds CONTROLLER_OUTPUT_FD_BASE + 2i and + 2i + 1).
        #[arg(long = "output")]
        outputs: Vec<String>,
        /// Memory for shadow pages, the last shipped version of each page that deltas are
        /// computed against (least recently dirtied evicted first); 0 turns deltas off.
        /// Default: $REMUS_DELTA_BUDGET_MB, else 256.
        #[arg(long)]
        delta_budget_mb: Option<u64>,
        /// Also measure what the page frames would have been with snap alone (status key
        /// snap_only_frame_bytes; costs CPU). Also set by REMUS_WIRE_STATS=1.
        #[arg(long)]
        wire_stats: bool,
        /// The key file shared with the standby (authenticates the link; see `remusd keygen`).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// No key: only for a standby on a loopback address (this host).
        #[arg(long)]
        insecure: bool,
        /// Take each full image (the first, and after a resync or a rejoin) in one pause
        /// instead of streaming it while the program runs: the benchmarks' baseline. remusd
        /// falls back to this by itself when it may not read the program's memory. Also set
        /// by REMUS_FULL_IMAGE=pause.
        #[arg(long)]
        full_image_in_pause: bool,
        /// Pages read from the running program per epoch while a full image streams.
        /// Default: $REMUS_STREAM_BATCH_PAGES, else 2048 (8 MiB).
        #[arg(long)]
        stream_batch_pages: Option<usize>,
        /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT).
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<String>,
        /// The program's service address (ADDR/PREFIX): it runs in a network namespace of its
        /// own (made by `remusd service-exec`, which remus-run runs) and every packet it sends
        /// waits in the packet gate until its epoch commits. Default: $REMUS_SERVICE_ADDR.
        #[arg(long, value_name = "ADDR/PREFIX")]
        service_addr: Option<String>,
        /// The device the host answers ARP for the service address on.
        /// Default: $REMUS_SERVICE_DEV.
        #[arg(long, value_name = "DEV")]
        service_dev: Option<String>,
    },
    /// Run PROG in a network namespace of its own with the service address, joined to this
    /// host by a veth pair (what `remus-run --service-addr` runs; PROG keeps this pid).
    ServiceExec {
        /// ADDR/PREFIX: the program's address.
        #[arg(long, value_name = "ADDR/PREFIX")]
        service_addr: String,
        /// The device the host answers ARP for it on (default: the one routing to --standby).
        #[arg(long, value_name = "DEV")]
        service_dev: Option<String>,
        /// The standby's HOST:PORT (picks the default device).
        #[arg(long, value_name = "HOST:PORT")]
        standby: Option<String>,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        prog: Vec<std::ffi::OsString>,
    },
    /// Receive epochs from a primary and take over when it fails.
    Standby {
        /// ADDR:PORT to listen on.
        #[arg(long)]
        listen: String,
        /// Directory for committed.json, image.remus (see `remusctl inspect`) and takeover.json.
        #[arg(long)]
        state_dir: PathBuf,
        /// Declare the primary dead after this many milliseconds of silence.
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        /// The restored process's stdout (default: the standby's).
        #[arg(long)]
        stdout: Option<PathBuf>,
        /// The restored process's stderr (default: the standby's).
        #[arg(long)]
        stderr: Option<PathBuf>,
        /// Control socket (default /tmp/remus-<uid>/standby-<pid>.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Log to this file instead of stderr.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// FROM=TO (repeatable): a socket the app had bound to FROM binds to TO on the
        /// standby. FROM and TO are IP:PORT, IP (any port, kept), or unix socket paths
        /// (@name: abstract).
        #[arg(long = "bind-map", value_parser = parse_bind_map)]
        bind_map: Vec<remus_controller::restore::BindMap>,
        /// Run this shell command before the restored program resumes (e.g. to move a service
        /// address to this host). If it fails, the takeover stops and the program is not run.
        #[arg(long = "on-takeover", value_name = "CMD")]
        on_takeover: Option<String>,
        /// The key file shared with the primary (authenticates the link; see `remusd keygen`).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// No key: only with a loopback --listen address (a primary on this host).
        #[arg(long)]
        insecure: bool,
        /// Replicated files the app writes are kept under this directory (the primary's
        /// path appended to it); the restored program reopens them there. Default `/`: the
        /// same paths as on the primary's host.
        #[arg(long, value_name = "DIR", default_value = "/")]
        file_root: PathBuf,
        /// fsync each replicated file's copy before acknowledging the epoch.
        #[arg(long)]
        file_fsync: bool,
        /// After a takeover, protect the restored program again with the standby at
        /// HOST:PORT right away (same as `remusctl protect --standby HOST:PORT` then).
        #[arg(long, value_name = "HOST:PORT")]
        reprotect_with: Option<String>,
        /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT).
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<String>,
        /// The program's service address (ADDR/PREFIX), which moves to this host at a
        /// takeover (validated and recorded; default $REMUS_SERVICE_ADDR).
        #[arg(long, value_name = "ADDR/PREFIX")]
        service_addr: Option<String>,
        /// The device this host will answer ARP for it on (default: $REMUS_SERVICE_DEV, else
        /// the one routing to the primary's connection).
        #[arg(long, value_name = "DEV")]
        service_dev: Option<String>,
    },
    /// Create a key file for the replication link (32 random bytes as hex, mode 0600); copy
    /// it to both hosts and pass it as --key-file to both daemons.
    Keygen {
        /// The file to create (it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn parse_bind_map(s: &str) -> Result<remus_controller::restore::BindMap, String> {
    s.parse()
}

/// `--service-addr` or the environment's, parsed; exits with a clear message when invalid.
fn service_arg(
    flag: Option<String>,
    dev: Option<String>,
) -> Option<(remus_controller::net::service::ServiceAddr, Option<String>)> {
    let text = flag.or_else(|| std::env::var("REMUS_SERVICE_ADDR").ok())?;
    let dev = dev.or_else(|| std::env::var("REMUS_SERVICE_DEV").ok());
    match text.parse() {
        Ok(a) => Some((a, dev)),
        Err(e) => {
            eprintln!("remusd: --service-addr: {e}");
            tracing::error!("refusing to start: --service-addr: {e}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Role::ServiceExec {
        service_addr,
        service_dev,
        standby,
        prog,
    } = cli.role
    {
        let service = match service_addr.parse() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("remusd service-exec: --service-addr: {e}");
                std::process::exit(2);
            }
        };
        let e = remus_controller::net::launch::service_exec(
            remus_controller::net::launch::ServiceExec {
                service,
                dev: service_dev,
                standby,
                prog,
            },
        );
        eprintln!("remus-run: {e}");
        std::process::exit(2);
    }
    // remusd primary of a program in a service namespace lives in the host's namespace (its
    // link to the standby, the gate's queue and rule): entered before any thread exists.
    if let Role::Primary { service_addr, .. } = &cli.role {
        if service_addr.is_some() || std::env::var_os("REMUS_SERVICE_ADDR").is_some() {
            if let Err(e) = remus_controller::net::gate::enter_outer_netns() {
                eprintln!("remusd primary: {e}");
                std::process::exit(2);
            }
        }
    }
    let log_file = match &cli.role {
        Role::Primary { log_file, .. } | Role::Standby { log_file, .. } => log_file.clone(),
        Role::ServiceExec { .. } => unreachable!("handled above"),
        Role::Keygen { out } => match remus_controller::wire::auth::generate_key_file(out) {
            Ok(()) => {
                println!(
                    "wrote a new key to {0} (mode 0600): copy it to both hosts and pass \
                     --key-file {0} to remusd standby and scripts/remus-run",
                    out.display()
                );
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("remusd keygen: {e}");
                std::process::exit(1);
            }
        },
    };
    if let Err(e) = logging::init(log_file.as_deref()) {
        eprintln!("remusd: {e:#}");
        std::process::exit(1);
    }
    let metrics_addr = match &cli.role {
        Role::Primary { metrics, .. } | Role::Standby { metrics, .. } => metrics.clone(),
        Role::Keygen { .. } | Role::ServiceExec { .. } => None,
    };
    let metrics = match metrics_addr
        .as_deref()
        .map(MetricsListener::bind)
        .transpose()
    {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("refusing to start: {e}");
            if log_file.is_some() {
                eprintln!("remusd: refusing to start: {e}");
            }
            std::process::exit(2);
        }
    };
    let result = match cli.role {
        Role::Keygen { .. } | Role::ServiceExec { .. } => unreachable!("handled above"),
        Role::Primary {
            app_pid,
            standby,
            epoch_ms,
            control,
            heartbeat_ms,
            allow_unprotected,
            outputs,
            delta_budget_mb,
            wire_stats,
            key_file,
            insecure,
            full_image_in_pause,
            stream_batch_pages,
            service_addr,
            service_dev,
            ..
        } => primary::run(
            primary::PrimaryArgs {
                app_pid,
                standby,
                epoch_ms,
                control,
                heartbeat_ms,
                allow_unprotected,
                key_file,
                insecure,
                stream_images: !full_image_in_pause
                    && std::env::var("REMUS_FULL_IMAGE").as_deref() != Ok("pause"),
                stream_batch_pages: stream_batch_pages
                    .or_else(|| env_u64("REMUS_STREAM_BATCH_PAGES").map(|v| v as usize))
                    .unwrap_or(primary::stream::BATCH_PAGES)
                    .max(1),
                pipeline: primary::link::PipelineOpts {
                    delta_budget: delta_budget_mb
                        .or_else(|| env_u64("REMUS_DELTA_BUDGET_MB"))
                        .unwrap_or(primary::link::DEFAULT_DELTA_BUDGET_MB)
                        << 20,
                    wire_stats: wire_stats || env_u64("REMUS_WIRE_STATS").is_some_and(|v| v != 0),
                },
                metrics,
                service: service_arg(service_addr, service_dev).map(|(addr, dev)| {
                    primary::ServiceNet {
                        addr,
                        dev,
                        veth: std::env::var("REMUS_SERVICE_VETH").ok(),
                    }
                }),
            },
            outputs,
        ),
        Role::Standby {
            listen,
            state_dir,
            timeout_ms,
            stdout,
            stderr,
            control,
            bind_map,
            on_takeover,
            key_file,
            insecure,
            file_root,
            file_fsync,
            reprotect_with,
            service_addr,
            service_dev,
            ..
        } => {
            let service = service_arg(service_addr, service_dev);
            if let Some((addr, dev)) = &service {
                // Recorded and validated here; brought up at a takeover by the wiring step.
                tracing::info!(
                    %addr,
                    dev = dev.as_deref().unwrap_or("(the one routing to the primary)"),
                    "service address recorded: it comes up on this host at a takeover"
                );
                if let Some(d) = dev {
                    if let Err(e) = remus_controller::net::checks::check_host(d) {
                        tracing::error!("refusing to start: {e}");
                        if log_file.is_some() {
                            eprintln!("remusd standby: refusing to start: {e}");
                        }
                        std::process::exit(2);
                    }
                }
            }
            remus_controller::files::set_root(file_root, file_fsync);
            let security = match remus_controller::wire::auth::LinkSecurity::resolve(
                key_file.as_deref(),
                insecure,
                &listen,
                "--listen",
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("refusing to start: {e}");
                    if log_file.is_some() {
                        eprintln!("remusd standby: refusing to start: {e}");
                    }
                    std::process::exit(2);
                }
            };
            standby::run(standby::StandbyArgs {
                listen,
                state_dir,
                timeout_ms,
                stdout,
                stderr,
                control,
                bind_map,
                on_takeover,
                security,
                key_file,
                reprotect_with,
                metrics,
                service: service.map(|(addr, dev)| standby::ServiceAddrArg { addr, dev }),
            })
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            tracing::error!("{e:#}");
            if log_file.is_some() {
                eprintln!("remusd: {e:#}");
            }
            std::process::exit(1);
        }
    }
}
