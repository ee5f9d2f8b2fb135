//! Real namespaces, real programs: each test loads its own copy (as each ztunnel process does)
//! and builds a pod/peer pair with `netns::testing`. Tests fail when eBPF cannot load.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::netns::testing::{app_connect, Pair, PEER_V4, PEER_V6, POD_V4, POD_V6};
use crate::netns::Netns;
use crate::socket::{canonical, original_dst};

const WAIT: Duration = Duration::from_secs(5);

fn any(port: u16) -> SocketAddr {
    SocketAddr::new("::".parse().expect("literal"), port)
}

struct Env {
    pair: Pair,
    pod: Pod,
    peer: Arc<Netns>,
    backend: Ebpf,
    outbound: TcpListener,
    inbound: TcpListener,
}

/// Listeners first, then enrollment: the order ztunnel's registry uses.
async fn enrolled() -> Env {
    let pair = Pair::new();
    let netns = pair.pod.open();
    let outbound = netns.listen(any(15001), Some(0x539)).await.expect("listen");
    let inbound = netns.listen(any(15006), Some(0x539)).await.expect("listen");
    let pod = Pod {
        name: format!("test/{}", pair.pod.name),
        netns,
        ips: vec![POD_V4, POD_V6],
        inbound_listener: Some(Arc::new(inbound.as_fd().try_clone_to_owned().expect("dup"))),
    };
    let backend = Ebpf::load(Ports::default(), Marks::default(), &Default::default())
        .expect("eBPF capture must load here (root, kernel >= 5.14, cgroup v2)");
    backend.enroll(&pod).await.expect("enroll");
    let peer = pair.peer.open();
    Env {
        pair,
        pod,
        peer,
        backend,
        outbound,
        inbound,
    }
}

async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("connection should arrive at this listener")
        .expect("accept")
        .0
}

async fn echo_check(a: &mut TcpStream, b: &mut TcpStream) {
    a.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, b.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn outbound_is_redirected_with_original_destination_and_peer_name() {
    let env = enrolled().await;
    for peer_ip in [PEER_V4, PEER_V6] {
        let dst = SocketAddr::new(peer_ip, 80);
        let mut app = app_connect(&env.pod.netns, dst)
            .await
            .expect("app connect is redirected");
        assert_eq!(app.peer_addr().expect("getpeername"), dst);
        let mut proxied = accept(&env.outbound).await;
        assert_eq!(original_dst(&proxied).expect("original dst"), dst);
        echo_check(&mut app, &mut proxied).await;
    }
    let s = env.backend.sample();
    assert_eq!(s.redirects[0], ("outbound", 2));
    assert_eq!(s.original_dst_answered, 2);
    assert!(s.misses.iter().all(|(_, n)| *n == 0), "{s:?}");
}

#[tokio::test]
async fn inbound_is_steered_and_delivery_is_exempt() {
    let env = enrolled().await;
    let app = env.pod.netns.listen(any(8080), None).await.expect("app");
    for (pod_ip, peer_ip) in [(POD_V4, PEER_V4), (POD_V6, PEER_V6)] {
        let dst = SocketAddr::new(pod_ip, 8080);
        let mut client = app_connect(&env.peer, dst).await.expect("peer -> pod");
        let mut steered = accept(&env.inbound).await;
        // sk_lookup keeps the destination: the local address is the original one.
        assert_eq!(canonical(steered.local_addr().expect("local")), dst);
        assert_eq!(canonical(steered.peer_addr().expect("peer")).ip(), peer_ip);
        echo_check(&mut client, &mut steered).await;

        // ztunnel's own delivery, bound first and exempted, reaches the app itself.
        let socket = env
            .pod
            .netns
            .socket(dst, Marks::default().bypass, None)
            .await
            .expect("socket");
        socket.bind(SocketAddr::new(pod_ip, 0)).expect("bind");
        let exemption = env
            .backend
            .exempt_delivery(socket.local_addr().expect("bound"))
            .expect("exempt");
        assert!(exemption.is_some());
        let mut delivery = tokio::time::timeout(WAIT, socket.connect(dst))
            .await
            .expect("in time")
            .expect("connect");
        drop(exemption);
        let mut served = accept(&app).await;
        echo_check(&mut delivery, &mut served).await;
    }
    let s = env.backend.sample();
    assert_eq!(s.redirects[1], ("inbound", 2));
    assert_eq!(s.delivery_bypassed, 2);
}

#[tokio::test]
async fn unenroll_leaves_nothing_behind() {
    let env = enrolled().await;
    assert_eq!(env.backend.sample().enrolled_namespaces, 1);
    env.backend.unenroll(&env.pod).await.expect("unenroll");
    env.backend
        .unenroll(&env.pod)
        .await
        .expect("unenroll twice");
    assert!(env.backend.enrolled().is_empty());
    assert_eq!(env.backend.sample().enrolled_namespaces, 0);
    // Both directions are direct again.
    let server = env.peer.listen(any(9000), None).await.expect("peer server");
    let dst = SocketAddr::new(PEER_V4, 9000);
    let mut app = app_connect(&env.pod.netns, dst).await.expect("direct");
    let mut served = accept(&server).await;
    echo_check(&mut app, &mut served).await;
    let app_l = env.pod.netns.listen(any(8080), None).await.expect("app");
    let mut client = app_connect(&env.peer, SocketAddr::new(POD_V4, 8080))
        .await
        .expect("peer -> pod direct");
    let mut served = accept(&app_l).await;
    echo_check(&mut client, &mut served).await;
    let s = env.backend.sample();
    assert_eq!(
        s.redirects,
        vec![("outbound", 0), ("inbound", 0), ("dns", 0)]
    );
    drop(env.pair);
}
