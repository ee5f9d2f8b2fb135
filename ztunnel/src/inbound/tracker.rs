//! Live inbound connections, so that a policy change can close the ones it no longer allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::pod::Pod;
use crate::state::{peer_authn, MtlsMode, Snapshot};

/// One open inbound connection: what its access log line and a policy re-check need, and the
/// token that closes it. The connection's task and the tracker's table share this one record
/// (the task keeps only its `Registration`), instead of each keeping its own copies.
pub struct Conn {
    pub pod: Arc<Pod>,
    pub src_identity: Option<Arc<Identity>>,
    pub src: SocketAddr,
    /// The destination the client asked for (the tunnel's authority, or the original
    /// destination of a plaintext connection).
    pub dst: SocketAddr,
    pub start: Instant,
    pub cancel: CancellationToken,
    id: u64,
    tracker: Arc<Inner>,
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
    live: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// A connection's place in the tracker, held by its task; dropping it (the connection ended)
/// removes the connection.
pub struct Registration(Arc<Conn>);

impl Deref for Registration {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut live) = self.0.tracker.live.lock() {
            live.remove(&self.0.id);
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
    /// Tracks a connection of `pod` until the returned registration is dropped; its token is a
    /// child of the pod's, so stopping the pod closes it too.
    pub fn register(
        &self,
        pod: Arc<Pod>,
        src_identity: Option<Arc<Identity>>,
        src: SocketAddr,
        dst: SocketAddr,
        start: Instant,
    ) -> Registration {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            cancel: pod.cancel.child_token(),
            pod,
            src_identity,
            src,
            dst,
            start,
            id,
            tracker: self.inner.clone(),
        });
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(id, conn.clone());
        }
        Registration(conn)
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
                || super::authorize(snap, w, e.src_identity.as_deref(), e.src, e.dst.port())
                    .is_err();
            if denied {
                tracing::info!(workload = %e.pod.uid, src = %e.src, port = e.dst.port(), "closing connection no longer allowed by policy");
                e.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::testing::{require_root_and_tools, Namespace};
    use crate::state::WorkloadUid;

    #[test]
    fn a_connection_is_tracked_until_its_registration_drops_and_closes_with_its_pod() {
        require_root_and_tools();
        let ns = Namespace::new("tracker");
        let pod = Arc::new(Pod {
            uid: WorkloadUid("default/a".into()),
            identity: Arc::new("spiffe://cluster.local/ns/default/sa/a".parse().unwrap()),
            ips: vec!["10.0.0.1".parse().unwrap()],
            netns: ns.open(),
            cancel: CancellationToken::new(),
            capture: None,
        });
        let tracker = Tracker::default();
        let peer: Arc<Identity> =
            Arc::new("spiffe://cluster.local/ns/default/sa/b".parse().unwrap());
        let src: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let first = tracker.register(pod.clone(), Some(peer.clone()), src, dst, Instant::now());
        let second = tracker.register(pod.clone(), None, src, dst, Instant::now());
        assert_eq!(tracker.len(), 2);
        // The task reads what it reports from the same record the table holds.
        assert_eq!((first.src, first.dst), (src, dst));
        assert_eq!(first.src_identity.as_deref(), Some(peer.as_ref()));
        assert_eq!(
            Arc::strong_count(&first.0),
            2,
            "one record, in the task and the table"
        );

        drop(first);
        assert_eq!(tracker.len(), 1);
        assert!(!second.cancel.is_cancelled());
        pod.cancel.cancel();
        assert!(
            second.cancel.is_cancelled(),
            "stopping the pod closes its connections"
        );
        drop(second);
        assert!(tracker.is_empty());
    }
}
