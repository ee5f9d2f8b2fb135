//! The mesh root CA: signs short-lived workload certificates carrying a SPIFFE URI SAN.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::Identity;

/// File names used inside the state directory when no explicit root is configured.
pub const CERT_FILE: &str = "ca-cert.pem";
pub const KEY_FILE: &str = "ca-key.pem";

/// Peers' clocks may run slightly behind ours; backdating avoids "not yet valid" rejections.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot parse root CA certificate PEM: {0}")]
    ParseCert(String),
    #[error("cannot parse root CA private key PEM (expected PKCS#8/SEC1 ECDSA P-256): {0}")]
    ParseKey(rcgen::Error),
    #[error("root CA private key does not match the public key of the root CA certificate")]
    KeyMismatch,
    #[error("root CA certificate and key must be given together; only the {0} path was given")]
    HalfConfigured(&'static str),
    #[error(
        "state directory {dir} holds only one of {CERT_FILE} and {KEY_FILE}; restore or remove it"
    )]
    HalfState { dir: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity {identity} cannot be encoded as a URI SAN: {source}")]
    San {
        identity: String,
        source: rcgen::Error,
    },
    #[error("certificate validity is out of range: {0}")]
    Validity(String),
    #[error("cannot generate or sign certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A freshly signed workload certificate with its private key.
#[derive(Debug)]
pub struct Issued {
    /// Leaf first, then the root.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Lowercase hex of the serial number bytes.
    pub serial: String,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately omits the signing key.
        f.debug_struct("Ca")
            .field("root_pem", &self.root_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new self-signed ECDSA P-256 root for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = unix_secs(SystemTime::now());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(
            DnType::CommonName,
            format!("ztunnel root CA for {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial().0);
        params.not_before = to_offset(now - CLOCK_SKEW.as_secs())?;
        params.not_after = to_offset(now + ROOT_VALIDITY.as_secs())?;
        let cert = params.self_signed(&key)?;
        let root_der = cert.der().clone();
        let root_pem = cert.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
        })
    }

    /// Loads an existing root from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| Error::ParseCert("no CERTIFICATE block found".into()))?
            .map_err(|e| Error::ParseCert(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| Error::ParseCert(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(Error::ParseKey)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::KeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|e| Error::ParseCert(e.to_string()))?;
        let root_pem = der_to_pem(&der);
        Ok(Ca {
            issuer,
            root_der: der,
            root_pem,
        })
    }

    /// Loads the configured root, or reuses (creating on first start) one persisted in `state_dir`.
    pub fn load_or_create(
        root_cert: Option<&Path>,
        root_key: Option<&Path>,
        state_dir: &Path,
    ) -> Result<Ca, Error> {
        match (root_cert, root_key) {
            (Some(cert), Some(key)) => Ca::from_pem(&read(cert)?, &read(key)?),
            (Some(_), None) => Err(Error::HalfConfigured("certificate")),
            (None, Some(_)) => Err(Error::HalfConfigured("key")),
            (None, None) => {
                let cert = state_dir.join(CERT_FILE);
                let key = state_dir.join(KEY_FILE);
                match (cert.exists(), key.exists()) {
                    (true, true) => Ca::from_pem(&read(&cert)?, &read(&key)?),
                    (false, false) => {
                        let trust_domain = "cluster.local";
                        let ca = Ca::generate(trust_domain)?;
                        fs::create_dir_all(state_dir).map_err(|source| Error::Io {
                            action: "create directory",
                            path: state_dir.to_path_buf(),
                            source,
                        })?;
                        write_atomic(&key, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                        write_atomic(&cert, ca.root_pem.as_bytes(), 0o644)?;
                        Ok(ca)
                    }
                    _ => Err(Error::HalfState {
                        dir: state_dir.to_path_buf(),
                    }),
                }
            }
        }
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// Signs a fresh leaf for `id` valid from one minute ago until `ttl` from now.
    pub fn issue(&self, id: &Identity, ttl: Duration) -> Result<Issued, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let uri = id.to_string();
        let san = uri.clone().try_into().map_err(|source| Error::San {
            identity: uri,
            source,
        })?;
        let now = unix_secs(SystemTime::now());
        // Round the lifetime up so a sub-second ttl still yields a usable certificate.
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let not_before = now.saturating_sub(CLOCK_SKEW.as_secs());
        let not_after = now + ttl_secs;
        let (serial, serial_hex) = random_serial();

        let mut params = CertificateParams::default();
        // SPIFFE leaves identify by URI SAN only; an empty subject avoids implying anything else.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(san)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial);
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        let cert = params.signed_by(&key, &self.issuer)?;

        Ok(Issued {
            chain: vec![cert.der().clone(), self.root_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: UNIX_EPOCH + Duration::from_secs(not_before),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
            serial: serial_hex,
        })
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn to_offset(secs: u64) -> Result<OffsetDateTime, Error> {
    let secs = i64::try_from(secs).map_err(|e| Error::Validity(e.to_string()))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| Error::Validity(e.to_string()))
}

/// 128 random bits, kept positive and without a leading zero byte so the DER integer, and
/// therefore the hex form peers see, is exactly these 16 bytes.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

/// PEM-encodes a certificate, for operators and the admin endpoint.
pub fn der_to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref()))
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes via a temporary file and rename so a crash never leaves a truncated key behind.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let io = |action, source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename into place", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::GeneralName;

    fn id() -> Identity {
        Identity::new("cluster.local", "default", "sleep")
    }

    #[test]
    fn generated_root_is_a_ca() {
        let ca = Ca::generate("cluster.local").unwrap();
        let der = ca.root_der();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign());
        assert!(ca.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn issues_spiffe_leaf() {
        let ca = Ca::generate("cluster.local").unwrap();
        let before = SystemTime::now();
        let issued = ca.issue(&id(), Duration::from_secs(3600)).unwrap();
        assert_eq!(issued.chain.len(), 2);
        assert_eq!(issued.chain[1], ca.root_der());

        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
        assert!(!leaf.is_ca());
        let sans = &leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans.as_slice(),
            &[GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/sleep"
            )]
        );
        assert!(leaf.key_usage().unwrap().unwrap().value.digital_signature());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(leaf.raw_serial_as_string().replace(':', ""), issued.serial);

        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        let now = unix_secs(before) as i64;
        assert!(
            (now - 61..=now - 59).contains(&nb),
            "not_before {nb} vs now {now}"
        );
        assert!(
            (now + 3599..=now + 3601).contains(&na),
            "not_after {na} vs now {now}"
        );
        assert_eq!(
            issued.not_after,
            UNIX_EPOCH + Duration::from_secs(na as u64)
        );

        let other = ca.issue(&id(), Duration::from_secs(3600)).unwrap();
        assert_ne!(other.serial, issued.serial);
        assert_ne!(other.key.secret_der(), issued.key.secret_der());
    }

    #[test]
    fn from_pem_round_trips_and_signs() {
        let ca = Ca::generate("cluster.local").unwrap();
        let key_pem = ca.issuer.key().serialize_pem();
        let loaded = Ca::from_pem(&ca.root_pem(), &key_pem).unwrap();
        assert_eq!(loaded.root_der(), ca.root_der());
        let issued = loaded.issue(&id(), Duration::from_secs(60)).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
        let root_der = ca.root_der();
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn from_pem_reports_what_is_wrong() {
        let ca = Ca::generate("cluster.local").unwrap();
        let other = Ca::generate("cluster.local").unwrap();
        let key_pem = ca.issuer.key().serialize_pem();
        assert!(matches!(
            Ca::from_pem("garbage", &key_pem),
            Err(Error::ParseCert(_))
        ));
        assert!(matches!(
            Ca::from_pem(&ca.root_pem(), "garbage"),
            Err(Error::ParseKey(_))
        ));
        let err = Ca::from_pem(&other.root_pem(), &key_pem).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch), "{err}");
    }

    #[test]
    fn load_or_create_persists_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested/state");
        let first = Ca::load_or_create(None, None, &state).unwrap();
        let mode = fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Ca::load_or_create(None, None, &state).unwrap();
        assert_eq!(first.root_der(), second.root_der());

        let explicit = Ca::load_or_create(
            Some(&state.join(CERT_FILE)),
            Some(&state.join(KEY_FILE)),
            dir.path(),
        )
        .unwrap();
        assert_eq!(explicit.root_der(), first.root_der());
    }

    #[test]
    fn load_or_create_rejects_half_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let err = Ca::load_or_create(Some(&cert), None, dir.path()).unwrap_err();
        assert!(matches!(err, Error::HalfConfigured("certificate")), "{err}");
        let err = Ca::load_or_create(None, Some(&cert), dir.path()).unwrap_err();
        assert!(matches!(err, Error::HalfConfigured("key")), "{err}");

        fs::write(dir.path().join(CERT_FILE), "x").unwrap();
        let err = Ca::load_or_create(None, None, dir.path()).unwrap_err();
        assert!(matches!(err, Error::HalfState { .. }), "{err}");
    }
}
