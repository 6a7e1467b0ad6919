//! Unit tests that need no privilege: the segment encoding and the image form. The behaviour
//! on real connections is in `tests/tcp_repair.rs` (root, network namespaces).

use std::net::SocketAddrV4;

use super::inject::{encode, Segment, FLAG_ACK, FLAG_FIN};
use super::*;

/// The one's-complement sum over a header that includes its checksum is 0xffff.
fn verifies(words: &[u8]) -> bool {
    let mut acc: u32 = 0;
    for c in words.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc == 0xffff
}

#[test]
fn injected_segment_checksums() {
    let s = Segment {
        from: "10.92.1.1:40000".parse::<SocketAddrV4>().unwrap(),
        to: "10.92.1.100:7000".parse::<SocketAddrV4>().unwrap(),
        seq: 0xdead_beef,
        ack: 0x0102_0304,
        flags: FLAG_FIN | FLAG_ACK,
        window: 512,
    };
    let p = encode(&s);
    assert_eq!(p[0], 0x45);
    assert!(verifies(&p[..20]), "IPv4 header checksum");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&p[20..]);
    assert!(verifies(&pseudo), "TCP checksum");
    assert_eq!(&p[24..28], &0xdead_beefu32.to_be_bytes());
    assert_eq!(p[33], FLAG_FIN | FLAG_ACK);
}

#[test]
fn fin_bookkeeping_by_state() {
    use TcpState::*;
    for (s, sent, acked, recvd) in [
        (Established, false, false, false),
        (SynSent, false, false, false),
        (FinWait1, true, false, false),
        (FinWait2, true, true, false),
        (CloseWait, false, false, true),
        (LastAck, true, false, true),
        (Closing, true, false, true),
    ] {
        assert_eq!(s.fin_sent_by_us(), sent, "{s:?}");
        assert_eq!(s.our_fin_acked(), acked, "{s:?}");
        assert_eq!(s.fin_received(), recvd, "{s:?}");
    }
    for n in [3u8, 6, 7, 10, 0, 12] {
        assert_eq!(
            TcpState::from_kernel(n),
            None,
            "{}",
            TcpState::kernel_name(n)
        );
    }
}

#[test]
fn state_round_trips_through_messagepack_compactly() {
    let st = TcpConnState {
        local: "10.92.0.100:7000".parse().unwrap(),
        remote: "10.92.0.1:40000".parse().unwrap(),
        state: TcpState::Established,
        send: SendQueue {
            seq: 1000,
            bytes: vec![7; 100_000],
            unsent: 40_000,
            fin_unsent: false,
        },
        recv: RecvQueue {
            seq: 5,
            bytes: b"hello".to_vec(),
        },
        window: Some(RepairWindow {
            snd_wl1: 1,
            snd_wnd: 2,
            max_window: 3,
            rcv_wnd: 4,
            rcv_wup: 5,
        }),
        options: NegotiatedOptions {
            mss: 1448,
            sack: true,
            window_scale: Some((7, 7)),
            timestamp: Some(123),
        },
        sockopts: SocketOptions {
            reuse_addr: true,
            reuse_port: false,
            keepalive: false,
            keepalive_params: (7200, 75, 9),
            nodelay: true,
            cork: false,
            sndbuf: 16384,
            rcvbuf: 131072,
            linger: None,
            user_timeout: 0,
            tos: 0,
            mark: 0,
            priority: 0,
            rcvtimeo: (1, 500_000),
            sndtimeo: (0, 0),
            notsent_lowat: 0,
            congestion: "cubic".into(),
            nonblocking: true,
        },
    };
    let bytes = rmp_serde::to_vec(&st).unwrap();
    assert!(
        bytes.len() < 100_000 + 512,
        "queues stored as bytes: {}",
        bytes.len()
    );
    let back: TcpConnState = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, st);
    assert_eq!(back.send.sent_part().len(), 60_000);
    assert_eq!(back.send.unsent_part().len(), 40_000);
    let json = serde_json::to_string(&st).unwrap();
    let back: TcpConnState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
}

#[test]
fn what_is_not_a_connection_is_refused_before_repair_mode() {
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::UnixStream;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    match dump(&l) {
        Err(DumpError::Unsupported(s)) => assert_eq!(s, "LISTEN"),
        other => panic!("a listener: {other:?}"),
    }
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(
        matches!(dump(&u), Err(DumpError::NotTcp(_))),
        "a UDP socket"
    );
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(
        matches!(dump(&a), Err(DumpError::NotTcp(_))),
        "a unix socket"
    );
    let f = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(dump(&f), Err(DumpError::NotTcp(_))), "a file");
    // And the other way round.
    let t = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    assert!(
        matches!(dump_udp(&t), Err(UdpError::NotUdp)),
        "a TCP socket as UDP"
    );
}

#[test]
fn an_inconsistent_dump_is_refused() {
    let mut st = TcpConnState {
        local: "10.92.0.100:7000".parse().unwrap(),
        remote: "10.92.0.1:40000".parse().unwrap(),
        state: TcpState::Established,
        send: SendQueue {
            seq: 1,
            bytes: vec![1, 2, 3],
            unsent: 4,
            fin_unsent: false,
        },
        recv: RecvQueue {
            seq: 1,
            bytes: Vec::new(),
        },
        window: None,
        options: NegotiatedOptions {
            mss: 1460,
            sack: false,
            window_scale: None,
            timestamp: None,
        },
        sockopts: SocketOptions {
            reuse_addr: false,
            reuse_port: false,
            keepalive: false,
            keepalive_params: (7200, 75, 9),
            nodelay: false,
            cork: false,
            sndbuf: 16384,
            rcvbuf: 131072,
            linger: None,
            user_timeout: 0,
            tos: 0,
            mark: 0,
            priority: 0,
            rcvtimeo: (1, 500_000),
            sndtimeo: (0, 0),
            notsent_lowat: 0,
            congestion: "cubic".into(),
            nonblocking: false,
        },
    };
    assert!(matches!(rebuild(&st), Err(RebuildError::BadState(_))));
    st.send.unsent = 0;
    st.remote = "[::1]:80".parse().unwrap();
    assert!(matches!(rebuild(&st), Err(RebuildError::BadState(_))));
}
