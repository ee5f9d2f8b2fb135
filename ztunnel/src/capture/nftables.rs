//! Capture with an nftables table plus policy routing inside each pod's namespace, like Istio's
//! in-pod iptables mode.
//!
//! `nft` and `ip` are spawned from the namespace's thread, so they act on the pod's namespace
//! without ztunnel ever leaving the node's.

use std::io::Write;
use std::process::{Command, Stdio};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Backend, Error, Marks, Pod, Ports};

/// nftables table that holds every rule of one pod (`inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "ztunnel";

/// Routing table that turns the app's replies to transparently delivered connections back
/// towards ztunnel's socket.
pub const ROUTE_TABLE: u32 = 133;

/// Bound on `ip rule del` repetitions: duplicates only come from crashed earlier runs.
const MAX_STALE_RULES: usize = 16;

#[derive(Debug, Clone)]
pub struct Nftables {
    ports: Ports,
    marks: Marks,
}

impl Nftables {
    pub fn new(ports: Ports, marks: Marks) -> Self {
        Nftables { ports, marks }
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
        format!(
            r#"table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
    # Connections opened by ztunnel's delivery sockets are remembered in conntrack ...
    chain output_route {{
        type route hook output priority mangle; policy accept;
        meta mark {delivery:#x} ct mark set {delivery:#x}
        # ... so the app's replies carry the mark again and are rerouted to the local table.
        ct mark {delivery:#x} meta mark set ct mark
    }}
    chain prerouting_mangle {{
        type filter hook prerouting priority mangle; policy accept;
        ct mark {delivery:#x} meta mark set ct mark
    }}
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
        meta l4proto tcp redirect to :{inbound_plaintext}
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
    // The local route in ROUTE_TABLE needs `lo` up (IPv6 refuses the route otherwise).
    run(pod, "ip", &["link", "set", "lo", "up"], None)?;
    run(pod, "nft", &["-f", "-"], Some(ruleset))?;
    // The app's replies come back over `lo` with a source that routes via the pod's interface;
    // strict reverse-path filtering would drop them. The effective value is max(all, lo).
    for key in ["net/ipv4/conf/all/rp_filter", "net/ipv4/conf/lo/rp_filter"] {
        set_sysctl(pod, key, "0")?;
    }
    for family in families() {
        remove_rules(pod, family, delivery);
        let mark = format!("{delivery:#x}");
        let table = ROUTE_TABLE.to_string();
        run(
            pod,
            "ip",
            &[family, "rule", "add", "fwmark", &mark, "lookup", &table],
            None,
        )?;
        let everything = if family == "-6" { "::/0" } else { "0.0.0.0/0" };
        run(
            pod,
            "ip",
            &[
                family, "route", "replace", "local", everything, "dev", "lo", "table", &table,
            ],
            None,
        )?;
    }
    Ok(())
}

/// Runs on the pod namespace's thread.
fn unenroll_here(pod: &str, delivery: u32) -> Result<(), Error> {
    run(pod, "nft", &["-f", "-"], Some(&Nftables::unset_ruleset()))?;
    for family in families() {
        remove_rules(pod, family, delivery);
        let everything = if family == "-6" { "::/0" } else { "0.0.0.0/0" };
        let table = ROUTE_TABLE.to_string();
        // Fails only when the route is already gone, which is the state we want.
        let _ = run(
            pod,
            "ip",
            &[
                family, "route", "del", "local", everything, "dev", "lo", "table", &table,
            ],
            None,
        );
    }
    Ok(())
}

/// Deletes every copy of our fwmark rule; `ip rule del` fails once none is left.
fn remove_rules(pod: &str, family: &str, delivery: u32) {
    let mark = format!("{delivery:#x}");
    let table = ROUTE_TABLE.to_string();
    for _ in 0..MAX_STALE_RULES {
        let args = [family, "rule", "del", "fwmark", &mark, "lookup", &table];
        if run(pod, "ip", &args, None).is_err() {
            break;
        }
    }
}

/// Address families to configure routing for; a namespace of a kernel without IPv6 has no
/// IPv6 sysctls and only needs IPv4.
fn families() -> Vec<&'static str> {
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        vec!["-4", "-6"]
    } else {
        vec!["-4"]
    }
}

/// `/proc/sys/net` shows the namespace of the opening thread, i.e. the pod's here.
fn set_sysctl(pod: &str, key: &str, value: &str) -> Result<(), Error> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| Error::Sysctl {
        pod: pod.to_owned(),
        key: key.replace('/', "."),
        source,
    })
}

fn run(pod: &str, program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<(), Error> {
    let spawn_error = |source| Error::Spawn {
        pod: pod.to_owned(),
        program,
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was configured as piped");
        // A write error means the program exited early; its status and stderr say why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(Error::Command {
        pod: pod.to_owned(),
        command: format!("{program} {}", args.join(" ")),
        stderr: if stderr.is_empty() {
            output.status.to_string()
        } else {
            stderr
        },
    })
}

#[cfg(test)]
mod tests;
