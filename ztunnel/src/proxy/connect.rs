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
    let stream = tokio::time::timeout(timeout, sock.connect(target))
        .await
        .map_err(|_| {
            Error::new(
                Kind::Connect,
                Fault::Upstream,
                format!("connect to {what} {target} timed out"),
            )
        })?
        .map_err(|e| {
            Error::new(
                Kind::Connect,
                Fault::Upstream,
                format!("connect to {what} {target}: {e}"),
            )
        })?;
    // Proxied bytes are already batched by the client; delaying them only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
