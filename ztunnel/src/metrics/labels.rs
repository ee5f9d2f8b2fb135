//! Istio's standard TCP label set, so existing dashboards and Kiali work unchanged.

use std::hash::{BuildHasher, Hash, Hasher};

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
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
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

/// What one connection's labels derive from, borrowed from the state and the handshake.
/// [`crate::metrics::Metrics::connection`] finds the connection's counters by these without
/// building the label strings (about 20 allocations per label set, two label sets per proxied
/// connection when one ztunnel holds both ends); they are built only for a new series.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints<'a> {
    pub reporter: Reporter,
    pub src: Option<&'a Workload>,
    /// Should be the identity proven in the handshake (not the one the workload is expected
    /// to have), so a spoofing peer is reported as what it proved.
    pub src_identity: Option<&'a Identity>,
    pub dst: Option<&'a Workload>,
    pub dst_identity: Option<&'a Identity>,
    pub service: Option<&'a Service>,
    pub mtls: bool,
}

/// One side's labels, borrowed: the same values [`ConnectionLabels`] holds as strings.
#[derive(Clone, Copy)]
struct PeerRef<'a> {
    workload: Option<&'a Workload>,
    identity: Option<&'a Identity>,
}

impl<'a> PeerRef<'a> {
    fn workload(self) -> &'a str {
        self.workload.map_or(UNKNOWN, |w| w.name.as_str())
    }

    fn canonical_service(self) -> &'a str {
        self.workload.map_or(UNKNOWN, canonical_service)
    }

    fn canonical_revision(self) -> &'a str {
        self.workload.map_or(UNKNOWN, canonical_revision)
    }

    /// A peer we only know by its certificate still has a namespace.
    fn namespace(self) -> &'a str {
        self.workload
            .map(|w| w.namespace.as_str())
            .or_else(|| self.identity.map(|i| i.namespace.as_str()))
            .unwrap_or(UNKNOWN)
    }

    fn principal(self) -> String {
        self.identity.map_or_else(unknown, Identity::to_string)
    }

    /// Whether `principal` is what [`PeerRef::principal`] would spell, without spelling it.
    fn principal_is(self, principal: &str) -> bool {
        match self.identity {
            None => principal == UNKNOWN,
            Some(i) => spells(i, principal),
        }
    }

    fn cluster(self) -> &'a str {
        if self.workload.is_some() {
            CLUSTER
        } else {
            UNKNOWN
        }
    }
}

/// Whether `s` is `i` written out (`spiffe://<td>/ns/<ns>/sa/<sa>`).
fn spells(i: &Identity, s: &str) -> bool {
    (|| {
        let rest = s
            .strip_prefix("spiffe://")?
            .strip_prefix(i.trust_domain.as_str())?;
        let rest = rest
            .strip_prefix("/ns/")?
            .strip_prefix(i.namespace.as_str())?;
        Some(rest.strip_prefix("/sa/")? == i.service_account)
    })()
    .unwrap_or(false)
}

impl<'a> Endpoints<'a> {
    fn source(&self) -> PeerRef<'a> {
        PeerRef {
            workload: self.src,
            identity: self.src_identity,
        }
    }

    fn destination(&self) -> PeerRef<'a> {
        PeerRef {
            workload: self.dst,
            identity: self.dst_identity,
        }
    }

    fn service_hostname(&self) -> &'a str {
        self.service.map_or(UNKNOWN, |s| s.hostname.as_str())
    }

    fn security_policy(&self) -> SecurityPolicy {
        if self.mtls {
            SecurityPolicy::MutualTls
        } else {
            SecurityPolicy::Unknown
        }
    }

    /// The label set these endpoints give, spelled out.
    pub fn labels(&self) -> ConnectionLabels {
        let (s, d) = (self.source(), self.destination());
        let (s_service, s_revision) = (s.canonical_service(), s.canonical_revision());
        let (d_service, d_revision) = (d.canonical_service(), d.canonical_revision());
        let service = |f: fn(&Service) -> &str| self.service.map_or(UNKNOWN, f).to_string();
        ConnectionLabels {
            reporter: self.reporter,
            source_workload: s.workload().into(),
            source_canonical_service: s_service.into(),
            source_canonical_revision: s_revision.into(),
            source_workload_namespace: s.namespace().into(),
            source_principal: s.principal(),
            // Istio's ztunnel reports app/version as the canonical service/revision.
            source_app: s_service.into(),
            source_version: s_revision.into(),
            source_cluster: s.cluster().into(),
            destination_service: service(|s| &s.hostname),
            destination_service_namespace: service(|s| &s.namespace),
            destination_service_name: service(|s| &s.name),
            destination_workload: d.workload().into(),
            destination_canonical_service: d_service.into(),
            destination_canonical_revision: d_revision.into(),
            destination_workload_namespace: d.namespace().into(),
            destination_principal: d.principal(),
            destination_app: d_service.into(),
            destination_version: d_revision.into(),
            destination_cluster: d.cluster().into(),
            request_protocol: "tcp".into(),
            response_flags: ResponseFlags::None,
            connection_security_policy: self.security_policy(),
        }
    }

    /// The lookup hash of the series these endpoints belong to. It covers what tells series
    /// apart in practice (workloads, identities, service, security); the other labels follow
    /// from the workloads, and a lookup compares every label ([`ConnectionLabels::describes`]),
    /// so it stays exact. The series keeps the hash it was filed under.
    pub(super) fn key_hash(&self, b: &impl BuildHasher) -> u64 {
        let (s, d) = (self.source(), self.destination());
        let mut h = b.build_hasher();
        self.reporter.hash(&mut h);
        for side in [s, d] {
            side.workload().hash(&mut h);
            side.namespace().hash(&mut h);
            side.identity.hash(&mut h);
        }
        self.service_hostname().hash(&mut h);
        self.mtls.hash(&mut h);
        h.finish()
    }
}

impl ConnectionLabels {
    /// Whether `e.labels()` would equal these labels (with no response flags), compared field
    /// by field without building them.
    pub(super) fn describes(&self, e: &Endpoints<'_>) -> bool {
        let (s, d) = (e.source(), e.destination());
        let (s_service, s_revision) = (s.canonical_service(), s.canonical_revision());
        let (d_service, d_revision) = (d.canonical_service(), d.canonical_revision());
        let service = |f: fn(&Service) -> &str| e.service.map_or(UNKNOWN, f);
        self.reporter == e.reporter
            && self.response_flags == ResponseFlags::None
            && self.connection_security_policy == e.security_policy()
            && self.source_workload == s.workload()
            && self.source_canonical_service == s_service
            && self.source_canonical_revision == s_revision
            && self.source_workload_namespace == s.namespace()
            && s.principal_is(&self.source_principal)
            && self.source_app == s_service
            && self.source_version == s_revision
            && self.source_cluster == s.cluster()
            && self.destination_service == service(|s| &s.hostname)
            && self.destination_service_namespace == service(|s| &s.namespace)
            && self.destination_service_name == service(|s| &s.name)
            && self.destination_workload == d.workload()
            && self.destination_canonical_service == d_service
            && self.destination_canonical_revision == d_revision
            && self.destination_workload_namespace == d.namespace()
            && d.principal_is(&self.destination_principal)
            && self.destination_app == d_service
            && self.destination_version == d_revision
            && self.destination_cluster == d.cluster()
            && self.request_protocol == "tcp"
    }
}

fn unknown() -> String {
    UNKNOWN.to_string()
}

fn first_label<'a>(w: &'a Workload, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| w.labels.get(*k).map(String::as_str))
}

/// Istio's canonical service: the first of these labels, else the workload name.
pub fn canonical_service(w: &Workload) -> &str {
    first_label(
        w,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or(&w.name)
}

/// Istio's canonical revision: the first of these labels, else `latest`.
pub fn canonical_revision(w: &Workload) -> &str {
    first_label(
        w,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest")
}
