use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::*;
use crate::identity::{Ca, Manager};

const TD: &str = "cluster.local";

fn id(sa: &str) -> Identity {
    Identity::new(TD, "default", sa)
}

fn mesh(ttl: Duration) -> Arc<Manager> {
    Manager::new(Arc::new(Ca::generate(TD).unwrap()), ttl)
}

fn root(m: &Manager) -> CertificateDer<'static> {
    m.ca().root_der()
}

type Both = (
    io::Result<client::TlsStream<DuplexStream>>,
    io::Result<server::TlsStream<DuplexStream>>,
);

async fn handshake(client: Arc<rustls::ClientConfig>, server: Arc<rustls::ServerConfig>) -> Both {
    let (c, s) = duplex(64 * 1024);
    // The server name is deliberately unrelated to any identity: it must be ignored.
    let name = ServerName::try_from("10.0.0.1").unwrap();
    let connect = TlsConnector::from(client).connect(name, c);
    let accept = async {
        let mut tls = TlsAcceptor::from(server).accept(s).await?;
        // In TLS 1.3 the server judges the client certificate after the client has finished;
        // a read forces that verdict to reach the client too.
        tls.write_all(b"ready").await?;
        Ok(tls)
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(connect, accept)
    })
    .await
    .expect("handshake hung")
}

/// Workload a connecting to workload b, both with certificates of `m`'s CA.
async fn handshake_a_to_b(m: &Arc<Manager>) -> Both {
    let a = m.fetch(&id("a")).await.unwrap();
    let b = m.fetch(&id("b")).await.unwrap();
    handshake(
        client_config(a, root(m), vec![id("b")]).unwrap(),
        server_config(b, root(m), TD).unwrap(),
    )
    .await
}

fn serial_of(cert: &CertificateDer<'_>) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    parsed.raw_serial_as_string().replace(':', "")
}

#[tokio::test]
async fn mutual_handshake_sees_both_identities() {
    let m = mesh(Duration::from_secs(3600));
    let (c, s) = handshake_a_to_b(&m).await;
    let (mut c, s) = (c.unwrap(), s.unwrap());

    assert_eq!(peer_identity(s.get_ref().1).unwrap(), id("a"));
    assert_eq!(check_peer_trust_domain(s.get_ref().1, TD).unwrap(), id("a"));
    assert_eq!(peer_identity(c.get_ref().1).unwrap(), id("b"));
    for conn in [c.get_ref().1 as &rustls::CommonState, s.get_ref().1] {
        assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
        );
    }
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ready");
}

/// Whichever record ciphers are chosen, nothing else changes: same suites in the same order,
/// key exchange and signatures still aws-lc-rs's; with ring's, exactly the AES-GCM suites are
/// ring's own, and with aws-lc's, none is.
#[test]
fn provider_offers_the_default_suites_with_either_record_ciphers() {
    use provider::{with_record_ciphers, RecordCiphers};
    use rustls::crypto::{aws_lc_rs, ring, CryptoProvider};
    let default = aws_lc_rs::default_provider();
    let ids = |p: &CryptoProvider| {
        p.cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>()
    };
    let is_ring = |s: &rustls::SupportedCipherSuite| {
        use ring::cipher_suite as r;
        [
            r::TLS13_AES_256_GCM_SHA384,
            r::TLS13_AES_128_GCM_SHA256,
            r::TLS13_CHACHA20_POLY1305_SHA256,
        ]
        .iter()
        .any(|r| match (r, s) {
            (rustls::SupportedCipherSuite::Tls13(r), rustls::SupportedCipherSuite::Tls13(s)) => {
                std::ptr::eq(*r, *s)
            }
            _ => false,
        })
    };
    for ciphers in [RecordCiphers::Ring, RecordCiphers::AwsLc] {
        let ours = with_record_ciphers(ciphers);
        assert_eq!(ids(&ours), ids(&default), "{ciphers:?}");
        for suite in &ours.cipher_suites {
            let aes_gcm = matches!(
                suite.suite(),
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            );
            let expect_ring = aes_gcm && ciphers == RecordCiphers::Ring;
            assert_eq!(
                is_ring(suite),
                expect_ring,
                "{ciphers:?} {:?}",
                suite.suite()
            );
        }
        assert_eq!(ours.kx_groups.len(), default.kx_groups.len());
        for (a, b) in ours.kx_groups.iter().zip(&default.kx_groups) {
            assert_eq!(a.name(), b.name());
        }
    }
}

/// aws-lc's record ciphers exactly where this CPU has every feature aws-lc's AVX-512 AES-GCM
/// needs, read here from /proc/cpuinfo rather than through std's detection.
#[cfg(target_os = "linux")]
#[test]
fn record_ciphers_follow_the_cpus_avx512_aes_gcm_features() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo is readable");
    let flags = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    let needed = [
        "vaes",
        "vpclmulqdq",
        "avx512f",
        "avx512dq",
        "avx512bw",
        "avx512vl",
    ];
    let expected = if cfg!(target_arch = "x86_64") && needed.iter().all(|f| flags.contains(f)) {
        provider::RecordCiphers::AwsLc
    } else {
        provider::RecordCiphers::Ring
    };
    assert_eq!(
        provider::RecordCiphers::for_this_cpu(),
        expected,
        "flags: {flags:?}"
    );
}

#[tokio::test]
async fn client_rejects_unexpected_server_identity() {
    let m = mesh(Duration::from_secs(3600));
    let a = m.fetch(&id("a")).await.unwrap();
    let b = m.fetch(&id("b")).await.unwrap();
    let (c, s) = handshake(
        client_config(a, root(&m), vec![id("c"), id("d")]).unwrap(),
        server_config(b, root(&m), TD).unwrap(),
    )
    .await;
    let err = c.unwrap_err().to_string();
    assert!(
        err.contains("peer identity spiffe://cluster.local/ns/default/sa/b is not one of [spiffe://cluster.local/ns/default/sa/c, spiffe://cluster.local/ns/default/sa/d]"),
        "{err}"
    );
    assert!(s.is_err());
}

#[tokio::test]
async fn client_rejects_server_from_another_ca() {
    let m = mesh(Duration::from_secs(3600));
    let other = mesh(Duration::from_secs(3600));
    let a = m.fetch(&id("a")).await.unwrap();
    let b = other.fetch(&id("b")).await.unwrap();
    let (c, _) = handshake(
        client_config(a, root(&m), vec![id("b")]).unwrap(),
        server_config(b, root(&m), TD).unwrap(),
    )
    .await;
    assert_untrusted(c.unwrap_err());
}

#[tokio::test]
async fn server_rejects_client_from_another_ca() {
    let m = mesh(Duration::from_secs(3600));
    let other = mesh(Duration::from_secs(3600));
    let a = other.fetch(&id("a")).await.unwrap();
    let b = m.fetch(&id("b")).await.unwrap();
    let (c, s) = handshake(
        // The client trusts the server's CA, so only the server can object.
        client_config(a, root(&m), vec![id("b")]).unwrap(),
        server_config(b, root(&m), TD).unwrap(),
    )
    .await;
    assert_untrusted(s.unwrap_err());
    assert_client_refused(c).await;
}

#[tokio::test]
async fn server_rejects_client_without_certificate() {
    let m = mesh(Duration::from_secs(3600));
    let b = m.fetch(&id("b")).await.unwrap();
    let provider = provider();
    let verifier = verify::Server::new(roots(root(&m)).unwrap(), provider.clone(), vec![id("b")]);
    let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
    let (c, s) = handshake(Arc::new(anonymous), server_config(b, root(&m), TD).unwrap()).await;
    let err = s.unwrap_err().to_string();
    assert!(err.contains("peer sent no certificates"), "{err}");
    assert_client_refused(c).await;
}

#[tokio::test]
async fn server_rejects_client_of_another_trust_domain() {
    let m = mesh(Duration::from_secs(3600));
    let foreign = Identity::new("evil.local", "default", "a");
    let a = m.fetch(&foreign).await.unwrap();
    let b = m.fetch(&id("b")).await.unwrap();
    let (c, s) = handshake(
        client_config(a, root(&m), vec![id("b")]).unwrap(),
        server_config(b, root(&m), TD).unwrap(),
    )
    .await;
    let err = s.unwrap_err().to_string();
    assert!(
        err.contains("peer identity spiffe://evil.local/ns/default/sa/a is not in trust domain cluster.local"),
        "{err}"
    );
    assert_client_refused(c).await;
}

/// Both roots carry the same subject, so webpki finds the "issuer" and then fails its signature.
fn assert_untrusted(err: io::Error) {
    let err = err.to_string();
    assert!(
        err.contains("invalid peer certificate: BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

/// The client may finish its half of the handshake before the server's verdict arrives; it must
/// then fail on first use rather than receive data.
async fn assert_client_refused(c: io::Result<client::TlsStream<DuplexStream>>) {
    if let Ok(mut c) = c {
        let mut buf = [0u8; 5];
        assert!(
            c.read_exact(&mut buf).await.is_err(),
            "client received data from a refusing server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_open_connections_and_serves_new_cert() {
    let m = mesh(Duration::from_secs(2));
    let a = m.fetch(&id("a")).await.unwrap();
    let b = m.fetch(&id("b")).await.unwrap();
    let cc = client_config(a.clone(), root(&m), vec![id("b")]).unwrap();
    let sc = server_config(b.clone(), root(&m), TD).unwrap();

    let (c, s) = handshake(cc.clone(), sc.clone()).await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let old_a = a.info().serial;
    let old_b = b.info().serial;
    let seen = &s.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(serial_of(seen), old_a);

    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while a.info().serial == old_a || b.info().serial == old_b {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificates not renewed within 1.5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(m.renewals() >= 2);

    // The connection established with the old certificates keeps working both ways.
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    c.write_all(b"ping!").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping!");
    s.write_all(b"pong!").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong!");

    // New handshakes on the same configs present the renewed certificates.
    let (c2, s2) = handshake(cc, sc).await;
    let (c2, s2) = (c2.unwrap(), s2.unwrap());
    let client_seen = &c2.get_ref().1.peer_certificates().unwrap()[0];
    let server_seen = &s2.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(serial_of(client_seen), b.info().serial);
    assert_eq!(serial_of(server_seen), a.info().serial);
    assert_ne!(serial_of(server_seen), old_a);
}

#[test]
fn peer_identity_requires_a_certificate() {
    let conn = rustls::ClientConnection::new(
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        ),
        ServerName::try_from("example.com").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        peer_identity(&conn),
        Err(Error::NoPeerCertificate)
    ));
}

/// Over TCP rustls takes a whole 256 KiB DATA frame (header included) in one write, so it is
/// sealed and sent in one go; over the in-process pipe it keeps its default of 64 KiB.
#[tokio::test]
async fn send_limit_fits_a_bulk_frame_over_tcp_only() {
    use std::io::Write as _;
    let m = mesh(Duration::from_secs(3600));
    let frame = vec![0u8; 256 * 1024 + 9];
    let mut accepted = Vec::new();
    for over_tcp in [true, false] {
        let (c, _s) = handshake_a_to_b(&m).await;
        let mut c = c.unwrap();
        let conn = c.get_mut().1;
        if over_tcp {
            apply_send_limit::<ReadAhead<tokio::net::TcpStream>, _>(conn);
        } else {
            apply_send_limit::<DuplexStream, _>(conn);
        }
        accepted.push(conn.writer().write(&frame).unwrap());
    }
    assert_eq!(accepted, vec![frame.len(), 64 * 1024]);
}
