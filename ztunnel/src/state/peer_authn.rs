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

impl PeerAuthentication {
    fn selects(&self, w: &super::Workload) -> bool {
        w.namespace == self.namespace && self.selector.as_ref().is_some_and(|s| w.matches(s))
    }
}

/// The mTLS mode in force for `w`: a workload-selector policy beats its namespace's policy,
/// which beats the mesh-wide one in the root namespace; with none, PERMISSIVE (Istio's order).
pub fn mode_for(
    policies: &[PeerAuthentication],
    w: &super::Workload,
    root_namespace: &str,
) -> MtlsMode {
    let by_selector = policies.iter().find(|p| p.selects(w));
    let by_namespace = || {
        policies
            .iter()
            .find(|p| p.selector.is_none() && p.namespace == w.namespace)
    };
    let mesh = || {
        policies
            .iter()
            .find(|p| p.selector.is_none() && p.namespace == root_namespace)
    };
    by_selector
        .or_else(by_namespace)
        .or_else(mesh)
        .map_or(MtlsMode::Permissive, |p| p.mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Protocol, Workload, WorkloadUid};

    fn pa(ns: &str, sel: Option<(&str, &str)>, mode: MtlsMode) -> PeerAuthentication {
        PeerAuthentication {
            name: "p".into(),
            namespace: ns.into(),
            selector: sel.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
            mode,
        }
    }

    fn workload(ns: &str, app: &str) -> Workload {
        Workload {
            uid: WorkloadUid("u".into()),
            name: "w".into(),
            namespace: ns.into(),
            service_account: "sa".into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![],
            node: "n".into(),
            protocol: Protocol::Hbone,
            netns: None,
        }
    }

    #[test]
    fn most_specific_wins() {
        let w = workload("default", "echo");
        assert_eq!(mode_for(&[], &w, "istio-system"), MtlsMode::Permissive);
        let mesh = pa("istio-system", None, MtlsMode::Strict);
        assert_eq!(
            mode_for(std::slice::from_ref(&mesh), &w, "istio-system"),
            MtlsMode::Strict
        );
        let ns = pa("default", None, MtlsMode::Permissive);
        assert_eq!(
            mode_for(&[mesh.clone(), ns.clone()], &w, "istio-system"),
            MtlsMode::Permissive
        );
        let sel = pa("default", Some(("app", "echo")), MtlsMode::Strict);
        assert_eq!(
            mode_for(&[mesh, ns, sel.clone()], &w, "istio-system"),
            MtlsMode::Strict
        );
        let other = workload("default", "other");
        assert_eq!(
            mode_for(&[sel], &other, "istio-system"),
            MtlsMode::Permissive
        );
    }
}
