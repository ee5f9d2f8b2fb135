//! Certificates for independent peers, issued with the `openssl` command line rather than with
//! ztunnel's own code, so the peers' certificates are not shaped by the implementation under test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A certificate authority's PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A leaf certificate (PEM) with its private key and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("interop tests need the `openssl` command: install openssl (.ci/run does)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

impl Pki {
    /// An existing CA, e.g. ztunnel's `ca-cert.pem` / `ca-key.pem` in its state directory.
    pub fn existing(dir: &Path) -> Pki {
        Pki {
            cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
        }
    }

    /// A new self-signed ECDSA P-256 root in `dir` (a CA the mesh does not trust).
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<Pki> {
        let key = dir.join(format!("{name}-key.pem"));
        let cert = dir.join(format!("{name}-cert.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            path_str(&key)?,
            "-out",
            path_str(&cert)?,
            "-days",
            "2",
            "-subj",
            &format!("/O={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        Ok(Pki { cert, key })
    }

    /// Issues an ECDSA P-256 leaf whose only SAN is the URI `spiffe_id`, usable for both TLS
    /// client and server authentication, written to `dir/<name>-{cert,key}.pem`.
    pub fn issue(&self, dir: &Path, name: &str, spiffe_id: &str) -> anyhow::Result<Leaf> {
        let key = dir.join(format!("{name}-key.pem"));
        let csr = dir.join(format!("{name}.csr"));
        let cert = dir.join(format!("{name}-cert.pem"));
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=critical,URI:{spiffe_id}\n"
            ),
        )
        .with_context(|| format!("cannot write {}", ext.display()))?;
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            path_str(&key)?,
            "-out",
            path_str(&csr)?,
            "-subj",
            "/O=interop",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&self.cert)?,
            "-CAkey",
            path_str(&self.key)?,
            "-set_serial",
            &serial(),
            "-days",
            "1",
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&cert)?,
        ])?;
        Ok(Leaf {
            cert,
            key,
            ca: self.cert.clone(),
        })
    }
}

/// A serial number unique enough for test certificates (RFC 5280: positive, at most 20 bytes).
fn serial() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("0x{:x}{:08x}", nanos, std::process::id())
}
