//! Throwaway network namespaces for tests (root only). Everything created here is removed in
//! `Drop`, so also when an assertion panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Netns;

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub const POD_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1));
pub const PEER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 2));
pub const POD_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1));
pub const PEER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2));

/// Fails the test with a clear message when the environment cannot run namespace tests.
pub fn require_root_and_tools() {
    assert!(
        effective_uid() == Some(0),
        "this test creates network namespaces and must run as root"
    );
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
            || Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "this test needs `{tool}` on PATH (install iproute2 / nftables)"
        );
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// A named namespace (`ip netns add`), deleted on drop.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(role: &str) -> Namespace {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ztcap-{}-{n}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Namespace { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn open(&self) -> Arc<Netns> {
        Netns::open(&self.path()).expect("open test netns")
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace also deletes its end of the veth pair, which takes the other.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A "pod" namespace connected to a "peer" namespace by a veth pair, with addresses
/// POD_V4/POD_V6 and PEER_V4/PEER_V6.
pub struct Pair {
    pub pod: Namespace,
    pub peer: Namespace,
}

impl Pair {
    pub fn new() -> Pair {
        require_root_and_tools();
        let pair = Pair {
            pod: Namespace::new("pod"),
            peer: Namespace::new("peer"),
        };
        pair.pod.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pair.peer.name,
        ]);
        for (ns, v4, v6) in [(&pair.pod, POD_V4, POD_V6), (&pair.peer, PEER_V4, PEER_V6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            // nodad: the address is usable at once instead of after duplicate detection.
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        pair
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What an app in a namespace does: a plain socket (no mark) connecting to `dst`, handed to
/// tokio afterwards.
pub async fn app_connect(
    netns: &Netns,
    dst: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let std_stream = netns
        .run(move || -> std::io::Result<std::net::TcpStream> {
            let s = std::net::TcpStream::connect_timeout(&dst, std::time::Duration::from_secs(5))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .await??;
    tokio::net::TcpStream::from_std(std_stream)
}
