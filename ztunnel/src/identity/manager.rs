//! Per-node cache of workload certificates, issued on first use and renewed at half-life.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use super::ca::{self, Ca, Issued};
use super::Identity;

/// After a failed renewal, retry this often (bounded by the remaining lifetime).
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot issue certificate: {0}")]
    Issue(#[from] ca::Error),
    #[error("issued key is not usable by rustls: {0}")]
    Key(rustls::Error),
    #[error("certificate signing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What `/config_dump` shows about a certificate: never the private key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub identity: String,
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    /// `not_after` as Unix seconds, for the expiry gauge.
    pub expires_unix: u64,
    /// Leaf first, then the root.
    pub chain_pem: Vec<String>,
}

/// One workload identity's certificate; the key inside is swapped on renewal so every holder
/// (TLS configs included) presents the newest one on its next handshake.
#[derive(Debug)]
pub struct WorkloadCert {
    identity: Identity,
    current: ArcSwap<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    not_after: SystemTime,
}

impl WorkloadCert {
    fn new(identity: Identity, issued: Issued) -> Result<Self, Error> {
        let current = Current::new(&identity, issued)?;
        Ok(Self {
            identity,
            current: ArcSwap::from_pointee(current),
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current.load().key.clone()
    }

    pub fn not_after(&self) -> SystemTime {
        self.current.load().not_after
    }

    pub fn info(&self) -> CertInfo {
        self.current.load().info.clone()
    }

    fn replace(&self, issued: Issued) -> Result<(), Error> {
        let current = Current::new(&self.identity, issued)?;
        self.current.store(Arc::new(current));
        Ok(())
    }
}

impl Current {
    fn new(identity: &Identity, issued: Issued) -> Result<Self, Error> {
        let signer =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&issued.key).map_err(Error::Key)?;
        let info = CertInfo {
            identity: identity.to_string(),
            serial: issued.serial,
            not_before: rfc3339(issued.not_before),
            not_after: rfc3339(issued.not_after),
            expires_unix: issued
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            chain_pem: issued.chain.iter().map(ca::der_to_pem).collect(),
        };
        Ok(Self {
            key: Arc::new(CertifiedKey::new(issued.chain, signer)),
            info,
            not_after: issued.not_after,
        })
    }
}

#[derive(Default)]
struct Entry {
    cell: Arc<OnceCell<Arc<WorkloadCert>>>,
    renewer: Option<AbortHandle>,
}

pub struct Manager {
    ca: Arc<Ca>,
    ttl: Duration,
    entries: Mutex<HashMap<Identity, Entry>>,
    renewals: AtomicU64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("ttl", &self.ttl)
            .field("renewals", &self.renewals())
            .finish_non_exhaustive()
    }
}

impl Manager {
    pub fn new(ca: Arc<Ca>, ttl: Duration) -> Arc<Manager> {
        Arc::new(Manager {
            ca,
            ttl,
            entries: Mutex::new(HashMap::new()),
            renewals: AtomicU64::new(0),
        })
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Number of successful renewals since start, for metrics.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Returns the certificate for `id`, issuing it on first use. Concurrent first calls share
    /// one issuance.
    pub async fn fetch(self: &Arc<Self>, id: &Identity) -> Result<Arc<WorkloadCert>, Error> {
        let cell = self.lock().entry(id.clone()).or_default().cell.clone();
        let cert = cell
            .get_or_try_init(|| async {
                let issued = self.sign(id).await?;
                let cert = Arc::new(WorkloadCert::new(id.clone(), issued)?);
                self.start_renewal(&cell, &cert);
                Ok::<_, Error>(cert)
            })
            .await?;
        Ok(cert.clone())
    }

    /// Stops renewing `id` and drops it from the cache; holders keep their last certificate.
    pub fn forget(&self, id: &Identity) {
        if let Some(entry) = self.lock().remove(id) {
            if let Some(renewer) = entry.renewer {
                renewer.abort();
            }
        }
    }

    /// Snapshot of all issued certificates, sorted by identity.
    pub fn certs(&self) -> Vec<CertInfo> {
        let mut out: Vec<CertInfo> = self
            .lock()
            .values()
            .filter_map(|e| e.cell.get().map(|c| c.info()))
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent: every critical
        // section is a single insert/remove/read.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sign(&self, id: &Identity) -> Result<Issued, Error> {
        let ca = self.ca.clone();
        let id = id.clone();
        let ttl = self.ttl;
        // ECDSA key generation and signing are CPU work; keep them off the async workers.
        Ok(tokio::task::spawn_blocking(move || ca.issue(&id, ttl)).await??)
    }

    fn start_renewal(
        self: &Arc<Self>,
        cell: &Arc<OnceCell<Arc<WorkloadCert>>>,
        cert: &Arc<WorkloadCert>,
    ) {
        let task = tokio::spawn(renew(Arc::downgrade(self), Arc::downgrade(cert)));
        let mut entries = self.lock();
        match entries.get_mut(cert.identity()) {
            // Only the entry we were issued for; a forget() racing with issuance leaves none.
            Some(entry) if Arc::ptr_eq(&entry.cell, cell) => {
                entry.renewer = Some(task.abort_handle())
            }
            _ => task.abort(),
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for renewer in entries.values_mut().filter_map(|e| e.renewer.take()) {
            renewer.abort();
        }
    }
}

async fn renew(manager: Weak<Manager>, cert: Weak<WorkloadCert>) {
    let Some(ttl) = manager.upgrade().map(|m| m.ttl) else {
        return;
    };
    let mut delay = ttl / 2;
    loop {
        tokio::time::sleep(delay).await;
        let (Some(manager), Some(cert)) = (manager.upgrade(), cert.upgrade()) else {
            return;
        };
        match manager
            .sign(cert.identity())
            .await
            .and_then(|i| cert.replace(i))
        {
            Ok(()) => {
                manager.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(identity = %cert.identity(), serial = %cert.info().serial, "renewed workload certificate");
                delay = ttl / 2;
            }
            Err(error) => {
                tracing::warn!(identity = %cert.identity(), %error, "certificate renewal failed, will retry");
                delay = RETRY_INTERVAL.min(ttl / 4).max(Duration::from_millis(100));
            }
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(ttl: Duration) -> Arc<Manager> {
        Manager::new(Arc::new(Ca::generate("cluster.local").unwrap()), ttl)
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "default", sa)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_fetches_issue_one_cert() {
        let m = manager(Duration::from_secs(3600));
        let a = id("a");
        let fetches: Vec<_> = (0..10)
            .map(|_| {
                let m = m.clone();
                let a = a.clone();
                tokio::spawn(async move { m.fetch(&a).await.unwrap() })
            })
            .collect();
        let certs: Vec<Arc<WorkloadCert>> = futures::future::try_join_all(fetches).await.unwrap();
        assert!(certs.iter().all(|c| Arc::ptr_eq(c, &certs[0])));
        assert_eq!(m.certs().len(), 1);
        assert!(Arc::ptr_eq(&m.fetch(&a).await.unwrap(), &certs[0]));

        let b = m.fetch(&id("b")).await.unwrap();
        assert_eq!(b.identity(), &id("b"));
        let infos = m.certs();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].identity, "spiffe://cluster.local/ns/default/sa/a");
        assert_eq!(infos[0].chain_pem.len(), 2);
        let json = serde_json::to_string(&infos).unwrap();
        assert!(!json.contains("PRIVATE KEY"));
    }

    #[tokio::test]
    async fn renews_at_half_life_in_place() {
        let m = manager(Duration::from_secs(2));
        let cert = m.fetch(&id("a")).await.unwrap();
        let first = cert.info();
        let first_key = cert.certified_key();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(cert.info().serial, first.serial, "renewed before half-life");
        assert_eq!(m.renewals(), 0);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let second = cert.info();
        assert_ne!(second.serial, first.serial, "not renewed after 1.5 s");
        assert!(!Arc::ptr_eq(&first_key, &cert.certified_key()));
        assert_eq!(m.renewals(), 1);
        assert!(Arc::ptr_eq(&cert, &m.fetch(&id("a")).await.unwrap()));
    }

    #[tokio::test]
    async fn forget_stops_renewal_and_evicts() {
        let m = manager(Duration::from_secs(2));
        let cert = m.fetch(&id("a")).await.unwrap();
        let serial = cert.info().serial;
        m.forget(&id("a"));
        assert!(m.certs().is_empty());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(cert.info().serial, serial);
        assert_eq!(m.renewals(), 0);
        let again = m.fetch(&id("a")).await.unwrap();
        assert!(!Arc::ptr_eq(&cert, &again));
    }

    #[test]
    fn formats_rfc3339() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
