//! What the inbound and outbound proxies share: the context they run in, the data-path error
//! model and the byte copy between two sockets.

pub mod access;
pub mod connect;
pub mod context;
pub mod copy;
pub mod error;
pub mod splice;

pub use context::Context;
pub use error::{Error, Fault, Kind};
