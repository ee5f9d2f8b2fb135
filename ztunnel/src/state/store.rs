use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::Snapshot;

/// The one place proxies read mesh state from. Sources (file, later Kubernetes) replace the
/// snapshot whole; readers load it lock-free and subscribers are told a new one exists.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    version: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl Store {
    pub fn new(initial: Snapshot) -> Self {
        let (version, _) = watch::channel(0);
        Self {
            current: ArcSwap::from_pointee(initial),
            version,
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that is marked changed after every `replace`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
