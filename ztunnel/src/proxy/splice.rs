//! The byte copy between two plain TCP sockets (passthrough and inbound plaintext): bulk data
//! moves socket -> pipe -> socket inside the kernel with splice(2), so it never crosses into
//! user space. A direction starts with the ordinary buffered copy and switches to splice only
//! after it has moved `SPLICE_AFTER` bytes: short request/response connections then pay no pipe
//! (two descriptors and three syscalls), and bulk transfers save two copies per byte.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::task::{ready, Context, Poll};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::copy::{Outcome, Transferred};

/// Bytes a direction copies through user space before it is worth a pipe.
const SPLICE_AFTER: u64 = 256 * 1024;
/// Buffer of the user-space phase.
const BUF: usize = 16 * 1024;
/// Pipe capacity asked for: one splice then moves up to this much (the default is 64 KiB).
/// 1 MiB is the default `pipe-max-size`, so it needs no privilege; against 256 KiB it cut
/// ztunnel's CPU per passthrough byte by a quarter (fewer splices and wake-ups per byte). The
/// pipe only pins pages while bytes are in it, but its slots count against the per-user pipe
/// limit (`pipe-user-pages-soft`, 64 MiB) for a process without CAP_SYS_RESOURCE: beyond about
/// 64 bulk directions at once, new pipes stay at the kernel's default size.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Copies both ways between two TCP sockets until both sides are done (half-close preserved)
/// or `cancel` fires. Counts are from the downstream side, as in [`super::copy::bidirectional`].
pub async fn bidirectional(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    cancel: &CancellationToken,
) -> (Outcome, Transferred) {
    let (mut received, mut sent) = (Direction::new(), Direction::new());
    let copied = std::future::poll_fn(|cx| {
        let r = received.poll(cx, downstream, upstream)?;
        let s = sent.poll(cx, upstream, downstream)?;
        match (r, s) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok::<(), io::Error>(())),
            _ => Poll::Pending,
        }
    });
    let outcome = tokio::select! {
        r = copied => match r {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Io(e),
        },
        _ = cancel.cancelled() => Outcome::Cancelled,
    };
    (
        outcome,
        Transferred {
            received: received.moved,
            sent: sent.moved,
        },
    )
}

struct Direction {
    mode: Mode,
    /// Bytes written to the destination so far.
    moved: u64,
    read_done: bool,
    done: bool,
}

enum Mode {
    /// `buf[pos..end]` was read but not yet written; the buffer is allocated on first use.
    Copy {
        buf: Vec<u8>,
        pos: usize,
        end: usize,
    },
    /// `queued` bytes sit in the pipe on their way to the destination.
    Splice { pipe: Pipe, queued: usize },
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A bigger pipe moves more per splice; the kernel may refuse (pipe-max-size, per-user
        // pipe limits), and the default 64 KiB still works.
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(Pipe { read, write })
    }
}

impl Direction {
    fn new() -> Direction {
        Direction {
            mode: Mode::Copy {
                buf: Vec::new(),
                pos: 0,
                end: 0,
            },
            moved: 0,
            read_done: false,
            done: false,
        }
    }

    /// Ready once the source hit EOF, everything reached the destination and it was shut down.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            let drained = match &mut self.mode {
                Mode::Copy { buf, pos, end } => {
                    ready!(copy_step(
                        cx,
                        src,
                        dst,
                        buf,
                        pos,
                        end,
                        &mut self.moved,
                        &mut self.read_done
                    ))?;
                    *pos == *end
                }
                Mode::Splice { pipe, queued } => {
                    ready!(splice_step(
                        cx,
                        src,
                        dst,
                        pipe,
                        queued,
                        &mut self.moved,
                        &mut self.read_done
                    ))?;
                    *queued == 0
                }
            };
            if self.read_done && drained {
                ready!(std::pin::Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if drained && self.moved >= SPLICE_AFTER && matches!(self.mode, Mode::Copy { .. }) {
                // Without a pipe (descriptor limit) the copy simply stays in user space.
                if let Ok(pipe) = Pipe::new() {
                    self.mode = Mode::Splice { pipe, queued: 0 };
                }
            }
        }
    }
}

/// One read and its write through user space. Ready when something moved or the source ended.
#[allow(clippy::too_many_arguments)]
fn copy_step(
    cx: &mut Context<'_>,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    end: &mut usize,
    moved: &mut u64,
    read_done: &mut bool,
) -> Poll<io::Result<()>> {
    if *pos == *end && !*read_done {
        // Hold a buffer only while there is data: an idle direction costs nothing.
        if src.poll_read_ready(cx)?.is_pending() {
            *buf = Vec::new();
            return Poll::Pending;
        }
        if buf.is_empty() {
            buf.resize(BUF, 0);
        }
        let mut rb = ReadBuf::new(buf);
        if std::pin::Pin::new(&mut *src)
            .poll_read(cx, &mut rb)?
            .is_pending()
        {
            *buf = Vec::new();
            return Poll::Pending;
        }
        let n = rb.filled().len();
        *pos = 0;
        *end = n;
        *read_done = n == 0;
    }
    while *pos < *end {
        let n = ready!(std::pin::Pin::new(&mut *dst).poll_write(cx, &buf[*pos..*end]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *pos += n;
        *moved += n as u64;
    }
    Poll::Ready(Ok(()))
}

/// Fills the pipe from the source when it is empty, then drains it into the destination.
fn splice_step(
    cx: &mut Context<'_>,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    pipe: &Pipe,
    queued: &mut usize,
    moved: &mut u64,
    read_done: &mut bool,
) -> Poll<io::Result<()>> {
    if *queued == 0 && !*read_done {
        loop {
            ready!(src.poll_read_ready(cx))?;
            // try_io clears the readiness on WouldBlock, so the next poll waits for epoll.
            match src.try_io(Interest::READABLE, || {
                move_bytes(src.as_fd(), pipe.write.as_fd(), PIPE_SIZE as usize)
            }) {
                Ok(0) => {
                    *read_done = true;
                    break;
                }
                Ok(n) => {
                    *queued = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
    while *queued > 0 {
        ready!(dst.poll_write_ready(cx))?;
        match dst.try_io(Interest::WRITABLE, || {
            move_bytes(pipe.read.as_fd(), dst.as_fd(), *queued)
        }) {
            Ok(n) => {
                *queued -= n;
                *moved += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

fn move_bytes(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests;
