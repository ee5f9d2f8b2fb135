//! How much rustls seals per write, by what the connection runs over. rustls takes at most its
//! buffer limit (64 KiB by default) of plaintext per write and tokio-rustls writes what it
//! sealed before taking more, so over TCP a 256 KiB DATA frame cost four `writev` calls, plus a
//! fifth for the 9 bytes the frame header pushed past them; with room for the whole frame it
//! goes out in one. The in-process pipe between two pods of one node has no system call to
//! save, and there the larger batches measured slower, so it keeps rustls's default.

use tokio::io::DuplexStream;
use tokio::net::TcpStream;

use super::ReadAhead;

/// A transport an HBONE connection's TLS runs over.
pub trait Transport {
    /// Plaintext rustls takes per write, which also bounds the sealed records it holds unsent
    /// (only while the socket is full: idle connections hold none); `None` keeps rustls's own.
    const SEND_LIMIT: Option<usize>;
}

/// The copy's largest chunk and its frame header, sealed in one go.
impl Transport for ReadAhead<TcpStream> {
    const SEND_LIMIT: Option<usize> = Some(crate::proxy::copy::MAX_BUF + 1024);
}

impl Transport for DuplexStream {
    const SEND_LIMIT: Option<usize> = None;
}

/// Applies `IO`'s limit to an established connection.
pub fn apply<IO: Transport, D>(conn: &mut rustls::ConnectionCommon<D>) {
    if let Some(limit) = IO::SEND_LIMIT {
        conn.set_buffer_limit(Some(limit));
    }
}
