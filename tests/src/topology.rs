//! The two-node, four-pod network built from network namespaces and veth pairs.
//!
//! ```text
//!   pod a ─┐                                 ┌─ pod c
//!          ├─ node n1 ══ eth0 ══ eth0 ══ node n2 ─┤
//!   pod b ─┘   10.200.0.1        10.200.0.2   └─ pod d
//! ```
//!
//! Pods get host addresses (`10.201.<node>.<10+i>/32`, `fd00:201:<node>::<10+i>/128`) on their
//! `eth0`; the node side of each pod veth (`veth-<pod>`) holds the gateway address
//! `10.201.<node>.1/32` / `fd00:201:<node>::1/128`. Pods route all pods, the node links and the
//! service ranges (`10.96.0.0/16`, `fd00:96::/64`) via their node; nodes route the other node's
//! pods over the node link. There are no default routes, so nothing can leave the topology.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use anyhow::Context;

use crate::netns::{self, ip};

/// Prefix of every namespace name the harness creates: `<PREFIX><pid>x<counter>-<role>`.
pub const PREFIX: &str = "zt";

/// Pods per node, in order: node 1 has `a`, `b`; node 2 has `c`, `d`.
const PODS: [(&str, u8); 4] = [("a", 1), ("b", 1), ("c", 2), ("d", 2)];

/// Name of the node-to-node interface in both node namespaces, and of each pod's interface.
pub const LINK_IFACE: &str = "eth0";

/// Service VIP ranges that pods route to their node (never assigned to an interface).
pub const SERVICE_V4: &str = "10.96.0.0/16";
pub const SERVICE_V6: &str = "fd00:96::/64";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node namespace (where a ztunnel runs).
#[derive(Debug, Clone)]
pub struct Node {
    /// `n1` or `n2`.
    pub name: String,
    /// Node number, 1 or 2.
    pub index: u8,
    /// Full name of the network namespace (for `ip netns exec`).
    pub netns: String,
    pub netns_path: PathBuf,
    /// Address on the node-to-node link.
    pub link_ipv4: Ipv4Addr,
    pub link_ipv6: Ipv6Addr,
    /// Interface of the node-to-node link inside the node namespace.
    pub link_iface: String,
}

/// A pod namespace (where apps run, and where ztunnel opens sockets and installs redirects).
#[derive(Debug, Clone)]
pub struct Pod {
    /// `a`, `b`, `c` or `d`.
    pub name: String,
    /// Number of the node this pod lives on.
    pub node: u8,
    /// Full name of the network namespace.
    pub netns: String,
    pub netns_path: PathBuf,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Pod interface (towards its node).
    pub iface: String,
    /// Interface on the node side of this pod's veth pair.
    pub node_iface: String,
}

/// Two nodes with two pods each; torn down on drop, even when the test panics.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Namespaces created so far, deleted on drop.
    created: Vec<String>,
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Gateway address pods of `node` use (held by every pod veth on the node side).
pub fn gateway_v4(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, node, 1)
}

pub fn gateway_v6(node: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x201, u16::from(node), 0, 0, 0, 0, 1)
}

impl Node {
    /// Connects from inside the node namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        netns::connect(&self.netns_path, addr, timeout)
    }

    /// Listens inside the node namespace.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        netns::listen(&self.netns_path, addr)
    }

    /// Runs `f` inside the node namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::in_netns(&self.netns_path, f)
    }
}

impl Pod {
    /// Connects from inside the pod namespace; the stream works from any thread afterwards.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        netns::connect(&self.netns_path, addr, timeout)
    }

    /// Listens inside the pod namespace.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        netns::listen(&self.netns_path, addr)
    }

    /// Runs `f` inside the pod namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::in_netns(&self.netns_path, f)
    }

    /// The pod's IPv4 address with `port`.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ipv4), port)
    }

    /// The pod's IPv6 address with `port`.
    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ipv6), port)
    }
}

impl Topology {
    /// Builds the topology under a name unique to this process and call. The first call in a
    /// process also removes namespaces left by dead test processes ([`Topology::cleanup_stale`]).
    pub fn create() -> anyhow::Result<Topology> {
        crate::require_root()?;
        static STALE: Once = Once::new();
        STALE.call_once(|| {
            // Leftovers of killed test runs would otherwise accumulate (SIGKILL skips Drop).
            if let Err(e) = Topology::cleanup_stale(PREFIX) {
                eprintln!("removing stale test namespaces: {e:#}");
            }
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}x{n}", std::process::id());
        let mut topo = Topology {
            nodes: (1..=2u8)
                .map(|i| {
                    let netns = format!("{prefix}-n{i}");
                    Node {
                        name: format!("n{i}"),
                        index: i,
                        netns_path: netns_path(&netns),
                        netns,
                        link_ipv4: Ipv4Addr::new(10, 200, 0, i),
                        link_ipv6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, u16::from(i)),
                        link_iface: LINK_IFACE.to_owned(),
                    }
                })
                .collect(),
            pods: PODS
                .iter()
                .enumerate()
                .map(|(idx, &(name, node))| {
                    let host = 10 + (idx as u8 % 2);
                    let netns = format!("{prefix}-{name}");
                    Pod {
                        name: name.to_owned(),
                        node,
                        netns_path: netns_path(&netns),
                        netns,
                        ipv4: Ipv4Addr::new(10, 201, node, host),
                        ipv6: Ipv6Addr::new(
                            0xfd00,
                            0x201,
                            u16::from(node),
                            0,
                            0,
                            0,
                            0,
                            0x10 + u16::from(host - 10),
                        ),
                        iface: "eth0".to_owned(),
                        node_iface: format!("veth-{name}"),
                    }
                })
                .collect(),
            prefix,
            created: Vec::new(),
        };
        // On error `topo` is dropped here, which removes whatever was already built.
        topo.build()
            .with_context(|| format!("building topology {}", topo.prefix))?;
        Ok(topo)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.netns.clone())
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .collect();
        for name in &names {
            ip(&["netns", "add", name])?;
            self.created.push(name.clone());
            let path = netns_path(name);
            // Before any interface exists, so every new interface inherits it (including the
            // automatic link-local addresses, which would otherwise go through DAD).
            netns::sysctl(&path, "net.ipv6.conf.default.accept_dad", "0")?;
            netns::sysctl(&path, "net.ipv6.conf.all.accept_dad", "0")?;
            netns::sysctl(&path, "net.ipv4.conf.all.rp_filter", "0")?;
            netns::sysctl(&path, "net.ipv4.conf.default.rp_filter", "0")?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        for node in &self.nodes {
            netns::sysctl(&node.netns_path, "net.ipv4.ip_forward", "1")?;
            netns::sysctl(&node.netns_path, "net.ipv6.conf.all.forwarding", "1")?;
        }

        // Veths are created directly inside their namespaces, so their names only need to be
        // unique per namespace and never clash with parallel topologies in the root namespace.
        let (n1, n2) = (&self.nodes[0], &self.nodes[1]);
        ip(&[
            "link", "add", "name", LINK_IFACE, "netns", &n1.netns, "type", "veth", "peer", "name",
            LINK_IFACE, "netns", &n2.netns,
        ])?;
        for (node, other) in [(n1, n2), (n2, n1)] {
            let ns = node.netns.as_str();
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", node.link_ipv4),
                "dev",
                LINK_IFACE,
            ])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", node.link_ipv6),
                "dev",
                LINK_IFACE,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", LINK_IFACE, "up"])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("10.201.{}.0/24", other.index),
                "via",
                &other.link_ipv4.to_string(),
            ])?;
            ip(&[
                "-n",
                ns,
                "-6",
                "route",
                "add",
                &format!("fd00:201:{}::/64", other.index),
                "via",
                &other.link_ipv6.to_string(),
            ])?;
        }

        for pod in &self.pods {
            let node = &self.nodes[usize::from(pod.node - 1)];
            let (nns, pns) = (node.netns.as_str(), pod.netns.as_str());
            let (gw4, gw6) = (
                gateway_v4(pod.node).to_string(),
                gateway_v6(pod.node).to_string(),
            );
            ip(&[
                "link",
                "add",
                "name",
                &pod.iface,
                "netns",
                pns,
                "type",
                "veth",
                "peer",
                "name",
                &pod.node_iface,
                "netns",
                nns,
            ])?;

            ip(&[
                "-n",
                nns,
                "addr",
                "add",
                &format!("{gw4}/32"),
                "dev",
                &pod.node_iface,
            ])?;
            ip(&[
                "-n",
                nns,
                "addr",
                "add",
                &format!("{gw6}/128"),
                "dev",
                &pod.node_iface,
                "nodad",
            ])?;
            ip(&["-n", nns, "link", "set", &pod.node_iface, "up"])?;
            ip(&[
                "-n",
                nns,
                "route",
                "add",
                &format!("{}/32", pod.ipv4),
                "dev",
                &pod.node_iface,
                "src",
                &gw4,
            ])?;
            ip(&[
                "-n",
                nns,
                "-6",
                "route",
                "add",
                &format!("{}/128", pod.ipv6),
                "dev",
                &pod.node_iface,
                "src",
                &gw6,
            ])?;

            ip(&[
                "-n",
                pns,
                "addr",
                "add",
                &format!("{}/32", pod.ipv4),
                "dev",
                &pod.iface,
            ])?;
            ip(&[
                "-n",
                pns,
                "addr",
                "add",
                &format!("{}/128", pod.ipv6),
                "dev",
                &pod.iface,
                "nodad",
            ])?;
            ip(&["-n", pns, "link", "set", &pod.iface, "up"])?;
            ip(&[
                "-n",
                pns,
                "route",
                "add",
                &format!("{gw4}/32"),
                "dev",
                &pod.iface,
                "scope",
                "link",
            ])?;
            ip(&[
                "-n",
                pns,
                "-6",
                "route",
                "add",
                &format!("{gw6}/128"),
                "dev",
                &pod.iface,
            ])?;
            let src4 = pod.ipv4.to_string();
            for net in ["10.201.0.0/16", "10.200.0.0/24", SERVICE_V4] {
                ip(&[
                    "-n", pns, "route", "add", net, "via", &gw4, "dev", &pod.iface, "src", &src4,
                ])?;
            }
            let src6 = pod.ipv6.to_string();
            for net in ["fd00:201::/32", "fd00:200::/64", SERVICE_V6] {
                ip(&[
                    "-n", pns, "-6", "route", "add", net, "via", &gw6, "dev", &pod.iface, "src",
                    &src6,
                ])?;
            }
        }
        Ok(())
    }

    /// The unique prefix of this topology's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Node 1 or 2. Panics on any other number.
    pub fn node(&self, index: u8) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.index == index)
            .unwrap_or_else(|| panic!("no node {index}: the topology has nodes 1 and 2"))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Pod `a`, `b` (node 1), `c` or `d` (node 2). Panics on any other name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?}: the topology has pods a, b, c, d"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Names of every namespace of this topology.
    pub fn netns_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.netns.clone())
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .collect()
    }

    /// Removes namespaces named `<prefix><pid>x<n>-...` whose creating process is gone
    /// (leftovers of crashed runs). Namespaces of live processes, including parallel tests, are
    /// left alone. Returns the names removed.
    pub fn cleanup_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in netns::list()? {
            let Some(pid) = stale_owner(prefix, &name) else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            netns::delete(&name)?;
            removed.push(name);
        }
        Ok(removed)
    }
}

/// The pid encoded in a harness namespace name, if `name` follows the naming scheme.
fn stale_owner(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, role) = rest.split_once('-')?;
    if role.is_empty() || counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.created.drain(..).rev() {
            if let Err(e) = netns::delete(&name) {
                eprintln!("topology teardown: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_owner_parses_only_the_naming_scheme() {
        assert_eq!(stale_owner("zt", "zt1234x0-n1"), Some(1234));
        assert_eq!(stale_owner("zt", "zt1234x12-a"), Some(1234));
        assert_eq!(stale_owner("zt", "zt1234-n1"), None);
        assert_eq!(stale_owner("zt", "zt1234x0-"), None);
        assert_eq!(stale_owner("zt", "ztfoox0-n1"), None);
        assert_eq!(stale_owner("zt", "other1x0-n1"), None);
    }
}
