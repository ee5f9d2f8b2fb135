//! The inbound proxies of an enrolled pod: HBONE (mutual TLS, port 15008, or an in-process pipe
//! for tunnels from pods of this node) and plaintext (connections captured without a tunnel,
//! port 15006). Both authorize, then deliver to the app inside the pod's namespace.

pub mod deliver;
pub mod hbone;
pub mod local;
pub mod plaintext;
pub mod tracker;

use std::net::SocketAddr;

pub use local::Local;
pub use tracker::Tracker;

use crate::authz::{self, Decision};
use crate::identity::Identity;
use crate::proxy::Error;
use crate::state::{Snapshot, Workload};

/// Authorization of one inbound connection against the policies of `snap`.
pub fn authorize(
    snap: &Snapshot,
    workload: &Workload,
    src_identity: Option<&Identity>,
    src: SocketAddr,
    dst_port: u16,
) -> Result<(), Error> {
    let conn = authz::Connection {
        src_identity,
        src_ip: src.ip(),
        dst_port,
    };
    match snap.authz().evaluate(workload, &conn) {
        Decision::Allow => Ok(()),
        Decision::Deny { policy } => Err(Error::denied(format!("denied by {policy}"))),
    }
}
