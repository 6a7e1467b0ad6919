//! The TCP dump's cost inside the pause (issue 12): `remus_controller::tcp::dump` of one
//! connection, by how much its queues hold, and of many idle connections in one go.
//!
//! `cargo bench --bench tcp_dump` (root: TCP_REPAIR needs CAP_NET_ADMIN). Connections over
//! loopback in the current network namespace; each socket is dumped through a duplicate, as
//! remusd dumps the app's (`pidfd_getfd`). Prints a markdown table for benches/README.md.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use remus_controller::tcp;

const ROUNDS: usize = 200;

fn inq(fd: i32) -> usize {
    let mut v: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    unsafe { libc::ioctl(fd, libc::FIONREAD as _, &mut v) };
    v as usize
}

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

fn force_rcvbuf(s: &TcpStream, v: i32) {
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
    assert_eq!(r, 0, "SO_RCVBUFFORCE needs root");
}

fn percentile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tcp_dump: needs root (TCP_REPAIR needs CAP_NET_ADMIN); not run");
        std::process::exit(1);
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("| receive queue | dumps | p50 us | p99 us |");
    println!("|---|---|---|---|");
    for size in [0usize, 64 << 10, 1 << 20, 4 << 20] {
        let (mut c, s) = pair(&l);
        force_rcvbuf(&s, 16 << 20);
        let data = vec![0x5a; size];
        c.write_all(&data).expect("fill");
        let start = Instant::now();
        while inq(s.as_raw_fd()) < size && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(inq(s.as_raw_fd()), size, "the receive queue did not fill");
        let dup = s.try_clone().expect("dup");
        let mut v: Vec<Duration> = (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                let st = tcp::dump(&dup).expect("dump");
                let d = t.elapsed();
                assert_eq!(st.recv.bytes.len(), size);
                d
            })
            .collect();
        println!(
            "| {} KiB | {ROUNDS} | {:.1} | {:.1} |",
            size >> 10,
            percentile(&mut v, 0.5),
            percentile(&mut v, 0.99)
        );
    }
    println!();
    println!(
        "| idle connections dumped together | rounds | p50 us total | p50 us per connection |"
    );
    println!("|---|---|---|---|");
    for n in [1usize, 10, 100] {
        let pairs: Vec<_> = (0..n).map(|_| pair(&l)).collect();
        let dups: Vec<_> = pairs.iter().map(|(_, s)| s.try_clone().unwrap()).collect();
        let mut v: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                for d in &dups {
                    tcp::dump(d).expect("dump");
                }
                t.elapsed()
            })
            .collect();
        let p50 = percentile(&mut v, 0.5);
        println!("| {n} | 50 | {p50:.1} | {:.1} |", p50 / n as f64);
    }
}
