//! A TCP segment from the peer, injected into a rebuilt socket (CRIU's soccr does the same with
//! libnet): the only way to put the peer's FIN back (the peer will not send it again, it was
//! acknowledged) and to acknowledge a FIN of ours the peer had acknowledged already.
//!
//! The segment goes out through a raw IPv4 socket with `IP_HDRINCL` (which allows a source
//! address that is not local) to the rebuilt socket's own address, which must be local by
//! then: it is routed to loopback and delivered, with no route lookup on input and so no
//! reverse-path filter. The rebuilt socket answers with an ACK the peer had already seen.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use super::sys;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_ACK: u8 = 0x10;

/// The segment the peer would have sent: `from` → `to`, with `seq`, `ack`, `flags` and the
/// 16-bit window field `window`, no options, no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

/// The one's-complement sum of `data` as 16-bit big-endian words, folded.
fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The IPv4 header (20 bytes) and TCP header (20 bytes) of `s`, checksums filled in.
pub fn encode(s: &Segment) -> [u8; 40] {
    let mut p = [0u8; 40];
    let (src, dst) = (s.from.ip().octets(), s.to.ip().octets());
    // IPv4: version 4, IHL 5, total length 40, DF, TTL 64, protocol TCP.
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let ip_sum = !(ones_sum(0, &p[..20]) as u16);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP: ports, seq, ack, data offset 5, flags, window.
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&s.from.port().to_be_bytes());
    t[2..4].copy_from_slice(&s.to.port().to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    t[8..12].copy_from_slice(&s.ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = s.flags;
    t[14..16].copy_from_slice(&s.window.to_be_bytes());
    // Pseudo-header: source, destination, zero, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let sum = !(ones_sum(ones_sum(0, &pseudo), t) as u16);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Sends `s` through a raw socket of the calling thread's network namespace.
pub fn send(s: &Segment) -> io::Result<()> {
    let raw = sys::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    let pkt = encode(s);
    let to = sys::RawAddr::new(&SocketAddr::V4(SocketAddrV4::new(*s.to.ip(), 0)));
    // SAFETY: pkt and `to` are valid for their lengths for the duration of the call.
    let n = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            to.as_ptr(),
            to.len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != pkt.len() {
        return Err(io::Error::other(format!(
            "raw send wrote {n} of {} bytes",
            pkt.len()
        )));
    }
    Ok(())
}

/// The IPv4 addresses of a connection, or None for IPv6 (not injectable here).
pub fn v4_pair(local: SocketAddr, remote: SocketAddr) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let v4 = |a: SocketAddr| match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip: Ipv4Addr| SocketAddrV4::new(ip, a.port())),
    };
    Some((v4(local)?, v4(remote)?))
}
