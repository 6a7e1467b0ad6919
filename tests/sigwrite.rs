//! An app whose signal handler writes to the same TCP socket (and stdout) as its main loop
//! (issue 9): `tests/progs/sigwrite.c` sends "h N" lines from a SIGALRM handler every 300 us
//! and "m N" lines from its main loop for 4 s, then a final `end ...` marker. The reader
//! checks both streams line by line: every h and every m number exactly once, in order, no
//! gap, no duplicate, no torn line, and the marker's counts match.
//!
//! First without remus (the baseline: the program itself is correct), then protected by a
//! standby: the app's handler then re-enters the shim's hooks (the output ring, the hook
//! depth) while the main loop is inside one.

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use remus::{describe_status, progs, run_with_timeout, Protected, ProtectedOpts, Standby};

/// Deadline for anything that should happen (against hangs only).
const LONG: Duration = Duration::from_secs(120);
/// At least this many lines from each source, or the run did not test much.
const MIN_LINES: u64 = 100;

/// What the final marker says, checked against the lines before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    m: u64,
    h: u64,
    overlap: u64,
    eintr: u64,
    partial: u64,
}

/// Parses `end m M h H overlap O eintr E partial P`.
fn parse_end(l: &str) -> Option<Counts> {
    let w: Vec<&str> = l.split(' ').collect();
    let keys = [
        "end", "m", "", "h", "", "overlap", "", "eintr", "", "partial", "",
    ];
    if w.len() != keys.len() || w.iter().zip(keys).any(|(a, k)| !k.is_empty() && *a != k) {
        return None;
    }
    let n = |i: usize| w[i].parse::<u64>().ok();
    Some(Counts {
        m: n(2)?,
        h: n(4)?,
        overlap: n(6)?,
        eintr: n(8)?,
        partial: n(10)?,
    })
}

/// Checks one stream (the socket's bytes or stdout's) line by line. Returns the final
/// marker's counts, or every problem found (at most 20 of them, with the line numbers).
fn check_stream(text: &str) -> Result<Counts, String> {
    let mut problems = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        let last = text.rsplit('\n').next().unwrap_or("");
        problems.push(format!("the stream ends inside a line: {last:?}"));
    }
    let lines: Vec<&str> = text.lines().collect();
    // The last number seen from each source.
    let (mut m, mut h) = (0u64, 0u64);
    let mut end = None;
    for (i, l) in lines.iter().enumerate() {
        let at = i + 1;
        if end.is_some() {
            problems.push(format!("line {at} after the final marker: {l:?}"));
            continue;
        }
        if l.starts_with("end ") {
            match parse_end(l) {
                Some(c) => end = Some(c),
                None => problems.push(format!("line {at}: a torn final marker: {l:?}")),
            }
            continue;
        }
        let parsed = l
            .split_once(' ')
            .and_then(|(tag, n)| Some((tag, n.parse::<u64>().ok()?)))
            .filter(|(tag, n)| matches!(*tag, "h" | "m") && *n > 0 && !l.contains('\r'));
        let Some((tag, n)) = parsed else {
            problems.push(format!("line {at}: torn or foreign line {l:?}"));
            continue;
        };
        let last = if tag == "h" { &mut h } else { &mut m };
        if n == *last + 1 {
            *last = n;
        } else if n > *last + 1 {
            problems.push(format!(
                "line {at}: {tag} {n} after {tag} {}: {tag} {}..={} missing",
                *last,
                *last + 1,
                n - 1
            ));
            *last = n;
        } else {
            problems.push(format!(
                "line {at}: {tag} {n} again (or out of order) after {tag} {}",
                *last
            ));
        }
    }
    match end {
        None => problems.push(format!(
            "no final `end ...` marker ({} lines; the last m {m}, the last h {h})",
            lines.len()
        )),
        Some(c) => {
            if (c.m, c.h) != (m, h) {
                problems.push(format!(
                    "the final marker counts m {} h {}, the lines end at m {m} h {h}",
                    c.m, c.h
                ));
            }
        }
    }
    match end {
        Some(c) if problems.is_empty() => Ok(c),
        _ => {
            let more = problems.len().saturating_sub(20);
            problems.truncate(20);
            if more > 0 {
                problems.push(format!("... and {more} more"));
            }
            Err(problems.join("\n"))
        }
    }
}

/// A TCP server on 127.0.0.1 that accepts one connection and reads it to the end, in a
/// thread: `take` returns the bytes.
struct Sink {
    addr: String,
    reader: thread::JoinHandle<Result<Vec<u8>, String>>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local_addr").to_string();
        l.set_nonblocking(true).expect("nonblocking");
        let reader = thread::spawn(move || {
            let start = Instant::now();
            let mut c = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if start.elapsed() > LONG {
                            return Err(format!("nobody connected within {LONG:?}"));
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            c.set_nonblocking(false).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(LONG)).map_err(|e| e.to_string())?;
            let mut v = Vec::new();
            match c.read_to_end(&mut v) {
                Ok(_) => Ok(v),
                Err(e) => Err(format!("reading the socket after {} bytes: {e}", v.len())),
            }
        });
        Sink { addr, reader }
    }

    fn take(self) -> Result<String, String> {
        let v = self
            .reader
            .join()
            .map_err(|_| "the reader panicked".to_string())??;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
}

/// Both streams of one run checked; their markers must agree. Panics naming `what`.
fn check_run(what: &str, socket: &str, stdout: &str, report: &dyn Fn() -> String) -> Counts {
    let (s, o) = match (check_stream(socket), check_stream(stdout)) {
        (Ok(s), Ok(o)) => (s, o),
        (s, o) => {
            let say = |r: Result<Counts, String>| match r {
                Ok(c) => format!("right ({c:?})"),
                Err(e) => format!("wrong:\n{e}"),
            };
            panic!(
                "{what}: the socket's lines are {}\n{what}: stdout's lines are {}\n{}",
                say(s),
                say(o),
                report()
            )
        }
    };
    assert_eq!(
        s,
        o,
        "{what}: the socket and stdout end with different markers\n{}",
        report()
    );
    assert!(
        s.m >= MIN_LINES && s.h >= MIN_LINES,
        "{what}: only {} m and {} h lines: the program hardly ran\n{}",
        s.m,
        s.h,
        report()
    );
    eprintln!("{what}: {s:?}");
    s
}

#[test]
fn signal_handler_and_main_loop_writing_one_socket_deliver_every_line_once() {
    let prog = &progs().sigwrite;

    // Without remus: every line once, in order, whole.
    let sink = Sink::start();
    let mut cmd = Command::new(prog);
    cmd.arg(&sink.addr).env_remove("LD_PRELOAD");
    let (st, stdout, stderr) = run_with_timeout(&mut cmd, LONG);
    let socket = sink.take().unwrap_or_else(|e| panic!("baseline: {e}"));
    let report = || format!("--- stderr:\n{stderr}");
    let st = st.unwrap_or_else(|| panic!("baseline: sigwrite hung\n{}", report()));
    assert_eq!(
        st.code(),
        Some(0),
        "baseline: sigwrite ended with {}\n{}",
        describe_status(&st),
        report()
    );
    check_run("without remus", &socket, &stdout, &report);

    // Protected by a standby: the same, line by line.
    let standby = Standby::start(500);
    let sink = Sink::start();
    let mut app = Protected::start(
        prog,
        &[&sink.addr],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let st = app.wait_exit(LONG);
    let socket = sink.take();
    let report = || format!("{}{}", app.report(), standby.report());
    assert_eq!(
        st.code(),
        Some(0),
        "protected: sigwrite ended with {} (stderr: {})\n{}",
        describe_status(&st),
        app.stderr_text(),
        report()
    );
    let socket = socket.unwrap_or_else(|e| panic!("protected: {e}\n{}", report()));
    let stdout: String = app
        .stdout_lines()
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let c = check_run("protected", &socket, &stdout, &report);
    // What the test is for happened: the handler ran while the main loop was inside its
    // send or write (inside the shim's hook).
    assert!(
        c.overlap > 0,
        "protected: the handler never ran while the main loop was sending ({c:?}): the test \
         did not exercise a hook re-entered by the app's signal handler\n{}",
        report()
    );
}

#[test]
fn the_checker_finds_gaps_duplicates_and_torn_lines() {
    let end = "end m 2 h 2 overlap 0 eintr 0 partial 0\n";
    let good = format!("m 1\nh 1\nh 2\nm 2\n{end}");
    assert_eq!(
        check_stream(&good).map(|c| (c.m, c.h)),
        Ok((2, 2)),
        "{good}"
    );
    for bad in [
        format!("m 1\nh 2\nm 2\n{end}"),           // h 1 missing
        format!("m 1\nh 1\nh 1\nh 2\nm 2\n{end}"), // h 1 twice
        format!("m 1\nh 1\nh 2\nm 2\nm 1\n{end}"), // out of order
        format!("m 1\nh 1\nh 2\nm h 2\n2\n{end}"), // torn
        "m 1\nh 1\nh 2\nm 2\n".into(),             // no marker
        format!("m 1\nh 1\nh 2\nm 2\n{end}m 3\n"), // after the marker
        "m 1\nh 1\nh 2\nm 2\nend m 2 h 2 overlap 0 eintr 0 partial 0".into(), // cut
        format!("m 1\nh 1\nm 2\n{end}"),           // the marker counts more
    ] {
        assert!(check_stream(&bad).is_err(), "accepted:\n{bad}");
    }
}
