//! The primary's sending pipeline, off the epoch loop: delta compression against shadow
//! pages, and merging of epochs while the link is behind.
//!
//! ```text
//! epoch loop --(Outbound, bounded)--> encoder thread --(frames, <= IN_FLIGHT)--> sender
//!                                      | merges epochs that wait
//!                                      | encodes pages against the Shadow
//! ```
//!
//! The app's pause holds only the shim's scan and copy: everything here runs on remusd's own
//! threads. While the sender is busy, whole epochs wait in one [`Merged`] epoch, so memory is
//! bounded by the app's dirty set (each page once, newest version), not by how far the link is
//! behind. A merged epoch k..m goes out as epoch m: its pages are the newest of each page, a
//! reset of a later epoch drops earlier pages in its range, its resets are all of them in order
//! and its metadata is m's. The standby acks it as m, which releases the output of k..m.
//!
//! Deltas: the [`Shadow`] keeps the version of each page last shipped, within a memory budget
//! (least recently dirtied evicted first), and mirrors exactly what the standby's image does
//! with each epoch it applies (resets, new pages, pruning to the regions). So a page with a
//! shadow is in the standby's image with those very bytes, and the standby, which applies
//! every epoch in stream order, reconstructs it from its image. A new connection starts with
//! an empty shadow: after a lost or refused epoch everything is sent whole again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crossbeam::channel::{Receiver, Sender};

use crate::control::status::SharedStatus;
use crate::image::{forget_resets, prune_to_layout, EpochMeta, Layout};
use crate::wire::delta::{self, Encoding};
use crate::wire::messages::{
    EpochCommit, EpochPart, GoodbyeReason, HeldOutput, PageBytes, WireMsg,
};

/// Pages per `EpochPart` frame: 4096 pages = 16 MiB.
pub const PART_PAGES: usize = 4096;

/// What the epoch loop hands to the sender.
pub enum Outbound {
    /// Pages of `epoch` (split into parts of at most [`PART_PAGES`]).
    Pages {
        epoch: u64,
        pages: Vec<(u64, PageBytes)>,
    },
    /// The end of `epoch`, with the held output that goes with it (the standby keeps it for
    /// a takeover; see [`EpochCommit::output`]).
    Commit {
        epoch: u64,
        meta: Box<EpochMeta>,
        output: Vec<HeldOutput>,
    },
    /// Say goodbye, then signal `done` and stop.
    Goodbye {
        reason: GoodbyeReason,
        done: Sender<()>,
    },
}

/// Frames handed to the sender and not yet written: one being written, one ready.
pub const IN_FLIGHT: usize = 2;

/// What the encoder hands to the sender.
pub enum ToSender {
    /// A frame. `pages`: how many pages an `EpochPart` carries (0 otherwise); `snap_only`:
    /// with wire stats, the frame's size had its pages gone raw (snap alone).
    Frame {
        msg: WireMsg,
        pages: u64,
        snap_only: Option<u64>,
    },
    Goodbye {
        reason: GoodbyeReason,
        done: Sender<()>,
    },
}

/// The version of each page last shipped, as the standby holds it.
pub struct Shadow {
    budget_pages: usize,
    pages: BTreeMap<u64, (u64, Box<[u8]>)>,
    /// (tick it was last dirtied, address): the eviction order.
    lru: BTreeSet<(u64, u64)>,
    /// The last epoch's layout, and its maps' text.
    layout: Layout,
    maps: String,
    /// Pages inserted since the last commit (checked against the commit's regions).
    fresh: Vec<u64>,
    pub evictions: u64,
}

impl Shadow {
    pub fn new(budget_bytes: u64) -> Shadow {
        Shadow {
            budget_pages: (budget_bytes / delta::PAGE as u64) as usize,
            pages: BTreeMap::new(),
            lru: BTreeSet::new(),
            layout: Layout::default(),
            maps: String::new(),
            fresh: Vec::new(),
            evictions: 0,
        }
    }

    pub fn get(&self, addr: u64) -> Option<&[u8]> {
        self.pages.get(&addr).map(|(_, p)| &p[..])
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        (self.pages.len() * delta::PAGE) as u64
    }

    /// Records `page` as shipped in the epoch numbered `tick` (shipped epochs only grow).
    pub fn insert(&mut self, addr: u64, page: Box<[u8]>, tick: u64) {
        if self.budget_pages == 0 {
            return;
        }
        if let Some((old, _)) = self.pages.insert(addr, (tick, page)) {
            self.lru.remove(&(old, addr));
        }
        self.lru.insert((tick, addr));
        self.fresh.push(addr);
        while self.pages.len() > self.budget_pages {
            let Some((_, a)) = self.lru.pop_first() else {
                break;
            };
            self.pages.remove(&a);
            self.evictions += 1;
        }
    }

    /// The end of shipped epoch `tick`: what `Image::apply` does on the standby (the same
    /// rule, `image::forget_resets` and `image::prune_to_layout`). Its resets drop older
    /// pages (not the ones shipped in `tick`), then pages outside the regions go.
    pub fn commit(&mut self, tick: u64, resets: &[(u64, u64)], maps: &str) {
        let lru = &mut self.lru;
        let mut dropped = |a: u64, (t, _): (u64, Box<[u8]>)| {
            lru.remove(&(t, a));
        };
        forget_resets(&mut self.pages, resets, |(t, _)| *t < tick, &mut dropped);
        let fresh = std::mem::take(&mut self.fresh);
        let changed = maps != self.maps;
        if changed {
            self.maps = maps.to_string();
            self.layout = Layout::of_maps(maps);
        }
        let only = (!changed).then_some(&fresh[..]);
        prune_to_layout(&mut self.pages, &self.layout, only, dropped);
    }
}

/// A page as it goes out: (address, 4096 bytes).
pub type Page = (u64, Vec<u8>);

/// Epochs waiting to be sent, folded into one.
#[derive(Default)]
pub struct Merged {
    /// First and last epoch folded in.
    pub first: u64,
    pub last: u64,
    /// address -> (epoch that wrote it, bytes).
    pub pages: BTreeMap<u64, (u64, Vec<u8>)>,
    pub resets: Vec<(u64, u64)>,
    /// The metadata of `last`, once its commit arrived.
    pub meta: Option<Box<EpochMeta>>,
    /// The held output of every epoch folded in, in order.
    pub output: Vec<HeldOutput>,
    maps: String,
    layout: Layout,
}

impl Merged {
    fn new(epoch: u64) -> Merged {
        Merged {
            first: epoch,
            last: epoch,
            ..Default::default()
        }
    }

    pub fn complete(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.epoch == self.last)
    }

    pub fn bytes(&self) -> u64 {
        (self.pages.len() * delta::PAGE) as u64
    }

    /// Folds in pages of `epoch` (newest version wins).
    pub fn add_pages(&mut self, epoch: u64, pages: Vec<(u64, PageBytes)>) {
        self.last = self.last.max(epoch);
        for (a, p) in pages {
            self.pages.insert(a, (epoch, p.0));
        }
    }

    /// Folds in the end of `epoch`: its resets drop earlier epochs' pages in their ranges,
    /// pages outside its regions go (as the standby would prune them), its resets are
    /// appended, its metadata wins.
    pub fn add_commit(&mut self, epoch: u64, mut meta: Box<EpochMeta>, output: Vec<HeldOutput>) {
        self.last = self.last.max(epoch);
        self.output.extend(output);
        forget_resets(
            &mut self.pages,
            &meta.resets,
            |(ep, _)| *ep < epoch,
            |_, _| {},
        );
        // The standby drops pages no region covers, this epoch's own included.
        if meta.maps != self.maps {
            if self.meta.is_some() {
                // The layout changed inside the merged epoch: what the previous epoch's
                // layout pruned from the standby's image must go even if a later layout
                // covers it again. Its holes become resets (applied before the pages).
                let mut at = 0u64;
                for &(s, e) in self.layout.ranges() {
                    if s > at {
                        self.resets.push((at, s));
                    }
                    at = at.max(e);
                }
                self.resets.push((at, u64::MAX));
            }
            self.layout = Layout::of_maps(&meta.maps);
        }
        prune_to_layout(&mut self.pages, &self.layout, None, |_, _| {});
        self.maps = meta.maps.clone();
        self.resets.extend_from_slice(&meta.resets);
        // File changes are not idempotent over pages: earlier epochs' go first, in order.
        if let Some(prev) = self.meta.take() {
            let mut files = prev.files;
            files.append(&mut meta.files);
            meta.files = files;
        }
        self.meta = Some(meta);
    }

    /// The merged epoch as it goes out: (epoch, pages in address order, metadata, output).
    pub fn finish(mut self) -> (u64, Vec<Page>, Option<Box<EpochMeta>>, Vec<HeldOutput>) {
        let pages: Vec<Page> = std::mem::take(&mut self.pages)
            .into_iter()
            .map(|(a, (_, p))| (a, p))
            .collect();
        let meta = self.meta.take().map(|mut m| {
            m.resets = std::mem::take(&mut self.resets);
            m.pages = pages.len() as u64;
            m
        });
        let output = std::mem::take(&mut self.output);
        (self.last, pages, meta, output)
    }
}

/// The epoch being sent.
struct Sending {
    epoch: u64,
    pages: std::collections::VecDeque<(u64, Vec<u8>)>,
    part: u32,
    /// Pages sent so far.
    sent: u64,
    /// None while the epoch is streamed and its commit has not arrived.
    meta: Option<Box<EpochMeta>>,
    output: Vec<HeldOutput>,
}

/// Counters the encoder keeps (copied into the status).
#[derive(Default, Clone, Debug)]
pub struct EncodeStats {
    pub pages: u64,
    pub hits: u64,
    pub by_enc: [(u64, u64); 3],
    pub merged_epochs: u64,
    pub max_pending_bytes: u64,
}

/// The encoder: takes [`Outbound`] items, merges, encodes, hands frames to the sender.
pub struct Encoder {
    pub shadow: Shadow,
    sending: Option<Sending>,
    pending: Option<Merged>,
    pub stats: EncodeStats,
    wire_stats: bool,
    /// A goodbye to pass on once nothing else is left (everything before it is dropped).
    goodbye: Option<(GoodbyeReason, Sender<()>)>,
}

impl Encoder {
    pub fn new(budget_bytes: u64, wire_stats: bool) -> Encoder {
        Encoder {
            shadow: Shadow::new(budget_bytes),
            sending: None,
            pending: None,
            stats: EncodeStats::default(),
            wire_stats,
            goodbye: None,
        }
    }

    /// Page bytes held waiting (merged and being sent).
    pub fn pending_bytes(&self) -> u64 {
        self.pending.as_ref().map_or(0, |p| p.bytes())
            + self
                .sending
                .as_ref()
                .map_or(0, |s| (s.pages.len() * delta::PAGE) as u64)
    }

    /// Takes one item from the epoch loop.
    pub fn absorb(&mut self, item: Outbound) {
        match item {
            Outbound::Pages { epoch, pages } => {
                if let Some(s) = &mut self.sending {
                    if s.epoch == epoch && s.meta.is_none() {
                        s.pages.extend(pages.into_iter().map(|(a, p)| (a, p.0)));
                        return;
                    }
                }
                self.pending_for(epoch).add_pages(epoch, pages);
            }
            Outbound::Commit {
                epoch,
                meta,
                output,
            } => {
                if let Some(s) = &mut self.sending {
                    if s.epoch == epoch && s.meta.is_none() {
                        s.meta = Some(meta);
                        s.output.extend(output);
                        return;
                    }
                }
                self.pending_for(epoch).add_commit(epoch, meta, output);
            }
            Outbound::Goodbye { reason, done } => {
                // The standby discards its image on any goodbye: nothing queued matters.
                self.sending = None;
                self.pending = None;
                self.goodbye = Some((reason, done));
            }
        }
        let b = self.pending_bytes();
        self.stats.max_pending_bytes = self.stats.max_pending_bytes.max(b);
    }

    fn pending_for(&mut self, epoch: u64) -> &mut Merged {
        let p = self.pending.get_or_insert_with(|| Merged::new(epoch));
        if p.last < epoch && p.complete() {
            // A new epoch folds into a complete one.
            self.stats.merged_epochs += 1;
        }
        p
    }

    /// The next frame to send, if any is ready.
    pub fn next_frame(&mut self) -> Option<ToSender> {
        if self.sending.is_none() {
            if let Some(p) = self.pending.take() {
                // Complete, or a single epoch still arriving (it can be streamed).
                if p.complete() || p.first == p.last {
                    let (epoch, pages, meta, output) = p.finish();
                    self.sending = Some(Sending {
                        epoch,
                        pages: pages.into(),
                        part: 0,
                        sent: 0,
                        meta,
                        output,
                    });
                } else {
                    self.pending = Some(p);
                }
            }
        }
        let Some(s) = &mut self.sending else {
            return self
                .goodbye
                .take()
                .map(|(reason, done)| ToSender::Goodbye { reason, done });
        };
        if !s.pages.is_empty() {
            let n = s.pages.len().min(PART_PAGES);
            let mut out = Vec::with_capacity(n);
            let mut raw = self.wire_stats.then(|| Vec::with_capacity(n));
            for (addr, page) in s.pages.drain(..n) {
                let base = self.shadow.get(addr);
                let (enc, data) = delta::encode(&page, base);
                self.stats.pages += 1;
                if base.is_some() {
                    self.stats.hits += 1;
                }
                let i = match enc {
                    Encoding::Raw => 0,
                    Encoding::Rle => 1,
                    Encoding::Delta => 2,
                };
                self.stats.by_enc[i].0 += 1;
                self.stats.by_enc[i].1 += data.len() as u64;
                out.push((addr, PageBytes(data)));
                if let Some(r) = &mut raw {
                    r.push((addr, PageBytes(page.clone())));
                }
                self.shadow.insert(addr, page.into_boxed_slice(), s.epoch);
            }
            let snap_only = raw.and_then(|pages| {
                let m = WireMsg::EpochPart(EpochPart {
                    epoch: s.epoch,
                    part: s.part,
                    pages,
                });
                crate::wire::frame::encode_frame(1, &m)
                    .ok()
                    .map(|f| f.len() as u64)
            });
            let msg = WireMsg::EpochPart(EpochPart {
                epoch: s.epoch,
                part: s.part,
                pages: out,
            });
            s.part += 1;
            s.sent += n as u64;
            return Some(ToSender::Frame {
                msg,
                pages: n as u64,
                snap_only,
            });
        }
        let meta = s.meta.take()?;
        let mut s = self.sending.take().expect("checked above");
        let mut meta = meta;
        meta.pages = s.sent;
        self.shadow.commit(s.epoch, &meta.resets, &meta.maps);
        Some(ToSender::Frame {
            msg: WireMsg::EpochCommit(Box::new(EpochCommit {
                epoch: s.epoch,
                parts: s.part,
                meta: *meta,
                output: std::mem::take(&mut s.output),
            })),
            pages: 0,
            snap_only: None,
        })
    }

    fn publish(&self, status: &SharedStatus, budget: u64) {
        let st = &self.stats;
        let mut b = status.lock();
        let p = &mut b.status.pipeline;
        p.delta_budget_bytes = budget;
        p.delta_hit_rate = if st.pages > 0 {
            st.hits as f64 / st.pages as f64
        } else {
            0.0
        };
        p.shadow_bytes = self.shadow.bytes();
        p.shadow_evictions = self.shadow.evictions;
        p.pages_shipped = st.pages;
        (p.pages_raw, p.enc_bytes_raw) = st.by_enc[0];
        (p.pages_rle, p.enc_bytes_rle) = st.by_enc[1];
        (p.pages_delta, p.enc_bytes_delta) = st.by_enc[2];
        p.merged_epochs = st.merged_epochs;
        p.pending_bytes = self.pending_bytes();
        p.max_pending_bytes = st.max_pending_bytes;
    }
}

/// The encoder thread: runs until `input` is disconnected (or the sender is gone).
/// `written` gets one message per frame the sender has written.
pub fn encode_loop(
    input: Receiver<Outbound>,
    out: Sender<ToSender>,
    written: Receiver<()>,
    budget: u64,
    wire_stats: bool,
    status: SharedStatus,
) {
    let mut enc = Encoder::new(budget, wire_stats);
    let mut in_flight = 0usize;
    let mut last_publish = Instant::now();
    let mut input_open = true;
    loop {
        while let Ok(item) = input.try_recv() {
            enc.absorb(item);
        }
        while written.try_recv().is_ok() {
            in_flight = in_flight.saturating_sub(1);
        }
        if in_flight < IN_FLIGHT {
            if let Some(f) = enc.next_frame() {
                let bye = matches!(f, ToSender::Goodbye { .. });
                if out.send(f).is_err() {
                    return;
                }
                in_flight += 1;
                if bye {
                    enc.publish(&status, budget);
                    return;
                }
                if last_publish.elapsed().as_millis() >= 20 {
                    enc.publish(&status, budget);
                    last_publish = Instant::now();
                }
                continue;
            }
        }
        enc.publish(&status, budget);
        last_publish = Instant::now();
        if !input_open {
            return;
        }
        crossbeam::channel::select! {
            recv(input) -> item => match item {
                Ok(item) => enc.absorb(item),
                Err(_) => input_open = false,
            },
            recv(written) -> w => match w {
                Ok(()) => in_flight = in_flight.saturating_sub(1),
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Image;
    use crate::standby::receiver::{Event, Receiver};
    use crate::wire::delta::tests::Rng;
    use crate::wire::frame::{decode_frame, encode_frame};
    use crate::wire::messages::{Hello, PROTOCOL_VERSION};

    const PG: u64 = delta::PAGE as u64;

    #[test]
    fn shadow_evicts_least_recently_dirtied() {
        let mut s = Shadow::new(10 * PG);
        for i in 0..10u64 {
            s.insert(i * PG, vec![i as u8; delta::PAGE].into(), i);
        }
        // Page 0 is dirtied again: it is now the most recent.
        s.insert(0, vec![9; delta::PAGE].into(), 10);
        for i in 10..15u64 {
            s.insert(i * PG, vec![i as u8; delta::PAGE].into(), 11);
        }
        assert_eq!(s.len(), 10);
        assert_eq!(s.bytes(), 10 * PG);
        assert_eq!(s.evictions, 5);
        assert!(s.get(0).is_some_and(|p| p[0] == 9), "refreshed page kept");
        for i in 1..=5u64 {
            assert!(s.get(i * PG).is_none(), "page {i} (oldest) evicted");
        }
        assert!(s.get(6 * PG).is_some() && s.get(14 * PG).is_some());
        // A budget of 0 keeps nothing.
        let mut z = Shadow::new(0);
        z.insert(0, vec![0; delta::PAGE].into(), 1);
        assert!(z.is_empty());
    }

    #[test]
    fn shadow_mirrors_resets_and_regions() {
        let mut s = Shadow::new(100 * PG);
        let maps = "1000-5000 rw-p 00000000 00:00 0\n";
        for a in 1..5u64 {
            s.insert(a * PG, vec![1; delta::PAGE].into(), 1);
        }
        s.insert(9 * PG, vec![1; delta::PAGE].into(), 1);
        s.commit(1, &[], maps);
        assert!(s.get(9 * PG).is_none(), "outside every region");
        assert_eq!(s.len(), 4);
        // Epoch 2 resets 0x1000..0x3000 and ships 0x2000 anew: the new 0x2000 stays.
        s.insert(2 * PG, vec![2; delta::PAGE].into(), 2);
        s.commit(2, &[(PG, 3 * PG)], maps);
        assert!(s.get(PG).is_none());
        assert!(s.get(2 * PG).is_some_and(|p| p[0] == 2));
        // The maps shrink: pages outside go.
        s.commit(3, &[], "1000-4000 rw-p 00000000 00:00 0\n");
        assert!(s.get(4 * PG).is_none() && s.get(3 * PG).is_some());
    }

    fn maps_for(v: u64) -> String {
        match v {
            // Mostly one layout; sometimes a region goes, sometimes another appears.
            0 => "10000-40000 rw-p 00000000 00:00 0\n50000-60000 rw-p 00000000 00:00 0\n".into(),
            1 => "10000-40000 rw-p 00000000 00:00 0\n".into(),
            _ => "10000-40000 rw-p 00000000 00:00 0\n50000-68000 rw-p 00000000 00:00 0\n".into(),
        }
    }

    fn hello() -> WireMsg {
        WireMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            app_pid: 1,
            exe: "/x".into(),
            argv: vec![],
            cwd: "/".into(),
            epoch_ms: 25,
            heartbeat_ms: 100,
            lease: None,
        })
    }

    /// Runs `epochs` random epochs through an encoder whose link takes at most `per_epoch`
    /// frames between two epochs (a slow writer), into a standby receiver; checks that the
    /// standby ends with exactly the image that applying every epoch raw gives, and returns
    /// the encoder for its counters.
    fn simulate(seed: u64, epochs: u64, budget: u64, per_epoch: u64) -> (Encoder, usize) {
        let mut r = Rng(seed);
        let mut enc = Encoder::new(budget, false);
        let mut rx = Receiver::new();
        rx.handle(hello()).unwrap();
        let mut reference = Image::default();
        let mut mem: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut seq = 0u64;
        let mut max_dirty_set = std::collections::BTreeSet::new();
        let mut deliver = |enc: &mut Encoder, rx: &mut Receiver, n: u64| {
            for _ in 0..n {
                let Some(ToSender::Frame { msg, .. }) = enc.next_frame() else {
                    return;
                };
                // Through the real frame layer.
                seq += 1;
                let f = encode_frame(seq, &msg).unwrap();
                let (m, _) = decode_frame(&f, seq).unwrap();
                match rx.handle(m) {
                    Ok(Event::Nothing | Event::Committed { .. }) => {}
                    other => panic!("seed {seed}: receiver: {other:?}"),
                }
            }
        };
        let mut layout = 0;
        for epoch in 1..=epochs {
            if r.below(10) == 0 {
                layout = r.below(3);
            }
            let n = if epoch == 1 { 40 } else { r.below(12) };
            let mut pages = BTreeMap::new();
            for _ in 0..n {
                let a = 0x10000 + r.below(0x5c) * PG;
                let p = match mem.get(&a) {
                    Some(old) if r.below(4) != 0 => r.touch(old),
                    _ => r.page(),
                };
                mem.insert(a, p.clone());
                pages.insert(a, p);
                max_dirty_set.insert(a);
            }
            let resets = if r.below(6) == 0 {
                let s = 0x10000 + r.below(0x50) * PG;
                vec![(s, s + (1 + r.below(8)) * PG)]
            } else {
                vec![]
            };
            let meta = EpochMeta {
                epoch,
                maps: maps_for(layout),
                resets,
                pages: pages.len() as u64,
                ..Default::default()
            };
            reference
                .apply(
                    meta.clone(),
                    pages
                        .iter()
                        .map(|(a, p)| (*a, p.clone().into_boxed_slice()))
                        .collect(),
                )
                .unwrap();
            enc.absorb(Outbound::Pages {
                epoch,
                pages: pages.into_iter().map(|(a, p)| (a, PageBytes(p))).collect(),
            });
            enc.absorb(Outbound::Commit {
                epoch,
                meta: Box::new(meta),
                output: Vec::new(),
            });
            let take = if per_epoch >= 1000 {
                u64::MAX
            } else {
                r.below(per_epoch + 1)
            };
            deliver(&mut enc, &mut rx, take);
        }
        deliver(&mut enc, &mut rx, u64::MAX);
        assert_eq!(rx.image.committed_epoch(), Some(epochs), "seed {seed}");
        assert_eq!(rx.image.regions, reference.regions, "seed {seed}");
        assert_eq!(
            rx.image.pages.keys().collect::<Vec<_>>(),
            reference.pages.keys().collect::<Vec<_>>(),
            "seed {seed}: page set"
        );
        for (a, p) in &reference.pages {
            assert_eq!(&rx.image.pages[a][..], &p[..], "seed {seed}: page {a:#x}");
        }
        (enc, max_dirty_set.len())
    }

    #[test]
    fn reconstructed_image_equals_raw_over_random_epochs() {
        for seed in 1..=std::env::var("REMUS_TEST_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
        {
            // A link that keeps up (merges nothing), with a large and a tiny shadow budget.
            let (e, _) = simulate(seed, 150, 64 << 20, 1000);
            assert_eq!(e.stats.merged_epochs, 0);
            assert!(e.stats.hits > 0, "deltas were used");
            simulate(seed, 150, 5 * PG, 1000);
            simulate(seed, 60, 0, 1000);
        }
    }

    #[test]
    fn slow_link_merges_and_stays_bounded() {
        for seed in 1..=std::env::var("REMUS_TEST_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
        {
            // At most one frame between epochs: epochs pile up and are merged.
            let (e, dirty_set) = simulate(seed, 300, 64 << 20, 1);
            assert!(e.stats.merged_epochs > 50, "{:?}", e.stats);
            // Waiting pages never exceed the app's dirty set (each page once).
            assert!(
                e.stats.max_pending_bytes <= dirty_set as u64 * PG,
                "pending {} > dirty set {}",
                e.stats.max_pending_bytes,
                dirty_set as u64 * PG
            );
        }
    }

    #[test]
    fn merged_epoch_composes_resets_and_meta() {
        let mut m = Merged::new(1);
        let pg = |b: u8| PageBytes(vec![b; delta::PAGE]);
        let maps = "1000-9000 rw-p 00000000 00:00 0\n".to_string();
        let meta = |epoch: u64, resets: Vec<(u64, u64)>| {
            Box::new(EpochMeta {
                epoch,
                maps: maps.clone(),
                resets,
                ..Default::default()
            })
        };
        m.add_pages(1, vec![(PG, pg(1)), (2 * PG, pg(1)), (3 * PG, pg(1))]);
        let out = |offset: u64, b: &[u8]| HeldOutput {
            stream: crate::wire::messages::OutStream::Stdout,
            offset,
            data: PageBytes(b.to_vec()),
        };
        m.add_commit(1, meta(1, vec![]), vec![out(0, b"one\n")]);
        // Epoch 2 resets 0x1000..0x3000 and writes 0x2000 again.
        m.add_pages(2, vec![(2 * PG, pg(2))]);
        m.add_commit(2, meta(2, vec![(PG, 3 * PG)]), vec![out(4, b"two\n")]);
        m.add_pages(3, vec![(3 * PG, pg(3))]);
        m.add_commit(3, meta(3, vec![(7 * PG, 8 * PG)]), vec![]);
        assert!(m.complete());
        let (epoch, pages, meta, output) = m.finish();
        assert_eq!(epoch, 3);
        // The merged epoch carries every folded epoch's output, in order.
        assert_eq!(output, vec![out(0, b"one\n"), out(4, b"two\n")]);
        let meta = meta.unwrap();
        assert_eq!(meta.epoch, 3);
        assert_eq!(meta.resets, vec![(PG, 3 * PG), (7 * PG, 8 * PG)]);
        assert_eq!(meta.pages, 2);
        assert_eq!(
            pages.iter().map(|(a, p)| (*a, p[0])).collect::<Vec<_>>(),
            vec![(2 * PG, 2), (3 * PG, 3)]
        );
    }
}
