//! A netfilter queue socket (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_QUEUE`), the few
//! messages the gate needs: bind a queue (metadata only, `NFQA_CFG_F_GSO`, no fail-open), read
//! the ids of queued packets, and accept every packet up to an id with one batch verdict.
//!
//! Written here rather than taken from the `nfq` crate: `nfq` 0.2 has no batch verdict, keeps
//! its fd private (no poll, no second thread sending verdicts while one receives), and copies
//! payloads we never read. The socket is shared: one thread receives, another sends verdicts
//! (both are single system calls on a netlink socket).
//!
//! Layouts: `include/uapi/linux/netfilter/nfnetlink_queue.h`, `nfnetlink.h`, `netlink.h`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_CFG_F_GSO: u32 = 4;
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
const NLMSG_HDR: usize = 16;
const NFGEN_HDR: usize = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
/// Socket receive buffer: a burst of queued packets' metadata (about 80 bytes each).
const RCVBUF: i32 = 8 << 20;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message: header, nfgenmsg, attributes.
struct MsgBuf(Vec<u8>);

impl MsgBuf {
    fn new(msg: u16, queue: u16, flags: u16) -> MsgBuf {
        let mut b = vec![0u8; NLMSG_HDR + NFGEN_HDR];
        b[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
        b[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        b[16] = libc::AF_UNSPEC as u8; // nfgen_family
        b[17] = 0; // NFNETLINK_V0
        b[18..20].copy_from_slice(&queue.to_be_bytes());
        MsgBuf(b)
    }
    fn attr(mut self, ty: u16, data: &[u8]) -> MsgBuf {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(align(self.0.len()), 0);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// A bound queue.
pub struct NfQueue {
    fd: OwnedFd,
    pub num: u16,
}

impl NfQueue {
    /// Opens the socket and binds queue `num` (EBUSY: another process has it).
    pub fn bind(num: u16, maxlen: u32) -> io::Result<NfQueue> {
        // SAFETY: a plain socket call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket() and is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: setsockopt with an int of the size given; failures are ignored (a smaller
        // buffer only risks ENOBUFS, which NETLINK_NO_ENOBUFS turns off, and batch verdicts
        // cover packets whose notification was lost: they go by id).
        unsafe {
            let one: i32 = 1;
            let size = std::mem::size_of::<i32>() as u32;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RCVBUF as *const i32).cast(),
                size,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_NO_ENOBUFS,
                (&one as *const i32).cast(),
                size,
            );
        }
        let q = NfQueue { fd, num };
        let mut cmd = [0u8; 4];
        cmd[0] = NFQNL_CFG_CMD_BIND;
        cmd[2..4].copy_from_slice(&(libc::AF_INET as u16).to_be_bytes());
        q.request(MsgBuf::new(NFQNL_MSG_CONFIG, num, NLM_F_ACK).attr(NFQA_CFG_CMD, &cmd))?;
        let mut params = [0u8; 5];
        params[0..4].copy_from_slice(&0u32.to_be_bytes());
        params[4] = NFQNL_COPY_META;
        q.request(
            MsgBuf::new(NFQNL_MSG_CONFIG, num, NLM_F_ACK)
                .attr(NFQA_CFG_PARAMS, &params)
                .attr(NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes())
                // GSO on (without it TCP through the queue drops to a third); fail-open off:
                // a full queue drops, it never lets a packet out early.
                .attr(NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes())
                .attr(
                    NFQA_CFG_MASK,
                    &(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN).to_be_bytes(),
                ),
        )?;
        Ok(q)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn send(&self, m: MsgBuf) -> io::Result<()> {
        let b = m.done();
        // SAFETY: b is valid for its length; a netlink socket bound to the kernel by default.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a config request and waits for its ack (packets queued meanwhile: none yet, the
    /// rule comes after the bind).
    fn request(&self, m: MsgBuf) -> io::Result<()> {
        self.send(m)?;
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0;
            while off + NLMSG_HDR <= n as usize {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                if ty == NLMSG_ERROR && off + NLMSG_HDR + 4 <= n as usize {
                    let e = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    return if e == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-e))
                    };
                }
                if len < NLMSG_HDR {
                    break;
                }
                off += align(len);
            }
        }
        Err(io::Error::other("no answer from nfnetlink_queue"))
    }

    /// Reads one batch of notifications (blocking), pushing each queued packet's id.
    pub fn recv_ids(&self, buf: &mut [u8], ids: &mut Vec<u32>) -> io::Result<()> {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS) => Ok(()),
                _ => Err(e),
            };
        }
        let n = n as usize;
        let mut off = 0;
        while off + NLMSG_HDR + NFGEN_HDR <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < NLMSG_HDR || off + len > n {
                break;
            }
            if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
                let mut a = off + NLMSG_HDR + NFGEN_HDR;
                while a + 4 <= off + len {
                    let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().expect("2")) as usize;
                    let aty = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().expect("2")) & 0x3fff;
                    if alen < 4 {
                        break;
                    }
                    if aty == NFQA_PACKET_HDR && alen >= 8 {
                        ids.push(u32::from_be_bytes(buf[a + 4..a + 8].try_into().expect("4")));
                        break;
                    }
                    a += align(alen);
                }
            }
            off += align(len);
        }
        Ok(())
    }

    /// `verdict` for every packet queued with an id up to `id` (one message).
    pub fn verdict_batch(&self, id: u32, verdict: u32) -> io::Result<()> {
        let mut vh = [0u8; 8];
        vh[0..4].copy_from_slice(&verdict.to_be_bytes());
        vh[4..8].copy_from_slice(&id.to_be_bytes());
        self.send(MsgBuf::new(NFQNL_MSG_VERDICT_BATCH, self.num, 0).attr(NFQA_VERDICT_HDR, &vh))
    }
}
