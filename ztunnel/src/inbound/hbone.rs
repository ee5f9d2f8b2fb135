//! Inbound HBONE: mutual TLS with the peer ztunnel (client certificate required), then one
//! HTTP/2 CONNECT stream per proxied connection, each authorized and delivered on its own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::deliver;
use super::tracker::Registration;
use crate::hbone::{self, Incoming};
use crate::identity::Identity;
use crate::metrics::{ConnectionGuard, Endpoints, RejectReason, Reporter};
use crate::pod::Pod;
use crate::proxy::access::Entry;
use crate::proxy::copy;
use crate::proxy::{Context, Error, Fault, Kind};
use crate::tls;

/// A peer that opens TCP and never finishes the handshake holds a descriptor; cut it off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    crate::pod::accept_loop(
        &ctx,
        &pod,
        listener,
        "inbound-hbone",
        move |ctx, pod, tcp, peer| {
            let drain = ctx.draining.clone().cancelled_owned();
            handle(
                ctx,
                pod,
                tls::ReadAhead::new(tcp),
                peer,
                acceptor.clone(),
                drain,
            )
        },
    )
    .await
}

/// Serves one HBONE connection from `peer` over `io` (a TCP connection, or the pipe of a tunnel
/// from a pod of this node) until the client closes it; when `drain` resolves it sends GOAWAY
/// and lets the tunnels already accepted finish.
pub(super) async fn handle<IO>(
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    io: IO,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    drain: impl Future<Output = ()> + Send,
) where
    IO: AsyncRead + AsyncWrite + tls::Transport + Unpin,
{
    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.inc_inbound_rejected(RejectReason::Tls);
            tracing::info!(pod = %pod.uid, %peer, error = %e, "inbound TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.inc_inbound_rejected(RejectReason::Tls);
            tracing::info!(pod = %pod.uid, %peer, "inbound TLS handshake timed out");
            return;
        }
    };
    tls::apply_send_limit::<IO, _>(stream.get_mut().1);
    let peer_id = match tls::peer_identity(stream.get_ref().1) {
        Ok(id) => Arc::new(id),
        Err(e) => {
            ctx.metrics.inc_inbound_rejected(RejectReason::Tls);
            tracing::info!(pod = %pod.uid, %peer, error = %e, "inbound peer has no usable identity");
            return;
        }
    };
    let metrics = ctx.metrics.clone();
    let server = hbone::Server::new(ctx.hbone.clone(), {
        let ctx = ctx.clone();
        let pod = pod.clone();
        move |incoming: Incoming| tunnel(ctx.clone(), pod.clone(), incoming, peer, peer_id.clone())
    })
    .on_reject(move |reason| {
        metrics.inc_inbound_rejected(match reason {
            hbone::RejectReason::Method => RejectReason::Method,
            hbone::RejectReason::Authority => RejectReason::Authority,
            hbone::RejectReason::Headers => RejectReason::Headers,
        })
    });
    let result = server.serve(stream, drain).await;
    crate::memory::tunnel_connection_closed();
    if let Err(e) = result {
        tracing::debug!(pod = %pod.uid, %peer, error = %e, "HBONE connection ended with an error");
    }
}

fn tunnel(
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    incoming: Incoming,
    peer: SocketAddr,
    peer_id: Arc<Identity>,
) -> impl Future<Output = ()> + Send + 'static {
    let start = Instant::now();
    let target = crate::pod::normalize(incoming.authority);
    // Setting up needs far more state than copying (the request, labels, the connect future):
    // boxed, it is freed once connected. It is built here, outside the task's own future, so
    // that the request is not also kept in the task for the life of the connection (an async
    // fn keeps a slot for each argument even after moving it on).
    let setup =
        Box::pin(
            async move { establish(&ctx, &pod, incoming, target, peer, &peer_id, start).await },
        );
    async move {
        // Destructured in the pattern: a binding of the whole struct would take its own slot.
        // Everything the end of the connection reports is in the registration, shared with the
        // tracker, not in slots of this task.
        let Some(Established {
            mut downstream,
            mut upstream,
            conn,
            guard,
        }) = setup.await
        else {
            return;
        };
        let (outcome, moved) =
            copy::bidirectional(&mut downstream, &mut upstream, &conn.cancel).await;
        let src_identity = conn.src_identity.as_deref();
        entry(&conn.pod, conn.src, src_identity, conn.dst, conn.start)
            .finished(guard, outcome, moved);
    }
}

/// A tunnel whose app connection is up: what the copy needs and what its end reports.
struct Established {
    downstream: hbone::Stream,
    upstream: TcpStream,
    conn: Registration,
    guard: ConnectionGuard,
}

/// The access log line of a tunnel.
fn entry<'a>(
    pod: &'a Pod,
    peer: SocketAddr,
    peer_id: Option<&'a Identity>,
    target: SocketAddr,
    start: Instant,
) -> Entry<'a> {
    Entry {
        direction: "inbound",
        src: peer,
        src_workload: None,
        src_identity: peer_id,
        dst: target,
        dst_workload: Some(&pod.uid.0),
        dst_service: None,
        dst_identity: Some(&pod.identity),
        mtls: true,
        start,
    }
}

/// Checks and accepts the tunnel to `target` (its normalized authority) and connects to the
/// app; `None` once a failure was reported.
async fn establish(
    ctx: &Context,
    pod: &Arc<Pod>,
    incoming: Incoming,
    target: SocketAddr,
    peer: SocketAddr,
    peer_id: &Arc<Identity>,
    start: Instant,
) -> Option<Established> {
    let snap = ctx.store.load();
    let summary = entry(pod, peer, Some(peer_id), target, start);
    if !pod.ips.contains(&target.ip()) {
        ctx.metrics.inc_inbound_rejected(RejectReason::Authority);
        summary.failed(&Error::new(
            Kind::Authority,
            Fault::Downstream,
            format!("CONNECT target {target} is not an address of this pod"),
        ));
        let _ = incoming.reject(400);
        return None;
    }
    let Some(workload) = snap.workload_by_uid(&pod.uid).cloned() else {
        let _ = incoming.reject(503);
        return None;
    };
    let src = snap.workload_by_ip(peer.ip()).cloned();
    let endpoints = Endpoints {
        reporter: Reporter::Destination,
        src: src.as_deref(),
        src_identity: Some(peer_id),
        dst: Some(&workload),
        dst_identity: Some(&pod.identity),
        service: None,
        mtls: true,
    };
    if let Err(err) = super::authorize(&snap, &workload, Some(peer_id), peer, target.port()) {
        ctx.metrics.inc_inbound_rejected(RejectReason::Policy);
        ctx.metrics
            .connection_failed(endpoints, err.response_flags());
        summary.failed(&err);
        let _ = incoming.reject(401);
        return None;
    }
    drop(snap);
    let upstream = match deliver::connect(ctx, pod, target, peer.ip()).await {
        Ok(s) => s,
        Err(err) => {
            ctx.metrics
                .connection_failed(endpoints, err.response_flags());
            summary.failed(&err);
            let _ = incoming.reject(503);
            return None;
        }
    };
    let downstream = match incoming.accept() {
        Ok(s) => s,
        Err(e) => {
            let err = Error::new(Kind::Hbone, Fault::Downstream, e);
            ctx.metrics
                .connection_failed(endpoints, err.response_flags());
            summary.failed(&err);
            return None;
        }
    };
    let conn = ctx
        .tracker
        .register(pod.clone(), Some(peer_id.clone()), peer, target, start);
    let guard = ctx.metrics.connection(endpoints);
    Some(Established {
        downstream,
        upstream,
        conn,
        guard,
    })
}
