//! A network namespace joined to the root namespace by a veth pair, for tests that cut a real
//! link: a standby runs inside ([`crate::Standby::start_in`]), the primary stays outside and
//! reaches it across the pair, and the test sets the root-side end down and up again.
//!
//! Needs CAP_NET_ADMIN (root) and iproute2's `ip`. [`Netns::create`] fails with a message
//! that says so instead of letting a test pass without the fault. Dropping a [`Netns`] kills
//! every process left in it (`ip netns pids`), deletes the veth pair, its route and the
//! namespace; namespaces left by a test process that was killed outright are swept by the
//! next one.
//!
//! Addresses: pair number `k` (0..16384) gets the /30 `10.213.(k / 64).(k % 64 * 4)`, `.1` in
//! the root namespace, `.2` in the namespace, and its root-side end is named `remus-v<k>`.
//! Creating that interface is what claims `k`: the kernel refuses a second interface of the
//! same name, so concurrent test processes never share a subnet.
//!
//! A link set down takes its connected route with it, and the root namespace's default route
//! would then carry the pair's traffic out of the host. An `unreachable` route for the /30
//! with a high metric stays under the connected one: while the link is down, connections to
//! the namespace fail at once with "no route to host" (EHOSTUNREACH) and nothing leaves.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use crate::{alive, describe_status, signal, try_run_with_timeout};

/// Deadline for one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// The name of the namespace-side end of the pair (inside the namespace, so never shared).
const NS_DEV: &str = "remus0";
/// The metric of the fallback `unreachable` route (the connected route has 0).
const FALLBACK_METRIC: &str = "9999";

/// A veth pair number: its /30 in 10.213.0.0/16 and its root-side interface name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair(u64);

impl Pair {
    /// How many /30s 10.213.0.0/16 holds.
    const COUNT: u64 = 16384;

    /// `10.213.a.b` + `last` (0: the network, 1: root side, 2: namespace side).
    fn addr(self, last: u64) -> String {
        format!("10.213.{}.{}", self.0 / 64, self.0 % 64 * 4 + last)
    }
    fn net(self) -> String {
        format!("{}/30", self.addr(0))
    }
    fn dev(self) -> String {
        format!("remus-v{}", self.0)
    }
    /// The pair whose namespace side is `ip` (`10.213.a.b`).
    fn of_ns_ip(ip: &str) -> Option<Pair> {
        let mut it = ip.strip_prefix("10.213.")?.split('.');
        let a: u64 = it.next()?.parse().ok()?;
        let b: u64 = it.next()?.parse().ok()?;
        (a < 256 && b < 256 && b % 4 == 2).then_some(Pair(a * 64 + b / 4))
    }
}

/// A network namespace with a veth pair to the root namespace, both ends up.
#[derive(Debug)]
pub struct Netns {
    /// `remus-t<test pid>-<n>` (for `ip netns exec`, `ip -n`).
    pub name: String,
    /// None until the pair is made.
    pair: Option<Pair>,
    /// The root side's address (`10.213.a.b`, no prefix length).
    pub host_ip: String,
    /// The namespace side's address: what a server inside listens on.
    pub ns_ip: String,
}

/// Runs `ip args...` with a deadline; Err with its output when it fails.
pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    match try_run_with_timeout(&mut cmd, IP_TIMEOUT)? {
        (Some(st), out, _) if st.success() => Ok(out),
        (Some(st), out, err) => Err(format!(
            "`ip {}` failed ({}): {}{}",
            args.join(" "),
            describe_status(&st),
            out.trim(),
            err.trim()
        )),
        (None, _, _) => Err(format!("`ip {}` hung for {IP_TIMEOUT:?}", args.join(" "))),
    }
}

/// The pids `ip netns pids NAME` lists (empty when it fails).
fn pids_in(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs everything in namespace `name` until nothing is left (at most 10 s), then
/// deletes the pair, its fallback route and the namespace. Errors are reported, not raised:
/// this runs in Drop.
pub(crate) fn destroy(name: &str, pair: Option<Pair>) {
    let start = Instant::now();
    loop {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            eprintln!("netns {name}: processes {pids:?} survive SIGKILL; deleting it anyway");
            break;
        }
        for p in pids {
            if p > 0 && p != std::process::id() as i32 {
                signal(p, libc::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut errors = Vec::new();
    if let Some(pair) = pair {
        // Deleting one end deletes the pair. The namespace's end would take it along, but
        // asynchronously, and the next pair may want this name at once.
        if let Err(e) = ip(&["link", "del", &pair.dev()]) {
            if !e.contains("Cannot find device") {
                errors.push(e);
            }
        }
        let net = pair.net();
        let route = [
            "route",
            "del",
            "unreachable",
            &net,
            "metric",
            FALLBACK_METRIC,
        ];
        if let Err(e) = ip(&route) {
            if !e.contains("No such process") {
                errors.push(e);
            }
        }
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        errors.push(e);
    }
    for e in errors {
        eprintln!("netns {name}: {e}");
    }
}

/// Deletes the namespaces (and pairs) of test processes that no longer exist (killed before
/// their Drop ran). Once per process.
fn sweep_stale() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let Ok(rd) = fs::read_dir("/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("remus-t")
                .and_then(|r| r.split_once('-'))
                .and_then(|(p, _)| p.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() as i32 || alive(pid) {
                continue;
            }
            // Its pair, from the address of the namespace's end (if it got that far).
            let pair = ip(&["-n", &name, "-4", "-o", "addr", "show", "dev", NS_DEV])
                .ok()
                .and_then(|out| {
                    let inet = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
                    Pair::of_ns_ip(inet.split('/').next()?)
                });
            eprintln!("netns: deleting {name} ({pair:?}), left by test process {pid}");
            destroy(&name, pair);
        }
    });
}

impl Netns {
    /// A new namespace and veth pair; panics saying why when it cannot be made (typically:
    /// not root, so no CAP_NET_ADMIN).
    pub fn create() -> Netns {
        Netns::try_create().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Netns::create`], with an error instead of a panic.
    pub fn try_create() -> Result<Netns, String> {
        Netns::make().map_err(|e| {
            format!(
                "cannot set up a network namespace and a veth pair: {e}\nThis test cuts a real \
                 link (a veth pair into a network namespace, set down and up): it needs root \
                 (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's `ip` (Debian: iproute2)."
            )
        })
    }

    fn make() -> Result<Netns, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        sweep_stale();
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("remus-t{pid}-{n}");
        ip(&["netns", "add", &name])?;
        // From here on, Drop cleans up whatever was made.
        let mut ns = Netns {
            name,
            pair: None,
            host_ip: String::new(),
            ns_ip: String::new(),
        };
        // Start where this process's pairs are unlikely to meet another's.
        let first = (u64::from(pid) * 64 + n) % Pair::COUNT;
        for i in 0..Pair::COUNT {
            let pair = Pair((first + i) % Pair::COUNT);
            let dev = pair.dev();
            let add = [
                "link", "add", &dev, "type", "veth", "peer", "name", NS_DEV, "netns", &ns.name,
            ];
            match ip(&add) {
                Ok(_) => {
                    ns.pair = Some(pair);
                    break;
                }
                // Another pair (of this or another test process) has that number.
                Err(e) if e.contains("File exists") => continue,
                Err(e) => return Err(format!("creating a veth pair into {}: {e}", ns.name)),
            }
        }
        let pair = ns
            .pair
            .ok_or_else(|| "all 16384 veth pair numbers are taken".to_string())?;
        let (dev, net) = (pair.dev(), pair.net());
        // Before any address: this /30 never goes out by the default route.
        ip(&[
            "route",
            "add",
            "unreachable",
            &net,
            "metric",
            FALLBACK_METRIC,
        ])?;
        ns.host_ip = pair.addr(1);
        ns.ns_ip = pair.addr(2);
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &dev])?;
        ip(&["link", "set", &dev, "up"])?;
        let ns_cidr = format!("{}/30", ns.ns_ip);
        ip(&["-n", &ns.name, "addr", "add", &ns_cidr, "dev", NS_DEV])?;
        ip(&["-n", &ns.name, "link", "set", NS_DEV, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ns.wait_carrier(true)?;
        Ok(ns)
    }

    /// The root-side end of the pair (`remus-v<k>`).
    pub fn host_dev(&self) -> String {
        self.pair.map(Pair::dev).unwrap_or_default()
    }

    /// A command that runs `prog` inside the namespace (`ip netns exec NAME prog`: `ip`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(prog);
        cmd
    }

    /// Cuts the link: the root-side end goes down, the namespace's end loses its carrier.
    /// Nothing passes either way and nothing tells either side; a new connection from the
    /// root namespace fails with "no route to host".
    pub fn link_down(&self) {
        ip(&["link", "set", &self.host_dev(), "down"]).unwrap_or_else(|e| panic!("{e}"));
        self.wait_carrier(false).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restores the link cut by [`Netns::link_down`] (its connected route comes back with it).
    pub fn link_up(&self) {
        ip(&["link", "set", &self.host_dev(), "up"]).unwrap_or_else(|e| panic!("{e}"));
        self.wait_carrier(true).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The processes running in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// Waits (at most 10 s) until the root-side end's operational state is up (or not).
    fn wait_carrier(&self, up: bool) -> Result<(), String> {
        let dev = self.host_dev();
        let path = format!("/sys/class/net/{dev}/operstate");
        let start = Instant::now();
        loop {
            let state = fs::read_to_string(&path).unwrap_or_default();
            if (state.trim() == "up") == up {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "{dev}: operstate {:?} 10 s after setting it {}",
                    state.trim(),
                    if up { "up" } else { "down" }
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name, self.pair);
    }
}

#[cfg(test)]
mod tests {
    use super::Pair;

    #[test]
    fn pair_addresses() {
        let p = Pair(65);
        assert_eq!(p.net(), "10.213.1.4/30");
        assert_eq!(p.addr(1), "10.213.1.5");
        assert_eq!(p.addr(2), "10.213.1.6");
        assert_eq!(p.dev(), "remus-v65");
        assert_eq!(Pair::of_ns_ip("10.213.1.6"), Some(p));
        let last = Pair(Pair::COUNT - 1);
        assert_eq!(last.addr(2), "10.213.255.254");
        assert_eq!(last.dev().len(), "remus-v16383".len());
        assert!(last.dev().len() <= 15, "IFNAMSIZ");
        assert_eq!(Pair::of_ns_ip("10.213.255.254"), Some(last));
        assert_eq!(Pair::of_ns_ip("10.213.1.5"), None);
    }
}
