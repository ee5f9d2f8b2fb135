//! Per-connect overhead of traffic capture: a client in pod `a` opens and closes N TCP
//! connections to a passthrough destination (a listener in node n1's namespace, outside the
//! mesh) with no ztunnel, with ztunnel capturing by nftables, and with ztunnel capturing by
//! eBPF. Prints, per scenario, the median over batches of the client's wall time and CPU time
//! (user + system of the client thread) per connect+close.
//!
//! Run as root, with a release ztunnel:
//!   cargo release-ztunnel
//!   ZTUNNEL_BIN=target/x86_64-unknown-linux-gnu/release/ztunnel cargo run --release -p mesh-tests --bin connect-bench -- 2000 7
//! (arguments: connections per batch, batches).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_tests::daemon::Ztunnel;
use mesh_tests::{require_root, Topology};

const TIMEOUT: Duration = Duration::from_secs(10);

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer to a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (wall µs, CPU µs) per connect+close, median of `batches` batches of `n`.
fn measure(topo: &Topology, target: SocketAddr, n: usize, batches: usize) -> (f64, f64) {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..batches {
        let (wall, cpu) = topo.pod("a").run(|| {
            let start = Instant::now();
            let cpu0 = thread_cpu();
            for _ in 0..n {
                let s = TcpStream::connect_timeout(&target, TIMEOUT).expect("connect");
                drop(s);
            }
            (start.elapsed(), thread_cpu() - cpu0)
        });
        walls.push(wall.as_secs_f64() * 1e6 / n as f64);
        cpus.push(cpu.as_secs_f64() * 1e6 / n as f64);
        // Let TIME_WAIT and ztunnel's upstream connections settle between batches.
        std::thread::sleep(Duration::from_millis(200));
    }
    (median(walls), median(cpus))
}

fn config(topo: &Topology, dir: &std::path::Path, capture: &str) -> String {
    let a = topo.pod("a");
    format!(
        "stateDir: {}\ncapture: {capture}\ncaptureFailMode: open\nlogFormat: text\nworkloads:\n  - uid: uid-a\n    name: a\n    namespace: default\n    serviceAccount: a\n    ips: [{}, \"{}\"]\n    node: n1\n    netns: {}\n",
        dir.join("state").display(),
        a.ipv4,
        a.ipv6,
        a.netns_path.display()
    )
}

fn main() -> anyhow::Result<()> {
    require_root()?;
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let batches: usize = args.next().map_or(Ok(7), |a| a.parse())?;
    let topo = Topology::create().context("topology")?;
    let n1 = topo.node(1);
    let target = SocketAddr::new(n1.link_ipv4.into(), 7000);
    let listener = n1.listen(target).context("passthrough listener")?;
    std::thread::spawn(move || {
        // Accept and read to EOF, so every connection is served and closed by both ends.
        while let Ok((mut c, _)) = listener.accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let dir = tempfile::tempdir()?;
    println!("connect+close from pod a to {target} (passthrough), {batches} batches of {n}, median per connect:");
    println!(
        "{:<10} {:>10} {:>14}",
        "capture", "wall µs", "client CPU µs"
    );
    let (wall, cpu) = measure(&topo, target, n, batches);
    println!("{:<10} {wall:>10.1} {cpu:>14.1}", "none");
    for capture in ["nftables", "ebpf"] {
        let path = dir.path().join(format!("{capture}.yaml"));
        std::fs::write(&path, config(&topo, dir.path(), capture))?;
        let mut z = Ztunnel::start(n1, &path, "n1", &[])?;
        z.wait_ready(TIMEOUT)?;
        let (wall, cpu) = measure(&topo, target, n, batches);
        println!("{capture:<10} {wall:>10.1} {cpu:>14.1}");
        z.sigterm()?;
        z.wait_exit(TIMEOUT);
    }
    Ok(())
}
