//! ztunnel: the per-node data plane of an ambient mesh.
//!
//! The module tree is the architecture: `state` (what the mesh looks like), `identity` and `tls`
//! (who we are and how peers prove who they are), `hbone` (the tunnel protocol and its pool),
//! `capture` and `netns` (how pod traffic reaches us), `pod` (the listeners of each enrolled
//! pod), `outbound`/`inbound` (the proxies), `authz` (who may connect), `metrics`, `telemetry`
//! and `admin` (what operators see), `config` and `app` (how it is all put together).

pub mod admin;
pub mod app;
pub mod authz;
pub mod capture;
pub mod cli;
pub mod config;
pub mod dns;
pub mod hbone;
pub mod identity;
pub mod inbound;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod outbound;
pub mod pod;
pub mod proxy;
pub mod socket;
pub mod state;
pub mod telemetry;
pub mod tls;
