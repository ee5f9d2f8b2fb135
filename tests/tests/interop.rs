//! Interoperability of our ztunnel with HBONE peers it shares no code with: Node.js's built-in
//! `http2` module (client and server) and Envoy. Each peer speaks HTTP/2 CONNECT over mutual TLS
//! 1.3 with ALPN h2 and SPIFFE certificates issued by `openssl` from ztunnel's CA.
//!
//! Same topology as `ztunnel.rs`: pods a, b on node n1; c, d on n2; all workloads of namespace
//! `default` with service account = pod name. Peers that stand in for a ztunnel client run in
//! a node namespace (outside any pod's capture); peers that stand in for a destination ztunnel
//! run in the destination pod's namespace on its HBONE port, with no ztunnel on that node.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use mesh_tests::app::{self, EchoServer};
use mesh_tests::daemon::Ztunnel;
use mesh_tests::peer::{Leaf, Peer, Pki};
use mesh_tests::{metrics, require_root, Pod, Topology};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);
const TD: &str = "cluster.local";
/// Identity of the Node.js client: not a workload in the file, known only from its certificate.
const NODE_CLIENT_ID: &str = "spiffe://cluster.local/ns/interop/sa/node-client";
/// Identity an authorization policy on c denies.
const BLOCKED_ID: &str = "spiffe://cluster.local/ns/interop/sa/blocked";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// The configuration `node` runs with: all four pods are HBONE workloads (enrolled where they
/// live), one CA in `dir/state`, and c denies [`BLOCKED_ID`].
fn render(topo: &Topology, dir: &Path) -> String {
    let mut y = format!(
        "trustDomain: {TD}\nstateDir: {}\ndrainTimeout: 2s\ncaptureFailMode: open\nworkloads:\n",
        dir.join("state").display()
    );
    for p in topo.pods() {
        let _ = write!(
            y,
            "  - uid: uid-{n}\n    name: {n}\n    namespace: default\n    serviceAccount: {n}\n    labels: {{app: {n}}}\n    ips: [{}, \"{}\"]\n    node: n{}\n    netns: {}\n",
            p.ipv4,
            p.ipv6,
            p.node,
            p.netns_path.display(),
            n = p.name,
        );
    }
    let blocked = BLOCKED_ID.trim_start_matches("spiffe://");
    let _ = write!(
        y,
        "authorizationPolicies:\n  - name: block\n    namespace: default\n    selector: {{app: c}}\n    action: DENY\n    rules:\n      - from:\n          - source:\n              principals: [{blocked}]\n"
    );
    y
}

/// A topology with ztunnels on the given nodes, all sharing one configuration and CA.
struct Mesh {
    topo: Topology,
    dir: tempfile::TempDir,
    ztunnels: Vec<Ztunnel>,
}

impl Mesh {
    fn start(nodes: &[u8]) -> Mesh {
        require_root().expect("e2e prerequisites");
        let topo = Topology::create().expect("topology");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("ztunnel.yaml");
        std::fs::write(&config, render(&topo, dir.path())).expect("write config");
        // One at a time: the first creates the CA the others reuse.
        let ztunnels = nodes
            .iter()
            .map(|&n| {
                let mut z = Ztunnel::start(topo.node(n), &config, &format!("n{n}"), &[])
                    .unwrap_or_else(|e| panic!("start ztunnel n{n}: {e:#}"));
                z.wait_ready(TIMEOUT)
                    .unwrap_or_else(|e| panic!("ztunnel n{n} ready: {e:#}"));
                z
            })
            .collect();
        Mesh {
            topo,
            dir,
            ztunnels,
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.topo.pod(name)
    }

    /// ztunnel's CA (created by the first ztunnel in its state directory).
    fn ca(&self) -> Pki {
        Pki::existing(&self.dir.path().join("state"))
    }

    /// A certificate for `spiffe_id` from ztunnel's CA.
    fn issue(&self, name: &str, spiffe_id: &str) -> Leaf {
        self.ca()
            .issue(self.dir.path(), name, spiffe_id)
            .expect("issue a peer certificate with openssl")
    }

    fn log(&self) -> String {
        self.ztunnels.iter().map(Ztunnel::log).collect()
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn leaf_spec(leaf: &Leaf) -> Value {
    json!({"ca": path(&leaf.ca), "cert": path(&leaf.cert), "key": path(&leaf.key)})
}

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    mesh_tests::wait_for(what, TIMEOUT, cond)
}

/// Opens a connection from `pod` and checks one echo round trip; returns the open stream.
fn echo(pod: &Pod, target: SocketAddr, msg: &[u8]) -> std::io::Result<TcpStream> {
    app::echo_open(pod, target, msg, TIMEOUT)
}

/// Runs the Node.js HBONE client from node n1's namespace against `hbone` with `leaf`, sending
/// `requests` (authority, message) on one connection. Returns the TLS line and one line per
/// request.
fn node_client(
    m: &Mesh,
    name: &str,
    leaf: &Leaf,
    hbone: SocketAddr,
    expect_server: &str,
    requests: &[(SocketAddr, &str)],
) -> (Value, Vec<Value>) {
    let mut spec = leaf_spec(leaf);
    spec["connect"] = json!(hbone.to_string());
    spec["expectServerId"] = json!(expect_server);
    spec["requests"] = requests
        .iter()
        .map(|(authority, message)| json!({"authority": authority.to_string(), "message": message}))
        .collect();
    let mut peer = Peer::node(name, &m.topo.node(1).netns, "hbone-client.js", &spec)
        .expect("start node client");
    let lines = peer
        .finish(TIMEOUT * 2)
        .unwrap_or_else(|e| panic!("{e:#}\nztunnel logs:\n{}", m.log()));
    let (tls, rest) = lines.split_first().expect("client printed nothing");
    (tls["tls"].clone(), rest.to_vec())
}

fn assert_tls13_h2(tls: &Value) {
    assert_eq!(tls["version"], "TLSv1.3", "{tls}");
    assert_eq!(tls["alpn"], "h2", "{tls}");
}

/// Node.js (independent HTTP/2 and TLS stacks) as the HBONE client, our ztunnel as server:
/// TLS 1.3 + h2 negotiated, the server proves c's identity, CONNECTs to c's address reach c's
/// app over IPv4 and IPv6 (concurrently on one connection), a CONNECT to another pod's address
/// is refused with 400, authorization sees the client's certificate identity, and a client
/// certificate from another CA fails the handshake.
#[test]
fn node_client_to_ztunnel() {
    let m = Mesh::start(&[1, 2]);
    let c_srv = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let (c, d) = (m.pod("c"), m.pod("d"));
    let leaf = m.issue("node-client", NODE_CLIENT_ID);

    for (hbone, target) in [
        (c.addr_v4(15008), c.addr_v4(8080)),
        (c.addr_v6(15008), c.addr_v6(8080)),
    ] {
        let (tls, results) = node_client(
            &m,
            "node-client",
            &leaf,
            hbone,
            &spiffe("c"),
            &[
                (target, "first stream from node"),
                (target, "second stream from node"),
                (d.addr_v4(8080), "not c's address"),
            ],
        );
        assert_tls13_h2(&tls);
        assert_eq!(tls["serverId"], spiffe("c"), "{tls}");
        assert_eq!(tls["authorized"], true, "{tls}");
        assert_eq!(results[0]["status"], 200, "{results:?}");
        assert_eq!(
            results[0]["echoed"], "first stream from node",
            "{results:?}"
        );
        assert_eq!(results[1]["status"], 200, "{results:?}");
        assert_eq!(
            results[1]["echoed"], "second stream from node",
            "{results:?}"
        );
        assert_eq!(results[2]["status"], 400, "{results:?}");
    }
    assert_eq!(c_srv.connections(), 4);

    // ztunnel on n2 knows the client only from its certificate: that is who it reports.
    let z2 = &m.ztunnels[1];
    let labels = [
        ("reporter", "destination"),
        ("source_principal", NODE_CLIENT_ID),
        ("destination_workload", "c"),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_for("n2 counts the node client's connections", || {
        metrics::sample(&z2.metrics(), "istio_tcp_connections_closed_total", &labels) == Some(4.0)
    });
    let received = metrics::sample(&z2.metrics(), "istio_tcp_received_bytes_total", &labels);
    let expected = 2 * ("first stream from node".len() + "second stream from node".len());
    assert_eq!(received, Some(expected as f64));

    // Authorization evaluates the identity in the independent peer's certificate.
    let blocked = m.issue("blocked", BLOCKED_ID);
    let (tls, results) = node_client(
        &m,
        "blocked-client",
        &blocked,
        c.addr_v4(15008),
        &spiffe("c"),
        &[(c.addr_v4(8080), "denied")],
    );
    assert_tls13_h2(&tls);
    assert_eq!(results[0]["status"], 401, "{results:?}");
    assert_eq!(c_srv.connections(), 4, "a denied CONNECT reached the app");

    // A client certificate from a CA the mesh does not trust never gets a stream.
    let foreign = Pki::generate(m.dir.path(), "foreign-ca")
        .and_then(|ca| ca.issue(m.dir.path(), "foreign", NODE_CLIENT_ID))
        .expect("foreign certificate");
    let foreign = Leaf {
        ca: leaf.ca.clone(), // the client itself trusts the mesh root
        ..foreign
    };
    let (tls, results) = node_client(
        &m,
        "foreign-client",
        &foreign,
        c.addr_v4(15008),
        &spiffe("c"),
        &[(c.addr_v4(8080), "foreign")],
    );
    // TLS 1.3 client authentication fails after the client's side of the handshake: the
    // refusal arrives as ztunnel's alert on the first stream.
    let refusal = format!("{tls} {results:?}");
    assert!(
        refusal.contains("UNKNOWN_CA") && results.iter().all(|r| r["status"] != 200),
        "foreign client not refused for its CA: {refusal}"
    );
    assert_eq!(c_srv.connections(), 4, "a foreign client reached the app");
}

/// A Node.js HBONE server listening on c's HBONE port (no ztunnel on n2) with a certificate for
/// c's identity: connections from pod a through ztunnel n1 arrive as CONNECTs it can read.
struct NodeServer {
    peer: Peer,
    _app: EchoServer,
}

fn node_server(m: &Mesh, name: &str, identity: &str) -> NodeServer {
    let app = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let leaf = m.issue(name, identity);
    let mut spec = leaf_spec(&leaf);
    spec["listen"] = json!("[::]:15008");
    let mut peer =
        Peer::node(name, &m.pod("c").netns, "hbone-server.js", &spec).expect("start node server");
    peer.wait_for("listening", TIMEOUT)
        .expect("node server listening");
    NodeServer { peer, _app: app }
}

/// Bytes each bulk transfer through a peer moves each way: enough for many HTTP/2 flow-control
/// window updates between the two implementations.
const BULK: u64 = 32 << 20;

/// Echoes [`BULK`] pattern bytes through `s` and checks they come back intact; prints the rate.
fn bulk(what: &str, s: &TcpStream) {
    let start = Instant::now();
    let t = app::transfer(s, BULK).unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = start.elapsed().as_secs_f64();
    assert!(t.ok(), "{what}: {t:?}");
    eprintln!(
        "{what}: {} MiB each way in {secs:.2}s ({:.0} MiB/s)",
        BULK >> 20,
        (BULK >> 20) as f64 / secs
    );
}

fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
}

/// The `forwarded` header ztunnel sends for a connection from pod `a` with local address
/// `client`: the pod's own address and the client's port (eBPF capture connects the app to a
/// loopback listener, so the socket's local address is 127.0.0.1; ztunnel names the pod).
fn forwarded(a: &Pod, target: SocketAddr, client: SocketAddr) -> String {
    let ip: std::net::IpAddr = if target.is_ipv4() {
        a.ipv4.into()
    } else {
        a.ipv6.into()
    };
    format!("for=\"{}\"", SocketAddr::new(ip, client.port()))
}

/// Our ztunnel as the HBONE client, Node.js as the server: the server sees TLS 1.3 + h2, a's
/// SPIFFE identity in the client certificate, `:authority` = the original destination, and
/// the `forwarded` (a's address and port), `traceparent` and `baggage` headers Istio sends.
#[test]
fn ztunnel_to_node_server() {
    let m = Mesh::start(&[1]);
    let server = node_server(&m, "node-server", &spiffe("c"));
    let (a, c) = (m.pod("a"), m.pod("c"));
    let mut clients = Vec::new();
    for target in [c.addr_v4(8080), c.addr_v6(8080)] {
        let s = echo(a, target, b"from a through ztunnel to node")
            .unwrap_or_else(|e| panic!("a -> {target}: {e}\n{}", m.log()));
        clients.push((target, s.local_addr().expect("local addr")));
    }
    let seen: Vec<Value> = server
        .peer
        .lines()
        .into_iter()
        .filter(|l| l.get("authority").is_some())
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for ((target, client), req) in clients.iter().zip(&seen) {
        assert_eq!(req["method"], "CONNECT", "{req}");
        assert_eq!(req["authority"], target.to_string(), "{req}");
        assert_eq!(req["clientId"], spiffe("a"), "{req}");
        assert_tls13_h2(&req["tls"]);
        let h = &req["headers"];
        assert_eq!(h["forwarded"], forwarded(a, *target, *client), "{req}");
        let tp = h["traceparent"].as_str().unwrap_or_default();
        assert!(is_traceparent(tp), "traceparent {tp:?}");
        let baggage = h["baggage"].as_str().unwrap_or_default();
        for item in ["k8s.namespace.name=default", "k8s.pod.name=a"] {
            assert!(
                baggage.split(',').any(|kv| kv == item),
                "baggage {baggage:?} lacks {item}"
            );
        }
    }
    assert_ne!(
        seen[0]["headers"]["traceparent"], seen[1]["headers"]["traceparent"],
        "each connection gets its own trace"
    );
    let s = a.connect(c.addr_v4(8080), TIMEOUT).expect("a -> c");
    bulk("ztunnel -> node http2 server", &s);
}

/// ztunnel checks the destination's identity, whoever serves it: a Node.js server on c's
/// address with d's certificate is refused before any CONNECT.
#[test]
fn ztunnel_refuses_node_server_with_wrong_identity() {
    let m = Mesh::start(&[1]);
    let server = node_server(&m, "impostor", &spiffe("d"));
    let target = m.pod("c").addr_v4(8080);
    if echo(m.pod("a"), target, b"must not arrive").is_ok() {
        panic!("a -> {target} went to a server with the wrong identity");
    }
    let connects = server
        .peer
        .lines()
        .into_iter()
        .filter(|l| l.get("authority").is_some())
        .count();
    assert_eq!(connects, 0, "the impostor received a CONNECT");
    wait_for("n1 logs the identity mismatch", || {
        m.log().contains(&spiffe("d"))
    });
}

/// A JSON value as text (Envoy renders single-operator access-log fields as numbers).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Envoy as the HBONE terminator in place of c's ztunnel, configured as Istio configures
/// waypoints and east-west gateways: ztunnel n1 tunnels a's connections to it, and Envoy's
/// access log shows TLS 1.3, HTTP/2, a's identity and the CONNECT headers.
#[test]
fn envoy_terminates_hbone_from_ztunnel() {
    let m = Mesh::start(&[1]);
    let _app = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    let leaf = m.issue("envoy-c", &spiffe("c"));
    let (a, c) = (m.pod("a"), m.pod("c"));
    let envoy = Peer::envoy(
        "envoy-terminator",
        &c.netns,
        "envoy-terminator.yaml",
        &[
            ("CERT", path(&leaf.cert).to_owned()),
            ("KEY", path(&leaf.key).to_owned()),
            ("CA", path(&leaf.ca).to_owned()),
            ("TRUST_DOMAIN", TD.to_owned()),
            ("APP_IP", c.ipv4.to_string()),
            ("APP_PORT", "8080".to_owned()),
        ],
    )
    .expect("start envoy");
    let mut clients = Vec::new();
    for target in [c.addr_v4(8080), c.addr_v6(8080)] {
        let msg = format!("from a through ztunnel to envoy at {target}");
        let s = echo(a, target, msg.as_bytes())
            .unwrap_or_else(|e| panic!("a -> {target}: {e}\n{}", m.log()));
        clients.push((target, s.local_addr().expect("local addr"), msg.len()));
        // Closing ends the stream, which is when Envoy writes its access log line.
        drop(s);
    }
    let logged = || {
        let lines: Vec<Value> = envoy
            .lines()
            .into_iter()
            .filter(|l| l.get("authority").is_some())
            .collect();
        lines
    };
    wait_for("envoy logs both tunnels", || logged().len() == 2);
    for ((target, client, len), line) in clients.iter().zip(logged()) {
        assert_eq!(text(&line["method"]), "CONNECT", "{line}");
        assert_eq!(text(&line["authority"]), target.to_string(), "{line}");
        assert_eq!(text(&line["response_code"]), "200", "{line}");
        assert_eq!(text(&line["protocol"]), "HTTP/2", "{line}");
        assert_eq!(text(&line["tls_version"]), "TLSv1.3", "{line}");
        assert_eq!(text(&line["peer_uri_san"]), spiffe("a"), "{line}");
        assert_eq!(
            text(&line["forwarded"]),
            forwarded(a, *target, *client),
            "{line}"
        );
        assert!(is_traceparent(&text(&line["traceparent"])), "{line}");
        assert!(text(&line["baggage"]).contains("k8s.pod.name=a"), "{line}");
        assert_eq!(text(&line["bytes_received"]), len.to_string(), "{line}");
        assert_eq!(text(&line["bytes_sent"]), len.to_string(), "{line}");
    }
    let s = a.connect(c.addr_v4(8080), TIMEOUT).expect("a -> c");
    bulk("ztunnel -> envoy terminator", &s);
}

/// Envoy as the HBONE originator (as a waypoint talks to a destination ztunnel): a plain TCP
/// connection to Envoy in node n1 becomes a CONNECT over mutual TLS 1.3 + h2 to c's ztunnel,
/// which verifies Envoy's SPIFFE identity, delivers to c's app and reports Envoy as the source.
#[test]
fn envoy_originates_hbone_to_ztunnel() {
    let m = Mesh::start(&[2]);
    let app = EchoServer::start(m.pod("c"), 8080).expect("echo c");
    const ENVOY_ID: &str = "spiffe://cluster.local/ns/interop/sa/envoy";
    let leaf = m.issue("envoy-client", ENVOY_ID);
    let c = m.pod("c");
    let n1 = m.topo.node(1);
    let envoy = Peer::envoy(
        "envoy-originator",
        &n1.netns,
        "envoy-originator.yaml",
        &[
            ("CERT", path(&leaf.cert).to_owned()),
            ("KEY", path(&leaf.key).to_owned()),
            ("CA", path(&leaf.ca).to_owned()),
            ("LISTEN_PORT", "15090".to_owned()),
            ("AUTHORITY", c.addr_v4(8080).to_string()),
            ("HBONE_IP", c.ipv4.to_string()),
            ("SERVER_ID", spiffe("c")),
        ],
    )
    .expect("start envoy");
    const N: usize = 3;
    let msg = b"plain TCP into envoy, HBONE out of it";
    for _ in 0..N {
        let mut s = n1
            .connect(SocketAddr::from(([127, 0, 0, 1], 15090)), TIMEOUT)
            .expect("connect to envoy");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.write_all(msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("echo through envoy: {e}\n{}\n{}", envoy.stderr(), m.log()));
        assert_eq!(&got, msg);
    }
    assert_eq!(app.connections(), N);

    let z2 = &m.ztunnels[0];
    let labels = [
        ("reporter", "destination"),
        ("source_principal", ENVOY_ID),
        ("destination_workload", "c"),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_for("n2 counts envoy's tunnels", || {
        metrics::sample(&z2.metrics(), "istio_tcp_connections_closed_total", &labels)
            == Some(N as f64)
    });
    wait_for("envoy logs its tunnels", || {
        envoy
            .lines()
            .iter()
            .filter(|l| l.get("upstream_peer_uri_san").is_some())
            .count()
            == N
    });
    for line in envoy.lines() {
        assert_eq!(text(&line["upstream_peer_uri_san"]), spiffe("c"), "{line}");
        assert_eq!(text(&line["upstream_tls_version"]), "TLSv1.3", "{line}");
        assert_eq!(text(&line["bytes_sent"]), msg.len().to_string(), "{line}");
    }
    let s = n1
        .connect(SocketAddr::from(([127, 0, 0, 1], 15090)), TIMEOUT)
        .expect("connect to envoy");
    bulk("envoy originator -> ztunnel", &s);
}
