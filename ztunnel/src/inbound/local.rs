//! Tunnels whose two ends are pods of this node. The outbound side still opens an HBONE
//! connection (mutual TLS with the destination pod's certificate, HTTP/2 CONNECT, the same
//! identity checks, authorization and telemetry), but over an in-process pipe to the
//! destination pod's inbound HBONE server instead of a TCP connection through the loopback.
//!
//! Both ends are this process either way; the pipe only drops the kernel's part: per record a
//! `writev` and a `recvfrom`, their copies into and out of socket buffers, TCP's segments and
//! ACKs and the wake-up through `epoll`. Nothing else can see those bytes on a node, so
//! nothing observable to the pods changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio::io::DuplexStream;
use tokio_rustls::TlsAcceptor;

use crate::pod::Pod;
use crate::proxy::Context;

/// Bytes a pipe direction holds before its writer waits: with TLS records of 16 KiB, enough
/// for a bulk transfer's writes of several records at once.
const PIPE: usize = 256 * 1024;

/// The inbound HBONE servers of this node's enrolled pods, by pod address.
#[derive(Default)]
pub struct Local {
    servers: RwLock<HashMap<IpAddr, Arc<Server>>>,
}

/// One pod's inbound HBONE server, reachable without a socket.
pub struct Server {
    pub pod: Arc<Pod>,
    acceptor: TlsAcceptor,
}

impl Local {
    /// Makes `pod`'s HBONE server reachable at each of its addresses.
    pub fn insert(&self, pod: &Arc<Pod>, tls: Arc<rustls::ServerConfig>) {
        let server = Arc::new(Server {
            pod: pod.clone(),
            acceptor: TlsAcceptor::from(tls),
        });
        let mut servers = self.write();
        for ip in &pod.ips {
            servers.insert(*ip, server.clone());
        }
    }

    /// Forgets `pod`'s addresses, unless another pod has taken one of them since.
    pub fn remove(&self, pod: &Arc<Pod>) {
        self.write()
            .retain(|_, server| !Arc::ptr_eq(&server.pod, pod));
    }

    /// The server of the local pod at `ip`, if any.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<Server>> {
        self.servers
            .read()
            .expect("local servers lock is never held across a panic")
            .get(&ip)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<IpAddr, Arc<Server>>> {
        self.servers
            .write()
            .expect("local servers lock is never held across a panic")
    }
}

/// Opens a pipe to `server` and serves its far end as an accepted HBONE connection from
/// `peer` (the source pod's address; port 0, as no TCP connection carries it). The connection
/// is served until the client closes it, ztunnel drains or the destination pod is removed.
pub fn connect(ctx: &Arc<Context>, server: &Server, peer: SocketAddr) -> DuplexStream {
    let (client, far) = tokio::io::duplex(PIPE);
    let pod = server.pod.clone();
    let drain = {
        let (draining, removed) = (ctx.draining.clone(), pod.cancel.clone());
        async move {
            tokio::select! {
                _ = draining.cancelled() => {}
                _ = removed.cancelled() => {}
            }
        }
    };
    ctx.tasks.spawn(super::hbone::handle(
        ctx.clone(),
        pod,
        far,
        peer,
        server.acceptor.clone(),
        drain,
    ));
    client
}

#[cfg(test)]
mod tests;
