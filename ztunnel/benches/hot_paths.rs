//! Microbenchmarks of the pure functions every connection runs: authorization, endpoint
//! selection, metrics labels and the access log line. Baselines are in docs/benchmarks.md;
//! run with `cargo bench -p ztunnel --bench hot_paths`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use ztunnel::authz::{Action, Connection, Index, Operation, Policy, Rule, Scope, Source};
use ztunnel::identity::Identity;
use ztunnel::metrics::{Endpoints, Metrics, Reporter};
use ztunnel::outbound::route;
use ztunnel::state::{Protocol, Service, ServicePort, Snapshot, Workload, WorkloadUid};

const TD: &str = "cluster.local";
const NAMESPACES: usize = 100;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Workload `i` of namespace `ns-(i % NAMESPACES)`, app `app-(i % 1000)`, address 10.x.y.z.
fn workload(i: usize) -> Workload {
    let ip = Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).expect("small index") + 1);
    Workload {
        uid: WorkloadUid(format!("uid-{i}")),
        name: format!("wl-{i}"),
        namespace: format!("ns-{}", i % NAMESPACES),
        service_account: format!("sa-{}", i % 1000),
        labels: labels(&[
            ("app", format!("app-{}", i % 1000)),
            ("version", "v1".into()),
        ]),
        ips: vec![IpAddr::V4(ip)],
        node: format!("node-{}", i % 50),
        protocol: Protocol::Hbone,
        netns: None,
    }
}

/// 10,000 policies spread like a real mesh: a few mesh-wide DENYs, namespace-wide ALLOWs, and
/// selector ALLOWs keyed on `app` with principal, namespace, IP block and port conditions.
fn policies(n: usize) -> Vec<Arc<Policy>> {
    (0..n)
        .map(|i| {
            let ns = format!("ns-{}", i % NAMESPACES);
            let (scope, action) = match i % 100 {
                0 => (Scope::Mesh, Action::Deny),
                1..=9 => (Scope::Namespace(ns.clone()), Action::Allow),
                _ => (
                    Scope::Selector {
                        namespace: ns.clone(),
                        labels: labels(&[("app", format!("app-{}", i % 1000))]),
                    },
                    Action::Allow,
                ),
            };
            let from = Source {
                principals: vec![format!(
                    "{TD}/ns/ns-{}/sa/sa-{}",
                    (i + 1) % NAMESPACES,
                    i % 1000
                )],
                namespaces: if action == Action::Deny {
                    vec![format!("blocked-{i}")]
                } else {
                    vec![]
                },
                not_ip_blocks: vec!["192.168.0.0/16".parse().expect("valid cidr")],
                ..Source::default()
            };
            Arc::new(Policy {
                name: format!("p-{i}"),
                namespace: ns,
                scope,
                action,
                rules: vec![Rule {
                    from: vec![from],
                    to: vec![Operation {
                        ports: vec![8080, 9090],
                        not_ports: vec![],
                    }],
                }],
            })
        })
        .collect()
}

fn authz(c: &mut Criterion) {
    let index = Index::new(&policies(10_000));
    let target = workload(1234);
    let allowed = Identity::new(TD, "ns-35", "sa-234");
    let other = Identity::new(TD, "ns-99", "sa-999");
    let mut g = c.benchmark_group("authz 10k policies");
    g.bench_function("allow (matching principal)", |b| {
        let conn = Connection {
            src_identity: Some(&allowed),
            src_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            dst_port: 8080,
        };
        b.iter(|| black_box(index.evaluate(black_box(&target), black_box(&conn))))
    });
    g.bench_function("deny (no allow matches)", |b| {
        let conn = Connection {
            src_identity: Some(&other),
            src_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            dst_port: 8080,
        };
        b.iter(|| black_box(index.evaluate(black_box(&target), black_box(&conn))))
    });
    g.finish();
}

/// 10,000 workloads and 1,000 services (10 endpoints each).
fn snapshot() -> Snapshot {
    let workloads: Vec<Workload> = (0..10_000).map(workload).collect();
    let services = (0..1000)
        .map(|i| Service {
            name: format!("svc-{i}"),
            namespace: format!("ns-{}", i % NAMESPACES),
            hostname: format!("svc-{i}.ns-{}.svc.cluster.local", i % NAMESPACES),
            vips: vec![IpAddr::V4(Ipv4Addr::from(
                0x0a60_0000 + u32::try_from(i).expect("small index"),
            ))],
            ports: vec![ServicePort {
                service_port: 80,
                target_port: 8080,
            }],
            selector: labels(&[("app", format!("app-{i}"))]),
        })
        .collect();
    Snapshot::new(workloads, services, vec![], vec![])
}

fn endpoint_selection(c: &mut Criterion) {
    let snap = snapshot();
    let mut g = c.benchmark_group("route 10k workloads 1k services");
    let vip = SocketAddr::from(([10, 96, 1, 244], 80));
    let mut n = 0usize;
    g.bench_function("service VIP (round robin)", |b| {
        b.iter(|| {
            n += 1;
            black_box(route::resolve(&snap, black_box(vip), |len| n % len)).expect("resolves")
        })
    });
    let pod = SocketAddr::from(([10, 0, 19, 137], 8080));
    g.bench_function("workload address", |b| {
        b.iter(|| black_box(route::resolve(&snap, black_box(pod), |_| 0)).expect("resolves"))
    });
    let outside = SocketAddr::from(([192, 168, 1, 1], 443));
    g.bench_function("unknown address (passthrough)", |b| {
        b.iter(|| black_box(route::resolve(&snap, black_box(outside), |_| 0)).expect("resolves"))
    });
    g.finish();
}

fn metrics_labels(c: &mut Criterion) {
    let (src, dst) = (workload(1), workload(2));
    let (src_id, dst_id) = (src.identity(TD), dst.identity(TD));
    let svc = Service {
        name: "svc".into(),
        namespace: dst.namespace.clone(),
        hostname: "svc.ns-2.svc.cluster.local".into(),
        vips: vec![],
        ports: vec![],
        selector: BTreeMap::new(),
    };
    let metrics = Metrics::new();
    let mut g = c.benchmark_group("metrics");
    let endpoints = |reporter| Endpoints {
        reporter,
        src: Some(&src),
        src_identity: Some(&src_id),
        dst: Some(&dst),
        dst_identity: Some(&dst_id),
        service: Some(&svc),
        mtls: true,
    };
    g.bench_function("Endpoints::labels", |b| {
        b.iter(|| black_box(endpoints(Reporter::Source).labels()))
    });
    g.bench_function(
        "labels + connection guard (open, 2 byte adds, close)",
        |b| {
            b.iter(|| {
                let guard = metrics.connection(black_box(endpoints(Reporter::Destination)));
                guard.add_received(1024);
                guard.add_sent(1024);
                drop(black_box(guard));
            })
        },
    );
    g.finish();
}

/// One access log line as a finished connection writes it, through a subscriber set up as
/// `telemetry::init` sets up the text format (reloadable `info` filter, no ANSI), writing to
/// a sink: the formatting and the subscriber's own cost, without the output thread.
fn access_log(c: &mut Criterion) {
    use tracing_subscriber::layer::SubscriberExt;
    use ztunnel::proxy::access::Entry;
    use ztunnel::proxy::copy::{Outcome, Transferred};

    let (filter, _handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry().with(filter).with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::sink),
    );
    let (src, dst) = (workload(1), workload(2));
    let (src_id, dst_id) = (src.identity(TD), dst.identity(TD));
    let metrics = Metrics::new();
    let endpoints = Endpoints {
        reporter: Reporter::Source,
        src: Some(&src),
        src_identity: Some(&src_id),
        dst: Some(&dst),
        dst_identity: Some(&dst_id),
        service: None,
        mtls: true,
    };
    let entry = Entry {
        direction: "outbound",
        src: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10)), 41_000),
        src_workload: Some(&src.uid.0),
        src_identity: Some(&src_id),
        dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 20)), 8080),
        dst_workload: Some(&dst.uid.0),
        dst_service: None,
        dst_identity: Some(&dst_id),
        mtls: true,
        start: std::time::Instant::now(),
    };
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("access log line (text, to a sink)", |b| {
            b.iter(|| {
                let guard = metrics.connection(endpoints);
                entry.finished(
                    guard,
                    Outcome::Done,
                    Transferred {
                        received: 1,
                        sent: 1,
                    },
                );
            })
        });
    });
}

criterion_group!(
    benches,
    authz,
    endpoint_selection,
    metrics_labels,
    access_log
);
criterion_main!(benches);
