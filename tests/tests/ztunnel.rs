//! End-to-end tests of ztunnel: two nodes, two pods each, real daemons, real sockets.
//!
//! Pods a and b live on node n1, c and d on n2. Unless a test says otherwise all four are
//! enrolled (HBONE) workloads of namespace `default` with service account = pod name, and the
//! service `echo` (10.96.0.10 and fd00:96::10, port 80 -> 8080) selects c and d.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_tests::app::{self, EchoServer, SinkServer};
use mesh_tests::capture::{self, PacketCapture};
use mesh_tests::daemon::Ztunnel;
use mesh_tests::{metrics, require_root, Pod, Topology};

const TIMEOUT: Duration = Duration::from_secs(10);
const VIP: &str = "10.96.0.10";
const TD: &str = "cluster.local";

/// What a test changes in the generated configuration.
#[derive(Clone)]
struct Opts {
    /// Pods that are workloads in the file, and whether each is enrolled.
    workloads: Vec<(&'static str, bool)>,
    /// Service account of a pod as a node sees it: (node index or 0 for both, pod, sa).
    service_accounts: Vec<(u8, &'static str, &'static str)>,
    policies: String,
    peer_authentications: String,
    ttl: &'static str,
    /// Each node keeps its own state directory (so each builds its own CA).
    separate_ca: bool,
    drain_timeout: &'static str,
    /// Raw YAML lines added to the node settings.
    settings: String,
    /// The capture backend both ztunnels use (a node setting: kept across reconfigurations).
    capture: Capture,
}

/// Capture backends every case runs under; a backend that cannot start fails the case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    Ebpf,
    Nftables,
}

impl Capture {
    fn setting(self) -> &'static str {
        match self {
            Capture::Ebpf => "ebpf",
            Capture::Nftables => "nftables",
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            workloads: vec![("a", true), ("b", true), ("c", true), ("d", true)],
            service_accounts: vec![],
            policies: String::new(),
            peer_authentications: String::new(),
            ttl: "24h",
            separate_ca: false,
            drain_timeout: "5s",
            settings: String::new(),
            capture: Capture::Ebpf,
        }
    }
}

struct Mesh {
    topo: Topology,
    dir: tempfile::TempDir,
    opts: Opts,
    z1: Ztunnel,
    z2: Ztunnel,
}

/// The host's bpffs for pinned capture state. ztunnel mounts one itself when it sees none, but
/// it runs under `ip netns exec` (a private mount namespace), where such a mount dies with the
/// process; mounted here, in the test's (host) mount namespace, the pins outlive a ztunnel.
const BPFFS: &str = "/run/ztunnel/bpf";

fn ensure_host_bpffs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::fs::create_dir_all(BPFFS).expect("create the bpffs mount point");
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read mounts");
        if !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.contains(" bpf "))
        {
            let out = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf", BPFFS])
                .output()
                .expect("run mount");
            assert!(out.status.success(), "mounting a bpffs at {BPFFS}: {out:?}");
        }
    });
}

/// Each test's ztunnels pin into their own directory (several run at once on one machine).
fn pin_dir(topo: &Topology, node: u8) -> PathBuf {
    Path::new(BPFFS).join(format!("{}-n{node}", topo.prefix()))
}

fn config_path(dir: &Path, node: u8) -> PathBuf {
    dir.join(format!("ztunnel-n{node}.yaml"))
}

fn render(topo: &Topology, dir: &Path, node: u8, o: &Opts) -> String {
    let state = if o.separate_ca {
        dir.join(format!("state-n{node}"))
    } else {
        dir.join("state")
    };
    let mut y = format!(
        "trustDomain: {TD}\nstateDir: {}\ncertificateTtl: {}\ndrainTimeout: {}\ncapture: {}\n",
        state.display(),
        o.ttl,
        o.drain_timeout,
        o.capture.setting()
    );
    let _ = writeln!(y, "bpfPinDir: {}", pin_dir(topo, node).display());
    y.push_str(&o.settings);
    y.push_str("workloads:\n");
    for (name, enrolled) in &o.workloads {
        let p = topo.pod(name);
        let sa = o
            .service_accounts
            .iter()
            .find(|(n, pod, _)| (*n == 0 || *n == node) && pod == name)
            .map_or(*name, |(_, _, sa)| *sa);
        let svc = if ["c", "d"].contains(name) {
            ", svc: echo"
        } else {
            ""
        };
        let _ = write!(
            y,
            "  - uid: uid-{name}\n    name: {name}\n    namespace: default\n    serviceAccount: {sa}\n    labels: {{app: {name}{svc}}}\n    ips: [{}, \"{}\"]\n    node: n{}\n",
            p.ipv4, p.ipv6, p.node
        );
        if *enrolled {
            let _ = writeln!(y, "    netns: {}", p.netns_path.display());
        } else {
            y.push_str("    protocol: TCP\n");
        }
    }
    let _ = write!(
        y,
        "services:\n  - name: echo\n    namespace: default\n    vips: [{VIP}, \"fd00:96::10\"]\n    ports: {{80: 8080}}\n    selector: {{svc: echo}}\n"
    );
    if !o.policies.is_empty() {
        let _ = write!(y, "authorizationPolicies:\n{}", o.policies);
    }
    if !o.peer_authentications.is_empty() {
        let _ = write!(y, "peerAuthentications:\n{}", o.peer_authentications);
    }
    y
}

impl Mesh {
    fn start(capture: Capture, mut opts: Opts) -> Mesh {
        opts.capture = capture;
        require_root().expect("e2e prerequisites");
        ensure_host_bpffs();
        let topo = Topology::create().expect("topology");
        let dir = tempfile::tempdir().expect("tempdir");
        for node in [1, 2] {
            std::fs::write(
                config_path(dir.path(), node),
                render(&topo, dir.path(), node, &opts),
            )
            .expect("write config");
        }
        // n1 first: with a shared state directory it creates the CA that n2 then reuses.
        let mut z1 = Ztunnel::start(topo.node(1), &config_path(dir.path(), 1), "n1", &[])
            .expect("start ztunnel n1");
        z1.wait_ready(TIMEOUT).expect("ztunnel n1 ready");
        let mut z2 = Ztunnel::start(topo.node(2), &config_path(dir.path(), 2), "n2", &[])
            .expect("start ztunnel n2");
        z2.wait_ready(TIMEOUT).expect("ztunnel n2 ready");
        if capture == Capture::Ebpf {
            for z in [&z1, &z2] {
                assert!(
                    z.log().contains("capturing with eBPF"),
                    "ztunnel did not capture with eBPF:\n{}",
                    z.log()
                );
            }
        }
        Mesh {
            topo,
            dir,
            opts,
            z1,
            z2,
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.topo.pod(name)
    }

    /// Starts node `node`'s ztunnel again with its current file and waits until it is ready.
    fn restart(&mut self, node: u8) -> Duration {
        let start = Instant::now();
        let mut z = Ztunnel::start(
            self.topo.node(node),
            &config_path(self.dir.path(), node),
            &format!("n{node}"),
            &[],
        )
        .expect("restart ztunnel");
        z.wait_ready(TIMEOUT).expect("restarted ztunnel ready");
        let took = start.elapsed();
        if node == 1 {
            self.z1 = z;
        } else {
            self.z2 = z;
        }
        took
    }
}

impl Drop for Mesh {
    /// Pins are removed even when a test fails: the links detach once the ztunnels (dropped
    /// right after this) are gone.
    fn drop(&mut self) {
        for node in [1, 2] {
            let _ = std::fs::remove_dir_all(pin_dir(&self.topo, node));
        }
    }
}

impl Mesh {
    /// Rewrites both nodes' files and waits until both daemons report the reload.
    fn reconfigure(&mut self, mut opts: Opts) {
        opts.capture = self.opts.capture;
        let before = (
            count(&self.z1.log(), "configuration reloaded"),
            count(&self.z2.log(), "configuration reloaded"),
        );
        for node in [1, 2] {
            std::fs::write(
                config_path(self.dir.path(), node),
                render(&self.topo, self.dir.path(), node, &opts),
            )
            .expect("write config");
        }
        self.opts = opts;
        wait_for("both ztunnels reload", || {
            count(&self.z1.log(), "configuration reloaded") > before.0
                && count(&self.z2.log(), "configuration reloaded") > before.1
        });
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    mesh_tests::wait_for(what, TIMEOUT, cond)
}

/// Opens a connection from `pod` and checks an echo round trip through it; the connection
/// stays open (no half-close) for the caller.
fn echo(pod: &Pod, target: SocketAddr, msg: &[u8]) -> std::io::Result<TcpStream> {
    app::echo_open(pod, target, msg, TIMEOUT)
}

/// A connection the mesh refuses is accepted by the pod's outbound listener (capture is
/// transparent to the app) and then closed without any byte of the echo coming back.
fn assert_refused(pod: &Pod, target: SocketAddr) {
    match echo(pod, target, b"should-not-arrive") {
        Ok(_) => panic!("{} -> {target} was allowed", pod.name),
        Err(e) => eprintln!("{} -> {target} refused as expected: {e}", pod.name),
    }
}

fn access_lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("connection complete") && l.contains(needle))
        .collect()
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("vip"), port)
}

fn pod_to_pod_same_node_and_across_nodes_with_identities(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let b_srv = EchoServer::start(m.pod("b"), 8080).expect("echo b");
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let a = m.pod("a");
    for target in [
        m.pod("b").addr_v4(8080),
        m.pod("c").addr_v4(8080),
        m.pod("c").addr_v6(8080),
    ] {
        echo(a, target, b"hello through the mesh")
            .unwrap_or_else(|e| panic!("a -> {target}: {e}\n{}", m.z1.log()));
    }
    // The apps see the client's own address: delivery is transparent.
    let a_ips: Vec<IpAddr> = vec![a.ipv4.into(), a.ipv6.into()];
    assert_eq!(
        b_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![a_ips[0]]
    );
    assert_eq!(
        c_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        a_ips
    );

    // The destination's ztunnel saw a's SPIFFE identity; the source's dialled c's.
    wait_for("access log on n2", || {
        access_lines(&m.z2.log(), "inbound").len() >= 2
    });
    let z2_log = m.z2.log();
    let inbound = access_lines(&z2_log, "inbound");
    assert!(
        inbound
            .iter()
            .all(|l| l.contains(&spiffe("a")) && l.contains(&spiffe("c"))),
        "inbound lines on n2 lack identities: {inbound:#?}"
    );
    let z1_log = m.z1.log();
    let outbound = access_lines(&z1_log, "outbound");
    assert!(
        outbound.iter().any(|l| l.contains(&spiffe("a"))
            && l.contains(&spiffe("c"))
            && l.contains("mutual_tls")),
        "outbound lines on n1: {outbound:#?}"
    );
    assert!(
        access_lines(&z1_log, "inbound")
            .iter()
            .any(|l| l.contains(&spiffe("b"))),
        "same-node delivery to b was not through HBONE: {z1_log}"
    );

    // Both ends of a same-node tunnel are n1's ztunnel: its HBONE connection is an in-process
    // pipe, so no TCP connection to 15008 exists in b's namespace, while c's has the one from
    // n1. Both tunnels are held open while looking.
    let _to_b = echo(a, m.pod("b").addr_v4(8080), b"held to b").expect("a -> b");
    let _to_c = echo(a, m.pod("c").addr_v4(8080), b"held to c").expect("a -> c");
    assert_eq!(hbone_connections_in(m.pod("b")), 0, "{}", m.z1.log());
    assert!(hbone_connections_in(m.pod("c")) >= 1, "{}", m.z2.log());
}

/// Established TCP connections to the HBONE port inside `pod`'s namespace (`ss` there).
fn hbone_connections_in(pod: &Pod) -> usize {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.netns,
            "ss",
            "-Htn",
            "state",
            "established",
        ])
        .args(["( sport = :15008 )"])
        .output()
        .expect("run ss in the pod");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn service_vip_uses_both_endpoints(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let d_srv = EchoServer::start(m.pod("d"), 8080).expect("echo d");
    for i in 0..6 {
        echo(m.pod("a"), vip(80), format!("request {i}").as_bytes())
            .unwrap_or_else(|e| panic!("a -> VIP: {e}\n{}", m.z1.log()));
    }
    let v6: SocketAddr = "[fd00:96::10]:80".parse().expect("v6 vip");
    echo(m.pod("a"), v6, b"over v6").expect("a -> v6 VIP");
    assert!(c_srv.connections() >= 2, "c got {}", c_srv.connections());
    assert!(d_srv.connections() >= 2, "d got {}", d_srv.connections());
    assert_eq!(c_srv.connections() + d_srv.connections(), 7);
}

fn bytes_between_nodes_are_tls_only(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let _c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let n1 = m.topo.node(1);
    let cap = PacketCapture::start(&n1.netns_path, &n1.link_iface).expect("capture");
    let secret = b"APPLICATION-PLAINTEXT-5e1f0c";
    let mut s = echo(m.pod("a"), m.pod("c").addr_v4(8080), secret).expect("a -> c");
    app::ping(&mut s, secret).expect("second round trip");
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let frames = cap.stop();
    assert!(
        !capture::contains(&frames, secret),
        "plaintext crossed the node link"
    );
    assert!(
        capture::count_tcp_to_port(&frames, 15008) > 0,
        "no HBONE traffic seen on the link"
    );
    assert_eq!(
        capture::count_tcp_to_port(&frames, 8080),
        0,
        "app port seen on the link"
    );
    // The TLS record layer is visible: content type 23 (application data), version 0x0303.
    assert!(
        capture::contains(&frames, &[0x17, 0x03, 0x03]),
        "no TLS records on the link"
    );
}

fn destination_presenting_wrong_identity_is_refused(capture: Capture) {
    // n1 believes c runs as sa "c"; n2 (where c lives) gives it sa "impostor".
    let opts = Opts {
        service_accounts: vec![(2, "c", "impostor")],
        ..Opts::default()
    };
    let m = Mesh::start(capture, opts);
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    assert_refused(m.pod("a"), m.pod("c").addr_v4(8080));
    assert_eq!(c_srv.connections(), 0, "the app was reached");
    wait_for("failed connection counted on n1", || {
        metrics::sample(
            &m.z1.metrics(),
            "istio_tcp_connections_failed_total",
            &[("reporter", "source")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    // d is fine: the failure is per connection.
    let _d = EchoServer::start(m.pod("d"), 8080).expect("echo d");
    echo(m.pod("a"), m.pod("d").addr_v4(8080), b"still works").expect("a -> d");
}

fn peers_of_another_ca_are_refused(capture: Capture) {
    let opts = Opts {
        separate_ca: true,
        ..Opts::default()
    };
    let m = Mesh::start(capture, opts);
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    assert_refused(m.pod("a"), m.pod("c").addr_v4(8080));
    assert_eq!(c_srv.connections(), 0);
    wait_for("TLS rejection counted on n2", || {
        metrics::sample(
            &m.z2.metrics(),
            "ztunnel_inbound_rejected_total",
            &[("reason", "tls")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    // Same-node traffic (one CA) is unaffected.
    let _b = EchoServer::start(m.pod("b"), 8080).expect("echo b");
    echo(m.pod("a"), m.pod("b").addr_v4(8080), b"same node").expect("a -> b");
}

fn allow_and_deny_policies_and_closing_live_connections(capture: Capture) {
    let allow_a = "  - name: c-from-a\n    namespace: default\n    selector: {app: c}\n    action: ALLOW\n    rules:\n      - from:\n          - source: {principals: [cluster.local/ns/default/sa/a]}\n";
    let deny_d_8080 = "  - name: d-not-8080\n    namespace: default\n    selector: {app: d}\n    action: DENY\n    rules:\n      - from:\n          - source: {namespaces: [default]}\n        to:\n          - operation: {ports: [8080]}\n";
    let opts = Opts {
        policies: format!("{allow_a}{deny_d_8080}"),
        ..Opts::default()
    };
    let mut m = Mesh::start(capture, opts.clone());
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let _d = EchoServer::start(m.pod("d"), 8080).expect("echo d");
    let _d2 = EchoServer::start(m.pod("d"), 9090).expect("echo d 9090");

    let mut live = echo(m.pod("a"), m.pod("c").addr_v4(8080), b"allowed").expect("a -> c allowed");
    assert_refused(m.pod("b"), m.pod("c").addr_v4(8080));
    assert_refused(m.pod("a"), m.pod("d").addr_v4(8080));
    echo(m.pod("a"), m.pod("d").addr_v4(9090), b"other port").expect("a -> d:9090 allowed");
    let denied = metrics::sample(
        &m.z2.metrics(),
        "istio_tcp_connections_failed_total",
        &[("reporter", "destination"), ("response_flags", "DENY")],
    )
    .unwrap_or(0.0);
    assert!(
        denied >= 2.0,
        "denials counted: {denied}\n{}",
        m.z2.metrics()
    );

    // Now only b may reach c: the open connection from a must be closed.
    let allow_b = allow_a
        .replace("sa/a", "sa/b")
        .replace("c-from-a", "c-from-b");
    m.reconfigure(Opts {
        policies: allow_b,
        ..opts
    });
    live.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let closed_at = Instant::now();
    let mut buf = [0u8; 16];
    let _ = live.write_all(b"are you there?");
    let n = live.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the live connection kept working after the policy change"
    );
    assert!(closed_at.elapsed() < TIMEOUT);
    echo(m.pod("b"), m.pod("c").addr_v4(8080), b"b now allowed").expect("b -> c after change");
    assert_refused(m.pod("a"), m.pod("c").addr_v4(8080));
}

fn strict_mtls_rejects_plaintext(capture: Capture) {
    // d is outside the mesh: its connections reach c without a tunnel.
    let opts = Opts {
        workloads: vec![("a", true), ("b", true), ("c", true), ("d", false)],
        ..Opts::default()
    };
    let mut m = Mesh::start(capture, opts.clone());
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo(
        m.pod("d"),
        m.pod("c").addr_v4(8080),
        b"plaintext, permissive",
    )
    .expect("d -> c permissive");
    assert_eq!(
        c_srv.peers().last().map(|p| p.ip()),
        Some(IpAddr::from(m.pod("d").ipv4))
    );
    m.reconfigure(Opts {
        peer_authentications: "  - {name: strict, namespace: default, mode: STRICT}\n".into(),
        ..opts
    });
    assert_refused(m.pod("d"), m.pod("c").addr_v4(8080));
    let rejected = metrics::sample(
        &m.z2.metrics(),
        "ztunnel_inbound_rejected_total",
        &[("reason", "strict_mtls")],
    );
    assert!(rejected.unwrap_or(0.0) >= 1.0, "{}", m.z2.metrics());
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"mtls still fine").expect("a -> c under STRICT");
}

fn metrics_count_connections_and_bytes(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    const N: usize = 5;
    const BYTES: u64 = 10_000;
    for _ in 0..N {
        let s = m
            .pod("a")
            .connect(m.pod("c").addr_v4(8080), TIMEOUT)
            .expect("connect");
        let t = app::transfer(&s, BYTES).expect("transfer");
        assert!(t.ok(), "{t:?}");
    }
    let labels_dst = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("destination_workload", "c"),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_for("all connections closed on n2", || {
        metrics::sample(
            &m.z2.metrics(),
            "istio_tcp_connections_closed_total",
            &labels_dst,
        ) == Some(N as f64)
    });
    let text = m.z2.metrics();
    assert_eq!(
        metrics::sample(&text, "istio_tcp_connections_opened_total", &labels_dst),
        Some(N as f64)
    );
    assert_eq!(
        metrics::sample(&text, "istio_tcp_received_bytes_total", &labels_dst),
        Some((N as u64 * BYTES) as f64)
    );
    assert_eq!(
        metrics::sample(&text, "istio_tcp_sent_bytes_total", &labels_dst),
        Some((N as u64 * BYTES) as f64)
    );
    let labels_src = [
        ("reporter", "source"),
        ("source_workload", "a"),
        ("destination_workload", "c"),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_for("all connections closed on n1", || {
        metrics::sample(
            &m.z1.metrics(),
            "istio_tcp_connections_closed_total",
            &labels_src,
        ) == Some(N as f64)
    });
    let text = m.z1.metrics();
    assert_eq!(
        metrics::sample(&text, "istio_tcp_connections_opened_total", &labels_src),
        Some(N as f64)
    );
    assert_eq!(
        metrics::sample(&text, "istio_tcp_sent_bytes_total", &labels_src),
        Some((N as u64 * BYTES) as f64)
    );
    assert!(
        metrics::sample(&text, "ztunnel_hbone_pool_connections", &[]).unwrap_or(0.0) >= 1.0,
        "pool gauge: {text}"
    );
}

fn reload_with_a_bad_file_keeps_the_last_good_state(capture: Capture) {
    let mut m = Mesh::start(capture, Opts::default());
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let before = m.z1.admin_get("/config_dump").expect("config_dump");
    assert_eq!(before.0, 200);
    let path = config_path(m.dir.path(), 1);
    let good = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("{good}bogusField: 1\nworkloads2: []\n")).expect("write bad");
    wait_for("rejection logged", || {
        m.z1.log().contains("configuration rejected")
    });
    let log = m.z1.log();
    assert!(
        log.contains("bogusField") && log.contains("workloads2"),
        "all errors listed: {log}"
    );
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"old state serves")
        .expect("a -> c after bad reload");
    assert_eq!(
        m.z1.admin_get("/config_dump").expect("config_dump").1,
        before.1
    );
    // A good file after the bad one applies.
    let deny_all = "  - {name: deny-all, namespace: default, selector: {app: c}, action: ALLOW}\n";
    m.reconfigure(Opts {
        policies: deny_all.into(),
        ..Opts::default()
    });
    assert_refused(m.pod("a"), m.pod("c").addr_v4(8080));
}

fn certificate_renewal_keeps_long_lived_connections(capture: Capture) {
    let m = Mesh::start(
        capture,
        Opts {
            ttl: "4s",
            ..Opts::default()
        },
    );
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let mut s = echo(m.pod("a"), m.pod("c").addr_v4(8080), b"first").expect("a -> c");
    let serials = |z: &Ztunnel| {
        let dump = z.admin_get("/config_dump").expect("config_dump").1;
        let v: serde_json::Value = serde_json::from_str(&dump).expect("json");
        v["certificates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["serial"].to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let first = serials(&m.z1);
    assert!(!first.is_empty());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        app::ping(&mut s, b"still here").expect("long-lived connection broke during renewal");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_ne!(serials(&m.z1), first, "certificates were not renewed");
    let renewals =
        metrics::sample(&m.z1.metrics(), "ztunnel_certificate_renewals_total", &[]).unwrap_or(0.0);
    assert!(renewals >= 1.0, "renewals: {renewals}");
    // New connections use the renewed certificates.
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"after renewal").expect("new connection");
}

fn unknown_destination_is_passed_through(capture: Capture) {
    // d is in no configuration: an address the mesh does not know.
    let m = Mesh::start(
        capture,
        Opts {
            workloads: vec![("a", true), ("b", true), ("c", true)],
            ..Opts::default()
        },
    );
    let d_srv = EchoServer::start(m.pod("d"), 7000).expect("echo d");
    echo(m.pod("a"), m.pod("d").addr_v4(7000), b"plain tcp").expect("a -> unknown d");
    assert_eq!(
        d_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::from(m.pod("a").ipv4)]
    );
    wait_for("passthrough logged", || {
        access_lines(&m.z1.log(), "outbound")
            .iter()
            .any(|l| l.contains("plaintext"))
    });
}

fn one_gibibyte_arrives_byte_exact(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let sink = SinkServer::start(m.pod("c"), 8080).expect("sink c");
    let mut s = m
        .pod("a")
        .connect(m.pod("c").addr_v4(8080), TIMEOUT)
        .expect("connect");
    const GIB: u64 = 1 << 30;
    let start = Instant::now();
    let sent = app::send_pattern(&mut s, GIB).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(sent, GIB);
    let got = sink.wait_received(1, Duration::from_secs(300));
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "1 GiB through HBONE in {secs:.1}s ({:.2} Gbit/s, debug build)",
        8.0 / secs
    );
    assert_eq!(got.len(), 1, "sink saw {got:?}");
    assert_eq!(got[0].bytes, GIB);
    assert!(got[0].intact && got[0].complete, "{:?}", got[0]);
}

fn sigterm_drains_open_connections(capture: Capture) {
    let mut m = Mesh::start(capture, Opts::default());
    let _b = EchoServer::start(m.pod("b"), 8080).expect("echo b");
    let mut s = echo(m.pod("a"), m.pod("b").addr_v4(8080), b"before").expect("a -> b");
    m.z1.sigterm().expect("sigterm");
    std::thread::sleep(Duration::from_millis(300));
    app::ping(&mut s, b"during drain").expect("open connection survives the start of the drain");
    let ready = mesh_tests::http::request(
        &m.topo.node(1).netns_path,
        SocketAddr::from(([127, 0, 0, 1], mesh_tests::daemon::READY_PORT)),
        "GET",
        "/healthz/ready",
        TIMEOUT,
    )
    .map(|r| r.status)
    .unwrap_or(0);
    assert_ne!(ready, 200, "still ready while draining");
    drop(s);
    let status =
        m.z1.wait_exit(Duration::from_secs(8))
            .expect("ztunnel exits after the drain");
    assert!(status.success(), "exit status {status:?}\n{}", m.z1.log());
}

/// Runs `cmd` inside the namespace of `node` (not captured: node traffic is never redirected).
fn in_node(m: &Mesh, node: u8, cmd: &str) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", &m.topo.node(node).netns, "sh", "-c", cmd])
        .output()
        .expect("run command in node namespace")
}

fn bad_peers_fail_alone_and_are_counted(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let hbone = SocketAddr::new(m.pod("c").ipv4.into(), 15008);
    let rejected_tls = |m: &Mesh| {
        metrics::sample(
            &m.z2.metrics(),
            "ztunnel_inbound_rejected_total",
            &[("reason", "tls")],
        )
        .unwrap_or(0.0)
    };

    // A peer that connects and then stalls holds only its own socket.
    let stalled = m
        .topo
        .node(2)
        .connect(hbone, TIMEOUT)
        .expect("stalling peer connects");

    // Plaintext HTTP sent to the HBONE port: closed without an answer.
    let mut plain = m.topo.node(2).connect(hbone, TIMEOUT).expect("connect");
    plain.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plaintext got an answer: {buf:?}"
    );
    wait_for("plaintext counted", || rejected_tls(&m) >= 1.0);

    // TLS without a client certificate, then with one from a CA the mesh does not trust.
    let dir = m.dir.path();
    let gen = format!(
        "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout evil-ca.key -out evil-ca.pem -subj /CN=evil -days 1 2>/dev/null \
         && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key -out leaf.csr -subj /CN=leaf 2>/dev/null \
         && printf 'subjectAltName=URI:{id}\\nextendedKeyUsage=clientAuth,serverAuth\\n' > ext \
         && openssl x509 -req -in leaf.csr -CA evil-ca.pem -CAkey evil-ca.key -CAcreateserial -out leaf.pem -days 1 -extfile ext 2>/dev/null",
        d = dir.display(),
        id = spiffe("a"),
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &gen])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl could not make the foreign certificate: {out:?}"
    );
    let base = format!("timeout 10 openssl s_client -connect {hbone} -tls1_3 -alpn h2 -quiet");
    for (case, extra) in [
        ("no client certificate", String::new()),
        (
            "foreign CA",
            format!(" -cert {d}/leaf.pem -key {d}/leaf.key", d = dir.display()),
        ),
    ] {
        let before = rejected_tls(&m);
        let out = in_node(&m, 2, &format!("printf 'x' | {base}{extra}"));
        wait_for(case, || rejected_tls(&m) > before);
        eprintln!(
            "{case}: openssl said {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }

    // Everyone else is still served, and the process is alive.
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"still serving").expect("a -> c after bad peers");
    drop(stalled);
    assert!(m.z2.log().contains("inbound TLS handshake failed"));
}

fn a_reload_that_does_not_affect_a_connection_keeps_it(capture: Capture) {
    let mut m = Mesh::start(capture, Opts::default());
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let mut s = echo(m.pod("a"), m.pod("c").addr_v4(8080), b"before").expect("a -> c");
    // A new policy that does not concern a -> c, and d leaves the mesh.
    m.reconfigure(Opts {
        workloads: vec![("a", true), ("b", true), ("c", true)],
        policies: "  - {name: deny-b, namespace: default, selector: {app: c}, action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/b]}}]}]}\n".into(),
        ..Opts::default()
    });
    app::ping(&mut s, b"after reload").expect("the connection survived the reload");
    assert_refused(m.pod("b"), m.pod("c").addr_v4(8080));
}

fn admin_endpoints_and_json_access_log(capture: Capture) {
    let mut m = Mesh::start(
        capture,
        Opts {
            settings: "logFormat: json\n".into(),
            ..Opts::default()
        },
    );
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"json").expect("a -> c");

    let (status, body) = m.z1.admin_get("/config_dump").expect("config_dump");
    assert_eq!(status, 200);
    assert!(
        !body.contains("PRIVATE KEY"),
        "a private key leaked into config_dump"
    );
    let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump is JSON");
    assert_eq!(dump["config"]["node"], "n1");
    assert_eq!(dump["workloads"].as_array().map(Vec::len), Some(4));
    let ids: Vec<&str> = dump["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .filter_map(|c| c["identity"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![spiffe("a"), spiffe("b")],
        "n1 holds the identities of its own pods"
    );

    // The access log is JSON, one object per line, with both identities.
    wait_for("json access line", || {
        m.z2.log().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "connection complete"
                    && v["src.identity"] == spiffe("a")
                    && v["dst.identity"] == spiffe("c")
            })
        })
    });

    assert_eq!(
        m.z1.admin_get("/logging?level=nonsense[")
            .expect("logging")
            .0,
        400
    );
    let (status, _) = m.z1.admin_post("/logging?level=debug").expect("logging");
    assert_eq!(status, 200);
    assert!(m
        .z1
        .admin_get("/logging")
        .expect("logging")
        .1
        .contains("debug"));
    let (status, _) = m.z1.admin_post("/quitquitquit").expect("quitquitquit");
    assert_eq!(status, 200);
    let exit =
        m.z1.wait_exit(Duration::from_secs(10))
            .expect("ztunnel exits after quitquitquit");
    assert!(exit.success(), "{exit:?}");
}
/// The app's view of a captured connection is the one it asked for: getpeername returns the
/// intended destination, not the redirect target.
fn app_sees_its_intended_peer(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    for target in [m.pod("c").addr_v4(8080), m.pod("c").addr_v6(8080), vip(80)] {
        let s = echo(m.pod("a"), target, b"who are you").expect("a -> c");
        assert_eq!(s.peer_addr().expect("getpeername"), target);
    }
    if capture == Capture::Ebpf {
        let text = m.z1.metrics();
        let sample = |name| metrics::sample(&text, name, &[]).unwrap_or(0.0);
        assert!(
            sample("ztunnel_ebpf_peername_rewritten_total") >= 3.0,
            "{text}"
        );
        assert!(
            sample("ztunnel_ebpf_original_dst_answered_total") >= 3.0,
            "{text}"
        );
        assert_eq!(
            metrics::sample(
                &text,
                "ztunnel_ebpf_redirects_total",
                &[("direction", "outbound")]
            ),
            Some(3.0),
            "{text}"
        );
        for program in ["sockops", "getsockopt"] {
            assert_eq!(
                metrics::sample(&text, "ztunnel_ebpf_misses_total", &[("program", program)]),
                Some(0.0),
                "{text}"
            );
        }
    }
}

/// Apps whose server speaks first (SMTP, MySQL) give ztunnel nothing to send with the CONNECT
/// request: the greeting still comes through, then the client's answer, same-node and across
/// nodes.
fn server_speaks_first(capture: Capture) {
    let m = Mesh::start(capture, Opts::default());
    for server in ["b", "c"] {
        let listener = m
            .pod(server)
            .listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8025)))
            .expect("listen in the server pod");
        let served = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(b"220 ready\r\n")?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        });
        let mut c = m
            .pod("a")
            .connect(m.pod(server).addr_v4(8025), TIMEOUT)
            .expect("a connects");
        c.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        let mut greeting = [0u8; 11];
        c.read_exact(&mut greeting)
            .unwrap_or_else(|e| panic!("no greeting from {server}: {e}"));
        assert_eq!(&greeting, b"220 ready\r\n");
        c.write_all(b"HELO a\r\n").expect("answer");
        c.shutdown(std::net::Shutdown::Write).expect("half-close");
        let got = served.join().expect("server thread").expect("server side");
        assert_eq!(got, b"HELO a\r\n", "what {server} received");
    }
}

/// A pod on the same node that is not enrolled keeps plain networking both ways, and ztunnel
/// neither sees nor counts its connections.
fn non_enrolled_pod_is_untouched(capture: Capture) {
    let m = Mesh::start(
        capture,
        Opts {
            workloads: vec![("a", true), ("b", false), ("c", true), ("d", true)],
            ..Opts::default()
        },
    );
    let n1 = m.topo.node(1);
    let node_srv = EchoServer::serve(
        n1.listen(SocketAddr::new(n1.link_ipv4.into(), 7000))
            .expect("node listener"),
    )
    .expect("echo on node");
    let b_srv = EchoServer::start(m.pod("b"), 8080).expect("echo b");
    let before = m.z1.metrics();
    // b -> its node, and the node -> b: straight, from and to b's own address.
    let s = echo(m.pod("b"), node_srv_addr(n1), b"not captured").expect("b -> node");
    assert_eq!(s.peer_addr().expect("peer"), node_srv_addr(n1));
    assert_eq!(
        node_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::from(m.pod("b").ipv4)]
    );
    let mut from_node = n1
        .connect(m.pod("b").addr_v4(8080), TIMEOUT)
        .expect("node -> b");
    from_node.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    app::ping(&mut from_node, b"node to b").expect("node -> b echo");
    assert_eq!(
        b_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::from(mesh_tests::topology::gateway_v4(1))]
    );
    let after = m.z1.metrics();
    for name in [
        "istio_tcp_connections_opened_total",
        "ztunnel_ebpf_redirects_total",
    ] {
        let total = |text: &str| metrics::sample(text, name, &[]).unwrap_or(0.0);
        assert_eq!(total(&before), total(&after), "{name} moved:\n{after}");
    }
    assert!(
        access_lines(&m.z1.log(), "").is_empty(),
        "ztunnel logged a connection: {}",
        m.z1.log()
    );
}

fn node_srv_addr(n: &mesh_tests::Node) -> SocketAddr {
    SocketAddr::new(n.link_ipv4.into(), 7000)
}

/// Listeners of pod `b` inside its namespace (`ss` there), e.g. [15001, 15006, 15008].
fn ztunnel_ports_in(pod: &Pod) -> Vec<u16> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns, "ss", "-Hltn"])
        .output()
        .expect("run ss in the pod");
    assert!(out.status.success(), "ss failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ports: Vec<u16> = text
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .filter(|p| [15001, 15006, 15008].contains(p))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Enrolling a running pod by a configuration change captures it at once; unenrolling it
/// leaves no listener, capture entry or redirect behind.
fn enroll_and_unenroll_a_live_pod(capture: Capture) {
    let not_b = Opts {
        workloads: vec![("a", true), ("b", false), ("c", true), ("d", true)],
        ..Opts::default()
    };
    let mut m = Mesh::start(capture, not_b.clone());
    let _b = EchoServer::start(m.pod("b"), 8080).expect("echo b");
    let n1 = m.topo.node(1).clone();
    let enrolled_gauge =
        |z: &Ztunnel| metrics::sample(&z.metrics(), "ztunnel_ebpf_enrolled_namespaces", &[]);
    assert_eq!(ztunnel_ports_in(m.pod("b")), Vec::<u16>::new());
    if capture == Capture::Ebpf {
        assert_eq!(enrolled_gauge(&m.z1), Some(1.0));
    }

    m.reconfigure(Opts::default());
    wait_for("b's listeners", || {
        ztunnel_ports_in(m.pod("b")) == [15001, 15006, 15008]
    });
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo(m.pod("b"), m.pod("c").addr_v4(8080), b"b enrolled").expect("b -> c");
    wait_for("b's outbound in the access log", || {
        access_lines(&m.z1.log(), "outbound")
            .iter()
            .any(|l| l.contains(&spiffe("b")))
    });
    // The node's plaintext to b now goes through ztunnel (inbound capture).
    let mut from_node = n1
        .connect(m.pod("b").addr_v4(8080), TIMEOUT)
        .expect("node -> b");
    from_node.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    app::ping(&mut from_node, b"captured").expect("node -> b captured");
    drop(from_node);
    wait_for("node -> b in the access log", || {
        access_lines(&m.z1.log(), "inbound")
            .iter()
            .any(|l| l.contains("10.201.1.1"))
    });
    if capture == Capture::Ebpf {
        assert_eq!(enrolled_gauge(&m.z1), Some(2.0));
    }

    m.reconfigure(not_b);
    wait_for("b's listeners gone", || {
        ztunnel_ports_in(m.pod("b")).is_empty()
    });
    let lines_before =
        m.z1.log()
            .lines()
            .filter(|l| l.contains("connection complete"))
            .count();
    let mut from_node = n1
        .connect(m.pod("b").addr_v4(8080), TIMEOUT)
        .expect("node -> b direct");
    from_node.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    app::ping(&mut from_node, b"direct again").expect("node -> b direct");
    let s = echo(m.pod("b"), m.pod("c").addr_v4(8080), b"direct").expect("b -> c direct");
    assert_eq!(s.peer_addr().expect("peer"), m.pod("c").addr_v4(8080));
    drop((s, from_node));
    std::thread::sleep(Duration::from_millis(300));
    let lines_after =
        m.z1.log()
            .lines()
            .filter(|l| l.contains("connection complete"))
            .count();
    assert_eq!(
        lines_before, lines_after,
        "b's traffic still went through ztunnel"
    );
    if capture == Capture::Ebpf {
        assert_eq!(enrolled_gauge(&m.z1), Some(1.0));
    }
}

/// Ten thousand short connections through capture (passthrough to an address outside the
/// mesh), each with a round trip: none may be lost.
fn ten_thousand_connections_through_capture(capture: Capture) {
    const N: usize = 10_000;
    let m = Mesh::start(capture, Opts::default());
    let n1 = m.topo.node(1);
    // A blocking server that ends after N connections (EchoServer polls accept every 10 ms,
    // which would be all this test measures).
    let listener = n1.listen(node_srv_addr(n1)).expect("node listener");
    let srv = std::thread::spawn(move || {
        let mut served = 0;
        for _ in 0..N {
            let Ok((mut c, _)) = listener.accept() else {
                break;
            };
            let mut buf = [0u8; 8];
            if c.read_exact(&mut buf)
                .and_then(|()| c.write_all(&buf))
                .is_ok()
            {
                served += 1;
            }
        }
        served
    });
    let target = node_srv_addr(n1);
    let start = Instant::now();
    let failures = m.pod("a").run(|| {
        let mut failures = Vec::new();
        for i in 0..N {
            let r = TcpStream::connect_timeout(&target, TIMEOUT).and_then(|mut s| {
                s.set_read_timeout(Some(TIMEOUT))?;
                app::ping(&mut s, &(i as u64).to_be_bytes())
            });
            if let Err(e) = r {
                failures.push(format!("connection {i}: {e}"));
            }
        }
        failures
    });
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{N} connections through {capture:?} capture in {secs:.1}s ({:.0} us each, debug build)",
        secs * 1e6 / N as f64
    );
    assert!(
        failures.is_empty(),
        "{} lost: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(srv.join().expect("server thread"), N, "connections served");
    if capture == Capture::Ebpf {
        let text = m.z1.metrics();
        assert_eq!(
            metrics::sample(
                &text,
                "ztunnel_ebpf_redirects_total",
                &[("direction", "outbound")]
            ),
            Some(N as f64)
        );
        assert_eq!(
            metrics::sample(&text, "ztunnel_ebpf_misses_total", &[]).unwrap_or(0.0),
            0.0,
            "{text}"
        );
        assert_eq!(
            metrics::sample(&text, "ztunnel_ebpf_errors_total", &[]).unwrap_or(0.0),
            0.0,
            "{text}"
        );
    }
}

/// Connects from node `node`'s namespace to `target` and checks an echo round trip.
fn echo_from_node(m: &Mesh, node: u8, target: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = m.topo.node(node).connect(target, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    app::ping(&mut s, msg)
}

/// Health probes: under STRICT mTLS, a connection from a listed probe source (the node's
/// gateway address towards its pods) reaches the app directly, one from an unlisted source
/// (the node's IPv6 gateway) is refused; with `bypass: false` the listed source is refused too.
fn health_probes_bypass_capture(capture: Capture) {
    let strict = "  - {name: strict, namespace: default, mode: STRICT}\n";
    let gw = mesh_tests::topology::gateway_v4(2);
    let probes = |bypass: bool| Opts {
        peer_authentications: strict.into(),
        settings: format!("healthProbes: {{bypass: {bypass}, sources: [{gw}/32]}}\n"),
        ..Opts::default()
    };
    let m = Mesh::start(capture, probes(true));
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo_from_node(&m, 2, m.pod("c").addr_v4(8080), b"probe").expect("probe from node");
    assert_eq!(
        c_srv.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::from(gw)],
        "the probe did not arrive from the node's address"
    );
    assert!(
        access_lines(&m.z2.log(), "inbound").is_empty(),
        "the probe went through ztunnel:\n{}",
        m.z2.log()
    );
    let unlisted = echo_from_node(&m, 2, m.pod("c").addr_v6(8080), b"not a probe");
    assert!(unlisted.is_err(), "an unlisted source got through STRICT");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"mtls").expect("a -> c under STRICT");
    if capture == Capture::Ebpf {
        let bypassed = metrics::sample(&m.z2.metrics(), "ztunnel_ebpf_probe_bypassed_total", &[]);
        assert_eq!(bypassed, Some(1.0), "{}", m.z2.metrics());
    }
    drop((c_srv, m));

    let m = Mesh::start(capture, probes(false));
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let refused = echo_from_node(&m, 2, m.pod("c").addr_v4(8080), b"probe");
    assert!(
        refused.is_err(),
        "with bypass off the probe got through STRICT"
    );
}

/// Files pinned in node 1's pin directory.
fn pins(m: &Mesh) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pin_dir(&m.topo, 1))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Fail-closed (the default): with n1's ztunnel killed, a's new outgoing connections and
/// the node's connections to b fail instead of going around the mesh; a restarted ztunnel
/// adopts the pinned state and its pods, and connections go through HBONE again. Unenrolling
/// a pod then leaves nothing of it behind.
fn kill_restart_fails_closed_and_readopts(capture: Capture) {
    let mut m = Mesh::start(capture, Opts::default());
    let _b = EchoServer::start(m.pod("b"), 8080).expect("echo b");
    let _c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"before").expect("a -> c before");
    if capture == Capture::Ebpf {
        let p = pins(&m);
        assert!(p.contains(&"link-zt_connect4".to_string()), "{p:?}");
        assert_eq!(
            p.iter().filter(|n| n.contains("sk_lookup")).count(),
            2,
            "{p:?}"
        );
    }

    m.z1.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");
    m.z1.wait_exit(TIMEOUT).expect("ztunnel n1 gone");
    let out = echo(m.pod("a"), m.pod("c").addr_v4(8080), b"ztunnel is down");
    assert!(
        out.is_err(),
        "a -> c went around the mesh while ztunnel was down"
    );
    let n1 = m.topo.node(1).clone();
    let inbound = n1
        .connect(m.pod("b").addr_v4(8080), Duration::from_secs(2))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            app::ping(&mut s, b"to b while down")
        });
    assert!(
        inbound.is_err(),
        "node -> b reached the app while ztunnel was down"
    );

    let took = m.restart(1);
    eprintln!("ztunnel n1 restarted and ready in {took:?}");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"after restart").expect("a -> c after restart");
    wait_for("a's outbound in the new access log", || {
        access_lines(&m.z1.log(), "outbound")
            .iter()
            .any(|l| l.contains(&spiffe("a")))
    });
    if capture == Capture::Ebpf {
        assert_eq!(
            metrics::sample(&m.z1.metrics(), "ztunnel_ebpf_enrolled_namespaces", &[]),
            Some(2.0)
        );
        assert!(
            m.z1.log().contains("adopted pinned capture link"),
            "{}",
            m.z1.log()
        );
    }

    m.reconfigure(Opts {
        workloads: vec![("a", false), ("b", true), ("c", true), ("d", true)],
        ..Opts::default()
    });
    wait_for("a's listeners gone", || {
        ztunnel_ports_in(m.pod("a")).is_empty()
    });
    let s = echo(m.pod("a"), m.pod("c").addr_v4(8080), b"direct").expect("a -> c direct");
    assert_eq!(s.peer_addr().expect("peer"), m.pod("c").addr_v4(8080));
    if capture == Capture::Ebpf {
        let p = pins(&m);
        assert_eq!(
            p.iter().filter(|n| n.contains("sk_lookup")).count(),
            1,
            "{p:?}"
        );
        assert_eq!(
            metrics::sample(&m.z1.metrics(), "ztunnel_ebpf_enrolled_namespaces", &[]),
            Some(1.0)
        );
    }
}

/// `ztunnel uninstall-capture` after a fail-closed ztunnel was killed: the pinned state and
/// the pods' nftables tables are gone, and pods' traffic goes direct.
fn uninstall_capture_removes_what_a_killed_ztunnel_left(capture: Capture) {
    let mut m = Mesh::start(capture, Opts::default());
    let c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"meshed").expect("a -> c");
    m.z1.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");
    m.z1.wait_exit(TIMEOUT).expect("ztunnel n1 gone");
    assert!(echo(m.pod("a"), m.pod("c").addr_v4(8080), b"down").is_err());
    let out = std::process::Command::new(mesh_tests::daemon::binary().expect("ztunnel binary"))
        .args(["uninstall-capture", "--config"])
        .arg(config_path(m.dir.path(), 1))
        .args(["--node", "n1"])
        .output()
        .expect("run uninstall-capture");
    assert!(out.status.success(), "uninstall-capture failed: {out:?}");
    assert!(!pin_dir(&m.topo, 1).exists(), "pins left behind");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"direct").expect("a -> c direct");
    assert_eq!(
        c.peers().last().map(|p| p.ip()),
        Some(IpAddr::from(m.pod("a").ipv4)),
        "c did not see a's own address"
    );
}

/// `captureFailMode: open` with eBPF: nothing is pinned, and once ztunnel is killed pods'
/// traffic goes direct. (nftables rules live in the pod's namespace and cannot be removed by a
/// killed process: that backend fails open only on a clean shutdown.)
#[test]
fn ebpf_fail_open_goes_direct_when_killed() {
    let mut m = Mesh::start(
        Capture::Ebpf,
        Opts {
            settings: "captureFailMode: open\n".into(),
            ..Opts::default()
        },
    );
    let c = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"meshed").expect("a -> c");
    assert!(pins(&m).is_empty(), "fail-open pinned {:?}", pins(&m));
    m.z1.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");
    m.z1.wait_exit(TIMEOUT).expect("ztunnel n1 gone");
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"direct").expect("a -> c direct");
    assert_eq!(
        c.peers().last().map(|p| p.ip()),
        Some(IpAddr::from(m.pod("a").ipv4)),
        "c did not see a's own address"
    );
    m.restart(1);
    echo(m.pod("a"), m.pod("c").addr_v4(8080), b"meshed again").expect("a -> c again");
}

/// A fake resolver on node 1 at `ip` (one of its addresses towards the pods), port 53, that
/// answers each query with `answer:<query>` and records the source of every query.
fn fake_resolver(m: &Mesh, ip: IpAddr) -> std::sync::mpsc::Receiver<SocketAddr> {
    let addr = SocketAddr::new(ip, 53);
    let socket = m
        .topo
        .node(1)
        .run(|| std::net::UdpSocket::bind(addr))
        .expect("bind the fake resolver");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = b"answer:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
            if tx.send(from).is_err() {
                return;
            }
        }
    });
    rx
}

/// Sends one query from pod `a` to `resolver` (unconnected `sendto`, then a connected socket
/// as glibc uses) and returns, for each, the app's own port and the reply's source.
fn dns_queries(m: &Mesh, resolver: SocketAddr) -> Vec<(u16, SocketAddr)> {
    m.pod("a").run(|| {
        let mut seen = Vec::new();
        let any: SocketAddr = if resolver.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let s = std::net::UdpSocket::bind(any).expect("bind");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.send_to(b"q1", resolver).expect("sendto");
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).expect("answer to sendto");
        assert_eq!(&buf[..n], b"answer:q1");
        seen.push((s.local_addr().expect("local").port(), from));
        let c = std::net::UdpSocket::bind(any).expect("bind");
        c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        c.connect(resolver).expect("connect");
        assert_eq!(c.peer_addr().expect("peer"), resolver, "getpeername");
        c.send(b"q2").expect("send");
        let n = c.recv(&mut buf).expect("answer on connected socket");
        assert_eq!(&buf[..n], b"answer:q2");
        seen.push((c.local_addr().expect("local").port(), resolver));
        seen
    })
}

/// `dns: {capture: true}`: pod a's queries to a resolver (IPv4 and IPv6) reach ztunnel's DNS
/// listener, which forwards them (from another socket) and relays the answers as if from the
/// resolver; with capture off the resolver gets them straight from the app's socket.
fn dns_capture_forwards_to_the_original_resolver(capture: Capture) {
    for on in [true, false] {
        let m = Mesh::start(
            capture,
            Opts {
                settings: format!("dns: {{capture: {on}}}\n"),
                ..Opts::default()
            },
        );
        let a = m.pod("a");
        let v4 = IpAddr::from(mesh_tests::topology::gateway_v4(1));
        let mapped = IpAddr::from(mesh_tests::topology::gateway_v4(1).to_ipv6_mapped());
        let v6 = IpAddr::from(mesh_tests::topology::gateway_v6(1));
        // (the resolver's record of query sources, the address the app sends to, the app's
        // address on the wire):
        // IPv4, IPv4 through a dual-stack IPv6 socket, IPv6.
        let sources_v4 = fake_resolver(&m, v4);
        let sources_v6 = fake_resolver(&m, v6);
        let cases = [
            (&sources_v4, v4, IpAddr::from(a.ipv4)),
            (&sources_v4, mapped, IpAddr::from(a.ipv4)),
            (&sources_v6, v6, IpAddr::from(a.ipv6)),
        ];
        for (sources, target_ip, app_ip) in cases {
            let resolver = SocketAddr::new(target_ip, 53);
            let seen = dns_queries(&m, resolver);
            for (app_port, reply_from) in seen {
                assert_eq!(reply_from, resolver, "the answer's source");
                let source = sources
                    .recv_timeout(TIMEOUT)
                    .expect("query at the resolver");
                assert_eq!(source.ip(), app_ip, "query to {resolver}");
                if on {
                    assert_ne!(
                        source.port(),
                        app_port,
                        "the query to {resolver} was not captured"
                    );
                } else {
                    assert_eq!(
                        source.port(),
                        app_port,
                        "DNS to {resolver} was touched with capture off"
                    );
                }
            }
        }
        if capture == Capture::Ebpf {
            let dns = metrics::sample(
                &m.z1.metrics(),
                "ztunnel_ebpf_redirects_total",
                &[("direction", "dns")],
            )
            .unwrap_or(0.0);
            assert_eq!(dns, if on { 6.0 } else { 0.0 }, "{}", m.z1.metrics());
        }
    }
}

/// Every case above, once per capture backend: `ebpf::<case>` and `nftables::<case>`.
macro_rules! under_both_backends {
    ($($case:ident),* $(,)?) => {
        mod ebpf {
            $( #[test] fn $case() { super::$case(super::Capture::Ebpf) } )*
        }
        mod nftables {
            $( #[test] fn $case() { super::$case(super::Capture::Nftables) } )*
        }
    };
}

under_both_backends!(
    pod_to_pod_same_node_and_across_nodes_with_identities,
    service_vip_uses_both_endpoints,
    bytes_between_nodes_are_tls_only,
    destination_presenting_wrong_identity_is_refused,
    peers_of_another_ca_are_refused,
    allow_and_deny_policies_and_closing_live_connections,
    strict_mtls_rejects_plaintext,
    metrics_count_connections_and_bytes,
    reload_with_a_bad_file_keeps_the_last_good_state,
    certificate_renewal_keeps_long_lived_connections,
    unknown_destination_is_passed_through,
    one_gibibyte_arrives_byte_exact,
    sigterm_drains_open_connections,
    app_sees_its_intended_peer,
    server_speaks_first,
    non_enrolled_pod_is_untouched,
    enroll_and_unenroll_a_live_pod,
    ten_thousand_connections_through_capture,
    bad_peers_fail_alone_and_are_counted,
    a_reload_that_does_not_affect_a_connection_keeps_it,
    admin_endpoints_and_json_access_log,
    health_probes_bypass_capture,
    kill_restart_fails_closed_and_readopts,
    dns_capture_forwards_to_the_original_resolver,
    uninstall_capture_removes_what_a_killed_ztunnel_left,
);
