//! Policy routing for transparent delivery, shared by every backend: the app's replies to a
//! connection ztunnel delivered with the client's address carry the delivery mark (how they get
//! it is the backend's business) and are routed back into the pod's own stack, where ztunnel's
//! transparent socket receives them.
//!
//! Everything here runs on the pod namespace's thread: `ip` inherits the namespace and
//! `/proc/sys/net` shows the pod's settings.

use std::io::Write;
use std::process::{Command, Stdio};

use super::Error;

/// Routing table that turns the app's replies to transparently delivered connections back
/// towards ztunnel's socket.
pub const ROUTE_TABLE: u32 = 133;

/// Bound on `ip rule del` repetitions: duplicates only come from crashed earlier runs.
const MAX_STALE_RULES: usize = 16;

/// Brings `lo` up (the local route in [`ROUTE_TABLE`] needs it, and so do IPv6 loopback
/// listeners), relaxes reverse-path filtering and installs the fwmark rule and local routes.
pub fn install(pod: &str, delivery: u32) -> Result<(), Error> {
    run(pod, "ip", &["link", "set", "lo", "up"], None)?;
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
        run(
            pod,
            "ip",
            &[
                family,
                "route",
                "replace",
                "local",
                everything(family),
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        )?;
    }
    Ok(())
}

/// Removes what [`install`] added (sysctls stay: other software may rely on them).
pub fn remove(pod: &str, delivery: u32) {
    for family in families() {
        remove_rules(pod, family, delivery);
        let table = ROUTE_TABLE.to_string();
        // Fails only when the route is already gone, which is the state we want.
        let _ = run(
            pod,
            "ip",
            &[
                family,
                "route",
                "del",
                "local",
                everything(family),
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        );
    }
}

fn everything(family: &str) -> &'static str {
    if family == "-6" {
        "::/0"
    } else {
        "0.0.0.0/0"
    }
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
pub fn set_sysctl(pod: &str, key: &str, value: &str) -> Result<(), Error> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| Error::Sysctl {
        pod: pod.to_owned(),
        key: key.replace('/', "."),
        source,
    })
}

/// Runs `program` and turns a failure into an [`Error`] with its stderr.
pub fn run(
    pod: &str,
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), Error> {
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
