//! Capture with an nftables table plus policy routing inside each pod's namespace, like Istio's
//! in-pod iptables mode.
//!
//! `nft` and `ip` are spawned from the namespace's thread, so they act on the pod's namespace
//! without ztunnel ever leaving the node's.

use futures::future::BoxFuture;
use futures::FutureExt;
use ipnet::IpNet;

use super::routing::{self, run};
use super::{Backend, Error, Marks, Pod, Ports};

/// nftables table that holds every rule of one pod (`inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "ztunnel";

#[derive(Debug, Clone)]
pub struct Nftables {
    ports: Ports,
    marks: Marks,
    probe_sources: Vec<IpNet>,
    dns_port: Option<u16>,
}

impl Nftables {
    pub fn new(ports: Ports, marks: Marks) -> Self {
        Nftables {
            ports,
            marks,
            probe_sources: Vec::new(),
            dns_port: None,
        }
    }

    /// Capture UDP to port 53 to this pod-local port.
    pub fn with_dns(mut self, port: Option<u16>) -> Self {
        self.dns_port = port;
        self
    }

    /// Connections from these sources (health probes) reach the pod's apps uncaptured.
    pub fn with_probe_sources(mut self, sources: Vec<IpNet>) -> Self {
        self.probe_sources = sources;
        self
    }

    /// `ip saddr { .. } return` lines for the prerouting chain, one per family in use.
    fn probe_rules(&self) -> String {
        let set = |v4: bool| -> Vec<String> {
            self.probe_sources
                .iter()
                .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                .map(|n| n.trunc().to_string())
                .collect()
        };
        let mut rules = String::new();
        for (family, v4) in [("ip", true), ("ip6", false)] {
            let nets = set(v4);
            if !nets.is_empty() {
                rules.push_str(&format!(
                    "        {family} saddr {{ {} }} return\n",
                    nets.join(", ")
                ));
            }
        }
        rules
    }

    /// The `nft -f` script that (re)creates the table atomically. Declaring the table before
    /// deleting it makes the delete succeed when the table does not exist yet.
    pub fn ruleset(&self) -> String {
        let Ports {
            outbound,
            inbound_plaintext,
            hbone,
        } = self.ports;
        let Marks { bypass, delivery } = self.marks;
        let probes = self.probe_rules();
        // DNS is steered with TPROXY, not NAT, so the listener sees the resolver's address as
        // the datagram's destination: the app's query (IPv4 or IPv6) gets the delivery mark
        // (the fwmark rule routes it over `lo`), and on `lo` it is handed to the listener of
        // its family unchanged.
        let (dns_mark, dns_tproxy) = match self.dns_port {
            Some(p) => (
                format!(
                    "        meta mark != {bypass:#x} udp dport 53 meta mark set {delivery:#x}\n"
                ),
                format!(
                    "        iif \"lo\" meta mark {delivery:#x} meta nfproto ipv4 udp dport 53 tproxy ip to :{p}\n\
                     \x20       iif \"lo\" meta mark {delivery:#x} meta nfproto ipv6 udp dport 53 tproxy ip6 to :{p}\n"
                ),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            r#"table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
    # Connections opened by ztunnel's delivery sockets are remembered in conntrack ...
    chain output_route {{
        type route hook output priority mangle; policy accept;
{dns_mark}        meta mark {delivery:#x} ct mark set {delivery:#x}
        # ... so the app's replies carry the mark again and are rerouted to the local table.
        ct mark {delivery:#x} meta mark set ct mark
    }}
    chain prerouting_mangle {{
        type filter hook prerouting priority mangle; policy accept;
        ct mark {delivery:#x} meta mark set ct mark
{dns_tproxy}    }}
    chain output_nat {{
        type nat hook output priority -100; policy accept;
        oif "lo" return
        meta mark {bypass:#x} return
        meta mark {delivery:#x} return
        meta l4proto tcp redirect to :{outbound}
    }}
    chain prerouting_nat {{
        type nat hook prerouting priority -100; policy accept;
        iif "lo" return
        tcp dport {hbone} return
        # health probes (kubelet, SNATed by the CNI) reach the app in plaintext
{probes}        meta l4proto tcp redirect to :{inbound_plaintext}
    }}
}}
"#
        )
    }

    fn unset_ruleset() -> String {
        format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
    }
}

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn enroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>> {
        let ruleset = self.ruleset();
        let delivery = self.marks.delivery;
        let name = pod.name.clone();
        async move {
            let run_name = name.clone();
            pod.netns
                .run(move || enroll_here(&run_name, &ruleset, delivery))
                .await
                .map_err(|source| Error::Netns { pod: name, source })?
        }
        .boxed()
    }

    fn unenroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>> {
        let delivery = self.marks.delivery;
        let name = pod.name.clone();
        async move {
            let run_name = name.clone();
            pod.netns
                .run(move || unenroll_here(&run_name, delivery))
                .await
                .map_err(|source| Error::Netns { pod: name, source })?
        }
        .boxed()
    }
}

/// Runs on the pod namespace's thread.
fn enroll_here(pod: &str, ruleset: &str, delivery: u32) -> Result<(), Error> {
    // The local route of the delivery table needs `lo` up (IPv6 refuses it otherwise).
    run(pod, "ip", &["link", "set", "lo", "up"], None)?;
    run(pod, "nft", &["-f", "-"], Some(ruleset))?;
    routing::install(pod, delivery)
}

/// Runs on the pod namespace's thread.
fn unenroll_here(pod: &str, delivery: u32) -> Result<(), Error> {
    run(pod, "nft", &["-f", "-"], Some(&Nftables::unset_ruleset()))?;
    routing::remove(pod, delivery);
    Ok(())
}

#[cfg(test)]
mod tests;
