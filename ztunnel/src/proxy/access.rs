//! The access log: one line per connection, written when it fails or ends, with both
//! addresses and identities. Events have target `access`, so they can be filtered alone.

use std::net::SocketAddr;
use std::time::Instant;

use super::copy::{Outcome, Transferred};
use super::Error;
use crate::identity::Identity;
use crate::metrics::ConnectionGuard;

/// What one proxied connection looked like.
pub struct Entry<'a> {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub src_workload: Option<&'a str>,
    pub src_identity: Option<&'a Identity>,
    pub dst: SocketAddr,
    pub dst_workload: Option<&'a str>,
    pub dst_service: Option<&'a str>,
    pub dst_identity: Option<&'a Identity>,
    pub mtls: bool,
    pub start: Instant,
}

impl Entry<'_> {
    pub fn failed(&self, err: &Error) {
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.src,
            src.workload = self.src_workload,
            src.identity = self.src_identity.map(tracing::field::display),
            dst.addr = %self.dst,
            dst.workload = self.dst_workload,
            dst.service = self.dst_service,
            dst.identity = self.dst_identity.map(tracing::field::display),
            error = %err,
            "connection failed"
        );
    }

    /// Records the bytes on the connection's metrics, closes them, and logs the line.
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
            src.workload = self.src_workload,
            src.identity = self.src_identity.map(tracing::field::display),
            dst.addr = %self.dst,
            dst.workload = self.dst_workload,
            dst.service = self.dst_service,
            dst.identity = self.dst_identity.map(tracing::field::display),
            security = if self.mtls { "mutual_tls" } else { "plaintext" },
            bytes_sent = moved.sent,
            bytes_received = moved.received,
            duration_ms = self.start.elapsed().as_millis() as u64,
            error,
            "connection complete"
        );
    }
}
