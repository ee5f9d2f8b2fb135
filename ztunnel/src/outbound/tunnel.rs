//! Opening an HBONE tunnel from a local pod to a mesh workload.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use nix::sys::socket::MsgFlags;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::PoolKey;
use crate::hbone;
use crate::identity::Identity;
use crate::inbound;
use crate::metrics::labels::{canonical_revision, canonical_service};
use crate::pod::Pod;
use crate::proxy::{Context, Error, Fault, Kind};
use crate::state::Workload;
use crate::tls;

/// Most of the app's first bytes sent with the CONNECT request; the rest follow in the copy.
const EARLY: usize = 4096;

/// Opens the tunnel for `downstream`'s connection. Returns it with the count of the app's
/// bytes already sent through it (read from `downstream` and sent with the request).
pub async fn open(
    ctx: &Arc<Context>,
    pod: &Arc<Pod>,
    downstream: &TcpStream,
    client: SocketAddr,
    src: Option<&Workload>,
    dst_id: &Arc<Identity>,
    target: SocketAddr,
) -> Result<(hbone::Stream, u32), Error> {
    let src_ip = pod
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == target.is_ipv4())
        .unwrap_or(client.ip());
    // The tunnel goes to the destination pod's own address on the HBONE port: its node's
    // ztunnel listens there inside the pod's namespace.
    let peer = SocketAddr::new(target.ip(), ctx.config.listeners.hbone);
    let key = PoolKey {
        src: pod.identity.clone(),
        src_ip,
        dst: dst_id.clone(),
        addr: peer,
    };
    // Same node: the destination pod's HBONE server is in this process, so the tunnel's
    // connection is a pipe to it rather than a TCP connection through the loopback.
    let pooled = match ctx.local.get(target.ip()) {
        Some(server) => {
            ctx.pool
                .get(key, || {
                    let io = inbound::local::connect(ctx, &server, SocketAddr::new(src_ip, 0));
                    let (ctx, pod, dst_id) = (ctx.clone(), pod.clone(), dst_id.clone());
                    async move { handshake(&ctx, &pod, io, peer, dst_id).await }
                })
                .await
        }
        None => {
            ctx.pool
                .get(key, || {
                    let (ctx, pod, dst_id) = (ctx.clone(), pod.clone(), dst_id.clone());
                    async move { connect_tls(&ctx, &pod, peer, dst_id).await }
                })
                .await
        }
    };
    let client_conn = pooled.map_err(|e| {
        Error::new(
            Kind::Hbone,
            Fault::Upstream,
            format!("tunnel to {peer}: {e}"),
        )
    })?;
    let mut headers = hbone::headers::outbound(client);
    if let Some(value) = src.and_then(|w| baggage(w).ok()) {
        headers.insert(hbone::headers::BAGGAGE, value);
    }
    let early = early_data(downstream);
    let sent = u32::try_from(early.len()).expect("at most EARLY bytes are read early");
    match client_conn.connect_with(target, headers, early).await {
        Ok(stream) => Ok((stream, sent)),
        Err(e) => {
            if sent > 0 {
                // The app's bytes were taken from its socket: closing it plainly would now
                // look like a clean end to the app, where unread bytes made it a reset.
                let _ = socket2::SockRef::from(downstream).set_linger(Some(Duration::ZERO));
            }
            Err(Error::new(
                Kind::Hbone,
                Fault::Upstream,
                format!("CONNECT {target} via {peer}: {e}"),
            ))
        }
    }
}

/// What the app has already sent (client-speaks-first protocols such as HTTP send at once),
/// taken without waiting: sent with the CONNECT, it saves the destination a round trip and
/// the tunnel a write. An app that waits for the server to speak first costs one `recv`
/// that finds nothing. EOF and errors are left for the copy to find.
fn early_data(downstream: &TcpStream) -> Bytes {
    let mut buf = [0u8; EARLY];
    match nix::sys::socket::recv(downstream.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) if n > 0 => Bytes::copy_from_slice(&buf[..n]),
        _ => Bytes::new(),
    }
}

async fn connect_tls(
    ctx: &Context,
    pod: &Pod,
    peer: SocketAddr,
    dst_id: Arc<Identity>,
) -> Result<tokio_rustls::client::TlsStream<tls::ReadAhead<tokio::net::TcpStream>>, hbone::Error> {
    let io_err = |e: std::io::Error| hbone::Error::Io(e);
    let sock = pod
        .netns
        .socket(peer, ctx.config.socket_mark, None)
        .await
        .map_err(io_err)?;
    let tcp = tokio::time::timeout(ctx.config.connect_timeout, sock.connect(peer))
        .await
        .map_err(|_| hbone::Error::Timeout)?
        .map_err(io_err)?;
    let _ = tcp.set_nodelay(true);
    handshake(ctx, pod, tls::ReadAhead::new(tcp), peer, dst_id).await
}

/// The TLS client handshake of an HBONE connection over `io`, as `pod`, expecting `dst_id`.
async fn handshake<IO>(
    ctx: &Context,
    pod: &Pod,
    io: IO,
    peer: SocketAddr,
    dst_id: Arc<Identity>,
) -> Result<tokio_rustls::client::TlsStream<IO>, hbone::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tls::Transport + Unpin,
{
    let io_err = |e: std::io::Error| hbone::Error::Io(e);
    let cert = ctx
        .identities
        .fetch(&pod.identity)
        .await
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let config = tls::client_config(
        cert,
        ctx.identities.ca().root_der(),
        vec![Arc::unwrap_or_clone(dst_id)],
    )
    .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream = connector
        .connect(ServerName::IpAddress(peer.ip().into()), io)
        .await
        .map_err(io_err)?;
    tls::apply_send_limit::<IO, _>(stream.get_mut().1);
    Ok(stream)
}

/// Source metadata in the form Istio's ztunnel sends, so the destination (or a waypoint) can
/// label telemetry without looking the client up. Pods are the workload kind we know of.
fn baggage(w: &Workload) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    hbone::headers::value(format_args!(
        "k8s.cluster.name=Kubernetes,k8s.namespace.name={},k8s.pod.name={},service.name={},service.version={}",
        w.namespace,
        w.name,
        canonical_service(w),
        canonical_revision(w)
    ))
}
