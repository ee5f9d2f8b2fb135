//! L4 authorization with the semantics of Istio's AuthorizationPolicy.

pub mod policy;

pub use policy::{Action, Operation, Policy, Rule, Scope, Source};
