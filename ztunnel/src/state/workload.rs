use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::identity::Identity;

/// Stable identifier of a workload (a pod's UID in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct WorkloadUid(pub String);

impl std::fmt::Display for WorkloadUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How traffic reaches a workload: through an HBONE tunnel (enrolled in the mesh) or plain TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Hbone,
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: WorkloadUid,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub protocol: Protocol,
    /// Network namespace of an enrolled pod on this node; ztunnel opens its listeners there.
    pub netns: Option<PathBuf>,
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }

    /// True when every `key: value` of `selector` is among the workload's labels.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}
