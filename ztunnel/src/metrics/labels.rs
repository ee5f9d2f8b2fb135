//! Istio's standard TCP label set, so existing dashboards and Kiali work unchanged.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::identity::Identity;
use crate::state::{Service, Workload};

/// Istio reports every workload as running in this cluster unless multicluster is configured.
const CLUSTER: &str = "Kubernetes";
const UNKNOWN: &str = "unknown";

/// Which side of the connection recorded the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's ztunnel (outbound).
    Source,
    /// The server's ztunnel (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        w.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

/// Why a connection did not carry traffic, spelled as Istio's ztunnel spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    #[default]
    None,
    /// Denied by an authorization policy.
    Deny,
    /// The upstream connection could not be established.
    Connect,
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        w.write_str(match self {
            ResponseFlags::None => "-",
            ResponseFlags::Deny => "DENY",
            ResponseFlags::Connect => "CONNECT",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    #[default]
    Unknown,
    MutualTls,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        w.write_str(match self {
            SecurityPolicy::Unknown => "unknown",
            SecurityPolicy::MutualTls => "mutual_tls",
        })
    }
}

/// Labels of the `istio_tcp_*` families; absent values are `"unknown"` as in Istio.
#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,

    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,

    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,

    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,

    pub request_protocol: String,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Hashes only the fields that tell connections apart in practice (workloads, identities,
/// service, outcome); the rest follow from the workloads. Label sets are hashed on every
/// connection, and SipHash over all 22 strings was most of that cost. Equal label sets still
/// hash equally, and `Eq` compares every field, so lookups stay exact.
impl std::hash::Hash for ConnectionLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.reporter.hash(state);
        self.source_workload.hash(state);
        self.source_workload_namespace.hash(state);
        self.source_principal.hash(state);
        self.destination_service.hash(state);
        self.destination_workload.hash(state);
        self.destination_workload_namespace.hash(state);
        self.destination_principal.hash(state);
        self.response_flags.hash(state);
        self.connection_security_policy.hash(state);
    }
}

/// The workload-derived half of the labels, shared by source and destination.
struct Peer {
    workload: String,
    canonical_service: String,
    canonical_revision: String,
    namespace: String,
    principal: String,
    cluster: String,
}

impl Peer {
    fn new(workload: Option<&Workload>, identity: Option<&Identity>) -> Self {
        Peer {
            workload: workload.map_or_else(unknown, |w| w.name.clone()),
            canonical_service: workload.map_or_else(unknown, canonical_service),
            canonical_revision: workload.map_or_else(unknown, canonical_revision),
            // A peer we only know by its certificate still has a namespace.
            namespace: workload
                .map(|w| w.namespace.clone())
                .or_else(|| identity.map(|i| i.namespace.clone()))
                .unwrap_or_else(unknown),
            principal: identity.map_or_else(unknown, Identity::to_string),
            cluster: if workload.is_some() {
                CLUSTER.to_string()
            } else {
                unknown()
            },
        }
    }
}

impl ConnectionLabels {
    /// `src_identity` should be the identity proven in the handshake (not the one the workload
    /// is expected to have), so a spoofing peer is reported as what it proved.
    pub fn new(
        reporter: Reporter,
        src: Option<&Workload>,
        src_identity: Option<&Identity>,
        dst: Option<&Workload>,
        dst_identity: Option<&Identity>,
        service: Option<&Service>,
        mtls: bool,
    ) -> Self {
        let s = Peer::new(src, src_identity);
        let d = Peer::new(dst, dst_identity);
        ConnectionLabels {
            reporter,
            // Istio's ztunnel reports app/version as the canonical service/revision.
            source_app: s.canonical_service.clone(),
            source_version: s.canonical_revision.clone(),
            source_workload: s.workload,
            source_canonical_service: s.canonical_service,
            source_canonical_revision: s.canonical_revision,
            source_workload_namespace: s.namespace,
            source_principal: s.principal,
            source_cluster: s.cluster,
            destination_service: service.map_or_else(unknown, |s| s.hostname.clone()),
            destination_service_namespace: service.map_or_else(unknown, |s| s.namespace.clone()),
            destination_service_name: service.map_or_else(unknown, |s| s.name.clone()),
            destination_app: d.canonical_service.clone(),
            destination_version: d.canonical_revision.clone(),
            destination_workload: d.workload,
            destination_canonical_service: d.canonical_service,
            destination_canonical_revision: d.canonical_revision,
            destination_workload_namespace: d.namespace,
            destination_principal: d.principal,
            destination_cluster: d.cluster,
            request_protocol: "tcp".to_string(),
            response_flags: ResponseFlags::None,
            connection_security_policy: if mtls {
                SecurityPolicy::MutualTls
            } else {
                SecurityPolicy::Unknown
            },
        }
    }
}

fn unknown() -> String {
    UNKNOWN.to_string()
}

fn first_label(w: &Workload, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| w.labels.get(*k).cloned())
}

/// Istio's canonical service: the first of these labels, else the workload name.
pub fn canonical_service(w: &Workload) -> String {
    first_label(
        w,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or_else(|| w.name.clone())
}

/// Istio's canonical revision: the first of these labels, else `latest`.
pub fn canonical_revision(w: &Workload) -> String {
    first_label(
        w,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or_else(|| "latest".to_string())
}
