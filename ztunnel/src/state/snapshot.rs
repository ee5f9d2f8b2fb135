use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::{PeerAuthentication, Service, Workload, WorkloadUid};
use crate::authz::Policy;

/// An immutable, indexed view of the mesh state. Proxies hold an `Arc<Snapshot>` for the
/// duration of a decision, so a concurrent update never shows them half a change.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<Policy>>,
    pub peer_authentications: Vec<PeerAuthentication>,
    #[serde(skip)]
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    #[serde(skip)]
    by_uid: HashMap<WorkloadUid, Arc<Workload>>,
    #[serde(skip)]
    by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Endpoints of each service, in the order of `services`.
    #[serde(skip)]
    endpoints: Vec<Vec<Arc<Workload>>>,
}

impl Snapshot {
    pub fn new(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Policy>,
        peer_authentications: Vec<PeerAuthentication>,
    ) -> Self {
        let workloads: Vec<Arc<Workload>> = workloads.into_iter().map(Arc::new).collect();
        let services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        let by_ip = workloads
            .iter()
            .flat_map(|w| w.ips.iter().map(move |ip| (*ip, w.clone())))
            .collect();
        let by_uid = workloads
            .iter()
            .map(|w| (w.uid.clone(), w.clone()))
            .collect();
        let by_vip = services
            .iter()
            .flat_map(|s| s.vips.iter().map(move |ip| (*ip, s.clone())))
            .collect();
        let endpoints = services
            .iter()
            .map(|s| {
                workloads
                    .iter()
                    .filter(|w| w.namespace == s.namespace && w.matches(&s.selector))
                    .cloned()
                    .collect()
            })
            .collect();
        Self {
            workloads,
            services,
            policies: policies.into_iter().map(Arc::new).collect(),
            peer_authentications,
            by_ip,
            by_uid,
            by_vip,
            endpoints,
        }
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn workload_by_uid(&self, uid: &WorkloadUid) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// The endpoints of `service`, which must come from this snapshot.
    pub fn endpoints(&self, service: &Arc<Service>) -> &[Arc<Workload>] {
        self.services
            .iter()
            .position(|s| Arc::ptr_eq(s, service))
            .map(|i| self.endpoints[i].as_slice())
            .unwrap_or(&[])
    }

    /// Workloads scheduled on `node`.
    pub fn local_workloads<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads.iter().filter(move |w| w.node == node)
    }
}
