//! Live inbound connections, so that a policy change can close the ones it no longer allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::pod::Pod;
use crate::state::{peer_authn, MtlsMode, Snapshot};

/// Shared handles only: one entry per open inbound connection, so it stays small.
struct Entry {
    pod: Arc<Pod>,
    src_identity: Option<Arc<Identity>>,
    src: SocketAddr,
    dst_port: u16,
    cancel: CancellationToken,
}

/// Below this many slots the table is not worth shrinking.
const MIN_CAPACITY: usize = 64;

#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

/// Removes its connection from the tracker when the connection ends.
pub struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut live) = self.inner.live.lock() {
            live.remove(&self.id);
            // A map never shrinks by itself: after a burst of connections it would keep the
            // burst's table for good.
            let len = live.len();
            if live.capacity() > MIN_CAPACITY && len * 4 < live.capacity() {
                live.shrink_to(len * 2);
            }
        }
    }
}

impl Tracker {
    pub fn register(
        &self,
        pod: Arc<Pod>,
        src_identity: Option<Arc<Identity>>,
        src: SocketAddr,
        dst_port: u16,
        cancel: CancellationToken,
    ) -> Registration {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            pod,
            src_identity,
            src,
            dst_port,
            cancel,
        };
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(id, entry);
        }
        Registration {
            inner: self.inner.clone(),
            id,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection that `snap` no longer allows; returns how many.
    pub fn recheck(&self, snap: &Snapshot, root_namespace: &str) -> usize {
        let Ok(live) = self.inner.live.lock() else {
            return 0;
        };
        let mut closed = 0;
        for e in live.values() {
            if e.cancel.is_cancelled() {
                continue;
            }
            // A removed workload's connections are closed by its pod being stopped.
            let Some(w) = snap.workload_by_uid(&e.pod.uid) else {
                continue;
            };
            let strict_violation = e.src_identity.is_none()
                && peer_authn::mode_for(&snap.peer_authentications, w, root_namespace)
                    == MtlsMode::Strict;
            let denied = strict_violation
                || super::authorize(snap, w, e.src_identity.as_deref(), e.src, e.dst_port).is_err();
            if denied {
                tracing::info!(workload = %e.pod.uid, src = %e.src, port = e.dst_port, "closing connection no longer allowed by policy");
                e.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }
}
