//! Start-up checks for `--service-addr`: everything the topology and the gate need, probed
//! once before anything is changed, each refused with what is missing and what to do.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::service::ServiceAddr;
use super::{arp, nfqueue, run};

/// How long the ARP probe listens for somebody who already has the address.
pub const PROBE_WAIT: Duration = Duration::from_millis(1000);

/// What is missing.
#[derive(Debug, thiserror::Error)]
pub enum ServiceCheckError {
    #[error("--service-addr needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN: network namespaces, veth, iptables); run remus-run as root")]
    NotRoot,
    #[error("--service-addr needs `{0}` on PATH: install {1}")]
    Tool(&'static str, &'static str),
    #[error("iptables cannot use the raw table here: {0}; install iptables and make sure the kernel has iptable_raw (or nf_tables)")]
    RawTable(String),
    #[error("the kernel's NFQUEUE is not available: {0}; load nfnetlink_queue (modprobe nfnetlink_queue) and xt_NFQUEUE")]
    NoQueue(String),
    #[error("--service-dev {0}: no such network device on this host (see `ip link`)")]
    NoDevice(String),
    #[error("the service address {0} is already in use: {1}; choose a free address")]
    InUse(Ipv4Addr, String),
    #[error("the ARP probe for {0} on {1} failed: {2}")]
    Probe(Ipv4Addr, String, String),
}

fn has_caps() -> bool {
    // CapEff bits: CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21.
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|c| c & (1 << 12) != 0 && c & (1 << 21) != 0)
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// Everything but the address (it may be checked on the standby too, where the address is
/// the primary's until a takeover).
pub fn check_host(dev: &str) -> Result<(), ServiceCheckError> {
    if !has_caps() {
        return Err(ServiceCheckError::NotRoot);
    }
    for (prog, pkg) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("nsenter", "util-linux"),
    ] {
        if !on_path(prog) {
            return Err(ServiceCheckError::Tool(prog, pkg));
        }
    }
    run("iptables", &["-w", "-t", "raw", "-S", "PREROUTING"])
        .map_err(ServiceCheckError::RawTable)?;
    // The queue itself, then the iptables target (on an interface name that never exists).
    nfqueue::NfQueue::bind(65000, 16)
        .map_err(|e| ServiceCheckError::NoQueue(format!("binding a netfilter queue: {e}")))?;
    let rule = [
        "-t",
        "raw",
        "PREROUTING",
        "-i",
        "rmh-probe",
        "-j",
        "NFQUEUE",
        "--queue-num",
        "65000",
    ];
    let with = |op: &'static str| {
        let mut a = vec!["-w", rule[0], rule[1], op];
        a.extend_from_slice(&rule[2..]);
        a
    };
    run("iptables", &with("-A")).map_err(ServiceCheckError::NoQueue)?;
    let _ = run("iptables", &with("-D"));
    if !std::path::Path::new(&format!("/sys/class/net/{dev}")).exists() {
        return Err(ServiceCheckError::NoDevice(dev.to_string()));
    }
    Ok(())
}

/// Nobody has the address: not this host, nobody answering ARP on `dev`.
pub fn check_free(service: &ServiceAddr, dev: &str) -> Result<(), ServiceCheckError> {
    let a = service.addr;
    let local = run("ip", &["-o", "-4", "addr", "show"]).unwrap_or_default();
    if local
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(&a.to_string()))
    {
        return Err(ServiceCheckError::InUse(
            a,
            "it is an address of this host".into(),
        ));
    }
    match arp::probe(dev, a, PROBE_WAIT) {
        Ok(None) => Ok(()),
        Ok(Some(mac)) => Err(ServiceCheckError::InUse(
            a,
            format!("{} answers ARP for it on {dev}", arp::mac_text(&mac)),
        )),
        Err(e) => Err(ServiceCheckError::Probe(a, dev.to_string(), e)),
    }
}
