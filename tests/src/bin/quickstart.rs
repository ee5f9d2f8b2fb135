//! Quickstart: the whole mesh on one machine, in network namespaces, with real HTTP.
//!
//! Builds ztunnel, creates two nodes and three pods (a `sleep` client on node 1, two `echo`
//! servers behind the service VIP 10.96.0.10 on node 2), starts one ztunnel per node with the
//! built-in CA, sends HTTP requests from the client to the service, and prints what proves the
//! mesh carried them: the responses, the SPIFFE identities from the access logs, and the
//! `istio_tcp_*` metrics. Everything is removed at the end, also on Ctrl-C.
//!
//! Run as root: `bash examples/quickstart.sh` (installs the build prerequisites, then runs
//! `cargo run --release -p mesh-tests --bin quickstart`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_tests::daemon::Ztunnel;
use mesh_tests::{metrics, netns, require_root, Pod, Topology};
use nix::sys::signal::{SigSet, Signal};

const VIP: &str = "10.96.0.10";
const REQUESTS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    require_root()?;
    let signals = block_signals()?;
    build_ztunnel()?;

    let topo = Topology::create().context("creating the namespaces")?;
    // On Ctrl-C the main thread may be anywhere: the signal thread removes what was made.
    let cleanup = Arc::new(Mutex::new(Cleanup {
        names: topo.netns_names(),
        pids: Vec::new(),
    }));
    std::thread::spawn({
        let cleanup = cleanup.clone();
        move || {
            if let Ok(sig) = signals.wait() {
                eprintln!("\n{sig:?}: cleaning up");
                if let Ok(c) = cleanup.lock() {
                    c.run();
                }
                std::process::exit(130);
            }
        }
    });

    let dir = tempfile::tempdir().context("temporary directory")?;
    let config = dir.path().join("ztunnel.yaml");
    std::fs::write(&config, render(&topo, dir.path())).context("writing the config")?;
    println!("== mesh: 2 nodes, client pod `sleep` on n1, `echo` pods on n2 behind {VIP}:80");
    println!("   config: {}", config.display());

    let _servers: Vec<_> = ["c", "d"]
        .iter()
        .map(|name| http_server(topo.pod(name), name))
        .collect::<anyhow::Result<_>>()?;
    let mut zts = Vec::new();
    for node in [1u8, 2] {
        let mut z = Ztunnel::start(topo.node(node), &config, &format!("n{node}"), &[])?;
        z.wait_ready(TIMEOUT)?;
        cleanup
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .pids
            .push(z.pid());
        let capture = if z.log().contains("capturing with eBPF") {
            "eBPF"
        } else {
            "nftables"
        };
        println!(
            "== ztunnel on n{node} ready (pid {}, capture: {capture})",
            z.pid()
        );
        zts.push(z);
    }

    let client = topo.pod("a");
    let target = SocketAddr::new(VIP.parse()?, 80);
    println!("\n== HTTP from sleep ({}) to http://{target}/", client.ipv4);
    for i in 1..=REQUESTS {
        let response = http_get(client, target).with_context(|| format!("request {i}"))?;
        println!("   {i}: {}", response.lines().last().unwrap_or("").trim());
    }

    std::thread::sleep(Duration::from_millis(300));
    println!("\n== access log, n1 (source side)");
    print_access(&zts[0].log());
    println!("\n== access log, n2 (destination side)");
    print_access(&zts[1].log());

    println!("\n== metrics, n2 (reporter=destination)");
    let text = zts[1].metrics();
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        for (labels, value) in metrics::samples(&text, name) {
            println!(
                "   {name}{{source_principal=\"{}\",destination_workload=\"{}\",connection_security_policy=\"{}\"}} {value}",
                labels.get("source_principal").map_or("", String::as_str),
                labels.get("destination_workload").map_or("", String::as_str),
                labels.get("connection_security_policy").map_or("", String::as_str),
            );
        }
    }
    let mtls = metrics::sample(
        &text,
        "istio_tcp_connections_opened_total",
        &[("connection_security_policy", "mutual_tls")],
    )
    .unwrap_or(0.0);
    ensure!(
        mtls >= REQUESTS as f64,
        "expected {REQUESTS} mutual-TLS connections on n2, metrics show {mtls}"
    );
    println!("\n== ok: {REQUESTS} requests carried over HBONE with mutual TLS; cleaning up");
    Ok(())
}

fn render(topo: &Topology, dir: &Path) -> String {
    let mut y = format!(
        "trustDomain: cluster.local\nstateDir: {}\ncaptureFailMode: open\nworkloads:\n",
        dir.join("state").display()
    );
    for (pod, name, sa, app) in [
        ("a", "sleep", "sleep", "sleep"),
        ("c", "echo-1", "echo", "echo"),
        ("d", "echo-2", "echo", "echo"),
    ] {
        let p = topo.pod(pod);
        y.push_str(&format!(
            "  - {{uid: {name}, name: {name}, namespace: default, serviceAccount: {sa}, labels: {{app: {app}}}, ips: [{}], node: n{}, netns: {}}}\n",
            p.ipv4,
            p.node,
            p.netns_path.display()
        ));
    }
    y.push_str(&format!(
        "services:\n  - {{name: echo, namespace: default, vips: [{VIP}], ports: {{80: 8080}}, selector: {{app: echo}}}}\n"
    ));
    y
}

/// A minimal HTTP/1.1 server inside `pod`: answers every request with who served it and who
/// asked (the client address the app sees).
fn http_server(pod: &Pod, name: &str) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener: TcpListener = pod
        .listen(SocketAddr::from(([0, 0, 0, 0], 8080)))
        .with_context(|| format!("listening in pod {name}"))?;
    let name = format!("echo-{}", if name == "c" { 1 } else { 2 });
    Ok(std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let peer = stream
                .peer_addr()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = format!("hello from {name}, you are {peer}\n");
            let _ = (&stream).write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    }))
}

fn http_get(pod: &Pod, target: SocketAddr) -> anyhow::Result<String> {
    let mut s: TcpStream = pod.connect(target, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nhost: echo.default\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    ensure!(
        out.starts_with("HTTP/1.1 200"),
        "unexpected response: {out:?}"
    );
    Ok(out)
}

fn print_access(log: &str) {
    for line in log.lines().filter(|l| l.contains("connection complete")) {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or("-")
                .trim_matches('"')
                .to_string()
        };
        println!(
            "   {} {} ({}) -> {} ({}) {}",
            field("direction"),
            field("src.addr"),
            field("src.identity"),
            field("dst.addr"),
            field("dst.identity"),
            field("security"),
        );
    }
}

/// `cargo run` builds only this package's binaries; the daemon comes from the ztunnel package.
fn build_ztunnel() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "ztunnel", "--bin", "ztunnel"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo to build ztunnel")?;
    ensure!(status.success(), "building ztunnel failed");
    Ok(())
}

/// Blocks SIGINT/SIGTERM in every thread so one thread can wait for them and clean up.
fn block_signals() -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking signals")?;
    Ok(set)
}

struct Cleanup {
    names: Vec<String>,
    pids: Vec<u32>,
}

impl Cleanup {
    fn run(&self) {
        for pid in &self.pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        for name in &self.names {
            let _ = netns::delete(name);
        }
    }
}
