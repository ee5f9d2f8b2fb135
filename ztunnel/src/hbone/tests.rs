//! Loopback tests of the HBONE layer: real h2 over TCP, no TLS.

use std::future::{pending, Future};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// The server counts a connection only once its accept loop runs, which may be after the
/// client's handshake (h2 clients do not wait for the server's SETTINGS).
async fn accepted_becomes(accepted: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + WAIT;
    while accepted.load(Ordering::SeqCst) != n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), n);
}

fn dst(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// Runs `server` for every TCP connection to the returned address; counts accepted TCP
/// connections and reports each finished `serve` through the channel.
async fn listen<H, F>(
    server: Server<H>,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<Result<(), Error>>,
)
where
    H: Fn(Incoming) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let server = server.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let _ = done_tx.send(server.serve(tcp, pending()).await);
            });
        }
    });
    (addr, accepted, done_rx)
}

async fn echo(incoming: Incoming) {
    let stream = incoming.accept().unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, accepted, _) = listen(Server::new(Settings::default(), echo)).await;
    (addr, accepted)
}

async fn client(addr: SocketAddr, settings: &Settings) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::handshake(tcp, settings).await.unwrap()
}

async fn roundtrip(stream: &mut Stream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("echo answered in time")
        .unwrap();
    out
}

#[tokio::test]
async fn echo_through_tunnel_carries_authority_and_headers() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let handler = move |incoming: Incoming| {
        let _ = seen_tx.send((incoming.authority, incoming.headers.clone()));
        echo(incoming)
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;

    let target: SocketAddr = "[fd00::7]:8080".parse().unwrap();
    let source: SocketAddr = "10.1.2.3:4567".parse().unwrap();
    let mut stream = client
        .connect(target, headers::outbound(source))
        .await
        .unwrap();
    assert_eq!(client.active_streams(), 1);
    assert_eq!(roundtrip(&mut stream, b"hello hbone").await, b"hello hbone");

    let (authority, headers) = seen_rx.recv().await.unwrap();
    assert_eq!(authority, target);
    assert_eq!(headers.get("forwarded").unwrap(), "for=\"10.1.2.3:4567\"");
    let tp = headers.get("traceparent").unwrap().to_str().unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    drop(stream);
    assert_eq!(client.active_streams(), 0);
}

#[tokio::test]
async fn early_bytes_leave_with_the_request_before_the_answer() {
    // A bare h2 server that reads the stream before it answers: the bytes must already be
    // there, and the tunnel must carry them first, ahead of what is written later.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        let (request, mut respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let mut body = request.into_body();
        let before_answer = body.data().await.unwrap().unwrap();
        let ok = http::Response::builder().status(200).body(()).unwrap();
        let mut send = respond.send_response(ok, false).unwrap();
        let mut rest = Vec::new();
        while let Some(chunk) = body.data().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        send.send_data(Bytes::new(), true).unwrap();
        (before_answer, rest)
    });
    let client = client(addr, &Settings::default()).await;
    let mut stream = tokio::time::timeout(
        WAIT,
        client.connect_with(dst(80), HeaderMap::new(), Bytes::from_static(b"early")),
    )
    .await
    .expect("answered in time")
    .unwrap();
    stream.write_all(b" and later").await.unwrap();
    stream.shutdown().await.unwrap();
    let (before_answer, rest) = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(&before_answer[..], b"early");
    assert_eq!(rest, b" and later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_256_mib_byte_exact_in_one_stream() {
    const BLOCK: usize = 1024 * 1024;
    const BLOCKS: u64 = 256;
    let pattern: Arc<Vec<u8>> = Arc::new((0..BLOCK).map(|_| rand::random::<u8>()).collect());
    // Every block is the random pattern stamped with its index, so loss, duplication and
    // reordering all show up as a mismatch.
    let block = |pattern: &[u8], i: u64| {
        let mut b = pattern.to_vec();
        b[..8].copy_from_slice(&i.to_be_bytes());
        b
    };
    let (result_tx, result_rx) = oneshot::channel();
    let result_tx = Arc::new(Mutex::new(Some(result_tx)));
    let expected = pattern.clone();
    let handler = move |incoming: Incoming| {
        let result_tx = result_tx.lock().unwrap().take().unwrap();
        let expected = expected.clone();
        async move {
            let mut stream = incoming.accept().unwrap();
            let mut buf = vec![0u8; BLOCK];
            let mut good = 0u64;
            for i in 0..BLOCKS {
                stream.read_exact(&mut buf).await.unwrap();
                if buf == block(&expected, i) {
                    good += 1;
                }
            }
            let trailing = stream.read(&mut buf).await.unwrap();
            stream.write_all(&good.to_be_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            let _ = result_tx.send((good, trailing));
        }
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;
    let mut stream = client.connect(dst(80), HeaderMap::new()).await.unwrap();

    let started = Instant::now();
    for i in 0..BLOCKS {
        stream.write_all(&block(&pattern, i)).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    let (good, trailing) = tokio::time::timeout(Duration::from_secs(300), result_rx)
        .await
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(good, BLOCKS, "blocks received intact");
    assert_eq!(trailing, 0, "EOF right after the last block");
    assert_eq!(reply, BLOCKS.to_be_bytes());
    let mib_s = (BLOCKS as f64) / elapsed.as_secs_f64();
    println!("256 MiB through one hbone stream in {elapsed:?}: {mib_s:.0} MiB/s");
}

#[tokio::test]
async fn half_close_client_first() {
    let handler = |incoming: Incoming| async move {
        let mut stream = incoming.accept().unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        // Our write side must still work after the peer finished sending.
        stream
            .write_all(&[b"got:", &got[..]].concat())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;
    let mut stream = client.connect(dst(1), HeaderMap::new()).await.unwrap();
    assert_eq!(roundtrip(&mut stream, b"ping").await, b"got:ping");
}

#[tokio::test]
async fn half_close_server_first() {
    let (late_tx, late_rx) = oneshot::channel();
    let late_tx = Arc::new(Mutex::new(Some(late_tx)));
    let handler = move |incoming: Incoming| {
        let late_tx = late_tx.lock().unwrap().take().unwrap();
        async move {
            let mut stream = incoming.accept().unwrap();
            stream.write_all(b"first").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            let _ = late_tx.send(got);
        }
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;
    let mut stream = client.connect(dst(1), HeaderMap::new()).await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"first");
    stream.write_all(b"late reply").await.unwrap();
    stream.shutdown().await.unwrap();
    let late = tokio::time::timeout(WAIT, late_rx).await.unwrap().unwrap();
    assert_eq!(late, b"late reply");
}

/// The outbound proxy's side of a test: a listener for the app, and a future that accepts the
/// app's connection and opens a tunnel for it to `target`.
async fn app_side(
    client: Client,
    target: SocketAddr,
) -> (SocketAddr, impl Future<Output = (TcpStream, Stream)>) {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    let accepted = async move {
        let (downstream, _) = app.accept().await.unwrap();
        let stream = client.connect(target, HeaderMap::new()).await.unwrap();
        (downstream, stream)
    };
    (addr, accepted)
}

/// app -> TCP -> [copy_bidirectional] -> hbone -> [copy_bidirectional] -> TCP -> backend, with
/// each side half-closing, as the real proxies do.
#[tokio::test]
async fn copy_bidirectional_preserves_half_close() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = backend.accept().await.unwrap();
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        tcp.write_all(&got.to_ascii_uppercase()).await.unwrap();
        tcp.shutdown().await.unwrap();
    });
    let handler = |incoming: Incoming| async move {
        let mut upstream = TcpStream::connect(incoming.authority).await.unwrap();
        let mut stream = incoming.accept().unwrap();
        tokio::io::copy_bidirectional(&mut stream, &mut upstream)
            .await
            .unwrap();
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;

    let (app_addr, accepted) = app_side(client, backend_addr).await;
    let proxy = tokio::spawn(async move {
        let (mut downstream, mut stream) = accepted.await;
        tokio::io::copy_bidirectional(&mut downstream, &mut stream)
            .await
            .unwrap()
    });
    let mut tcp = TcpStream::connect(app_addr).await.unwrap();
    tcp.write_all(b"half closed").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"HALF CLOSED");
    let (up, down) = tokio::time::timeout(WAIT, proxy).await.unwrap().unwrap();
    assert_eq!((up, down), (11, 11));
}

/// The proxies' own copy on both tunnel ends (chunks handed to and taken from h2 without a
/// copy): 3 MiB each way, byte-exact, with half-close and exact counts on both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_copy_moves_bulk_through_a_tunnel_byte_exact() {
    use crate::proxy::copy::{bidirectional, Outcome, Transferred};
    use tokio_util::sync::CancellationToken;
    const LEN: usize = 3 * 1024 * 1024 + 5;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 241) as u8).collect();
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let expected = data.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = backend.accept().await.unwrap();
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        assert!(
            got == expected,
            "backend got {} bytes, not the sent ones",
            got.len()
        );
        let reply: Vec<u8> = got.iter().rev().copied().collect();
        tcp.write_all(&reply).await.unwrap();
        tcp.shutdown().await.unwrap();
    });
    let (server_done, mut server_counts) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |incoming: Incoming| {
        let done = server_done.clone();
        async move {
            let mut upstream = TcpStream::connect(incoming.authority).await.unwrap();
            let mut stream = incoming.accept().unwrap();
            let r = bidirectional(&mut stream, &mut upstream, &CancellationToken::new()).await;
            let _ = done.send(r);
        }
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;
    let (app_addr, accepted) = app_side(client, backend_addr).await;
    let proxy = tokio::spawn(async move {
        let (mut downstream, mut stream) = accepted.await;
        bidirectional(&mut downstream, &mut stream, &CancellationToken::new()).await
    });
    let mut tcp = TcpStream::connect(app_addr).await.unwrap();
    let (mut rd, mut wr) = tcp.split();
    let send = async {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = async { rd.read_to_end(&mut got).await.unwrap() };
    tokio::time::timeout(WAIT, async { tokio::join!(send, recv) })
        .await
        .unwrap();
    let reversed: Vec<u8> = data.iter().rev().copied().collect();
    assert!(got == reversed, "client got {} bytes back", got.len());
    let both = Transferred {
        received: LEN as u64,
        sent: LEN as u64,
    };
    let (outcome, moved) = tokio::time::timeout(WAIT, proxy).await.unwrap().unwrap();
    assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    assert_eq!(moved, both);
    let (outcome, moved) = tokio::time::timeout(WAIT, server_counts.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    assert_eq!(moved, both);
}

type Rejections = Arc<Mutex<Vec<RejectReason>>>;

async fn counting_server() -> (SocketAddr, Rejections, Arc<AtomicUsize>) {
    let rejections: Rejections = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let (r, h) = (rejections.clone(), handled.clone());
    let server = Server::new(Settings::default(), move |incoming: Incoming| {
        h.fetch_add(1, Ordering::SeqCst);
        echo(incoming)
    })
    .on_reject(move |reason| r.lock().unwrap().push(reason));
    let (addr, _, _) = listen(server).await;
    (addr, rejections, handled)
}

async fn raw_h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn status_of(send: &mut h2::client::SendRequest<Bytes>, req: Request<()>) -> u16 {
    let (response, _) = send.send_request(req, true).unwrap();
    response.await.unwrap().status().as_u16()
}

#[tokio::test]
async fn rejects_non_connect_and_bad_authority() {
    let (addr, rejections, handled) = counting_server().await;
    let mut send = raw_h2(addr).await;
    let get = Request::builder()
        .method(Method::GET)
        .uri("http://10.0.0.1:80/")
        .body(())
        .unwrap();
    assert_eq!(status_of(&mut send, get).await, 405);
    let by_name = Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:80")
        .body(())
        .unwrap();
    assert_eq!(status_of(&mut send, by_name).await, 400);
    let no_port = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1")
        .body(())
        .unwrap();
    assert_eq!(status_of(&mut send, no_port).await, 400);
    assert_eq!(
        *rejections.lock().unwrap(),
        [
            RejectReason::Method,
            RejectReason::Authority,
            RejectReason::Authority
        ]
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);

    // The connection keeps serving after rejections.
    let ok = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(ok, false).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}

#[tokio::test]
async fn oversized_headers_refuse_only_that_stream() {
    let (addr, _, handled) = counting_server().await;
    let client = client(addr, &Settings::default()).await;
    let mut before = client.connect(dst(1), HeaderMap::new()).await.unwrap();

    let mut big = HeaderMap::new();
    big.insert(
        "x-big",
        HeaderValue::from_str(&"a".repeat(20 * 1024)).unwrap(),
    );
    let refused = client.connect(dst(2), big).await;
    match refused {
        Err(Error::Status(431)) => {}
        Err(Error::H2(e)) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {}
        Err(e) => panic!("unexpected error for oversized headers: {e}"),
        Ok(_) => panic!("oversized header list was accepted"),
    }
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert!(!client.is_closed());

    // The stream opened before and one opened after still work on the same connection.
    let mut after = client.connect(dst(3), HeaderMap::new()).await.unwrap();
    assert_eq!(roundtrip(&mut before, b"before").await, b"before");
    assert_eq!(roundtrip(&mut after, b"after").await, b"after");
}

#[tokio::test]
async fn peer_reset_fails_only_that_stream() {
    let handler = |incoming: Incoming| async move {
        if incoming.authority.port() == 1 {
            let mut stream = incoming.accept().unwrap();
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.unwrap();
            stream.reset();
        } else {
            echo(incoming).await;
        }
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;
    let mut doomed = client.connect(dst(1), HeaderMap::new()).await.unwrap();
    let mut healthy = client.connect(dst(2), HeaderMap::new()).await.unwrap();
    healthy.write_all(b"still ").await.unwrap();

    doomed.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(WAIT, doomed.read(&mut buf))
        .await
        .unwrap()
        .expect_err("reset must surface as an error");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    assert_eq!(roundtrip(&mut healthy, b"alive").await, b"still alive");
    assert!(!client.is_closed());
}

#[tokio::test]
async fn rejected_incoming_returns_status() {
    let handler = |incoming: Incoming| async move {
        incoming.reject(401).unwrap();
    };
    let (addr, _, _) = listen(Server::new(Settings::default(), handler)).await;
    let client = client(addr, &Settings::default()).await;
    match client.connect(dst(1), HeaderMap::new()).await {
        Err(e @ Error::Status(401)) => assert!(!e.is_retryable()),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("rejected request produced a stream"),
    }
    assert_eq!(client.active_streams(), 0);
}

#[tokio::test]
async fn drain_sends_goaway_and_lets_streams_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let server = Server::new(Settings::default(), echo);
        server
            .serve(tcp, async {
                let _ = drain_rx.await;
            })
            .await
    });
    let client = client(addr, &Settings::default()).await;
    let mut stream = client.connect(dst(1), HeaderMap::new()).await.unwrap();
    stream.write_all(b"in flight ").await.unwrap();
    drain_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(client.connect(dst(2), HeaderMap::new()).await.is_err());
    assert_eq!(roundtrip(&mut stream, b"done").await, b"in flight done");
    drop(stream);
    let result = tokio::time::timeout(WAIT, served).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn keepalive_closes_connection_to_silent_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (eof_tx, eof_rx) = oneshot::channel();
    tokio::spawn(async move {
        // Reads everything (preface, SETTINGS, PINGs) and never answers.
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        while tcp.read(&mut buf).await.unwrap_or(0) > 0 {}
        let _ = eof_tx.send(());
    });
    let settings = Settings {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(200),
        ..Settings::default()
    };
    let silent = client(addr, &settings).await;
    tokio::time::timeout(WAIT, eof_rx)
        .await
        .expect("client closed the silent connection")
        .unwrap();
    assert!(silent.is_closed());
    assert!(matches!(
        silent.connect(dst(1), HeaderMap::new()).await,
        Err(Error::Closed)
    ));

    // Control: a peer that answers PINGs keeps an idle connection open.
    let (addr, _) = echo_server().await;
    let healthy = client(addr, &settings).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!healthy.is_closed());
    let mut stream = healthy.connect(dst(1), HeaderMap::new()).await.unwrap();
    assert_eq!(roundtrip(&mut stream, b"alive").await, b"alive");
}

fn tcp_connect(
    addr: SocketAddr,
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<TcpStream, Error>> + Send>> {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(TcpStream::connect(addr).await?) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_concurrent_gets_open_one_connection() {
    let (addr, accepted) = echo_server().await;
    let pool: Pool<&'static str> = Pool::new(Settings::default(), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let gets = (0..20).map(|_| {
        let pool = pool.clone();
        let connect = tcp_connect(addr, &calls);
        tokio::spawn(async move { pool.get("peer", connect).await.unwrap() })
    });
    let clients: Vec<Client> = futures::future::join_all(gets)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    accepted_becomes(&accepted, 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(clients.iter().all(|c| c.same_connection(&clients[0])));

    let mut streams = Vec::new();
    for c in &clients {
        streams.push(c.connect(dst(1), HeaderMap::new()).await.unwrap());
    }
    assert_eq!(
        pool.stats(),
        PoolStats {
            connections: 1,
            streams: 20
        }
    );
    for s in &mut streams {
        assert_eq!(roundtrip(s, b"x").await, b"x");
    }
    drop(streams);
    assert_eq!(
        pool.stats(),
        PoolStats {
            connections: 1,
            streams: 0
        }
    );
}

#[tokio::test]
async fn pool_reuses_connection_across_sequential_gets() {
    let (addr, accepted) = echo_server().await;
    let pool: Pool<u32> = Pool::new(Settings::default(), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..5 {
        let client = pool.get(7, tcp_connect(addr, &calls)).await.unwrap();
        let mut stream = client.connect(dst(1), HeaderMap::new()).await.unwrap();
        let msg = format!("round {i}");
        assert_eq!(roundtrip(&mut stream, msg.as_bytes()).await, msg.as_bytes());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    accepted_becomes(&accepted, 1).await;

    // A different key is a different peer, hence a different connection.
    pool.get(8, tcp_connect(addr, &calls)).await.unwrap();
    accepted_becomes(&accepted, 2).await;
    assert_eq!(pool.stats().connections, 2);
}

#[tokio::test]
async fn pool_closes_idle_connections() {
    let (addr, accepted, mut done) = listen(Server::new(Settings::default(), echo)).await;
    let idle = Duration::from_millis(300);
    let pool: Pool<u32> = Pool::new(Settings::default(), idle);
    let calls = Arc::new(AtomicUsize::new(0));
    let client = pool.get(1, tcp_connect(addr, &calls)).await.unwrap();

    // An open stream keeps the connection, however long it stays quiet.
    let mut stream = client.connect(dst(1), HeaderMap::new()).await.unwrap();
    tokio::time::sleep(idle * 3).await;
    assert!(!client.is_closed());
    assert_eq!(roundtrip(&mut stream, b"busy").await, b"busy");
    drop(stream);

    let served = tokio::time::timeout(WAIT, done.recv())
        .await
        .expect("server saw the idle connection close")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert!(client.is_closed());
    assert_eq!(pool.stats(), PoolStats::default());

    // The next get replaces the evicted connection.
    let fresh = pool.get(1, tcp_connect(addr, &calls)).await.unwrap();
    assert!(!fresh.is_closed());
    accepted_becomes(&accepted, 2).await;
}

#[tokio::test]
async fn pool_shares_a_failed_attempt_then_retries() {
    let pool: Pool<u32> = Pool::new(Settings::default(), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = |calls: &Arc<AtomicUsize>| {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<TcpStream, _>(Error::Io(std::io::ErrorKind::ConnectionRefused.into()))
            }
        }
    };
    let results = futures::future::join_all((0..5).map(|_| pool.get(1, failing(&calls)))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for r in results {
        match r {
            Err(e @ Error::Connect(_)) => assert!(e.is_retryable()),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("failed connect produced a client"),
        }
    }
    assert!(pool.get(1, failing(&calls)).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn outbound_headers_follow_istio_format() {
    let v4 = headers::outbound("10.0.0.9:1234".parse().unwrap());
    assert_eq!(v4.get("forwarded").unwrap(), "for=\"10.0.0.9:1234\"");
    assert_eq!(
        headers::forwarded_for(&v4),
        Some("10.0.0.9".parse().unwrap())
    );
    // Istio's older form without a port is understood too.
    let mut bare = http::HeaderMap::new();
    bare.insert("forwarded", "for=10.0.0.7".parse().unwrap());
    assert_eq!(
        headers::forwarded_for(&bare),
        Some("10.0.0.7".parse().unwrap())
    );
    let v6 = headers::outbound("[fd00::9]:1234".parse().unwrap());
    assert_eq!(v6.get("forwarded").unwrap(), "for=\"[fd00::9]:1234\"");
    assert_eq!(
        headers::forwarded_for(&v6),
        Some("fd00::9".parse().unwrap())
    );

    let a = headers::traceparent();
    let b = headers::traceparent();
    assert_ne!(a, b, "a fresh trace per request");
    let parts: Vec<&str> = a.to_str().unwrap().split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    assert!(parts[1..3].iter().all(|p| p
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())));
}

#[tokio::test]
async fn dead_connection_fails_its_streams_only() {
    let (err_tx, mut err_rx) = mpsc::unbounded_channel();
    let handler = move |incoming: Incoming| {
        let err_tx = err_tx.clone();
        async move {
            if incoming.authority.port() == 1 {
                let mut stream = incoming.accept().unwrap();
                let mut got = Vec::new();
                let _ = err_tx.send(stream.read_to_end(&mut got).await.map(|_| got));
            } else {
                echo(incoming).await;
            }
        }
    };
    let (addr, _, mut done) = listen(Server::new(Settings::default(), handler)).await;
    let dying = client(addr, &Settings::default()).await;
    let other = client(addr, &Settings::default()).await;
    let mut cut = dying.connect(dst(1), HeaderMap::new()).await.unwrap();
    cut.write_all(b"partial").await.unwrap();
    let mut fine = other.connect(dst(2), HeaderMap::new()).await.unwrap();
    fine.write_all(b"one ").await.unwrap();

    // The transport vanishes mid-stream: the server-side tunnel must not look like a clean EOF.
    dying.close();
    let read = tokio::time::timeout(WAIT, err_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(read.is_err(), "abort surfaced as clean EOF: {read:?}");
    // h2 treats the transport's EOF as the end of the connection, so `serve` just returns.
    tokio::time::timeout(WAIT, done.recv())
        .await
        .expect("serve of the dead connection returned")
        .unwrap()
        .ok();
    let mut buf = [0u8; 8];
    assert!(cut.read(&mut buf).await.is_err());

    assert_eq!(roundtrip(&mut fine, b"two").await, b"one two");
    assert!(!other.is_closed());
}

/// A pool (60 s idle timeout) for an echo server that allows `limit` streams per connection,
/// and the count of connections it opened.
async fn pool_with_stream_limit(limit: u32) -> (Pool<u32>, SocketAddr, Arc<AtomicUsize>) {
    let server_settings = Settings {
        max_concurrent_streams: limit,
        ..Settings::default()
    };
    let (addr, _, _) = listen(Server::new(server_settings.clone(), echo)).await;
    let pool = Pool::new(server_settings, Duration::from_secs(60));
    (pool, addr, Arc::new(AtomicUsize::new(0)))
}

/// Concurrent opens must not overshoot the peer's stream limit: the surplus would wait in h2
/// for a slot that idle long-lived tunnels never free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_never_hands_out_more_streams_than_the_peer_allows() {
    let (pool, addr, calls) = pool_with_stream_limit(4).await;
    // One full exchange first, so the client has the server's SETTINGS (the limit).
    let first = pool.get(1, tcp_connect(addr, &calls)).await.unwrap();
    let mut held = vec![first.connect(dst(1), HeaderMap::new()).await.unwrap()];
    let opens = (0..12).map(|_| {
        let pool = pool.clone();
        let connect = tcp_connect(addr, &calls);
        tokio::spawn(async move {
            let client = pool.get(1, connect).await.unwrap();
            tokio::time::timeout(WAIT, client.connect(dst(1), HeaderMap::new()))
                .await
                .expect("a pooled connection had a free stream slot")
                .unwrap()
        })
    });
    for s in futures::future::join_all(opens).await {
        held.push(s.unwrap());
    }
    let stats = pool.stats();
    assert_eq!(stats.streams, 13);
    assert!(
        stats.connections >= 4,
        "13 streams at 4 per connection: {stats:?}"
    );
}

/// After a burst that needed several connections, a key keeps one idle connection for reuse
/// and gives the others back once they have been idle for a moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_closes_surplus_idle_connections_after_a_burst() {
    let (pool, addr, calls) = pool_with_stream_limit(2).await;
    let held = open_streams(&pool, addr, &calls, 6).await;
    assert_eq!(pool.stats().connections, 3, "6 streams at 2 per connection");
    drop(held);
    wait_for_connections(&pool, 1, "surplus idle connections were not closed").await;
    // The one left is still usable without a new connection.
    assert_eq!(one_more_tunnel(&pool, addr, &calls).await, 0);
    assert_eq!(pool.stats().connections, 1);
}

/// Opens `n` tunnels one after the other through `pool` (key 1) and keeps them open.
async fn open_streams(
    pool: &Pool<u32>,
    addr: SocketAddr,
    calls: &Arc<AtomicUsize>,
    n: usize,
) -> Vec<Stream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let client = pool.get(1, tcp_connect(addr, calls)).await.unwrap();
        held.push(client.connect(dst(1), HeaderMap::new()).await.unwrap());
    }
    held
}

/// Waits until the pool holds at most `n` connections; fails with `why` after [`WAIT`].
async fn wait_for_connections(pool: &Pool<u32>, n: usize, why: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while pool.stats().connections > n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why}: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one more echo tunnel through `pool`; returns how many connections it had to open.
async fn one_more_tunnel(pool: &Pool<u32>, addr: SocketAddr, calls: &Arc<AtomicUsize>) -> usize {
    let before = calls.load(Ordering::SeqCst);
    let mut stream = open_streams(pool, addr, calls, 1).await.remove(0);
    assert_eq!(roundtrip(&mut stream, b"again").await, b"again");
    calls.load(Ordering::SeqCst) - before
}

/// A connection that once carried a burst keeps h2's stream tables at the burst's size, so
/// once idle it is closed like a surplus one even when it is the key's last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_closes_a_grown_connection_once_idle() {
    let (pool, addr, calls) = pool_with_stream_limit(1000).await;
    let held = open_streams(&pool, addr, &calls, pool::KEEP_PEAK + 1).await;
    assert_eq!(
        pool.stats().connections,
        1,
        "one connection carries them all"
    );
    drop(held);
    wait_for_connections(&pool, 0, "the grown idle connection was kept").await;
    // The next tunnel gets a fresh connection.
    assert_eq!(one_more_tunnel(&pool, addr, &calls).await, 1);
}

#[test]
fn header_values_format_whole_beyond_the_stack_buffer() {
    let long = "n".repeat(700);
    let v = headers::value(format_args!("k8s.pod.name={long},service.version=v1")).unwrap();
    assert_eq!(
        v.to_str().unwrap(),
        format!("k8s.pod.name={long},service.version=v1")
    );
    let short = headers::value(format_args!("for=\"{}\"", "10.0.0.1:80")).unwrap();
    assert_eq!(short, "for=\"10.0.0.1:80\"");
    assert!(headers::value(format_args!("bad\nvalue")).is_err());
}
