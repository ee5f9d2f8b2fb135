//! L4 authorization with the semantics of Istio's AuthorizationPolicy.

pub mod eval;
pub mod index;
pub mod policy;

pub use eval::{evaluate, Connection, Decision};
pub use index::Index;
pub use policy::{Action, Operation, Policy, Rule, Scope, Source};
