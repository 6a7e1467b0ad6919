//! The systemd units in `contrib/systemd/`: `systemd-analyze verify` accepts them (in a
//! scratch root laid out as the README's install steps say), and `remusd standby` tells
//! systemd it is ready (`Type=notify`).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use remus::{bins, repo_root, require_program, TempDir};

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let analyze = require_program("systemd-analyze", "systemd");
    let system_units = Path::new("/lib/systemd/system");
    assert!(
        system_units.join("sysinit.target").exists(),
        "systemd's own units are missing from {}",
        system_units.display()
    );
    let root = TempDir::new("sdroot");
    let r = root.path();
    let b = bins();
    let src = repo_root().join("contrib/systemd");
    copy(&b.remusd, &r.join("usr/local/bin/remusd"));
    copy(&b.remusctl, &r.join("usr/local/bin/remusctl"));
    copy(&b.lib, &r.join("usr/local/lib/libremus.so"));
    copy(
        &repo_root().join("scripts/remus-run"),
        &r.join("usr/local/bin/remus-run"),
    );
    for unit in ["remusd-standby.service", "remus@.service"] {
        copy(&src.join(unit), &r.join("etc/systemd/system").join(unit));
    }
    copy(
        &src.join("standby.conf.example"),
        &r.join("etc/remus/standby.conf"),
    );
    copy(
        &src.join("program.conf.example"),
        &r.join("etc/remus/demo.conf"),
    );
    std::fs::create_dir_all(r.join("usr/lib/systemd")).expect("mkdir");
    let st = Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .map(|s| s.success());
    assert_eq!(st.ok(), Some(true), "copying systemd's units");
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(["remusd-standby.service", "remus@demo.service"])
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys and bad values are warnings (exit 0): any output is a failure.
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {}\n{text}",
        out.status
    );
}

#[test]
fn the_standby_tells_systemd_it_is_ready() {
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut child = Command::new(&bins().remusd)
        .args(["standby", "--listen", "127.0.0.1:0", "--insecure"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--control")
        .arg(dir.path().join("standby.sock"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("remusd standby");
    let mut buf = [0u8; 512];
    let got = sock.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("no READY=1 from remusd standby within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.starts_with("READY=1\n"), "{msg:?}");
    assert!(
        msg.contains("STATUS=waiting for a primary on 127.0.0.1:"),
        "{msg:?}"
    );
}
