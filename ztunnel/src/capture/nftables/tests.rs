//! Real namespaces, real nftables: every test builds a pod/peer pair with `netns::testing`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::capture::Error;
use crate::capture::{Backend, Marks, Pod, Ports};
use crate::netns::testing::{app_connect, Pair, PEER_V4, PEER_V6, POD_V4, POD_V6};
use crate::netns::Netns;
use crate::socket::{canonical, original_dst};

const WAIT: Duration = Duration::from_secs(5);

fn any(port: u16) -> SocketAddr {
    SocketAddr::new("::".parse().expect("literal"), port)
}

struct Enrolled {
    pair: Pair,
    pod: Pod,
    peer: Arc<Netns>,
    backend: Nftables,
}

async fn enrolled() -> Enrolled {
    let pair = Pair::new();
    let pod = Pod {
        name: format!("test/{}", pair.pod.name),
        netns: pair.pod.open(),
        ips: vec![POD_V4, POD_V6],
        inbound_listener: None,
    };
    let peer = pair.peer.open();
    let backend = Nftables::new(Ports::default(), Marks::default());
    backend.enroll(&pod).await.expect("enroll");
    Enrolled {
        pair,
        pod,
        peer,
        backend,
    }
}

async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("connection should arrive at this listener")
        .expect("accept")
}

async fn nothing_arrives(listener: &TcpListener) {
    let got = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        got.is_err(),
        "no connection should arrive at {:?}",
        listener.local_addr()
    );
}

async fn echo_check(a: &mut TcpStream, b: &mut TcpStream) {
    a.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, b.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("read");
    assert_eq!(&buf, b"ping");
    b.write_all(b"pong").await.expect("write back");
    tokio::time::timeout(WAIT, a.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("read back");
    assert_eq!(&buf, b"pong");
}

#[test]
fn ruleset_uses_configured_ports_and_marks() {
    let rules = Nftables::new(
        Ports {
            outbound: 1,
            inbound_plaintext: 2,
            hbone: 3,
        },
        Marks {
            bypass: 0x10,
            delivery: 0x20,
        },
    )
    .ruleset();
    assert!(rules.contains("redirect to :1\n"), "{rules}");
    assert!(rules.contains("redirect to :2\n"), "{rules}");
    assert!(rules.contains("tcp dport 3 return"), "{rules}");
    assert!(rules.contains("meta mark 0x10 return"), "{rules}");
    assert!(rules.contains("meta mark 0x20 ct mark set 0x20"), "{rules}");
    assert!(!rules.contains("saddr"), "{rules}");
    assert!(
        !rules.contains("dport 53"),
        "DNS captured by default: {rules}"
    );
}

#[test]
fn dns_capture_marks_queries_and_tproxies_them_on_lo() {
    let rules = Nftables::new(Ports::default(), Marks::default())
        .with_dns(Some(15053))
        .ruleset();
    assert!(
        rules.contains("meta mark != 0x539 udp dport 53 meta mark set 0x53a"),
        "{rules}"
    );
    assert!(
        rules.contains(
            "iif \"lo\" meta mark 0x53a meta nfproto ipv4 udp dport 53 tproxy ip to :15053"
        ),
        "{rules}"
    );
    assert!(
        rules.contains(
            "iif \"lo\" meta mark 0x53a meta nfproto ipv6 udp dport 53 tproxy ip6 to :15053"
        ),
        "{rules}"
    );
}

#[test]
fn probe_sources_return_before_the_inbound_redirect() {
    let nets = ["169.254.7.127/32", "10.1.0.0/16", "fd00::1/128"]
        .iter()
        .map(|n| n.parse().expect("literal"))
        .collect();
    let rules = Nftables::new(Ports::default(), Marks::default())
        .with_probe_sources(nets)
        .ruleset();
    let v4 = rules
        .find("ip saddr { 169.254.7.127/32, 10.1.0.0/16 } return")
        .expect(&rules);
    let v6 = rules
        .find("ip6 saddr { fd00::1/128 } return")
        .expect(&rules);
    let redirect = rules.find("redirect to :15006").expect(&rules);
    assert!(v4 < redirect && v6 < redirect, "{rules}");
}

#[tokio::test]
async fn outbound_is_redirected_with_original_destination() {
    let env = enrolled().await;
    let outbound = env
        .pod
        .netns
        .listen(any(15001), Some(0x539))
        .await
        .expect("listen outbound");
    for peer_ip in [PEER_V4, PEER_V6] {
        let dst = SocketAddr::new(peer_ip, 80);
        let mut app = app_connect(&env.pod.netns, dst)
            .await
            .expect("app connect is redirected");
        let (mut proxied, from) = accept(&outbound).await;
        assert_eq!(original_dst(&proxied).expect("original dst"), dst);
        assert!(env.pod.ips.contains(&canonical(from).ip()), "source {from}");
        echo_check(&mut app, &mut proxied).await;
    }
}

#[tokio::test]
async fn bypass_marked_socket_reaches_peer_directly() {
    let env = enrolled().await;
    let outbound = env
        .pod
        .netns
        .listen(any(15001), Some(0x539))
        .await
        .expect("listen outbound");
    let server = env
        .peer
        .listen(any(9000), None)
        .await
        .expect("listen in peer");
    for peer_ip in [PEER_V4, PEER_V6] {
        let dst = SocketAddr::new(peer_ip, 9000);
        let socket = env
            .pod
            .netns
            .socket(dst, Marks::default().bypass, None)
            .await
            .expect("socket");
        let mut client = tokio::time::timeout(WAIT, socket.connect(dst))
            .await
            .expect("in time")
            .expect("connect");
        let (mut served, _) = accept(&server).await;
        echo_check(&mut client, &mut served).await;
    }
    nothing_arrives(&outbound).await;
}

#[tokio::test]
async fn inbound_plaintext_and_hbone_are_separated() {
    let env = enrolled().await;
    let inbound = env
        .pod
        .netns
        .listen(any(15006), Some(0x539))
        .await
        .expect("listen inbound");
    let hbone = env
        .pod
        .netns
        .listen(any(15008), Some(0x539))
        .await
        .expect("listen hbone");
    for (pod_ip, peer_ip) in [(POD_V4, PEER_V4), (POD_V6, PEER_V6)] {
        let dst = SocketAddr::new(pod_ip, 8080);
        let mut client = app_connect(&env.peer, dst)
            .await
            .expect("connect to pod app port");
        let (mut proxied, from) = accept(&inbound).await;
        assert_eq!(original_dst(&proxied).expect("original dst"), dst);
        assert_eq!(canonical(from).ip(), peer_ip);
        echo_check(&mut client, &mut proxied).await;

        let mut tunnel = app_connect(&env.peer, SocketAddr::new(pod_ip, 15008))
            .await
            .expect("connect hbone");
        let (mut served, from) = accept(&hbone).await;
        assert_eq!(canonical(from).ip(), peer_ip);
        echo_check(&mut tunnel, &mut served).await;
    }
    nothing_arrives(&inbound).await;
}

#[tokio::test]
async fn transparent_delivery_preserves_client_address() {
    let env = enrolled().await;
    // The outbound listener must NOT see the app's replies or the delivery connection.
    let outbound = env
        .pod
        .netns
        .listen(any(15001), Some(0x539))
        .await
        .expect("listen outbound");
    let app = env
        .pod
        .netns
        .listen(any(8080), None)
        .await
        .expect("app listener");
    for (pod_ip, peer_ip) in [(POD_V4, PEER_V4), (POD_V6, PEER_V6)] {
        let dst = SocketAddr::new(pod_ip, 8080);
        let socket = env
            .pod
            .netns
            .socket(dst, Marks::default().delivery, Some(peer_ip))
            .await
            .expect("transparent socket");
        let mut delivery = tokio::time::timeout(WAIT, socket.connect(dst))
            .await
            .unwrap_or_else(|_| panic!("transparent connect to {dst} timed out"))
            .expect("transparent connect");
        let (mut served, from) = accept(&app).await;
        assert_eq!(
            canonical(from).ip(),
            peer_ip,
            "app must see the original client"
        );
        assert_eq!(
            canonical(delivery.local_addr().expect("local")).ip(),
            peer_ip
        );
        echo_check(&mut delivery, &mut served).await;
    }
    nothing_arrives(&outbound).await;
}

#[tokio::test]
async fn enroll_is_idempotent_and_unenroll_removes_everything() {
    let env = enrolled().await;
    env.backend
        .enroll(&env.pod)
        .await
        .expect("second enroll replaces");
    let rules = env
        .pair
        .pod
        .exec(&["nft", "list", "table", "inet", "ztunnel"]);
    assert_eq!(rules.matches("redirect to :15001").count(), 1, "{rules}");
    assert_eq!(
        env.pair.pod.ip(&["rule"]).matches("fwmark 0x53a").count(),
        1
    );
    assert_eq!(
        env.pair
            .pod
            .ip(&["-6", "rule"])
            .matches("fwmark 0x53a")
            .count(),
        1
    );
    assert_eq!(
        env.pair
            .pod
            .exec(&["cat", "/proc/sys/net/ipv4/conf/all/rp_filter"])
            .trim(),
        "0"
    );

    env.backend.unenroll(&env.pod).await.expect("unenroll");
    env.backend
        .unenroll(&env.pod)
        .await
        .expect("unenroll again is fine");
    let ruleset = env.pair.pod.exec(&["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("ztunnel"), "{ruleset}");
    for family in ["-4", "-6"] {
        let rules = env.pair.pod.ip(&[family, "rule"]);
        assert!(!rules.contains("fwmark"), "{rules}");
    }
    let routes = std::process::Command::new("ip")
        .args(["-n", &env.pair.pod.name, "route", "show", "table", "133"])
        .output()
        .expect("run ip");
    assert!(String::from_utf8_lossy(&routes.stdout).trim().is_empty());

    // Without capture an app's connection goes straight to the peer.
    let outbound = env
        .pod
        .netns
        .listen(any(15001), None)
        .await
        .expect("listen outbound");
    let server = env
        .peer
        .listen(any(9000), None)
        .await
        .expect("listen in peer");
    let dst = SocketAddr::new(PEER_V4, 9000);
    let mut app = app_connect(&env.pod.netns, dst)
        .await
        .expect("direct connect");
    let (mut served, from) = accept(&server).await;
    assert_eq!(canonical(from).ip(), POD_V4);
    echo_check(&mut app, &mut served).await;
    nothing_arrives(&outbound).await;
}

/// Guards the delivery test above: the app's replies only find their way back because of the
/// fwmark routing, so without it the transparent handshake cannot complete.
#[tokio::test]
async fn transparent_delivery_needs_the_routing_rules() {
    let env = enrolled().await;
    env.pair
        .pod
        .ip(&["rule", "del", "fwmark", "0x53a", "lookup", "133"]);
    let _app = env
        .pod
        .netns
        .listen(any(8080), None)
        .await
        .expect("app listener");
    let dst = SocketAddr::new(POD_V4, 8080);
    let socket = env
        .pod
        .netns
        .socket(dst, Marks::default().delivery, Some(PEER_V4))
        .await
        .expect("transparent socket");
    let connected = tokio::time::timeout(Duration::from_secs(1), socket.connect(dst)).await;
    assert!(
        !matches!(connected, Ok(Ok(_))),
        "handshake must not complete without the fwmark rule"
    );
}

#[test]
fn failed_command_reports_its_stderr() {
    crate::netns::testing::require_root_and_tools();
    let err = run(
        "test/pod",
        "nft",
        &["-f", "-"],
        Some("table inet ztunnel { bogus }\n"),
    )
    .expect_err("invalid ruleset");
    let message = err.to_string();
    assert!(matches!(err, Error::Command { .. }), "{message}");
    assert!(
        message.contains("test/pod") && message.contains("syntax error"),
        "{message}"
    );

    let err =
        run("test/pod", "definitely-not-installed-ztcap", &[], None).expect_err("missing binary");
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}
