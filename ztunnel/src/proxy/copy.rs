use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Bytes moved by one proxied connection, named from the downstream (client) side as Istio's
/// metrics are: `received` came from the client, `sent` went back to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub received: u64,
    pub sent: u64,
}

/// How a copy ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions finished with EOF.
    Done,
    Io(io::Error),
    /// The connection was closed on purpose (policy change or drain deadline).
    Cancelled,
}

/// Buffer per direction: large enough that a multi-gigabit stream needs few syscalls; tokio
/// allocates it only for connections that are copying.
const BUF: usize = 64 * 1024;

/// Copies both ways until both sides are done (half-close preserved) or `cancel` fires. The
/// byte counts are exact in every outcome, so metrics of failed connections are right too.
pub async fn bidirectional<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    cancel: &CancellationToken,
) -> (Outcome, Transferred)
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut counted = Counted {
        inner: downstream,
        read: 0,
        written: 0,
    };
    let outcome = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut counted, upstream, BUF, BUF) => match r {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Io(e),
        },
        _ = cancel.cancelled() => Outcome::Cancelled,
    };
    (
        outcome,
        Transferred {
            received: counted.read,
            sent: counted.written,
        },
    )
}

struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    read: u64,
    written: u64,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written += *n as u64;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions_and_half_close() {
        let (mut client, mut down) = tokio::io::duplex(1024);
        let (mut up, mut server) = tokio::io::duplex(1024);
        let cancel = CancellationToken::new();
        let proxy = tokio::spawn(async move { bidirectional(&mut down, &mut up, &cancel).await });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        server.write_all(b"world!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let (outcome, t) = proxy.await.unwrap();
        assert!(matches!(outcome, Outcome::Done));
        assert_eq!(
            t,
            Transferred {
                received: 5,
                sent: 6
            }
        );
    }

    #[tokio::test]
    async fn cancel_stops_and_keeps_counts() {
        let (mut client, mut down) = tokio::io::duplex(1024);
        let (mut up, mut server) = tokio::io::duplex(1024);
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
}
