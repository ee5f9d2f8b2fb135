//! Per-connection recording of the `istio_tcp_*` counters.

use prometheus_client::metrics::counter::Counter;

/// The four counters of one label set, looked up together: one hash of the labels per
/// connection instead of one per family.
#[derive(Clone, Debug)]
pub(super) struct Counters {
    pub(super) opened: Counter,
    pub(super) sent: Counter,
    pub(super) received: Counter,
    pub(super) closed: Counter,
}

/// Counts one open connection: created by [`crate::metrics::Metrics::connection`] (which counts
/// it as opened), counts it as closed when dropped.
///
/// Byte directions follow Istio's definitions, whichever side reports: *received* bytes are the
/// request direction (source workload -> destination workload, `istio_tcp_received_bytes_total`
/// "bytes received during request") and *sent* bytes are the response direction (destination ->
/// source, "bytes sent during response").
///
/// The counters are resolved once at open so adding bytes on a long-lived connection is a single
/// atomic add, without hashing the label set again.
#[derive(Debug)]
pub struct ConnectionGuard {
    pub(super) sent: Counter,
    pub(super) received: Counter,
    pub(super) closed: Counter,
}

impl ConnectionGuard {
    /// Bytes flowing from the destination back to the source.
    pub fn add_sent(&self, n: u64) {
        self.sent.inc_by(n);
    }

    /// Bytes flowing from the source to the destination.
    pub fn add_received(&self, n: u64) {
        self.received.inc_by(n);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.closed.inc();
        crate::memory::connection_closed();
    }
}
