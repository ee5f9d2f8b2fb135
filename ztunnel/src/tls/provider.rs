//! The crypto provider every HBONE config uses, and whose AES-GCM seals its records.
//!
//! Encrypting and decrypting the tunnels' bytes is the largest part of ztunnel's CPU per byte,
//! and the two crates rustls can use differ by CPU in how wide their AES-GCM code is:
//! - aws-lc has a 512-bit VAES implementation for CPUs with AVX-512 (Intel Ice Lake server
//!   and later, AMD Zen 4 and later), and otherwise falls back to 128-bit AES-NI;
//! - ring has a 256-bit VAES + AVX2 implementation and no AVX-512 one.
//!
//! So on CPUs with VAES but no AVX-512 (AMD Zen 3, Intel client cores) ring's is about twice
//! aws-lc's, and with AVX-512 aws-lc's is about 1.5 times ring's (one-core seal of 16 KiB
//! records, AES-256-GCM: 2.3 against 4.7-6.5 GB/s on an EPYC without AVX-512; 10.3-10.6
//! against 6.8-7.1 GB/s on a Xeon with it).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Whose AES-GCM record protection the provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordCiphers {
    /// aws-lc-rs's own, as its default provider has them.
    AwsLc,
    /// ring's, swapped into aws-lc-rs's provider.
    Ring,
}

impl RecordCiphers {
    /// aws-lc's where it would take its AVX-512 path, ring's elsewhere.
    pub(super) fn for_this_cpu() -> Self {
        if aws_lc_has_avx512_gcm() {
            RecordCiphers::AwsLc
        } else {
            RecordCiphers::Ring
        }
    }
}

/// The CPU features aws-lc requires before it runs AES-GCM with 512-bit vectors
/// (`crypto_gcm_avx512_enabled`: VAES, VPCLMULQDQ and AVX-512 F, DQ, BW and VL, enabled by the
/// kernel). std's detection checks the kernel's XSAVE state as aws-lc's does.
fn aws_lc_has_avx512_gcm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("vaes")
            && std::is_x86_feature_detected!("vpclmulqdq")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// aws-lc-rs's default provider with the record ciphers that are fastest on this CPU; built
/// once per config (it is cheap: std caches the feature detection). The suites, their order
/// and so what is negotiated stay aws-lc-rs's defaults, as do key exchange and signatures.
pub fn provider() -> Arc<CryptoProvider> {
    with_record_ciphers(RecordCiphers::for_this_cpu())
}

pub(super) fn with_record_ciphers(ciphers: RecordCiphers) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if ciphers == RecordCiphers::Ring {
        for suite in &mut provider.cipher_suites {
            *suite = ring_record_cipher(*suite);
        }
    }
    Arc::new(provider)
}

/// ring's implementation of a TLS 1.3 AES-GCM suite; other suites as they are.
fn ring_record_cipher(suite: rustls::SupportedCipherSuite) -> rustls::SupportedCipherSuite {
    use rustls::crypto::ring::cipher_suite as ring;
    use rustls::CipherSuite as Id;
    match suite.suite() {
        Id::TLS13_AES_256_GCM_SHA384 => ring::TLS13_AES_256_GCM_SHA384,
        Id::TLS13_AES_128_GCM_SHA256 => ring::TLS13_AES_128_GCM_SHA256,
        _ => suite,
    }
}
