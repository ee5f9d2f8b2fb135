//! Peer verification by SPIFFE identity: the chain must reach the mesh root, and the leaf's URI
//! SAN decides who the peer is.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, SignatureScheme,
};
use x509_parser::extensions::GeneralName;

use super::Error;
use crate::identity::Identity;

/// The SPIFFE identity in a certificate's single URI SAN.
pub(super) fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Error::ParseCertificate(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| Error::ParseCertificate(e.to_string()))?
        .ok_or(Error::NoSpiffeId)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(Error::NoSpiffeId),
        [uri] => Ok(uri.parse()?),
        many => Err(Error::MultipleUriSans(many.len())),
    }
}

/// After the handshake: the peer's identity, provided it belongs to `trust_domain`.
pub fn check_peer_trust_domain(conn: &CommonState, trust_domain: &str) -> Result<Identity, Error> {
    let id = super::peer_identity(conn)?;
    in_trust_domain(id, trust_domain)
}

fn in_trust_domain(id: Identity, trust_domain: &str) -> Result<Identity, Error> {
    if id.trust_domain == trust_domain {
        Ok(id)
    } else {
        Err(Error::ForeignTrustDomain {
            actual: id,
            expected: trust_domain.to_string(),
        })
    }
}

/// Carries our error through rustls into the handshake failure the caller sees. rustls prints
/// the inner error with `Debug`, so that prints the actionable message rather than the struct.
pub struct Rejected(pub Error);

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn rejected(e: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejected(e)))))
}

/// Client-side verification of the server: root CA chain plus an allow-list of identities.
#[derive(Debug)]
pub(super) struct Server {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Vec<Identity>,
}

impl Server {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        expected: Vec<Identity>,
    ) -> Self {
        Self {
            roots,
            provider,
            expected,
        }
    }
}

impl ServerCertVerifier for Server {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let actual = identity_of(end_entity).map_err(rejected)?;
        if !self.expected.contains(&actual) {
            return Err(rejected(Error::UnexpectedIdentity {
                actual,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server-side verification of the client: webpki chain checks, then the trust domain.
#[derive(Debug)]
pub(super) struct Client {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl Client {
    pub(super) fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: String) -> Self {
        Self {
            inner,
            trust_domain,
        }
    }
}

impl ClientCertVerifier for Client {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity).map_err(rejected)?;
        in_trust_domain(id, &self.trust_domain).map_err(rejected)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
