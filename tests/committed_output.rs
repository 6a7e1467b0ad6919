//! Committed output is never lost (DESIGN §10). The primary releases an epoch's output only
//! once the standby has acknowledged that epoch; when the primary side dies between the ack
//! and the release, that output was produced by a state the restored program is already past.
//! The standby keeps each committed epoch's held output and, at takeover, writes what the
//! primary had not confirmed releasing to its `--stdout` before the restored program resumes.
//!
//! A program prints `seq N` lines, a few thousand a second, to stdout (to stderr in one run);
//! the primary side is killed with SIGKILL at five moments (counted in lines the reader has
//! seen, not in time), three of them while the reader has stopped reading, so that committed
//! output waits in `remusd primary` (main before this change lost it in those three runs). What the
//! primary released, followed by what the standby's stdout file holds, must be every line from
//! 1 to the last exactly once, except for one overlap where the two meet (what was released
//! after the primary's last report of its release watermark): no gap, no other repeat.

use std::fs;
use std::time::Duration;

use remus::{committed_epoch, n, peek_exit, progs, s, wait_for, Protected, ProtectedOpts, Standby};

/// One run each: lines the reader has seen when the kill comes (or, with a slow reader, when
/// it stops reading), whether the reader is slow, and the program's fd the lines go to.
const MOMENTS: [(usize, bool, i32); 5] = [
    (1200, true, 1),
    (2600, false, 1),
    (4000, true, 1),
    (5400, false, 1),
    (6800, true, 2),
];
/// With a slow reader: output held in `remusd primary` (its pipe to the reader full) before
/// the epochs that produced it are waited for and the kill comes.
const HELD_BEFORE_KILL: i64 = 16 << 10;
/// Lines the restored program must print before it is told to stop.
const RUN_AFTER: usize = 300;

/// What one run saw.
#[derive(Debug)]
struct Seen {
    /// Whole `seq` lines the primary released before it died.
    released_lines: usize,
    /// Bytes (and lines) that both the primary and the standby wrote out.
    overlap_bytes: usize,
    overlap_lines: usize,
    /// The last line the restored program printed.
    last: u64,
}

/// The longest prefix of `s` that is a suffix of `p` (KMP's prefix function over
/// `s | sep | p`; `sep` occurs in neither).
fn overlap(p: &[u8], s: &[u8]) -> usize {
    let t: Vec<u8> = s
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(p)
        .copied()
        .collect();
    let mut pi = vec![0usize; t.len()];
    for i in 1..t.len() {
        let mut k = pi[i - 1];
        while k > 0 && t[i] != t[k] {
            k = pi[k - 1];
        }
        if t[i] == t[k] {
            k += 1;
        }
        pi[i] = k;
    }
    pi.last().copied().unwrap_or(0).min(s.len())
}

/// Checks that `p` (what the primary released) followed by `s` (the standby's stdout file),
/// joined where they overlap, is `seq 1` .. `seq L` then `done L`.
fn check(p: &[u8], s: &[u8]) -> Result<Seen, String> {
    if p.contains(&0) || s.contains(&0) {
        return Err("a NUL byte in the output".into());
    }
    let k = overlap(p, s);
    let mut stream = p.to_vec();
    stream.extend_from_slice(&s[k..]);
    let text = String::from_utf8_lossy(&stream);
    let released_lines = p.iter().filter(|&&b| b == b'\n').count();
    let overlap_lines = s[..k].iter().filter(|&&b| b == b'\n').count();
    let mut want = 1u64;
    let mut done = None;
    for (i, line) in text.split_terminator('\n').enumerate() {
        if done.is_some() {
            return Err(format!("line {}: `{line}` after the done line", i + 1));
        }
        if let Some(d) = line.strip_prefix("done ") {
            let d: u64 = d.parse().map_err(|_| format!("bad line `{line}`"))?;
            if d + 1 != want {
                return Err(format!("`{line}` but the last seq line was {}", want - 1));
            }
            done = Some(d);
            continue;
        }
        let got: u64 = line
            .strip_prefix("seq ")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                format!(
                    "line {}: garbled line `{line}` (where the two meet?)",
                    i + 1
                )
            })?;
        if got > want {
            return Err(format!(
                "lines {want}..{} are missing: the primary released up to {} whole lines, the \
                 standby's file starts at `{}` (overlap found: {k} bytes)",
                got - 1,
                released_lines,
                String::from_utf8_lossy(&s[..s.len().min(40)]).replace('\n', "\\n")
            ));
        }
        if got < want {
            return Err(format!(
                "line {got} again after {}: repeated outside the one overlap where the primary's \
                 and the standby's output meet",
                want - 1
            ));
        }
        want += 1;
    }
    let last = done.ok_or_else(|| "no `done N` line at the end".to_string())?;
    Ok(Seen {
        released_lines,
        overlap_bytes: k,
        overlap_lines,
        last,
    })
}

/// What the standby's `--stdout` (fd 1) or `--stderr` (fd 2) file holds: all of it, and the
/// restored program's own part (after the committed output the standby wrote first).
fn standby_file(standby: &Standby, fd: i32) -> (Vec<u8>, Vec<u8>) {
    let path = if fd == 2 {
        &standby.app_stderr
    } else {
        &standby.app_stdout
    };
    let all = fs::read(path).unwrap_or_default();
    let v = fs::read(standby.state_dir.join("recovered.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let field = |k: &str| v.as_ref().and_then(|v| v.get(k)?.as_u64()).unwrap_or(0);
    let name = if fd == 2 { "stderr" } else { "stdout" };
    let recovered = (field(&format!("{name}_at")) + field(name)) as usize;
    let own = all[recovered.min(all.len())..].to_vec();
    (all, own)
}

fn run(kill_after: usize, slow_reader: bool, fd: i32) -> Result<Seen, String> {
    let long = Duration::from_secs(120);
    let mut standby = Standby::start(500);
    let stop = standby.dir().join("stop");
    let stop_s = stop.to_str().expect("utf-8 path").to_string();
    let fd_s = fd.to_string();
    let mut app = Protected::start(
        &progs().seqprint,
        &["--stop-file", &stop_s, "--sleep-us", "250", "--fd", &fd_s],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let both = || format!("{}{}", app.report(), standby.report());
    wait_for("protection (a committed epoch)", long, &both, || {
        app.status().ok().filter(|v| committed_epoch(v).is_some())
    });
    let lines_seen = |app: &Protected| {
        if fd == 2 {
            app.stderr_bytes().iter().filter(|&&b| b == b'\n').count()
        } else {
            app.stdout_lines().len()
        }
    };
    wait_for(
        &format!("the reader to see {kill_after} lines"),
        long,
        &both,
        || (lines_seen(&app) >= kill_after).then_some(()),
    );
    if slow_reader {
        // The reader stops: the pipe to it fills, and committed output waits in remusd.
        app.pause_output(true);
        let v = wait_for(
            &format!("{HELD_BEFORE_KILL} bytes of output held by the primary"),
            long,
            &both,
            || {
                app.status()
                    .ok()
                    .filter(|v| n(v, "output_held_bytes").unwrap_or(0) >= HELD_BEFORE_KILL)
            },
        );
        // Everything read so far is tagged with an epoch up to the one after the last taken:
        // once that is committed, the held output is committed output.
        let taken = v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
        wait_for(
            &format!("epoch {} committed", taken + 2),
            long,
            &both,
            || {
                app.status()
                    .ok()
                    .filter(|v| committed_epoch(v).is_some_and(|c| c >= taken + 2))
            },
        );
    }
    let st = app.status().map_err(|e| format!("primary status: {e}"))?;
    if st.get("protected").and_then(|v| v.as_bool()) != Some(true) {
        return Err(format!("not protected before the kill: {st}"));
    }
    app.kill_primary_side();
    app.pause_output(false);
    // Everything the primary side let out is in the pipe: read it to the end.
    app.wait_eof(Duration::from_secs(30));
    let released = if fd == 2 {
        app.stderr_bytes()
    } else {
        app.stdout_bytes()
    };

    let report = || format!("{}{}", standby.report(), app.report());
    let sv = wait_for("the standby to take over", long, &report, || {
        standby
            .status()
            .ok()
            .filter(|v| s(v, "state") == "took_over" && n(v, "restored_pid").is_some())
    });
    let restored = n(&sv, "restored_pid").unwrap_or(0) as i32;
    wait_for(
        &format!("the restored program to print {RUN_AFTER} lines"),
        long,
        &report,
        || {
            if peek_exit(standby.pid()).is_some() || !remus::alive(restored) {
                panic!(
                    "the restored program (pid {restored}) ended before it was told to stop\n{}",
                    report()
                );
            }
            let own = standby_file(&standby, fd).1;
            (own.iter().filter(|&&b| b == b'\n').count() >= RUN_AFTER).then_some(())
        },
    );
    fs::write(&stop, b"stop\n").expect("write the stop file");
    let st = standby.wait_exit("the restored program to stop", long);
    if st.code() != Some(0) {
        return Err(format!(
            "the standby exited with {st:?}\n{}",
            standby.report()
        ));
    }
    let written = standby_file(&standby, fd).0;
    let seen = check(&released, &written)?;
    if seen.released_lines < kill_after {
        return Err(format!(
            "the reader saw {kill_after} lines but the released output has only {}",
            seen.released_lines
        ));
    }
    // The watermark advances with the primary's heartbeats: what is repeated is what it
    // released after its last report, never everything since the start.
    if seen.overlap_lines * 2 > seen.released_lines {
        return Err(format!(
            "{} of the {} released lines were written again by the standby: the primary's \
             release watermark did not reach it",
            seen.overlap_lines, seen.released_lines
        ));
    }
    Ok(seen)
}

#[test]
fn committed_output_survives_kill_9_of_the_primary_side() {
    let mut failed = Vec::new();
    for (i, &(at, slow, fd)) in MOMENTS.iter().enumerate() {
        let what = if slow {
            format!("fd {fd}, reader stops after {at} lines")
        } else {
            format!("fd {fd}, kill after {at} lines")
        };
        match run(at, slow, fd) {
            Ok(seen) => eprintln!(
                "run {} ({what}): ok: released {} lines, overlap {} bytes ({} lines), the \
                 restored program went on to {}",
                i + 1,
                seen.released_lines,
                seen.overlap_bytes,
                seen.overlap_lines,
                seen.last
            ),
            Err(e) => {
                eprintln!("run {} ({what}): FAILED: {e}", i + 1);
                failed.push(format!("run {} ({what}): {e}", i + 1));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} runs lost or repeated committed output:\n{}",
        failed.len(),
        MOMENTS.len(),
        failed.join("\n")
    );
}

#[test]
fn overlap_and_check_see_gaps_and_repeats() {
    let p = b"seq 1\nseq 2\nseq 3\nseq 4\n";
    // The standby repeated 3 and 4, then went on.
    let seen = check(p, b"seq 3\nseq 4\nseq 5\ndone 5\n").expect("an overlap is fine");
    assert_eq!((seen.overlap_lines, seen.last), (2, 5));
    // Exactly where the primary stopped, mid-line.
    check(b"seq 1\nseq 2\nse", b"q 3\ndone 3\n").expect("joined mid-line");
    // The standby repeats from mid-line.
    check(b"seq 1\nseq 2\nseq 3", b"q 2\nseq 3\ndone 3\n").expect("overlap from mid-line");
    // A gap: 5 is nowhere.
    let e = check(p, b"seq 6\ndone 6\n").expect_err("a gap");
    assert!(e.contains("missing"), "{e}");
    // A repeat that is not where the two meet.
    let e = check(p, b"seq 5\nseq 2\ndone 2\n").expect_err("a repeat");
    assert!(e.contains("again"), "{e}");
}
