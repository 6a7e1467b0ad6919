//! Debian's `lighttpd` and `nginx` (`daemon off; master_process off;`), unmodified, under
//! remus (issue 3): they serve requests (the body is checked, and the answers went through the
//! socket output log), fail over (`kill -9` of the server and its `remusd primary`), and answer
//! new connections on the same port from the standby. A load of 8 client threads runs across
//! the failover: every request is either answered correctly or fails with a connection error;
//! none hangs (socket timeouts). Without the server installed the test fails, saying what to
//! install (`.ci/run --setup-only` installs both).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remus::net::{http_get, Outcome};
use remus::{n, s, wait_for, Protected, ProtectedOpts, Standby, TempDir};

const BODY: &str = "remus says hello from a held socket\n";
/// A request not answered within this is a hang.
const HANG: Duration = Duration::from_secs(10);

fn lighttpd_conf(dir: &Path, port: u16) -> Vec<String> {
    let conf = dir.join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{www}\"\n\
             server.bind = \"127.0.0.1\"\n\
             server.port = {port}\n\
             server.errorlog = \"{dir}/error.log\"\n\
             index-file.names = (\"index.html\")\n\
             mimetype.assign = (\".html\" => \"text/html\")\n",
            www = dir.join("www").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    vec!["-D".into(), "-f".into(), conf.display().to_string()]
}

fn nginx_conf(dir: &Path, port: u16) -> Vec<String> {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n\
               client_body_temp_path {d}/t1;\n  proxy_temp_path {d}/t2;\n\
               fastcgi_temp_path {d}/t3;\n  uwsgi_temp_path {d}/t4;\n  scgi_temp_path {d}/t5;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 location / {{ }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    vec![
        "-p".into(),
        d.to_string(),
        "-c".into(),
        conf.display().to_string(),
    ]
}

#[derive(Default)]
struct Tally {
    ok: u64,
    conn_errors: Vec<String>,
    hung: Vec<String>,
    wrong: Vec<String>,
}

/// `bin` is the server's path, `package` the Debian package that provides it.
fn server_fails_over(bin: &str, package: &str, conf: fn(&Path, u16) -> Vec<String>) {
    let bin = remus::require_program(bin, package);
    let bin = bin.to_str().expect("utf-8 path");
    let long = Duration::from_secs(120);
    let dir = TempDir::new("srv");
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/index.html"), BODY).unwrap();
    let port = remus::free_port();
    let args = conf(dir.path(), port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let standby = Standby::start(500);
    let mut app = Protected::start(
        Path::new(bin),
        &args,
        &ProtectedOpts {
            standby: Some(standby.addr.clone()),
            ..Default::default()
        },
    );
    let report = || {
        format!(
            "{}{}--- server error log:\n{}",
            app.report(),
            standby.report(),
            remus::tail_file(&dir.path().join("error.log"), 20)
        )
    };
    wait_for(
        "the first answer from the protected server",
        long,
        &report,
        || (http_get(port, "/", BODY, HANG) == Outcome::Ok).then_some(()),
    );
    let st = app.status().expect("status");
    assert_eq!(st["protected"].as_bool(), Some(true), "{st}");
    assert!(
        n(&st, "output_released_bytes").unwrap_or(0) >= BODY.len() as i64,
        "the answer did not go through the socket output log: {st}"
    );

    // Load across the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let o = http_get(port, "/", BODY, HANG);
                    let mut t = tally.lock().unwrap();
                    match o {
                        Outcome::Ok => t.ok += 1,
                        Outcome::ConnError(e) => {
                            t.conn_errors.push(e);
                            drop(t);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Outcome::Hung(e) => t.hung.push(e),
                        Outcome::Wrong(e) => t.wrong.push(e),
                    }
                }
            })
        })
        .collect();
    let ok_at = |t: &Arc<Mutex<Tally>>| t.lock().unwrap().ok;
    let before = ok_at(&tally);
    wait_for("answers under load before the kill", long, &report, || {
        (ok_at(&tally) >= before + 50).then_some(())
    });
    let c = remus::committed_epoch(&app.status().expect("status")).unwrap_or(0);
    app.wait_committed(c + 2, long);
    app.kill_primary_side();
    let at_kill = ok_at(&tally);
    let report = || {
        format!(
            "{}{}--- server error log:\n{}",
            app.report(),
            standby.report(),
            remus::tail_file(&dir.path().join("error.log"), 20)
        )
    };
    wait_for("the standby to take over", long, &report, || {
        standby
            .status()
            .ok()
            .filter(|v| s(v, "state") == "took_over")
    });
    wait_for(
        "answers from the restored server under load",
        long,
        &report,
        || (ok_at(&tally) >= at_kill + 50).then_some(()),
    );
    // And a fresh connection of our own, from the standby.
    assert_eq!(http_get(port, "/", BODY, HANG), Outcome::Ok, "{}", report());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let t = tally.lock().unwrap();
    eprintln!(
        "{bin}: {} answered ({} before the kill), {} connection errors, {} hung, {} wrong",
        t.ok,
        at_kill,
        t.conn_errors.len(),
        t.hung.len(),
        t.wrong.len()
    );
    for e in t.conn_errors.iter().take(5) {
        eprintln!("  connection error: {e}");
    }
    assert!(
        t.hung.is_empty(),
        "requests hung: {:?}\n{}",
        t.hung,
        report()
    );
    assert!(
        t.wrong.is_empty(),
        "wrong answers: {:?}\n{}",
        t.wrong,
        report()
    );
}

#[test]
fn lighttpd_serves_and_fails_over() {
    server_fails_over("/usr/sbin/lighttpd", "lighttpd", lighttpd_conf);
}

#[test]
fn nginx_serves_and_fails_over() {
    server_fails_over("/usr/sbin/nginx", "nginx-light", nginx_conf);
}
