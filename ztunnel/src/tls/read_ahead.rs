//! Larger socket reads under TLS. rustls asks its transport for at most 4 KiB per read, so a
//! bulk HBONE transfer would cost one `recvfrom` per 4 KiB. While reads keep filling what was
//! asked for, `ReadAhead` reads 64 KiB at a time and serves rustls from that buffer; once the
//! socket has less to give, it reads straight into the caller's buffer again and drops its own,
//! so idle and request/response connections hold no extra memory and pay no extra copy.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read size while the socket has plenty buffered.
const AHEAD: usize = 64 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    /// `buf[pos..end]` was read from the socket but not yet handed out. Empty unless bulk.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The last read filled what it asked for, so more is probably waiting in the socket.
    bulk: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            bulk: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.end {
            if !this.bulk {
                let before = out.filled().len();
                let wanted = out.remaining();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                this.bulk = wanted > 0 && out.filled().len() - before == wanted;
                return Poll::Ready(Ok(()));
            }
            if this.buf.is_empty() {
                this.buf = vec![0; AHEAD];
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            (this.pos, this.end) = (0, n);
            // A short read means the socket is drained: back to direct reads.
            this.bulk = n > AHEAD / 2;
        }
        let n = (this.end - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.end && !this.bulk {
            this.buf = Vec::new();
            (this.pos, this.end) = (0, 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads in rustls's 4 KiB steps, counting the reads that reached the transport.
    struct Counting<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let r = Pin::new(&mut self.inner).poll_read(cx, buf);
            if r.is_ready() {
                self.reads += 1;
            }
            r
        }
    }

    #[tokio::test]
    async fn bulk_reads_ahead_and_keeps_every_byte() {
        let (mut tx, rx) = tokio::io::duplex(1024 * 1024);
        let data: Vec<u8> = (0..1024 * 1024 - 7).map(|i| (i % 253) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut ra = ReadAhead::new(Counting {
            inner: rx,
            reads: 0,
        });
        let mut got = Vec::new();
        let mut step = [0u8; 4096];
        loop {
            let n = ra.read(&mut step).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&step[..n]);
        }
        assert_eq!(got, data);
        // 256 reads of 4 KiB without read-ahead; 64 KiB reads need about 16.
        assert!(ra.inner.reads < 40, "{} reads", ra.inner.reads);
        assert!(ra.buf.is_empty(), "a drained reader keeps no buffer");
    }

    #[tokio::test]
    async fn small_messages_need_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut ra = ReadAhead::new(rx);
        for i in 0..10u8 {
            tx.write_all(&[i; 100]).await.unwrap();
            let mut step = [0u8; 4096];
            let n = ra.read(&mut step).await.unwrap();
            assert_eq!(&step[..n], &[i; 100]);
            assert!(ra.buf.is_empty());
        }
    }
}
