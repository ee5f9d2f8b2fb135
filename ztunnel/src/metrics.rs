//! Prometheus metrics: Istio's standard TCP metrics (so Istio dashboards work unchanged) and
//! ztunnel's own certificate, pool and rejection metrics.

pub mod connection;
pub mod labels;

pub use connection::ConnectionGuard;
pub use labels::{ConnectionLabels, Endpoints, Reporter, ResponseFlags, SecurityPolicy};

use std::hash::RandomState;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use hashbrown::HashTable;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::identity::Identity;

/// Why the inbound proxy turned a peer away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The TLS handshake failed (bad or untrusted certificate, wrong ALPN).
    Tls,
    /// The HBONE request was not a CONNECT.
    Method,
    /// The CONNECT authority was missing or not a local workload.
    Authority,
    /// Required HBONE headers were missing or malformed.
    Headers,
    /// Plaintext arrived on the HBONE port.
    PlaintextOnHbone,
    /// Plaintext to a workload whose PeerAuthentication is STRICT.
    StrictMtls,
    /// Denied by an authorization policy.
    Policy,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Tls => "tls",
            RejectReason::Method => "method",
            RejectReason::Authority => "authority",
            RejectReason::Headers => "headers",
            RejectReason::PlaintextOnHbone => "plaintext_on_hbone",
            RejectReason::StrictMtls => "strict_mtls",
            RejectReason::Policy => "policy",
        }
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        w.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

/// Counters of the eBPF capture programs as read from the kernel: cumulative since ztunnel
/// loaded them, each with its label value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EbpfSample {
    /// By direction: `outbound` (connect rewritten), `inbound` (sk_lookup steered).
    pub redirects: Vec<(&'static str, u64)>,
    /// By program: a redirected connection whose original destination was not found.
    pub misses: Vec<(&'static str, u64)>,
    /// By program: a map update or socket assignment the kernel refused.
    pub errors: Vec<(&'static str, u64)>,
    pub original_dst_answered: u64,
    pub peername_rewritten: u64,
    pub delivery_bypassed: u64,
    /// Connections from health-probe sources let past capture.
    pub probe_bypassed: u64,
    /// Fail-closed refusals: a captured pod address whose ztunnel listener was gone.
    pub refused_no_listener: u64,
    /// Pod namespaces whose traffic the programs capture now.
    pub enrolled_namespaces: i64,
}

/// Reads an [`EbpfSample`]; set once by the eBPF capture backend.
pub type EbpfSource = Box<dyn Fn() -> EbpfSample + Send + Sync>;

#[derive(Default)]
struct EbpfMetrics {
    source: OnceLock<EbpfSource>,
    /// Serializes refreshes, which turn absolute kernel values into counter increments.
    refresh: Mutex<()>,
    redirects: Family<DirectionLabels, Counter>,
    misses: Family<ProgramLabels, Counter>,
    errors: Family<ProgramLabels, Counter>,
    original_dst_answered: Counter,
    peername_rewritten: Counter,
    delivery_bypassed: Counter,
    probe_bypassed: Counter,
    refused_no_listener: Counter,
    enrolled_namespaces: Gauge,
}

impl std::fmt::Debug for EbpfMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfMetrics")
            .field("source", &self.source.get().is_some())
            .finish_non_exhaustive()
    }
}

impl EbpfMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ztunnel_ebpf_redirects",
            "Connections the eBPF capture programs redirected, by direction",
            self.redirects.clone(),
        );
        registry.register(
            "ztunnel_ebpf_misses",
            "Redirected connections whose original destination the eBPF programs did not find",
            self.misses.clone(),
        );
        registry.register(
            "ztunnel_ebpf_errors",
            "Map updates or socket assignments the kernel refused to the eBPF programs",
            self.errors.clone(),
        );
        registry.register(
            "ztunnel_ebpf_original_dst_answered",
            "SO_ORIGINAL_DST queries answered by the eBPF getsockopt program",
            self.original_dst_answered.clone(),
        );
        registry.register(
            "ztunnel_ebpf_peername_rewritten",
            "getpeername calls of captured apps shown their intended peer",
            self.peername_rewritten.clone(),
        );
        registry.register(
            "ztunnel_ebpf_delivery_bypassed",
            "ztunnel's own deliveries to apps let past the inbound sk_lookup program",
            self.delivery_bypassed.clone(),
        );
        registry.register(
            "ztunnel_ebpf_probe_bypassed",
            "Connections from health-probe sources let past the inbound sk_lookup program",
            self.probe_bypassed.clone(),
        );
        registry.register(
            "ztunnel_ebpf_refused_no_listener",
            "Connections to captured pods refused because ztunnel's listener was gone",
            self.refused_no_listener.clone(),
        );
        registry.register(
            "ztunnel_ebpf_enrolled_namespaces",
            "Pod network namespaces the eBPF programs capture",
            self.enrolled_namespaces.clone(),
        );
    }

    fn refresh(&self) {
        let Some(source) = self.source.get() else {
            return;
        };
        let _serial = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
        let sample = source();
        let advance = |c: &Counter, value: u64| {
            // The kernel's values only grow; a counter never goes back.
            c.inc_by(value.saturating_sub(c.get()));
        };
        for (direction, v) in sample.redirects {
            let labels = DirectionLabels {
                direction: direction.into(),
            };
            advance(&self.redirects.get_or_create(&labels), v);
        }
        for (family, values) in [(&self.misses, sample.misses), (&self.errors, sample.errors)] {
            for (program, v) in values {
                let labels = ProgramLabels {
                    program: program.into(),
                };
                advance(&family.get_or_create(&labels), v);
            }
        }
        advance(&self.original_dst_answered, sample.original_dst_answered);
        advance(&self.peername_rewritten, sample.peername_rewritten);
        advance(&self.delivery_bypassed, sample.delivery_bypassed);
        advance(&self.probe_bypassed, sample.probe_bypassed);
        advance(&self.refused_no_listener, sample.refused_no_listener);
        self.enrolled_namespaces.set(sample.enrolled_namespaces);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// All metrics of the process; cheap to share behind an `Arc`, every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    failed: Family<ConnectionLabels, Counter>,
    sent_bytes: Family<ConnectionLabels, Counter>,
    received_bytes: Family<ConnectionLabels, Counter>,
    /// The counters of the four families above by label set, found from a connection's
    /// [`Endpoints`] without spelling its labels out; entries live as long as the families'
    /// own (which never drop any).
    connections: RwLock<HashTable<Series>>,
    series_hasher: RandomState,
    certificates: Gauge,
    certificate_expiry: Family<IdentityLabels, Gauge>,
    certificate_renewals: Counter,
    pool_connections: Gauge,
    pool_streams: Gauge,
    inbound_rejected: Family<RejectLabels, Counter>,
    ebpf: EbpfMetrics,
}

/// One label set of the connection families and its counters, with the hash it is filed under.
#[derive(Debug)]
struct Series {
    hash: u64,
    labels: ConnectionLabels,
    counters: connection::Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // Counter names are registered without `_total`: the encoder appends it, which yields
        // exactly Istio's names (e.g. `istio_tcp_connections_opened_total`).
        let opened = Family::default();
        registry.register(
            "istio_tcp_connections_opened",
            "The total number of TCP connections opened",
            opened.clone(),
        );
        let closed = Family::default();
        registry.register(
            "istio_tcp_connections_closed",
            "The total number of TCP connections closed",
            closed.clone(),
        );
        let failed = Family::default();
        registry.register(
            "istio_tcp_connections_failed",
            "The total number of TCP connections that failed or were denied",
            failed.clone(),
        );
        let sent_bytes = Family::default();
        registry.register(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            sent_bytes.clone(),
        );
        let received_bytes = Family::default();
        registry.register(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            received_bytes.clone(),
        );
        let certificates = Gauge::default();
        registry.register(
            "ztunnel_certificates",
            "Number of workload certificates held",
            certificates.clone(),
        );
        let certificate_expiry = Family::default();
        registry.register(
            "ztunnel_certificate_expiry_seconds",
            "Expiry of each workload certificate, as Unix time in seconds",
            certificate_expiry.clone(),
        );
        let certificate_renewals = Counter::default();
        registry.register(
            "ztunnel_certificate_renewals",
            "Number of workload certificates issued after the first one",
            certificate_renewals.clone(),
        );
        let pool_connections = Gauge::default();
        registry.register(
            "ztunnel_hbone_pool_connections",
            "Open pooled outbound HBONE connections",
            pool_connections.clone(),
        );
        let pool_streams = Gauge::default();
        registry.register(
            "ztunnel_hbone_pool_streams",
            "Open streams on pooled outbound HBONE connections",
            pool_streams.clone(),
        );
        let inbound_rejected = Family::default();
        registry.register(
            "ztunnel_inbound_rejected",
            "Inbound connections or streams rejected, by reason",
            inbound_rejected.clone(),
        );
        let ebpf = EbpfMetrics::default();
        ebpf.register(&mut registry);
        // Info metrics get `_info` appended by the encoder.
        registry.register(
            "ztunnel_build",
            "ztunnel build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        );
        Metrics {
            registry,
            opened,
            closed,
            failed,
            sent_bytes,
            received_bytes,
            connections: RwLock::default(),
            series_hasher: RandomState::new(),
            certificates,
            certificate_expiry,
            certificate_renewals,
            pool_connections,
            pool_streams,
            inbound_rejected,
            ebpf,
        }
    }

    /// Exports the eBPF capture counters from now on, read from `source` at every scrape.
    /// Only the first call has an effect (there is one capture backend per process).
    pub fn set_ebpf_source(&self, source: EbpfSource) {
        let _ = self.ebpf.source.set(source);
    }

    /// Counts a connection as opened; the guard counts its bytes and its close.
    pub fn connection(&self, endpoints: Endpoints<'_>) -> ConnectionGuard {
        let hash = endpoints.key_hash(&self.series_hasher);
        let known = self
            .connections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(hash, |s| s.labels.describes(&endpoints))
            .map(|s| s.counters.clone());
        let counters = match known {
            Some(c) => c,
            None => {
                let mut series = self
                    .connections
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                match series.find(hash, |s| s.labels.describes(&endpoints)) {
                    Some(s) => s.counters.clone(),
                    None => {
                        let labels = endpoints.labels();
                        let counters = connection::Counters {
                            opened: self.opened.get_or_create_owned(&labels),
                            sent: self.sent_bytes.get_or_create_owned(&labels),
                            received: self.received_bytes.get_or_create_owned(&labels),
                            closed: self.closed.get_or_create_owned(&labels),
                        };
                        series.insert_unique(
                            hash,
                            Series {
                                hash,
                                labels,
                                counters: counters.clone(),
                            },
                            |s| s.hash,
                        );
                        counters
                    }
                }
            }
        };
        counters.opened.inc();
        ConnectionGuard {
            sent: counters.sent,
            received: counters.received,
            closed: counters.closed,
        }
    }

    /// Counts a connection that never carried traffic (denied, or upstream unreachable). It is
    /// not counted as opened or closed, so `opened - closed` stays the number of live connections.
    pub fn connection_failed(&self, endpoints: Endpoints<'_>, flags: ResponseFlags) {
        let labels = ConnectionLabels {
            response_flags: flags,
            ..endpoints.labels()
        };
        self.failed.get_or_create(&labels).inc();
    }

    pub fn set_certificates(&self, n: i64) {
        self.certificates.set(n);
    }

    pub fn set_certificate_expiry(&self, identity: &Identity, unix_seconds: i64) {
        self.certificate_expiry
            .get_or_create(&IdentityLabels {
                identity: identity.to_string(),
            })
            .set(unix_seconds);
    }

    /// Replaces every exported expiry with `certs` (identity, Unix seconds), so certificates
    /// no longer held stop being exported.
    pub fn set_certificate_expiries<'a>(&self, certs: impl IntoIterator<Item = (&'a str, i64)>) {
        self.certificate_expiry.clear();
        for (identity, unix_seconds) in certs {
            self.certificate_expiry
                .get_or_create(&IdentityLabels {
                    identity: identity.to_string(),
                })
                .set(unix_seconds);
        }
    }

    /// Forgets a certificate that is no longer held, so its expiry stops being exported.
    pub fn remove_certificate_expiry(&self, identity: &Identity) {
        self.certificate_expiry.remove(&IdentityLabels {
            identity: identity.to_string(),
        });
    }

    pub fn inc_certificate_renewals(&self) {
        self.certificate_renewals.inc();
    }

    pub fn set_hbone_pool_connections(&self, n: i64) {
        self.pool_connections.set(n);
    }

    pub fn set_hbone_pool_streams(&self, n: i64) {
        self.pool_streams.set(n);
    }

    /// The pool's connection gauge, for callers that track it with `inc`/`dec`.
    pub fn hbone_pool_connections(&self) -> Gauge {
        self.pool_connections.clone()
    }

    /// The pool's stream gauge, for callers that track it with `inc`/`dec`.
    pub fn hbone_pool_streams(&self) -> Gauge {
        self.pool_streams.clone()
    }

    pub fn inc_inbound_rejected(&self, reason: RejectReason) {
        self.inbound_rejected
            .get_or_create(&RejectLabels { reason })
            .inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        self.ebpf.refresh();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests;
