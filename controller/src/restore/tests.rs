//! The restore child with chosen ids, without a shim: a stopped process with a chosen pid,
//! threads injected with chosen TIDs, a TID taken on this host (the error, and the new PID
//! namespace that frees it). Root only (set_tid needs CAP_CHECKPOINT_RESTORE).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::child::{spawn_stopped, ChildIds};
use super::inject::Tracee;
use super::pidns::PidNamespace;
use super::{layout, RestoreError, INJ_PAGES};
use crate::image::PAGE_SIZE;

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!(
                "SKIPPED: this test needs root (clone3 set_tid needs CAP_CHECKPOINT_RESTORE)"
            );
            return;
        }
    };
}

fn pid_max() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number")
}

/// `n` numbers near the top of pid_max that no process or thread holds now; `skip` of them
/// from the top are left out first (tests running beside each other take different ones).
fn free_ids(n: usize, skip: i32) -> Vec<i32> {
    let top = pid_max() - 1 - skip;
    let out: Vec<i32> = (top - 2000..=top)
        .rev()
        .filter(|t| !std::path::Path::new(&format!("/proc/{t}")).exists())
        .take(n)
        .collect();
    assert_eq!(out.len(), n, "no {n} free ids below {top}");
    out
}

fn stopped_child(pid: i32, mntns: Option<i32>) -> Result<Tracee, RestoreError> {
    let own = std::fs::read_to_string("/proc/self/maps").unwrap();
    let own = crate::image::parse_maps(&own).unwrap();
    let busy: Vec<(u64, u64)> = own.iter().map(|r| (r.start, r.end)).collect();
    let len = INJ_PAGES * PAGE_SIZE;
    let inj = layout::find_free(&busy, len).unwrap();
    let got = spawn_stopped(inj, len, ChildIds { pid, mntns })?;
    Tracee::new(got, inj, len)
}

fn tasks(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// `NSpid:` of /proc/<pid>/task/<tid>/status: the id at each level, outermost first.
fn nspid(pid: i32, tid: i32) -> Vec<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn gone(pid: i32) -> bool {
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if t.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn threads_are_injected_with_their_own_tids() {
    root_only!();
    let ids = free_ids(3, 0);
    let (pid, t1, t2) = (ids[0], ids[1], ids[2]);
    let mut t = stopped_child(pid, None).expect("a stopped child with a chosen pid");
    assert_eq!(t.pid, pid, "the restore child has the pid asked for");
    let a = t.inject_thread(t1, 0x7000_1000).expect("thread 1");
    let b = t.inject_thread(t2, 0x7000_2000).expect("thread 2");
    assert_eq!((a, b), (t1, t2));
    assert_eq!(tasks(pid), BTreeSet::from([pid, t1, t2]));
    // Each added thread is stopped before its first instruction, with its TLS.
    let added = t.added_threads();
    assert_eq!(added.len(), 2);
    assert_eq!(added[0].base_regs().fs_base, 0x7000_1000);
    assert_eq!(added[1].base_regs().fs_base, 0x7000_2000);
    for tid in [t1, t2] {
        let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        let state = st.rsplit(") ").next().unwrap().chars().next().unwrap();
        assert_eq!(state, 't', "thread {tid} is in a ptrace stop: {st}");
    }
    drop(t); // killed and reaped, threads first
    assert!(gone(pid), "the half-built process is reaped");
}

#[test]
fn a_taken_tid_is_an_error_or_a_new_pid_namespace() {
    root_only!();
    // A live process holds a number: `sleep`, and a thread of this test process.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let taken = sleeper.id() as i32;
    // Until it has exec'd, it is named after this test's thread.
    let t0 = Instant::now();
    while std::fs::read_to_string(format!("/proc/{taken}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sleep did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let taken_thread = {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no arguments.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = stop_rx.recv_timeout(Duration::from_secs(60));
        });
        (rx.recv().unwrap(), stop_tx, h)
    };
    let free = free_ids(1, 3000)[0];

    // The process id taken: a clear error naming who holds it.
    let e = stopped_child(taken, None).err().expect("pid in use");
    assert!(
        matches!(e, RestoreError::TidTaken { tid, .. } if tid == taken),
        "{e}"
    );
    assert!(e.to_string().contains("(sleep)"), "{e}");
    eprintln!("expected error: {e}");
    // A thread id taken: the same.
    let mut t = stopped_child(free, None).expect("a free pid");
    let e = t.inject_thread(taken_thread.0, 0).expect_err("tid in use");
    assert!(
        matches!(e, RestoreError::TidTaken { tid, .. } if tid == taken_thread.0),
        "{e}"
    );
    assert!(e.to_string().contains("thread"), "{e}");
    drop(t);

    // In a new PID namespace both numbers are free.
    let ns = PidNamespace::create(taken).expect("a new PID namespace");
    let init = ns.init;
    let mut t = {
        let _in = ns.enter().expect("setns into it");
        stopped_child(taken, Some(ns.mntns_fd())).expect("the process in the namespace")
    };
    let outer = t.pid;
    assert_ne!(outer, taken, "the host gives it another outer number");
    assert_eq!(nspid(outer, outer), [outer, taken]);
    let tid = t
        .inject_thread(taken_thread.0, 0)
        .expect("thread in the namespace");
    assert_eq!(nspid(outer, tid), [tid, taken_thread.0]);
    assert_eq!(tasks(outer), BTreeSet::from([outer, tid]));
    // Its mount namespace is the init's, with a /proc of the new PID namespace: the program
    // sees its own ids there.
    let theirs = std::fs::read_link(format!("/proc/{outer}/ns/mnt")).unwrap();
    assert_eq!(
        theirs,
        std::fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap()
    );
    assert_ne!(theirs, std::fs::read_link("/proc/self/ns/mnt").unwrap());
    let inside: BTreeSet<String> = std::fs::read_dir(format!("/proc/{outer}/root/proc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(
        inside,
        BTreeSet::from(["1".to_string(), taken.to_string()]),
        "the fresh /proc lists the init and the program"
    );
    // The host did not see our setns: this thread's children are born here again.
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/pid_for_children").unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );
    drop(t);
    drop(ns); // never said go: the init ends, and the namespace with it
    assert!(gone(outer));
    assert!(
        gone(init),
        "the namespace's init exits when the restore is abandoned"
    );

    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let (_, stop, h) = taken_thread;
    drop(stop);
    h.join().unwrap();
}
