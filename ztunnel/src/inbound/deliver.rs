//! The last hop: from ztunnel to the app, inside the pod's own network namespace.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use crate::pod::Pod;
use crate::proxy::{Context, Error, Fault, Kind};

/// Connects to the app at `target`. With `preserveSourceIp` the socket is transparent and bound
/// to the client's address, so the app sees who really connected; capture routes the replies
/// back to ztunnel by the delivery mark.
pub async fn connect(
    ctx: &Context,
    pod: &Pod,
    target: SocketAddr,
    client: IpAddr,
) -> Result<TcpStream, Error> {
    let transparent = (ctx.config.preserve_source_ip
        && client.is_ipv4() == target.is_ipv4()
        && !client.is_loopback())
    .then_some(client);
    let mark = match transparent {
        Some(_) => ctx.config.delivery_mark,
        None => ctx.config.socket_mark,
    };
    let sock = pod
        .netns
        .socket(target, mark, transparent)
        .await
        .map_err(|e| {
            Error::new(
                Kind::Connect,
                Fault::Internal,
                format!("socket for {target}: {e}"),
            )
        })?;
    let stream = tokio::time::timeout(ctx.config.connect_timeout, sock.connect(target))
        .await
        .map_err(|_| {
            Error::new(
                Kind::Connect,
                Fault::Upstream,
                format!("connect to app {target} timed out"),
            )
        })?
        .map_err(|e| {
            Error::new(
                Kind::Connect,
                Fault::Upstream,
                format!("connect to app {target}: {e}"),
            )
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
