use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::Pod;
use crate::capture;
use crate::inbound;
use crate::netns::Netns;
use crate::outbound;
use crate::proxy::Context;
use crate::state::{Protocol, Snapshot, Workload, WorkloadUid};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod {uid}: cannot open network namespace {path}: {source}")]
    Netns {
        uid: WorkloadUid,
        path: String,
        source: std::io::Error,
    },
    #[error("pod {uid}: cannot listen on port {port} in its namespace: {source}")]
    Listen {
        uid: WorkloadUid,
        port: u16,
        source: std::io::Error,
    },
    #[error("pod {uid}: no certificate for {identity}: {reason}")]
    Certificate {
        uid: WorkloadUid,
        identity: String,
        reason: String,
    },
    #[error("pod {uid}: capture failed: {source}")]
    Capture {
        uid: WorkloadUid,
        source: capture::Error,
    },
}

/// What decides whether a running pod can be kept across a state change.
#[derive(Clone, PartialEq, Eq)]
struct Shape {
    netns: PathBuf,
    ips: Vec<IpAddr>,
    namespace: String,
    service_account: String,
}

struct Running {
    pod: Arc<Pod>,
    shape: Shape,
    capture: capture::Pod,
}

/// Keeps one [`Pod`] running per enrolled local workload.
pub struct Registry {
    ctx: Arc<Context>,
    capture: Option<Arc<dyn capture::Backend>>,
    running: Mutex<HashMap<WorkloadUid, Running>>,
}

impl Registry {
    pub fn new(ctx: Arc<Context>, capture: Option<Arc<dyn capture::Backend>>) -> Self {
        Self {
            ctx,
            capture,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Brings running pods in line with `snap`: starts new ones, stops removed ones, restarts
    /// those whose address, namespace or identity changed, and leaves the rest (and their
    /// connections) alone. Returns the pods that failed to start; they are retried next time.
    pub async fn reconcile(&self, snap: &Snapshot) -> Vec<Error> {
        let node = &self.ctx.config.node;
        let wanted: HashMap<&WorkloadUid, &Arc<Workload>> = snap
            .local_workloads(node)
            .filter(|w| w.protocol == Protocol::Hbone && w.netns.is_some())
            .map(|w| (&w.uid, w))
            .collect();
        let mut running = self.running.lock().await;
        let stale: Vec<WorkloadUid> = running
            .iter()
            .filter(|(uid, r)| wanted.get(uid).is_none_or(|w| shape(w) != r.shape))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(r) = running.remove(&uid) {
                self.stop(r).await;
            }
        }
        let mut errors = Vec::new();
        for (uid, w) in wanted {
            if running.contains_key(uid) {
                continue;
            }
            match self.start(w).await {
                Ok(r) => {
                    tracing::info!(pod = %uid, identity = %r.pod.identity, "pod enrolled");
                    running.insert(uid.clone(), r);
                }
                Err(e) => {
                    tracing::error!(error = %e, "pod not enrolled");
                    errors.push(e);
                }
            }
        }
        // Certificates of identities no local pod uses any more are dropped (and not renewed).
        let in_use: Vec<_> = running.values().map(|r| r.pod.identity.clone()).collect();
        for cert in self.ctx.identities.certs() {
            if !in_use.iter().any(|id| id.to_string() == cert.identity) {
                if let Ok(id) = cert.identity.parse() {
                    self.ctx.identities.forget(&id);
                }
            }
        }
        errors
    }

    /// Number of enrolled pods running.
    pub async fn running(&self) -> usize {
        self.running.lock().await.len()
    }

    /// Lets the capture backend drop state a previous ztunnel left for pods no longer here.
    pub fn release_stale(&self) {
        if let Some(backend) = &self.capture {
            backend.release_stale();
        }
    }

    /// Stops every pod (on shutdown); removes its capture unless `keep_capture` (fail-closed).
    pub async fn stop_all(&self, keep_capture: bool) {
        let mut running = self.running.lock().await;
        for (_, r) in running.drain() {
            if keep_capture {
                self.ctx.local.remove(&r.pod);
                r.pod.cancel.cancel();
            } else {
                self.stop(r).await;
            }
        }
    }

    async fn start(&self, w: &Arc<Workload>) -> Result<Running, Error> {
        let ctx = &self.ctx;
        let uid = w.uid.clone();
        let shape = shape(w);
        let identity = w.identity(&ctx.config.trust_domain);
        let cert_error = |reason: String| Error::Certificate {
            uid: uid.clone(),
            identity: identity.to_string(),
            reason,
        };
        let cert = ctx
            .identities
            .fetch(&identity)
            .await
            .map_err(|e| cert_error(e.to_string()))?;
        let server_tls = crate::tls::server_config(
            cert,
            ctx.identities.ca().root_der(),
            &ctx.config.trust_domain,
        )
        .map_err(|e| cert_error(e.to_string()))?;
        let netns = Netns::open(&shape.netns).map_err(|source| Error::Netns {
            uid: uid.clone(),
            path: shape.netns.display().to_string(),
            source,
        })?;
        let listen = |port: u16| {
            let netns = netns.clone();
            let uid = uid.clone();
            let mark = ctx.config.socket_mark;
            async move {
                netns
                    .listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), Some(mark))
                    .await
                    .map_err(|source| Error::Listen { uid, port, source })
            }
        };
        // Listeners first, then capture: traffic is redirected only once something accepts it.
        // (The eBPF backend then attaches sk_lookup and only last marks the namespace enrolled.)
        let ports = &ctx.config.listeners;
        let outbound_l = listen(ports.outbound).await?;
        let plaintext_l = listen(ports.inbound_plaintext).await?;
        let hbone_l = listen(ports.hbone).await?;
        let dns_l = if ctx.config.dns_capture {
            let socket = crate::dns::bind(&netns, ports.dns, ctx.config.socket_mark)
                .await
                .map_err(|source| Error::Listen {
                    uid: uid.clone(),
                    port: ports.dns,
                    source,
                })?;
            Some(socket)
        } else {
            None
        };
        let inbound_listener =
            plaintext_l
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Listen {
                    uid: uid.clone(),
                    port: ports.inbound_plaintext,
                    source,
                })?;
        let pod = Arc::new(Pod {
            uid: uid.clone(),
            identity: Arc::new(identity),
            ips: w.ips.clone(),
            netns: netns.clone(),
            cancel: ctx.stopped.child_token(),
            capture: self.capture.clone(),
        });
        let capture_pod = capture::Pod {
            name: uid.0.clone(),
            netns,
            ips: w.ips.clone(),
            inbound_listener: Some(Arc::new(inbound_listener)),
        };
        if let Some(backend) = &self.capture {
            if let Err(source) = backend.enroll(&capture_pod).await {
                pod.cancel.cancel();
                return Err(Error::Capture { uid, source });
            }
        }
        tokio::spawn(outbound::serve(ctx.clone(), pod.clone(), outbound_l));
        if let Some(socket) = dns_l {
            tokio::spawn(crate::dns::serve(ctx.clone(), pod.clone(), socket));
        }
        tokio::spawn(inbound::plaintext::serve(
            ctx.clone(),
            pod.clone(),
            plaintext_l,
        ));
        ctx.local.insert(&pod, server_tls.clone());
        tokio::spawn(inbound::hbone::serve(
            ctx.clone(),
            pod.clone(),
            hbone_l,
            server_tls,
        ));
        Ok(Running {
            pod,
            shape,
            capture: capture_pod,
        })
    }

    async fn stop(&self, r: Running) {
        // Capture off first (in reverse of enrollment), so the pod's traffic is never
        // redirected to a closed listener; the listeners close last, with the pod.
        if let Some(backend) = &self.capture {
            if let Err(e) = backend.unenroll(&r.capture).await {
                tracing::warn!(pod = %r.pod.uid, error = %e, "removing capture failed");
            }
        }
        self.ctx.local.remove(&r.pod);
        r.pod.cancel.cancel();
        tracing::info!(pod = %r.pod.uid, "pod unenrolled");
    }
}

fn shape(w: &Workload) -> Shape {
    Shape {
        netns: w.netns.clone().unwrap_or_default(),
        ips: w.ips.clone(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
    }
}
