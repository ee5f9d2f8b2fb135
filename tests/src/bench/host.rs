//! What this machine charges for waking a blocked thread, measured without ztunnel: two threads
//! pass one byte back and forth over a pair of pipes, pinned to one CPU and then to two, with
//! the fixed-rate scenario's pause between round trips so that the CPUs go idle in between as
//! they do there.
//!
//! Every hop the mesh adds is such a wake-up (the app wakes ztunnel, ztunnel wakes the next
//! process), so these are the units the added latency is made of. On a virtual machine whose
//! idle vCPUs halt, waking a thread on the other CPU takes an interrupt between vCPUs through
//! the hypervisor, which can cost ten times a wake-up on the same CPU; the latency rows are
//! read against these.

use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use super::load::{histogram, Latency};

/// Round trips measured per CPU pair (after `WARM_UP` unmeasured ones).
const ROUND_TRIPS: u64 = 2_000;
const WARM_UP: u64 = 50;

/// Round-trip latency of a thread on `cpus.0` waking one on `cpus.1` and being woken back,
/// with `pause` between round trips.
pub fn wake_up_round_trip(cpus: (usize, usize), pause: Duration) -> anyhow::Result<Latency> {
    let (there_read, there_write) = nix::unistd::pipe().context("pipe")?;
    let (back_read, back_write) = nix::unistd::pipe().context("pipe")?;
    let (mut there_read, mut back_write) = (File::from(there_read), File::from(back_write));
    let echo = std::thread::Builder::new()
        .name("bench-wake-echo".into())
        .spawn(move || -> anyhow::Result<()> {
            pin(cpus.1)?;
            let mut byte = [0u8; 1];
            // Ends when the measuring side closes its end of the pipe.
            while there_read.read(&mut byte).context("echo read")? == 1 {
                back_write.write_all(&byte).context("echo write")?;
            }
            Ok(())
        })
        .context("spawning the echo thread")?;
    let (mut there_write, mut back_read) = (File::from(there_write), File::from(back_read));
    let measured = std::thread::Builder::new()
        .name("bench-wake".into())
        .spawn(move || -> anyhow::Result<Latency> {
            pin(cpus.0)?;
            let mut h = histogram();
            let mut byte = [0x5au8; 1];
            let start = Instant::now();
            for i in 0..WARM_UP + ROUND_TRIPS {
                std::thread::sleep(pause);
                let sent = Instant::now();
                there_write.write_all(&byte).context("write")?;
                back_read.read_exact(&mut byte).context("read")?;
                if i >= WARM_UP {
                    let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    h.record(ns.max(1)).context("recording a round trip")?;
                }
            }
            Ok(Latency::from(&h, start.elapsed()))
        })
        .context("spawning the measuring thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?;
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    measured
}

/// Null system calls timed per measurement of [`syscall_ns`].
const SYSCALLS: u32 = 200_000;

/// Nanoseconds one system call that does no work (`getppid`) takes on this CPU: the price of
/// entering and leaving the kernel, which speculative-execution mitigations and nested
/// virtualization can multiply. Every syscall ztunnel makes per request or per connection
/// pays it on top of its work. The median of five measurements.
pub fn syscall_ns() -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..SYSCALLS {
                // SAFETY: getppid takes no arguments, cannot fail and touches no memory of ours.
                std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
            }
            start.elapsed().as_nanos() as f64 / f64::from(SYSCALLS)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscalls_are_timed() {
        let ns = syscall_ns();
        // Entering and leaving the kernel takes at least some tens of cycles anywhere, and a
        // syscall slower than 100 µs would be a broken measurement, not a slow machine.
        assert!(ns > 1.0 && ns < 100_000.0, "{ns} ns per syscall");
    }

    #[test]
    fn round_trips_are_measured() {
        let l = wake_up_round_trip((0, 0), Duration::from_micros(100)).expect("round trips");
        assert_eq!(l.requests, ROUND_TRIPS);
        assert!(l.p50 > 0.0 && l.p50 <= l.p99, "{l:?}");
    }
}
