use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
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
pub(crate) const MAX_BUF: usize = 256 * 1024;
/// A read this small that did not fill its buffer releases the buffer's rest.
const SMALL_READ: usize = 16 * 1024;

/// A reader the copy takes owned chunks from, so that a chunk can be handed to the writer as
/// it is: a socket reads into the direction's buffer and splits off what it read; an HBONE
/// stream hands over h2's DATA frames. Either way no byte is copied in user space.
pub trait Source {
    /// Ready when a read would not block: data, EOF or an error is waiting. Spurious wake-ups
    /// are allowed (the read then returns `Pending`); no data may be lost.
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The next bytes, `None` at EOF. A reader that copies out of a socket makes room for at
    /// least `size` bytes in `buf`, reads into it and returns what it read split off from it.
    fn poll_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Option<Bytes>>>;
}

/// A writer that can take a chunk without copying it.
pub trait Sink: AsyncWrite {
    /// Writes a prefix of `chunk` and advances it past what was written.
    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>>;
}

impl Source for TcpStream {
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Readiness tokio already tracks from epoll: no syscall.
        TcpStream::poll_read_ready(&self, cx)
    }

    fn poll_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if buf.capacity() < size {
            // Reclaims the old allocation when every chunk of it has been written, else takes
            // a new one; the buffer is empty between reads, so nothing moves.
            buf.reserve(size);
        }
        let spare = buf.capacity() - buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(self, cx, buf))?;
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        let chunk = buf.split().freeze();
        if n < spare && n <= SMALL_READ {
            // A short read drained the socket and tokio cleared its readiness, so the next
            // read could only find nothing after `reserve` had taken a new allocation (the rest
            // of this one is pinned by the chunk until h2 has sent it): give the rest back now.
            // Only for small reads (a request or a response): a bulk stream's short reads are
            // followed by more at once, and a fresh 256 KiB per read would make glibc trim and
            // refault its heap top.
            *buf = BytesMut::new();
        }
        Poll::Ready(Ok(Some(chunk)))
    }
}

impl Sink for TcpStream {
    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_write(cx, chunk))?;
        chunk.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl Source for hbone::Stream {
    fn poll_read_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_ready(cx)
    }

    fn poll_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _buf: &mut BytesMut,
        _size: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl Sink for hbone::Stream {
    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send_chunk(cx, chunk)
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
    D: Source + Sink + Unpin + ?Sized,
    U: Source + Sink + Unpin + ?Sized,
{
    let (mut down_up, mut up_down) = (Direction::new(), Direction::new());
    let both = std::future::poll_fn(|cx| {
        let du = down_up.poll(cx, Pin::new(&mut *downstream), Pin::new(&mut *upstream))?;
        let ud = up_down.poll(cx, Pin::new(&mut *upstream), Pin::new(&mut *downstream))?;
        match (du, ud) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    });
    let outcome = tokio::select! {
        r = both => match r {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Io(e),
        },
        _ = cancel.cancelled() => Outcome::Cancelled,
    };
    (
        outcome,
        Transferred {
            received: down_up.read,
            sent: up_down.written,
        },
    )
}

/// One direction of a copy. It holds memory only while bytes flow: waiting for data it has
/// none, and once a read finds nothing more it gives its buffer back. A socket reader's
/// buffer starts small and grows while reads fill it, and the size is kept for the next burst.
/// What was read moves on as a chunk of that buffer, so the writer (h2) may keep it until it
/// is on the wire while the next read goes into fresh space.
struct Direction {
    /// Spare capacity a socket reader reads into; none while the direction is idle.
    buf: BytesMut,
    /// Read but not yet written.
    chunk: Bytes,
    /// Capacity the next read gets.
    size: usize,
    read: u64,
    written: u64,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            size: INITIAL_BUF,
            read: 0,
            written: 0,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Whether this direction holds any memory now.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0 || !self.chunk.is_empty()
    }

    /// Ready once the reader hit EOF and everything was written and the writer shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: Source + ?Sized,
        W: Sink + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.chunk.is_empty() && !self.read_done {
                if self.buf.capacity() == 0 && reader.as_mut().poll_read_ready(cx)?.is_pending() {
                    return self.idle(cx, writer);
                }
                match reader.as_mut().poll_chunk(cx, &mut self.buf, self.size) {
                    Poll::Ready(Ok(None)) => {
                        self.read_done = true;
                        self.buf = BytesMut::new();
                    }
                    Poll::Ready(Ok(Some(chunk))) => {
                        if chunk.len() >= self.size {
                            self.size = (self.size * GROWTH).min(MAX_BUF);
                        }
                        self.read += chunk.len() as u64;
                        self.chunk = chunk;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Drained: give the buffer back until data arrives again.
                        self.buf = BytesMut::new();
                        return self.idle(cx, writer);
                    }
                }
            }
            while !self.chunk.is_empty() {
                let n = ready!(writer.as_mut().poll_write_chunk(cx, &mut self.chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer accepted no more bytes",
                    )));
                }
                self.written += n as u64;
                self.need_flush = true;
            }
            // An empty chunk still pins the allocation it was cut from.
            self.chunk = Bytes::new();
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

#[cfg(test)]
pub(crate) mod tests;
