//! The benchmark topology: the tests' two nodes and four pods, with a, b (node n1) and c (node
//! n2) enrolled, and d (node n2) outside the mesh as the passthrough destination.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::daemon::Ztunnel;
use crate::topology::Topology;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pods in the mesh; every other pod is a non-mesh destination.
pub const ENROLLED: [&str; 3] = ["a", "b", "c"];

pub struct Mesh {
    pub topo: Topology,
    dir: tempfile::TempDir,
}

/// The two running ztunnels; stopped (and capture removed) on drop.
pub struct Daemons {
    pub n1: Ztunnel,
    pub n2: Ztunnel,
}

impl Mesh {
    pub fn create() -> anyhow::Result<Mesh> {
        let topo = Topology::create()?;
        // Connection-rate runs leave tens of thousands of TIME_WAIT sockets behind. The port
        // range stays above ztunnel's in-pod listeners (15001-15008): a TIME_WAIT socket on
        // one of those ports would keep ztunnel from listening there.
        for ns in topo.netns_names() {
            let path = Path::new("/var/run/netns").join(&ns);
            crate::netns::sysctl(&path, "net.ipv4.tcp_tw_reuse", "1")?;
            crate::netns::sysctl(&path, "net.ipv4.ip_local_port_range", "20000 65000")?;
        }
        let dir = tempfile::tempdir().context("temp dir for configs")?;
        let config = render(&topo, dir.path());
        for node in [1u8, 2] {
            // Pinned capture state is found by path: another bench or test run on this machine
            // must not adopt (or remove) ours.
            let pins = format!("bpfPinDir: {}\n", pin_dir(&topo, node).display());
            std::fs::write(config_path(dir.path(), node), pins + &config)
                .context("writing the ztunnel config")?;
        }
        Ok(Mesh { topo, dir })
    }

    /// Starts ztunnel on both nodes and waits until both are ready.
    pub fn start(&self) -> anyhow::Result<Daemons> {
        let mut n1 = Ztunnel::start(
            self.topo.node(1),
            &config_path(self.dir.path(), 1),
            "n1",
            &[],
        )?;
        // n1 creates the shared CA that n2 then reuses.
        n1.wait_ready(READY_TIMEOUT)?;
        let mut n2 = Ztunnel::start(
            self.topo.node(2),
            &config_path(self.dir.path(), 2),
            "n2",
            &[],
        )?;
        n2.wait_ready(READY_TIMEOUT)?;
        Ok(Daemons { n1, n2 })
    }
}

impl Daemons {
    /// Stops both gracefully so they remove their capture rules before direct runs.
    pub fn stop(mut self) -> anyhow::Result<()> {
        for z in [&mut self.n1, &mut self.n2] {
            z.sigterm()?;
            let status = z
                .wait_exit(Duration::from_secs(15))
                .with_context(|| format!("ztunnel in {} did not exit after SIGTERM", z.netns()))?;
            anyhow::ensure!(
                status.success(),
                "ztunnel exited with {status}; log:\n{}",
                z.log()
            );
        }
        Ok(())
    }
}

fn pin_dir(topo: &Topology, node: u8) -> PathBuf {
    Path::new("/run/ztunnel/bpf").join(format!("{}-n{node}", topo.prefix()))
}

impl Mesh {
    /// Detaches the capture programs stopped ztunnels left pinned: fail-closed keeps them (and
    /// so keeps refusing the pods' traffic) until ztunnel comes back, but the next direct run
    /// must see the pods without capture, and later connects on the machine must not run them.
    pub fn unpin(&self) {
        for node in [1u8, 2] {
            let _ = std::fs::remove_dir_all(pin_dir(&self.topo, node));
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.unpin();
    }
}

fn config_path(dir: &Path, node: u8) -> PathBuf {
    dir.join(format!("ztunnel-n{node}.yaml"))
}

fn render(topo: &Topology, dir: &Path) -> String {
    let mut y = format!(
        "trustDomain: cluster.local\nstateDir: {}\ndrainTimeout: 1s\nworkloads:\n",
        dir.join("state").display()
    );
    for name in ENROLLED {
        let p = topo.pod(name);
        let _ = write!(
            y,
            "  - uid: uid-{name}\n    name: {name}\n    namespace: default\n    serviceAccount: {name}\n    labels: {{app: {name}}}\n    ips: [{}, \"{}\"]\n    node: n{}\n    netns: {}\n",
            p.ipv4,
            p.ipv6,
            p.node,
            p.netns_path.display()
        );
    }
    y
}
