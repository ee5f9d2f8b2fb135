use std::future::poll_fn;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use bytes::Bytes;

use super::*;

/// Both ends of a loopback TCP connection: copies need readers that report readiness.
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// "hello" from the client, then its half-close; "world!" back from the server once that
/// arrived, then the server's: each side reads exactly what the other sent.
pub(crate) async fn hello_world_with_half_close(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"hello").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    // The other direction still works after the first one closed.
    server.write_all(b"world!").await.unwrap();
    server.shutdown().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"world!");
}

/// Polls `dir` once, copying whatever `from` has to `to`.
async fn step(dir: &mut Direction, from: &mut TcpStream, to: &mut TcpStream) -> Poll<()> {
    poll_fn(|cx| {
        Poll::Ready(
            dir.poll(cx, Pin::new(&mut *from), Pin::new(&mut *to))
                .map(|r| r.unwrap()),
        )
    })
    .await
}

#[tokio::test]
async fn counts_both_directions_and_half_close() {
    let (mut client, mut down) = tcp_pair().await;
    let (mut up, mut server) = tcp_pair().await;
    let cancel = CancellationToken::new();
    let proxy = tokio::spawn(async move { bidirectional(&mut down, &mut up, &cancel).await });
    hello_world_with_half_close(&mut client, &mut server).await;
    let (outcome, t) = proxy.await.unwrap();
    assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    assert_eq!(
        t,
        Transferred {
            received: 5,
            sent: 6
        }
    );
}

#[tokio::test]
async fn bulk_transfer_grows_the_buffer_and_keeps_every_byte() {
    let (mut client, mut down) = tcp_pair().await;
    let (mut up, mut server) = tcp_pair().await;
    let cancel = CancellationToken::new();
    let proxy = tokio::spawn(async move { bidirectional(&mut down, &mut up, &cancel).await });
    let data: Vec<u8> = (0..3 * MAX_BUF + 17).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    server.shutdown().await.unwrap();
    drop(writer.await.unwrap());
    let (outcome, t) = proxy.await.unwrap();
    assert!(matches!(outcome, Outcome::Done));
    assert_eq!(t.received, data.len() as u64);
}

#[tokio::test]
async fn cancel_stops_and_keeps_counts() {
    let (mut client, mut down) = tcp_pair().await;
    let (mut up, mut server) = tcp_pair().await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let proxy = tokio::spawn(async move { bidirectional(&mut down, &mut up, &c2).await });
    client.write_all(b"abc").await.unwrap();
    let mut buf = [0u8; 3];
    server.read_exact(&mut buf).await.unwrap();
    cancel.cancel();
    let (outcome, t) = proxy.await.unwrap();
    assert!(matches!(outcome, Outcome::Cancelled));
    assert_eq!(t.received, 3);
}

#[tokio::test]
async fn idle_direction_holds_no_buffer_yet_copies_every_byte_and_the_half_close() {
    let (mut client, mut from) = tcp_pair().await;
    let (mut to, mut server) = tcp_pair().await;
    let mut dir = Direction::new();
    assert!(step(&mut dir, &mut from, &mut to).await.is_pending());
    assert!(
        !dir.holds_buffer(),
        "a direction with nothing to read took a buffer"
    );

    for round in 0..2 {
        let data: Vec<u8> = (0..2 * MAX_BUF + 5 + round)
            .map(|i| (i % 253) as u8)
            .collect();
        client.write_all(&data).await.unwrap();
        let mut got = vec![0; data.len()];
        let mut filled = 0;
        while filled < data.len() {
            let _ = step(&mut dir, &mut from, &mut to).await;
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(20), server.read(&mut got[filled..]))
                    .await
            {
                filled += n;
            }
        }
        assert_eq!(got, data, "round {round}");
        // Drained: the next read finds nothing and the buffer goes back.
        assert!(step(&mut dir, &mut from, &mut to).await.is_pending());
        assert!(
            !dir.holds_buffer(),
            "round {round}: an idle direction kept its buffer"
        );
    }
    assert_eq!(dir.size, MAX_BUF, "bulk reads grow the next buffer");

    client.shutdown().await.unwrap();
    let mut done = Poll::Pending;
    for _ in 0..100 {
        done = step(&mut dir, &mut from, &mut to).await;
        if done.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done.is_ready(), "EOF did not finish the direction");
    assert!(!dir.holds_buffer());
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "the half-close reached the far side as EOF"
    );
    // The other direction still works after this one half-closed.
    server.write_all(b"reply").await.unwrap();
    let mut back = [0; 5];
    to.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"reply");
}

/// A writer that keeps every chunk it is given, as h2 does until the frame is on the wire.
#[derive(Default)]
struct Holding {
    chunks: Vec<Bytes>,
}

impl AsyncWrite for Holding {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().chunks.push(Bytes::copy_from_slice(b));
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Sink for Holding {
    fn poll_write_chunk(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = chunk.len().min(7_000);
        self.get_mut().chunks.push(chunk.split_to(n));
        Poll::Ready(Ok(n))
    }
}

/// Chunks handed on without a copy share the direction's buffer: reads after them, including
/// ones into a reclaimed or regrown buffer, must never overwrite bytes a writer still holds.
#[tokio::test]
async fn chunks_a_writer_still_holds_are_never_overwritten() {
    let (mut client, mut from) = tcp_pair().await;
    let mut dir = Direction::new();
    let mut sink = Holding::default();
    let data: Vec<u8> = (0..3 * MAX_BUF + 11).map(|i| (i % 249) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(10_000) {
            client.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        client.shutdown().await.unwrap();
    });
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        poll_fn(|cx| dir.poll(cx, Pin::new(&mut from), Pin::new(&mut sink))),
    )
    .await
    .unwrap();
    done.unwrap();
    writer.await.unwrap();
    let held: Vec<u8> = sink.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert!(held == data, "held {} bytes, not the sent ones", held.len());
    assert_eq!(dir.read, data.len() as u64);
    assert_eq!(dir.written, data.len() as u64);
    assert!(!dir.holds_buffer(), "a finished direction keeps no memory");
}

/// A read that found less than the buffer's room drained the socket: the rest of the buffer is
/// given back at once, so the next wait for data (a request/response connection's usual state)
/// holds no memory and the next read does not allocate beside the chunk still in flight.
#[tokio::test]
async fn a_short_read_gives_the_rest_of_the_buffer_back() {
    let (mut client, mut from) = tcp_pair().await;
    client.write_all(&[7; 100]).await.unwrap();
    from.readable().await.unwrap();
    let mut buf = BytesMut::new();
    let chunk = poll_fn(|cx| Pin::new(&mut from).poll_chunk(cx, &mut buf, 4096))
        .await
        .unwrap()
        .expect("100 bytes were sent");
    assert_eq!(&chunk[..], &[7; 100][..]);
    assert_eq!(buf.capacity(), 0, "the drained read kept its buffer's rest");

    // Reads that fill their room (more may be behind them) still hand on every byte, in order,
    // after the buffer was given back.
    client.write_all(&[8; 3000]).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3000 {
        from.readable().await.unwrap();
        let chunk = poll_fn(|cx| Pin::new(&mut from).poll_chunk(cx, &mut buf, 1024))
            .await
            .unwrap()
            .expect("3000 bytes were sent");
        assert!(chunk.len() <= 1024);
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, vec![8; 3000]);
}
