//! The inbound proxies of an enrolled pod: HBONE (mutual TLS, port 15008) and plaintext
//! (connections captured without a tunnel, port 15006). Both authorize, then deliver to the app
//! inside the pod's namespace.

pub mod deliver;
pub mod hbone;
pub mod plaintext;
pub mod tracker;

use std::net::SocketAddr;
use std::time::Instant;

pub use tracker::Tracker;

use crate::authz::{self, Decision};
use crate::identity::Identity;
use crate::metrics::ConnectionGuard;
use crate::proxy::copy::{Outcome, Transferred};
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

/// What an inbound connection looked like, for its access log line.
pub struct Summary<'a> {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub src_identity: Option<&'a Identity>,
    pub dst: SocketAddr,
    pub dst_workload: &'a str,
    pub dst_identity: &'a Identity,
    pub start: Instant,
}

impl Summary<'_> {
    pub fn failed(&self, err: &Error) {
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.src,
            src.identity = self.src_identity.map(|i| i.to_string()),
            dst.addr = %self.dst,
            dst.workload = self.dst_workload,
            dst.identity = %self.dst_identity,
            error = %err,
            "connection failed"
        );
    }

    pub fn finished(&self, guard: ConnectionGuard, outcome: Outcome, moved: Transferred) {
        guard.add_received(moved.received);
        guard.add_sent(moved.sent);
        drop(guard);
        let error = match outcome {
            Outcome::Done => None,
            Outcome::Io(e) => Some(e.to_string()),
            Outcome::Cancelled => {
                Some("closed by ztunnel (policy change, pod removed or drain)".to_string())
            }
        };
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.src,
            src.identity = self.src_identity.map(|i| i.to_string()),
            dst.addr = %self.dst,
            dst.workload = self.dst_workload,
            dst.identity = %self.dst_identity,
            security = if self.src_identity.is_some() { "mutual_tls" } else { "plaintext" },
            bytes_sent = moved.sent,
            bytes_received = moved.received,
            duration_ms = self.start.elapsed().as_millis() as u64,
            error,
            "connection complete"
        );
    }
}
