//! The program's network when it has a service address of its own (`--service-addr`):
//!
//! - [`service`]: the address a user types (`ADDR/PREFIX`) and the device the host answers
//!   for it on;
//! - [`topology`]: the program's network namespace, the veth pair to the host's namespace,
//!   the host's route and proxy ARP for the address (set up, announced, torn down on drop);
//! - [`nfqueue`]: the netfilter queue socket (bind, packet ids, batch verdicts);
//! - [`gate`]: the packet gate on the primary: every packet leaving the program's namespace
//!   waits in the queue until the epoch that produced it is committed (DESIGN §9);
//! - [`checks`]: what must be there before any of it starts (root, iptables, NFQUEUE, the
//!   device, the address free on the network), refused with a message saying what to do;
//! - [`arp`]: ARP probes (is the address in use?) and gratuitous ARP (announce it);
//! - [`launch`]: `remusd service-exec`, which `scripts/remus-run --service-addr` runs: puts
//!   the program in its namespace and keeps the topology up until the program ends.

pub mod arp;
pub mod checks;
pub mod gate;
pub mod launch;
pub mod nfqueue;
pub mod service;
pub mod topology;

use std::process::Command;

/// Runs a command to completion; Err with what it printed when it fails.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
