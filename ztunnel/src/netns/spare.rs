//! Unconnected TCP sockets created ahead of time inside a namespace.
//!
//! Only `socket(2)` depends on the calling thread's namespace; marks, `IP_TRANSPARENT`, bind and
//! connect act on the socket's own namespace whichever thread calls them. Handing every
//! connection's `socket(2)` to the namespace thread costs two cross-thread wake-ups per
//! connection, so the thread makes them in batches instead: callers take one from here and
//! finish it on their own thread. A family's stock is only made once that family is first asked
//! for, so pods that never open connections hold no spare sockets.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use socket2::{Domain, Protocol, Socket, Type};

/// Sockets a refill makes: enough that a burst of connections rarely finds the stock empty,
/// few enough that an idle pod holds only a handful of descriptors.
pub const BATCH: usize = 16;
/// Below this many a take asks the namespace thread to top the stock up again.
const LOW: usize = BATCH / 2;

/// The spare sockets of one address family.
#[derive(Debug)]
pub struct Stock {
    domain: Domain,
    sockets: Mutex<Vec<Socket>>,
    /// Set while a refill is queued or running, so takes queue at most one.
    refilling: AtomicBool,
}

impl Stock {
    pub fn new(domain: Domain) -> Stock {
        Stock {
            domain,
            sockets: Mutex::new(Vec::with_capacity(BATCH)),
            refilling: AtomicBool::new(false),
        }
    }

    /// A spare socket, if any; `wants_refill` tells the caller to schedule [`Stock::refill`].
    pub fn take(&self) -> (Option<Socket>, bool) {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        let socket = sockets.pop();
        let low = sockets.len() < LOW;
        drop(sockets);
        let wants_refill = low && !self.refilling.swap(true, Ordering::AcqRel);
        (socket, wants_refill)
    }

    /// A new socket of this family in the calling thread's namespace: nonblocking and
    /// close-on-exec from the start, which spares two `fcntl` calls per socket.
    pub fn create(&self) -> io::Result<Socket> {
        Socket::new(self.domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
    }

    /// Tops the stock up to [`BATCH`]; runs on the namespace thread. A failure (out of
    /// descriptors) leaves the stock short; takes then fall back to one socket at a time.
    pub fn refill(&self) {
        let have = self
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let made: Vec<Socket> = (have..BATCH).map_while(|_| self.create().ok()).collect();
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(made);
        self.refilling.store(false, Ordering::Release);
    }

    /// Marks a scheduled refill as not happening (the namespace thread is gone).
    pub fn refill_abandoned(&self) {
        self.refilling.store(false, Ordering::Release);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
