//! rustls configurations for HBONE: mutual TLS 1.3 with SPIFFE identities, ALPN h2.
//!
//! Peers are authenticated by the URI SAN of their leaf certificate, never by DNS name: the
//! server name a client passes to rustls is ignored.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::identity::{Identity, WorkloadCert};

mod read_ahead;
mod resolve;
mod verify;

pub use read_ahead::ReadAhead;
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

/// The crypto provider every HBONE config uses; built once per config (it is cheap).
///
/// aws-lc-rs for everything but the AES-GCM record ciphers, which come from ring: on CPUs with
/// VAES and VPCLMULQDQ but no AVX-512 (AMD Zen 3, Intel Alder Lake and later client cores)
/// ring has a 256-bit VAES implementation where aws-lc falls back to 128-bit AES-NI, and
/// encrypting and decrypting the tunnels' bytes is the largest part of ztunnel's CPU per byte
/// (2.3 against 4.7-6.5 GB/s for AES-256-GCM on 16 KiB records on the benchmark machine).
/// The suites, their order and so what is negotiated are aws-lc-rs's defaults, unchanged.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    for suite in &mut provider.cipher_suites {
        *suite = record_cipher(*suite);
    }
    Arc::new(provider)
}

/// ring's implementation of a TLS 1.3 AES-GCM suite; other suites as they are.
fn record_cipher(suite: rustls::SupportedCipherSuite) -> rustls::SupportedCipherSuite {
    use rustls::crypto::ring::cipher_suite as ring;
    use rustls::CipherSuite as Id;
    match suite.suite() {
        Id::TLS13_AES_256_GCM_SHA384 => ring::TLS13_AES_256_GCM_SHA384,
        Id::TLS13_AES_128_GCM_SHA256 => ring::TLS13_AES_128_GCM_SHA256,
        _ => suite,
    }
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
