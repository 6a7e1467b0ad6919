//! TCP connection state dumped on a "primary" and rebuilt on a "standby" (issue 12, DESIGN §9,
//! `remus_controller::tcp`), on real connections between network namespaces this test makes.
//!
//! Each scenario has three namespaces, `rt-<pid>-<n>-{c,p,s}`: a client, a primary holding the
//! server's socket, and a standby. The client (`10.92.<n>.1`) reaches the service address
//! (`10.92.<n>.100`) over a veth pair into the primary. With data in flight both ways, the
//! server's socket is dumped; then iptables in the primary drops everything and the primary
//! side is closed and its veth deleted (no RST reaches the client); a veth pair from the
//! client to the standby takes the client's address, the socket is rebuilt in the standby in
//! repair mode, the service address comes up there, and repair is finished. The client's same
//! socket then carries on: every byte of both streams arrives exactly once, in order
//! (each stream is a pattern that depends on the offset, checked byte by byte, and its total
//! length is checked at EOF).
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2's `ip` and `iptables`: without them the
//! tests fail saying so. Namespaces are deleted when a scenario ends, also when it panics, and
//! those left by a killed test process are swept by the next run.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use remus::{alive, require_program, signal, try_run_with_timeout, wait_for};
use remus_controller::tcp::{self, TcpConnState, TcpState};

/// How long any one read or write in a scenario may block before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const PORT: u16 = 7000;

// ---- the namespaces --------------------------------------------------------------------

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    match try_run_with_timeout(&mut cmd, Duration::from_secs(10))? {
        (Some(st), out, _) if st.success() => Ok(out),
        (st, out, err) => Err(format!(
            "`{prog} {}` failed ({st:?}): {}{}",
            args.join(" "),
            out.trim(),
            err.trim()
        )),
    }
}

#[track_caller]
fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Deletes namespaces left by test processes of this file that no longer exist.
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("rt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !alive(pid) {
            eprintln!("tcp_repair: deleting {name}, left by test process {pid}");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A client, a primary and a standby namespace; the client is linked to the primary.
struct Topo {
    n: u64,
    client: String,
    primary: String,
    standby: String,
}

impl Topo {
    fn new() -> Topo {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "tcp_repair needs root (CAP_NET_ADMIN for TCP_REPAIR and network namespaces); \
             run the tests as root"
        );
        require_program("ip", "iproute2");
        require_program("iptables", "iptables");
        static N: AtomicU64 = AtomicU64::new(0);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale);
        let n = N.fetch_add(1, Ordering::Relaxed) % 250;
        let pid = std::process::id();
        let name = |r: &str| format!("rt-{pid}-{n}-{r}");
        let t = Topo {
            n,
            client: name("c"),
            primary: name("p"),
            standby: name("s"),
        };
        for ns in [&t.client, &t.primary, &t.standby] {
            must(ip(&["netns", "add", ns]));
            must(ip(&["-n", ns, "link", "set", "lo", "up"]));
        }
        must(ip(&[
            "-n", &t.client, "link", "add", "c0", "type", "veth", "peer", "name", "p0", "netns",
            &t.primary,
        ]));
        must(ip(&[
            "-n",
            &t.client,
            "addr",
            "add",
            &format!("{}/24", t.client_ip()),
            "dev",
            "c0",
        ]));
        must(ip(&["-n", &t.client, "link", "set", "c0", "up"]));
        must(ip(&[
            "-n",
            &t.primary,
            "addr",
            "add",
            &format!("{}/24", t.service_ip()),
            "dev",
            "p0",
        ]));
        must(ip(&["-n", &t.primary, "link", "set", "p0", "up"]));
        t
    }

    fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 92, self.n as u8, 1)
    }
    fn service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 92, self.n as u8, 100)
    }
    fn service(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.service_ip(), PORT))
    }

    /// iptables in the primary namespace.
    fn primary_iptables(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.primary, "iptables", "-w"];
        all.extend_from_slice(args);
        must(ip(&all));
    }

    /// What the packet gate does at a checkpoint, for the test: from here nothing the
    /// primary sends reaches the client (the gate releases only what epochs up to the
    /// checkpoint produced, and the failover discards the rest), nor does anything reach it.
    /// Must come before the dump: the kernel may send on its own after it (a tail-loss probe
    /// carries new data), and the client must not see what the dump does not count as sent.
    fn freeze_primary(&self) {
        self.primary_iptables(&["-I", "OUTPUT", "-j", "DROP"]);
        self.primary_iptables(&["-I", "INPUT", "-j", "DROP"]);
    }

    /// The primary dies without a word: its sockets are closed (a RST is dropped by the
    /// rules of [`Topo::freeze_primary`]), its link deleted.
    fn kill_primary(&self, socks: Vec<OwnedFd>) {
        self.primary_iptables(&["-I", "OUTPUT", "-j", "DROP"]);
        drop(socks);
        must(ip(&["-n", &self.primary, "link", "del", "p0"]));
    }

    /// The client's link moves to the standby (its address on a new veth), the standby's end
    /// up but without the service address yet.
    fn link_standby(&self) {
        must(ip(&[
            "-n",
            &self.client,
            "link",
            "add",
            "c1",
            "type",
            "veth",
            "peer",
            "name",
            "s0",
            "netns",
            &self.standby,
        ]));
        must(ip(&[
            "-n",
            &self.client,
            "addr",
            "add",
            &format!("{}/24", self.client_ip()),
            "dev",
            "c1",
        ]));
        must(ip(&["-n", &self.client, "link", "set", "c1", "up"]));
        // The standby host's own address on that network (its route to the client: a
        // connect, even in repair mode, needs one).
        let own = format!("{}/24", Ipv4Addr::new(10, 92, self.n as u8, 2));
        must(ip(&["-n", &self.standby, "addr", "add", &own, "dev", "s0"]));
        must(ip(&["-n", &self.standby, "link", "set", "s0", "up"]));
    }

    fn standby_address_up(&self) {
        must(ip(&[
            "-n",
            &self.standby,
            "addr",
            "add",
            &format!("{}/24", self.service_ip()),
            "dev",
            "s0",
        ]));
    }

    /// Rebuilds `st` in the standby, brings the service address up, finishes.
    fn rebuild_on_standby(&self, st: &TcpConnState) -> TcpStream {
        self.link_standby();
        let st = st.clone();
        let repairing = in_ns(&self.standby, move || tcp::rebuild(&st)).expect("rebuild");
        self.standby_address_up();
        let fd = in_ns(&self.standby, move || repairing.finish()).expect("finish");
        let s = TcpStream::from(fd);
        // Sockets the test made had these set, and they come back with the others; a real
        // program's may have none.
        if s.read_timeout().unwrap().is_none() {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        }
        if s.write_timeout().unwrap().is_none() {
            s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        }
        s
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.client, &self.primary, &self.standby] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("tcp_repair: {e}");
            }
        }
    }
}

/// Runs `f` on a thread that joined network namespace `ns`: sockets it creates live there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns takes a descriptor and a flag; it changes only this thread's network
        // namespace, and this thread ends after `f`.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

// ---- the streams -------------------------------------------------------------------------

/// Byte `i` of stream `s`: a function of the offset, so a lost, repeated or reordered byte
/// shows at the first offset where it happens.
fn pat(s: u8, i: u64) -> u8 {
    let mut x = (i / 8) ^ (u64::from(s) << 56);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((i % 8) * 8)) as u8
}

fn chunk(s: u8, from: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|k| pat(s, from + k)).collect()
}

/// One direction of a connection: what was written and what was read and checked.
struct Stream {
    id: u8,
    written: u64,
    read: u64,
}

impl Stream {
    fn new(id: u8) -> Stream {
        Stream {
            id,
            written: 0,
            read: 0,
        }
    }

    fn write(&mut self, w: &mut impl Write, len: usize) {
        w.write_all(&chunk(self.id, self.written, len))
            .unwrap_or_else(|e| panic!("stream {}: write at {}: {e}", self.id, self.written));
        self.written += len as u64;
    }

    /// Writes without blocking until the socket takes no more (at most `max` bytes).
    fn write_until_full(&mut self, s: &TcpStream, max: usize) -> usize {
        s.set_nonblocking(true).unwrap();
        let mut total = 0;
        while total < max {
            let buf = chunk(self.id, self.written, (max - total).min(65536));
            match (&*s).write(&buf) {
                Ok(n) => {
                    self.written += n as u64;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("stream {}: write: {e}", self.id),
            }
        }
        s.set_nonblocking(false).unwrap();
        total
    }

    /// Reads exactly `len` bytes and checks them.
    fn read(&mut self, r: &mut impl Read, len: usize) {
        let mut buf = vec![0; len];
        r.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("stream {}: read at {}: {e}", self.id, self.read));
        self.check(&buf);
    }

    fn check(&mut self, buf: &[u8]) {
        for (k, b) in buf.iter().enumerate() {
            let at = self.read + k as u64;
            assert_eq!(
                *b,
                pat(self.id, at),
                "stream {}: wrong byte at offset {at}",
                self.id
            );
        }
        self.read += buf.len() as u64;
    }

    /// Reads to EOF, checking; then the totals must agree: every byte exactly once.
    fn read_to_eof(&mut self, r: &mut impl Read) {
        self.drain(r);
        assert_eq!(
            self.read, self.written,
            "stream {}: bytes read at EOF",
            self.id
        );
    }

    /// Reads to EOF, checking every byte; the total is `self.read`.
    fn drain(&mut self, r: &mut impl Read) {
        let mut buf = vec![0; 1 << 16];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.check(&buf[..n]),
                // A blocking socket read with a timeout answers EINTR, not a restart.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("stream {}: read at {}: {e}", self.id, self.read),
            }
        }
    }
}

// ---- helpers on sockets ------------------------------------------------------------------

fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> u32 {
    let mut v: libc::c_int = 0;
    // SAFETY: FIONREAD-style requests write one int through a valid pointer.
    let r = unsafe { libc::ioctl(fd, req as _, &mut v) };
    assert_eq!(r, 0, "ioctl: {}", io::Error::last_os_error());
    v as u32
}

/// The kernel's TCP state number of `fd` (`tcpi_state`).
fn kernel_state(fd: RawFd) -> u8 {
    let mut b = [0u8; 8];
    let mut len = 8 as libc::socklen_t;
    // SAFETY: b is 8 writable bytes; the kernel writes at most len.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", io::Error::last_os_error());
    b[0]
}

const ESTABLISHED: u8 = 1;
const SYN_SENT: u8 = 2;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const CLOSING: u8 = 11;

/// `tcpi_snd_mss`: the segment size the socket sends with.
fn snd_mss(fd: RawFd) -> u32 {
    let mut b = [0u8; 24];
    let mut len = 24 as libc::socklen_t;
    // SAFETY: b is 24 writable bytes; the kernel writes at most len.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", io::Error::last_os_error());
    u32::from_ne_bytes([b[16], b[17], b[18], b[19]])
}

/// Waits until `fd`'s receive queue holds `n` bytes.
fn wait_inq(fd: RawFd, n: u32) {
    wait_for(
        &format!("{n} bytes in the receive queue"),
        IO_TIMEOUT,
        &|| format!("SIOCINQ = {}", ioctl_int(fd, libc::FIONREAD as _)),
        || (ioctl_int(fd, libc::FIONREAD as _) == n).then_some(()),
    );
}

/// Waits until `fd` is in kernel state `state`.
fn wait_state(fd: RawFd, state: u8) {
    wait_for(
        &format!("TCP state {state}"),
        IO_TIMEOUT,
        &|| format!("state = {}", kernel_state(fd)),
        || (kernel_state(fd) == state).then_some(()),
    );
}

/// The controller's duplicate of `fd` (pidfd_getfd on this process, as remusd does on the app).
fn controller_dup(fd: RawFd) -> OwnedFd {
    tcp::dup_from(std::process::id() as i32, fd).unwrap_or_else(|(s, e)| panic!("{s}: {e}"))
}

/// A client connected to a listener in the primary, and the server's accepted socket.
fn connect(t: &Topo, client_rcvbuf: Option<i32>) -> (TcpStream, TcpStream) {
    let svc = t.service();
    let listener = in_ns(&t.primary, move || {
        TcpListener::bind(svc).expect("bind the service")
    });
    let client = in_ns(&t.client, move || {
        // SAFETY: socket takes integers; the descriptor is owned by the TcpStream below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        if let Some(b) = client_rcvbuf {
            // Before connect, so that the window scale is negotiated for it.
            // SAFETY: b is a valid int for the duration of the call.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&b as *const i32).cast(),
                    4,
                )
            };
            assert_eq!(r, 0);
        }
        // SAFETY: fd is a fresh socket nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        socket_connect(owned, svc)
    });
    let (server, from) = listener.accept().expect("accept");
    assert_eq!(from.ip(), std::net::IpAddr::V4(t.client_ip()));
    for s in [&client, &server] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    (client, server)
}

fn socket_connect(fd: OwnedFd, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        unreachable!()
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sin is a valid sockaddr_in of the size passed.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(r, 0, "connect {to}: {}", io::Error::last_os_error());
    TcpStream::from(fd)
}

/// SO_SNDBUFFORCE (root: past net.core.wmem_max).
fn set_sndbuf(s: &TcpStream, v: i32) {
    // SAFETY: v is a valid int for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&v as *const i32).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "SO_SNDBUFFORCE: {}", io::Error::last_os_error());
}

/// SO_RCVBUFFORCE (root: past net.core.rmem_max).
fn set_rcvbuf(s: &TcpStream, v: i32) {
    // SAFETY: v is a valid int for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const i32).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
}

/// Reads `s` to EOF on a thread, checking stream `id` from offset `from`; joins to the total.
fn spawn_drain(s: &TcpStream, id: u8, from: u64) -> thread::JoinHandle<u64> {
    let mut r = s.try_clone().expect("clone");
    thread::spawn(move || {
        let mut st = Stream {
            id,
            written: 0,
            read: from,
        };
        st.drain(&mut r);
        st.read
    })
}

/// Dumps through the controller's duplicate, printing what it took.
fn dump_timed(s: &TcpStream, what: &str) -> TcpConnState {
    let dup = controller_dup(s.as_raw_fd());
    let t = Instant::now();
    let st = tcp::dump(&dup).unwrap_or_else(|e| panic!("dump: {e}"));
    eprintln!(
        "{what}: dump took {:?} ({:?}, recv {} B, send {} B of which {} unsent)",
        t.elapsed(),
        st.state,
        st.recv.bytes.len(),
        st.send.bytes.len(),
        st.send.unsent
    );
    st
}

// ---- the scenarios -------------------------------------------------------------------------

/// ESTABLISHED with unread bytes in the server's receive queue, sent-but-unacknowledged and
/// unsent bytes in its send queue, and client bytes the primary never received.
#[test]
fn established_connection_survives_with_data_in_flight_both_ways() {
    let t = Topo::new();
    let (mut client, mut server) = connect(&t, Some(128 * 1024));
    set_sndbuf(&server, 512 * 1024);
    set_rcvbuf(&server, 1 << 20);
    let (mut up, mut down) = (Stream::new(1), Stream::new(2));
    let (mut server_up, mut client_down) = (Stream::new(1), Stream::new(2));

    up.write(&mut client, 100_000);
    server_up.read(&mut server, 30_000);
    wait_inq(server.as_raw_fd(), 70_000);
    down.write(&mut server, 50_000);
    client_down.read(&mut client, 20_000);

    // From here the primary hears nothing: what it sends stays unacknowledged, and what the
    // client sends now never reaches it.
    t.primary_iptables(&["-I", "INPUT", "-j", "DROP"]);
    let queued = down.write_until_full(&server, 4 << 20);
    up.write(&mut client, 40_000);
    let reuse_before = getsockopt_int(server.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR);
    server
        .set_read_timeout(Some(Duration::from_millis(19_500)))
        .unwrap();
    server.set_nodelay(true).unwrap();

    t.freeze_primary();
    let st = dump_timed(&server, "established");
    assert_eq!(st.state, TcpState::Established);
    assert_eq!(st.local, t.service());
    assert_eq!(
        st.recv.bytes,
        chunk(1, 30_000, 70_000),
        "the receive queue: unread bytes"
    );
    let send_from = down.written - st.send.bytes.len() as u64;
    assert_eq!(
        st.send.bytes,
        chunk(2, send_from, st.send.bytes.len()),
        "the send queue"
    );
    assert!(
        !st.send.sent_part().is_empty() && st.send.unsent > 0,
        "wanted both unacknowledged and unsent bytes (queued {queued}): {} sent, {} unsent",
        st.send.sent_part().len(),
        st.send.unsent
    );
    assert_eq!(
        getsockopt_int(server.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR),
        reuse_before,
        "SO_REUSEADDR after the dump"
    );
    assert_eq!(
        kernel_state(server.as_raw_fd()),
        1,
        "still ESTABLISHED after the dump"
    );

    let mss_before = snd_mss(server.as_raw_fd());
    t.kill_primary(vec![server.into()]);
    let mut server = t.rebuild_on_standby(&st);
    assert_eq!(
        snd_mss(server.as_raw_fd()),
        mss_before,
        "the rebuilt socket's segment size"
    );
    assert_eq!(st.sockopts.rcvtimeo, (19, 500_000), "SO_RCVTIMEO dumped");
    assert_eq!(
        server.read_timeout().unwrap(),
        Some(Duration::from_millis(19_500))
    );
    assert!(server.nodelay().unwrap(), "TCP_NODELAY came back");
    let again = tcp::dump(controller_dup(server.as_raw_fd())).expect("dump the rebuilt socket");
    assert_eq!(again.sockopts, st.sockopts, "every socket option came back");

    let server_reader = spawn_drain(&server, 1, server_up.read);
    let client_reader = spawn_drain(&client, 2, client_down.read);
    up.write(&mut client, 60_000);
    client.shutdown(Shutdown::Write).unwrap();
    down.write(&mut server, 100_000);
    server.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        server_reader.join().unwrap(),
        up.written,
        "client -> server, at EOF"
    );
    assert_eq!(
        client_reader.join().unwrap(),
        down.written,
        "server -> client, at EOF"
    );
    assert_eq!(up.written, 200_000);
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: v is a valid int out-pointer of the size passed.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    assert_eq!(r, 0);
    v
}

/// CLOSE_WAIT: the client shut down its side; unread bytes and the client's FIN are in the
/// server's receive side, and the server's unacknowledged reply in its send queue. After the
/// rebuild the server reads the rest and then EOF, and its reply and FIN reach the client.
#[test]
fn half_closed_by_the_client_close_wait() {
    let t = Topo::new();
    let (mut client, mut server) = connect(&t, None);
    set_rcvbuf(&server, 1 << 20);
    let (mut up, mut down) = (Stream::new(3), Stream::new(4));
    up.write(&mut client, 50_000);
    client.shutdown(Shutdown::Write).unwrap();
    let mut server_up = Stream::new(3);
    server_up.read(&mut server, 10_000);
    wait_state(server.as_raw_fd(), CLOSE_WAIT);
    wait_inq(server.as_raw_fd(), 40_000);
    t.primary_iptables(&["-I", "INPUT", "-j", "DROP"]);
    down.write(&mut server, 30_000);

    t.freeze_primary();
    let st = dump_timed(&server, "close-wait");
    assert_eq!(st.state, TcpState::CloseWait);
    assert_eq!(st.recv.bytes, chunk(3, 10_000, 40_000));
    assert_eq!(
        st.send.bytes,
        chunk(4, 0, 30_000),
        "the reply, unacknowledged"
    );
    t.kill_primary(vec![server.into()]);
    let mut server = t.rebuild_on_standby(&st);
    wait_state(server.as_raw_fd(), CLOSE_WAIT);

    let client_reader = spawn_drain(&client, 4, 0);
    server_up.written = up.written;
    server_up.read_to_eof(&mut server);
    down.write(&mut server, 20_000);
    server.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        client_reader.join().unwrap(),
        down.written,
        "server -> client, at EOF"
    );
}

/// FIN_WAIT2: the server shut down its side and the client acknowledged the FIN; the client
/// keeps sending. After the rebuild the server is in FIN_WAIT2 again and reads everything.
#[test]
fn half_closed_by_the_server_fin_wait2() {
    let t = Topo::new();
    let (mut client, mut server) = connect(&t, None);
    set_rcvbuf(&server, 1 << 20);
    let (mut up, mut down) = (Stream::new(5), Stream::new(6));
    down.write(&mut server, 40_000);
    server.shutdown(Shutdown::Write).unwrap();
    wait_state(server.as_raw_fd(), FIN_WAIT2);
    up.write(&mut client, 60_000);
    let mut server_up = Stream::new(5);
    server_up.read(&mut server, 10_000);
    wait_inq(server.as_raw_fd(), 50_000);

    t.freeze_primary();
    let st = dump_timed(&server, "fin-wait2");
    assert_eq!(st.state, TcpState::FinWait2);
    assert!(st.send.bytes.is_empty());
    assert_eq!(st.recv.bytes, chunk(5, 10_000, 50_000));
    t.kill_primary(vec![server.into()]);
    let server = t.rebuild_on_standby(&st);
    wait_state(server.as_raw_fd(), FIN_WAIT2);

    let mut client_down = Stream::new(6);
    client_down.written = down.written;
    client_down.read_to_eof(&mut client);
    let server_reader = spawn_drain(&server, 5, server_up.read);
    up.write(&mut client, 40_000);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        server_reader.join().unwrap(),
        up.written,
        "client -> server, at EOF"
    );
    // Nothing more may be written by the server: it had shut down.
    assert!(
        (&server).write(b"x").is_err(),
        "the rebuilt socket accepted a write after its FIN"
    );
}

/// FIN_WAIT1: the server wrote and shut down while the primary heard nothing more, so its
/// data and FIN are unacknowledged: with 30 000 bytes the congestion window keeps part of the
/// data and the FIN unsent; with 1 000 bytes both went out.
#[test]
fn half_closed_by_the_server_fin_wait1_unacknowledged() {
    for (len, fin_sent) in [(30_000, None), (1_000, Some(true))] {
        let t = Topo::new();
        let (mut client, mut server) = connect(&t, None);
        let mut down = Stream::new(7);
        down.write(&mut server, 10_000);
        let mut client_down = Stream::new(7);
        client_down.read(&mut client, 10_000);
        t.primary_iptables(&["-I", "INPUT", "-j", "DROP"]);
        down.write(&mut server, len);
        server.shutdown(Shutdown::Write).unwrap();

        t.freeze_primary();
        let st = dump_timed(&server, &format!("fin-wait1 ({len} B)"));
        assert_eq!(st.state, TcpState::FinWait1);
        assert_eq!(st.send.bytes, chunk(7, 10_000, len));
        eprintln!("fin-wait1: our FIN sent: {}", !st.send.fin_unsent);
        if let Some(sent) = fin_sent {
            assert_eq!(!st.send.fin_unsent, sent, "was our FIN sent?");
            assert_eq!(st.send.unsent, 0);
        }
        t.kill_primary(vec![server.into()]);
        let mut server = t.rebuild_on_standby(&st);

        client_down.written = down.written;
        client_down.read_to_eof(&mut client);
        let mut up = Stream::new(8);
        up.write(&mut client, 20_000);
        client.shutdown(Shutdown::Write).unwrap();
        let mut server_up = Stream::new(8);
        server_up.written = up.written;
        server_up.read_to_eof(&mut server);
    }
}

/// LAST_ACK: the client shut down, the server read to EOF, replied and shut down, and the
/// primary heard nothing after: the reply and the server's FIN reach the client after the
/// rebuild (the client's FIN, acknowledged by the primary, is injected back).
#[test]
fn both_closed_last_ack() {
    let t = Topo::new();
    let (mut client, mut server) = connect(&t, None);
    let (mut up, mut down) = (Stream::new(13), Stream::new(14));
    up.write(&mut client, 5_000);
    client.shutdown(Shutdown::Write).unwrap();
    let mut server_up = Stream::new(13);
    server_up.written = up.written;
    server_up.read_to_eof(&mut server);
    t.primary_iptables(&["-I", "INPUT", "-j", "DROP"]);
    down.write(&mut server, 20_000);
    server.shutdown(Shutdown::Write).unwrap();

    t.freeze_primary();
    let st = dump_timed(&server, "last-ack");
    assert_eq!(st.state, TcpState::LastAck);
    assert!(st.recv.bytes.is_empty());
    t.kill_primary(vec![server.into()]);
    let mut server = t.rebuild_on_standby(&st);
    assert_eq!(
        read_some(&mut server),
        "",
        "the rebuilt socket has the client's FIN"
    );

    let mut client_down = Stream::new(14);
    client_down.written = down.written;
    client_down.read_to_eof(&mut client);
}

/// CLOSING: both sides shut down at once. The primary's data and FIN never reached the
/// client, but its ACK of the client's FIN did (the client is in FIN_WAIT2 and will not send
/// its FIN again): the rebuild must put the client's FIN back itself. After it the client gets
/// the server's data and FIN, and the server reads the client's data and EOF.
#[test]
fn both_closed_simultaneously_closing() {
    let t = Topo::new();
    let (mut client, mut server) = connect(&t, None);
    let (mut up, mut down) = (Stream::new(15), Stream::new(16));
    up.write(&mut client, 8_000);
    let mut server_up = Stream::new(15);
    server_up.read(&mut server, 8_000);
    // Only the server's pure ACKs go out (no FIN, no payload: 52 bytes with timestamps).
    t.primary_iptables(&[
        "-I",
        "OUTPUT",
        "-p",
        "tcp",
        "--tcp-flags",
        "FIN",
        "FIN",
        "-j",
        "DROP",
    ]);
    t.primary_iptables(&[
        "-I", "OUTPUT", "-p", "tcp", "-m", "length", "--length", "53:65535", "-j", "DROP",
    ]);
    down.write(&mut server, 3_000);
    server.shutdown(Shutdown::Write).unwrap();
    up.write(&mut client, 2_000);
    client.shutdown(Shutdown::Write).unwrap();
    wait_state(server.as_raw_fd(), CLOSING);
    wait_state(client.as_raw_fd(), FIN_WAIT2);
    wait_inq(server.as_raw_fd(), 2_000);

    t.freeze_primary();
    let st = dump_timed(&server, "closing");
    assert_eq!(st.state, TcpState::Closing);
    assert_eq!(st.recv.bytes, chunk(15, 8_000, 2_000));
    assert_eq!(st.send.bytes, chunk(16, 0, 3_000));
    t.kill_primary(vec![server.into()]);
    let mut server = t.rebuild_on_standby(&st);
    server_up.written = up.written;
    server_up.read_to_eof(&mut server);
    let mut client_down = Stream::new(16);
    client_down.written = down.written;
    client_down.read_to_eof(&mut client);
}

/// SYN_SENT: the primary's own connection attempt (to a listener on the client's side) got
/// no answer through (the SYN-ACK was dropped). Rebuilt on the standby, it sends the SYN again
/// with the same initial sequence number, completes with the listener's request, and carries
/// data both ways.
#[test]
fn connection_being_set_up_syn_sent() {
    let t = Topo::new();
    let client_addr = SocketAddr::V4(SocketAddrV4::new(t.client_ip(), 9100));
    let listener = in_ns(&t.client, move || {
        TcpListener::bind(client_addr).expect("bind")
    });
    let svc = t.service();
    t.primary_iptables(&["-I", "INPUT", "-j", "DROP"]);
    let connecting = in_ns(&t.primary, move || {
        // SAFETY: socket takes integers; the descriptor is owned by the OwnedFd below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh socket nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        socket2_bind_connect(fd, svc, client_addr)
    });
    wait_state(connecting.as_raw_fd(), SYN_SENT);
    t.freeze_primary();
    let st = tcp::dump(controller_dup(connecting.as_raw_fd())).expect("dump");
    assert_eq!(st.state, TcpState::SynSent);
    assert_eq!((st.local, st.remote), (svc, client_addr));
    t.kill_primary(vec![connecting]);
    let mut s = t.rebuild_on_standby(&st);
    s.set_nonblocking(false).unwrap();
    let (mut peer, from) = listener
        .accept()
        .expect("the listener accepts the rebuilt connection");
    assert_eq!(from, svc);
    peer.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    wait_state(s.as_raw_fd(), ESTABLISHED);
    let (mut a, mut b) = (Stream::new(17), Stream::new(18));
    a.write(&mut s, 10_000);
    s.shutdown(Shutdown::Write).unwrap();
    let mut pa = Stream::new(17);
    pa.written = a.written;
    pa.read_to_eof(&mut peer);
    b.write(&mut peer, 10_000);
    peer.shutdown(Shutdown::Write).unwrap();
    let mut sb = Stream::new(18);
    sb.written = b.written;
    sb.read_to_eof(&mut s);
}

/// Binds `fd` to `local` and starts a non-blocking connect to `remote`.
fn socket2_bind_connect(fd: OwnedFd, local: SocketAddr, remote: SocketAddr) -> OwnedFd {
    let sin = |a: SocketAddr| {
        let SocketAddr::V4(a) = a else { unreachable!() };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let (l, r) = (sin(local), sin(remote));
    // SAFETY: l is a valid sockaddr_in of the size passed.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&l as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(rc, 0, "bind {local}: {}", io::Error::last_os_error());
    // SAFETY: r is a valid sockaddr_in of the size passed.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&r as *const libc::sockaddr_in).cast(), len) };
    let e = io::Error::last_os_error();
    assert!(
        rc == 0 || e.raw_os_error() == Some(libc::EINPROGRESS),
        "connect: {e}"
    );
    fd
}

/// Megabytes queued both ways: neither side reads while the server's socket is dumped.
#[test]
fn large_queues_both_ways() {
    let t = Topo::new();
    let (mut client, server) = connect(&t, None);
    set_sndbuf(&server, 8 << 20);
    set_rcvbuf(&server, 8 << 20);
    set_sndbuf(&client, 4 << 20);
    let (mut up, mut down) = (Stream::new(9), Stream::new(10));
    // 3 MB from the client that the server has not read (the window opens as data comes).
    const UP: usize = 3_000_000;
    let mut sent_up = 0;
    for _ in 0..500 {
        sent_up += up.write_until_full(&client, UP - sent_up);
        if sent_up >= UP {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sent_up, UP, "the client could not queue 3 MB");
    wait_inq(server.as_raw_fd(), UP as u32);
    let queued = down.write_until_full(&server, 6 << 20);
    assert!(queued > 2 << 20, "the server queued only {queued} bytes");

    t.freeze_primary();
    let st = dump_timed(&server, "large");
    assert_eq!(st.recv.bytes.len(), UP);
    assert!(
        st.send.bytes.len() > 2 << 20,
        "{} bytes in the send queue",
        st.send.bytes.len()
    );
    t.kill_primary(vec![server.into()]);
    let mut server = t.rebuild_on_standby(&st);

    let server_reader = spawn_drain(&server, 9, 0);
    let client_reader = spawn_drain(&client, 10, 0);
    down.write(&mut server, 1_000_000);
    server.shutdown(Shutdown::Write).unwrap();
    up.write(&mut client, 100_000);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        server_reader.join().unwrap(),
        up.written,
        "client -> server, at EOF"
    );
    assert_eq!(
        client_reader.join().unwrap(),
        down.written,
        "server -> client, at EOF"
    );
}

/// The dump's cost per socket, idle and with 64 KB in the receive queue (printed; each value
/// is the median of 50 dumps of one socket). Every dump must leave the socket working.
#[test]
fn dump_cost_per_socket() {
    let t = Topo::new();
    let (mut client, mut server) = connect(&t, None);
    let median = |s: &TcpStream, what: &str| {
        let dup = controller_dup(s.as_raw_fd());
        let mut v: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let st = tcp::dump(&dup).unwrap_or_else(|e| panic!("dump: {e}"));
                let d = t.elapsed();
                assert_eq!(st.state, TcpState::Established);
                d
            })
            .collect();
        v.sort();
        eprintln!(
            "dump cost per socket, {what}: median {:?}, max {:?} (50 dumps)",
            v[25], v[49]
        );
    };
    median(&server, "idle");
    let mut up = Stream::new(11);
    up.write(&mut client, 65_536);
    wait_inq(server.as_raw_fd(), 65_536);
    median(&server, "64 KB receive queue");
    let mut server_up = Stream::new(11);
    server_up.read(&mut server, 65_536);
    let mut down = Stream::new(12);
    down.write(&mut server, 1000);
    let mut client_down = Stream::new(12);
    client_down.read(&mut client, 1000);
}

/// Dumps taken while data keeps arriving (repair mode does not stop reception) are each
/// consistent: the dumped receive queue is exactly the stream's bytes from what the app has
/// read up to the dumped sequence number. The client writes flat out; between dumps the
/// server reads what has come (as the app does between pauses; the kernel never pauses).
#[test]
fn dumps_while_data_arrives_are_consistent() {
    let t = Topo::new();
    let (client, server) = connect(&t, None);
    let dup = controller_dup(server.as_raw_fd());
    let base = tcp::dump(&dup).expect("dump").recv.seq;
    const TOTAL: usize = 16 << 20;
    let writer = thread::spawn(move || {
        let mut c = client;
        let mut up = Stream::new(19);
        for _ in 0..TOTAL / 16384 {
            up.write(&mut c, 16384);
        }
        c.shutdown(Shutdown::Write).unwrap();
        c
    });
    let mut reader = Stream::new(19);
    let (mut dumps, mut nonempty) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    server.set_nonblocking(true).unwrap();
    for _ in 0..1_000_000 {
        let st = tcp::dump(&dup).expect("dump while data arrives");
        let len = st.recv.bytes.len() as u64;
        let start = u64::from(st.recv.seq.wrapping_sub(base)) - len;
        assert_eq!(
            start, reader.read,
            "dump {dumps}: the queue starts where the app read"
        );
        assert_eq!(
            st.recv.bytes,
            chunk(19, start, len as usize),
            "dump {dumps}: the queue's bytes"
        );
        dumps += 1;
        nonempty += u64::from(len > 0);
        match (&server).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reader.check(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let _client = writer.join().unwrap();
    eprintln!("{dumps} dumps while {TOTAL} bytes arrived, {nonempty} with unread bytes");
    assert_eq!(
        reader.read, TOTAL as u64,
        "every byte read once, through all the dumps"
    );
    assert!(nonempty > 1, "no dump saw unread bytes ({dumps} dumps)");
}

/// Dumps of a queue that grows to megabytes while segments keep arriving at a steady rate
/// converge (a dump that waited for rcv_nxt to hold still across the whole peek did not: it
/// failed with `Unstable`) and are each consistent with the stream.
#[test]
fn dumps_of_a_growing_queue_converge() {
    let t = Topo::new();
    let (client, server) = connect(&t, None);
    set_rcvbuf(&server, 8 << 20);
    let dup = controller_dup(server.as_raw_fd());
    let first = tcp::dump(&dup).expect("dump");
    assert!(first.recv.bytes.is_empty());
    let base = first.recv.seq;
    const TOTAL: usize = 2_000_000;
    let writer = thread::spawn(move || {
        let mut c = client;
        let mut up = Stream::new(19);
        for _ in 0..TOTAL / 2000 {
            up.write(&mut c, 2000);
            thread::sleep(Duration::from_micros(200));
        }
        c
    });
    let (mut dumps, mut grew) = (0, 0);
    let mut last = 0;
    while !writer.is_finished() && dumps < 100_000 {
        let st = tcp::dump(&dup).expect("dump while data arrives");
        let end = st.recv.seq.wrapping_sub(base) as u64;
        let len = st.recv.bytes.len();
        assert_eq!(
            end as usize, len,
            "nothing was read: the queue is the whole stream so far"
        );
        assert_eq!(
            st.recv.bytes,
            chunk(19, 0, len),
            "dump {dumps}: the queue's bytes"
        );
        if len > last {
            grew += 1;
        }
        last = len;
        dumps += 1;
    }
    let _client = writer.join().unwrap();
    eprintln!("{dumps} dumps while data arrived, {grew} of them saw more than the one before");
    assert!(
        grew > 1,
        "the data did not arrive during the dumps ({dumps} dumps)"
    );
    wait_inq(server.as_raw_fd(), TOTAL as u32);
    let st = tcp::dump(&dup).expect("dump");
    assert_eq!(st.recv.bytes.len(), TOTAL);
}

/// Without CAP_NET_ADMIN, a rebuild fails with the error that names it (capabilities are per
/// thread: this thread drops its own).
#[test]
fn missing_cap_net_admin_is_named() {
    let t = Topo::new();
    let (_client, server) = connect(&t, None);
    let st = tcp::dump(controller_dup(server.as_raw_fd())).expect("dump");
    let dup = controller_dup(server.as_raw_fd());
    let standby = t.standby.clone();
    let (rebuild_err, dump_err) = in_ns(&standby, move || {
        drop_cap_net_admin();
        let r = tcp::rebuild(&st)
            .map(drop)
            .expect_err("rebuild without CAP_NET_ADMIN");
        let d = tcp::dump(&dup)
            .map(drop)
            .expect_err("dump without CAP_NET_ADMIN");
        (r, d)
    });
    assert!(
        matches!(rebuild_err, tcp::RebuildError::MissingCapability(_)),
        "{rebuild_err}"
    );
    assert!(rebuild_err.to_string().contains("CAP_NET_ADMIN"));
    assert!(
        matches!(dump_err, tcp::DumpError::MissingCapability(_)),
        "{dump_err}"
    );
}

/// A rebuild where the standby has no route to the client fails saying so (DESIGN §9's
/// "address not up yet" needs some other route to the client's network).
#[test]
fn rebuild_without_a_route_to_the_peer_says_so() {
    let t = Topo::new();
    let (_client, server) = connect(&t, None);
    t.freeze_primary();
    let st = tcp::dump(controller_dup(server.as_raw_fd())).expect("dump");
    let e = in_ns(&t.standby, move || tcp::rebuild(&st).map(drop))
        .expect_err("a rebuild with no route to the peer");
    assert!(matches!(e, tcp::RebuildError::NoRoute { .. }), "{e}");
    assert!(e.to_string().contains("no route"), "{e}");
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set.
fn drop_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: h and d are the header and the two data words capget expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", io::Error::last_os_error());
    d[0].effective &= !(1 << 12); // CAP_NET_ADMIN
                                  // SAFETY: as above; capset changes only the calling thread's capabilities.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", io::Error::last_os_error());
}

/// A UDP socket's bound and connected addresses come back on the standby.
#[test]
fn udp_socket_addresses() {
    let t = Topo::new();
    let svc = t.service();
    let client_addr = SocketAddr::V4(SocketAddrV4::new(t.client_ip(), 9000));
    let client = in_ns(&t.client, move || {
        std::net::UdpSocket::bind(client_addr).unwrap()
    });
    let server = in_ns(&t.primary, move || {
        let s = std::net::UdpSocket::bind(svc).unwrap();
        s.connect(client_addr).unwrap();
        s
    });
    t.freeze_primary();
    let st = tcp::dump_udp(controller_dup(server.as_raw_fd())).expect("dump_udp");
    assert_eq!(st.local, Some(svc));
    assert_eq!(st.remote, Some(client_addr));
    t.kill_primary(vec![server.into()]);
    t.link_standby();
    let rebuilt = in_ns(&t.standby, move || tcp::rebuild_udp(&st)).expect("rebuild_udp");
    t.standby_address_up();
    let rebuilt = std::net::UdpSocket::from(rebuilt);
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    rebuilt.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    rebuilt.send(b"from-standby").unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("the client hears the standby");
    assert_eq!((&buf[..n], from), (&b"from-standby"[..], svc));
    client.send_to(b"to-standby", svc).unwrap();
    let n = rebuilt
        .recv(&mut buf)
        .expect("the standby hears the client");
    assert_eq!(&buf[..n], b"to-standby");
}

/// beanstalkd in the primary namespace, killed when dropped.
struct Beanstalkd {
    child: std::process::Child,
}

impl Drop for Beanstalkd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`beanstalkd_paused_with_a_command`] leaves: the program stopped, its connection's
/// socket duplicated and dumped, the client's `use tube-x` unread in its receive queue.
struct PausedBeanstalkd {
    server: Beanstalkd,
    pid: i32,
    client: TcpStream,
    dup: OwnedFd,
    st: TcpConnState,
}

/// A client of a real beanstalkd puts a job; beanstalkd is stopped (SIGSTOP, as the pause);
/// the client sends a command beanstalkd cannot read yet; the connection's socket is found
/// among beanstalkd's descriptors by `pidfd_getfd` and dumped.
fn beanstalkd_paused_with_a_command(t: &Topo) -> PausedBeanstalkd {
    let bin = require_program("/usr/bin/beanstalkd", "beanstalkd");
    let svc = t.service();
    let child = Command::new("ip")
        .args(["netns", "exec", &t.primary])
        .arg(&bin)
        .args(["-l", &t.service_ip().to_string(), "-p", &PORT.to_string()])
        .spawn()
        .expect("start beanstalkd");
    let pid = child.id() as i32;
    let server = Beanstalkd { child };
    let mut client = wait_for(
        "beanstalkd to listen",
        IO_TIMEOUT,
        &|| String::new(),
        || {
            in_ns(&t.client, move || {
                TcpStream::connect_timeout(&svc, Duration::from_secs(2)).ok()
            })
        },
    );
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.write_all(b"put 0 0 60 5\r\nhello\r\n").unwrap();
    assert_eq!(read_some(&mut client), "INSERTED 1\r\n");

    assert!(signal(pid, libc::SIGSTOP));
    wait_for("beanstalkd to stop", IO_TIMEOUT, &|| String::new(), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (stat[stat.rfind(')')? + 2..].starts_with('T')).then_some(())
    });
    client.write_all(b"use tube-x\r\n").unwrap();
    // Its connected socket among its descriptors: the one whose peer is the client.
    let fds: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let local = client.local_addr().unwrap();
    let mut found = None;
    for fd in fds {
        let Ok(dup) = tcp::dup_from(pid, fd) else {
            continue;
        };
        if tcp::dump(&dup).is_ok_and(|st| st.remote == local) {
            found = Some((fd, dup));
        }
    }
    let (fd, dup) = found.expect("beanstalkd's socket for the client");
    wait_inq(dup.as_raw_fd(), 12);
    let st = tcp::dump(&dup).expect("dump");
    eprintln!(
        "beanstalkd fd {fd}: {:?}, recv {:?}",
        st.state,
        String::from_utf8_lossy(&st.recv.bytes)
    );
    assert_eq!(st.state, TcpState::Established);
    assert_eq!(st.local, svc);
    assert_eq!(st.recv.bytes, b"use tube-x\r\n");
    PausedBeanstalkd {
        server,
        pid,
        client,
        dup,
        st,
    }
}

fn read_some(c: &mut TcpStream) -> String {
    let mut buf = [0u8; 256];
    for _ in 0..100 {
        match c.read(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("no answer: {e}"),
        }
    }
    panic!("no answer: interrupted 100 times")
}

/// A real program's connection dumped through `pidfd_getfd` while the program is stopped:
/// beanstalkd carries on unharmed after SIGCONT (repair mode was turned off again and the
/// command is still there for it to read).
#[test]
fn beanstalkd_connection_dumped_through_pidfd_getfd() {
    let t = Topo::new();
    let mut b = beanstalkd_paused_with_a_command(&t);
    assert!(signal(b.pid, libc::SIGCONT));
    assert_eq!(read_some(&mut b.client), "USING tube-x\r\n");
    b.client.write_all(b"use default\r\n").unwrap();
    assert_eq!(read_some(&mut b.client), "USING default\r\n");
    drop(b.dup);
    drop(b.server);
}

/// The same dump of beanstalkd's connection, rebuilt on the standby after beanstalkd is
/// killed (SIGKILL behind the frozen gate): the client's unread command is in the rebuilt
/// socket, and what is written there reaches the client on its same connection, which then
/// goes on both ways.
#[test]
fn beanstalkd_connection_rebuilt_on_the_standby() {
    let t = Topo::new();
    let mut b = beanstalkd_paused_with_a_command(&t);
    t.freeze_primary();
    // Dumped again behind the gate, so that nothing beanstalkd's kernel sends later counts.
    let st = tcp::dump(&b.dup).expect("dump");
    assert_eq!(st.recv.bytes, b.st.recv.bytes);
    assert!(signal(b.pid, libc::SIGKILL));
    drop(b.server);
    t.kill_primary(vec![b.dup]);
    let mut rebuilt = t.rebuild_on_standby(&st);
    let mut cmd = [0u8; 12];
    rebuilt.read_exact(&mut cmd).expect("the command");
    assert_eq!(&cmd, b"use tube-x\r\n");
    rebuilt.write_all(b"USING tube-x\r\n").unwrap();
    assert_eq!(read_some(&mut b.client), "USING tube-x\r\n");
    b.client.write_all(b"quit\r\n").unwrap();
    let mut q = [0u8; 6];
    rebuilt.read_exact(&mut q).expect("the next command");
    assert_eq!(&q, b"quit\r\n");
}
