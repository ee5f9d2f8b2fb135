//! Self-test of the e2e harness: plain routing through the node namespaces, with no ztunnel.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::app::{self, EchoServer};
use mesh_tests::capture::{self, PacketCapture};
use mesh_tests::daemon::Ztunnel;
use mesh_tests::{metrics, netns, require_root, Topology};

const TIMEOUT: Duration = Duration::from_secs(5);

fn setup() -> Topology {
    require_root().expect("harness prerequisites");
    Topology::create().expect("create topology")
}

#[test]
fn pods_reach_each_other_through_the_nodes_and_teardown_is_complete() {
    let topo = setup();
    let names = topo.netns_names();
    let listed = netns::list().expect("ip netns list");
    for n in &names {
        assert!(listed.contains(n), "namespace {n} missing from {listed:?}");
    }

    let (a, c) = (topo.pod("a"), topo.pod("c"));
    assert_eq!(a.node, 1);
    assert_eq!(c.node, 2);
    assert_eq!(a.ipv4.to_string(), "10.201.1.10");
    assert_eq!(c.ipv6.to_string(), "fd00:201:2::10");
    let server = EchoServer::start(c, 8080).expect("echo server in pod c");
    let n1 = topo.node(1);
    let cap = PacketCapture::start(&n1.netns_path, &n1.link_iface).expect("capture on node link");

    for (target, payload) in [
        (c.addr_v4(8080), b"plaintext-over-v4-7f3a".as_slice()),
        (c.addr_v6(8080), b"plaintext-over-v6-91bc".as_slice()),
    ] {
        let mut s = a
            .connect(target, TIMEOUT)
            .unwrap_or_else(|e| panic!("a -> {target}: {e}"));
        s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        assert_eq!(app::roundtrip(&mut s, payload).expect("echo"), payload);
    }
    let peers: Vec<_> = server.peers().iter().map(SocketAddr::ip).collect();
    assert_eq!(
        peers,
        vec![a.ipv4.into(), std::net::IpAddr::from(a.ipv6)],
        "server saw {peers:?}"
    );

    // Give the capture thread a moment to drain the socket before stopping it.
    std::thread::sleep(Duration::from_millis(100));
    let frames = cap.stop();
    assert!(
        capture::contains(&frames, b"plaintext-over-v4-7f3a"),
        "v4 payload not captured"
    );
    assert!(
        capture::contains(&frames, b"plaintext-over-v6-91bc"),
        "v6 payload not captured"
    );
    assert!(
        capture::count_tcp_to_port(&frames, 8080) >= 6,
        "expected SYN, data, FIN... to 8080"
    );
    let segs = capture::tcp_segments(&frames);
    assert!(segs
        .iter()
        .any(|s| s.src == std::net::IpAddr::from(a.ipv4) && s.dst_port == 8080));

    drop(server);
    drop(topo);
    let listed = netns::list().expect("ip netns list");
    for n in &names {
        assert!(!listed.contains(n), "namespace {n} left behind after drop");
    }
}

#[test]
fn every_pod_reaches_every_other_pod_on_both_families() {
    let topo = setup();
    let servers: Vec<_> = topo
        .pods()
        .iter()
        .map(|p| EchoServer::start(p, 9000).expect("echo server"))
        .collect();
    for from in topo.pods() {
        for to in topo.pods().iter().filter(|p| p.name != from.name) {
            for target in [to.addr_v4(9000), to.addr_v6(9000)] {
                let mut s = from
                    .connect(target, TIMEOUT)
                    .unwrap_or_else(|e| panic!("{} -> {} ({target}): {e}", from.name, to.name));
                s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
                assert_eq!(app::roundtrip(&mut s, b"ping").expect("echo"), b"ping");
            }
        }
    }
    for (server, pod) in servers.iter().zip(topo.pods()) {
        assert_eq!(
            server.connections(),
            6,
            "pod {} accepted the wrong count",
            pod.name
        );
    }
}

#[test]
fn large_transfer_is_byte_exact_across_nodes() {
    let topo = setup();
    let (b, d) = (topo.pod("b"), topo.pod("d"));
    let _server = EchoServer::start(d, 7000).expect("echo server");
    let s = b.connect(d.addr_v6(7000), TIMEOUT).expect("b -> d");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let t = app::transfer(&s, 32 * 1024 * 1024).expect("transfer");
    assert!(t.ok(), "{t:?}");
}

#[test]
fn service_ranges_route_to_the_node_and_nothing_leaves_the_topology() {
    let topo = setup();
    let a = topo.pod("a");
    let route = |dst: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &a.netns, "route", "get", dst])
            .output()
            .expect("ip route get");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = route("10.96.0.1");
    assert!(
        ok && text.contains("via 10.201.1.1"),
        "service VIP route: {text}"
    );
    let (ok, text) = route("fd00:96::1");
    assert!(
        ok && text.contains("via fd00:201:1::1"),
        "service VIP v6 route: {text}"
    );
    let (ok, text) = route("8.8.8.8");
    assert!(!ok, "pods must have no default route, got {text}");
    let out = std::process::Command::new("ip")
        .args(["-n", &topo.node(1).netns, "route", "get", "8.8.8.8"])
        .output()
        .expect("ip route get");
    assert!(!out.status.success(), "nodes must have no default route");

    // Node namespaces are usable too: a node listens, a remote pod connects to its link address.
    let n1 = topo.node(1);
    let listener = n1
        .listen(SocketAddr::from((n1.link_ipv4, 7100)))
        .expect("node listen");
    let mut s = topo
        .pod("c")
        .connect(SocketAddr::from((n1.link_ipv4, 7100)), TIMEOUT)
        .expect("c -> n1");
    let (mut accepted, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), std::net::IpAddr::from(topo.pod("c").ipv4));
    s.write_all(b"x").expect("write");
    accepted.write_all(b"y").expect("write");
}

#[test]
fn cleanup_stale_removes_only_dead_owners() {
    require_root().expect("harness prerequisites");
    // pid 0 never names a live process; use an unusual prefix so we can't touch real topologies.
    let dead = "ztstale0x0-n1";
    netns::ip(&["netns", "add", dead]).expect("add stale netns");
    let topo = Topology::create().expect("topology");
    let removed = Topology::cleanup_stale("ztstale").expect("cleanup");
    let removed_zt = Topology::cleanup_stale("zt").expect("cleanup");
    let listed = netns::list().expect("list");
    let _ = netns::delete(dead);
    assert!(
        !listed.contains(&dead.to_owned()),
        "stale namespace survived"
    );
    assert!(removed.iter().chain(&removed_zt).any(|n| n == dead));
    for n in topo.netns_names() {
        assert!(
            listed.contains(&n),
            "live topology namespace {n} was removed"
        );
    }
}

#[test]
fn daemon_lifecycle_with_a_stand_in_program() {
    let topo = setup();
    let n2 = topo.node(2);
    let dir = tempfile::tempdir().expect("tempdir");
    // A stand-in daemon: prints its netns inode and the env, then serves nothing until killed.
    let script = dir.path().join("fake-ztunnel.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"started $FAKE_ARG $(readlink /proc/self/ns/net)\"\ntrap 'echo bye; exit 0' TERM\nwhile :; do sleep 0.05; done\n",
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut z = Ztunnel::spawn(n2, &script, &[], &[("FAKE_ARG", "hello")]).expect("spawn");
    assert!(z.pid() > 0);
    let expected_ns = std::fs::read_link(format!("/proc/{}/ns/net", z.pid()));
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !z.log().contains("started") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = z.log();
    assert!(log.contains("started hello net:["), "log: {log}");
    let ns_inode =
        std::fs::metadata(&n2.netns_path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let ns_inode = ns_inode.expect("stat netns");
    assert!(
        log.contains(&format!("net:[{ns_inode}]")),
        "not in node netns: {log} ({expected_ns:?})"
    );

    // Not ready: nothing listens on 15021, and wait_ready reports that, with the log.
    let err = z
        .wait_ready(Duration::from_millis(200))
        .expect_err("nothing listens");
    assert!(format!("{err:#}").contains("not ready"), "{err:#}");
    assert!(
        z.admin_get("/config_dump").is_err(),
        "admin port must be closed"
    );

    z.sigterm().expect("sigterm");
    let status = z.wait_exit(TIMEOUT).expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(z.log().contains("bye"));
}

#[test]
fn metrics_helpers_parse_what_a_daemon_would_serve() {
    let text = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 5\nx_total{a=\"1\",b=\"3\"} 2\n";
    assert_eq!(metrics::sample(text, "x_total", &[("a", "1")]), Some(7.0));
    assert_eq!(metrics::samples(text, "x_total").len(), 2);
}

#[test]
fn teardown_happens_on_panic_and_kills_leftover_processes() {
    require_root().expect("harness prerequisites");
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let topo = Topology::create().expect("topology");
        let n1 = topo.node(1);
        // A process nobody stops explicitly (like a daemon whose handle was leaked).
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &n1.netns, "sleep", "600"])
            .spawn()
            .expect("spawn sleep in node netns");
        tx.send((topo.netns_names(), child)).expect("send");
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    let (names, mut child) = rx.recv().expect("names");
    let listed = netns::list().expect("list");
    for n in &names {
        assert!(
            !listed.contains(n),
            "namespace {n} survived a panicking test"
        );
    }
    let status = child.wait().expect("wait for the leftover process");
    assert!(
        !status.success(),
        "leftover process should have been killed, got {status}"
    );
}

/// Serves one canned HTTP response per connection on `port` of the node, recording request lines.
fn fake_http(
    node: &mesh_tests::Node,
    port: u16,
    response: &'static str,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{BufRead, BufReader};
    let listener = node
        .listen(SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("listen");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            log.lock().expect("lock").push(line.trim().to_owned());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    seen
}

#[test]
fn daemon_http_helpers_talk_to_the_node_namespace() {
    let topo = setup();
    let n1 = topo.node(1);
    let ready = fake_http(n1, 15021, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let _metrics = fake_http(
        n1,
        15020,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\nistio_build{tag=\"dev\"} 1\nup\r\n3\r\n 1\n\r\n0\r\n\r\n",
    );
    let admin = fake_http(n1, 15000, "HTTP/1.1 404 Not Found\r\n\r\nno such page");
    let mut z = Ztunnel::spawn(
        n1,
        std::path::Path::new("/bin/sleep"),
        &["600".as_ref()],
        &[],
    )
    .expect("spawn");
    z.wait_ready(TIMEOUT).expect("ready via the fake endpoint");
    assert_eq!(
        ready.lock().expect("lock")[0],
        "GET /healthz/ready HTTP/1.1"
    );
    let text = z.metrics();
    assert_eq!(
        metrics::sample(&text, "istio_build", &[("tag", "dev")]),
        Some(1.0)
    );
    assert_eq!(metrics::sample(&text, "up", &[]), Some(1.0));
    assert_eq!(
        z.admin_get("/nope").expect("admin"),
        (404, "no such page".to_owned())
    );
    assert_eq!(z.admin_post("/logging?level=debug").expect("admin").0, 404);
    assert_eq!(
        admin.lock().expect("lock").clone(),
        ["GET /nope HTTP/1.1", "POST /logging?level=debug HTTP/1.1"]
    );
    let pid = z.pid();
    drop(z);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "daemon not reaped"
    );
}
