//! End-to-end test harness: network-namespace topologies, in-namespace apps, ztunnel daemon
//! processes, Prometheus scraping and packet capture.
//!
//! Everything here needs root (network namespaces, veths, AF_PACKET); see [`require_root`].

pub mod app;
pub mod bench;
pub mod capture;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod peer;
pub mod topology;

pub use app::{EchoServer, SinkServer, Transfer};
pub use capture::PacketCapture;
pub use daemon::Ztunnel;
pub use topology::{Node, Pod, Topology};

/// Fails with an actionable message when the harness cannot work on this machine, so tests
/// fail loudly instead of passing by skipping.
pub fn require_root() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "mesh e2e tests need root (network namespaces, veth pairs, AF_PACKET): run them as root"
    );
    let ip = std::process::Command::new("ip").arg("-V").output();
    anyhow::ensure!(
        ip.map(|o| o.status.success()).unwrap_or(false),
        "the `ip` command (iproute2) is missing or broken: install iproute2"
    );
    Ok(())
}

/// Polls `cond` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}
