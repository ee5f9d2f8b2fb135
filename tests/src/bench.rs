//! The data-plane benchmark: each scenario through ztunnel and directly (same pods, no ztunnel)
//! in the same run, medians over several runs, reported as JSON and markdown.
//!
//! Every run first measures direct traffic, then starts both ztunnels, measures the same
//! scenarios through the mesh, and stops them (which removes capture again).

pub mod elf;
pub mod host;
pub mod iperf;
pub mod load;
pub mod mesh;
pub mod proc;
pub mod report;
pub mod runtime;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use mesh::{Daemons, Mesh};
use report::{Compare, Row, Samples};
use runtime::NsRuntime;

const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7000;
/// Requests per second of the fixed-rate latency scenario.
const FIXED_RATE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub runs: usize,
    /// Length of each throughput, max-rate and connection-rate measurement.
    pub duration: Duration,
    /// Length of each fixed-rate latency measurement.
    pub latency_duration: Duration,
    /// Idle proxied connections held open for the memory measurement.
    pub idle_connections: usize,
    /// Groups to measure (latency, connections, throughput, memory; `passthrough` is the
    /// passthrough half of throughput); empty means all.
    pub only: Vec<String>,
}

impl Options {
    fn measures(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// Where a scenario's client connects to, and where its server runs.
struct Path {
    name: &'static str,
    server_netns: String,
    addr: SocketAddr,
    /// Whether only node n1's ztunnel carries it (both tunnel ends in one process).
    same_node: bool,
    /// Which of the bench's echo servers answers it (iperf3 alone serves passthrough paths).
    echo: Option<usize>,
}

struct Bench {
    opts: Options,
    mesh: Mesh,
    samples: Samples,
    client: NsRuntime,
    /// Echo servers in pods b and c.
    servers: Vec<NsRuntime>,
    hbone: Vec<Path>,
    passthrough: Vec<Path>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    anyhow::ensure!(opts.runs > 0, "--runs must be at least 1");
    let iperf3 = std::process::Command::new("iperf3")
        .arg("--version")
        .output();
    anyhow::ensure!(
        iperf3.map(|o| o.status.success()).unwrap_or(false),
        "iperf3 is missing: install it (`apt-get install iperf3`)"
    );
    let fd_limit = proc::raise_fd_limit()?;
    anyhow::ensure!(
        fd_limit >= 2 * opts.idle_connections as u64 + 1000,
        "holding {} connections needs {} descriptors here, the hard limit is {fd_limit}: \
         pass a smaller --idle-connections",
        opts.idle_connections,
        2 * opts.idle_connections + 1000
    );
    let ztunnel_binary = crate::daemon::binary()?;
    let ztunnel_linking = elf::linking(&ztunnel_binary)?;
    eprintln!("measuring {} ({ztunnel_linking})", ztunnel_binary.display());
    let load_before = loadavg();
    let mesh = Mesh::create().context("building the topology")?;
    let topo = &mesh.topo;
    let (a, b, c, d) = (topo.pod("a"), topo.pod("b"), topo.pod("c"), topo.pod("d"));
    let n1 = topo.node(1);
    let client = NsRuntime::start(&a.netns_path, "client-a")?;
    let mut servers = Vec::new();
    for pod in [b, c] {
        let rt = NsRuntime::start(&pod.netns_path, &format!("echo-{}", pod.name))?;
        load::echo_server(&rt, ECHO_PORT)?;
        servers.push(rt);
    }
    let hbone = vec![
        Path {
            name: "same-node HBONE",
            server_netns: b.netns.clone(),
            addr: b.addr_v4(ECHO_PORT),
            same_node: true,
            echo: Some(0),
        },
        Path {
            name: "cross-node HBONE",
            server_netns: c.netns.clone(),
            addr: c.addr_v4(ECHO_PORT),
            same_node: false,
            echo: Some(1),
        },
    ];
    // Non-mesh destinations: node n1's own gateway address, and pod d (not in the config).
    let passthrough = vec![
        Path {
            name: "same-node passthrough",
            server_netns: n1.netns.clone(),
            addr: SocketAddr::from((crate::topology::gateway_v4(1), ECHO_PORT)),
            same_node: true,
            echo: None,
        },
        Path {
            name: "cross-node passthrough",
            server_netns: d.netns.clone(),
            addr: d.addr_v4(ECHO_PORT),
            same_node: false,
            echo: None,
        },
    ];
    let iperf_servers = hbone
        .iter()
        .chain(&passthrough)
        .map(|p| iperf::Server::start(&p.server_netns, IPERF_PORT))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut bench = Bench {
        opts: opts.clone(),
        samples: Samples::default(),
        client,
        servers,
        hbone,
        passthrough,
        mesh,
    };
    for run in 0..opts.runs {
        if opts.measures("latency") {
            eprintln!("run {}/{}: host wake-ups", run + 1, opts.runs);
            bench.host()?;
        }
        eprintln!("run {}/{}: direct", run + 1, opts.runs);
        bench.traffic("direct", None)?;
        eprintln!("run {}/{}: mesh", run + 1, opts.runs);
        let daemons = bench.mesh.start()?;
        if opts.measures("memory") {
            bench.memory(&daemons)?;
        }
        bench.traffic("mesh", Some(&daemons))?;
        daemons.stop()?;
        bench.mesh.unpin();
    }
    drop(iperf_servers);

    let meta = serde_json::json!({
        "runs": opts.runs,
        "duration_s": opts.duration.as_secs_f64(),
        "latency_duration_s": opts.latency_duration.as_secs_f64(),
        "idle_connections": opts.idle_connections,
        "fixed_rate_rps": FIXED_RATE,
        "message_bytes": load::MESSAGE,
        "max_rate_connections": load::MAX_RATE_CONNECTIONS,
        "connect_concurrency": load::CONNECT_CONCURRENCY,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_before": load_before,
        "damon_active": damon_active(),
        "ztunnel_binary": ztunnel_binary.display().to_string(),
        "ztunnel_linking": ztunnel_linking,
        "loadavg_after": loadavg(),
    });
    let rows = bench.rows();
    report::write(&opts.out, &bench.samples, &rows, meta)?;
    println!("{}", report::markdown(&bench.samples, &rows));
    println!(
        "wrote {} and {}",
        opts.out.join("results.json").display(),
        opts.out.join("results.md").display()
    );
    Ok(())
}

/// The ztunnels that carry `path` (none for direct runs). Cross-node passthrough goes to a pod
/// outside the mesh, so only n1's ztunnel sees it.
fn ztunnel_pids(daemons: Option<&Daemons>, path: &Path) -> Vec<u32> {
    match daemons {
        None => vec![],
        Some(z) if path.same_node || !path.name.contains("HBONE") => vec![z.n1.pid()],
        Some(z) => vec![z.n1.pid(), z.n2.pid()],
    }
}

fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|p| proc::cpu_seconds(*p)).sum()
}

/// CPU seconds of the bench's client thread and of `path`'s echo server thread so far: what
/// the two endpoints spend, direct or through the mesh, against which ztunnel's CPU reads.
fn endpoint_seconds(client: &NsRuntime, servers: &[NsRuntime], path: &Path) -> anyhow::Result<f64> {
    let server = path
        .echo
        .and_then(|i| servers.get(i))
        .context("this path has no echo server of the bench's")?;
    Ok(client.cpu_seconds()? + server.cpu_seconds()?)
}

/// CPU seconds ztunnel (`pids`) and `path`'s endpoints spent while `run` ran.
struct Spent {
    ztunnel: f64,
    endpoints: f64,
}

fn spent_during<T>(
    pids: &[u32],
    client: &NsRuntime,
    servers: &[NsRuntime],
    path: &Path,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Spent)> {
    let ztunnel = cpu_seconds(pids)?;
    let endpoints = endpoint_seconds(client, servers, path)?;
    let out = run()?;
    let spent = Spent {
        ztunnel: cpu_seconds(pids)? - ztunnel,
        endpoints: endpoint_seconds(client, servers, path)? - endpoints,
    };
    Ok((out, spent))
}

fn context_switches(pids: &[u32]) -> anyhow::Result<(u64, u64)> {
    pids.iter().try_fold((0, 0), |(v, i), p| {
        let (pv, pi) = proc::context_switches(*p)?;
        Ok((v + pv, i + pi))
    })
}

/// Whether the kernel's DAMON monitor is running (these machines run one that pages out cold
/// memory, with a 5 s aggregation interval): its periodic work shows in the latency tails.
fn damon_active() -> bool {
    std::fs::read_dir("/sys/kernel/mm/damon/admin/kdamonds")
        .map(|dirs| {
            dirs.flatten().any(|d| {
                std::fs::read_to_string(d.path().join("state")).is_ok_and(|s| s.trim() == "on")
            })
        })
        .unwrap_or(false)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Bench {
    /// The machine's own wake-up round trips (see [`host`]), on one CPU and across two.
    fn host(&mut self) -> anyhow::Result<()> {
        let pause = Duration::from_secs(1) / FIXED_RATE;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut pairs = vec![("same CPU", (0, 0))];
        if cpus > 1 {
            pairs.push(("two CPUs", (0, 1)));
        }
        self.samples.add("host/syscall_ns", host::syscall_ns());
        for (name, pair) in pairs {
            let l = host::wake_up_round_trip(pair, pause)
                .with_context(|| format!("wake-up round trip, {name}"))?;
            for (q, v) in [("p50", l.p50), ("p99", l.p99)] {
                self.samples.add(format!("host/wake/{name}/{q}"), v);
            }
        }
        Ok(())
    }

    /// Throughput, latency (with ztunnel CPU) and connection rate; `mode` is `direct` or `mesh`.
    fn traffic(&mut self, mode: &str, daemons: Option<&Daemons>) -> anyhow::Result<()> {
        let d = self.opts.duration;
        let a = self.mesh.topo.pod("a").netns.clone();
        for path in &self.hbone {
            let pids = ztunnel_pids(daemons, path);
            if self.opts.measures("latency") {
                let switches_before = context_switches(&pids)?;
                let (fixed, spent) =
                    spent_during(&pids, &self.client, &self.servers, path, || {
                        load::fixed_rate(
                            &self.client,
                            path.addr,
                            FIXED_RATE,
                            self.opts.latency_duration,
                        )
                        .with_context(|| format!("{mode} fixed-rate latency, {}", path.name))
                    })?;
                self.samples.add(
                    format!(
                        "cpu/{}/{FIXED_RATE}rps/endpoints_us_per_request/{mode}",
                        path.name
                    ),
                    spent.endpoints * 1e6 / fixed.requests as f64,
                );
                let key = format!("latency/{}/{FIXED_RATE}rps", path.name);
                for (q, v) in fixed.percentiles() {
                    self.samples.add(format!("{key}/{q}/{mode}"), v);
                }
                if daemons.is_some() {
                    let requests = fixed.requests as f64;
                    self.samples.add(
                        format!("cpu/{}/{FIXED_RATE}rps/us_per_request", path.name),
                        spent.ztunnel * 1e6 / requests,
                    );
                    let (voluntary, involuntary) = context_switches(&pids)?;
                    let (voluntary, involuntary) = (
                        voluntary - switches_before.0,
                        involuntary - switches_before.1,
                    );
                    self.samples.add(
                        format!("switches/{}/{FIXED_RATE}rps/voluntary", path.name),
                        voluntary as f64 / requests,
                    );
                    self.samples.add(
                        format!("switches/{}/{FIXED_RATE}rps/involuntary", path.name),
                        involuntary as f64 / requests,
                    );
                }

                let (max, spent) = spent_during(&pids, &self.client, &self.servers, path, || {
                    load::max_rate(&self.client, path.addr, d)
                        .with_context(|| format!("{mode} max-rate latency, {}", path.name))
                })?;
                self.samples.add(
                    format!("cpu/{}/max/endpoints_us_per_request/{mode}", path.name),
                    spent.endpoints * 1e6 / max.requests as f64,
                );
                let key = format!("latency/{}/max", path.name);
                self.samples.add(format!("{key}/rps/{mode}"), max.rate);
                for (q, v) in max.percentiles() {
                    self.samples.add(format!("{key}/{q}/{mode}"), v);
                }
                if daemons.is_some() {
                    self.samples.add(
                        format!("cpu/{}/max/us_per_request", path.name),
                        spent.ztunnel * 1e6 / max.requests as f64,
                    );
                }
            }
            if self.opts.measures("connections") {
                Self::connections(
                    &self.client,
                    &self.servers,
                    &mut self.samples,
                    d,
                    mode,
                    path,
                    &pids,
                )?;
            }
        }
        let hbone: &[Path] = if self.opts.measures("throughput") {
            &self.hbone
        } else if self.opts.measures("passthrough") {
            &[]
        } else {
            return Ok(());
        };
        for path in hbone.iter().chain(&self.passthrough) {
            let pids = ztunnel_pids(daemons, path);
            for streams in [1, 8] {
                let addr = SocketAddr::new(path.addr.ip(), IPERF_PORT);
                let before = cpu_seconds(&pids)?;
                let gbps = iperf::client(&a, addr, streams, d)
                    .with_context(|| format!("{mode} throughput, {}", path.name))?;
                let spent = cpu_seconds(&pids)? - before;
                self.samples
                    .add(format!("throughput/{}/{streams}/{mode}", path.name), gbps);
                if daemons.is_some() {
                    // CPU per gigabyte is what an optimisation changes even on a busy machine,
                    // where the throughput itself mostly shows the competition for cores.
                    let gigabytes = gbps / 8.0 * d.as_secs_f64();
                    self.samples.add(
                        format!("cpu/{}/{streams}/s_per_gb", path.name),
                        spent / gigabytes.max(1e-9),
                    );
                }
            }
        }
        Ok(())
    }

    fn connections(
        client: &NsRuntime,
        servers: &[NsRuntime],
        samples: &mut Samples,
        d: Duration,
        mode: &str,
        path: &Path,
        pids: &[u32],
    ) -> anyhow::Result<()> {
        let ((rate, failed), spent) = spent_during(pids, client, servers, path, || {
            load::connection_rate(client, path.addr, d)
                .with_context(|| format!("{mode} connection rate, {}", path.name))
        })?;
        anyhow::ensure!(
            failed as f64 <= rate * d.as_secs_f64() * 0.01,
            "{mode} connection rate, {}: {failed} of the connections failed",
            path.name
        );
        samples.add(format!("connections/{}/{mode}", path.name), rate);
        let made = rate * d.as_secs_f64();
        samples.add(
            format!("cpu/{}/endpoints_us_per_connection/{mode}", path.name),
            spent.endpoints * 1e6 / made.max(1.0),
        );
        if !pids.is_empty() {
            // Like CPU per GB: what a change saves, where the rate mostly shows the competition
            // for the 2 cores.
            samples.add(
                format!("cpu/{}/us_per_connection", path.name),
                spent.ztunnel * 1e6 / made.max(1.0),
            );
        }
        // Let the TIME_WAIT sockets of the connection run drain a little before the next.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    /// Resident memory of node n1's ztunnel idle, holding idle same-node connections (both
    /// tunnel ends in that one process), and after they closed.
    fn memory(&mut self, daemons: &Daemons) -> anyhow::Result<()> {
        let pid = daemons.n1.pid();
        // Let start-up allocations (certificates, listeners) settle.
        std::thread::sleep(Duration::from_secs(1));
        let idle = proc::rss_bytes(pid)?;
        self.samples.add("memory/idle/mesh", idle as f64 / 1e6);
        let idle_parts = self.rss_parts(pid, "idle")?;
        let n = self.opts.idle_connections;
        let half = n / 2;
        let path = &self.hbone[0];
        // In two halves: what the second half adds is the memory of one more connection, while
        // the growth from idle also holds what the first connections paid once (code run for
        // the first time, the pooled HBONE connections' TLS and HTTP/2 state).
        let mut conns = load::open_idle(&self.client, path.addr, half)
            .with_context(|| format!("opening {half} idle connections"))?;
        std::thread::sleep(Duration::from_secs(1));
        let at_half = proc::rss_bytes(pid)?;
        conns.extend(
            load::open_idle(&self.client, path.addr, n - half)
                .with_context(|| format!("opening {} more idle connections", n - half))?,
        );
        std::thread::sleep(Duration::from_secs(1));
        let held = proc::rss_bytes(pid)?;
        self.samples.add("memory/held/mesh", held as f64 / 1e6);
        let held_parts = self.rss_parts(pid, "held")?;
        self.samples.add(
            "memory/per_connection/mesh",
            (held as f64 - at_half as f64) / (n - half) as f64,
        );
        self.samples.add(
            "memory/growth_per_connection/mesh",
            (held as f64 - idle as f64) / n as f64,
        );
        drop(conns);
        std::thread::sleep(Duration::from_secs(3));
        let after = proc::rss_bytes(pid)?;
        self.samples
            .add("memory/after_close/mesh", after as f64 / 1e6);
        let after_parts = self.rss_parts(pid, "after_close")?;
        // The same share for heap and stacks alone: code pages the traffic ran are not kept
        // by connections.
        self.samples.add(
            "memory/retained_fraction_anon/mesh",
            (after_parts.0 as f64 - idle_parts.0 as f64)
                / (held_parts.0 as f64 - idle_parts.0 as f64).max(1.0),
        );
        self.samples.add(
            "memory/retained_fraction/mesh",
            (after as f64 - idle as f64) / (held as f64 - idle as f64).max(1.0),
        );
        Ok(())
    }

    /// Records the anonymous and file-backed parts of `pid`'s resident memory at `when`.
    fn rss_parts(&mut self, pid: u32, when: &str) -> anyhow::Result<(u64, u64)> {
        let (anon, file) = proc::rss_parts(pid)?;
        self.samples
            .add(format!("memory/{when}/anon/mesh"), anon as f64 / 1e6);
        self.samples
            .add(format!("memory/{when}/file/mesh"), file as f64 / 1e6);
        Ok((anon, file))
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let row = |scenario: String,
                   metric: &str,
                   unit,
                   direct: Option<String>,
                   mesh: String,
                   compare| Row {
            scenario,
            metric: metric.to_owned(),
            unit,
            direct,
            mesh,
            compare,
        };
        for path in self.hbone.iter().chain(&self.passthrough) {
            let hbone = path.name.contains("HBONE");
            for streams in [1, 8] {
                let key = format!("throughput/{}/{streams}", path.name);
                let compare = match (streams, hbone) {
                    (1, true) => Compare::RatioAtLeast(0.50),
                    (1, false) => Compare::RatioAtLeast(0.75),
                    _ => Compare::Ratio,
                };
                rows.push(row(
                    path.name.to_owned(),
                    &format!(
                        "throughput, {streams} stream{}",
                        if streams == 1 { "" } else { "s" }
                    ),
                    "Gbit/s",
                    Some(format!("{key}/direct")),
                    format!("{key}/mesh"),
                    compare,
                ));
                rows.push(row(
                    path.name.to_owned(),
                    &format!(
                        "ztunnel CPU per GB, {streams} stream{}",
                        if streams == 1 { "" } else { "s" }
                    ),
                    "s/GB",
                    None,
                    format!("cpu/{}/{streams}/s_per_gb", path.name),
                    Compare::None,
                ));
            }
        }
        for path in &self.hbone {
            for (load, label) in [
                (format!("{FIXED_RATE}rps"), format!("{FIXED_RATE} req/s")),
                ("max".to_owned(), "max rate".to_owned()),
            ] {
                let key = format!("latency/{}/{load}", path.name);
                for q in ["p50", "p90", "p99", "p99.9"] {
                    let compare = match (load.as_str(), q) {
                        ("max", _) => Compare::Added,
                        (_, "p99") => Compare::AddedAtMost(80.0),
                        (_, "p99.9") => Compare::AddedAtMost(300.0),
                        _ => Compare::Added,
                    };
                    rows.push(row(
                        path.name.to_owned(),
                        &format!("latency {q}, 1 KiB at {label}"),
                        "µs",
                        Some(format!("{key}/{q}/direct")),
                        format!("{key}/{q}/mesh"),
                        compare,
                    ));
                }
                if load == "max" {
                    rows.push(row(
                        path.name.to_owned(),
                        &format!(
                            "requests/s, {} connections closed loop",
                            load::MAX_RATE_CONNECTIONS
                        ),
                        "req/s",
                        Some(format!("{key}/rps/direct")),
                        format!("{key}/rps/mesh"),
                        Compare::Ratio,
                    ));
                }
            }
            // Cross-node CPU figures add up the two ztunnels a connection passes.
            let both = if path.same_node {
                ""
            } else {
                " (both ztunnels)"
            };
            rows.push(row(
                path.name.to_owned(),
                "new connections (connect, 1-byte echo, close)",
                "conn/s",
                Some(format!("connections/{}/direct", path.name)),
                format!("connections/{}/mesh", path.name),
                Compare::RatioAtLeast(0.50),
            ));
            rows.push(row(
                path.name.to_owned(),
                &format!("ztunnel CPU per new connection{both}"),
                "µs",
                None,
                format!("cpu/{}/us_per_connection", path.name),
                Compare::None,
            ));
            let endpoints = format!("cpu/{}/endpoints_us_per_connection", path.name);
            rows.push(row(
                path.name.to_owned(),
                "client + echo server CPU per new connection (the endpoints, not ztunnel)",
                "µs",
                Some(format!("{endpoints}/direct")),
                format!("{endpoints}/mesh"),
                Compare::Ratio,
            ));
            rows.push(row(
                path.name.to_owned(),
                &format!("ztunnel CPU per request at {FIXED_RATE} req/s{both}"),
                "µs",
                None,
                format!("cpu/{}/{FIXED_RATE}rps/us_per_request", path.name),
                Compare::AtMost(40.0),
            ));
            let endpoints = format!("cpu/{}/{FIXED_RATE}rps/endpoints_us_per_request", path.name);
            rows.push(row(
                path.name.to_owned(),
                &format!(
                    "client + echo server CPU per request at {FIXED_RATE} req/s (the endpoints)"
                ),
                "µs",
                Some(format!("{endpoints}/direct")),
                format!("{endpoints}/mesh"),
                Compare::Ratio,
            ));
            for (kind, why) in [
                ("voluntary", "blocked, then woken"),
                ("involuntary", "preempted"),
            ] {
                rows.push(row(
                    path.name.to_owned(),
                    &format!(
                        "ztunnel context switches at {FIXED_RATE} req/s, {kind} ({why}){both}"
                    ),
                    "per request",
                    None,
                    format!("switches/{}/{FIXED_RATE}rps/{kind}", path.name),
                    Compare::None,
                ));
            }
            rows.push(row(
                path.name.to_owned(),
                &format!("ztunnel CPU per request at max rate{both}"),
                "µs",
                None,
                format!("cpu/{}/max/us_per_request", path.name),
                Compare::None,
            ));
            let endpoints = format!("cpu/{}/max/endpoints_us_per_request", path.name);
            rows.push(row(
                path.name.to_owned(),
                "client + echo server CPU per request at max rate (the endpoints)",
                "µs",
                Some(format!("{endpoints}/direct")),
                format!("{endpoints}/mesh"),
                Compare::Ratio,
            ));
        }
        rows.push(row(
            "host, no ztunnel".to_owned(),
            "null system call (getppid)",
            "ns",
            None,
            "host/syscall_ns".into(),
            Compare::None,
        ));
        for cpus in ["same CPU", "two CPUs"] {
            for q in ["p50", "p99"] {
                rows.push(row(
                    "host, no ztunnel".to_owned(),
                    &format!(
                        "thread wake-up round trip, {cpus}, {q}, {} ms apart",
                        1000 / FIXED_RATE
                    ),
                    "µs",
                    None,
                    format!("host/wake/{cpus}/{q}"),
                    Compare::None,
                ));
            }
        }
        let n = self.opts.idle_connections;
        let node = "node n1 ztunnel".to_owned();
        rows.push(row(
            node.clone(),
            "resident memory, idle",
            "MB",
            None,
            "memory/idle/mesh".into(),
            Compare::AtMost(10.0),
        ));
        rows.push(row(
            node.clone(),
            &format!("resident memory, {n} idle same-node connections"),
            "MB",
            None,
            "memory/held/mesh".into(),
            Compare::None,
        ));
        rows.push(row(
            node.clone(),
            &format!(
                "resident memory per idle connection (both ends; added by the second {})",
                n - n / 2
            ),
            "bytes",
            None,
            "memory/per_connection/mesh".into(),
            Compare::AtMost(4096.0),
        ));
        rows.push(row(
            node.clone(),
            &format!("resident growth from idle per connection (all {n}, one-time costs included)"),
            "bytes",
            None,
            "memory/growth_per_connection/mesh".into(),
            Compare::None,
        ));
        rows.push(row(
            node.clone(),
            "resident memory after they closed",
            "MB",
            None,
            "memory/after_close/mesh".into(),
            Compare::None,
        ));
        rows.push(row(
            node.clone(),
            "share of the growth kept after close",
            "fraction",
            None,
            "memory/retained_fraction/mesh".into(),
            Compare::AtMost(0.25),
        ));
        rows.push(row(
            node.clone(),
            "share of the anonymous (heap) growth kept after close",
            "fraction",
            None,
            "memory/retained_fraction_anon/mesh".into(),
            Compare::None,
        ));
        rows.push(row(
            node,
            "file-backed (code) resident memory after close",
            "MB",
            None,
            "memory/after_close/file/mesh".into(),
            Compare::None,
        ));
        rows
    }
}
