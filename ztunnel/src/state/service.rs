use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub service_port: u16,
    pub target_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Endpoints are the workloads of the same namespace whose labels match.
    pub selector: BTreeMap<String, String>,
}

impl Service {
    pub fn target_port(&self, service_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.service_port == service_port)
            .map(|p| p.target_port)
    }
}
