use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

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

/// First buffer of each direction: an idle connection holds only this (four of them for a
/// connection whose both tunnel ends are in this process), instead of a bulk-sized buffer.
const INITIAL_BUF: usize = 1024;
/// A direction whose reads keep filling its buffer grows it by this factor...
const GROWTH: usize = 4;
/// ...up to this, large enough that a multi-gigabit stream needs few syscalls.
const MAX_BUF: usize = 64 * 1024;

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
        r = copy_both(&mut counted, upstream) => match r {
            Ok(()) => Outcome::Done,
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

async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::new(), Direction::new());
    std::future::poll_fn(|cx| {
        let ab = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (ab, ba) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of a copy, with a buffer that starts small and grows while reads fill it.
struct Direction {
    buf: Vec<u8>,
    /// `buf[pos..end]` was read but not yet written.
    pos: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: vec![0; INITIAL_BUF],
            pos: 0,
            end: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Ready once the reader hit EOF and everything was written and the writer shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.end && !self.read_done {
                // Only between reads (nothing buffered), so growing never moves data.
                if self.end == self.buf.len() && self.buf.len() < MAX_BUF {
                    self.buf = vec![0; (self.buf.len() * GROWTH).min(MAX_BUF)];
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.pos = 0;
                        self.end = n;
                        self.read_done = n == 0;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to send for now: push out what the writer buffered.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.end {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer accepted no more bytes",
                    )));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
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
    async fn bulk_transfer_grows_the_buffer_and_keeps_every_byte() {
        let (mut client, mut down) = tokio::io::duplex(256 * 1024);
        let (mut up, mut server) = tokio::io::duplex(256 * 1024);
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
