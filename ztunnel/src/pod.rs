//! Enrolled pods on this node: for each, ztunnel opens its listeners inside the pod's network
//! namespace and installs capture there. The registry keeps that in step with the state store.

pub mod registry;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::netns::Netns;
use crate::proxy::Context;
use crate::state::WorkloadUid;

pub use registry::Registry;

/// The running side of one enrolled pod. Its workload's mutable details (labels, service
/// membership) are read from the current snapshot per connection; what is fixed here (address,
/// namespace, identity) restarts the pod when it changes.
pub struct Pod {
    pub uid: WorkloadUid,
    /// Shared, not copied, by every pooled-connection key and tunnel of the pod.
    pub identity: Arc<Identity>,
    pub ips: Vec<IpAddr>,
    pub netns: Arc<Netns>,
    /// Cancelled when the pod is removed or ztunnel stops: closes its listeners and connections.
    pub cancel: CancellationToken,
    /// The capture backend, which ztunnel's own connections to the pod's apps may need to
    /// ask for an exemption (see [`crate::capture::Backend::exempt_delivery`]).
    pub capture: Option<Arc<dyn crate::capture::Backend>>,
}

/// Accepts until the pod is removed or ztunnel drains; each connection becomes a tracked task.
pub async fn accept_loop<F, Fut>(
    ctx: &Arc<Context>,
    pod: &Arc<Pod>,
    listener: TcpListener,
    name: &'static str,
    handle: F,
) where
    F: Fn(Arc<Context>, Arc<Pod>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = pod.cancel.cancelled() => break,
            _ = ctx.draining.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // No TCP_NODELAY here: accepted sockets inherit it from the listener
                // (`Netns::listen`), one syscall less per connection.
                ctx.tasks
                    .spawn(handle(ctx.clone(), pod.clone(), stream, normalize(peer)));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning; the listener
                // stays open and recovers when connections close.
                tracing::warn!(pod = %pod.uid, listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(pod = %pod.uid, listener = name, "listener closed");
}

/// Dual-stack listeners report IPv4 clients as v4-mapped IPv6; policy and logs want IPv4.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
