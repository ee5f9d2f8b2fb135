use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::testing::{Namespace, Pair, PEER_V4, POD_V4};
use super::*;

fn current_netns_ino() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino()
}

#[tokio::test]
async fn run_executes_inside_the_namespace_and_leaves_caller_alone() {
    super::testing::require_root_and_tools();
    let ns = Namespace::new("run");
    let netns = ns.open();
    let before = current_netns_ino();
    let inside = netns.run(current_netns_ino).await.expect("run");
    assert_eq!(inside, netns.inode().ino);
    assert_ne!(inside, before);
    assert_eq!(
        current_netns_ino(),
        before,
        "caller must stay in its namespace"
    );
    let blocking = {
        let netns = netns.clone();
        tokio::task::spawn_blocking(move || netns.run_blocking(current_netns_ino))
            .await
            .expect("join")
            .expect("run_blocking")
    };
    assert_eq!(blocking, inside);
    assert_eq!(netns.path(), ns.path());
}

#[tokio::test]
async fn panicking_closure_is_an_error_and_thread_survives() {
    super::testing::require_root_and_tools();
    let ns = Namespace::new("panic");
    let netns = ns.open();
    let err = netns
        .run(|| -> u8 { panic!("boom") })
        .await
        .expect_err("panic is an error");
    assert!(err.to_string().contains("panicked"), "{err}");
    assert_eq!(netns.run(|| 7).await.expect("thread still serves"), 7);
}

#[test]
fn open_missing_namespace_names_the_path() {
    let err = Netns::open(Path::new("/run/netns/does-not-exist-ztcap")).expect_err("missing");
    assert!(err.to_string().contains("does-not-exist-ztcap"), "{err}");
}

#[tokio::test]
async fn listener_and_socket_live_in_the_namespace() {
    let pair = Pair::new();
    let pod = pair.pod.open();
    let peer = pair.peer.open();
    // Dual-stack listener in the peer: reachable on the peer's v4 address only inside the pair.
    let listener = peer
        .listen("[::]:9100".parse().expect("literal"), Some(0x539))
        .await
        .expect("listen in peer");
    let target = SocketAddr::new(PEER_V4, 9100);
    let socket = pod
        .socket(target, 0x539, None)
        .await
        .expect("socket in pod");
    let mut client = socket.connect(target).await.expect("connect across veth");
    let (mut server, from) = listener.accept().await.expect("accept");
    assert_eq!(crate::socket::canonical(from).ip(), POD_V4);
    assert!(
        server.nodelay().expect("nodelay"),
        "inherited from the listener"
    );
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    assert_eq!(socket2::SockRef::from(&client).mark().expect("mark"), 0x539);
}

#[tokio::test]
async fn transparent_source_must_match_family() {
    super::testing::require_root_and_tools();
    let ns = Namespace::new("family");
    let netns = ns.open();
    let err = netns
        .socket("[fd00::1]:80".parse().expect("literal"), 1, Some(POD_V4))
        .await
        .expect_err("mixed families");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn dropping_the_netns_ends_its_thread() {
    super::testing::require_root_and_tools();
    thread_local! {
        static HELD: std::cell::RefCell<Option<Arc<()>>> = const { std::cell::RefCell::new(None) };
    }
    let ns = Namespace::new("drop");
    let netns = ns.open();
    let alive = Arc::new(());
    let held = alive.clone();
    // Thread-locals are destroyed when the thread exits, which releases this clone.
    netns
        .run(move || HELD.with(|h| *h.borrow_mut() = Some(held)))
        .await
        .expect("run");
    assert_eq!(Arc::strong_count(&alive), 2);
    drop(netns);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Arc::strong_count(&alive) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "netns thread still running after drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn spare_sockets_belong_to_the_namespace_and_refill() {
    super::testing::require_root_and_tools();
    let ns = Namespace::new("spare");
    // An address that exists only inside the namespace: binding to it proves where a socket
    // was created.
    ns.ip(&["addr", "add", "10.250.9.9/32", "dev", "lo"]);
    let netns = ns.open();
    let local: SocketAddr = "10.250.9.9:0".parse().expect("literal");
    for i in 0..3 * spare::BATCH {
        let socket = netns
            .socket("10.250.9.1:80".parse().expect("literal"), 0x539, None)
            .await
            .expect("socket");
        socket
            .bind(local)
            .unwrap_or_else(|e| panic!("socket {i} is not in the namespace: {e}"));
        assert_eq!(socket2::SockRef::from(&socket).mark().expect("mark"), 0x539);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while netns.spare_v4.len() < spare::BATCH / 2 {
        assert!(std::time::Instant::now() < deadline, "stock not refilled");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(netns.spare_v6.len(), 0, "an unused family holds no sockets");
}

#[tokio::test]
async fn delivery_source_ports_follow_the_namespace_port_range() {
    super::testing::require_root_and_tools();
    let ns = Namespace::new("ports");
    ns.exec(&[
        "sh",
        "-c",
        "echo 40000 40009 > /proc/sys/net/ipv4/ip_local_port_range",
    ]);
    let netns = ns.open();
    // Read on the namespace's own thread: the node's range is a different one.
    assert_ne!(
        netns.source_ports(),
        super::source_port::Range::of_current_netns()
    );
    for _ in 0..20 {
        let socket = netns
            .socket("10.250.0.1:80".parse().expect("literal"), 1, Some(PEER_V4))
            .await
            .expect("transparent socket bound in the pod's range");
        let port = socket.local_addr().expect("bound").port();
        assert!((40000..=40009).contains(&port), "{port}");
    }
}
