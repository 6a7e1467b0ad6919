//! The primary end to end, in process: a fake shim (socketpair + memfd) on one side, a real
//! standby session on the other.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remus_abi::{MsgKind, STAGING_SIZE};

use super::shim_link::{FromShim, ShimLink};
use super::staging::fake::{write, FakeChunk};
use super::staging::Staging;
use super::{run_with, PrimaryArgs};
use crate::control::client::query_status;
use crate::control::status::{SharedStatus, Status};
use crate::standby::{session, SessionCtx, SessionEnd};
use crate::wire::messages::{AppExit, GoodbyeReason};

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both descriptors are fresh from socketpair and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn memfd() -> File {
    // SAFETY: the name is a valid NUL-terminated string.
    let fd = unsafe { libc::memfd_create(c"remus-test-staging".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is fresh from memfd_create.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(STAGING_SIZE as u64).unwrap();
    f
}

/// A stand-in for the app: a process that ignores the epoch signal.
fn fake_app() -> std::process::Child {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60");
    // SAFETY: the closure only calls signal(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(remus_abi::EPOCH_SIGNAL, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn expect(shim: &ShimLink, kind: MsgKind) -> remus_abi::Msg {
    match shim.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(FromShim::Msg(m)) if m.kind == kind as u32 => *m,
        Some(FromShim::Msg(m)) => panic!(
            "expected {kind:?}, got kind {}: {}",
            m.kind,
            String::from_utf8_lossy(m.text())
        ),
        _ => panic!("expected {kind:?}, got nothing"),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Rig {
    app: std::process::Child,
    shim: ShimLink,
    map: memmap2::MmapMut,
    control: PathBuf,
    primary: std::thread::JoinHandle<anyhow::Result<i32>>,
    standby: std::thread::JoinHandle<(SessionEnd, crate::standby::receiver::Receiver)>,
}

fn rig(name: &str) -> Rig {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let standby = std::thread::spawn(move || {
        let (s, peer) = listener.accept().unwrap();
        let ctx = SessionCtx {
            timeout: Duration::from_millis(500),
            status: SharedStatus::new(Status::new("standby", "waiting")),
            state_dir: None,
            stop: Arc::new(AtomicBool::new(false)),
            security: crate::wire::auth::LinkSecurity::Insecure,
            leader_key: None,
        };
        session(s, peer.to_string(), &ctx)
    });
    let app = fake_app();
    let (ctl_end, shim_end) = seqpacket_pair();
    let f = memfd();
    let staging = Staging::map(&f).unwrap();
    // SAFETY: the test owns the memfd; the primary only reads it after the fake shim announced
    // a chunk, as with the real shim.
    let map = unsafe { memmap2::MmapMut::map_mut(&f).unwrap() };
    let control = std::env::temp_dir().join(format!(
        "remus-primary-test-{name}-{}.sock",
        std::process::id()
    ));
    let args = PrimaryArgs {
        app_pid: app.id() as i32,
        standby: Some(addr),
        epoch_ms: 5,
        control: Some(control.clone()),
        heartbeat_ms: 20,
        allow_unprotected: false,
        key_file: None,
        insecure: true,
        stream_images: true,
        stream_batch_pages: super::stream::BATCH_PAGES,
        pipeline: Default::default(),
        metrics: None,
        service: None,
        arbiter: None,
    };
    let ctl = ShimLink::new(ctl_end).unwrap();
    let primary =
        std::thread::spawn(move || run_with(args, ctl, staging, Arc::new(AtomicBool::new(false))));
    let shim = ShimLink::new(shim_end).unwrap();
    shim.send(
        MsgKind::Hello,
        app.id() as u64,
        remus_abi::ABI_VERSION as u64,
        "",
    )
    .unwrap();
    expect(&shim, MsgKind::Ready);
    Rig {
        app,
        shim,
        map,
        control,
        primary,
        standby,
    }
}

fn committed_word(map: &[u8]) -> u64 {
    let o = remus_abi::COMMITTED_OFF;
    u64::from_le_bytes(map[o..o + 8].try_into().unwrap())
}

const MAPS: &str = "1000-3000 rw-p 00000000 00:00 0\n";

fn chunk<'a>(epoch: u64, chunk: u32, last: bool, pages: &'a [(u64, u8)]) -> FakeChunk<'a> {
    FakeChunk {
        epoch,
        chunk,
        last,
        pages,
        resets: &[],
        maps: MAPS,
        fds: &[(0, "/dev/null")],
        cwd: "/",
        pause_ns: 2_000_000,
        threads: &[],
        rendezvous_ns: 0,
    }
}

#[test]
fn epochs_flow_from_shim_to_standby_image() {
    let mut r = rig("flow");
    // Epoch 1 in two chunks: the first must be drained before the second is written.
    write(&mut r.map, &chunk(1, 0, false, &[(0x1000, 1)]));
    r.shim.send(MsgKind::EpochChunk, 1, 0, "").unwrap();
    let d = expect(&r.shim, MsgKind::Drained);
    assert_eq!((d.a, d.b), (1, 0));
    write(&mut r.map, &chunk(1, 1, true, &[(0x2000, 2)]));
    r.shim.send(MsgKind::EpochChunk, 1, 1, "").unwrap();
    wait_for("epoch 1 taken", || {
        query_status(&r.control).is_ok_and(|s| s.epoch == Some(1))
    });
    // Epoch 2, one chunk.
    write(&mut r.map, &chunk(2, 0, true, &[(0x1000, 9)]));
    r.shim.send(MsgKind::EpochChunk, 2, 0, "").unwrap();
    wait_for("epoch 2 acked", || {
        query_status(&r.control).is_ok_and(|s| s.committed_epoch == Some(2))
    });
    let st = query_status(&r.control).unwrap();
    assert_eq!(
        committed_word(&r.map),
        2,
        "the shim sees the committed epoch"
    );
    assert_eq!(st.state, "protected");
    assert!(st.protected && st.reason.is_none());
    assert_eq!(st.link, "up");
    assert_eq!(st.last_dirty_pages, Some(1));
    assert_eq!(st.pause_us.max, 2000);
    // Epoch 2 may have been merged into epoch 1 (both queued before the encoder woke up):
    // then 0x1000 travels once.
    assert!(st.bytes_raw >= 2 * 4096 && st.bytes_wire > 0, "{st:?}");
    // The app exits on its own: goodbye, no takeover.
    r.shim.send(MsgKind::Exiting, 3, 0, "").unwrap();
    assert_eq!(r.primary.join().unwrap().unwrap(), 0);
    let (end, rx) = r.standby.join().unwrap();
    assert!(
        matches!(
            end,
            SessionEnd::Goodbye(GoodbyeReason::AppExited(AppExit::Code(3)))
        ),
        "{end:?}"
    );
    assert_eq!(rx.image.committed_epoch(), Some(2));
    assert_eq!(rx.image.pages[&0x1000][0], 9);
    assert_eq!(rx.image.pages[&0x2000][0], 2);
    assert_eq!(rx.image.meta.as_ref().unwrap().fds[0].path, "/dev/null");
    assert!(!r.control.exists(), "control socket removed on exit");
    let _ = r.app.kill();
    let _ = r.app.wait();
}

#[test]
fn too_many_threads_make_the_primary_unprotected() {
    let mut r = rig("thread");
    write(&mut r.map, &chunk(1, 0, true, &[(0x1000, 1)]));
    r.shim.send(MsgKind::EpochChunk, 1, 0, "").unwrap();
    wait_for("epoch 1 acked", || {
        query_status(&r.control).is_ok_and(|s| s.committed_epoch == Some(1))
    });
    r.shim
        .send(MsgKind::ThreadCreated, 0, 0, "pthread_create")
        .unwrap();
    let (end, _) = r.standby.join().unwrap();
    assert!(
        matches!(&end, SessionEnd::Goodbye(GoodbyeReason::Unprotected { reason }) if reason.contains("thread")),
        "{end:?}"
    );
    wait_for("unprotected", || {
        query_status(&r.control).is_ok_and(|s| s.state == "unprotected")
    });
    let st = query_status(&r.control).unwrap();
    assert_eq!(
        committed_word(&r.map),
        remus_abi::COMMITTED_UNPROTECTED,
        "nothing held any more"
    );
    assert!(!st.protected);
    assert!(
        st.reason
            .as_deref()
            .unwrap()
            .contains("more threads than remus protects (256; pthread_create)"),
        "{st:?}"
    );
    // The app is SIGKILLed later: the primary exits quietly.
    r.app.kill().unwrap();
    let _ = r.app.wait();
    assert_eq!(r.primary.join().unwrap().unwrap(), 0);
}

#[test]
fn killed_app_looks_like_a_host_failure() {
    let mut r = rig("killed");
    write(&mut r.map, &chunk(1, 0, true, &[(0x1000, 1)]));
    r.shim.send(MsgKind::EpochChunk, 1, 0, "").unwrap();
    wait_for("epoch 1 acked", || {
        query_status(&r.control).is_ok_and(|s| s.committed_epoch == Some(1))
    });
    r.app.kill().unwrap();
    let _ = r.app.wait();
    assert_eq!(r.primary.join().unwrap().unwrap(), 0);
    let (end, rx) = r.standby.join().unwrap();
    assert!(matches!(end, SessionEnd::Lost(_)), "{end:?}");
    assert_eq!(rx.image.committed_epoch(), Some(1));
}

#[test]
fn no_standby_refuses_with_advice() {
    let app = fake_app();
    let (ctl_end, shim_end) = seqpacket_pair();
    let f = memfd();
    let staging = Staging::map(&f).unwrap();
    let control = std::env::temp_dir().join(format!(
        "remus-primary-test-refuse-{}.sock",
        std::process::id()
    ));
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = PrimaryArgs {
        app_pid: app.id() as i32,
        standby: Some(format!("127.0.0.1:{port}")),
        epoch_ms: 5,
        control: Some(control),
        heartbeat_ms: 20,
        allow_unprotected: false,
        key_file: None,
        insecure: true,
        stream_images: true,
        stream_batch_pages: super::stream::BATCH_PAGES,
        pipeline: Default::default(),
        metrics: None,
        service: None,
        arbiter: None,
    };
    let ctl = ShimLink::new(ctl_end).unwrap();
    let primary =
        std::thread::spawn(move || run_with(args, ctl, staging, Arc::new(AtomicBool::new(false))));
    let shim = ShimLink::new(shim_end).unwrap();
    shim.send(
        MsgKind::Hello,
        app.id() as u64,
        remus_abi::ABI_VERSION as u64,
        "",
    )
    .unwrap();
    let m = expect(&shim, MsgKind::Refuse);
    let text = String::from_utf8_lossy(m.text()).into_owned();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        text.contains("remusd standby --listen") && text.contains("REMUS_ALLOW_UNPROTECTED=1"),
        "{text}"
    );
    assert_eq!(primary.join().unwrap().unwrap(), 1);
    let mut app = app;
    let _ = app.kill();
    let _ = app.wait();
}

#[test]
fn threads_reach_the_standby_and_a_stuck_thread_does_not_stop_protection() {
    use remus_abi::{THREAD_LEADER as L, THREAD_MAIN as M};
    let mut r = rig("stuck");
    const PAGES: [(u64, u8); 1] = [(0x1000, 5)];
    let threaded = |epoch, threads| FakeChunk {
        threads,
        rendezvous_ns: 500_000,
        ..chunk(epoch, 0, true, &PAGES)
    };
    write(&mut r.map, &threaded(1, &[(77, M), (78, L), (79, 0)]));
    r.shim.send(MsgKind::EpochChunk, 1, 0, "").unwrap();
    wait_for("epoch 1 acked", || {
        query_status(&r.control).is_ok_and(|s| s.committed_epoch == Some(1))
    });
    let st = query_status(&r.control).unwrap();
    assert_eq!(st.threads, Some(3));
    assert_eq!((st.rendezvous_us.p50, st.copy_us.p50), (500, 1500));
    // The shim gives up epoch 2: thread 79 did not come in. Protection goes on.
    r.shim
        .send(
            MsgKind::ThreadStuck,
            79,
            2,
            "worker (blocks the epoch signal)",
        )
        .unwrap();
    wait_for("stuck thread shown", || {
        query_status(&r.control).is_ok_and(|s| s.stuck_thread.is_some())
    });
    let st = query_status(&r.control).unwrap();
    let stuck = st.stuck_thread.clone().unwrap();
    assert_eq!((stuck.tid, stuck.epoch), (79, 2));
    assert!(stuck.what.contains("worker"), "{stuck:?}");
    assert_eq!(st.threads_stuck_total, 1);
    assert!(st.protected, "{st:?}");
    assert_eq!(st.state, "protected");
    // The retried epoch 2 (same number) goes through and clears it.
    write(&mut r.map, &threaded(2, &[(77, M | L), (78, 0)]));
    r.shim.send(MsgKind::EpochChunk, 2, 0, "").unwrap();
    wait_for("epoch 2 acked", || {
        query_status(&r.control).is_ok_and(|s| s.committed_epoch == Some(2))
    });
    let st = query_status(&r.control).unwrap();
    assert!(st.stuck_thread.is_none(), "{st:?}");
    assert_eq!((st.threads, st.threads_stuck_total), (Some(2), 1));
    r.app.kill().unwrap();
    let _ = r.app.wait();
    let (_, rx) = r.standby.join().unwrap();
    let meta = rx.image.meta.as_ref().unwrap();
    assert_eq!(
        meta.threads
            .iter()
            .map(|t| (t.tid, t.flags))
            .collect::<Vec<_>>(),
        [(77, M | L), (78, 0)]
    );
    assert_eq!(meta.threads[1].ctx.rip, 0x402001);
    assert_eq!(meta.rendezvous_ns, 500_000);
    let _ = r.primary.join();
}

/// A primary holding connections (`--service-addr`) with a fake shim: its end of the shim
/// socket, and the program's pid the dump reads descriptors from (this test process).
fn conn_primary() -> (super::state::Primary, ShimLink) {
    let (ctl_end, shim_end) = seqpacket_pair();
    let f = memfd();
    let staging = Staging::map(&f).unwrap();
    let status = SharedStatus::new(Status::new("primary", "protected"));
    let args = PrimaryArgs {
        app_pid: std::process::id() as i32,
        standby: None,
        epoch_ms: 5,
        control: None,
        heartbeat_ms: 20,
        allow_unprotected: false,
        key_file: None,
        insecure: true,
        stream_images: false,
        stream_batch_pages: super::stream::BATCH_PAGES,
        pipeline: Default::default(),
        metrics: None,
        service: None,
        arbiter: None,
    };
    let output = super::output::Output::new(Vec::new(), status.clone());
    let mut p = super::state::Primary::new(
        args,
        ShimLink::new(ctl_end).unwrap(),
        staging,
        status,
        output,
        None,
    );
    p.tcp_hold = true;
    (p, ShimLink::new(shim_end).unwrap())
}

/// An epoch whose descriptor `fd` is a connected TCP socket.
fn meta_with_conn(fd: i32) -> crate::image::EpochMeta {
    let mut m = crate::image::EpochMeta::default();
    m.kobjs.insert(
        fd,
        crate::image::KernelObject::Socket(crate::image::SocketInfo {
            family: libc::AF_INET,
            sock_type: libc::SOCK_STREAM,
            protocol: libc::IPPROTO_TCP,
            listening: false,
            backlog: 0,
            reuseaddr: false,
            reuseport: false,
            v6only: false,
            addr: Vec::new(),
            peer: Some(vec![0; 16]),
        }),
    );
    m
}

/// The fake shim: waits for `TcpDumped` for `epoch`, then answers `kind` (None: closes).
fn answer_dump(shim: ShimLink, epoch: u64, kind: Option<MsgKind>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let m = expect(&shim, MsgKind::TcpDumped);
        assert_eq!(m.a, epoch);
        if let Some(k) = kind {
            shim.send(k, epoch, 0, "late, said the fake shim").unwrap();
        }
    })
}

fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn connections_are_dumped_while_the_shim_holds_the_epoch() {
    use std::os::fd::AsRawFd;
    let (c, s) = tcp_pair();
    let (mut p, shim) = conn_primary();
    let t = answer_dump(shim, 7, Some(MsgKind::TcpHeld));
    let mut meta = meta_with_conn(s.as_raw_fd());
    let out = p.dump_conns(7, &mut meta);
    t.join().unwrap();
    assert!(
        matches!(out, super::epoch_loop::DumpOutcome::Taken),
        "{out:?} (the dump needs CAP_NET_ADMIN: run the tests as root)"
    );
    assert_eq!(meta.tcp.len(), 1, "{:?}", meta.tcp);
    assert_eq!(meta.tcp[0].0, s.as_raw_fd());
    assert_eq!(meta.tcp[0].1.local, s.local_addr().unwrap());
    assert_eq!(meta.tcp[0].1.remote, c.local_addr().unwrap());
}

#[test]
fn a_late_dump_abandons_the_epoch_and_says_so() {
    use std::os::fd::AsRawFd;
    let (_c, s) = tcp_pair();
    let (mut p, shim) = conn_primary();
    let t = answer_dump(shim, 8, Some(MsgKind::TcpDumpLate));
    let mut meta = meta_with_conn(s.as_raw_fd());
    let out = p.dump_conns(8, &mut meta);
    t.join().unwrap();
    match out {
        super::epoch_loop::DumpOutcome::Abandoned(why) => {
            assert!(
                why.contains("epoch 8 abandoned") && why.contains("late, said the fake shim"),
                "{why}"
            )
        }
        other => panic!("expected the epoch abandoned, got {other:?}"),
    }
    assert!(meta.tcp.is_empty());
}

#[test]
fn a_connection_that_cannot_be_read_abandons_the_epoch_naming_it() {
    let (mut p, shim) = conn_primary();
    // Not a descriptor of this process.
    let t = answer_dump(shim, 9, Some(MsgKind::TcpHeld));
    let mut meta = meta_with_conn(100_000);
    let out = p.dump_conns(9, &mut meta);
    t.join().unwrap();
    match out {
        super::epoch_loop::DumpOutcome::Abandoned(why) => {
            assert!(why.contains("fd 100000"), "{why}")
        }
        other => panic!("expected the epoch abandoned, got {other:?}"),
    }
}

#[test]
fn a_shim_gone_during_the_dump_leaves_the_epoch_uncommitted() {
    use std::os::fd::AsRawFd;
    let (_c, s) = tcp_pair();
    let (mut p, shim) = conn_primary();
    let t = answer_dump(shim, 10, None);
    let mut meta = meta_with_conn(s.as_raw_fd());
    let out = p.dump_conns(10, &mut meta);
    t.join().unwrap();
    assert!(
        matches!(out, super::epoch_loop::DumpOutcome::ShimGone),
        "{out:?}"
    );
}
