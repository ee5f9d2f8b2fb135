//! HBONE: TCP tunnelled through HTTP/2 CONNECT streams, multiplexed over one (m)TLS connection
//! per peer. This layer is transport-agnostic: it drives h2 over any established byte stream,
//! so TLS is layered underneath by the caller.

pub mod client;
pub mod error;
pub mod headers;
pub mod pool;
pub mod server;
pub mod settings;
pub mod stream;

#[cfg(test)]
mod tests;

pub use client::Client;
pub use error::Error;
pub use pool::{Pool, PoolStats};
pub use server::{Incoming, RejectReason, Server};
pub use settings::Settings;
pub use stream::Stream;
