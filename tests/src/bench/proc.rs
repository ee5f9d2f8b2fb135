//! Resource use of a process from `/proc`: resident memory and CPU time.

use anyhow::Context;

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let [rss] = status_bytes(pid, ["VmRSS"])?;
    Ok(rss)
}

/// Resident memory of `pid` split into anonymous (heap, stacks) and file-backed (mapped code
/// and read-only data) bytes: code first run by traffic stays mapped after the connections
/// close, which is not memory the connections kept.
pub fn rss_parts(pid: u32) -> anyhow::Result<(u64, u64)> {
    let [anon, file] = status_bytes(pid, ["RssAnon", "RssFile"])?;
    Ok((anon, file))
}

/// The `fields` (kB lines) of one read of `/proc/<pid>/status`, in bytes.
fn status_bytes<const N: usize>(pid: u32, fields: [&str; N]) -> anyhow::Result<[u64; N]> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut out = [0; N];
    for (value, field) in out.iter_mut().zip(fields) {
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {field} line in {path}"))?;
        *value = kib * 1024;
    }
    Ok(out)
}

/// User + system CPU time of `pid` (all threads) in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User + system CPU time of thread `tid` of this process in seconds.
pub fn thread_cpu_seconds(tid: i32) -> anyhow::Result<f64> {
    stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

/// utime + stime of a `stat` file (a process's or one thread's) in seconds.
fn stat_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at indexes 11 and 12.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} missing in {path}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a constant of the running kernel/libc.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(total as f64 / hz as f64)
}

/// Voluntary (blocked, then woken) and involuntary (preempted) context switches of all of
/// `pid`'s threads so far.
pub fn context_switches(pid: u32) -> anyhow::Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/task");
    let mut total = (0, 0);
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task
            .with_context(|| format!("reading {dir}"))?
            .path()
            .join("status");
        // A thread that ended since the directory was read has no status left to count.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        let count = |field: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {field} line in {}", path.display()))
        };
        total.0 += count("voluntary_ctxt_switches")?;
        total.1 += count("nonvoluntary_ctxt_switches")?;
    }
    Ok(total)
}

/// Raises the soft open-file limit to the hard limit (children inherit it): holding thousands of
/// idle connections needs far more than the usual soft limit of 1,024.
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    Ok(hard)
}
