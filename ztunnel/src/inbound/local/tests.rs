use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::identity::{Ca, Identity, Manager};
use crate::netns::Netns;
use crate::state::WorkloadUid;

const TD: &str = "cluster.local";

fn pod(name: &str, ips: &[&str]) -> Arc<Pod> {
    Arc::new(Pod {
        uid: WorkloadUid(format!("default/{name}")),
        identity: Arc::new(Identity::new(TD, "default", name)),
        ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        netns: Netns::open(Path::new("/proc/self/ns/net"))
            .expect("entering our own network namespace needs root (CAP_SYS_ADMIN)"),
        cancel: CancellationToken::new(),
        capture: None,
    })
}

async fn server_tls(m: &Arc<Manager>, pod: &Pod) -> Arc<rustls::ServerConfig> {
    let cert = m.fetch(&pod.identity).await.unwrap();
    crate::tls::server_config(cert, m.ca().root_der(), TD).unwrap()
}

fn uid_at(local: &Local, ip: &str) -> Option<String> {
    local.get(ip.parse().unwrap()).map(|s| s.pod.uid.0.clone())
}

#[tokio::test]
async fn pods_are_found_by_each_address_and_a_reused_address_keeps_its_new_pod() {
    let m = Manager::new(
        Arc::new(Ca::generate(TD).unwrap()),
        Duration::from_secs(3600),
    );
    let local = Local::default();
    let a = pod("a", &["10.0.0.1", "fd00::1"]);
    local.insert(&a, server_tls(&m, &a).await);
    assert_eq!(uid_at(&local, "10.0.0.1").as_deref(), Some("default/a"));
    assert_eq!(uid_at(&local, "fd00::1").as_deref(), Some("default/a"));
    assert_eq!(uid_at(&local, "10.0.0.2"), None);

    // b starts with a's IPv4 address before a is stopped (a restart with a new namespace).
    let b = pod("b", &["10.0.0.1"]);
    local.insert(&b, server_tls(&m, &b).await);
    local.remove(&a);
    assert_eq!(uid_at(&local, "10.0.0.1").as_deref(), Some("default/b"));
    assert_eq!(uid_at(&local, "fd00::1"), None);
    local.remove(&b);
    assert_eq!(uid_at(&local, "10.0.0.1"), None);
}
