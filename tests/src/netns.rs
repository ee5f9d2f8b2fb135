//! Running code and opening sockets inside a network namespace.
//!
//! `setns(CLONE_NEWNET)` only affects the calling thread, so each call runs on a fresh scoped
//! thread: the caller's thread never changes namespace, and sockets created there stay bound to
//! the namespace they were created in while being usable from any thread afterwards.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, Socket, Type};

/// Runs `f` on a thread that has entered the network namespace at `path`.
///
/// Panics if the namespace cannot be entered: in a test that is a broken topology, not a
/// condition to handle. Use [`try_in_netns`] to get the error instead.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    try_in_netns(path, f)
        .unwrap_or_else(|e| panic!("cannot enter network namespace {}: {e}", path.display()))
}

/// Like [`in_netns`], but reports failure to enter the namespace as an error.
pub fn try_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Connects to `addr` with a socket created inside the namespace at `netns`.
pub fn connect(netns: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    try_in_netns(netns, || TcpStream::connect_timeout(&addr, timeout))?
}

/// Listens on `addr` inside the namespace at `netns`. An unspecified IPv6 address (`[::]`)
/// listens dual stack, whatever the `bindv6only` sysctl says.
pub fn listen(netns: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    try_in_netns(netns, || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    })?
}

/// Writes a sysctl (`net.ipv4.ip_forward` style key) of the namespace at `netns`.
///
/// `/proc/sys/net` shows the namespace of the thread that opens it, so writing from inside
/// [`in_netns`] changes that namespace only.
pub fn sysctl(netns: &Path, key: &str, value: &str) -> io::Result<()> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    try_in_netns(netns, || std::fs::write(&file, value))?
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))
}

/// Runs `ip <args>` and fails with its stderr when it does not succeed.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        anyhow::anyhow!("cannot run `ip` (is iproute2 installed and are we root?): {e}")
    })?;
    anyhow::ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`ip netns list` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes the named namespace after killing every process still inside it (a daemon left
/// running would keep its interfaces alive).
pub fn delete(name: &str) -> anyhow::Result<()> {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    ip(&["netns", "delete", name])
}
