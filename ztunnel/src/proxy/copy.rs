use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::hbone;

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

/// Buffer of a direction's first read after it went idle...
const INITIAL_BUF: usize = 1024;
/// ...grown by this factor while reads keep filling it...
const GROWTH: usize = 4;
/// ...up to this, large enough that a multi-gigabit stream needs few syscalls.
const MAX_BUF: usize = 256 * 1024;

/// A reader that can wait for data without being handed a buffer, so that a direction with
/// nothing to read holds no memory (an idle connection costs no copy buffers).
pub trait ReadReady: AsyncRead {
    /// Ready when a read would not block: data, EOF or an error is waiting. Spurious wake-ups
    /// are allowed (the read then returns `Pending`); no data may be lost.
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for TcpStream {
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Readiness tokio already tracks from epoll: no syscall.
        TcpStream::poll_read_ready(&self, cx)
    }
}

impl ReadReady for hbone::Stream {
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_ready(cx)
    }
}

/// Copies both ways until both sides are done (half-close preserved) or `cancel` fires. The
/// byte counts are exact in every outcome, so metrics of failed connections are right too.
pub async fn bidirectional<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    cancel: &CancellationToken,
) -> (Outcome, Transferred)
where
    D: ReadReady + AsyncWrite + Unpin + ?Sized,
    U: ReadReady + AsyncWrite + Unpin + ?Sized,
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
    A: ReadReady + AsyncWrite + Unpin + ?Sized,
    B: ReadReady + AsyncWrite + Unpin + ?Sized,
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

/// One direction of a copy. It holds a buffer only while bytes flow: waiting for data it has
/// none, and once a read finds nothing more it gives the buffer back. The buffer's size
/// starts small and grows while reads fill it, and the size is kept for the next burst.
struct Direction {
    /// `buf[pos..]` was read but not yet written; no allocation while the direction is idle.
    buf: BytesMut,
    pos: usize,
    /// Capacity of the next buffer taken.
    size: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: BytesMut::new(),
            pos: 0,
            size: INITIAL_BUF,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Whether this direction holds a buffer now.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }

    /// Ready once the reader hit EOF and everything was written and the writer shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: ReadReady + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.buf.len() && !self.read_done {
                if self.buf.capacity() == 0 {
                    if reader.as_mut().poll_read_ready(cx)?.is_pending() {
                        return self.idle(cx, writer);
                    }
                    self.buf = BytesMut::with_capacity(self.size);
                } else if self.buf.capacity() < self.size {
                    // Only between reads (nothing buffered), so growing never moves data.
                    self.buf = BytesMut::with_capacity(self.size);
                }
                self.buf.clear();
                self.pos = 0;
                match tokio_util::io::poll_read_buf(reader.as_mut(), cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => {
                        self.read_done = true;
                        self.buf = BytesMut::new();
                    }
                    Poll::Ready(Ok(n)) => {
                        if n == self.buf.capacity() {
                            self.size = (self.size * GROWTH).min(MAX_BUF);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Drained: give the buffer back until data arrives again.
                        self.buf = BytesMut::new();
                        return self.idle(cx, writer);
                    }
                }
            }
            while self.pos < self.buf.len() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..]))?;
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

    /// Nothing more to send for now: push out what the writer buffered, then wait.
    fn idle<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        if self.need_flush {
            ready!(writer.poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
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

impl<S: ReadReady + Unpin + ?Sized> ReadReady for Counted<'_, S> {
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_read_ready(cx)
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
pub(crate) mod tests;
