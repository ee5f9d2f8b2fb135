//! How pod traffic reaches ztunnel: the capture backend seam.
//!
//! A backend makes the kernel of an enrolled pod's namespace hand the pod's TCP connections to
//! ztunnel's listeners in that namespace: outgoing ones to `Ports::outbound`, incoming plaintext
//! ones to `Ports::inbound_plaintext`, while HBONE (`Ports::hbone`) and ztunnel's own marked
//! sockets pass untouched. nftables is the first implementation; eBPF can be another, so nothing
//! nftables-specific belongs in [`Backend`].

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::netns::Netns;

mod nftables;

pub use nftables::Nftables;

/// A pod as the capture backend sees it.
#[derive(Debug, Clone)]
pub struct Pod {
    /// For messages only (e.g. `namespace/name`).
    pub name: String,
    pub netns: Arc<Netns>,
    pub ips: Vec<IpAddr>,
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
}

/// Installs and removes traffic capture for pods. Both operations are idempotent: enrolling an
/// enrolled pod replaces its configuration, unenrolling a pod that is not enrolled succeeds.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn enroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>>;
    fn unenroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>>;
}
