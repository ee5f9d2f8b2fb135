use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::StreamGuard;
use super::error::to_io;

/// Upper bound on one write's reservation, so a huge write cannot claim the whole connection
/// window for a single stream.
const MAX_WRITE: usize = 1024 * 1024;

/// One CONNECT tunnel as a byte stream. Dropping it without `shutdown` resets the stream, so the
/// peer sees an abort rather than a clean EOF.
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Rest of a DATA frame the reader has not consumed yet; its flow-control capacity is
    /// released only as the application takes it, so a slow reader back-pressures the peer.
    pending: Bytes,
    write_closed: bool,
    _guard: Option<StreamGuard>,
}

impl Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Stream {
        Stream {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
            _guard: guard,
        }
    }

    /// Aborts the tunnel in both directions (RST_STREAM CANCEL), e.g. when the upstream
    /// connection failed and the peer must not mistake the end for a clean close.
    pub fn reset(mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }

    /// Ready when a read would not block (data, EOF or an error waits), without taking any
    /// bytes: a received DATA frame stays here until read.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => self.pending = data,
            Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            // END_STREAM: the next read returns EOF (h2 keeps answering None).
            None => {}
        }
        Poll::Ready(Ok(()))
    }

    fn copy_pending(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        if self.pending.is_empty() {
            // An empty slice still pins the whole buffer h2 read the frame into, which other
            // frames share: an idle stream must not keep it alive.
            self.pending = Bytes::new();
        }
        self.recv.flow_control().release_capacity(n).map_err(to_io)
    }

    /// The next received bytes as they are, without copying them out of h2's frame; `None`
    /// at END_STREAM. Their window goes back to the peer now: the caller takes one chunk at a
    /// time and writes it before asking for the next, so a slow reader still back-pressures.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Ok(None)),
            }
        }
        let chunk = std::mem::take(&mut self.pending);
        self.recv
            .flow_control()
            .release_capacity(chunk.len())
            .map_err(to_io)?;
        Poll::Ready(Ok(Some(chunk)))
    }

    /// Sends a prefix of `chunk` as DATA without copying it (h2 keeps a reference until the
    /// frame is written) and advances `chunk` past it; returns how many bytes went.
    pub fn poll_send_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, chunk.len()))?;
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    /// Waits until the stream may send some of `len` more bytes and returns how many.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "hbone stream already shut down for writing",
            )));
        }
        let want = len.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        loop {
            let granted = self.send.capacity();
            if granted > 0 {
                return Poll::Ready(Ok(granted.min(want)));
            }
            // A reset while we wait for window would otherwise leave us pending forever.
            if let Poll::Ready(reset) = self.send.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("hbone stream reset by peer: {reason}"),
                    ),
                    Err(e) => to_io(e),
                }));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "hbone stream closed",
                    )))
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                return Poll::Ready(this.copy_pending(buf));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                // END_STREAM: the peer half-closed, which is EOF for us.
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes queued data from its connection task; there is nothing to push from here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        this.write_closed = true;
        // Return any window we asked for but will never use to the connection.
        this.send.reserve_capacity(0);
        Poll::Ready(this.send.send_data(Bytes::new(), true).map_err(to_io))
    }
}
