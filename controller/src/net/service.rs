//! The service address: the program's own address inside its namespace, the one clients use
//! and the one that moves to the standby at a takeover.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// `ADDR/PREFIX` (IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAddr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for ServiceAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<ServiceAddr, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            format!("service address '{s}' must be ADDR/PREFIX (e.g. 10.0.0.5/24)")
        })?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("service address '{s}': '{a}' is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|&p| (1..=32).contains(&p))
            .ok_or_else(|| format!("service address '{s}': prefix '{p}' is not 1..=32"))?;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast()
        {
            return Err(format!(
                "service address '{s}' is not a unicast host address"
            ));
        }
        Ok(ServiceAddr { addr, prefix })
    }
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The device that routes to `host` (an IP, or HOST:PORT): the default `--service-dev`.
pub fn dev_towards(host: &str) -> Result<String, String> {
    let ip = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let out = super::run("ip", &["-o", "route", "get", ip])?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            if let Some(d) = words.next() {
                return Ok(d.to_string());
            }
        }
    }
    Err(format!("`ip route get {ip}` names no device: {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let s: ServiceAddr = "10.91.0.100/16".parse().unwrap();
        assert_eq!(s.addr, Ipv4Addr::new(10, 91, 0, 100));
        assert_eq!(s.prefix, 16);
        assert_eq!(s.to_string(), "10.91.0.100/16");
        for bad in [
            "10.91.0.100",
            "10.91.0.100/33",
            "x/24",
            "0.0.0.0/8",
            "127.0.0.1/8",
        ] {
            assert!(bad.parse::<ServiceAddr>().is_err(), "{bad}");
        }
    }
}
