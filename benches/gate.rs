//! lighttpd under `wrk` through the packet gate: bare vs protected in the same topology
//! (`remus::lan`: client, primary and standby hosts in network namespaces on a bridge; the
//! server at its service address in a namespace of its own behind a veth pair).
//!
//! - bare: `remusd service-exec --service-addr …` (the same namespace, pair and proxy ARP;
//!   no shim, no remusd primary, no gate);
//! - protected: `scripts/remus-run --service-addr …` (shim, epochs to the standby host, every
//!   packet held until its epoch commits).
//!
//! `cargo bench --bench gate` (root; `REMUS_TEST_PROFILE=release` for release builds,
//! `REMUS_GATE_SECONDS` per wrk run, default 5). Prints markdown rows.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use remus::lan::Lan;
use remus::wrk::Wrk;
use remus::{bins, repo_root, require_program, s, signal, test_key_file, wait_for, TempDir};

const PORT: u16 = 8080;

fn wrk(lan: &Lan, url: &str, conns: u32, secs: u64) -> Wrk {
    let out = lan
        .command("client", "wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("wrk");
    remus::wrk::parse(&String::from_utf8_lossy(&out.stdout))
}

fn conf(dir: &Path) -> String {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let body: String = (0..64).map(|i| format!("{i:063}\n")).collect();
    std::fs::write(www.join("index.html"), body).unwrap();
    let conf = dir.join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.bind = \"0.0.0.0\"\nserver.port = {PORT}\n\
             server.errorlog = \"{}/error.log\"\nindex-file.names = (\"index.html\")\n",
            www.display(),
            dir.display()
        ),
    )
    .unwrap();
    conf.display().to_string()
}

fn wait_serving(lan: &Lan, url: &str) {
    wait_for(
        "the server to answer",
        Duration::from_secs(60),
        &|| String::new(),
        || {
            let st = lan
                .command("client", "wrk")
                .args(["-t1", "-c1", "-d1s", url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            st.success().then_some(())
        },
    );
}

fn stop(mut c: Child) {
    signal(c.id() as i32, libc::SIGTERM);
    let _ = c.wait();
}

fn main() {
    require_program("wrk", "wrk");
    require_program("/usr/sbin/lighttpd", "lighttpd");
    let secs: u64 = std::env::var("REMUS_GATE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let b = bins();
    let lan = Lan::create(&["client", "primary", "standby"]);
    let tmp = TempDir::new("gatebench");
    let conf = conf(tmp.path());
    let service = lan.spare(100);
    let url = format!("http://{service}:{PORT}/");
    let addr = format!("{service}/24");
    println!(
        "lighttpd under wrk -c{{1,32}}, {secs} s per run, {} build, 25 ms epochs, standby on another namespace host\n",
        if b.release { "release" } else { "debug" }
    );
    println!("| run | conns | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|");
    for conns in [1u32, 32] {
        let bare = lan
            .command("primary", &b.remusd)
            .args([
                "service-exec",
                "--service-addr",
                &addr,
                "--service-dev",
                "lan0",
                "--",
            ])
            .args(["/usr/sbin/lighttpd", "-D", "-f", &conf])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bare lighttpd");
        wait_serving(&lan, &url);
        let w = wrk(&lan, &url, conns, secs);
        println!(
            "| bare (same namespace and veth, no gate) | {conns} | {:.0} | {:.2} | {:.2} |",
            w.rps, w.p50_ms, w.p99_ms
        );
        stop(bare);

        let sb_addr = format!("{}:7000", lan.addr("standby"));
        let state = tmp.path().join(format!("state-{conns}"));
        std::fs::create_dir_all(&state).unwrap();
        let standby = lan
            .command("standby", &b.remusd)
            .args(["standby", "--listen", &sb_addr, "--state-dir"])
            .arg(&state)
            .arg("--key-file")
            .arg(test_key_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("standby");
        let control = tmp.path().join(format!("p-{conns}.sock"));
        let prot = lan
            .command("primary", repo_root().join("scripts/remus-run"))
            .args(["--standby", &sb_addr, "--key-file"])
            .arg(test_key_file())
            .args([
                "--service-addr",
                &addr,
                "--service-dev",
                "lan0",
                "--control",
            ])
            .arg(&control)
            .args(["--", "/usr/sbin/lighttpd", "-D", "-f", &conf])
            .env("REMUS_LIB", &b.lib)
            .env("REMUS_REMUSD", &b.remusd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("protected lighttpd");
        wait_for(
            "protected",
            Duration::from_secs(60),
            &|| String::new(),
            || {
                remus::status(&control)
                    .ok()
                    .filter(|v| s(v, "state") == "protected")
            },
        );
        wait_serving(&lan, &url);
        let w = wrk(&lan, &url, conns, secs);
        let st = remus::status(&control).unwrap_or_default();
        println!(
            "| protected (gate; {} packets released) | {conns} | {:.0} | {:.2} | {:.2} |",
            st["packet_gate"]["released_packets"], w.rps, w.p50_ms, w.p99_ms
        );
        stop(prot);
        stop(standby);
        // The keeper tears the topology down once the program is gone: wait for the veth.
        wait_for(
            "the topology torn down",
            Duration::from_secs(30),
            &|| String::new(),
            || {
                let out = lan
                    .command("primary", "ip")
                    .args(["-o", "link"])
                    .output()
                    .ok()?;
                (!String::from_utf8_lossy(&out.stdout).contains("rmh")).then_some(())
            },
        );
    }
}
