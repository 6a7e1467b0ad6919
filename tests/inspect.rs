//! `remusctl inspect STATE_DIR`: the image a real standby saved after it committed epochs,
//! printed as JSON; a damaged copy of it is refused naming the damage.

use std::process::Command;
use std::time::Duration;

use remus::{bins, committed_epoch, progs, wait_for, Protected, ProtectedOpts, Standby, TempDir};
use serde_json::Value;

/// Only there to turn a hang into a failure.
const LONG: Duration = Duration::from_secs(60);

fn inspect(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(&bins().remusctl)
        .arg("inspect")
        .arg(path)
        .output()
        .expect("remusctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_shows_what_the_standby_committed() {
    let standby = Standby::start(500);
    let stop = standby.dir().join("stop");
    let app = Protected::start(
        &progs().memcheck,
        &["0", "--stop-file", stop.to_str().expect("utf-8")],
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    app.wait_committed(5, LONG);
    let image = standby.state_dir.join("image.remus");
    wait_for("image.remus", LONG, &|| standby.report(), || {
        image.exists().then_some(())
    });
    // A later save than the first, so the epoch seen is past the first full image.
    std::thread::sleep(Duration::from_millis(1500));
    let committed = committed_epoch(&standby.status().expect("standby status")).expect("epoch");
    let (code, out, err) = inspect(&standby.state_dir);
    assert_eq!(code, Some(0), "{err}\n{}", standby.report());
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let epoch = v["epoch"].as_u64().expect("epoch");
    assert!(
        epoch >= 2 && epoch <= committed,
        "saved epoch {epoch}, committed {committed}"
    );
    assert_eq!(v["format"]["magic"], "REMUSIMG");
    assert_eq!(v["partial"], false);
    let regions = v["regions"].as_array().expect("regions");
    assert!(
        regions.iter().any(|r| r["path"] == "[stack]"),
        "regions: {regions:?}"
    );
    assert!(
        regions
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.ends_with("memcheck"))),
        "regions: {regions:?}"
    );
    let held: u64 = regions
        .iter()
        .filter_map(|r| r["pages_held"].as_u64())
        .sum();
    assert_eq!(Some(held), v["pages"].as_u64());
    assert!(held > 0);
    let rip = v["threads"][0]["resume"]["rip"].as_str().expect("rip");
    assert!(rip.starts_with("0x") && rip != "0x0", "{rip}");
    let fds: Vec<i64> = v["descriptors"]
        .as_array()
        .expect("descriptors")
        .iter()
        .filter_map(|d| d["fd"].as_i64())
        .collect();
    assert!(fds.contains(&1) && fds.contains(&2), "descriptors {fds:?}");
    assert!(v["kernel_objects"].is_array() && v["files"].is_object());

    // A damaged copy: one flipped byte, then cut short.
    let tmp = TempDir::new("inspect");
    let copy = tmp.path().join("image.remus");
    let mut bytes = std::fs::read(&image).expect("image");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&copy, &bytes).expect("copy");
    let (code, _, err) = inspect(&copy);
    assert_eq!(code, Some(1));
    assert!(err.contains("checksum mismatch"), "{err}");
    std::fs::write(&copy, &bytes[..at]).expect("copy");
    let (code, _, err) = inspect(tmp.path());
    assert_eq!(code, Some(1));
    assert!(err.contains("truncated"), "{err}");
    let (code, _, err) = inspect(&tmp.path().join("nothing"));
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read"), "{err}");

    std::fs::write(&stop, b"stop\n").expect("stop file");
    app.wait_eof(LONG);
}
