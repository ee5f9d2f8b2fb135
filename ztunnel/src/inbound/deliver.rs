//! The last hop: from ztunnel to the app, inside the pod's own network namespace.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use crate::capture::{Backend, Exemption};
use crate::pod::Pod;
use crate::proxy::{Context, Error, Fault, Kind};

/// Connects to the app at `target`. With `preserveSourceIp` the socket is transparent and bound
/// to the client's address, so the app sees who really connected; capture routes the replies
/// back to ztunnel by the delivery mark. Backends that steer inbound connections without seeing
/// marks (eBPF sk_lookup) get the socket's source address before the connect, to let it pass.
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
    let exemption = match &pod.capture {
        Some(backend) => exempt(backend.as_ref(), &sock, target, transparent.is_some())?,
        None => None,
    };
    let connected =
        crate::proxy::connect::tcp(sock, target, ctx.config.connect_timeout, "app").await;
    // Established (or failed): later packets of this connection never meet sk_lookup again.
    drop(exemption);
    connected
}

/// Binds the socket (to the pod's own address unless it is already bound transparently) so its
/// source is known, and asks the backend to let that source through.
fn exempt(
    backend: &dyn Backend,
    sock: &TcpSocket,
    target: SocketAddr,
    bound: bool,
) -> Result<Option<Exemption>, Error> {
    let internal = |what: String| Error::new(Kind::Connect, Fault::Internal, what);
    if !bound {
        // The address the kernel would pick anyway for a destination in this namespace.
        sock.bind(SocketAddr::new(target.ip(), 0))
            .map_err(|e| internal(format!("bind delivery socket for {target}: {e}")))?;
    }
    let source = sock
        .local_addr()
        .map_err(|e| internal(format!("delivery socket address: {e}")))?;
    backend
        .exempt_delivery(source)
        .map_err(|e| internal(e.to_string()))
}
