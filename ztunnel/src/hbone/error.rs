use std::io;
use std::sync::Arc;

/// Failures of the HBONE layer, split so callers can pick a metric label and decide on retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hbone transport i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("hbone http/2 protocol error: {0}")]
    H2(#[from] h2::Error),
    #[error("hbone peer answered CONNECT with status {0}")]
    Status(u16),
    #[error("hbone connection is closed; open a new one")]
    Closed,
    #[error("hbone peer did not answer in time")]
    Timeout,
    /// A concurrent request for the same pool key attempted the connection and it failed; the
    /// error is shared because the underlying io/h2 errors cannot be cloned.
    #[error("hbone connection attempt shared with concurrent requests failed: {0}")]
    Connect(Arc<Error>),
}

impl Error {
    /// Whether retrying on a fresh connection may succeed: the peer refused or never saw the
    /// request, or the connection broke underneath it. Explicit answers (HTTP status) are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io(_) | Error::Closed | Error::Timeout => true,
            Error::H2(e) => {
                e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            Error::Status(_) => false,
            Error::Connect(e) => e.is_retryable(),
        }
    }
}

/// Maps an h2 stream error onto the io::Error vocabulary used by `AsyncRead`/`AsyncWrite`, so
/// that a peer reset looks like a TCP reset to code copying bytes.
pub(crate) fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"));
    }
    if e.is_go_away() {
        return io::Error::new(io::ErrorKind::ConnectionAborted, e);
    }
    if e.reason().is_some() {
        return io::Error::new(io::ErrorKind::ConnectionReset, e);
    }
    io::Error::other(e)
}
