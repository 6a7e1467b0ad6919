//! The standby session against a hand-driven primary: what it does with good epochs, silence,
//! and frames that are corrupt, truncated or out of order.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::receiver::{Event, ReceiveError, Receiver};
use super::{session, SessionCtx, SessionEnd};
use crate::control::status::{SharedStatus, Status};
use crate::image::EpochMeta;
use crate::wire::auth::{client_handshake, FrameKey, LinkSecurity, SharedKey, TAG_LEN};
use crate::wire::frame::encode_frame;
use crate::wire::messages::*;
use crate::wire::FrameReader;

const MAPS: &str = "1000-5000 rw-p 00000000 00:00 0\n";

fn hello() -> WireMsg {
    WireMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        app_pid: 1,
        exe: "/bin/app".into(),
        argv: vec![],
        cwd: "/".into(),
        epoch_ms: 25,
        heartbeat_ms: 20,
        lease: None,
    })
}

fn part(epoch: u64, part: u32, pages: &[(u64, u8)]) -> WireMsg {
    WireMsg::EpochPart(EpochPart {
        epoch,
        part,
        pages: pages
            .iter()
            .map(|&(a, b)| (a, PageBytes(vec![b; 4096])))
            .collect(),
    })
}

fn commit(epoch: u64, parts: u32, pages: u64) -> WireMsg {
    WireMsg::EpochCommit(Box::new(EpochCommit {
        epoch,
        parts,
        output: Vec::new(),
        meta: EpochMeta {
            epoch,
            maps: MAPS.into(),
            pages,
            ..Default::default()
        },
    }))
}

/// A primary driven by hand over a real socket.
struct Fake {
    s: TcpStream,
    seq: u64,
    acks: FrameReader<TcpStream>,
    send_key: FrameKey,
}

/// The key the standby sessions of these tests use.
fn test_key() -> LinkSecurity {
    LinkSecurity::Keyed(SharedKey::from_bytes(
        &(0u8..32).map(|b| b * 5 + 1).collect::<Vec<_>>(),
    ))
}

/// Starts a session with `sec` and connects a client that authenticates with `client`.
fn connect(
    timeout_ms: u64,
    client: &LinkSecurity,
) -> (
    Result<Fake, crate::wire::auth::AuthError>,
    std::thread::JoinHandle<(SessionEnd, Receiver)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (s, peer) = l.accept().unwrap();
        let ctx = SessionCtx {
            timeout: Duration::from_millis(timeout_ms),
            status: SharedStatus::new(Status::new("standby", "waiting")),
            state_dir: None,
            stop: Arc::new(AtomicBool::new(false)),
            security: test_key(),
        };
        session(s, peer.to_string(), &ctx)
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let f = client_handshake(&mut s, client).map(|keys| Fake {
        acks: FrameReader::new(s.try_clone().unwrap(), keys.recv),
        s,
        seq: 1,
        send_key: keys.send,
    });
    (f, h)
}

impl Fake {
    /// The next frame, tagged.
    fn frame(&mut self, m: &WireMsg) -> Vec<u8> {
        let mut f = encode_frame(self.seq, m).unwrap();
        let t = self.send_key.tag(&[&f]);
        f.extend_from_slice(&t);
        self.seq += 1;
        f
    }
    fn send(&mut self, m: &WireMsg) {
        let f = self.frame(m);
        self.s.write_all(&f).unwrap();
    }
    fn raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }
    /// Reads until an ack for `epoch` (skipping heartbeats).
    fn ack(&mut self, epoch: u64) {
        loop {
            match self.acks.read_msg().unwrap() {
                Some(WireMsg::Ack { epoch: e }) => {
                    assert_eq!(e, epoch);
                    return;
                }
                Some(WireMsg::Heartbeat { .. }) | Some(WireMsg::HelloAck(_)) => {}
                m => panic!("unexpected {m:?}"),
            }
        }
    }
}

/// Starts a session; the fake has said hello and epoch 1 (pages 0x1000=1, 0x2000=2) is acked.
fn start(timeout_ms: u64) -> (Fake, std::thread::JoinHandle<(SessionEnd, Receiver)>) {
    let (f, h) = connect(timeout_ms, &test_key());
    let mut f = f.unwrap();
    f.send(&hello());
    f.send(&part(1, 0, &[(0x1000, 1), (0x2000, 2)]));
    f.send(&commit(1, 1, 2));
    f.ack(1);
    (f, h)
}

fn assert_epoch1(rx: &Receiver) {
    assert_eq!(rx.image.committed_epoch(), Some(1));
    assert_eq!(rx.image.pages.len(), 2);
    assert_eq!(rx.image.pages[&0x1000][0], 1);
    assert_eq!(rx.image.pages[&0x2000][0], 2);
}

#[test]
fn goodbye_ends_the_session_without_takeover() {
    let (mut f, h) = start(500);
    f.send(&part(2, 0, &[(0x1000, 7)]));
    f.send(&part(2, 1, &[(0x3000, 3)]));
    f.send(&commit(2, 2, 2));
    f.ack(2);
    f.send(&WireMsg::Goodbye {
        reason: GoodbyeReason::OperatorStop,
    });
    let (end, rx) = h.join().unwrap();
    assert!(
        matches!(end, SessionEnd::Goodbye(GoodbyeReason::OperatorStop)),
        "{end:?}"
    );
    assert_eq!(rx.image.committed_epoch(), Some(2));
    assert_eq!(rx.image.pages[&0x1000][0], 7);
    assert_eq!(rx.image.pages.len(), 3);
}

#[test]
fn silence_is_a_failure() {
    let (f, h) = start(100);
    let (end, rx) = h.join().unwrap();
    assert!(
        matches!(&end, SessionEnd::Lost(why) if why.contains("no frame")),
        "{end:?}"
    );
    assert_epoch1(&rx);
    drop(f);
}

#[test]
fn connection_break_is_a_failure() {
    let (f, h) = start(500);
    drop(f);
    let (end, rx) = h.join().unwrap();
    assert!(matches!(end, SessionEnd::Lost(_)), "{end:?}");
    assert_epoch1(&rx);
}

#[test]
fn truncated_frame_leaves_the_image_untouched() {
    let (mut f, h) = start(500);
    f.send(&part(2, 0, &[(0x1000, 7)]));
    let c = f.frame(&commit(2, 1, 1));
    f.raw(&c[..c.len() / 2]);
    drop(f);
    let (end, rx) = h.join().unwrap();
    assert!(
        matches!(&end, SessionEnd::Lost(why) if why.contains("truncated")),
        "{end:?}"
    );
    assert_epoch1(&rx);
}

#[test]
fn corrupt_frame_leaves_the_image_untouched() {
    let (mut f, h) = start(500);
    f.send(&part(2, 0, &[(0x1000, 7)]));
    let mut c = f.frame(&commit(2, 1, 1));
    let n = c.len();
    c[n - 2] ^= 0x55;
    f.raw(&c);
    let (end, rx) = h.join().unwrap();
    // The tag catches it (before the checksum is even looked at).
    assert!(
        matches!(&end, SessionEnd::Protocol(why) if why.contains("failed authentication")),
        "{end:?}"
    );
    assert_epoch1(&rx);
}

#[test]
fn reordered_frames_leave_the_image_untouched() {
    let (mut f, h) = start(500);
    let p = f.frame(&part(2, 0, &[(0x1000, 7)]));
    let c = f.frame(&commit(2, 1, 1));
    f.raw(&c);
    f.raw(&p);
    let (end, rx) = h.join().unwrap();
    assert!(
        matches!(&end, SessionEnd::Protocol(why) if why.contains("out of sequence")),
        "{end:?}"
    );
    assert_epoch1(&rx);
}

#[test]
fn missing_part_leaves_the_image_untouched() {
    let (mut f, h) = start(500);
    f.send(&part(2, 0, &[(0x1000, 7)]));
    f.send(&commit(2, 2, 2));
    let (end, rx) = h.join().unwrap();
    assert!(
        matches!(&end, SessionEnd::Protocol(why) if why.contains("parts")),
        "{end:?}"
    );
    assert_epoch1(&rx);
}

#[test]
fn receiver_checks_order_and_completeness() {
    let mut rx = Receiver::new();
    assert!(matches!(
        rx.handle(WireMsg::Heartbeat {
            released: Default::default()
        }),
        Err(ReceiveError::NoHello(_))
    ));
    assert!(matches!(rx.handle(hello()), Ok(Event::Hello(_))));
    // An epoch with no pages at all.
    assert_eq!(
        rx.handle(commit(1, 0, 0)),
        Ok(Event::Committed { epoch: 1, pages: 0 })
    );
    // Epochs only go forward (they may jump: the primary merges epochs when behind).
    assert_eq!(
        rx.handle(commit(1, 0, 0)),
        Err(ReceiveError::EpochOutOfOrder { want: 2, got: 1 })
    );
    assert_eq!(
        rx.handle(part(1, 0, &[])),
        Err(ReceiveError::EpochOutOfOrder { want: 2, got: 1 })
    );
    // Within an epoch, every part and the commit carry its number.
    rx.handle(part(2, 0, &[(0x1000, 1)])).unwrap();
    assert_eq!(
        rx.handle(part(3, 1, &[])),
        Err(ReceiveError::EpochOutOfOrder { want: 2, got: 3 })
    );
    // Parts in order.
    rx.handle(part(2, 0, &[(0x1000, 1)])).unwrap();
    assert_eq!(
        rx.handle(part(2, 2, &[])),
        Err(ReceiveError::PartOutOfOrder {
            epoch: 2,
            want: 1,
            got: 2
        })
    );
    // The failed epoch is dropped: it starts again from part 0.
    rx.handle(part(2, 0, &[(0x1000, 1)])).unwrap();
    // Page counts must match.
    assert!(matches!(
        rx.handle(commit(2, 1, 5)),
        Err(ReceiveError::Incomplete { what: "pages", .. })
    ));
    // Bad pages are refused.
    let bad = WireMsg::EpochPart(EpochPart {
        epoch: 2,
        part: 0,
        pages: vec![(0x1001, PageBytes(vec![0; 4096]))],
    });
    assert!(matches!(rx.handle(bad), Err(ReceiveError::BadPage { .. })));
    let short = WireMsg::EpochPart(EpochPart {
        epoch: 2,
        part: 0,
        pages: vec![(0x1000, PageBytes(vec![0; 10]))],
    });
    assert!(matches!(
        rx.handle(short),
        Err(ReceiveError::BadEncoding { .. })
    ));
    // A delta for a page the standby does not hold is refused (the primary then starts over
    // with a new connection and an empty shadow: full pages).
    let mut changed = [7u8; 4096];
    changed[10] = 8;
    let (enc, d) = crate::wire::delta::encode(&changed, Some(&[7; 4096]));
    assert_eq!(enc, crate::wire::delta::Encoding::Delta);
    let orphan = WireMsg::EpochPart(EpochPart {
        epoch: 2,
        part: 0,
        pages: vec![(0x1000, PageBytes(d))],
    });
    assert!(matches!(
        rx.handle(orphan),
        Err(ReceiveError::BadEncoding {
            why: crate::wire::delta::DecodeError::NoBase,
            ..
        })
    ));
    // Unparseable maps: nothing applied.
    rx.handle(part(2, 0, &[(0x1000, 1)])).unwrap();
    let mut c = commit(2, 1, 1);
    if let WireMsg::EpochCommit(c) = &mut c {
        c.meta.maps = "garbage".into();
    }
    assert!(matches!(rx.handle(c), Err(ReceiveError::Apply { .. })));
    assert_eq!(rx.image.committed_epoch(), Some(1));
    assert!(rx.image.pages.is_empty());
    assert!(matches!(
        rx.handle(WireMsg::Ack { epoch: 1 }),
        Err(ReceiveError::Unexpected("Ack"))
    ));
}

#[test]
fn wrong_key_or_no_key_refused_before_anything_is_read() {
    let other = LinkSecurity::Keyed(SharedKey::from_bytes(&[9u8; 40].map(|b| b ^ 3)));
    for client in [other, LinkSecurity::Insecure] {
        let (f, h) = connect(5000, &client);
        let e = f.err().expect("the client side refuses too");
        let (end, rx) = h.join().unwrap();
        match end {
            SessionEnd::Handshake(why) => assert!(
                why.contains("wrong key") || why.contains("--insecure"),
                "{why} (client: {e})"
            ),
            other => panic!("expected a handshake failure, got {other:?}"),
        }
        assert!(rx.hello.is_none());
        assert_eq!(rx.image.committed_epoch(), None, "image untouched");
    }
}

#[test]
fn tampered_frame_ends_the_session_image_untouched() {
    let (mut f, h) = start(5000);
    let mut bad = f.frame(&part(2, 0, &[(0x1000, 9)]));
    let n = bad.len();
    bad[n - TAG_LEN - 3] ^= 0x40;
    f.raw(&bad);
    let (end, rx) = h.join().unwrap();
    match end {
        SessionEnd::Protocol(why) => assert!(why.contains("failed authentication"), "{why}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_epoch1(&rx);
}

#[test]
fn receiver_keeps_committed_output_until_the_primary_reports_it_written() {
    let mut rx = Receiver::new();
    rx.handle(hello()).unwrap();
    let with_output = |epoch: u64, offset: u64, data: &[u8]| {
        let WireMsg::EpochCommit(mut c) = commit(epoch, 0, 0) else {
            unreachable!()
        };
        c.output = vec![HeldOutput {
            stream: OutStream::Stdout,
            offset,
            data: PageBytes(data.to_vec()),
        }];
        WireMsg::EpochCommit(c)
    };
    rx.handle(with_output(1, 0, b"one\n")).unwrap();
    // An epoch that fails is not committed: its output is not owed.
    assert!(rx.handle(with_output(1, 4, b"bad\n")).is_err());
    rx.handle(with_output(2, 4, b"two\n")).unwrap();
    assert_eq!(rx.output.bytes(), 8);
    rx.handle(WireMsg::Heartbeat {
        released: Released(vec![(OutStream::Stdout, 5)]),
    })
    .unwrap();
    assert_eq!(
        rx.output.owed(),
        vec![(OutStream::Stdout, 5, &b"wo\n"[..])],
        "what the primary wrote is not written again"
    );
}
