//! How pod traffic reaches ztunnel: the capture backend seam.
//!
//! A backend makes the kernel of an enrolled pod's namespace hand the pod's TCP connections to
//! ztunnel's listeners in that namespace: outgoing ones to `Ports::outbound`, incoming plaintext
//! ones to `Ports::inbound_plaintext`, while HBONE (`Ports::hbone`) and ztunnel's own marked
//! sockets pass untouched. Two implementations: [`Ebpf`] (the default) and [`Nftables`] (the
//! fallback); nothing specific to either belongs in [`Backend`].

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::netns::Netns;

pub mod ebpf;
mod nftables;
mod routing;

pub use ebpf::Ebpf;
pub use nftables::Nftables;

/// A pod as the capture backend sees it.
#[derive(Debug, Clone)]
pub struct Pod {
    /// For messages only (e.g. `namespace/name`).
    pub name: String,
    pub netns: Arc<Netns>,
    pub ips: Vec<IpAddr>,
    /// ztunnel's inbound plaintext listener in the pod (a duplicate descriptor), for backends
    /// that hand connections to it directly rather than by rewriting addresses.
    pub inbound_listener: Option<Arc<OwnedFd>>,
}

/// Ports of ztunnel's listeners inside each pod namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: 15008,
        }
    }
}

/// Socket marks that tell ztunnel's traffic apart from the pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// Set on every socket ztunnel creates in a pod namespace, so it is not captured again.
    pub bypass: u32,
    /// Set on transparent sockets that deliver inbound traffic to the app with the original
    /// client address; the app's replies are routed back to ztunnel by this mark.
    pub delivery: u32,
}

impl Default for Marks {
    fn default() -> Self {
        Marks {
            bypass: 0x539,
            delivery: 0x53a,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run in the network namespace of pod {pod}: {source}")]
    Netns {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{program}` for pod {pod} (is it installed and on PATH?): {source}")]
    Spawn {
        pod: String,
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed for pod {pod}: {stderr}")]
    Command {
        pod: String,
        command: String,
        stderr: String,
    },
    #[error("cannot set sysctl {key} for pod {pod}: {source}")]
    Sysctl {
        pod: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF capture for pod {pod}: cannot {action}: {reason}")]
    Ebpf {
        pod: String,
        action: &'static str,
        reason: String,
    },
}

/// While held, the backend lets one connection of ztunnel's own (identified by its source
/// address) reach the app untouched; dropped once the connection is established.
pub struct Exemption {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Exemption {
    pub fn new(release: impl FnOnce() + Send + 'static) -> Self {
        Exemption {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for Exemption {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Installs and removes traffic capture for pods. Both operations are idempotent: enrolling an
/// enrolled pod replaces its configuration, unenrolling a pod that is not enrolled succeeds.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn enroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>>;
    fn unenroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>>;

    /// Called once after the first enrollment round: backends whose state outlives ztunnel
    /// (pinned eBPF) drop what a previous run enrolled and this one did not.
    fn release_stale(&self) {}

    /// The resolver a DNS datagram that reached the pod's DNS listener at `local` was sent to,
    /// for backends that encode it in the listener-side address (eBPF). `None`: the address
    /// the kernel reports as original destination is the resolver (nftables REDIRECT).
    fn dns_original(&self, pod: &str, local: SocketAddr) -> Option<SocketAddr> {
        let _ = (pod, local);
        None
    }

    /// Called before ztunnel connects from `source` (already bound) to an app in a captured
    /// pod. Backends whose inbound capture cannot see socket marks return an [`Exemption`] that
    /// must be held until the connection is established.
    fn exempt_delivery(&self, source: SocketAddr) -> Result<Option<Exemption>, Error> {
        let _ = source;
        Ok(None)
    }
}
