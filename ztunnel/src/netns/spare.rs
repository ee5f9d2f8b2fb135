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
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Sockets the first refill makes: enough that a burst of connections rarely finds the stock
/// empty, few enough that a quiet pod holds only a handful of descriptors.
pub const BATCH: usize = 16;
/// The most a busy pod's refill makes. Each refill wakes the namespace thread (a futex wake
/// and two context switches, about 1,250 a second at 10,000 connections a second with batches
/// of 16); a pod opening connections that fast holds up to this many spare descriptors.
pub const MAX_BATCH: usize = 64;
/// Refills closer together than this double the batch (up to [`MAX_BATCH`])...
const BUSY: Duration = Duration::from_millis(50);
/// ...and refills further apart than this halve it again (down to [`BATCH`]).
const QUIET: Duration = Duration::from_secs(1);

/// The spare sockets of one address family.
#[derive(Debug)]
pub struct Stock {
    domain: Domain,
    spare: Mutex<Spare>,
    /// Set while a refill is queued or running, so takes queue at most one.
    refilling: AtomicBool,
}

#[derive(Debug)]
struct Spare {
    sockets: Vec<Socket>,
    /// What the next refill tops the stock up to; a take below half of it asks for a refill.
    batch: usize,
    last_refill: Option<Instant>,
}

impl Stock {
    pub fn new(domain: Domain) -> Stock {
        Stock {
            domain,
            spare: Mutex::new(Spare {
                sockets: Vec::with_capacity(BATCH),
                batch: BATCH,
                last_refill: None,
            }),
            refilling: AtomicBool::new(false),
        }
    }

    /// A spare socket, if any; `wants_refill` tells the caller to schedule [`Stock::refill`].
    pub fn take(&self) -> (Option<Socket>, bool) {
        let mut spare = self.lock();
        let socket = spare.sockets.pop();
        let low = spare.sockets.len() < spare.batch / 2;
        drop(spare);
        let wants_refill = low && !self.refilling.swap(true, Ordering::AcqRel);
        (socket, wants_refill)
    }

    /// A new socket of this family in the calling thread's namespace: nonblocking and
    /// close-on-exec from the start, which spares two `fcntl` calls per socket.
    pub fn create(&self) -> io::Result<Socket> {
        Socket::new(self.domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
    }

    /// Tops the stock up to its batch, first sizing the batch by how soon this refill came
    /// after the last one; runs on the namespace thread. A failure (out of descriptors) leaves
    /// the stock short; takes then fall back to one socket at a time.
    pub fn refill(&self) {
        self.refill_at(Instant::now());
    }

    fn refill_at(&self, now: Instant) {
        let (have, batch) = {
            let mut spare = self.lock();
            if let Some(last) = spare.last_refill {
                let since = now.duration_since(last);
                if since < BUSY {
                    spare.batch = (spare.batch * 2).min(MAX_BATCH);
                } else if since > QUIET {
                    spare.batch = (spare.batch / 2).max(BATCH);
                }
            }
            spare.last_refill = Some(now);
            (spare.sockets.len(), spare.batch)
        };
        let made: Vec<Socket> = (have..batch).map_while(|_| self.create().ok()).collect();
        self.lock().sockets.extend(made);
        self.refilling.store(false, Ordering::Release);
    }

    /// Marks a scheduled refill as not happening (the namespace thread is gone).
    pub fn refill_abandoned(&self) {
        self.refilling.store(false, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().sockets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_grows_with_frequent_refills_and_shrinks_when_quiet() {
        let stock = Stock::new(Domain::IPV4);
        let start = Instant::now();
        stock.refill_at(start);
        assert_eq!(stock.len(), BATCH);
        // A burst: each refill soon after the last doubles the batch, up to the cap.
        let mut at = start;
        for expect in [2 * BATCH, 4 * BATCH, MAX_BATCH, MAX_BATCH] {
            at += BUSY / 2;
            stock.refill_at(at);
            assert_eq!(stock.len(), expect);
        }
        // Refills at a moderate pace keep the batch as it is.
        at += BUSY * 2;
        while stock.take().0.is_some() {}
        stock.refill_at(at);
        assert_eq!(stock.len(), MAX_BATCH);
        // Quiet: each refill long after the last halves it, down to the first size.
        for expect in [MAX_BATCH / 2, BATCH, BATCH] {
            at += QUIET * 2;
            while stock.take().0.is_some() {}
            stock.refill_at(at);
            assert_eq!(stock.len(), expect);
        }
    }

    #[test]
    fn a_take_below_half_the_batch_asks_for_one_refill() {
        let stock = Stock::new(Domain::IPV4);
        stock.refill_at(Instant::now());
        let mut asked = 0;
        for _ in 0..BATCH {
            let (socket, wants_refill) = stock.take();
            assert!(socket.is_some());
            asked += usize::from(wants_refill);
        }
        assert_eq!(asked, 1, "a refill is asked for once until it has run");
        let (socket, wants_refill) = stock.take();
        assert!(socket.is_none() && !wants_refill);
    }
}
