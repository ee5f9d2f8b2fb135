use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Plaintext inbound connections are accepted (subject to authorization).
    Permissive,
    /// Only HBONE (mutual TLS) inbound connections are accepted.
    Strict,
}

/// Istio's PeerAuthentication, reduced to what an L4 node proxy enforces: the mTLS mode for a
/// namespace (no selector), a set of workloads (selector), or the whole mesh (root namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
}
