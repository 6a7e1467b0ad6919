//! A small LAN of network namespaces for the packet-gate tests: a bridge in a namespace of
//! its own and one namespace per "host" (client, primary, standby), each joined to the bridge
//! by a veth pair whose host end is `lan0`.
//!
//! Names and addresses: namespaces `rg-<host>-<test pid>-<n>` and `rg-br-<test pid>-<n>`;
//! the LAN is `10.91.<s>.0/24` with `s` picked per LAN (1..=250), host `i` at `.i+1`; bridge
//! ports are named `rg<pid % 100000>x<n><i>`. Only 10.91.0.0/16 is used.
//!
//! Needs root and iproute2. [`Lan::create`] fails saying so. Dropping a [`Lan`] kills every
//! process left in its namespaces and deletes them (the pairs go with them); namespaces of
//! test processes that died before their drop are swept by the next LAN made.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::thread;

use crate::alive;

use crate::netns::ip;

/// Kills everything in `ns`, then deletes it (the pairs go with it).
fn destroy(ns: &str) {
    crate::netns::destroy(ns, None);
}

fn sweep_stale() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let Ok(rd) = fs::read_dir("/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("rg-") else {
                continue;
            };
            let pid = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if pid != std::process::id() as i32 && !alive(pid) {
                    eprintln!("lan: deleting {name}, left by test process {pid}");
                    destroy(&name);
                }
            }
        }
    });
}

/// The LAN; see the module docs.
pub struct Lan {
    /// The third octet of 10.91.s.0/24.
    pub subnet: u8,
    bridge: String,
    hosts: Vec<(String, String)>,
}

impl Lan {
    /// A bridge and one namespace per name in `hosts` (host `i` at `10.91.s.(i+1)`); panics
    /// saying why when it cannot be made (not root, no `ip`).
    pub fn create(hosts: &[&str]) -> Lan {
        Lan::make(hosts).unwrap_or_else(|e| {
            panic!(
                "cannot set up the test's LAN of network namespaces: {e}\nThis test runs a \
                 client, a primary and a standby host in network namespaces on a bridge: it \
                 needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's `ip`."
            )
        })
    }

    fn make(hosts: &[&str]) -> Result<Lan, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        sweep_stale();
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let subnet = ((u64::from(pid) * 7 + n * 13) % 250 + 1) as u8;
        let bridge = format!("rg-br-{pid}-{n}");
        ip(&["netns", "add", &bridge])?;
        let mut lan = Lan {
            subnet,
            bridge: bridge.clone(),
            hosts: Vec::new(),
        };
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for (i, h) in hosts.iter().enumerate() {
            let ns = format!("rg-{h}-{pid}-{n}");
            ip(&["netns", "add", &ns])?;
            lan.hosts.push((h.to_string(), ns.clone()));
            let port = format!("rg{}x{n}{i}", pid % 100000);
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "lan0",
                "netns", &ns,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", lan.addr_of(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "lan0"])?;
            ip(&["-n", &ns, "link", "set", "lan0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    fn addr_of(&self, i: usize) -> String {
        format!("10.91.{}.{}", self.subnet, i + 1)
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no host {host} on this LAN"))
    }

    /// Host `host`'s address on the LAN.
    pub fn addr(&self, host: &str) -> String {
        self.addr_of(self.index(host))
    }

    /// A free address on the LAN (`10.91.s.last`), e.g. a service address.
    pub fn spare(&self, last: u8) -> String {
        format!("10.91.{}.{last}", self.subnet)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> &str {
        &self.hosts[self.index(host)].1
    }

    /// `prog` run in `host` (`ip netns exec`: the child's pid is the program's).
    pub fn command(&self, host: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(host)]).arg(prog);
        cmd
    }

    /// Runs `f` on a thread inside `host`'s network namespace: sockets it creates live there
    /// (and stay there when handed back).
    pub fn in_host<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.ns(host));
        thread::spawn(move || {
            let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on an open namespace fd, for this thread only (CLONE_NEWNET is
            // per thread); the thread ends with the closure.
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (_, ns) in &self.hosts {
            destroy(ns);
        }
        destroy(&self.bridge);
    }
}
