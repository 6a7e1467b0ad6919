//! The program's network: a namespace of its own, joined to the host's namespace by a veth
//! pair, with the service address inside.
//!
//! ```text
//!  clients --- service dev (proxy ARP for ADDR) [host ns] rmh<tag> ==veth== eth0 [program ns]
//!                                                 route ADDR/32         ADDR/PREFIX
//!                                                 raw PREROUTING        default dev eth0
//!                                                 -i rmh<tag>: the gate
//! ```
//!
//! The host side: the host routes `ADDR/32` to its end of the pair (`rmh<tag>`) and answers
//! ARP for `ADDR` on the service device with a proxy neighbour entry (`ip neigh add proxy`,
//! one address, not the device-wide `proxy_arp`), `proxy_delay` 0 so that the answer is not
//! held back, forwarding on the two devices (not `ip_forward` for the whole host). Its end of
//! the pair has `proxy_arp` on and IPv6 off (the gate is an IPv4 rule: IPv6 from the program
//! is dropped by the host, never passed ungated), so that the program reaches every address the host routes to
//! through one device route (`default dev eth0`) without a gateway address of its own. Every
//! setting changed is put back on drop.
//!
//! Announcing is separate from setting up ([`Topology::announce`]): the standby brings the
//! topology up for the restored program, rebuilds its connections while nobody can reach the
//! address yet (DESIGN §9), then announces (proxy entry + gratuitous ARP). [`Topology::create`]
//! configures the address inside the namespace already; until `announce` no neighbour learns
//! that this host has it (no proxy entry; the clients' ARP caches still name the old primary),
//! so nothing reaches it. For a takeover: the restore child `unshare(CLONE_NEWNET)`s before
//! it recreates its sockets, the standby calls `Topology::create(spec, child_pid)` (a `tag`
//! unique on the standby host, e.g. the child's pid), repairs the connections, then
//! `announce()`s and keeps the `Topology` for as long as the restored program runs.
//!
//! The program's namespace is the one a process already lives in (its `/proc/PID/ns/net`);
//! the namespace-side commands run through `nsenter --net=`. Needs `CAP_NET_ADMIN` and
//! `CAP_SYS_ADMIN` (root), iproute2 and nsenter (util-linux).

use std::path::PathBuf;

use super::service::ServiceAddr;
use super::{arp, run};

/// The name of the pair's end inside the program's namespace.
pub const INSIDE_DEV: &str = "eth0";

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    pub service: ServiceAddr,
    /// The device the host answers ARP for the address on (`--service-dev`).
    pub dev: String,
    /// Makes the interface names unique on the host (a pid): `rmh<tag>`, at most 11 chars.
    pub tag: String,
}

impl TopologySpec {
    /// The host's end of the pair (the gate's `-i`).
    pub fn host_veth(&self) -> String {
        format!("rmh{}", self.tag)
    }
    fn peer_veth(&self) -> String {
        format!("rma{}", self.tag)
    }
}

/// Built; torn down on drop (always, also when the one who built it fails later).
#[derive(Debug)]
pub struct Topology {
    pub spec: TopologySpec,
    /// `/proc/PID/ns/net` of the program's namespace.
    pub netns: PathBuf,
    /// sysctl files changed, with their old values, put back in reverse order.
    saved: Vec<(String, String)>,
    veth: bool,
    proxy: bool,
}

/// Setting up failed; what was done is undone.
#[derive(Debug, thiserror::Error)]
#[error("setting up the program's network ({what}): {detail}")]
pub struct SetupTopologyError {
    pub what: &'static str,
    pub detail: String,
}

fn step(what: &'static str) -> impl Fn(String) -> SetupTopologyError {
    move |detail| SetupTopologyError { what, detail }
}

impl Topology {
    /// Creates the pair, moves its inside end into the namespace of process `pid`, configures
    /// both sides (not announced yet: see [`Topology::announce`]).
    pub fn create(spec: TopologySpec, pid: i32) -> Result<Topology, SetupTopologyError> {
        let mut t = Topology {
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            spec,
            saved: Vec::new(),
            veth: false,
            proxy: false,
        };
        let (host, peer) = (t.spec.host_veth(), t.spec.peer_veth());
        run(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
        )
        .map_err(step("creating the veth pair"))?;
        t.veth = true;
        let pid_s = pid.to_string();
        run("ip", &["link", "set", &peer, "netns", &pid_s])
            .map_err(step("moving the pair's end into the program's namespace"))?;
        let ns = format!("--net={}", t.netns.display());
        let inside = |args: &[&str]| {
            let mut a = vec![ns.as_str(), "ip"];
            a.extend_from_slice(args);
            run("nsenter", &a)
        };
        let addr = t.spec.service.to_string();
        inside(&["link", "set", "lo", "up"]).map_err(step("loopback up inside"))?;
        inside(&["link", "set", &peer, "name", INSIDE_DEV]).map_err(step("naming eth0"))?;
        inside(&["addr", "add", &addr, "dev", INSIDE_DEV])
            .map_err(step("the service address inside"))?;
        inside(&["link", "set", INSIDE_DEV, "up"]).map_err(step("eth0 up inside"))?;
        inside(&["route", "add", "default", "dev", INSIDE_DEV])
            .map_err(step("the default route inside"))?;
        run("ip", &["link", "set", &host, "up"]).map_err(step("the host's end up"))?;
        let a32 = format!("{}/32", t.spec.service.addr);
        run("ip", &["route", "add", &a32, "dev", &host])
            .map_err(step("the host's route to the address"))?;
        let dev = t.spec.dev.clone();
        // The gate's rule is IPv4 (iptables): IPv6 from the program must not leave at all.
        let v6 = format!("net/ipv6/conf/{host}/disable_ipv6");
        if std::path::Path::new(&format!("/proc/sys/{v6}")).exists() {
            t.sysctl(&v6, "1").map_err(step("sysctl"))?;
        }
        for (key, val) in [
            (format!("net/ipv4/conf/{host}/proxy_arp"), "1"),
            (format!("net/ipv4/conf/{host}/forwarding"), "1"),
            (format!("net/ipv4/conf/{dev}/forwarding"), "1"),
            (format!("net/ipv4/neigh/{dev}/proxy_delay"), "0"),
        ] {
            t.sysctl(&key, val).map_err(step("sysctl"))?;
        }
        tracing::info!(
            addr = %t.spec.service, dev = %t.spec.dev, veth = %host,
            "the program's network is up (not announced yet)"
        );
        Ok(t)
    }

    /// Writes `/proc/sys/<key>`, remembering the old value (the host's end of the pair goes
    /// with the pair: nothing to put back there).
    fn sysctl(&mut self, key: &str, val: &str) -> Result<(), String> {
        let path = format!("/proc/sys/{key}");
        let old = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {path}: {e}"))?
            .trim()
            .to_string();
        if old == val {
            return Ok(());
        }
        std::fs::write(&path, val).map_err(|e| format!("writing {val} to {path}: {e}"))?;
        if !key.contains(&format!("/{}/", self.spec.host_veth())) {
            self.saved.push((path, old));
        }
        Ok(())
    }

    /// Makes the address reachable: the host answers ARP for it on the service device, and
    /// tells the network so now (gratuitous ARP, a few times).
    pub fn announce(&mut self) -> Result<(), SetupTopologyError> {
        let a = self.spec.service.addr.to_string();
        run(
            "ip",
            &["neigh", "replace", "proxy", &a, "dev", &self.spec.dev],
        )
        .map_err(step("the proxy ARP entry"))?;
        self.proxy = true;
        arp::announce(&self.spec.dev, self.spec.service.addr, 3)
            .map_err(step("the gratuitous ARP"))?;
        tracing::info!(addr = %self.spec.service.addr, dev = %self.spec.dev, "service address announced");
        Ok(())
    }

    /// Undoes everything (also run by drop; a second call does nothing).
    pub fn teardown(&mut self) {
        let a = self.spec.service.addr.to_string();
        if std::mem::take(&mut self.proxy) {
            if let Err(e) = run("ip", &["neigh", "del", "proxy", &a, "dev", &self.spec.dev]) {
                tracing::warn!("removing the proxy ARP entry: {e}");
            }
        }
        if std::mem::take(&mut self.veth) {
            let host = self.spec.host_veth();
            // The pair goes as one; its route with it. First: until it is gone, the gate's
            // rule drops what the program's namespace sends (resets from a dead program's
            // sockets, which must not reach clients the standby carries on).
            if let Err(e) = run("ip", &["link", "del", &host]) {
                tracing::warn!("deleting the veth pair {host}: {e}");
            }
            // A gate whose remusd died (or left it on purpose) cannot remove its rule: do it
            // here.
            super::gate::remove_rules_for(&host);
        }
        while let Some((path, old)) = self.saved.pop() {
            if let Err(e) = std::fs::write(&path, &old) {
                tracing::warn!("putting {old} back into {path}: {e}");
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}
