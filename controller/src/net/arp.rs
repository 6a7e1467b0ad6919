//! ARP on the service device, through an `AF_PACKET` socket: an RFC 5227 probe (does anybody
//! answer for the address?) and gratuitous ARP (the address is here now).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const FRAME_LEN: usize = 42;

struct Dev {
    index: i32,
    mac: [u8; 6],
}

fn dev(name: &str) -> io::Result<Dev> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .map_err(|e| io::Error::new(e.kind(), format!("device {name}: {e}")))?;
    let mut mac = [0u8; 6];
    let parts: Vec<_> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(io::Error::other(format!(
            "device {name} has no Ethernet address"
        )));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(io::Error::other)?;
    }
    let index: i32 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    Ok(Dev { index, mac })
}

fn socket(d: &Dev) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            (ETH_P_ARP.to_be()) as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = sockaddr(d, [0; 6]);
    // SAFETY: sa is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn sockaddr(d: &Dev, to: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = d.index;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&to);
    sa
}

/// An ARP request frame, broadcast: `sender_ip` 0.0.0.0 makes it a probe, `sender_ip ==
/// target` a gratuitous ARP.
fn request(mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&sender_ip.octets());
    // target MAC zero
    f[38..42].copy_from_slice(&target.octets());
    f
}

fn send(fd: &OwnedFd, d: &Dev, frame: &[u8]) -> io::Result<()> {
    let sa = sockaddr(d, [0xff; 6]);
    // SAFETY: frame and sa are valid for the lengths given.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `count` gratuitous ARPs for `addr` from `dev`'s Ethernet address.
pub fn announce(dev_name: &str, addr: Ipv4Addr, count: u32) -> Result<(), String> {
    let d = dev(dev_name).map_err(|e| e.to_string())?;
    let fd = socket(&d).map_err(|e| format!("AF_PACKET socket on {dev_name}: {e}"))?;
    let frame = request(d.mac, addr, addr);
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        send(&fd, &d, &frame)
            .map_err(|e| format!("sending a gratuitous ARP on {dev_name}: {e}"))?;
    }
    Ok(())
}

/// Probes for `addr` on `dev` (three probes over `wait`): the Ethernet address of whoever
/// answers for it, or None.
pub fn probe(dev_name: &str, addr: Ipv4Addr, wait: Duration) -> Result<Option<[u8; 6]>, String> {
    let d = dev(dev_name).map_err(|e| e.to_string())?;
    let fd = socket(&d).map_err(|e| format!("AF_PACKET socket on {dev_name}: {e}"))?;
    let frame = request(d.mac, Ipv4Addr::UNSPECIFIED, addr);
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < wait {
        if sent < 3 && start.elapsed() >= wait / 3 * sent {
            send(&fd, &d, &frame)
                .map_err(|e| format!("sending an ARP probe on {dev_name}: {e}"))?;
            sent += 1;
        }
        let ready = crate::sys::poll_readable(&[fd.as_raw_fd()], Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        if !ready[0] {
            continue;
        }
        let mut buf = [0u8; 128];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < FRAME_LEN as isize {
                break;
            }
            // Anybody saying it has the address (a reply, or its own request or probe).
            let sender_ip = Ipv4Addr::new(buf[28], buf[29], buf[30], buf[31]);
            let sender_mac: [u8; 6] = buf[22..28].try_into().expect("6 bytes");
            if buf[12..14] == ETH_P_ARP.to_be_bytes() && sender_ip == addr && sender_mac != d.mac {
                return Ok(Some(sender_mac));
            }
        }
    }
    Ok(None)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
