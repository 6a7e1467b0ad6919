//! Property tests of the standby's decoder (frames, then the receiver's epoch logic): random
//! bytes, mutated valid streams (flipped bytes, truncations, duplicated, dropped and
//! reordered frames), and authenticated but nonsensical epochs. Nothing panics, and the
//! committed image is always exactly the image of the last fully valid epoch.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::receiver::{Event, Receiver};
use crate::image::EpochMeta;
use crate::wire::auth::FrameKey;
use crate::wire::messages::*;
use crate::wire::{DecodeFrameError, FrameReader, FrameWriter};

const MAPS: &str = "10000-20000 rw-p 00000000 00:00 0\n";

fn key() -> FrameKey {
    FrameKey::from_bytes([0x5a; 32])
}

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

/// A valid session: hello, then epochs 1..=3 of one or two parts each, with a heartbeat.
fn valid_msgs() -> Vec<WireMsg> {
    let mut v = vec![hello()];
    for e in 1..=3u64 {
        let pages = |part: u64| -> Vec<(u64, PageBytes)> {
            (0..2)
                .map(|i| {
                    let addr = 0x10000 + ((e + part + i) % 16) * 0x1000;
                    (addr, PageBytes(vec![(e * 10 + part + i) as u8; 4096]))
                })
                .collect()
        };
        let parts = if e == 2 { 2 } else { 1 };
        for p in 0..parts {
            v.push(WireMsg::EpochPart(EpochPart {
                epoch: e,
                part: p,
                pages: pages(p as u64),
            }));
        }
        v.push(WireMsg::Heartbeat {
            released: Default::default(),
        });
        v.push(commit(e, parts, 2 * parts as u64));
    }
    v
}

/// The frames of `msgs`, one byte vector each.
fn frames(msgs: &[WireMsg]) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut cuts = vec![0];
    {
        let mut w = FrameWriter::new(&mut buf, key());
        for m in msgs {
            let n = w.send(m).unwrap();
            cuts.push(cuts.last().unwrap() + n);
        }
    }
    cuts.windows(2).map(|c| buf[c[0]..c[1]].to_vec()).collect()
}

type Pages = BTreeMap<u64, Box<[u8]>>;

/// The image after each committed epoch of the valid session.
fn references() -> BTreeMap<u64, Pages> {
    let mut rx = Receiver::new();
    let mut out = BTreeMap::new();
    out.insert(0, Pages::new());
    for m in valid_msgs() {
        if let Ok(Event::Committed { epoch, .. }) = rx.handle(m) {
            out.insert(epoch, rx.image.pages.clone());
        }
    }
    assert_eq!(out.len(), 4);
    out
}

/// Feeds `bytes` through a frame reader into a receiver, as the session does, until the end
/// or the first error. Checks that no error changes the image; returns the receiver.
fn run(bytes: &[u8]) -> Receiver {
    let mut r = FrameReader::new(bytes, key());
    let mut rx = Receiver::new();
    loop {
        let m = match r.read_msg() {
            Ok(Some(m)) => m,
            Ok(None) => return rx,
            Err(DecodeFrameError::Io(e)) => panic!("reading from memory: {e}"),
            Err(_) => return rx,
        };
        let (before, epoch) = (rx.image.pages.clone(), rx.image.committed_epoch());
        match rx.handle(m) {
            Ok(_) => {}
            Err(_) => {
                assert_eq!(
                    rx.image.committed_epoch(),
                    epoch,
                    "an error moved the epoch"
                );
                assert!(rx.image.pages == before, "an error changed the image");
                return rx;
            }
        }
    }
}

/// The image must be exactly the reference image of its committed epoch.
fn check_image(rx: &Receiver, refs: &BTreeMap<u64, Pages>) {
    let e = rx.image.committed_epoch().unwrap_or(0);
    let want = refs
        .get(&e)
        .expect("a committed epoch of the valid session");
    assert!(
        &rx.image.pages == want,
        "epoch {e}: image differs from the reference"
    );
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { frame: usize, at: usize, bits: u8 },
    Truncate { at: usize },
    Duplicate { frame: usize },
    Drop { frame: usize },
    Swap { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..16usize, any::<usize>(), 1..=255u8).prop_map(|(frame, at, bits)| Mutation::Flip {
            frame,
            at,
            bits
        }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (0..16usize).prop_map(|frame| Mutation::Duplicate { frame }),
        (0..16usize).prop_map(|frame| Mutation::Drop { frame }),
        (0..16usize, 0..16usize).prop_map(|(a, b)| Mutation::Swap { a, b }),
    ]
}

fn apply(mut f: Vec<Vec<u8>>, muts: &[Mutation]) -> Vec<u8> {
    let mut truncate = None;
    for m in muts {
        let n = f.len();
        match *m {
            Mutation::Flip { frame, at, bits } => {
                let fr = &mut f[frame % n];
                let i = at % fr.len();
                fr[i] ^= bits;
            }
            Mutation::Truncate { at } => truncate = Some(at),
            Mutation::Duplicate { frame } => {
                let c = f[frame % n].clone();
                f.insert(frame % n, c);
            }
            Mutation::Drop { frame } => {
                if n > 1 {
                    f.remove(frame % n);
                }
            }
            Mutation::Swap { a, b } => f.swap(a % n, b % n),
        }
    }
    let mut bytes = f.concat();
    if let Some(at) = truncate {
        bytes.truncate(at % (bytes.len() + 1));
    }
    bytes
}

/// Authenticated messages with arbitrary (mostly wrong) contents.
fn any_msg() -> impl Strategy<Value = WireMsg> {
    let page = (0u64..24, 0usize..4, any::<u8>()).prop_map(|(slot, len, b)| {
        let len = [4096, 4095, 1, 0][len];
        (
            0x10000 - 0x1000 + slot * 0x1000 + (slot % 3),
            PageBytes(vec![b; len]),
        )
    });
    prop_oneof![
        Just(hello()),
        Just(WireMsg::Heartbeat {
            released: Default::default()
        }),
        Just(WireMsg::Ack { epoch: 1 }),
        (0u64..5, 0u32..3, proptest::collection::vec(page, 0..4))
            .prop_map(|(epoch, part, pages)| WireMsg::EpochPart(EpochPart { epoch, part, pages })),
        (0u64..5, 0u32..3, 0u64..6, 0u64..5, any::<bool>()).prop_map(
            |(epoch, parts, pages, meta_epoch, bad_maps)| {
                WireMsg::EpochCommit(Box::new(EpochCommit {
                    epoch,
                    parts,
                    output: Vec::new(),
                    meta: EpochMeta {
                        epoch: meta_epoch,
                        maps: if bad_maps {
                            "garbage".into()
                        } else {
                            MAPS.into()
                        },
                        pages,
                        ..Default::default()
                    },
                }))
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_commit(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let rx = run(&bytes);
        prop_assert_eq!(rx.image.committed_epoch(), None);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix(n in 0usize..14, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let refs = references();
        let f = frames(&valid_msgs());
        let mut s = f[..n.min(f.len())].concat();
        s.extend_from_slice(&bytes);
        check_image(&run(&s), &refs);
    }

    #[test]
    fn mutated_streams_apply_only_whole_valid_epochs(muts in proptest::collection::vec(mutation(), 1..4)) {
        let refs = references();
        let bytes = apply(frames(&valid_msgs()), &muts);
        check_image(&run(&bytes), &refs);
    }

    #[test]
    fn authenticated_nonsense_never_panics_nor_half_applies(msgs in proptest::collection::vec(any_msg(), 0..12)) {
        let mut all = vec![hello()];
        all.extend(msgs);
        // run() checks that every refused message leaves the image as it was.
        let rx = run(&frames(&all).concat());
        // Whatever was committed is whole: every page lies in a region of the image.
        for addr in rx.image.pages.keys() {
            prop_assert!(*addr % 4096 == 0);
        }
    }
}

#[test]
fn the_valid_session_commits_every_epoch() {
    let refs = references();
    let rx = run(&frames(&valid_msgs()).concat());
    assert_eq!(rx.image.committed_epoch(), Some(3));
    check_image(&rx, &refs);
}
