use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Client, Error, Settings};

/// Shortest sweep period, so a tiny idle timeout cannot turn the reaper into a busy loop.
const MIN_SWEEP: Duration = Duration::from_millis(50);
/// A key keeps one idle connection for `idle_timeout`; further idle ones (left over from a
/// burst that needed several) are closed once idle this long, so their TLS and HTTP/2 state is
/// given back soon after the burst instead of a whole idle timeout later.
const SURPLUS_GRACE: Duration = Duration::from_secs(1);
/// The idle connection a key keeps must not have carried more streams than this at once: h2
/// keeps a connection's stream tables (about 330 B a slot on each end, plus its frame queues)
/// at their high-water size, so a connection grown by a burst is closed like a surplus one and
/// the next burst starts a fresh one.
pub(crate) const KEEP_PEAK: usize = 64;

/// HBONE connections keyed by whatever identifies an interchangeable peer (typically source
/// identity, destination identity and destination address).
///
/// Concurrent `get`s for a key with no usable connection wait for a single attempt; if it fails,
/// every waiter gets [`Error::Connect`] with the shared cause, and the next `get` tries again.
/// Closed connections are evicted as they are found and by a background sweep, which also
/// closes connections idle (no streams) for longer than `idle_timeout`, and all but one of a
/// key's idle connections once they have been idle for [`SURPLUS_GRACE`] (that one too if it
/// once carried more than [`KEEP_PEAK`] streams at once).
pub struct Pool<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Pool<K> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

/// Point-in-time counts, for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub connections: usize,
    pub streams: usize,
}

struct Inner<K> {
    settings: Settings,
    keys: Mutex<HashMap<K, Arc<Entry>>>,
}

#[derive(Default)]
struct Entry {
    clients: Mutex<Vec<Client>>,
    /// Serializes connection attempts for the key; holds the outcome of the latest failed one.
    connecting: tokio::sync::Mutex<Option<Arc<Error>>>,
    /// Completed attempts, so a waiter can tell that an attempt finished while it queued.
    attempts: AtomicU64,
}

impl Entry {
    /// A connection with room for another stream, evicting dead ones on the way.
    fn usable(&self) -> Option<Client> {
        let mut clients = self
            .clients
            .lock()
            .expect("pool lock is never held across a panic");
        clients.retain(|c| !c.is_closed());
        let client = clients.iter().find_map(Client::try_reserve)?;
        // Restarts the idle clock so the sweep cannot close it before the caller opens a stream.
        client.touch();
        Some(client)
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Pool<K> {
    /// Must be called within a tokio runtime: it spawns the idle sweep, which stops once the
    /// last `Pool` handle is dropped.
    pub fn new(settings: Settings, idle_timeout: Duration) -> Pool<K> {
        let inner = Arc::new(Inner {
            settings,
            keys: Mutex::new(HashMap::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&inner), idle_timeout));
        Pool { inner }
    }

    /// A client for `key`, reusing a pooled connection when one has room, else establishing a
    /// transport with `connect` and running the HTTP/2 handshake over it.
    pub async fn get<F, Fut, IO>(&self, key: K, connect: F) -> Result<Client, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IO, Error>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let entry = self
            .inner
            .keys
            .lock()
            .expect("pool lock is never held across a panic")
            .entry(key)
            .or_default()
            .clone();
        if let Some(client) = entry.usable() {
            return Ok(client);
        }
        let seen = entry.attempts.load(Ordering::Acquire);
        let mut last_failure = entry.connecting.lock().await;
        if let Some(client) = entry.usable() {
            return Ok(client);
        }
        if entry.attempts.load(Ordering::Acquire) != seen {
            if let Some(e) = last_failure.as_ref() {
                return Err(Error::Connect(e.clone()));
            }
        }
        let result = match connect().await {
            Ok(io) => Client::handshake(io, &self.inner.settings).await,
            Err(e) => Err(e),
        };
        entry.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(client) => {
                *last_failure = None;
                entry
                    .clients
                    .lock()
                    .expect("pool lock is never held across a panic")
                    .push(client.clone());
                Ok(client.try_reserve().unwrap_or(client))
            }
            Err(e) => {
                let e = Arc::new(e);
                *last_failure = Some(e.clone());
                Err(Error::Connect(e))
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let keys = self
            .inner
            .keys
            .lock()
            .expect("pool lock is never held across a panic");
        let mut stats = PoolStats::default();
        for entry in keys.values() {
            let clients = entry
                .clients
                .lock()
                .expect("pool lock is never held across a panic");
            for client in clients.iter().filter(|c| !c.is_closed()) {
                stats.connections += 1;
                stats.streams += client.active_streams();
            }
        }
        stats
    }
}

async fn sweep<K: Hash + Eq>(inner: Weak<Inner<K>>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).min(SURPLUS_GRACE / 2).max(MIN_SWEEP);
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut keys = inner
            .keys
            .lock()
            .expect("pool lock is never held across a panic");
        keys.retain(|_, entry| {
            let mut clients = entry
                .clients
                .lock()
                .expect("pool lock is never held across a panic");
            let mut idle_kept = false;
            clients.retain(|client| {
                if client.is_closed() {
                    return false;
                }
                let idle = client.idle_for();
                let surplus = idle_kept || client.peak_streams() > KEEP_PEAK;
                if idle >= idle_timeout || (idle >= SURPLUS_GRACE && surplus) {
                    client.close();
                    return false;
                }
                idle_kept |= idle >= SURPLUS_GRACE;
                true
            });
            // Keep keys someone is connecting for: their waiters hold this entry.
            !clients.is_empty() || Arc::strong_count(entry) > 1
        });
    }
}
