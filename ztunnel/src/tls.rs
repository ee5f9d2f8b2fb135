//! rustls configurations for HBONE: mutual TLS 1.3 with SPIFFE identities, ALPN h2.
//!
//! Peers are authenticated by the URI SAN of their leaf certificate, never by DNS name: the
//! server name a client passes to rustls is ignored.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::identity::{Identity, WorkloadCert};

mod provider;
mod read_ahead;
mod resolve;
mod send_limit;
mod verify;

pub use provider::provider;
pub use read_ahead::ReadAhead;
pub use send_limit::{apply as apply_send_limit, Transport};
pub use verify::{check_peer_trust_domain, Rejected};

/// The only application protocol spoken inside HBONE tunnels.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("cannot parse peer certificate: {0}")]
    ParseCertificate(String),
    #[error("peer certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("peer certificate has {0} URI SANs; exactly one SPIFFE ID is required")]
    MultipleUriSans(usize),
    #[error("peer URI SAN is not a valid SPIFFE identity: {0}")]
    InvalidSpiffeId(#[from] crate::identity::ParseError),
    #[error("peer identity {actual} is not one of [{}]", join(.expected))]
    UnexpectedIdentity {
        actual: Identity,
        expected: Vec<Identity>,
    },
    #[error("peer identity {actual} is not in trust domain {expected}")]
    ForeignTrustDomain { actual: Identity, expected: String },
    #[error("invalid root certificate: {0}")]
    Root(rustls::Error),
    #[error("cannot build TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn join(ids: &[Identity]) -> String {
    ids.iter()
        .map(Identity::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn roots(root: CertificateDer<'static>) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    store.add(root).map_err(Error::Root)?;
    Ok(Arc::new(store))
}

/// Client side of an HBONE connection: presents `cert`'s current key and accepts only a server
/// whose chain verifies against `root` and whose identity is one of `expected`.
pub fn client_config(
    cert: Arc<WorkloadCert>,
    root: CertificateDer<'static>,
    expected: Vec<Identity>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = provider();
    let verifier = verify::Server::new(roots(root)?, provider.clone(), expected);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(resolve::Current(cert)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Tunnels are long-lived and pooled; resumption would skip re-checking identities on a
    // renewed certificate for no measurable gain.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Server side of an HBONE connection: serves `cert`'s current key and requires a client
/// certificate chaining to `root` with a SPIFFE identity in `trust_domain`.
pub fn server_config(
    cert: Arc<WorkloadCert>,
    root: CertificateDer<'static>,
    trust_domain: &str,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = provider();
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(root)?, provider.clone())
            .build()?;
    let verifier = verify::Client::new(inner, trust_domain.to_string());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(resolve::Current(cert)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The SPIFFE identity of the peer's leaf certificate on an established connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, Error> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(Error::NoPeerCertificate)?;
    verify::identity_of(leaf)
}

#[cfg(test)]
mod tests;
