//! Throughput with iperf3 (Debian's `iperf3`), run inside network namespaces with `ip netns exec`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// An `iperf3 -s` running in a namespace; killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn start(netns: &str, port: u16) -> anyhow::Result<Server> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-s", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start iperf3 (install Debian's iperf3 package)")?;
        let server = Server { child };
        // iperf3 has no readiness signal; its listener is up well within this.
        std::thread::sleep(Duration::from_millis(300));
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `iperf3 -c` from `netns` to `addr` with `streams` parallel streams for `duration`;
/// returns the received rate in Gbit/s.
pub fn client(
    netns: &str,
    addr: SocketAddr,
    streams: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut last_err = None;
    // The server may still be finishing the previous test (it serves one at a time).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match client_once(netns, addr, streams, duration) {
            Ok(gbps) => return Ok(gbps),
            Err(e) => {
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("iperf3 never ran")))
}

fn client_once(
    netns: &str,
    addr: SocketAddr,
    streams: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "iperf3", "-J", "-c"])
        .arg(addr.ip().to_string())
        .args(["-p", &addr.port().to_string()])
        .args(["-P", &streams.to_string()])
        .args(["-t", &duration.as_secs().max(1).to_string()])
        .stdin(Stdio::null())
        .output()
        .context("cannot run iperf3 (install Debian's iperf3 package)")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3 to {addr}: {err}");
    }
    let bps = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("iperf3 JSON has no end.sum_received: {json}"))?;
    Ok(bps / 1e9)
}
