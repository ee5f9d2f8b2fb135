//! Giving the memory of closed connections back to the system. glibc's malloc keeps freed
//! chunks in its arenas (one per thread that allocated) and returns only the free space at the
//! top of each heap: after a burst of closes most of the freed memory lies below allocations
//! still live and would stay resident for good. `malloc_trim` releases every free page of
//! every arena; it runs after closes, never on a connection's path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often closes are looked at: a burst is trimmed within this much of its end.
const INTERVAL: Duration = Duration::from_secs(1);
/// Fewer closes than this since the last trim free too little to be worth a walk of the heap.
const MIN_CLOSES: u64 = 64;

static CLOSED: AtomicU64 = AtomicU64::new(0);

/// Notes that a proxied connection ended and freed its memory.
pub fn connection_closed() {
    CLOSED.fetch_add(1, Ordering::Relaxed);
}

/// Notes that a pooled HBONE connection (either end) ended. Its TLS buffers and HTTP/2 codec
/// and stream tables are worth about as much as a trim's worth of proxied connections, so one
/// such close is enough to trim: pooled connections closed by the idle sweep free most of what
/// a burst of tunnels left behind.
pub fn tunnel_connection_closed() {
    CLOSED.fetch_add(MIN_CLOSES, Ordering::Relaxed);
}

/// Trims once a second while connections keep closing, until `stop` fires.
pub async fn trim_after_closes(stop: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut trimmed_at = CLOSED.load(Ordering::Relaxed);
    // Set by a trim during a burst: memory freed just after it (the burst's last closes, the
    // sockets tokio releases on its next turn, pooled connections going idle) gets one more.
    let mut settle = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let closed = CLOSED.load(Ordering::Relaxed);
        if closed - trimmed_at >= MIN_CLOSES {
            settle = true;
        } else if std::mem::take(&mut settle) {
            // The burst is over: the settling trim.
        } else {
            continue;
        }
        trimmed_at = closed;
        let start = Instant::now();
        // A trim walks every arena and can take milliseconds: not on a worker that is
        // carrying connections.
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(closes = closed, released, took = ?start.elapsed(), "returned freed memory to the system");
    }
}

/// Sets glibc's allocator up for a proxy's many small, long-lived connection states, unless
/// the operator tuned it with `GLIBC_TUNABLES` (then theirs stands). Call before any thread
/// is started: the arena limit binds only threads that have not allocated yet. Returns
/// whether the settings were applied.
#[cfg(target_env = "gnu")]
pub fn configure() -> bool {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return false;
    }
    // No fastbins: tokio allocates task cells and socket registrations 128-byte aligned, and
    // each such allocation frees the slack before and after the aligned block. In fastbins
    // those small pieces never merge with their neighbours, so they stay resident beside every
    // connection (about 200 B of each in the bench); in the regular bins they merge and are
    // reused. Freed small blocks still go to the per-thread caches first, so the cost is not
    // measurable (bench: CPU per request, per connection and per GB unchanged).
    //
    // SAFETY: mallopt only changes the allocator's parameters, under its own lock.
    let fastbins_off = unsafe { libc::mallopt(libc::M_MXFAST, 0) } == 1;
    // One arena instead of one per thread that allocates (up to 8 per core): `malloc_trim`
    // gives back the free pages inside an arena but not the free top of a thread arena's heap,
    // which glibc lets grow to twice the largest block it has unmapped (h2's stream tables,
    // copy buffers: about 0.7 MB per arena). After 4,000 connections closed, 0.29 of their
    // growth stayed resident with per-thread arenas and 0.15 with one. Threads still take
    // freed blocks from their own caches without the arena lock; on this 2-core machine CPU
    // per request, per connection and per GB did not change. Nodes with many workers can
    // set `GLIBC_TUNABLES=glibc.malloc.arena_max=N` instead.
    //
    // SAFETY: as above.
    let one_arena = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } == 1;
    fastbins_off && one_arena
}

/// Other C libraries' allocators are left as they are.
#[cfg(not(target_env = "gnu"))]
pub fn configure() -> bool {
    false
}

/// Returns free heap pages to the kernel; true if any were released.
#[cfg(target_env = "gnu")]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks and madvises the allocator's own free lists under its
    // arena locks; it takes no pointers from us and is safe to call from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries' allocators give memory back on their own.
#[cfg(not(target_env = "gnu"))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_applies_unless_the_operator_tuned_malloc() {
        // The test harness does not set GLIBC_TUNABLES (CI runs it plainly).
        assert_eq!(
            configure(),
            std::env::var_os("GLIBC_TUNABLES").is_none(),
            "mallopt refused the settings"
        );
    }

    #[test]
    fn trim_releases_freed_memory() {
        // Many small blocks freed below one that stays: only a trim gives their pages back.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 4000]).collect();
        let keep = vec![2u8; 4000];
        drop(blocks);
        assert!(trim(), "16 MB of freed blocks left nothing to release");
        assert_eq!(keep[0], 2);
    }

    #[tokio::test]
    async fn trims_after_closes_and_stops() {
        let stop = CancellationToken::new();
        let task = tokio::spawn(trim_after_closes(stop.clone()));
        for _ in 0..MIN_CLOSES {
            connection_closed();
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the trim task stops when told")
            .unwrap();
    }
}
