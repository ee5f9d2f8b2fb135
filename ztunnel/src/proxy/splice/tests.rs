use super::*;
use crate::proxy::copy::tests::{hello_world_with_half_close, tcp_pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two connected loopback pairs: (client, proxy's downstream), (proxy's upstream, server).
async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
    (tcp_pair().await, tcp_pair().await)
}

#[tokio::test]
async fn small_exchange_keeps_half_close_and_counts() {
    let ((mut client, mut down), (mut up, mut server)) = pairs().await;
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
async fn bulk_switches_to_splice_and_keeps_every_byte() {
    let ((client, mut down), (mut up, mut server)) = pairs().await;
    let data: Vec<u8> = (0..8 * 1024 * 1024 + 13).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let mut client = client;
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.shutdown().await.unwrap();
        got
    });
    let mut dir = Direction::new();
    let mut spliced = false;
    std::future::poll_fn(|cx| {
        let r = dir.poll(cx, &mut down, &mut up);
        spliced |= matches!(dir.mode, Mode::Splice { .. });
        r
    })
    .await
    .unwrap();
    assert!(spliced, "a bulk direction must switch to splice");
    assert_eq!(dir.moved, data.len() as u64);
    assert_eq!(reader.await.unwrap(), data);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn cancel_stops_a_spliced_copy_with_its_counts() {
    let ((mut client, mut down), (mut up, mut server)) = pairs().await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let proxy = tokio::spawn(async move { bidirectional(&mut down, &mut up, &c2).await });
    let chunk = vec![7u8; SPLICE_AFTER as usize * 2];
    client.write_all(&chunk).await.unwrap();
    let mut buf = vec![0u8; chunk.len()];
    server.read_exact(&mut buf).await.unwrap();
    cancel.cancel();
    let (outcome, t) = proxy.await.unwrap();
    assert!(matches!(outcome, Outcome::Cancelled), "{outcome:?}");
    assert_eq!(t.received, chunk.len() as u64);
}

#[tokio::test]
async fn an_idle_direction_holds_no_buffer() {
    let ((mut client, mut down), (mut up, mut server)) = pairs().await;
    let mut dir = Direction::new();
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    let copy = async {
        std::future::poll_fn(|cx| {
            let r = dir.poll(cx, &mut down, &mut up);
            assert!(r.is_pending(), "the source is still open");
            // Pending once the message went through and the socket has nothing more.
            Poll::Ready(())
        })
        .await
    };
    // The message is readable (loopback), so one poll moves it and then finds nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    copy.await;
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(dir.moved, 4);
    assert!(
        matches!(&dir.mode, Mode::Copy { buf, .. } if buf.capacity() == 0),
        "the buffer is given back when the source has nothing more"
    );
}
