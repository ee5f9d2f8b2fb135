//! ztunnel: the per-node data plane of an ambient mesh.
//!
//! The module tree is the architecture: `state` (what the mesh looks like), `identity` and `tls`
//! (who we are and how peers prove who they are), `hbone` (the tunnel protocol and its pool),
//! `capture` and `netns` (how pod traffic reaches us), `inbound`/`outbound` (the proxies),
//! `authz` (who may connect), `metrics` and `admin` (what operators see).

pub mod authz;
pub mod capture;
pub mod config;
pub mod hbone;
pub mod identity;
pub mod metrics;
pub mod netns;
pub mod socket;
pub mod state;
pub mod tls;
