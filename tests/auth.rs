//! The replication link is authenticated: a wrong or missing key is refused on both sides
//! (and leaves the standby's image alone), `--insecure` is for loopback only, and a key file
//! that others can read is refused.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use remus::{
    bins, free_port, progs, s, tail_file, test_key_file, write_key_file, Protected, ProtectedOpts,
    Standby, TempDir,
};

const LONG: Duration = Duration::from_secs(60);

/// The program is refused before it starts, with exactly the line `expect` from remus on
/// stderr (one `remus: ` prefix; none of its lines carries it twice).
fn assert_refused(p: &mut Protected, expect: &str) {
    let st = p.wait_exit(LONG);
    assert_eq!(st.code(), Some(1), "expected exit 1\n{}", p.report());
    assert!(
        !p.stdout_lines().iter().any(|l| l.starts_with("start ")),
        "the program ran although it was refused\n{}",
        p.report()
    );
    let lines = remus::remus_lines(&p.stderr_text(), &|| p.report());
    assert_eq!(
        lines,
        [expect],
        "expected exactly this one `remus: ` line on stderr\n{}",
        p.report()
    );
}

/// What the shim prints when the standby at `addr` does not hold the primary's key.
fn wrong_key_line(addr: &str) -> String {
    format!(
        "remus: cannot reach the standby: authenticating the link to the standby at {addr} \
         failed: wrong key: the standby could not prove it holds this daemon's key file; the two \
         key files differ (copy the same key file to both hosts). Start `remusd standby --listen \
         {addr} --state-dir DIR` on the standby host, or set REMUS_ALLOW_UNPROTECTED=1 to run \
         without protection."
    )
}

/// `remusd standby ARGS...` must refuse to start (exit 2) saying every `names`.
fn standby_refuses(args: &[&str], names: &[&str]) {
    let dir = TempDir::new("auth");
    let out = Command::new(&bins().remusd)
        .arg("standby")
        .args([
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ])
        .args([
            "--control",
            &dir.path().join("sb.sock").display().to_string(),
        ])
        .args(args)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run remusd standby");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "remusd standby {args:?}: {err}");
    for n in names {
        assert!(
            err.contains(n),
            "remusd standby {args:?} does not say {n:?}: {err}"
        );
    }
}

#[test]
fn wrong_key_refused_on_both_sides_and_the_image_is_untouched() {
    let sb = Standby::start(500);
    // A legitimate primary, protected and committing.
    let good = Protected::start(
        &progs().memcheck,
        &["100000", "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            ..Default::default()
        },
    );
    good.wait_committed(5, LONG);
    let committed = sb.status().expect("standby status");
    // A stranger with another key.
    let dir = TempDir::new("key");
    let other = dir.path().join("other.key");
    write_key_file(&other);
    let mut bad = Protected::start(
        &progs().memcheck,
        &["100"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            key_file: Some(other.clone()),
            ..Default::default()
        },
    );
    assert_refused(&mut bad, &wrong_key_line(&sb.addr));
    // The standby said so too, and went on with the legitimate primary.
    let log = std::fs::read_to_string(&sb.log).unwrap_or_default();
    assert!(
        log.contains("refused a connection") && log.contains("wrong key"),
        "the standby's log does not report the wrong key:\n{}",
        tail_file(&sb.log, 30)
    );
    let before = committed["committed_epoch"].as_u64().unwrap_or(0);
    let v = sb.wait_status("more epochs from the legitimate primary", LONG, |v| {
        v["committed_epoch"]
            .as_u64()
            .is_some_and(|e| e >= before + 5)
    });
    assert_eq!(s(&v, "state"), "receiving", "{v}");
    assert!(v["protected"].as_bool().unwrap_or(false), "{v}");
    assert_eq!(v["peer"], committed["peer"], "same primary as before: {v}");

    // With no primary at all: a wrong key changes nothing on a waiting standby either.
    drop(good);
    let sb2 = Standby::start(500);
    let mut bad2 = Protected::start(
        &progs().memcheck,
        &["100"],
        &ProtectedOpts {
            standby: Some(sb2.addr.clone()),
            key_file: Some(other),
            ..Default::default()
        },
    );
    assert_refused(&mut bad2, &wrong_key_line(&sb2.addr));
    let v = sb2.status().expect("status");
    assert_eq!(s(&v, "state"), "waiting", "{v}");
    assert!(v["committed_epoch"].is_null(), "{v}");
    assert!(
        !sb2.state_dir.join("committed.json").exists(),
        "nothing was committed"
    );
}

#[test]
fn missing_key_refused() {
    let port = free_port();
    standby_refuses(
        &["--listen", &format!("127.0.0.1:{port}")],
        &["no key", "--key-file", "--insecure", "remusd keygen"],
    );
    // The primary side: a standby is named, but neither a key nor REMUS_INSECURE.
    let sb = Standby::start(500);
    let mut p = Protected::start(
        &progs().memcheck,
        &["100"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            no_key: true,
            ..Default::default()
        },
    );
    assert_refused(
        &mut p,
        "remus: refusing to start: no key for the replication link: the standby runs whatever it \
         receives, so the link must be authenticated. Create a key once with `remusd keygen --out \
         FILE`, copy it to both hosts (mode 0600) and pass --key-file FILE to `remusd standby` and \
         `scripts/remus-run` (REMUS_KEY_FILE for the shim); or, only when both daemons run on \
         this host, pass --insecure (REMUS_INSECURE=1) with a loopback standby (REMUS_STANDBY / \
         --standby) address",
    );
    // A key file that is not there.
    let mut p = Protected::start(
        &progs().memcheck,
        &["100"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            key_file: Some("/nonexistent/remus.key".into()),
            ..Default::default()
        },
    );
    assert_refused(
        &mut p,
        "remus: refusing to start: key file /nonexistent/remus.key does not exist: create one with \
         `remusd keygen --out /nonexistent/remus.key` and copy it to both hosts",
    );
}

#[test]
fn insecure_only_on_loopback() {
    let port = free_port();
    standby_refuses(
        &["--insecure", "--listen", &format!("0.0.0.0:{port}")],
        &["--insecure", "not a loopback", "--key-file"],
    );
    let mut p = Protected::start(
        &progs().memcheck,
        &["100"],
        &ProtectedOpts {
            standby: Some("192.0.2.1:7000".into()),
            insecure: true,
            ..Default::default()
        },
    );
    assert_refused(
        &mut p,
        "remus: refusing to start: --insecure is refused for standby (REMUS_STANDBY / --standby) \
         address 192.0.2.1:7000 (192.0.2.1, not a loopback address): an unauthenticated \
         replication link reachable from other hosts would let anyone run code on the standby. \
         Use --key-file FILE on both daemons (create one with `remusd keygen --out FILE`), or a \
         127.0.0.1/[::1] address",
    );
    // On loopback, both sides without a key: protected.
    let sb = Standby::start_keyed(500, None);
    let p = Protected::start(
        &progs().memcheck,
        &["100000", "--sleep-us", "2000"],
        &ProtectedOpts {
            standby: Some(sb.addr.clone()),
            insecure: true,
            ..Default::default()
        },
    );
    p.wait_committed(3, LONG);
}

#[test]
fn key_file_readable_by_others_refused() {
    let dir = TempDir::new("key");
    let k = dir.path().join("loose.key");
    write_key_file(&k);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let ks = k.display().to_string();
    standby_refuses(
        &[
            "--key-file",
            &ks,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &["chmod 600", &ks],
    );
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, b"").expect("write");
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    standby_refuses(
        &[
            "--key-file",
            &empty.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &["is empty"],
    );
    // The tests' own key is fine.
    assert!(test_key_file().exists());
}
