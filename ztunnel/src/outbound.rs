//! The outbound proxy: connections an enrolled pod's apps open, redirected to the pod's
//! outbound listener, carried through HBONE to mesh workloads or passed through as plain TCP.

pub mod route;
mod tunnel;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::identity::Identity;
use crate::metrics::{ConnectionGuard, Endpoints, Reporter, ResponseFlags};
use crate::pod::Pod;
use crate::proxy::access::Entry;
use crate::proxy::{copy, splice};
use crate::proxy::{Context, Error, Fault, Kind};
use crate::socket;
use crate::state::{Service, Workload};
use route::Route;

/// Pooled HBONE connections are shared by connections with the same source and destination
/// identities and peer address. The source address is part of the key because the socket lives
/// in the source pod's network namespace and carries its address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Arc<Identity>,
    pub src_ip: IpAddr,
    pub dst: Arc<Identity>,
    pub addr: SocketAddr,
}

/// Round-robin position for service endpoints, shared by all pods of the node.
static NEXT_ENDPOINT: AtomicUsize = AtomicUsize::new(0);

pub async fn serve(ctx: Arc<Context>, pod: Arc<Pod>, listener: TcpListener) {
    crate::pod::accept_loop(&ctx, &pod, listener, "outbound", handle).await
}

fn handle(
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    downstream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send + 'static {
    // Setting up needs far more state than copying (route, labels, the connect futures):
    // boxed, it is freed once connected. It is built here, outside the task's own future, so
    // that the arguments it consumes do not also keep slots in the task for the life of the
    // connection (an async fn keeps one for each argument even after moving it on).
    let setup = {
        let pod = pod.clone();
        Box::pin(async move { establish(&ctx, &pod, downstream, peer).await })
    };
    async move {
        // Destructured in the pattern: a binding of the whole struct would take its own slot.
        let Some(Established {
            mut downstream,
            mut upstream,
            guard,
            summary,
        }) = setup.await
        else {
            return;
        };
        let (outcome, mut moved) = match &mut upstream {
            Upstream::Tunnel(s) => copy::bidirectional(&mut downstream, s, &pod.cancel).await,
            // The splice state (pipes, its user-space phase) is about twice the copy's: boxed,
            // so tunnelled connections, the many, do not carry its size in their tasks.
            Upstream::Tcp(s) => {
                Box::pin(splice::bidirectional(&mut downstream, s, &pod.cancel)).await
            }
        };
        moved.received += u64::from(summary.early);
        summary.entry(&pod).finished(guard, outcome, moved);
    }
}

/// A connection whose upstream is connected: what the copy needs and what its end reports.
struct Established {
    downstream: TcpStream,
    upstream: Upstream,
    guard: ConnectionGuard,
    summary: Summary,
}

/// The access log fields of a connection, owned so they can outlive the set-up.
struct Summary {
    src: SocketAddr,
    dst: SocketAddr,
    dst_workload: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
    dst_identity: Option<Arc<Identity>>,
    mtls: bool,
    start: Instant,
    /// The app's bytes sent with the CONNECT request, before the copy started (at most 4 KiB;
    /// a u32 fits beside `mtls` where a u64 would grow every tunnelled connection's task).
    early: u32,
}

impl Summary {
    fn entry<'a>(&'a self, pod: &'a Pod) -> Entry<'a> {
        Entry {
            direction: "outbound",
            src: self.src,
            src_workload: Some(&pod.uid.0),
            src_identity: Some(&pod.identity),
            dst: self.dst,
            dst_workload: self.dst_workload.as_ref().map(|w| w.uid.0.as_str()),
            dst_service: self.service.as_ref().map(|s| s.hostname.as_str()),
            dst_identity: self.dst_identity.as_deref(),
            mtls: self.mtls,
            start: self.start,
        }
    }
}

/// Routes the connection and connects its upstream; `None` once a failure was reported.
async fn establish(
    ctx: &Arc<Context>,
    pod: &Arc<Pod>,
    downstream: TcpStream,
    peer: SocketAddr,
) -> Option<Established> {
    let start = Instant::now();
    let snap = ctx.store.load();
    let src = snap.workload_by_uid(&pod.uid).cloned();
    // `peer` is already normalized: IPv4 exactly when the connection is.
    let orig = match socket::original_dst_of_family(&downstream, peer.is_ipv4()) {
        Ok(a) => a,
        Err(e) => {
            let err = Error::new(Kind::OriginalDst, Fault::Internal, e);
            tracing::warn!(pod = %pod.uid, %peer, error = %err, "outbound connection without original destination");
            return None;
        }
    };
    // eBPF capture redirects the app's connect to the loopback listener, so the client shows up
    // as 127.0.0.1; logs, metrics and the `forwarded` header must name the pod's own address.
    let peer = match pod.ips.iter().find(|ip| ip.is_ipv4() == orig.is_ipv4()) {
        Some(ip) if peer.ip().is_loopback() => SocketAddr::new(*ip, peer.port()),
        _ => peer,
    };
    let route = route::resolve(&snap, orig, |n| {
        NEXT_ENDPOINT.fetch_add(1, Ordering::Relaxed) % n
    });
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            let endpoints = Endpoints {
                reporter: Reporter::Source,
                src: src.as_deref(),
                src_identity: Some(&pod.identity),
                dst: None,
                dst_identity: None,
                service: None,
                mtls: false,
            };
            ctx.metrics
                .connection_failed(endpoints, ResponseFlags::Connect);
            tracing::info!(target: "access", direction = "outbound", src.addr = %peer, src.workload = %pod.uid, dst.addr = %orig, error = %e, "connection failed");
            return None;
        }
    };
    // Not held while connecting or copying: a long-lived connection must not pin an old
    // snapshot.
    drop(snap);
    let (dst_workload, service, target, mtls) = match &route {
        Route::Hbone {
            workload,
            target,
            service,
        } => (Some(workload.clone()), service.clone(), *target, true),
        Route::Passthrough {
            target,
            workload,
            service,
        } => (workload.clone(), service.clone(), *target, false),
    };
    let dst_identity = dst_workload
        .as_ref()
        .filter(|_| mtls)
        .map(|w| Arc::new(w.identity(&ctx.config.trust_domain)));
    let connected = match &route {
        Route::Hbone { .. } => tunnel::open(
            ctx,
            pod,
            &downstream,
            peer,
            src.as_deref(),
            dst_identity
                .as_ref()
                .expect("an HBONE route has a destination workload, hence an identity"),
            target,
        )
        .await
        .map(|(stream, early)| (Upstream::Tunnel(stream), early)),
        Route::Passthrough { .. } => passthrough(ctx, pod, target)
            .await
            .map(|s| (Upstream::Tcp(s), 0)),
    };
    let mut summary = Summary {
        src: peer,
        dst: target,
        dst_workload,
        service,
        dst_identity,
        mtls,
        start,
        early: 0,
    };
    let endpoints = Endpoints {
        reporter: Reporter::Source,
        src: src.as_deref(),
        src_identity: Some(&pod.identity),
        dst: summary.dst_workload.as_deref(),
        dst_identity: summary.dst_identity.as_deref(),
        service: summary.service.as_deref(),
        mtls,
    };
    let (upstream, early) = match connected {
        Ok(u) => u,
        Err(err) => {
            ctx.metrics
                .connection_failed(endpoints, err.response_flags());
            summary.entry(pod).failed(&err);
            return None;
        }
    };
    let guard = ctx.metrics.connection(endpoints);
    summary.early = early;
    Some(Established {
        downstream,
        upstream,
        guard,
        summary,
    })
}

enum Upstream {
    Tunnel(crate::hbone::Stream),
    Tcp(TcpStream),
}

/// Plain TCP from the pod's namespace, marked so capture lets it out.
async fn passthrough(ctx: &Context, pod: &Pod, target: SocketAddr) -> Result<TcpStream, Error> {
    let sock = pod
        .netns
        .socket(target, ctx.config.socket_mark, None)
        .await
        .map_err(|e| Error::new(Kind::Connect, Fault::Internal, e))?;
    crate::proxy::connect::tcp(sock, target, ctx.config.connect_timeout, "destination").await
}
