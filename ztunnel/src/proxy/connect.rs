use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use super::{Error, Fault, Kind};

/// Connects a prepared socket (created in a pod's namespace, marked, maybe bound) to `target`
/// within `timeout`, as a data-path error naming `what` we were connecting to.
pub async fn tcp(
    sock: TcpSocket,
    target: SocketAddr,
    timeout: Duration,
    what: &str,
) -> Result<TcpStream, Error> {
    attempt(sock, target, timeout)
        .await
        .map_err(|f| f.into_error(what, target))
}

/// Why one connect attempt failed, for callers that try again on some failures.
#[derive(Debug)]
pub enum Failure {
    TimedOut,
    Io(io::Error),
}

impl Failure {
    pub fn into_error(self, what: &str, target: SocketAddr) -> Error {
        let reason = match self {
            Failure::TimedOut => format!("connect to {what} {target} timed out"),
            Failure::Io(e) => format!("connect to {what} {target}: {e}"),
        };
        Error::new(Kind::Connect, Fault::Upstream, reason)
    }
}

/// [`tcp`] without the error mapping.
pub async fn attempt(
    sock: TcpSocket,
    target: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let stream = tokio::time::timeout(timeout, sock.connect(target))
        .await
        .map_err(|_| Failure::TimedOut)?
        .map_err(Failure::Io)?;
    // Proxied bytes are already batched by the client; delaying them only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
