//! The packet gate (DESIGN §9): every packet the program's namespace sends out — data, pure
//! ACKs, SYN/FIN/RST, UDP — waits in a netfilter queue on the host's side of the veth pair
//! (`iptables -t raw -I PREROUTING -i rmh<tag> -j NFQUEUE --queue-num N`, no
//! `--queue-bypass`: with nobody reading the queue the kernel drops) until the epoch that
//! produced it is committed, then leaves in order with one batch verdict.
//!
//! Tags: a packet is tagged, when the receiving thread reads it, with the gate's current tag,
//! which the epoch loop moves ([`Gate::set_tag`]) just before it signals an epoch: to the
//! epoch after the one being signalled. A packet the program sent before the pause may be
//! read after the move and get the later tag (released one epoch late: safe); a packet sent
//! after the program resumed can only be read after the move (never released early). The
//! kernel numbers queued packets in arrival order and a batch verdict accepts every id up to
//! the one given, so the held packets are kept as runs of one tag (first arrival, last id).
//!
//! When protection stops ([`Gate::release_all`]) everything held goes and later packets pass
//! at once (one batch verdict per read); [`Gate::hold_again`] holds again. Dropping the gate
//! removes the rule and closes the queue: what is still held is dropped by the kernel.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::nfqueue::{NfQueue, NF_ACCEPT};
use super::run;

/// Packets the kernel keeps in the queue before it drops (a 25 ms epoch at about 65 k
/// packets/s is some 1,600; GSO packets count once).
const QUEUE_MAXLEN: u32 = 65536;
/// Queue numbers tried from the one derived from the tag.
const QUEUE_TRIES: u16 = 64;

/// Packets of one tag that arrived in a row.
#[derive(Debug, Clone, Copy)]
struct Run {
    tag: u64,
    last_id: u32,
    packets: u64,
    since: Instant,
}

/// The packets held, as runs of one tag in arrival order: what a commit releases is a prefix.
#[derive(Default)]
struct Held {
    runs: VecDeque<Run>,
    /// Protection stopped: nothing is held.
    passing: bool,
}

impl Held {
    /// `packets` more arrived, the last with id `last_id`, read while the tag was `tag`;
    /// true when they start a new run (the epoch loop is woken for those).
    fn add(&mut self, tag: u64, last_id: u32, packets: u64, now: Instant) -> bool {
        match self.runs.back_mut() {
            Some(r) if r.tag == tag => {
                r.last_id = last_id;
                r.packets += packets;
                false
            }
            _ => {
                self.runs.push_back(Run {
                    tag,
                    last_id,
                    packets,
                    since: now,
                });
                true
            }
        }
    }

    /// Epoch `epoch` committed: the id up to which packets leave (the longest prefix of runs
    /// tagged up to `epoch`: never one that arrived after a later-tagged packet) and how many.
    fn take_committed(&mut self, epoch: u64) -> Option<(u32, u64)> {
        let mut out: Option<(u32, u64)> = None;
        while let Some(r) = self.runs.front() {
            if r.tag > epoch {
                break;
            }
            let n = out.map_or(0, |o| o.1);
            out = Some((r.last_id, n + r.packets));
            self.runs.pop_front();
        }
        out
    }

    /// Everything: the last id and how many.
    fn take_all(&mut self) -> Option<(u32, u64)> {
        let last = self.runs.back()?.last_id;
        let n = self.runs.drain(..).map(|r| r.packets).sum();
        Some((last, n))
    }

    /// Since when packets tagged `tag` or later wait.
    fn waiting_since(&self, tag: u64) -> Option<Instant> {
        self.runs.back().filter(|r| r.tag >= tag).map(|r| r.since)
    }
}

/// Counters (for status and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateCounts {
    /// The netfilter queue number and the veth the rule matches.
    pub queue: u16,
    pub veth: String,
    pub held_packets: u64,
    pub released_packets: u64,
    pub passed_packets: u64,
}

struct Inner {
    q: NfQueue,
    tag: AtomicU64,
    held: Mutex<Held>,
    /// Written when packets arrive with a tag no epoch has been signalled for yet.
    wake: OwnedFd,
    released: AtomicU64,
    passed: AtomicU64,
    stop: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn accept(&self, id: u32) {
        if let Err(e) = self.q.verdict_batch(id, NF_ACCEPT) {
            tracing::error!("packet gate: batch verdict up to id {id}: {e}");
        }
    }
}

/// Starting the gate failed.
#[derive(Debug, thiserror::Error)]
pub enum StartGateError {
    #[error("cannot bind a netfilter queue (tried {first}..{last}): {err}; is nfnetlink_queue available and is remusd root?")]
    Bind {
        first: u16,
        last: u16,
        err: io::Error,
    },
    #[error("cannot create the gate's eventfd: {0}")]
    Eventfd(io::Error),
    #[error("cannot install the gate's iptables rule: {0}")]
    Rule(String),
    #[error("cannot start the gate's thread: {0}")]
    Thread(io::Error),
}

/// The gate; see the module docs.
pub struct Gate {
    inner: Arc<Inner>,
    veth: String,
    rule: Mutex<Option<Vec<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Gate {
    /// Binds a queue, starts reading it, then installs the rule for packets coming in from
    /// `veth` (the host's end of the program's pair). `first_tag`: the epoch the first
    /// packets belong to.
    pub fn start(veth: &str, queue_hint: u16, first_tag: u64) -> Result<Gate, StartGateError> {
        let mut last_err = None;
        let mut q = None;
        for i in 0..QUEUE_TRIES {
            let num = queue_hint.wrapping_add(i);
            match NfQueue::bind(num, QUEUE_MAXLEN) {
                Ok(b) => {
                    q = Some(b);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let q = q.ok_or_else(|| StartGateError::Bind {
            first: queue_hint,
            last: queue_hint.wrapping_add(QUEUE_TRIES - 1),
            err: last_err.unwrap_or_else(|| io::Error::other("no queue tried")),
        })?;
        // SAFETY: a plain eventfd call; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(StartGateError::Eventfd(io::Error::last_os_error()));
        }
        // SAFETY: efd was just returned by eventfd() and is ours alone.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let num = q.num;
        let inner = Arc::new(Inner {
            q,
            tag: AtomicU64::new(first_tag),
            held: Mutex::new(Held::default()),
            wake,
            released: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("packet-gate".into())
            .spawn(move || receive(&i2))
            .map_err(StartGateError::Thread)?;
        let g = Gate {
            inner,
            veth: veth.to_string(),
            rule: Mutex::new(None),
            thread: Mutex::new(Some(thread)),
        };
        let rule: Vec<String> = [
            "-t",
            "raw",
            "PREROUTING",
            "-i",
            veth,
            "-j",
            "NFQUEUE",
            "--queue-num",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([num.to_string()])
        .collect();
        let mut add = vec![
            "-w".to_string(),
            rule[0].clone(),
            rule[1].clone(),
            "-I".into(),
        ];
        add.extend(rule[2..].iter().cloned());
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        run("iptables", &add).map_err(StartGateError::Rule)?;
        *g.rule.lock().unwrap_or_else(|e| e.into_inner()) = Some(rule);
        tracing::info!(
            veth,
            queue = num,
            "packet gate on: every packet from the program waits for its epoch's commit"
        );
        Ok(g)
    }

    /// Packets read from now on belong to epoch `tag` (called just before an epoch signal,
    /// with the epoch after the one signalled).
    pub fn set_tag(&self, tag: u64) {
        self.inner.tag.store(tag, Ordering::Release);
    }

    /// Epoch `epoch` is committed: every packet tagged up to it leaves, in order.
    pub fn commit(&self, epoch: u64) {
        let mut h = self.inner.lock();
        if let Some((id, n)) = h.take_committed(epoch) {
            self.inner.accept(id);
            self.inner.released.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Protection stopped: everything held leaves, later packets pass at once.
    pub fn release_all(&self) {
        let mut h = self.inner.lock();
        h.passing = true;
        if let Some((id, n)) = h.take_all() {
            self.inner.accept(id);
            self.inner.released.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Packets wait for commits again (those from now on).
    pub fn hold_again(&self) {
        self.inner.lock().passing = false;
    }

    /// Since when packets wait for an epoch that is not signalled yet (tag `tag`), if any.
    pub fn waiting_since(&self, tag: u64) -> Option<Instant> {
        self.inner.lock().waiting_since(tag)
    }

    /// Readable when packets arrived for an epoch not signalled yet; [`Gate::clear_wake`].
    pub fn wake_fd(&self) -> RawFd {
        self.inner.wake.as_raw_fd()
    }

    pub fn clear_wake(&self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into v.
        unsafe { libc::read(self.inner.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn counts(&self) -> GateCounts {
        let held = self.inner.lock().runs.iter().map(|r| r.packets).sum();
        GateCounts {
            queue: self.inner.q.num,
            veth: self.veth.clone(),
            held_packets: held,
            released_packets: self.inner.released.load(Ordering::Relaxed),
            passed_packets: self.inner.passed.load(Ordering::Relaxed),
        }
    }

    /// The queue number bound.
    pub fn queue(&self) -> u16 {
        self.inner.q.num
    }
}

impl Gate {
    /// Removes the rule (the program's packets pass freely from now on unless they are
    /// released already) and stops reading the queue (what it still holds is dropped). Also
    /// run by drop; a second call does nothing.
    pub fn stop(&self) {
        let rule = self.rule.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rule) = rule {
            let mut del = vec![
                "-w".to_string(),
                rule[0].clone(),
                rule[1].clone(),
                "-D".into(),
            ];
            del.extend(rule[2..].iter().cloned());
            let del: Vec<&str> = del.iter().map(String::as_str).collect();
            if let Err(e) = run("iptables", &del) {
                tracing::warn!("removing the gate's rule: {e}");
            }
        }
        self.inner.stop.store(true, Ordering::Release);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
            tracing::info!(veth = %self.veth, "packet gate off");
        }
    }
}

impl Gate {
    /// The primary side is dying (the program died without a word): stops reading the queue
    /// but leaves the rule, so that the kernel drops whatever the program's namespace still
    /// sends (a dead program's sockets answer its clients with resets, which must not reach
    /// them: the standby is about to carry those connections on). The topology keeper removes
    /// the rule after the veth pair (`Topology::teardown`). A later [`Gate::stop`] leaves the
    /// rule too.
    pub fn abandon(&self) {
        let rule = self.rule.lock().unwrap_or_else(|e| e.into_inner()).take();
        if rule.is_some() {
            tracing::info!(veth = %self.veth, "the program died: its gate rule stays (what its namespace sends is dropped)");
        }
        self.stop();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receiving thread: reads packet ids, tags them, passes them at once when protection
/// stopped.
fn receive(inner: &Inner) {
    let mut buf = vec![0u8; 256 << 10];
    let mut ids = Vec::with_capacity(4096);
    while !inner.stop.load(Ordering::Acquire) {
        match crate::sys::poll_readable(&[inner.q.raw_fd()], Some(Duration::from_millis(100))) {
            Ok(r) if r[0] => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::error!("packet gate: poll: {e}");
                return;
            }
        }
        ids.clear();
        if let Err(e) = inner.q.recv_ids(&mut buf, &mut ids) {
            // The queue is dead: nothing passes (the kernel drops what the rule queues).
            tracing::error!("packet gate: reading the queue: {e}; packets from the program are dropped from now on");
            return;
        }
        let Some(&last) = ids.last() else { continue };
        let tag = inner.tag.load(Ordering::Acquire);
        let mut h = inner.lock();
        if h.passing {
            inner.accept(last);
            inner.passed.fetch_add(ids.len() as u64, Ordering::Relaxed);
            continue;
        }
        if h.add(tag, last, ids.len() as u64, Instant::now()) {
            let one = 1u64;
            // SAFETY: writing 8 bytes from `one` to our eventfd.
            unsafe { libc::write(inner.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Removes every gate rule for `veth` (a gate whose remusd died leaves its rule behind).
pub fn remove_rules_for(veth: &str) {
    let Ok(rules) = run("iptables", &["-w", "-t", "raw", "-S", "PREROUTING"]) else {
        return;
    };
    let needle = format!("-i {veth} ");
    for line in rules
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("NFQUEUE"))
    {
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let mut args = vec!["-w", "-t", "raw", "-D"];
        args.extend(rest.split_whitespace());
        if let Err(e) = run("iptables", &args) {
            tracing::warn!("removing a leftover gate rule ({line}): {e}");
        }
    }
}

/// remusd primary of a program in a service namespace: moves this (still single-threaded)
/// process into the host's namespace, `$REMUS_OUTER_NETNS` (the topology keeper's), so that
/// its link to the standby never crosses the gate and the gate's queue and rule are the
/// host's.
pub fn enter_outer_netns() -> Result<(), String> {
    let path = std::env::var("REMUS_OUTER_NETNS").map_err(|_| {
        "--service-addr: the program is not in a service namespace ($REMUS_OUTER_NETNS unset): \
         run it with `remus-run --service-addr ADDR/PREFIX`"
            .to_string()
    })?;
    let f = std::fs::File::open(&path)
        .map_err(|e| format!("the host's network namespace {path} (the topology keeper's): {e}"))?;
    // SAFETY: setns on an open namespace fd; remusd has one thread at this point.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "entering the host's network namespace {path}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_release_prefixes_in_order() {
        let t = Instant::now();
        let mut h = Held::default();
        assert!(h.add(1, 10, 3, t));
        assert!(!h.add(1, 12, 2, t));
        assert!(h.add(2, 20, 4, t));
        assert!(h.add(3, 30, 1, t));
        assert_eq!(h.waiting_since(3), Some(t));
        assert_eq!(h.waiting_since(4), None);
        assert_eq!(h.take_committed(0), None);
        assert_eq!(h.take_committed(1), Some((12, 5)));
        assert_eq!(h.take_committed(1), None);
        assert_eq!(h.take_committed(3), Some((30, 5)));
        assert_eq!(h.take_all(), None);
    }

    #[test]
    fn a_lower_tag_behind_a_higher_one_waits_for_it() {
        // Tags can only go down if epoch numbers did (never by design): even then nothing
        // leaves ahead of a packet that is still held.
        let t = Instant::now();
        let mut h = Held::default();
        h.add(5, 1, 1, t);
        h.add(2, 2, 1, t);
        assert_eq!(h.take_committed(3), None);
        assert_eq!(h.take_committed(5), Some((2, 2)));
    }

    #[test]
    fn release_all_takes_everything() {
        let t = Instant::now();
        let mut h = Held::default();
        h.add(7, 100, 2, t);
        h.add(8, 105, 3, t);
        assert_eq!(h.take_all(), Some((105, 5)));
        assert!(h.runs.is_empty());
    }
}
