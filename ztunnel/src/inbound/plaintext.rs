//! Inbound connections that reached the pod without a tunnel (from outside the mesh, or from a
//! node without ztunnel): no peer identity, so only IP and port rules can allow them, and a
//! STRICT peer-authentication refuses them outright.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use super::deliver;
use crate::metrics::{Endpoints, RejectReason, Reporter};
use crate::pod::Pod;
use crate::proxy::access::Entry;
use crate::proxy::splice;
use crate::proxy::{Context, Error, Fault, Kind};
use crate::socket;
use crate::state::{peer_authn, MtlsMode};

pub async fn serve(ctx: Arc<Context>, pod: Arc<Pod>, listener: TcpListener) {
    crate::pod::accept_loop(&ctx, &pod, listener, "inbound-plaintext", handle).await
}

async fn handle(ctx: Arc<Context>, pod: Arc<Pod>, mut downstream: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    let orig = match original_dst(&ctx, &downstream) {
        Ok(a) => crate::pod::normalize(a),
        Err(e) => {
            tracing::warn!(pod = %pod.uid, %peer, error = %e, "inbound plaintext connection without original destination");
            return;
        }
    };
    let snap = ctx.store.load();
    let Some(workload) = snap.workload_by_uid(&pod.uid).cloned() else {
        return;
    };
    let summary = Entry {
        direction: "inbound",
        src: peer,
        src_workload: None,
        src_identity: None,
        dst: orig,
        dst_workload: Some(&pod.uid.0),
        dst_service: None,
        dst_identity: Some(&pod.identity),
        mtls: false,
        start,
    };
    let src = snap.workload_by_ip(peer.ip()).cloned();
    let endpoints = Endpoints {
        reporter: Reporter::Destination,
        src: src.as_deref(),
        src_identity: None,
        dst: Some(&workload),
        dst_identity: Some(&pod.identity),
        service: None,
        mtls: false,
    };
    let ports = &ctx.config.listeners;
    let checked = if [ports.outbound, ports.inbound_plaintext, ports.hbone].contains(&orig.port()) {
        // Not redirected: a client dialled a ztunnel port directly. Delivering would loop.
        ctx.metrics
            .inc_inbound_rejected(RejectReason::PlaintextOnHbone);
        Err(Error::new(
            Kind::OriginalDst,
            Fault::Downstream,
            format!("{orig} is a ztunnel port"),
        ))
    } else if peer_authn::mode_for(
        &snap.peer_authentications,
        &workload,
        &ctx.config.root_namespace,
    ) == MtlsMode::Strict
    {
        ctx.metrics.inc_inbound_rejected(RejectReason::StrictMtls);
        Err(Error::new(
            Kind::StrictMtls,
            Fault::Policy,
            "plaintext refused: STRICT mTLS in force",
        ))
    } else {
        super::authorize(&snap, &workload, None, peer, orig.port()).inspect_err(|_| {
            ctx.metrics.inc_inbound_rejected(RejectReason::Policy);
        })
    };
    let connected = match checked {
        // Boxed so the connect future does not size this task's future, kept for the whole
        // life of the connection.
        Ok(()) => Box::pin(deliver::connect(&ctx, &pod, orig, peer.ip())).await,
        Err(e) => Err(e),
    };
    let mut upstream = match connected {
        Ok(s) => s,
        Err(err) => {
            ctx.metrics
                .connection_failed(endpoints, err.response_flags());
            summary.failed(&err);
            return;
        }
    };
    drop(snap);
    let conn = ctx.tracker.register(pod.clone(), None, peer, orig, start);
    let guard = ctx.metrics.connection(endpoints);
    drop(src);
    let (outcome, moved) =
        splice::bidirectional(&mut downstream, &mut upstream, &conn.cancel).await;
    summary.finished(guard, outcome, moved);
}

/// Where the client meant to connect. A connection handed to the listener by eBPF `sk_lookup`
/// keeps its own destination as the local address; one redirected by nftables arrives at the
/// listener's port and its destination is in conntrack. A client that dialled the listener port
/// itself has neither, and its destination is the listener (refused later as a ztunnel port).
fn original_dst(ctx: &Context, downstream: &TcpStream) -> std::io::Result<SocketAddr> {
    let local = socket::canonical(downstream.local_addr()?);
    if local.port() != ctx.config.listeners.inbound_plaintext {
        return Ok(local);
    }
    Ok(socket::original_dst(downstream).unwrap_or(local))
}
