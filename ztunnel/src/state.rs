//! Mesh state: workloads, services, authorization and peer-authentication policies.
//!
//! State is not configuration: it flows from a source (the local file today, Kubernetes later)
//! into one [`Store`] whose snapshots the proxies read without locking.

pub mod peer_authn;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod workload;

pub use peer_authn::{MtlsMode, PeerAuthentication};
pub use service::{Service, ServicePort};
pub use snapshot::Snapshot;
pub use store::Store;
pub use workload::{Protocol, Workload, WorkloadUid};
