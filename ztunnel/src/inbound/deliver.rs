//! The last hop: from ztunnel to the app, inside the pod's own network namespace.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::capture::{Backend, Exemption};
use crate::pod::Pod;
use crate::proxy::connect::Failure;
use crate::proxy::{Context, Error, Fault, Kind};

/// Connect attempts when the source port picked for a delivery clashes with a connection still
/// in use or in TIME_WAIT; with ports taken in turn a second clash in a row is already rare.
const SOURCE_ATTEMPTS: usize = 4;

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
    retry_clashes(|| connect_once(ctx, pod, target, transparent))
        .await?
        .map_err(|failure| failure.into_error("app", target))
}

/// Runs `once` again while its connect fails because the source port we picked is in a
/// four-tuple still in use (see `netns::source_port`): another port, on a fresh socket, does
/// not clash.
async fn retry_clashes<T, F, Fut>(mut once: F) -> Result<Result<T, Failure>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, Failure>, Error>>,
{
    let mut attempt = 1;
    loop {
        match once().await? {
            Err(Failure::Io(e))
                if e.kind() == io::ErrorKind::AddrNotAvailable && attempt < SOURCE_ATTEMPTS =>
            {
                attempt += 1;
            }
            done => return Ok(done),
        }
    }
}

/// Tries to connect to the app once; the outer error is a failure before the connect itself.
async fn connect_once(
    ctx: &Context,
    pod: &Pod,
    target: SocketAddr,
    transparent: Option<IpAddr>,
) -> Result<Result<TcpStream, Failure>, Error> {
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
        Some(backend) => exempt(backend.as_ref(), pod, &sock, target, transparent.is_some())?,
        None => None,
    };
    let connected = crate::proxy::connect::attempt(sock, target, ctx.config.connect_timeout).await;
    // Established (or failed): later packets of this connection never meet sk_lookup again.
    drop(exemption);
    Ok(connected)
}

/// Binds the socket (to the pod's own address unless it is already bound transparently) so its
/// source is known, and asks the backend to let that source through.
fn exempt(
    backend: &dyn Backend,
    pod: &Pod,
    sock: &TcpSocket,
    target: SocketAddr,
    bound: bool,
) -> Result<Option<Exemption>, Error> {
    let internal = |what: String| Error::new(Kind::Connect, Fault::Internal, what);
    if !bound {
        // The address the kernel would pick anyway for a destination in this namespace.
        let ports = pod.netns.source_ports();
        crate::netns::source_port::bind(SockRef::from(sock), target.ip(), ports)
            .map_err(|e| internal(format!("bind delivery socket for {target}: {e}")))?;
    }
    let source = sock
        .local_addr()
        .map_err(|e| internal(format!("delivery socket address: {e}")))?;
    backend
        .exempt_delivery(source)
        .map_err(|e| internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clash() -> Result<Result<u32, Failure>, Error> {
        Ok(Err(Failure::Io(io::ErrorKind::AddrNotAvailable.into())))
    }

    #[tokio::test]
    async fn a_clashing_source_port_is_tried_again_then_given_up() {
        let mut calls = 0;
        let got = retry_clashes(|| {
            calls += 1;
            std::future::ready(if calls < 3 { clash() } else { Ok(Ok(7)) })
        })
        .await;
        assert!(matches!(got, Ok(Ok(7))));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let got = retry_clashes(|| {
            calls += 1;
            std::future::ready(clash())
        })
        .await;
        assert!(matches!(got, Ok(Err(Failure::Io(_)))));
        assert_eq!(calls, SOURCE_ATTEMPTS);
    }

    #[tokio::test]
    async fn other_failures_are_not_retried() {
        let mut calls = 0;
        let got = retry_clashes::<u32, _, _>(|| {
            calls += 1;
            std::future::ready(Ok(Err(Failure::Io(
                io::ErrorKind::ConnectionRefused.into(),
            ))))
        })
        .await;
        assert!(
            matches!(got, Ok(Err(Failure::Io(e))) if e.kind() == io::ErrorKind::ConnectionRefused)
        );
        let mut calls_timeout = 0;
        let got = retry_clashes::<u32, _, _>(|| {
            calls_timeout += 1;
            std::future::ready(Ok(Err(Failure::TimedOut)))
        })
        .await;
        assert!(matches!(got, Ok(Err(Failure::TimedOut))));
        assert_eq!((calls, calls_timeout), (1, 1));
    }
}
